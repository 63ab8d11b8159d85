"""A staged Mailchimp status this run did not read never drives a CiviCRM Add (DESIGN §4; found
by the model-based consent test, long mode seed 21 of 100 steps).

An incremental run reads only the members changed in its window. A member deleted permanently
at Mailchimp is in no list at all, so its staged row keeps the last status mcsync read, say
`subscribed`. When something in CiviCRM sends that row to be decided again (its contact
trashed), the stale `subscribed` used to win: mcsync created a new contact, or matched another
owner of the address, and Added it to the group for a person Mailchimp no longer has. Before a
row whose Mailchimp data is older than the run can add anyone, mcsync reads that member
directly: 404 is gone, and nobody is Added.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from conftest import World

from mcsync.sim.mailchimp import subscriber_hash

EMAIL = "stale@example.org"


def _completed(world: World, **kwargs: object) -> None:
    [result] = world.sync(**kwargs)
    assert result.error is None, result.error
    assert result.outcome is not None and result.outcome.completed


def _delete_permanently(world: World, email: str) -> None:
    """What an admin's "permanently delete" does: the member is gone from every list, and a
    direct read answers 404."""
    world.mc.forget_member(world.list_id, email)
    assert world.mc.member(world.list_id, email) is None


def _added_owners(world: World) -> list[int]:
    return [
        int(r["id"])
        for r in world.civi.query(
            "SELECT c.id FROM contact c JOIN email e ON e.contact_id = c.id "
            "JOIN group_contact gc ON gc.contact_id = c.id AND gc.group_id = ? "
            "WHERE e.email = ? AND c.is_deleted = 0 AND gc.status = 'Added'",
            (world.group_id, EMAIL),
        )
    ]


def _member_reads(world: World) -> int:
    path = f"/lists/{world.list_id}/members/{subscriber_hash(EMAIL)}"
    return sum(1 for m, p in world.mc.request_log if m == "GET" and p.endswith(path))


@pytest.mark.parametrize("other_owner", [False, True], ids=["new-contact", "other-owner"])
def test_a_member_deleted_at_mailchimp_is_not_added_for_its_stale_status(
    world: World, other_owner: bool
) -> None:
    """Subscribed and Added, synced; the member is deleted permanently at Mailchimp, then
    staff trash the contact. The next incremental run must not Add anyone for the address:
    not a new contact, and not another contact that owns it (never in the group)."""
    contact = world.person(EMAIL, mc="subscribed", civi="Added")
    assert contact is not None
    other = world.person(EMAIL, civi="none") if other_owner else None
    _completed(world)
    assert _added_owners(world) == [contact]
    world.advance_clock(minutes=10)
    _delete_permanently(world, EMAIL)
    world.advance_clock(minutes=10)
    world.civi.delete_contact(contact)
    world.advance_clock(minutes=10)
    reads = _member_reads(world)
    _completed(world)
    assert _added_owners(world) == []
    if other is not None:
        assert world.civi_status(other) is None
    assert _member_reads(world) == reads + 1  # the one stale row, read directly
    # And the runs after it agree.
    world.advance_clock(minutes=10)
    _completed(world)
    _completed(world, full=True)
    assert _added_owners(world) == []


def test_no_direct_read_when_the_run_read_the_member(world: World) -> None:
    """The check costs nothing for a member the run's own window read: a member who signs
    up again after the trash is matched, created and Added with no extra request."""
    contact = world.person(EMAIL, mc="subscribed", civi="Added")
    assert contact is not None
    _completed(world)
    world.advance_clock(minutes=10)
    world.civi.delete_contact(contact)
    world.advance_clock(minutes=10)
    world.mc.edit_member(world.list_id, EMAIL, merge_fields={"FNAME": "Back"})
    world.advance_clock(minutes=10)
    reads = _member_reads(world)
    _completed(world)
    [added] = _added_owners(world)
    assert added != contact
    assert _member_reads(world) == reads


class Killed(BaseException):
    """A kill: nothing in mcsync catches it."""


class KillOnSecondHistoryRead(httpx.BaseTransport):
    """Stops the run at its CiviCRM history read, after its Mailchimp fetch committed (the
    first history read is the run's marks, before it fetches anything)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.reads = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if "SubscriptionHistory" in request.url.path:
            self.reads += 1
            if self.reads == 2:
                raise Killed(request.url.path)
        return self.inner.handle_request(request)


def test_a_resumed_run_reads_again_what_an_earlier_process_read(world: World) -> None:
    """Found by the model (long mode seed 80 of 100 steps): a run reads a new sign-up, is
    stopped, the member is deleted permanently, and the run is resumed by another process.
    Its staged status is older than that process: it is read again before it adds anyone."""
    contact = world.person(
        EMAIL,
        mc="unsubscribed",
        civi="Removed",
        mc_at=world.ago(days=20),
        civi_at=world.ago(days=30),
    )
    assert contact is not None
    _completed(world, full=True)
    world.advance_clock(minutes=10)
    world.mc.set_member_status(world.list_id, EMAIL, "subscribed")  # the person
    world.advance_clock(minutes=5)
    inner: Any = world.transport
    world.transport = KillOnSecondHistoryRead(inner)
    with pytest.raises(Killed):
        world.sync()
    world.transport = inner
    world.advance_clock(minutes=5)
    _delete_permanently(world, EMAIL)
    world.advance_clock(minutes=5)
    _completed(world)  # the same run, resumed
    assert world.civi_status(contact) == "Removed"

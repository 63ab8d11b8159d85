"""The consent invariant when a contact is trashed (DESIGN §4; found by the model-based consent
test as "trash_after_removal"), end to end against the simulators.

Trash is not a subscription choice: a subscribed member whose contact is trashed is matched
again and, with no undeleted owner of the address left, gets a new contact, Added
(seed-behaviour §4.1, kept; see test_full_run_changes.py). But a removal from the group made
in CiviCRM *before* the trash is a choice: when it is later than the member's subscribe at
Mailchimp, the next run (incremental or full) unsubscribes the member and does not create a
new contact that would undo it. A subscribe at Mailchimp later than that removal still wins.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import World

from mcsync.store.database import Staging

EMAIL = "gone@example.org"


def _completed(world: World, **kwargs: object) -> None:
    [result] = world.sync(**kwargs)
    assert result.error is None, result.error
    assert result.outcome is not None and result.outcome.completed


def _live_owners(world: World) -> list[int]:
    return [
        int(r["id"])
        for r in world.civi.query(
            "SELECT c.id FROM contact c JOIN email e ON e.contact_id = c.id "
            "WHERE e.email = ? AND c.is_deleted = 0",
            (EMAIL,),
        )
    ]


def _run(world: World, *, full: bool, change: Callable[[], None]) -> None:
    """A first sync, then `change` in CiviCRM (minutes apart, as staff work), then the next
    run: incremental, or a full run after an incremental one."""
    _completed(world)
    world.advance_clock(minutes=30)
    if full:
        _completed(world)
    world.advance_clock(minutes=10)
    change()
    world.advance_clock(minutes=10)
    _completed(world, full=full)


def _remove_then_trash(world: World, contact: int) -> Callable[[], None]:
    def change() -> None:
        world.civi.set_group_status(contact, world.group_id, "Removed")
        world.advance_clock(minutes=3)
        world.civi.delete_contact(contact)

    return change


@pytest.mark.parametrize("full", [False, True], ids=["incremental", "full"])
def test_removal_then_trash_unsubscribes_the_member(world: World, full: bool) -> None:
    """Staff remove the contact from the group, then trash it, before mcsync's next run: the
    removal is later than the Mailchimp subscribe, so it is propagated; no new contact."""
    contact = world.person(EMAIL, mc="subscribed", civi="Added")
    assert contact is not None
    _run(world, full=full, change=_remove_then_trash(world, contact))
    assert world.mc_status(EMAIL) == "unsubscribed"
    assert _live_owners(world) == []  # no new contact: it would have been Added
    assert world.civi_status(contact) == "Removed"  # the trashed contact is left alone

    # And it stays so: the next runs change nothing on either side.
    world.advance_clock(minutes=30)
    writes = len(world.writes())
    _completed(world)
    world.advance_clock(minutes=30)
    _completed(world, full=True)
    assert world.mc_status(EMAIL) == "unsubscribed"
    assert _live_owners(world) == []
    assert len(world.writes()) == writes


def test_removal_then_trash_before_the_first_sync_unsubscribes(world: World) -> None:
    """The same choices made before mcsync ever ran: the trashed contact was never matched,
    but its removal is still the latest choice for the address."""
    contact = world.person(
        EMAIL, mc="subscribed", civi="Added", mc_at=world.ago(days=3), civi_at=world.ago(days=10)
    )
    assert contact is not None
    world.civi.set_group_status(contact, world.group_id, "Removed", when=world.ago(days=1))
    world.civi.delete_contact(contact)
    _completed(world)
    assert world.mc_status(EMAIL) == "unsubscribed"
    assert _live_owners(world) == []


@pytest.mark.parametrize("full", [False, True], ids=["incremental", "full"])
def test_group_contact_deleted_then_trash_unsubscribes_the_member(world: World, full: bool) -> None:
    """A GroupContact deleted (history `Deleted`) is a removal at its date (issue 10), trashed
    contact or not."""
    contact = world.person(EMAIL, mc="subscribed", civi="Added")
    assert contact is not None

    def change() -> None:
        world.civi.delete_group_contact(contact, world.group_id)
        world.advance_clock(minutes=3)
        world.civi.delete_contact(contact)

    _run(world, full=full, change=change)
    assert world.mc_status(EMAIL) == "unsubscribed"
    assert _live_owners(world) == []


@pytest.mark.parametrize("full", [False, True], ids=["incremental", "full"])
def test_subscribe_later_than_the_trashed_removal_gets_a_new_contact(
    world: World, full: bool
) -> None:
    """The person subscribes again at Mailchimp after the removal and the trash: that is the
    later choice, so the existing rule applies (a new contact, Added)."""
    contact = world.person(EMAIL, mc="subscribed", civi="Added")
    assert contact is not None
    _run(world, full=full, change=_remove_then_trash(world, contact))
    assert world.mc_status(EMAIL) == "unsubscribed"
    world.advance_clock(minutes=10)
    world.mc.set_member_status(world.list_id, EMAIL, "subscribed")
    world.advance_clock(minutes=10)
    _completed(world, full=full)
    assert world.mc_status(EMAIL) == "subscribed"
    [owner] = _live_owners(world)
    assert owner != contact
    assert world.civi_status(owner) == "Added"


def test_trashed_removal_older_than_the_subscribe_gets_a_new_contact(world: World) -> None:
    """A removal older than the member's subscribe, then the trash: the subscribe is the later
    choice; the member gets a new contact, Added (seed-behaviour §4.1)."""
    contact = world.person(
        EMAIL, mc="subscribed", civi="Removed", mc_at=world.ago(days=1), civi_at=world.ago(days=9)
    )
    assert contact is not None
    world.civi.delete_contact(contact)
    _completed(world)
    assert world.mc_status(EMAIL) == "subscribed"
    [owner] = _live_owners(world)
    assert world.civi_status(owner) == "Added"


@pytest.mark.parametrize("full", [False, True], ids=["incremental", "full"])
def test_trash_alone_keeps_the_subscription(world: World, full: bool) -> None:
    """Trash without a removal is no choice: the member stays subscribed and gets a new
    contact, Added (seed-behaviour §4.1), on both kinds of run."""
    contact = world.person(EMAIL, mc="subscribed", civi="Added")
    assert contact is not None
    _run(world, full=full, change=lambda: world.civi.delete_contact(contact))
    assert world.mc_status(EMAIL) == "subscribed"
    [owner] = _live_owners(world)
    assert owner != contact
    assert world.civi_status(owner) == "Added"
    staging = Staging(world.config.state_db)
    try:
        [row] = staging.query("SELECT contact_id FROM rows WHERE mc_email = ?", (EMAIL,))
    finally:
        staging.close()
    assert row["contact_id"] == owner


# ---- a privacy flag set before the trash (found by the model, seed 28 of 100 steps) --------


def _flag_then_trash(world: World, contact: int, flag: str) -> Callable[[], None]:
    def change() -> None:
        world.civi.update_contact(contact, **{flag: True})
        world.advance_clock(minutes=3)
        world.civi.delete_contact(contact)

    return change


def _row(world: World) -> dict[str, object]:
    staging = Staging(world.config.state_db)
    try:
        [row] = staging.query(
            "SELECT contact_id, sync_status, reason, reason_detail FROM rows WHERE mc_email = ?",
            (EMAIL,),
        )
    finally:
        staging.close()
    return dict(row)


@pytest.mark.parametrize("flag", ["do_not_email", "is_opt_out"])
@pytest.mark.parametrize("full", [False, True], ids=["incremental", "full"])
def test_privacy_flag_then_trash_unsubscribes_the_member(
    world: World, full: bool, flag: str
) -> None:
    """Staff flag the contact, then trash it, before mcsync's next run. mcsync saw the contact
    unflagged after the member's subscribe, so the flag is the later choice: no new contact
    (it would be Added, and carry no flag), and the member is unsubscribed; and it stays so."""
    contact = world.person(EMAIL, mc="subscribed", civi="Added")
    assert contact is not None
    _run(world, full=full, change=_flag_then_trash(world, contact, flag))
    assert _live_owners(world) == []
    assert world.mc_status(EMAIL) == "unsubscribed"

    world.advance_clock(minutes=30)
    writes = len(world.writes())
    _completed(world)
    world.advance_clock(minutes=30)
    _completed(world, full=True)
    assert world.mc_status(EMAIL) == "unsubscribed"
    assert _live_owners(world) == []
    assert len(world.writes()) == writes


def test_subscribe_later_than_a_trashed_flag_gets_a_new_contact(world: World) -> None:
    """The person subscribes again at Mailchimp after the flag and the trash: the later
    choice; a new contact, Added (seed-behaviour §4.1)."""
    contact = world.person(EMAIL, mc="subscribed", civi="Added")
    assert contact is not None
    _run(world, full=False, change=_flag_then_trash(world, contact, "do_not_email"))
    assert world.mc_status(EMAIL) == "unsubscribed"
    world.advance_clock(minutes=10)
    world.mc.set_member_status(world.list_id, EMAIL, "subscribed")
    world.advance_clock(minutes=10)
    _completed(world)
    assert world.mc_status(EMAIL) == "subscribed"
    [owner] = _live_owners(world)
    assert world.civi_status(owner) == "Added"


@pytest.mark.parametrize("full", [False, True], ids=["incremental", "full"])
def test_second_flag_later_than_a_new_sign_up_then_trash_gets_no_contact(
    world: World, full: bool
) -> None:
    """Model seed 69's shape with a real second choice: flagged (do_not_email), the member
    unsubscribed; the person signs up again at Mailchimp (newer than the flag: reported, the
    flagged contact not Added); then staff tick the *other* flag (is_opt_out, newer than the
    sign-up) and later trash the contact. The newest choice is the flag: no new contact is
    created and Added for the address, and the member is not left subscribed."""
    contact = world.person(EMAIL, mc="subscribed", civi="Added")
    assert contact is not None
    _completed(world)
    world.advance_clock(minutes=10)
    world.civi.update_contact(contact, do_not_email=True)
    world.advance_clock(minutes=10)
    _completed(world)
    assert world.mc_status(EMAIL) == "unsubscribed"
    world.advance_clock(minutes=10)
    world.mc.set_member_status(world.list_id, EMAIL, "subscribed")
    world.advance_clock(minutes=10)
    _completed(world)
    world.advance_clock(minutes=10)
    world.civi.update_contact(contact, is_opt_out=True)
    world.advance_clock(minutes=10)
    _completed(world)
    world.advance_clock(minutes=10)
    world.civi.delete_contact(contact)
    world.advance_clock(minutes=10)
    _completed(world, full=full)
    assert [o for o in _live_owners(world) if world.civi_status(o) == "Added"] == []
    assert world.mc_status(EMAIL) != "subscribed"


@pytest.mark.parametrize("full", [False, True], ids=["incremental", "full"])
def test_flag_and_trash_mcsync_never_saw_unflagged_is_reported(world: World, full: bool) -> None:
    """Flagged and trashed before mcsync ever read the contact: the trash moved its
    modified_date, so the flag may be older or newer than the member's subscribe. mcsync
    neither creates a contact (undoing a newer flag) nor unsubscribes (undoing a newer
    subscribe): it reports the member as order_unknown."""
    contact = world.person(
        EMAIL, mc="subscribed", civi="Added", mc_at=world.ago(days=3), civi_at=world.ago(days=10)
    )
    assert contact is not None
    world.civi.update_contact(contact, do_not_email=True)
    world.civi.delete_contact(contact)
    if full:
        world.advance_clock(minutes=10)
        _completed(world, full=True)
    _completed(world)
    assert world.mc_status(EMAIL) == "subscribed"
    assert _live_owners(world) == []
    row = _row(world)
    assert (row["sync_status"], row["reason"]) == ("fail", "order_unknown")
    assert "trash" in str(row["reason_detail"])


# ---- a trashed contact's removal, another live contact sharing the address ------------------


def _co_owner(world: World, status: str | None, when_days: float) -> int:
    """A second, live contact with the same email address (created after the first, so the
    first is the one matched while both are Added)."""
    other = world.civi.add_contact("Other", "Owner")
    world.civi.add_email(other, EMAIL)
    if status:
        world.civi.set_group_status(other, world.group_id, status, when=world.ago(days=when_days))
    return other


@pytest.mark.parametrize("full", [False, True], ids=["incremental", "full"])
def test_trashed_removal_later_than_a_live_co_owner_unsubscribes(world: World, full: bool) -> None:
    """The matched contact is removed from the group, then trashed; another live contact with
    the same address was Added earlier. The removal is the latest choice made on the address:
    the co-owner's older Added does not keep the member subscribed (nor re-subscribe it), and
    the co-owner leaves the group with it; later runs change nothing."""
    contact = world.person(
        EMAIL, mc="subscribed", civi="Added", mc_at=world.ago(days=3), civi_at=world.ago(days=10)
    )
    assert contact is not None
    other = _co_owner(world, "Added", when_days=5)
    _run(world, full=full, change=_remove_then_trash(world, contact))
    assert world.mc_status(EMAIL) == "unsubscribed"
    assert world.civi_status(other) == "Removed"

    world.advance_clock(minutes=30)
    writes = len(world.writes())
    _completed(world)
    world.advance_clock(minutes=30)
    _completed(world, full=True)
    assert world.mc_status(EMAIL) == "unsubscribed"
    assert world.civi_status(other) == "Removed"
    assert len(world.writes()) == writes


def test_trashed_removal_before_the_first_sync_with_a_live_co_owner(world: World) -> None:
    """The same, all before mcsync's first run: the co-owner's Added (5 days ago) is older
    than the trashed contact's removal (1 day ago), which is later than the subscribe."""
    contact = world.person(
        EMAIL, mc="subscribed", civi="Added", mc_at=world.ago(days=3), civi_at=world.ago(days=10)
    )
    assert contact is not None
    other = _co_owner(world, "Added", when_days=5)
    world.civi.set_group_status(contact, world.group_id, "Removed", when=world.ago(days=1))
    world.civi.delete_contact(contact)
    _completed(world)
    assert world.mc_status(EMAIL) == "unsubscribed"
    assert world.civi_status(other) == "Removed"


def test_live_co_owner_added_after_the_trashed_removal_wins(world: World) -> None:
    """The co-owner's own choice is later than the trashed contact's removal: it wins, the
    member stays subscribed and the co-owner Added."""
    contact = world.person(
        EMAIL, mc="subscribed", civi="Added", mc_at=world.ago(days=3), civi_at=world.ago(days=10)
    )
    assert contact is not None
    other = _co_owner(world, "Added", when_days=0.5)
    world.civi.set_group_status(contact, world.group_id, "Removed", when=world.ago(days=1))
    world.civi.delete_contact(contact)
    _completed(world)
    assert world.mc_status(EMAIL) == "subscribed"
    assert world.civi_status(other) == "Added"


def test_member_deleted_permanently_then_contact_trashed_gets_no_contact(world: World) -> None:
    """Found by the model (seed 21 of 100 steps): the person asks Mailchimp to forget them
    (a permanent delete, which no incremental fetch shows), then staff trash the contact.
    The next incremental run must not create a contact, Added, from the stale staged
    "subscribed": the member is read directly first, and is gone."""
    contact = world.person(EMAIL, mc="subscribed", civi="Added")
    assert contact is not None
    _completed(world)
    world.advance_clock(minutes=30)
    world.mc.forget_member(world.list_id, EMAIL)
    world.advance_clock(minutes=3)
    world.civi.delete_contact(contact)
    world.advance_clock(minutes=10)
    _completed(world)
    assert _live_owners(world) == []
    assert world.mc_status(EMAIL) is None


def test_flag_seconds_after_a_sign_up_then_trash_gets_no_contact(world: World) -> None:
    """Model seed 203: a contact long out of the group (its GroupContact then deleted) signs
    up at Mailchimp as a new member; seconds later staff tick do-not-email. mcsync cannot
    order the two (the flag's time is only bounded by the contact's modified_date), so the
    member is left subscribed and reported. The member then edits their profile: the status
    reads as before, so it is either the known sign-up or went and came back since mcsync's
    previous view. The contact is then trashed. That possible round trip is no proof of a
    sign-up later than the flag: no new contact is created and Added from it."""
    contact = world.person(EMAIL, civi="Removed", civi_at=world.ago(days=60))
    assert contact is not None
    _completed(world)
    world.advance_clock(minutes=10)
    world.civi.delete_group_contact(contact, world.group_id)
    world.advance_clock(minutes=10)
    _completed(world)
    world.advance_clock(minutes=10)
    world.mc.seed_member(world.list_id, EMAIL, "subscribed", last_changed=world.clock())
    world.advance_clock(seconds=12)
    world.civi.update_contact(contact, do_not_email=True)
    world.advance_clock(minutes=10)
    _completed(world, full=True)
    assert world.mc_status(EMAIL) == "subscribed"
    world.advance_clock(minutes=10)
    world.mc.edit_member(world.list_id, EMAIL, merge_fields={"FNAME": "Pat"})
    world.advance_clock(minutes=10)
    _completed(world)
    world.advance_clock(minutes=10)
    world.civi.delete_contact(contact)
    world.advance_clock(minutes=10)
    world.mc.edit_member(world.list_id, EMAIL, merge_fields={"FNAME": "Patricia"})
    world.advance_clock(minutes=10)
    for full in (False, True):
        _completed(world, full=full)
        assert [o for o in _live_owners(world) if world.civi_status(o) == "Added"] == []
        world.advance_clock(minutes=10)

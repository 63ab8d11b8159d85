"""Contact changes made in CiviCRM between an incremental run and a later full run (issue 10's
invariant, both halves): the full run, and the incremental runs after it, must act on them as
an incremental run would have, never on what staging read before the change.

Full runs read group membership, not the modified-contacts window; a full run still moves
that window's mark to its own start. These tests let hours pass at both services between the
change and the full run (more than the window's overlap), with CiviCRM busy meanwhile, so a
change the full run does not read itself would never be read again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import World

from mcsync.store.database import Staging


def _completed(world: World, **kwargs: object) -> None:
    [result] = world.sync(**kwargs)
    assert result.error is None, result.error
    assert result.outcome is not None and result.outcome.completed


def _email_id(world: World, email: str) -> int:
    [row] = world.civi.query("SELECT id FROM email WHERE email = ?", (email,))
    return int(row["id"])


def _run_full(world: World) -> bool:
    staging = Staging(world.config.state_db)
    try:
        return bool(staging.state(world.list_id)["run_full"])
    finally:
        staging.close()


def _change_between_incremental_and_full(world: World, change: Callable[[], None]) -> None:
    """First sync, an incremental run, then `change` in CiviCRM; five hours later (CiviCRM
    has edited other contacts since) a full run. Returns after the full run."""
    bystander = world.person("bystander@example.org", civi="none")  # in no audience
    assert bystander is not None
    _completed(world)
    world.advance_clock(minutes=30)
    _completed(world)
    assert not _run_full(world)
    world.advance_clock(minutes=10)
    change()
    world.advance_clock(hours=5)
    world.civi.update_contact(bystander, last_name="Edited")  # CiviCRM is busy meanwhile
    world.advance_clock(minutes=1)
    _completed(world, full=True)
    assert _run_full(world)


def _then_incremental(world: World) -> None:
    world.advance_clock(minutes=30)
    _completed(world)
    assert not _run_full(world)


@pytest.mark.parametrize("flag", ["is_opt_out", "do_not_email", "is_deceased"])
def test_privacy_flag_set_before_a_full_run_unsubscribes(world: World, flag: str) -> None:
    """The flag is newer than the Mailchimp subscribe: the member is unsubscribed; the group
    is left alone (the flag is not a group opt-out)."""
    contact = world.person("quiet@example.org", mc="subscribed", civi="Added")
    world.person("fine@example.org", mc="subscribed", civi="Added")
    assert contact is not None

    _change_between_incremental_and_full(
        world, lambda: world.civi.update_contact(contact, **{flag: True})
    )
    assert world.mc_status("quiet@example.org") == "unsubscribed"
    assert world.civi_status(contact) == "Added"
    assert world.mc_status("fine@example.org") == "subscribed"
    _then_incremental(world)
    assert world.mc_status("quiet@example.org") == "unsubscribed"
    assert world.civi_status(contact) == "Added"


def _trashed_member_outcome(world: World, *, full: bool) -> tuple[object, ...]:
    """Trash a subscribed member's contact, seen by a full run or an incremental one; then
    (Mailchimp status, the trashed contact's group status, group statuses of undeleted
    contacts with the address)."""
    contact = world.person("trash@example.org", mc="subscribed", civi="Added")
    assert contact is not None
    if full:
        _change_between_incremental_and_full(world, lambda: world.civi.delete_contact(contact))
    else:
        _completed(world)
        world.advance_clock(minutes=10)
        world.civi.delete_contact(contact)
        world.advance_clock(minutes=10)
        _completed(world)
    _then_incremental(world)
    staging = Staging(world.config.state_db)
    linked = staging.query("SELECT contact_id FROM rows WHERE mc_email = 'trash@example.org'")
    staging.close()
    assert contact not in {r["contact_id"] for r in linked}
    others = world.civi.query(
        "SELECT c.id FROM contact c JOIN email e ON e.contact_id = c.id "
        "WHERE e.email = 'trash@example.org' AND c.is_deleted = 0"
    )
    return (
        world.mc_status("trash@example.org"),
        world.civi_status(contact),
        [world.civi_status(o["id"]) for o in others],
    )


def test_trashed_before_a_full_run_is_handled_as_an_incremental_run_would(
    tmp_path: Path,
) -> None:
    """Trash is not a subscription choice: the member is no longer linked to the trashed
    contact and nothing is written to it (seed-behaviour §4.1); a subscribed member with no
    undeleted owner left gets a new contact, Added. The same on both paths."""
    (tmp_path / "incremental").mkdir()
    (tmp_path / "full").mkdir()
    incremental = _trashed_member_outcome(World(tmp_path / "incremental"), full=False)
    full = _trashed_member_outcome(World(tmp_path / "full"), full=True)
    assert incremental == full == ("subscribed", "Added", ["Added"])


def test_email_put_on_hold_before_a_full_run_never_subscribes(world: World) -> None:
    """A held address is never used to subscribe, whether the staff re-add comes before the
    full run (it reads the membership) or after it (an incremental run reads the history)."""
    before = world.person(
        "before@example.org",
        mc="unsubscribed",
        civi="Removed",
        mc_at=world.ago(days=20),
        civi_at=world.ago(days=10),
    )
    after = world.person(
        "after@example.org",
        mc="unsubscribed",
        civi="Removed",
        mc_at=world.ago(days=20),
        civi_at=world.ago(days=10),
    )
    assert before is not None and after is not None

    def bounce_and_readd() -> None:
        world.civi.update_email(_email_id(world, "before@example.org"), on_hold=1)
        world.civi.update_email(_email_id(world, "after@example.org"), on_hold=1)
        world.civi.set_group_status(before, world.group_id, "Added")  # staff, later

    _change_between_incremental_and_full(world, bounce_and_readd)
    assert world.mc_status("before@example.org") == "unsubscribed"
    assert world.civi_status(before) == "Added"  # mcsync leaves the group alone
    world.civi.set_group_status(after, world.group_id, "Added")  # staff, after the full run
    _then_incremental(world)
    assert world.mc_status("after@example.org") == "unsubscribed"
    assert world.mc_status("before@example.org") == "unsubscribed"
    assert world.civi_status(after) == "Added"
    staging = Staging(world.config.state_db)
    reasons = {r["contact_id"]: r["reason"] for r in staging.query("SELECT * FROM rows")}
    staging.close()
    assert reasons[before] == reasons[after] == "on_hold"


def test_email_changed_before_a_full_run_moves_the_member_and_nothing_else(
    world: World,
) -> None:
    """An email changed in CiviCRM changes the member's address at Mailchimp (issue 13: the
    bulk-mail email is the one chosen), keeping its status; no member or contact is created
    for the new addresses, the group stays, and nothing else is written either side."""
    contact = world.person("old@example.org", mc="subscribed", civi="Added")
    assert contact is not None

    writes_before: list[int] = []

    def change_addresses() -> None:
        writes_before.append(len(world.writes()))
        world.civi.update_email(_email_id(world, "old@example.org"), email="new@example.org")
        world.civi.add_email(contact, "bulk@example.org", is_primary=False, is_bulkmail=True)

    _change_between_incremental_and_full(world, change_addresses)
    _then_incremental(world)
    written = world.writes()[writes_before[0] :]
    assert [method for method, _ in written] == ["PATCH"]
    assert world.mc_status("old@example.org") is None
    assert world.mc_status("new@example.org") is None
    assert world.mc_status("bulk@example.org") == "subscribed"
    assert world.civi_status(contact) == "Added"
    assert world.civi.query("SELECT COUNT(*) AS n FROM contact")[0]["n"] == 2  # + bystander


def test_hold_lifted_before_a_full_run_lets_the_added_contact_subscribe(world: World) -> None:
    """Not missing a change either: a contact Added in CiviCRM whose only address was held is
    subscribed once an admin lifts the hold, as an incremental run would do."""
    contact = world.person("repaired@example.org", civi="Added")
    assert contact is not None
    world.civi.update_email(_email_id(world, "repaired@example.org"), on_hold=1)

    def lift_hold() -> None:
        assert world.mc_status("repaired@example.org") is None  # held: not subscribed
        world.civi.update_email(_email_id(world, "repaired@example.org"), on_hold=0)

    _change_between_incremental_and_full(world, lift_hold)
    assert world.mc_status("repaired@example.org") == "subscribed"
    _then_incremental(world)
    assert world.mc_status("repaired@example.org") == "subscribed"
    assert world.civi_status(contact) == "Added"

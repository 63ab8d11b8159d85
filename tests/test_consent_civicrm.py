"""The consent invariant for choices made in CiviCRM (issue 10 items 4, 6 and 7), end to end
against the simulators: a deleted membership is a removal at its date on every kind of run; a
cleaned address goes on hold once, and an admin who takes it off hold is not overruled; a
privacy flag does not undo a Mailchimp sign-up made after it was set."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from conftest import World

from mcsync.cli import main
from mcsync.ops.preview import discard_plans
from mcsync.rules.explanations import REASONS
from mcsync.rules.reasons import Reason


def _hold(world: World, email: str) -> int:
    [row] = world.civi.query("SELECT on_hold FROM email WHERE email = ?", (email,))
    return int(row["on_hold"])


def _email_id(world: World, email: str) -> int:
    [row] = world.civi.query("SELECT id FROM email WHERE email = ?", (email,))
    return int(row["id"])


def _completed(world: World, **kwargs: object) -> None:
    [result] = world.sync(**kwargs)
    assert result.error is None, result.error
    assert result.outcome is not None and result.outcome.completed


def _failures(world: World) -> list[dict[str, object]]:
    result = CliRunner().invoke(main, ["failures", "--json", "--config", str(world.config_path)])
    assert result.exit_code == 0, result.output
    payload: list[dict[str, object]] = json.loads(result.output)
    return payload


# ---- item 4: a deleted membership is a removal at its date ----------------------------------


def test_membership_deleted_in_civicrm_is_a_removal_on_a_full_run(world: World) -> None:
    """The GroupContact row is gone, so a full run (which reads rows) sees no membership;
    the `Deleted` history row dates the removal, which is newer than the subscribe."""
    contact = world.person("ann@example.org", mc="subscribed", civi="Added")
    assert contact is not None
    _completed(world)
    world.civi.delete_group_contact(contact, world.group_id)
    _completed(world, full=True)
    assert world.civi_status(contact) is None  # not re-Added
    assert world.mc_status("ann@example.org") == "unsubscribed"


def test_membership_deleted_before_the_first_sync_is_a_removal(world: World) -> None:
    contact = world.person(
        "bob@example.org",
        mc="subscribed",
        civi="Added",
        mc_at=world.ago(days=3),
        civi_at=world.ago(days=10),
    )
    assert contact is not None
    world.civi.delete_group_contact(contact, world.group_id, when=world.ago(days=1))
    _completed(world)
    assert world.civi_status(contact) is None
    assert world.mc_status("bob@example.org") == "unsubscribed"


def test_membership_deleted_on_an_incremental_run_is_a_removal(world: World) -> None:
    contact = world.person("cat@example.org", mc="subscribed", civi="Added")
    assert contact is not None
    _completed(world)
    world.civi.delete_group_contact(contact, world.group_id, method="API")
    _completed(world)
    assert world.civi_status(contact) is None
    assert world.mc_status("cat@example.org") == "unsubscribed"
    _completed(world, full=True)
    assert world.civi_status(contact) is None
    assert world.mc_status("cat@example.org") == "unsubscribed"


def test_subscribe_newer_than_the_deletion_still_wins(world: World) -> None:
    """The deletion counts at its date, not always: a later Mailchimp subscribe wins."""
    contact = world.person(
        "dan@example.org",
        mc="subscribed",
        civi="Added",
        mc_at=world.ago(days=1),
        civi_at=world.ago(days=10),
    )
    assert contact is not None
    world.civi.delete_group_contact(contact, world.group_id, when=world.ago(days=5))
    _completed(world, full=True)
    assert world.civi_status(contact) == "Added"
    assert world.mc_status("dan@example.org") == "subscribed"


# ---- item 6: cleaned puts the address on hold once ------------------------------------------


def test_cleaned_address_taken_off_hold_by_an_admin_stays_off_hold(world: World) -> None:
    world.person(
        "bounce@example.org",
        mc="cleaned",
        civi="Added",
        mc_at=world.ago(days=10),
        civi_at=world.ago(days=20),
    )
    _completed(world)
    assert _hold(world, "bounce@example.org") == 1
    world.civi.update_email(_email_id(world, "bounce@example.org"), on_hold=0)  # repaired
    _completed(world)  # incremental: the edit bumped the contact's modified_date
    assert _hold(world, "bounce@example.org") == 0
    _completed(world, full=True)
    assert _hold(world, "bounce@example.org") == 0
    assert world.mc_status("bounce@example.org") == "cleaned"


def test_member_cleaned_after_syncing_goes_on_hold_on_the_transition_only(world: World) -> None:
    contact = world.person("fine@example.org", mc="subscribed", civi="Added")
    _completed(world)
    assert _hold(world, "fine@example.org") == 0
    world.mc.set_member_status(world.list_id, "fine@example.org", "cleaned")
    _completed(world)
    assert _hold(world, "fine@example.org") == 1
    assert contact is not None and world.civi_status(contact) == "Removed"
    world.civi.update_email(_email_id(world, "fine@example.org"), on_hold=0)
    _completed(world, full=True)
    _completed(world)
    assert _hold(world, "fine@example.org") == 0


def test_cleaned_address_already_held_when_first_seen_is_not_held_again(world: World) -> None:
    contact = world.person(
        "held@example.org",
        mc="cleaned",
        civi="Added",
        mc_at=world.ago(days=10),
        civi_at=world.ago(days=1),
    )
    assert contact is not None
    world.civi.update_email(_email_id(world, "held@example.org"), on_hold=1)  # CiviMail bounce
    _completed(world)
    world.civi.update_email(_email_id(world, "held@example.org"), on_hold=0)
    _completed(world)
    _completed(world, full=True)
    assert _hold(world, "held@example.org") == 0


def test_dry_run_does_not_count_as_holding_the_cleaned_address(world: World) -> None:
    world.person(
        "later@example.org",
        mc="cleaned",
        civi="Added",
        mc_at=world.ago(days=10),
        civi_at=world.ago(days=1),
    )
    discard_plans(world.config, world.sync(dry_run=True))  # as the CLI does after a dry run
    assert _hold(world, "later@example.org") == 0
    _completed(world)
    assert _hold(world, "later@example.org") == 1


# ---- item 7: a privacy flag does not undo a newer Mailchimp sign-up --------------------------


def _flagged_long_ago(world: World, email: str, **flag: bool) -> int:
    contact = world.person(
        email,
        mc="unsubscribed",
        civi="Removed",
        mc_at=world.ago(days=800),
        civi_at=world.ago(days=800),
    )
    assert contact is not None
    world.civi.update_contact(contact, when=world.ago(days=700), **flag)
    return contact


def test_fresh_mailchimp_signup_of_a_long_flagged_contact_is_not_undone(world: World) -> None:
    contact = _flagged_long_ago(world, "back@example.org", is_opt_out=True)
    _completed(world)
    assert world.mc_status("back@example.org") == "unsubscribed"
    world.mc.set_member_status(world.list_id, "back@example.org", "subscribed")  # a form, today
    before = len(world.writes())
    _completed(world)
    assert world.mc_status("back@example.org") == "subscribed"
    assert world.civi_status(contact) == "Removed"  # no group write either
    assert world.writes()[before:] == []
    [failure] = [f for f in _failures(world) if f["contact_id"] == contact]
    assert failure["reason"] == Reason.PRIVACY_FLAGS.value
    assert failure["advice"] == REASONS["privacy_flags"][1]
    assert "check the flag" in str(failure["detail"])
    _completed(world, full=True)
    assert world.mc_status("back@example.org") == "subscribed"
    assert world.civi_status(contact) == "Removed"
    assert world.writes()[before:] == []


def test_an_unrelated_later_edit_does_not_make_the_flag_newer(world: World) -> None:
    """The flag's own change counts, not every later edit of the contact (an address, or
    mcsync's own writes): the contact was seen flagged before the sign-up."""
    contact = _flagged_long_ago(world, "edit@example.org", do_not_email=True)
    _completed(world)
    world.mc.set_member_status(world.list_id, "edit@example.org", "subscribed")
    _completed(world)
    world.civi.add_address(contact, city="Leeds")  # bumps modified_date, flag unchanged
    _completed(world)
    _completed(world, full=True)
    assert world.mc_status("edit@example.org") == "subscribed"


def test_flag_set_after_the_mailchimp_subscribe_still_unsubscribes(world: World) -> None:
    contact = world.person("late@example.org", mc="subscribed", civi="Added")
    assert contact is not None
    _completed(world)
    world.civi.update_contact(contact, is_opt_out=True)  # today, after the subscribe
    _completed(world)
    assert world.mc_status("late@example.org") == "unsubscribed"
    assert world.civi_status(contact) == "Added"  # the flag is not a group opt-out


def test_flagged_contact_is_still_never_subscribed_from_civicrm(world: World) -> None:
    contact = _flagged_long_ago(world, "never@example.org", is_opt_out=True)
    _completed(world)
    world.civi.set_group_status(contact, world.group_id, "Added")  # staff, today
    _completed(world)
    assert world.mc_status("never@example.org") == "unsubscribed"


def test_flag_time_unknown_to_staging_is_read_before_deciding(world: World) -> None:
    """A contact staged before mcsync kept the flags' time (an upgrade): it is read from
    CiviCRM before the row is decided, rather than letting the flag win by default."""
    from mcsync.store.database import Staging

    contact = _flagged_long_ago(world, "old@example.org", is_opt_out=True)
    world.person("other@example.org", mc="subscribed", civi="Added")  # edited today
    _completed(world)
    staging = Staging(world.config.state_db)
    with staging.atomic():
        staging.execute("UPDATE contacts SET flags_at = NULL WHERE contact_id = ?", (contact,))
    staging.close()
    world.mc.set_member_status(world.list_id, "old@example.org", "subscribed")
    _completed(world)
    assert world.mc_status("old@example.org") == "subscribed"


def test_upgrade_counts_cleaned_rows_already_decided_as_handled(tmp_path: Path) -> None:
    """Earlier versions held a cleaned address on every run: after the upgrade, an address an
    admin has taken off hold since is not held once more."""
    from mcsync.store import database as staging_module

    path = tmp_path / "old.sqlite3"
    shipped = staging_module.MIGRATIONS
    staging_module.MIGRATIONS = shipped[:6]
    try:
        old = staging_module.Staging(path)
        for mc_hash, status in (("done", "fail"), ("new", "todo")):
            old.execute(
                "INSERT INTO rows (list_id, mc_hash, mc_email, mc_status, mc_status_at, "
                "contact_id, sync_status) VALUES ('l', ?, ?, 'cleaned', "
                "'2024-01-01T00:00:00+00:00', 7, ?)",
                (mc_hash, f"{mc_hash}@example.org", status),
            )
        old.close()
    finally:
        staging_module.MIGRATIONS = shipped
    upgraded = staging_module.Staging(path)
    handled = dict(upgraded.query("SELECT mc_hash, cleaned_handled_at FROM rows"))
    upgraded.close()
    assert handled == {"done": "2024-01-01T00:00:00+00:00", "new": None}

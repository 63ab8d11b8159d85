"""A privacy flag whose time mcsync cannot know never undoes a sign-up that may be newer
(DESIGN §4; found by the model-based consent test, long mode seed 53 of 100 steps).

CiviCRM keeps no history of privacy flags: mcsync dates a flag by the contact's
``modified_date`` when it first sees the flag set. Any later edit of the contact before that
read (a name, an address, an email put on hold) moves ``modified_date`` on, so the flag can
look newer than it is. Staff flag a contact do-not-email; the person then signs up again at
Mailchimp; staff then edit the contact; mcsync's next run saw the flag "after" the sign-up and
unsubscribed the person, undoing their newer choice. What mcsync knows is that the flag was
set after its previous run took its CiviCRM mark (it would have read it then) and by that
``modified_date``: a sign-up inside that interval may be the later choice, so it is left
alone and listed in ``failures`` (``privacy_flags``), like a sign-up known to be newer.
"""

from __future__ import annotations

import json

from click.testing import CliRunner
from conftest import World

from mcsync.cli import main
from mcsync.rules.reasons import Reason

EMAIL = "flag@example.org"


def _completed(world: World, **kwargs: object) -> None:
    [result] = world.sync(**kwargs)
    assert result.error is None, result.error
    assert result.outcome is not None and result.outcome.completed


def _failures(world: World) -> list[dict[str, object]]:
    result = CliRunner().invoke(main, ["failures", "--json", "--config", str(world.config_path)])
    assert result.exit_code == 0, result.output
    payload: list[dict[str, object]] = json.loads(result.output)
    return payload


def _synced_out(world: World) -> int:
    """Unsubscribed at Mailchimp and Removed in CiviCRM, long ago; two runs read it."""
    contact = world.person(
        EMAIL,
        mc="unsubscribed",
        civi="Removed",
        mc_at=world.ago(days=30),
        civi_at=world.ago(days=30),
    )
    assert contact is not None
    _completed(world)
    world.advance_clock(minutes=15)
    _completed(world)
    return contact


def test_a_flag_dated_by_a_later_edit_does_not_undo_a_newer_sign_up(world: World) -> None:
    contact = _synced_out(world)
    world.advance_clock(minutes=10)
    world.civi.update_contact(contact, do_not_email=True)  # staff, 10:00
    world.advance_clock(minutes=5)
    world.mc.set_member_status(world.list_id, EMAIL, "subscribed")  # the person, 10:05
    world.advance_clock(minutes=5)
    world.civi.update_contact(contact, first_name="Edited")  # staff, 10:10: modified_date
    world.advance_clock(minutes=5)
    before = len(world.writes())
    _completed(world)
    assert world.mc_status(EMAIL) == "subscribed"  # the sign-up may be the newer choice
    assert world.civi_status(contact) == "Removed"
    assert world.writes()[before:] == []
    [failure] = [f for f in _failures(world) if f["contact_id"] == contact]
    assert failure["reason"] == Reason.PRIVACY_FLAGS.value
    assert "check the flag" in str(failure["detail"])
    world.advance_clock(minutes=15)
    _completed(world)
    _completed(world, full=True)
    assert world.mc_status(EMAIL) == "subscribed"
    assert world.writes()[before:] == []


def test_a_flag_set_after_a_sign_up_mcsync_had_read_still_unsubscribes(world: World) -> None:
    """The interval is bounded by what mcsync read: a sign-up its previous run read is older
    than a flag it has not seen before, whatever else changed on the contact since."""
    contact = _synced_out(world)
    world.advance_clock(minutes=10)
    world.mc.set_member_status(world.list_id, EMAIL, "subscribed")
    world.advance_clock(minutes=5)
    _completed(world)
    assert world.civi_status(contact) == "Added"
    world.advance_clock(minutes=10)
    world.civi.update_contact(contact, is_opt_out=True)
    world.advance_clock(minutes=5)
    world.civi.update_contact(contact, first_name="Edited")
    world.advance_clock(minutes=5)
    _completed(world)
    assert world.mc_status(EMAIL) == "unsubscribed"
    assert world.civi_status(contact) == "Added"  # the flag is not a group opt-out


def test_a_sign_up_that_went_and_came_back_around_a_flag_is_not_undone(world: World) -> None:
    """The model's exact history: subscribed (read), staff set the flag, the person's member
    is archived and they sign up again, staff edit the contact; mcsync's next fetch reads
    `subscribed` as before. The sign-up is dated by the member's activity feed (it may have
    come back after the flag), and it is not undone."""
    contact = world.person(
        EMAIL, mc="subscribed", civi="Added", mc_at=world.ago(days=30), civi_at=world.ago(days=30)
    )
    assert contact is not None
    _completed(world)
    world.advance_clock(minutes=15)
    _completed(world)
    world.advance_clock(minutes=10)
    world.civi.update_contact(contact, do_not_email=True)
    world.advance_clock(minutes=5)
    world.mc.set_member_status(world.list_id, EMAIL, "archived")
    world.advance_clock(minutes=3)
    world.mc.set_member_status(world.list_id, EMAIL, "subscribed")
    world.advance_clock(minutes=3)
    world.civi.update_contact(contact, first_name="Edited")
    world.advance_clock(minutes=5)
    _completed(world)
    assert world.mc_status(EMAIL) == "subscribed"
    assert world.civi_status(contact) == "Added"
    [failure] = [f for f in _failures(world) if f["contact_id"] == contact]
    assert failure["reason"] == Reason.PRIVACY_FLAGS.value


def test_staff_adding_a_flagged_contact_does_not_lift_the_flag(world: World) -> None:
    """Model seed 75: the person signed up at Mailchimp after an old opt-out (reported, left
    alone); staff then tick do-not-email (a new, later flag) and a minute later add the
    contact to the group. Adding a contact to a group does not clear its privacy flags: the
    flag still stands as the latest word on email, so the member is unsubscribed; the staff
    member's Added is kept in CiviCRM (mcsync's own unsubscribe is no choice to copy back),
    and later runs change nothing."""
    contact = _synced_out(world)
    world.advance_clock(minutes=10)
    world.civi.update_contact(contact, is_opt_out=True)
    world.advance_clock(minutes=10)
    _completed(world)
    world.advance_clock(minutes=10)
    world.mc.set_member_status(world.list_id, EMAIL, "subscribed")
    world.advance_clock(minutes=10)
    _completed(world)
    assert world.mc_status(EMAIL) == "subscribed"
    assert [f["reason"] for f in _failures(world)] == [Reason.PRIVACY_FLAGS]
    world.advance_clock(minutes=10)
    world.civi.update_contact(contact, do_not_email=True)
    world.advance_clock(minutes=1)
    world.civi.set_group_status(contact, world.group_id, "Added")
    world.advance_clock(minutes=10)
    _completed(world)
    assert world.mc_status(EMAIL) == "unsubscribed"
    assert world.civi_status(contact) == "Added"
    writes = len(world.writes())
    for full in (False, True):
        world.advance_clock(minutes=30)
        _completed(world, full=full)
    assert world.mc_status(EMAIL) == "unsubscribed"
    assert world.civi_status(contact) == "Added"
    assert len(world.writes()) == writes

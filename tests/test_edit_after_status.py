"""A status change at Mailchimp followed by a profile edit before mcsync's next fetch is dated
by the edit: Mailchimp gives one ``last_changed`` per member. When CiviCRM changed between
mcsync's previous view of the member and that ``last_changed``, the order of the two choices
is unknown from the fetch alone; mcsync dates the status change exactly (``timestamp_opt`` for
a subscribe, the member's activity feed for an unsubscribe), or leaves the row alone
(DESIGN §4: a newer choice is never overwritten)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import httpx
from conftest import World

from mcsync.budget import Budget
from mcsync.rules.member_state import (
    AudiencePolicy,
    CivicrmSide,
    GroupState,
    MailchimpSide,
    MemberRow,
)
from mcsync.rules.reasons import Reason
from mcsync.rules.reconcile import Decision, decide_subscription


def _feed_reads(world: World) -> int:
    return sum(
        1 for method, path in world.mc.request_log if method == "GET" and "activity-feed" in path
    )


def _staff_sets(world: World, contact: int, *statuses: str) -> None:
    for status in statuses:
        world.civi.set_group_status(contact, world.group_id, status, when=world.clock())


def test_unsubscribe_then_edit_does_not_undo_a_newer_staff_re_add(world: World) -> None:
    contact = world.person("a@x.org", mc="subscribed", civi="Added")
    assert contact is not None
    world.sync()
    world.advance_clock(minutes=10)
    world.mc.set_member_status(world.list_id, "a@x.org", "unsubscribed")  # the person, 10:00
    world.advance_clock(minutes=5)
    _staff_sets(world, contact, "Removed", "Added")  # staff re-add them, 10:05
    world.advance_clock(minutes=5)
    world.mc.edit_member(world.list_id, "a@x.org", merge_fields={"FNAME": "Ann"})  # 10:10
    world.advance_clock(minutes=1)
    world.sync()
    assert world.civi_status(contact) == "Added"  # the staff's newer choice stands
    assert _feed_reads(world) == 1  # the one ambiguous row was dated exactly


def test_unsubscribe_after_staff_re_add_then_edit_still_wins(world: World) -> None:
    """The exact date also lets the person's newer unsubscribe win (not: CiviCRM always)."""
    contact = world.person("a@x.org", mc="subscribed", civi="Added")
    assert contact is not None
    world.sync()
    world.advance_clock(minutes=10)
    _staff_sets(world, contact, "Removed", "Added")
    world.advance_clock(minutes=5)
    world.mc.set_member_status(world.list_id, "a@x.org", "unsubscribed")
    world.advance_clock(minutes=5)
    world.mc.edit_member(world.list_id, "a@x.org", merge_fields={"FNAME": "Ann"})
    world.advance_clock(minutes=1)
    world.sync()
    assert world.civi_status(contact) == "Removed"
    assert world.mc_status("a@x.org") == "unsubscribed"


def test_subscribe_then_edit_does_not_undo_a_newer_staff_removal(world: World) -> None:
    contact = world.person("b@x.org", mc="unsubscribed", civi="Removed")
    assert contact is not None
    world.sync()
    world.advance_clock(minutes=10)
    world.mc.set_member_status(world.list_id, "b@x.org", "subscribed")  # the person, 10:00
    world.advance_clock(minutes=5)
    _staff_sets(world, contact, "Added", "Removed")  # staff remove them, 10:05
    world.advance_clock(minutes=5)
    world.mc.edit_member(world.list_id, "b@x.org", merge_fields={"FNAME": "Bo"})  # 10:10
    world.advance_clock(minutes=1)
    world.sync()
    assert world.civi_status(contact) == "Removed"
    assert world.mc_status("b@x.org") == "unsubscribed"
    assert _feed_reads(world) == 0  # timestamp_opt came with the fetch


def test_an_undatable_status_change_leaves_the_row_alone(world: World) -> None:
    """A change to pending has no opt-in time and no feed event to date it: neither side's
    choice is overwritten; the row is reported."""
    contact = world.person("c@x.org", mc="unsubscribed", civi="Removed")
    assert contact is not None
    world.sync()
    world.advance_clock(minutes=10)
    world.mc.set_member_status(world.list_id, "c@x.org", "pending")
    world.advance_clock(minutes=5)
    _staff_sets(world, contact, "Added", "Removed")
    world.advance_clock(minutes=5)
    world.mc.edit_member(world.list_id, "c@x.org", merge_fields={"FNAME": "Cy"})
    world.advance_clock(minutes=1)
    writes_before = len(world.writes())
    world.sync()
    assert world.civi_status(contact) == "Removed"
    assert world.mc_status("c@x.org") == "pending"
    # Only the name edited at Mailchimp is copied to the contact (issue 13): no status write.
    assert world.writes()[writes_before:] == [("POST", "Contact.save")]
    with sqlite3.connect(world.tmp_path / "state.sqlite3") as db:
        reasons = db.execute("SELECT reason FROM rows WHERE mc_email = 'c@x.org'").fetchall()
    assert reasons == [("order_unknown",)]  # listed by `failures --reason order_unknown`


def test_no_extra_request_without_ambiguity(world: World) -> None:
    """Nothing changed in CiviCRM between the two views: the edit's time is good enough."""
    contact = world.person("d@x.org", mc="subscribed", civi="Added")
    assert contact is not None
    world.sync()
    world.advance_clock(minutes=10)
    world.mc.set_member_status(world.list_id, "d@x.org", "unsubscribed")
    world.advance_clock(minutes=5)
    world.mc.edit_member(world.list_id, "d@x.org", merge_fields={"FNAME": "Di"})
    world.advance_clock(minutes=1)
    world.sync()
    assert world.civi_status(contact) == "Removed"
    assert _feed_reads(world) == 0


def test_the_rules_leave_an_unordered_pair_of_choices_alone() -> None:
    """Pure rules: a status change known only to lie between two times, and a CiviCRM change
    strictly inside them, is decided by neither side; at either end, the usual order holds."""
    after = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
    edit = after + timedelta(minutes=10)
    policy = AudiencePolicy(group_id=7)

    def decide(civi_at: datetime, *, bound: datetime | None = after) -> Decision:
        row = MemberRow(
            mailchimp=MailchimpSide(
                email="a@x.org",
                status="unsubscribed",
                last_changed=edit,
                status_changed_at=edit,
                status_changed_after=bound,
            ),
            civicrm=CivicrmSide(contact_id=1, subscription=GroupState("Added", civi_at)),
        )
        return decide_subscription(row, policy)

    unknown = decide(after + timedelta(minutes=5))
    assert unknown.reason == Reason.ORDER_UNKNOWN and unknown.actions == ()
    assert not unknown.final_subscribed
    assert decide(after + timedelta(minutes=5), bound=None).rule.startswith("5.2-A")
    assert decide(after).rule.startswith("5.2-A")  # CiviCRM no later than the previous view
    assert decide(edit).rule.startswith("5.2-B")  # a tie goes to CiviCRM, as always


def test_dating_many_rows_resumes_after_budget_stops(world: World) -> None:
    """More ambiguous rows than one round of connections, read under budgets that end all
    along the run: every run resumes where the last one stopped, each staff choice stands,
    and a member's feed is read again only when a stop lost a round's answers."""
    people = [f"p{n}@x.org" for n in range(23)]
    contacts = [world.person(email, mc="subscribed", civi="Added") for email in people]
    world.sync()
    world.advance_clock(minutes=10)
    for email in people:
        world.mc.set_member_status(world.list_id, email, "unsubscribed")
    world.advance_clock(minutes=5)
    for contact in contacts:
        assert contact is not None
        _staff_sets(world, contact, "Removed", "Added")
    world.advance_clock(minutes=5)
    for email in people:
        world.mc.edit_member(world.list_id, email, merge_fields={"FNAME": "Edited"})
    world.advance_clock(minutes=1)
    stops = 0
    for _ in range(200):
        ticks = iter(range(10**6))
        budget = Budget(60, clock=lambda ticks=ticks: float(next(ticks)))
        outcome = world.sync(budget=budget)[0].outcome
        if outcome is not None and outcome.completed:
            break
        stops += 1
    else:
        raise AssertionError("the run never completed")
    assert stops > 0  # the budget did stop it part-way
    assert all(world.civi_status(c) == "Added" for c in contacts if c is not None)
    assert len(people) <= _feed_reads(world) <= len(people) + 10 * stops


def test_a_status_round_trip_is_not_overtaken_by_an_older_staff_change(world: World) -> None:
    """Found by the model (status_round_trip, long mode seed 6): between two fetches staff
    re-add a contact, then the person signs up again (pending) and unsubscribes once more.
    The status reads the same as before, but its latest change is newer than the staff's: it
    is dated by the member's activity feed, and the person's unsubscribe stands."""
    contact = world.person("r@x.org", mc="unsubscribed", civi="Removed")
    assert contact is not None
    world.sync()
    world.advance_clock(minutes=10)
    _staff_sets(world, contact, "Added")  # staff re-add them, 10:00
    world.advance_clock(minutes=5)
    world.mc.set_member_status(world.list_id, "r@x.org", "pending")  # the form, 10:05
    world.advance_clock(minutes=5)
    world.mc.set_member_status(world.list_id, "r@x.org", "unsubscribed")  # 10:10
    world.advance_clock(minutes=1)
    world.sync()
    assert world.mc_status("r@x.org") == "unsubscribed"
    assert world.civi_status(contact) == "Removed"
    assert _feed_reads(world) == 1


def test_an_archive_round_trip_is_not_overtaken_by_an_older_staff_removal(world: World) -> None:
    """The model's archive seed 7: a member archived and subscribed again after staff
    removed the contact keeps the newer subscription."""
    contact = world.person("s@x.org", mc="subscribed", civi="Added")
    assert contact is not None
    world.sync()
    world.advance_clock(minutes=10)
    _staff_sets(world, contact, "Removed")  # 10:00
    world.advance_clock(minutes=5)
    world.mc.set_member_status(world.list_id, "s@x.org", "archived")  # 10:05
    world.advance_clock(minutes=5)
    world.mc.set_member_status(world.list_id, "s@x.org", "subscribed")  # 10:10
    world.advance_clock(minutes=1)
    world.sync()
    assert world.mc_status("s@x.org") == "subscribed"
    assert world.civi_status(contact) == "Added"


def test_a_profile_edit_alone_lets_a_newer_staff_change_win(world: World) -> None:
    """Same status, a moved ``last_changed`` and a staff change in between, but the feed shows
    no status change since mcsync's previous view: only a profile edit, so the staff's change
    is the newer choice."""
    contact = world.person("t@x.org", mc="unsubscribed", civi="Removed")
    assert contact is not None
    world.sync()
    world.advance_clock(minutes=10)
    _staff_sets(world, contact, "Added")
    world.advance_clock(minutes=5)
    world.mc.edit_member(world.list_id, "t@x.org", merge_fields={"FNAME": "Tim"})
    world.advance_clock(minutes=1)
    world.sync()
    assert world.civi_status(contact) == "Added"
    assert world.mc_status("t@x.org") in ("subscribed", "pending")
    assert _feed_reads(world) <= 1


class _NoFeed(httpx.BaseTransport):
    """Answers every activity-feed read with 404 (a feed mcsync cannot read)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if "activity-feed" in request.url.path:
            return httpx.Response(404, json={"status": 404, "title": "Resource Not Found"})
        return self.inner.handle_request(request)


def test_a_round_trip_that_cannot_be_dated_leaves_the_row_alone(world: World) -> None:
    """The same round trip with a feed that cannot be read: neither the staff's choice nor
    the person's is overwritten; the row is reported."""
    contact = world.person("v@x.org", mc="unsubscribed", civi="Removed")
    assert contact is not None
    world.sync()
    world.advance_clock(minutes=10)
    _staff_sets(world, contact, "Added")
    world.advance_clock(minutes=5)
    world.mc.set_member_status(world.list_id, "v@x.org", "pending")
    world.advance_clock(minutes=5)
    world.mc.set_member_status(world.list_id, "v@x.org", "unsubscribed")
    world.advance_clock(minutes=1)
    world.transport = _NoFeed(world.transport)
    writes_before = len(world.writes())
    world.sync()
    assert world.mc_status("v@x.org") == "unsubscribed"
    assert world.civi_status(contact) == "Added"
    assert len(world.writes()) == writes_before
    with sqlite3.connect(world.tmp_path / "state.sqlite3") as db:
        reasons = db.execute("SELECT reason FROM rows WHERE mc_email = 'v@x.org'").fetchall()
    assert reasons == [("order_unknown",)]


def test_a_round_trip_after_a_staff_change_mcsync_could_not_push(world: World) -> None:
    """Found by the model (seed 22 of 100 steps): staff re-add a contact whose address is on
    hold, so mcsync cannot subscribe it; a profile edit at Mailchimp is read after that
    (mcsync's previous view of the member is now later than the staff's change); then the
    person signs up again and unsubscribes once more. The status reads as before, but its
    latest change may be newer than the staff's: it is dated by the activity feed, and the
    person's unsubscribe stands (not the staff's older re-add)."""
    contact = world.person("h@x.org", mc="unsubscribed", civi="Removed")
    assert contact is not None
    world.sync()
    world.advance_clock(minutes=10)
    [email] = world.civi.query("SELECT id FROM email WHERE contact_id = ?", (contact,))
    world.civi.update_email(email["id"], on_hold=1)
    _staff_sets(world, contact, "Added")  # 10:00, cannot reach Mailchimp: on hold
    world.advance_clock(minutes=5)
    world.mc.edit_member(world.list_id, "h@x.org", merge_fields={"FNAME": "Hal"})  # 10:05
    world.advance_clock(minutes=1)
    world.sync()
    assert world.mc_status("h@x.org") == "unsubscribed"
    assert world.civi_status(contact) == "Added"
    world.advance_clock(minutes=5)
    world.mc.set_member_status(world.list_id, "h@x.org", "pending")  # the form, 10:11
    world.advance_clock(minutes=5)
    world.mc.set_member_status(world.list_id, "h@x.org", "unsubscribed")  # 10:16
    world.advance_clock(minutes=1)
    world.sync()
    assert world.mc_status("h@x.org") == "unsubscribed"
    assert world.civi_status(contact) == "Removed"

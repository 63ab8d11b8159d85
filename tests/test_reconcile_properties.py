"""Properties of mcsync.rules.reconcile over a small model of both sides.

The model holds one Mailchimp member (status, per-field change times, one interest, a
compliance lock like Mailchimp's) and one CiviCRM contact (subscription group, one interest
group, privacy flags, emails with holds), plus mcsync's update queue and stored refusal.
Random user events happen on either side at random (sometimes equal) times, with partial and
full sync runs in between. A run reconciles, applies CiviCRM writes, plans the queue and (for a
full run) submits it to the Mailchimp model and classifies the results.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mcsync.rules.member_state import (
    SUBSCRIBED_STATUSES,
    AudiencePolicy,
    CivicrmSide,
    EmailRecord,
    GroupState,
    MailchimpSide,
    MemberRow,
    Refusal,
)
from mcsync.rules.queue_rules import QueuedUpdate, QueuePlan, plan_queue
from mcsync.rules.reconcile import Decision, PutEmailOnHold, SetGroupStatus, reconcile_member
from mcsync.rules.write_results import apply_batch_result

T0 = datetime(2024, 1, 1, tzinfo=UTC)
CID, GID, IGID, IID = 7, 12, 34, "int-a"
EMAILS = ("a@example.org", "b@example.org")
MC_STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending", "transactional", "archived")
UNSUBSCRIBING = {"unsubscribed", "cleaned", "archived"}
COMPLIANCE = "Member In Compliance State"
FLAGS = ("is_deceased", "do_not_email", "is_opt_out")


@dataclass
class World:
    """Both sides, the engine's queue, and the user events' times for the properties."""

    now: int = 0
    mc_status: str | None = None
    mc_email: str | None = None
    mc_status_at: int | None = None
    mc_last_changed: int | None = None
    mc_interest: bool | None = None
    mc_interest_at: int | None = None
    compliance: int = 0  # 1: refuses re-subscribe; 2: refuses pending too
    group: tuple[str | None, int | None] = (None, None)
    igroup: tuple[str | None, int | None] = (None, None)
    flags: dict[str, bool] = field(default_factory=dict)
    flags_at: int | None = None  # when a privacy flag was last set (None: unknown)
    emails: list[EmailRecord] = field(default_factory=list)
    queue: list[QueuedUpdate] = field(default_factory=list)
    next_update_id: int = 1
    refusal: Refusal | None = None
    last_subscribe_event: float | None = None
    last_unsubscribe_event: float | None = None
    sync_added_to_group_after_unsubscribe: bool = False
    cleaned_handled: bool = False  # mcsync acted on the member becoming cleaned
    admin_released_hold: bool = False  # an admin took the cleaned address off hold after
    held_again_after_handled: bool = False

    @staticmethod
    def at(minute: int | None) -> datetime | None:
        return None if minute is None else T0 + timedelta(minutes=minute)

    def row(self) -> MemberRow:
        interests = {} if self.mc_interest is None else {IID: self.mc_interest}
        interest_at = {} if self.mc_interest_at is None else {IID: self.at(self.mc_interest_at)}
        mc = MailchimpSide(
            email=self.mc_email,
            status=self.mc_status,  # type: ignore[arg-type]
            last_changed=self.at(self.mc_last_changed),
            status_changed_at=self.at(self.mc_status_at),
            interests=interests,
            interests_changed_at=interest_at,  # type: ignore[arg-type]
        )
        civi = CivicrmSide(
            contact_id=CID,
            subscription=GroupState(self.group[0], self.at(self.group[1])),  # type: ignore[arg-type]
            interest_groups={IGID: GroupState(self.igroup[0], self.at(self.igroup[1]))},  # type: ignore[arg-type]
            emails=tuple(self.emails),
            flags_changed_at=self.at(self.flags_at),
            **self.flags,
        )
        held = any(e.email == self.mc_email and e.held for e in self.emails)
        return MemberRow(
            mc,
            civi,
            mailchimp_email_on_hold=held,
            refusal=self.refusal,
            cleaned_handled=self.cleaned_handled,
        )

    # ---- user events ----

    def note(self, subscribe: bool) -> None:
        if subscribe:
            self.last_subscribe_event = self.now
        else:
            self.last_unsubscribe_event = self.now

    def mailchimp_user_status(self, status: str) -> None:
        if self.mc_status == "cleaned" or status == self.mc_status:
            return  # cleaned is terminal at Mailchimp
        if self.mc_status is None:
            self.mc_email, self.mc_interest, self.mc_interest_at = EMAILS[0], False, self.now
        self.mc_status, self.mc_status_at, self.mc_last_changed = status, self.now, self.now
        if status in SUBSCRIBED_STATUSES:
            self.note(True)
        elif status in UNSUBSCRIBING:
            self.note(False)

    def set_flag(self, name: str, value: bool) -> None:
        """Staff set or clear a privacy flag; setting one is the flags' own change time."""
        newly_set = value and not self.flags.get(name)
        self.flags[name] = value
        if not any(self.flags.values()):
            self.flags_at = None
        elif newly_set:
            self.flags_at = self.now

    def set_hold(self, index: int, on_hold: int) -> None:
        email = self.emails[index]
        if self.cleaned_handled and email.email == self.mc_email and email.held and not on_hold:
            self.admin_released_hold = True
        self.emails[index] = replace(email, on_hold=on_hold)

    def mailchimp_subscribe_outranks_flag(self) -> bool:
        """Subscribed at Mailchimp at a time strictly after the privacy flag was set."""
        return (
            self.mc_status in SUBSCRIBED_STATUSES
            and self.mc_status_at is not None
            and self.flags_at is not None
            and self.mc_status_at > self.flags_at
        )

    def civicrm_user_group(self, status: str) -> None:
        self.group = (None if status == "Deleted" else status, self.now)
        if status == "Added":
            self.note(True)
        elif status in ("Removed", "Deleted"):
            self.note(False)

    # ---- the Mailchimp model: a member PUT ----

    def mailchimp_put(self, body: dict[str, Any]) -> tuple[int, str, str | None]:
        current = self.mc_status
        target = body.get("status") or (body["status_if_new"] if current is None else None)
        if current is not None and current not in SUBSCRIBED_STATUSES:
            refused = current == "cleaned" or (
                (target == "subscribed" and self.compliance >= 1)
                or (target == "pending" and self.compliance >= 2)
            )
            if target in SUBSCRIBED_STATUSES and refused:
                return 400, COMPLIANCE, None
        changed = False
        if current is None:
            self.mc_email, self.mc_interest, self.mc_interest_at = (
                body["email_address"],
                False,
                self.now,
            )
            changed = True
        if target is not None and target != self.mc_status:
            self.mc_status, self.mc_status_at, changed = target, self.now, True
        value = body.get("interests", {}).get(IID)
        if value is not None and value != self.mc_interest:
            self.mc_interest, self.mc_interest_at, changed = value, self.now, True
        if changed:
            self.mc_last_changed = self.now
        return 200, "", self.mc_status

    # ---- an mcsync run ----

    def run(self, policy: AudiencePolicy, *, submit: bool = True) -> bool:
        """One reconcile (+ submit) of the row; True when it did anything."""
        self.now += 1
        decision = reconcile_member(self.row(), policy)
        plan = plan_queue(self.queue, decision)
        if self.cleaned_handled and any(isinstance(a, PutEmailOnHold) for a in decision.actions):
            self.held_again_after_handled = True
        self.apply_civicrm(decision)
        if self.mc_status == "cleaned":
            self.cleaned_handled = True  # the engine records it once the hold is written
        aborted = {a.update_id for a in plan.abort}
        self.queue = [u for u in self.queue if u.update_id not in aborted]
        if plan.enqueue is not None:
            self.queue.append(QueuedUpdate(self.next_update_id, dict(plan.enqueue.body)))
            self.next_update_id += 1
        while submit and self.queue:
            # A compliance refusal's retry as pending goes out in the same run (sync.advance
            # returns from collect_batches to push_mailchimp while retries are queued).
            self.submit()
        return bool(decision.actions) or plan != QueuePlan()

    def apply_civicrm(self, decision: Decision) -> None:
        for action in decision.civicrm_actions:
            if isinstance(action, SetGroupStatus) and action.group_id == GID:
                self.group = (action.status, self.now)
                if action.status == "Added" and self.unsubscribe_is_newest():
                    self.sync_added_to_group_after_unsubscribe = True
            elif isinstance(action, SetGroupStatus):
                self.igroup = (action.status, self.now)
            elif isinstance(action, PutEmailOnHold):
                self.emails = [
                    replace(e, on_hold=1) if e.email == action.email else e for e in self.emails
                ]

    def submit(self) -> None:
        sending, self.queue = self.queue, []
        for update in sending:
            body = dict(update.body)
            code, title, status = self.mailchimp_put(body)
            outcome = apply_batch_result(body, code, title=title, member_status=status)
            if outcome.kind == "retry" and outcome.retry_body is not None:
                self.queue.append(QueuedUpdate(self.next_update_id, outcome.retry_body))
                self.next_update_id += 1
            elif outcome.failure is not None and outcome.failure.blocks_resubscribe:
                changed_at = self.at(self.group[1])
                self.refusal = Refusal(outcome.failure.reason, body["email_address"], changed_at)

    def unsubscribe_is_newest(self) -> bool:
        unsub, sub = self.last_unsubscribe_event, self.last_subscribe_event
        return unsub is not None and (sub is None or unsub > sub)


# ---- strategies ----------------------------------------------------------------------------------

minutes = st.integers(min_value=0, max_value=20)


@st.composite
def worlds(draw: st.DrawFn) -> World:
    """A random starting state of both sides, with history times in the past."""
    world = World(now=30, compliance=draw(st.integers(0, 2)))
    world.emails = [
        EmailRecord(
            EMAILS[i],
            on_hold=draw(st.sampled_from([0, 0, 0, 1, 2])),
            is_bulkmail=draw(st.booleans()),
            is_primary=i == 0,
        )
        for i in range(draw(st.integers(0, 2)))
    ]
    world.flags = {name: draw(st.booleans()) for name in FLAGS if draw(st.integers(0, 4)) == 0}
    if any(world.flags.values()):
        world.flags_at = draw(st.one_of(st.none(), minutes))
    status = draw(st.sampled_from((None, *MC_STATUSES)))
    if status is not None:
        at = draw(minutes)
        world.mc_status, world.mc_email, world.mc_status_at = status, EMAILS[0], at
        world.mc_last_changed = max(at, draw(minutes))
        world.mc_interest = draw(st.sampled_from([None, True, False]))
        if world.mc_interest is not None:
            world.mc_interest_at = draw(st.one_of(st.none(), minutes))
        if status in SUBSCRIBED_STATUSES:
            world.last_subscribe_event = at
        elif status in UNSUBSCRIBING:
            world.last_unsubscribe_event = at
    group = draw(st.sampled_from([None, "Added", "Removed", "Pending", "Deleted"]))
    group_at = draw(st.one_of(st.none(), minutes)) if group != "Deleted" else draw(minutes)
    world.group = (None if group == "Deleted" else group, group_at)
    if group == "Added":
        sub = world.last_subscribe_event
        world.last_subscribe_event = max(
            sub if sub is not None else -1, group_at if group_at is not None else -1
        )
    elif group in ("Removed", "Deleted") and group_at is not None:
        unsub = world.last_unsubscribe_event
        world.last_unsubscribe_event = max(unsub if unsub is not None else -1, group_at)
    igroup = draw(st.sampled_from([None, "Added", "Removed"]))
    world.igroup = (igroup, draw(st.one_of(st.none(), minutes)) if igroup else None)
    return world


events = st.one_of(
    st.tuples(st.just("mc_status"), st.sampled_from(MC_STATUSES)),
    st.tuples(st.just("mc_interest"), st.booleans()),
    st.tuples(st.just("civi_group"), st.sampled_from(["Added", "Removed", "Pending", "Deleted"])),
    st.tuples(st.just("civi_interest"), st.sampled_from(["Added", "Removed"])),
    st.tuples(st.just("flag"), st.sampled_from(FLAGS), st.booleans()),
    st.tuples(st.just("hold"), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("run"), st.booleans()),
)
steps = st.lists(st.tuples(st.integers(0, 2), events), max_size=8)
policies = st.builds(
    AudiencePolicy,
    group_id=st.just(GID),
    interest_groups=st.just({IID: IGID}),
    respect_privacy_flags=st.booleans(),
)


def play(world: World, policy: AudiencePolicy, script: list[tuple[int, tuple[Any, ...]]]) -> None:
    """Apply user events (``step`` minutes apart; 0 makes ties) and in-between runs."""
    for step, event in script:
        world.now += step
        kind = event[0]
        if kind == "mc_status":
            world.mailchimp_user_status(event[1])
        elif kind == "mc_interest" and world.mc_status is not None:
            world.mc_interest, world.mc_interest_at = event[1], world.now
            world.mc_last_changed = world.now
        elif kind == "civi_group":
            world.civicrm_user_group(event[1])
        elif kind == "civi_interest":
            world.igroup = (event[1], world.now)
        elif kind == "flag":
            world.set_flag(event[1], event[2])
        elif kind == "hold" and event[1] < len(world.emails):
            world.set_hold(event[1], int(event[2]))
        elif kind == "run":
            world.run(policy, submit=event[1])


# ---- properties ----------------------------------------------------------------------------------


@settings(deadline=None, max_examples=200)
@given(world=worlds(), policy=policies, script=steps)
def test_one_run_reaches_a_fixed_point(
    world: World, policy: AudiencePolicy, script: list[tuple[int, tuple[Any, ...]]]
) -> None:
    """Whatever happened before, one complete run leaves nothing for the next to do."""
    play(world, policy, script)
    world.run(policy)
    decision = reconcile_member(world.row(), policy)
    assert decision.actions == (), decision
    assert world.queue == []
    assert plan_queue(world.queue, decision) == QueuePlan()


@settings(deadline=None, max_examples=200)
@given(world=worlds(), policy=policies, script=steps)
def test_newer_unsubscribe_never_becomes_a_subscription(
    world: World, policy: AudiencePolicy, script: list[tuple[int, tuple[Any, ...]]]
) -> None:
    play(world, policy, script)
    world.run(policy)
    world.run(policy)
    if world.unsubscribe_is_newest():
        assert world.mc_status not in SUBSCRIBED_STATUSES
        assert not world.sync_added_to_group_after_unsubscribe


@settings(deadline=None, max_examples=200)
@given(world=worlds(), policy=policies, script=steps)
def test_flagged_and_cleaned_contacts_end_unsubscribed(
    world: World, policy: AudiencePolicy, script: list[tuple[int, tuple[Any, ...]]]
) -> None:
    """Flagged contacts end unsubscribed unless they subscribed at Mailchimp after the flag
    was set (issue 10 item 7); a cleaned address ends on hold unless an admin took it off
    hold after mcsync held it (item 6), and mcsync never holds it a second time."""
    play(world, policy, script)
    world.run(policy)
    world.run(policy)
    flagged = policy.respect_privacy_flags and any(world.flags.values())
    if flagged and not world.mailchimp_subscribe_outranks_flag():
        assert world.mc_status not in SUBSCRIBED_STATUSES
    if world.mc_status == "cleaned" and not world.admin_released_hold:
        assert all(e.held for e in world.emails if e.email == world.mc_email)
    assert not world.held_again_after_handled


@settings(deadline=None, max_examples=200)
@given(
    civi=st.sampled_from([None, "Added", "Removed", "Pending"]),
    civi_at=st.one_of(st.none(), minutes),
    mc=st.sampled_from(MC_STATUSES),
    mc_at=minutes,
    flagged=st.booleans(),
)
def test_single_decision_never_subscribes_over_a_newer_unsubscribe(
    civi: str | None, civi_at: int | None, mc: str, mc_at: int, flagged: bool
) -> None:
    """One decision: an unsubscribe strictly newer than the other side's subscribe is never
    turned into a subscribe at Mailchimp or an Add in CiviCRM."""
    world = World(mc_status=mc, mc_email=EMAILS[0], mc_status_at=mc_at, mc_last_changed=mc_at)
    world.group, world.flags = (civi, civi_at), {"is_opt_out": flagged}
    world.emails = [EmailRecord(EMAILS[0], is_primary=True)]
    decision = reconcile_member(world.row(), AudiencePolicy(group_id=GID))
    update = decision.mailchimp_update
    subscribes = update is not None and update.status in SUBSCRIBED_STATUSES
    adds = SetGroupStatus(CID, GID, "Added") in decision.actions
    civi_time = -1 if civi_at is None else civi_at
    if mc in UNSUBSCRIBING and civi == "Added" and mc_at > civi_time:
        assert not subscribes
    if civi == "Removed" and civi_at is not None and civi_at > mc_at and mc in SUBSCRIBED_STATUSES:
        assert not adds


@settings(deadline=None, max_examples=300)
@given(
    civi=st.sampled_from([None, "Added", "Removed", "Pending"]),
    civi_at=st.one_of(st.none(), minutes),
    mc=st.sampled_from(sorted(SUBSCRIBED_STATUSES)),
    mc_at=minutes,
    flags_at=st.one_of(st.none(), minutes),
    flag=st.sampled_from(FLAGS),
)
def test_privacy_flag_never_undoes_a_newer_mailchimp_subscribe(
    civi: str | None,
    civi_at: int | None,
    mc: str,
    mc_at: int,
    flags_at: int | None,
    flag: str,
) -> None:
    """Issue 10 item 7: a flag set before the Mailchimp subscribe neither unsubscribes at
    Mailchimp nor writes the group, unless CiviCRM's group changed later still (a removal
    newer than the subscribe is a later choice). A flag set at or after the subscribe (or
    at an unknown time) unsubscribes, as before. Flagged contacts are never Added."""
    world = World(mc_status=mc, mc_email=EMAILS[0], mc_status_at=mc_at, mc_last_changed=mc_at)
    world.group, world.flags, world.flags_at = (civi, civi_at), {flag: True}, flags_at
    world.emails = [EmailRecord(EMAILS[0], is_primary=True)]
    decision = reconcile_member(world.row(), AudiencePolicy(group_id=GID))
    update = decision.mailchimp_update
    assert not any(isinstance(a, SetGroupStatus) for a in decision.actions)
    civicrm_removal_is_newer = civi != "Added" and civi_at is not None and civi_at >= mc_at
    if flags_at is not None and flags_at < mc_at and not civicrm_removal_is_newer:
        assert decision.actions == ()
        assert decision.rule == "privacy-newer-subscribe"
    else:
        assert update is not None and update.status == "unsubscribed"

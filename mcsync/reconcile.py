"""Pure decision logic: the state of one Mailchimp member row and its CiviCRM contact in,
actions out. No I/O, no clock, no SQL; every time is passed in, timezone-aware (UTC).

Rules (DESIGN §4, seed-behaviour §4–§7; the ``rule`` ids name the rows of its tables):

- Subscribed or pending at Mailchimp = Added to the CiviCRM subscription group.
- Per group, the side that changed most recently wins; a tie goes to CiviCRM; with no CiviCRM
  history Mailchimp wins. A row not at Mailchimp never "wins" for Mailchimp, so a CiviCRM-only
  contact is never removed because Mailchimp has not heard of them (the seed's v2 bug).
- Removals at Mailchimp are ``unsubscribed``; ``cleaned`` members are never re-subscribed and
  their email goes on hold in CiviCRM; emails on hold never subscribe; a re-subscribe refused for
  compliance is retried once as ``pending``, then recorded and not tried again until CiviCRM
  changes; a queued update never overrides a later unsubscribe.
- Privacy flags (deceased, do_not_email, is_opt_out; on by default): such contacts are not
  subscribed at Mailchimp (a subscribed member is unsubscribed there), and mcsync leaves their
  CiviCRM group status alone, since the flag is not a group opt-out.
- One contact with several Mailchimp emails stays Added while any of them is subscribed, and an
  unsubscribed address is not re-subscribed while another is (issue #9).
- Interests sync (both ways, same latest-wins rule) and merge fields (CiviCRM → Mailchimp) only
  while the member ends up subscribed.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeAlias

MemberStatus: TypeAlias = Literal[
    "subscribed", "unsubscribed", "cleaned", "pending", "transactional", "archived"
]
GroupStatus: TypeAlias = Literal["Added", "Removed", "Pending", "Deleted"]
Side: TypeAlias = Literal["mailchimp", "civicrm"]

SUBSCRIBED_STATUSES: frozenset[str] = frozenset({"subscribed", "pending"})
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class Reason(enum.StrEnum):
    """Why a row cannot (fully) sync; shown per contact by ``status`` and ``failures``."""

    CLEANED = "cleaned"
    COMPLIANCE = "compliance"
    FORGOTTEN = "forgotten"
    ON_HOLD = "on_hold"
    SEVERAL_EMAILS = "several_emails"
    NO_USABLE_EMAIL = "no_usable_email"
    INVALID_EMAIL = "invalid_email"
    PRIVACY_FLAGS = "privacy_flags"
    NO_CONTACT = "no_contact"
    MEMBER_EXISTS = "member_exists"
    MAILCHIMP_ERROR = "mailchimp_error"
    CIVICRM_ERROR = "civicrm_error"


REASON_TEXT: Mapping[Reason, str] = {
    Reason.CLEANED: "cleaned at Mailchimp (hard bounce or abuse); cannot be re-subscribed",
    Reason.COMPLIANCE: "Mailchimp refused to re-subscribe (compliance state); the person must "
    "re-subscribe through a Mailchimp form or confirm the pending email",
    Reason.FORGOTTEN: "permanently deleted at Mailchimp; cannot be re-imported",
    Reason.ON_HOLD: "the email is on hold in CiviCRM; refusing to subscribe it",
    Reason.SEVERAL_EMAILS: "the contact has another subscribed email in this audience; "
    "fine to ignore",
    Reason.NO_USABLE_EMAIL: "the contact has no email that is not on hold",
    Reason.INVALID_EMAIL: "the email is not a valid address",
    Reason.PRIVACY_FLAGS: "the contact is deceased, do-not-email or opted out of bulk mail",
    Reason.NO_CONTACT: "subscribed at Mailchimp but no CiviCRM contact matched or was created",
    Reason.MEMBER_EXISTS: "Mailchimp says the member exists; two contacts may share the email",
    Reason.MAILCHIMP_ERROR: "Mailchimp refused the update; see title and detail",
    Reason.CIVICRM_ERROR: "CiviCRM refused the group change; see the error",
}


def _require_utc_aware(name: str, value: datetime | None) -> None:
    """Naive datetimes would compare wrongly across the two servers' zones (seed §12)."""
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value.isoformat()}")


# ---- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupState:
    """A contact's state in one CiviCRM group: current status (None = no GroupContact row)
    and the date of the latest SubscriptionHistory row (None = no history), in UTC."""

    status: GroupStatus | None = None
    changed_at: datetime | None = None

    def __post_init__(self) -> None:
        _require_utc_aware("GroupState.changed_at", self.changed_at)

    @property
    def added(self) -> bool:
        return self.status == "Added"


@dataclass(frozen=True)
class EmailRecord:
    """One CiviCRM Email of the contact; ``on_hold`` is CiviCRM's 0/1/2 (non-zero = held)."""

    email: str
    on_hold: int = 0
    is_bulkmail: bool = False
    is_primary: bool = False

    @property
    def held(self) -> bool:
        return self.on_hold != 0


@dataclass(frozen=True)
class MailchimpSide:
    """The member as staged. ``status`` None = not at Mailchimp. ``status_changed_at`` and
    ``interests_changed_at`` are the per-field times staging keeps (seed §3.5 v2); when absent
    ``last_changed`` stands in. ``interests`` holds only interests Mailchimp reported."""

    email: str | None = None
    status: MemberStatus | None = None
    last_changed: datetime | None = None
    status_changed_at: datetime | None = None
    interests: Mapping[str, bool] = field(default_factory=dict)
    interests_changed_at: Mapping[str, datetime] = field(default_factory=dict)
    merge_fields: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status is not None and not self.email:
            raise ValueError("MailchimpSide.email is required when status is set")
        _require_utc_aware("MailchimpSide.last_changed", self.last_changed)
        _require_utc_aware("MailchimpSide.status_changed_at", self.status_changed_at)
        for key, at in self.interests_changed_at.items():
            _require_utc_aware(f"MailchimpSide.interests_changed_at[{key}]", at)

    @property
    def subscribed(self) -> bool:
        return self.status in SUBSCRIBED_STATUSES

    @property
    def status_time(self) -> datetime | None:
        return self.status_changed_at or self.last_changed

    def interest_time(self, interest_id: str) -> datetime | None:
        return self.interests_changed_at.get(interest_id) or self.last_changed


@dataclass(frozen=True)
class CivicrmSide:
    """The matched contact (``contact_id`` None = unmatched). ``interest_groups`` maps each
    mapped interest's CiviCRM group id to its state; ``merge_fields`` are the values CiviCRM
    wants at Mailchimp (merge tag → value, from the one-way feeds)."""

    contact_id: int | None = None
    subscription: GroupState = field(default_factory=GroupState)
    interest_groups: Mapping[int, GroupState] = field(default_factory=dict)
    is_deleted: bool = False
    is_deceased: bool = False
    do_not_email: bool = False
    is_opt_out: bool = False
    emails: tuple[EmailRecord, ...] = ()
    merge_fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def has_privacy_flag(self) -> bool:
        return self.is_deceased or self.do_not_email or self.is_opt_out


@dataclass(frozen=True)
class Sibling:
    """Another Mailchimp member row of the same contact in the same audience (issue #9)."""

    email: str
    status: MemberStatus | None


@dataclass(frozen=True)
class Refusal:
    """Mailchimp permanently refused to subscribe ``email`` (see ``BatchOutcome``). The engine
    stores the row's CiviCRM subscription ``changed_at`` at that moment; a later CiviCRM change
    (a fresh opt-in) allows one more attempt. No clock is involved."""

    reason: Reason
    email: str
    civicrm_changed_at: datetime | None

    def __post_init__(self) -> None:
        _require_utc_aware("Refusal.civicrm_changed_at", self.civicrm_changed_at)


@dataclass(frozen=True)
class MemberRow:
    """One staging row: a Mailchimp member and/or a CiviCRM contact of one audience.
    ``mailchimp_email_on_hold``: the member's address is on hold on any CiviCRM Email record,
    of any contact (seed §4.5)."""

    mailchimp: MailchimpSide = field(default_factory=MailchimpSide)
    civicrm: CivicrmSide = field(default_factory=CivicrmSide)
    siblings: tuple[Sibling, ...] = ()
    mailchimp_email_on_hold: bool = False
    refusal: Refusal | None = None

    @property
    def sibling_subscribed(self) -> bool:
        return any(s.status in SUBSCRIBED_STATUSES for s in self.siblings)


@dataclass(frozen=True)
class AudiencePolicy:
    """Per-audience settings. ``trust`` / ``interest_trust`` are one-shot overrides that make
    the named side win regardless of times (symmetric, unlike the seed's)."""

    group_id: int
    interest_groups: Mapping[str, int] = field(default_factory=dict)
    respect_privacy_flags: bool = True
    trust: Side | None = None
    interest_trust: Mapping[str, Side] = field(default_factory=dict)
    blank_merge_fields: bool = False


# ---- outputs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetGroupStatus:
    """Write GroupContact status (only emitted when it differs from the current one)."""

    contact_id: int
    group_id: int
    status: Literal["Added", "Removed"]


@dataclass(frozen=True)
class PutEmailOnHold:
    """Put the contact's Email records with this address on hold (cleaned at Mailchimp)."""

    contact_id: int
    email: str


@dataclass(frozen=True)
class QueueMailchimpUpdate:
    """A member PUT to ``/lists/{list}/members/{md5(lower(email))}``; ``body`` always has
    ``email_address`` and ``status_if_new`` and, when the status must change, ``status``."""

    email: str
    body: Mapping[str, Any]

    @property
    def status(self) -> str | None:
        status = self.body.get("status")
        return str(status) if status is not None else None


Action: TypeAlias = SetGroupStatus | PutEmailOnHold | QueueMailchimpUpdate


@dataclass(frozen=True)
class InterestOutcome:
    """What one mapped interest decided: a CiviCRM write (``set_group``) or a value to push."""

    interest_id: str
    group_id: int
    rule: str
    set_group: Literal["Added", "Removed"] | None = None
    push: bool | None = None


@dataclass(frozen=True)
class Decision:
    """The result for one row. ``final_subscribed``: the member ends up subscribed/pending at
    Mailchimp (gates interests, merge fields and queued updates). ``reason`` is set when the
    row cannot fully sync; ``rule`` names the decision-table row applied."""

    rule: str
    final_subscribed: bool
    actions: tuple[Action, ...] = ()
    reason: Reason | None = None
    interests: tuple[InterestOutcome, ...] = ()

    @property
    def mailchimp_update(self) -> QueueMailchimpUpdate | None:
        return next((a for a in self.actions if isinstance(a, QueueMailchimpUpdate)), None)

    @property
    def civicrm_actions(self) -> tuple[SetGroupStatus | PutEmailOnHold, ...]:
        return tuple(a for a in self.actions if not isinstance(a, QueueMailchimpUpdate))


# ---- helpers --------------------------------------------------------------------------------


def most_recent(
    civicrm: GroupState,
    mailchimp_time: datetime | None,
    *,
    at_mailchimp: bool,
    trust: Side | None = None,
) -> Side:
    """Which side's state wins for one group (seed §5.1, with symmetric overrides)."""
    if trust == "civicrm" or not at_mailchimp:
        return "civicrm"
    if trust == "mailchimp" or civicrm.changed_at is None:
        return "mailchimp"
    if mailchimp_time is None or civicrm.changed_at >= mailchimp_time:
        return "civicrm"
    return "mailchimp"


def looks_like_email(address: str) -> bool:
    """A minimal syntax check, so obviously broken addresses are reported, not sent."""
    return bool(_EMAIL_RE.fullmatch(address))


def choose_best_email(emails: Sequence[EmailRecord]) -> str | None:
    """Seed §4.4: not on hold, not empty, valid; bulk-mail first, then primary, then the
    caller's order (pass records in id order)."""
    usable = [e for e in emails if not e.held and looks_like_email(e.email.strip())]
    usable.sort(key=lambda e: (not e.is_bulkmail, not e.is_primary))
    return usable[0].email.strip() if usable else None


def _no_email_reason(emails: Sequence[EmailRecord]) -> Reason:
    if any(not e.held and e.email.strip() for e in emails):
        return Reason.INVALID_EMAIL
    return Reason.NO_USABLE_EMAIL


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.strip().lower() == b.strip().lower()


def member_body(email: str, status: str) -> dict[str, Any]:
    """The PUT body that sets a status on existing and new members alike."""
    return {"email_address": email, "status": status, "status_if_new": status}


def _refused(row: MemberRow, email: str) -> Reason | None:
    """The stored refusal still applies unless CiviCRM changed since (a fresh opt-in)."""
    refusal, changed = row.refusal, row.civicrm.subscription.changed_at
    if refusal is None or not _same(refusal.email, email):
        return None
    if changed is not None and (
        refusal.civicrm_changed_at is None or changed > refusal.civicrm_changed_at
    ):
        return None
    return refusal.reason


def _hold_actions(row: MemberRow) -> tuple[PutEmailOnHold, ...]:
    """A cleaned member's address goes on hold in CiviCRM, at fetch time too (seed §12)."""
    m, c = row.mailchimp, row.civicrm
    if m.status != "cleaned" or c.contact_id is None:
        return ()
    if any(_same(e.email, m.email) and not e.held for e in c.emails):
        return (PutEmailOnHold(c.contact_id, str(m.email)),)
    return ()


# ---- subscription (seed §5.2) ---------------------------------------------------------------


def decide_subscription(row: MemberRow, policy: AudiencePolicy) -> Decision:
    """Decide the subscription group and the member's Mailchimp status for one row."""
    m, c = row.mailchimp, row.civicrm
    if c.contact_id is None or c.is_deleted:
        # Matching and creation happen before reconciling; deleted contacts never match.
        reason = Reason.NO_CONTACT if m.subscribed else None
        return Decision("no-contact", m.subscribed, reason=reason)
    hold = _hold_actions(row)
    if policy.respect_privacy_flags and c.has_privacy_flag:
        if m.subscribed:
            unsubscribe = QueueMailchimpUpdate(
                str(m.email), member_body(str(m.email), "unsubscribed")
            )
            return Decision(
                "privacy-unsubscribe", False, (*hold, unsubscribe), Reason.PRIVACY_FLAGS
            )
        reason = Reason.PRIVACY_FLAGS if c.subscription.added else None
        return Decision("privacy-keep-group", False, hold, reason)
    side = most_recent(
        c.subscription, m.status_time, at_mailchimp=m.status is not None, trust=policy.trust
    )
    if side == "mailchimp":
        return _mailchimp_wins(row, policy, c.contact_id, hold)
    return _civicrm_wins(row, c.contact_id, hold)


def _mailchimp_wins(
    row: MemberRow, policy: AudiencePolicy, contact_id: int, hold: tuple[PutEmailOnHold, ...]
) -> Decision:
    """Case A: CiviCRM follows Mailchimp."""
    m, group = row.mailchimp, row.civicrm.subscription
    if m.subscribed:
        if group.added:
            return Decision("5.2-A1", True, hold)
        return Decision(
            "5.2-A3", True, (*hold, SetGroupStatus(contact_id, policy.group_id, "Added"))
        )
    if not group.added:
        return Decision("5.2-A4", False, hold)
    if row.sibling_subscribed:
        return Decision("5.2-A2-several-emails", False, hold, Reason.SEVERAL_EMAILS)
    return Decision(
        "5.2-A2", False, (*hold, SetGroupStatus(contact_id, policy.group_id, "Removed"))
    )


def _civicrm_wins(row: MemberRow, contact_id: int, hold: tuple[PutEmailOnHold, ...]) -> Decision:
    """Case B: Mailchimp follows CiviCRM."""
    m, c = row.mailchimp, row.civicrm
    group = c.subscription
    if not group.added:
        # Pending (awaiting CiviCRM's own double opt-in) is not Added (seed §5.1): until the
        # person confirms, a newer Pending after a removal must not leave them subscribed.
        if m.subscribed:
            email = str(m.email)
            return Decision(
                "5.2-B5",
                False,
                (*hold, QueueMailchimpUpdate(email, member_body(email, "unsubscribed"))),
            )
        return Decision("5.2-B6", False, hold)
    if m.subscribed:
        return Decision("5.2-B1", True, hold)
    row_id = "5.2-B2" if m.status is None else "5.2-B4" if m.status == "cleaned" else "5.2-B3"
    if row.sibling_subscribed:
        return Decision(f"{row_id}-several-emails", False, hold, Reason.SEVERAL_EMAILS)
    if m.status == "cleaned":
        return Decision(row_id, False, hold, Reason.CLEANED)
    if m.status is None:
        best = choose_best_email(c.emails)
        if best is None:
            return Decision(row_id, False, hold, _no_email_reason(c.emails))
        email = best
    else:
        email = str(m.email)
        held = row.mailchimp_email_on_hold or any(
            _same(e.email, email) and e.held for e in c.emails
        )
        if held:
            return Decision(f"{row_id}-on-hold", False, hold, Reason.ON_HOLD)
    refused = _refused(row, email)
    if refused is not None:
        return Decision(f"{row_id}-refused", False, hold, refused)
    update = QueueMailchimpUpdate(email, member_body(email, "subscribed"))
    return Decision(row_id, True, (*hold, update))


# ---- interests (seed §5.3) and merge fields (§10) ---------------------------------------------


def decide_interests(row: MemberRow, policy: AudiencePolicy) -> tuple[InterestOutcome, ...]:
    """Decide every mapped interest of a member that ends up subscribed (the caller gates)."""
    m, c = row.mailchimp, row.civicrm
    outcomes = []
    for interest_id, group_id in sorted(policy.interest_groups.items()):
        group = c.interest_groups.get(group_id, GroupState())
        outcomes.append(_decide_interest(m, group, interest_id, group_id, policy))
    return tuple(outcomes)


def _decide_interest(
    m: MailchimpSide, group: GroupState, interest_id: str, group_id: int, policy: AudiencePolicy
) -> InterestOutcome:
    if m.status is None:
        # A new member: CiviCRM's groups are the only data there is.
        return InterestOutcome(interest_id, group_id, "5.3-new-member", push=group.added)
    if interest_id not in m.interests:
        return InterestOutcome(interest_id, group_id, "5.3-I1-no-data")
    value = m.interests[interest_id]
    if value == group.added:
        return InterestOutcome(interest_id, group_id, "5.3-I2-equal")
    side = most_recent(
        group,
        m.interest_time(interest_id),
        at_mailchimp=True,
        trust=policy.interest_trust.get(interest_id),
    )
    if side == "mailchimp":
        status: Literal["Added", "Removed"] = "Added" if value else "Removed"
        return InterestOutcome(interest_id, group_id, "5.3-I3", set_group=status)
    if group.status == "Pending":
        return InterestOutcome(interest_id, group_id, "5.3-civicrm-pending")
    return InterestOutcome(interest_id, group_id, "5.3-I4", push=group.added)


def decide_merge_fields(row: MemberRow, blank: bool = False) -> dict[str, Any]:
    """CiviCRM → Mailchimp only, and only values that differ from what Mailchimp has as far as
    mcsync knows (``MailchimpSide.merge_fields``). An empty CiviCRM value never wipes
    Mailchimp's (seed §10) unless ``blank``; then it clears a known non-empty value."""
    m = row.mailchimp
    changes: dict[str, Any] = {}
    for tag, value in sorted(row.civicrm.merge_fields.items()):
        known = m.merge_fields.get(tag)
        if value in (None, ""):
            if blank and m.status is not None and known not in (None, ""):
                changes[tag] = ""
        elif m.status is None or known != value:
            changes[tag] = value
    return changes


def reconcile_member(row: MemberRow, policy: AudiencePolicy) -> Decision:
    """Subscription, then (only while subscribed) interests and merge fields, as one update."""
    decision = decide_subscription(row, policy)
    contact_id = row.civicrm.contact_id
    if not decision.final_subscribed or contact_id is None or row.civicrm.is_deleted:
        return decision
    outcomes = decide_interests(row, policy)
    writes = tuple(
        SetGroupStatus(contact_id, o.group_id, o.set_group) for o in outcomes if o.set_group
    )
    pushes = {o.interest_id: o.push for o in outcomes if o.push is not None}
    merge_fields = decide_merge_fields(row, policy.blank_merge_fields)
    update = decision.mailchimp_update
    if update is None and (pushes or merge_fields):
        m = row.mailchimp
        email = str(m.email)
        update = QueueMailchimpUpdate(email, {"email_address": email, "status_if_new": m.status})
    actions: list[Action] = list(decision.civicrm_actions)
    actions.extend(writes)
    if update is not None:
        body = dict(update.body)
        if pushes:
            body["interests"] = pushes
        if merge_fields:
            body["merge_fields"] = merge_fields
        actions.append(QueueMailchimpUpdate(update.email, body))
    return Decision(decision.rule, True, tuple(actions), decision.reason, outcomes)


# ---- email changes in CiviCRM (seed §5.5) -------------------------------------------------------


@dataclass(frozen=True)
class ChangeMemberEmail:
    """PATCH the member at ``old_email``'s hash with ``email_address = new_email``."""

    old_email: str
    new_email: str


def decide_email_change(row: MemberRow, policy: AudiencePolicy) -> ChangeMemberEmail | None:
    """A subscribed member follows the contact's best email, unless that address already has
    its own member row (it would collide) or the contact is not to be mailed at all."""
    m, c = row.mailchimp, row.civicrm
    if m.status != "subscribed" or not m.email or c.contact_id is None or c.is_deleted:
        return None
    if policy.respect_privacy_flags and c.has_privacy_flag:
        return None
    best = choose_best_email(c.emails)
    if best is None or _same(best, m.email) or any(_same(s.email, best) for s in row.siblings):
        return None
    return ChangeMemberEmail(m.email, best)


# ---- matching and creation (seed §4.2–§4.3) ------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A contact owning the member's email. ``in_group``: Added to the subscription group;
    ``has_group_history``: any SubscriptionHistory row for it. Several records per contact
    (one per Email) are fine."""

    contact_id: int
    is_deleted: bool = False
    in_group: bool = False
    has_group_history: bool = False


class MatchRule(enum.StrEnum):
    """Which step of the matching order found the contact (the seed's stat names)."""

    SOLE_OWNER = "found_by_single_email"
    IN_GROUP = "used_first_undeleted_contact_in_group"
    WITH_HISTORY = "used_first_undeleted_contact_with_group_history"
    LOWEST_ID = "used_first_undeleted_contact"


@dataclass(frozen=True)
class Match:
    contact_id: int
    rule: MatchRule


def choose_contact(candidates: Sequence[Candidate]) -> Match | None:
    """Sole owner → lowest id Added → lowest id with history → lowest id; never deleted."""
    live: dict[int, Candidate] = {}
    for cand in candidates:
        if cand.is_deleted:
            continue
        seen = live.get(cand.contact_id)
        if seen is not None:
            cand = Candidate(
                cand.contact_id,
                in_group=cand.in_group or seen.in_group,
                has_group_history=cand.has_group_history or seen.has_group_history,
            )
        live[cand.contact_id] = cand
    if not live:
        return None
    if len(live) == 1:
        return Match(next(iter(live)), MatchRule.SOLE_OWNER)
    for rule, wanted in (
        (MatchRule.IN_GROUP, [i for i, c in live.items() if c.in_group]),
        (MatchRule.WITH_HISTORY, [i for i, c in live.items() if c.has_group_history]),
        (MatchRule.LOWEST_ID, list(live)),
    ):
        if wanted:
            return Match(min(wanted), rule)
    raise AssertionError("unreachable: LOWEST_ID always has a candidate")


def match_contact(candidates: Sequence[Candidate]) -> int | None:
    """The contact id ``choose_contact`` picks, or None."""
    match = choose_contact(candidates)
    return match.contact_id if match else None


def should_create_contact(member_status: str | None) -> bool:
    """Only subscribed or pending members become new contacts (seed §4.3)."""
    return member_status in SUBSCRIBED_STATUSES


# ---- the update queue (seed §2.4, §5.2 B3, issue #10) ------------------------------------------

ABORT_SUPERSEDED = "Superseded by a newer update before it was submitted."
ABORT_NOT_SUBSCRIBED = "Aborted: the member is no longer to be subscribed."


@dataclass(frozen=True)
class QueuedUpdate:
    """An unsubmitted member update of the row (not in a batch, not completed)."""

    update_id: int
    body: Mapping[str, Any]


@dataclass(frozen=True)
class AbortUpdate:
    update_id: int
    reason: str


@dataclass(frozen=True)
class QueuePlan:
    """Mark ``abort`` completed with their reason, then insert ``enqueue`` (if any)."""

    abort: tuple[AbortUpdate, ...] = ()
    enqueue: QueueMailchimpUpdate | None = None


def keep_pending(
    unsubmitted: Sequence[QueuedUpdate], new: QueueMailchimpUpdate
) -> QueueMailchimpUpdate:
    """A queued ``pending`` (the compliance retry) turns a new ``subscribed`` into ``pending``,
    so later runs never queue ``subscribed`` over it (issue #10)."""
    if new.status != "subscribed" or not any(
        u.body.get("status") == "pending" for u in unsubmitted
    ):
        return new
    return QueueMailchimpUpdate(
        new.email, {**new.body, "status": "pending", "status_if_new": "pending"}
    )


def plan_queue(unsubmitted: Sequence[QueuedUpdate], decision: Decision) -> QueuePlan:
    """Fold a decision into the row's unsubmitted updates.

    A decision is the whole delta computed from both sides' current state (interests and merge
    fields included), so every older unsubmitted update is stale and is aborted: a subscribe
    never goes out after a later unsubscribe, and an old interest value never overwrites a newer
    one. The seed merged old bodies underneath because its data feeds were one-shot; mcsync's are
    state-based. An unsubmitted update identical to the new one is kept instead of re-queued.
    """
    new = decision.mailchimp_update
    if new is not None and decision.final_subscribed:
        new = keep_pending(unsubmitted, new)
    keep = next((u for u in unsubmitted if new is not None and u.body == new.body), None)
    why = ABORT_SUPERSEDED if decision.final_subscribed else ABORT_NOT_SUBSCRIBED
    aborts = tuple(AbortUpdate(u.update_id, why) for u in unsubmitted if u is not keep)
    return QueuePlan(aborts, None if keep is not None else new)


# ---- batch / direct write results (seed §7, §5.4) ----------------------------------------------

COMPLIANCE_TITLE = "Member In Compliance State"
FORGOTTEN_TITLE = "Forgotten Email Not Subscribed"


@dataclass(frozen=True)
class Failure:
    """A refused update. ``blocks_resubscribe``: store a ``Refusal`` for the row so the same
    subscribe is not tried again until CiviCRM changes."""

    reason: Reason
    status_code: int
    title: str
    detail: str
    blocks_resubscribe: bool


@dataclass(frozen=True)
class BatchOutcome:
    """``ok``: completed (``recheck``: Mailchimp kept another status, e.g. cleaned; mark the
    row to reconcile again). ``retry``: queue ``retry_body`` as a new update for the row, which
    stays live. ``failed``: record ``failure`` on the row."""

    kind: Literal["ok", "retry", "failed"]
    retry_body: dict[str, Any] | None = None
    failure: Failure | None = None
    recheck: bool = False


def apply_batch_result(
    body: Mapping[str, Any],
    status_code: int,
    *,
    title: str = "",
    detail: str = "",
    member_status: str | None = None,
) -> BatchOutcome:
    """Classify one operation's result (``title``/``detail`` from Mailchimp's problem body,
    ``member_status`` from a 2xx member response)."""
    asked = body.get("status")
    if 200 <= status_code < 300:
        recheck = asked is not None and member_status is not None and member_status != asked
        return BatchOutcome("ok", recheck=recheck)
    if status_code == 400 and title == COMPLIANCE_TITLE and asked == "subscribed":
        # Retried once as pending: Mailchimp emails a confirmation (seed §5.4, issue #10).
        retry = {**body, "status": "pending", "status_if_new": "pending"}
        return BatchOutcome("retry", retry_body=retry)
    reason, blocks = _classify_error(status_code, title, detail)
    return BatchOutcome("failed", failure=Failure(reason, status_code, title, detail, blocks))


def _classify_error(status_code: int, title: str, detail: str) -> tuple[Reason, bool]:
    if status_code == 400 and title == COMPLIANCE_TITLE:
        return Reason.COMPLIANCE, True
    if status_code == 400 and title == FORGOTTEN_TITLE:
        return Reason.FORGOTTEN, True
    if status_code == 400 and "looks fake or invalid" in detail:
        return Reason.INVALID_EMAIL, True
    if status_code == 400 and title == "Member Exists":
        return Reason.MEMBER_EXISTS, False
    return Reason.MAILCHIMP_ERROR, False

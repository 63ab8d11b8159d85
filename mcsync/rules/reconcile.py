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
  CiviCRM group status alone, since the flag is not a group opt-out. A Mailchimp subscribe
  newer than the flag is a later choice: it is not undone, only reported (issue 10).
- Cleaned puts the email on hold once, on the transition: an admin who takes a repaired
  address off hold afterwards is not overruled (issue 10).
- One contact with several Mailchimp emails stays Added while any of them is subscribed, and an
  unsubscribed address is not re-subscribed while another is (issue #9).
- A removal from the group made in CiviCRM before the contact was trashed, later than the
  member's subscribe, unsubscribes the member (no contact is created for it), and outranks
  an older group state of another, live contact with the address; trash alone is no choice
  (seed §4.1). So does a trashed contact's privacy flag later than the subscribe; one whose
  order against it is unknown is reported and changes nothing. A trashed contact's removal
  from a mapped interest group, later than the member's interest, is kept the same way: the
  (new or older) contact is not added to the group from that interest, which is switched off.
- Interests sync (both ways, same latest-wins rule) and merge fields (CiviCRM → Mailchimp) only
  while the member ends up subscribed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal, TypeAlias

from mcsync.rules.addresses import fold_email
from mcsync.rules.matching import TrashedFlagOrder, trashed_flag_order, trashed_removal_wins
from mcsync.rules.member_state import (
    AudiencePolicy,
    CivicrmSide,
    EmailRecord,
    GroupState,
    MailchimpSide,
    MemberRow,
    Side,
)
from mcsync.rules.reasons import (
    EMAIL_CHANGE_REASONS,
    Reason,
    newer_subscribe_detail,
    trashed_flag_detail,
    unordered_subscribe_detail,
)

_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


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
    """A member PUT to ``/lists/{list}/members/{md5(fold_email(email))}``; ``body`` always has
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
    row cannot fully sync, with ``detail`` for the failure list when there is more to say;
    ``rule`` names the decision-table row applied. A member mcsync leaves alone (a flagged
    contact's newer sign-up) is not ``final_subscribed``: nothing is pushed for it."""

    rule: str
    final_subscribed: bool
    actions: tuple[Action, ...] = ()
    reason: Reason | None = None
    interests: tuple[InterestOutcome, ...] = ()
    detail: str | None = None

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
    prefer: Side | None = None,
) -> Side:
    """Which side's state wins for one group: the later choice (seed §5.1). Where the order
    cannot be told — a tie, or a side with no date — ``prefer`` decides; without it a tie or
    an undated Mailchimp status goes to CiviCRM and an undated CiviCRM status to Mailchimp. A
    contact never in the group (no GroupContact, no history) made no choice to prefer: the
    member's state is the only one there is."""
    if not at_mailchimp:
        return "civicrm"
    if civicrm.changed_at is None:
        return "mailchimp" if civicrm.status is None else prefer or "mailchimp"
    if mailchimp_time is None or civicrm.changed_at == mailchimp_time:
        return prefer or "civicrm"
    return "civicrm" if civicrm.changed_at > mailchimp_time else "mailchimp"


def order_unknown(mailchimp: MailchimpSide, civicrm: GroupState) -> bool:
    """The Mailchimp status change is known only to lie after ``status_changed_after`` and by
    its status time (or its ``last_changed``, for a status that may have gone and come back),
    and CiviCRM changed strictly in between: neither side can be said to be the later
    choice, so neither may overwrite the other (DESIGN §4). For a possible round trip (a
    known status time at or before the bound), the latest change is either that known time
    or after the bound, so a CiviCRM change from the known time on is unordered too."""
    after = mailchimp.status_changed_after
    ends = [t for t in (mailchimp.status_time, mailchimp.last_changed) if t is not None]
    until = max(ends, default=None)
    changed = civicrm.changed_at
    if after is None or until is None or changed is None:
        return False
    known = mailchimp.status_time
    lower = min(after, known) if known is not None else after
    return lower < changed < until


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
    return a is not None and b is not None and fold_email(a) == fold_email(b)


def member_body(email: str, status: str) -> dict[str, Any]:
    """The PUT body that sets a status on existing and new members alike."""
    return {"email_address": email, "status": status, "status_if_new": status}


def unsubscribe_body(email: str) -> dict[str, Any]:
    """The PUT body of an unsubscribe: no ``status_if_new``, so Mailchimp refuses to create a
    member from it. An unsubscribe is for a member mcsync read; one deleted since (after an
    address change, its old address is not on Mailchimp's forgotten list) or moved to another
    address is absent, and creating an unsubscribed member there would change that state
    from a choice older than it (DESIGN §4). The refusal tells mcsync the member is gone."""
    return {"email_address": email, "status": "unsubscribed"}


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
    """A cleaned member's address goes on hold in CiviCRM, at fetch time too (seed §12), on
    the transition only: once mcsync has acted on it, the hold is an admin's to lift."""
    m, c = row.mailchimp, row.civicrm
    if m.status != "cleaned" or c.contact_id is None or row.cleaned_handled:
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
        if (
            c.contact_id is None
            and m.subscribed
            and trashed_removal_wins(row.trashed_removal_at, m.status_time, policy.prefer)
        ):
            # Staff removed the address's contact from the group, later than this subscribe,
            # then trashed the contact: that removal is the later choice (DESIGN §4).
            email = str(m.email)
            unsubscribe = QueueMailchimpUpdate(email, unsubscribe_body(email))
            return Decision("4.1-trashed-removal", False, (unsubscribe,))
        if c.contact_id is None and m.subscribed:
            trashed_flag = _trashed_flag_decision(row, policy)
            if trashed_flag is not None:
                return trashed_flag
        reason = Reason.NO_CONTACT if m.subscribed else None
        return Decision("no-contact", m.subscribed, reason=reason)
    hold = _hold_actions(row)
    if _trashed_removal_outranks(row):
        return _trashed_removal_of_co_owner(row, policy, c.contact_id, hold)
    if policy.respect_privacy_flags and c.has_privacy_flag:
        detail = _subscribed_after_flag(m, c)
        if detail is not None:
            return _newer_subscribe_of_flagged(row, policy, c.contact_id, hold, detail)
        if m.subscribed:
            unsubscribe = QueueMailchimpUpdate(str(m.email), unsubscribe_body(str(m.email)))
            return Decision(
                "privacy-unsubscribe", False, (*hold, unsubscribe), Reason.PRIVACY_FLAGS
            )
        reason = Reason.PRIVACY_FLAGS if c.subscription.added else None
        return Decision("privacy-keep-group", False, hold, reason)
    if order_unknown(m, c.subscription) and m.subscribed != c.subscription.added:
        # Only a disagreement needs an order: when both sides already agree there is nothing
        # to write, whichever choice came last, and nothing to report.
        if policy.prefer is None:
            return Decision("order-unknown", False, hold, Reason.ORDER_UNKNOWN)
        side = policy.prefer
    else:
        side = most_recent(
            c.subscription, m.status_time, at_mailchimp=m.status is not None, prefer=policy.prefer
        )
    if side == "mailchimp":
        return _mailchimp_wins(row, policy, c.contact_id, hold)
    return _civicrm_wins(row, c.contact_id, hold)


def _trashed_flag_decision(row: MemberRow, policy: AudiencePolicy) -> Decision | None:
    """A subscribed member with no contact, whose address a trashed contact with a privacy
    flag owns (the flag, set before or after the trash, is a choice; the trash is none). A
    flag later than the subscribe unsubscribes the member, as for a live flagged contact; a
    flag that cannot be ordered against it (trashing moved the contact's modified date) is
    reported, and neither side is changed. None: the subscribe is later, or no such flag."""
    if not policy.respect_privacy_flags:
        return None
    m = row.mailchimp
    order = trashed_flag_order(
        row.trashed_flag_after,
        row.trashed_flag_by,
        m.status_time,
        m.status_changed_after,
        m.last_changed,
    )
    if order == TrashedFlagOrder.FLAG_LATER:
        email = str(m.email)
        unsubscribe = QueueMailchimpUpdate(email, unsubscribe_body(email))
        return Decision("4.1-trashed-privacy-flag", False, (unsubscribe,))
    if (
        order == TrashedFlagOrder.UNKNOWN
        and row.trashed_flag_by is not None
        and policy.prefer != "mailchimp"  # the audience gives Mailchimp what cannot be ordered
    ):
        detail = trashed_flag_detail(row.trashed_flag_by, m.status_time)
        return Decision(
            "4.1-trashed-privacy-flag-order-unknown",
            False,
            reason=Reason.ORDER_UNKNOWN,
            detail=detail,
        )
    return None


def _trashed_removal_outranks(row: MemberRow) -> bool:
    """A trashed owner of the member's address was removed from the group later than the
    member's status change and later than the matched (live) contact's own group change
    (or that has no date): the removal is the latest choice made on the address, so the
    live contact's older state must not keep the member subscribed (DESIGN §4)."""
    removed_at, changed = row.trashed_removal_at, row.civicrm.subscription.changed_at
    if not trashed_removal_wins(removed_at, row.mailchimp.status_time):
        return False
    return removed_at is not None and (changed is None or changed < removed_at)


def _trashed_removal_of_co_owner(
    row: MemberRow, policy: AudiencePolicy, contact_id: int, hold: tuple[PutEmailOnHold, ...]
) -> Decision:
    """Propagate a trashed owner's removal, the latest choice on the address: the member is
    unsubscribed and the live contact leaves the group (its own state is older), unless
    another of its addresses is subscribed (issue #9)."""
    m, group = row.mailchimp, row.civicrm.subscription
    actions: list[Action] = list(hold)
    if group.added and not row.sibling_subscribed:
        actions.append(SetGroupStatus(contact_id, policy.group_id, "Removed"))
    if m.subscribed:
        email = str(m.email)
        actions.append(QueueMailchimpUpdate(email, unsubscribe_body(email)))
    return Decision("4.1-trashed-removal-co-owner", False, tuple(actions))


def _subscribed_after_flag(m: MailchimpSide, c: CivicrmSide) -> str | None:
    """The failure detail when the member's subscribe at Mailchimp may be newer than the
    privacy flag: strictly after the flag's time; or possibly so, when the two cannot be put
    in order (the flag is only known to follow ``flags_changed_after``, its time may be a
    later edit's; a subscribe that may have gone and come back since
    ``status_changed_after`` may be as late as ``last_changed``): the sign-up is not undone
    on a guess. None otherwise (a tie, or either time unknown, leaves the flag in charge, as
    a tie goes to CiviCRM)."""
    subscribed_at, flags_at = m.status_time, c.flags_changed_at
    if not (m.subscribed and subscribed_at and flags_at):
        return None
    if subscribed_at > flags_at:
        return newer_subscribe_detail(subscribed_at, flags_at)
    latest = subscribed_at
    if m.status_changed_after is not None and m.last_changed is not None:
        latest = max(latest, m.last_changed)
    after = c.flags_changed_after or flags_at
    if latest > after:
        return unordered_subscribe_detail(latest, after, flags_at)
    return None


def _newer_subscribe_of_flagged(
    row: MemberRow,
    policy: AudiencePolicy,
    contact_id: int,
    hold: tuple[PutEmailOnHold, ...],
    detail: str,
) -> Decision:
    """A flagged contact subscribed at Mailchimp after the flag was set: the sign-up is the
    later choice, so the flag does not undo it; a group removal in CiviCRM newer still does
    (5.2-B5). Nothing else is written: the group is left alone (the flag is not a group
    choice) and the row is reported for a person to check the flag."""
    m, c = row.mailchimp, row.civicrm
    side = most_recent(c.subscription, m.status_time, at_mailchimp=True, prefer=policy.prefer)
    if side == "civicrm" and not c.subscription.added:
        return _civicrm_wins(row, contact_id, hold)
    return Decision("privacy-newer-subscribe", False, hold, Reason.PRIVACY_FLAGS, detail=detail)


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
                (*hold, QueueMailchimpUpdate(email, unsubscribe_body(email))),
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
        if fold_email(best) in row.addresses_in_use:
            # Two contacts share the address and the member is linked to the other one:
            # that contact's row decides the member (subscribing here would fight it).
            return Decision(f"{row_id}-address-in-use", False, hold, Reason.MEMBER_EXISTS)
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
        removed_at = row.trashed_interest_removals.get(group_id)
        outcome = _trashed_interest_removal(m, group, interest_id, group_id, removed_at, policy)
        if outcome is None:
            outcome = _decide_interest(m, group, interest_id, group_id, policy)
        outcomes.append(outcome)
    return tuple(outcomes)


def _trashed_interest_removal(
    m: MailchimpSide,
    group: GroupState,
    interest_id: str,
    group_id: int,
    removed_at: datetime | None,
    policy: AudiencePolicy,
) -> InterestOutcome | None:
    """A trashed owner of the address was removed from this interest's group later than the
    member's interest and than the contact's own change to the group (or that has no date):
    as for the subscription group (`_trashed_removal_outranks`), that removal is the latest
    choice on the address, so the contact (often one created for the member, with no state
    of its own) is not added from the older interest, leaves the group if in it, and the
    interest is switched off at Mailchimp. None: no such removal; the usual rules decide."""
    if m.status is None or interest_id not in m.interests:
        return None
    if not trashed_removal_wins(removed_at, m.interest_time(interest_id), policy.prefer):
        return None
    if removed_at is None or (group.changed_at is not None and group.changed_at >= removed_at):
        return None
    return InterestOutcome(
        interest_id,
        group_id,
        "4.1-trashed-interest-removal",
        set_group="Removed" if group.added else None,
        push=False if m.interests[interest_id] else None,
    )


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
        prefer=policy.prefer,
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
    """Subscription, then (only while subscribed) interests and merge fields, as one update.
    A row that syncs otherwise but whose address change Mailchimp refused (§5.5) reports the
    refusal; the change itself is made by the push (``decide_email_change``)."""
    decision = _reconcile_member(row, policy)
    if decision.reason is None:
        change = decide_email_change(row, policy)
        if isinstance(change, EmailChangeRefused):
            return replace(decision, reason=change.reason)
    return decision


def _reconcile_member(row: MemberRow, policy: AudiencePolicy) -> Decision:
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
    if update is not None and row.mailchimp.status == "archived" and "status" in update.body:
        # An archived member may since have been deleted permanently (mcsync cannot tell):
        # the subscribe then creates a fresh member with no interests. Say the interests it
        # keeps, so the member shows them either way and mcsync's own write is never read
        # back as the person's choice (model seed 1: a blank interest removed the contact).
        pushes = {**row.mailchimp.interests, **pushes}
    if update is None and (pushes or merge_fields):
        # No status and no `status_if_new`: a data update never creates a member (one deleted
        # or moved since mcsync read it would come back subscribed), as for an unsubscribe.
        email = str(row.mailchimp.email)
        update = QueueMailchimpUpdate(email, {"email_address": email})
    actions: list[Action] = list(decision.civicrm_actions)
    actions.extend(writes)
    if update is not None:
        body = dict(update.body)
        if pushes:
            body["interests"] = pushes
        if merge_fields:
            body["merge_fields"] = merge_fields
        actions.append(QueueMailchimpUpdate(update.email, body))
    return Decision(decision.rule, True, tuple(actions), decision.reason, outcomes, decision.detail)


# ---- email changes in CiviCRM (seed §5.5) -------------------------------------------------------


@dataclass(frozen=True)
class ChangeMemberEmail:
    """PATCH the member at ``old_email``'s hash with ``email_address = new_email`` (and
    nothing else: an email change never changes a status, DESIGN §4)."""

    old_email: str
    new_email: str


@dataclass(frozen=True)
class EmailChangeRefused:
    """Mailchimp refused to move the member to ``new_email`` before, and nothing has changed
    since that could make it accept: not asked again, the row reports ``reason``."""

    new_email: str
    reason: Reason


def decide_email_change(
    row: MemberRow, policy: AudiencePolicy
) -> ChangeMemberEmail | EmailChangeRefused | None:
    """A subscribed member follows the contact's best email (bulk-mail, else primary; seed
    §5.5), unless that address already has its own member row of the contact (it would
    collide) or the contact is not to be mailed at all. A change Mailchimp refused for a
    lasting reason (the address is another member's, or forgotten) is not asked again for
    the same address until CiviCRM's subscription changes (as a refused subscribe)."""
    m, c = row.mailchimp, row.civicrm
    if m.status != "subscribed" or not m.email or c.contact_id is None or c.is_deleted:
        return None
    if policy.respect_privacy_flags and c.has_privacy_flag:
        return None
    best = choose_best_email(c.emails)
    if best is None or _same(best, m.email) or any(_same(s.email, best) for s in row.siblings):
        return None
    refused = _refused(row, best)
    if refused is not None and refused in EMAIL_CHANGE_REASONS:
        return EmailChangeRefused(best, refused)
    return ChangeMemberEmail(m.email, best)

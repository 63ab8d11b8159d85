"""The matching order as pure values (seed-behaviour §4.2–§4.3): which of the contacts owning
a member's email is the member's contact, and which members become new contacts. The match
stage runs the same order as set-based SQL (`Staging.assign_contacts`, for speed);
`choose_contact` is its specification and decision table, and tests/test_matching_twins.py
checks on generated data that the two pick the same contact.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from mcsync.rules.member_state import SUBSCRIBED_STATUSES


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


def trashed_removal_wins(
    removed_at: datetime | None, status_time: datetime | None, prefer: str | None = None
) -> bool:
    """Whether a removal from the subscription group (or a mapped interest's group), recorded
    in CiviCRM for a contact that owns the member's address and is now in the trash, is a
    later choice than the member's Mailchimp status (or interest). Trash is no choice, but a
    removal made before it is one (DESIGN §4): matching skips trashed contacts, so without
    this a new contact would undo it. A tie goes to CiviCRM, and an unknown Mailchimp time
    loses, as in `reconcile.most_recent`, unless the audience prefers Mailchimp for the
    conflicts it cannot order."""
    if removed_at is None:
        return False
    if status_time is None or removed_at == status_time:
        return prefer != "mailchimp"
    return removed_at > status_time


def should_create_contact(
    member_status: str | None,
    status_time: datetime | None = None,
    trashed_removal_at: datetime | None = None,
    trashed_flag: TrashedFlagOrder | None = None,
) -> bool:
    """Only subscribed or pending members become new contacts (seed §4.3), and not one whose
    subscribe is older than the removal of a trashed owner of the address
    (``trashed_removal_at``): the new contact would be Added, losing that removal. Nor one
    whose subscribe is not known to be later than a trashed owner's privacy flag
    (``trashed_flag``, see `trashed_flag_order`): the new contact would carry no flag."""
    if member_status not in SUBSCRIBED_STATUSES:
        return False
    if trashed_flag in (TrashedFlagOrder.FLAG_LATER, TrashedFlagOrder.UNKNOWN):
        return False
    return not trashed_removal_wins(trashed_removal_at, status_time)


class TrashedFlagOrder(enum.StrEnum):
    """How a privacy flag of a trashed owner of the member's address stands against the
    member's Mailchimp status change."""

    FLAG_LATER = "flag_later"
    SUBSCRIBE_LATER = "subscribe_later"
    UNKNOWN = "unknown"


def trashed_flag_order(
    flag_after: datetime | None,
    flag_by: datetime | None,
    status_time: datetime | None,
    status_after: datetime | None = None,
    last_changed: datetime | None = None,
) -> TrashedFlagOrder | None:
    """Order a trashed owner's privacy flag against the member's status (None: no flag).

    The flag was set after ``flag_after`` (the last time mcsync saw the contact without it;
    None: never) and by ``flag_by``; trashing the contact moved its modified_date, so its own
    time is often unknown. The status changed at ``status_time``, or, when ``status_after``
    is set, after that and by ``status_time`` (or ``last_changed``, if later). The flag is
    the later choice if it cannot be older than the status (a tie goes to CiviCRM, an unknown
    Mailchimp time loses, as in `trashed_removal_wins`); the status is if it is strictly
    later than ``flag_by``; otherwise the order is unknown and nobody may act on either.
    A status that may have gone and come back (its known time at or before ``status_after``:
    a profile edit moved ``last_changed``) changed either at that known time or after the
    bound: it is later than the flag only if both are (model seed 203)."""
    if flag_by is None:
        return None
    if status_time is None:
        return TrashedFlagOrder.FLAG_LATER
    round_trip = status_after is not None and status_time <= status_after
    if status_after is not None and not round_trip:
        if status_after >= flag_by:
            return TrashedFlagOrder.SUBSCRIBE_LATER
    elif status_time > flag_by:
        return TrashedFlagOrder.SUBSCRIBE_LATER
    until = max(t for t in (status_time, last_changed if status_after else None) if t)
    if flag_after is not None and flag_after >= until:
        return TrashedFlagOrder.FLAG_LATER
    return TrashedFlagOrder.UNKNOWN

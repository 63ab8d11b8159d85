"""The matching order as pure values (seed-behaviour §4.2–§4.3): which of the contacts owning
a member's email is the member's contact, and which members become new contacts. The match
stage runs the same order as set-based SQL; this is its reference and decision table.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

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


def match_contact(candidates: Sequence[Candidate]) -> int | None:
    """The contact id ``choose_contact`` picks, or None."""
    match = choose_contact(candidates)
    return match.contact_id if match else None


def should_create_contact(member_status: str | None) -> bool:
    """Only subscribed or pending members become new contacts (seed §4.3)."""
    return member_status in SUBSCRIBED_STATUSES

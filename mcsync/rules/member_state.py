"""What reconcile reads about one staging row: the member at Mailchimp, the contact in
CiviCRM, a stored refusal, and the audience's policy. Plain frozen values; every time is
timezone-aware (UTC), checked on construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeAlias

from mcsync.rules.reasons import Reason

MemberStatus: TypeAlias = Literal[
    "subscribed", "unsubscribed", "cleaned", "pending", "transactional", "archived"
]
GroupStatus: TypeAlias = Literal["Added", "Removed", "Pending", "Deleted"]
Side: TypeAlias = Literal["mailchimp", "civicrm"]

SUBSCRIBED_STATUSES: frozenset[str] = frozenset({"subscribed", "pending"})


def _require_utc_aware(name: str, value: datetime | None) -> None:
    """Naive datetimes would compare wrongly across the two servers' zones (seed §12)."""
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value.isoformat()}")


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
    ``last_changed`` stands in. ``interests`` holds only interests Mailchimp reported.
    ``status_changed_after``: set when the status change time is not exact (dated by a later
    profile edit); the change happened after it and by ``status_changed_at``."""

    email: str | None = None
    status: MemberStatus | None = None
    last_changed: datetime | None = None
    status_changed_at: datetime | None = None
    interests: Mapping[str, bool] = field(default_factory=dict)
    interests_changed_at: Mapping[str, datetime] = field(default_factory=dict)
    merge_fields: Mapping[str, Any] = field(default_factory=dict)
    status_changed_after: datetime | None = None

    def __post_init__(self) -> None:
        if self.status is not None and not self.email:
            raise ValueError("MailchimpSide.email is required when status is set")
        _require_utc_aware("MailchimpSide.last_changed", self.last_changed)
        _require_utc_aware("MailchimpSide.status_changed_at", self.status_changed_at)
        _require_utc_aware("MailchimpSide.status_changed_after", self.status_changed_after)
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
    wants at Mailchimp (merge tag → value, from the one-way feeds). ``flags_changed_at``:
    when the privacy flags were set, as far as mcsync knows (the contact's modified_date when
    it first saw them set: the flag's own change or later); None = unknown.
    ``flags_changed_after``: the flags were set after this time (mcsync read the contact
    without them then); None = no such bound."""

    contact_id: int | None = None
    subscription: GroupState = field(default_factory=GroupState)
    interest_groups: Mapping[int, GroupState] = field(default_factory=dict)
    is_deleted: bool = False
    is_deceased: bool = False
    do_not_email: bool = False
    is_opt_out: bool = False
    emails: tuple[EmailRecord, ...] = ()
    merge_fields: Mapping[str, Any] = field(default_factory=dict)
    flags_changed_at: datetime | None = None
    flags_changed_after: datetime | None = None

    def __post_init__(self) -> None:
        _require_utc_aware("CivicrmSide.flags_changed_at", self.flags_changed_at)
        _require_utc_aware("CivicrmSide.flags_changed_after", self.flags_changed_after)

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
    of any contact (seed §4.5). ``addresses_in_use``: lower-cased addresses that other member
    rows of this audience already hold (linked to another contact), which a contact not at
    Mailchimp must not claim. ``cleaned_handled``: mcsync already acted on this member
    becoming cleaned (put the address on hold, or found it held), so an admin who takes the
    address off hold afterwards is not overruled (issue 10). ``trashed_removal_at``: when a
    contact owning the member's address, now in the trash, was removed from the subscription
    group (its latest change there, made in CiviCRM), if later than the member's subscribe
    when the row was matched; None if there is no such removal. On a matched row it outranks
    the contact's own older group state. ``trashed_flag_after`` / ``trashed_flag_by``: on a
    row with no contact, a trashed owner of the address has a privacy flag, set after the
    first (None: unknown) and by the second (see `matching.trashed_flag_order`).
    ``trashed_interest_removals``: the same as ``trashed_removal_at`` for mapped interest
    groups (group id → when a trashed owner of the address was removed from it, if later
    than the member's interest when the row was matched)."""

    mailchimp: MailchimpSide = field(default_factory=MailchimpSide)
    civicrm: CivicrmSide = field(default_factory=CivicrmSide)
    siblings: tuple[Sibling, ...] = ()
    mailchimp_email_on_hold: bool = False
    refusal: Refusal | None = None
    addresses_in_use: frozenset[str] = frozenset()
    cleaned_handled: bool = False
    trashed_removal_at: datetime | None = None
    trashed_flag_after: datetime | None = None
    trashed_flag_by: datetime | None = None
    trashed_interest_removals: Mapping[int, datetime] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require_utc_aware("MemberRow.trashed_removal_at", self.trashed_removal_at)
        _require_utc_aware("MemberRow.trashed_flag_after", self.trashed_flag_after)
        _require_utc_aware("MemberRow.trashed_flag_by", self.trashed_flag_by)
        for group_id, at in self.trashed_interest_removals.items():
            _require_utc_aware(f"MemberRow.trashed_interest_removals[{group_id}]", at)

    @property
    def sibling_subscribed(self) -> bool:
        return any(s.status in SUBSCRIBED_STATUSES for s in self.siblings)


@dataclass(frozen=True)
class AudiencePolicy:
    """Per-audience settings. ``prefer`` (config ``prefer``; None = "latest") names the side
    that wins the conflicts whose order mcsync cannot establish — two choices at the same
    second, a side with no date, a Mailchimp change known only to lie in a window that a
    CiviCRM change falls inside. It never lets an older state overwrite a choice known to be
    later (the consent invariant, DESIGN §4), and it applies to interests as to the group."""

    group_id: int
    interest_groups: Mapping[str, int] = field(default_factory=dict)
    respect_privacy_flags: bool = True
    prefer: Side | None = None
    blank_merge_fields: bool = False

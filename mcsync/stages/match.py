"""Contact stages: drop stale contact ids, match Mailchimp emails to contacts, create contacts
for new subscribers, add CiviCRM-only members, and load history dates where sides disagree.

Matching order (seed-behaviour §4.2), over undeleted owners of the email: the sole owner →
the lowest id Added to the subscription group → the lowest id with any history for it → the
lowest id. It runs as set-based SQL over the staged emails (`Staging.assign_contacts`), whose
specification is `rules.matching.choose_contact`. Every statement lives in the storage layer
(`store/matching.py`); the resumable loops go through `StoreBase.each_chunk`, with the
CiviCRM reads of a chunk made before its transaction opens.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from mcsync.rules.addresses import fold_email
from mcsync.rules.matching import TrashedFlagOrder, trashed_flag_order, trashed_removal_wins
from mcsync.stages.context import TRACKING_MARKER, RunContext
from mcsync.stages.fetch_civicrm import (
    EMAIL_SELECT,
    IN_CHUNK,
    PRIVACY_FLAGS,
    chunks,
    contact_from_join,
    fetch_emails_of_contacts,
    store_contacts,
    store_emails,
)
from mcsync.store.database import dumps, iso, parse_iso
from mcsync.store.history import Change

MATCH_CONCURRENCY = 4  # Email lookups in flight: the CiviCRM client's connection pool
# Emails per `IN` lookup: large enough that a full run makes few round trips (an indexed
# `IN` of a few thousand strings is cheap for MySQL), small enough for any request limit.
EMAIL_LOOKUP_CHUNK = 2000


def fix_contact_ids(ctx: RunContext) -> None:
    """Rows pointing at trashed, merged-away or hard-deleted contacts lose the contact id
    (seed-behaviour §4.1); rows left with neither side are dropped."""
    ctx.staging.clear_unusable_contacts(ctx.list_id)


def match_emails(ctx: RunContext) -> None:
    """Look up the owners of unmatched Mailchimp emails, then apply the matching order.
    Owners in the trash are never matched, but what they chose is kept on the rows
    (`_trashed_choices`): every row that is (re)matched passes here, so a contact trashed
    since the last run, or before mcsync first ran, is looked at without extra requests."""

    def look_up(cursor: int) -> list[_Owners]:
        rows = ctx.staging.unmatched_member_emails(
            ctx.list_id, cursor, EMAIL_LOOKUP_CHUNK * MATCH_CONCURRENCY
        )
        if not rows:
            return []
        records = _owners_of(ctx, sorted({r["mc_email"] for r in rows}))
        live = [r for r in records if not r.get("contact_id.is_deleted")]
        in_trash = [r for r in records if r.get("contact_id.is_deleted")]
        trashed = _trashed_choices(ctx, in_trash + _former_contacts(ctx, rows))
        return [_Owners(rows, live, trashed)]

    for chunk in ctx.staging.each_chunk(
        ctx.list_id, ctx.budget.check, look_up, key=lambda owners: int(owners.rows[-1]["id"])
    ):
        for owners in chunk:
            store_emails(ctx, owners.records)
            store_contacts(ctx, [contact_from_join(r) for r in owners.records])
            assign_matches(ctx, [r["id"] for r in owners.rows])
            ctx.staging.set_trashed_choices(
                [_trashed_choice_of(r, owners.trashed, ctx.interest_groups) for r in owners.rows]
            )
            ctx.progress("match emails", len(owners.rows), None)


class _Owners(NamedTuple):
    """A chunk of unmatched member rows and the owners of their addresses, looked up before
    the chunk's transaction opens (no request holds the staging DB's write lock, which the
    lease heartbeat needs)."""

    rows: list[Any]
    records: list[dict[str, Any]]
    """CiviCRM's Email records of the addresses, with their contacts' flags (undeleted only)."""
    trashed: dict[str, TrashedChoices]
    """What trashed owners of the addresses chose, by folded address (`_trashed_choices`)."""


def _former_contacts(ctx: RunContext, rows: Sequence[Any]) -> list[dict[str, Any]]:
    """The contacts these rows pointed at until they were trashed (`trashed_contact_id`), as
    Email records under each row's own address: a trashed contact's later removal or privacy
    flag is a choice about its member even when the contact's address has changed since
    (the member kept the old one), so it counts as a trashed owner's (model seed 17)."""
    former: dict[int, set[str]] = {}
    for row in rows:
        if row["trashed_contact_id"] is not None:
            former.setdefault(int(row["trashed_contact_id"]), set()).add(row["mc_email"])
    records: list[dict[str, Any]] = []
    for chunk in chunks(sorted(former), IN_CHUNK):
        found = ctx.civicrm.call(
            "Email",
            "get",
            {"select": EMAIL_SELECT, "where": [["contact_id", "IN", list(chunk)]], "limit": 0},
        )
        for record in found:
            if record.get("contact_id.is_deleted"):  # still in the trash, not restored
                for address in former.pop(record["contact_id"], set()):
                    records.append({**record, "email": address})
    return records


def _owners_of(ctx: RunContext, emails: Sequence[str]) -> list[dict[str, Any]]:
    """Owners of these emails, trashed ones included (`contact_id.is_deleted` tells), the `IN`
    chunks fetched concurrently (the CiviCRM client is thread-safe and caps its own
    connections), so round trips overlap."""

    def owners(chunk: Sequence[str]) -> list[dict[str, Any]]:
        return ctx.civicrm.call(
            "Email",
            "get",
            {"select": EMAIL_SELECT, "where": [["email", "IN", list(chunk)]], "limit": 0},
        )

    parts = list(chunks(emails, EMAIL_LOOKUP_CHUNK))
    if len(parts) <= 1:
        return [record for part in parts for record in owners(part)]
    with ThreadPoolExecutor(max_workers=min(len(parts), ctx.civicrm.max_connections)) as pool:
        return [record for found in pool.map(owners, parts) for record in found]


def assign_matches(ctx: RunContext, row_ids: Sequence[int]) -> None:
    """Match these rows to the staged owners of their emails by the matching order
    (`Staging.assign_contacts`; its specification is `rules.matching.choose_contact`)."""
    ctx.staging.assign_contacts(ctx.group_id, row_ids)


def create_contacts(ctx: RunContext) -> None:
    """Create Individuals for unmatched subscribed/pending members (seed-behaviour §4.3).

    Rows are flagged `creating` (committed) before the request; after a crash those rows are
    looked up by email again first, so a retry never makes a second contact. A chunk is as
    many contacts as one save request carries (`[civicrm] write_chunk`, as group writes), and
    their emails are read back `IN_CHUNK` contacts a request (one for a default chunk), so a
    sync that creates thousands of contacts makes about two requests per chunk.
    """
    if not ctx.sync.create_contacts or ctx.dry_run:
        return
    while True:
        ctx.budget.check()
        rows = ctx.staging.rows_to_create(ctx.list_id, ctx.civicrm.write_chunk)
        if not rows:
            return
        retried = [r for r in rows if r["creating"]]
        if retried:
            _rematch(ctx, retried)
            continue
        ctx.staging.mark_creating([r["id"] for r in rows])
        records = [
            {
                "contact_type": "Individual",
                "first_name": r["mc_fname"] or "",
                "last_name": r["mc_lname"] or "",
                "source": "mcsync",
                "email_primary.email": r["mc_email"],
            }
            for r in rows
        ]
        ctx.check_lease()
        created = ctx.civicrm.save("Contact", records)
        ctx.count(Change.CIVI_CONTACTS, len(created))
        by_position = [c["id"] for c in created]
        contact_ids = by_position if len(by_position) == len(rows) else []
        # Their emails first: a run stopped in between leaves the rows `creating`, so the next
        # one matches them by email, rather than pointing rows at contacts it never read.
        fetch_emails_of_contacts(ctx, contact_ids)
        with ctx.staging.atomic():
            pairs = zip((r["id"] for r in rows), contact_ids, strict=False)
            ctx.staging.set_created_contacts(list(pairs))
        if not contact_ids:
            _rematch(ctx, rows)
        ctx.progress("create contacts", len(rows), None)


@dataclass(frozen=True)
class TrashedChoices:
    """What trashed owners of one address chose: the latest group change made in CiviCRM
    by any of them, if a removal (`removed_at`); and, when one has a privacy flag, the
    bounds of its time (`flag_after`: the latest known lower bound; `flag_by`: the latest
    upper bound; see `rules.matching.trashed_flag_order`). ``interest_removals``: the same
    as ``removed_at`` per mapped interest group (group id → time)."""

    removed_at: datetime | None = None
    flag_after: datetime | None = None
    flag_by: datetime | None = None
    interest_removals: Mapping[int, datetime] = field(default_factory=dict)


def _trashed_choice_of(
    row: Any, trashed: dict[str, TrashedChoices], interest_groups: Mapping[str, int]
) -> tuple[str | None, str | None, str | None, str | None, int]:
    """The row's (removal, flag after, flag by, interest removals, id) to store: a trashed
    owner's removal if it is later than the member's status change (then no contact is
    created, and it outranks an older state of a live owner), and a trashed owner's privacy
    flag unless the member's status change is known to be later. Trash alone is no choice:
    without either the member gets a new contact as before (seed-behaviour §4.1). Likewise
    a trashed owner's removal from a mapped interest group later than the member's interest
    (JSON {group id: time}; the contact the member gets is not added to it from the older
    interest). Decided afresh whenever the row is matched: a later subscribe or tick at
    Mailchimp outranks them again."""
    choices = trashed.get(fold_email(row["mc_email"]))
    if choices is None:
        return (None, None, None, None, row["id"])
    interests = _trashed_interest_removals(row, choices, interest_groups)
    status_time = parse_iso(row["mc_status_at"] or row["mc_last_changed"])
    removed = choices.removed_at if trashed_removal_wins(choices.removed_at, status_time) else None
    after = parse_iso(row["mc_status_after"]) if row["mc_status"] != "archived" else None
    order = trashed_flag_order(
        choices.flag_after, choices.flag_by, status_time, after, parse_iso(row["mc_last_changed"])
    )
    if order in (None, TrashedFlagOrder.SUBSCRIBE_LATER):
        return (iso(removed), None, None, interests, row["id"])
    return (iso(removed), iso(choices.flag_after), iso(choices.flag_by), interests, row["id"])


def _trashed_interest_removals(
    row: Any, choices: TrashedChoices, interest_groups: Mapping[str, int]
) -> str | None:
    """JSON {group id: time} of the trashed owners' interest-group removals later than the
    member's interest in that group (its own time, else the member's last change, as
    `MailchimpSide.interest_time`); None when there is none."""
    times = json.loads(row["mc_interests_at"] or "{}")
    kept: dict[str, str | None] = {}
    for interest_id, group_id in sorted(interest_groups.items()):
        removed_at = choices.interest_removals.get(group_id)
        interest_time = parse_iso(times.get(interest_id) or row["mc_last_changed"])
        if trashed_removal_wins(removed_at, interest_time):
            kept[str(group_id)] = iso(removed_at)
    return dumps(kept) if kept else None


def _trashed_choices(
    ctx: RunContext, owners: Sequence[dict[str, Any]]
) -> dict[str, TrashedChoices]:
    """Folded address → what its trashed owners (these Email records) chose.

    A trashed owner's latest change to the group, and to each mapped interest group, made in
    CiviCRM (not mcsync's own) is read from its history: staging may not have it (a full
    run reads no dates, and a contact trashed before mcsync first ran was never staged). A
    privacy flag was set by the contact's modified_date (by when mcsync first saw it set, if
    earlier) and after mcsync last saw the contact without a flag (unknown if it never did):
    trashing it moved the modified_date, so the flag's own time is often unknown. Flags
    count only while privacy flags are respected."""
    addresses: dict[int, set[str]] = {}
    flagged: dict[int, datetime | None] = {}
    for owner in owners:
        if not owner.get("email"):
            continue
        contact_id = owner["contact_id"]
        addresses.setdefault(contact_id, set()).add(fold_email(owner["email"]))
        if ctx.respect_privacy_flags and any(
            owner.get(f"contact_id.{flag}") for flag in PRIVACY_FLAGS
        ):
            flagged[contact_id] = ctx.civi_to_utc(owner.get("contact_id.modified_date"))
    if not addresses:
        return {}
    groups = sorted({ctx.group_id, *ctx.interest_groups.values()})
    latest: dict[tuple[int, int], tuple[datetime, str]] = {}
    for chunk in chunks(sorted(addresses), IN_CHUNK):
        history = ctx.civicrm.call(
            "SubscriptionHistory",
            "get",
            {
                "select": ["contact_id", "group_id", "status", "date", "tracking"],
                "where": [["contact_id", "IN", list(chunk)], ["group_id", "IN", groups]],
                "orderBy": {"id": "ASC"},
                "limit": 0,
            },
        )
        for record in history:
            moment = ctx.civi_to_utc(record["date"])
            if (record.get("tracking") or "") == TRACKING_MARKER or moment is None:
                continue
            latest[(record["contact_id"], int(record["group_id"]))] = (moment, record["status"])
    marks = ctx.staging.flag_marks(sorted(flagged))
    # (address, group id) → the latest change any trashed owner of the address made there
    changes: dict[tuple[str, int], tuple[datetime, str]] = {}
    flags: dict[str, tuple[datetime | None, datetime]] = {}
    for contact_id, owned in addresses.items():
        bounds = _flag_bounds(flagged, marks, contact_id)
        for address in owned:
            for group_id in groups:
                change = latest.get((contact_id, group_id))
                key = (address, group_id)
                if change and (key not in changes or change[0] > changes[key][0]):
                    changes[key] = change
            if bounds is not None:
                after, by = flags.get(address, (None, bounds[1]))
                flags[address] = (
                    max(filter(None, (after, bounds[0])), default=None),
                    max(by, bounds[1]),
                )
    removals = {key: at for key, (at, status) in changes.items() if status in _REMOVALS}
    return {
        address: TrashedChoices(
            removed_at=removals.get((address, ctx.group_id)),
            flag_after=flags[address][0] if address in flags else None,
            flag_by=flags[address][1] if address in flags else None,
            interest_removals={
                g: at for (a, g), at in removals.items() if a == address and g != ctx.group_id
            },
        )
        for address in {a for a, _ in changes} | set(flags)
    }


_REMOVALS = ("Removed", "Deleted")  # history statuses that take a contact out of a group


def _flag_bounds(
    flagged: dict[int, datetime | None],
    marks: dict[int, tuple[str | None, str | None]],
    contact_id: int,
) -> tuple[datetime | None, datetime] | None:
    """(set after, set by) for a flagged trashed contact; None if not flagged or its
    modified_date is unknown (no bound to put the flag by)."""
    if contact_id not in flagged:
        return None
    unflagged_at, flags_at = marks.get(contact_id, (None, None))
    by = [t for t in (flagged[contact_id], parse_iso(flags_at)) if t is not None]
    if not by:
        return None
    return parse_iso(unflagged_at), min(by)


def _rematch(ctx: RunContext, rows: Sequence[Any]) -> None:
    emails = sorted({r["mc_email"] for r in rows})
    records = ctx.civicrm.call(
        "Email",
        "get",
        {
            "select": EMAIL_SELECT,
            "where": [["email", "IN", emails], ["contact_id.is_deleted", "=", False]],
            "limit": 0,
        },
    )
    with ctx.staging.atomic():
        store_emails(ctx, records)
        store_contacts(ctx, [contact_from_join(r) for r in records])
        assign_matches(ctx, [r["id"] for r in rows])
        ctx.staging.stop_creating_unmatched([r["id"] for r in rows])


def add_civicrm_only(ctx: RunContext) -> None:
    """A row per undeleted contact Added to the group that has none in this audience, and
    drop contact-only rows whose contact also has a Mailchimp row (seed-behaviour §3.4)."""
    with ctx.staging.atomic():
        ctx.staging.add_civicrm_only_rows(ctx.list_id, ctx.group_id)
        ctx.staging.drop_contact_rows_with_members(ctx.list_id)
    fetch_emails_of_contacts(ctx, ctx.staging.contacts_without_emails(ctx.list_id))


def load_history_dates(ctx: RunContext) -> None:
    """For rows to reconcile where the sides disagree and the CiviCRM change time is not
    staged yet, fetch the latest history row per (contact, group) not written by mcsync.

    That includes memberships that are absent (no GroupContact row) while Mailchimp says
    subscribed or interested: a GroupContact deleted in CiviCRM leaves only its history
    (status `Deleted`), which a full run, reading rows, never sees. A deletion is a removal
    at its date (issue 10); without one, Mailchimp wins as before.

    Only disagreements need a date, so the cost follows the number of changes."""
    for chunk in ctx.staging.each_chunk(
        ctx.list_id,
        ctx.budget.check,
        lambda cursor: _read_history(ctx, cursor),
        key=lambda history: history.last_contact,
    ):
        for history in chunk:
            ctx.staging.date_group_statuses(history.dated)
            # Staff changed these after the run read them (a run stopped between the read
            # and here): the status read is stale, so stage the one CiviCRM holds now, dated
            # by its own latest history row (none: undated, as a membership without history).
            ctx.staging.restage_group_statuses(history.restaged)
            # An absent membership whose latest history is a deletion: not in the group
            # since that date.
            ctx.staging.date_deletions(history.deletions)
            ctx.progress("load history", history.contacts, None)


class _History(NamedTuple):
    """What CiviCRM's history says of a chunk of contacts, read before the chunk's
    transaction opens (no request holds the staging DB's write lock)."""

    last_contact: int
    """The chunk's last contact id: where the stage cursor moves when it is committed."""
    contacts: int
    dated: list[tuple[str, int, int]]
    """(time, contact, group): staged memberships' change times (`date_group_statuses`)."""
    restaged: list[tuple[int, int, str | None, str | None]]
    """Memberships changed since the run read them (`restage_group_statuses`)."""
    deletions: list[tuple[int, int, str]]
    """(contact, group, time): absent memberships deleted then (`date_deletions`)."""


NO_CIVICRM_CHOICE = "1970-01-01T00:00:00+00:00"
"""The change time staged for a membership whose every history row mcsync wrote: it carries
a Mailchimp choice, and CiviCRM made none of its own, so it is older than any choice. Left
undated, it would be "a CiviCRM status with no date", which `prefer = "civicrm"` lets win."""


def _read_history(ctx: RunContext, cursor: int) -> list[_History]:
    """The latest history row per (contact, group) not written by mcsync, for the next
    contacts after ``cursor`` whose CiviCRM change time is needed (none: done)."""
    contact_ids = ctx.staging.contacts_to_date(
        ctx.list_id, ctx.group_id, ctx.interest_groups, cursor, IN_CHUNK
    )
    if not contact_ids:
        return []
    records = ctx.civicrm.call(
        "SubscriptionHistory",
        "get",
        {
            "select": ["id", "contact_id", "group_id", "status", "date", "tracking"],
            "where": [
                ["contact_id", "IN", contact_ids],
                ["group_id", "IN", ctx.all_groups],
            ],
            "orderBy": {"id": "ASC"},
            "limit": 0,
        },
    )
    latest: dict[tuple[int, int], tuple[str, str]] = {}
    last_status: dict[tuple[int, int], str] = {}  # mcsync's own rows included
    dated: dict[tuple[int, int, str], str] = {}  # latest date of each status
    for record in records:
        pair = (record["contact_id"], record["group_id"])
        last_status[pair] = record["status"]
        if (record.get("tracking") or "") == TRACKING_MARKER:
            continue
        moment = ctx.civi_to_utc(record["date"])
        latest[pair] = (iso(moment) or "", record["status"])
        dated[(*pair, record["status"])] = iso(moment) or ""
    moved = _moved_since_read(ctx, contact_ids, last_status)
    fresh = _current_statuses(ctx, sorted({c for c, _ in moved}))
    return [
        _History(
            last_contact=contact_ids[-1],
            contacts=len(contact_ids),
            dated=[(at, c, g) for (c, g), (at, _) in latest.items() if (c, g) not in moved]
            + [
                (NO_CIVICRM_CHOICE, c, g)
                for c, g in last_status
                if (c, g) not in latest and (c, g) not in moved
            ],
            restaged=[
                (c, g, fresh.get((c, g)), _date_of(dated, last_status, c, g, fresh))
                for c, g in sorted(moved)
            ],
            deletions=[
                (c, g, at)
                for (c, g), (at, status) in latest.items()
                if status == "Deleted" and (c, g) not in moved
            ],
        )
    ]


def _moved_since_read(
    ctx: RunContext, contact_ids: Sequence[int], last_status: dict[tuple[int, int], str]
) -> set[tuple[int, int]]:
    """Undated staged pairs whose latest history row (any writer) holds another status than
    the one staged: CiviCRM changed after the run read it. Dating the old status with the
    change's date would make it look newer than it is (an old choice overriding a newer one
    on the other side)."""
    staged = ctx.staging.undated_group_statuses(list(contact_ids), ctx.all_groups)
    moved: set[tuple[int, int]] = set()
    for contact_id, group_id, status in staged:
        history = last_status.get((contact_id, group_id))
        if history is not None and history != (status or "Deleted"):
            moved.add((contact_id, group_id))
    return moved


def _current_statuses(ctx: RunContext, contact_ids: Sequence[int]) -> dict[tuple[int, int], str]:
    """The GroupContact status CiviCRM holds now for these contacts in the audience's groups
    (absent: not a member). One request per chunk of contacts."""
    current: dict[tuple[int, int], str] = {}
    for chunk in chunks(contact_ids, IN_CHUNK):
        for record in ctx.civicrm.call(
            "GroupContact",
            "get",
            {
                "select": ["contact_id", "group_id", "status"],
                "where": [["contact_id", "IN", list(chunk)], ["group_id", "IN", ctx.all_groups]],
                "limit": 0,
            },
        ):
            current[(record["contact_id"], record["group_id"])] = record["status"]
    return current


def _date_of(
    dated: dict[tuple[int, int, str], str],
    last_status: dict[tuple[int, int], str],
    contact_id: int,
    group_id: int,
    fresh: dict[tuple[int, int], str],
) -> str | None:
    """When the status CiviCRM holds now was set: its latest history row by a person or
    staff, if the history's last word is that status (else unknown)."""
    status = fresh.get((contact_id, group_id)) or "Deleted"
    if last_status.get((contact_id, group_id)) != status:
        return None
    return dated.get((contact_id, group_id, status))

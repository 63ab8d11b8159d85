"""Contact stages: drop stale contact ids, match Mailchimp emails to contacts, create contacts
for new subscribers, add CiviCRM-only members, and load history dates where sides disagree.

Matching order (seed-behaviour §4.2), over undeleted owners of the email: the sole owner →
the lowest id Added to the subscription group → the lowest id with any history for it → the
lowest id. It runs as set-based SQL over the staged emails.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from mcsync.rules.addresses import fold_email
from mcsync.rules.matching import should_create_contact
from mcsync.stages.context import TRACKING_MARKER, RunContext
from mcsync.stages.fetch_civicrm import (
    EMAIL_SELECT,
    IN_CHUNK,
    chunks,
    contact_from_join,
    fetch_emails_of_contacts,
    store_contacts,
    store_emails,
)
from mcsync.store.database import iso, parse_iso

SUBSCRIBED = ("subscribed", "pending")
MATCH_CONCURRENCY = 4  # Email lookups in flight: the CiviCRM client's connection pool
# Emails per `IN` lookup: large enough that a full run makes few round trips (an indexed
# `IN` of a few thousand strings is cheap for MySQL), small enough for any request limit.
EMAIL_LOOKUP_CHUNK = 2000


def fix_contact_ids(ctx: RunContext) -> None:
    """Rows pointing at trashed, merged-away or hard-deleted contacts lose the contact id
    (seed-behaviour §4.1); rows left with neither side are dropped."""
    with ctx.staging.atomic():
        ctx.staging.execute(
            "UPDATE rows SET contact_id = NULL, sync_status = 'todo' WHERE list_id = ? "
            "AND contact_id IN (SELECT contact_id FROM contacts WHERE is_deleted = 1 OR gone = 1)",
            (ctx.list_id,),
        )
        ctx.staging.execute(
            "DELETE FROM rows WHERE list_id = ? AND contact_id IS NULL AND mc_hash IS NULL",
            (ctx.list_id,),
        )


def match_emails(ctx: RunContext) -> None:
    """Look up the owners of unmatched Mailchimp emails, then apply the matching order."""
    while True:
        ctx.budget.check()
        batch = ctx.staging.query(
            "SELECT id, mc_email FROM rows WHERE list_id = ? AND contact_id IS NULL "
            "AND mc_email IS NOT NULL AND id > ? ORDER BY id LIMIT ?",
            (
                ctx.list_id,
                ctx.staging.state(ctx.list_id)["cursor"],
                EMAIL_LOOKUP_CHUNK * MATCH_CONCURRENCY,
            ),
        )
        if not batch:
            return
        emails = sorted({r["mc_email"] for r in batch})
        records = _owners_of(ctx, emails)
        with ctx.staging.atomic():
            store_emails(ctx, records)
            store_contacts(ctx, [contact_from_join(r) for r in records])
            assign_matches(ctx, [r["id"] for r in batch])
            ctx.staging.set_state(ctx.list_id, cursor=batch[-1]["id"])
        ctx.progress("match emails", len(batch), None)


def _owners_of(ctx: RunContext, emails: Sequence[str]) -> list[dict[str, Any]]:
    """Undeleted owners of these emails, the `IN` chunks fetched concurrently (the CiviCRM
    client is thread-safe and caps its own connections), so round trips overlap."""

    def owners(chunk: Sequence[str]) -> list[dict[str, Any]]:
        return ctx.civicrm.call(
            "Email",
            "get",
            {
                "select": EMAIL_SELECT,
                "where": [["email", "IN", list(chunk)], ["contact_id.is_deleted", "=", False]],
                "limit": 0,
            },
        )

    parts = list(chunks(emails, EMAIL_LOOKUP_CHUNK))
    if len(parts) <= 1:
        return [record for part in parts for record in owners(part)]
    with ThreadPoolExecutor(max_workers=min(len(parts), ctx.civicrm.max_connections)) as pool:
        return [record for found in pool.map(owners, parts) for record in found]


def assign_matches(ctx: RunContext, row_ids: Sequence[int]) -> None:
    """Set-based matching for these rows, from staged emails, contacts and group status."""
    placeholders = ",".join("?" * len(row_ids))
    ctx.staging.execute(
        f"""
        WITH owners AS (
            SELECT r.id AS row_id, e.contact_id,
                   COALESCE(g.status = 'Added', 0) AS added,
                   (g.status IS NOT NULL OR g.changed_at IS NOT NULL) AS has_history
            FROM rows r
            JOIN emails e ON e.email_lc = fold_email(r.mc_email)
            JOIN contacts c ON c.contact_id = e.contact_id AND c.is_deleted = 0 AND c.gone = 0
            LEFT JOIN group_status g ON g.contact_id = e.contact_id AND g.group_id = ?
            WHERE r.id IN ({placeholders})
            GROUP BY r.id, e.contact_id
        ),
        ranked AS (
            SELECT row_id, contact_id,
                   ROW_NUMBER() OVER (
                       PARTITION BY row_id ORDER BY added DESC, has_history DESC, contact_id
                   ) AS rank
            FROM owners
        )
        UPDATE rows SET contact_id = ranked.contact_id, sync_status = 'todo', creating = 0
        FROM ranked WHERE ranked.row_id = rows.id AND ranked.rank = 1
        """,
        (ctx.group_id, *row_ids),
    )


def create_contacts(ctx: RunContext) -> None:
    """Create Individuals for unmatched subscribed/pending members (seed-behaviour §4.3).

    Rows are flagged `creating` (committed) before the request; after a crash those rows are
    looked up by email again first, so a retry never makes a second contact.
    """
    find_trashed_removals(ctx)
    if not ctx.sync.create_contacts or ctx.dry_run:
        return
    while True:
        ctx.budget.check()
        rows = ctx.staging.query(
            "SELECT id, mc_email, mc_fname, mc_lname, creating FROM rows WHERE list_id = ? "
            "AND contact_id IS NULL AND mc_email IS NOT NULL AND mc_status IN (?, ?) "
            "AND sync_status != 'fail' AND trashed_removal_at IS NULL ORDER BY id LIMIT ?",
            (ctx.list_id, *SUBSCRIBED, 200),
        )
        if not rows:
            return
        retried = [r for r in rows if r["creating"]]
        if retried:
            _rematch(ctx, retried)
            continue
        with ctx.staging.atomic():
            ctx.staging.conn.executemany(
                "UPDATE rows SET creating = 1 WHERE id = ?", [(r["id"],) for r in rows]
            )
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
        by_position = [c["id"] for c in created]
        contact_ids = by_position if len(by_position) == len(rows) else []
        # Their emails first: a run stopped in between leaves the rows `creating`, so the next
        # one matches them by email, rather than pointing rows at contacts it never read.
        fetch_emails_of_contacts(ctx, contact_ids)
        with ctx.staging.atomic():
            for row, contact_id in zip(rows, contact_ids, strict=False):
                ctx.staging.execute(
                    "UPDATE rows SET contact_id = ?, creating = 0, sync_status = 'todo' "
                    "WHERE id = ?",
                    (contact_id, row["id"]),
                )
        if not contact_ids:
            _rematch(ctx, rows)
        ctx.progress("create contacts", len(rows), None)


def find_trashed_removals(ctx: RunContext) -> None:
    """For each unmatched subscribed member: was a contact owning its address, now in the
    trash, removed from the subscription group later than the member's subscribe? Then no
    contact is created (it would be Added, losing that removal) and reconcile unsubscribes
    the member (DESIGN §4). Trash alone is no choice: without such a removal the member gets
    a new contact as before (seed-behaviour §4.1).

    The trashed contact's latest change to the group made in CiviCRM (not mcsync's own) is
    read from its history: staging may not have it (a full run reads no dates, and a contact
    trashed before mcsync first ran was never staged). Only unmatched subscribed members
    are looked at, so the cost follows the number of contacts about to be created. Decided
    afresh at each run: a later subscribe at Mailchimp outranks the removal again."""
    after = 0
    while True:
        ctx.budget.check()
        rows = ctx.staging.unmatched_subscribed_rows(ctx.list_id, after, EMAIL_LOOKUP_CHUNK)
        if not rows:
            return
        removals = _trashed_removals_of(ctx, sorted({r["mc_email"] for r in rows}))
        decided: list[tuple[str | None, int]] = []
        for r in rows:
            removed_at = removals.get(fold_email(r["mc_email"]))
            status_time = parse_iso(r["mc_status_at"] or r["mc_last_changed"])
            create = should_create_contact(r["mc_status"], status_time, removed_at)
            decided.append((None if create else iso(removed_at), r["id"]))
        with ctx.staging.atomic():
            ctx.staging.set_trashed_removals(decided)
        after = rows[-1]["id"]


def _trashed_removals_of(ctx: RunContext, emails: Sequence[str]) -> dict[str, datetime]:
    """Folded address → when a trashed owner of it was last changed in the subscription
    group by CiviCRM (not by mcsync), if that change is a removal (`Removed`, or `Deleted`:
    a GroupContact deleted). Of several trashed owners, the latest change counts."""
    owners = ctx.civicrm.call(
        "Email",
        "get",
        {
            "select": ["contact_id", "email"],
            "where": [["email", "IN", list(emails)], ["contact_id.is_deleted", "=", True]],
            "limit": 0,
        },
    )
    addresses: dict[int, set[str]] = {}
    for owner in owners:
        if owner.get("email"):
            addresses.setdefault(owner["contact_id"], set()).add(fold_email(owner["email"]))
    latest: dict[int, tuple[datetime, str]] = {}
    for chunk in chunks(sorted(addresses), IN_CHUNK):
        history = ctx.civicrm.call(
            "SubscriptionHistory",
            "get",
            {
                "select": ["contact_id", "status", "date", "tracking"],
                "where": [["contact_id", "IN", list(chunk)], ["group_id", "=", ctx.group_id]],
                "orderBy": {"id": "ASC"},
                "limit": 0,
            },
        )
        for record in history:
            moment = ctx.civi_to_utc(record["date"])
            if (record.get("tracking") or "") == TRACKING_MARKER or moment is None:
                continue
            latest[record["contact_id"]] = (moment, record["status"])
    changes: dict[str, tuple[datetime, str]] = {}
    for contact_id, (moment, status) in latest.items():
        for address in addresses[contact_id]:
            if address not in changes or moment > changes[address][0]:
                changes[address] = (moment, status)
    return {
        address: moment
        for address, (moment, status) in changes.items()
        if status in ("Removed", "Deleted")
    }


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
        ctx.staging.conn.executemany(
            "UPDATE rows SET creating = 0 WHERE id = ? AND contact_id IS NULL",
            [(r["id"],) for r in rows],
        )


def add_civicrm_only(ctx: RunContext) -> None:
    """A row per undeleted contact Added to the group that has none in this audience, and
    drop contact-only rows whose contact also has a Mailchimp row (seed-behaviour §3.4)."""
    with ctx.staging.atomic():
        ctx.staging.execute(
            "INSERT INTO rows (list_id, contact_id, sync_status) "
            "SELECT ?, g.contact_id, 'todo' FROM group_status g "
            "JOIN contacts c ON c.contact_id = g.contact_id AND c.is_deleted = 0 AND c.gone = 0 "
            "WHERE g.group_id = ? AND g.status = 'Added' AND NOT EXISTS "
            "(SELECT 1 FROM rows r WHERE r.contact_id = g.contact_id AND r.list_id = ?)",
            (ctx.list_id, ctx.group_id, ctx.list_id),
        )
        ctx.staging.execute(
            "DELETE FROM rows WHERE list_id = ? AND mc_hash IS NULL AND sync_status != 'live' "
            "AND contact_id IN (SELECT contact_id FROM rows WHERE list_id = ? "
            "AND mc_hash IS NOT NULL AND contact_id IS NOT NULL)",
            (ctx.list_id, ctx.list_id),
        )
    missing = [
        r[0]
        for r in ctx.staging.query(
            "SELECT r.contact_id FROM rows r WHERE r.list_id = ? AND r.mc_hash IS NULL "
            "AND r.contact_id IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM emails e WHERE e.contact_id = r.contact_id)",
            (ctx.list_id,),
        )
    ]
    fetch_emails_of_contacts(ctx, missing)


def load_history_dates(ctx: RunContext) -> None:
    """For rows to reconcile where the sides disagree and the CiviCRM change time is not
    staged yet, fetch the latest history row per (contact, group) not written by mcsync.

    That includes memberships that are absent (no GroupContact row) while Mailchimp says
    subscribed or interested: a GroupContact deleted in CiviCRM leaves only its history
    (status `Deleted`), which a full run, reading rows, never sees. A deletion is a removal
    at its date (issue 10); without one, Mailchimp wins as before.

    Only disagreements need a date, so the cost follows the number of changes."""
    while True:
        ctx.budget.check()
        disagree, params = _disagreement_sql(ctx)
        absent, absent_params = _absent_membership_sql(ctx)
        contact_ids = [
            r[0]
            for r in ctx.staging.query(
                "SELECT DISTINCT r.contact_id FROM rows r "
                "WHERE r.list_id = ? AND r.sync_status = 'todo' AND r.contact_id > ? "
                "AND (EXISTS (SELECT 1 FROM group_status g WHERE g.contact_id = r.contact_id "
                f"AND g.changed_at IS NULL AND g.status IS NOT NULL AND ({disagree})) "
                f"OR {absent}) "
                "ORDER BY r.contact_id LIMIT ?",
                (
                    ctx.list_id,
                    ctx.staging.state(ctx.list_id)["cursor"],
                    *params,
                    *absent_params,
                    IN_CHUNK,
                ),
            )
        ]
        if not contact_ids:
            return
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
        with ctx.staging.atomic():
            ctx.staging.conn.executemany(
                "UPDATE group_status SET changed_at = ? WHERE contact_id = ? AND group_id = ? "
                "AND changed_at IS NULL AND status IS NOT NULL",
                [(at, c, g) for (c, g), (at, _) in latest.items() if (c, g) not in moved],
            )
            # Staff changed these after the run read them (a run stopped between the read
            # and here): the status read is stale, so stage the one CiviCRM holds now, dated
            # by its own latest history row (none: undated, as a membership without history).
            ctx.staging.conn.executemany(
                "INSERT INTO group_status (contact_id, group_id, status, changed_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (contact_id, group_id) DO UPDATE SET "
                "status = excluded.status, changed_at = excluded.changed_at",
                [
                    (c, g, fresh.get((c, g)), _date_of(dated, last_status, c, g, fresh))
                    for c, g in sorted(moved)
                ],
            )
            # An absent membership whose latest history is a deletion: not in the group
            # since that date.
            ctx.staging.conn.executemany(
                "INSERT INTO group_status (contact_id, group_id, status, changed_at) "
                "VALUES (?, ?, NULL, ?) ON CONFLICT (contact_id, group_id) DO UPDATE SET "
                "changed_at = excluded.changed_at "
                "WHERE group_status.status IS NULL AND group_status.changed_at IS NULL",
                [
                    (c, g, at)
                    for (c, g), (at, status) in latest.items()
                    if status == "Deleted" and (c, g) not in moved
                ],
            )
            ctx.staging.set_state(ctx.list_id, cursor=contact_ids[-1])
        ctx.progress("load history", len(contact_ids), None)


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


def _absent_membership_sql(ctx: RunContext) -> tuple[str, list[Any]]:
    """SQL true when the row `r` is subscribed (or interested) at Mailchimp while the
    contact has no membership staged for that group and no date for its absence."""
    unknown = (
        "NOT EXISTS (SELECT 1 FROM group_status g WHERE g.contact_id = r.contact_id "
        "AND g.group_id = ? AND (g.status IS NOT NULL OR g.changed_at IS NOT NULL))"
    )
    clauses = [f"(COALESCE(r.mc_status, '') IN ('subscribed', 'pending') AND {unknown})"]
    params: list[Any] = [ctx.group_id]
    for interest_id, group_id in ctx.interest_groups.items():
        clauses.append(f"(json_extract(r.mc_interests, ?) = 1 AND {unknown})")
        params.extend([f'$."{interest_id}"', group_id])
    return "(" + " OR ".join(clauses) + ")", params


def _disagreement_sql(ctx: RunContext) -> tuple[str, list[Any]]:
    """SQL true when a staged pair `g` disagrees with the row `r`'s Mailchimp side."""
    clauses = [
        "(g.group_id = ? AND (g.status = 'Added') != "
        "(COALESCE(r.mc_status, '') IN ('subscribed', 'pending')))"
    ]
    params: list[Any] = [ctx.group_id]
    for interest_id, group_id in ctx.interest_groups.items():
        clauses.append(
            "(g.group_id = ? AND (g.status = 'Added') IS NOT json_extract(r.mc_interests, ?))"
        )
        params.extend([group_id, f'$."{interest_id}"'])
    return " OR ".join(clauses), params

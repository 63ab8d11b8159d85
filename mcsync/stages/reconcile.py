"""The reconcile stage: staged rows → `reconcile` decisions → queued writes for both sides.

This module turns SQLite rows into `member_state.MemberRow` values and the pure decisions back
into queue rows (`civi_writes`, `updates`). The brake that follows is in `brake`; the plan
`--dry-run` prints from these queues is in `preview`.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from mcsync.rules import member_state as ms
from mcsync.rules import queue_rules as qr
from mcsync.rules import reconcile as rc
from mcsync.rules.addresses import fold_email
from mcsync.rules.reasons import Reason
from mcsync.stages.context import RunContext
from mcsync.store.database import dumps, iso, parse_iso, utc_now

CHUNK = 1000
SETTLE_STEP = 20_000  # rows per set-based statement


def policy_for(ctx: RunContext) -> ms.AudiencePolicy:
    return ms.AudiencePolicy(
        group_id=ctx.group_id,
        interest_groups=ctx.interest_groups,
        respect_privacy_flags=ctx.sync.respect_privacy_flags,
        blank_merge_fields=ctx.sync.blank_merge_fields,
    )


def reconcile_rows(ctx: RunContext) -> None:
    """Decide every `todo` row, a chunk per transaction with the cursor; then decide again
    the rows of contacts with several member rows whose CiviCRM state this run changes."""
    policy = policy_for(ctx)
    settle_agreeing_rows(ctx)
    while True:
        ctx.budget.check()
        rows = ctx.staging.query(
            "SELECT * FROM rows WHERE list_id = ? AND sync_status = 'todo' AND id > ? "
            "ORDER BY id LIMIT ?",
            (ctx.list_id, ctx.staging.state(ctx.list_id)["cursor"], CHUNK),
        )
        if not rows:
            break
        _decide_rows(ctx, policy, rows, cursor=True)
    decide_again(ctx, policy)


# Passes over rows decided again: each pass can only make the queued CiviCRM writes newer, so they
# settle within a pass per sibling; contacts with more member rows than this are rarer still.
SIBLING_PASSES = 4


def decide_again(ctx: RunContext, policy: ms.AudiencePolicy) -> None:
    """Decide again the rows whose decision depends on another row's in the same run.

    One contact with several Mailchimp members: one row's decision can queue a CiviCRM write
    (an interest group Removed because that member changed it last, the subscription group
    Added) that the contact's other rows were, or will be, decided without. Decide those
    rows again, now seeing the queued writes (`load_chunk` lays them over the staged
    state), until the writes stop changing, so the run ends where its next run would: the
    other members follow the newer choice in this run, not the next (issue 10, item 12).
    Two contacts not at Mailchimp that share an address would both subscribe it: the one
    matching will link the member to keeps it, the other is told the member exists."""
    for _ in range(SIBLING_PASSES):
        rows = ctx.staging.query(
            "SELECT * FROM rows WHERE id IN ("
            # rows of a contact with several member rows and CiviCRM writes queued
            "SELECT r.id FROM civi_writes w JOIN rows r ON r.contact_id = w.contact_id "
            "AND r.list_id = w.list_id WHERE w.list_id = ? AND w.kind IN ('group', 'hold') "
            "AND EXISTS (SELECT 1 FROM rows s WHERE s.contact_id = r.contact_id "
            "AND s.list_id = r.list_id AND s.id != r.id) "
            # rows of different contacts, not at Mailchimp, queued to subscribe one address
            "UNION SELECT u.row_id FROM updates u JOIN rows o ON o.id = u.row_id "
            "WHERE u.list_id = ? AND u.state = 'queued' AND o.mc_hash IS NULL "
            "AND fold_email(u.email) IN (SELECT fold_email(u2.email) FROM updates u2 "
            "JOIN rows o2 ON o2.id = u2.row_id WHERE u2.list_id = ? AND u2.state = 'queued' "
            "AND o2.mc_hash IS NULL GROUP BY fold_email(u2.email) "
            "HAVING COUNT(DISTINCT o2.contact_id) > 1)) ORDER BY id",
            (ctx.list_id, ctx.list_id, ctx.list_id),
        )
        if not rows:
            return
        # A decision queues CiviCRM writes for its own contact only: compare those.
        contact_ids = sorted({r["contact_id"] for r in rows if r["contact_id"] is not None})
        before = _queued_group_writes(ctx, contact_ids)
        for start in range(0, len(rows), CHUNK):
            ctx.budget.check()
            _decide_rows(ctx, policy, rows[start : start + CHUNK], cursor=False)
        if _queued_group_writes(ctx, contact_ids) == before:
            return


def _queued_group_writes(ctx: RunContext, contact_ids: Sequence[int]) -> list[tuple[Any, ...]]:
    """The group writes queued for these contacts, in a fixed order."""
    found: list[tuple[Any, ...]] = []
    for start in range(0, len(contact_ids), CHUNK):
        chunk = contact_ids[start : start + CHUNK]
        marks = ",".join("?" * len(chunk))
        found.extend(
            tuple(r)
            for r in ctx.staging.query(
                f"SELECT contact_id, group_id, status, origin_at FROM civi_writes "
                f"WHERE list_id = ? AND kind = 'group' AND contact_id IN ({marks}) "
                f"ORDER BY contact_id, group_id",
                (ctx.list_id, *chunk),
            )
        )
    return found


def _decide_rows(
    ctx: RunContext, policy: ms.AudiencePolicy, rows: Sequence[sqlite3.Row], *, cursor: bool
) -> None:
    """Decide these rows and queue their writes in one transaction (with the cursor)."""
    loaded = load_chunk(ctx, rows)
    missing: dict[str, int] = defaultdict(int)
    settled: list[tuple[str, str | None, str | None, int]] = []
    with ctx.staging.atomic():
        for row in rows:
            member_row = loaded.member_row(row)
            decision = rc.reconcile_member(member_row, policy)
            settled.append(
                record_decision(
                    ctx,
                    row,
                    member_row,
                    decision,
                    loaded.unsubmitted[row["id"]],
                    in_flight=row["id"] in loaded.in_flight,
                )
            )
            for outcome in decision.interests:
                if outcome.rule == "5.3-I1-no-data":
                    missing[outcome.interest_id] += 1
        ctx.staging.conn.executemany(
            "UPDATE rows SET sync_status = ?, reason = ?, reason_detail = ? WHERE id = ?",
            settled,
        )
        if cursor:
            ctx.staging.set_state(ctx.list_id, cursor=rows[-1]["id"])
    for interest_id, count in sorted(missing.items()):
        # Seed §5.3 (lab #19): deleted at Mailchimp, or mapped after these members were
        # fetched; a full run (--since ever) fetches their interests again.
        ctx.log(
            f"Interest {interest_id} is missing from the Mailchimp data of {count} "
            f"subscribed member(s); skipped. Was it deleted in Mailchimp, or newly mapped "
            f"(then run with --since ever)?",
            "notice",
        )
    ctx.progress("reconcile", len(rows), None)


def settle_agreeing_rows(ctx: RunContext) -> int:
    """Mark `ok`, in one statement, the `todo` rows whose sides plainly agree: subscribed at
    Mailchimp and Added in CiviCRM, every mapped interest equal to its group, one unheld email
    that is the member's, no privacy flag, no sibling, refusal, merge-field data or queued
    write. `reconcile_member` decides nothing for such a row, and a full run marks every row
    `todo`, so only the rows that disagree (or are unusual) go through Python."""
    interest_checks = "".join(
        " AND json_extract(r.mc_interests, ?) IS ((SELECT g.status FROM group_status g "
        "WHERE g.contact_id = r.contact_id AND g.group_id = ?) IS 'Added')"
        for _ in ctx.interest_groups
    )
    interest_params: list[Any] = []
    for interest_id, group_id in ctx.interest_groups.items():
        interest_params.extend([f'$."{interest_id}"', group_id])
    low, high = ctx.staging.query(
        "SELECT MIN(id), MAX(id) FROM rows WHERE list_id = ? AND sync_status = 'todo'",
        (ctx.list_id,),
    )[0]
    settled = 0
    # One statement per id range, each its own short transaction: a large audience never
    # holds the write lock for long (the lease heartbeat writes too).
    for start in range(low or 0, (high or -1) + 1, SETTLE_STEP):
        ctx.budget.check()
        settled += _settle_range(ctx, start, start + SETTLE_STEP, interest_checks, interest_params)
    return settled


def _settle_range(
    ctx: RunContext, start: int, stop: int, interest_checks: str, interest_params: list[Any]
) -> int:
    cursor = ctx.staging.execute(
        f"""
        UPDATE rows AS r SET sync_status = 'ok', reason = NULL, reason_detail = NULL
        WHERE r.id >= ? AND r.id < ?
          AND r.list_id = ? AND r.sync_status = 'todo' AND r.mc_status = 'subscribed'
          AND r.mc_hash IS NOT NULL AND r.contact_id IS NOT NULL AND r.creating = 0
          AND r.mc_expected IS NULL AND r.refusal_reason IS NULL
          AND EXISTS (SELECT 1 FROM contacts c WHERE c.contact_id = r.contact_id
                      AND c.is_deleted = 0 AND c.gone = 0 AND c.is_deceased = 0
                      AND c.do_not_email = 0 AND c.is_opt_out = 0)
          AND (SELECT g.status FROM group_status g WHERE g.contact_id = r.contact_id
               AND g.group_id = ?) IS 'Added'
          {interest_checks}
          AND EXISTS (SELECT 1 FROM emails e WHERE e.contact_id = r.contact_id
                      AND e.email_lc = fold_email(r.mc_email) AND e.on_hold = 0)
          AND NOT EXISTS (SELECT 1 FROM emails e WHERE e.contact_id = r.contact_id
                          AND e.email_lc != fold_email(r.mc_email))
          AND NOT EXISTS (SELECT 1 FROM emails e WHERE e.email_lc = fold_email(r.mc_email)
                          AND e.on_hold != 0)
          AND NOT EXISTS (SELECT 1 FROM rows s WHERE s.contact_id = r.contact_id
                          AND s.list_id = r.list_id AND s.id != r.id)
          AND NOT EXISTS (SELECT 1 FROM contact_data d WHERE d.list_id = r.list_id
                          AND d.contact_id = r.contact_id AND d.merge_fields != '{{}}')
          AND NOT EXISTS (SELECT 1 FROM updates u WHERE u.row_id = r.id
                          AND u.state IN ('queued', 'submitting', 'submitted'))
          AND NOT EXISTS (SELECT 1 FROM civi_writes w WHERE w.list_id = r.list_id
                          AND w.contact_id = r.contact_id)
        """,
        (start, stop, ctx.list_id, ctx.group_id, *interest_params),
    )
    return cursor.rowcount


class LoadedChunk:
    """Everything about a chunk of rows that decisions need, loaded with a few queries."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.contacts: dict[int, sqlite3.Row] = {}
        self.emails: dict[int, list[ms.EmailRecord]] = defaultdict(list)
        self.groups: dict[int, dict[int, ms.GroupState]] = defaultdict(dict)
        self.siblings: dict[int, list[tuple[int, str | None, str | None]]] = defaultdict(list)
        self.held_addresses: set[str] = set()
        self.addresses_in_use: frozenset[str] = frozenset()
        self.addresses_claimed: list[tuple[str, int]] = []
        self.unsubmitted: dict[int, list[qr.QueuedUpdate]] = defaultdict(list)
        self.in_flight: set[int] = set()
        self.merge_fields: dict[int, dict[str, Any]] = {}

    def member_row(self, row: sqlite3.Row) -> ms.MemberRow:
        contact_id = row["contact_id"]
        mailchimp = (
            ms.MailchimpSide(
                email=row["mc_email"],
                status=row["mc_status"],
                last_changed=parse_iso(row["mc_last_changed"]),
                status_changed_at=parse_iso(row["mc_status_at"]),
                status_changed_after=(
                    parse_iso(row["mc_status_after"]) if row["mc_status"] != "archived" else None
                ),
                interests=json.loads(row["mc_interests"]),
                interests_changed_at={
                    k: v
                    for k, v in (
                        (k, parse_iso(v)) for k, v in json.loads(row["mc_interests_at"]).items()
                    )
                    if v is not None
                },
                # What Mailchimp has as far as mcsync knows: what it pushed (seed §10 "previous").
                merge_fields=json.loads(row["pushed_merge"]),
            )
            if row["mc_status"] is not None and row["mc_email"]
            else ms.MailchimpSide()
        )
        civicrm = ms.CivicrmSide()
        contact = self.contacts.get(contact_id) if contact_id is not None else None
        if contact is not None:
            groups = self.groups.get(contact_id, {})
            civicrm = ms.CivicrmSide(
                contact_id=contact_id,
                subscription=groups.get(self.ctx.group_id, ms.GroupState()),
                interest_groups={
                    g: groups.get(g, ms.GroupState()) for g in self.ctx.interest_groups.values()
                },
                is_deleted=bool(contact["is_deleted"] or contact["gone"]),
                is_deceased=bool(contact["is_deceased"]),
                do_not_email=bool(contact["do_not_email"]),
                is_opt_out=bool(contact["is_opt_out"]),
                emails=tuple(self.emails.get(contact_id, ())),
                merge_fields=self.merge_fields.get(contact_id, {}),
                flags_changed_at=parse_iso(contact["flags_at"]),
                flags_changed_after=parse_iso(contact["flags_after"]),
            )
        siblings = (
            tuple(
                ms.Sibling(email, status)  # type: ignore[arg-type]
                for other_id, email, status in self.siblings.get(contact_id, [])
                if other_id != row["id"] and email
            )
            if contact_id is not None
            else ()
        )
        refusal = None
        if row["refusal_reason"] and row["refusal_email"]:
            refusal = ms.Refusal(
                Reason(row["refusal_reason"]),
                row["refusal_email"],
                parse_iso(row["refusal_civi_at"]),
            )
        return ms.MemberRow(
            mailchimp=mailchimp,
            civicrm=civicrm,
            siblings=siblings,
            mailchimp_email_on_hold=fold_email(row["mc_email"] or "") in self.held_addresses,
            refusal=refusal,
            addresses_in_use=self.addresses_in_use.union(
                a for a, owner in self.addresses_claimed if owner < contact_id
            )
            if row["mc_hash"] is None and contact_id is not None
            else frozenset(),
            cleaned_handled=_cleaned_handled(row),
            trashed_removal_at=parse_iso(row["trashed_removal_at"]) if contact_id is None else None,
        )


def _cleaned_handled(row: sqlite3.Row) -> bool:
    """mcsync acted on this cleaned state: the one it recorded, by its status time (a member
    cleaned again after a re-subscribe has a new one)."""
    handled = row["cleaned_handled_at"]
    return (
        row["mc_status"] == "cleaned"
        and handled is not None
        and handled == (row["mc_status_at"] or row["mc_last_changed"])
    )


def _addresses_in_use(
    ctx: RunContext, rows: Sequence[sqlite3.Row], loaded: LoadedChunk
) -> frozenset[str]:
    """Of the addresses contacts not at Mailchimp could be subscribed with, those another
    member row of this audience already holds."""
    candidates = sorted(
        {
            fold_email(e.email)
            for r in rows
            if r["mc_hash"] is None and r["contact_id"] is not None
            for e in loaded.emails.get(r["contact_id"], ())
        }
    )
    if not candidates:
        return frozenset()
    marks = ",".join("?" * len(candidates))
    # Another contact not at Mailchimp yet may be about to subscribe the same address (two
    # contacts share it): the lower contact id, whom matching picks once the member exists,
    # keeps it; see `decide_again`.
    loaded.addresses_claimed = [
        (r[0], r[1])
        for r in ctx.staging.query(
            f"SELECT DISTINCT fold_email(u.email), r.contact_id FROM updates u "
            f"JOIN rows r ON r.id = u.row_id WHERE u.list_id = ? AND r.mc_hash IS NULL "
            f"AND r.contact_id IS NOT NULL AND u.state IN ('queued', 'submitting', 'submitted') "
            f"AND fold_email(u.email) IN ({marks})",
            (ctx.list_id, *candidates),
        )
    ]
    return frozenset(
        r[0]
        for r in ctx.staging.query(
            f"SELECT fold_email(mc_email) FROM rows WHERE list_id = ? AND mc_hash IS NOT NULL "
            f"AND fold_email(mc_email) IN ({marks})",
            (ctx.list_id, *candidates),
        )
    )


def load_chunk(ctx: RunContext, rows: Sequence[sqlite3.Row]) -> LoadedChunk:
    loaded = LoadedChunk(ctx)
    staging = ctx.staging
    contact_ids = sorted({r["contact_id"] for r in rows if r["contact_id"] is not None})
    if contact_ids:
        marks = ",".join("?" * len(contact_ids))
        for contact in staging.query(
            f"SELECT * FROM contacts WHERE contact_id IN ({marks})", contact_ids
        ):
            loaded.contacts[contact["contact_id"]] = contact
        for email in staging.query(
            f"SELECT * FROM emails WHERE contact_id IN ({marks}) ORDER BY email_id", contact_ids
        ):
            loaded.emails[email["contact_id"]].append(
                ms.EmailRecord(
                    email["email"],
                    email["on_hold"],
                    bool(email["is_bulkmail"]),
                    bool(email["is_primary"]),
                )
            )
        for data in staging.query(
            f"SELECT contact_id, merge_fields FROM contact_data WHERE list_id = ? "
            f"AND contact_id IN ({marks})",
            (ctx.list_id, *contact_ids),
        ):
            loaded.merge_fields[data["contact_id"]] = json.loads(data["merge_fields"])
        group_marks = ",".join("?" * len(ctx.all_groups))
        for group in staging.query(
            f"SELECT * FROM group_status WHERE contact_id IN ({marks}) "
            f"AND group_id IN ({group_marks})",
            (*contact_ids, *ctx.all_groups),
        ):
            loaded.groups[group["contact_id"]][group["group_id"]] = ms.GroupState(
                group["status"], parse_iso(group["changed_at"])
            )
        # Writes this run queued for CiviCRM are what it will have (push_civicrm stores the
        # same status and time after writing): decide against them, not the state before.
        for write in staging.query(
            f"SELECT contact_id, group_id, status, origin_at FROM civi_writes WHERE "
            f"list_id = ? AND kind = 'group' AND contact_id IN ({marks})",
            (ctx.list_id, *contact_ids),
        ):
            loaded.groups[write["contact_id"]][write["group_id"]] = ms.GroupState(
                write["status"], parse_iso(write["origin_at"])
            )
        for sibling in staging.query(
            f"SELECT id, contact_id, mc_email, mc_status FROM rows WHERE list_id = ? "
            f"AND contact_id IN ({marks}) AND mc_hash IS NOT NULL",
            (ctx.list_id, *contact_ids),
        ):
            loaded.siblings[sibling["contact_id"]].append(
                (sibling["id"], sibling["mc_email"], sibling["mc_status"])
            )
    if contact_ids:
        # Holds queued this run (a cleaned member) count as on hold already.
        for hold in staging.query(
            f"SELECT contact_id, fold_email(email) FROM civi_writes WHERE list_id = ? "
            f"AND kind = 'hold' AND contact_id IN ({marks})",
            (ctx.list_id, *contact_ids),
        ):
            loaded.emails[hold[0]] = [
                replace(e, on_hold=1) if fold_email(e.email) == hold[1] else e
                for e in loaded.emails.get(hold[0], [])
            ]
    addresses = sorted({fold_email(r["mc_email"]) for r in rows if r["mc_email"]})
    if addresses:
        marks = ",".join("?" * len(addresses))
        loaded.held_addresses = {
            e[0]
            for e in staging.query(
                f"SELECT DISTINCT email_lc FROM emails WHERE email_lc IN ({marks}) "
                f"AND on_hold != 0",
                addresses,
            )
        }
    loaded.addresses_in_use = _addresses_in_use(ctx, rows, loaded)
    row_ids = [r["id"] for r in rows]
    marks = ",".join("?" * len(row_ids))
    for update in staging.query(
        f"SELECT id, row_id, body FROM updates WHERE state = 'queued' AND row_id IN ({marks}) "
        f"ORDER BY id",
        row_ids,
    ):
        loaded.unsubmitted[update["row_id"]].append(
            qr.QueuedUpdate(update["id"], json.loads(update["body"]))
        )
    loaded.in_flight = {
        r[0]
        for r in staging.query(
            f"SELECT DISTINCT row_id FROM updates WHERE state IN ('submitting', 'submitted') "
            f"AND row_id IN ({marks})",
            row_ids,
        )
    }
    return loaded


def record_decision(
    ctx: RunContext,
    row: sqlite3.Row,
    member_row: ms.MemberRow,
    decision: rc.Decision,
    unsubmitted: list[qr.QueuedUpdate],
    *,
    in_flight: bool,
) -> tuple[str, str | None, str | None, int]:
    """Queue one decision's writes; return the row's new (sync status, reason, detail, id),
    which the caller stores for the whole chunk at once. `in_flight`: the row has updates
    that were submitted and not yet answered."""
    staging = ctx.staging
    m, c = member_row.mailchimp, member_row.civicrm
    interest_by_group = {g: i for i, g in ctx.interest_groups.items()}
    for action in decision.civicrm_actions:
        if isinstance(action, rc.SetGroupStatus):
            interest_id = interest_by_group.get(action.group_id)
            if action.group_id == ctx.group_id:
                origin = m.status_time
            else:
                origin = m.interest_time(interest_id) if interest_id else m.last_changed
            staging.execute(
                "INSERT INTO civi_writes (list_id, kind, contact_id, group_id, status, origin_at) "
                "VALUES (?, 'group', ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                "status = excluded.status, origin_at = excluded.origin_at",
                (
                    ctx.list_id,
                    action.contact_id,
                    action.group_id,
                    action.status,
                    iso(origin or utc_now()),
                ),
            )
        else:
            staging.execute(
                "INSERT OR IGNORE INTO civi_writes (list_id, kind, contact_id, email) "
                "VALUES (?, 'hold', ?, ?)",
                (ctx.list_id, action.contact_id, action.email),
            )
    if (
        m.status == "cleaned"
        and not member_row.cleaned_handled
        and c.contact_id is not None
        and not c.is_deleted
        and not ctx.dry_run
        and not any(isinstance(a, rc.PutEmailOnHold) for a in decision.actions)
    ):
        # Nothing to hold (already held): the transition is done. A queued hold marks it
        # when push_civicrm writes it (a dry run or abort discards it unwritten).
        staging.mark_cleaned_handled([row["id"]])
    queue = qr.plan_queue(unsubmitted, decision)
    now = iso(utc_now())
    for abort in queue.abort:
        staging.execute(
            "UPDATE updates SET state = 'aborted', completed_at = ?, error_detail = ? WHERE id = ?",
            (now, abort.reason, abort.update_id),
        )
    live = len(unsubmitted) > len(queue.abort)
    if queue.abort and not live and queue.enqueue is None:
        # Every queued write dropped, none replacing it (whose expectation would replace it).
        staging.forget_unsent_status([row["id"]])
    if queue.enqueue is not None:
        body = dict(queue.enqueue.body)
        origin = _origin_of(body, c, interest_by_group, member_row.trashed_removal_at)
        staging.execute(
            "INSERT INTO updates (list_id, row_id, email, body, origin_at, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (ctx.list_id, row["id"], queue.enqueue.email, dumps(body), iso(origin), now),
        )
        expected: dict[str, Any] = {"at": iso(origin)}
        if body.get("status"):
            expected["status"] = body["status"]
        if body.get("interests"):
            expected["interests"] = body["interests"]
        staging.execute(
            "UPDATE rows SET mc_expected = ? WHERE id = ?", (dumps(expected), row["id"])
        )
        live = True
    reason = decision.reason.value if decision.reason else None
    sync_status = "live" if live or in_flight else ("fail" if reason else "ok")
    return sync_status, reason, decision.detail if reason else None, row["id"]


def _origin_of(
    body: dict[str, Any],
    civicrm: ms.CivicrmSide,
    interest_by_group: dict[int, str],
    trashed_removal_at: datetime | None = None,
) -> datetime:
    """The time of the CiviCRM choice an update carries: what Mailchimp's side should count
    as its change time once the write lands (never the time of our write). A row with no
    contact carries a trashed contact's removal (`trashed_removal_at`)."""
    times: list[datetime] = []
    if body.get("status") and civicrm.subscription.changed_at:
        times.append(civicrm.subscription.changed_at)
    if body.get("status") and civicrm.contact_id is None and trashed_removal_at:
        times.append(trashed_removal_at)
    for group_id, interest_id in interest_by_group.items():
        if interest_id in (body.get("interests") or {}):
            state = civicrm.interest_groups.get(group_id)
            if state and state.changed_at:
                times.append(state.changed_at)
    return max(times) if times else utc_now()

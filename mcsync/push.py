"""Push stages: write decided changes to CiviCRM and Mailchimp, and collect batch results.

CiviCRM writes go as bulk `save` calls. Mailchimp writes go as direct concurrent PUTs when the
change set is small (immediate results) and as `POST /batches` when it is large; batch results
are polled and downloaded by mcsync itself, so no batch webhook is needed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from mcsync import write_results as wr
from mcsync.errors import ApiError, BudgetExhausted
from mcsync.fetch import chunks, fetch_emails_of_contacts
from mcsync.mailchimp import BULK_LIMIT, member_put_operation
from mcsync.reasons import Reason
from mcsync.run import TRACKING_MARKER, RunContext
from mcsync.staging import dumps, iso, parse_iso, utc_now

CIVI_WRITE_CHUNK = 500
BATCH_SIZE = 1000
OPERATION_PREFIX = "mcsync_"
POLL_SECONDS = 2.0


# -- CiviCRM --------------------------------------------------------------------------------
def push_civicrm(ctx: RunContext) -> None:
    """Apply queued group-status changes and holds; each chunk's staging update is committed
    with the removal of its queue rows."""
    while True:
        ctx.budget.check()
        writes: list[sqlite3.Row] = ctx.staging.query(
            "SELECT * FROM civi_writes WHERE list_id = ? AND kind = 'group' ORDER BY id LIMIT ?",
            (ctx.list_id, CIVI_WRITE_CHUNK),
        )
        if not writes:
            break
        writes = _drop_overtaken(ctx, writes)
        if not writes:
            continue
        try:
            _save_group_statuses(ctx, writes)
        except ApiError as exc:
            if type(exc) is not ApiError:  # auth, outage, odd answers: the run fails
                raise
            writes = _save_one_by_one(ctx, writes)
        with ctx.staging.atomic():
            ctx.staging.conn.executemany(
                "INSERT INTO group_status (contact_id, group_id, status, changed_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (contact_id, group_id) DO UPDATE SET "
                "status = excluded.status, changed_at = excluded.changed_at",
                [(w["contact_id"], w["group_id"], w["status"], w["origin_at"]) for w in writes],
            )
            _forget_writes(ctx, writes)
        ctx.progress("write CiviCRM", len(writes), None)
    _push_holds(ctx)
    _push_new_emails(ctx)


def _save_group_statuses(ctx: RunContext, writes: Sequence[sqlite3.Row]) -> None:
    ctx.civicrm.call(
        "GroupContact",
        "save",
        {
            "records": [
                {"contact_id": w["contact_id"], "group_id": w["group_id"], "status": w["status"]}
                for w in writes
            ],
            "match": ["contact_id", "group_id"],
            "method": "API",
            "tracking": TRACKING_MARKER,
        },
        retry=True,  # matched on (contact, group): repeating it sets the same status
    )


def _save_one_by_one(ctx: RunContext, writes: list[sqlite3.Row]) -> list[sqlite3.Row]:
    """CiviCRM refused a chunk: save its records one at a time so one bad record (say a
    contact an ACL hides) fails alone, with its reason on its row, and the rest go through."""
    saved = []
    for write in writes:
        try:
            _save_group_statuses(ctx, [write])
        except ApiError as exc:
            if type(exc) is not ApiError:
                raise
            with ctx.staging.atomic():
                _forget_writes(ctx, [write])
                ctx.staging.execute(
                    "UPDATE rows SET sync_status = 'fail', reason = ?, "
                    "reason_detail = ? WHERE list_id = ? AND contact_id = ?",
                    (Reason.CIVICRM_ERROR.value, str(exc), ctx.list_id, write["contact_id"]),
                )
            ctx.log(f"CiviCRM refused a group change for contact {write['contact_id']}: {exc}",
                    "warning")
            continue
        saved.append(write)
    return saved


def _push_new_emails(ctx: RunContext) -> None:
    """An address changed at Mailchimp is added to the contact as its bulk-mail email."""
    while True:
        ctx.budget.check()
        writes = ctx.staging.query(
            "SELECT * FROM civi_writes WHERE list_id = ? AND kind = 'email' ORDER BY id LIMIT ?",
            (ctx.list_id, CIVI_WRITE_CHUNK),
        )
        if not writes:
            return
        # Refresh first: after a crash the address may already be there.
        fetch_emails_of_contacts(ctx, sorted({w["contact_id"] for w in writes}))
        for write in writes:
            known = ctx.staging.scalar(
                "SELECT COUNT(*) FROM emails WHERE contact_id = ? AND email_lc = ?",
                (write["contact_id"], (write["email"] or "").lower()),
            )
            if not known:
                ctx.civicrm.call(
                    "Email",
                    "create",
                    {"values": {"contact_id": write["contact_id"], "email": write["email"],
                                "is_bulkmail": True}},
                )
        fetch_emails_of_contacts(ctx, sorted({w["contact_id"] for w in writes}))
        with ctx.staging.atomic():
            _forget_writes(ctx, writes)


def _drop_overtaken(ctx: RunContext, writes: list[sqlite3.Row]) -> list[sqlite3.Row]:
    """A person may change a group in CiviCRM while a run works: such a write is dropped and
    its row decided again next run, so a fresh choice is never overwritten by a stale plan."""
    state = ctx.staging.state(ctx.list_id)
    seen_up_to = max(state["history_bookmark"] or 0, state["history_target"] or 0)
    contact_ids = sorted({w["contact_id"] for w in writes})
    fresh = ctx.civicrm.call(
        "SubscriptionHistory",
        "get",
        {
            "select": ["contact_id", "group_id", "tracking"],
            "where": [
                ["id", ">", seen_up_to],
                ["contact_id", "IN", contact_ids],
                ["group_id", "IN", ctx.all_groups],
            ],
            "limit": 0,
        },
    )
    changed = {
        (r["contact_id"], r["group_id"])
        for r in fresh
        if (r.get("tracking") or "") != TRACKING_MARKER
    }
    if not changed:
        return writes
    overtaken = [w for w in writes if (w["contact_id"], w["group_id"]) in changed]
    with ctx.staging.atomic():
        _forget_writes(ctx, overtaken)
        ctx.staging.conn.executemany(
            "UPDATE rows SET sync_status = 'todo' WHERE list_id = ? AND contact_id = ?",
            [(ctx.list_id, w["contact_id"]) for w in overtaken],
        )
    ctx.log(f"{len(overtaken)} CiviCRM changes made during this run are kept; "
            "those contacts are decided again next run")
    return [w for w in writes if (w["contact_id"], w["group_id"]) not in changed]


def _push_holds(ctx: RunContext) -> None:
    """Cleaned at Mailchimp → that contact's records of the address go on hold (bounce)."""
    while True:
        ctx.budget.check()
        writes = ctx.staging.query(
            "SELECT * FROM civi_writes WHERE list_id = ? AND kind = 'hold' ORDER BY id LIMIT ?",
            (ctx.list_id, CIVI_WRITE_CHUNK),
        )
        if not writes:
            return
        email_ids: list[int] = []
        for write in writes:
            email_ids.extend(
                r[0]
                for r in ctx.staging.query(
                    "SELECT email_id FROM emails WHERE contact_id = ? AND email_lc = ? "
                    "AND on_hold = 0",
                    (write["contact_id"], (write["email"] or "").lower()),
                )
            )
        if email_ids:
            ctx.civicrm.call(  # every record has its id: safe to repeat
                "Email", "save", {"records": [{"id": i, "on_hold": 1} for i in email_ids]},
                retry=True,
            )
        with ctx.staging.atomic():
            ctx.staging.conn.executemany(
                "UPDATE emails SET on_hold = 1 WHERE email_id = ?", [(i,) for i in email_ids]
            )
            _forget_writes(ctx, writes)


def _forget_writes(ctx: RunContext, writes: Sequence[sqlite3.Row]) -> None:
    ctx.staging.conn.executemany(
        "DELETE FROM civi_writes WHERE id = ?", [(w["id"],) for w in writes]
    )


# -- Mailchimp ------------------------------------------------------------------------------
def push_mailchimp(ctx: RunContext) -> None:
    """Send queued member updates: direct PUTs below the batch threshold, else batches."""
    queued = ctx.staging.scalar(
        "SELECT COUNT(*) FROM updates WHERE list_id = ? AND state = 'queued'", (ctx.list_id,)
    )
    if not queued:
        return
    if queued < ctx.sync.batch_threshold:
        _push_direct(ctx)
    else:
        _push_batches(ctx)


def _queued(ctx: RunContext, limit: int) -> list[sqlite3.Row]:
    return ctx.staging.query(
        "SELECT * FROM updates WHERE list_id = ? AND state = 'queued' ORDER BY id LIMIT ?",
        (ctx.list_id, limit),
    )


def _push_direct(ctx: RunContext) -> None:
    """Small change sets: bulk `POST /lists/{id}` (≤ 500 members a request), answered at once
    with per-member errors, so results are recorded in the same pass."""
    while True:
        ctx.budget.check()
        updates = _one_per_address(_queued(ctx, BULK_LIMIT * 2))[:BULK_LIMIT]
        if not updates:
            return
        items = [bulk_item(u["email"], json.loads(u["body"])) for u in updates]
        answer = ctx.mailchimp.write_members(ctx.list_id, items)
        written = {
            (m.get("email_address") or "").lower(): m
            for m in (answer.get("new_members") or []) + (answer.get("updated_members") or [])
        }
        refused = {(e.get("email_address") or "").lower(): e for e in answer.get("errors") or []}
        with ctx.staging.atomic():
            for update in updates:
                address = update["email"].lower()
                if address in written:
                    apply_result(ctx, update, 200, written[address], None)
                elif address in refused:
                    apply_result(ctx, update, 400, None, bulk_error(refused[address]))
                else:
                    _fail_update(ctx, update, "No result", "Mailchimp's answer did not mention "
                                 "this member; it will be decided again next run")
        ctx.progress("write Mailchimp", len(updates), None)


def _one_per_address(updates: list[sqlite3.Row]) -> list[sqlite3.Row]:
    """Mailchimp refuses an address twice in one bulk request: later ones wait their turn."""
    seen: set[str] = set()
    kept = []
    for update in updates:
        address = update["email"].lower()
        if address not in seen:
            seen.add(address)
            kept.append(update)
    return kept


def bulk_item(email: str, body: dict[str, Any]) -> dict[str, Any]:
    """A member PUT body as a bulk member: the status applies to new and existing members,
    so a data-only update carries the member's current status (`status_if_new`)."""
    item = {k: v for k, v in body.items() if k not in ("status_if_new", "email_address")}
    item["email_address"] = email
    item["status"] = body.get("status") or body.get("status_if_new") or "subscribed"
    return item


# Bulk errors carry only a message; these are the titles the same refusal has on a PUT.
_BULK_TITLES = (
    ("compliance state", wr.COMPLIANCE_TITLE),
    ("permanently deleted", wr.FORGOTTEN_TITLE),
    ("looks fake or invalid", "Invalid Resource"),
)


def bulk_error(error: dict[str, Any]) -> ApiError:
    message = str(error.get("error") or "")
    title = next((t for needle, t in _BULK_TITLES if needle in message.lower()), None)
    return ApiError(
        message,
        status=400,
        title=title or str(error.get("error_code") or "Error"),
        detail=message,
    )


def _push_batches(ctx: RunContext) -> None:
    """Submit batches of queued updates. The updates are tied to a local batch row before the
    POST; a POST whose answer was lost is found again by `recover_submissions`, never re-sent."""
    while True:
        ctx.budget.check()
        updates = _queued(ctx, BATCH_SIZE)
        if not updates:
            return
        now = iso(utc_now())
        with ctx.staging.atomic():
            cursor = ctx.staging.execute(
                "INSERT INTO batches (list_id, status, operations, submitted_at) "
                "VALUES (?, 'submitting', ?, ?)",
                (ctx.list_id, len(updates), now),
            )
            batch_row = cursor.lastrowid
            ctx.staging.conn.executemany(
                "UPDATE updates SET state = 'submitting', batch_id = ? WHERE id = ?",
                [(batch_row, u["id"]) for u in updates],
            )
        operations = [
            member_put_operation(
                ctx.list_id, u["email"], json.loads(u["body"]), f"{OPERATION_PREFIX}{u['id']}"
            )
            for u in updates
        ]
        try:
            batch = ctx.mailchimp.start_batch(operations)
        except ApiError as exc:
            if exc.status is not None and 400 <= exc.status < 500:
                _unsubmit(ctx, batch_row)
            raise
        with ctx.staging.atomic():
            _record_submission(ctx, batch_row, batch)
        ctx.log(f"Submitted batch {batch['id']} with {len(updates)} operations")
        ctx.progress("submit batches", len(updates), None)


def _record_submission(ctx: RunContext, batch_row: int | None, batch: dict[str, Any]) -> None:
    ctx.staging.execute(
        "UPDATE batches SET mc_batch_id = ?, status = ? WHERE id = ?",
        (batch["id"], batch.get("status", "pending"), batch_row),
    )
    ctx.staging.execute(
        "UPDATE updates SET state = 'submitted' WHERE batch_id = ? AND state = 'submitting'",
        (batch_row,),
    )


def _unsubmit(ctx: RunContext, batch_row: int | None) -> None:
    with ctx.staging.atomic():
        ctx.staging.execute(
            "UPDATE updates SET state = 'queued', batch_id = NULL WHERE batch_id = ?", (batch_row,)
        )
        ctx.staging.execute("DELETE FROM batches WHERE id = ?", (batch_row,))


def recover_submissions(ctx: RunContext) -> None:
    """A kill between `POST /batches` and recording its id leaves a 'submitting' batch row.
    Look for a batch Mailchimp accepted at that time with that many operations: adopt it if
    found, else the POST never arrived and the updates go back to the queue."""
    stuck = ctx.staging.query(
        "SELECT * FROM batches WHERE list_id = ? AND status = 'submitting'", (ctx.list_id,)
    )
    if not stuck:
        return
    known = {
        r[0]
        for r in ctx.staging.query("SELECT mc_batch_id FROM batches WHERE mc_batch_id IS NOT NULL")
    }
    candidates = [b for b in ctx.mailchimp.batches() if b.get("id") not in known]
    for row in stuck:
        started = parse_iso(row["submitted_at"])
        match = next(
            (
                b
                for b in candidates
                if b.get("total_operations") == row["operations"]
                and started is not None
                and (parse_iso(b.get("submitted_at")) or started) >= started.replace(second=0)
            ),
            None,
        )
        if match is None:
            _unsubmit(ctx, row["id"])
            ctx.log("A batch submission was interrupted before Mailchimp got it; re-queued")
            continue
        candidates.remove(match)
        with ctx.staging.atomic():
            _record_submission(ctx, row["id"], match)
        ctx.log(f"Adopted batch {match['id']} from an interrupted submission")


def collect_batches(ctx: RunContext) -> None:
    """Poll this audience's batches and process finished ones; wait within the budget."""
    recover_submissions(ctx)
    while True:
        open_batches = ctx.staging.query(
            "SELECT * FROM batches WHERE list_id = ? AND status NOT IN ('processed', 'aborted')",
            (ctx.list_id,),
        )
        if not open_batches:
            return
        waiting = False
        for row in open_batches:
            ctx.budget.check()
            batch = ctx.mailchimp.get_batch(row["mc_batch_id"])
            with ctx.staging.atomic():
                ctx.staging.execute(
                    "UPDATE batches SET status = ?, finished_operations = ?, "
                    "errored_operations = ? WHERE id = ?",
                    (
                        batch.get("status"), batch.get("finished_operations"),
                        batch.get("errored_operations"), row["id"],
                    ),
                )
            if batch.get("status") != "finished":
                waiting = True
                continue
            _process_results(ctx, row, batch)
        if waiting:
            if ctx.budget.remaining() < POLL_SECONDS:
                raise BudgetExhausted("waiting for Mailchimp to finish a batch")
            ctx.budget.sleep(POLL_SECONDS)


def _process_results(ctx: RunContext, row: sqlite3.Row, batch: dict[str, Any]) -> None:
    results = ctx.mailchimp.batch_results(batch["response_body_url"])
    by_update: dict[int, dict[str, Any]] = {}
    for item in results:
        operation_id = str(item.get("operation_id") or "")
        number = operation_id.removeprefix(OPERATION_PREFIX)
        if operation_id.startswith(OPERATION_PREFIX) and number.isdigit():
            by_update[int(number)] = item
    updates = ctx.staging.query(
        "SELECT * FROM updates WHERE batch_id = ? AND state = 'submitted'", (row["id"],)
    )
    with ctx.staging.atomic():
        for update in updates:
            result = by_update.get(update["id"])
            if result is None:
                _fail_update(ctx, update, "No result", "Mailchimp's batch results did not "
                             "mention this operation; it will be decided again next run")
                continue
            status_code = int(result.get("status_code") or 0)
            response = result.get("response") or {}
            if status_code == 200:
                apply_result(ctx, update, 200, response, None)
            else:
                error = ApiError(
                    str(response.get("title") or "Error"),
                    status=status_code,
                    title=response.get("title"),
                    detail=response.get("detail"),
                )
                apply_result(ctx, update, status_code, None, error)
        ctx.staging.execute(
            "UPDATE batches SET status = 'processed', completed_at = ? WHERE id = ?",
            (iso(utc_now()), row["id"]),
        )
    ctx.log(
        f"Processed batch {batch['id']}: {batch.get('finished_operations')} operations, "
        f"{batch.get('errored_operations')} errors"
    )


def _fail_update(ctx: RunContext, update: sqlite3.Row, title: str, detail: str) -> None:
    ctx.staging.execute(
        "UPDATE updates SET state = 'failed', completed_at = ?, error_title = ?, error_detail = ? "
        "WHERE id = ?",
        (iso(utc_now()), title, detail, update["id"]),
    )
    ctx.staging.execute(
        "UPDATE rows SET sync_status = 'todo' WHERE id = ? AND NOT EXISTS (SELECT 1 FROM updates "
        "WHERE row_id = ? AND state IN ('queued', 'submitting', 'submitted'))",
        (update["row_id"], update["row_id"]),
    )


def apply_result(
    ctx: RunContext,
    update: sqlite3.Row,
    status_code: int,
    response: dict[str, Any] | None,
    error: ApiError | None,
) -> None:
    """Record one member write's outcome on its update and row (seed-behaviour §7, §5.4)."""
    body = json.loads(update["body"])
    found = ctx.staging.query("SELECT * FROM rows WHERE id = ?", (update["row_id"],))
    row = found[0] if found else None
    now = iso(utc_now())
    outcome = wr.apply_batch_result(
        body,
        status_code,
        title=(error.title or "") if error else "",
        detail=(error.detail or "") if error else "",
        member_status=(response or {}).get("status"),
    )
    if outcome.kind == "ok":
        ctx.staging.execute(
            "UPDATE updates SET state = 'done', completed_at = ? WHERE id = ?", (now, update["id"])
        )
        if row is not None:
            _store_member_response(ctx, row, update, body, response or {})
            if outcome.recheck:
                ctx.staging.execute(
                    "UPDATE rows SET sync_status = 'todo' WHERE id = ?", (row["id"],)
                )
        return
    ctx.staging.execute(
        "UPDATE updates SET state = 'failed', completed_at = ?, error_title = ?, "
        "error_detail = ? WHERE id = ?",
        (now, error.title if error else None, error.detail if error else None, update["id"]),
    )
    if outcome.kind == "retry" and outcome.retry_body is not None:
        ctx.staging.execute(
            "INSERT INTO updates (list_id, row_id, email, body, origin_at, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                ctx.list_id, update["row_id"], update["email"], dumps(outcome.retry_body),
                update["origin_at"], now,
            ),
        )
        ctx.staging.execute(
            "UPDATE rows SET reason = 'compliance', reason_detail = ? WHERE id = ?",
            (_error_text(error), update["row_id"]),
        )
        return
    failure = outcome.failure
    if row is None or failure is None:
        return
    if failure.blocks_resubscribe:
        civi_at = ctx.staging.scalar(
            "SELECT changed_at FROM group_status WHERE contact_id = ? AND group_id = ?",
            (row["contact_id"], ctx.group_id),
        )
        ctx.staging.execute(
            "UPDATE rows SET refusal_reason = ?, refusal_email = ?, refusal_civi_at = ? "
            "WHERE id = ?",
            (failure.reason.value, update["email"], civi_at, row["id"]),
        )
    ctx.staging.execute("UPDATE rows SET mc_expected = NULL WHERE id = ?", (row["id"],))
    _close_row_if_done(ctx, row["id"], "fail", failure.reason.value, _error_text(error))


def _error_text(error: ApiError | None) -> str | None:
    if error is None:
        return None
    return " — ".join(p for p in (error.title, error.detail) if p) or str(error)


def _store_member_response(
    ctx: RunContext,
    row: sqlite3.Row,
    update: sqlite3.Row,
    body: dict[str, Any],
    response: dict[str, Any],
) -> None:
    """After a successful write, staging holds what Mailchimp now has. Fields we changed keep
    the time of the choice they carried (`origin_at`), not the time of our write."""
    origin = update["origin_at"] or response.get("last_changed")
    status = response.get("status", row["mc_status"])
    status_at = origin if status != row["mc_status"] else row["mc_status_at"]
    interests = json.loads(row["mc_interests"])
    interests_at = json.loads(row["mc_interests_at"])
    returned = response.get("interests") or {}
    for interest_id in (body.get("interests") or {}):
        if interest_id in returned:
            if interests.get(interest_id) != bool(returned[interest_id]):
                interests_at[interest_id] = origin
            interests[interest_id] = bool(returned[interest_id])
    pushed = json.loads(row["pushed_merge"])
    pushed.update(body.get("merge_fields") or {})
    values = (
        response.get("id") or row["mc_hash"],
        row["mc_email"] or response.get("email_address"),
        status,
        iso(parse_iso(response.get("last_changed"))) or row["mc_last_changed"],
        status_at,
        dumps(interests),
        dumps(interests_at),
        dumps(pushed),
        row["id"],
    )
    try:
        ctx.staging.execute(
            "UPDATE rows SET mc_hash = ?, mc_email = ?, mc_status = ?, mc_last_changed = ?, "
            "mc_status_at = ?, mc_interests = ?, mc_interests_at = ?, pushed_merge = ?, "
            "mc_expected = NULL WHERE id = ?",
            values,
        )
    except sqlite3.IntegrityError:
        # The member was fetched into its own row meanwhile: that row carries on.
        ctx.staging.execute("DELETE FROM rows WHERE id = ?", (row["id"],))
        return
    _close_row_if_done(ctx, row["id"], "ok", None, None)


def _close_row_if_done(
    ctx: RunContext, row_id: int, sync_status: str, reason: str | None, detail: str | None
) -> None:
    """A row is settled once it has no open updates (two in different batches: wait for both)."""
    ctx.staging.execute(
        "UPDATE rows SET sync_status = ?, reason = ?, reason_detail = ? WHERE id = ? AND NOT "
        "EXISTS (SELECT 1 FROM updates WHERE row_id = ? AND state IN "
        "('queued', 'submitting', 'submitted'))",
        (sync_status, reason, detail, row_id, row_id),
    )


def abort_unsubmitted(ctx: RunContext, row_ids: Sequence[int], why: str) -> None:
    for chunk in chunks(list(row_ids), 500):
        placeholders = ",".join("?" * len(chunk))
        ctx.staging.execute(
            f"UPDATE updates SET state = 'aborted', completed_at = ?, error_detail = ? "
            f"WHERE state = 'queued' AND row_id IN ({placeholders})",
            (iso(utc_now()), why, *chunk),
        )

"""The staged Mailchimp member updates: read the queue, and record each write's outcome on
its update and its row (seed-behaviour §7, §5.4), whether it came directly or from a batch.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from mcsync.errors import ApiError
from mcsync.rules import write_results as wr
from mcsync.rules.reasons import Reason, is_retried, retry_delay
from mcsync.stages.context import RunContext
from mcsync.store.database import dumps, iso, parse_iso, utc_now


def queued_updates(ctx: RunContext, limit: int) -> list[sqlite3.Row]:
    """The audience's next queued updates, oldest first (of `ctx.only_rows`, when set)."""
    if ctx.only_rows is not None:
        return ctx.staging.queued_updates_of_rows(ctx.list_id, sorted(ctx.only_rows), limit)
    return ctx.staging.query(
        "SELECT * FROM updates WHERE list_id = ? AND state = 'queued' ORDER BY id LIMIT ?",
        (ctx.list_id, limit),
    )


def fail_update(ctx: RunContext, update: sqlite3.Row, title: str, detail: str) -> None:
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
        ctx.count_mailchimp_write(body)
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
                ctx.list_id,
                update["row_id"],
                update["email"],
                dumps(outcome.retry_body),
                update["origin_at"],
                now,
            ),
        )
        ctx.staging.execute(
            "UPDATE rows SET reason = 'compliance', reason_detail = ? WHERE id = ?",
            (_error_text(error), update["row_id"]),
        )
        return
    failure = outcome.failure
    ctx.write_failures += 1
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
    schedule_retry(ctx, row["id"], failure.reason, status_code)


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
    for interest_id in body.get("interests") or {}:
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
        status,  # a status mcsync changed has its choice's exact time
        row["id"],
    )
    try:
        ctx.staging.execute(
            "UPDATE rows SET mc_hash = ?, mc_email = ?, mc_status = ?, mc_last_changed = ?, "
            "mc_status_at = ?, mc_interests = ?, mc_interests_at = ?, pushed_merge = ?, "
            "mc_status_after = CASE WHEN mc_status IS ? THEN mc_status_after END, "
            "mc_expected = NULL WHERE id = ?",
            values,
        )
    except sqlite3.IntegrityError:
        # The member was fetched into its own row meanwhile: that row carries on.
        ctx.staging.execute("DELETE FROM rows WHERE id = ?", (row["id"],))
        return
    ctx.staging.clear_retry([row["id"]])
    if row["reason"] in LASTING_REASONS:
        # Written as decided, but the row still cannot fully sync (a privacy flag keeps an
        # Added contact unsubscribed at Mailchimp): it stays listed as a failure.
        _close_row_if_done(ctx, row["id"], "fail", row["reason"], row["reason_detail"])
        return
    _close_row_if_done(ctx, row["id"], "ok", None, None)


def schedule_retry(ctx: RunContext, row_id: int, reason: Reason, status: int | None) -> None:
    """A row that failed for a passing reason (``reasons.is_retried``) is tried again by a
    normal run, the first time by the next one, then after a backoff counted from the start
    of the run that failed (``reasons.retry_delay``); one that failed for a lasting reason
    waits for its data to change or for a full run."""
    if ctx.staging.scalar("SELECT sync_status FROM rows WHERE id = ?", (row_id,)) != "fail":
        return  # another update of the row is still open; its outcome closes the row
    if not is_retried(reason, status):
        ctx.staging.schedule_retry(row_id, 0, None)
        return
    attempts = ctx.staging.retry_attempts(row_id) + 1
    started = parse_iso(ctx.staging.state(ctx.list_id).get("run_started")) or utc_now()
    ctx.staging.schedule_retry(row_id, attempts, iso(started + retry_delay(attempts)))


# Reasons a decision gives while still writing something, which outlast the write.
LASTING_REASONS = frozenset({"privacy_flags"})


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

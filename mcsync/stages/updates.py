"""The outcome of each Mailchimp member write, recorded on its update and its row
(seed-behaviour §7, §5.4), whether it came directly or from a batch.
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
from mcsync.store.states import RowState


def queued_updates(ctx: RunContext, limit: int) -> list[sqlite3.Row]:
    """The audience's next queued updates, oldest first (of `ctx.only_rows`, when set)."""
    if ctx.only_rows is not None:
        return ctx.staging.queued_updates_of_rows(ctx.list_id, sorted(ctx.only_rows), limit)
    return ctx.staging.queued_updates(ctx.list_id, limit)


def fail_update(ctx: RunContext, update: sqlite3.Row, title: str, detail: str) -> None:
    """The update failed with its outcome unknown (no result, an answer lost): it is never
    sent again, and its row is decided again from Mailchimp's state once nothing else of
    it is open."""
    ctx.staging.update_failed(update["id"], iso(utc_now()), title, detail)
    ctx.staging.redecide_row_when_settled(update["row_id"])


def apply_result(
    ctx: RunContext,
    update: sqlite3.Row,
    status_code: int,
    response: dict[str, Any] | None,
    error: ApiError | None,
) -> None:
    """Record one member write's outcome on its update and row (seed-behaviour §7, §5.4)."""
    body = json.loads(update["body"])
    found = ctx.staging.rows_by_id([update["row_id"]])
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
        ctx.staging.update_done(update["id"], now)
        ctx.count_mailchimp_write(body)
        if row is not None:
            _store_member_response(ctx, row, update, body, response or {})
            if outcome.recheck:
                ctx.staging.redecide_row(row["id"])
        return
    if outcome.kind == "gone":
        ctx.staging.update_done(update["id"], now)
        if row is not None:
            ctx.staging.member_not_found(row["id"])
        ctx.log(
            f"{update['email']}: no longer a member at Mailchimp (deleted or moved since "
            "mcsync read it); not unsubscribed, and decided again without it"
        )
        return
    ctx.staging.update_failed(
        update["id"], now, error.title if error else None, error.detail if error else None
    )
    if outcome.kind == "retry" and outcome.retry_body is not None:
        ctx.staging.queue_update(
            ctx.list_id,
            update["row_id"],
            update["email"],
            dumps(outcome.retry_body),
            update["origin_at"],
            now,
        )
        ctx.staging.note_retry_reason(update["row_id"], Reason.COMPLIANCE, _error_text(error))
        return
    failure = outcome.failure
    ctx.write_failures += 1
    if row is None or failure is None:
        return
    if failure.blocks_resubscribe:
        ctx.staging.record_refusal(
            row["id"], row["contact_id"], ctx.group_id, failure.reason.value, update["email"]
        )
    ctx.staging.forget_expected(row["id"])
    ctx.staging.close_row_when_settled(
        row["id"], RowState.FAIL, failure.reason.value, _error_text(error)
    )
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
    kept = ctx.staging.record_written_member(
        row["id"],
        mc_hash=response.get("id") or row["mc_hash"],
        mc_email=row["mc_email"] or response.get("email_address"),
        mc_status=status,
        mc_last_changed=iso(parse_iso(response.get("last_changed"))) or row["mc_last_changed"],
        mc_status_at=status_at,
        mc_interests=dumps(interests),
        mc_interests_at=dumps(interests_at),
        pushed_merge=dumps(pushed),
        mc_unique_id=response.get("unique_email_id"),
    )
    if not kept:
        return  # the member was fetched into its own row meanwhile: that row carries on
    ctx.staging.clear_retry([row["id"]])
    if row["reason"] in LASTING_REASONS:
        # Written as decided, but the row still cannot fully sync (a privacy flag keeps an
        # Added contact unsubscribed at Mailchimp): it stays listed as a failure.
        ctx.staging.close_row_when_settled(
            row["id"], RowState.FAIL, row["reason"], row["reason_detail"]
        )
        return
    ctx.staging.close_row_when_settled(row["id"], RowState.OK, None, None)


def schedule_retry(ctx: RunContext, row_id: int, reason: Reason, status: int | None) -> None:
    """A row that failed for a passing reason (``reasons.is_retried``) is tried again by a
    normal run, the first time by the next one, then after a backoff counted from the start
    of the run that failed (``reasons.retry_delay``); one that failed for a lasting reason
    waits for its data to change or for a full run."""
    if ctx.staging.row_status(row_id) != RowState.FAIL:
        return  # another update of the row is still open; its outcome closes the row
    if not is_retried(reason, status):
        ctx.staging.schedule_retry(row_id, 0, None)
        return
    attempts = ctx.staging.retry_attempts(row_id) + 1
    started = parse_iso(ctx.staging.state(ctx.list_id).get("run_started")) or utc_now()
    ctx.staging.schedule_retry(row_id, attempts, iso(started + retry_delay(attempts)))


# Reasons a decision gives while still writing something, which outlast the write.
LASTING_REASONS = frozenset({"privacy_flags"})

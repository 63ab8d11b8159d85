"""What `status` and `failures` report, computed from the staging DB alone (no API calls).

`status --json` is a stable schema for monitoring (see README "Status figures"): add keys,
never rename or remove them.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from mcsync.config.models import AudienceConfig
from mcsync.rules.explanations import explain
from mcsync.rules.reasons import RETRIED_REASONS
from mcsync.stages.registry import STAGE_NAMES
from mcsync.store.database import Staging, lease_holder_gone, parse_iso, utc_now

SILENT_LOG_LIMIT = timedelta(minutes=30)


def audience_status(staging: Staging, audience: AudienceConfig) -> dict[str, Any]:
    """The balance figures and run state of one audience (seed-behaviour §9.1 and more).

    The keys are the `status --json` schema (mcsync/ops/status_schema.json): add, never rename."""
    list_id, group_id = audience.list_id, audience.group_id
    state = staging.state(list_id)
    counts = _counts(staging, list_id, group_id)
    stage = state.get("stage") or "idle"
    last_sync = state.get("last_sync")
    open_updates = counts["updates_queued"] + counts["updates_submitted"]
    lease_owner = state.get("lease_owner")
    lease_live = (
        bool(lease_owner)
        and (state.get("lease_expires") or 0) >= time.time()
        and not lease_holder_gone(lease_owner)
    )
    log = staging.recent_log(list_id, 10)
    return {
        "list_id": list_id,
        "group_id": group_id,
        "name": audience.name,
        "account": audience.account,
        "in_sync": bool(
            stage == "idle"
            and open_updates == 0
            and counts["to_add"] == 0
            and counts["to_remove"] == 0
            and last_sync
        ),
        "stage": stage,
        "running": lease_live,
        "possible_crash": _possible_crash(stage, lease_owner, lease_live, log),
        "problem": _problem(staging, list_id, last_sync),
        "last_sync": last_sync,
        "last_sync_seconds": state.get("last_sync_seconds"),
        "run_started": state.get("run_started") if stage != "idle" else None,
        "progress": _progress(state, stage, counts),
        "counts": counts,
        "log": log,
    }


def _progress(state: dict[str, Any], stage: str, counts: dict[str, int]) -> dict[str, Any]:
    """Where a run under way has got to: stage n of N, members fetched, rows left."""

    index = STAGE_NAMES.index(stage) + 1 if stage in STAGE_NAMES else 0
    return {
        "stage_number": index,
        "stage_count": len(STAGE_NAMES),
        "mailchimp_fetched": int(state.get("mc_offset") or 0),
        "rows_to_reconcile": counts["remaining"],
        "cursor": int(state.get("cursor") or 0),
    }


def _problem(staging: Staging, list_id: str, last_sync: str | None) -> str | None:
    """The newest error logged since the last complete sync (a brake, an API failure)."""
    row = staging.query(
        "SELECT message FROM log WHERE list_id = ? AND level = 'error' AND at >= ? "
        "ORDER BY id DESC LIMIT 1",
        (list_id, last_sync or ""),
    )
    return str(row[0]["message"]) if row else None


def _counts(staging: Staging, list_id: str, group_id: int) -> dict[str, int]:
    row = staging.query(
        """
        SELECT
          COALESCE(SUM(mc_sub), 0) AS subscribed_at_mailchimp,
          COALESCE(SUM(sync_status IN ('live', 'ok') AND added AND NOT mc_sub), 0) AS to_add,
          COALESCE(SUM(sync_status IN ('live', 'ok') AND NOT added AND mc_sub), 0) AS to_remove,
          COALESCE(SUM(sync_status = 'fail' AND added AND NOT mc_sub), 0) AS cannot_subscribe,
          COALESCE(SUM(sync_status = 'fail' AND NOT (added AND NOT mc_sub)), 0) AS other_failures,
          COALESCE(SUM(sync_status = 'todo'), 0) AS remaining
        FROM (
          SELECT r.sync_status,
                 COALESCE(r.mc_status IN ('subscribed', 'pending'), 0) AS mc_sub,
                 COALESCE(g.status = 'Added', 0) AS added
          FROM rows r
          LEFT JOIN group_status g ON g.contact_id = r.contact_id AND g.group_id = ?
          WHERE r.list_id = ?
        )
        """,
        (group_id, list_id),
    )[0]
    counts = {key: int(row[key]) for key in row.keys()}  # noqa: SIM118 (a Row iterates values)
    counts["added_in_civicrm"] = int(
        staging.scalar(
            "SELECT COUNT(*) FROM group_status g JOIN contacts c ON c.contact_id = g.contact_id "
            "WHERE g.group_id = ? AND g.status = 'Added' AND c.is_deleted = 0 AND c.gone = 0",
            (group_id,),
        )
        or 0
    )
    updates: dict[str, int] = dict(
        (r[0], r[1])
        for r in staging.query(
            "SELECT state, COUNT(*) FROM updates WHERE list_id = ? GROUP BY state", (list_id,)
        )
    )
    counts["updates_queued"] = int(updates.get("queued", 0))
    counts["updates_submitted"] = int(updates.get("submitting", 0) + updates.get("submitted", 0))
    counts["batches_in_flight"] = int(
        staging.scalar(
            "SELECT COUNT(*) FROM batches WHERE list_id = ? "
            "AND status NOT IN ('processed', 'aborted')",
            (list_id,),
        )
        or 0
    )
    return counts


def _possible_crash(
    stage: str, lease_owner: str | None, lease_live: bool, log: list[dict[str, Any]]
) -> str | None:
    """Seed-behaviour §9.1 "Possible Crash", plus an expired lease (a run killed mid-way)."""
    if lease_owner and not lease_live:
        return (
            "The run working on this audience stopped renewing its lease: it was killed or "
            "crashed. The next run continues from where it stopped."
        )
    if stage == "idle" or lease_live:
        return None
    if not log:
        return f"A run is part-way through ({stage}) but has written no log lines."
    newest = parse_iso(log[-1]["at"])
    if newest and utc_now() - newest > SILENT_LOG_LIMIT:
        minutes = int((utc_now() - newest).total_seconds() // 60)
        return (
            f"A run is part-way through ({stage}) and nothing has been logged for {minutes} "
            f"minutes: is cron still running mcsync?"
        )
    return None


def failures(
    staging: Staging, audience: AudienceConfig, reason: str | None = None
) -> list[dict[str, Any]]:
    """Every row that cannot sync, with a plain reason and what to do."""
    params: list[Any] = [audience.list_id]
    where = "r.list_id = ? AND (r.sync_status = 'fail' OR r.reason = 'compliance')"
    if reason:
        where += " AND r.reason = ?"
        params.append(reason)
    rows = staging.query(
        f"SELECT r.id, COALESCE(r.mc_email, (SELECT e.email FROM emails e WHERE "
        f"e.contact_id = r.contact_id ORDER BY e.is_primary DESC, e.email_id LIMIT 1)) AS email, "
        f"r.contact_id, r.mc_status, r.reason, r.reason_detail, r.sync_status, "
        f"r.retry_attempts, r.retry_at "
        f"FROM rows r WHERE {where} ORDER BY r.reason, r.id",
        params,
    )
    result = []
    for row in rows:
        plain, advice = explain(row["reason"])
        result.append(
            {
                "list_id": audience.list_id,
                "group_id": audience.group_id,
                "row_id": row["id"],
                "email": row["email"],
                "contact_id": row["contact_id"],
                "mailchimp_status": row["mc_status"],
                "reason": row["reason"] or "unknown",
                "explanation": plain,
                "advice": advice,
                "detail": row["reason_detail"],
                "sync_status": row["sync_status"],
                "retry_attempts": row["retry_attempts"],
                "next_try": _next_try(row),
            }
        )
    return result


def _next_try(row: Any) -> str | None:
    """When a normal run next tries a row that failed for a passing reason: the first run
    that starts from this time. None: it waits for its data to change or a full run."""
    if row["sync_status"] != "fail" or row["reason"] not in RETRIED_REASONS:
        return None
    return str(row["retry_at"]) if row["retry_at"] else None

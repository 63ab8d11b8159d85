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
from mcsync.store.states import RowState

SILENT_LOG_LIMIT = timedelta(minutes=30)


def audience_status(staging: Staging, audience: AudienceConfig) -> dict[str, Any]:
    """The balance figures and run state of one audience (seed-behaviour §9.1 and more).

    The keys are the `status --json` schema (mcsync/ops/status_schema.json): add, never rename."""
    list_id, group_id = audience.list_id, audience.group_id
    state = staging.state(list_id)
    counts = staging.balance_counts(list_id, group_id)
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
    return staging.newest_error_since(list_id, last_sync or "")


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
    result = []
    for row in staging.failed_rows(audience.list_id, reason):
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
    if row["sync_status"] != RowState.FAIL or row["reason"] not in RETRIED_REASONS:
        return None
    return str(row["retry_at"]) if row["retry_at"] else None

"""What `status` and `failures` report, computed from the staging DB alone (no API calls).

`status --json` is a stable schema for monitoring (see README "Status figures"): add keys,
never rename or remove them.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from mcsync.config import AudienceConfig
from mcsync.staging import Staging, parse_iso, utc_now

SILENT_LOG_LIMIT = timedelta(minutes=30)

# Reason code → (plain reason, what to do about it).
REASONS: dict[str, tuple[str, str]] = {
    "cleaned": (
        "Mailchimp cleaned this address (it bounced); Mailchimp will not let it be subscribed "
        "again",
        "Ask the person for a working address and change it in CiviCRM.",
    ),
    "compliance": (
        "Mailchimp refused to re-subscribe a person who had unsubscribed (compliance state); "
        "a confirmation email was requested instead",
        "Nothing: they are subscribed once they click the link in Mailchimp's email.",
    ),
    "on_hold": (
        "The email is on hold in CiviCRM (bounced or opted out), so it is not used to subscribe",
        "Check the address in CiviCRM and take it off hold if it is good.",
    ),
    "several_emails": (
        "This contact has several Mailchimp addresses and another one is still subscribed, so "
        "the contact stays in the group",
        "Usually fine to ignore; merge the Mailchimp members if they are the same person.",
    ),
    "no_usable_email": (
        "The contact is in the group but has no email that can be used (none, or all on hold)",
        "Add an email to the contact, or take one off hold.",
    ),
    "invalid_email": (
        "Mailchimp rejected the address as invalid",
        "Correct the email address in CiviCRM.",
    ),
    "privacy_flags": (
        "The contact is deceased, 'do not email' or opted out, so mcsync does not subscribe them",
        "Intentional; set respect_privacy_flags = false to change it.",
    ),
    "mailchimp_error": (
        "Mailchimp refused the update",
        "Read the error; 'Member Exists' usually means two contacts share the email: merge them.",
    ),
}


def explain(reason: str | None) -> tuple[str, str]:
    if reason and reason in REASONS:
        return REASONS[reason]
    return (reason or "unknown", "See the detail; run with -v for more.")


def audience_status(staging: Staging, audience: AudienceConfig) -> dict[str, Any]:
    """The balance figures and run state of one audience (seed-behaviour §9.1 and more)."""
    list_id, group_id = audience.list_id, audience.group_id
    state = staging.state(list_id)
    counts = _counts(staging, list_id, group_id)
    stage = state.get("stage", "idle") if state else "idle"
    last_sync = state.get("last_sync") if state else None
    open_updates = counts["updates_queued"] + counts["updates_submitted"]
    lease_owner = state.get("lease_owner") if state else None
    lease_live = bool(lease_owner) and (state.get("lease_expires") or 0) >= time.time()
    log = staging.recent_log(list_id, 10)
    crash = _possible_crash(stage, lease_owner, lease_live, log)
    return {
        "list_id": list_id,
        "group_id": group_id,
        "name": audience.label if hasattr(audience, "label") else list_id,
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
        "possible_crash": crash,
        "last_sync": last_sync,
        "last_sync_seconds": state.get("last_sync_seconds") if state else None,
        "run_started": state.get("run_started") if state else None,
        "progress": {
            "mailchimp_offset": state.get("mc_offset", 0) if state else 0,
            "cursor": state.get("cursor", 0) if state else 0,
        },
        "counts": counts,
        "log": log,
    }


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
    counts = {key: int(row[key]) for key in row.keys()}
    counts["added_in_civicrm"] = int(
        staging.scalar(
            "SELECT COUNT(*) FROM group_status g JOIN contacts c ON c.contact_id = g.contact_id "
            "WHERE g.group_id = ? AND g.status = 'Added' AND c.is_deleted = 0 AND c.gone = 0",
            (group_id,),
        )
        or 0
    )
    updates = dict(
        staging.query(
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
    if lease_owner and not lease_live:
        return "The run holding this audience stopped renewing its lease (killed or crashed)."
    if stage == "idle" or lease_live:
        return None
    if not log:
        return "A run is part-way through but there are no log lines."
    newest = parse_iso(log[-1]["at"])
    if newest and utc_now() - newest > SILENT_LOG_LIMIT:
        minutes = int((utc_now() - newest).total_seconds() // 60)
        return f"A run is part-way through and the log has been silent for {minutes} minutes."
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
        f"SELECT r.id, r.mc_email, r.contact_id, r.mc_status, r.reason, r.reason_detail, "
        f"r.sync_status FROM rows r WHERE {where} ORDER BY r.id",
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
                "email": row["mc_email"],
                "contact_id": row["contact_id"],
                "mailchimp_status": row["mc_status"],
                "reason": row["reason"] or "unknown",
                "explanation": plain,
                "advice": advice,
                "detail": row["reason_detail"],
            }
        )
    return result


def age(moment: str | None) -> str:
    when = parse_iso(moment)
    if when is None:
        return "never"
    seconds = (utc_now() - when).total_seconds()
    if seconds < 90:
        return f"{int(seconds)}s ago"
    if seconds < 5400:
        return f"{int(seconds // 60)} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago ({datetime.fromisoformat(moment or '').date()})"

"""Dry-run previews: the plan a run left in staging (changes per contact and direction, with
totals), and undoing that planning so the next real run decides the same again.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from mcsync.config.models import Config
from mcsync.errors import MassChangeBrake, McsyncError
from mcsync.runner.engine import selected_audiences
from mcsync.stages.registry import WRITE_STAGES
from mcsync.store.database import Staging


def audience_plan(staging: Staging, list_id: str, group_id: int) -> dict[str, Any]:
    changes: list[dict[str, Any]] = []
    for write in staging.query(
        "SELECT w.*, COALESCE(w.email, (SELECT mc_email FROM rows r WHERE r.contact_id = "
        "w.contact_id AND r.list_id = w.list_id AND r.mc_email IS NOT NULL LIMIT 1), "
        "(SELECT e.email FROM emails e WHERE e.contact_id = w.contact_id "
        "ORDER BY e.is_primary DESC, e.email_id LIMIT 1)) AS contact_email "
        "FROM civi_writes w WHERE w.list_id = ? ORDER BY w.id",
        (list_id,),
    ):
        if write["kind"] == "group":
            verb = "Add to" if write["status"] == "Added" else "Remove from"
            change = f"{verb} group {write['group_id']}"
        elif write["kind"] == "email":  # an address changed at Mailchimp, followed
            change = f"add email {write['email']}"
        else:
            change = "put email on hold"
        changes.append(
            {
                "direction": "CiviCRM",
                "contact_id": write["contact_id"],
                "email": write["contact_email"],
                "change": change,
            }
        )
    for update in staging.query(
        "SELECT u.*, r.contact_id FROM updates u JOIN rows r ON r.id = u.row_id "
        "WHERE u.list_id = ? AND u.state = 'queued' ORDER BY u.id",
        (list_id,),
    ):
        body = json.loads(update["body"])
        parts = []
        if body.get("status"):
            parts.append(body["status"])
        if body.get("interests"):
            parts.append(
                "interests "
                + ", ".join(
                    f"{k}={'on' if v else 'off'}" for k, v in sorted(body["interests"].items())
                )
            )
        if body.get("merge_fields"):
            parts.append("merge fields " + ", ".join(sorted(body["merge_fields"])))
        changes.append(
            {
                "direction": "Mailchimp",
                "contact_id": update["contact_id"],
                "email": update["email"],
                "change": "; ".join(parts) or "update",
            }
        )
    for row in staging.query(
        "SELECT mc_email FROM rows WHERE list_id = ? AND contact_id IS NULL "
        "AND mc_status IN ('subscribed', 'pending') "
        # held back by a trashed owner's later removal or privacy flag (match.create_contacts)
        "AND trashed_removal_at IS NULL AND trashed_flag_by IS NULL ORDER BY id",
        (list_id,),
    ):
        changes.append(
            {
                "direction": "CiviCRM",
                "contact_id": None,
                "email": row["mc_email"],
                "change": "create contact and Add to group",
            }
        )
    totals: dict[str, int] = defaultdict(int)
    for planned in changes:
        totals[_total_key(planned)] += 1
    return {"list_id": list_id, "group_id": group_id, "totals": dict(totals), "changes": changes}


def _total_key(change: dict[str, Any]) -> str:
    text = change["change"]
    if change["direction"] == "CiviCRM":
        if text.startswith("create"):
            return "contacts_to_create"
        if text.startswith("Add"):
            return "civicrm_adds"
        if text.startswith("Remove"):
            return "civicrm_removals"
        if text.startswith("add email"):
            return "civicrm_emails"
        return "civicrm_holds"
    if text.startswith("subscribed") or text.startswith("pending"):
        return "mailchimp_subscribes"
    if text.startswith("unsubscribed"):
        return "mailchimp_unsubscribes"
    return "mailchimp_updates"


def planned(result: Any) -> bool:
    """A dry run left a complete plan in staging: it stopped before the first write stage,
    or the brake tripped. (One stopped earlier by its budget keeps its progress instead.)"""

    if isinstance(result.error, MassChangeBrake):
        return True
    return result.outcome is not None and result.outcome.stage in WRITE_STAGES


def collect_plan(config: Config, results: Sequence[Any]) -> dict[str, Any]:
    """The dry run's plan per audience: changes per contact and direction, totals, and the
    brake's message when the real run would stop."""
    staging = Staging(config.state_db)
    try:
        audiences = []
        for result in results:
            if not planned(result):
                continue
            plan = audience_plan(staging, result.audience.list_id, result.audience.group_id)
            plan["brake"] = str(result.error) if result.error is not None else None
            audiences.append(plan)
        return {"audiences": audiences}
    finally:
        staging.close()


def ensure_no_writes_pending(config: Config, group_id: int | None) -> None:
    """A dry run continues the audience's run up to the brake, so it must not start from a
    stage that writes: that run has to finish (or be aborted) first."""

    staging = Staging(config.state_db)
    try:
        busy = [
            f"audience {a.list_id} (group {a.group_id}) is part-way through writing "
            f"({staging.state(a.list_id).get('stage')}); let it finish with "
            f"'mcsync fetch-and-reconcile --group-id {a.group_id}', or drop it with "
            f"'mcsync abort --group-id {a.group_id}', before a dry run"
            for a in selected_audiences(config, group_id)
            if staging.state(a.list_id).get("stage") in WRITE_STAGES
        ]
    finally:
        staging.close()
    if busy:
        raise McsyncError("; ".join(busy))


def discard_plans(config: Config, results: Sequence[Any]) -> None:
    """Undo what planning queued, so a dry run leaves nothing to be pushed later; the next
    real run decides again from the contact stage."""
    staging = Staging(config.state_db)
    try:
        for result in results:
            if planned(result):
                discard_plan(staging, result.audience.list_id)
    finally:
        staging.close()


def discard_plan(staging: Staging, list_id: str) -> None:
    """Drop the run's decisions; queued updates from earlier runs (a compliance retry queued
    while collecting batches) are older than this run and stay."""
    state = staging.state(list_id)
    started = state.get("run_started") or ""
    with staging.atomic():
        staging.drop_plan(list_id)  # the same rows `abort` sends back (first: it reads updates)
        staging.execute(
            "DELETE FROM updates WHERE list_id = ? AND state = 'queued' AND created_at >= ?",
            (list_id, started),
        )
        if state and state["stage"] not in ("idle",):
            staging.set_state(list_id, stage="create_contacts", cursor=0)

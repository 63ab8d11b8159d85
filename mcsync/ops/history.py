"""What `history` shows and `status`'s trend line says, from the run history in the staging DB.

`history --json` is a stable shape for scripts: add keys, never rename or remove them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from mcsync.config.models import AudienceConfig
from mcsync.store.database import Staging, iso, utc_now
from mcsync.store.history import CIVICRM_CHANGES, MAILCHIMP_CHANGES

UNFINISHED = "unfinished"  # a run with no recorded end: killed, or still running
TREND_WINDOW = timedelta(hours=24)


def run_items(
    staging: Staging, audiences: list[AudienceConfig], limit: int | None = None
) -> list[dict[str, Any]]:
    """The recorded runs of these audiences, newest first, as `history --json` shows them."""
    names = {a.list_id: a.name for a in audiences}
    rows = staging.run_history([a.list_id for a in audiences], limit)
    return [_item(row, names.get(row["list_id"])) for row in rows]


def _item(row: dict[str, Any], name: str | None) -> dict[str, Any]:
    mailchimp = {kind.value.removeprefix("mc_"): int(row[kind.value]) for kind in MAILCHIMP_CHANGES}
    civicrm = {kind.value.removeprefix("civi_"): int(row[kind.value]) for kind in CIVICRM_CHANGES}
    return {
        "list_id": row["list_id"],
        "group_id": row["group_id"],
        "name": name,
        "started": row["started"],
        "ended": row["ended"],
        "seconds": row["seconds"],
        "outcome": row["outcome"] or UNFINISHED,
        "stage": row["stage"],
        "error": row["error"],
        "changes_to_mailchimp": sum(mailchimp.values()),
        "changes_to_civicrm": sum(civicrm.values()),
        "changes": {"mailchimp": mailchimp, "civicrm": civicrm},
        "write_failures": row["write_failures"],
        "failing_rows": row["failing_rows"],
        "requests": {"mailchimp": row["mailchimp_requests"], "civicrm": row["civicrm_requests"]},
    }


def trend(staging: Staging, audiences: list[AudienceConfig]) -> dict[str, int]:
    """Runs of the last 24 hours: how many, their changes, failures and unfinished runs."""
    since = iso(utc_now() - TREND_WINDOW) or ""
    return staging.history_trend(since, [a.list_id for a in audiences])


def trend_line(figures: dict[str, int]) -> str:
    """The trend in one line, e.g. "last 24 h: 96 runs, 412 changes, 0 failures"."""
    line = (
        f"last 24 h: {_count(figures['runs'], 'run')}, {_count(figures['changes'], 'change')}, "
        f"{_count(figures['failures'], 'failure')}"
    )
    if figures["unfinished"]:
        line += f", {figures['unfinished']} unfinished (killed or running)"
    return line


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"

"""The run history: one row per run of an audience (each invocation that worked on it), kept
for `history_days`, so `history`, `status` and `report --html` can say how runs went over time.

A row is written when a run starts (with no end) and completed when it ends, so a run that was
killed keeps its row with no end: it shows as unfinished. Old rows are pruned as new runs are
recorded, so the table stays small without a separate clean-up job.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from mcsync.store.base import StoreBase


class RunEnding(StrEnum):
    """How a run ended (`run_history.outcome`); NULL there means it never said: killed, or
    still running."""

    COMPLETE = "complete"
    """Every stage ran: both sides are reconciled."""
    BUDGET = "budget"
    """The time budget (--max-time) ran out; the next run continues from where it stopped."""
    BUSY = "busy"
    """Another run held the audience; this one did nothing."""
    BRAKE = "brake"
    """The mass-change brake stopped it before writing anything."""
    FAILURE = "failure"
    """An error stopped it (an API refusal, a configuration problem, an interruption)."""


class Change(StrEnum):
    """The kinds of change a run makes, each a column of `run_history` (a count)."""

    MC_SUBSCRIBES = "mc_subscribes"
    """Members subscribed (or re-subscribed, or sent a confirmation) at Mailchimp."""
    MC_UNSUBSCRIBES = "mc_unsubscribes"
    """Members unsubscribed at Mailchimp."""
    MC_INTERESTS = "mc_interest_changes"
    """Members whose interests (groups) were changed at Mailchimp."""
    MC_MERGE_FIELDS = "mc_merge_field_updates"
    """Members whose merge fields (names and fed data) were updated at Mailchimp."""
    MC_TAGS = "mc_tag_updates"
    """Members whose tags were updated at Mailchimp."""
    CIVI_ADDS = "civi_adds"
    """Contacts Added to the audience's CiviCRM group."""
    CIVI_REMOVES = "civi_removes"
    """Contacts Removed from the audience's CiviCRM group."""
    CIVI_INTERESTS = "civi_interest_changes"
    """Contacts Added to or Removed from a CiviCRM group mapped to an interest."""
    CIVI_CONTACTS = "civi_contacts_created"
    """CiviCRM contacts created for new subscribers."""
    CIVI_HOLDS = "civi_holds"
    """CiviCRM email records put on hold (bounced at Mailchimp)."""
    CIVI_EMAILS = "civi_emails_added"
    """Email addresses added to CiviCRM contacts (changed at Mailchimp)."""


MAILCHIMP_CHANGES = tuple(c for c in Change if c.value.startswith("mc_"))
CIVICRM_CHANGES = tuple(c for c in Change if c.value.startswith("civi_"))

# Columns a caller may set when a run ends (besides the change counts).
_END_COLUMNS = (
    "ended",
    "seconds",
    "outcome",
    "stage",
    "error",
    "write_failures",
    "failing_rows",
    "mailchimp_requests",
    "civicrm_requests",
)


class HistoryStore(StoreBase):
    """The `run_history` table: recording runs, pruning old ones, and reading them back."""

    def record_run_start(self, list_id: str, group_id: int, started: str, stage: str) -> int:
        """A new history row for a run that starts now, at ``stage``, with no end yet; its id.

        Runs of the audience that never recorded an end (killed) stopped where this one
        starts, since every stage saves its progress: that is the stage they reached. (A run
        still under way, which makes this one busy, records its own stage when it ends.)"""
        with self.atomic():
            self.execute(
                "UPDATE run_history SET stage = ? WHERE list_id = ? AND outcome IS NULL",
                (stage, list_id),
            )
            cursor = self.execute(
                "INSERT INTO run_history (list_id, group_id, started, stage) VALUES (?, ?, ?, ?)",
                (list_id, group_id, started, stage),
            )
        return int(cursor.lastrowid or 0)

    def record_run_end(
        self,
        history_id: int,
        *,
        changes: Mapping[str, int],
        keep_days: int,
        **values: Any,
    ) -> None:
        """Complete a run's row (its end, outcome, counts), and prune rows older than
        ``keep_days`` before its start, in one transaction."""
        unknown = set(values) - set(_END_COLUMNS)
        if unknown:
            raise ValueError(f"not a run_history column: {sorted(unknown)}")
        counts = {kind.value: int(changes.get(kind.value, 0)) for kind in Change}
        columns = {**values, **counts}
        assignments = ", ".join(f"{name} = ?" for name in columns)
        with self.atomic():
            self.execute(
                f"UPDATE run_history SET {assignments} WHERE id = ?",
                (*columns.values(), history_id),
            )
            started = self.scalar("SELECT started FROM run_history WHERE id = ?", (history_id,))
            if started:
                self.prune_history(started, keep_days)

    def prune_history(self, now: str, keep_days: int) -> int:
        """Drop runs that started more than ``keep_days`` before ``now``; how many."""
        cutoff = (datetime.fromisoformat(now) - timedelta(days=keep_days)).isoformat()
        return self.execute("DELETE FROM run_history WHERE started < ?", (cutoff,)).rowcount

    def run_history(
        self, list_ids: list[str] | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Runs, newest first (of these audiences, when given), at most ``limit``."""
        where, params = "", list[Any]()
        if list_ids is not None:
            where = f"WHERE list_id IN ({','.join('?' * len(list_ids))})"
            params = list(list_ids)
        sql = f"SELECT * FROM run_history {where} ORDER BY started DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [dict(row) for row in self.query(sql, params)]

    def history_trend(self, since: str, list_ids: list[str] | None = None) -> dict[str, int]:
        """Runs started from ``since``: how many, the changes they made, how many failed and
        how many never finished (killed, or running now)."""
        where, params = "WHERE started >= ?", list[Any]([since])
        if list_ids is not None:
            where += f" AND list_id IN ({','.join('?' * len(list_ids))})"
            params.extend(list_ids)
        total = " + ".join(kind.value for kind in Change)
        row = self.query(
            f"SELECT COUNT(*) AS runs, COALESCE(SUM({total}), 0) AS changes, "
            f"COALESCE(SUM(outcome = 'failure'), 0) AS failures, "
            f"COALESCE(SUM(outcome IS NULL), 0) AS unfinished "
            f"FROM run_history {where}",
            params,
        )[0]
        return {key: int(row[key]) for key in ("runs", "changes", "failures", "unfinished")}

    def failing_rows(self, list_id: str) -> int:
        """Rows of the audience that cannot sync now (the run history notes it per run)."""
        return int(
            self.scalar(
                "SELECT COUNT(*) FROM rows WHERE list_id = ? AND sync_status = 'fail'", (list_id,)
            )
            or 0
        )

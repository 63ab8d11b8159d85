"""The read-only queries behind `status`, `failures`, the dry-run plan and the brake.

None of these writes: `status` and `failures` open the DB read-only (they work on a read-only
file), and the plan and the brake only count what reconcile queued.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from mcsync.store.base import StoreBase
from mcsync.store.states import CLOSED_BATCH_STATES, RowState, UpdateState

_CLOSED_BATCHES = ",".join(f"'{state}'" for state in CLOSED_BATCH_STATES)


class StatusStore(StoreBase):
    """Counts, failures, the run log and the queued plan, as reports show them."""

    # -- status -------------------------------------------------------------------------
    def balance_counts(self, list_id: str, group_id: int) -> dict[str, int]:
        """The audience's balance figures (`status --json` "counts"): members subscribed at
        Mailchimp, rows decided to be added or removed (their writes queued or agreed),
        failures split by whether a CiviCRM subscriber could not be subscribed, rows still
        to decide, contacts Added in CiviCRM, updates by stage, batches in flight."""
        decided = f"'{RowState.LIVE}', '{RowState.OK}'"
        row = self.conn.execute(
            f"""
            SELECT
              COALESCE(SUM(mc_sub), 0) AS subscribed_at_mailchimp,
              COALESCE(SUM(sync_status IN ({decided}) AND added AND NOT mc_sub), 0) AS to_add,
              COALESCE(SUM(sync_status IN ({decided}) AND NOT added AND mc_sub), 0)
                AS to_remove,
              COALESCE(SUM(sync_status = '{RowState.FAIL}' AND added AND NOT mc_sub), 0)
                AS cannot_subscribe,
              COALESCE(SUM(sync_status = '{RowState.FAIL}' AND NOT (added AND NOT mc_sub)), 0)
                AS other_failures,
              COALESCE(SUM(sync_status = '{RowState.TODO}'), 0) AS remaining
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
        ).fetchone()
        counts = {key: int(row[key]) for key in row.keys()}  # noqa: SIM118 (a Row iterates values)
        counts["added_in_civicrm"] = int(
            self.conn.execute(
                "SELECT COUNT(*) FROM group_status g JOIN contacts c "
                "ON c.contact_id = g.contact_id WHERE g.group_id = ? AND g.status = 'Added' "
                "AND c.is_deleted = 0 AND c.gone = 0",
                (group_id,),
            ).fetchone()[0]
        )
        updates: dict[str, int] = {
            r[0]: r[1]
            for r in self.conn.execute(
                "SELECT state, COUNT(*) FROM updates WHERE list_id = ? GROUP BY state", (list_id,)
            )
        }
        counts["updates_queued"] = int(updates.get(UpdateState.QUEUED, 0))
        counts["updates_submitted"] = int(
            updates.get(UpdateState.SUBMITTING, 0) + updates.get(UpdateState.SUBMITTED, 0)
        )
        counts["batches_in_flight"] = int(
            self.conn.execute(
                f"SELECT COUNT(*) FROM batches WHERE list_id = ? "
                f"AND status NOT IN ({_CLOSED_BATCHES})",
                (list_id,),
            ).fetchone()[0]
        )
        return counts

    def newest_error_since(self, list_id: str, since: str) -> str | None:
        """The newest error logged for the audience at or after `since` (a brake, an API
        failure): what `status` shows as the audience's problem."""
        row = self.conn.execute(
            "SELECT message FROM log WHERE list_id = ? AND level = 'error' AND at >= ? "
            "ORDER BY id DESC LIMIT 1",
            (list_id, since),
        ).fetchone()
        return str(row[0]) if row else None

    def recent_log(self, list_id: str, limit: int = 10) -> list[dict[str, Any]]:
        """The audience's newest log lines, oldest first."""
        rows = self.conn.execute(
            "SELECT at, level, message FROM log WHERE list_id = ? ORDER BY id DESC LIMIT ?",
            (list_id, limit),
        ).fetchall()
        return [dict(r) for r in reversed(rows)]

    def failed_rows(self, list_id: str, reason: str | None = None) -> list[sqlite3.Row]:
        """Rows that cannot sync (failed, or refused for compliance while a retry is queued),
        with an address to name them by (the member's, else the contact's primary), in reason
        order; only `reason`'s when given."""
        params: list[Any] = [list_id]
        where = f"r.list_id = ? AND (r.sync_status = '{RowState.FAIL}' OR r.reason = 'compliance')"
        if reason:
            where += " AND r.reason = ?"
            params.append(reason)
        return self.conn.execute(
            f"SELECT r.id, COALESCE(r.mc_email, (SELECT e.email FROM emails e WHERE "
            f"e.contact_id = r.contact_id ORDER BY e.is_primary DESC, e.email_id LIMIT 1)) "
            f"AS email, r.contact_id, r.mc_status, r.reason, r.reason_detail, r.sync_status, "
            f"r.retry_attempts, r.retry_at "
            f"FROM rows r WHERE {where} ORDER BY r.reason, r.id",
            params,
        ).fetchall()

    # -- the dry-run plan ---------------------------------------------------------------
    def planned_civi_writes(self, list_id: str) -> list[sqlite3.Row]:
        """The audience's queued CiviCRM writes in order, each with an address to show
        (its own, else a member's of the contact, else the contact's primary)."""
        return self.conn.execute(
            "SELECT w.*, COALESCE(w.email, (SELECT mc_email FROM rows r WHERE r.contact_id = "
            "w.contact_id AND r.list_id = w.list_id AND r.mc_email IS NOT NULL LIMIT 1), "
            "(SELECT e.email FROM emails e WHERE e.contact_id = w.contact_id "
            "ORDER BY e.is_primary DESC, e.email_id LIMIT 1)) AS contact_email "
            "FROM civi_writes w WHERE w.list_id = ? ORDER BY w.id",
            (list_id,),
        ).fetchall()

    def queued_updates_with_contact(self, list_id: str) -> list[sqlite3.Row]:
        """The audience's queued member writes in order, with their row's contact."""
        return self.conn.execute(
            f"SELECT u.*, r.contact_id FROM updates u JOIN rows r ON r.id = u.row_id "
            f"WHERE u.list_id = ? AND u.state = '{UpdateState.QUEUED}' ORDER BY u.id",
            (list_id,),
        ).fetchall()

    def contacts_to_create(self, list_id: str) -> list[str]:
        """Addresses of subscribed or pending members with no contact: a run creates one,
        unless a trashed owner's later removal or privacy flag holds it back
        (`match.create_contacts`)."""
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT mc_email FROM rows WHERE list_id = ? AND contact_id IS NULL "
                "AND mc_status IN ('subscribed', 'pending') "
                "AND trashed_removal_at IS NULL AND trashed_flag_by IS NULL ORDER BY id",
                (list_id,),
            )
        ]

    # -- the mass-change brake ------------------------------------------------------------
    def brake_counts(self, list_id: str, group_id: int) -> dict[str, int]:
        """What the brake weighs (DESIGN §5) that an index or a short table answers:
        contacts Added to the group, unsubscribes queued, removals from the group planned."""
        one = self._count
        return {
            "added": one(
                "SELECT COUNT(*) FROM group_status WHERE group_id = ? AND status = 'Added'",
                (group_id,),
            ),
            "unsubscribes": one(
                f"SELECT COUNT(*) FROM updates WHERE list_id = ? "
                f"AND state = '{UpdateState.QUEUED}' "
                f"AND json_extract(body, '$.status') = 'unsubscribed'",
                (list_id,),
            ),
            "removals": one(
                "SELECT COUNT(*) FROM civi_writes WHERE list_id = ? AND kind = 'group' "
                "AND group_id = ? AND status = 'Removed'",
                (list_id, group_id),
            ),
        }

    def subscribed_members(self, list_id: str) -> int:
        """Members staged as subscribed or pending (every member row is read)."""
        return self._count(
            "SELECT COUNT(*) FROM rows WHERE list_id = ? "
            "AND mc_status IN ('subscribed', 'pending')",
            (list_id,),
        )

    def staged_members(self, list_id: str) -> int:
        """Member rows staged for the audience."""
        return self._count(
            "SELECT COUNT(*) FROM rows WHERE list_id = ? AND mc_hash IS NOT NULL", (list_id,)
        )

    def _count(self, sql: str, params: tuple[Any, ...]) -> int:
        """The one number a COUNT query answers."""
        return int(self.conn.execute(sql, params).fetchone()[0] or 0)

    def planned_interest_switches(self, list_id: str, interest_id: str) -> dict[bool, int]:
        """Queued Mailchimp updates that would turn this interest on (True) or off (False)
        for a member who already exists, by direction. A new member's first interests are
        part of its subscribe, which is an addition, not a switch."""
        pushed, known = f'$.interests."{interest_id}"', f'$."{interest_id}"'
        rows = self.conn.execute(
            "SELECT json_extract(u.body, ?) AS value, COUNT(*) "
            "FROM updates u JOIN rows r ON r.id = u.row_id "
            f"WHERE u.list_id = ? AND u.state = '{UpdateState.QUEUED}' "
            "AND r.mc_hash IS NOT NULL AND json_extract(u.body, ?) IS NOT NULL "
            "AND json_extract(u.body, ?) IS NOT json_extract(r.mc_interests, ?) "
            "GROUP BY value",
            (pushed, list_id, pushed, pushed, known),
        ).fetchall()
        return {bool(value): count for value, count in rows}

    def planned_interest_group_writes(
        self, list_id: str, group_id: int, subscription_group: int
    ) -> dict[str, int]:
        """Queued CiviCRM writes to an interest's group, by the status they set (Added,
        Removed), for contacts already Added to the subscription group: a new subscriber's
        interests come with its subscribe, which is an addition, not a switch."""
        rows = self.conn.execute(
            "SELECT w.status, COUNT(*) FROM civi_writes w WHERE w.list_id = ? "
            "AND w.kind = 'group' AND w.group_id = ? AND EXISTS (SELECT 1 FROM group_status g "
            "WHERE g.contact_id = w.contact_id AND g.group_id = ? AND g.status = 'Added') "
            "GROUP BY w.status",
            (list_id, group_id, subscription_group),
        ).fetchall()
        return {status: count for status, count in rows}

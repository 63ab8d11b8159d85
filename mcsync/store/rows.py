"""Rows (`rows`: one member/contact pair of an audience) and their state transitions.

`rows.sync_status` is a `RowState`. Every change of it made by the reconcile side is one named
method here, so "where does a row's state change?" has one answer per transition:

- `decided`: reconcile decided the row (`ok`, `fail` with a reason, or `live` while a write of
  its is queued or in flight).
- `settled_agreeing`: the SQL twin of `rules.reconcile.reconcile_member` for rows whose sides
  plainly agree (`todo` → `ok` in one statement); tests/test_settle_twins.py holds it to the
  pure function.
- `back_to_todo`: decided again by the next reconcile (a write of it was overtaken).
- `redecide_all`: a full run decides every settled row again.
- `requeue_due_retries`: failed rows whose passing reason is due are tried again.
- `discarded_by_abort`: the one rule, used by `abort` and by undoing a dry run's plan, for
  which rows go back to `todo` when a plan is dropped.

The rest of the module is what a decision reads (the chunk's contacts, groups, queued writes)
and writes besides the state (the queued writes, the echo a row expects, retry bookkeeping).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from mcsync.rules.addresses import fold_email
from mcsync.store.base import StoreBase
from mcsync.store.states import OPEN_UPDATE_STATES, BatchState, RowState, UpdateState

# CiviCRM writes that are decisions (a plan); `email` writes carry facts fetched from Mailchimp.
PLANNED_CIVI_WRITES = ("group", "hold")

# Ids per statement where a list of ids becomes `IN (?, ?, …)` (SQLite's variable limit).
IDS_PER_QUERY = 1000

_OPEN = ",".join(f"'{state}'" for state in OPEN_UPDATE_STATES)
_SENT = f"'{UpdateState.SUBMITTING}', '{UpdateState.SUBMITTED}'"
_PLANNED = ",".join(f"'{kind}'" for kind in PLANNED_CIVI_WRITES)
_CLOSED_BATCHES = f"'{BatchState.PROCESSED}', '{BatchState.ABORTED}'"


class Decided(NamedTuple):
    """A row's state after reconcile decided it, stored for a whole chunk at once."""

    state: RowState
    reason: str | None
    detail: str | None
    row_id: int


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


class RowStore(StoreBase):
    """Rows, their state transitions, and what reconcile reads and queues for them."""

    # -- transitions of rows.sync_status --------------------------------------------------
    def decided(self, decisions: Sequence[Decided]) -> None:
        """Store reconcile's decisions (call in the chunk's transaction, with its queued
        writes): the state, and the reason `status`/`failures` show for a failed row."""
        self.conn.executemany(
            "UPDATE rows SET sync_status = ?, reason = ?, reason_detail = ? WHERE id = ?",
            [(str(d.state), d.reason, d.detail, d.row_id) for d in decisions],
        )

    def settled_agreeing(
        self,
        list_id: str,
        group_id: int,
        interest_groups: Mapping[str, int],
        start: int,
        stop: int,
    ) -> int:
        """Mark `ok`, in one statement, the `todo` rows with ids in [start, stop) whose sides
        plainly agree: subscribed at Mailchimp (at an exactly known time) and Added in
        CiviCRM, every mapped interest equal to its group, one unheld email that is the
        member's, no privacy flag, no sibling, refusal, merge-field data or queued write.

        A status change dated only within an interval (`mc_status_after`) needs no order
        here: both sides agree, so whichever choice came last there is nothing to write.

        This is the SQL twin of `rules.reconcile.reconcile_member` for those rows: the pure
        function decides nothing for them (tests/test_settle_twins.py checks it on generated
        rows), and a full run marks every row `todo`, so only the rows that disagree (or are
        unusual) go through Python. Returns the rows settled."""
        interest_checks = "".join(
            " AND json_extract(r.mc_interests, ?) IS ((SELECT g.status FROM group_status g "
            "WHERE g.contact_id = r.contact_id AND g.group_id = ?) IS 'Added')"
            for _ in interest_groups
        )
        interest_params: list[Any] = []
        for interest_id, interest_group in interest_groups.items():
            interest_params.extend([f'$."{interest_id}"', interest_group])
        cursor = self.conn.execute(
            f"""
            UPDATE rows AS r SET sync_status = '{RowState.OK}', reason = NULL,
                reason_detail = NULL
            WHERE r.id >= ? AND r.id < ?
              AND r.list_id = ? AND r.sync_status = '{RowState.TODO}'
              AND r.mc_status = 'subscribed'
              AND r.mc_hash IS NOT NULL AND r.contact_id IS NOT NULL AND r.creating = 0
              AND r.mc_expected IS NULL AND r.refusal_reason IS NULL
              AND r.trashed_removal_at IS NULL
              AND r.trashed_interest_removals IS NULL
              AND EXISTS (SELECT 1 FROM contacts c WHERE c.contact_id = r.contact_id
                          AND c.is_deleted = 0 AND c.gone = 0 AND c.is_deceased = 0
                          AND c.do_not_email = 0 AND c.is_opt_out = 0)
              AND (SELECT g.status FROM group_status g WHERE g.contact_id = r.contact_id
                   AND g.group_id = ?) IS 'Added'
              {interest_checks}
              AND EXISTS (SELECT 1 FROM emails e WHERE e.contact_id = r.contact_id
                          AND e.email_lc = fold_email(r.mc_email) AND e.on_hold = 0)
              AND NOT EXISTS (SELECT 1 FROM emails e WHERE e.contact_id = r.contact_id
                              AND e.email_lc != fold_email(r.mc_email))
              AND NOT EXISTS (SELECT 1 FROM emails e WHERE e.email_lc = fold_email(r.mc_email)
                              AND e.on_hold != 0)
              AND NOT EXISTS (SELECT 1 FROM rows s WHERE s.contact_id = r.contact_id
                              AND s.list_id = r.list_id AND s.id != r.id)
              AND NOT EXISTS (SELECT 1 FROM contact_data d WHERE d.list_id = r.list_id
                              AND d.contact_id = r.contact_id AND d.merge_fields != '{{}}')
              AND NOT EXISTS (SELECT 1 FROM updates u WHERE u.row_id = r.id
                              AND u.state IN ({_OPEN}))
              AND NOT EXISTS (SELECT 1 FROM civi_writes w WHERE w.list_id = r.list_id
                              AND w.contact_id = r.contact_id)
            """,
            (start, stop, list_id, group_id, *interest_params),
        )
        return cursor.rowcount

    def back_to_todo(self, row_ids: Sequence[int]) -> None:
        """These rows are decided again by the next reconcile (a write of theirs was dropped
        unsent, so the facts behind it must be decided afresh)."""
        self.conn.executemany(
            f"UPDATE rows SET sync_status = '{RowState.TODO}' WHERE id = ?",
            [(row_id,) for row_id in row_ids],
        )

    def redecide_all(self, list_id: str) -> None:
        """A full run decides every decided row again (`live` rows wait for their write's
        result): it is how changes that leave no history are caught (DESIGN §3)."""
        self.conn.execute(
            f"UPDATE rows SET sync_status = '{RowState.TODO}' WHERE list_id = ? "
            f"AND sync_status IN ('{RowState.OK}', '{RowState.FAIL}')",
            (list_id,),
        )

    def requeue_due_retries(self, list_id: str, reasons: list[str], due_by: str) -> int:
        """Failed rows with a passing reason whose next try is due go back to be decided."""
        marks = _marks(reasons)
        cursor = self.conn.execute(
            f"UPDATE rows SET sync_status = '{RowState.TODO}' WHERE list_id = ? "
            f"AND sync_status = '{RowState.FAIL}' "
            f"AND reason IN ({marks}) AND retry_at IS NOT NULL AND retry_at <= ?",
            (list_id, *reasons, due_by),
        )
        return cursor.rowcount

    def discarded_by_abort(self, list_id: str) -> int:
        """Send back to `todo` every row whose writes are planned or in flight (and every
        failed one), so the next run decides them again: `abort` and an undone dry run drop a
        plan, never the facts behind it (a Mailchimp unsubscribe whose CiviCRM removal was
        queued is still an unsubscribe). A row keeps `mc_expected` while a write of its may
        have reached Mailchimp, so that change keeps the time of the choice it carried.

        Rows are found through their updates and planned CiviCRM writes: call it before
        those change (`drop_plan` does). Returns the rows sent back."""
        return self.conn.execute(
            f"""
            UPDATE rows SET sync_status = '{RowState.TODO}', mc_expected = CASE WHEN EXISTS (
                SELECT 1 FROM updates u WHERE u.row_id = rows.id
                AND u.state IN ({_SENT})) THEN mc_expected ELSE NULL END
            WHERE list_id = ? AND (sync_status IN ('{RowState.LIVE}', '{RowState.FAIL}')
                OR id IN (SELECT row_id FROM updates WHERE list_id = ?
                          AND state IN ({_OPEN}))
                OR contact_id IN (SELECT contact_id FROM civi_writes WHERE list_id = ?
                                  AND kind IN ({_PLANNED})))
            """,
            (list_id, list_id, list_id),
        ).rowcount

    # -- dropping a plan (abort, an undone dry run) -----------------------------------------
    def drop_plan(self, list_id: str) -> int:
        """Drop the audience's planned CiviCRM writes and send their rows (and every row with
        Mailchimp writes open, and every failed one) back to `todo` (`discarded_by_abort`):
        the one rule `abort` and an undone dry run share.

        Call it in the transaction that also settles the Mailchimp updates, before their
        states change (rows are found through them). Address changes learned at Mailchimp
        (`email` writes) are facts no later fetch sees again: they stay queued. Returns the
        rows sent back."""
        with self.atomic():
            count = self.discarded_by_abort(list_id)
            self.conn.execute(
                f"DELETE FROM civi_writes WHERE list_id = ? AND kind IN ({_PLANNED})", (list_id,)
            )
        return count

    # -- what reconcile reads --------------------------------------------------------------
    def todo_id_range(self, list_id: str) -> tuple[int | None, int | None]:
        """The lowest and highest id of the audience's rows to decide (None, None: none)."""
        low, high = self.conn.execute(
            f"SELECT MIN(id), MAX(id) FROM rows WHERE list_id = ? "
            f"AND sync_status = '{RowState.TODO}'",
            (list_id,),
        ).fetchone()
        return low, high

    def todo_rows_after(self, list_id: str, after_id: int, limit: int) -> list[sqlite3.Row]:
        """The next rows to decide, in id order after `after_id` (the stage's cursor)."""
        return self.conn.execute(
            f"SELECT * FROM rows WHERE list_id = ? AND sync_status = '{RowState.TODO}' "
            f"AND id > ? ORDER BY id LIMIT ?",
            (list_id, after_id, limit),
        ).fetchall()

    def rows_to_decide_again(self, list_id: str) -> list[sqlite3.Row]:
        """Rows whose decision depends on another row's in this run (`decide_again`): rows of
        a contact with several rows and CiviCRM writes planned, and rows of different
        contacts, not at Mailchimp, queued to subscribe the same address."""
        return self.conn.execute(
            "SELECT * FROM rows WHERE id IN ("
            "SELECT r.id FROM civi_writes w JOIN rows r ON r.contact_id = w.contact_id "
            f"AND r.list_id = w.list_id WHERE w.list_id = ? AND w.kind IN ({_PLANNED}) "
            "AND EXISTS (SELECT 1 FROM rows s WHERE s.contact_id = r.contact_id "
            "AND s.list_id = r.list_id AND s.id != r.id) "
            "UNION SELECT u.row_id FROM updates u JOIN rows o ON o.id = u.row_id "
            f"WHERE u.list_id = ? AND u.state = '{UpdateState.QUEUED}' AND o.mc_hash IS NULL "
            "AND fold_email(u.email) IN (SELECT fold_email(u2.email) FROM updates u2 "
            "JOIN rows o2 ON o2.id = u2.row_id WHERE u2.list_id = ? "
            f"AND u2.state = '{UpdateState.QUEUED}' "
            "AND o2.mc_hash IS NULL GROUP BY fold_email(u2.email) "
            "HAVING COUNT(DISTINCT o2.contact_id) > 1)) ORDER BY id",
            (list_id, list_id, list_id),
        ).fetchall()

    def planned_group_writes(
        self, list_id: str, contact_ids: Sequence[int]
    ) -> list[tuple[int, int, str, str | None]]:
        """The group writes planned for these contacts, (contact, group, status, origin_at)
        in contact and group order: decisions are made against them, since they are what
        CiviCRM will have (push_civicrm stores the same status and time after writing)."""
        found: list[tuple[int, int, str, str | None]] = []
        for start in range(0, len(contact_ids), IDS_PER_QUERY):
            chunk = contact_ids[start : start + IDS_PER_QUERY]
            found.extend(
                (r[0], r[1], r[2], r[3])
                for r in self.conn.execute(
                    f"SELECT contact_id, group_id, status, origin_at FROM civi_writes "
                    f"WHERE list_id = ? AND kind = 'group' AND contact_id IN ({_marks(chunk)}) "
                    f"ORDER BY contact_id, group_id",
                    (list_id, *chunk),
                )
            )
        return found

    def planned_holds(self, list_id: str, contact_ids: Sequence[int]) -> list[tuple[int, str]]:
        """Holds planned for these contacts, (contact, folded address): they count as on hold
        already."""
        return [
            (r[0], r[1])
            for r in self.conn.execute(
                f"SELECT contact_id, fold_email(email) FROM civi_writes WHERE list_id = ? "
                f"AND kind = 'hold' AND contact_id IN ({_marks(contact_ids)})",
                (list_id, *contact_ids),
            )
        ]

    def contacts_by_id(self, contact_ids: Sequence[int]) -> list[sqlite3.Row]:
        """The staged contacts (deleted, gone, privacy flags and when they were set)."""
        return self.conn.execute(
            f"SELECT * FROM contacts WHERE contact_id IN ({_marks(contact_ids)})",
            list(contact_ids),
        ).fetchall()

    def emails_of_contacts(self, contact_ids: Sequence[int]) -> list[sqlite3.Row]:
        """The contacts' Email records, in id order (the order `choose_best_email` keeps
        among equals)."""
        return self.conn.execute(
            f"SELECT * FROM emails WHERE contact_id IN ({_marks(contact_ids)}) ORDER BY email_id",
            list(contact_ids),
        ).fetchall()

    def merge_fields_of(self, list_id: str, contact_ids: Sequence[int]) -> list[sqlite3.Row]:
        """(contact_id, merge_fields JSON) of these contacts: what CiviCRM wants at Mailchimp."""
        return self.conn.execute(
            f"SELECT contact_id, merge_fields FROM contact_data WHERE list_id = ? "
            f"AND contact_id IN ({_marks(contact_ids)})",
            (list_id, *contact_ids),
        ).fetchall()

    def group_statuses_of(
        self, contact_ids: Sequence[int], group_ids: Sequence[int]
    ) -> list[sqlite3.Row]:
        """The staged memberships of these contacts in these groups."""
        return self.conn.execute(
            f"SELECT * FROM group_status WHERE contact_id IN ({_marks(contact_ids)}) "
            f"AND group_id IN ({_marks(group_ids)})",
            (*contact_ids, *group_ids),
        ).fetchall()

    def held_addresses(self, addresses: Sequence[str]) -> set[str]:
        """Of these folded addresses, those on hold on any contact's Email record."""
        return {
            r[0]
            for r in self.conn.execute(
                f"SELECT DISTINCT email_lc FROM emails WHERE email_lc IN ({_marks(addresses)}) "
                f"AND on_hold != 0",
                list(addresses),
            )
        }

    def addresses_claimed(self, list_id: str, addresses: Sequence[str]) -> list[tuple[str, int]]:
        """Of these folded addresses, those a contact not at Mailchimp yet has a write open to
        subscribe, with that contact: (address, contact)."""
        return [
            (r[0], r[1])
            for r in self.conn.execute(
                f"SELECT DISTINCT fold_email(u.email), r.contact_id FROM updates u "
                f"JOIN rows r ON r.id = u.row_id WHERE u.list_id = ? AND r.mc_hash IS NULL "
                f"AND r.contact_id IS NOT NULL AND u.state IN ({_OPEN}) "
                f"AND fold_email(u.email) IN ({_marks(addresses)})",
                (list_id, *addresses),
            )
        ]

    def member_addresses(self, list_id: str, addresses: Sequence[str]) -> frozenset[str]:
        """Of these folded addresses, those a member row of the audience holds."""
        return frozenset(
            r[0]
            for r in self.conn.execute(
                f"SELECT fold_email(mc_email) FROM rows WHERE list_id = ? "
                f"AND +mc_hash IS NOT NULL AND fold_email(mc_email) IN ({_marks(addresses)})",
                (list_id, *addresses),
            )
        )

    def unsent_updates(self, row_ids: Sequence[int]) -> list[sqlite3.Row]:
        """The rows' queued updates (id, row_id, body), oldest first: a decision replaces
        them (`rules.queue_rules.plan_queue`)."""
        return self.conn.execute(
            f"SELECT id, row_id, body FROM updates WHERE state = '{UpdateState.QUEUED}' "
            f"AND row_id IN ({_marks(row_ids)}) ORDER BY id",
            list(row_ids),
        ).fetchall()

    def rows_in_flight(self, row_ids: Sequence[int]) -> set[int]:
        """Of these rows, those with a write sent and not answered: they stay `live`."""
        return {
            r[0]
            for r in self.conn.execute(
                f"SELECT DISTINCT row_id FROM updates WHERE state IN ({_SENT}) "
                f"AND row_id IN ({_marks(row_ids)})",
                list(row_ids),
            )
        }

    def rows_by_id(self, row_ids: list[int]) -> list[sqlite3.Row]:
        """Whole rows by id (the rows behind a chunk of queued writes)."""
        return self.conn.execute(
            f"SELECT * FROM rows WHERE id IN ({_marks(row_ids)})", row_ids
        ).fetchall()

    def member_rows_of_contacts(
        self, list_id: str, contact_ids: Sequence[int]
    ) -> list[sqlite3.Row]:
        """The audience's member rows (at Mailchimp) of these contacts, in id order: a
        contact's siblings, and the members a plan that waited must check for news."""
        ids = sorted(set(contact_ids))
        return self.conn.execute(
            f"SELECT id, contact_id, mc_hash, mc_email, mc_status, mc_last_changed FROM rows "
            f"WHERE list_id = ? AND +mc_hash IS NOT NULL AND contact_id IN ({_marks(ids)}) "
            f"ORDER BY id",
            (list_id, *ids),
        ).fetchall()

    # -- retries of failed rows -----------------------------------------------------------
    def retry_attempts(self, row_id: int) -> int:
        """How many times in a row the row's writes failed for a passing reason."""
        row = self.conn.execute("SELECT retry_attempts FROM rows WHERE id = ?", (row_id,))
        found = row.fetchone()
        return int(found[0] or 0) if found else 0

    def schedule_retry(self, row_id: int, attempts: int, retry_at: str | None) -> None:
        """A failed row: ``attempts`` failures in a row, tried again from ``retry_at`` (None:
        not by normal runs, the reason lasts)."""
        self.conn.execute(
            "UPDATE rows SET retry_attempts = ?, retry_at = ? WHERE id = ?",
            (attempts, retry_at, row_id),
        )

    def clear_retry(self, row_ids: list[int]) -> None:
        """The row's write went through: its next failure starts the backoff afresh."""
        self.conn.executemany(
            "UPDATE rows SET retry_attempts = 0, retry_at = NULL WHERE id = ? "
            "AND (retry_attempts != 0 OR retry_at IS NOT NULL)",
            [(row_id,) for row_id in row_ids],
        )

    def clear_retry_of_contacts(self, list_id: str, contact_ids: list[int]) -> None:
        """CiviCRM took the contacts' group changes: the rows' next failure starts afresh."""
        self.conn.executemany(
            "UPDATE rows SET retry_attempts = 0, retry_at = NULL WHERE list_id = ? "
            f"AND contact_id = ? AND sync_status != '{RowState.FAIL}' AND retry_attempts != 0",
            [(list_id, contact_id) for contact_id in contact_ids],
        )

    # -- cleaned members (issue 10) -----------------------------------------------------
    def mark_cleaned_handled(self, row_ids: list[int]) -> None:
        """These rows' members became cleaned and mcsync has acted on it (the address was
        already held, or has no record to hold): never hold it again for this cleaned state."""
        self.conn.executemany(
            "UPDATE rows SET cleaned_handled_at = COALESCE(mc_status_at, mc_last_changed) "
            "WHERE id = ? AND mc_status = 'cleaned'",
            [(row_id,) for row_id in row_ids],
        )

    def mark_cleaned_held(self, list_id: str, contact_id: int, email: str) -> None:
        """The hold for a cleaned member of this contact and address was written to CiviCRM:
        the transition is done, and an admin may lift the hold without being overruled."""
        self.conn.execute(
            "UPDATE rows SET cleaned_handled_at = COALESCE(mc_status_at, mc_last_changed) "
            "WHERE list_id = ? AND contact_id = ? AND fold_email(mc_email) = ? "
            "AND mc_status = 'cleaned'",
            (list_id, contact_id, fold_email(email)),
        )

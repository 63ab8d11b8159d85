"""What staging keeps of CiviCRM: contacts (flags, names, when flags were set), their emails,
group statuses, and the progress of the large reads by id range (`civi_sweeps`).

A large CiviCRM read (a full run's group membership, subscription history, modified
contacts) is split into id ranges read side by side. Each range's cursor is a row of
`civi_sweeps`, committed with the page it reached, so a kill or a spent budget resumes every
range where it stopped, and a range not read to its end is never mistaken for one that was:
the full run's "who left the group" step runs only once every range is done.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from mcsync.store.base import StoreBase
from mcsync.store.states import RowState

IN_CHUNK = 500  # ids per SQL `IN` list (well under SQLite's variable limit)


def _chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ContactStore(StoreBase):
    """Staged CiviCRM contacts, emails and group statuses, and the id-range read cursors."""

    # -- id-range reads (civi_sweeps) ------------------------------------------------------
    def sweep_ranges(self, list_id: str, sweep: str, run_id: str) -> list[sqlite3.Row]:
        """This run's ranges of one read, in id order (empty: not planned yet)."""
        return self.query(
            "SELECT lo, hi, cursor, done FROM civi_sweeps WHERE list_id = ? AND sweep = ? "
            "AND run_id = ? ORDER BY lo",
            (list_id, sweep, run_id),
        )

    def plan_sweep(self, list_id: str, sweep: str, run_id: str, start: int) -> None:
        """Start a read as one open range after ``start``, forgetting an earlier run's."""
        with self.atomic():
            self.execute(
                "DELETE FROM civi_sweeps WHERE list_id = ? AND sweep = ?", (list_id, sweep)
            )
            self.execute(
                "INSERT INTO civi_sweeps (list_id, sweep, run_id, lo, hi, cursor, done) "
                "VALUES (?, ?, ?, ?, NULL, ?, 0)",
                (list_id, sweep, run_id, start, start),
            )

    def split_sweep(
        self, list_id: str, sweep: str, run_id: str, lo: int, ranges: list[tuple[int, int | None]]
    ) -> None:
        """Replace the open range starting at ``lo`` by ``ranges`` (which must start at its
        cursor and end open): the part it has read becomes a done range of its own."""
        with self.atomic():
            row = self.conn.execute(
                "SELECT cursor FROM civi_sweeps WHERE list_id = ? AND sweep = ? AND run_id = ? "
                "AND lo = ? AND hi IS NULL AND done = 0",
                (list_id, sweep, run_id, lo),
            ).fetchone()
            if row is None or not ranges or ranges[0][0] != row[0] or ranges[-1][1] is not None:
                raise ValueError("a split must cover the rest of an open range exactly")
            cursor = int(row[0])
            if cursor == lo:
                self.execute(
                    "DELETE FROM civi_sweeps WHERE list_id = ? AND sweep = ? AND lo = ?",
                    (list_id, sweep, lo),
                )
            else:
                self.execute(
                    "UPDATE civi_sweeps SET hi = ?, done = 1 WHERE list_id = ? AND sweep = ? "
                    "AND lo = ?",
                    (cursor, list_id, sweep, lo),
                )
            self.conn.executemany(
                "INSERT INTO civi_sweeps (list_id, sweep, run_id, lo, hi, cursor, done) "
                "VALUES (?, ?, ?, ?, ?, ?, 0)",
                [(list_id, sweep, run_id, start, hi, start) for start, hi in ranges],
            )

    def advance_sweep(self, list_id: str, sweep: str, lo: int, cursor: int, done: bool) -> None:
        """The range starting at ``lo`` is read up to ``cursor`` (to its end when ``done``);
        call inside the transaction that stored the page."""
        self.execute(
            "UPDATE civi_sweeps SET cursor = ?, done = ? WHERE list_id = ? AND sweep = ? "
            "AND lo = ?",
            (cursor, int(done), list_id, sweep, lo),
        )

    def sweep_complete(self, list_id: str, sweep: str, run_id: str) -> bool:
        """Has this run read every range of the read to its end?"""
        return bool(self.sweep_ranges(list_id, sweep, run_id)) and not self.scalar(
            "SELECT 1 FROM civi_sweeps WHERE list_id = ? AND sweep = ? AND run_id = ? "
            "AND done = 0 LIMIT 1",
            (list_id, sweep, run_id),
        )

    # -- group statuses ---------------------------------------------------------------------
    def store_group_rows(self, rows: Iterable[tuple[int, int, str, str]]) -> None:
        """GroupContact rows (contact, group, status, run) as a full run reads them: the
        status, seen by this run, with no change time (a status read as staged may have gone
        and come back; `load_history_dates` dates the pairs whose sides disagree)."""
        self.conn.executemany(
            "INSERT INTO group_status (contact_id, group_id, status, seen_run) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (contact_id, group_id) DO UPDATE SET "
            "status = excluded.status, seen_run = excluded.seen_run, changed_at = NULL",
            rows,
        )

    def forget_unseen_group_rows(self, group_ids: Sequence[int], run_id: str) -> None:
        """After a complete full read: pairs of these groups the run did not see are not in
        the group (merged or hard-deleted contacts leave no history)."""
        placeholders = ",".join("?" * len(group_ids))
        self.execute(
            f"UPDATE group_status SET status = NULL, changed_at = NULL WHERE group_id IN "
            f"({placeholders}) AND seen_run IS NOT ? AND status IS NOT NULL",
            (*group_ids, run_id),
        )

    def row_contacts_unseen(self, list_id: str, run_id: str) -> list[int]:
        """Contacts the audience's rows point at that this full run saw in no group."""
        return [
            r[0]
            for r in self.query(
                "SELECT DISTINCT r.contact_id FROM rows r JOIN contacts c ON c.contact_id = "
                "r.contact_id WHERE r.list_id = ? AND c.gone = 0 AND NOT EXISTS (SELECT 1 FROM "
                "group_status g WHERE g.contact_id = r.contact_id AND g.seen_run IS ?)",
                (list_id, run_id),
            )
        ]

    def store_group_history(self, rows: Iterable[tuple[int, int, str | None, str | None]]) -> None:
        """Subscription history rows (contact, group, status, UTC time), applied in id order."""
        self.conn.executemany(
            "INSERT INTO group_status (contact_id, group_id, status, changed_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (contact_id, group_id) DO UPDATE SET "
            "status = excluded.status, changed_at = excluded.changed_at",
            rows,
        )

    # -- contacts ---------------------------------------------------------------------------
    def store_contacts(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Upsert (contact_id, is_deleted, is_deceased, do_not_email, is_opt_out, first_name,
        last_name, flags_at, unflagged_at, flags_after). `flags_at` keeps when the privacy
        flags were set as far as mcsync knows: the time given when a flag is first seen set,
        kept while no new flag appears, so a later unrelated edit does not make an old flag
        look new (issue 10). `unflagged_at` keeps the modified_date of the last version seen
        without a flag. `flags_after` (the given lower bound) is kept for a flag first seen on
        a contact staged before; a contact new to staging has no such bound."""
        self.conn.executemany(
            "INSERT INTO contacts (contact_id, is_deleted, is_deceased, do_not_email, "
            "is_opt_out, first_name, last_name, gone, flags_at, unflagged_at) "
            "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9) "
            "ON CONFLICT (contact_id) DO UPDATE SET is_deleted = excluded.is_deleted, "
            "is_deceased = excluded.is_deceased, do_not_email = excluded.do_not_email, "
            "is_opt_out = excluded.is_opt_out, first_name = excluded.first_name, "
            "last_name = excluded.last_name, gone = 0, flags_at = CASE "
            f"WHEN {_NO_FLAG} THEN NULL WHEN {_NO_NEW_FLAG} THEN contacts.flags_at "
            "ELSE excluded.flags_at END, flags_after = CASE "
            f"WHEN {_NO_FLAG} THEN NULL WHEN {_NEW_FLAG} THEN ?10 "
            "WHEN contacts.flags_at IS NOT NULL THEN contacts.flags_after ELSE NULL END, "
            "unflagged_at = COALESCE(excluded.unflagged_at, contacts.unflagged_at)",
            rows,
        )

    def set_contacts_modified(self, rows: Iterable[tuple[str | None, int]]) -> None:
        """(modified_date, contact_id): the modified_date staging has now seen."""
        self.conn.executemany("UPDATE contacts SET modified_date = ? WHERE contact_id = ?", rows)

    def contacts_modified(self, contact_ids: Sequence[int]) -> dict[int, str | None]:
        """The modified_date staging last saw, per staged contact of these."""
        seen: dict[int, str | None] = {}
        for chunk in _chunks(list(contact_ids)):
            marks = ",".join("?" * len(chunk))
            for r in self.query(
                f"SELECT contact_id, modified_date FROM contacts WHERE contact_id IN ({marks})",
                tuple(chunk),
            ):
                seen[r[0]] = r[1]
        return seen

    def known_contacts(self, contact_ids: Sequence[int]) -> list[int]:
        """Those of these contacts an audience refers to (a row, or a staged group status)."""
        found: set[int] = set()
        for chunk in _chunks(list(contact_ids)):
            marks = ",".join("?" * len(chunk))
            found.update(
                r[0]
                for r in self.query(
                    f"SELECT DISTINCT contact_id FROM rows WHERE contact_id IN ({marks}) "
                    f"UNION SELECT DISTINCT contact_id FROM group_status "
                    f"WHERE contact_id IN ({marks})",
                    (*chunk, *chunk),
                )
            )
        return sorted(found)

    def mark_contacts_todo(self, list_id: str, contact_ids: Iterable[int]) -> None:
        """Rows of these contacts are decided again (not those with a write under way)."""
        ids = list(contact_ids)
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            self.execute(
                f"UPDATE rows SET sync_status = ? WHERE list_id = ? AND sync_status != ? "
                f"AND contact_id IN ({marks})",
                (RowState.TODO, list_id, RowState.LIVE, *chunk),
            )

    def missing_contacts(self, list_id: str, group_id: int, limit: int) -> list[int]:
        """Contacts the audience refers to (Added to the group, or matched to a member) that
        staging has no flags or emails for. Asked in every run: both halves read only
        covering indexes (the group's statuses; member rows by contact id, ``+list_id``
        keeping SQLite off the address index, which made it read every row), a quarter of
        the time of the plain join at a million."""
        return [
            r[0]
            for r in self.query(
                "SELECT g.contact_id FROM group_status g "
                "WHERE g.group_id = ? AND g.status = 'Added' "
                "AND NOT EXISTS (SELECT 1 FROM contacts c WHERE c.contact_id = g.contact_id) "
                "UNION SELECT r.contact_id FROM rows r "
                "WHERE +r.list_id = ? AND r.contact_id > 0 "
                "AND NOT EXISTS (SELECT 1 FROM contacts c WHERE c.contact_id = r.contact_id) "
                "LIMIT ?",
                (group_id, list_id, limit),
            )
        ]

    def flagged_contacts_undated(self, list_id: str) -> list[int]:
        """Flagged contacts of rows to decide, subscribed at Mailchimp, whose flags' time
        staging does not know."""
        return [
            r[0]
            for r in self.query(
                "SELECT DISTINCT c.contact_id FROM rows r JOIN contacts c ON c.contact_id = "
                "r.contact_id WHERE r.list_id = ? AND r.sync_status = ? "
                "AND r.mc_status IN ('subscribed', 'pending') AND c.flags_at IS NULL "
                "AND c.gone = 0 AND c.is_deleted = 0 "
                "AND c.is_deceased + c.do_not_email + c.is_opt_out > 0",
                (list_id, RowState.TODO),
            )
        ]

    def contacts_present(self, contact_ids: Sequence[int]) -> set[int]:
        """Those of these contacts staging has."""
        found: set[int] = set()
        for chunk in _chunks(list(contact_ids)):
            marks = ",".join("?" * len(chunk))
            found.update(
                r[0]
                for r in self.query(
                    f"SELECT contact_id FROM contacts WHERE contact_id IN ({marks})", tuple(chunk)
                )
            )
        return found

    def mark_contacts_gone(self, contact_ids: Iterable[int]) -> None:
        """Contacts CiviCRM no longer has (hard-deleted or merged away)."""
        self.conn.executemany(
            "INSERT INTO contacts (contact_id, gone) VALUES (?, 1) "
            "ON CONFLICT (contact_id) DO UPDATE SET gone = 1",
            [(c,) for c in contact_ids],
        )

    # -- emails -----------------------------------------------------------------------------
    def store_emails(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Replace what is staged for these emails (email_id, contact_id, email, email_lc,
        is_primary, is_bulkmail, on_hold)."""
        self.conn.executemany(
            "INSERT OR REPLACE INTO emails (email_id, contact_id, email, email_lc, is_primary, "
            "is_bulkmail, on_hold) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def drop_emails_of(self, contact_ids: Sequence[int]) -> None:
        """Forget the staged emails of these contacts (about to be read again)."""
        for chunk in _chunks(list(contact_ids)):
            marks = ",".join("?" * len(chunk))
            self.execute(f"DELETE FROM emails WHERE contact_id IN ({marks})", tuple(chunk))


# The contact read has no privacy flag set; it has one staging did not have; it has none
# that staging did not have, with their time known (`store_contacts`).
_NO_FLAG = "excluded.is_deceased + excluded.do_not_email + excluded.is_opt_out = 0"
_NEW_FLAG = (
    "(excluded.is_deceased > contacts.is_deceased OR excluded.do_not_email > "
    "contacts.do_not_email OR excluded.is_opt_out > contacts.is_opt_out)"
)
_NO_NEW_FLAG = (
    "contacts.flags_at IS NOT NULL AND excluded.is_deceased <= contacts.is_deceased "
    "AND excluded.do_not_email <= contacts.do_not_email "
    "AND excluded.is_opt_out <= contacts.is_opt_out"
)

"""One person at a time, and audiences that left the config: what `lookup`, `resync` and
`prune` read and change in the staging DB.

A person is found by address (compared with ``fold_email``, as everywhere) or by contact id;
their rows are the member rows holding the address and every row of the contacts matched.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from mcsync.rules.addresses import fold_email
from mcsync.store.base import StoreBase
from mcsync.store.states import OPEN_UPDATE_STATES, RowState, UpdateState

# Tables whose rows belong to one audience by their `list_id` (prune deletes them).
AUDIENCE_TABLES = (
    "rows",
    "updates",
    "batches",
    "civi_writes",
    "contact_data",
    "log",
    "audience_state",
)
_OPEN = tuple(str(s) for s in OPEN_UPDATE_STATES)


def _marks(items: Sequence[Any]) -> str:
    return ",".join("?" * len(items))


class PeopleStore(StoreBase):
    """Reads and marks of one person's staged data, and the data of audiences no longer
    configured."""

    # -- finding a person ----------------------------------------------------------------
    def contacts_with_address(self, email: str) -> list[int]:
        """Contacts staged with this address (any of their emails), lowest id first."""
        return [
            int(r[0])
            for r in self.query(
                "SELECT DISTINCT contact_id FROM emails WHERE email_lc = ? ORDER BY contact_id",
                (fold_email(email),),
            )
        ]

    def addresses_of_contacts(self, contact_ids: Sequence[int]) -> list[str]:
        """Every staged address of these contacts (as stored), primary first."""
        if not contact_ids:
            return []
        return [
            str(r[0])
            for r in self.query(
                f"SELECT email FROM emails WHERE contact_id IN ({_marks(contact_ids)}) "
                "ORDER BY is_primary DESC, email_id",
                list(contact_ids),
            )
        ]

    def person_rows(
        self, list_id: str, emails: Sequence[str], contact_ids: Sequence[int]
    ) -> list[sqlite3.Row]:
        """The audience's rows of a person: members holding one of the addresses, and every
        row of the contacts."""
        folded = sorted({fold_email(e) for e in emails if e})
        clauses: list[str] = []
        params: list[Any] = [list_id]
        if folded:
            clauses.append(f"fold_email(mc_email) IN ({_marks(folded)})")
            params.extend(folded)
        if contact_ids:
            clauses.append(f"contact_id IN ({_marks(contact_ids)})")
            params.extend(contact_ids)
        if not clauses:
            return []
        return self.query(
            f"SELECT * FROM rows WHERE list_id = ? AND ({' OR '.join(clauses)}) ORDER BY id",
            params,
        )

    # -- what is staged about them ---------------------------------------------------------
    def contact_data_of(self, list_id: str, contact_ids: Sequence[int]) -> list[sqlite3.Row]:
        """The merge fields and tags CiviCRM (and plugins) want at Mailchimp per contact."""
        if not contact_ids:
            return []
        return self.query(
            f"SELECT contact_id, merge_fields, tags FROM contact_data WHERE list_id = ? "
            f"AND contact_id IN ({_marks(contact_ids)})",
            (list_id, *contact_ids),
        )

    def updates_of_rows(self, row_ids: Sequence[int], recent: int = 5) -> list[sqlite3.Row]:
        """The rows' Mailchimp writes: every one still open, and the last few settled."""
        if not row_ids:
            return []
        marks = _marks(row_ids)
        return self.query(
            f"SELECT * FROM updates WHERE row_id IN ({marks}) AND (state IN ({_marks(_OPEN)}) "
            f"OR id IN (SELECT id FROM updates WHERE row_id IN ({marks}) "
            f"AND state NOT IN ({_marks(_OPEN)}) ORDER BY id DESC LIMIT ?)) ORDER BY id",
            (*row_ids, *_OPEN, *row_ids, *_OPEN, recent),
        )

    def civi_writes_of(self, list_id: str, contact_ids: Sequence[int]) -> list[sqlite3.Row]:
        """CiviCRM writes queued for these contacts in this audience."""
        if not contact_ids:
            return []
        return self.query(
            f"SELECT * FROM civi_writes WHERE list_id = ? AND contact_id IN "
            f"({_marks(contact_ids)}) ORDER BY id",
            (list_id, *contact_ids),
        )

    # -- resync --------------------------------------------------------------------------
    def mark_rows_todo(self, row_ids: Sequence[int]) -> int:
        """These rows are decided again by the next decision over them. Queued Mailchimp
        writes stay (a decision that still makes them keeps them, one a newer change
        overtook drops them); a row with a write in flight is decided again once its result
        is known, as always: deciding it now could queue the same change twice."""
        if not row_ids:
            return 0
        return self.execute(
            f"UPDATE rows SET sync_status = ? WHERE id IN ({_marks(row_ids)}) "
            "AND NOT EXISTS (SELECT 1 FROM updates u WHERE u.row_id = rows.id "
            "AND u.state IN (?, ?))",
            (
                str(RowState.TODO),
                *row_ids,
                str(UpdateState.SUBMITTING),
                str(UpdateState.SUBMITTED),
            ),
        ).rowcount

    def person_contact_ids(self, list_id: str, row_ids: Sequence[int]) -> list[int]:
        """The contacts of these rows (as matched now)."""
        if not row_ids:
            return []
        return [
            int(r[0])
            for r in self.query(
                f"SELECT DISTINCT contact_id FROM rows WHERE list_id = ? AND id IN "
                f"({_marks(row_ids)}) AND contact_id IS NOT NULL ORDER BY contact_id",
                (list_id, *row_ids),
            )
        ]

    def rows_to_decide(self, row_ids: Sequence[int]) -> list[sqlite3.Row]:
        """Of these rows, those waiting to be decided (`todo`), in id order."""
        if not row_ids:
            return []
        return self.query(
            f"SELECT * FROM rows WHERE id IN ({_marks(row_ids)}) AND sync_status = ? ORDER BY id",
            (*row_ids, str(RowState.TODO)),
        )

    def add_contact_rows(self, list_id: str, group_id: int, contact_ids: Sequence[int]) -> None:
        """A row for each of these contacts that is Added to the group, undeleted, and has
        no row in the audience yet (as the run's `add_civicrm_only` stage makes them)."""
        if not contact_ids:
            return
        self.execute(
            "INSERT INTO rows (list_id, contact_id, sync_status) "
            "SELECT ?, g.contact_id, ? FROM group_status g "
            "JOIN contacts c ON c.contact_id = g.contact_id AND c.is_deleted = 0 AND c.gone = 0 "
            f"WHERE g.group_id = ? AND g.status = 'Added' AND g.contact_id IN "
            f"({_marks(contact_ids)}) AND NOT EXISTS "
            "(SELECT 1 FROM rows r WHERE r.contact_id = g.contact_id AND r.list_id = ?)",
            (list_id, str(RowState.TODO), group_id, *contact_ids, list_id),
        )

    def set_group_statuses(
        self, statuses: Sequence[tuple[int, int, str | None, str | None]]
    ) -> None:
        """(contact id, group id, status or None, changed_at or None): what CiviCRM holds
        now, read for one person, with the time of its latest change by a person or staff."""
        self.conn.executemany(
            "INSERT INTO group_status (contact_id, group_id, status, changed_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (contact_id, group_id) DO UPDATE SET "
            "status = excluded.status, changed_at = excluded.changed_at",
            list(statuses),
        )

    def open_update_rows(self, list_id: str) -> set[int]:
        """Rows of the audience with Mailchimp writes queued or in flight."""
        return {
            int(r[0])
            for r in self.query(
                f"SELECT DISTINCT row_id FROM updates WHERE list_id = ? "
                f"AND state IN ({_marks(_OPEN)})",
                (list_id, *_OPEN),
            )
        }

    def held_mailchimp_writes(self, list_id: str) -> int:
        """Mailchimp writes queued and not yet sent (held back by --civicrm-only, or left
        by a run that stopped)."""
        return int(
            self.scalar(
                "SELECT COUNT(*) FROM updates WHERE list_id = ? AND state = ?",
                (list_id, str(UpdateState.QUEUED)),
            )
            or 0
        )

    # -- prune ---------------------------------------------------------------------------
    def staged_audiences(self) -> list[str]:
        """Every list id the staging DB holds data of, in any audience table."""
        union = " UNION ".join(
            f"SELECT DISTINCT list_id FROM {table} WHERE list_id IS NOT NULL"
            for table in AUDIENCE_TABLES
        )
        return sorted(str(r[0]) for r in self.query(union))

    def audience_footprint(self, list_id: str) -> dict[str, Any]:
        """What the staging DB holds of one audience: its group, last sync, rows per table,
        and how many Mailchimp writes are queued or in flight and batches are open."""
        state = self.state(list_id)
        counts = {
            table: int(
                self.scalar(f"SELECT COUNT(*) FROM {table} WHERE list_id = ?", (list_id,)) or 0
            )
            for table in AUDIENCE_TABLES
        }
        open_writes = int(
            self.scalar(
                f"SELECT COUNT(*) FROM updates WHERE list_id = ? AND state IN ({_marks(_OPEN)})",
                (list_id, *_OPEN),
            )
            or 0
        )
        open_batches = int(
            self.scalar(
                "SELECT COUNT(*) FROM batches WHERE list_id = ? "
                "AND status NOT IN ('processed', 'aborted')",
                (list_id,),
            )
            or 0
        )
        return {
            "list_id": list_id,
            "group_id": state.get("group_id"),
            "account": state.get("account"),
            "stage": state.get("stage"),
            "last_sync": state.get("last_sync"),
            "rows": counts,
            "open_writes": open_writes,
            "open_batches": open_batches,
        }

    def delete_audience(self, list_id: str, unused_groups: Sequence[int]) -> dict[str, int]:
        """Delete everything staged for one audience, and the staged memberships of groups
        no configured audience uses (contacts and emails are shared, and stay), in one
        transaction. Returns the rows deleted per table."""
        deleted: dict[str, int] = {}
        with self.atomic():
            for table in AUDIENCE_TABLES:
                deleted[table] = self.execute(
                    f"DELETE FROM {table} WHERE list_id = ?", (list_id,)
                ).rowcount
            deleted["group_status"] = (
                self.execute(
                    f"DELETE FROM group_status WHERE group_id IN ({_marks(unused_groups)})",
                    list(unused_groups),
                ).rowcount
                if unused_groups
                else 0
            )
        return deleted

    # -- a sync of one person --------------------------------------------------------------
    def queued_updates_of_rows(
        self, list_id: str, row_ids: Sequence[int], limit: int
    ) -> list[sqlite3.Row]:
        """The queued updates of these rows only, oldest first."""
        if not row_ids:
            return []
        return self.query(
            f"SELECT * FROM updates WHERE list_id = ? AND state = ? AND row_id IN "
            f"({_marks(row_ids)}) ORDER BY id LIMIT ?",
            (list_id, str(UpdateState.QUEUED), *row_ids, limit),
        )

    def other_civi_writes(self, list_id: str, contact_ids: Sequence[int]) -> int:
        """CiviCRM writes queued in this audience for contacts other than these."""
        others = f"AND contact_id NOT IN ({_marks(contact_ids)})" if contact_ids else ""
        return int(
            self.scalar(
                f"SELECT COUNT(*) FROM civi_writes WHERE list_id = ? {others}",
                (list_id, *contact_ids),
            )
            or 0
        )

    def unmatched_rows_of(self, list_id: str, emails: Sequence[str]) -> list[int]:
        """Member rows holding these addresses with no contact matched."""
        folded = sorted({fold_email(e) for e in emails if e})
        if not folded:
            return []
        return [
            int(r[0])
            for r in self.query(
                f"SELECT id FROM rows WHERE list_id = ? AND contact_id IS NULL "
                f"AND +mc_hash IS NOT NULL AND fold_email(mc_email) IN ({_marks(folded)})",
                (list_id, *folded),
            )
        ]

    # -- Mailchimp writes held back (--civicrm-only) ----------------------------------------
    def redecide_held_writes(self, list_id: str) -> int:
        """Rows with Mailchimp writes queued by an earlier run and never sent go back to be
        decided (the queued writes stay: a decision that still makes them keeps them). A row
        with a write in flight waits for its result, as always."""
        in_flight = (str(UpdateState.SUBMITTING), str(UpdateState.SUBMITTED))
        return self.execute(
            "UPDATE rows SET sync_status = ? WHERE list_id = ? AND sync_status != ? "
            "AND id IN (SELECT row_id FROM updates WHERE list_id = ? AND state = ?) "
            "AND NOT EXISTS (SELECT 1 FROM updates u WHERE u.row_id = rows.id "
            "AND u.state IN (?, ?))",
            (
                str(RowState.TODO),
                list_id,
                str(RowState.TODO),
                list_id,
                str(UpdateState.QUEUED),
                *in_flight,
            ),
        ).rowcount

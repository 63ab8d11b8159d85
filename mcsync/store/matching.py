"""Matching staged members to contacts: which contact a member row belongs to.

What the match stages read and write: contact ids that no longer point at a usable contact,
members matched to the owners of their address by the matching order (seed-behaviour §4.2,
set-based SQL whose specification is `mcsync.rules.matching.choose_contact`), rows of
members a contact is being created for, removals by trashed owners of an address, rows of
contacts Added in CiviCRM with no member, and the CiviCRM change dates loaded where the two
sides disagree.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from mcsync.rules.member_state import SUBSCRIBED_STATUSES
from mcsync.store.base import StoreBase
from mcsync.store.states import RowState

_SUBSCRIBED = ", ".join(f"'{status}'" for status in sorted(SUBSCRIBED_STATUSES))


class MatchStore(StoreBase):
    """Contact ids on member rows, and the rows the match stages work through."""

    # contacts_to_date's list: (audience key, the cursor it continues from, the contacts,
    # where that cursor is in them)
    _contacts_to_date: tuple[tuple[Any, ...], int, list[int], int] | None = None

    # -- contact ids that no longer hold ----------------------------------------------------
    def clear_unusable_contacts(self, list_id: str) -> None:
        """Rows pointing at trashed, merged-away or hard-deleted contacts lose the contact id
        and are decided again (seed-behaviour §4.1); rows left with neither side are dropped.
        A trashed contact is remembered (`trashed_contact_id`): what it chose still counts
        when it no longer has the member's address (`match.match_emails`)."""
        with self.atomic():
            self.conn.execute(
                "UPDATE rows SET trashed_contact_id = contact_id WHERE list_id = ? AND "
                "contact_id IN (SELECT contact_id FROM contacts WHERE is_deleted = 1)",
                (list_id,),
            )
            self.conn.execute(
                f"UPDATE rows SET contact_id = NULL, sync_status = '{RowState.TODO}' "
                "WHERE list_id = ? AND contact_id IN "
                "(SELECT contact_id FROM contacts WHERE is_deleted = 1 OR gone = 1)",
                (list_id,),
            )
            self.conn.execute(
                "DELETE FROM rows WHERE list_id = ? AND contact_id IS NULL AND mc_hash IS NULL",
                (list_id,),
            )

    # -- matching by address -----------------------------------------------------------------
    def unmatched_member_emails(self, list_id: str, after_id: int, limit: int) -> list[sqlite3.Row]:
        """Member rows with an address and no contact, in id order after ``after_id``: the
        addresses whose owners the match stage looks up."""
        return self.query(
            "SELECT id, mc_email, mc_status, mc_status_at, mc_status_after, mc_last_changed, "
            "mc_interests_at, trashed_contact_id FROM rows WHERE list_id = ? "
            "AND contact_id IS NULL "
            "AND mc_email IS NOT NULL AND id > ? ORDER BY id LIMIT ?",
            (list_id, after_id, limit),
        )

    def assign_contacts(self, group_id: int, row_ids: Sequence[int]) -> None:
        """Match these member rows to the staged owners of their address, by the matching
        order (seed-behaviour §4.2): among owners not trashed and not gone, the sole owner →
        the lowest id Added to the subscription group → the lowest id with any history in it
        → the lowest id. Any staged membership of the group counts as history: each comes
        from a GroupContact or history row, and one whose GroupContact was deleted stays
        staged with no status (undated, once a full run no longer finds it in the group).
        Rows with no owner keep none. Set-based over the staged emails
        (the hot path of matching: one statement per chunk); `rules.matching.choose_contact`
        is its specification, and tests/test_matching_twins.py checks that the two agree."""
        if not row_ids:
            return
        placeholders = ",".join("?" * len(row_ids))
        self.conn.execute(
            f"""
            WITH owners AS (
                SELECT r.id AS row_id, e.contact_id,
                       COALESCE(g.status = 'Added', 0) AS added,
                       g.contact_id IS NOT NULL AS has_history
                FROM rows r
                JOIN emails e ON e.email_lc = fold_email(r.mc_email)
                JOIN contacts c ON c.contact_id = e.contact_id AND c.is_deleted = 0 AND c.gone = 0
                LEFT JOIN group_status g ON g.contact_id = e.contact_id AND g.group_id = ?
                WHERE r.id IN ({placeholders})
                GROUP BY r.id, e.contact_id
            ),
            ranked AS (
                SELECT row_id, contact_id,
                       ROW_NUMBER() OVER (
                           PARTITION BY row_id ORDER BY added DESC, has_history DESC, contact_id
                       ) AS rank
                FROM owners
            )
            UPDATE rows SET contact_id = ranked.contact_id, sync_status = '{RowState.TODO}',
                creating = 0
            FROM ranked WHERE ranked.row_id = rows.id AND ranked.rank = 1
            """,
            (group_id, *row_ids),
        )

    def unmatched_member_rows(self, list_id: str, hashes: list[str]) -> list[int]:
        """The ids of these members' rows that have no contact yet (to be matched)."""
        if not hashes:
            return []
        marks = ",".join("?" * len(hashes))
        return [
            r[0]
            for r in self.query(
                f"SELECT id FROM rows WHERE list_id = ? AND contact_id IS NULL "
                f"AND mc_hash IN ({marks})",
                (list_id, *hashes),
            )
        ]

    # -- creating contacts for new subscribers ----------------------------------------------
    def rows_to_create(self, list_id: str, limit: int) -> list[sqlite3.Row]:
        """Unmatched subscribed or pending members a contact may be created for (seed §4.3),
        first in id order: not failed, and not members whose subscribe a trashed owner's
        later removal or privacy flag outranks. Rows still flagged `creating` come back too:
        a run stopped mid-create, whose rows are looked up by address again before anything
        is created."""
        return self.query(
            "SELECT id, mc_email, mc_fname, mc_lname, creating FROM rows WHERE list_id = ? "
            f"AND contact_id IS NULL AND mc_email IS NOT NULL AND mc_status IN ({_SUBSCRIBED}) "
            f"AND sync_status != '{RowState.FAIL}' AND trashed_removal_at IS NULL "
            "AND trashed_flag_by IS NULL ORDER BY id LIMIT ?",
            (list_id, limit),
        )

    def mark_creating(self, row_ids: Sequence[int]) -> None:
        """Flag rows whose contacts are about to be created, committed before the request: a
        run stopped before it learns the new ids matches these rows by address first, so a
        retry never creates a second contact."""
        with self.atomic():
            self.conn.executemany(
                "UPDATE rows SET creating = 1 WHERE id = ?", [(i,) for i in row_ids]
            )

    def set_created_contacts(self, created: Sequence[tuple[int, int]]) -> None:
        """(row id, new contact id): the contacts created for these rows; decided again."""
        self.conn.executemany(
            f"UPDATE rows SET contact_id = ?, creating = 0, sync_status = '{RowState.TODO}' "
            "WHERE id = ?",
            [(contact_id, row_id) for row_id, contact_id in created],
        )

    def stop_creating_unmatched(self, row_ids: Sequence[int]) -> None:
        """Rows looked up by address again after an interrupted create and still without a
        contact: no contact of theirs exists, so one may be created for them."""
        self.conn.executemany(
            "UPDATE rows SET creating = 0 WHERE id = ? AND contact_id IS NULL",
            [(i,) for i in row_ids],
        )

    # -- removals by trashed contacts ---------------------------------------------------------
    # -- contacts Added in CiviCRM with no member --------------------------------------------
    def add_civicrm_only_rows(self, list_id: str, group_id: int) -> None:
        """A row per contact Added to the group, not trashed or gone, that has none in this
        audience: a contact-only row, to be decided (seed-behaviour §3.4)."""
        self.conn.execute(
            f"INSERT INTO rows (list_id, contact_id, sync_status) "
            f"SELECT ?, g.contact_id, '{RowState.TODO}' FROM group_status g "
            "JOIN contacts c ON c.contact_id = g.contact_id AND c.is_deleted = 0 AND c.gone = 0 "
            "WHERE g.group_id = ? AND g.status = 'Added' AND NOT EXISTS "
            "(SELECT 1 FROM rows r WHERE r.contact_id = g.contact_id AND r.list_id = ?)",
            (list_id, group_id, list_id),
        )

    def drop_contact_rows_with_members(self, list_id: str) -> None:
        """Contact-only rows whose contact also has a member row are redundant
        (seed-behaviour §3.4); one with a write on its way is kept until its result. Each
        contact-only row looks up its contact's member rows by index (a list of every member
        row's contact, built first, cost a read of every member row in every run)."""
        self.conn.execute(
            "DELETE FROM rows WHERE list_id = ? AND mc_hash IS NULL "
            f"AND sync_status != '{RowState.LIVE}' "
            "AND EXISTS (SELECT 1 FROM rows m WHERE m.contact_id = rows.contact_id "
            "AND m.list_id = ? AND m.mc_hash IS NOT NULL)",
            (list_id, list_id),
        )

    def contacts_without_emails(self, list_id: str) -> list[int]:
        """Contacts of contact-only rows with no staged email: their addresses are needed
        to choose the one to subscribe."""
        return [
            r[0]
            for r in self.query(
                "SELECT r.contact_id FROM rows r WHERE r.list_id = ? AND r.mc_hash IS NULL "
                "AND r.contact_id IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM emails e WHERE e.contact_id = r.contact_id)",
                (list_id,),
            )
        ]

    # -- CiviCRM change dates where the sides disagree ---------------------------------------
    def contacts_to_date(
        self,
        list_id: str,
        group_id: int,
        interest_groups: Mapping[str, int],
        after_id: int,
        limit: int,
    ) -> list[int]:
        """Contacts (in id order after ``after_id``) of rows to decide whose CiviCRM change
        time is needed and not staged: a staged membership without a date that disagrees with
        the Mailchimp side, or a membership absent with no date while Mailchimp says
        subscribed or interested (a GroupContact deleted in CiviCRM leaves only its history,
        which a full run never reads). Only disagreements need a date, so the cost follows
        the number of changes.

        The stage asks for them a chunk at a time, and finding them reads every row to
        decide (all of a full run's), so they are listed once, when the stage starts or
        resumes, and each later chunk continues that list: asked afresh per chunk, the 1M
        mixed first sync spent four minutes here. Dating a chunk changes nothing the list
        holds after it."""
        key = (list_id, group_id, tuple(sorted(interest_groups.items())))
        listed = self._contacts_to_date
        if listed is None or listed[0] != key or listed[1] != after_id:
            disagree, params = _disagreement_sql(group_id, interest_groups)
            absent, absent_params = _absent_membership_sql(group_id, interest_groups)
            found = [
                r[0]
                for r in self.query(
                    "SELECT DISTINCT r.contact_id FROM rows r "
                    f"WHERE r.list_id = ? AND r.sync_status = '{RowState.TODO}' "
                    "AND r.contact_id > ? "
                    "AND (EXISTS (SELECT 1 FROM group_status g WHERE g.contact_id = "
                    "r.contact_id AND g.changed_at IS NULL AND g.status IS NOT NULL "
                    f"AND ({disagree})) OR {absent}) ORDER BY r.contact_id",
                    (list_id, after_id, *params, *absent_params),
                )
            ]
            listed = (key, after_id, found, 0)
        _, _, found, start = listed
        chunk = found[start : start + limit]
        # The next call continues only from this chunk's last contact; any other cursor (a
        # chunk not committed, another run or stage) lists them again.
        self._contacts_to_date = (key, chunk[-1] if chunk else after_id, found, start + limit)
        return chunk

    def undated_group_statuses(
        self, contact_ids: list[int], group_ids: list[int]
    ) -> list[tuple[int, int, str | None]]:
        """Staged memberships of these contacts in these groups without a change date
        (status None: staged as not a member)."""
        if not contact_ids or not group_ids:
            return []
        contacts = ",".join("?" * len(contact_ids))
        groups = ",".join("?" * len(group_ids))
        rows = self.query(
            f"SELECT contact_id, group_id, status FROM group_status WHERE contact_id IN "
            f"({contacts}) AND group_id IN ({groups}) AND changed_at IS NULL",
            (*contact_ids, *group_ids),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    def date_group_statuses(self, dated: Sequence[tuple[str, int, int]]) -> None:
        """(time, contact id, group id): the CiviCRM change time of staged memberships
        that had none, from their latest history row not written by mcsync."""
        self.conn.executemany(
            "UPDATE group_status SET changed_at = ? WHERE contact_id = ? AND group_id = ? "
            "AND changed_at IS NULL AND status IS NOT NULL",
            dated,
        )

    def restage_group_statuses(self, statuses: Sequence[tuple[int, int, Any, Any]]) -> None:
        """(contact id, group id, status or None, time or None): memberships staff changed
        after the run read them, staged as CiviCRM holds them now, dated by their own latest
        history row (None: undated, as a membership without history)."""
        self.conn.executemany(
            "INSERT INTO group_status (contact_id, group_id, status, changed_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (contact_id, group_id) DO UPDATE SET "
            "status = excluded.status, changed_at = excluded.changed_at",
            statuses,
        )

    def date_deletions(self, deletions: Sequence[tuple[int, int, str]]) -> None:
        """(contact id, group id, time): absent memberships whose latest history is a
        deletion: not in the group since that time (a removal at its date, issue 10)."""
        self.conn.executemany(
            "INSERT INTO group_status (contact_id, group_id, status, changed_at) "
            "VALUES (?, ?, NULL, ?) ON CONFLICT (contact_id, group_id) DO UPDATE SET "
            "changed_at = excluded.changed_at "
            "WHERE group_status.status IS NULL AND group_status.changed_at IS NULL",
            deletions,
        )

    def set_trashed_choices(
        self, choices: list[tuple[str | None, str | None, str | None, str | None, int]]
    ) -> None:
        """(removal, flag after, flag by, interest removals as JSON, row id): what trashed
        owners of each row's address chose that may outrank its member's subscribe or
        interests (see `match.match_emails`)."""
        self.conn.executemany(
            "UPDATE rows SET trashed_removal_at = ?, trashed_flag_after = ?, trashed_flag_by = ?, "
            "trashed_interest_removals = ? WHERE id = ?",
            choices,
        )

    def flag_marks(self, contact_ids: Sequence[int]) -> dict[int, tuple[str | None, str | None]]:
        """contact id → (when mcsync last saw it without a privacy flag, when it first saw
        the present flags set), both UTC, for the staged ones of these contacts."""
        marks: dict[int, tuple[str | None, str | None]] = {}
        for start in range(0, len(contact_ids), 500):
            part = list(contact_ids[start : start + 500])
            placeholders = ",".join("?" * len(part))
            for row in self.conn.execute(
                "SELECT contact_id, unflagged_at, flags_at FROM contacts "
                f"WHERE contact_id IN ({placeholders})",
                part,
            ):
                marks[int(row[0])] = (row[1], row[2])
        return marks


def _absent_membership_sql(
    group_id: int, interest_groups: Mapping[str, int]
) -> tuple[str, list[Any]]:
    """SQL true when the row `r` is subscribed (or interested) at Mailchimp while the
    contact has no membership staged for that group and no date for its absence."""
    unknown = (
        "NOT EXISTS (SELECT 1 FROM group_status g WHERE g.contact_id = r.contact_id "
        "AND g.group_id = ? AND (g.status IS NOT NULL OR g.changed_at IS NOT NULL))"
    )
    clauses = [f"(COALESCE(r.mc_status, '') IN ({_SUBSCRIBED}) AND {unknown})"]
    params: list[Any] = [group_id]
    for interest_id, interest_group in interest_groups.items():
        clauses.append(f"(json_extract(r.mc_interests, ?) = 1 AND {unknown})")
        params.extend([f'$."{interest_id}"', interest_group])
    return "(" + " OR ".join(clauses) + ")", params


def _disagreement_sql(group_id: int, interest_groups: Mapping[str, int]) -> tuple[str, list[Any]]:
    """SQL true when a staged pair `g` disagrees with the row `r`'s Mailchimp side, or its
    date decides whether a trashed co-owner's removal outranks it (`trashed_removal_at`,
    `trashed_interest_removals`)."""
    clauses = [
        "(g.group_id = ? AND ((g.status = 'Added') != "
        f"(COALESCE(r.mc_status, '') IN ({_SUBSCRIBED})) "
        "OR r.trashed_removal_at IS NOT NULL))"
    ]
    params: list[Any] = [group_id]
    for interest_id, interest_group in interest_groups.items():
        clauses.append(
            "(g.group_id = ? AND ((g.status = 'Added') IS NOT json_extract(r.mc_interests, ?) "
            "OR json_extract(r.trashed_interest_removals, ?) IS NOT NULL))"
        )
        params.extend([interest_group, f'$."{interest_id}"', f'$."{interest_group}"'])
    return " OR ".join(clauses), params

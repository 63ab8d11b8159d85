"""Profile changes: names edited at Mailchimp on their way to CiviCRM, and email addresses
changed in CiviCRM on their way to Mailchimp (issue 13, items 1 and 2).

What mcsync knew Mailchimp had for each name merge tag is kept with the merge fields it pushed
(`rows.pushed_merge`), so a name Mailchimp shows that mcsync did not put there is a person's
edit, and mcsync's own push never reads as one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from mcsync.store.base import StoreBase
from mcsync.store.states import OPEN_UPDATE_STATES, RowState

_OPEN = ", ".join(f"'{state}'" for state in OPEN_UPDATE_STATES)


class ProfileStore(StoreBase):
    """Name edits found in fetched members, and member address changes."""

    # -- names edited at Mailchimp ---------------------------------------------------------
    def baseline_names(self, list_id: str, run_id: str, tags: Sequence[str]) -> None:
        """Members read by this run (to be decided: new ones are) with no known value for a
        name tag yet (first seen, or staged by an older mcsync): what they have now is what
        mcsync knows, not an edit. Known values are kept (json_patch: the stored map wins)."""
        if not tags:
            return
        columns = {"FNAME": "mc_fname", "LNAME": "mc_lname"}
        pairs = ", ".join(f"'{tag}', COALESCE({columns[tag]}, '')" for tag in tags)
        missing = " OR ".join(f"json_extract(pushed_merge, '$.{tag}') IS NULL" for tag in tags)
        self.execute(
            f"UPDATE rows SET pushed_merge = json_patch(json_object({pairs}), pushed_merge) "
            f"WHERE list_id = ? AND sync_status = '{RowState.TODO}' AND mc_seen_run = ? "
            f"AND ({missing})",
            (list_id, run_id),
        )

    def name_edits(
        self, list_id: str, run_id: str, tags: Sequence[str], after_id: int, limit: int
    ) -> list[sqlite3.Row]:
        """Member rows read by this run and to be decided (the fetch reopens a row whose
        name changed), in id order after ``after_id``, of a live contact, whose non-empty
        FNAME or LNAME differs from what mcsync knew Mailchimp had."""
        tests = []
        params: list[Any] = [list_id, run_id, after_id]
        for tag in tags:
            column = {"FNAME": "mc_fname", "LNAME": "mc_lname"}[tag]
            tests.append(
                f"(TRIM(COALESCE(r.{column}, '')) != '' AND TRIM(r.{column}) IS NOT "
                f"TRIM(COALESCE(json_extract(r.pushed_merge, ?), '')))"
            )
            params.append(f"$.{tag}")
        if not tests:
            return []
        params.append(limit)
        return self.query(
            "SELECT r.id, r.contact_id, r.mc_fname, r.mc_lname, r.mc_last_changed, "
            "r.pushed_merge FROM rows r JOIN contacts c ON c.contact_id = r.contact_id "
            f"WHERE r.list_id = ? AND r.sync_status = '{RowState.TODO}' AND r.mc_seen_run = ? "
            "AND r.id > ? "
            "AND c.is_deleted = 0 AND c.gone = 0 "
            f"AND ({' OR '.join(tests)}) ORDER BY r.id LIMIT ?",
            params,
        )

    def reopen_name_edits(self, list_id: str, run_id: str | None) -> int:
        """After a preview (which copies no names): the rows this run read whose name differs
        from what mcsync knows are decided again, so the real run copies them."""
        return self.execute(
            f"UPDATE rows SET sync_status = '{RowState.TODO}' WHERE list_id = ? "
            f"AND mc_seen_run = ? AND sync_status IN ('{RowState.OK}', '{RowState.FAIL}') "
            "AND ((TRIM(COALESCE(mc_fname, '')) != '' AND TRIM(mc_fname) IS NOT "
            "TRIM(COALESCE(json_extract(pushed_merge, '$.FNAME'), ''))) "
            "OR (TRIM(COALESCE(mc_lname, '')) != '' AND TRIM(mc_lname) IS NOT "
            "TRIM(COALESCE(json_extract(pushed_merge, '$.LNAME'), ''))))",
            (list_id, run_id),
        ).rowcount

    def names_seen(self, known: Sequence[tuple[int, dict[str, str]]]) -> None:
        """(row id, {tag: value}): Mailchimp has these names, and mcsync now knows it (the
        edit was applied, or a newer CiviCRM name is to be sent over it by the feed)."""
        for row_id, values in known:
            for tag, value in values.items():
                self.execute(
                    "UPDATE rows SET pushed_merge = json_set(pushed_merge, ?, ?) WHERE id = ?",
                    (f"$.{tag}", value, row_id),
                )

    def contact_names_written(self, written: Sequence[tuple[int, dict[str, str]]]) -> None:
        """(contact id, {field: value}) names written to CiviCRM: staged as the contact has
        them now, and its rows decided again (the feed re-reads them before deciding)."""
        for contact_id, fields in written:
            for field, value in fields.items():
                if field in ("first_name", "last_name"):
                    self.execute(
                        f"UPDATE contacts SET {field} = ? WHERE contact_id = ?",
                        (value, contact_id),
                    )

    def reopen_rows_of_contacts(self, list_id: str, contact_ids: Sequence[int]) -> None:
        """Decide these contacts' rows again this run (not those with writes in flight)."""
        self.conn.executemany(
            f"UPDATE rows SET sync_status = '{RowState.TODO}' WHERE list_id = ? "
            f"AND contact_id = ? AND sync_status != '{RowState.LIVE}'",
            [(list_id, contact_id) for contact_id in contact_ids],
        )

    # -- email changes made in CiviCRM -----------------------------------------------------
    def email_change_candidates(
        self,
        list_id: str,
        after_id: int,
        limit: int,
        *,
        modified_from: str | None,
        only_rows: Sequence[int] | None = None,
    ) -> list[sqlite3.Row]:
        """Subscribed members (in id order after ``after_id``) whose contact has a bulk-mail
        or primary email, not on hold, that is not the member's address, and that have no
        write queued or in flight (it would go to the old address): rows whose address may
        follow the contact's (`decide_email_change` decides). ``modified_from`` (CiviCRM's
        local time): only contacts modified since then (an incremental run's window, which
        re-reads their emails); None: every row (a full run)."""
        params: list[Any] = []
        scope = ""
        if modified_from is not None:
            # Driven from the contacts modified (few) to their rows (rows_by_contact).
            scope = (
                "AND r.id IN (SELECT m.id FROM contacts c CROSS JOIN rows m "
                "ON m.contact_id = c.contact_id AND m.list_id = ? WHERE c.modified_date >= ?)"
            )
            params.extend([list_id, modified_from])
        params = [list_id, after_id, *params]
        # With the scope, rows are found by id from the few contacts modified; without it, by
        # the row id range after the cursor, in order. `+` keeps the planner from walking
        # every row of the audience by a list_id or contact_id index and sorting them, for
        # every chunk (quadratic: 2.5 minutes of the 1M mixed first sync).
        if only_rows is not None:
            scope += f" AND r.id IN ({','.join('?' * len(only_rows))})"
            params.extend(only_rows)
        params.append(limit)
        return self.query(
            f"SELECT r.* FROM rows r WHERE +r.list_id = ? AND r.id > ? {scope} "
            "AND r.mc_status = 'subscribed' AND r.mc_hash IS NOT NULL "
            f"AND +r.contact_id IS NOT NULL AND r.sync_status != '{RowState.LIVE}' "
            "AND EXISTS (SELECT 1 FROM emails e WHERE e.contact_id = r.contact_id "
            "AND e.on_hold = 0 AND (e.is_bulkmail = 1 OR e.is_primary = 1) "
            "AND e.email_lc != fold_email(r.mc_email)) "
            "AND NOT EXISTS (SELECT 1 FROM updates u WHERE u.row_id = r.id "
            f"AND u.state IN ({_OPEN})) ORDER BY r.id LIMIT ?",
            params,
        )

    def member_email_changed(
        self, row_id: int, member_hash: str, email: str, last_changed: str | None
    ) -> bool:
        """Mailchimp moved the row's member to a new address (same unique_email_id, new
        hash): the row follows it, so the next fetch finds the member where it is. Its
        ``last_changed`` is the change's, so the next fetch does not read the move as a
        possible status round trip. False when another staged row already holds that hash
        (then that row carries on, as after an address change seen by a fetch)."""
        try:
            self.execute(
                "UPDATE rows SET mc_hash = ?, mc_email = ?, "
                "mc_last_changed = COALESCE(?, mc_last_changed), "
                "refusal_reason = CASE WHEN refusal_reason IN (?, ?, ?) THEN NULL "
                "ELSE refusal_reason END, reason = CASE WHEN reason IN (?, ?, ?) THEN NULL "
                "ELSE reason END, reason_detail = CASE WHEN reason IN (?, ?, ?) THEN NULL "
                f"ELSE reason_detail END, sync_status = CASE WHEN sync_status = '{RowState.FAIL}' "
                f"AND reason IN (?, ?, ?) THEN '{RowState.OK}' ELSE sync_status END WHERE id = ?",
                (member_hash, email, last_changed, *EMAIL_REFUSALS * 4, row_id),
            )
        except sqlite3.IntegrityError:
            return False
        return True

    def email_change_refused(
        self,
        row_id: int,
        reason: str,
        detail: str | None,
        refused_email: str | None,
        civicrm_changed_at: str | None,
    ) -> None:
        """Mailchimp refused (or refused before) to move the member to the contact's new
        address: the row reports why. ``refused_email`` stores a lasting refusal, not asked
        again until CiviCRM's subscription changes (as a refused subscribe)."""
        if refused_email is not None:
            self.execute(
                "UPDATE rows SET refusal_reason = ?, refusal_email = ?, refusal_civi_at = ? "
                "WHERE id = ?",
                (reason, refused_email, civicrm_changed_at, row_id),
            )
        self.execute(
            f"UPDATE rows SET sync_status = '{RowState.FAIL}', reason = ?, reason_detail = ? "
            f"WHERE id = ? AND sync_status != '{RowState.LIVE}'",
            (reason, detail, row_id),
        )

    def subscription_changed_at(self, contact_id: int, group_id: int) -> str | None:
        """When the contact's subscription group last changed in CiviCRM, as staged."""
        value = self.scalar(
            "SELECT changed_at FROM group_status WHERE contact_id = ? AND group_id = ?",
            (contact_id, group_id),
        )
        return None if value is None else str(value)


EMAIL_REFUSALS = ("new_email_in_use", "email_change_not_subscribed", "new_email_forgotten")
"""Reasons an email change was refused (`rules.reasons.EMAIL_CHANGE_REASONS`)."""

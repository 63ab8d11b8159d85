"""Staged Mailchimp members: the member side of `rows` as fetched from Mailchimp.

What the Mailchimp fetch stages read and write: members upserted page by page (a hot path:
tuned raw SQL, one `executemany` per page), addresses followed through a change at
Mailchimp, members a full fetch did not see (confirmed before they count as gone), members
of an incremental window the paging skipped, CiviCRM-only contacts checked at Mailchimp
before they are subscribed as new, and status changes dated by the activity feed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from mcsync.rules.member_state import SUBSCRIBED_STATUSES
from mcsync.store.base import StoreBase
from mcsync.store.states import RowState

_SUBSCRIBED = ", ".join(f"'{status}'" for status in sorted(SUBSCRIBED_STATUSES))

# When a member found deleted permanently is taken to have gone (`mark_members_gone`): the
# later of its last change mcsync read and the start of the run that last read it there.
_GONE_AT = "MAX(COALESCE(mc_last_changed, ''), COALESCE(mc_seen_civi, ''))"

NEW_MEMBER_COLUMNS = (
    "list_id",
    "mc_hash",
    "mc_email",
    "mc_status",
    "mc_last_changed",
    "mc_status_at",
    "mc_fname",
    "mc_lname",
    "mc_interests",
    "mc_interests_at",
    "mc_unique_id",
    "mc_seen_run",
    "mc_seen_civi",
)
"""The values of a member staged for the first time, in the order `insert_members` takes."""

READ_MEMBER_COLUMNS = (
    "mc_status",
    "mc_last_changed",
    "mc_status_at",
    "mc_status_after",
    "mc_fname",
    "mc_lname",
    "mc_interests",
    "mc_interests_at",
    "sync_status",
    "mc_seen_run",
    "mc_seen_civi",
    "mc_unique_id",
)
"""The values of a staged member read again, in the order `update_members` takes (then the
row id). A row staged before Mailchimp had answered for it (a member mcsync created) gets its
``unique_email_id`` here: an address change at Mailchimp is followed by it."""


class MemberStore(StoreBase):
    """Member rows as Mailchimp reports them, and what the fetch stages ask of them."""

    # -- merging fetched pages (hot path) ----------------------------------------------------
    def members_by_hash(self, list_id: str, hashes: Sequence[str]) -> list[sqlite3.Row]:
        """The staged rows of these members (whole rows: a merge compares every field)."""
        if not hashes:
            return []
        marks = ",".join("?" * len(hashes))
        return self.query(
            f"SELECT * FROM rows WHERE list_id = ? AND mc_hash IN ({marks})",
            (list_id, *hashes),
        )

    def members_by_unique_id(self, list_id: str, unique_ids: Sequence[str]) -> list[sqlite3.Row]:
        """Staged rows holding these unique_email_ids: Mailchimp keeps a member's
        unique_email_id through an address change, which changes its hash."""
        if not unique_ids:
            return []
        marks = ",".join("?" * len(unique_ids))
        return self.query(
            f"SELECT * FROM rows WHERE list_id = ? AND mc_unique_id IN ({marks})",
            (list_id, *unique_ids),
        )

    def insert_members(self, members: Sequence[tuple[Any, ...]]) -> None:
        """Stage members read for the first time (values in `NEW_MEMBER_COLUMNS` order):
        new facts, so each is to be decided."""
        if not members:
            return
        self.conn.executemany(
            f"INSERT INTO rows ({', '.join(NEW_MEMBER_COLUMNS)}, sync_status) "
            f"VALUES ({', '.join('?' * len(NEW_MEMBER_COLUMNS))}, '{RowState.TODO}')",
            members,
        )

    def update_members(self, members: Sequence[tuple[Any, ...]]) -> None:
        """Restage members read again (values in `READ_MEMBER_COLUMNS` order, then the row
        id); the caller decides `sync_status`, since only a relevant change reopens a row."""
        if not members:
            return
        assignments = ", ".join(
            f"{column} = COALESCE(?, {column})" if column == "mc_unique_id" else f"{column} = ?"
            for column in READ_MEMBER_COLUMNS
        )
        self.conn.executemany(f"UPDATE rows SET {assignments} WHERE id = ?", members)

    def baseline_merge_fields(self, list_id: str, values: Sequence[tuple[str, str]]) -> None:
        """(member hash, JSON of Mailchimp's merge values): count them as the last known
        values of tags mcsync has not pushed yet, so a first sync does not rewrite values
        that already agree. Values mcsync pushed are kept (json_patch: the stored map wins)."""
        self.conn.executemany(
            "UPDATE rows SET pushed_merge = json_patch(?, pushed_merge) "
            "WHERE list_id = ? AND mc_hash = ?",
            [(merge, list_id, member) for member, merge in values],
        )

    def follow_email_change(
        self, list_id: str, row_id: int, member_hash: str, email: str | None
    ) -> dict[str, Any]:
        """A staged member whose address changed at Mailchimp (same unique_email_id, new
        hash): move its row to the new hash and address, and queue the new address for its
        contact as a CiviCRM `email` write (a fact learned at Mailchimp, not a decision: no
        later fetch sees the old address again). Returns the row as it is now. Rare, so it
        goes through sqlite-utils."""
        rows = self.db.table("rows")
        rows.update(row_id, {"mc_hash": member_hash, "mc_email": email})
        moved = rows.get(row_id)
        if moved["contact_id"] is not None and email:
            self.conn.execute(
                "INSERT OR IGNORE INTO civi_writes (list_id, kind, contact_id, email) "
                "VALUES (?, 'email', ?, ?)",
                (list_id, moved["contact_id"], email),
            )
        return moved

    # -- members absent from a full fetch ---------------------------------------------------
    def seen_any_member(self, list_id: str, run_id: str) -> bool:
        """Did this run read at least one member (an empty answer is never "everyone left")?"""
        return bool(
            self.scalar(
                "SELECT 1 FROM rows WHERE list_id = ? AND mc_seen_run = ? LIMIT 1",
                (list_id, run_id),
            )
        )

    def unseen_members(
        self, list_id: str, run_id: str, after_id: int, limit: int
    ) -> list[sqlite3.Row]:
        """Staged members this full run has not read (in id order after ``after_id``): the
        candidates for "gone", each to be confirmed before it is treated so. Rows with writes
        on their way are left alone, as before."""
        return self.query(
            "SELECT id, mc_hash, mc_unique_id FROM rows WHERE list_id = ? AND id > ? "
            "AND mc_hash IS NOT NULL AND mc_seen_run IS NOT ? AND mc_status IS NOT 'archived' "
            f"AND sync_status != '{RowState.LIVE}' ORDER BY id LIMIT ?",
            (list_id, after_id, run_id, limit),
        )

    def member_not_found(self, row_id: int) -> None:
        """A write found no member at the row's address (``mark_members_gone`` for one row
        whose write is settling): not subscribed, dated as a member found gone is
        (`_GONE_AT`), and the row decided again."""
        self.conn.execute(
            f"UPDATE rows SET mc_status = 'archived', mc_status_at = {_GONE_AT}, "
            f"sync_status = '{RowState.TODO}' WHERE id = ?",
            (row_id,),
        )

    def mark_members_gone(self, list_id: str, hashes: list[str]) -> None:
        """Members confirmed deleted permanently (a direct read answered 404): not subscribed,
        to be reconciled. When they went is unknown, only that it was after the last change
        mcsync read of them and after the run that last read them began (``mc_seen_civi``,
        on CiviCRM's clock), so they are dated at the later of the two: a CiviCRM change made
        since is never overwritten by the deletion (DESIGN §4), and one made before that run
        read the member there is older than the deletion, which wins over it (model seed
        105: a contact Added, the member read there afterwards, then deleted, was subscribed
        again as new). Archived members are read with their own ``last_changed`` instead
        (``merge_members``)."""
        self.conn.executemany(
            f"UPDATE rows SET mc_status = 'archived', mc_status_at = {_GONE_AT}, "
            f"sync_status = '{RowState.TODO}' "
            "WHERE list_id = ? AND mc_hash = ? AND mc_status IS NOT 'archived' "
            f"AND sync_status != '{RowState.LIVE}'",
            [(list_id, h) for h in hashes],
        )

    # -- members of an incremental window the paging skipped ---------------------------------
    def unread_members(
        self, list_id: str, run_id: str, listed: list[tuple[str, str | None]]
    ) -> list[tuple[str, str | None]]:
        """Of the members listed as ``(subscriber_hash, last_changed)``, those this run has
        not read and that are not staged at that last_changed already (a member staged at
        its current version has nothing new to read): ``(subscriber_hash, unique_email_id)``
        keys to read directly."""
        if not listed:
            return []
        marks = ",".join("?" * len(listed))
        known = {
            r["mc_hash"]: r
            for r in self.query(
                f"SELECT mc_hash, mc_last_changed, mc_seen_run, mc_unique_id FROM rows "
                f"WHERE list_id = ? AND mc_hash IN ({marks})",
                (list_id, *(h for h, _ in listed)),
            )
        }
        unread: list[tuple[str, str | None]] = []
        for member_hash, last_changed in listed:
            row = known.get(member_hash)
            if row is None:
                unread.append((member_hash, None))
            elif row["mc_seen_run"] != run_id and row["mc_last_changed"] != last_changed:
                unread.append((member_hash, row["mc_unique_id"]))
        return unread

    # -- CiviCRM-only contacts checked at Mailchimp -----------------------------------------
    def civicrm_only_added(
        self, list_id: str, group_id: int, after_id: int, limit: int, *, privacy_flags: bool
    ) -> list[sqlite3.Row]:
        """Rows of contacts Added to the group with no member row (in id order after
        ``after_id``): what a run would subscribe at Mailchimp as new. With ``privacy_flags``,
        contacts that would not be subscribed anyway are left out."""
        flags = (
            "AND c.is_deceased = 0 AND c.do_not_email = 0 AND c.is_opt_out = 0"
            if privacy_flags
            else ""
        )
        return self.query(
            "SELECT r.id, r.contact_id FROM rows r "
            "JOIN group_status g ON g.contact_id = r.contact_id AND g.group_id = ? "
            "AND g.status = 'Added' "
            "JOIN contacts c ON c.contact_id = r.contact_id AND c.is_deleted = 0 AND c.gone = 0 "
            f"WHERE r.list_id = ? AND r.mc_hash IS NULL AND r.id > ? {flags} "
            "ORDER BY r.id LIMIT ?",
            (group_id, list_id, after_id, limit),
        )

    def unstaged_emails(self, list_id: str, contact_ids: list[int]) -> list[str]:
        """The contacts' addresses not on hold (any of them could be the one subscribed) that
        have no member row in this audience (a staged member is known, not missing)."""
        if not contact_ids:
            return []
        marks = ",".join("?" * len(contact_ids))
        emails = {
            r[1]: r[0]
            for r in self.query(
                f"SELECT email, email_lc FROM emails WHERE contact_id IN ({marks}) AND on_hold = 0",
                contact_ids,
            )
        }
        if not emails:
            return []
        marks = ",".join("?" * len(emails))
        staged = {
            r[0]
            for r in self.query(
                f"SELECT fold_email(mc_email) FROM rows WHERE list_id = ? "
                f"AND fold_email(mc_email) IN ({marks})",
                (list_id, *emails),
            )
        }
        return sorted(email for lc, email in emails.items() if lc not in staged)

    # -- dating Mailchimp status changes -----------------------------------------------------
    def unread_subscribes(
        self, list_id: str, group_id: int, run_id: str, after_id: int, limit: int
    ) -> list[sqlite3.Row]:
        """Rows to decide, staged subscribed or pending by an earlier run and not read by
        this one, that could add their contact to the group from that status: no contact yet
        (one would be created, Added), or a contact not Added whose group has no change as
        new as the member's status (Mailchimp would win). A member deleted permanently is in
        no list mcsync pages, so such a status may be long gone; these are read directly
        first. In id order after ``after_id``."""
        return self.query(
            "SELECT r.id, r.mc_hash, r.mc_unique_id FROM rows r "
            f"WHERE r.list_id = ? AND r.id > ? AND r.sync_status = '{RowState.TODO}' "
            f"AND r.mc_hash IS NOT NULL AND r.mc_status IN ({_SUBSCRIBED}) "
            "AND r.mc_seen_run IS NOT ? AND NOT EXISTS (SELECT 1 FROM group_status g "
            "WHERE g.contact_id = r.contact_id AND g.group_id = ? AND (g.status = 'Added' "
            "OR g.changed_at >= COALESCE(r.mc_status_at, r.mc_last_changed))) "
            "ORDER BY r.id LIMIT ?",
            (list_id, after_id, run_id, group_id, limit),
        )

    def undated_status_changes(
        self, list_id: str, group_id: int, after_id: int, limit: int
    ) -> list[sqlite3.Row]:
        """Rows to decide whose Mailchimp status change is known only to lie between
        mcsync's previous view of the member (``mc_status_after``) and its ``last_changed``
        (a change, or a possible round trip of an unchanged status), while the contact's
        subscription group changed strictly inside that interval and the two sides disagree
        (when they agree there is nothing to order): the order of the two choices is unknown.
        A possible round trip's latest change is either its known ``mc_status_at`` (not
        after the view) or inside the interval, so a group change from that known time on is
        unordered too. Likewise a subscribe not known to be newer than the contact's privacy
        flag, which may be as late as that interval's end, while the flag was set after
        ``flags_after`` (or by ``flags_at``) and by ``flags_at``. In id order after
        ``after_id``."""
        until = "MAX(r.mc_status_at, COALESCE(r.mc_last_changed, r.mc_status_at))"
        return self.query(
            "SELECT r.id, r.mc_hash, r.mc_status, r.mc_status_after, r.mc_status_at, "
            "r.mc_last_changed FROM rows r "
            "LEFT JOIN group_status g ON g.contact_id = r.contact_id AND g.group_id = ? "
            "LEFT JOIN contacts c ON c.contact_id = r.contact_id "
            f"WHERE r.list_id = ? AND r.id > ? AND r.sync_status = '{RowState.TODO}' "
            "AND r.mc_status_after IS NOT NULL AND r.mc_status IS NOT 'archived' "
            "AND ((g.changed_at > MIN(r.mc_status_after, COALESCE(r.mc_status_at, "
            f"r.mc_status_after)) AND g.changed_at < {until} "
            f"AND (g.status IS 'Added') != (r.mc_status IN ({_SUBSCRIBED}))) "
            "OR (r.mc_status = 'subscribed' AND c.flags_at IS NOT NULL "
            "AND c.is_deceased + c.do_not_email + c.is_opt_out > 0 "
            f"AND r.mc_status_at <= c.flags_at AND COALESCE(c.flags_after, c.flags_at) < {until})) "
            "ORDER BY r.id LIMIT ?",
            (group_id, list_id, after_id, limit),
        )

    def date_status_changes(self, dated: list[tuple[int, str]]) -> None:
        """Record exact Mailchimp status change times found for (row id, time)."""
        self.conn.executemany(
            "UPDATE rows SET mc_status_at = ?, mc_status_after = NULL WHERE id = ?",
            [(at, row_id) for row_id, at in dated],
        )

"""The one-way data feeds, CiviCRM → Mailchimp (seed-behaviour §10): the merge-field values and
tags CiviCRM and plugins want per contact (`contact_data`), and the tags mcsync last pushed
per member row (`rows.pushed_tags`), so only a difference is ever sent and tags mcsync never
pushed (Mailchimp's own) are never touched.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from mcsync.store.base import StoreBase
from mcsync.store.states import RowState


class FeedStore(StoreBase):
    """The `contact_data` table and the pushed tags of member rows."""

    def contacts_to_feed(self, list_id: str, after: int, limit: int) -> list[int]:
        """The contacts of rows about to be reconciled (`todo`), in id order after
        ``after``: their feed values are read before reconcile compares them."""
        rows = self.conn.execute(
            "SELECT DISTINCT contact_id FROM rows WHERE list_id = ? AND sync_status = ? "
            "AND contact_id > ? ORDER BY contact_id LIMIT ?",
            (list_id, RowState.TODO, after, limit),
        )
        return [r[0] for r in rows]

    def store_contact_data(
        self, list_id: str, records: Sequence[tuple[int, str, str | None]], run: str
    ) -> None:
        """Replace the feed values of contacts, read by run ``run``: ``(contact id, merge
        fields, tags)`` as JSON (``database.dumps``: equal values are equal text, which
        ``tags_to_push`` relies on); tags None when no feed manages tags (then mcsync leaves
        the members' tags alone)."""
        self.conn.executemany(
            "INSERT OR REPLACE INTO contact_data (list_id, contact_id, merge_fields, tags, "
            "fetched_run) VALUES (?, ?, ?, ?, ?)",
            [(list_id, contact_id, merge, tags, run) for contact_id, merge, tags in records],
        )

    def tags_to_push(self, list_id: str, after: int, limit: int) -> list[sqlite3.Row]:
        """Subscribed or pending members (in row id order after ``after``) whose fed tags
        differ from what mcsync last pushed: ``id, mc_email, pushed_tags, tags``. When no
        feed gives the audience's contacts tags, none is read: the join reads every
        subscribed member row (seconds at a million, in every run)."""
        if not self.scalar(
            "SELECT EXISTS (SELECT 1 FROM contact_data WHERE list_id = ? AND tags IS NOT NULL)",
            (list_id,),
        ):
            return []
        return self.conn.execute(
            "SELECT r.id, r.mc_email, r.pushed_tags, d.tags FROM rows r JOIN contact_data d "
            "ON d.list_id = r.list_id AND d.contact_id = r.contact_id WHERE r.list_id = ? "
            "AND r.id > ? AND r.mc_hash IS NOT NULL AND r.mc_status IN ('subscribed', 'pending') "
            "AND d.tags IS NOT NULL AND d.tags != r.pushed_tags ORDER BY r.id LIMIT ?",
            (list_id, after, limit),
        ).fetchall()

    def tags_pushed(self, row_id: int, tags: str) -> None:
        """Mailchimp took the member's tag changes: ``tags`` (as stored in `contact_data`) is
        what mcsync pushed, the base of the next difference."""
        self.conn.execute("UPDATE rows SET pushed_tags = ? WHERE id = ?", (tags, row_id))

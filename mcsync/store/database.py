"""The SQLite staging database: schema, migrations, run state, leases and the run log.

It is the source of truth for a run's progress: every stage writes its data and its progress
marker in one transaction (``Staging.atomic``), so a kill at any instant leaves a state that the
next run continues from. Times are stored as UTC ISO-8601 strings with an explicit ``+00:00``
zone, so that string order is time order.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sqlite3
import stat
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from mcsync.errors import ConfigError, McsyncError, StorageError
from mcsync.rules.addresses import fold_email
from mcsync.store.base import StoreBase

# Numbered migrations: never edit one that has shipped; append a new one.
MIGRATIONS: list[str] = [
    # 1: the initial schema
    """
    CREATE TABLE audience_state (
        list_id TEXT PRIMARY KEY,
        group_id INTEGER NOT NULL,
        account TEXT NOT NULL,
        stage TEXT NOT NULL DEFAULT 'idle',
        run_id TEXT,
        run_started TEXT,
        run_full INTEGER NOT NULL DEFAULT 0,
        mc_since TEXT,
        mc_offset INTEGER NOT NULL DEFAULT 0,
        cursor INTEGER NOT NULL DEFAULT 0,
        history_bookmark INTEGER NOT NULL DEFAULT 0,
        history_target INTEGER,
        modified_since TEXT,
        modified_target TEXT,
        last_run_started TEXT,
        last_sync TEXT,
        last_sync_seconds REAL,
        lease_owner TEXT,
        lease_expires REAL NOT NULL DEFAULT 0
    );
    CREATE TABLE rows (
        id INTEGER PRIMARY KEY,
        list_id TEXT NOT NULL,
        mc_hash TEXT,
        mc_email TEXT,
        mc_status TEXT,
        mc_last_changed TEXT,
        mc_status_at TEXT,
        mc_fname TEXT,
        mc_lname TEXT,
        mc_interests TEXT NOT NULL DEFAULT '{}',
        mc_interests_at TEXT NOT NULL DEFAULT '{}',
        mc_expected TEXT,
        pushed_merge TEXT NOT NULL DEFAULT '{}',
        contact_id INTEGER,
        creating INTEGER NOT NULL DEFAULT 0,
        sync_status TEXT NOT NULL DEFAULT 'todo',
        reason TEXT,
        reason_detail TEXT,
        refusal_reason TEXT,
        refusal_email TEXT,
        refusal_civi_at TEXT,
        UNIQUE (list_id, mc_hash)
    );
    CREATE INDEX rows_by_status ON rows (list_id, sync_status, id);
    CREATE INDEX rows_by_contact ON rows (contact_id, list_id);
    CREATE TABLE contacts (
        contact_id INTEGER PRIMARY KEY,
        is_deleted INTEGER NOT NULL DEFAULT 0,
        is_deceased INTEGER NOT NULL DEFAULT 0,
        do_not_email INTEGER NOT NULL DEFAULT 0,
        is_opt_out INTEGER NOT NULL DEFAULT 0,
        first_name TEXT,
        last_name TEXT,
        gone INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE emails (
        email_id INTEGER PRIMARY KEY,
        contact_id INTEGER NOT NULL,
        email TEXT NOT NULL,
        email_lc TEXT NOT NULL,
        is_primary INTEGER NOT NULL DEFAULT 0,
        is_bulkmail INTEGER NOT NULL DEFAULT 0,
        on_hold INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX emails_by_address ON emails (email_lc);
    CREATE INDEX emails_by_contact ON emails (contact_id);
    CREATE TABLE group_status (
        contact_id INTEGER NOT NULL,
        group_id INTEGER NOT NULL,
        status TEXT,
        changed_at TEXT,
        seen_run TEXT,
        PRIMARY KEY (contact_id, group_id)
    ) WITHOUT ROWID;
    CREATE INDEX group_status_by_group ON group_status (group_id, status);
    CREATE TABLE civi_writes (
        id INTEGER PRIMARY KEY,
        list_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        contact_id INTEGER NOT NULL,
        group_id INTEGER,
        status TEXT,
        email TEXT,
        origin_at TEXT,
        UNIQUE (list_id, kind, contact_id, group_id, email)
    );
    CREATE TABLE updates (
        id INTEGER PRIMARY KEY,
        list_id TEXT NOT NULL,
        row_id INTEGER NOT NULL,
        email TEXT NOT NULL,
        body TEXT NOT NULL,
        origin_at TEXT,
        state TEXT NOT NULL DEFAULT 'queued',
        batch_id INTEGER,
        created_at TEXT NOT NULL,
        completed_at TEXT,
        error_title TEXT,
        error_detail TEXT
    );
    CREATE INDEX updates_by_state ON updates (list_id, state, id);
    CREATE INDEX updates_by_row ON updates (row_id, state);
    CREATE TABLE batches (
        id INTEGER PRIMARY KEY,
        list_id TEXT NOT NULL,
        mc_batch_id TEXT,
        status TEXT NOT NULL,
        operations INTEGER NOT NULL,
        submitted_at TEXT,
        completed_at TEXT,
        finished_operations INTEGER,
        errored_operations INTEGER
    );
    CREATE TABLE log (
        id INTEGER PRIMARY KEY,
        list_id TEXT,
        at TEXT NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX log_by_list ON log (list_id, id);
    """,
    # 2: one-way data feeds (merge fields, tags): the values CiviCRM and plugins want at
    # Mailchimp per contact and audience, and the tags mcsync last pushed per member row
    """
    CREATE TABLE contact_data (
        list_id TEXT NOT NULL,
        contact_id INTEGER NOT NULL,
        merge_fields TEXT NOT NULL DEFAULT '{}',
        tags TEXT,
        fetched_run TEXT,
        PRIMARY KEY (list_id, contact_id)
    ) WITHOUT ROWID;
    ALTER TABLE rows ADD COLUMN pushed_tags TEXT NOT NULL DEFAULT '[]'
    """,
    # 3: Mailchimp's unique_email_id survives an email change (which changes the member hash),
    # so a changed address is followed instead of looking like a new person
    """
    ALTER TABLE rows ADD COLUMN mc_unique_id TEXT;
    CREATE INDEX rows_by_unique_id ON rows (list_id, mc_unique_id)
    """,
    # 4: the run that last saw each member, so a full fetch notices members that vanished
    # from the audience (archived or deleted at Mailchimp)
    """
    ALTER TABLE rows ADD COLUMN mc_seen_run TEXT
    """,
    # 5: rows by member address, case-insensitively (is an address already in the audience?)
    """
    CREATE INDEX rows_by_address ON rows (list_id, lower(mc_email))
    """,
    # 6: the modified_date last seen per contact, so the overlap of the modified-contacts
    # window does not fetch the same unchanged contacts run after run
    """
    ALTER TABLE contacts ADD COLUMN modified_date TEXT
    """,
    # 7: issue 10. The Mailchimp status time of the cleaned state mcsync acted on (held the
    # address, or found it held): the hold is applied on the transition only. And when the
    # contact's privacy flags were set, as far as mcsync knows (its modified_date, in UTC,
    # when mcsync first saw them set): a Mailchimp sign-up after that is not undone. Cleaned
    # rows already decided were held by earlier versions (on every run): count them as done.
    """
    ALTER TABLE rows ADD COLUMN cleaned_handled_at TEXT;
    ALTER TABLE contacts ADD COLUMN flags_at TEXT;
    UPDATE rows SET cleaned_handled_at = COALESCE(mc_status_at, mc_last_changed)
    WHERE mc_status = 'cleaned' AND contact_id IS NOT NULL AND sync_status IN ('ok', 'fail')
    """,
    # 8: rows failed for a passing reason (a Mailchimp 5xx, a CiviCRM error) are tried again
    # by normal runs: how many times in a row they failed, and from when they are due again
    """
    ALTER TABLE rows ADD COLUMN retry_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE rows ADD COLUMN retry_at TEXT
    """,
    # 9: addresses compare by fold_email (mcsync.rules.addresses), in SQL as in Python: SQLite's own
    # lower() folds ASCII only, so 'ÄNNE@x' did not meet 'änne@x' (issue 10.8)
    """
    DROP INDEX rows_by_address;
    CREATE INDEX rows_by_folded_address ON rows (list_id, fold_email(mc_email));
    UPDATE emails SET email_lc = fold_email(email)
    """,
    # 10: a Mailchimp status change seen with a later profile edit's last_changed happened
    # after this time (mcsync's previous view of the member) and by mc_status_at; NULL when
    # its time is exact (issue edit_after_status)
    """
    ALTER TABLE rows ADD COLUMN mc_status_after TEXT
    """,
    # 11: how many runs found a batch's results file unreadable (issue 11): after a few the
    # batch is closed and its updates fail with 'bad_result', instead of failing every run
    """
    ALTER TABLE batches ADD COLUMN results_failures INTEGER NOT NULL DEFAULT 0
    """,
    # 12: for a member with no contact, when (UTC) a trashed contact owning its address was
    # removed from the subscription group, if later than the member's subscribe: no contact
    # is created for the member and it is unsubscribed (the removal is the later choice)
    """
    ALTER TABLE rows ADD COLUMN trashed_removal_at TEXT
    """,
    # 13: CiviCRM keeps no history of privacy flags, and flags_at (the modified_date when a
    # flag is first seen) may be a later edit's: when the contact had been read before, the
    # flag was set after flags_after, CiviCRM's clock (UTC) when the previous complete run
    # started (last_civi_started; civi_started: the current run's); NULL: unknown
    """
    ALTER TABLE contacts ADD COLUMN flags_after TEXT;
    ALTER TABLE audience_state ADD COLUMN civi_started TEXT;
    ALTER TABLE audience_state ADD COLUMN last_civi_started TEXT
    """,
]

LOG_KEEP = 2000  # log lines kept per audience
BUSY_TIMEOUT = 30.0  # seconds a statement waits for another process's lock on the DB


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | None) -> str | None:
    """The one text form of a time in the staging DB (UTC, seconds, explicit zone)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValueError("naive datetime reached the staging DB")
    return moment.astimezone(UTC).replace(microsecond=0).isoformat()


def parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Staging(StoreBase):
    """One open staging database. Not shared across threads (the lease heartbeat opens its own).

    ``read_only`` (``status``, ``failures``) opens an existing DB with ``mode=ro``: it works on
    a read-only file or file system and never changes the file or its mode."""

    def __init__(self, path: Path | str, *, read_only: bool = False):
        self.path = Path(path)
        self._depth = 0
        if read_only and self.path.is_file():
            conn = _connect_read_only(self.path)
            if _schema_version(conn) >= len(MIGRATIONS):
                self.conn = conn
                self.db = sqlite_utils.Database(conn)
                return
            conn.close()  # written by an older mcsync: upgrading it needs a writer
        self._create_private(self.path)
        conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            register_functions(conn)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA cache_size=-16384")
            self.conn = conn
            self.db = sqlite_utils.Database(conn)
            self.migrate()
        except BaseException:
            conn.close()
            raise

    @staticmethod
    def _create_private(path: Path) -> None:
        """The DB holds people's emails: create it readable by its owner only (and tighten an
        existing file that others may read; never loosen one, e.g. made read-only)."""
        if path.is_dir():
            raise ConfigError(
                f"state_db: {path} is a directory; name a file in it, e.g. "
                f"{path / 'mcsync.sqlite3'}"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                os.chmod(path, mode & 0o700)
        except OSError as exc:
            raise storage_failure(exc, path) from None

    def close(self) -> None:
        self.conn.close()

    # -- migrations ---------------------------------------------------------------------
    # -- direct member writes in flight ----------------------------------------------------

    def mark_sending(self, update_ids: list[int]) -> None:
        """Updates about to go in a direct bulk write: 'submitting' with no batch, so a write
        whose answer is lost (or a run killed meanwhile) is never sent again from the queue."""
        with self.atomic():
            self.conn.executemany(
                "UPDATE updates SET state = 'submitting' WHERE id = ? AND state = 'queued' "
                "AND batch_id IS NULL",
                [(i,) for i in update_ids],
            )

    def unmark_sending(self, update_ids: list[int]) -> None:
        """Back to the queue: the bulk write was refused before Mailchimp applied anything."""
        with self.atomic():
            self.conn.executemany(
                "UPDATE updates SET state = 'queued' WHERE id = ? AND state = 'submitting' "
                "AND batch_id IS NULL",
                [(i,) for i in update_ids],
            )

    def count_results_failure(self, batch_row: int) -> int:
        """One more run found this batch's results unreadable; how many have, now (committed
        at once, so the count survives the run failing)."""
        with self.atomic():
            self.execute(
                "UPDATE batches SET results_failures = results_failures + 1 WHERE id = ?",
                (batch_row,),
            )
            count = self.scalar("SELECT results_failures FROM batches WHERE id = ?", (batch_row,))
        return int(count or 0)

    def lost_direct_writes(self, list_id: str) -> list[sqlite3.Row]:
        """Updates of a direct bulk write that got no answer: 'submitting' with no batch."""
        return self.query(
            "SELECT * FROM updates WHERE list_id = ? AND state = 'submitting' "
            "AND batch_id IS NULL ORDER BY id",
            (list_id,),
        )

    def migrate(self) -> None:
        self.conn.execute("CREATE TABLE IF NOT EXISTS migrations (number INTEGER PRIMARY KEY)")
        with self.atomic():
            done = {r[0] for r in self.conn.execute("SELECT number FROM migrations")}
            for number, script in enumerate(MIGRATIONS, start=1):
                if number in done:
                    continue
                for statement in script.split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute("INSERT INTO migrations (number) VALUES (?)", (number,))

    # -- audience state -----------------------------------------------------------------
    def ensure_audience(self, list_id: str, group_id: int, account: str) -> None:
        with self.atomic():
            self.conn.execute(
                "INSERT INTO audience_state (list_id, group_id, account) VALUES (?, ?, ?) "
                "ON CONFLICT (list_id) DO UPDATE SET group_id = excluded.group_id, "
                "account = excluded.account",
                (list_id, group_id, account),
            )

    # -- leases -------------------------------------------------------------------------
    def acquire_lease(self, list_id: str, owner: str, seconds: float) -> bool:
        """Atomically take the audience's lease if it is free, expired, already ours, or held
        by a process of this host that no longer exists (a killed run: no need to wait)."""
        now = time.time()
        with self.atomic():
            holder = self.conn.execute(
                "SELECT lease_owner FROM audience_state WHERE list_id = ?", (list_id,)
            ).fetchone()
            gone = holder[0] if holder and lease_holder_gone(holder[0]) else None
            cursor = self.conn.execute(
                "UPDATE audience_state SET lease_owner = ?, lease_expires = ? "
                "WHERE list_id = ? AND (lease_owner IS NULL OR lease_expires < ? "
                "OR lease_owner = ? OR lease_owner = ?)",
                (owner, now + seconds, list_id, now, owner, gone),
            )
            return cursor.rowcount == 1

    def renew_lease(self, list_id: str, owner: str, seconds: float) -> bool:
        with self.atomic():
            cursor = self.conn.execute(
                "UPDATE audience_state SET lease_expires = ? WHERE list_id = ? AND lease_owner = ?",
                (time.time() + seconds, list_id, owner),
            )
            return cursor.rowcount == 1

    def release_lease(self, list_id: str, owner: str) -> None:
        with self.atomic():
            self.conn.execute(
                "UPDATE audience_state SET lease_owner = NULL, lease_expires = 0 "
                "WHERE list_id = ? AND lease_owner = ?",
                (list_id, owner),
            )

    # -- retries of failed rows ---------------------------------------------------------
    def retry_attempts(self, row_id: int) -> int:
        return int(self.scalar("SELECT retry_attempts FROM rows WHERE id = ?", (row_id,)) or 0)

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
            "AND contact_id = ? AND sync_status != 'fail' AND retry_attempts != 0",
            [(list_id, contact_id) for contact_id in contact_ids],
        )

    def requeue_due_retries(self, list_id: str, reasons: list[str], due_by: str) -> int:
        """Failed rows with a passing reason whose next try is due go back to be decided."""
        marks = ",".join("?" * len(reasons))
        cursor = self.conn.execute(
            f"UPDATE rows SET sync_status = 'todo' WHERE list_id = ? AND sync_status = 'fail' "
            f"AND reason IN ({marks}) AND retry_at IS NOT NULL AND retry_at <= ?",
            (list_id, *reasons, due_by),
        )
        return cursor.rowcount

    # -- members absent from a full fetch ---------------------------------------------
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
            "AND sync_status != 'live' ORDER BY id LIMIT ?",
            (list_id, after_id, run_id, limit),
        )

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
            "WHERE r.list_id = ? AND r.id > ? AND r.sync_status = 'todo' "
            "AND r.mc_hash IS NOT NULL AND r.mc_status IN ('subscribed', 'pending') "
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
        subscription group changed strictly inside that interval: the order of the two
        choices is unknown. A possible round trip's latest change is either its known
        ``mc_status_at`` (not after the view) or inside the interval, so a group change from
        that known time on is unordered too. Likewise a subscribe not known to be newer than
        the contact's privacy flag, which may be as late as that interval's end, while the
        flag was set after ``flags_after`` (or by ``flags_at``) and by ``flags_at``. In id
        order after ``after_id``."""
        until = "MAX(r.mc_status_at, COALESCE(r.mc_last_changed, r.mc_status_at))"
        return self.query(
            "SELECT r.id, r.mc_hash, r.mc_status, r.mc_status_after, r.mc_status_at, "
            "r.mc_last_changed FROM rows r "
            "LEFT JOIN group_status g ON g.contact_id = r.contact_id AND g.group_id = ? "
            "LEFT JOIN contacts c ON c.contact_id = r.contact_id "
            "WHERE r.list_id = ? AND r.id > ? AND r.sync_status = 'todo' "
            "AND r.mc_status_after IS NOT NULL AND r.mc_status IS NOT 'archived' "
            "AND ((g.changed_at > MIN(r.mc_status_after, COALESCE(r.mc_status_at, "
            f"r.mc_status_after)) AND g.changed_at < {until}) "
            "OR (r.mc_status = 'subscribed' AND c.flags_at IS NOT NULL "
            "AND c.is_deceased + c.do_not_email + c.is_opt_out > 0 "
            f"AND r.mc_status_at <= c.flags_at AND COALESCE(c.flags_after, c.flags_at) < {until})) "
            "ORDER BY r.id LIMIT ?",
            (group_id, list_id, after_id, limit),
        )

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

    def date_status_changes(self, dated: list[tuple[int, str]]) -> None:
        """Record exact Mailchimp status change times found for (row id, time)."""
        self.conn.executemany(
            "UPDATE rows SET mc_status_at = ?, mc_status_after = NULL WHERE id = ?",
            [(at, row_id) for row_id, at in dated],
        )

    def mark_members_gone(self, list_id: str, hashes: list[str]) -> None:
        """Members confirmed deleted permanently (a direct read answered 404): not subscribed,
        to be reconciled. When they went is unknown, only that it was after the last change
        mcsync read of them, so they are dated there (``mc_last_changed``): a CiviCRM change
        made since is never overwritten by the deletion (DESIGN §4). Archived members are
        read with their own ``last_changed`` instead (``merge_members``)."""
        self.conn.executemany(
            "UPDATE rows SET mc_status = 'archived', mc_status_at = mc_last_changed, "
            "sync_status = 'todo' "
            "WHERE list_id = ? AND mc_hash = ? AND mc_status IS NOT 'archived' "
            "AND sync_status != 'live'",
            [(list_id, h) for h in hashes],
        )

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

    def unmatched_member_rows(self, list_id: str, hashes: list[str]) -> list[int]:
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

    def drop_contact_rows_with_members(self, list_id: str) -> None:
        """Contact-only rows whose contact also has a member row are redundant
        (seed-behaviour §3.4)."""
        self.execute(
            "DELETE FROM rows WHERE list_id = ? AND mc_hash IS NULL AND sync_status != 'live' "
            "AND contact_id IN (SELECT contact_id FROM rows WHERE list_id = ? "
            "AND mc_hash IS NOT NULL AND contact_id IS NOT NULL)",
            (list_id, list_id),
        )

    # -- log ----------------------------------------------------------------------------
    def log(self, list_id: str | None, message: str, level: str = "info") -> None:
        with self.atomic():
            self.conn.execute(
                "INSERT INTO log (list_id, at, level, message) VALUES (?, ?, ?, ?)",
                (list_id, iso(utc_now()), level, message),
            )
            self.conn.execute(
                "DELETE FROM log WHERE list_id IS ? AND id <= "
                "(SELECT id FROM log WHERE list_id IS ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (list_id, list_id, LOG_KEEP),
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

    # -- removals by trashed contacts ----------------------------------------------------
    def unmatched_subscribed_rows(
        self, list_id: str, after_id: int, limit: int
    ) -> list[sqlite3.Row]:
        """Rows of subscribed or pending members with no contact, not being created (those
        are matched again first) and not failed: the ones a new contact may be created for."""
        return self.query(
            "SELECT id, mc_email, mc_status, mc_status_at, mc_last_changed FROM rows "
            "WHERE list_id = ? AND contact_id IS NULL AND mc_email IS NOT NULL "
            "AND mc_status IN ('subscribed', 'pending') AND sync_status != 'fail' "
            "AND creating = 0 AND id > ? ORDER BY id LIMIT ?",
            (list_id, after_id, limit),
        )

    def set_trashed_removals(self, removals: list[tuple[str | None, int]]) -> None:
        """(time or None, row id): the removal by a trashed owner of the row's address that
        is later than its member's subscribe, or None when there is none."""
        self.conn.executemany("UPDATE rows SET trashed_removal_at = ? WHERE id = ?", removals)

    def recent_log(self, list_id: str, limit: int = 10) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT at, level, message FROM log WHERE list_id = ? ORDER BY id DESC LIMIT ?",
            (list_id, limit),
        ).fetchall()
        return [dict(r) for r in reversed(rows)]

    # -- the mass-change brake ------------------------------------------------------------
    def planned_interest_switches(self, list_id: str, interest_id: str) -> dict[bool, int]:
        """Queued Mailchimp updates that would turn this interest on (True) or off (False)
        for a member who already exists, by direction. A new member's first interests are
        part of its subscribe, which is an addition, not a switch."""
        pushed, known = f'$.interests."{interest_id}"', f'$."{interest_id}"'
        rows = self.conn.execute(
            "SELECT json_extract(u.body, ?) AS value, COUNT(*) "
            "FROM updates u JOIN rows r ON r.id = u.row_id "
            "WHERE u.list_id = ? AND u.state = 'queued' AND r.mc_hash IS NOT NULL "
            "AND json_extract(u.body, ?) IS NOT NULL "
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

    # -- plans --------------------------------------------------------------------------
    def drop_plan(self, list_id: str) -> int:
        """Drop the audience's planned CiviCRM writes and send back to `todo` every row whose
        writes are planned or in flight (and every failed one), so the next run decides them
        again: `abort` and an undone dry run may drop a plan, never the facts behind it (a
        Mailchimp unsubscribe whose CiviCRM removal was queued is still an unsubscribe).

        The one rule both use. Call it in the transaction that also settles the Mailchimp
        updates, before their states change (rows are found through them). Address changes
        learned at Mailchimp (`email` writes) are facts no later fetch sees again: they stay
        queued. A row keeps `mc_expected` while a write of its may have reached Mailchimp, so
        that change keeps the time of the choice it carried. Returns the rows sent back."""
        planned = ",".join(f"'{kind}'" for kind in PLANNED_CIVI_WRITES)
        with self.atomic():
            count = self.execute(
                f"""
                UPDATE rows SET sync_status = 'todo', mc_expected = CASE WHEN EXISTS (
                    SELECT 1 FROM updates u WHERE u.row_id = rows.id
                    AND u.state IN ('submitting', 'submitted')) THEN mc_expected ELSE NULL END
                WHERE list_id = ? AND (sync_status IN ('live', 'fail')
                    OR id IN (SELECT row_id FROM updates WHERE list_id = ?
                              AND state IN ('queued', 'submitting', 'submitted'))
                    OR contact_id IN (SELECT contact_id FROM civi_writes WHERE list_id = ?
                                      AND kind IN ({planned})))
                """,
                (list_id, list_id, list_id),
            ).rowcount
            self.execute(
                f"DELETE FROM civi_writes WHERE list_id = ? AND kind IN ({planned})", (list_id,)
            )
        return count

    def rows_by_id(self, row_ids: list[int]) -> list[sqlite3.Row]:
        marks = ",".join("?" * len(row_ids))
        return self.query(f"SELECT * FROM rows WHERE id IN ({marks})", row_ids)

    def member_rows_of_contacts(
        self, list_id: str, contact_ids: Sequence[int]
    ) -> list[sqlite3.Row]:
        """The audience's member rows (at Mailchimp) of these contacts."""
        ids = sorted(set(contact_ids))
        marks = ",".join("?" * len(ids))
        return self.query(
            f"SELECT id, contact_id, mc_hash, mc_last_changed FROM rows WHERE list_id = ? "
            f"AND mc_hash IS NOT NULL AND contact_id IN ({marks})",
            (list_id, *ids),
        )

    def abort_updates(self, update_ids: list[int], detail: str) -> None:
        """Drop queued updates a newer change overtook and send their rows back to `todo`.
        Their rows stop expecting the status those writes carried (`forget_unsent_status`);
        an expected interest stays: after a crash a data-only write may have been sent
        already, and its echo at Mailchimp must keep the time of the choice it carried."""
        with self.atomic():
            self.conn.executemany(
                "UPDATE updates SET state = 'aborted', completed_at = ?, error_detail = ? "
                "WHERE id = ? AND state = 'queued'",
                [(iso(utc_now()), detail, i) for i in update_ids],
            )
            self.conn.executemany(
                "UPDATE rows SET sync_status = 'todo' "
                "WHERE id = (SELECT row_id FROM updates WHERE id = ?)",
                [(i,) for i in update_ids],
            )
            marks = ",".join("?" * len(update_ids))
            rows = self.query(
                f"SELECT DISTINCT row_id FROM updates WHERE id IN ({marks})", update_ids
            )
            self.forget_unsent_status([r[0] for r in rows])

    def forget_unsent_status(self, row_ids: Sequence[int]) -> None:
        """These rows' status writes were dropped unsent: they no longer expect Mailchimp to
        show that status. `mc_expected` marks a status Mailchimp shows as mcsync's own echo,
        dated at the choice the write carried; kept for a write that never went out, it would
        take the person's own later change to that status for the echo and date it at that
        older choice, so an older CiviCRM change would undo it (a brake override dropped an
        unsubscribe a re-add overtook; the person unsubscribed later; mcsync subscribed them
        again). A status write is marked submitting before it is sent, so a row with none
        submitting or submitted has none that can reach Mailchimp; with one, it keeps its
        expectation. An expected interest is kept (a data-only write goes out while queued)."""
        if not row_ids:
            return
        marks = ",".join("?" * len(row_ids))
        self.execute(
            f"""
            UPDATE rows SET mc_expected = CASE
                WHEN json_extract(mc_expected, '$.interests') IS NULL THEN NULL
                ELSE json_remove(mc_expected, '$.status') END
            WHERE id IN ({marks}) AND mc_expected IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM updates u WHERE u.row_id = rows.id
                              AND u.state IN ('submitting', 'submitted'))
            """,
            list(row_ids),
        )


def register_functions(conn: sqlite3.Connection) -> None:
    """SQL functions every connection to a staging DB needs: ``fold_email`` compares
    addresses exactly as Python does (an index uses it, so writes to ``rows`` need it too)."""
    conn.create_function("fold_email", 1, _sql_fold_email, deterministic=True)


def _sql_fold_email(value: Any) -> str | None:
    return None if value is None else fold_email(str(value))


# CiviCRM writes that are decisions (a plan); `email` writes carry facts fetched from Mailchimp.
PLANNED_CIVI_WRITES = ("group", "hold")


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """Open for reading only. A WAL database needs its -shm file; where that cannot be created
    (a read-only directory or file system, so no writer can be at work either), read the file
    as immutable."""
    uri = path.absolute().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None)
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.OperationalError:
        if _unwritable(path) is None:
            raise
        conn = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None)
    conn.row_factory = sqlite3.Row
    register_functions(conn)
    return conn


def _schema_version(conn: sqlite3.Connection) -> int:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'migrations'"
    ).fetchone()
    if not exists:
        return 0
    return int(conn.execute("SELECT COALESCE(MAX(number), 0) FROM migrations").fetchone()[0])


def _unwritable(path: Path) -> str | None:
    """Why this process cannot write the DB file or its directory, if it cannot."""
    directory = path.parent
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return "it is on a read-only file system"
    except OSError:
        return None
    if not os.access(directory, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return "this user may not write it or its directory"
    return None


def storage_failure(exc: sqlite3.Error | OSError, path: Path | None) -> McsyncError:
    """One line for a failing state DB: what failed, where, and what to do. A ``ConfigError``
    (exit 2) when the configured ``state_db`` cannot be used at all; else ``StorageError``."""
    where = f"state DB {path}" if path else "the state DB"
    text = exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
    name = "" if isinstance(exc, OSError) else str(getattr(exc, "sqlite_errorname", ""))
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or name == "SQLITE_FULL":
        return StorageError(
            f"{where}: the disk is full ({text}); free space on it and run again (the work "
            "done so far is kept)"
        )
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StorageError(
            f"{where}: locked by another process for {BUSY_TIMEOUT:g} s; if no other mcsync "
            "is running, find the program holding it (a backup, an sqlite3 shell) and run again"
        )
    if name.startswith("SQLITE_CORRUPT"):
        return StorageError(
            f"{where} is damaged ({text}); move it aside (keep it for diagnosis) and run "
            "`mcsync initial-sync`, which rebuilds it from both services"
        )
    if name == "SQLITE_NOTADB":
        return ConfigError(
            f"state_db: {path} is not an SQLite database; point state_db at mcsync's own "
            "state file (a new name creates a new one)"
        )
    why = _unwritable(path) if path else None
    if isinstance(exc, OSError) or why or name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
        because = why or text
        return ConfigError(
            f"state_db: cannot write {path} ({because}); make it and its directory writable "
            "by this user or point state_db elsewhere (status and failures can still read it)"
        )
    if name.startswith("SQLITE_IOERR"):
        return StorageError(f"{where}: the disk reported an I/O error ({text}); check the disk")
    return StorageError(f"{where}: {text}")


def this_host() -> str:
    """This host as a lease names it: the host name and, where there is one, the PID namespace
    (containers that share a host name cannot see each other's processes)."""
    name = socket.gethostname()
    try:
        return f"{name}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return name


def lease_holder_gone(lease_owner: str | None) -> bool:
    """True when the lease owner (``host:pid:nonce``, see ``sync.lease_owner``) is a process of
    this host that no longer exists. Another host's process cannot be checked, and a pid of
    another user's process (or a reused pid) counts as alive: those leases wait for expiry."""
    host, _, rest = (lease_owner or "").partition(":")
    pid = rest.partition(":")[0]
    if host != this_host() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)

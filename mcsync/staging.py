"""The SQLite staging database: schema, migrations, run state, leases and the run log.

It is the source of truth for a run's progress: every stage writes its data and its progress
marker in one transaction (``Staging.atomic``), so a kill at any instant leaves a state that the
next run continues from. Times are stored as UTC ISO-8601 strings with an explicit ``+00:00``
zone, so that string order is time order.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

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
]

LOG_KEEP = 2000  # log lines kept per audience


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


class Staging:
    """One open staging database. Not shared across threads (the lease heartbeat opens its own)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._create_private(self.path)
        conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA cache_size=-16384")
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self._depth = 0
        self.migrate()

    @staticmethod
    def _create_private(path: Path) -> None:
        """The DB holds people's emails: create it readable by its owner only."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        os.chmod(path, 0o600)

    def close(self) -> None:
        self.conn.close()

    # -- transactions -------------------------------------------------------------------
    @contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        """One transaction (nested calls join the outer one). BEGIN IMMEDIATE avoids
        lock-upgrade deadlocks between concurrent mcsync processes."""
        if self._depth:
            self._depth += 1
            try:
                yield self.conn
            finally:
                self._depth -= 1
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")
        finally:
            self._depth = 0

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def query(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def scalar(self, sql: str, params: Any = ()) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

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

    def state(self, list_id: str) -> dict[str, Any]:
        row = self.conn.execute(
            "SELECT * FROM audience_state WHERE list_id = ?", (list_id,)
        ).fetchone()
        return dict(row) if row else {}

    def set_state(self, list_id: str, **values: Any) -> None:
        """Update run-state columns; call inside the transaction that wrote the stage's data."""
        if not values:
            return
        assignments = ", ".join(f"{name} = ?" for name in values)
        self.conn.execute(
            f"UPDATE audience_state SET {assignments} WHERE list_id = ?",
            (*values.values(), list_id),
        )

    # -- leases -------------------------------------------------------------------------
    def acquire_lease(self, list_id: str, owner: str, seconds: float) -> bool:
        """Atomically take the audience's lease if it is free, expired, or already ours."""
        now = time.time()
        with self.atomic():
            cursor = self.conn.execute(
                "UPDATE audience_state SET lease_owner = ?, lease_expires = ? "
                "WHERE list_id = ? AND (lease_owner IS NULL OR lease_expires < ? "
                "OR lease_owner = ?)",
                (owner, now + seconds, list_id, now, owner),
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

    def recent_log(self, list_id: str, limit: int = 10) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT at, level, message FROM log WHERE list_id = ? ORDER BY id DESC LIMIT ?",
            (list_id, limit),
        ).fetchall()
        return [dict(r) for r in reversed(rows)]


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)

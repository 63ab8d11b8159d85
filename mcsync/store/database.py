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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from mcsync.errors import ConfigError, McsyncError, StorageError
from mcsync.rules.addresses import fold_email
from mcsync.store.base import StoreBase
from mcsync.store.contacts import ContactStore
from mcsync.store.feeds import FeedStore
from mcsync.store.history import HistoryStore
from mcsync.store.matching import MatchStore
from mcsync.store.members import MemberStore
from mcsync.store.people import PeopleStore
from mcsync.store.profile import ProfileStore
from mcsync.store.queues import QueueStore
from mcsync.store.rows import RowStore
from mcsync.store.status_queries import StatusStore

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
    # 13: issue 15. The run history: one row per run of an audience, written when it starts
    # (ended and outcome NULL until it ends: a killed run stays unfinished), with the changes
    # it made by kind, its failures and its requests; pruned after [sync] history_days
    """
    CREATE TABLE run_history (
        id INTEGER PRIMARY KEY,
        list_id TEXT NOT NULL,
        group_id INTEGER NOT NULL,
        started TEXT NOT NULL,
        ended TEXT,
        seconds REAL,
        outcome TEXT,
        stage TEXT,
        error TEXT,
        mc_subscribes INTEGER NOT NULL DEFAULT 0,
        mc_unsubscribes INTEGER NOT NULL DEFAULT 0,
        mc_interest_changes INTEGER NOT NULL DEFAULT 0,
        mc_merge_field_updates INTEGER NOT NULL DEFAULT 0,
        mc_tag_updates INTEGER NOT NULL DEFAULT 0,
        civi_adds INTEGER NOT NULL DEFAULT 0,
        civi_removes INTEGER NOT NULL DEFAULT 0,
        civi_interest_changes INTEGER NOT NULL DEFAULT 0,
        civi_contacts_created INTEGER NOT NULL DEFAULT 0,
        civi_holds INTEGER NOT NULL DEFAULT 0,
        civi_emails_added INTEGER NOT NULL DEFAULT 0,
        write_failures INTEGER NOT NULL DEFAULT 0,
        failing_rows INTEGER,
        mailchimp_requests INTEGER NOT NULL DEFAULT 0,
        civicrm_requests INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX run_history_by_start ON run_history (started);
    CREATE INDEX run_history_by_list ON run_history (list_id, started)
    """,
    # 14: for a member with no contact, the privacy flag of a trashed owner of its address:
    # set after (when known) and by these times (UTC), unless the subscribe is known to be
    # later; when mcsync last saw each contact without a privacy flag (its modified_date, in
    # UTC: a flag seen later was set after it); and the offset of the resumable look for
    # members archived during the run (tiny budgets must not redo it from the start)
    """
    ALTER TABLE rows ADD COLUMN trashed_flag_after TEXT;
    ALTER TABLE rows ADD COLUMN trashed_flag_by TEXT;
    ALTER TABLE contacts ADD COLUMN unflagged_at TEXT;
    ALTER TABLE audience_state ADD COLUMN archived_offset INTEGER NOT NULL DEFAULT 0
    """,
    # 15: large CiviCRM reads go by id ranges read side by side (issue 12): each range's
    # cursor, committed with its pages, so a stopped run resumes every range where it was
    """
    CREATE TABLE civi_sweeps (
        list_id TEXT NOT NULL,
        sweep TEXT NOT NULL,
        run_id TEXT NOT NULL,
        lo INTEGER NOT NULL,
        hi INTEGER,
        cursor INTEGER NOT NULL,
        done INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (list_id, sweep, lo)
    ) WITHOUT ROWID
    """,
    # 16: CiviCRM keeps no history of privacy flags, and flags_at (the modified_date when a
    # flag is first seen) may be a later edit's: when the contact had been read before, the
    # flag was set after flags_after, CiviCRM's clock (UTC) when the previous complete run
    # started (last_civi_started; civi_started: the current run's); NULL: unknown
    """
    ALTER TABLE contacts ADD COLUMN flags_after TEXT;
    ALTER TABLE audience_state ADD COLUMN civi_started TEXT;
    ALTER TABLE audience_state ADD COLUMN last_civi_started TEXT
    """,
    # 17: issue 12. A batch of member reads (GET operations) carries no updates: what it
    # reads for (run, stage, the stage cursor it started at and moves to, the members' keys),
    # as JSON; NULL for a batch of writes. Kept until its results are applied with the chunk
    """
    ALTER TABLE batches ADD COLUMN reads TEXT
    """,
    # 18: for a member with no contact, the removals of trashed owners of its address from
    # mapped interest groups later than the member's interest time, as JSON {group id: UTC
    # time}; NULL: none. The contact created for it is not added to those groups from the
    # member's older interest, which is switched off instead (as 12 for the subscription)
    """
    ALTER TABLE rows ADD COLUMN trashed_interest_removals TEXT
    """,
    # 19: the contact a member row pointed at until that contact was trashed: its choices
    # (a later removal or privacy flag) outlive its address (model seed 17)
    """
    ALTER TABLE rows ADD COLUMN trashed_contact_id INTEGER
    """,
    # 20: issue 12. The newest last_changed (Mailchimp's clock) in the first answer of an
    # incremental window that took more than one page: the window older than that is read
    # without skips, and the changes from it on are read again. NULL: not yet known, or a
    # window of one page, or a full run
    """
    ALTER TABLE audience_state ADD COLUMN mc_newest TEXT
    """,
    # 21: issue 12. The brake weighs a run's removals against the members subscribed; this
    # index answers that count without reading every member row (seconds at a million). It is
    # partial: only a query naming exactly this condition can use it, so no lookup by contact
    # or address is drawn to walk every member of one status instead (a full index on
    # (list_id, mc_status) made the 1M first sync's hold writes quadratic)
    """
    CREATE INDEX rows_subscribed ON rows (list_id) WHERE mc_status IN ('subscribed', 'pending')
    """,
    # 22: CiviCRM's clock at the start of the run that last read each member (mc_seen_run):
    # the member was there after that time. A member found deleted permanently went after
    # it, so a CiviCRM change made before it is older than the deletion (model seed 105)
    """
    ALTER TABLE rows ADD COLUMN mc_seen_civi TEXT
    """,
    # 23: issue 12. The CiviCRM write queue is read a chunk of one kind at a time, oldest
    # first, and open updates by the address they write to, once per reconcile chunk: without
    # these indexes each read went over the whole queue (quadratic at 1M)
    """
    CREATE INDEX civi_writes_by_kind ON civi_writes (list_id, kind, id);
    CREATE INDEX updates_by_folded_address ON updates (list_id, fold_email(email))
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


class Staging(
    MemberStore,
    MatchStore,
    ContactStore,
    RowStore,
    StatusStore,
    PeopleStore,
    HistoryStore,
    QueueStore,
    FeedStore,
    ProfileStore,
    StoreBase,
):
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

    def abort_plan(self, list_id: str, detail: str, now: str) -> tuple[int, int, int]:
        """`abort`: drop the plan (`drop_plan`, first: it finds rows by their updates), give up the
        unfinished batches, mark the
        updates sent as failed (Mailchimp may or may not have applied them: the next run reads
        what it has) and the unsent ones aborted, in one transaction. Returns (rows sent back
        to `todo`, updates failed, updates discarded)."""
        with self.atomic():
            redecided = self.drop_plan(list_id)  # first: it finds rows by their updates
            failed, discarded = self.abort_queue(list_id, now, detail)
        return redecided, failed, discarded

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


def register_functions(conn: sqlite3.Connection) -> None:
    """SQL functions every connection to a staging DB needs: ``fold_email`` compares
    addresses exactly as Python does (an index uses it, so writes to ``rows`` need it too)."""
    conn.create_function("fold_email", 1, _sql_fold_email, deterministic=True)


def _sql_fold_email(value: Any) -> str | None:
    return None if value is None else fold_email(str(value))


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

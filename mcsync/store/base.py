"""The base every part of the storage layer builds on: one connection, its transactions, the
per-audience run state, and the resumable chunk loop the stages share.

The storage layer is split by what it stores (rows, contacts, queues, status queries…); each
part is a mixin on `StoreBase`, and `mcsync.store.database.Staging` combines them, so a stage
holds one `Staging` and calls named methods on it. Only the storage layer writes SQL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import sqlite_utils

T = TypeVar("T")


class StoreBase:
    """The connection and the transaction discipline shared by every storage mixin."""

    conn: sqlite3.Connection
    db: sqlite_utils.Database
    _depth: int = 0

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
            if self.conn.in_transaction:  # SQLite may have rolled back already (disk full)
                self.conn.execute("ROLLBACK")
            raise
        else:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error:
                if self.conn.in_transaction:  # a failed COMMIT (disk full) leaves it open
                    self.conn.execute("ROLLBACK")
                raise
        finally:
            self._depth = 0

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def query(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def scalar(self, sql: str, params: Any = ()) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    # -- run state --------
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

    # -- the resumable chunk loop ---------------------------------------------------------
    def each_chunk(
        self,
        list_id: str,
        check_budget: Callable[[], None],
        read_after: Callable[[int], Sequence[T]],
        key: Callable[[T], int],
    ) -> Iterator[Sequence[T]]:
        """Chunks of work after the audience's `cursor`, each handled in one transaction that
        also moves the cursor past it, so a kill or a spent budget resumes at the next chunk.

        `read_after(cursor)` reads the next chunk (empty when done); `key(item)` is the cursor
        value of an item. The caller's loop body runs inside the chunk's transaction: an
        exception rolls back the chunk and its cursor together. The budget is checked before
        each chunk is read (it raises to stop the run between chunks, never inside one)."""
        while True:
            check_budget()
            chunk = read_after(int(self.state(list_id)["cursor"]))
            if not chunk:
                return
            with self.atomic():
                yield chunk
                self.set_state(list_id, cursor=key(chunk[-1]))

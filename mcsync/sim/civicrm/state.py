"""The simulator's state and the data-model behaviour every part relies on.

State lives in an in-memory SQLite database guarded by ``lock``. The data-model behaviour is
what CiviCRM does around a row write: contacts with trash and ``modified_date`` bumps, emails
with one primary per contact and holds, GroupContact writes that always log
SubscriptionHistory, references and ACLs checked, nested groups' ``children`` kept; and the
storage primitives under it. :class:`CiviState` is the typed base of every part that
:class:`~mcsync.sim.civicrm.sim.CiviSim` combines; it declares the few methods one part calls in
another, so each part type-checks alone.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from mcsync.sim.civicrm.helpers import _contact_column, _names
from mcsync.sim.civicrm.model import CONTACT_CHILD_TABLES, ApiUser, _Ctx
from mcsync.sim.civicrm.schema import (
    ENTITIES,
    SCHEMA,
    CiviApiError,
    register_functions,
    serialize,
    unserialize,
)


class CiviState:
    """What every part of the simulator shares: its state and the data-model behaviour."""

    def __init__(
        self,
        api_key: str,
        site_key: str | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
        timezone: str = "UTC",
    ):
        self.lock = threading.RLock()
        self.request_log: list[tuple[str, str]] = []
        self.error_log: list[tuple[str, str]] = []  # (error id, full message), like CiviCRM.log
        self.site_key = site_key
        self.guards: list[str] = ["site_key", "perm"]  # authx_guards
        self.header_flow_enabled = True  # authx_header_cred non-empty
        self.debug_enabled = False  # site setting: skips the CSRF check
        self.maintenance = False
        self.timezone = timezone
        self._tz = ZoneInfo(timezone)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._users: dict[str, ApiUser] = {}
        self._saved_searches = 0
        self._conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        register_functions(self._conn)
        self._conn.executescript(SCHEMA)
        self.add_api_key(api_key)

    if TYPE_CHECKING:
        # Defined by other parts of CiviSim; declared so each part type-checks alone.
        def add_api_key(
            self,
            api_key: str,
            *,
            contact_id: int | None = None,
            can_authenticate: bool = True,
            debug_visible: bool = True,
            view_all_contacts: bool = True,
            edit_all_contacts: bool = True,
            acl_contact_ids: Iterable[int] = (),
        ) -> ApiUser: ...

        def now(self) -> str: ...

        def _select(
            self, ctx: _Ctx, entity: str, params: dict[str, Any]
        ) -> tuple[list[dict[str, Any]], int | None]: ...

        def _columns(self, entity: str, fields: dict[str, Any]) -> dict[str, Any]: ...

    def _create_row(self, ctx: _Ctx, entity: str, cols: dict[str, Any]) -> int:
        spec = ENTITIES[entity]
        row = {f.name: f.default for f in spec.core_fields()
               if f.default is not None and not f.readonly}  # fmt: skip
        row.update({k: v for k, v in cols.items() if v is not None or k not in row})
        missing = [f.name for f in spec.fields.values()
                   if f.required and row.get(f.name) in (None, "")]  # fmt: skip
        if missing:
            raise CiviApiError(
                f"Mandatory values missing from Api4 {entity}::create: {', '.join(missing)}"
            )
        self._check_references(entity, row)
        now = self.now()
        if entity == "Contact":
            row["created_date"] = row["modified_date"] = now
            row["display_name"], row["sort_name"] = _names(
                row["contact_type"], row.get("first_name"), row.get("last_name"),
                row.get("organization_name"), row.get("household_name"), None)  # fmt: skip
        elif entity in ("Email", "Address"):
            self._before_block_write(entity, None, row, now)
        elif entity == "Group":
            row["name"] = row.get("name") or self._group_name(row["title"])
        elif entity == "Tag":
            row.setdefault("label", row["name"])
        elif entity == "SubscriptionHistory":
            row["date"] = now
        new_id = self._insert(spec.table, row)
        if entity in ("Email", "Address"):
            self._after_block_write(entity, new_id, row["contact_id"], None, now)
        elif entity == "Group" and row.get("parents"):
            self._rebuild_children()
        elif entity == "GroupContact":
            self._log_history(ctx, row["contact_id"], row["group_id"], row["status"], now)
        return new_id

    def _update_row(self, ctx: _Ctx, entity: str, record_id: int, cols: dict[str, Any]) -> None:
        spec = ENTITIES[entity]
        current = self._row(entity, record_id)
        if current is None:
            raise CiviApiError(f"{entity} {record_id} not found")
        row = {**current, **cols}
        self._check_references(entity, cols)
        now = self.now()
        if entity == "Contact":
            row["modified_date"] = now
            row["display_name"], row["sort_name"] = _names(
                row["contact_type"], row.get("first_name"), row.get("last_name"),
                row.get("organization_name"), row.get("household_name"),
                self._primary_email(record_id))  # fmt: skip
        elif entity in ("Email", "Address"):
            self._before_block_write(entity, current, row, now)
        changes = {k: v for k, v in row.items() if k != "id" and current.get(k) != v}
        if changes:
            sets = ", ".join(f"{k} = ?" for k in changes)
            try:
                self._conn.execute(f"UPDATE {spec.table} SET {sets} WHERE id = ?",
                                   [*changes.values(), record_id])  # fmt: skip
            except sqlite3.IntegrityError:
                raise CiviApiError("DB Error: already exists") from None
        if entity in ("Email", "Address"):
            self._after_block_write(entity, record_id, row["contact_id"], current, now)
        elif entity == "Group" and "parents" in cols:
            self._rebuild_children()
        elif entity == "GroupContact":
            # CiviCRM logs a history row on every write, even when the status is unchanged.
            self._log_history(ctx, row["contact_id"], row["group_id"], row["status"], now)

    def _delete_row(self, ctx: _Ctx, entity: str, record_id: int) -> None:
        spec = ENTITIES[entity]
        current = self._row(entity, record_id)
        if current is None:
            return
        self._conn.execute(f"DELETE FROM {spec.table} WHERE id = ?", (record_id,))
        now = self.now()
        if entity in ("Email", "Address"):
            self._ensure_primary(spec.table, current["contact_id"])
            self._touch_contact(current["contact_id"], now)
        elif entity == "GroupContact":
            self._log_history(_Ctx(ctx.user), current["contact_id"], current["group_id"],
                              "Deleted", now)  # fmt: skip
        elif entity == "Group":
            for table in ("group_contact", "subscription_history", "group_contact_cache"):
                self._conn.execute(f"DELETE FROM {table} WHERE group_id = ?", (record_id,))
            self._rebuild_children()
        elif entity == "Tag":
            self._conn.execute("DELETE FROM entity_tag WHERE tag_id = ?", (record_id,))

    def _delete_contact(self, ctx: _Ctx, contact_id: int, *, use_trash: bool) -> None:
        current = self._row("Contact", contact_id)
        if current is None:
            return
        if use_trash:
            if not current["is_deleted"]:
                self._update_row(ctx, "Contact", contact_id, {"is_deleted": 1})
            return
        for table in CONTACT_CHILD_TABLES:
            self._conn.execute(f"DELETE FROM {table} WHERE contact_id = ?", (contact_id,))
        self._conn.execute("DELETE FROM entity_tag WHERE entity_id = ? AND entity_table = "
                           "'civicrm_contact'", (contact_id,))  # fmt: skip
        self._conn.execute("DELETE FROM contact WHERE id = ?", (contact_id,))

    def _before_block_write(self, entity: str, current: dict[str, Any] | None,
                            row: dict[str, Any], now: str) -> None:  # fmt: skip
        """Email/Address rules: first row is primary; holds stamp ``hold_date``."""
        table = ENTITIES[entity].table
        if (
            current is None
            and not self._conn.execute(
                f"SELECT 1 FROM {table} WHERE contact_id = ?", (row["contact_id"],)
            ).fetchone()
        ):
            row["is_primary"] = 1
        if entity == "Email":
            was_held = bool(current and current.get("on_hold"))
            if row.get("on_hold") and not was_held:
                row["hold_date"] = now
            elif not row.get("on_hold") and was_held:
                row["hold_date"], row["reset_date"] = None, now

    def _after_block_write(self, entity: str, record_id: int, contact_id: int,
                           before: dict[str, Any] | None, now: str) -> None:  # fmt: skip
        table = ENTITIES[entity].table
        row = self._row(entity, record_id) or {}
        if row.get("is_primary"):
            self._conn.execute(f"UPDATE {table} SET is_primary = 0 WHERE contact_id = ? AND "
                               "id != ? AND is_primary = 1", (contact_id, record_id))  # fmt: skip
        if entity == "Email" and row.get("is_bulkmail"):
            self._conn.execute("UPDATE email SET is_bulkmail = 0 WHERE contact_id = ? AND "
                               "id != ? AND is_bulkmail = 1", (contact_id, record_id))  # fmt: skip
        self._ensure_primary(table, contact_id)
        if before is not None and before["contact_id"] != contact_id:
            self._ensure_primary(table, before["contact_id"])
            self._touch_contact(before["contact_id"], now)
        self._touch_contact(contact_id, now)

    def _ensure_primary(self, table: str, contact_id: int) -> None:
        """CiviCRM keeps exactly one primary location row while the contact has any."""
        if self._conn.execute(f"SELECT 1 FROM {table} WHERE contact_id = ? AND is_primary = 1",
                              (contact_id,)).fetchone():  # fmt: skip
            return
        self._conn.execute(
            f"UPDATE {table} SET is_primary = 1 WHERE id = (SELECT MIN(id) FROM {table} "
            "WHERE contact_id = ?)", (contact_id,))  # fmt: skip

    def _touch_contact(self, contact_id: int, now: str) -> None:
        """The DB triggers on email/address writes bump the contact's ``modified_date``."""
        self._conn.execute("UPDATE contact SET modified_date = ? WHERE id = ?", (now, contact_id))
        row = self._conn.execute("SELECT display_name FROM contact WHERE id = ?",
                                 (contact_id,)).fetchone()  # fmt: skip
        if row is not None and not row[0]:
            email = self._primary_email(contact_id)
            self._conn.execute("UPDATE contact SET display_name = ?, sort_name = ? WHERE id = ?",
                               (email, email, contact_id))  # fmt: skip

    def _primary_email(self, contact_id: int) -> str | None:
        row = self._conn.execute("SELECT email FROM email WHERE contact_id = ? AND is_primary = 1",
                                 (contact_id,)).fetchone()  # fmt: skip
        return row[0] if row else None

    def _log_history(self, ctx: _Ctx, contact_id: int, group_id: int, status: str, now: str
                     ) -> None:  # fmt: skip
        method = ctx.method
        if len(method) > 8:
            raise CiviApiError("DB Error: Data too long for column 'method'")
        tracking = None if ctx.tracking is None else str(ctx.tracking)
        if tracking is not None and len(tracking) > 255:
            raise CiviApiError("DB Error: Data too long for column 'tracking'")
        self._conn.execute(
            "INSERT INTO subscription_history (contact_id, group_id, date, method, status, "
            "tracking) VALUES (?, ?, ?, ?, ?, ?)",
            (contact_id, group_id, now, method, status, tracking),
        )

    def _check_references(self, entity: str, row: dict[str, Any]) -> None:
        """Foreign keys are real constraints in CiviCRM's schema."""
        for name, value in row.items():
            spec = ENTITIES[entity].fields.get(name)
            if value is None or spec is None or spec.fk_entity is None or spec.serialize:
                continue
            if entity == "EntityTag" and name == "entity_id":
                continue
            table = ENTITIES[spec.fk_entity].table
            if not self._conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", (value,)).fetchone():
                raise CiviApiError("DB Error: constraint violation")

    def _check_acl(self, ctx: _Ctx, entity: str, row: dict[str, Any] | None) -> None:
        """Without "edit all contacts", contact-bound writes need ACL rights on the contact."""
        user = ctx.user
        if user is None or user.edit_all_contacts or row is None:
            return
        column = _contact_column(entity)
        contact_id = row.get(column) if column else None
        if contact_id is None:
            return
        if not self._conn.execute("SELECT 1 FROM acl_contact WHERE key_id = ? AND contact_id = ?",
                                  (user.key_id, contact_id)).fetchone():  # fmt: skip
            raise CiviApiError("ACL check failed", status=403)

    def _group_name(self, title: str) -> str:
        base = re.sub(r"[^A-Za-z0-9]+", "_", title).strip("_")[:60] or "group"
        name, n = base, 1
        while self._conn.execute("SELECT 1 FROM civi_group WHERE name = ?", (name,)).fetchone():
            n += 1
            name = f"{base}_{n}"
        return name

    def _rebuild_children(self) -> None:
        """``children`` is computed from every group's ``parents``."""
        children: dict[int, list[int]] = {}
        rows = self._conn.execute("SELECT id, parents FROM civi_group").fetchall()
        for group_id, parents in rows:
            for parent in unserialize(parents):
                children.setdefault(int(parent), []).append(group_id)
        self._conn.executemany("UPDATE civi_group SET children = ? WHERE id = ?",
                               [(serialize(children.get(r[0], [])), r[0])
                                for r in rows])  # fmt: skip

    # -- storage primitives
    def _row(self, entity: str, record_id: int) -> dict[str, Any] | None:
        row = self._conn.execute(f"SELECT * FROM {ENTITIES[entity].table} WHERE id = ?",
                                 (record_id,)).fetchone()  # fmt: skip
        return dict(row) if row else None

    def _output(self, entity: str, record_id: int, select: list[str] | None = None
                ) -> dict[str, Any]:  # fmt: skip
        rows, _ = self._select(_Ctx(None), entity, {"select": select or [],
                                                    "where": [["id", "=", record_id]]})  # fmt: skip
        return rows[0] if rows else {}

    def _insert(self, table: str, row: dict[str, Any]) -> int:
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        try:
            cursor = self._conn.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})",
                                        list(row.values()))  # fmt: skip
        except sqlite3.IntegrityError:
            raise CiviApiError("DB Error: already exists") from None
        return int(cursor.lastrowid or 0)

    def _next_id(self, table: str) -> int:
        row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?",
                                 (table,)).fetchone()  # fmt: skip
        return (row[0] if row else 0) + 1

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One transaction per API call or helper; nested use joins the outer one."""
        if self._conn.in_transaction:
            yield
            return
        self._conn.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

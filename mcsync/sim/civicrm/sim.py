"""A stateful simulator of CiviCRM APIv4 over REST, faithful where mcsync depends on it.

It reproduces ``reference/civicrm-api.md`` §1 and the checklist in §5.2: the route forms
(path, WordPress ``q=``, Joomla ``task=``, multi-call), authx (``X-Civi-Auth``, ``Authorization``,
``_authx``, legacy ``api_key``/``key``; guards; 401 text/plain), route permission (403 HTML),
the CSRF rule (400 JSON), GET-only-for-get* (405), maintenance (503), the success envelope with
its ``count`` quirk, the debug-visible and masked error envelopes, and the data model: contacts
with trash and ``modified_date`` bumps, emails with one primary per contact and holds, groups
(smart, nested), GroupContact writes that always log SubscriptionHistory, merges and deletes.

State lives in an in-memory SQLite database guarded by ``lock``; queries are translated by
:mod:`mcsync.sim.civicrm.query` into parameterised SQL with indexes, so paged reads stay
O(page) on a million contacts. Faults (5xx pages, drops, slowness) are injected by
:mod:`mcsync.sim.faults` around ``handle``, not here.
"""

from __future__ import annotations

import hmac
import json
import re
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

from mcsync.sim.base import SimRequest, SimResponse
from mcsync.sim.civicrm.query import Query, where_fetches_by_id, where_mentions
from mcsync.sim.civicrm.schema import (
    ENTITIES,
    SCHEMA,
    VIRTUAL_FIELDS,
    CiviApiError,
    civi_key,
    from_storage,
    register_functions,
    serialize,
    to_storage,
    unserialize,
)

ROUTE = re.compile(r"(?:^|/)civicrm/ajax/api4(?:/([A-Za-z0-9_]+)/([A-Za-z0-9_]+))?/?$")
AUTHX_ID_ROUTE = re.compile(r"(?:^|/)civicrm/authx/id/?$")
ACTIONS = ("get", "create", "update", "save", "delete", "replace", "getFields", "getActions")
COMMON_PARAMS = frozenset({"version", "checkPermissions", "debug", "language", "chain"})
ACTION_PARAMS: dict[str, frozenset[str]] = {
    "get": frozenset({"select", "where", "orderBy", "limit", "offset", "join", "groupBy",
                      "having"}),
    "create": frozenset({"values"}),
    "update": frozenset({"values", "where", "orderBy", "limit", "offset", "reload"}),
    "save": frozenset({"records", "defaults", "match", "reload"}),
    "delete": frozenset({"where", "orderBy", "limit", "offset"}),
    "replace": frozenset({"records", "defaults", "match", "reload", "where"}),
    "getFields": frozenset({"action", "loadOptions", "select", "where", "values", "orderBy",
                            "limit", "offset"}),
    "getActions": frozenset({"select", "where", "orderBy", "limit", "offset"}),
}  # fmt: skip
ENTITY_ACTION_PARAMS: dict[tuple[str, str], frozenset[str]] = {
    ("GroupContact", "create"): frozenset({"method", "tracking"}),
    ("GroupContact", "update"): frozenset({"method", "tracking"}),
    ("GroupContact", "save"): frozenset({"method", "tracking"}),
    ("GroupContact", "replace"): frozenset({"method", "tracking"}),
    ("Contact", "delete"): frozenset({"useTrash"}),
}
CONTACT_CHILD_TABLES = ("email", "address", "group_contact", "subscription_history",
                        "group_contact_cache", "acl_contact")  # fmt: skip
MASKED_MESSAGE = "Sorry an error occurred and your request was not completed. (Error ID: {})"
CSRF_MESSAGE = (
    "SECURITY ALERT: Ajax requests can only be issued by javascript clients, eg. CRM.api4()."
)
GET_MESSAGE = "SECURITY: All requests that modify the database must be http POST, not GET."
FORBIDDEN_HTML = (
    "<!DOCTYPE html>\n<html><head><title>Access denied | CiviCRM</title></head><body>"
    "<h1>Access denied</h1><p>You are not authorized to access this page.</p></body></html>\n"
)


@dataclass
class ApiUser:
    """An API key's principal and the permissions that change what the API does for it."""

    key_id: int
    contact_id: int | None = None
    can_authenticate: bool = True  # "authenticate with api key" (the authx "perm" guard)
    debug_visible: bool = True  # "view debug output": unmasked error messages
    view_all_contacts: bool = True  # otherwise reads are silently limited to its ACL contacts
    edit_all_contacts: bool = True  # otherwise contact-bound writes outside its ACL get 403


@dataclass
class _Ctx:
    """Per-call write context: who writes, and GroupContact's method/tracking params."""

    user: ApiUser | None
    method: str = "API"
    tracking: str | None = None


@dataclass
class _Result:
    values: Any
    count: int
    count_matched: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class CiviSim:
    """CiviCRM APIv4 over REST, in memory. Safe to share between threads via ``lock``."""

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

    # ============================================================== configuration & seeding

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
    ) -> ApiUser:
        """Register another key; ACL ids are the contacts it may see/edit without "all" rights."""
        with self.lock:
            user = ApiUser(len(self._users) + 1, contact_id, can_authenticate, debug_visible,
                           view_all_contacts, edit_all_contacts)  # fmt: skip
            self._users[api_key] = user
            self._conn.executemany(
                "INSERT OR IGNORE INTO acl_contact (key_id, contact_id) VALUES (?, ?)",
                [(user.key_id, int(cid)) for cid in acl_contact_ids],
            )
            return user

    def now(self) -> str:
        """The server's current time as CiviCRM returns dates: naive, in the site zone."""
        return self._format(self._clock())

    def _format(self, moment: datetime) -> str:
        aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        return aware.astimezone(self._tz).strftime("%Y-%m-%d %H:%M:%S")

    def add_group(
        self,
        title: str,
        *,
        name: str | None = None,
        group_type: list[str] | None = None,
        is_smart: bool = False,
        parents: list[int] | None = None,
        is_active: bool = True,
        is_hidden: bool = False,
    ) -> int:
        """A group; ``group_type`` names default to ["Mailing List"]; smart ones get a search."""
        with self.lock, self._tx():
            cols: dict[str, Any] = {
                "title": title, "name": name, "is_active": int(is_active),
                "is_hidden": int(is_hidden),
                "group_type": to_storage(ENTITIES["Group"].fields["group_type"],
                                         group_type if group_type is not None
                                         else ["Mailing List"], "name"),
                "parents": serialize(parents or []),
            }  # fmt: skip
            if is_smart:
                self._saved_searches += 1
                cols["saved_search_id"] = self._saved_searches
            return self._create_row(_Ctx(None), "Group", cols)

    def add_contact(
        self,
        first_name: str = "",
        last_name: str = "",
        *,
        contact_type: str = "Individual",
        is_deleted: bool = False,
        is_deceased: bool = False,
        do_not_email: bool = False,
        is_opt_out: bool = False,
        email: str | None = None,
    ) -> int:
        with self.lock, self._tx():
            cols = {"contact_type": contact_type, "first_name": first_name or None,
                    "last_name": last_name or None, "is_deleted": int(is_deleted),
                    "is_deceased": int(is_deceased), "do_not_email": int(do_not_email),
                    "is_opt_out": int(is_opt_out)}  # fmt: skip
            contact_id = self._create_row(_Ctx(None), "Contact", cols)
            if email:
                self._create_row(_Ctx(None), "Email", {"contact_id": contact_id, "email": email,
                                                       "is_primary": 1})  # fmt: skip
            return contact_id

    def update_contact(
        self, contact_id: int, *, when: datetime | None = None, **fields: Any
    ) -> None:
        """A CiviCRM-side edit (opt-out, deceased, trash): bumps ``modified_date``, no history.
        ``when`` back-dates the edit (a flag set long ago), which only admin-side helpers can."""
        with self.lock, self._tx():
            self._update_row(_Ctx(None), "Contact", contact_id, self._columns("Contact", fields))
            if when is not None:
                self._conn.execute("UPDATE contact SET modified_date = ? WHERE id = ?",
                                   (self._format(when), contact_id))  # fmt: skip

    def add_email(
        self,
        contact_id: int,
        email: str,
        *,
        is_primary: bool = True,
        is_bulkmail: bool = False,
        on_hold: int = 0,
        location_type_id: int = 1,
    ) -> int:
        with self.lock, self._tx():
            cols = {"contact_id": contact_id, "email": email, "is_primary": int(is_primary),
                    "is_bulkmail": int(is_bulkmail), "on_hold": on_hold,
                    "location_type_id": location_type_id}  # fmt: skip
            return self._create_row(_Ctx(None), "Email", cols)

    def update_email(self, email_id: int, **fields: Any) -> None:
        """Edit an email as CiviCRM does (holds set ``hold_date``; the contact is touched)."""
        with self.lock, self._tx():
            self._update_row(_Ctx(None), "Email", email_id, self._columns("Email", fields))

    def delete_email(self, email_id: int) -> None:
        with self.lock, self._tx():
            self._delete_row(_Ctx(None), "Email", email_id)

    def add_address(self, contact_id: int, **fields: Any) -> int:
        """An address (``city``, ``postal_code``, ``country_id``...), primary unless told not."""
        with self.lock, self._tx():
            cols = {"is_primary": 1, **self._columns("Address", fields), "contact_id": contact_id}
            return self._create_row(_Ctx(None), "Address", cols)

    def add_tag(self, name: str) -> int:
        with self.lock, self._tx():
            return self._create_row(_Ctx(None), "Tag", {"name": name})

    def tag_contact(self, contact_id: int, tag_id: int) -> int:
        with self.lock, self._tx():
            return self._create_row(_Ctx(None), "EntityTag", {"entity_id": contact_id,
                                                              "tag_id": tag_id})  # fmt: skip

    def set_group_status(
        self,
        contact_id: int,
        group_id: int,
        status: str,
        *,
        method: str = "Admin",
        when: datetime | None = None,
        history: bool = True,
    ) -> None:
        """Set a membership as the admin UI does: GroupContact row plus a history row.

        ``history=False`` imitates a direct SQL import (no history). ``when`` back-dates the
        history row, which only admin-side helpers can do.
        """
        with self.lock, self._tx():
            existing = self._conn.execute(
                "SELECT id FROM group_contact WHERE contact_id = ? AND group_id = ?",
                (contact_id, group_id),
            ).fetchone()
            if existing:
                self._conn.execute("UPDATE group_contact SET status = ? WHERE id = ?",
                                   (status, existing[0]))  # fmt: skip
            else:
                self._conn.execute(
                    "INSERT INTO group_contact (group_id, contact_id, status) VALUES (?, ?, ?)",
                    (group_id, contact_id, status),
                )
            if history:
                date = self._format(when) if when else self.now()
                self._conn.execute(
                    "INSERT INTO subscription_history (contact_id, group_id, date, method, "
                    "status) VALUES (?, ?, ?, ?, ?)",
                    (contact_id, group_id, date, method, status),
                )

    def delete_group_contact(
        self,
        contact_id: int,
        group_id: int,
        *,
        method: str = "Admin",
        when: datetime | None = None,
    ) -> None:
        """Delete a membership as the contact's Groups tab "Delete" does (APIv4
        ``GroupContact.delete`` likewise, with method ``API``): the row is hard-deleted and
        history logs status ``Deleted`` (civicrm-api.md §2.4). ``when`` back-dates the history
        row, which only admin-side helpers can do."""
        with self.lock, self._tx():
            deleted = self._conn.execute(
                "DELETE FROM group_contact WHERE contact_id = ? AND group_id = ?",
                (contact_id, group_id),
            ).rowcount
            if deleted:
                date = self._format(when) if when else self.now()
                self._conn.execute(
                    "INSERT INTO subscription_history (contact_id, group_id, date, method, "
                    "status) VALUES (?, ?, ?, ?, 'Deleted')",
                    (contact_id, group_id, date, method),
                )

    def set_smart_group_members(self, group_id: int, contact_ids: Iterable[int]) -> None:
        """Rebuild a smart group's cache (criteria-driven membership: no history, no dates)."""
        with self.lock, self._tx():
            self._conn.execute("DELETE FROM group_contact_cache WHERE group_id = ?", (group_id,))
            self._conn.executemany(
                "INSERT OR IGNORE INTO group_contact_cache (group_id, contact_id) VALUES (?, ?)",
                [(group_id, int(c)) for c in contact_ids],
            )
            self._conn.execute("UPDATE civi_group SET cache_date = ? WHERE id = ?",
                               (self.now(), group_id))  # fmt: skip

    def seed_contacts(
        self,
        rows: Iterable[dict[str, Any]],
        *,
        history: bool = True,
        method: str = "Admin",
        when: datetime | None = None,
        chunk: int = 50_000,
    ) -> list[int]:
        """Bulk-insert contacts (fields as in ``add_contact``) with optional ``email`` and
        ``groups`` ({group_id: status}); ``history=False`` imitates a direct SQL import.

        Memberships go through a scratch table so SQLite copies them into GroupContact and
        SubscriptionHistory itself: a million contacts seed in well under a minute.
        """
        with self.lock, self._tx():
            now = self.now()
            date = self._format(when) if when else now
            ids: list[int] = []
            next_id = self._next_id("contact")
            next_email = self._next_id("email")
            contacts: list[tuple[Any, ...]] = []
            extras: list[tuple[Any, ...]] = []
            emails: list[tuple[Any, ...]] = []
            memberships: list[tuple[Any, ...]] = []
            self._conn.execute("CREATE TEMP TABLE IF NOT EXISTS seed_membership "
                               "(contact_id INTEGER, group_id INTEGER, status TEXT)")  # fmt: skip
            for row in rows:
                cid = next_id
                next_id += 1
                ids.append(cid)
                ctype = row.get("contact_type", "Individual")
                first, last = row.get("first_name") or None, row.get("last_name") or None
                email = row.get("email")
                org, household = row.get("organization_name"), row.get("household_name")
                if ctype == "Individual" and first and last:
                    display, sort = first + " " + last, last + ", " + first
                else:
                    display, sort = _names(ctype, first, last, org, household, email)
                contacts.append((
                    cid, ctype, first, last, display, sort, 1 if row.get("is_deleted") else 0,
                    1 if row.get("is_deceased") else 0, 1 if row.get("do_not_email") else 0,
                    1 if row.get("is_opt_out") else 0, now, now,
                ))  # fmt: skip
                if org or household or row.get("external_identifier") or row.get("source"):
                    extras.append((org, household, row.get("external_identifier"),
                                   row.get("source"), cid))  # fmt: skip
                if email:
                    on_hold = int(row.get("on_hold", 0))
                    emails.append((next_email, cid, email, on_hold,
                                   1 if row.get("is_bulkmail") else 0,
                                   now if on_hold else None))  # fmt: skip
                    next_email += 1
                groups = row.get("groups")
                if groups:
                    memberships.extend((cid, int(g), status) for g, status in groups.items())
                if len(contacts) >= chunk:
                    self._flush_seed(contacts, extras, emails, memberships)
            self._flush_seed(contacts, extras, emails, memberships)
            self._conn.execute(
                "INSERT INTO group_contact (group_id, contact_id, status) SELECT group_id, "
                "contact_id, status FROM seed_membership WHERE true ON CONFLICT "
                "(contact_id, group_id) DO UPDATE SET status = excluded.status"
            )
            if history:
                self._conn.execute(
                    "INSERT INTO subscription_history (contact_id, group_id, date, method, "
                    "status) SELECT contact_id, group_id, ?, ?, status FROM seed_membership "
                    "ORDER BY rowid", (date, method))  # fmt: skip
            self._conn.execute("DELETE FROM seed_membership")
            return ids

    def _flush_seed(self, *batches: list[tuple[Any, ...]]) -> None:
        contacts, extras, emails, memberships = batches
        self._conn.executemany(
            "INSERT INTO contact (id, contact_type, first_name, last_name, display_name, "
            "sort_name, is_deleted, is_deceased, do_not_email, is_opt_out, created_date, "
            "modified_date) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            contacts,
        )
        self._conn.executemany(
            "UPDATE contact SET organization_name = ?, household_name = ?, "
            "external_identifier = ?, source = ? WHERE id = ?",
            extras,
        )
        self._conn.executemany(
            "INSERT INTO email (id, contact_id, email, on_hold, is_bulkmail, hold_date, "
            "location_type_id, is_primary) VALUES (?, ?, ?, ?, ?, ?, 1, 1)",
            emails,
        )
        self._conn.executemany("INSERT INTO seed_membership VALUES (?, ?, ?)", memberships)
        for batch in batches:
            batch.clear()

    def merge_contacts(self, keep_id: int, remove_id: int) -> None:
        """CiviCRM's merge: the loser's emails, addresses and group rows move to the keeper
        (where the keeper has none), its history rows are re-pointed without new dates, and
        the loser goes to the trash."""
        with self.lock, self._tx():
            ctx = _Ctx(None)
            kept = {civi_key(r[0]) for r in self._conn.execute(
                "SELECT email FROM email WHERE contact_id = ?", (keep_id,))}  # fmt: skip
            for email_id, address in self._conn.execute(
                "SELECT id, email FROM email WHERE contact_id = ? ORDER BY id", (remove_id,)
            ).fetchall():
                if civi_key(address) in kept:
                    self._delete_row(ctx, "Email", email_id)
                else:
                    self._conn.execute(
                        "UPDATE email SET contact_id = ?, is_primary = 0 WHERE id = ?",
                        (keep_id, email_id),
                    )
            if not self._conn.execute("SELECT 1 FROM address WHERE contact_id = ?",
                                      (keep_id,)).fetchone():  # fmt: skip
                self._conn.execute("UPDATE address SET contact_id = ? WHERE contact_id = ?",
                                   (keep_id, remove_id))  # fmt: skip
            self._conn.execute(
                "UPDATE group_contact SET contact_id = ? WHERE contact_id = ? AND group_id NOT IN "
                "(SELECT group_id FROM group_contact WHERE contact_id = ?)",
                (keep_id, remove_id, keep_id),
            )
            self._conn.execute("DELETE FROM group_contact WHERE contact_id = ?", (remove_id,))
            self._conn.execute("UPDATE subscription_history SET contact_id = ? WHERE "
                               "contact_id = ?", (keep_id, remove_id))  # fmt: skip
            self._conn.execute(
                "UPDATE entity_tag SET entity_id = ? WHERE entity_id = ? AND tag_id NOT IN "
                "(SELECT tag_id FROM entity_tag WHERE entity_id = ?)", (keep_id, remove_id, keep_id)
            )  # fmt: skip
            self._ensure_primary("email", keep_id)
            self._update_row(ctx, "Contact", keep_id, {})
            self._update_row(ctx, "Contact", remove_id, {"is_deleted": 1})

    def delete_contact(self, contact_id: int, *, permanent: bool = False) -> None:
        """Trash a contact (bumps ``modified_date``) or delete it with all its rows."""
        with self.lock, self._tx():
            self._delete_contact(_Ctx(None), contact_id, use_trash=not permanent)

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        """Raw SQL over the simulator's tables, for test assertions."""
        with self.lock:
            return [dict(r) for r in self._conn.execute(sql, tuple(params)).fetchall()]

    def group_status(self, contact_id: int, group_id: int) -> str | None:
        with self.lock:
            row = self._conn.execute(
                "SELECT status FROM group_contact WHERE contact_id = ? AND group_id = ?",
                (contact_id, group_id),
            ).fetchone()
            return row[0] if row else None

    # ==================================================================== HTTP front door

    def handle(self, request: SimRequest) -> SimResponse:
        """Answer one HTTP request exactly as a CiviCRM site would."""
        with self.lock:
            fields = _request_fields(request)
            route = _route(request)
            if route is None:
                return SimResponse(404, {"Content-Type": "text/html"}, b"<h1>Page not found</h1>")
            if route[0] == "api":
                self.request_log.append((request.method, f"{route[1]}.{route[2]}"))
            if self.maintenance:
                message = "Temporarily unavailable for maintenance."
                return SimResponse.json(503, {"status_code": 503, "status_message": message})
            auth = self._authenticate(request, fields)
            if isinstance(auth, SimResponse):
                return auth
            user, flow = auth
            if route[0] == "authx_id":
                return SimResponse.json(200, {
                    "contact_id": user.contact_id if user else None, "user_id": None,
                    "flow": flow, "cred": "api_key" if user else None,
                })  # fmt: skip
            if user is None:
                return SimResponse(403, {"Content-Type": "text/html; charset=UTF-8"},
                                   FORBIDDEN_HTML.encode())  # fmt: skip
            csrf_exempt = flow in ("xheader", "param", "legacyrest")
            requested_with = request.headers.get("x-requested-with", "")
            if not (csrf_exempt or requested_with == "XMLHttpRequest" or self.debug_enabled
                    or request.method == "OPTIONS"):  # fmt: skip
                return SimResponse.json(400, {"error_code": 400, "error_message": CSRF_MESSAGE})
            if route[0] == "multi":
                return self._multi_call(request, user, fields)
            entity, action = route[1], route[2]
            if request.method == "GET" and not (action.startswith("get")
                                                or action == "autocomplete"):  # fmt: skip
                return SimResponse.json(405, {"error_code": 405, "error_message": GET_MESSAGE})
            status, payload = self._call(user, entity, action, fields.get("params"),
                                         fields.get("index"))  # fmt: skip
            return SimResponse.json(status, payload)

    def _authenticate(
        self, request: SimRequest, fields: dict[str, str]
    ) -> tuple[ApiUser | None, str | None] | SimResponse:
        """authx: credential sources in order, then the guards; failures are text/plain 401."""
        headers = request.headers
        site_key = headers.get("x-civi-key") or fields.get("_authxSiteKey")
        if "x-civi-auth" in headers:
            cred, flow = headers["x-civi-auth"], "xheader"
        elif "authorization" in headers and self.header_flow_enabled:
            cred, flow = headers["authorization"], "header"
        elif fields.get("_authx"):
            cred, flow = fields["_authx"], "param"
        elif fields.get("api_key") and fields.get("key"):
            cred, flow, site_key = "Bearer " + fields["api_key"], "legacyrest", fields["key"]
        else:
            return None, None
        scheme, _, token = cred.strip().partition(" ")
        user = self._lookup_key(token.strip()) if scheme == "Bearer" else None
        if user is None:
            return _text_401("Invalid credential")
        if flow == "legacyrest" and not self._site_key_ok(site_key):
            return _text_401("Invalid credential")
        guard_ok = (
            not self.guards
            or ("site_key" in self.guards and self._site_key_ok(site_key))
            or ("perm" in self.guards and user.can_authenticate)
        )
        if not guard_ok:
            return _text_401(f"Login not permitted. Must satisfy guard ({', '.join(self.guards)}).")
        return user, flow

    def _lookup_key(self, token: str) -> ApiUser | None:
        for key, user in self._users.items():
            if hmac.compare_digest(key.encode(), token.encode()):
                return user
        return None

    def _site_key_ok(self, given: str | None) -> bool:
        return bool(self.site_key and given and hmac.compare_digest(self.site_key, given))

    def _multi_call(self, request: SimRequest, user: ApiUser, fields: dict[str, str]
                    ) -> SimResponse:  # fmt: skip
        try:
            calls = json.loads(fields.get("calls") or "{}")
        except ValueError:
            calls = None
        if not isinstance(calls, dict):
            status, payload = self._error(user, CiviApiError("Invalid calls: expected a JSON "
                                                             "object"))  # fmt: skip
            return SimResponse.json(status, payload)
        out: dict[str, Any] = {}
        any_ok = False
        for name, call in calls.items():
            if not isinstance(call, list) or len(call) < 2:
                status, out[name] = self._error(user, CiviApiError("Invalid call"))
                continue
            entity, action = str(call[0]), str(call[1])
            self.request_log.append((request.method, f"{entity}.{action}"))
            params = call[2] if len(call) > 2 else {}
            index = call[3] if len(call) > 3 else None
            status, out[name] = self._call(user, entity, action, params, index)
            any_ok = any_ok or status == 200
        return SimResponse.json(200 if any_ok or not calls else 500, out)

    # ==================================================================== API execution

    def _call(self, user: ApiUser, entity: str, action: str, params: Any, index: Any
              ) -> tuple[int, dict[str, Any]]:  # fmt: skip
        """Run one API call; returns (HTTP status, envelope)."""
        try:
            if isinstance(params, str):
                try:
                    params = json.loads(params) if params else {}
                except ValueError:
                    raise CiviApiError("Invalid params: not valid JSON") from None
            if params is None:
                params = {}
            if not isinstance(params, dict):
                raise CiviApiError("Invalid params: expected a JSON object")
            with self._tx():
                result = self._execute(user, entity, action, params)
            values = _apply_index(result.values, _parse_index(index))
        except CiviApiError as exc:
            return self._error(user, exc)
        payload: dict[str, Any] = {
            "values": values, "entity": entity, "action": action, "debug": None, "version": 4,
            "count": result.count, "countFetched": len(result.values),
        }  # fmt: skip
        if result.count_matched is not None:
            payload["countMatched"] = result.count_matched
        payload.update(result.extra)
        return 200, payload

    def _error(self, user: ApiUser | None, exc: CiviApiError) -> tuple[int, dict[str, Any]]:
        error_id = uuid.uuid4().hex[:12]
        error_id = f"{error_id[:4]}-{error_id[4:8]}-{error_id[8:]}"
        self.error_log.append((error_id, exc.message))
        if user is not None and user.debug_visible:
            return exc.status, {"error_id": error_id, "error_code": 0,
                                "error_message": exc.message, "status": exc.status}  # fmt: skip
        return exc.status, {"error_code": "1", "error_message": MASKED_MESSAGE.format(error_id),
                            "status": exc.status}  # fmt: skip

    def _execute(self, user: ApiUser, entity: str, action: str, params: dict[str, Any]
                 ) -> _Result:  # fmt: skip
        if entity not in ENTITIES or action not in ACTIONS:
            raise CiviApiError(
                f"API ({entity}, {action}) does not exist (join the API team and implement it!)"
            )
        allowed = (
            COMMON_PARAMS
            | ACTION_PARAMS[action]
            | ENTITY_ACTION_PARAMS.get((entity, action), frozenset())
        )
        for name in params:
            if name not in allowed:
                raise CiviApiError(f"Unknown api parameter: set{name[:1].upper()}{name[1:]}")
        for unsupported in ("join", "groupBy", "having"):
            if params.get(unsupported):
                raise CiviApiError(f"The simulator does not model the '{unsupported}' parameter")
        ctx = _Ctx(user, str(params.get("method") or "API"), params.get("tracking"))
        result: _Result = getattr(self, f"_action_{action}")(ctx, entity, params)
        if params.get("chain"):
            self._run_chains(user, result.values, params["chain"])
        return result

    def _run_chains(self, user: ApiUser, rows: list[dict[str, Any]], chain: Any) -> None:
        if not isinstance(chain, dict):
            raise CiviApiError("Invalid chain: expected an object")
        for row in rows:
            for name, call in chain.items():
                if not isinstance(call, list) or len(call) < 2:
                    raise CiviApiError(f"Invalid chain '{name}'")
                params = _substitute(call[2] if len(call) > 2 else {}, row)
                sub = self._execute(user, str(call[0]), str(call[1]), params)
                row[name] = _apply_index(sub.values, _parse_index(call[3] if len(call) > 3
                                                                  else None))  # fmt: skip

    # -- get
    def _select(self, ctx: _Ctx, entity: str, params: dict[str, Any]
                ) -> tuple[list[dict[str, Any]], int | None]:  # fmt: skip
        """Rows for a get (and the total when row_count is selected)."""
        query = Query(entity)
        select = params.get("select") or []
        if not isinstance(select, list):
            raise CiviApiError("Invalid select: expected a list")
        # APIv4 SQL functions in select: only NOW() ("NOW() AS alias"), the server's current
        # time in the site's zone like every date it returns (civicrm-core SqlFunctionNOW).
        now_keys = [key for key in map(_now_alias, select) if key]
        fields = [e for e in select if not _now_alias(e)]
        items, row_count = query.expand_select(fields) if fields or not now_keys else ([], False)
        where_sql, order_sql = self._where_and_order(ctx, query, entity, params)
        limit, offset = _int_param(params, "limit"), _int_param(params, "offset")
        total = None
        if row_count:
            total = self._conn.execute(f"SELECT COUNT(*) FROM {query.from_sql()} WHERE {where_sql}",
                                       query.params).fetchone()[0]  # fmt: skip
        if not items and row_count:
            return [], total
        # Every selected field unknown: rows are still returned, with nothing in them.
        cols = ", ".join(f"{item.column.sql} AS c{i}" for i, item in enumerate(items)) or "a.id"
        sql = (f"SELECT {cols} FROM {query.from_sql()} WHERE {where_sql} ORDER BY {order_sql} "
               "LIMIT ? OFFSET ?")  # fmt: skip
        cursor = self._conn.execute(sql, [*query.params, limit or -1, offset])
        rows = [
            {item.key: from_storage(item.column.spec, raw[i], item.column.suffix)
             for i, item in enumerate(items)}
            for raw in cursor
        ]  # fmt: skip
        for row in rows:
            row.update(dict.fromkeys(now_keys, self.now()))
        return rows, total

    def _where_and_order(self, ctx: _Ctx, query: Query, entity: str, params: dict[str, Any]
                         ) -> tuple[str, str]:  # fmt: skip
        where = params.get("where") or []
        clauses = [query.where_sql(where)]
        if (entity == "Contact" and not where_mentions(where, "is_deleted")
                and not where_fetches_by_id(where)):  # fmt: skip
            clauses.append("a.is_deleted = 0")
        user = ctx.user
        if user is not None and not user.view_all_contacts:
            column = _contact_column(entity)
            if column:
                clauses.append(f"a.{column} IN (SELECT contact_id FROM acl_contact "
                               "WHERE key_id = ?)")  # fmt: skip
                query.params.append(user.key_id)
        return " AND ".join(clauses), query.order_sql(params.get("orderBy"))

    def _action_get(self, ctx: _Ctx, entity: str, params: dict[str, Any]) -> _Result:
        rows, total = self._select(ctx, entity, params)
        if total is not None:
            return _Result(rows, total, total)
        limit, offset = _int_param(params, "limit"), _int_param(params, "offset")
        full_page = bool(limit) and len(rows) >= limit
        return _Result(rows, len(rows) if full_page else len(rows) + offset)

    def _matching_ids(self, ctx: _Ctx, entity: str, params: dict[str, Any]) -> list[int]:
        query = Query(entity)
        where_sql, order_sql = self._where_and_order(ctx, query, entity, params)
        sql = (f"SELECT a.id FROM {query.from_sql()} WHERE {where_sql} ORDER BY {order_sql} "
               "LIMIT ? OFFSET ?")  # fmt: skip
        limit, offset = _int_param(params, "limit"), _int_param(params, "offset")
        return [r[0] for r in self._conn.execute(sql, [*query.params, limit or -1, offset])]

    # -- writes
    def _action_create(self, ctx: _Ctx, entity: str, params: dict[str, Any]) -> _Result:
        values = params.get("values") or {}
        if not isinstance(values, dict):
            raise CiviApiError("Invalid values: expected an object")
        record, _ = self._save_record(ctx, entity, values, reload=False)
        return _Result([record], 1)

    def _action_update(self, ctx: _Ctx, entity: str, params: dict[str, Any]) -> _Result:
        values = dict(params.get("values") or {})
        where = params.get("where") or []
        if not where:
            if values.get("id") is None:
                raise CiviApiError(
                    'Parameter "where" is required unless primary keys are supplied in values.'
                )
            where = [["id", "=", values["id"]]]
        values.pop("id", None)
        ids = self._matching_ids(ctx, entity, {**params, "where": where})
        reload = params.get("reload")
        records = [self._save_record(ctx, entity, {**values, "id": i}, reload=reload)[0]
                   for i in ids]  # fmt: skip
        return _Result(records, len(records))

    def _action_save(self, ctx: _Ctx, entity: str, params: dict[str, Any]) -> _Result:
        records = params.get("records")
        if not records or not isinstance(records, list):
            raise CiviApiError('Parameter "records" is required.')
        saved, updated = self._save_all(ctx, entity, params, records)
        return _Result(saved, len(saved), updated)

    def _save_all(self, ctx: _Ctx, entity: str, params: dict[str, Any], records: list[Any]
                  ) -> tuple[list[dict[str, Any]], int]:  # fmt: skip
        defaults = params.get("defaults") or {}
        match = params.get("match") or []
        saved: list[dict[str, Any]] = []
        updated = 0
        for raw in records:
            if not isinstance(raw, dict):
                raise CiviApiError("Invalid records: expected a list of objects")
            record = {**defaults, **raw}
            if record.get("id") is None and match and all(m in record for m in match):
                found = self._matching_ids(ctx, entity, {"where": [
                    [m, "IS EMPTY"] if record[m] in (None, "") else [m, "=", record[m]]
                    for m in match], "limit": 2})  # fmt: skip
                if len(found) == 1:
                    record["id"] = found[0]
            out, was_update = self._save_record(ctx, entity, record, reload=params.get("reload"))
            updated += was_update
            saved.append(out)
        return saved, updated

    def _action_delete(self, ctx: _Ctx, entity: str, params: dict[str, Any]) -> _Result:
        if not params.get("where"):
            raise CiviApiError(f'Cannot delete {entity} with no "where" parameter specified')
        ids = self._matching_ids(ctx, entity, params)
        for record_id in ids:
            self._check_acl(ctx, entity, self._row(entity, record_id))
            if entity == "Contact":
                self._delete_contact(ctx, record_id, use_trash=params.get("useTrash", True)
                                     not in (False, 0, "0", "false"))  # fmt: skip
            else:
                self._delete_row(ctx, entity, record_id)
        return _Result([{"id": i} for i in ids], len(ids))

    def _action_replace(self, ctx: _Ctx, entity: str, params: dict[str, Any]) -> _Result:
        if not params.get("where"):
            raise CiviApiError('Parameter "where" is required.')
        records = params.get("records") or []
        existing = self._matching_ids(ctx, entity, {"where": params["where"]})
        saved, updated = self._save_all(ctx, entity, params, records)
        kept = {r.get("id") for r in saved}
        deleted = [i for i in existing if i not in kept]
        for record_id in deleted:
            if entity == "Contact":
                self._delete_contact(ctx, record_id, use_trash=True)
            else:
                self._delete_row(ctx, entity, record_id)
        return _Result(saved, len(saved), extra={"deleted": [{"id": i} for i in deleted]})

    def _action_getFields(self, ctx: _Ctx, entity: str, params: dict[str, Any]) -> _Result:
        load = params.get("loadOptions")
        rows = []
        for spec in ENTITIES[entity].fields.values():
            row: dict[str, Any] = {
                "name": spec.name, "title": spec.title or spec.name, "entity": entity,
                "type": "Filter" if spec.filter_only else "Field", "data_type": spec.data_type,
                "fk_entity": spec.fk_entity, "serialize": 1 if spec.serialize else None,
                "readonly": spec.readonly, "required": spec.required,
                "default_value": spec.default, "nullable": not spec.required,
                "options": bool(spec.options),
            }  # fmt: skip
            if load and spec.options:
                keys = load if isinstance(load, list) else None
                row["options"] = (
                    [{k: getattr(o, k, None) if k != "id" else o.value for k in keys}
                     for o in spec.options] if keys
                    else {str(o.value): o.label for o in spec.options}
                )  # fmt: skip
            rows.append(row)
        rows = _filter_rows(rows, params.get("where") or [])
        select = params.get("select")
        if select:
            rows = [{k: r.get(k) for k in select} for r in rows]
        return _Result(rows, len(rows))

    def _action_getActions(self, ctx: _Ctx, entity: str, params: dict[str, Any]) -> _Result:
        rows = [{"name": a} for a in ACTIONS]
        return _Result(_filter_rows(rows, params.get("where") or []), len(ACTIONS))

    # -- one record through the API
    def _save_record(self, ctx: _Ctx, entity: str, values: dict[str, Any], reload: Any
                     ) -> tuple[dict[str, Any], bool]:  # fmt: skip
        """Create or update one record from API values; returns (output record, was update)."""
        cols, subs, echo = self._split_values(entity, values)
        record_id = values.get("id")
        if record_id is not None:
            record_id = int(record_id)
            current = self._row(entity, record_id)
            if current is None:
                raise CiviApiError(f"{entity} {record_id} not found")
            self._check_acl(ctx, entity, current)
            self._check_acl(ctx, entity, {**current, **cols})
            self._update_row(ctx, entity, record_id, cols)
        else:
            self._check_acl(ctx, entity, cols)
            record_id = self._create_row(ctx, entity, cols)
        for join, sub in subs.items():
            self._write_primary(ctx, join, record_id, sub)
        stored = self._output(entity, record_id)
        if values.get("id") is None or reload is True:
            out = {k: v for k, v in stored.items() if v is not None and v != []}
        elif isinstance(reload, list):
            out = {k: stored.get(k) for k in ["id", *reload]}
        else:
            out = {"id": record_id}
        for key in values:
            name = key.partition(":")[0]
            if key in echo or "." in key:
                out[key] = None if key in echo else values[key]
            elif name in stored:
                out[key] = (
                    self._output(entity, record_id, [key])[key] if ":" in key else stored[name]
                )
        return out, values.get("id") is not None

    def _split_values(self, entity: str, values: dict[str, Any]
                      ) -> tuple[dict[str, Any], dict[str, dict[str, Any]], set[str]]:  # fmt: skip
        """Writable column values, implicit-join sub-records, and unknown keys to echo as null."""
        spec = ENTITIES[entity]
        cols: dict[str, Any] = {}
        subs: dict[str, dict[str, Any]] = {}
        echo: set[str] = set()
        for key, value in values.items():
            name, _, suffix = key.partition(":")
            head, dot, rest = name.partition(".")
            if dot and head in spec.implicit_joins:
                subs.setdefault(head, {})[rest + (":" + suffix if suffix else "")] = value
                continue
            fspec = spec.fields.get(name)
            if fspec is None or dot:
                echo.add(key)
            elif name != "id" and not fspec.readonly and name not in VIRTUAL_FIELDS:
                cols[name] = to_storage(fspec, value, suffix or None)
        return cols, subs, echo

    def _columns(self, entity: str, fields: dict[str, Any]) -> dict[str, Any]:
        cols, subs, echo = self._split_values(entity, fields)
        if echo or subs:
            raise ValueError(f"unknown {entity} fields: {sorted(echo | set(subs))}")
        return cols

    def _write_primary(self, ctx: _Ctx, join: str, contact_id: int, sub: dict[str, Any]) -> None:
        """``email_primary.email`` etc. on Contact writes: update or create the primary row."""
        target = ENTITIES["Contact"].implicit_joins[join].entity
        table = ENTITIES[target].table
        row = self._conn.execute(f"SELECT id FROM {table} WHERE contact_id = ? AND is_primary = 1",
                                 (contact_id,)).fetchone()  # fmt: skip
        cols, _, _ = self._split_values(target, sub)
        if row:
            self._update_row(ctx, target, row[0], cols)
        elif any(v is not None for v in cols.values()):
            self._create_row(ctx, target, {**cols, "contact_id": contact_id, "is_primary": 1})

    # ============================================================ data-model behaviour

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


# ======================================================================== module helpers


def _names(contact_type: str, first: str | None, last: str | None, org: str | None,
           household: str | None, email: str | None) -> tuple[str | None, str | None]:  # fmt: skip
    """CiviCRM's default display/sort name formats (falling back to the email)."""
    if contact_type == "Organization":
        display = sort = org
    elif contact_type == "Household":
        display = sort = household
    else:
        display = " ".join(p for p in (first, last) if p) or None
        sort = ", ".join(p for p in (last, first) if p) or None
    return (display or email, sort or email)


def _contact_column(entity: str) -> str | None:
    """The column that ties a row to a contact, for ACLs."""
    if entity == "Contact":
        return "id"
    if entity == "EntityTag":
        return "entity_id"
    return "contact_id" if "contact_id" in ENTITIES[entity].fields else None


def _text_401(reason: str) -> SimResponse:
    return SimResponse(401, {"Content-Type": "text/plain"}, f"HTTP 401 {reason}".encode())


def _route(request: SimRequest) -> tuple[str, ...] | None:
    """("api", Entity, action), ("multi",), ("authx_id",) or None, from path or q=/task=."""
    candidates = [request.path]
    for name in ("q", "task"):
        value = request.arg(name)
        if value:
            candidates.append(value.split("?")[0])
    for target in candidates:
        match = ROUTE.search(target)
        if match:
            return ("api", match.group(1), match.group(2)) if match.group(1) else ("multi",)
        if AUTHX_ID_ROUTE.search(target):
            return ("authx_id",)
    return None


def _request_fields(request: SimRequest) -> dict[str, str]:
    """PHP's $_REQUEST: query string, overridden by form fields. JSON bodies are ignored."""
    fields = {k: v[-1] for k, v in request.query.items() if v}
    content_type = request.headers.get("content-type", "")
    if request.body and content_type.startswith("application/x-www-form-urlencoded"):
        form = parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True)
        fields.update({k: v[-1] for k, v in form.items() if v})
    elif request.body and content_type.startswith("multipart/form-data"):
        message = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + request.body
        )
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name:
                fields[str(name)] = part.get_content()
    return fields


def _parse_index(index: Any) -> int | str | None:
    if index is None or index == "":
        return None
    if isinstance(index, int):
        return index
    text = str(index)
    if text.lstrip("-").isdigit():
        return int(text)
    return text.strip('"')


def _apply_index(values: list[dict[str, Any]], index: int | str | None) -> Any:
    if index is None:
        return values
    if isinstance(index, int):
        if not -len(values) <= index < len(values):
            raise CiviApiError(f"Index {index} not found in api results")
        return values[index]
    return {str(row.get(index)): row for row in values}


def _int_param(params: dict[str, Any], name: str) -> int:
    value = params.get(name) or 0
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise CiviApiError(f"Invalid {name}: expected an integer") from None
    if number < 0:
        raise CiviApiError(f"Invalid {name}: must not be negative")
    return number


def _substitute(value: Any, row: dict[str, Any]) -> Any:
    """Chain back-references: "$id", "$contact_id" become the parent row's values."""
    if isinstance(value, str) and value.startswith("$") and value[1:] in row:
        return row[value[1:]]
    if isinstance(value, list):
        return [_substitute(v, row) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, row) for k, v in value.items()}
    return value


def _filter_rows(rows: list[dict[str, Any]], where: Any) -> list[dict[str, Any]]:
    """Minimal where for metadata actions (getFields/getActions): = and IN on plain keys."""
    if not isinstance(where, list):
        raise CiviApiError("Invalid where clause")
    for clause in where:
        if not isinstance(clause, list) or len(clause) < 3 or clause[1] not in ("=", "IN"):
            raise CiviApiError("Illegal operator")
        wanted = clause[2] if clause[1] == "IN" else [clause[2]]
        rows = [r for r in rows if r.get(clause[0]) in wanted]
    return rows


_NOW_SELECT = re.compile(r"NOW\(\)(?:\s+AS\s+(\w+))?", re.IGNORECASE)


def _now_alias(expr: Any) -> str | None:
    """The result key of a ``NOW()`` select expression (its alias), or None for other items."""
    found = _NOW_SELECT.fullmatch(expr.strip()) if isinstance(expr, str) else None
    return (found.group(1) or "NOW") if found else None

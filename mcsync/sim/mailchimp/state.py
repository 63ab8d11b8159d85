"""The simulator's state and the helpers every part uses (the state helpers): accounts, lists,
the members table, counters and caches, and a member rendered as the API shows it.

:class:`MailchimpState` is the typed base of every part that
:class:`~mcsync.sim.mailchimp.sim.MailchimpSim` combines; it declares the few methods one part
calls in another, so each part type-checks alone.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import re
import sqlite3
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mcsync.sim.mailchimp.batches import BatchQueue
from mcsync.sim.mailchimp.helpers import _drop, _field_tree, _keep, _member_key
from mcsync.sim.mailchimp.model import (
    _UNSUBSCRIBE_REASON,
    SCHEMA_BASE,
    Account,
    Handler,
    MailList,
    Row,
    _Call,
    _iso_epoch,
    _not_found,
    _PageQuery,
    _unique_email_id,
    subscriber_hash,
)
from mcsync.sim.mailchimp.storage import _COLUMNS, _INDEXES, _INSERT, _TABLE, _UPDATE, _hkey


class MailchimpState:
    """What every part of the simulator shares: its state and the helpers that read and write it."""

    def __init__(self, *, clock: Callable[[], datetime] | None = None, batch_delay: float = 0.5):
        self.lock = threading.RLock()
        self.request_log: list[tuple[str, str]] = []
        self.results_base_url: str | None = None  # else http://<Host header>
        # (list id, email) of every double opt-in email Mailchimp would have sent, in order.
        self.confirmation_emails: list[tuple[str, str]] = []
        self._signing_key = uuid.uuid4().hex.encode()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._accounts: dict[str, Account] = {}
        self._lists: dict[str, MailList] = {}
        self._counter = 0
        self._batches = BatchQueue(batch_delay)
        # (list id, member hash) -> (operations left to fail, their status code)
        self._failing_operations: dict[tuple[str, str], tuple[int, int]] = {}
        self._db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.executescript(_TABLE + _INDEXES)
        self._seq = 0
        self._routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = []
        self._totals: dict[_PageQuery, int] = {}
        self._cursors: dict[tuple[_PageQuery, int], tuple[Any, ...]] = {}
        self._page_hooks: list[list[Any]] = []  # [member pages still to answer, action]
        # member seq -> its activity-feed events, oldest first (status changes only)
        self._activity: dict[int, list[dict[str, Any]]] = {}
        self._add_routes()

    if TYPE_CHECKING:
        # Defined by other parts of MailchimpSim; declared so each part type-checks alone.
        def _add_routes(self) -> None: ...

        def add_merge_field(
            self, list_id: str, tag: str, name: str, type: str = "text", *, required: bool = False
        ) -> int: ...

        def add_interest_category(
            self, list_id: str, title: str, type: str = "checkboxes"
        ) -> str: ...

        def add_interest(self, list_id: str, category_id: str, name: str) -> str: ...

        def _record_status_event(self, row: Row, stamp: int, *, admin: bool) -> None: ...

        def _delete_permanently(self, lst: MailList, row: Row) -> None: ...

        def _edit(self, list_id: str, email: str, changes: dict[str, Any]) -> None: ...

    def _now(self) -> datetime:
        moment = self._clock()
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def _list(self, list_id: str) -> MailList:
        lst = self._lists.get(list_id)
        if lst is None:
            raise KeyError(f"no list {list_id}")
        return lst

    def _own_list(self, call: _Call) -> MailList:
        lst = self._lists.get(call.params["0"])
        if lst is None or lst.account is not call.account:
            raise _not_found()
        return lst

    def _own_member(self, call: _Call) -> tuple[MailList, Row]:
        lst = self._own_list(call)
        row = self._row(lst.id, _member_key(call.params["1"]))
        if row is None:
            raise _not_found()
        return lst, row

    def _row(self, list_id: str, key: str | None) -> Row | None:
        hkey = _hkey(key) if key else None
        if hkey is None:
            return None
        found = self._db.execute(
            "SELECT * FROM members WHERE lid = ? AND hkey = ?", (self._lists[list_id].web_id, hkey)
        ).fetchone()
        row = self._decode(found) if found is not None else None
        return row if row is not None and row["hash"] == key else None

    @staticmethod
    def _decode(found: sqlite3.Row) -> Row:
        row = dict(found)
        row["hash"] = subscriber_hash(row["email"])
        row["merge_fields"] = marshal.loads(row["merge_fields"])
        row["interests"] = (
            dict.fromkeys(row["interests"].split(","), True) if row["interests"] else {}
        )
        row["tags"] = json.loads(row["tags"])
        row["location"] = json.loads(row["location"]) if row["location"] else None
        return row

    def _save(self, lst: MailList, old: Row | None, new: Row) -> None:
        new["interests"] = {k: True for k, on in new["interests"].items() if on}
        stored = dict(
            new,
            lid=lst.web_id,
            hkey=_hkey(new["hash"]),
            merge_fields=marshal.dumps(new["merge_fields"]),
            interests=",".join(new["interests"]),
            tags=json.dumps(new["tags"]),
            location=json.dumps(new["location"]) if new["location"] else None,
        )
        values = [stored[c] for c in _COLUMNS]
        if old is None:
            self._seq += 1
            new["seq"] = values[0] = self._seq
            self._db.execute(_INSERT, values)
        else:
            self._db.execute(_UPDATE, [*values[1:], old["seq"]])
        self._count(lst, old, -1)
        self._count(lst, new, +1)
        lst.version += 1

    @staticmethod
    def _count(lst: MailList, row: Row | None, sign: int) -> None:
        if row is None:
            return
        lst.status_counts[row["status"]] += sign
        if row["status"] == "subscribed":
            for interest_id, on in row["interests"].items():
                if on:
                    lst.interest_counts[interest_id] += sign

    def _tag_id(self, lst: MailList, name: str) -> int:
        if name not in lst.tag_ids:
            lst.tag_ids[name] = self._next()
        return lst.tag_ids[name]

    def _render(self, lst: MailList, row: Row, *, links: bool = True) -> dict[str, Any]:
        """A member as the API shows it: every merge tag and every interest of the list."""
        stored = row["merge_fields"]
        merge = {f.tag: stored.get(f.tag, "") for f in lst.merge_fields}
        names = [str(merge.get("FNAME") or ""), str(merge.get("LNAME") or "")]
        location = {
            "latitude": 0,
            "longitude": 0,
            "gmtoff": 0,
            "dstoff": 0,
            "country_code": "",
            "timezone": "",
            "region": "",
            **(row["location"] or {}),
        }
        member: dict[str, Any] = {
            "id": row["hash"],
            "email_address": row["email"],
            "unique_email_id": _unique_email_id(row["seq"]),
            "contact_id": hashlib.md5(b"contact:%d" % row["seq"]).hexdigest(),
            "full_name": " ".join(n for n in names if n),
            "web_id": row["seq"],
            "email_type": row["email_type"],
            "status": row["status"],
        }
        if row["status"] == "unsubscribed":
            member["unsubscribe_reason"] = row["unsubscribe_reason"] or _UNSUBSCRIBE_REASON
        member.update({"consents_to_one_to_one_messaging": True, "merge_fields": merge})
        if lst.interests:
            held = row["interests"]
            member["interests"] = {i: bool(held.get(i, False)) for i in lst.interests}
        member.update(
            {
                "stats": {"avg_open_rate": 0, "avg_click_rate": 0},
                "ip_signup": row["ip_signup"],
                "timestamp_signup": _iso_epoch(row["timestamp_signup"]),
                "ip_opt": row["ip_opt"],
                "timestamp_opt": _iso_epoch(row["timestamp_opt"]),
                "member_rating": 2,
                "last_changed": _iso_epoch(row["last_changed"]),
                "language": row["language"],
                "vip": bool(row["vip"]),
                "email_client": "",
                "location": location,
                "source": row["source"],
                "tags_count": len(row["tags"]),
                "tags": [{"id": t["id"], "name": t["name"]} for t in row["tags"][:50]],
                "list_id": lst.id,
            }
        )
        if links:
            path = f"/lists/{lst.id}/members/{row['hash']}"
            member["_links"] = self._links(
                lst.account.dc,
                path,
                ("self", "GET"),
                ("parent", "GET"),
                ("update", "PATCH"),
                ("upsert", "PUT"),
                ("delete", "DELETE"),
            )
        return member

    @staticmethod
    def _links(dc: str, path: str, *rels: tuple[str, str]) -> list[dict[str, str]]:
        base = f"https://{dc}.api.mailchimp.com/3.0"
        parent = path.rsplit("/", 1)[0]
        return [
            {
                "rel": rel,
                "href": base + (parent if rel == "parent" else path),
                "method": method,
                "targetSchema": f"{SCHEMA_BASE}{path or '/'}.json",
            }
            for rel, method in rels
        ]

    @staticmethod
    def _project(payload: Any, query: dict[str, list[str]]) -> Any:
        """Apply ``fields`` and ``exclude_fields`` (comma lists of dot paths) to a response."""
        if not isinstance(payload, dict):
            return payload
        include = _field_tree(query.get("fields", []))
        exclude = _field_tree(query.get("exclude_fields", []))
        if include:
            payload = _keep(payload, include)
        if exclude:
            payload = _drop(payload, exclude)
        return payload

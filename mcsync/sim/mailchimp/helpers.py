"""The module helpers the parts share: SQL scripts and chunks, member paging and keys, time
parsing, member-body validation, the status transitions Mailchimp allows, and the
``fields``/``exclude_fields`` projection.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from mcsync.sim.base import SimRequest, SimResponse
from mcsync.sim.mailchimp.model import (
    _UNSUBSCRIBE_REASON,
    MAX_COUNT,
    SETTABLE,
    MailList,
    Problem,
    Row,
    _Call,
    _invalid,
    _iso_epoch,
    subscriber_hash,
)


def _run_script(db: sqlite3.Connection, script: str) -> None:
    """Statements one by one: ``executescript`` would commit the open transaction."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _chunks(items: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


_MEMBER_LIST_PATH = re.compile(r"^/3\.0/lists/[^/]+/members/?$")


def _is_member_page(request: SimRequest, response: SimResponse) -> bool:
    """A member-list page answered with members (what a paging client reads)."""
    return (
        request.method == "GET"
        and response.status == 200
        and _MEMBER_LIST_PATH.match(request.path) is not None
    )


def _member_key(segment: str) -> str:
    """The path accepts the subscriber hash or the address itself ([spec])."""
    return subscriber_hash(segment) if "@" in segment else segment.lower()


def _paging(call: _Call) -> tuple[int, int]:
    values = {}
    for name, default, upper in (("count", 10, MAX_COUNT), ("offset", 0, None)):
        text = call.arg(name)
        try:
            value = int(text) if text not in (None, "") else default
        except ValueError:
            raise _invalid([{"field": name, "message": "Schema describes integer"}]) from None
        if value < 0 or (upper is not None and value > upper):
            raise _invalid(
                [
                    {
                        "field": name,
                        "message": f"{name} must be between 0 and {upper}"
                        if upper
                        else f"{name} must not be negative",
                    }
                ]
            )
        values[name] = value
    return values["count"], values["offset"]


def _parse_time(text: Any, name: str) -> datetime:
    """ISO 8601 as Mailchimp takes it; a '+' that became a space in a raw query is restored."""
    if not isinstance(text, str):
        raise _invalid([{"field": name, "message": "Schema describes string"}])
    cleaned = re.sub(r" (\d\d:?\d\d)$", r"+\1", text.strip())
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise _invalid(
            [{"field": name, "message": f"{text} is not a valid ISO 8601 date"}]
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


_TYPES: dict[str, tuple[type, ...]] = {
    "email_address": (str,),
    "status": (str,),
    "status_if_new": (str,),
    "email_type": (str,),
    "language": (str,),
    "ip_signup": (str,),
    "ip_opt": (str,),
    "timestamp_signup": (str,),
    "timestamp_opt": (str,),
    "merge_fields": (dict,),
    "interests": (dict,),
    "vip": (bool,),
    "location": (dict,),
    "tags": (list,),
    "marketing_permissions": (list,),
}


def _check_body(body: dict[str, Any], method: str, where: str) -> None:
    """The request-body schema of POST/PUT/PATCH members ([spec])."""
    required = ("email_address", "status") if method == "POST" else ()
    missing = [n for n in required if body.get(n) is None]
    if missing:
        raise _invalid(
            [
                {
                    "field": where,
                    "message": "Required fields were not provided: " + ", ".join(missing),
                }
            ]
        )
    errors = []
    for name, types in _TYPES.items():
        if body.get(name) is not None and not isinstance(body[name], types):
            errors.append(
                {"field": _at(where, name), "message": f"Schema describes {types[0].__name__}"}
            )
    for name in ("status", "status_if_new"):
        if isinstance(body.get(name), str) and body[name] not in SETTABLE[method]:
            errors.append({"field": _at(where, name), "message": "Value is not one of enum values"})
    if isinstance(body.get("email_type"), str) and body["email_type"] not in ("html", "text"):
        errors.append(
            {"field": _at(where, "email_type"), "message": "Value is not one of enum values"}
        )
    tags = body.get("tags")
    if isinstance(tags, list) and not all(isinstance(t, str) for t in tags):
        errors.append({"field": _at(where, "tags"), "message": "Schema describes string"})
    location = body.get("location")
    if isinstance(location, dict) and not all(
        _is_number(location.get(k, 0)) for k in ("latitude", "longitude")
    ):
        errors.append({"field": _at(where, "location"), "message": "Schema describes number"})
    if body.get("marketing_permissions"):
        errors.append(
            {
                "field": _at(where, "marketing_permissions"),
                "message": "This list has no marketing permissions",
            }
        )
    if errors:
        raise _invalid(errors)


def _check_transition(email: str, current: str, wanted: str) -> None:
    """Unsubscribed people may only come back through ``pending``; cleaned ones never."""
    if (current == "unsubscribed" and wanted == "subscribed") or (
        current == "cleaned" and wanted in ("subscribed", "pending")
    ):
        raise Problem(
            400,
            "Member In Compliance State",
            f"{email} is in a compliance state due to unsubscribe, bounce, or "
            "compliance review and cannot be subscribed.",
        )


def _apply_status(lst: MailList, row: Row, status: str, stamp: int, *, opt_given: bool) -> None:
    row["status"], row["status_changed"] = status, stamp
    if status == "subscribed":
        if not opt_given:
            row["timestamp_opt"] = stamp
        row["unsubscribe_reason"] = ""
        lst.last_sub_date = _iso_epoch(stamp)
    elif status == "unsubscribed":
        row["unsubscribe_reason"] = _UNSUBSCRIBE_REASON
        lst.last_unsub_date = _iso_epoch(stamp)


_LEAF = "\0"


def _field_tree(values: list[str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for value in values:
        for path in value.split(","):
            path = path.strip()
            if not path:
                continue
            node = tree
            for part in path.split("."):
                node = node.setdefault(part, {})
            node[_LEAF] = True
    return tree


def _keep(value: Any, tree: dict[str, Any]) -> Any:
    if _LEAF in tree:
        return value
    if isinstance(value, list):
        return [_keep(item, tree) for item in value]
    if isinstance(value, dict):
        return {k: _keep(v, tree[k]) for k, v in value.items() if k in tree}
    return value


def _drop(value: Any, tree: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_drop(item, tree) for item in value]
    if isinstance(value, dict):
        return {
            k: (_drop(v, tree[k]) if k in tree else v)
            for k, v in value.items()
            if k not in tree or _LEAF not in tree[k]
        }
    return value


def _wanted(query: dict[str, list[str]], path: tuple[str, ...]) -> bool:
    """Whether ``fields``/``exclude_fields`` keep ``path`` (to skip building what is cut)."""
    include = _field_tree(query.get("fields", []))
    exclude = _field_tree(query.get("exclude_fields", []))
    node = include
    for part in path:
        if not include or _LEAF in node:
            break
        if part not in node:
            return False
        node = node[part]
    node = exclude
    for part in path:
        if part not in node:
            return True
        node = node[part]
        if _LEAF in node:
            return False
    return True

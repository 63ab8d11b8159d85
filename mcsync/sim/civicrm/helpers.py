"""The module helpers the parts share: contact display names, the REST route forms and request
fields, ``index`` and integer params, chain substitution, row filters and ``NOW()`` selects.
"""

from __future__ import annotations

import re
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qs

from mcsync.sim.base import SimRequest, SimResponse
from mcsync.sim.civicrm.model import AUTHX_ID_ROUTE, ROUTE
from mcsync.sim.civicrm.schema import (
    ENTITIES,
    CiviApiError,
)


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

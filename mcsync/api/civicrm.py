"""CiviCRM APIv4 REST client (reference/civicrm-api.md §1): every call is a POST of the form field
``params=<json>`` to ``{url}/{Entity}/{action}``, authenticated with ``X-Civi-Auth``."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from mcsync.budget import Budget
from mcsync.errors import ApiError, BadResponse

from .http import HttpSession, SessionClient
from .shapes import odd_record

# Actions that can be repeated without changing the result, so their calls may be retried.
_IDEMPOTENT = frozenset({"update", "delete", "autocomplete"})


def endpoint(url: str, entity: str, action: str) -> str:
    """``{url}/{Entity}/{action}``, or ``url`` as a template when it holds ``{entity}`` and
    ``{action}`` (WordPress/Joomla/Drupal 7 query-string routes, §1.1)."""
    if "{entity}" in url and "{action}" in url:
        return url.replace("{entity}", entity).replace("{action}", action)
    return f"{url.rstrip('/')}/{entity}/{action}"


class CiviCRMClient(SessionClient):
    """One CiviCRM site. Thread-safe."""

    def __init__(
        self,
        *,
        url: str,
        api_key: str,
        site_key: str | None = None,
        budget: Budget,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        debug_http: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] | None = None,
        max_retries: int = 6,
        max_connections: int = 4,
    ) -> None:
        self.url = url
        # X-Civi-Auth is exempt from the CSRF check and survives servers that strip
        # Authorization; X-Requested-With is sent anyway (§1.3, §1.4).
        headers = {
            "X-Civi-Auth": f"Bearer {api_key}",
            "X-Requested-With": "XMLHttpRequest",
            "Accept": "application/json",
        }
        if site_key:
            headers["X-Civi-Key"] = site_key
        self.session = HttpSession(
            service="CiviCRM",
            base_url="",
            headers=headers,
            auth=None,
            budget=budget,
            secrets=[s for s in (api_key, site_key) if s],
            timeout=timeout,
            max_connections=max_connections,
            transport=transport,
            debug_http=debug_http,
            sleep=sleep,
            max_retries=max_retries,
            auth_hint=(
                "Check civicrm.api_key (the API user's contact API key), civicrm.site_key if the"
                " user lacks 'authenticate with api key', and that the user has 'access CiviCRM'"
                " and 'access AJAX API' plus rights on the entities mcsync reads and writes."
            ),
        )

    def call(
        self,
        entity: str,
        action: str,
        params: dict[str, Any] | None = None,
        *,
        retry: bool | None = None,
    ) -> list[dict[str, Any]]:
        """Run one APIv4 action and return its ``values``.

        ``retry`` defaults to True for reads (``get*``) and other repeatable actions; a
        ``create`` or an unmatched ``save`` could duplicate records if sent twice, so is not
        retried.
        """
        if retry is None:
            retry = action.startswith("get") or action in _IDEMPOTENT
        body = self.session.request(
            "POST",
            endpoint(self.url, entity, action),
            data={"params": json.dumps(params or {})},
            retry=retry,
        )
        values = body.get("values")
        if not isinstance(values, list):
            message = body.get("error_message")
            if isinstance(message, str):
                raise ApiError(
                    self.session.redact(f"{entity}.{action} failed: {message}"),
                    service="CiviCRM",
                    status=200,
                    detail=self.session.redact(message),
                )
            raise BadResponse(
                f"{entity}.{action} answered without a 'values' list (keys: {sorted(body)[:8]});"
                " check that civicrm.url is the APIv4 REST end-point (…/civicrm/ajax/api4)",
                service="CiviCRM",
            )
        required = _selected(params or {}, action)
        for record in values:
            problem = odd_record(record, required)
            if problem:
                raise BadResponse(f"{entity}.{action} answered {problem}", service="CiviCRM")
        return values

    def get_pages(
        self, entity: str, params: dict[str, Any], *, page_size: int = 5000, after_id: int = 0
    ) -> Iterator[list[dict[str, Any]]]:
        """``get`` in pages keyed on ``id`` (``id > last``, ``orderBy id ASC``), which neither skips
        nor repeats rows when the table changes while paging (§1.6). Yields non-empty pages;
        ``params``' own orderBy/limit/offset are replaced."""
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        select = params.get("select")
        if select and "id" not in select:
            select = [*select, "id"]
        last = after_id
        while True:
            page_params = {
                **params,
                "where": [*params.get("where", []), ["id", ">", last]],
                "orderBy": {"id": "ASC"},
                "limit": page_size,
                "offset": 0,
            }
            if select:
                page_params["select"] = select
            rows = self.call(entity, "get", page_params)
            if not rows:
                return
            newest = rows[-1].get("id")
            # A server that ignored the id filter would make this loop forever.
            if not isinstance(newest, int) or newest <= last:
                raise BadResponse(
                    f"{entity}.get paging by id stopped advancing after id {last}",
                    service="CiviCRM",
                )
            yield rows
            if len(rows) < page_size:
                return
            last = newest

    def save(
        self,
        entity: str,
        records: list[dict[str, Any]],
        *,
        defaults: dict[str, Any] | None = None,
        match: list[str] | None = None,
        chunk: int = 500,
    ) -> list[dict[str, Any]]:
        """``save`` in chunks; returns the saved records in input order.

        Retried only when repeating it cannot create duplicates: with ``match`` or when every
        record carries its ``id`` (§1.7).
        """
        if chunk < 1:
            raise ValueError("chunk must be >= 1")
        saved: list[dict[str, Any]] = []
        for start in range(0, len(records), chunk):
            part = records[start : start + chunk]
            params: dict[str, Any] = {"records": part}
            if defaults:
                params["defaults"] = defaults
            if match:
                params["match"] = match
            repeatable = bool(match) or all("id" in record for record in part)
            saved.extend(self.call(entity, "save", params, retry=repeatable))
        return saved


def _selected(params: dict[str, Any], action: str) -> list[str]:
    """The fields every record of the answer must carry: those a `get` selected by plain
    name (or alias)."""
    if not action.startswith("get"):
        return []
    names = []
    for field in params.get("select") or []:
        if not isinstance(field, str) or "*" in field or ":" in field:
            continue
        names.append(re.split(r"(?i)\s+as\s+", field.strip())[-1])
    return names

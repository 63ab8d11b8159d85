"""CiviCRM APIv4 REST client (reference/civicrm-api.md §1): every call is a POST of the form field
``params=<json>`` to ``{url}/{Entity}/{action}``, authenticated with ``X-Civi-Auth``."""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from mcsync.budget import Budget, Deadline
from mcsync.config.models import DEFAULT_CIVICRM_WRITE_CHUNK
from mcsync.errors import ApiError, BadResponse

from .http import HttpSession, SessionClient
from .shapes import odd_record
from .slots import ProcessSlots

# Actions that can be repeated without changing the result, so their calls may be retried.
_IDEMPOTENT = frozenset({"update", "delete", "autocomplete"})


def endpoint(url: str, entity: str, action: str) -> str:
    """``{url}/{Entity}/{action}``, or ``url`` as a template when it holds ``{entity}`` and
    ``{action}`` (WordPress/Joomla/Drupal 7 query-string routes, §1.1)."""
    if "{entity}" in url and "{action}" in url:
        return url.replace("{entity}", entity).replace("{action}", action)
    return f"{url.rstrip('/')}/{entity}/{action}"


@dataclass(frozen=True)
class IdRange:
    """Ids ``(cursor, hi]`` still to read of one range (``hi`` None: no upper bound)."""

    cursor: int
    hi: int | None


@dataclass(frozen=True)
class RangePage:
    """One page of a range read: the range's position in the list given, its rows, the
    cursor they reach (the last row's id) and whether the range is now read to its end."""

    index: int
    rows: list[dict[str, Any]]
    cursor: int
    done: bool


def split_ranges(
    after: int, top: int, *, page_size: int, count: int
) -> list[tuple[int, int | None]]:
    """Split the ids after ``after`` into at most ``count`` ranges ``(lo, hi]``: contiguous,
    disjoint, each a whole number of pages wide (dense ids fill every page but the last),
    the last one open-ended so that rows created after ``top`` was read are read too. Every
    id above ``after`` lies in exactly one range."""
    if count <= 1 or top <= after:
        return [(after, None)]
    pages = -(-(top - after) // page_size)
    width = page_size * -(-pages // count)
    bounds = list(range(after, top, width))
    return [(lo, lo + width) for lo in bounds[:-1]] + [(bounds[-1], None)]


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
        write_chunk: int = DEFAULT_CIVICRM_WRITE_CHUNK,
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
        self.max_connections = max_connections
        # Records per `save` request (`[civicrm] write_chunk`): the stages size their write
        # chunks, and the overtaken check before each, by it.
        self.write_chunk = write_chunk
        self.session = HttpSession(
            service="CiviCRM",
            base_url="",
            headers=headers,
            auth=None,
            budget=budget,
            secrets=[s for s in (api_key, site_key) if s],
            timeout=timeout,
            max_connections=max_connections,
            # The cap holds across mcsync processes too (two cron runs of different
            # audiences against one small server): lock-file slots keyed by site and key.
            process_slots=ProcessSlots(f"{url}\n{api_key}", max_connections),
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
        deadline: Deadline | None = None,
    ) -> list[dict[str, Any]]:
        """Run one APIv4 action and return its ``values``.

        ``retry`` defaults to True for reads (``get*``) and other repeatable actions; a
        ``create`` or an unmatched ``save`` could duplicate records if sent twice, so is not
        retried. ``deadline``: the budget as read by the thread that handed this call to a
        pool (pool threads never read the budget's clock; see :mod:`mcsync.budget`).
        """
        if retry is None:
            retry = action.startswith("get") or action in _IDEMPOTENT
        body = self.session.request(
            "POST",
            endpoint(self.url, entity, action),
            data={"params": json.dumps(params or {})},
            retry=retry,
            deadline=deadline,
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

    def top_id(self, entity: str, where: list[Any]) -> int:
        """The highest ``id`` matching ``where`` (0 when none): one request, where a read by
        id ranges splits the id space."""
        rows = self.call(
            entity, "get", {"select": ["id"], "where": where, "orderBy": {"id": "DESC"}, "limit": 1}
        )
        return int(rows[0]["id"]) if rows else 0

    def range_pages(
        self,
        entity: str,
        params: dict[str, Any],
        ranges: Sequence[IdRange],
        *,
        page_size: int = 5000,
        concurrency: int | None = None,
        ordered: bool = False,
    ) -> Generator[RangePage, None, None]:
        """Keyset-page each id range to its end, several ranges at once.

        Each range ``(cursor, hi]`` is read as ``id > cursor AND id <= hi`` (no upper bound
        when ``hi`` is None), ``orderBy id ASC``, one page after another (the keyset of
        :meth:`get_pages`, so a range neither skips nor repeats a row while the table
        changes); different ranges are read concurrently, at most ``concurrency`` requests
        in flight (default: the client's connections), never two of one range. Every
        range's last page is yielded with ``done`` set (an empty page when the range held
        no more rows), so a caller that commits each page with its range's cursor resumes
        exactly and knows when the whole id space has been read.

        Pages are yielded in the order their requests were made, which depends only on the
        answers (a run under a tick clock goes as far every time); ``ordered`` yields them
        in id order instead (ranges in the order given; pages of a later range wait, at most
        two a range, for the earlier ones), for a caller whose rows must apply in id order.
        The budget is read here, once per request, never by the pool's threads."""
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        workers = max(1, concurrency or self.max_connections)
        select = params.get("select")
        if select and "id" not in select:
            select = [*select, "id"]
        cursors = [r.cursor for r in ranges]
        finished = [False] * len(ranges)
        in_flight = [False] * len(ranges)
        buffered: list[deque[RangePage]] = [deque() for _ in ranges]
        pending: deque[tuple[int, Future[list[dict[str, Any]]]]] = deque()
        head = 0  # ordered: the range whose pages are yielded now

        def fetch(index: int, after: int, deadline: Deadline) -> list[dict[str, Any]]:
            bound = ranges[index].hi
            where = [*params.get("where", []), ["id", ">", after]]
            if bound is not None:
                where.append(["id", "<=", bound])
            page_params = {**params, "where": where, "orderBy": {"id": "ASC"},
                           "limit": page_size, "offset": 0}  # fmt: skip
            if select:
                page_params["select"] = select
            return self.call(entity, "get", page_params, deadline=deadline)

        def next_range() -> int | None:
            last = len(ranges) if not ordered else min(len(ranges), head + workers)
            for index in range(head if ordered else 0, last):
                if finished[index] or in_flight[index]:
                    continue
                if ordered and index != head and len(buffered[index]) >= 2:
                    continue
                return index
            return None

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="civi-pages") as pool:
            try:
                while True:
                    while len(pending) < workers and (index := next_range()) is not None:
                        in_flight[index] = True
                        deadline = self.session.budget.deadline()
                        future = pool.submit(fetch, index, cursors[index], deadline)
                        pending.append((index, future))
                    if not pending:
                        return
                    index, future = pending.popleft()
                    rows = future.result()
                    in_flight[index] = False
                    page = self._range_page(entity, ranges[index], index, cursors[index], rows,
                                            page_size)  # fmt: skip
                    cursors[index], finished[index] = page.cursor, page.done
                    if not ordered:
                        yield page
                        continue
                    buffered[index].append(page)
                    while head < len(ranges) and buffered[head]:
                        page = buffered[head].popleft()
                        yield page
                        if page.done:
                            head += 1
            finally:
                for _, future in pending:
                    future.cancel()

    @staticmethod
    def _range_page(
        entity: str,
        id_range: IdRange,
        index: int,
        after: int,
        rows: list[dict[str, Any]],
        page_size: int,
    ) -> RangePage:
        """One answer of a range read: its rows, the cursor they reach, and whether the range
        is read to its end (a short page, or the range's upper bound reached)."""
        if not rows:
            return RangePage(index, rows, after, True)
        newest = rows[-1].get("id")
        # A server that ignored the id filters would make the paging loop forever, or fill a
        # range with rows of another.
        if (
            not isinstance(newest, int)
            or newest <= after
            or (id_range.hi is not None and newest > id_range.hi)
        ):
            raise BadResponse(
                f"{entity}.get paging by id range ({after}, {id_range.hi}] answered id {newest}",
                service="CiviCRM",
            )
        done = len(rows) < page_size or (id_range.hi is not None and newest >= id_range.hi)
        return RangePage(index, rows, newest, done)

    def save(
        self,
        entity: str,
        records: list[dict[str, Any]],
        *,
        defaults: dict[str, Any] | None = None,
        match: list[str] | None = None,
        chunk: int | None = None,
    ) -> list[dict[str, Any]]:
        """``save`` in chunks (``write_chunk`` records a request unless ``chunk`` says
        otherwise); returns the saved records in input order.

        Retried only when repeating it cannot create duplicates: with ``match`` or when every
        record carries its ``id`` (§1.7).
        """
        chunk = self.write_chunk if chunk is None else chunk
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

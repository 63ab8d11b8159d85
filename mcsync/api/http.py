"""Shared HTTP layer for both APIs: one place decides what is retried, how long to wait, how many
requests may be in flight, and what a failure says (always with secrets masked).

Retry policy (STYLE.md point 3):

- 408, 429, 500, 502, 503, 504, connection failures, timeouts and dropped connections are retried
  with exponential backoff and full jitter, honouring ``Retry-After`` (seconds or an HTTP date).
  A CiviCRM 500 that carries an APIv4 ``error_message`` is a deterministic API exception (bad
  field, duplicate key...) and is not retried, unless it reports a database deadlock.
- ``retry=False`` marks a non-idempotent call (``POST /batches``): it is retried only when the
  request cannot have reached the server (connection refused, no free connection) or the server
  refused it outright with 429; after a 5xx, a timeout or a dropped connection it raises
  :class:`RetriesExhausted` saying the request may have been processed.
- More than ``max_retries`` retries raise :class:`RetriesExhausted` (exit 1). A wait that would
  pass the run's deadline raises :class:`BudgetExhausted` instead, so the engine saves progress
  and exits 0; a request is never started once the deadline has passed.
- Every request ends by the run's deadline, whatever the server does: ``timeout`` is per read,
  so a server sending a byte every few seconds would never time out. With a deadline, the
  exchange runs in a daemon thread that the caller waits for only until the deadline (then
  :class:`BudgetExhausted`; the thread is left to die with its own capped timeouts), reads are
  capped at the time remaining, and the body is streamed with the deadline checked between
  chunks. The budget's clock is read once per attempt, by the thread that issues the request
  (or hands it to a pool: ``deadline=``); the worker and the wait use that reading.
- A body larger than ``max_body_bytes`` (64 MiB: far above any page) is refused with
  :class:`BadResponse` naming the URL path, before it is all in memory.
- A single wait longer than ``max_wait`` (a server asking for minutes) raises RetriesExhausted.

Concurrency: each session has one thread-safe ``httpx.Client`` (``max_connections``) and all
sessions of one service name share a process-wide semaphore of :data:`ACCOUNT_MAX_IN_FLIGHT`
slots, because Mailchimp allows 10 simultaneous connections per account, not per client.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

import httpx

from mcsync.budget import Budget, Deadline
from mcsync.errors import (
    ApiError,
    AuthError,
    BadResponse,
    BudgetExhausted,
    NotFoundError,
    ResponseTooLarge,
    RetriesExhausted,
)

from .responses import (
    MASK,
    Outcome,
    body_snippet,
    classify,
    parse_retry_after,
    problem_details,
    redact,
)
from .slots import ProcessSlots

USER_AGENT = "mcsync/0.1"
#: Most requests one service (a Mailchimp account, the CiviCRM site) may have in flight at once.
ACCOUNT_MAX_IN_FLIGHT = 10

# Transport errors raised before any byte of the request left: always safe to retry.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# The server may have received (and acted on) the request: retry only idempotent calls.
_MAYBE_SENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

_ABSOLUTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
#: Most bytes of one response body read into memory; no API page comes near it.
MAX_BODY_BYTES = 64 * 1024 * 1024

_slots_lock = threading.Lock()
_account_slots: dict[str, threading.BoundedSemaphore] = {}


def account_slots(service: str) -> threading.BoundedSemaphore:
    """The process-wide in-flight limit shared by every session of ``service``."""
    with _slots_lock:
        slots = _account_slots.get(service)
        if slots is None:
            slots = _account_slots[service] = threading.BoundedSemaphore(ACCOUNT_MAX_IN_FLIGHT)
        return slots


class HttpSession:
    """A retrying, concurrency-capped, secret-redacting client for one service.

    Thread-safe: one session may be used from many threads at once.
    """

    def __init__(
        self,
        *,
        service: str,
        base_url: str,
        headers: Mapping[str, str],
        auth: httpx.Auth | None,
        budget: Budget,
        secrets: Sequence[str],
        timeout: float = 30.0,
        max_connections: int = 10,
        transport: httpx.BaseTransport | None = None,
        max_retries: int = 6,
        debug_http: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] | None = None,
        rng: random.Random | None = None,
        auth_hint: str = "",
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        max_wait: float = 120.0,
        process_slots: ProcessSlots | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.service = service
        self._timeout = timeout
        self._max_body_bytes = max_body_bytes
        self._process_slots = process_slots
        self.base_url = base_url.rstrip("/")
        self.budget = budget
        self._headers = dict(headers)
        self._auth = auth
        self._secrets = [s for s in secrets if s]
        self._max_retries = max_retries
        self._debug = debug_http
        self._sleep = sleep or budget.sleep
        self._rng = rng or random.Random()
        self._auth_hint = auth_hint
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._max_wait = max_wait
        self._slots = account_slots(service)
        self._count = 0
        self._count_lock = threading.Lock()
        # The Date header of the latest successful response: the server's own clock (UTC),
        # which `config check` shows beside the other side's.
        self.server_date: str | None = None
        # Whether any request of this session got an answer: a budget that ends while a
        # service that never answered is retried is a failure, not a budget stop.
        self.answered = False
        hooks = {"request": [self._log_request]} if debug_http else {}
        self._client = httpx.Client(
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
            event_hooks=hooks,
        )

    # -- public -------------------------------------------------------------------------------

    @property
    def request_count(self) -> int:
        """HTTP requests sent so far, retries included."""
        return self._count

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        retry: bool = True,
        expect_json: bool = True,
        authenticate: bool = True,
        deadline: Deadline | None = None,
    ) -> Any:
        """Send a request, retrying per the module's policy; return the parsed JSON object
        (``{}`` for 204) or, with ``expect_json=False``, the raw body bytes.

        ``authenticate=False`` sends neither the auth nor the session's headers (downloads from
        object storage must not receive the API key). ``deadline``: the budget as the thread
        that handed this request to a pool read it (:meth:`Budget.deadline`), so that pool
        threads never read the budget's clock; without it each attempt reads it here.
        """
        url = self._url(path_or_url)
        label = f"{method} {url.split('?', 1)[0]}"  # no query: it may hold signatures
        attempt = 0
        while True:
            reading = deadline if deadline is not None else self.budget.deadline()
            if reading.expired():
                raise BudgetExhausted(
                    self.redact(
                        f"{self.service}: {label} not sent: the run's time budget is used up"
                    )
                )
            retry_after: float | None = None
            status: int | None = None
            try:
                response = self._send(method, url, params, json, data, authenticate, label, reading)
            except _NOT_SENT as exc:
                failure = self._describe(exc)
            except _MAYBE_SENT as exc:
                failure = self._describe(exc)
                if not retry:
                    raise self._not_retried(label, failure) from exc
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise ApiError(
                    self.redact(f"{label} failed: {self._describe(exc)}"), service=self.service
                ) from exc
            else:
                outcome = classify(response)
                if outcome == "ok":
                    self.answered = True
                    self.server_date = response.headers.get("date")
                    return self._parse(response, label, expect_json)
                if outcome != "retry":
                    raise self._error(outcome, response, label)
                status = response.status_code
                failure = f"HTTP {status} {response.reason_phrase}".rstrip()
                if not retry and status != 429:
                    raise self._not_retried(label, failure, status)
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            attempt += 1
            if attempt > self._max_retries:
                raise RetriesExhausted(
                    self.redact(f"{label} failed {attempt} times, last with {failure}"),
                    service=self.service,
                    status=status,
                )
            left = self.budget.remaining() if deadline is None else deadline.remaining()
            self._wait(attempt, retry_after, label, failure, status, left)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- sending ------------------------------------------------------------------------------

    def _url(self, path_or_url: str) -> str:
        if _ABSOLUTE.match(path_or_url):
            return path_or_url
        return f"{self.base_url}/{path_or_url.lstrip('/')}"

    def _send(
        self,
        method: str,
        url: str,
        params: Mapping[str, Any] | None,
        json: Any,
        data: Mapping[str, Any] | None,
        authenticate: bool,
        label: str,
        deadline: Deadline,
    ) -> httpx.Response:
        """One exchange, ended by the run's deadline: without a deadline it runs here; with
        one it runs in a daemon thread, and at the deadline the caller stops waiting and
        raises :class:`BudgetExhausted` (a server trickling bytes cannot hold the run).
        Neither thread reads the budget's clock: both go by ``deadline``."""
        if math.isinf(deadline.until):
            return self._exchange(method, url, params, json, data, authenticate, label, deadline)
        outcome: list[httpx.Response | BaseException] = []
        done, abandoned = threading.Event(), threading.Event()

        def work() -> None:
            try:
                outcome.append(
                    self._exchange(
                        method, url, params, json, data, authenticate, label, deadline, abandoned
                    )
                )
            except BaseException as exc:  # handed to the waiting caller
                outcome.append(exc)
            finally:
                done.set()

        threading.Thread(target=work, name="mcsync-request", daemon=True).start()
        if not done.wait(deadline.remaining()):
            abandoned.set()  # the worker stops reading at its next chunk
            raise BudgetExhausted(
                self.redact(
                    f"{self.service}: {label} was not answered in full when the run's time budget"
                    " ran out; stopped waiting for it"
                )
            )
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _exchange(
        self,
        method: str,
        url: str,
        params: Mapping[str, Any] | None,
        json: Any,
        data: Mapping[str, Any] | None,
        authenticate: bool,
        label: str,
        deadline: Deadline,
        abandoned: threading.Event | None = None,
    ) -> httpx.Response:
        remaining = deadline.remaining()
        if not self._slots.acquire(timeout=None if math.isinf(remaining) else remaining):
            raise BudgetExhausted(
                f"{self.service}: the run's time budget ran out waiting for a free connection"
            )
        try:
            started = time.monotonic()
            with (
                self._process_slots.hold(deadline, self.service)
                if (self._process_slots and authenticate)
                else contextlib.nullcontext()
            ):
                with self._count_lock:
                    self._count += 1
                request = self._client.build_request(
                    method,
                    url,
                    params=params,
                    json=json,
                    data=data,
                    headers=self._headers if authenticate else None,
                    # Each read waits at most the time left (the per-read timeout alone would
                    # let a trickling server run past the deadline).
                    timeout=deadline.cap(self._timeout),
                )
                streamed = self._client.send(
                    request,
                    auth=self._auth if authenticate else None,
                    follow_redirects=not authenticate,
                    stream=True,
                )
                try:
                    body = self._read_body(streamed, label, abandoned)
                finally:
                    streamed.close()
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            if self._debug:
                self._debug(
                    self.redact(
                        f"{self.service} !! {method} {self._shown(url)}: {self._describe(exc)}"
                    )
                )
            raise
        finally:
            self._slots.release()
        response = _buffered(streamed, body)
        if self._debug:
            elapsed = (time.monotonic() - started) * 1000
            self._debug(
                self.redact(
                    f"{self.service} <- {response.status_code} {method}"
                    f" {self._shown(str(response.url))} ({elapsed:.0f} ms, {len(body)} B)"
                )
            )
        return response

    def _read_body(
        self, response: httpx.Response, label: str, abandoned: threading.Event | None
    ) -> bytes:
        """The whole (decoded) body, read chunk by chunk: stop at the cap, or once the caller
        has stopped waiting for it (the deadline passed; a complete answer is never dropped
        here for being late, the caller alone decides that)."""
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > self._max_body_bytes:
                raise ResponseTooLarge(
                    self.redact(
                        f"{label} answered more than {self._max_body_bytes // 2**20} MiB (HTTP"
                        f" {response.status_code}); no answer of the API is that large, so it"
                        " was not read"
                    ),
                    service=self.service,
                    status=response.status_code,
                )
            chunks.append(chunk)
            if abandoned is not None and abandoned.is_set():
                raise BudgetExhausted(
                    self.redact(
                        f"{self.service}: {label} was still sending its answer when the run's"
                        " time budget ran out"
                    )
                )
        return b"".join(chunks)

    def _shown(self, url: str) -> str:
        """A URL as debug lines show it: links outside the API (pre-signed object-storage
        downloads) carry a signature in their query, so their query is masked."""
        if url.startswith(self.base_url + "/") or url == self.base_url:
            return url
        base, sep, _ = url.partition("?")
        return f"{base}?{MASK}" if sep else base

    def _wait(
        self,
        attempt: int,
        retry_after: float | None,
        label: str,
        failure: str,
        status: int | None,
        left: float,
    ) -> None:
        """Back off before retry number ``attempt`` (full jitter; Retry-After is a floor),
        if the ``left`` seconds of the budget allow it."""
        if retry_after is not None:
            wait = retry_after + self._rng.uniform(0, self._backoff_base)
        else:
            ceiling = min(self._backoff_cap, self._backoff_base * 2 ** (attempt - 1))
            wait = self._rng.uniform(0, ceiling)
        if wait > self._max_wait:
            raise RetriesExhausted(
                self.redact(
                    f"{label} failed with {failure} and the server asked to wait {wait:.0f} s"
                ),
                service=self.service,
                status=status,
            )
        if wait > left and not self.answered:
            # The service has not answered once in this run and still fails as the budget
            # ends: that is a failure that outlasted the retries the budget allowed, which
            # cron must hear about (exit 1), not a quiet budget stop.
            raise RetriesExhausted(
                self.redact(
                    f"{label} failed with {failure} and no request to {self.service} succeeded "
                    "before the run's time budget ended"
                ),
                service=self.service,
                status=status,
            )
        if wait > left:
            raise BudgetExhausted(
                self.redact(
                    f"{self.service}: {label} failed with {failure}; the run's time budget ends"
                    f" before the retry due in {wait:.1f} s"
                )
            )
        if self._debug:
            self._debug(
                self.redact(
                    f"{self.service} retry {attempt} of {label} in {wait:.2f} s after {failure}"
                )
            )
        self._sleep(wait)

    def _log_request(self, request: httpx.Request) -> None:
        if self._debug is None:
            return
        headers = ", ".join(f"{k}: {v}" for k, v in request.headers.items())
        self._debug(
            self.redact(
                f"{self.service} -> {request.method} {self._shown(str(request.url))} [{headers}]"
            )
        )

    # -- results and errors -------------------------------------------------------------------

    def _parse(self, response: httpx.Response, label: str, expect_json: bool) -> Any:
        if not expect_json:
            return response.content
        if response.status_code == 204:
            return {}
        try:
            body = response.json()
        except ValueError:
            raise self._bad(response, label, "expected a JSON object") from None
        if not isinstance(body, dict):
            raise self._bad(
                response, label, f"expected a JSON object, got a JSON {type(body).__name__}"
            )
        return body

    def _bad(self, response: httpx.Response, label: str, what: str) -> BadResponse:
        return BadResponse(
            self.redact(
                f"{label} answered {response.status_code} but {what}; got {body_snippet(response)}"
            ),
            service=self.service,
            status=response.status_code,
        )

    def _error(self, outcome: Outcome, response: httpx.Response, label: str) -> ApiError:
        status = response.status_code
        title, detail = problem_details(response)
        said = ": ".join(p for p in (title, detail) if p) or body_snippet(response)
        title = self.redact(title) if title else None
        detail = self.redact(detail) if detail else None
        cls: type[ApiError]
        if outcome == "auth":
            cls = AuthError
            message = f"{label} was refused ({status}: {said}). {self._auth_hint}".rstrip()
        elif outcome == "blocked":
            cls = ApiError
            message = (
                f"{label} was blocked by a firewall in front of the API (403 HTML 'Request "
                f"Blocked' page), not refused for its key: usually too many requests or a "
                f"blocked IP address. Progress is saved; the next run tries again."
            )
        elif outcome == "not_found":
            cls = NotFoundError
            message = f"{label} was not found (404: {said}); check the id and the base URL"
        elif 300 <= status < 400:
            cls = ApiError
            location = response.headers.get("location", "?")
            message = f"{label} was redirected ({status}) to {location}; configure that URL instead"
        else:
            cls = ApiError
            message = f"{label} failed ({status}: {said})"
        return cls(
            self.redact(message), service=self.service, status=status, title=title, detail=detail
        )

    def _not_retried(self, label: str, failure: str, status: int | None = None) -> RetriesExhausted:
        return RetriesExhausted(
            self.redact(
                f"{label} failed with {failure}; not retried because the request may have"
                " reached the server and is not safe to repeat"
            ),
            service=self.service,
            status=status,
        )

    def _describe(self, exc: BaseException) -> str:
        text = str(exc) or "no details"
        return self.redact(f"{type(exc).__name__} ({text})")


def _buffered(streamed: httpx.Response, body: bytes) -> httpx.Response:
    """A complete response holding ``body``, already decoded (hence no Content-Encoding), for
    the classifier and the parsers, which read ``.content`` and ``.json()``."""
    headers = [
        (name, value)
        for name, value in streamed.headers.multi_items()
        if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
    ]
    extensions = {k: v for k, v in streamed.extensions.items() if k in _KEPT_EXTENSIONS}
    return httpx.Response(
        streamed.status_code,
        headers=headers,
        content=body,
        request=streamed.request,
        extensions=extensions,
    )


_KEPT_EXTENSIONS = ("http_version", "reason_phrase")


class SessionClient:
    """What every API client shares: one session, its request count, and closing it."""

    session: HttpSession

    @property
    def request_count(self) -> int:
        return self.session.request_count

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""The shared HTTP layer: classification, retry and backoff within the budget, errors, redaction
and the per-account concurrency cap. respx only; no real sleeps (fake clock + injected sleep)."""

from __future__ import annotations

import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import respx

from mcsync.api.http import ACCOUNT_MAX_IN_FLIGHT, HttpSession, account_slots
from mcsync.api.responses import classify, parse_retry_after, redact
from mcsync.budget import Budget, Deadline
from mcsync.errors import (
    ApiError,
    AuthError,
    BadResponse,
    BudgetExhausted,
    NotFoundError,
    RetriesExhausted,
)

KEY = "0123deadbeefSECRETKEYcafe4567abcd-us21"
BASE = "https://us21.api.mailchimp.com/3.0"
PROBLEM = "application/problem+json"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def make_session(
    budget_seconds: float | None = None, clock: FakeClock | None = None, **kwargs: Any
) -> tuple[HttpSession, FakeClock]:
    clock = clock or FakeClock()
    kwargs.setdefault("service", "Mailchimp test")
    session = HttpSession(
        base_url=BASE,
        headers={"Accept": "application/json"},
        auth=httpx.BasicAuth("mcsync", KEY),
        budget=Budget(budget_seconds, clock=clock, sleep=clock.sleep),
        secrets=[KEY],
        sleep=clock.sleep,
        rng=random.Random(7),
        auth_hint="Check mailchimp.accounts.test.api_key.",
        **kwargs,
    )
    return session, clock


def response(status: int, **kwargs: Any) -> httpx.Response:
    return httpx.Response(status, **kwargs)


@pytest.fixture
def mock() -> Any:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


# -- classify, Retry-After, redact --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, {"ok": 1}, "ok"),
        (204, None, "ok"),
        (301, None, "fatal"),
        (400, {"title": "Invalid Resource"}, "fatal"),
        (401, None, "auth"),
        (403, None, "auth"),
        (404, None, "not_found"),
        (405, None, "fatal"),
        (408, None, "retry"),
        (422, None, "fatal"),
        (429, None, "retry"),
        (500, {"title": "Internal Server Error"}, "retry"),
        (502, None, "retry"),
        (503, {"status_code": 503, "status_message": "Temporarily unavailable"}, "retry"),
        (504, None, "retry"),
        (500, {"error_code": 0, "error_message": "Invalid field 'foo'"}, "fatal"),
        (500, {"error_code": 0, "error_message": "DB Error: deadlock found"}, "retry"),
    ],
)
def test_classify(status: int, body: Any, expected: str) -> None:
    resp = response(status, json=body) if body is not None else response(status)
    assert classify(resp) == expected


def test_parse_retry_after() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7
    assert parse_retry_after(" 1.5 ") == 1.5
    assert (
        parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30
    )
    assert (
        parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0
    )
    assert parse_retry_after("-3") == 0
    for bad in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(bad) is None


def test_redact_masks_secrets_headers_params_and_userinfo() -> None:
    text = (
        f"key {KEY} quoted {KEY.replace('-', '%2D')} Authorization: Basic bWNzeW5jOmFiYw== "
        "x-civi-auth: Bearer civikey, X-Civi-Key=sitekey {'authorization': 'Bearer tok'} "
        "https://h/x?apikey=abc123&count=1 https://user:pass@host/path"
    )
    out = redact(text, [KEY, "", "civikey"])
    for secret in (KEY, "bWNzeW5jOmFiYw", "civikey", "sitekey", "'Bearer tok", "abc123", "pass@"):
        assert secret not in out
    assert "count=1" in out and "https://***@host/path" in out


# -- retries ------------------------------------------------------------------------------------


def test_retries_503_then_succeeds(mock: respx.MockRouter) -> None:
    route = mock.get("/ping").mock(
        side_effect=[response(503), response(503), response(200, json={"health_status": "ok"})]
    )
    session, clock = make_session()
    assert session.request("GET", "/ping") == {"health_status": "ok"}
    assert route.call_count == 3
    assert session.request_count == 3
    assert len(clock.slept) == 2
    # full jitter: each wait lies in [0, base * 2**(n-1)]
    assert 0 <= clock.slept[0] <= 0.5 and 0 <= clock.slept[1] <= 1.0


def test_429_honours_retry_after_seconds(mock: respx.MockRouter) -> None:
    mock.get("/ping").mock(
        side_effect=[response(429, headers={"Retry-After": "7"}), response(200, json={})]
    )
    session, clock = make_session()
    session.request("GET", "/ping")
    assert len(clock.slept) == 1 and 7 <= clock.slept[0] <= 7.5


def test_retry_after_http_date(mock: respx.MockRouter) -> None:
    when = datetime.now(UTC) + timedelta(seconds=20)
    mock.get("/ping").mock(
        side_effect=[
            response(503, headers={"Retry-After": format_datetime(when, usegmt=True)}),
            response(200, json={}),
        ]
    )
    session, clock = make_session()
    session.request("GET", "/ping")
    assert 17 <= clock.slept[0] <= 21


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("connection refused"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset by peer"),
    ],
)
def test_network_failures_are_retried(mock: respx.MockRouter, failure: Exception) -> None:
    route = mock.put("/lists/l1/members/h").mock(
        side_effect=[failure, response(200, json={"id": "h"})]
    )
    session, clock = make_session()
    assert session.request("PUT", "/lists/l1/members/h", json={}) == {"id": "h"}
    assert route.call_count == 2 and len(clock.slept) == 1


def test_gives_up_after_max_retries(mock: respx.MockRouter) -> None:
    route = mock.get("/ping").mock(return_value=response(503))
    session, clock = make_session(max_retries=3)
    with pytest.raises(
        RetriesExhausted, match=r"GET .*/ping failed 4 times, last with HTTP 503"
    ) as info:
        session.request("GET", "/ping")
    assert route.call_count == 4 and len(clock.slept) == 3
    assert info.value.status == 503 and info.value.service == "Mailchimp test"


def test_retry_after_beyond_the_budget_stops_without_sleeping(mock: respx.MockRouter) -> None:
    route = mock.get("/ping").mock(
        side_effect=[response(200, json={}), response(429, headers={"Retry-After": "30"})]
    )
    session, clock = make_session(budget_seconds=10)
    session.request("GET", "/ping")
    with pytest.raises(BudgetExhausted, match="time budget ends before the retry"):
        session.request("GET", "/ping")
    assert route.call_count == 2 and clock.slept == []


def test_a_service_that_never_answered_fails_when_the_budget_ends(
    mock: respx.MockRouter,
) -> None:
    """Unreachable or refusing for the whole run: exit 1 with the reason (cron must hear of
    it), not the quiet budget stop of a run that made progress."""
    route = mock.get("/ping").mock(return_value=response(429, headers={"Retry-After": "30"}))
    session, clock = make_session(budget_seconds=10)
    with pytest.raises(RetriesExhausted, match="no request to .* succeeded"):
        session.request("GET", "/ping")
    assert route.call_count == 1 and clock.slept == []


def test_backoff_never_sleeps_past_the_deadline(mock: respx.MockRouter) -> None:
    mock.get("/ping").mock(side_effect=[response(200, json={})] + [response(503)] * 60)
    session, clock = make_session(budget_seconds=3, max_retries=50, backoff_base=1.0)
    session.request("GET", "/ping")
    with pytest.raises(BudgetExhausted):
        session.request("GET", "/ping")
    assert sum(clock.slept) <= 3


def test_no_request_once_the_budget_is_spent(mock: respx.MockRouter) -> None:
    route = mock.get("/ping").mock(return_value=response(200, json={}))
    session, clock = make_session(budget_seconds=5)
    clock.now += 6
    with pytest.raises(BudgetExhausted, match="not sent"):
        session.request("GET", "/ping")
    assert route.call_count == 0


def test_a_request_handed_a_passed_deadline_is_not_sent(mock: respx.MockRouter) -> None:
    """A request a pool's thread sends goes by the deadline its submitter read (the budget's
    clock is not read again there): one that passed while it waited in the queue is not sent,
    and neither is one whose reading found no time left."""
    route = mock.get("/ping").mock(return_value=response(200, json={}))
    session, clock = make_session(budget_seconds=5)
    for deadline in (Deadline(5.0, time.monotonic() - 0.1), Deadline(0.0, time.monotonic() + 5)):
        with pytest.raises(BudgetExhausted, match="not sent"):
            session.request("GET", "/ping", deadline=deadline)
    assert route.call_count == 0
    assert session.request("GET", "/ping", deadline=Deadline(5.0, time.monotonic() + 5)) == {}


def test_very_long_retry_after_gives_up(mock: respx.MockRouter) -> None:
    mock.get("/ping").mock(return_value=response(503, headers={"Retry-After": "3600"}))
    session, clock = make_session()
    with pytest.raises(RetriesExhausted, match="asked to wait"):
        session.request("GET", "/ping")
    assert clock.slept == []


# -- non-idempotent calls -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        response(503),
        response(500, json={"title": "Internal Server Error"}),
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("Server disconnected"),
    ],
)
def test_post_batches_is_not_retried_once_it_may_have_arrived(
    mock: respx.MockRouter, failure: Any
) -> None:
    route = mock.post("/batches").mock(side_effect=[failure, response(200, json={"id": "b2"})])
    session, clock = make_session()
    with pytest.raises(RetriesExhausted, match="not retried"):
        session.request("POST", "/batches", json={"operations": []}, retry=False)
    assert route.call_count == 1 and clock.slept == []


@pytest.mark.parametrize(
    "failure", [httpx.ConnectError("refused"), response(429, headers={"Retry-After": "1"})]
)
def test_post_batches_is_retried_when_it_cannot_have_been_processed(
    mock: respx.MockRouter, failure: Any
) -> None:
    route = mock.post("/batches").mock(side_effect=[failure, response(200, json={"id": "b1"})])
    session, _ = make_session()
    assert session.request("POST", "/batches", json={}, retry=False) == {"id": "b1"}
    assert route.call_count == 2


# -- errors -------------------------------------------------------------------------------------


def test_401_is_an_auth_error_with_a_hint(mock: respx.MockRouter) -> None:
    problem = {"title": "API Key Invalid", "status": 401, "detail": "Your API key may be invalid."}
    mock.get("/ping").mock(return_value=response(401, json=problem))
    session, _ = make_session()
    with pytest.raises(AuthError) as info:
        session.request("GET", "/ping")
    message = str(info.value)
    assert message.startswith(
        "Mailchimp test: GET https://us21.api.mailchimp.com/3.0/ping was refused (401"
    )
    assert "API Key Invalid" in message and "Check mailchimp.accounts.test.api_key." in message
    assert info.value.title == "API Key Invalid" and info.value.status == 401


def test_403_request_blocked_page_is_a_firewall_not_a_key_problem(
    mock: respx.MockRouter,
) -> None:
    html = "<html><head><title>Request Blocked</title></head><body>blocked</body></html>"
    route = mock.get("/ping").mock(
        return_value=response(403, text=html, headers={"content-type": "text/html"})
    )
    session, _ = make_session()
    with pytest.raises(ApiError, match=r"blocked by a firewall.*Request Blocked") as info:
        session.request("GET", "/ping")
    assert not isinstance(info.value, AuthError) and route.call_count == 1


def test_403_other_html_page_is_an_auth_error_quoting_the_page(mock: respx.MockRouter) -> None:
    html = "<html><head><title>Forbidden</title></head><body>no</body></html>"
    mock.get("/ping").mock(
        return_value=response(403, text=html, headers={"content-type": "text/html"})
    )
    session, _ = make_session()
    with pytest.raises(AuthError, match=r"403: text/html: '<html><head><title>Forbidden"):
        session.request("GET", "/ping")


def test_404_is_not_found(mock: respx.MockRouter) -> None:
    mock.get("/lists/nope").mock(
        return_value=response(404, json={"title": "Resource Not Found", "status": 404})
    )
    session, _ = make_session()
    with pytest.raises(NotFoundError, match="was not found .404: Resource Not Found"):
        session.request("GET", "/lists/nope")


def test_400_problem_carries_title_detail_and_field_errors(mock: respx.MockRouter) -> None:
    problem = {
        "title": "Invalid Resource",
        "status": 400,
        "detail": "Your merge fields were invalid.",
        "errors": [{"field": "LNAME", "message": "Please enter a value"}],
    }
    route = mock.put("/lists/l/members/h").mock(
        return_value=response(400, json=problem, headers={"content-type": PROBLEM})
    )
    session, _ = make_session()
    with pytest.raises(ApiError) as info:
        session.request("PUT", "/lists/l/members/h", json={})
    assert type(info.value) is ApiError and route.call_count == 1
    assert info.value.title == "Invalid Resource"
    assert info.value.detail == "Your merge fields were invalid. (LNAME: Please enter a value)"


def test_civicrm_api_exception_is_not_retried(mock: respx.MockRouter) -> None:
    route = mock.post("/civi").mock(
        return_value=response(500, json={"error_code": 0, "error_message": "Invalid field 'foo'"})
    )
    session, _ = make_session()
    with pytest.raises(ApiError, match="Invalid field 'foo'") as info:
        session.request("POST", "/civi", data={"params": "{}"})
    assert route.call_count == 1 and info.value.detail == "Invalid field 'foo'"


def test_masked_civicrm_error_suggests_debug_permission(mock: respx.MockRouter) -> None:
    body = {
        "error_code": "1",
        "error_message": "Sorry an error occurred and your request was not completed.",
    }
    mock.post("/civi").mock(return_value=response(500, json=body))
    session, _ = make_session()
    with pytest.raises(ApiError, match="view debug output"):
        session.request("POST", "/civi")


def test_redirect_names_the_target(mock: respx.MockRouter) -> None:
    mock.get("/ping").mock(
        return_value=response(301, headers={"location": "https://other/3.0/ping"})
    )
    session, _ = make_session()
    with pytest.raises(ApiError, match="redirected .301. to https://other/3.0/ping"):
        session.request("GET", "/ping")


@pytest.mark.parametrize(
    ("content_type", "body", "shown"),
    [
        ("text/html", "<html><body><h1>Request Blocked</h1></body></html>", "text/html: '<html>"),
        ("application/json", '{"members": [{"id": "a"', 'application/json: \'{"members"'),
        ("text/plain", "Service temporarily overloaded", "text/plain: 'Service temporarily"),
        ("application/json", "[1, 2, 3]", "got a JSON list"),
        ("application/json", "", "application/json, empty body"),
    ],
)
def test_unexpected_bodies_are_bad_responses(
    mock: respx.MockRouter, content_type: str, body: str, shown: str
) -> None:
    mock.get("/ping").mock(
        return_value=response(200, content=body.encode(), headers={"content-type": content_type})
    )
    session, _ = make_session()
    with pytest.raises(BadResponse, match="answered 200") as info:
        session.request("GET", "/ping")
    assert shown in str(info.value)


def test_long_bodies_are_cut_in_messages(mock: respx.MockRouter) -> None:
    mock.get("/ping").mock(return_value=response(200, text="x" * 5000))
    session, _ = make_session()
    with pytest.raises(BadResponse) as info:
        session.request("GET", "/ping")
    assert len(str(info.value)) < 300


def test_204_and_raw_bodies(mock: respx.MockRouter) -> None:
    mock.delete("/batches/b1").mock(return_value=response(204))
    mock.get("/raw").mock(return_value=response(200, content=b"\x1f\x8b binary"))
    session, _ = make_session()
    assert session.request("DELETE", "/batches/b1") == {}
    assert session.request("GET", "/raw", expect_json=False) == b"\x1f\x8b binary"


def test_unauthenticated_download_sends_no_credentials() -> None:
    url = "https://bucket.s3.amazonaws.com/results.tar.gz"
    session, _ = make_session()
    with respx.mock() as router:
        route = router.get(url).mock(return_value=response(200, content=b"data"))
        assert session.request("GET", url, expect_json=False, authenticate=False) == b"data"
    sent = route.calls.last.request
    assert "authorization" not in sent.headers and sent.headers["accept"] == "*/*"


# -- secrets never leak -------------------------------------------------------------------------

LEAKS: list[Any] = [
    response(
        401, text=f"HTTP 401 Invalid credential {KEY}", headers={"content-type": "text/plain"}
    ),
    response(403, text=f"<html>key={KEY}</html>", headers={"content-type": "text/html"}),
    response(404, json={"title": "Resource Not Found", "detail": f"no {KEY}"}),
    response(400, json={"title": KEY, "detail": KEY, "errors": [{"field": KEY, "message": KEY}]}),
    response(500, json={"error_message": f"Invalid api_key {KEY}"}),
    response(200, text=f"<html>{KEY}</html>"),
    response(200, text=f'{{"apikey": "{KEY}"'),
    response(503, text=KEY),
    response(301, headers={"location": f"https://x/?apikey={KEY}"}),
    httpx.ConnectError(f"cannot connect to https://mcsync:{KEY}@us21.api.mailchimp.com"),
    httpx.ReadTimeout(f"timed out {KEY}"),
]


@pytest.mark.parametrize("outcome", LEAKS)
def test_the_key_never_appears_in_errors_or_debug_lines(
    mock: respx.MockRouter, outcome: Any
) -> None:
    mock.get("/ping").mock(side_effect=[outcome] * 3)
    lines: list[str] = []
    session, _ = make_session(max_retries=2, debug_http=lines.append)
    with pytest.raises(ApiError) as info:
        session.request("GET", "/ping")
    texts = [str(info.value), str(info.value.title), str(info.value.detail), *lines]
    cause: BaseException | None = info.value.__cause__
    while cause is not None:
        texts.append(str(cause) if not isinstance(cause, httpx.HTTPError) else "")
        cause = cause.__cause__
    assert lines, "debug_http got no lines"
    for text in texts:
        assert KEY not in text
        assert "SECRETKEY" not in text


def test_debug_lines_show_requests_with_credentials_masked(mock: respx.MockRouter) -> None:
    mock.get("/ping").mock(side_effect=[response(503), response(200, json={})])
    lines: list[str] = []
    session, _ = make_session(debug_http=lines.append)
    session.request("GET", "/ping", params={"fields": "a"})
    sends = [line for line in lines if " -> " in line]
    answers = [line for line in lines if " <- " in line]
    assert len(sends) == 2 and len(answers) == 2
    assert "authorization: ***" in sends[0].lower() and "Basic" not in sends[0]
    assert "GET https://us21.api.mailchimp.com/3.0/ping?fields=a" in sends[0]
    assert answers[0].startswith("Mailchimp test <- 503 GET")
    assert any("retry 1 of GET" in line for line in lines)


def test_transport_exception_text_is_scrubbed_from_the_message(mock: respx.MockRouter) -> None:
    mock.get("/ping").mock(side_effect=httpx.ConnectError(f"boom {KEY}"))
    session, _ = make_session(max_retries=0)
    with pytest.raises(RetriesExhausted) as info:
        session.request("GET", "/ping")
    assert KEY not in str(info.value) and "ConnectError (boom ***)" in str(info.value)


# -- concurrency --------------------------------------------------------------------------------


def test_sessions_of_one_account_share_the_in_flight_cap() -> None:
    service = f"Mailchimp cap-{uuid.uuid4().hex}"
    lock = threading.Lock()
    barrier = threading.Barrier(ACCOUNT_MAX_IN_FLIGHT, timeout=5)
    state = {"now": 0, "peak": 0}

    def slow(request: httpx.Request) -> httpx.Response:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        try:
            barrier.wait()  # only returns when exactly `cap` requests are in flight together
        finally:
            with lock:
                state["now"] -= 1
        return response(200, json={})

    sessions = [make_session(service=service, max_connections=10)[0] for _ in range(2)]
    with respx.mock(base_url=BASE) as router:
        router.get("/ping").mock(side_effect=slow)
        with ThreadPoolExecutor(max_workers=30) as pool:
            futures = [pool.submit(sessions[i % 2].request, "GET", "/ping") for i in range(30)]
            assert all(f.result(timeout=10) == {} for f in futures)
    assert state["peak"] == ACCOUNT_MAX_IN_FLIGHT
    assert sum(s.request_count for s in sessions) == 30


def test_each_service_has_its_own_slots() -> None:
    assert account_slots("Mailchimp a") is account_slots("Mailchimp a")
    assert account_slots("Mailchimp a") is not account_slots("Mailchimp b")


def test_session_is_a_context_manager(mock: respx.MockRouter) -> None:
    mock.get("/ping").mock(return_value=response(200, json={}))
    with make_session()[0] as session:
        assert session.request("GET", "ping") == {}


def test_other_transport_errors_are_not_retried(mock: respx.MockRouter) -> None:
    route = mock.get("/ping").mock(side_effect=httpx.UnsupportedProtocol("unsupported 'ftp://'"))
    session, clock = make_session()
    with pytest.raises(ApiError, match="failed: UnsupportedProtocol"):
        session.request("GET", "/ping")
    assert route.call_count == 1 and clock.slept == []


def test_absolute_urls_of_any_scheme_are_not_joined_to_the_base() -> None:
    session, _ = make_session()
    assert session._url("ftp://example.org/x") == "ftp://example.org/x"
    assert session._url("/lists") == f"{BASE}/lists"

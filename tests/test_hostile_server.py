"""Servers that stall, answer too much, garble batch results, expose signed links or lose the
answer to a write (issue 11, items 1, 2, 3, 8 and 9).

Each test is a bad-input case: what was tried, and what the user must see.
- a server trickling one byte at a time (body or headers): every request ends by the run's
  deadline; a cron run stops there as at any budget end (exit 0, progress saved, lease freed);
- a batch results archive holding a huge entry, or too much in all: a clear error naming the
  batch, quickly, and the batch is settled so the next run goes on; a JSON answer larger than
  any page: a clear error naming the URL path (not its query);
- batch results with a non-numeric status_code or a response that is not an object: that
  operation fails with a reason in `mcsync failures`; the run completes;
- `--debug-http` with batches: the pre-signed results link's signature never appears;
- a bulk `POST /lists/{id}` that was applied but whose answer was lost (503, timeout): not sent
  again, so nobody gets a second confirmation email; the next runs settle the members.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import random
import re
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import respx
from conftest import World
from e2e import Scenario, Tamper

from mcsync.api.http import HttpSession
from mcsync.api.mailchimp import parse_batch_results
from mcsync.api.responses import redact
from mcsync.budget import Budget
from mcsync.errors import BadResponse, BudgetExhausted, RetriesExhausted
from mcsync.ops.status import failures
from mcsync.sim.base import SimRequest, SimResponse, Simulator
from mcsync.sim.faults import call_simulator
from mcsync.sim.transport import MultiSimTransport
from mcsync.store.database import Staging

MIB = 1024 * 1024


# -- a server that trickles ---------------------------------------------------------------------
class Trickle:
    """A loopback HTTP/1.1 server that answers slowly: after the status line and headers
    (or, with ``headers_too``, from the first byte) one byte every ``gap`` seconds. After
    ``lasts`` seconds it sends the rest at once, so a test of broken code still ends.

    It answers ``body`` to every request, or proxies ``simulator`` and trickles only the
    requests ``match`` picks."""

    def __init__(
        self,
        *,
        body: bytes = b"",
        simulator: Simulator | None = None,
        match: Callable[[SimRequest], bool] = lambda request: True,
        gap: float = 0.1,
        lasts: float = 6.0,
        headers_too: bool = False,
    ) -> None:
        trickle = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _dispatch(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                content = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                request = SimRequest.build(
                    self.command, unquote(path), query, dict(self.headers.items()), content
                )
                if simulator is None:
                    answer = SimResponse(200, {"Content-Type": "application/json"}, body)
                else:
                    answer = call_simulator(simulator, request)
                head = f"HTTP/1.1 {answer.status} X\r\n".encode()
                for name, value in answer.headers.items():
                    if name.lower() not in ("content-length", "connection"):
                        head += f"{name}: {value}\r\n".encode()
                head += f"Content-Length: {len(answer.body)}\r\n\r\n".encode()
                data = head + answer.body
                try:
                    if not match(request):
                        self.wfile.write(data)
                        return
                    start = 0 if headers_too else len(head)
                    self.wfile.write(data[:start])
                    trickle.trickled += 1
                    began = time.monotonic()
                    for index in range(start, len(data)):
                        if time.monotonic() - began > lasts:
                            self.wfile.write(data[index:])
                            return
                        self.wfile.write(data[index : index + 1])
                        time.sleep(gap)
                except OSError:
                    self.close_connection = True  # the client gave up: fine

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

        self.trickled = 0
        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def trickles() -> Iterator[Callable[..., Trickle]]:
    made: list[Trickle] = []

    def make(**kwargs: Any) -> Trickle:
        made.append(Trickle(**kwargs))
        return made[-1]

    yield make
    for trickle in made:
        trickle.stop()


def session_for(url: str, budget: Budget, **kwargs: Any) -> HttpSession:
    return HttpSession(
        service="Mailchimp test",
        base_url=url,
        headers={},
        auth=None,
        budget=budget,
        secrets=[],
        rng=random.Random(1),
        **kwargs,
    )


@pytest.mark.parametrize("headers_too", [False, True], ids=["body", "headers"])
def test_a_trickling_server_cannot_hold_a_request_past_the_deadline(
    trickles: Callable[..., Trickle], headers_too: bool
) -> None:
    trickle = trickles(body=json.dumps({"pad": "x" * 200}).encode(), headers_too=headers_too)
    budget = Budget(1.0)
    session = session_for(trickle.url, budget, timeout=30.0)
    started = time.monotonic()
    with pytest.raises(BudgetExhausted, match="time budget"):
        session.request("GET", "/ping")
    elapsed = time.monotonic() - started
    session.close()
    assert trickle.trickled == 1
    assert elapsed < 1.5, f"the request outlived the 1 s budget by {elapsed - 1:.1f} s"


def test_a_silent_server_cannot_hold_a_request_past_the_deadline(
    trickles: Callable[..., Trickle],
) -> None:
    """Headers, then nothing for longer than the budget: the read timeout is capped."""
    trickle = trickles(body=b'{"ok": 1}', gap=5.0, lasts=4.0)
    session = session_for(trickle.url, Budget(1.0), timeout=30.0)
    started = time.monotonic()
    with pytest.raises(BudgetExhausted):
        session.request("GET", "/ping")
    session.close()
    assert time.monotonic() - started < 1.5


def _members_page(request: SimRequest) -> bool:
    return request.method == "GET" and request.path.rstrip("/").endswith("/members")


def test_a_cron_run_against_a_stalling_mailchimp_stops_at_max_time(
    tmp_path: Path, trickles: Callable[..., Trickle]
) -> None:
    scenario = Scenario(tmp_path / "world", members=40, seed=3).serve()
    try:
        trickle = trickles(simulator=scenario.mailchimp, match=_members_page, gap=0.2, lasts=60)
        config = scenario.config_path.read_text()
        scenario.config_path.write_text(config.replace(scenario.servers[0].url, trickle.url))
        budget = 3.0
        run = scenario.run("fetch-and-reconcile", "--max-time", str(budget), "-v", timeout=40)
        assert trickle.trickled >= 1
        assert run.code == 0, run
        # Interpreter start-up and the clean stop, no more: not the trickle's 60 s.
        assert run.seconds < budget + 5.0, run
        assert "the next run continues" in run.out, run
        with scenario.db() as db:
            lease = db.execute("SELECT lease_owner FROM audience_state").fetchone()[0]
            logged = [r[0] for r in db.execute("SELECT message FROM log")]
        assert not lease, "the lease must be released, or the next cron run finds it busy"
        assert any("Stopped at its time budget" in m for m in logged), logged
    finally:
        scenario.stop()


# -- answers too large --------------------------------------------------------------------------
def results_archive(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=1) as zipped,
        tarfile.open(fileobj=zipped, mode="w") as tar,
    ):
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _results(request: SimRequest) -> bool:
    return "/_sim/batch-results/" in request.path


def batch_world(make_world: Any, people: int = 4) -> tuple[World, Tamper]:
    """CiviCRM-only Added contacts, written to Mailchimp in one batch, through a Tamper."""
    world: World = make_world(batch_threshold=2)
    for n in range(people):
        world.person(f"p{n}@example.org", civi="Added", civi_at=world.ago(days=1))
    tamper = Tamper(world.mc)
    world.transport = MultiSimTransport({"mailchimp.sim": tamper, "civicrm.sim": world.civi})
    return world, tamper


def test_a_batch_results_bomb_is_refused_naming_the_batch(make_world: Any) -> None:
    """1 MiB or so of gzip holding an entry far larger than any batch's results."""
    world, tamper = batch_world(make_world)
    bomb = results_archive({"./bomb.json": b"[" + b" " * (40 * MIB) + b"]"})
    tamper.add(
        lambda request, forward: (
            SimResponse(200, {"Content-Type": "application/x-gzip"}, bomb)
            if _results(request)
            else None
        )
    )
    started = time.monotonic()
    first = world.sync()
    assert time.monotonic() - started < 10
    error = first[0].error
    assert error is not None, "a results bomb must not pass as 'no results'"
    (batch_id,) = [b.id for b in world.mc.submitted_batches()]
    assert batch_id in str(error) and "MiB" in str(error), error
    tamper.clear()
    again = world.sync()  # the batch is settled: the next run goes on
    assert again[0].error is None, again[0].error
    world.sync()
    assert all(world.mc_status(f"p{n}@example.org") == "subscribed" for n in range(4))


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ({"./a.json": b"[" + b" " * 3000 + b"]"}, ("b42", "one file")),
        ({f"./{n}.json": b"[" + b" " * 900 + b"]" for n in range(5)}, ("b42", "in all")),
    ],
    ids=["one entry", "in total"],
)
def test_batch_results_are_capped_per_file_and_in_total(
    files: dict[str, bytes], words: tuple[str, ...]
) -> None:
    with pytest.raises(BadResponse) as info:
        parse_batch_results(
            results_archive(files), batch_id="b42", max_file_bytes=2000, max_total_bytes=4000
        )
    for word in words:
        assert word in str(info.value)


def test_the_budget_is_checked_while_batch_results_are_parsed() -> None:
    ticks = iter(range(10**6))
    budget = Budget(20, clock=lambda: float(next(ticks)))
    archive = results_archive({f"./{n}.json": b"[" + b" " * MIB + b"]" for n in range(40)})
    with pytest.raises(BudgetExhausted):
        parse_batch_results(archive, batch_id="b1", budget=budget)


def test_an_oversized_json_answer_is_refused_naming_the_path_not_the_query() -> None:
    base = "https://us21.api.mailchimp.com/3.0"
    session = session_for(base, Budget(None))
    huge = b'{"members": [], "pad": "' + b"x" * (70 * MIB) + b'"}'
    with respx.mock() as router:
        router.get(f"{base}/lists/abc/members").mock(return_value=httpx.Response(200, content=huge))
        with pytest.raises(BadResponse) as info:
            session.request("GET", "/lists/abc/members", params={"fields": "secretish-query"})
    message = str(info.value)
    assert "/3.0/lists/abc/members" in message and "MiB" in message, message
    assert "secretish" not in message


# -- malformed batch results --------------------------------------------------------------------
def _garble(archive: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    """The archive with ``change`` applied to every operation result."""
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for entry in tar:
            handle = tar.extractfile(entry) if entry.isfile() else None
            if handle is None:
                continue
            items = json.loads(handle.read())
            for item in items:
                change(item)
            out[entry.name] = json.dumps(items).encode()
    return results_archive(out)


def test_malformed_operation_results_fail_their_rows_not_the_run(make_world: Any) -> None:
    world, tamper = batch_world(make_world, people=6)

    def change(item: dict[str, Any]) -> None:
        member = json.loads(item["response"])
        email = member.get("email_address")
        if email == "p0@example.org":
            item["status_code"] = "abc"
        elif email == "p1@example.org":
            item["response"] = "[1,2]"
        elif email == "p2@example.org":
            item["response"] = json.dumps({**member, "interests": ["x"]})
        elif email == "p3@example.org":
            item["response"] = json.dumps({**member, "last_changed": "yesterday"})

    def rule(request: SimRequest, forward: Any) -> SimResponse | None:
        if not _results(request):
            return None
        answer: SimResponse = forward(request)
        return SimResponse(answer.status, answer.headers, _garble(answer.body, change))

    tamper.add(rule)
    first = world.sync()
    assert first[0].error is None, first[0].error
    assert first[0].outcome is not None and first[0].outcome.completed
    staging = Staging(world.config.state_db)
    try:
        listed = {f["email"]: f for f in failures(staging, world.config.audience[0])}
    finally:
        staging.close()
    expected = {"p0": "status_code", "p1": "not a JSON object", "p2": "interests"}
    expected["p3"] = "last_changed"
    assert set(listed) == {f"{p}@example.org" for p in expected}, listed
    for person, words in expected.items():
        failure = listed[f"{person}@example.org"]
        assert failure["reason"] == "bad_result" and words in failure["detail"], failure
    assert world.mc_status("p4@example.org") == "subscribed"
    second = world.sync()
    assert second[0].error is None and second[0].outcome and second[0].outcome.completed


# -- --debug-http and pre-signed links -----------------------------------------------------------
def test_debug_http_never_shows_the_signature_of_a_presigned_link(make_world: Any) -> None:
    world, _ = batch_world(make_world)
    lines: list[str] = []
    results = world.sync(debug_http=lines.append)
    assert results[0].error is None, results[0].error
    downloads = [line for line in lines if "/_sim/batch-results/" in line]
    assert downloads, "the results download should be traced"
    assert not [line for line in lines if re.search(r"Signature=(?!\*)", line)], downloads


def test_signatures_of_presigned_links_are_masked_in_any_text() -> None:
    link = (
        "https://b.s3.amazonaws.com/r.tar.gz?AWSAccessKeyId=AKIAXYZ&Expires=1&Signature=s1%2B"
        " https://s.example/x?X-Amz-Credential=AKIA2%2F&X-Amz-Signature=deadbeef&x=1"
    )
    shown = redact(link, [])
    for secret in ("AKIAXYZ", "s1%2B", "AKIA2", "deadbeef"):
        assert secret not in shown, shown
    assert "Expires=1" in shown and "x=1" in shown


def test_the_simulator_refuses_a_results_link_with_a_wrong_signature(make_world: Any) -> None:
    world, tamper = batch_world(make_world)
    seen: list[int] = []

    def forged(request: SimRequest, forward: Any) -> SimResponse | None:
        if not _results(request):
            return None
        query = {k: v for k, v in request.query.items() if k != "Signature"}
        query["Signature"] = ["0" * 64]
        answer: SimResponse = forward(dataclasses.replace(request, query=query))
        seen.append(answer.status)
        return answer

    tamper.add(forged)
    results = world.sync()
    assert seen and set(seen) == {403}
    assert results[0].error is not None and "not available" in str(results[0].error)


# -- a lost answer to a bulk write ------------------------------------------------------------
class LoseAnswer(httpx.BaseTransport):
    """Lets the first bulk `POST /lists/{id}` naming a `pending` member reach the simulator
    (so it is applied), then loses its answer: a 503 from the edge, or a read timeout."""

    def __init__(self, inner: httpx.BaseTransport, how: str) -> None:
        self.inner = inner
        self.how = how
        self.fired = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        bulk = re.search(r"/lists/[^/]+$", request.url.path)
        if self.fired or request.method != "POST" or not bulk:
            return response
        members = json.loads(request.content).get("members") or []
        if not any(m.get("status") == "pending" for m in members):
            return response
        self.fired += 1
        if self.how == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(503, text="<html>503 Service Unavailable</html>", request=request)


@pytest.mark.parametrize("how", ["503", "timeout"])
def test_a_lost_answer_to_a_bulk_write_sends_no_second_confirmation(world: World, how: str) -> None:
    world.person(
        "back@example.org",
        mc="unsubscribed",
        civi="Added",
        mc_at=world.ago(days=30),
        civi_at=world.ago(days=1),
    )
    lose = LoseAnswer(world.transport, how)
    world.transport = lose  # type: ignore[assignment]
    first = world.sync()
    assert lose.fired == 1
    sent = [e for _, e in world.mc.confirmation_emails if e == "back@example.org"]
    assert len(sent) == 1, f"{len(sent)} confirmation emails for one lost answer"
    assert isinstance(first[0].error, RetriesExhausted), first[0].error
    assert "not safe to repeat" in str(first[0].error)
    assert world.mc_status("back@example.org") == "pending"
    for _ in range(3):
        again = world.sync()
        assert again[0].error is None, again[0].error
    assert again[0].outcome is not None and again[0].outcome.completed
    sent = [e for _, e in world.mc.confirmation_emails if e == "back@example.org"]
    assert len(sent) == 1, f"{len(sent)} confirmation emails for one lost answer"
    assert world.mc_status("back@example.org") == "pending"


def test_a_bulk_write_without_pending_members_is_still_retried(world: World) -> None:
    """Repeating subscribed/unsubscribed is harmless, so a 503 is retried as before."""
    world.person("new@example.org", civi="Added", civi_at=world.ago(days=1))

    class FailOnce(httpx.BaseTransport):
        def __init__(self, inner: httpx.BaseTransport) -> None:
            self.inner, self.failed = inner, 0

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if not self.failed and request.method == "POST" and "/lists/" in request.url.path:
                self.failed += 1
                return httpx.Response(503, request=request)
            return self.inner.handle_request(request)

    world.transport = FailOnce(world.transport)  # type: ignore[assignment]
    results = world.sync()
    assert results[0].error is None, results[0].error
    assert world.mc_status("new@example.org") == "subscribed"


# -- found on the way: a deadline right after contacts are created ------------------------------
def test_a_deadline_right_after_creating_contacts_loses_none_of_them(world: World) -> None:
    """The run stops at its deadline just after `Contact.save` answered, before the new
    contacts' emails were read: the next run must still link and add them (it used to point
    the rows at contacts it never read, and report them as 'no_contact' for good)."""
    for n in range(3):
        world.person(f"new{n}@example.org", mc="subscribed")
    now = [0.0]

    class JumpAfterSave(httpx.BaseTransport):
        def __init__(self, inner: httpx.BaseTransport) -> None:
            self.inner = inner

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = self.inner.handle_request(request)
            if request.url.path.endswith("/Contact/save"):
                now[0] += 1000.0  # the deadline passes while this answer arrives
            return response

    world.transport = JumpAfterSave(world.transport)  # type: ignore[assignment]
    first = world.sync(budget=Budget(100, clock=lambda: now[0]))
    assert first[0].outcome is not None and not first[0].outcome.completed
    assert first[0].outcome.stage == "create_contacts", first[0].outcome
    for _ in range(2):
        world.sync()
    added = world.civi.query(
        "SELECT e.email FROM group_contact g JOIN email e ON e.contact_id = g.contact_id "
        "WHERE g.group_id = ? AND g.status = 'Added'",
        (world.group_id,),
    )
    assert sorted(r["email"] for r in added) == [f"new{n}@example.org" for n in range(3)]


# -- garbled answers to a bulk member write (issue 11 leftovers, item 1) -------------------------
def _bulk_write(request: SimRequest) -> bool:
    return request.method == "POST" and re.search(r"/lists/[^/]+/?$", request.path) is not None


def _each_member(answer: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> None:
    for member in answer.get("new_members") or []:
        change(member)


#: What each case does to Mailchimp's answer (a JSON object) to `POST /lists/{id}`.
BULK_GARBLES: dict[str, Callable[[dict[str, Any]], None]] = {
    "new_members an object": lambda a: a.update(new_members={"a": 1}),
    "entries not objects": lambda a: a.update(new_members=[1, "x", None, ["p0@example.org"]]),
    "errors a string": lambda a: a.update(errors="boom", new_members=[]),
    "error entries not objects": lambda a: a.update(errors=[["p0@example.org"]], new_members=[]),
    "email not text": lambda a: _each_member(a, lambda m: m.update(email_address=5)),
    "status not text": lambda a: _each_member(a, lambda m: m.update(status=["subscribed"])),
    "interests a list": lambda a: _each_member(a, lambda m: m.update(interests=["x"])),
    "last_changed no time": lambda a: _each_member(a, lambda m: m.update(last_changed="soon")),
    "member id an object": lambda a: _each_member(a, lambda m: m.update(id={"x": 1})),
    "member id no hash": lambda a: _each_member(a, lambda m: m.update(id="x")),
}


@pytest.mark.parametrize("applied", [True, False], ids=["applied", "not applied"])
@pytest.mark.parametrize("case", list(BULK_GARBLES))
def test_a_garbled_answer_to_a_bulk_write_fails_its_rows_not_the_run(
    make_world: Any, case: str, applied: bool
) -> None:
    """The write may or may not have been made: its rows fail with `bad_result` (listed by
    `mcsync failures`), the run completes, and a later run decides them again."""
    world: World = make_world()
    people = [f"p{n}@example.org" for n in range(3)]
    for email in people:
        world.person(email, civi="Added", civi_at=world.ago(days=1))
    tamper = Tamper(world.mc)
    world.transport = MultiSimTransport({"mailchimp.sim": tamper, "civicrm.sim": world.civi})

    def rule(request: SimRequest, forward: Any) -> SimResponse | None:
        if not _bulk_write(request):
            return None
        if applied:
            answer = json.loads(forward(request).body)
        else:
            answer = {"new_members": [], "updated_members": [], "errors": []}
            answer["new_members"] = [{"email_address": e, "status": "subscribed"} for e in people]
        BULK_GARBLES[case](answer)
        return SimResponse(200, {"Content-Type": "application/json"}, json.dumps(answer).encode())

    tamper.add(rule, times=1)
    first = world.sync()
    assert tamper.fired[0] == 1
    assert first[0].error is None, first[0].error
    assert first[0].outcome is not None and first[0].outcome.completed
    staging = Staging(world.config.state_db)
    try:
        listed = {f["email"]: f for f in failures(staging, world.config.audience[0])}
    finally:
        staging.close()
    assert set(listed) == set(people), listed
    assert {f["reason"] for f in listed.values()} == {"bad_result"}, listed
    for _ in range(2):
        again = world.sync()
        assert again[0].error is None, again[0].error
    assert [world.mc_status(e) for e in people] == ["subscribed"] * 3
    staging = Staging(world.config.state_db)
    try:
        assert failures(staging, world.config.audience[0]) == []
    finally:
        staging.close()


# -- batch results that never parse (issue 11 leftovers, item 2) --------------------------------
def _results_files(archive: bytes, change: Callable[[bytes], bytes]) -> bytes:
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for entry in tar:
            handle = tar.extractfile(entry) if entry.isfile() else None
            if handle is not None:
                out[entry.name] = change(handle.read())
    return results_archive(out)


RESULTS_GARBLES: dict[str, Callable[[bytes], bytes]] = {
    "invalid JSON": lambda data: data[: len(data) // 2],
    "not an array": lambda data: b'{"results": ' + data + b"}",
    "items not objects": lambda data: json.dumps([[i] for i in json.loads(data)]).encode(),
}


@pytest.mark.parametrize("case", list(RESULTS_GARBLES))
def test_batch_results_that_never_parse_close_the_batch_after_three_runs(
    make_world: Any, case: str
) -> None:
    """An intact archive whose JSON cannot be read: each run fails naming the batch, until the
    third failure closes the batch and fails its updates with `bad_result`; runs go on."""
    world, tamper = batch_world(make_world)

    def rule(request: SimRequest, forward: Any) -> SimResponse | None:
        if not _results(request):
            return None
        answer: SimResponse = forward(request)
        body = _results_files(answer.body, RESULTS_GARBLES[case])
        return SimResponse(answer.status, answer.headers, body)

    tamper.add(rule)
    batch_id = ""
    for attempt in (1, 2):
        result = world.sync()
        error = result[0].error
        assert error is not None, f"run {attempt}: unreadable results must fail the run"
        (batch_id,) = [b.id for b in world.mc.submitted_batches()]
        assert batch_id in str(error) and f"{attempt} of 3" in str(error), error
    third = world.sync()
    assert third[0].error is None, third[0].error
    assert third[0].outcome is not None and third[0].outcome.completed
    staging = Staging(world.config.state_db)
    try:
        listed = failures(staging, world.config.audience[0])
        logged = [r[0] for r in staging.query("SELECT message FROM log")]
        open_batches = staging.scalar(
            "SELECT COUNT(*) FROM batches WHERE status NOT IN ('processed', 'aborted')"
        )
    finally:
        staging.close()
    assert open_batches == 0
    assert len(listed) == 4 and {f["reason"] for f in listed} == {"bad_result"}, listed
    assert any(batch_id in m and "closed" in m for m in logged), logged
    tamper.clear()
    for _ in range(2):
        again = world.sync()
        assert again[0].error is None, again[0].error
    assert all(world.mc_status(f"p{n}@example.org") == "subscribed" for n in range(4))
    staging = Staging(world.config.state_db)
    try:
        assert failures(staging, world.config.audience[0]) == []
    finally:
        staging.close()

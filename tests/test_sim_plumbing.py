"""The simulator plumbing: in-process transports, the loopback HTTP server, fault injection.

A tiny counter simulator defined here stands in for the real ones, so these tests exercise only
the plumbing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from mcsync.sim.base import SimRequest, SimResponse
from mcsync.sim.faults import Fault, FaultPlan
from mcsync.sim.server import SimServer, serve_simulators
from mcsync.sim.transport import MultiSimTransport, SimTransport


class CounterSim:
    """POST /incr adds one; GET /count reads it; GET /big?kb=N returns N KB; else echo."""

    def __init__(self, name: str = "sim") -> None:
        self.name = name
        self.lock = threading.RLock()
        self.request_log: list[tuple[str, str]] = []
        self.count = 0

    def handle(self, request: SimRequest) -> SimResponse:
        with self.lock:
            self.request_log.append((request.method, request.path))
            if request.path.endswith("/incr") and request.method == "POST":
                self.count += 1
                return SimResponse.json(200, {"count": self.count})
            if request.path.endswith("/count"):
                return SimResponse.json(200, {"count": self.count, "sim": self.name})
            if request.path.endswith("/big"):
                size = int(request.arg("kb", "1") or "1") * 1024
                return SimResponse(200, {"Content-Type": "application/octet-stream"}, b"x" * size)
            if request.path.endswith("/crash"):
                raise RuntimeError("simulator bug")
            return SimResponse.json(
                200,
                {
                    "sim": self.name,
                    "method": request.method,
                    "path": request.path,
                    "query": request.query,
                    "headers": request.headers,
                    "body": request.body.decode("utf-8"),
                },
            )


@pytest.fixture
def sim() -> CounterSim:
    return CounterSim()


@pytest.fixture
def server(sim: CounterSim) -> Iterator[SimServer]:
    with SimServer(sim) as srv:
        yield srv


# --- in-process transport -------------------------------------------------------------------


def test_transport_round_trip(sim: CounterSim) -> None:
    with httpx.Client(transport=SimTransport(sim), base_url="http://x.sim") as client:
        response = client.post(
            "/3.0/lists/a%20b/members",
            params={"count": "10", "fields": "a,b"},
            headers={"X-Thing": "Yes"},
            content=b'{"k": "\xc3\xa9"}',
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    echo = response.json()
    assert echo["method"] == "POST"
    assert echo["path"] == "/3.0/lists/a b/members"
    assert echo["query"] == {"count": ["10"], "fields": ["a,b"]}
    assert echo["headers"]["x-thing"] == "Yes"
    assert json.loads(echo["body"]) == {"k": "é"}
    assert sim.request_log == [("POST", "/3.0/lists/a b/members")]


def test_multi_transport_routes_by_host_and_prefix() -> None:
    mailchimp, civicrm, special = CounterSim("mc"), CounterSim("civi"), CounterSim("special")
    transport = MultiSimTransport(
        {
            "mailchimp.sim": mailchimp,
            "http://civicrm.sim/civicrm/ajax/api4": civicrm,
            "http://mailchimp.sim/special": SimTransport(special),
        }
    )
    with httpx.Client(transport=transport) as client:

        def who(url: str) -> str:
            return str(client.get(url).json()["sim"])

        assert who("http://mailchimp.sim/3.0/lists") == "mc"
        assert who("http://mailchimp.sim/batch-results/abc.tar.gz") == "mc"
        assert who("http://mailchimp.sim/special/x") == "special"
        assert who("http://mailchimp.sim/specialist") == "mc"
        assert who("http://civicrm.sim/civicrm/ajax/api4/Contact/get") == "civi"
        assert who("http://civicrm.sim/civicrm/ajax/api4") == "civi"
        with pytest.raises(httpx.ConnectError):
            client.get("http://civicrm.sim/wp-admin/")
        with pytest.raises(httpx.ConnectError):
            client.get("http://elsewhere.example/3.0/ping")


def test_multi_transport_host_with_port() -> None:
    a, b = CounterSim("a"), CounterSim("b")
    transport = MultiSimTransport({"127.0.0.1:8010": a, "127.0.0.1:8011": b})
    with httpx.Client(transport=transport) as client:
        assert client.get("http://127.0.0.1:8010/x").json()["sim"] == "a"
        assert client.get("http://127.0.0.1:8011/x").json()["sim"] == "b"
        with pytest.raises(httpx.ConnectError):
            client.get("http://127.0.0.1:8012/x")


# --- loopback server --------------------------------------------------------------------------


def test_server_round_trip_and_keep_alive(server: SimServer, sim: CounterSim) -> None:
    assert server.port != 0 and server.url == f"http://127.0.0.1:{server.port}"
    with httpx.Client(base_url=server.url) as client:
        local_ports = set()
        for _ in range(5):
            response = client.post("/incr", content=b"{}")
            assert response.status_code == 200
            stream = response.extensions["network_stream"]
            local_ports.add(stream.get_extra_info("client_addr")[1])
        echo = client.get("/3.0/a%2Fb", params={"q": "é"}).json()
    assert len(local_ports) == 1, "requests should share one keep-alive connection"
    assert sim.count == 5
    assert echo["path"] == "/3.0/a/b" and echo["query"] == {"q": ["é"]}


def test_server_serves_large_pages_fast(server: SimServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        started = time.perf_counter()
        for _ in range(50):
            response = client.get("/big", params={"kb": 300})
            assert len(response.content) == 300 * 1024
        elapsed = time.perf_counter() - started
    print(f"\n50 x 300 KB over keep-alive: {elapsed * 1000:.0f} ms")
    assert elapsed < 5


def test_server_handles_concurrent_clients(server: SimServer, sim: CounterSim) -> None:
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            with httpx.Client(base_url=server.url) as client:
                for _ in range(25):
                    client.post("/incr").raise_for_status()
        except BaseException as exc:  # surfaced by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sim.count == 200


def test_server_stop_closes_port_and_kept_alive_connections(sim: CounterSim) -> None:
    srv = SimServer(sim).start()
    client = httpx.Client(base_url=srv.url)
    assert client.get("/count").status_code == 200
    srv.stop()
    with pytest.raises(httpx.TransportError):
        client.get("/count")
    client.close()
    with (
        httpx.Client(base_url=f"http://127.0.0.1:{srv.port}") as fresh,
        pytest.raises(httpx.ConnectError),
    ):
        fresh.get("/count")
    srv.stop()  # idempotent


def test_server_reports_simulator_crash_as_500(server: SimServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        response = client.get("/crash")
        assert response.status_code == 500
        assert client.get("/count").status_code == 200
    assert len(server.errors) == 1 and "simulator bug" in server.errors[0]


def test_serve_simulators_starts_both(sim: CounterSim) -> None:
    civi = CounterSim("civi")
    mc_server, civi_server = serve_simulators(sim, civi, faults=FaultPlan(latency=0.01))
    try:
        assert mc_server.port != civi_server.port
        with httpx.Client() as client:
            assert client.get(mc_server.url + "/3.0/ping").json()["sim"] == "sim"
            response = client.get(civi_server.url + "/civicrm/ajax/api4/Contact/get")
            assert response.json()["sim"] == "civi"
    finally:
        mc_server.stop()
        civi_server.stop()


# --- faults -----------------------------------------------------------------------------------


def _client_for(
    where: str, sim: CounterSim, plan: FaultPlan
) -> tuple[httpx.Client, SimServer | None]:
    """A client that reaches ``sim`` with ``plan`` in-process or over loopback."""
    if where == "transport":
        transport = SimTransport(sim, plan)
        return httpx.Client(transport=transport, base_url="http://sim", timeout=0.3), None
    srv = SimServer(sim, faults=plan).start()
    return httpx.Client(base_url=srv.url, timeout=0.3), srv


@pytest.fixture(params=["transport", "server"])
def where(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _post(where: str, sim: CounterSim, plan: FaultPlan, path: str) -> httpx.Response:
    client, srv = _client_for(where, sim, plan)
    try:
        return client.post(path)
    finally:
        client.close()
        if srv is not None:
            srv.stop()


def test_fault_429_mailchimp_style(where: str, sim: CounterSim) -> None:
    plan = FaultPlan(rate=1.0, kinds=("429",), retry_after=1.5)
    response = _post(where, sim, plan, "/3.0/lists/abc/incr")
    assert response.status_code == 429
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["retry-after"] == "2"
    body = response.json()
    assert body["title"] == "Too Many Requests" and body["status"] == 429
    assert body["instance"] == response.headers["x-request-id"]
    assert sim.count == 0, "a refused request must not be applied"


def test_fault_429_civicrm_style_is_a_web_server_page(where: str, sim: CounterSim) -> None:
    plan = FaultPlan(rate=1.0, kinds=("429",), retry_after=None)
    response = _post(where, sim, plan, "/civicrm/ajax/api4/incr")
    assert response.status_code == 429
    assert response.headers["content-type"] == "text/html"
    assert "429 Too Many Requests" in response.text
    assert "retry-after" not in response.headers
    assert sim.count == 0


@pytest.mark.parametrize(
    ("kind", "style", "status", "content_type"),
    [
        ("500", "mailchimp", 500, "application/problem+json; charset=utf-8"),
        ("503", "mailchimp", 503, "text/html"),
        ("502", "mailchimp", 502, "text/html"),
        ("504", "civicrm", 504, "text/html"),
        ("500", "civicrm", 500, "text/html"),
        ("503", "civicrm", 503, "text/html"),
        ("maintenance", "civicrm", 503, "application/json"),
        ("deadlock", "civicrm", 500, "application/json"),
    ],
)
def test_fault_server_errors(
    where: str, sim: CounterSim, kind: str, style: str, status: int, content_type: str
) -> None:
    plan = FaultPlan(rate=1.0, kinds=(kind,), style=style)
    response = _post(where, sim, plan, "/incr")
    assert response.status_code == status
    assert response.headers["content-type"] == content_type
    if kind == "maintenance":
        assert response.json()["status_code"] == 503
    if kind == "deadlock":
        assert "Deadlock found" in response.json()["error_message"]
    if style == "mailchimp" and kind == "500":
        assert response.json()["title"] == "Internal Server Error"
    assert sim.count == 0


def test_fault_drop_is_seen_as_disconnect_and_may_apply(where: str, sim: CounterSim) -> None:
    plan = FaultPlan(rate=1.0, kinds=("drop",), seed=3)
    client, srv = _client_for(where, sim, plan)
    try:
        for _ in range(20):
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                client.post("/incr")
    finally:
        client.close()
        if srv is not None:
            srv.stop()
    assert 0 < sim.count < 20, "drops should lose some applied and some unapplied requests"


def test_fault_slow_times_out_but_applies(where: str, sim: CounterSim) -> None:
    plan = FaultPlan(rate=1.0, kinds=("slow",), slow_seconds=0.6)
    started = time.perf_counter()
    with pytest.raises(httpx.ReadTimeout):
        _post(where, sim, plan, "/incr")
    assert 0.25 < time.perf_counter() - started < 0.6
    assert sim.count == 1


def test_fault_slow_within_timeout_answers_late(sim: CounterSim) -> None:
    plan = FaultPlan(rate=1.0, kinds=("slow",), slow_seconds=0.2)
    with httpx.Client(transport=SimTransport(sim, plan), base_url="http://sim") as client:
        started = time.perf_counter()
        assert client.post("/incr").json() == {"count": 1}
        assert time.perf_counter() - started >= 0.2


def test_latency_is_added_to_every_response(where: str, sim: CounterSim) -> None:
    plan = FaultPlan(latency=0.05)
    client, srv = _client_for(where, sim, plan)
    try:
        client.get("/count")  # connect outside the timing
        started = time.perf_counter()
        for _ in range(4):
            client.get("/count").raise_for_status()
        elapsed = time.perf_counter() - started
    finally:
        client.close()
        if srv is not None:
            srv.stop()
    assert elapsed >= 0.2


def test_server_recovers_after_faults(sim: CounterSim) -> None:
    plan = FaultPlan(rate=0.5, kinds=("drop", "503"), seed=11)
    outcomes: dict[str, int] = {}
    with SimServer(sim, faults=plan) as srv, httpx.Client(base_url=srv.url) as client:
        for _ in range(40):
            try:
                key = str(client.get("/count").status_code)
            except httpx.TransportError as exc:
                key = type(exc).__name__
            outcomes[key] = outcomes.get(key, 0) + 1
        assert srv.errors == []
    assert outcomes.get("200", 0) > 5 and outcomes.get("503", 0) > 2
    assert sum(v for k, v in outcomes.items() if not k.isdigit()) > 2


def test_decisions_are_deterministic_for_a_seed() -> None:
    request = SimRequest("GET", "/3.0/ping")

    def decisions(seed: int) -> list[Fault | None]:
        plan = FaultPlan(rate=0.3, seed=seed)
        return [plan.decide(request) for _ in range(300)]

    first = decisions(7)
    assert first == decisions(7)
    assert first != decisions(8)
    hits = [d for d in first if d is not None]
    assert 60 <= len(hits) <= 120
    assert {d.kind for d in hits} == {"429", "500", "503", "drop", "slow"}
    drops = [d.apply_first for d in hits if d.kind == "drop"]
    assert True in drops and False in drops
    assert all(d.apply_first for d in hits if d.kind == "slow")
    assert not any(d.apply_first for d in hits if d.kind in ("429", "500", "503"))


def test_decide_is_thread_safe() -> None:
    plan = FaultPlan(rate=0.5, seed=1)
    request = SimRequest("GET", "/x")
    counts: list[int] = []

    def worker() -> None:
        counts.append(sum(plan.decide(request) is not None for _ in range(2000)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    single = FaultPlan(rate=0.5, seed=1)
    assert sum(counts) == sum(single.decide(request) is not None for _ in range(8000))


def test_no_faults_at_rate_zero() -> None:
    plan = FaultPlan(seed=1)
    assert all(plan.decide(SimRequest("GET", "/")) is None for _ in range(100))


@pytest.mark.parametrize(
    "kwargs",
    [{"rate": 1.5}, {"rate": 0.5, "kinds": ("418",)}, {"style": "wordpress"}, {"latency": -1}],
)
def test_plan_rejects_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FaultPlan(**kwargs)  # type: ignore[arg-type]


def test_style_is_told_from_the_request() -> None:
    plan = FaultPlan()
    assert plan.style_for(SimRequest("POST", "/civicrm/ajax/api4/Contact/get")) == "civicrm"
    query = "page=CiviCRM&q=civicrm/ajax/api4/Contact/get"
    wordpress = SimRequest.build("POST", "/wp-admin/admin.php", query, {}, b"")
    assert plan.style_for(wordpress) == "civicrm"
    assert plan.style_for(SimRequest("GET", "/3.0/lists")) == "mailchimp"

"""Fault injection for the simulators: rate limits, server errors, dropped and slow responses.

A :class:`FaultPlan` decides, per request, whether something goes wrong; the transport and the
HTTP server carry the decision out. Error bodies imitate what each service really sends
(``reference/mailchimp-api.md`` §6–§7, ``reference/civicrm-api.md`` §1.5): Mailchimp answers
429/500 with ``application/problem+json`` and its edge answers 502/503/504 with HTML; a CiviCRM
site has no rate limiter of its own, so 429/5xx come from the web server as HTML pages, except
maintenance mode (503 JSON) and a database deadlock (500 JSON from the API).
"""

from __future__ import annotations

import math
import random
import threading
import time
import uuid
from dataclasses import dataclass, field

from mcsync.sim.base import SimRequest, SimResponse, Simulator

# Kinds that answer with an error response *instead of* handling the request.
ERROR_KINDS = frozenset({"429", "500", "502", "503", "504", "maintenance", "deadlock"})
# Kinds that handle the request and then lose or delay the response.
DELIVERY_KINDS = frozenset({"drop", "slow"})
ALL_KINDS = ERROR_KINDS | DELIVERY_KINDS
STYLES = ("mailchimp", "civicrm")

MAILCHIMP_ERROR_TYPE = "https://mailchimp.com/developer/marketing/docs/errors/"


@dataclass(frozen=True)
class Fault:
    """One decided fault. ``apply_first``: the simulator handles the request before the fault.

    Error kinds never apply the request (the service refused it); ``slow`` always does (the
    work happens, the answer is late); ``drop`` does either, because a real dropped connection
    may lose the response of a request that was applied.
    """

    kind: str
    apply_first: bool


@dataclass
class FaultPlan:
    """What goes wrong, how often, and how slow every response is.

    ``rate`` is the chance per request of a fault drawn uniformly from ``kinds``; ``latency``
    seconds are added to every response (150 ms imitates a real round trip for benchmarks);
    ``slow_seconds`` is the delay of a ``slow`` fault; ``retry_after`` (seconds, or None for no
    header) goes in the ``Retry-After`` header of 429 and 503 answers; ``style`` forces the
    service whose error pages are imitated ("mailchimp" or "civicrm"), otherwise it is told from
    the request path. The same ``seed`` gives the same sequence of decisions.
    """

    rate: float = 0.0
    kinds: tuple[str, ...] = ("429", "500", "503", "drop", "slow")
    latency: float = 0.0
    slow_seconds: float = 2.0
    seed: int | None = None
    retry_after: float | None = 1.0
    style: str | None = None
    _rng: random.Random = field(init=False, repr=False, compare=False)
    _lock: threading.Lock = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"FaultPlan.rate must be between 0 and 1, not {self.rate!r}")
        unknown = [k for k in self.kinds if k not in ALL_KINDS]
        if unknown or (self.rate > 0 and not self.kinds):
            raise ValueError(
                f"FaultPlan.kinds has unknown kinds {unknown}; choose from {sorted(ALL_KINDS)}"
            )
        if self.style is not None and self.style not in STYLES:
            raise ValueError(f"FaultPlan.style must be one of {STYLES} or None")
        if self.latency < 0 or self.slow_seconds < 0:
            raise ValueError("FaultPlan.latency and slow_seconds must not be negative")
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def decide(self, request: SimRequest) -> Fault | None:
        """Draw this request's fault, if any; safe to call from many threads at once."""
        if self.rate <= 0.0:
            return None
        with self._lock:
            if self._rng.random() >= self.rate:
                return None
            kind = self._rng.choice(self.kinds)
            apply_first = kind == "slow" or (kind == "drop" and self._rng.random() < 0.5)
        return Fault(kind, apply_first)

    def style_for(self, request: SimRequest) -> str:
        """Which service's error pages to imitate for this request."""
        if self.style is not None:
            return self.style
        target = request.path.lower() + " " + " ".join(request.query.get("q", [])).lower()
        return "civicrm" if "civicrm" in target else "mailchimp"

    def response_for(self, fault: Fault, request: SimRequest) -> SimResponse:
        """The error response a service sends for an error-kind fault."""
        if fault.kind not in ERROR_KINDS:
            raise ValueError(f"fault kind {fault.kind!r} has no error response")
        if self.style_for(request) == "civicrm":
            response = _civicrm_error(fault.kind)
        else:
            response = _mailchimp_error(fault.kind)
        if response.status in (429, 503) and self.retry_after is not None:
            # HTTP allows only whole seconds here; round up so clients never retry early.
            response.headers["Retry-After"] = str(math.ceil(self.retry_after))
        return response


_HTML_REASONS = {
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}


def _web_server_page(status: int, server: str) -> SimResponse:
    """An HTML error page as nginx or a CDN edge writes it."""
    reason = _HTML_REASONS[status]
    body = (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>{server}</center>\r\n"
        "</body>\r\n</html>\r\n"
    )
    return SimResponse(status, {"Content-Type": "text/html", "Server": server}, body.encode())


def _mailchimp_error(kind: str) -> SimResponse:
    if kind in ("429", "500", "deadlock"):
        request_id = str(uuid.uuid4())
        status = 429 if kind == "429" else 500
        title, detail = (
            ("Too Many Requests", "You have exceeded the limit of 10 simultaneous connections.")
            if status == 429
            else (
                "Internal Server Error",
                (
                    "An unexpected internal error has occurred. Please contact Support for more "
                    "information."
                ),
            )
        )
        payload = {
            "type": MAILCHIMP_ERROR_TYPE,
            "title": title,
            "status": status,
            "detail": detail,
            "instance": request_id,
        }
        response = SimResponse.json(status, payload, "application/problem+json; charset=utf-8")
        response.headers["X-Request-Id"] = request_id
        return response
    status = 503 if kind == "maintenance" else int(kind)
    return _web_server_page(status, "AkamaiGHost")


def _civicrm_error(kind: str) -> SimResponse:
    if kind == "maintenance":
        payload = {"status_code": 503, "status_message": "Temporarily unavailable for maintenance."}
        return SimResponse.json(503, payload)
    if kind == "deadlock":
        error_id = uuid.uuid4().hex[:12]
        payload = {
            "error_id": error_id,
            "error_code": 0,
            "error_message": "DB Error: Deadlock found when trying to get lock; "
            "try restarting transaction",
            "status": 500,
        }
        return SimResponse.json(500, payload)
    return _web_server_page(int(kind), "nginx")


def call_simulator(simulator: Simulator, request: SimRequest) -> SimResponse:
    """Handle one request under the simulator's lock (its state is shared by all threads)."""
    with simulator.lock:
        return simulator.handle(request)


def run_with_faults(
    simulator: Simulator, plan: FaultPlan | None, request: SimRequest
) -> tuple[SimResponse | None, Fault | None]:
    """Apply latency and the plan's decision; return the response to send (None: drop it).

    For a ``slow`` fault the response is returned and the caller delays it, because only the
    caller knows how (a real sleep on a socket, or a simulated client timeout in-process).
    """
    if plan is None:
        return call_simulator(simulator, request), None
    if plan.latency:
        time.sleep(plan.latency)
    fault = plan.decide(request)
    if fault is None:
        return call_simulator(simulator, request), None
    if fault.kind in ERROR_KINDS:
        return plan.response_for(fault, request), fault
    response = call_simulator(simulator, request) if fault.apply_first else None
    return (response if fault.kind == "slow" else None), fault

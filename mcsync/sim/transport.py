"""In-process httpx transports: a client talks to the simulators without any socket.

``SimTransport`` serves one simulator; ``MultiSimTransport`` routes by host or URL prefix so one
``httpx.Client`` reaches both simulators (and Mailchimp's batch result downloads on its host).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from email.utils import formatdate

import httpx

from mcsync.sim.base import SimRequest, SimResponse, Simulator
from mcsync.sim.faults import FaultPlan, run_with_faults


def to_sim_request(request: httpx.Request) -> SimRequest:
    """The simulator's view of an httpx request: decoded path, raw query, lower-cased headers."""
    return SimRequest.build(
        request.method,
        request.url.path,
        request.url.query.decode("ascii"),
        dict(request.headers.items()),
        request.read(),
    )


def to_httpx_response(response: SimResponse, request: httpx.Request) -> httpx.Response:
    headers = dict(response.headers)
    headers["Content-Length"] = str(len(response.body))
    # Every HTTP server sends its clock (RFC 9110 §6.6.1), as the loopback server does.
    headers.setdefault("Date", formatdate(usegmt=True))
    return httpx.Response(response.status, headers=headers, content=response.body, request=request)


def _read_timeout(request: httpx.Request) -> float | None:
    timeout = request.extensions.get("timeout", {})
    value = timeout.get("read") if isinstance(timeout, dict) else None
    return float(value) if value is not None else None


class SimTransport(httpx.BaseTransport):
    """Serve ``simulator`` to an httpx client, with optional faults.

    Faults surface as a real client would see them: ``drop`` raises
    ``httpx.RemoteProtocolError``; ``slow`` sleeps and, if the client's read timeout is shorter
    than ``slow_seconds``, raises ``httpx.ReadTimeout`` after that timeout (the request was
    applied all the same).
    """

    def __init__(self, simulator: Simulator, faults: FaultPlan | None = None):
        self.simulator = simulator
        self.faults = faults

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        sim_request = to_sim_request(request)
        response, fault = run_with_faults(self.simulator, self.faults, sim_request)
        if fault is not None and fault.kind == "slow" and self.faults is not None:
            read_timeout = _read_timeout(request)
            delay = self.faults.slow_seconds
            if read_timeout is not None and read_timeout < delay:
                time.sleep(read_timeout)
                raise httpx.ReadTimeout("timed out", request=request)
            time.sleep(delay)
        if response is None:
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        return to_httpx_response(response, request)


def _normalise_route(key: str) -> tuple[str, str, str]:
    """(scheme or "", "host[:port]" lower-cased, path prefix without trailing slash)."""
    if "://" in key:
        url = httpx.URL(key)
        netloc = url.netloc.decode("ascii").lower()
        return url.scheme, netloc, url.path.rstrip("/")
    return "", key.lower().rstrip("/"), ""


class MultiSimTransport(httpx.BaseTransport):
    """Route requests to simulators by ``"host[:port]"`` or base-URL prefix.

    ``routes`` maps a key to a simulator or a ready ``SimTransport`` (to give one simulator its
    own fault plan); ``faults`` applies to simulators given bare. The longest matching prefix
    wins; a request that matches nothing raises ``httpx.ConnectError`` like an unknown host.
    """

    def __init__(
        self,
        routes: Mapping[str, Simulator | SimTransport],
        faults: FaultPlan | None = None,
    ):
        self._routes: list[tuple[tuple[str, str, str], SimTransport]] = []
        for key, target in routes.items():
            transport = target if isinstance(target, SimTransport) else SimTransport(target, faults)
            self._routes.append((_normalise_route(key), transport))
        # Most specific first: a path prefix beats a bare host.
        self._routes.sort(key=lambda item: (len(item[0][2]), bool(item[0][0])), reverse=True)

    def route(self, url: httpx.URL) -> SimTransport | None:
        netloc = url.netloc.decode("ascii").lower()
        host = (url.host or "").lower()
        path = url.path
        for (scheme, key_netloc, prefix), transport in self._routes:
            if scheme and scheme != url.scheme:
                continue
            if key_netloc not in (netloc, host):
                continue
            if prefix and not (path == prefix or path.startswith(prefix + "/")):
                continue
            return transport
        return None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        transport = self.route(request.url)
        if transport is None:
            raise httpx.ConnectError(
                f"no simulator for {request.url.scheme}://{request.url.netloc.decode('ascii')}",
                request=request,
            )
        return transport.handle_request(request)

"""Serve a simulator over real HTTP/1.1 on loopback, for the demo, benchmarks and e2e tests.

A ``ThreadingHTTPServer`` with keep-alive: each connection gets a daemon thread, every response
carries Content-Length and goes out in two ``sendall`` calls (headers, body) with Nagle off, so a
1000-member page (~300 KB) costs a few milliseconds. Faults from a ``FaultPlan`` are carried out
on the socket: ``drop`` closes the connection without an answer, ``slow`` sleeps before answering.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote

from mcsync.sim.base import SimRequest, SimResponse, Simulator
from mcsync.sim.faults import FaultPlan, run_with_faults

_CONNECTION_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class _SimHTTPServer(ThreadingHTTPServer):
    """Holds the simulator, the fault plan and the open connections (to cut them on stop)."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], simulator: Simulator, faults: FaultPlan | None
    ) -> None:
        self.simulator = simulator
        self.faults = faults
        self.errors: list[str] = []
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _SimRequestHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up is normal here (timeouts, drops); keep anything else for tests."""
        if not isinstance(sys.exc_info()[1], _CONNECTION_ERRORS):
            self.errors.append(traceback.format_exc())

    def close_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
            self.connections.clear()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _SimRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mcsync-sim"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 120  # an idle keep-alive connection is closed after this many seconds
    server: _SimHTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(*_CONNECTION_ERRORS):
            super().finish()

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except _CONNECTION_ERRORS:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr log; the simulators keep their own request_log."""

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        path, _, query = self.path.partition("?")
        if "://" in path:  # absolute-form request target (sent through a proxy)
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        request = SimRequest.build(
            self.command, unquote(path), query, dict(self.headers.items()), self._read_body()
        )
        server = self.server
        try:
            response, fault = run_with_faults(server.simulator, server.faults, request)
        except Exception:  # a simulator bug: answer 500 and keep the traceback for the test
            server.errors.append(traceback.format_exc())
            response = SimResponse(500, {"Content-Type": "text/plain"}, b"simulator error")
            fault = None
        if fault is not None and fault.kind == "slow" and server.faults is not None:
            time.sleep(server.faults.slow_seconds)
        if response is None:
            self.close_connection = True  # drop: the socket closes with no answer
            return
        self._send(response)

    def _send(self, response: SimResponse) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD" and response.body:
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch


class SimServer:
    """One simulator on ``http://host:port``; ``port=0`` picks a free port at ``start()``."""

    def __init__(
        self,
        simulator: Simulator,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultPlan | None = None,
    ) -> None:
        self.simulator = simulator
        self.host = host
        self.port = port
        self.faults = faults
        self._httpd: _SimHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL (no trailing slash); the port is known only once started."""
        if self._httpd is None:
            raise RuntimeError("SimServer.url is known only after start()")
        return f"http://{self.host}:{self.port}"

    @property
    def errors(self) -> list[str]:
        """Tracebacks of simulator crashes (answered as 500 text/plain), for tests to assert."""
        return self._httpd.errors if self._httpd is not None else []

    def start(self) -> Self:
        if self._httpd is not None:
            return self
        self._httpd = _SimHTTPServer((self.host, self.port), self.simulator, self.faults)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"sim-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut open keep-alive connections, release the port."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_simulators(
    mailchimp_sim: Simulator,
    civi_sim: Simulator,
    *,
    host: str = "127.0.0.1",
    mailchimp_port: int = 0,
    civicrm_port: int = 0,
    faults: FaultPlan | None = None,
) -> tuple[SimServer, SimServer]:
    """Start both simulators (sharing one fault plan); stop them with ``.stop()`` each.

    The Mailchimp base URL is ``mc.url + "/3.0"``, CiviCRM's ``civi.url + "/civicrm/ajax/api4"``.
    """
    mailchimp = SimServer(mailchimp_sim, host=host, port=mailchimp_port, faults=faults).start()
    try:
        civicrm = SimServer(civi_sim, host=host, port=civicrm_port, faults=faults).start()
    except BaseException:
        mailchimp.stop()
        raise
    return mailchimp, civicrm

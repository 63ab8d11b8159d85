"""The request/response shapes every simulator speaks, independent of how it is reached."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs


@dataclass
class SimRequest:
    method: str
    path: str  # without query string, e.g. "/3.0/lists/abc/members"
    query: dict[str, list[str]] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # keys lower-cased
    body: bytes = b""

    @classmethod
    def build(
        cls, method: str, path: str, query_string: str, headers: dict[str, str], body: bytes
    ) -> SimRequest:
        return cls(
            method=method.upper(),
            path=path,
            query=parse_qs(query_string, keep_blank_values=True),
            headers={k.lower(): v for k, v in headers.items()},
            body=body,
        )

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8")) if self.body else None


@dataclass
class SimResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def json(cls, status: int, payload: Any, content_type: str = "application/json") -> SimResponse:
        return cls(status, {"Content-Type": content_type}, json.dumps(payload).encode("utf-8"))


class Simulator(Protocol):
    """What transports and servers need from a simulator."""

    lock: threading.RLock
    request_log: list[tuple[str, str]]

    def handle(self, request: SimRequest) -> SimResponse: ...

"""Mailchimp batch operations for the simulator: a queue that runs on the simulator's clock.

A batch is ``pending`` for the first half of ``delay`` after it is submitted, ``started`` for the
second half (its operations run one by one, spread evenly over that half), then ``finished``,
with ``completed_at`` = submission + ``delay``. Nothing runs in the background: the simulator calls
:meth:`BatchQueue.advance` at the start of every request, which runs every operation whose time
has come, in time order across batches. That is deterministic under a fake clock and behaves
the same in a real server. Each operation runs with its own scheduled time as "now", so the
``last_changed`` it causes does not depend on when somebody happened to look.

Results follow ``reference/mailchimp-api.md`` §3 (POST /batches): a gzipped tar whose ``.json``
files each hold an array of ``{status_code, operation_id, response}``, ``response`` being the
operation's response body as a JSON string. Like the real archives it starts with a ``.``
directory entry and splits large batches over several files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

OPERATION_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
RESULTS_PER_FILE = 500  # real archives split big batches over several files

# (method, path without /3.0, query, body text or None, now) -> (status code, body text)
Executor = Callable[[str, str, dict[str, list[str]], str | None, datetime], tuple[int, str]]


class BatchInvalid(ValueError):
    """The POST /batches body does not match the spec; ``errors`` are ``{field, message}``."""

    def __init__(self, errors: list[dict[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    query: dict[str, list[str]]
    body: str | None
    operation_id: str | None


@dataclass
class Batch:
    """One submitted batch and its progress; times are aware UTC datetimes."""

    id: str
    owner: str  # the account id; a key sees only its account's batches
    operations: list[Operation]
    submitted_at: datetime
    delay: timedelta
    executor: Executor
    results: list[dict[str, Any]] = field(default_factory=list)
    errored: int = 0
    archive: bytes | None = None

    @property
    def started_at(self) -> datetime:
        return self.submitted_at + self.delay / 2

    @property
    def finished_at(self) -> datetime:
        return self.submitted_at + self.delay

    def due_at(self, index: int) -> datetime:
        """When operation ``index`` runs: spread evenly over the second half of the delay."""
        return self.started_at + (self.delay / 2) * (index + 1) / len(self.operations)

    def status(self, now: datetime) -> str:
        if now >= self.finished_at and len(self.results) == len(self.operations):
            return "finished"
        if now >= self.started_at:
            return "started"
        return "pending"

    def to_json(
        self, now: datetime, results_url: str, iso: Callable[[datetime], str]
    ) -> dict[str, Any]:
        """The batch object of GET /batches/{id}; ``""`` for times and URL not yet known."""
        status = self.status(now)
        done = status == "finished"
        return {
            "id": self.id,
            "status": status,
            "total_operations": len(self.operations),
            "finished_operations": len(self.results),
            "errored_operations": self.errored,
            "submitted_at": iso(self.submitted_at),
            "completed_at": iso(self.finished_at) if done else "",
            "response_body_url": results_url if done else "",
        }


def parse_operations(body: Any) -> list[Operation]:
    """Check a POST /batches body against the spec's BatchOperations schema."""
    if not isinstance(body, dict) or "operations" not in body:
        raise BatchInvalid(
            [{"field": "", "message": "Required fields were not provided: operations"}]
        )
    raw = body["operations"]
    if not isinstance(raw, list):
        raise BatchInvalid(
            [
                {
                    "field": "operations",
                    "message": f"Schema describes array, {_json_type(raw)} found instead",
                }
            ]
        )
    errors: list[dict[str, str]] = []
    operations: list[Operation] = []
    for index, item in enumerate(raw):
        where = f"operations.item:{index}"
        if not isinstance(item, dict):
            errors.append(
                {
                    "field": where,
                    "message": f"Schema describes object, {_json_type(item)} found instead",
                }
            )
            continue
        missing = [name for name in ("method", "path") if name not in item]
        if missing:
            errors.append(
                {
                    "field": where,
                    "message": "Required fields were not provided: " + ", ".join(missing),
                }
            )
            continue
        method, path = item["method"], item["path"]
        if not isinstance(method, str) or method not in OPERATION_METHODS:
            errors.append(
                {"field": f"{where}.method", "message": "Value is not one of enum values"}
            )
        if not isinstance(path, str) or not path.startswith("/"):
            errors.append(
                {
                    "field": f"{where}.path",
                    "message": f"Schema describes string, {_json_type(path)} found instead"
                    if not isinstance(path, str)
                    else "The path must start with '/'",
                }
            )
        body_text = item.get("body")
        if body_text is not None and not isinstance(body_text, str):
            errors.append(
                {
                    "field": f"{where}.body",
                    "message": f"Schema describes string, {_json_type(body_text)} found instead",
                }
            )
        params = item.get("params", {})
        if not isinstance(params, dict):
            errors.append(
                {
                    "field": f"{where}.params",
                    "message": f"Schema describes object, {_json_type(params)} found instead",
                }
            )
        operation_id = item.get("operation_id")
        if operation_id is not None and not isinstance(operation_id, str):
            errors.append(
                {
                    "field": f"{where}.operation_id",
                    "message": f"Schema describes string, {_json_type(operation_id)} found instead",
                }
            )
        if errors:
            continue
        query = {str(k): [_param_text(v)] for k, v in params.items()}
        operations.append(Operation(method, path, query, body_text, operation_id))
    if errors:
        raise BatchInvalid(errors)
    return operations


def _param_text(value: Any) -> str:
    """Query values as Mailchimp reads them: booleans lower-case, lists comma-joined."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_param_text(v) for v in value)
    return str(value)


def _json_type(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def build_archive(batch_id: str, results: list[dict[str, Any]]) -> bytes:
    """The gzipped tar served at ``response_body_url``."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w") as tar,
    ):
        folder = tarfile.TarInfo(".")
        folder.type = tarfile.DIRTYPE
        folder.mode = 0o755
        tar.addfile(folder)
        chunks = [
            results[i : i + RESULTS_PER_FILE] for i in range(0, len(results), RESULTS_PER_FILE)
        ]
        for number, chunk in enumerate(chunks or [[]]):
            name = hashlib.md5(f"{batch_id}:{number}".encode()).hexdigest()
            data = json.dumps(chunk).encode("utf-8")
            info = tarfile.TarInfo(f"./{name}.json")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class BatchQueue:
    """Every batch of the simulator, across accounts; callers hold the simulator's lock."""

    def __init__(self, delay: float):
        self.delay = timedelta(seconds=delay)
        self._batches: dict[str, Batch] = {}
        self._counter = 0

    def submit(
        self, owner: str, operations: list[Operation], now: datetime, executor: Executor
    ) -> Batch:
        self._counter += 1
        batch_id = hashlib.md5(f"batch:{self._counter}".encode()).hexdigest()[:10]
        batch = Batch(batch_id, owner, operations, now, self.delay, executor)
        self._batches[batch_id] = batch
        return batch

    def get(self, owner: str, batch_id: str) -> Batch | None:
        batch = self._batches.get(batch_id)
        return batch if batch is not None and batch.owner == owner else None

    def all(self) -> list[Batch]:
        return list(self._batches.values())

    def of_owner(self, owner: str) -> list[Batch]:
        return [b for b in self._batches.values() if b.owner == owner]

    def delete(self, owner: str, batch_id: str) -> bool:
        """Stop a batch and drop its results (the spec's DELETE /batches/{id}); operations
        already run stay applied."""
        if self.get(owner, batch_id) is None:
            return False
        del self._batches[batch_id]
        return True

    def archive(self, batch_id: str) -> bytes | None:
        """The results archive of a finished batch (no owner check: like a pre-signed URL)."""
        batch = self._batches.get(batch_id)
        return batch.archive if batch is not None else None

    def advance(self, now: datetime) -> None:
        """Run every operation due by ``now``, earliest first, and seal finished batches."""
        due: list[tuple[datetime, int, Batch]] = []
        for order, batch in enumerate(self._batches.values()):
            if batch.archive is not None or now < batch.started_at:
                continue
            for index in range(len(batch.results), len(batch.operations)):
                when = batch.due_at(index)
                if when > now:
                    break
                due.append((when, order, batch))
        due.sort(key=lambda item: (item[0], item[1]))
        for when, _order, batch in due:
            operation = batch.operations[len(batch.results)]
            status, text = batch.executor(
                operation.method, operation.path, operation.query, operation.body, when
            )
            batch.results.append(
                {"status_code": status, "operation_id": operation.operation_id, "response": text}
            )
            if status >= 400:
                batch.errored += 1
        for batch in self._batches.values():
            if (
                batch.archive is None
                and now >= batch.finished_at
                and len(batch.results) == len(batch.operations)
            ):
                batch.archive = build_archive(batch.id, batch.results)

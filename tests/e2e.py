"""End-to-end helpers: the real `mcsync` CLI as a subprocess against simulators on loopback.

A :class:`Scenario` is one generated world (``SimWorld``, same seed → same people) served over
HTTP, with a config file and staging DB in a temp dir. Tests run the CLI against it, then
compare :func:`final_state` snapshots of both simulators between scenarios, so "the same result
as a clean run" is checked on what people actually see: Mailchimp statuses and interests per
email, CiviCRM group status per contact, and how many contacts and members each email has.

The simulators can be wrapped: :class:`InFlight` counts requests handled at once (Mailchimp's
10-connection limit), :class:`Tamper` replaces chosen responses (bad input from a service).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcsync.sim.base import SimRequest, SimResponse, Simulator
from mcsync.sim.faults import FaultPlan
from mcsync.sim.server import SimServer
from mcsync.sim.world import CIVICRM_KEY, CIVICRM_SITE_KEY, MAILCHIMP_KEY, SimWorld

SECRETS = (MAILCHIMP_KEY, MAILCHIMP_KEY.split("-")[0], CIVICRM_KEY, CIVICRM_SITE_KEY)
CLI = [sys.executable, "-m", "mcsync"]
RUN_TIMEOUT = 120.0


class _NoLock:
    """A lock that never blocks: the wrapper itself must not serialise requests (the wrapped
    simulator still takes its own lock), or concurrency could not be observed."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

    def acquire(self, *args: Any, **kwargs: Any) -> bool:
        return True

    def release(self) -> None:
        return None


class _Wrapper:
    """Base for simulator wrappers: same request log, no lock of its own."""

    def __init__(self, inner: Simulator):
        self.inner = inner
        self.lock: Any = _NoLock()
        self.request_log = inner.request_log

    def forward(self, request: SimRequest) -> SimResponse:
        with self.inner.lock:
            return self.inner.handle(request)

    def handle(self, request: SimRequest) -> SimResponse:
        return self.forward(request)


class InFlight(_Wrapper):
    """Counts requests being handled at once; each is held ``hold`` seconds so overlapping
    requests really overlap (the simulator itself answers in microseconds)."""

    def __init__(self, inner: Simulator, hold: float = 0.01):
        super().__init__(inner)
        self.hold = hold
        self.current = 0
        self.peak = 0
        self.total = 0
        self._count_lock = threading.Lock()

    def handle(self, request: SimRequest) -> SimResponse:
        with self._count_lock:
            self.current += 1
            self.total += 1
            self.peak = max(self.peak, self.current)
        try:
            time.sleep(self.hold)
            return self.forward(request)
        finally:
            with self._count_lock:
                self.current -= 1


Rule = Callable[[SimRequest, Callable[[SimRequest], SimResponse]], SimResponse | None]


class Tamper(_Wrapper):
    """Answers chosen requests differently. Each rule gets the request and a function that
    asks the real simulator; it returns a response to send, or None to pass the request on.
    ``times`` limits how often a rule fires (None: always)."""

    def __init__(self, inner: Simulator):
        super().__init__(inner)
        self.rules: list[list[Any]] = []
        self.fired: Counter[int] = Counter()

    def add(self, rule: Rule, times: int | None = None) -> int:
        self.rules.append([rule, times])
        return len(self.rules) - 1

    def clear(self) -> None:
        self.rules.clear()

    def handle(self, request: SimRequest) -> SimResponse:
        for index, entry in enumerate(list(self.rules)):
            rule, times = entry
            if times is not None and times <= 0:
                continue
            response = rule(request, self.forward)
            if response is not None:
                if times is not None:
                    entry[1] = times - 1
                self.fired[index] += 1
                return response
        return self.forward(request)


def html(status: int, text: str) -> SimResponse:
    return SimResponse(status, {"Content-Type": "text/html; charset=UTF-8"}, text.encode())


def plain(status: int, text: str) -> SimResponse:
    return SimResponse(status, {"Content-Type": "text/plain"}, text.encode())


def raw(status: int, body: bytes, content_type: str = "application/json") -> SimResponse:
    return SimResponse(status, {"Content-Type": content_type}, body)


def civi_call(request: SimRequest) -> str:
    """ "Entity.action" of a CiviCRM APIv4 request ("" for anything else)."""
    parts = request.path.rstrip("/").split("/")
    if len(parts) >= 2 and "api4" in request.path:
        return f"{parts[-2]}.{parts[-1]}"
    return ""


@dataclass
class Run:
    """One CLI invocation's result."""

    args: list[str]
    code: int
    out: str
    err: str
    seconds: float

    @property
    def text(self) -> str:
        return self.out + self.err

    def __str__(self) -> str:
        return (
            f"mcsync {' '.join(self.args)} -> exit {self.code} in {self.seconds:.1f}s\n"
            f"--- stdout\n{self.out}\n--- stderr\n{self.err}"
        )


@dataclass
class Scenario:
    """A generated world on loopback plus a config for it in ``workdir``."""

    workdir: Path
    members: int = 200
    seed: int = 1
    audiences: int = 1
    batch_delay: float = 0.2
    faults: FaultPlan | None = None
    sync: str = ""
    world: SimWorld = field(init=False)
    mailchimp: Any = field(init=False)
    civicrm: Any = field(init=False)
    seeded_contacts: int = field(init=False)
    config_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.world = SimWorld.create(
            members=self.members,
            audiences=self.audiences,
            seed=self.seed,
            batch_delay=self.batch_delay,
        )
        self.mailchimp = self.world.mailchimp
        self.civicrm = self.world.civicrm
        self.seeded_contacts = int(
            self.civicrm.query("SELECT COALESCE(MAX(id), 0) AS n FROM contact")[0]["n"]
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "mcsync.toml"

    # -- serving ------------------------------------------------------------------------
    def serve(self, *, mailchimp: Any = None, civicrm: Any = None) -> Scenario:
        """Start both servers (optionally serving wrappers of the simulators) and write the
        config. Call once."""
        mc = SimServer(mailchimp or self.mailchimp, faults=self.faults).start()
        civi = SimServer(civicrm or self.civicrm, faults=self.faults).start()
        self.world.servers = (mc, civi)
        self.write_config()
        return self

    def write_config(self, extra: str = "") -> Path:
        text = self.world.config_text(state_db="state.sqlite3", extra_sync=self.sync + "\n" + extra)
        fd = os.open(self.config_path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        return self.config_path

    def stop(self) -> None:
        self.world.stop()

    @property
    def servers(self) -> tuple[SimServer, SimServer]:
        assert self.world.servers is not None
        return self.world.servers

    @property
    def state_db(self) -> Path:
        return self.workdir / "state.sqlite3"

    @property
    def list_ids(self) -> list[str]:
        return [a.list_id for a in self.world.audiences]

    @property
    def group_ids(self) -> list[int]:
        return [a.group_id for a in self.world.audiences]

    # -- running the CLI ------------------------------------------------------------------
    def argv(self, command: str, *args: str) -> list[str]:
        return [*CLI, *command.split(), "--config", str(self.config_path), *args]

    def run(
        self,
        command: str = "fetch-and-reconcile",
        *args: str,
        timeout: float = RUN_TIMEOUT,
        env: dict[str, str] | None = None,
    ) -> Run:
        started = time.monotonic()
        done = subprocess.run(
            self.argv(command, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.workdir,
            env=cli_env(env),
            check=False,
        )
        return Run(
            [command, *args], done.returncode, done.stdout, done.stderr, time.monotonic() - started
        )

    def start(self, command: str = "fetch-and-reconcile", *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(command, *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.workdir,
            env=cli_env(None),
            start_new_session=True,
        )

    def converge(self, *args: str, max_runs: int = 12) -> list[Run]:
        """Run fetch-and-reconcile until a run completes and the next changes nothing in
        either simulator; every run must exit 0 or 1 (a failure that outlasted retries)."""
        runs: list[Run] = []
        previous: dict[str, Any] | None = None
        for _ in range(max_runs):
            run = self.run("fetch-and-reconcile", *args)
            runs.append(run)
            assert run.code in (0, 1), run
            assert "Traceback" not in run.err, run
            state = final_state(self)
            if run.code == 0 and self.completed() and state == previous:
                return runs
            previous = state if run.code == 0 and self.completed() else None
        raise AssertionError(
            f"no fixed point after {max_runs} runs; last:\n{runs[-1]}\n"
            + "\n".join(str(r.code) + " " + r.err[-300:] for r in runs)
        )

    def completed(self) -> bool:
        with self.db() as db:
            stages = [r[0] for r in db.execute("SELECT stage FROM audience_state")]
        return bool(stages) and all(s == "idle" for s in stages)

    @contextmanager
    def db(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(str(self.state_db), timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            yield conn
        finally:
            conn.close()

    def status(self) -> list[dict[str, Any]]:
        import json

        run = self.run("status", "--json")
        assert run.code == 0, run
        result: list[dict[str, Any]] = json.loads(run.out)
        return result


def cli_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCSYNC", "COLUMNS"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def kill_group(process: subprocess.Popen[str]) -> None:
    """SIGKILL the CLI process (it runs in its own session; only its own group is hit)."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)


# -- comparing worlds -------------------------------------------------------------------------
def final_state(scenario: Scenario) -> dict[str, Any]:
    """What both sides say, keyed so that two scenarios with the same seed compare equal
    when they reached the same result: seeded contacts by id, contacts mcsync created by
    their emails (their ids depend on request order)."""
    mailchimp: dict[str, dict[str, Any]] = {}
    member_counts: Counter[tuple[str, str]] = Counter()
    for list_id in scenario.list_ids:
        statuses: dict[str, Any] = {}
        for member in scenario.mailchimp.members(list_id):
            email = member["email_address"].lower()
            member_counts[(list_id, email)] += 1
            interests = tuple(sorted(k for k, v in (member.get("interests") or {}).items() if v))
            statuses[email] = (member["status"], interests)
        mailchimp[list_id] = statuses
    civi = scenario.civicrm
    emails: dict[int, list[str]] = {}
    for row in civi.query("SELECT contact_id, email FROM email ORDER BY id"):
        emails.setdefault(row["contact_id"], []).append(row["email"].lower())
    contacts: dict[str, dict[str, Any]] = {}
    for row in civi.query("SELECT id, is_deleted FROM contact ORDER BY id"):
        cid = row["id"]
        key = (
            f"#{cid}"
            if cid <= scenario.seeded_contacts
            else ("new:" + ",".join(sorted(emails.get(cid, []))))
        )
        groups = {
            g["group_id"]: g["status"]
            for g in civi.query(
                "SELECT group_id, status FROM group_contact WHERE contact_id = ?", (cid,)
            )
        }
        holds = tuple(
            r["on_hold"]
            for r in civi.query(
                "SELECT on_hold FROM email WHERE contact_id = ? ORDER BY id", (cid,)
            )
        )
        if key in contacts:
            key += f"+dup{cid}"
        contacts[key] = {"deleted": row["is_deleted"], "groups": groups, "holds": holds}
    owners: Counter[str] = Counter()
    for row in civi.query(
        "SELECT e.email FROM email e JOIN contact c ON c.id = e.contact_id WHERE c.is_deleted = 0"
    ):
        owners[row["email"].lower()] += 1
    return {
        "mailchimp": mailchimp,
        "members_per_email": {k: v for k, v in member_counts.items() if v > 1},
        "contacts": contacts,
        "contacts_per_email": dict(owners),
    }


def differences(expected: dict[str, Any], actual: dict[str, Any], limit: int = 20) -> list[str]:
    """Readable differences between two final states (empty when equal)."""
    found: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if len(found) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                if key not in a:
                    found.append(f"{path}/{key}: unexpected {b[key]!r}")
                elif key not in b:
                    found.append(f"{path}/{key}: missing, expected {a[key]!r}")
                else:
                    walk(a[key], b[key], f"{path}/{key}")
        elif a != b:
            found.append(f"{path}: expected {a!r}, got {b!r}")

    walk(expected, actual, "")
    return found


def unsubscribed(state: dict[str, Any]) -> set[tuple[str, str]]:
    """(list, email) of every member who is unsubscribed or cleaned at Mailchimp."""
    return {
        (list_id, email)
        for list_id, members in state["mailchimp"].items()
        for email, (status, _) in members.items()
        if status in ("unsubscribed", "cleaned")
    }


def batch_posts(scenario: Scenario) -> int:
    return sum(
        1
        for method, path in scenario.mailchimp.request_log
        if method == "POST" and path.rstrip("/").endswith("/batches")
    )


def assert_no_secrets(text: str | bytes, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    for secret in SECRETS:
        assert secret.encode() not in data, f"a secret appears in {where}"


def batch_operation_ids(scenario: Scenario) -> list[str]:
    """Every operation id the Mailchimp simulator received in POST /batches, in order (the
    HTTP API does not list a batch's operations)."""
    batches = scenario.mailchimp.submitted_batches()
    return [str(op.operation_id) for batch in batches for op in batch.operations]


def repeated(items: list[str]) -> list[str]:
    return sorted(item for item, n in Counter(items).items() if n > 1)

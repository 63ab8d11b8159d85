"""SIGKILL the `mcsync fetch-and-reconcile` process at seeded moments, then run to completion:
the final state must equal an uninterrupted run's (issue 6, point 2).

Kill points are of two kinds, both drawn from a seeded RNG:

- a stage: the test watches the staging DB and kills once the run has reached that stage,
  plus a random delay of up to 0.3 s (so kills land inside stages, between chunks and
  between a request and the commit of its answer);
- a request: the simulator applies a write (POST /batches, a member PUT, a contact create,
  a group or hold save, a batch results download), then the test kills the process before
  the answer arrives — the worst moment for idempotency.

After a kill the lease is expired by hand (the real expiry is tested separately, below).
``MCSYNC_KILL_TRIALS`` raises the number of trials (default 8; two kill points each).
"""

from __future__ import annotations

import os
import random
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from e2e import (
    Scenario,
    SimRequest,
    SimResponse,
    Tamper,
    batch_operation_ids,
    civi_call,
    differences,
    final_state,
    kill_group,
    repeated,
    unsubscribed,
)

from mcsync.runner.audience import STAGE_NAMES
from mcsync.sim.faults import FaultPlan
from mcsync.store.database import Staging, this_host

SEED = 7
MEMBERS = 200
SYNC = "batch_threshold = 20\npage_size_mailchimp = 50\npage_size_civicrm = 50"
TRIALS = int(os.environ.get("MCSYNC_KILL_TRIALS", "8"))
STAGES = list(STAGE_NAMES)


def _is_batch_post(request: SimRequest) -> bool:
    return request.method == "POST" and request.path.rstrip("/").endswith("/batches")


def _is_member_write(request: SimRequest) -> bool:
    """A direct member write: one PUT, or a bulk POST /lists/{id} of several members."""
    path = request.path.rstrip("/")
    return (request.method == "PUT" and "/members/" in path) or (
        request.method == "POST" and path.count("/") == 3 and path.startswith("/3.0/lists/")
    )


# In the order a run makes them (the pending retries' PUTs come in the second run).
REQUESTS: dict[str, Callable[[SimRequest], bool]] = {
    "Contact.save": lambda r: civi_call(r) == "Contact.save",
    "GroupContact.save": lambda r: civi_call(r) == "GroupContact.save",
    "Email.save": lambda r: civi_call(r) == "Email.save",
    "POST /batches": _is_batch_post,
    "batch results": lambda r: "/_sim/batch-results/" in r.path,
    "member write": _is_member_write,
}
REQUEST_SIDE = {"Contact.save": "civicrm", "GroupContact.save": "civicrm", "Email.save": "civicrm"}


@pytest.fixture(scope="module")
def clean_state(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    scenario = Scenario(tmp_path_factory.mktemp("clean"), members=MEMBERS, seed=SEED, sync=SYNC)
    scenario.serve()
    try:
        scenario.converge()
        return final_state(scenario)
    finally:
        scenario.stop()


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    made = Scenario(tmp_path / "world", members=MEMBERS, seed=SEED, sync=SYNC)
    yield made
    made.stop()


def _stage(scenario: Scenario) -> str | None:
    try:
        conn = sqlite3.connect(f"file:{scenario.state_db}?mode=ro", uri=True, timeout=1)
        try:
            row = conn.execute("SELECT stage FROM audience_state").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def _stage_index(scenario: Scenario) -> int:
    stage = _stage(scenario)
    return STAGES.index(stage) if stage in STAGES else -1


def _expire_lease(scenario: Scenario) -> None:
    with scenario.db() as db:
        db.execute("UPDATE audience_state SET lease_expires = 0")
        db.commit()


class Killer:
    """Arms request kill points on both simulators and remembers where kills landed."""

    def __init__(self, scenario: Scenario):
        self.scenario = scenario
        self.mailchimp = Tamper(scenario.mailchimp)
        self.civicrm = Tamper(scenario.civicrm)
        self.hit = threading.Event()
        self.landed: Counter[str] = Counter()
        scenario.serve(mailchimp=self.mailchimp, civicrm=self.civicrm)

    def arm(self, name: str) -> None:
        match = REQUESTS[name]
        self.hit.clear()

        def rule(request: SimRequest, forward: Any) -> SimResponse | None:
            if not match(request):
                return None
            answer: SimResponse = forward(request)  # applied; now lose the answer
            self.hit.set()
            time.sleep(3)
            return answer

        tamper = self.civicrm if REQUEST_SIDE.get(name) == "civicrm" else self.mailchimp
        tamper.clear()
        tamper.add(rule, times=1)

    def disarm(self) -> None:
        self.mailchimp.clear()
        self.civicrm.clear()

    def kill_at_request(self, name: str, max_runs: int = 3) -> str:
        """Run until the armed request is applied, then kill; 'missed' if no run sent it."""
        self.arm(name)
        try:
            for _ in range(max_runs):
                process = self.scenario.start()
                while process.poll() is None and not self.hit.is_set():
                    time.sleep(0.005)
                if self.hit.is_set():
                    kill_group(process)
                    _expire_lease(self.scenario)
                    self.landed[f"request {name}"] += 1
                    return name
                process.communicate(timeout=30)
            return "missed"
        finally:
            self.disarm()

    def kill_at_stage(self, stage: str, delay: float, max_runs: int = 3) -> str:
        """Run until the staging DB shows ``stage`` or a later one (some stages last
        microseconds), wait ``delay``, kill; report where the kill landed (the stage then, or
        'completed' if the run finished first)."""
        target = STAGES.index(stage)
        for _ in range(max_runs):
            process = self.scenario.start()
            while process.poll() is None and _stage_index(self.scenario) < target:
                time.sleep(0.003)
            if process.poll() is None:
                time.sleep(delay)
                kill_group(process)
                if process.returncode is not None and process.returncode >= 0:
                    landed = "completed"
                else:
                    landed = _stage(self.scenario) or "start"
                _expire_lease(self.scenario)
                self.landed[landed] += 1
                return landed
            process.communicate(timeout=30)
        return "missed"


def _kill_points(trial: int) -> list[tuple[str, str, float]]:
    """Two kill points per trial: stages in turn (so every stage is covered) and a request."""
    rng = random.Random(1000 + trial)
    stage = STAGES[trial % len(STAGES)]
    other = STAGES[(trial * 7 + 3) % len(STAGES)]
    request = sorted(REQUESTS)[trial % len(REQUESTS)]
    points = [
        ("stage", stage, rng.choice([0.0, rng.uniform(0, 0.03), rng.uniform(0, 0.3)])),
        ("request", request, 0.0),
        ("stage", other, rng.uniform(0.0, 0.05)),
    ]
    rng.shuffle(points)
    return points[:2] if trial % 2 else points


def assert_same_result(clean: dict[str, Any], scenario: Scenario) -> None:
    state = final_state(scenario)
    found = differences(clean, state)
    assert not found, "final state differs from the uninterrupted run:\n" + "\n".join(found)
    assert unsubscribed(state) == unsubscribed(clean)
    assert not repeated(batch_operation_ids(scenario)), "an update was sent in two batches"
    for email, owners in state["contacts_per_email"].items():
        assert owners <= clean["contacts_per_email"].get(email, 1), f"duplicate contact {email}"
    for server in scenario.servers:
        assert not server.errors, server.errors[0]


def _trial(clean: dict[str, Any], workdir: Path, trial: int) -> list[str]:
    """One world, two or three kill points, then runs to completion; returns where the
    kills landed. Raises AssertionError when the result differs from the clean run."""
    # 10 ms per request stretches the stages so that kills spread over them.
    scenario = Scenario(
        workdir, members=MEMBERS, seed=SEED, sync=SYNC, faults=FaultPlan(latency=0.01)
    )
    try:
        killer = Killer(scenario)
        where = []
        for kind, target, delay in _kill_points(trial):
            if kind == "stage":
                where.append(killer.kill_at_stage(target, delay))
            else:
                where.append(killer.kill_at_request(target))
        runs = scenario.converge()
        assert all(r.code == 0 for r in runs), [str(r) for r in runs if r.code]
        assert_same_result(clean, scenario)
        return where
    finally:
        scenario.stop()


def test_killed_runs_resume_to_the_uninterrupted_result(
    clean_state: dict[str, Any], tmp_path: Path
) -> None:
    """TRIALS independent worlds, three at a time (runs spend most of their time waiting
    for batches, so trials overlap well on two cores)."""
    landed: Counter[str] = Counter()
    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {
            pool.submit(_trial, clean_state, tmp_path / f"trial{n}", n): n for n in range(TRIALS)
        }
        for future, n in futures.items():
            try:
                landed.update(future.result())
            except AssertionError as exc:
                failures.append(f"trial {n}: {exc}")
    kills = sum(v for k, v in landed.items() if k not in ("missed", "completed", "idle"))
    print(
        f"\nkill trials: {TRIALS} run, {TRIALS - len(failures)} passed; "
        f"{kills} kills landed: {dict(sorted(landed.items()))}"
    )
    assert not failures, "\n\n".join(failures)
    assert kills >= TRIALS, landed
    spread = [k for k in landed if k in STAGES]
    assert len(spread) >= 5, f"kills should spread over stages: {landed}"


def test_every_write_request_is_survived_when_killed_mid_answer(
    clean_state: dict[str, Any], scenario: Scenario
) -> None:
    """One kill at each write the run makes, in one world, each after the service applied
    it and before mcsync recorded the answer."""
    killer = Killer(scenario)
    landed = {name: killer.kill_at_request(name) for name in REQUESTS}
    # Direct member writes happen only when a run has few updates (the pending retries).
    assert "missed" not in [v for k, v in landed.items() if k != "member write"], landed
    scenario.converge()
    assert_same_result(clean_state, scenario)


def _start_and_kill(scenario: Scenario) -> str:
    """Start a run, SIGKILL it mid-way; return its lease owner (still live in the DB)."""
    process = scenario.start()
    while process.poll() is None and _stage(scenario) not in ("match_emails", "reconcile"):
        time.sleep(0.003)
    kill_group(process)
    with scenario.db() as db:
        owner, expires = db.execute(
            "SELECT lease_owner, lease_expires FROM audience_state"
        ).fetchone()
    assert owner and expires > time.time(), "the killed run's lease should still be live"
    assert owner.split(":")[1] == str(process.pid), owner
    return str(owner)


def test_a_killed_runs_lease_on_this_host_is_taken_over_at_once(scenario: Scenario) -> None:
    """Issue 11, point 10: the lease names host and pid; when that process is gone from
    this host, the next run need not wait lease_seconds."""
    scenario.sync = SYNC + "\nlease_seconds = 600"
    scenario.serve()
    _start_and_kill(scenario)
    assert not scenario.status()[0]["running"]
    takeover = scenario.run("fetch-and-reconcile", "-v")
    assert takeover.code == 0, takeover
    assert "busy" not in takeover.err and "complete" in takeover.out, takeover
    status = scenario.status()[0]
    assert status["stage"] == "idle" and not status["running"]
    with scenario.db() as db:
        assert db.execute("SELECT lease_owner FROM audience_state").fetchone()[0] is None


def test_a_killed_runs_lease_from_another_host_blocks_then_expires(scenario: Scenario) -> None:
    """Across hosts (a shared state DB) nothing can tell a dead run from a slow one: the
    lease's expiry stands."""
    scenario.sync = SYNC + "\nlease_seconds = 10"
    scenario.serve()
    owner = _start_and_kill(scenario)
    with scenario.db() as db:
        db.execute(
            "UPDATE audience_state SET lease_owner = ?", ("elsewhere" + owner[owner.index(":") :],)
        )
        db.commit()

    busy = scenario.run()
    assert busy.code == 0, busy
    assert "busy" in busy.err, busy
    assert busy.seconds < 10, "a busy run must exit at once"
    status = scenario.status()[0]
    assert status["running"] and not status["possible_crash"], status  # as far as we can tell
    assert status["stage"] != "idle" and not status["in_sync"]

    # Let the lease lapse (as 10 s of silence would) and the next run takes over.
    with scenario.db() as db:
        db.execute("UPDATE audience_state SET lease_expires = ?", (time.time() - 1,))
        db.commit()
    assert scenario.status()[0]["possible_crash"]
    takeover = scenario.run("fetch-and-reconcile", "-v")
    assert takeover.code == 0, takeover
    assert "complete" in takeover.out, takeover
    status = scenario.status()[0]
    assert status["stage"] == "idle" and not status["possible_crash"] and not status["running"]
    with scenario.db() as db:
        assert db.execute("SELECT lease_owner FROM audience_state").fetchone()[0] is None


@pytest.mark.parametrize(
    "holder", ["dead, this host", "alive, this host", "dead, another host", "dead, other pid ns"]
)
def test_a_lease_is_taken_over_at_once_only_from_a_dead_process_of_this_host(
    tmp_path: Path, holder: str
) -> None:
    """Containers may share a host name but not their processes: the host part of a lease
    names the PID namespace too."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that existed and no longer does
    here = this_host()
    owner = {
        "dead, this host": f"{here}:{gone.pid}:dead",
        "alive, this host": f"{here}:{os.getpid()}:live",
        "dead, another host": f"elsewhere:{gone.pid}:dead",
        "dead, other pid ns": f"{socket.gethostname()}/1:{gone.pid}:dead",
    }[holder]
    staging = Staging(tmp_path / "state.sqlite3")
    try:
        staging.ensure_audience("a1b2c3", 1, "main")
        assert staging.acquire_lease("a1b2c3", owner, 600)
        taken = staging.acquire_lease("a1b2c3", f"{here}:{os.getpid()}:next", 600)
        assert taken == (holder == "dead, this host")
    finally:
        staging.close()

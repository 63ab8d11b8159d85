"""Faults on the wire: the CLI against simulators that answer 429, 5xx, drop connections and
answer slowly, compared with a clean run of an identical world (issue 6, point 1).

People's consent is at stake, so the comparison is on both simulators' final state: every
Mailchimp status and interest, every CiviCRM group status, and how many contacts and members
each email has. `POST /batches` is never sent twice for the same updates.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e import (
    Scenario,
    SimRequest,
    SimResponse,
    Tamper,
    batch_operation_ids,
    batch_posts,
    differences,
    final_state,
    plain,
    raw,
    repeated,
    unsubscribed,
)

from mcsync.sim.faults import FaultPlan

SEED = 7
MEMBERS = 200
# Small pages and a low batch threshold, so paging, batches and resumption are all exercised;
# a 1 s timeout turns "slow" faults into read timeouts of requests that were applied.
SYNC = "batch_threshold = 20\npage_size_mailchimp = 50\npage_size_civicrm = 50\nhttp_timeout = 1.0"
ALL_FAULTS = ("429", "500", "502", "503", "504", "drop", "slow")


@pytest.fixture(scope="module")
def clean_state(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The fixed point a fault-free CLI reaches from the seeded world."""
    scenario = Scenario(tmp_path_factory.mktemp("clean"), members=MEMBERS, seed=SEED, sync=SYNC)
    scenario.serve()
    try:
        scenario.converge()
        assert not scenario.servers[0].errors and not scenario.servers[1].errors
        return final_state(scenario)
    finally:
        scenario.stop()


@pytest.fixture
def scenario_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[Scenario] = []

    def make(name: str = "world", **kwargs: Any) -> Scenario:
        kwargs.setdefault("members", MEMBERS)
        kwargs.setdefault("seed", SEED)
        kwargs.setdefault("sync", SYNC)
        scenario = Scenario(tmp_path / name, **kwargs)
        made.append(scenario)
        return scenario

    yield make
    for scenario in made:
        scenario.stop()


def assert_same_result(clean: dict[str, Any], scenario: Scenario) -> None:
    state = final_state(scenario)
    found = differences(clean, state)
    assert not found, "final state differs from the clean run:\n" + "\n".join(found)
    assert unsubscribed(state) == unsubscribed(clean)
    assert not state["members_per_email"], "an email has two Mailchimp members"
    for email, owners in state["contacts_per_email"].items():
        assert owners <= clean["contacts_per_email"].get(email, 1), f"duplicate contact {email}"
    assert not repeated(batch_operation_ids(scenario)), "an update was sent in two batches"
    for server in scenario.servers:
        assert not server.errors, server.errors[0]


# More seeds or a higher rate for a closing note: MCSYNC_FAULT_SEEDS=11,12,13 MCSYNC_FAULT_RATE=0.3
FAULT_SEEDS = [int(s) for s in os.environ.get("MCSYNC_FAULT_SEEDS", "11").split(",")]
FAULT_RATE = float(os.environ.get("MCSYNC_FAULT_RATE", "0.2"))


@pytest.mark.parametrize("fault_seed", FAULT_SEEDS)
def test_faults_converge_to_the_clean_result(
    clean_state: dict[str, Any], scenario_factory: Any, fault_seed: int
) -> None:
    plan = FaultPlan(rate=FAULT_RATE, kinds=ALL_FAULTS, slow_seconds=1.5, seed=fault_seed)
    scenario = scenario_factory(faults=plan).serve()
    runs = scenario.converge(max_runs=25)
    assert_same_result(clean_state, scenario)
    for run in runs:
        assert run.code == 0 or "Traceback" not in run.err
    assert batch_posts(scenario) >= 1, "the scenario should exercise POST /batches"


def _answer_then(status: int, *, delay: float = 0.0) -> Any:
    """A rule for POST /batches: Mailchimp accepts the batch, but the answer is lost (an
    error from the edge, or too late for the client's timeout)."""

    def rule(request: SimRequest, forward: Any) -> SimResponse | None:
        if request.method != "POST" or not request.path.rstrip("/").endswith("/batches"):
            return None
        answer: SimResponse = forward(request)
        assert answer.status == 200
        if delay:
            time.sleep(delay)
            return answer
        return plain(status, "upstream connect error or disconnect/reset before headers")

    return rule


@pytest.mark.parametrize("loss", ["504 after accepting", "timeout after accepting"])
def test_a_lost_batch_answer_never_sends_the_batch_twice(
    clean_state: dict[str, Any], scenario_factory: Any, loss: str
) -> None:
    scenario = scenario_factory()
    tamper = Tamper(scenario.mailchimp)
    if loss.startswith("504"):
        tamper.add(_answer_then(504), times=1)
    else:
        tamper.add(_answer_then(200, delay=1.5), times=1)
    scenario.serve(mailchimp=tamper)
    first = scenario.run()
    assert first.code == 1, first
    assert "may have" in first.err and "not safe to repeat" in first.err, first
    with scenario.db() as db:
        stuck = db.execute("SELECT COUNT(*) FROM batches WHERE status = 'submitting'").fetchone()
    assert stuck[0] == 1, "the interrupted submission must be remembered"
    scenario.converge()
    assert batch_posts(scenario) == 1, "POST /batches was sent again for the same updates"
    assert_same_result(clean_state, scenario)
    with scenario.db() as db:
        states = dict(db.execute("SELECT state, COUNT(*) FROM updates GROUP BY state").fetchall())
    assert set(states) <= {"done", "failed"}, states


def test_batch_results_that_cannot_be_fetched_are_retried_later(
    clean_state: dict[str, Any], scenario_factory: Any
) -> None:
    scenario = scenario_factory()
    tamper = Tamper(scenario.mailchimp)
    # What object storage answers for an expired pre-signed link.
    tamper.add(
        lambda request, forward: (
            raw(403, b"<Error><Code>AccessDenied</Code></Error>", "application/xml")
            if "/_sim/batch-results/" in request.path
            else None
        )
    )
    scenario.serve(mailchimp=tamper)
    first = scenario.run()
    assert first.code == 1, first
    assert "batch" in first.err.lower(), first
    status = scenario.status()[0]
    assert status["counts"]["batches_in_flight"] == 1, status
    assert status["counts"]["updates_submitted"] > 0, status
    assert not status["in_sync"]
    tamper.clear()
    scenario.converge()
    assert_same_result(clean_state, scenario)
    with scenario.db() as db:
        open_batches = db.execute(
            "SELECT COUNT(*) FROM batches WHERE status != 'processed'"
        ).fetchone()[0]
        waiting = db.execute(
            "SELECT COUNT(*) FROM updates WHERE state IN ('submitting', 'submitted')"
        ).fetchone()[0]
    assert open_batches == 0 and waiting == 0
    assert batch_posts(scenario) == 1


def test_retries_never_push_a_run_past_its_budget(scenario_factory: Any) -> None:
    """Half of all requests fail, each 429/503 asking to wait: the run still stops at its
    --max-time (plus at most one request timeout), saves progress and exits 0."""
    plan = FaultPlan(
        rate=0.5, kinds=("429", "503", "drop", "slow"), slow_seconds=1.5, seed=5, retry_after=1
    )
    scenario = scenario_factory(faults=plan).serve()
    budget = 4.0
    run = scenario.run("fetch-and-reconcile", "--max-time", str(budget), "-v")
    assert run.code == 0, run
    # Interpreter start-up (~1 s) + the budget + one in-flight request (1 s timeout).
    assert run.seconds < budget + 3.5, run
    assert "the next run continues" in run.out + run.err or "complete" in run.out, run

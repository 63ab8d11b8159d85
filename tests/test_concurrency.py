"""Simultaneous cron runs on one config (issue 6, point 3): each audience is worked by exactly
one process, the others exit 0 at once saying it is busy, and the Mailchimp account never has
more than 10 requests in flight across all processes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e import InFlight, Run, Scenario, final_state

BUSY = "busy with another mcsync run"


@pytest.fixture
def scenario_dir(tmp_path: Path) -> Iterator[list[Scenario]]:
    made: list[Scenario] = []
    yield made
    for scenario in made:
        scenario.stop()


def _run_together(scenario: Scenario, count: int) -> list[Run]:
    started = time.monotonic()
    processes = [scenario.start("fetch-and-reconcile", "-v") for _ in range(count)]
    runs = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        runs.append(Run(["fetch-and-reconcile", "-v"], process.returncode, out, err,
                        time.monotonic() - started))
    return runs


def _workers(runs: list[Run], list_id: str) -> list[Run]:
    return [r for r in runs
            if any(f"audience {list_id}" in line and "complete" in line
                   for line in r.out.splitlines())]


def test_one_audience_is_worked_by_exactly_one_of_three_processes(
    tmp_path: Path, scenario_dir: list[Scenario]
) -> None:
    scenario = Scenario(tmp_path / "one", members=200, seed=3, sync="batch_threshold = 20")
    scenario_dir.append(scenario)
    scenario.serve()
    runs = _run_together(scenario, 3)
    assert all(r.code == 0 for r in runs), [str(r) for r in runs]
    list_id = scenario.list_ids[0]
    workers = _workers(runs, list_id)
    assert len(workers) == 1, [str(r) for r in runs]
    idle = [r for r in runs if r not in workers]
    for run in idle:
        assert BUSY in run.err and list_id in run.err, run
        assert "complete" not in run.out, run
    # "At once": the busy processes were done before the worker.
    assert max(r.seconds for r in idle) < workers[0].seconds
    # Nothing was done twice: a second, single run writes nothing.
    before = final_state(scenario)
    assert scenario.run().code == 0
    assert final_state(scenario) == before


def test_two_audiences_four_processes_share_one_accounts_ten_connections(
    tmp_path: Path, scenario_dir: list[Scenario]
) -> None:
    """Two processes work one audience each, at the same time, on one Mailchimp account;
    direct member writes and concurrent page reads would each use all 10 connections."""
    scenario = Scenario(tmp_path / "two", members=300, seed=3, audiences=2,
                        sync="batch_threshold = 1000\npage_size_mailchimp = 25")
    scenario_dir.append(scenario)
    counter = InFlight(scenario.mailchimp, hold=0.02)
    scenario.serve(mailchimp=counter)
    runs = _run_together(scenario, 4)
    assert all(r.code == 0 for r in runs), [str(r) for r in runs]
    for list_id in scenario.list_ids:
        workers = _workers(runs, list_id)
        assert len(workers) == 1, f"audience {list_id}: " + "\n".join(str(r) for r in runs)
        others = [r for r in runs if r not in workers]
        assert all(BUSY in r.err and list_id in r.err for r in others), [str(r) for r in others]
    assert counter.total > 100, "the runs should have made many Mailchimp requests"
    assert counter.peak <= 10, f"{counter.peak} Mailchimp requests were in flight at once"
    assert counter.peak >= 5, "the test should load the account (concurrency not observed)"
    statuses = {s["list_id"]: s for s in scenario.status()}
    for list_id in scenario.list_ids:
        assert statuses[list_id]["stage"] == "idle" and statuses[list_id]["last_sync"]

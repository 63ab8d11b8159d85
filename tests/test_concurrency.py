"""Simultaneous cron runs on one config (issue 6, point 3): each audience is worked by exactly
one process, the others exit 0 at once saying it is busy, and the Mailchimp account never has
more than 10 requests in flight across all processes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e import InFlight, Run, Scenario, SimRequest, SimResponse, Tamper, final_state

BUSY = "busy with another mcsync run"


@pytest.fixture
def scenario_dir(tmp_path: Path) -> Iterator[list[Scenario]]:
    made: list[Scenario] = []
    yield made
    for scenario in made:
        scenario.stop()


def _run_together(scenario: Scenario, count: int) -> list[Run]:
    """Start ``count`` runs at once; each Run's seconds is when that process ended."""
    started = time.monotonic()
    processes = [scenario.start("fetch-and-reconcile", "-v") for _ in range(count)]
    ended: dict[int, float] = {}
    deadline = started + 120
    while len(ended) < count and time.monotonic() < deadline:
        for n, process in enumerate(processes):
            if n not in ended and process.poll() is not None:
                ended[n] = time.monotonic() - started
        time.sleep(0.01)
    runs = []
    for n, process in enumerate(processes):
        out, err = process.communicate(timeout=30)
        runs.append(
            Run(
                ["fetch-and-reconcile", "-v"],
                process.returncode,
                out,
                err,
                ended.get(n, time.monotonic() - started),
            )
        )
    return runs


def _slow_first_page(scenario: Scenario) -> Tamper:
    """Each run's first member page takes 2 s, so a worker holds its audience well past the
    start-up skew of the other processes (which would otherwise find it finished, not busy)."""
    tamper = Tamper(scenario.mailchimp)

    def slow(request: SimRequest, forward: Any) -> SimResponse | None:
        if request.path.endswith("/members") and request.arg("offset") in (None, "0"):
            time.sleep(2)
            answer: SimResponse = forward(request)
            return answer
        return None

    tamper.add(slow)
    return tamper


def assert_never_two_at_once(scenario: Scenario) -> None:
    """In each audience's run log, a run starts only after the previous one completed: two
    processes never worked the audience at the same time. (A process that starts after a
    worker finished may legitimately run the audience again.)"""
    with scenario.db() as db:
        events = db.execute(
            "SELECT list_id, message FROM log WHERE message LIKE 'Started % run%' "
            "OR message LIKE 'Run complete%' ORDER BY id"
        ).fetchall()
    running: dict[str, bool] = {}
    for list_id, message in events:
        starting = message.startswith("Started")
        assert running.get(list_id, False) != starting, f"overlapping runs of {list_id}: {events}"
        running[list_id] = starting
    assert set(running) == set(scenario.list_ids) and not any(running.values()), events


def _workers(runs: list[Run], list_id: str) -> list[Run]:
    return [
        r
        for r in runs
        if any(f"audience {list_id}" in line and "complete" in line for line in r.out.splitlines())
    ]


def test_one_audience_is_worked_by_exactly_one_of_three_processes(
    tmp_path: Path, scenario_dir: list[Scenario]
) -> None:
    scenario = Scenario(tmp_path / "one", members=200, seed=3, sync="batch_threshold = 20")
    scenario_dir.append(scenario)
    scenario.serve(mailchimp=_slow_first_page(scenario))
    runs = _run_together(scenario, 3)
    assert all(r.code == 0 for r in runs), [str(r) for r in runs]
    list_id = scenario.list_ids[0]
    workers = _workers(runs, list_id)
    assert workers, [str(r) for r in runs]
    assert_never_two_at_once(scenario)
    idle = [r for r in runs if r not in workers]
    assert idle, "the other processes should have found the audience busy"
    for run in idle:
        assert BUSY in run.err and list_id in run.err, run
        assert "complete" not in run.out, run
    # "At once": the busy processes were done before the worker.
    assert max(r.seconds for r in idle) < min(r.seconds for r in workers)
    # Nothing was done twice: a second, single run writes nothing.
    before = final_state(scenario)
    assert scenario.run().code == 0
    assert final_state(scenario) == before


def test_two_audiences_four_processes_share_one_accounts_ten_connections(
    tmp_path: Path, scenario_dir: list[Scenario]
) -> None:
    """Two processes work one audience each, at the same time, on one Mailchimp account;
    each reads member pages 10 at a time, which alone would make 20 in flight."""
    scenario = Scenario(
        tmp_path / "two",
        members=300,
        seed=3,
        audiences=2,
        sync="batch_threshold = 1000\npage_size_mailchimp = 10",
    )
    scenario_dir.append(scenario)
    counter = InFlight(_slow_first_page(scenario), hold=0.05)
    scenario.serve(mailchimp=counter)
    runs = _run_together(scenario, 4)
    assert all(r.code == 0 for r in runs), [str(r) for r in runs]
    assert_never_two_at_once(scenario)
    for list_id in scenario.list_ids:
        workers = _workers(runs, list_id)
        assert workers, f"audience {list_id}: " + "\n".join(str(r) for r in runs)
        others = [r for r in runs if r not in workers]
        assert all(BUSY in r.err and list_id in r.err for r in others), [str(r) for r in others]
    assert counter.total > 50, "the runs should have made many Mailchimp requests"
    print(f"\npeak Mailchimp requests in flight: {counter.peak} of {counter.total}")
    assert counter.peak <= 10, f"{counter.peak} Mailchimp requests were in flight at once"
    assert counter.peak >= 5, "the test should load the account (concurrency not observed)"
    statuses = {s["list_id"]: s for s in scenario.status()}
    for list_id in scenario.list_ids:
        assert statuses[list_id]["stage"] == "idle" and statuses[list_id]["last_sync"]

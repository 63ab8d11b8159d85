"""The run's deadline: remaining time, expiry, and waits that refuse to pass it."""

from __future__ import annotations

import functools
import itertools
import math
import threading
from collections.abc import Iterator

import pytest
from conftest import World

from mcsync.api.mailchimp import MailchimpClient
from mcsync.budget import Budget
from mcsync.errors import BudgetExhausted


class FakeClock:
    """A monotonic clock that only moves when a test (or a fake sleep) moves it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.mark.parametrize("limit", [None, 0])
def test_none_or_zero_is_unlimited(limit: float | None) -> None:
    clock = FakeClock()
    budget = Budget(limit, clock=clock, sleep=clock.sleep)
    clock.now += 1e9
    assert budget.remaining() == math.inf
    assert not budget.expired()
    assert budget.is_unlimited
    budget.check()
    budget.sleep(3600)
    assert clock.slept == [3600]


def test_unlimited_constructor() -> None:
    assert Budget.unlimited().remaining() == math.inf


def test_remaining_counts_down_and_expires() -> None:
    clock = FakeClock()
    budget = Budget(10, clock=clock, sleep=clock.sleep)
    assert budget.remaining() == 10
    clock.now += 4
    assert budget.remaining() == 6
    budget.check()
    clock.now += 6
    assert budget.remaining() == 0
    assert budget.expired()
    with pytest.raises(BudgetExhausted, match=r"10 s \(--max-time\)"):
        budget.check()
    clock.now += 5
    assert budget.remaining() == 0  # never negative


def test_sleep_within_budget_sleeps_fully() -> None:
    clock = FakeClock()
    budget = Budget(10, clock=clock, sleep=clock.sleep)
    budget.sleep(4)
    assert clock.slept == [4]
    assert budget.remaining() == 6


def test_sleep_past_deadline_raises_without_sleeping() -> None:
    clock = FakeClock()
    budget = Budget(10, clock=clock, sleep=clock.sleep)
    clock.now += 8
    with pytest.raises(BudgetExhausted, match="5.0 s wait"):
        budget.sleep(5)
    assert clock.slept == []  # the caller keeps the 2 s left to save its progress


def test_zero_sleep_only_checks() -> None:
    clock = FakeClock()
    budget = Budget(1, clock=clock, sleep=clock.sleep)
    budget.sleep(0)
    clock.now += 2
    with pytest.raises(BudgetExhausted):
        budget.sleep(0)
    assert clock.slept == []


def test_negative_budget_is_rejected() -> None:
    with pytest.raises(ValueError):
        Budget(-1)


def _tick(clock: Iterator[int]) -> float:
    return float(next(clock))


def test_a_budget_ending_before_the_first_stage_stops_the_run_cleanly(world: World) -> None:
    """The budget can run out during the group check or while a new run fixes its windows
    (both read CiviCRM before any stage): that is a budget stop like any other (exit 0,
    progress kept), never an error. Every deadline from the first clock reading on is tried."""
    world.person("a@example.org", mc="subscribed", civi="Added")
    for ticks in range(1, 12):
        clock = itertools.count()
        budget = Budget(ticks, clock=functools.partial(_tick, clock))
        results = world.sync(budget=budget)
        assert results[0].error is None, (ticks, results[0].error)
    assert world.sync()[0].outcome is not None


class ThreadRecordingClock:
    """A tick clock (one second per reading, as the budgeted-run tests use) that notes which
    thread made each reading."""

    def __init__(self) -> None:
        self.readers: list[str] = []
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            self.readers.append(threading.current_thread().name)
            return float(len(self.readers))


def _client(world: World, budget: Budget) -> MailchimpClient:
    return MailchimpClient(
        account_name="main",
        api_key=world.config.mailchimp.accounts["main"].api_key.get_secret_value(),
        base_url="https://mailchimp.sim/3.0",
        budget=budget,
        transport=world.transport,
        max_connections=4,
    )


def test_each_request_reads_the_budget_clock_once_in_the_callers_thread(world: World) -> None:
    """Whatever thread sends a request (a request's own worker, which stops it at the
    deadline, or the threads that fetch pages concurrently), the budget's clock is read only
    by the thread that issues it, once per request: with a tick clock, how far a run gets is
    then the same every time, not a matter of thread scheduling."""
    for n in range(25):
        world.person(f"p{n:02}@example.org", mc="subscribed")
    clock = ThreadRecordingClock()
    budget = Budget(10_000, clock=clock)
    caller = threading.current_thread().name
    with _client(world, budget) as client:
        before = len(world.mc.request_log)
        assert client.ping() is not None
        pages = list(client.member_pages(world.list_id, page_size=5, fields=("id",)))
        assert sum(len(members) for _, _, members in pages) == 25
        keys = [(m["id"], None) for _, _, members in pages for m in members]
        assert all(client.current_members(world.list_id, keys, fields=("id",)))
        writes = [(f"p{n:02}@example.org", {"status_if_new": "subscribed"}) for n in range(3)]
        assert len(client.put_members(world.list_id, writes)) == 3
        requests = len(world.mc.request_log) - before
    assert requests == 1 + 5 + 25 + 3
    # the budget's own reading when it was made, then one per request
    assert clock.readers == [caller] * (1 + requests)

"""The run's deadline: remaining time, expiry, and waits that refuse to pass it."""

from __future__ import annotations

import functools
import math

import pytest
from conftest import World

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


def test_a_budget_ending_before_the_first_stage_stops_the_run_cleanly(world: World) -> None:
    """The budget can run out during the group check or while a new run fixes its windows
    (both read CiviCRM before any stage): that is a budget stop like any other (exit 0,
    progress kept), never an error. Every deadline from the first clock reading on is tried."""
    world.person("a@example.org", mc="subscribed", civi="Added")
    for ticks in range(1, 12):
        ticking = iter(range(10**6))
        budget = Budget(ticks, clock=functools.partial(lambda it: float(next(it)), ticking))
        results = world.sync(budget=budget)
        assert results[0].error is None, (ticks, results[0].error)
    assert world.sync()[0].outcome is not None

"""Runs cut short by a tiny budget (``--max-time`` of a few seconds, run after run by cron)
must still make progress: every stage commits what it has read before the budget can end
the run, so the next run goes on from there instead of doing the same work again (found by
the model-based consent test with budgets of a few clock ticks: the runs never finished).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from conftest import World

from mcsync.budget import Budget

PEOPLE = 40


def _email(n: int) -> str:
    return f"t{n:02d}@example.org"


def _budgeted_runs(world: World, ticks: int, runs: int, **kwargs: Any) -> Iterator[Any]:
    """Runs with a budget of ``ticks`` clock readings each (a clock that moves a tick per
    reading), until one completes; yields each run's outcome; fails after ``runs`` runs."""
    clock = iter(range(0, 10**7))
    for _ in range(runs):
        budget = Budget(ticks, clock=lambda: float(next(clock)))
        [result] = world.sync(budget=budget, **kwargs)
        assert result.error is None, result.error
        yield result.outcome
        if result.outcome and result.outcome.completed:
            return
    raise AssertionError(f"{runs} runs of {ticks} ticks never completed")


def test_tiny_budget_runs_read_many_archived_members(world: World) -> None:
    """Many members archived at Mailchimp since the last run: the look for archived members
    takes several pages, more than one tiny run can read. Repeated tiny runs converge: each
    one stages some pages, and the archived members end up Removed in CiviCRM."""
    world.write_config("page_size_mailchimp = 2\n")
    newest = world.ago(days=3)
    world.mc.seed_members(
        world.list_id,
        [(_email(n), "subscribed", {}, {}, newest - timedelta(minutes=n)) for n in range(PEOPLE)],
    )
    contacts = {}
    for n in range(PEOPLE):
        contacts[n] = world.civi.add_contact(f"P{n}", "Tiny")
        world.civi.add_email(contacts[n], _email(n))
        world.civi.set_group_status(contacts[n], world.group_id, "Added", when=world.ago(days=5))
    [first] = world.sync()
    assert first.error is None and first.outcome and first.outcome.completed
    world.advance_clock(minutes=30)
    archived = range(0, PEOPLE, 2)
    for n in archived:
        world.mc.set_member_status(world.list_id, _email(n), "archived")
    world.advance_clock(minutes=30)

    outcomes = list(_budgeted_runs(world, 7, 200, allow_mass_changes=True))
    assert outcomes[-1].completed
    assert {n for n, c in contacts.items() if world.civi_status(c) == "Removed"} == set(archived)

"""Runs cut short by a tiny budget (``--max-time`` of a few seconds, run after run by cron)
must still make progress: every stage commits what it has read before the budget can end
the run, so the next run goes on from there instead of doing the same work again (found by
the model-based consent test with budgets of a few clock ticks: the runs never finished).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from conftest import World

from mcsync.budget import Budget

PEOPLE = 40


def _email(n: int) -> str:
    return f"t{n:02d}@example.org"


def _budgeted_runs(world: World, seconds: int, runs: int, **kwargs: Any) -> Iterator[Any]:
    """Runs with a budget of ``seconds`` each on a clock that moves a second per request to
    either service (as in the model-based consent test), until one completes; yields each
    run's outcome; fails after ``runs`` runs."""

    def clock() -> float:
        return float(len(world.mc.request_log) + len(world.civi.request_log))

    for _ in range(runs):
        [result] = world.sync(budget=Budget(seconds, clock=clock), **kwargs)
        assert result.error is None, result.error
        yield result.outcome
        if result.outcome and result.outcome.completed:
            return
    raise AssertionError(f"{runs} runs of {seconds} requests never completed")


def test_tiny_budget_runs_read_many_archived_members(world: World) -> None:
    """Many members archived at Mailchimp in the run's window: the look for archived members
    (the member list leaves them out) takes more pages than one tiny run can read. Repeated
    tiny runs converge: each stages a page or more and the next goes on from there; the
    archived members' contacts end up Removed, the others untouched."""
    world.write_config("page_size_mailchimp = 2\n")
    kept = range(0, PEOPLE, 2)
    world.mc.seed_members(
        world.list_id,
        [(_email(n), "subscribed", {}, {}, world.ago(days=3, minutes=n)) for n in kept],
    )
    contacts = {}
    for n in range(PEOPLE):
        contacts[n] = world.civi.add_contact(f"P{n}", "Tiny")
        world.civi.add_email(contacts[n], _email(n))
        if n in kept:
            world.civi.set_group_status(
                contacts[n], world.group_id, "Added", when=world.ago(days=5)
            )
    [first] = world.sync()
    assert first.error is None and first.outcome and first.outcome.completed
    # Then staff add the others (back-dated), and these people left the audience a day ago
    # (archived, as Mailchimp's own import of an old export would date them).
    archived = range(1, PEOPLE, 2)
    for n in archived:
        world.civi.set_group_status(contacts[n], world.group_id, "Added", when=world.ago(days=5))
    world.mc.seed_members(
        world.list_id,
        [(_email(n), "archived", {}, {}, world.ago(days=1, minutes=n)) for n in archived],
    )

    since = world.ago(days=4).isoformat()
    outcomes = list(_budgeted_runs(world, 5, 100, since=since, allow_mass_changes=True))
    assert outcomes[-1].completed
    assert {n for n, c in contacts.items() if world.civi_status(c) == "Removed"} == set(archived)
    assert all(world.civi_status(contacts[n]) == "Added" for n in kept)

"""The mass-change brake: an emptied group, an empty Mailchimp fetch, a large share of
removals; nothing written, exit 1 with the way forward; --allow-mass-changes lets it through."""

from __future__ import annotations

import json

import httpx
import pytest
from click.testing import CliRunner
from conftest import World

from mcsync import engine
from mcsync.cli import main


class EmptyMemberPages(httpx.BaseTransport):
    """Mailchimp answering every member page with none (an outage or a replaced audience)."""

    def __init__(self, inner: httpx.BaseTransport):
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.endswith("/members"):
            return httpx.Response(200, json={"members": [], "total_items": 0})
        return self.inner.handle_request(request)


@pytest.fixture
def synced(world: World, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Twenty people in sync, and a CLI runner using the world's transport."""
    contacts = [world.person(f"p{n}@example.org", mc="subscribed", civi="Added") for n in range(20)]
    assert world.sync()[0].outcome.completed  # type: ignore[union-attr]
    # world.transport is read at each call, so a test can swap it (EmptyMemberPages).
    monkeypatch.setattr(
        engine,
        "sync_audiences",
        lambda config, **kw: _real_sync(config, **{"transport": world.transport, **kw}),
    )

    def run(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, [*args, "--config", str(world.config_path)])

    return contacts, run


_real_sync = engine.sync_audiences


def test_emptied_group_trips_the_brake_until_allowed(world: World, synced) -> None:  # type: ignore[no-untyped-def]
    contacts, run = synced
    before = len(world.writes())
    for contact in contacts:
        world.civi.set_group_status(contact, world.group_id, "Removed")
    result = run("fetch-and-reconcile")
    assert result.exit_code == 1
    assert "Mass-change brake" in result.output and "--allow-mass-changes" in result.output
    assert "unsubscribe 20 of 20" in result.output and "has no contacts Added" in result.output
    assert len(world.writes()) == before
    assert run("fetch-and-reconcile").exit_code == 1  # still held: nothing slips through
    assert len(world.writes()) == before
    status = json.loads(run("status", "--json").output)[0]
    assert status["stage"] == "brake" and "Mass-change brake" in status["problem"]

    allowed = run("fetch-and-reconcile", "--allow-mass-changes")
    assert allowed.exit_code == 0, allowed.output
    assert all(world.mc_status(f"p{n}@example.org") == "unsubscribed" for n in range(20))


def test_dry_run_shows_the_plan_and_the_brake(world: World, synced) -> None:  # type: ignore[no-untyped-def]
    contacts, run = synced
    before = len(world.writes())
    for contact in contacts[:5]:
        world.civi.set_group_status(contact, world.group_id, "Removed")
    result = run("fetch-and-reconcile", "--dry-run", "--json")
    assert result.exit_code == 1
    plan = json.loads(result.stdout)
    assert plan["audiences"][0]["totals"] == {"mailchimp_unsubscribes": 5}
    assert "unsubscribe 5 of 20" in plan["audiences"][0]["brake"]
    assert len(world.writes()) == before
    assert run("fetch-and-reconcile", "--allow-mass-changes").exit_code == 0
    assert world.writes()[before:] == [("POST", f"/3.0/lists/{world.list_id}")]  # one bulk
    assert all(world.mc_status(f"p{n}@example.org") == "unsubscribed" for n in range(5))


def test_a_small_share_passes(world: World, synced) -> None:  # type: ignore[no-untyped-def]
    contacts, run = synced
    world.civi.set_group_status(contacts[0], world.group_id, "Removed")
    world.civi.set_group_status(contacts[1], world.group_id, "Removed")
    assert run("fetch-and-reconcile").exit_code == 0  # 2 of 20 is the 10% limit
    assert world.mc_status("p0@example.org") == "unsubscribed"


def test_empty_mailchimp_fetch_trips_the_brake(world: World, synced) -> None:  # type: ignore[no-untyped-def]
    _, run = synced
    world.transport = EmptyMemberPages(world.transport)  # type: ignore[assignment]
    before = len(world.writes())
    result = run("fetch-and-reconcile", "--since", "ever")
    assert result.exit_code == 1
    assert "Mailchimp returned no members" in result.output
    assert len(world.writes()) == before
    allowed = run("fetch-and-reconcile", "--allow-mass-changes")
    assert allowed.exit_code == 0, allowed.output
    # Members Mailchimp did not list are never removed from CiviCRM for it.
    assert len(world.writes()) == before


def test_mailchimp_mass_unsubscribe_trips_the_brake(world: World, synced) -> None:  # type: ignore[no-untyped-def]
    contacts, run = synced
    for n in range(10):
        world.mc.set_member_status(world.list_id, f"p{n}@example.org", "unsubscribed")
    before = len(world.writes())
    result = run("fetch-and-reconcile")
    assert result.exit_code == 1 and "remove 10 of 20 contacts" in result.output
    assert len(world.writes()) == before
    assert world.civi_status(contacts[0]) == "Added"

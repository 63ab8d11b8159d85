"""The mass-change brake: an emptied group, an empty Mailchimp fetch, a large share of
removals; nothing written, exit 1 with the way forward; --allow-mass-changes lets it through."""

from __future__ import annotations

import json

import httpx
import pytest
from click.testing import CliRunner
from conftest import World

from mcsync.cli import main
from mcsync.runner import engine
from mcsync.store.database import Staging


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
    # an unsubscribe never creates a member: each is its own PUT (a bulk write would)
    assert [method for method, _ in world.writes()[before:]] == ["PUT"] * 5
    assert all(world.mc_status(f"p{n}@example.org") == "unsubscribed" for n in range(5))


def test_a_small_share_passes(world: World, synced) -> None:  # type: ignore[no-untyped-def]
    contacts, run = synced
    world.civi.set_group_status(contacts[0], world.group_id, "Removed")
    world.civi.set_group_status(contacts[1], world.group_id, "Removed")
    assert run("fetch-and-reconcile").exit_code == 0  # 2 of 20 is the 10% limit
    assert world.mc_status("p0@example.org") == "unsubscribed"


def test_the_audience_is_weighed_only_when_something_would_leave(
    world: World, synced, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Counting the subscribed members reads every member row (seconds at a million), so a
    run that removes or unsubscribes nobody never counts them; one that would remove two
    counts them once, and is weighed against them as before."""
    contacts, run = synced
    counted: list[str] = []
    real = Staging.subscribed_members
    monkeypatch.setattr(
        Staging,
        "subscribed_members",
        lambda self, list_id: counted.append(list_id) or real(self, list_id),
    )
    assert run("fetch-and-reconcile").exit_code == 0
    assert counted == []
    world.civi.set_group_status(contacts[0], world.group_id, "Removed")
    world.civi.set_group_status(contacts[1], world.group_id, "Removed")
    world.civi.set_group_status(contacts[2], world.group_id, "Removed")
    result = run("fetch-and-reconcile")
    assert result.exit_code == 1 and "unsubscribe 3 of 20 members" in result.output
    assert counted == [world.list_id]


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


class InterestWorld:
    """Twenty subscribers in sync: interest `on` set and its group Added, interest `off`
    unset and its group without them; a CLI runner against the world's transport."""

    def __init__(self, world: World, monkeypatch: pytest.MonkeyPatch):
        self.world = world
        (self.on, self.on_group), (self.off, self.off_group) = sorted(world.interest_ids.items())
        self.contacts: list[int] = []
        for n in range(20):
            email = f"p{n}@example.org"
            world.mc.seed_member(
                world.list_id,
                email,
                "subscribed",
                interests={self.on: True, self.off: False},
                last_changed=world.ago(days=10),
                merge_fields={"FNAME": "", "LNAME": ""},
            )
            contact = world.civi.add_contact("", "")
            world.civi.add_email(contact, email)
            world.civi.set_group_status(contact, world.group_id, "Added", when=world.ago(days=30))
            world.civi.set_group_status(contact, self.on_group, "Added", when=world.ago(days=30))
            self.contacts.append(contact)
        first = world.sync()[0]
        assert first.error is None and first.outcome and first.outcome.completed
        monkeypatch.setattr(
            engine,
            "sync_audiences",
            lambda config, **kw: _real_sync(config, **{"transport": world.transport, **kw}),
        )

    def run(self, *args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, [*args, "--config", str(self.world.config_path)])

    def mc_interest(self, n: int, interest_id: str) -> bool:
        member = self.world.mc.member(self.world.list_id, f"p{n}@example.org")
        assert member is not None
        return bool(member["interests"][interest_id])


@pytest.fixture
def interest_world(make_world, monkeypatch: pytest.MonkeyPatch) -> InterestWorld:  # type: ignore[no-untyped-def]
    return InterestWorld(make_world(interests=2), monkeypatch)


def _held_then_allowed(iw: InterestWorld, expected: list[str]) -> None:
    """The run stops with a message naming the interest and direction; nothing is written
    until --allow-mass-changes."""
    before = len(iw.world.writes())
    result = iw.run("fetch-and-reconcile")
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "Mass-change brake" in text
    for part in expected:
        assert part in text, text
    assert len(iw.world.writes()) == before
    assert iw.run("fetch-and-reconcile").exit_code == 1
    assert len(iw.world.writes()) == before
    allowed = iw.run("fetch-and-reconcile", "--allow-mass-changes")
    assert allowed.exit_code == 0, allowed.output


def test_emptied_interest_group_trips_the_brake(interest_world: InterestWorld) -> None:
    """Issue 10.5: emptying an interest's group switched the interest off at Mailchimp for
    half the audience, exit 0."""
    iw = interest_world
    for contact in iw.contacts[:10]:
        iw.world.civi.set_group_status(contact, iw.on_group, "Removed")
    _held_then_allowed(
        iw,
        [
            f"switch interest {iw.on} (CiviCRM group {iw.on_group}) off for 10 of 20",
            "at Mailchimp",
        ],
    )
    assert [iw.mc_interest(n, iw.on) for n in range(12)] == [False] * 10 + [True] * 2


def test_filled_interest_group_trips_the_brake(interest_world: InterestWorld) -> None:
    iw = interest_world
    for contact in iw.contacts[:10]:
        iw.world.civi.set_group_status(contact, iw.off_group, "Added")
    _held_then_allowed(
        iw, [f"switch interest {iw.off} (CiviCRM group {iw.off_group}) on for 10 of 20"]
    )
    assert [iw.mc_interest(n, iw.off) for n in range(12)] == [True] * 10 + [False] * 2


def test_interest_switched_off_at_mailchimp_trips_the_brake(
    interest_world: InterestWorld,
) -> None:
    iw = interest_world
    w = iw.world
    for n in range(10):
        w.mc.edit_member(w.list_id, f"p{n}@example.org", interests={iw.on: False})
    group = f"CiviCRM group {iw.on_group} (interest {iw.on})"
    _held_then_allowed(iw, [f"remove 10 of 20 subscribed members from {group}"])
    assert w.civi_status(iw.contacts[0], iw.on_group) == "Removed"


def test_interest_switched_on_at_mailchimp_trips_the_brake(
    interest_world: InterestWorld,
) -> None:
    iw = interest_world
    w = iw.world
    for n in range(10):
        w.mc.edit_member(w.list_id, f"p{n}@example.org", interests={iw.off: True})
    _held_then_allowed(
        iw, [f"add 10 of 20 subscribed members to CiviCRM group {iw.off_group} (interest {iw.off})"]
    )
    assert w.civi_status(iw.contacts[0], iw.off_group) == "Added"


def test_a_few_interest_changes_pass(interest_world: InterestWorld) -> None:
    iw = interest_world
    w = iw.world
    iw.world.civi.set_group_status(iw.contacts[0], iw.on_group, "Removed")
    iw.world.civi.set_group_status(iw.contacts[1], iw.off_group, "Added")
    w.mc.edit_member(w.list_id, "p2@example.org", interests={iw.on: False, iw.off: True})
    w.mc.edit_member(w.list_id, "p3@example.org", interests={iw.on: False, iw.off: True})
    result = iw.run("fetch-and-reconcile")
    assert result.exit_code == 0, result.output  # at most 2 of 20 each way: the 10% limit
    assert not iw.mc_interest(0, iw.on) and iw.mc_interest(1, iw.off)
    assert w.civi_status(iw.contacts[2], iw.on_group) == "Removed"


def test_a_first_sync_joins_interests_but_never_takes_them_away(make_world) -> None:  # type: ignore[no-untyped-def]
    """Before the first complete sync the two sides' interests are being joined: switching on
    passes (like subscribes), switching off for many is still held."""
    world = make_world(interests=2)
    (on, on_group), (off, off_group) = sorted(world.interest_ids.items())
    contacts = []
    for n in range(20):
        email = f"p{n}@example.org"
        world.mc.seed_member(
            world.list_id,
            email,
            "subscribed",
            interests={on: True, off: n < 10},
            last_changed=world.ago(days=10),
        )
        contact = world.civi.add_contact("", "")
        world.civi.add_email(contact, email)
        world.civi.set_group_status(contact, world.group_id, "Added", when=world.ago(days=30))
        world.civi.set_group_status(contact, off_group, "Removed", when=world.ago(days=1))
        contacts.append(contact)
    result = world.sync()[0]
    assert result.error is not None and "switch interest" in str(result.error)
    assert f"interest {off} (CiviCRM group {off_group}) off for 10 of 20" in str(result.error)
    assert f"to CiviCRM group {on_group}" not in str(result.error), "joining is no mass change"
    assert world.civi_status(contacts[0], on_group) is None, "nothing written"
    assert world.sync(allow_mass_changes=True)[0].error is None
    assert world.civi_status(contacts[0], on_group) == "Added", "Mailchimp's interests joined"


def test_new_subscribers_bring_their_interests_without_a_brake(
    interest_world: InterestWorld,
) -> None:
    """Subscribes are never held, so neither are the interests new subscribers bring with
    them to CiviCRM: only switches for people already subscribed are mass changes."""
    iw = interest_world
    w = iw.world
    for n in range(20, 30):
        w.mc.seed_member(
            w.list_id,
            f"p{n}@example.org",
            "subscribed",
            interests={iw.on: True, iw.off: True},
            last_changed=w.ago(hours=1),
        )
    result = iw.run("fetch-and-reconcile")
    assert result.exit_code == 0, result.output
    created = w.civi.query("SELECT e.contact_id FROM email e WHERE e.email = 'p25@example.org'")[0][
        "contact_id"
    ]
    assert w.civi_status(created) == "Added"
    assert w.civi_status(created, iw.off_group) == "Added"

"""Queued writes and the consent invariant (issue 10, items 2, 3 and 11): `abort` drops a plan,
never a fact; a write that waited (at the brake, a budget pause, a crash) is not sent once a
newer change overtook it; a run that lost its lease stops writing at its next chunk."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from conftest import CIVI_KEY, MC_KEY, World

from mcsync.budget import Budget
from mcsync.cli import main
from mcsync.errors import BudgetExhausted
from mcsync.ops import abort
from mcsync.runner import engine
from mcsync.sim.civicrm import CiviSim
from mcsync.sim.mailchimp import MailchimpSim
from mcsync.sim.transport import MultiSimTransport
from mcsync.stages import batches, push_mailchimp
from mcsync.store.database import Staging

Run = Callable[..., Result]


class ShiftedClock:
    """The services' clock, set back while a test seeds what happened long ago, and forward
    for a change made a few seconds after a run (both services keep whole seconds)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) - self.offset


def _services_with_a_clock(world: World) -> ShiftedClock:
    """Give the world simulators whose clock the test sets (before anything is seeded):
    contacts seeded while it is set back were last modified then, as on a real site, so an
    incremental run does not read them again for their modified_date."""
    clock = ShiftedClock()
    world.mc = MailchimpSim(clock=clock, batch_delay=0.0)
    world.list_id = world.mc.add_list(MC_KEY, "Newsletter")
    world.civi = CiviSim(CIVI_KEY, clock=clock)
    world.group_id = world.civi.add_group("Newsletter")
    world.transport = MultiSimTransport({"mailchimp.sim": world.mc, "civicrm.sim": world.civi})
    world.write_config()
    return clock


def _people_in_sync(world: World, count: int) -> tuple[list[int], ShiftedClock]:
    """``count`` people subscribed on both sides since days ago, one synced run, and the
    services' clock."""
    clock = _services_with_a_clock(world)
    clock.offset = timedelta(days=3)
    contacts = [
        world.person(f"p{n}@example.org", mc="subscribed", civi="Added") for n in range(count)
    ]
    clock.offset = timedelta(0)
    world.civi.add_contact("Staff", "Member")  # someone edited today, outside the audience
    assert world.sync()[0].outcome.completed  # type: ignore[union-attr]
    return [c for c in contacts if c is not None], clock


@pytest.fixture
def synced(world: World, monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], Run, ShiftedClock]:
    """Twenty people in sync, a CLI runner using the world's simulators, their clock."""
    contacts, clock = _people_in_sync(world, 20)
    real_sync = engine.sync_audiences
    monkeypatch.setattr(
        engine,
        "sync_audiences",
        lambda config, **kw: real_sync(config, **{"transport": world.transport, **kw}),
    )
    monkeypatch.setattr(
        abort, "connections", functools.partial(engine.connections, transport=world.transport)
    )

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, [*args, "--config", str(world.config_path)])

    return contacts, run, clock


def _emails_of(world: World, contact: int) -> set[str]:
    rows = world.civi.query("SELECT email FROM email WHERE contact_id = ?", (contact,))
    return {r["email"] for r in rows}


# -- item 2: abort drops a plan, never a fact ---------------------------------------------------


def test_abort_keeps_unsubscribes_made_at_mailchimp(world: World, synced) -> None:  # type: ignore[no-untyped-def]
    """Three people unsubscribe at Mailchimp; the brake stops the run before their CiviCRM
    removals are written; the operator aborts. The unsubscribes are facts: the next runs
    decide them again (here the brake trips again, until allowed), never forget them."""
    contacts, run, _ = synced
    for n in range(3):
        world.mc.set_member_status(world.list_id, f"p{n}@example.org", "unsubscribed")
    braked = run("fetch-and-reconcile")
    assert braked.exit_code == 1 and "remove 3 of 20 contacts" in braked.output, braked.output
    aborted = run("abort", "--group-id", str(world.group_id))
    assert aborted.exit_code == 0, aborted.output

    again = run("fetch-and-reconcile")  # incremental: these members did not change again
    assert again.exit_code == 1 and "remove 3 of 20 contacts" in again.output, again.output
    allowed = run("fetch-and-reconcile", "--allow-mass-changes")
    assert allowed.exit_code == 0, allowed.output
    assert [world.civi_status(c) for c in contacts[:3]] == ["Removed"] * 3
    assert all(world.civi_status(c) == "Added" for c in contacts[3:])


def test_abort_keeps_an_address_change_learned_from_mailchimp(world: World, synced) -> None:  # type: ignore[no-untyped-def]
    contacts, run, _ = synced
    world.mc.edit_member(world.list_id, "p0@example.org", new_email="p0.new@example.org")
    for contact in contacts[5:]:  # a group emptied by mistake: the brake trips
        world.civi.set_group_status(contact, world.group_id, "Removed")
    assert run("fetch-and-reconcile").exit_code == 1
    assert run("abort", "--group-id", str(world.group_id)).exit_code == 0
    for contact in contacts[5:]:  # staff restore the group
        world.civi.set_group_status(contact, world.group_id, "Added")
    done = run("fetch-and-reconcile")
    assert done.exit_code == 0, done.output
    assert _emails_of(world, contacts[0]) == {"p0@example.org", "p0.new@example.org"}
    assert all(world.mc_status(f"p{n}@example.org") == "subscribed" for n in range(1, 20))


def test_a_dry_run_keeps_an_address_change_learned_from_mailchimp(world: World, synced) -> None:  # type: ignore[no-untyped-def]
    contacts, run, _ = synced
    world.mc.edit_member(world.list_id, "p0@example.org", new_email="p0.new@example.org")
    dry = run("fetch-and-reconcile", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    [plan] = json.loads(dry.stdout)["audiences"]
    assert plan["totals"] == {"civicrm_emails": 1}
    assert [c["change"] for c in plan["changes"]] == ["add email p0.new@example.org"]
    assert _emails_of(world, contacts[0]) == {"p0@example.org"}, "a dry run wrote"
    assert run("fetch-and-reconcile").exit_code == 0
    assert _emails_of(world, contacts[0]) == {"p0@example.org", "p0.new@example.org"}


# -- item 3: a plan that waited is checked against newer changes before it is sent ---------------


def test_brake_override_keeps_contacts_staff_re_added_meanwhile(world: World, synced) -> None:  # type: ignore[no-untyped-def]
    """The brake parks a plan to unsubscribe everyone; staff re-add five contacts before the
    operator overrides. Those five were re-added later than the plan: they stay subscribed
    (never unsubscribed, then sent a confirmation email as 'pending')."""
    contacts, run, _ = synced
    for contact in contacts:
        world.civi.set_group_status(contact, world.group_id, "Removed")
    assert run("fetch-and-reconcile").exit_code == 1
    for contact in contacts[:5]:
        world.civi.set_group_status(contact, world.group_id, "Added")

    allowed = run("fetch-and-reconcile", "--allow-mass-changes")
    assert allowed.exit_code == 0, allowed.output
    assert [world.mc_status(f"p{n}@example.org") for n in range(5)] == ["subscribed"] * 5
    assert all(world.mc_status(f"p{n}@example.org") == "unsubscribed" for n in range(5, 20))
    assert run("fetch-and-reconcile").exit_code == 0
    assert [world.mc_status(f"p{n}@example.org") for n in range(5)] == ["subscribed"] * 5
    assert [world.civi_status(c) for c in contacts[:5]] == ["Added"] * 5


def test_brake_override_skips_a_subscribe_the_person_overtook_at_mailchimp(
    world: World,
    synced,  # type: ignore[no-untyped-def]
) -> None:
    """A contact Added in CiviCRM is planned to be subscribed while the brake holds the run;
    meanwhile the person turns up at Mailchimp unsubscribed (they signed up and left). The
    later choice stands: no subscribe (and no confirmation email) goes out, and CiviCRM follows
    Mailchimp at the next run."""
    contacts, run, _ = synced
    newcomer = world.person("late@example.org", civi="Added", civi_at=world.ago(hours=1))
    assert newcomer is not None
    for contact in contacts[:10]:
        world.civi.set_group_status(contact, world.group_id, "Removed")
    braked = run("fetch-and-reconcile")
    assert braked.exit_code == 1 and "unsubscribe 10 of 20" in braked.output, braked.output
    world.mc.seed_member(world.list_id, "late@example.org", "unsubscribed")  # now, after the plan

    allowed = run("fetch-and-reconcile", "--allow-mass-changes")
    assert allowed.exit_code == 0, allowed.output
    assert world.mc_status("late@example.org") == "unsubscribed"
    assert all(world.mc_status(f"p{n}@example.org") == "unsubscribed" for n in range(10))
    assert run("fetch-and-reconcile").exit_code == 0
    assert world.mc_status("late@example.org") == "unsubscribed"
    assert world.civi_status(newcomer) == "Removed"


def test_brake_override_skips_a_subscribe_for_a_member_archived_meanwhile(
    world: World,
    synced,  # type: ignore[no-untyped-def]
) -> None:
    """Staff re-add a contact who had unsubscribed at Mailchimp, and the brake holds the plan
    to subscribe them; meanwhile the member is archived at Mailchimp (archived members are
    not in the member list). The archive is the later choice: the waiting write must not
    re-add the member, and CiviCRM follows the archive at the next run."""
    contacts, run, clock = synced
    world.mc.set_member_status(world.list_id, "p19@example.org", "unsubscribed")
    later = datetime.now(UTC) + timedelta(seconds=2)
    world.civi.set_group_status(contacts[19], world.group_id, "Added", when=later)
    for contact in contacts[:10]:
        world.civi.set_group_status(contact, world.group_id, "Removed")
    braked = run("fetch-and-reconcile")
    assert braked.exit_code == 1 and "unsubscribe 10 of 19" in braked.output, braked.output
    assert world.mc_status("p19@example.org") == "unsubscribed"
    clock.offset = -timedelta(seconds=5)  # a few seconds later
    world.mc.set_member_status(world.list_id, "p19@example.org", "archived")

    allowed = run("fetch-and-reconcile", "--allow-mass-changes")
    assert allowed.exit_code == 0, allowed.output
    assert world.mc_status("p19@example.org") == "archived"
    assert run("fetch-and-reconcile").exit_code == 0
    assert world.mc_status("p19@example.org") == "archived"
    assert world.civi_status(contacts[19]) == "Removed"


def test_brake_override_keeps_a_member_who_came_back_at_mailchimp_in_the_group(
    world: World,
    synced,  # type: ignore[no-untyped-def]
) -> None:
    """The other direction: the plan removes from CiviCRM three people who unsubscribed at
    Mailchimp; one of them subscribes again while the plan waits. Their group is left alone
    (not removed, then added back by the next run)."""
    contacts, run, clock = synced
    for n in range(3):
        world.mc.set_member_status(world.list_id, f"p{n}@example.org", "unsubscribed")
    assert run("fetch-and-reconcile").exit_code == 1
    clock.offset = -timedelta(seconds=5)  # a few seconds later
    world.mc.set_member_status(world.list_id, "p0@example.org", "subscribed")
    history = len(world.civi.query("SELECT id FROM subscription_history"))

    allowed = run("fetch-and-reconcile", "--allow-mass-changes")
    assert allowed.exit_code == 0, allowed.output
    assert [world.civi_status(c) for c in contacts[:3]] == ["Added", "Removed", "Removed"]
    assert run("fetch-and-reconcile").exit_code == 0
    assert world.civi_status(contacts[0]) == "Added"
    changed = world.civi.query(
        "SELECT contact_id FROM subscription_history WHERE id > ?", (history,)
    )
    assert contacts[0] not in {r["contact_id"] for r in changed}, "removed, then added back"


def test_brake_override_skips_a_subscribe_for_a_contact_who_opted_out_meanwhile(
    world: World,
    synced,  # type: ignore[no-untyped-def]
) -> None:
    """Opting out leaves no subscription history, only a newer `modified_date`: the planned
    subscribe of a contact who opted out while the plan waited is not sent either."""
    contacts, run, clock = synced
    newcomer = world.person("late@example.org", civi="Added", civi_at=world.ago(hours=1))
    assert newcomer is not None
    for contact in contacts[:10]:
        world.civi.set_group_status(contact, world.group_id, "Removed")
    assert run("fetch-and-reconcile").exit_code == 1
    clock.offset = -timedelta(seconds=5)  # a few seconds later
    world.civi.update_contact(newcomer, is_opt_out=True)

    allowed = run("fetch-and-reconcile", "--allow-mass-changes")
    assert allowed.exit_code == 0, allowed.output
    assert world.mc_status("late@example.org") is None
    assert run("fetch-and-reconcile").exit_code == 0
    assert world.mc_status("late@example.org") is None
    failures = json.loads(run("failures", "--json").output)
    assert [f["reason"] for f in failures if f["email"] == "late@example.org"] == ["privacy_flags"]


def test_a_dropped_unsubscribe_does_not_date_the_persons_own_unsubscribe_later(
    world: World,
    synced,  # type: ignore[no-untyped-def]
) -> None:
    """Found by the model test (brake_override, seed 1). The brake parks a plan that
    unsubscribes p0 (removed by staff); staff re-add p0 before the override, so that
    unsubscribe is overtaken and never sent. Later p0 unsubscribes at Mailchimp themselves:
    their own, newest choice. It must not be taken for the echo of the dropped write (dated at
    the old removal, older than the re-add), which made mcsync subscribe p0 again and keep
    them in the group."""
    contacts, run, clock = synced
    for contact in contacts[:10]:
        world.civi.set_group_status(contact, world.group_id, "Removed")
    braked = run("fetch-and-reconcile")
    assert braked.exit_code == 1 and "unsubscribe 10 of 20" in braked.output, braked.output
    clock.offset = -timedelta(seconds=5)  # a few seconds later
    world.civi.set_group_status(contacts[0], world.group_id, "Added")
    allowed = run("fetch-and-reconcile", "--allow-mass-changes")
    assert allowed.exit_code == 0, allowed.output
    assert world.mc_status("p0@example.org") == "subscribed"
    assert run("fetch-and-reconcile").exit_code == 0

    clock.offset = -timedelta(seconds=10)  # later still: the person's own choice
    world.mc.set_member_status(world.list_id, "p0@example.org", "unsubscribed")
    done = run("fetch-and-reconcile")
    assert done.exit_code == 0, done.output
    assert world.mc_status("p0@example.org") == "unsubscribed", "subscribed again by mcsync"
    assert world.civi_status(contacts[0]) == "Removed"


def test_writes_left_by_a_budget_pause_are_checked_when_the_run_resumes(
    make_world: Callable[..., World],
) -> None:
    """A run paused with Mailchimp writes queued resumes later; a contact re-added in CiviCRM
    in between is not unsubscribed by the old plan."""
    world = make_world()
    contacts, _ = _people_in_sync(world, 4)
    world.write_config("max_removal_share = 1.0")
    for contact in contacts[:3]:
        world.civi.set_group_status(contact, world.group_id, "Removed")
    paused = world.sync(budget=PauseAt(world, "push_mailchimp"))[0]
    assert paused.outcome is not None and paused.outcome.stage == "push_mailchimp"
    world.civi.set_group_status(contacts[0], world.group_id, "Added")
    resumed = world.sync()[0]
    assert resumed.error is None and resumed.outcome and resumed.outcome.completed
    assert world.mc_status("p0@example.org") == "subscribed"
    assert all(world.mc_status(f"p{n}@example.org") == "unsubscribed" for n in range(1, 3))
    assert world.sync()[0].error is None
    assert world.mc_status("p0@example.org") == "subscribed"
    assert world.civi_status(contacts[0]) == "Added"


class PauseAt(Budget):
    """A budget that runs out when the run reaches a stage (as --max-time would, untimed)."""

    def __init__(self, world: World, stage: str):
        super().__init__(None)
        self.world, self.stage = world, stage

    def check(self) -> None:
        staging = Staging(self.world.config.state_db)
        try:
            stage = staging.state(self.world.list_id).get("stage")
        finally:
            staging.close()
        if stage == self.stage:
            raise BudgetExhausted(f"paused at {stage} for the test")
        super().check()


# -- item 11: a run that lost its lease stops writing ---------------------------------------------


class TakeOverAfterFirstWrite(httpx.BaseTransport):
    """After the first matching write, another process holds the audience's lease (this one
    stalled past lease_seconds, say a suspended VM, and a newer run took over)."""

    def __init__(self, inner: httpx.BaseTransport, world: World, is_write: Callable[..., bool]):
        self.inner, self.world, self.is_write = inner, world, is_write
        self.writes = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if self.is_write(request):
            self.writes += 1
            if self.writes == 1:
                staging = Staging(self.world.config.state_db)
                with staging.atomic():
                    staging.execute(
                        "UPDATE audience_state SET lease_owner = 'other-host:1:newer', "
                        "lease_expires = ?",
                        (time.time() + 600,),
                    )
                staging.close()
        return response


def _group_save(request: httpx.Request) -> bool:
    return request.url.path.endswith("/GroupContact/save")


def _bulk_write(request: httpx.Request) -> bool:
    return request.method == "POST" and request.url.path.rstrip("/").count("/") == 3


def _batch_post(request: httpx.Request) -> bool:
    return request.method == "POST" and request.url.path.rstrip("/").endswith("/batches")


@pytest.mark.parametrize(
    ("side", "is_write"),
    [("civicrm", _group_save), ("mailchimp", _bulk_write), ("batches", _batch_post)],
)
def test_a_run_that_lost_its_lease_stops_before_its_next_write(
    make_world: Callable[..., World],
    monkeypatch: pytest.MonkeyPatch,
    side: str,
    is_write: Callable[..., bool],
) -> None:
    world = make_world(batch_threshold=2 if side == "batches" else 200)
    contacts, _ = _people_in_sync(world, 6)
    world.write_config("max_removal_share = 1.0", civicrm="write_chunk = 2")
    monkeypatch.setattr(push_mailchimp, "BULK_LIMIT", 2)
    monkeypatch.setattr(batches, "BATCH_SIZE", 2)
    if side == "civicrm":  # unsubscribed at Mailchimp: four CiviCRM removals, two chunks
        for n in range(4):
            world.mc.set_member_status(world.list_id, f"p{n}@example.org", "unsubscribed")
    elif side == "mailchimp":  # new in CiviCRM: four Mailchimp subscribes, two bulk chunks
        for n in range(4):
            world.person(f"new{n}@example.org", civi="Added")
    else:  # removed in CiviCRM: four Mailchimp unsubscribes, two chunks
        for contact in contacts[:4]:
            world.civi.set_group_status(contact, world.group_id, "Removed")
    taker = TakeOverAfterFirstWrite(world.transport, world, is_write)
    world.transport = taker  # type: ignore[assignment]

    result: Any = world.sync()[0]
    assert taker.writes == 1, f"{taker.writes} write chunks were sent after the lease was lost"
    assert result.busy and result.outcome is None
    staging = Staging(world.config.state_db)
    assert staging.state(world.list_id)["lease_owner"] == "other-host:1:newer"
    staging.close()

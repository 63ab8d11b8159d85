"""The run history (issue 15.1): every run is recorded however it ends — complete, budget,
busy, brake, failure, interrupted, killed — with its changes by kind and side, failures and
requests; old runs are pruned; `history` lists them and `status` shows the 24-hour trend."""

from __future__ import annotations

import functools
import itertools
import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from conftest import World
from e2e import Scenario, SimRequest, SimResponse, Tamper, civi_call, kill_group

from mcsync.budget import Budget
from mcsync.cli import main
from mcsync.config.load import load_config
from mcsync.errors import ConfigError, MassChangeBrake
from mcsync.runner.engine import AudienceResult, sync_audiences
from mcsync.store.database import Staging, iso, utc_now
from mcsync.store.history import Change, RunEnding


def history(world: World, *args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(
        main, ["history", "--json", *args, "--config", str(world.config_path)]
    )
    assert result.exit_code == 0, result.output
    runs: list[dict[str, Any]] = json.loads(result.output)
    return runs


def sync_with(world: World, transport: httpx.BaseTransport) -> list[AudienceResult]:
    return sync_audiences(world.config, budget=Budget(None), transport=transport)


def cli(world: World, *args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--config", str(world.config_path)])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_complete_run_is_recorded_with_its_changes_by_kind(world: World) -> None:
    world.person("both@example.org", mc="subscribed", civi="Added")
    world.person("new@example.org", mc="subscribed")  # a contact is created and Added
    world.person("civi@example.org", civi="Added")  # subscribed at Mailchimp
    world.person("left@example.org", mc="subscribed", civi="Removed", civi_at=world.ago(days=1))
    world.person("quit@example.org", mc="unsubscribed", mc_at=world.ago(days=1), civi="Added")
    [result] = world.sync()
    assert result.outcome is not None and result.outcome.completed

    [run] = history(world)
    assert run["outcome"] == "complete" and run["ended"] >= run["started"]
    assert run["changes"]["mailchimp"] == {
        "subscribes": 1,
        "unsubscribes": 1,
        "interest_changes": 0,
        "merge_field_updates": 0,
        "tag_updates": 0,
    }
    assert run["changes"]["civicrm"] == {
        "adds": 1,
        "removes": 1,
        "interest_changes": 0,
        "contacts_created": 1,
        "holds": 0,
        "emails_added": 0,
    }
    assert (run["changes_to_mailchimp"], run["changes_to_civicrm"]) == (2, 3)
    assert run["write_failures"] == 0 and run["failing_rows"] == 0 and run["error"] is None
    mc_gets = [r for r in world.mc.request_log if r[1].startswith("/3.0")]
    assert run["requests"]["mailchimp"] == len(mc_gets) > 0
    assert run["requests"]["civicrm"] == len(world.civi.request_log) > 0

    world.sync()  # nothing left to change: a second, empty run
    newest, older = history(world)
    assert newest["outcome"] == "complete" and newest["changes_to_mailchimp"] == 0
    assert older == run


def test_the_json_shape_is_stable(world: World) -> None:
    world.person("a@example.org", mc="subscribed", civi="Added")
    world.sync()
    [run] = history(world)
    assert set(run) == {
        "list_id",
        "group_id",
        "name",
        "started",
        "ended",
        "seconds",
        "outcome",
        "stage",
        "error",
        "changes_to_mailchimp",
        "changes_to_civicrm",
        "changes",
        "write_failures",
        "failing_rows",
        "requests",
    }
    assert set(run["requests"]) == {"mailchimp", "civicrm"}
    assert (run["list_id"], run["group_id"]) == (world.list_id, world.group_id)
    assert set(run["changes"]["mailchimp"]) | set(run["changes"]["civicrm"]) == {
        kind.value.split("_", 1)[1] for kind in Change
    }


def test_interest_changes_are_counted_on_both_sides(make_world: Any) -> None:
    world = make_world(interests=1)
    [(interest, group)] = world.interest_ids.items()
    when = world.ago(days=3)
    world.mc.seed_member(world.list_id, "a@example.org", "subscribed", last_changed=when)
    world.mc.seed_member(
        world.list_id, "b@example.org", "subscribed", interests={interest: True}, last_changed=when
    )
    a = world.person("a@example.org", civi="Added")
    world.person("b@example.org", civi="Added")
    world.civi.set_group_status(a, group, "Added", when=world.ago(days=1))
    [result] = world.sync()
    assert result.error is None and result.outcome is not None and result.outcome.completed
    assert world.mc.member(world.list_id, "a@example.org")["interests"][interest]
    [run] = history(world)
    assert run["changes"]["mailchimp"]["interest_changes"] == 1  # a's interest switched on
    assert run["changes"]["civicrm"]["interest_changes"] == 1  # b Added to the interest group
    assert run["changes"]["civicrm"]["adds"] == run["changes"]["mailchimp"]["subscribes"] == 0


def _tick(clock: Iterator[int]) -> float:
    return float(next(clock))


def test_a_run_stopped_by_its_budget_is_recorded_with_the_stage_reached(world: World) -> None:
    for n in range(5):
        world.person(f"p{n}@example.org", mc="subscribed")
    budget = Budget(6, clock=functools.partial(_tick, itertools.count()))
    [result] = world.sync(budget=budget)
    assert result.outcome is not None and not result.outcome.completed
    [run] = history(world)
    assert run["outcome"] == "budget" and run["stage"] == result.outcome.stage != "idle"
    world.sync()
    assert [r["outcome"] for r in history(world)] == ["complete", "budget"]


def test_a_budget_spent_before_an_audience_starts_is_a_budget_ending(world: World) -> None:
    world.person("a@example.org", mc="subscribed")
    budget = Budget(1, clock=functools.partial(_tick, itertools.count()))
    budget.remaining()  # the one second passes
    [result] = world.sync(budget=budget)
    assert result.outcome is None
    [run] = history(world)
    assert run["outcome"] == "budget" and run["requests"] == {"mailchimp": 0, "civicrm": 0}


def test_a_busy_audience_is_recorded_as_busy(world: World) -> None:
    world.person("a@example.org", mc="subscribed", civi="Added")
    world.sync()
    staging = Staging(world.config.state_db)
    try:
        assert staging.acquire_lease(world.list_id, "elsewhere:1:x", 300)
    finally:
        staging.close()
    [result] = world.sync()
    assert result.busy
    assert history(world)[0]["outcome"] == "busy"


def test_the_brake_is_recorded_with_its_message_and_no_changes(world: World) -> None:
    contacts = [world.person(f"p{n}@example.org", mc="subscribed", civi="Added") for n in range(20)]
    world.sync()
    for contact in contacts:
        assert contact is not None
        world.civi.set_group_status(contact, world.group_id, "Removed")
    [result] = world.sync()
    assert isinstance(result.error, MassChangeBrake)
    run = history(world)[0]
    assert run["outcome"] == "brake" and run["stage"] == "brake"
    assert "Mass-change brake" in run["error"]
    assert run["changes_to_mailchimp"] == run["changes_to_civicrm"] == 0


class RefuseCiviCRM(httpx.BaseTransport):
    """CiviCRM refusing the key (401) on every call."""

    def __init__(self, inner: httpx.BaseTransport):
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "civicrm.sim":
            return httpx.Response(401, json={"error_message": "Authentication failed"})
        return self.inner.handle_request(request)


def test_a_failed_run_is_recorded_with_its_error_and_no_secret(world: World) -> None:
    world.person("a@example.org", mc="subscribed", civi="Added")
    [result] = sync_with(world, RefuseCiviCRM(world.transport))
    assert result.error is not None
    [run] = history(world)
    assert run["outcome"] == "failure" and run["error"] == str(result.error)
    assert run["requests"]["civicrm"] >= 1
    for secret in world.config.secrets():
        assert secret not in json.dumps(run)
    assert "1 failure" in cli(world, "status").splitlines()[0]


class InterruptAt(httpx.BaseTransport):
    """Ctrl-C arriving while CiviCRM group changes are being written."""

    def __init__(self, inner: httpx.BaseTransport):
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/GroupContact/save"):
            raise KeyboardInterrupt
        return self.inner.handle_request(request)


def test_an_interrupted_run_is_recorded_as_a_failure_and_the_interrupt_goes_on(
    world: World,
) -> None:
    world.person("a@example.org", mc="subscribed")
    with pytest.raises(KeyboardInterrupt):
        sync_with(world, InterruptAt(world.transport))
    [run] = history(world)
    assert run["outcome"] == "failure" and "interrupted" in run["error"]
    assert run["changes"]["civicrm"]["contacts_created"] == 1  # counted before the interrupt


def test_a_dry_run_is_not_a_run_of_the_history(world: World) -> None:
    world.person("a@example.org", mc="subscribed")
    [result] = world.sync(dry_run=True)
    assert result.outcome is not None and result.outcome.stage == "push_civicrm"
    assert history(world) == []


def test_old_runs_are_pruned_as_runs_are_recorded(world: World) -> None:
    world.write_config("history_days = 2")
    world.person("a@example.org", mc="subscribed", civi="Added")
    staging = Staging(world.config.state_db)
    try:
        now = utc_now()
        for days in (3, 2.1, 1.9):
            staging.record_run_start(
                world.list_id, world.group_id, iso(now - timedelta(days=days)) or "", "idle"
            )
    finally:
        staging.close()
    assert len(history(world)) == 3  # listing prunes nothing
    world.sync()
    kept = history(world)
    assert [r["outcome"] for r in kept] == ["complete", "unfinished"]
    assert kept[1]["started"] == iso(now - timedelta(days=1.9))


def test_history_days_is_validated() -> None:
    for bad in ("0", "-5", '"ninety"'):
        path = Path("bad.toml")
        path.write_text(
            '[civicrm]\nurl = "https://c.example.org/api4"\napi_key = "k"\ntimezone = "UTC"\n'
            '[mailchimp.accounts.main]\napi_key = "k-us1"\n'
            f"[sync]\nhistory_days = {bad}\n"
        )
        path.chmod(0o600)
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert "history_days" in str(caught.value)


def test_plain_history_is_aligned_columns_with_a_header(world: World) -> None:
    world.person("a@example.org", mc="subscribed")
    world.sync()
    world.sync()
    title, *lines = cli(world, "history").splitlines()
    assert title == "run history"
    assert lines[0].split()[:3] == ["started", "group", "took"]
    assert len(lines) == 3 and "=" not in "".join(lines)
    # Columns line up: "ended" sits at the same offset in the header and in each run.
    column = lines[0].index("ended")
    assert all(line[column:].startswith("complete") for line in lines[1:])
    assert "+1 -0, 1 other" in lines[2]  # the first run created a@'s contact and Added it
    assert cli(world, "history", "--limit", "1").count("complete") == 1


def test_status_shows_the_trend_in_one_line(world: World) -> None:
    world.person("a@example.org", mc="subscribed")
    world.person("b@example.org", civi="Added")
    world.sync()
    world.sync()
    first = cli(world, "status").splitlines()[0]
    assert first == "last 24 h: 2 runs, 3 changes, 0 failures"


def test_history_filters_by_group(make_world: Any, tmp_path: Path) -> None:
    world = make_world()
    world.person("a@example.org", mc="subscribed")
    world.sync()
    assert len(history(world, "--group-id", str(world.group_id))) == 1
    result = CliRunner().invoke(
        main, ["history", "--group-id", "999", "--config", str(world.config_path)]
    )
    assert result.exit_code == 2 and "no [[audience]] has group_id = 999" in result.output


def test_a_killed_run_stays_unfinished(tmp_path: Path) -> None:
    """SIGKILL while CiviCRM answers a group write: the run's row has no end, `history`
    shows it unfinished, the next run is recorded beside it and `status` counts it."""
    scenario = Scenario(tmp_path / "kill", members=40, batch_delay=0.0)
    civicrm = Tamper(scenario.civicrm)
    reached, release = threading.Event(), threading.Event()

    def hold(request: SimRequest, forward: Any) -> SimResponse | None:
        if civi_call(request) in ("Contact.save", "GroupContact.save"):
            reached.set()
            release.wait(60)
        return None

    civicrm.add(hold, times=1)
    scenario.serve(civicrm=civicrm)
    try:
        process = scenario.start("fetch-and-reconcile")
        assert reached.wait(60), process.communicate()
        kill_group(process)
        release.set()
        with scenario.db() as db:
            rows = [dict(r) for r in db.execute("SELECT * FROM run_history")]
        assert len(rows) == 1 and rows[0]["ended"] is None and rows[0]["outcome"] is None
        with scenario.db() as db:
            stopped_at = db.execute("SELECT stage FROM audience_state").fetchone()[0]
        assert stopped_at in ("create_contacts", "push_civicrm")
        run = scenario.run("fetch-and-reconcile")
        assert run.code == 0, (run, scenario.servers[1].errors[-1:])
        listed = json.loads(scenario.run("history", "--json").out)
        assert [r["outcome"] for r in listed] == ["complete", "unfinished"]
        assert listed[1]["stage"] == stopped_at  # where the next run found it
        assert listed[1]["ended"] is None and listed[1]["seconds"] is None
        assert "unfinished" in scenario.run("history").out
        trend = scenario.run("status").out.splitlines()[0]
        assert trend.startswith("last 24 h: 2 runs,") and "1 unfinished" in trend
    finally:
        release.set()
        scenario.stop()


def test_recording_is_one_row_per_run_per_audience(tmp_path: Path) -> None:
    scenario = Scenario(tmp_path / "two", members=30, audiences=2, batch_delay=0.0).serve()
    try:
        started = time.monotonic()
        assert scenario.run("fetch-and-reconcile").code == 0
        assert time.monotonic() - started < 120
        listed = json.loads(scenario.run("history", "--json").out)
        assert sorted(r["group_id"] for r in listed) == sorted(scenario.group_ids)
        assert all(r["outcome"] == RunEnding.COMPLETE for r in listed)
    finally:
        scenario.stop()

"""`--dry-run`: plans per contact, writes nothing to either simulator, and the next real run
makes exactly the planned changes."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner
from conftest import World

from mcsync.cli import main
from mcsync.runner import engine

SCHEMA = json.loads((Path(__file__).parents[1] / "mcsync/ops/status_schema.json").read_text())
PLAN_SCHEMA = {"$defs": SCHEMA["$defs"], "$ref": "#/$defs/plan"}


@pytest.fixture
def cli(world: World, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Run the CLI against the world's in-process simulators."""
    monkeypatch.setattr(
        engine,
        "sync_audiences",
        functools.partial(engine.sync_audiences, transport=world.transport),
    )

    def run(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, [*args, "--config", str(world.config_path)])

    return run


def people(world: World) -> dict[str, int | None]:
    return {
        "both": world.person("both@example.org", mc="subscribed", civi="Added"),
        "left_mc": world.person(
            "left@example.org",
            mc="unsubscribed",
            civi="Added",
            mc_at=world.ago(days=1),
            civi_at=world.ago(days=10),
        ),
        "new_mc": world.person("new@example.org", mc="subscribed"),
        "civi_only": world.person("civi@example.org", civi="Added"),
    }


def test_initial_sync_dry_run_writes_nothing_then_real_run_does_the_plan(world: World, cli) -> None:  # type: ignore[no-untyped-def]
    who = people(world)
    result = cli("initial-sync", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert world.writes() == []
    plan = json.loads(result.output)
    jsonschema.validate(plan, PLAN_SCHEMA)
    [audience] = plan["audiences"]
    assert audience["brake"] is None
    assert audience["totals"] == {
        "civicrm_removals": 1,
        "contacts_to_create": 1,
        "mailchimp_subscribes": 1,
    }
    changes = {
        (c["contact_id"], c["email"], c["direction"], c["change"]) for c in audience["changes"]
    }
    assert (
        who["left_mc"],
        "left@example.org",
        "CiviCRM",
        f"Remove from group {world.group_id}",
    ) in changes
    assert (None, "new@example.org", "CiviCRM", "create contact and Add to group") in changes
    assert (who["civi_only"], "civi@example.org", "Mailchimp", "subscribed") in changes

    again = cli("initial-sync", "--dry-run", "--json")  # the plan is repeatable
    assert json.loads(again.output) == plan and world.writes() == []

    real = cli("initial-sync", "--yes")
    assert real.exit_code == 0, real.output
    methods = sorted(w[0] for w in world.writes())
    assert world.civi_status(who["left_mc"]) == "Removed"  # type: ignore[arg-type]
    assert world.mc_status("civi@example.org") == "subscribed"
    assert (
        len(world.civi.query("SELECT contact_id FROM email WHERE email = ?", ("new@example.org",)))
        == 1
    )
    mc_writes = [w for w in world.writes() if w in world.mc.request_log]
    assert mc_writes == [("POST", f"/3.0/lists/{world.list_id}")]  # one bulk subscribe
    assert methods  # CiviCRM writes: the removal, the new contact and its group


def test_text_plan_and_fetch_and_reconcile_dry_run(world: World, cli) -> None:  # type: ignore[no-untyped-def]
    people(world)
    assert cli("initial-sync", "--yes").exit_code == 0
    before = len(world.writes())
    world.mc.set_member_status(world.list_id, "both@example.org", "unsubscribed")
    result = cli("fetch-and-reconcile", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "Remove from group" in result.output and "both@example.org" in result.output
    assert "1 Removed from CiviCRM groups" in result.output
    assert "nothing was written" in result.output
    assert len(world.writes()) == before
    real = cli("fetch-and-reconcile")
    assert real.exit_code == 0, real.output
    assert len(world.writes()) == before + 1  # exactly the one planned removal


def test_json_needs_dry_run(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("fetch-and-reconcile", "--json")
    assert result.exit_code == 2 and "--dry-run" in result.output

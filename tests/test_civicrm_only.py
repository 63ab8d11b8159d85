"""`--civicrm-only`: a run writes the CiviCRM side of its plan and keeps the Mailchimp writes
queued (listed by `--dry-run --json`, `status` and `lookup`); a later normal run sends them,
after deciding their contacts again on fresh data (a newer change drops a held write)."""

from __future__ import annotations

import functools
import json

import pytest
from click.testing import CliRunner
from conftest import World

from mcsync.cli import main
from mcsync.ops import lookup as lookup_module
from mcsync.runner import engine


@pytest.fixture
def cli(world: World, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    for module in (engine, lookup_module):
        monkeypatch.setattr(
            module, "connections", functools.partial(engine.connections, transport=world.transport)
        )
    monkeypatch.setattr(
        engine,
        "sync_audiences",
        functools.partial(engine.sync_audiences, transport=world.transport),
    )

    def run(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, [*args, "--config", str(world.config_path), "-v"])

    return run


def mailchimp_writes(world: World) -> list[tuple[str, str]]:
    return [w for w in world.writes() if w in world.mc.request_log]


def test_civicrm_only_holds_mailchimp_writes_until_a_normal_run(world: World, cli) -> None:  # type: ignore[no-untyped-def]
    world.person("ann@example.org", civi="Added")  # to subscribe at Mailchimp
    world.person("bob@example.org", mc="subscribed")  # a contact to create in CiviCRM
    world.person("cy@example.org", mc="subscribed", civi="Added")
    result = cli("initial-sync", "--yes", "--civicrm-only")
    assert result.exit_code == 0, result.output
    assert "kept queued" in result.output
    assert mailchimp_writes(world) == []
    assert world.mc_status("ann@example.org") is None
    [bob] = world.civi.query(
        "SELECT contact_id FROM email WHERE email = 'bob@example.org'"
    )  # CiviCRM side applied
    assert world.civi_status(bob["contact_id"]) == "Added"

    status = json.loads(cli("status", "--json").output)[0]
    assert status["counts"]["updates_queued"] == 1 and not status["in_sync"]
    [row] = json.loads(cli("lookup", "ann@example.org", "--json").output)["audiences"][0]["rows"]
    [write] = row["mailchimp_writes"]
    assert write["state"] == "queued" and write["change"]["status"] == "subscribed"

    plan = json.loads(cli("fetch-and-reconcile", "--dry-run", "--json").output)
    [audience] = plan["audiences"]
    assert [(c["email"], c["direction"]) for c in audience["changes"]] == [
        ("ann@example.org", "Mailchimp")
    ]
    assert mailchimp_writes(world) == []

    again = cli("fetch-and-reconcile", "--civicrm-only")  # still held
    assert again.exit_code == 0, again.output
    assert world.mc_status("ann@example.org") is None

    normal = cli("fetch-and-reconcile")
    assert normal.exit_code == 0, normal.output
    assert world.mc_status("ann@example.org") == "subscribed"
    assert json.loads(cli("status", "--json").output)[0]["in_sync"]


def test_a_held_write_overtaken_by_a_newer_change_is_not_sent(world: World, cli) -> None:  # type: ignore[no-untyped-def]
    ann = world.person("ann@example.org", civi="Added")
    world.person("cy@example.org", mc="subscribed", civi="Added")
    assert cli("initial-sync", "--yes", "--civicrm-only").exit_code == 0
    # Staff take Ann out of the group after the plan to subscribe her was made.
    world.advance_clock(minutes=5)
    world.civi.set_group_status(ann, world.group_id, "Removed", when=world.ago(seconds=1))  # type: ignore[arg-type]
    normal = cli("fetch-and-reconcile")
    assert normal.exit_code == 0, normal.output
    assert world.mc_status("ann@example.org") is None  # never subscribed
    [row] = json.loads(cli("lookup", "ann@example.org", "--json").output)["audiences"][0]["rows"]
    assert [w["state"] for w in row["mailchimp_writes"]] == ["aborted"]
    assert json.loads(cli("status", "--json").output)[0]["counts"]["updates_queued"] == 0

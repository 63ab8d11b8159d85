"""`mcsync lookup`: one person as mcsync last saw them on both sides (statuses, change times,
group history, interests, merge fields sent), the last decision and why, queued writes and
failures; `--live` beside it. End to end through the CLI against the simulators."""

from __future__ import annotations

import functools
import json
from datetime import timedelta

import pytest
from click.testing import CliRunner
from conftest import World

from mcsync.budget import Budget
from mcsync.cli import main
from mcsync.ops import lookup as lookup_module
from mcsync.runner import engine


@pytest.fixture
def cli(world: World, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Run the CLI against the world's in-process simulators."""
    for module in (engine, lookup_module):
        monkeypatch.setattr(
            module,
            "connections",
            functools.partial(engine.connections, transport=world.transport),
        )
    monkeypatch.setattr(
        engine,
        "sync_audiences",
        functools.partial(engine.sync_audiences, transport=world.transport),
    )

    def run(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, [*args, "--config", str(world.config_path)])

    return run


def test_lookup_shows_both_sides_the_decision_and_why(world: World, cli) -> None:  # type: ignore[no-untyped-def]
    contact = world.person(
        "Ann.Example@Example.org",
        mc="cleaned",
        civi="Added",
        mc_at=world.ago(days=9),
        civi_at=world.ago(days=1),
        first="Ann",
        last="Example",
    )
    world.person("other@example.org", mc="subscribed", civi="Added")
    assert world.sync()[0].error is None

    # Matched case-insensitively (fold_email), by address or by contact id.
    by_email = cli("lookup", "ann.example@EXAMPLE.org", "--json")
    assert by_email.exit_code == 0, by_email.output
    view = json.loads(by_email.output)
    assert [c["contact_id"] for c in view["contacts"]] == [contact]
    [audience] = view["audiences"]
    [row] = audience["rows"]
    assert row["contact_id"] == contact
    assert row["mailchimp"]["status"] == "cleaned"
    assert row["mailchimp"]["status_changed_at"] is not None
    [group] = row["civicrm"]["groups"]
    assert group["group_id"] == world.group_id and group["role"] == "subscription"
    assert group["status"] == "Added"
    decision = row["decision"]
    assert decision["sync_status"] == "fail"
    assert decision["reason"] == "cleaned"
    assert "cleaned this address" in decision["explanation"]
    assert view["contacts"][0]["emails"][0]["on_hold"] == 1  # mcsync held it
    assert view["live"] is None

    by_id = json.loads(cli("lookup", "--contact-id", str(contact), "--json").output)
    assert by_id["audiences"][0]["rows"][0]["row_id"] == row["row_id"]

    text = cli("lookup", "ann.example@example.org")
    assert text.exit_code == 0, text.output
    assert "Mailchimp status:" in text.output and "cleaned" in text.output
    assert "why:" in text.output and "What to do" not in text.output
    assert "what to do:" in text.output


def test_lookup_shows_queued_writes_and_live_state(world: World, cli) -> None:  # type: ignore[no-untyped-def]
    world.batch_threshold = 1
    world.write_config()
    world.mc._batches.delay = timedelta(seconds=600)
    contact = world.person("new@example.org", civi="Added", first="Nina")
    result = world.sync(budget=Budget(2.5))[0]
    assert result.outcome is not None and not result.outcome.completed
    view = json.loads(cli("lookup", "new@example.org", "--json").output)
    [row] = view["audiences"][0]["rows"]
    assert row["mailchimp"] is None
    assert row["decision"]["sync_status"] == "live"
    [write] = row["mailchimp_writes"]
    assert write["state"] == "submitted" and write["change"]["status"] == "subscribed"

    # A change at each side since: the live view shows it beside the staged one.
    world.civi.set_group_status(contact, world.group_id, "Removed")  # type: ignore[arg-type]
    live = cli("lookup", "new@example.org", "--live", "--json")
    assert live.exit_code == 0, live.output
    view = json.loads(live.output)
    [member] = view["live"]["mailchimp"]
    assert member["email"] == "new@example.org"
    [group] = view["live"]["civicrm"]["groups"]
    assert group["status"] == "Removed" and group["history_status"] == "Removed"
    assert view["audiences"][0]["rows"][0]["civicrm"]["groups"][0]["status"] == "Added"
    text = cli("lookup", "new@example.org", "--live")
    assert "staged vs live" in text.output
    assert "Removed" in text.output


def test_lookup_of_an_unknown_person_and_bad_input(world: World, cli) -> None:  # type: ignore[no-untyped-def]
    world.person("someone@example.org", mc="subscribed", civi="Added")
    assert world.sync()[0].error is None
    result = cli("lookup", "nobody@example.org")
    assert result.exit_code == 0
    assert "nothing staged about nobody@example.org" in result.output
    assert cli("lookup").exit_code == 2
    assert cli("lookup", "x@example.org", "--contact-id", "3").exit_code == 2
    assert cli("lookup", "12").exit_code == 2

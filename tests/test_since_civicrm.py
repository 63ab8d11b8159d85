"""`--since DATE` re-checks both sides from that date: the Mailchimp window and CiviCRM's
subscription history and modified contacts (issue 13.8). It only ever widens what is read."""

from __future__ import annotations

import functools
from datetime import timedelta

import pytest
from click.testing import CliRunner
from conftest import World

from mcsync.cli import main
from mcsync.runner import engine
from mcsync.store.database import Staging


@pytest.fixture
def cli(world: World, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(
        engine,
        "sync_audiences",
        functools.partial(engine.sync_audiences, transport=world.transport),
    )

    def run(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, [*args, "--config", str(world.config_path)])

    return run


def forget_civicrm_changes(world: World) -> None:
    """Staging's CiviCRM marks moved past changes it never read (a DB restored from a backup
    taken later, say): normal runs read only after the marks."""
    top = world.civi.query("SELECT MAX(id) AS id FROM subscription_history")[0]["id"]
    staging = Staging(world.config.state_db)
    with staging.atomic():
        staging.set_state(world.list_id, history_bookmark=top, modified_since=world.civi.now())
    staging.close()


def test_since_rereads_civicrm_history_and_modified_contacts(world: World, cli) -> None:  # type: ignore[no-untyped-def]
    removed = world.person("ann@example.org", mc="subscribed", civi="Added")
    flagged = world.person("bob@example.org", mc="subscribed", civi="Added")
    assert cli("initial-sync", "--yes").exit_code == 0
    world.advance_clock(hours=1)
    world.civi.set_group_status(removed, world.group_id, "Removed", when=world.ago(minutes=1))  # type: ignore[arg-type]
    world.civi.update_contact(flagged, do_not_email=1)  # type: ignore[arg-type]
    world.advance_clock(hours=5)
    forget_civicrm_changes(world)

    assert cli("fetch-and-reconcile").exit_code == 0
    assert world.mc_status("ann@example.org") == "subscribed"  # missed
    assert world.mc_status("bob@example.org") == "subscribed"

    since = (world.clock() - timedelta(days=1)).date().isoformat()
    result = cli("fetch-and-reconcile", "--since", since, "--allow-mass-changes")
    assert result.exit_code == 0, result.output
    assert world.mc_status("ann@example.org") == "unsubscribed"
    assert world.mc_status("bob@example.org") == "unsubscribed"


def test_since_never_narrows_the_civicrm_window(world: World, cli) -> None:  # type: ignore[no-untyped-def]
    contact = world.person("cy@example.org", mc="subscribed", civi="Added")
    assert cli("initial-sync", "--yes").exit_code == 0
    world.civi.set_group_status(contact, world.group_id, "Removed", when=world.ago(minutes=1))  # type: ignore[arg-type]
    tomorrow = (world.clock() + timedelta(days=1)).date().isoformat()
    assert cli("fetch-and-reconcile", "--since", tomorrow).exit_code == 0
    assert world.mc_status("cy@example.org") == "unsubscribed"

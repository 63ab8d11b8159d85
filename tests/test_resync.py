"""`mcsync resync`: one person read afresh from both services and decided again by the next
run, or with `--now` synced at once for that person only. End to end through the CLI."""

from __future__ import annotations

import functools
import json
from datetime import timedelta

import pytest
from click.testing import CliRunner
from conftest import World

from mcsync.cli import main
from mcsync.ops import lookup as lookup_module
from mcsync.ops import resync as resync_module
from mcsync.runner import engine
from mcsync.store.database import Staging


@pytest.fixture
def cli(world: World, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    for module in (engine, lookup_module, resync_module):
        monkeypatch.setattr(
            module, "connections", functools.partial(engine.connections, transport=world.transport)
        )
    monkeypatch.setattr(
        engine,
        "sync_audiences",
        functools.partial(engine.sync_audiences, transport=world.transport),
    )

    def run(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, [*args, "--config", str(world.config_path)])

    return run


def missed_unsubscribe(world: World, email: str) -> None:
    """An unsubscribe at Mailchimp dated before the next run's window (as a change the paging
    skipped would be): normal incremental runs never read it."""
    world.clock_offset = -timedelta(hours=3)
    world.mc.set_member_status(world.list_id, email, "unsubscribed")
    world.clock_offset = timedelta(0)


def test_resync_reads_afresh_and_the_next_run_decides(world: World, cli) -> None:  # type: ignore[no-untyped-def]
    contact = world.person(
        "Ann@Example.org", mc="subscribed", civi="Added", civi_at=world.ago(days=5)
    )
    assert world.sync()[0].error is None
    missed_unsubscribe(world, "Ann@Example.org")
    assert world.sync()[0].error is None
    assert world.civi_status(contact) == "Added"  # the change was missed  # type: ignore[arg-type]

    done = cli("resync", "ann@example.org")
    assert done.exit_code == 0, done.output
    assert "will be decided by the next run" in done.output
    assert world.civi_status(contact) == "Added"  # type: ignore[arg-type]  # nothing written yet
    [row] = json.loads(cli("lookup", "ann@example.org", "--json").output)["audiences"][0]["rows"]
    assert row["mailchimp"]["status"] == "unsubscribed"
    assert row["decision"]["sync_status"] == "todo"

    assert world.sync()[0].error is None
    assert world.civi_status(contact) == "Removed"  # type: ignore[arg-type]


def test_resync_now_syncs_that_person_only(world: World, cli) -> None:  # type: ignore[no-untyped-def]
    ann = world.person("ann@example.org", mc="subscribed", civi="Added")
    bob = world.person("bob@example.org", mc="subscribed", civi="Added")
    assert world.sync()[0].error is None
    # Staff remove both from the group in CiviCRM; only Ann is re-synced now.
    world.advance_clock(minutes=1)
    world.civi.set_group_status(ann, world.group_id, "Removed", when=world.ago(seconds=1))  # type: ignore[arg-type]
    world.civi.set_group_status(bob, world.group_id, "Removed", when=world.ago(seconds=1))  # type: ignore[arg-type]
    before = len(world.writes())

    done = cli("resync", "--contact-id", str(ann), "--now", "--json")
    assert done.exit_code == 0, done.output
    [result] = json.loads(done.output)
    assert result["outcome"] == "synced"
    assert world.mc_status("ann@example.org") == "unsubscribed"
    assert world.mc_status("bob@example.org") == "subscribed"  # not touched
    writes = world.writes()[before:]
    assert len(writes) == 1 and writes[0][0] == "PUT"  # one member write, Ann's unsubscribe
    staging = Staging(world.config.state_db)
    assert staging.state(world.list_id)["stage"] == "idle"
    assert staging.state(world.list_id)["cursor"] == 0
    staging.close()
    # The next normal run does Bob and leaves Ann as she is.
    assert world.sync()[0].error is None
    assert world.mc_status("bob@example.org") == "unsubscribed"
    assert world.mc_status("ann@example.org") == "unsubscribed"
    assert world.civi_status(ann) == "Removed"  # type: ignore[arg-type]


def test_resync_now_applies_a_mailchimp_change_to_civicrm(world: World, cli) -> None:  # type: ignore[no-untyped-def]
    contact = world.person(
        "cy@example.org", mc="subscribed", civi="Added", civi_at=world.ago(days=5)
    )
    assert world.sync()[0].error is None
    missed_unsubscribe(world, "cy@example.org")
    done = cli("resync", "cy@example.org", "--now")
    assert done.exit_code == 0, done.output
    assert "written now" in done.output
    assert world.civi_status(contact) == "Removed"  # type: ignore[arg-type]


def test_resync_refuses_politely_when_busy_or_part_way(world: World, cli) -> None:  # type: ignore[no-untyped-def]
    world.person("dee@example.org", mc="subscribed", civi="Added")
    assert world.sync()[0].error is None
    staging = Staging(world.config.state_db)
    assert staging.acquire_lease(world.list_id, "elsewhere:1:x", 600)
    busy = cli("resync", "dee@example.org", "--now")
    assert busy.exit_code == 0
    assert "busy with another mcsync run" in busy.output
    staging.release_lease(world.list_id, "elsewhere:1:x")
    with staging.atomic():
        staging.set_state(world.list_id, stage="push_mailchimp")
    staging.close()
    waiting = cli("resync", "dee@example.org")
    assert waiting.exit_code == 0
    assert "part-way through (at push_mailchimp)" in waiting.output
    assert cli("resync").exit_code == 2


def test_resync_of_someone_nobody_knows(world: World, cli) -> None:  # type: ignore[no-untyped-def]
    assert world.sync()[0].error is None
    done = cli("resync", "nobody@example.org")
    assert done.exit_code == 0, done.output
    assert "nothing to sync" in done.output


def test_resync_now_never_sends_a_held_write_a_newer_change_overtook(world: World, cli) -> None:  # type: ignore[no-untyped-def]
    ann = world.person("ann@example.org", civi="Added")
    world.person("cy@example.org", mc="subscribed", civi="Added")
    assert cli("initial-sync", "--yes", "--civicrm-only").exit_code == 0
    world.advance_clock(minutes=5)
    world.civi.set_group_status(ann, world.group_id, "Removed", when=world.ago(seconds=1))  # type: ignore[arg-type]
    done = cli("resync", "ann@example.org", "--now")
    assert done.exit_code == 0, done.output
    assert world.mc_status("ann@example.org") is None
    [row] = json.loads(cli("lookup", "ann@example.org", "--json").output)["audiences"][0]["rows"]
    assert [w["state"] for w in row["mailchimp_writes"]] == ["aborted"]


def test_resync_now_sends_a_held_write_that_still_holds(world: World, cli) -> None:  # type: ignore[no-untyped-def]
    world.person("ann@example.org", civi="Added")
    world.person("bob@example.org", civi="Added")
    world.person("cy@example.org", mc="subscribed", civi="Added")
    assert cli("initial-sync", "--yes", "--civicrm-only").exit_code == 0
    done = cli("resync", "ann@example.org", "--now")
    assert done.exit_code == 0, done.output
    assert world.mc_status("ann@example.org") == "subscribed"
    assert world.mc_status("bob@example.org") is None  # still held


def test_resync_now_dates_a_status_a_full_run_left_undated(world: World, cli) -> None:  # type: ignore[no-untyped-def]
    """Found by the model (prefer seed 13): a full run stages group statuses without dates
    (only disagreements get one); `resync --now` kept such an unchanged status undated, and
    with `prefer = "civicrm"` a staff removal from days ago was copied over the person's new
    sign-up at Mailchimp. The removal has its date in CiviCRM's history: the sign-up is later."""
    world.write_config('prefer = "civicrm"')
    contact = world.person("fay@example.org", civi="Removed", civi_at=world.ago(days=5))
    assert contact is not None
    assert world.sync(since="ever")[0].error is None
    world.advance_clock(minutes=5)
    world.mc.seed_member(world.list_id, "fay@example.org", "subscribed", last_changed=world.ago())
    done = cli("resync", "fay@example.org", "--now")
    assert done.exit_code == 0, done.output
    assert world.mc_status("fay@example.org") == "subscribed"
    assert world.civi_status(contact) == "Added"


def test_resync_now_dates_a_removal_mcsync_copied_by_the_choice_before_it(
    world: World, cli
) -> None:  # type: ignore[no-untyped-def]
    """Found by the model (seed 178): the person unsubscribed at Mailchimp, a run removed the
    contact from the group (its history row is mcsync's), then the person signed up again.
    `resync --now` left the copied removal undated, and with `prefer = "civicrm"` it won over
    the new sign-up. It is no CiviCRM choice: the last one people made there is older than
    the sign-up, which wins."""
    world.write_config('prefer = "civicrm"')
    contact = world.person(
        "gus@example.org", mc="subscribed", civi="Added", civi_at=world.ago(days=5)
    )
    assert contact is not None
    assert world.sync()[0].error is None
    world.advance_clock(minutes=5)
    world.mc.set_member_status(world.list_id, "gus@example.org", "unsubscribed")
    assert world.sync()[0].error is None
    assert world.civi_status(contact) == "Removed"
    world.advance_clock(minutes=5)
    assert world.sync(since="ever")[0].error is None  # stages the removal undated
    world.advance_clock(minutes=5)
    world.mc.set_member_status(world.list_id, "gus@example.org", "subscribed")
    done = cli("resync", "gus@example.org", "--now")
    assert done.exit_code == 0, done.output
    assert world.mc_status("gus@example.org") == "subscribed"
    assert world.civi_status(contact) == "Added"

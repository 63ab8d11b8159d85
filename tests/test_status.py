"""`mcsync status`: balance figures against a known staged state, run state, --json schema."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import jsonschema
from click.testing import CliRunner
from conftest import World

from mcsync.cli import main
from mcsync.ops.status import audience_status
from mcsync.store.database import Staging, iso, utc_now

SCHEMA = json.loads((Path(__file__).parents[1] / "mcsync/ops/status_schema.json").read_text())


def stage_known_state(world: World) -> Staging:
    """Seven rows, one per kind of figure (seed-behaviour §9.1), built directly."""
    staging = Staging(world.config.state_db)
    staging.ensure_audience(world.list_id, world.group_id, "main")
    rows = [  # (mc_status, contact_id, group status, sync_status, reason)
        ("subscribed", 1, "Added", "ok", None),
        ("subscribed", 2, "Added", "ok", None),
        (None, 3, "Added", "live", None),  # to add to Mailchimp
        ("subscribed", 4, "Removed", "live", None),  # to remove from Mailchimp
        ("cleaned", 5, "Added", "fail", "cleaned"),  # cannot subscribe
        ("unsubscribed", 6, None, "fail", "several_emails"),  # other failure
        ("subscribed", None, None, "todo", None),  # remaining
    ]
    with staging.atomic():
        for n, (mc, contact, group, sync, reason) in enumerate(rows, start=1):
            staging.execute(
                "INSERT INTO rows (id, list_id, mc_hash, mc_email, mc_status, contact_id, "
                "sync_status, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    n,
                    world.list_id,
                    f"h{n}" if mc else None,
                    f"p{n}@example.org" if mc else None,
                    mc,
                    contact,
                    sync,
                    reason,
                ),
            )
            if contact is not None:
                staging.execute("INSERT INTO contacts (contact_id) VALUES (?)", (contact,))
                staging.execute(
                    "INSERT INTO emails (email_id, contact_id, email, email_lc, is_primary) "
                    "VALUES (?, ?, ?, ?, 1)",
                    (contact, contact, f"c{contact}@example.org", f"c{contact}@example.org"),
                )
            if group is not None:
                staging.execute(
                    "INSERT INTO group_status (contact_id, group_id, status) VALUES (?, ?, ?)",
                    (contact, world.group_id, group),
                )
        for state in ("queued", "submitted", "submitting", "done", "failed"):
            staging.execute(
                "INSERT INTO updates (list_id, row_id, email, body, state, created_at) "
                "VALUES (?, 1, 'p1@example.org', '{}', ?, ?)",
                (world.list_id, state, iso(utc_now())),
            )
        for status in ("pending", "processed", "aborted"):
            staging.execute(
                "INSERT INTO batches (list_id, mc_batch_id, status, operations) "
                "VALUES (?, 'b', ?, 1)",
                (world.list_id, status),
            )
        staging.set_state(world.list_id, last_sync=iso(utc_now()), last_sync_seconds=12.5)
    return staging


def status_of(world: World) -> dict[str, Any]:
    staging = Staging(world.config.state_db)
    try:
        return audience_status(staging, world.config.audience[0])
    finally:
        staging.close()


def test_figures_of_a_known_staged_state(world: World) -> None:
    stage_known_state(world).close()
    status = status_of(world)
    assert status["counts"] == {
        "subscribed_at_mailchimp": 4,
        "added_in_civicrm": 4,
        "to_add": 1,
        "to_remove": 1,
        "cannot_subscribe": 1,
        "other_failures": 1,
        "remaining": 1,
        "updates_queued": 1,
        "updates_submitted": 2,
        "batches_in_flight": 1,
    }
    assert status["in_sync"] is False
    assert status["stage"] == "idle" and status["last_sync_seconds"] == 12.5
    assert status["possible_crash"] is None and status["problem"] is None
    jsonschema.validate([status], SCHEMA)


def test_a_converged_audience_is_in_sync_and_json_validates(world: World) -> None:
    world.person("a@example.org", mc="subscribed", civi="Added")
    world.person("b@example.org", civi="Added")
    world.person("c@example.org", mc="subscribed")
    assert world.sync()[0].outcome.completed  # type: ignore[union-attr]
    result = CliRunner().invoke(main, ["status", "--json", "--config", str(world.config_path)])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    jsonschema.validate(payload, SCHEMA)
    [status] = payload
    assert status["in_sync"] is True
    assert status["counts"]["subscribed_at_mailchimp"] == 3
    assert status["counts"]["added_in_civicrm"] == 3
    assert status["last_sync"] and status["last_sync_seconds"] is not None
    assert any("Run complete" in line["message"] for line in status["log"])


def test_never_synced_is_not_in_sync(world: World) -> None:
    Staging(world.config.state_db).close()
    status = status_of(world)
    assert status["in_sync"] is False and status["last_sync"] is None


def test_expired_lease_is_a_possible_crash(world: World) -> None:
    staging = stage_known_state(world)
    staging.set_state(
        world.list_id, stage="reconcile", lease_owner="host:1:x", lease_expires=time.time() - 5
    )
    staging.close()
    status = status_of(world)
    assert status["running"] is False
    assert "stopped renewing its lease" in status["possible_crash"]


def test_live_lease_is_running_with_progress(world: World) -> None:
    staging = stage_known_state(world)
    staging.set_state(
        world.list_id,
        stage="reconcile",
        mc_offset=700,
        run_started=iso(utc_now()),
        lease_owner="host:1:x",
        lease_expires=time.time() + 60,
    )
    staging.close()
    status = status_of(world)
    assert status["running"] is True and status["possible_crash"] is None
    progress = status["progress"]
    assert progress["mailchimp_fetched"] == 700 and progress["rows_to_reconcile"] == 1
    assert 0 < progress["stage_number"] <= progress["stage_count"]
    assert status["in_sync"] is False


def test_silent_log_for_30_minutes_is_a_possible_crash(world: World) -> None:
    staging = stage_known_state(world)
    staging.set_state(world.list_id, stage="push_mailchimp")
    staging.execute(
        "INSERT INTO log (list_id, at, level, message) VALUES (?, ?, 'info', 'Started')",
        (world.list_id, "2020-01-01T00:00:00+00:00"),
    )
    staging.close()
    assert "nothing has been logged for" in status_of(world)["possible_crash"]
    staging = Staging(world.config.state_db)
    staging.log(world.list_id, "still going")
    staging.close()
    assert status_of(world)["possible_crash"] is None


def test_an_error_since_the_last_sync_is_the_problem(world: World) -> None:
    staging = stage_known_state(world)
    staging.log(world.list_id, "Run failed: Mailchimp: 401", "error")
    staging.close()
    assert status_of(world)["problem"] == "Run failed: Mailchimp: 401"


def test_plain_status_names_every_figure(world: World) -> None:
    stage_known_state(world).close()
    result = CliRunner().invoke(main, ["status", "--config", str(world.config_path)])
    assert result.exit_code == 0, result.output
    assert re.search(r"subscribed at Mailchimp: +4\n", result.output)
    for label in (
        "Added in CiviCRM",
        "to add to Mailchimp",
        "to remove from Mailchimp",
        "cannot subscribe",
        "batches in flight",
        "NOT in sync",
        "took 12s",
    ):
        assert label in result.output

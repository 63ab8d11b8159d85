"""`mcsync abort`: cancel pending batches at Mailchimp, mark their updates failed "aborted",
discard unsubmitted updates and reset the run."""

from __future__ import annotations

import functools
import json
from datetime import timedelta

import pytest
from click.testing import CliRunner

from mcsync.budget import Budget
from mcsync.cli import main
from mcsync.ops import abort
from mcsync.runner import engine
from mcsync.store.database import Staging


def test_abort_cancels_batches_and_resets_the_run(  # type: ignore[no-untyped-def]
    make_world, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = make_world(batch_threshold=2)
    world.mc._batches.delay = timedelta(seconds=600)  # Mailchimp is slow today
    for n in range(5):
        world.person(f"p{n}@example.org", civi="Added")
    result = world.sync(budget=Budget(2.5))[0]
    assert result.outcome is not None and result.outcome.stage == "collect_batches"
    staging = Staging(world.config.state_db)
    [batch] = staging.query("SELECT mc_batch_id FROM batches")
    with staging.atomic():  # an update decided but not yet sent
        staging.execute(
            "INSERT INTO updates (list_id, row_id, email, body, created_at) "
            "VALUES (?, 1, 'p0@example.org', '{}', '2026-01-01T00:00:00+00:00')",
            (world.list_id,),
        )
    staging.close()

    monkeypatch.setattr(
        abort, "connections", functools.partial(engine.connections, transport=world.transport)
    )
    runner = CliRunner()
    args = ["--config", str(world.config_path)]
    done = runner.invoke(main, ["abort", "--group-id", str(world.group_id), *args])
    assert done.exit_code == 0, done.output
    assert "1 batches cancelled, 5 submitted updates marked failed, 1 unsubmitted" in done.output
    assert ("DELETE", f"/3.0/batches/{batch['mc_batch_id']}") in world.mc.request_log

    staging = Staging(world.config.state_db)
    states = dict(staging.query("SELECT state, COUNT(*) FROM updates GROUP BY state"))
    assert states == {"failed": 5, "aborted": 1}
    assert staging.scalar("SELECT COUNT(*) FROM updates WHERE error_title = 'aborted'") == 5
    assert staging.query("SELECT DISTINCT status FROM batches")[0][0] == "aborted"
    assert staging.state(world.list_id)["stage"] == "idle"
    staging.close()
    status = json.loads(runner.invoke(main, ["status", "--json", *args]).output)[0]
    assert status["counts"]["batches_in_flight"] == 0
    assert status["counts"]["updates_queued"] == status["counts"]["updates_submitted"] == 0
    assert "Aborted" in status["log"][-1]["message"]

    world.mc._batches.delay = timedelta(0)
    again = world.sync()[0]  # the next run starts afresh and finishes the job
    assert again.error is None and again.outcome and again.outcome.completed
    assert all(world.mc_status(f"p{n}@example.org") == "subscribed" for n in range(5))


def test_abort_needs_a_known_group(world) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(
        main, ["abort", "--group-id", "999", "--config", str(world.config_path)]
    )
    assert result.exit_code == 2
    assert CliRunner().invoke(main, ["abort", "--config", str(world.config_path)]).exit_code == 2

"""`mcsync prune`: the staging data of audiences no longer in the config is listed, and
deleted only when confirmed (`--yes`), never with writes on their way unless `--force`."""

from __future__ import annotations

import json

from click.testing import CliRunner
from conftest import MC_KEY, World

from mcsync.cli import main
from mcsync.store.database import Staging


def run(world: World, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, [*args, "--config", str(world.config_path)])


def move_to_new_audience(world: World) -> tuple[str, int]:
    """The config now names another audience; the old one's staging data is left behind."""
    old = (world.list_id, world.group_id)
    world.list_id = world.mc.add_list(MC_KEY, "Other")
    world.group_id = world.civi.add_group("Other")
    world.write_config()
    return old


def counts(world: World, list_id: str, group_id: int) -> dict[str, int]:
    staging = Staging(world.config.state_db)
    try:
        return {
            "rows": staging.scalar("SELECT COUNT(*) FROM rows WHERE list_id = ?", (list_id,)),
            "state": staging.scalar(
                "SELECT COUNT(*) FROM audience_state WHERE list_id = ?", (list_id,)
            ),
            "log": staging.scalar("SELECT COUNT(*) FROM log WHERE list_id = ?", (list_id,)),
            "groups": staging.scalar(
                "SELECT COUNT(*) FROM group_status WHERE group_id = ?", (group_id,)
            ),
            "contacts": staging.scalar("SELECT COUNT(*) FROM contacts"),
        }
    finally:
        staging.close()


def test_prune_lists_then_deletes_with_yes(world: World) -> None:
    world.person("ann@example.org", mc="subscribed", civi="Added")
    world.person("bob@example.org", civi="Added")
    assert world.sync()[0].error is None
    assert run(world, "prune").output.startswith("Nothing to prune")
    old_list, old_group = move_to_new_audience(world)
    assert world.sync()[0].error is None
    before = counts(world, old_list, old_group)
    assert before["rows"] == 2 and before["state"] == 1 and before["groups"] == 2

    listed = run(world, "prune")  # not a terminal, no --yes: list only
    assert listed.exit_code == 0, listed.output
    assert old_list in listed.output and "Nothing was deleted; add --yes" in listed.output
    assert counts(world, old_list, old_group) == before

    done = run(world, "prune", "--yes", "--json")
    assert done.exit_code == 0, done.output
    payload = json.loads(done.output)
    assert [a["list_id"] for a in payload["audiences"]] == [old_list]
    assert payload["deleted"][0]["deleted"]["rows"] == 2
    after = counts(world, old_list, old_group)
    assert after == {"rows": 0, "state": 0, "log": 0, "groups": 0, "contacts": before["contacts"]}
    # The configured audience is untouched and still syncs.
    status = json.loads(run(world, "status", "--json").output)
    assert [s["list_id"] for s in status] == [world.list_id]
    assert run(world, "prune").output.startswith("Nothing to prune")


def test_prune_refuses_with_writes_on_their_way_unless_forced(world: World) -> None:
    world.person("ann@example.org", mc="subscribed", civi="Added")
    assert world.sync()[0].error is None
    old_list, old_group = move_to_new_audience(world)
    staging = Staging(world.config.state_db)
    with staging.atomic():
        staging.execute(
            "INSERT INTO updates (list_id, row_id, email, body, created_at) VALUES "
            "(?, 1, 'ann@example.org', '{}', '2026-01-01T00:00:00+00:00')",
            (old_list,),
        )
    staging.close()
    refused = run(world, "prune", "--yes")
    assert refused.exit_code == 1
    assert "1 Mailchimp write(s) queued or in flight" in refused.output
    assert counts(world, old_list, old_group)["rows"] == 1
    forced = run(world, "prune", "--yes", "--force")
    assert forced.exit_code == 0, forced.output
    assert counts(world, old_list, old_group)["rows"] == 0


def test_prune_with_no_staging_db(world: World) -> None:
    result = run(world, "prune", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"audiences": [], "deleted": []}

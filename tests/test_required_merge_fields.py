"""Audiences with required merge fields (issue 13, item 3): Mailchimp refuses a subscribe that
leaves a required field empty unless the write says `skip_merge_validation`. mcsync sends it on
every member write by default (bulk, batch operation, single PUT), can be told not to, and
`config check` names the required fields nothing fills."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import World
from test_checks import check

from mcsync.ops.status import failures
from mcsync.store.database import Staging


def require_phone(world: World) -> None:
    world.mc.add_merge_field(world.list_id, "MEMBERNO", "Member number", required=True)


def failing_reasons(world: World) -> list[str]:
    staging = Staging(world.config.state_db)
    try:
        return [f["reason"] for f in failures(staging, world.config.audience[0])]
    finally:
        staging.close()


@pytest.mark.parametrize("threshold", [200, 1], ids=["bulk write", "batch operations"])
def test_a_contact_without_the_required_field_is_subscribed(
    make_world: Any, threshold: int
) -> None:
    world: World = make_world(batch_threshold=threshold)
    require_phone(world)
    world.person("ann@example.org", civi="Added", first="Ann")
    world.person("bob@example.org", civi="Added", first="Bob")
    results = world.sync()
    assert results[0].error is None and results[0].outcome.completed  # type: ignore[union-attr]
    assert world.mc_status("ann@example.org") == "subscribed"
    assert world.mc_status("bob@example.org") == "subscribed"
    assert failing_reasons(world) == []


@pytest.mark.parametrize("threshold", [200, 1], ids=["bulk write", "batch operations"])
def test_with_validation_on_mailchimp_refuses_and_the_contact_is_reported(
    make_world: Any, threshold: int
) -> None:
    world: World = make_world(batch_threshold=threshold)
    world.write_config("skip_merge_validation = false")
    require_phone(world)
    world.person("ann@example.org", civi="Added", first="Ann")
    world.sync()
    assert world.mc_status("ann@example.org") is None
    assert len(failing_reasons(world)) == 1


def test_the_per_audience_key_overrides_sync(world: World) -> None:
    world.write_config("skip_merge_validation = false")
    world.config_path.write_text(world.config_path.read_text() + "skip_merge_validation = true\n")
    assert world.config.settings_for(world.config.audience[0]).skip_merge_validation is True


def test_config_check_names_required_fields_nothing_fills(world: World, tmp_path: Path) -> None:
    require_phone(world)
    assert check(world, tmp_path).exit_code == 0  # sent with skip_merge_validation: a note only
    world.write_config("skip_merge_validation = false")
    strict = check(world, tmp_path)
    assert strict.exit_code == 2
    assert "audience[0].skip_merge_validation" in strict.output and "MEMBERNO" in strict.output
    mapped = check(world, tmp_path, 'MEMBERNO = "external_identifier"\n')
    assert mapped.exit_code == 0, mapped.output


def test_a_merge_field_update_of_a_member_missing_the_required_field_goes_through(
    world: World,
) -> None:
    world.config_path.write_text(
        world.config_path.read_text() + '[audience.merge_fields]\nFNAME = "first_name"\n'
    )
    world.person("cy@example.org", civi="Added", first="Cy")
    world.mc.seed_member(
        world.list_id, "cy@example.org", "subscribed", last_changed=world.ago(days=3)
    )
    require_phone(world)  # added after the member joined: the member's value is empty
    results = world.sync()
    assert results[0].error is None
    member = world.mc.member(world.list_id, "cy@example.org")
    assert member is not None and member["merge_fields"]["FNAME"] == "Cy"
    assert failing_reasons(world) == []

"""`mcsync failures`: every reason has a plain explanation and advice; filters; JSON schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner
from conftest import World

from mcsync.cli import main
from mcsync.ops.status import failures
from mcsync.rules.explanations import REASONS, explain
from mcsync.rules.reasons import Reason
from mcsync.store.database import Staging

SCHEMA = json.loads((Path(__file__).parents[1] / "mcsync/ops/status_schema.json").read_text())
FAILURES_SCHEMA = {**SCHEMA, "$ref": "#/$defs/failures"}
FAILURES_SCHEMA.pop("items")
FAILURES_SCHEMA.pop("type")


def test_every_reconcile_reason_is_explained() -> None:
    assert {r.value for r in Reason} | {"aborted"} == set(REASONS)
    explanations = [text for text, _ in REASONS.values()]
    advice = [text for _, text in REASONS.values()]
    assert len(set(explanations)) == len(explanations)
    assert all(len(text) > 30 for text in explanations + advice)


@pytest.mark.parametrize("reason", sorted(REASONS))
def test_each_reason_is_listed_with_its_advice(world: World, reason: str) -> None:
    staging = Staging(world.config.state_db)
    with staging.atomic():
        staging.execute(
            "INSERT INTO rows (list_id, mc_hash, mc_email, mc_status, contact_id, sync_status, "
            "reason, reason_detail) VALUES (?, 'h', 'x@example.org', 'subscribed', 7, "
            "'fail', ?, 'Invalid Resource — x looks fake')",
            (world.list_id, reason),
        )
        staging.execute(
            "INSERT INTO rows (list_id, mc_hash, mc_email, mc_status, sync_status) "
            "VALUES (?, 'ok', 'fine@example.org', 'subscribed', 'ok')",
            (world.list_id,),
        )
    [row] = failures(staging, world.config.audience[0])
    staging.close()
    assert row["reason"] == reason
    assert (row["explanation"], row["advice"]) == REASONS[reason]
    assert row["detail"] == "Invalid Resource — x looks fake"
    result = CliRunner().invoke(
        main, ["failures", "--json", "--reason", reason, "--config", str(world.config_path)]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    jsonschema.validate(payload, FAILURES_SCHEMA)
    assert [f["email"] for f in payload] == ["x@example.org"]


def test_unknown_reason_code_is_shown_as_is() -> None:
    assert explain("brand_new")[0] == "brand_new"
    assert explain(None)[0] == "unknown"


def test_failures_from_a_real_sync(world: World) -> None:
    cleaned = world.person(
        "gone@example.org",
        mc="cleaned",
        civi="Added",
        mc_at=world.ago(days=9),
        civi_at=world.ago(days=1),
    )
    private = world.person("quiet@example.org", civi="Added", do_not_email=1)
    world.person("ok@example.org", mc="subscribed", civi="Added")
    assert world.sync()[0].error is None
    runner = CliRunner()
    args = ["--config", str(world.config_path)]
    payload = json.loads(runner.invoke(main, ["failures", "--json", *args]).output)
    jsonschema.validate(payload, FAILURES_SCHEMA)
    reasons = {f["contact_id"]: f["reason"] for f in payload}
    assert reasons == {cleaned: "cleaned", private: "privacy_flags"}
    civicrm_only = [f for f in payload if f["contact_id"] == private][0]
    assert civicrm_only["email"] == "quiet@example.org"  # the contact's email, not Mailchimp's

    text = runner.invoke(main, ["failures", *args])
    assert text.exit_code == 0
    assert "2 contacts cannot sync" in text.output
    assert REASONS["cleaned"][1] in text.output and REASONS["privacy_flags"][1] in text.output
    only = runner.invoke(main, ["failures", "--reason", "cleaned", *args])
    assert "gone@example.org" in only.output and "quiet@example.org" not in only.output
    bad = runner.invoke(main, ["failures", "--reason", "nonsense", *args])
    assert bad.exit_code == 2 and "cleaned" in bad.output


def test_no_failures_says_so(world: World) -> None:
    world.person("ok@example.org", mc="subscribed", civi="Added")
    world.sync()
    result = CliRunner().invoke(main, ["failures", "--config", str(world.config_path)])
    assert result.exit_code == 0 and "No contacts are failing" in result.output

"""Rows failed for a passing reason (a Mailchimp 5xx inside a batch, a CiviCRM error) are tried
again by normal incremental runs, with a bounded backoff; rows failed for a lasting reason
(cleaned, compliance, invalid email, privacy flags...) wait for a full run or a change, as
before. `mcsync failures` says when the next try is (issue 10, item 10)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner
from conftest import World

from mcsync.cli import main
from mcsync.rules.reasons import RETRY_CAP, RETRY_FIRST, Reason, is_retried, retry_delay
from mcsync.runner import audience as sync
from mcsync.store.database import Staging, utc_now

SCHEMA = json.loads((Path(__file__).parents[1] / "mcsync/ops/status_schema.json").read_text())
FAILURES_SCHEMA = {**SCHEMA, "$ref": "#/$defs/failures"}
FAILURES_SCHEMA.pop("items")
FAILURES_SCHEMA.pop("type")

FLAKY = "flaky@example.org"
INVALID = "typo@example.c"  # passes mcsync's syntax check, Mailchimp calls it fake


def failures(world: World) -> dict[str, dict[str, Any]]:
    result = CliRunner().invoke(main, ["failures", "--json", "--config", str(world.config_path)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    jsonschema.validate(rows, FAILURES_SCHEMA)
    return {row["email"]: row for row in rows}


def batch_operations_on(world: World, email: str) -> int:
    """How many batch operations so far were about this member."""
    return sum(
        email in (operation.body or "")
        for batch in world.mc.submitted_batches()
        for operation in batch.operations
    )


def run_started_full(world: World) -> bool:
    staging = Staging(world.config.state_db)
    try:
        return bool(staging.state(world.list_id)["run_full"])
    finally:
        staging.close()


def backdate_contacts(world: World) -> None:
    """Contacts last modified long ago, but one (the newest modified date is the mark the
    next run reads contacts from, so that one is read again by every run)."""
    world.civi.query("UPDATE contact SET modified_date = '2026-01-05 10:00:00'")
    newest = world.civi.add_contact("Newest", "Edit")
    world.civi.query(
        "UPDATE contact SET modified_date = '2026-06-01 10:00:00' WHERE id = ?", [newest]
    )


def settle(world: World) -> None:
    """Contacts made long ago, then the first (full) run and the first incremental one, after
    which a run decides again only what changed (rows of contacts modified during the last
    run's window are decided again by every run, which would hide what is tested here)."""
    backdate_contacts(world)
    world.sync()
    world.sync()


@pytest.fixture
def batched(make_world: Any) -> World:
    """Every Mailchimp write goes in a batch; two subscribed members in sync, whom staff
    then remove from the group in CiviCRM, so the next run unsubscribes both (and 30 others
    who stay, so the mass-change brake has no reason to stop it)."""
    world: World = make_world(batch_threshold=1)
    for n in range(30):
        world.person(f"other{n}@example.org", mc="subscribed", civi="Added")
    contacts = [
        world.person(email, mc="subscribed", civi="Added")
        for email in (FLAKY, "steady@example.org")
    ]
    settle(world)
    for contact_id in contacts:
        assert contact_id is not None
        world.civi.set_group_status(contact_id, world.group_id, "Removed")
    return world


def test_a_500_inside_a_batch_is_retried_by_the_next_incremental_run(batched: World) -> None:
    world = batched
    world.mc.fail_batch_operations(world.list_id, FLAKY, times=1)
    world.sync()
    assert world.mc_status(FLAKY) == "subscribed"
    assert world.mc_status("steady@example.org") == "unsubscribed"
    failed = failures(world)[FLAKY]
    assert failed["reason"] == "mailchimp_error"
    assert failed["retry_attempts"] == 1
    assert failed["next_try"] is not None  # the next run
    result = CliRunner().invoke(main, ["failures", "--config", str(world.config_path)])
    assert "next try" in result.output

    world.sync()
    assert not run_started_full(world)
    assert world.mc_status(FLAKY) == "unsubscribed"
    assert FLAKY not in failures(world)


def test_a_failing_row_backs_off_and_a_success_resets_it(
    batched: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = batched
    world.mc.fail_batch_operations(world.list_id, FLAKY, times=2)
    world.sync()  # fails (attempt 1): tried again by the next run
    world.sync()  # fails again (attempt 2): not before RETRY_FIRST has passed
    assert batch_operations_on(world, FLAKY) == 2
    assert failures(world)[FLAKY]["retry_attempts"] == 2
    world.sync()  # too early: the row is left alone
    assert batch_operations_on(world, FLAKY) == 2
    assert world.mc_status(FLAKY) == "subscribed"

    later = utc_now() + RETRY_FIRST + timedelta(minutes=1)
    monkeypatch.setattr(sync, "utc_now", lambda: later)
    world.sync()
    assert batch_operations_on(world, FLAKY) == 3
    assert world.mc_status(FLAKY) == "unsubscribed"
    assert FLAKY not in failures(world)


def test_lasting_failures_are_not_retried_by_incremental_runs(make_world: Any) -> None:
    world: World = make_world(batch_threshold=1)
    world.person(INVALID, civi="Added")
    settle(world)
    failed = failures(world)[INVALID]
    assert failed["reason"] == "invalid_email"
    assert failed["next_try"] is None
    operations = batch_operations_on(world, INVALID)
    world.sync()
    world.sync()
    assert not run_started_full(world)
    assert batch_operations_on(world, INVALID) == operations
    assert failures(world)[INVALID]["reason"] == "invalid_email"


def test_backoff_is_bounded() -> None:
    delays = [retry_delay(n) for n in range(1, 40)]
    assert delays[0] == timedelta(0)  # the first failure is tried again by the next run
    assert delays[1] == RETRY_FIRST
    assert delays[2] == 2 * RETRY_FIRST
    assert all(a <= b for a, b in zip(delays, delays[1:], strict=False))
    assert max(delays) == RETRY_CAP == timedelta(days=1)


@pytest.mark.parametrize(
    ("reason", "status", "retried"),
    [
        (Reason.MAILCHIMP_ERROR, 500, True),
        (Reason.MAILCHIMP_ERROR, 503, True),
        (Reason.MAILCHIMP_ERROR, 429, True),
        (Reason.CIVICRM_ERROR, None, True),
        (Reason.BAD_RESULT, 0, True),
        (Reason.MAILCHIMP_ERROR, 400, False),
        (Reason.CLEANED, None, False),
        (Reason.COMPLIANCE, 400, False),
        (Reason.INVALID_EMAIL, 400, False),
        (Reason.SEVERAL_EMAILS, None, False),
        (Reason.PRIVACY_FLAGS, None, False),
        (Reason.MEMBER_EXISTS, 400, False),
    ],
)
def test_which_failures_are_retried(reason: Reason, status: int | None, retried: bool) -> None:
    assert is_retried(reason, status) is retried


def test_a_civicrm_error_is_retried_by_the_next_incremental_run(world: World) -> None:
    from urllib.parse import unquote_plus

    from mcsync.sim.base import SimRequest, SimResponse

    good = world.person("good@example.org", mc="subscribed", civi="none")
    bad = world.person("bad@example.org", mc="subscribed", civi="none")
    assert good is not None and bad is not None
    real = world.civi.handle
    refusing = [True]

    def refuse_bad(request: SimRequest) -> SimResponse:
        if (
            refusing[0]
            and request.path.endswith("/GroupContact/save")
            and f'"contact_id": {bad}' in unquote_plus(request.body.decode())
        ):
            return SimResponse.json(500, {"error_code": 0, "error_message": "Permission denied"})
        return real(request)

    world.civi.handle = refuse_bad  # type: ignore[method-assign]
    backdate_contacts(world)
    world.sync()
    assert world.civi_status(good) == "Added"
    assert world.civi_status(bad) is None
    failed = failures(world)["bad@example.org"]
    assert failed["reason"] == "civicrm_error"
    assert failed["next_try"] is not None
    refusing[0] = False  # an admin fixed the ACL
    world.sync()
    assert not run_started_full(world)
    assert world.civi_status(bad) == "Added"
    assert "bad@example.org" not in failures(world)

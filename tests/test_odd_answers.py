"""Answers of an unexpected shape from either API (issue 11 leftovers, item 3): a list where
an object is expected, a string for a number, an object for a string, a missing value. Each
must end as one of mcsync's errors (an ApiError naming what was asked, no secret) or be
absorbed (a member write whose answer cannot be read fails with `bad_result`), never as a
Python TypeError/AttributeError/KeyError/ValueError traceback.

The cases are fuzz-ish: every occurrence of one key in every JSON answer of one service is
replaced by a value of another type, for a whole run, through the real simulators.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from conftest import CIVI_KEY, MC_KEY, World
from e2e import Tamper

from mcsync.errors import ApiError, ConfigError, MassChangeBrake
from mcsync.sim.base import SimRequest, SimResponse
from mcsync.sim.transport import MultiSimTransport

MISSING = object()  # the key is left out
ODD_VALUES: dict[str, Any] = {
    "list": [["x"]],
    "object": {"x": 1},
    "text": "x",
    "number": 7,
    "missing": MISSING,
}

MAILCHIMP_KEYS = (
    "members",
    "total_items",
    "id",
    "email_address",
    "status",
    "last_changed",
    "timestamp_opt",
    "unique_email_id",
    "merge_fields",
    "interests",
    "new_members",
    "updated_members",
    "errors",
    "lists",
    "categories",
    "merge_fields",
    "tag",
    "type",
    "batches",
    "finished_operations",
    "errored_operations",
    "total_operations",
    "response_body_url",
    "submitted_at",
)
CIVICRM_KEYS = (
    "values",
    "id",
    "contact_id",
    "group_id",
    "email",
    "status",
    "is_primary",
    "on_hold",
    "modified_date",
    "date",
    "is_deleted",
    "is_opt_out",
    "do_not_email",
    "is_deceased",
    "first_name",
    "count",
)


def _replace(value: Any, key: str, odd: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: odd if k == key else _replace(v, key, odd)
            for k, v in value.items()
            if not (k == key and odd is MISSING)
        }
    if isinstance(value, list):
        return [_replace(v, key, odd) for v in value]
    return value


def odd_answers(key: str, odd: Any) -> Callable[[SimRequest, Any], SimResponse | None]:
    """A Tamper rule: every JSON answer with ``key`` anywhere has it replaced by ``odd``."""

    def rule(request: SimRequest, forward: Any) -> SimResponse | None:
        answer: SimResponse = forward(request)
        if "json" not in answer.headers.get("Content-Type", "") or not answer.body:
            return answer
        try:
            body = json.loads(answer.body)
        except ValueError:
            return answer
        changed = json.dumps(_replace(body, key, odd)).encode()
        return SimResponse(answer.status, answer.headers, changed)

    return rule


def busy_world(make_world: Any, batch_threshold: int) -> World:
    """People who need every kind of work: in sync, new at either side, unsubscribed."""
    world: World = make_world(batch_threshold=batch_threshold, interests=1)
    world.person("same@example.org", mc="subscribed", civi="Added")
    world.person("mconly@example.org", mc="subscribed", mc_at=world.ago(days=1))
    world.person("civionly@example.org", civi="Added", civi_at=world.ago(days=1))
    world.person(
        "left@example.org",
        mc="unsubscribed",
        civi="Added",
        mc_at=world.ago(days=1),
        civi_at=world.ago(days=9),
    )
    return world


def _check(world: World, service: str, key: str, odd: Any, runs: int = 2) -> None:
    tamper = Tamper(world.mc if service == "mailchimp" else world.civi)
    tamper.add(odd_answers(key, odd))
    sims = {"mailchimp.sim": world.mc, "civicrm.sim": world.civi}
    sims[f"{service}.sim"] = tamper  # type: ignore[assignment]
    world.transport = MultiSimTransport(sims)
    for _ in range(runs):
        # Anything but an McsyncError escapes sync_audiences as the traceback a user would see.
        results = world.sync()
        error = results[0].error
        if error is not None:
            # A status Mailchimp never sends may trip the mass-change brake: nothing written.
            assert isinstance(error, (ApiError, MassChangeBrake, ConfigError)), repr(error)
            message = str(error)
            assert MC_KEY not in message and CIVI_KEY not in message, message
            if isinstance(error, ApiError):
                assert message.strip() and "\n" not in message, message


@pytest.mark.parametrize("odd", list(ODD_VALUES))
@pytest.mark.parametrize("key", MAILCHIMP_KEYS)
def test_odd_mailchimp_answers_end_as_an_api_error(make_world: Any, key: str, odd: str) -> None:
    for threshold in (200, 1):
        _check(busy_world(make_world, threshold), "mailchimp", key, ODD_VALUES[odd])


@pytest.mark.parametrize("odd", list(ODD_VALUES))
@pytest.mark.parametrize("key", CIVICRM_KEYS)
def test_odd_civicrm_answers_end_as_an_api_error(make_world: Any, key: str, odd: str) -> None:
    _check(busy_world(make_world, 200), "civicrm", key, ODD_VALUES[odd])

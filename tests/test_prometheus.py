"""`status --prometheus` (issue 15, item 3): the figures of `status --json` in Prometheus'
text format, parsed back with prometheus_client's own parser (what node_exporter reads)."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner
from conftest import World
from prometheus_client.parser import text_string_to_metric_families
from test_status import stage_known_state

from mcsync.cli import main
from mcsync.ops.prometheus import exposition


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def invoke(world: World, *args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--config", str(world.config_path)])
    assert result.exit_code == 0, result.output
    return result.output


def test_every_status_figure_and_failure_reason_is_a_sample(world: World) -> None:
    stage_known_state(world).close()
    [status] = json.loads(invoke(world, "status", "--json"))
    failures = json.loads(invoke(world, "failures", "--json"))
    found = samples(invoke(world, "status", "--prometheus"))
    labels = (
        ("audience", status["name"] or ""),
        ("group_id", str(status["group_id"])),
        ("list_id", status["list_id"]),
    )
    for key, value in status["counts"].items():
        assert found[(f"mcsync_{key}", labels)] == value, key
    assert found[("mcsync_in_sync", labels)] == 0
    assert found[("mcsync_last_sync_duration_seconds", labels)] == 12.5
    assert 0 <= found[("mcsync_last_sync_age_seconds", labels)] < 60
    by_reason: dict[str, int] = {}
    for failure in failures:
        by_reason[failure["reason"]] = by_reason.get(failure["reason"], 0) + 1
    assert by_reason  # the staged state has failing rows
    for reason, count in by_reason.items():
        key = tuple(sorted((*labels, ("reason", reason))))
        assert found[("mcsync_failures", key)] == count


def test_a_converged_audience_reports_in_sync(world: World) -> None:
    world.person("a@example.org", mc="subscribed", civi="Added")
    assert world.sync()[0].outcome.completed  # type: ignore[union-attr]
    text = invoke(world, "status", "--prometheus")
    assert "# TYPE mcsync_in_sync gauge" in text
    assert [v for (name, _), v in samples(text).items() if name == "mcsync_in_sync"] == [1]


def test_label_values_are_escaped() -> None:
    item: dict[str, Any] = {
        "list_id": "abc",
        "group_id": 3,
        "name": 'Members "A"\\B\nC',
        "in_sync": True,
        "running": False,
        "possible_crash": None,
        "problem": None,
        "last_sync": None,
        "last_sync_seconds": None,
        "counts": {},
    }
    found = samples(exposition([item], []))
    names = {dict(labels)["audience"] for (_, labels) in found}
    assert names == {'Members "A"\\B\nC'}
    assert not any(name == "mcsync_last_sync_timestamp_seconds" for name, _ in found)


def test_json_and_prometheus_together_are_refused(world: World) -> None:
    result = CliRunner().invoke(
        main, ["status", "--json", "--prometheus", "--config", str(world.config_path)]
    )
    assert result.exit_code == 2

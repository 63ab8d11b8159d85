"""Output for pipes and scripts (issue 15, item 4): with no terminal, tables are a title, a
header and aligned columns (never `key=value` pairs with empty values); `--tsv` gives
tab-separated values with a header; `discover` and `config check` answer in JSON with --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest

from mcsync.console import Output
from mcsync.sim.world import SimWorld


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SimWorld, Path]]:
    sim = SimWorld.create(members=30, batch_delay=0.0).serve()
    try:
        yield sim, sim.write_config(tmp_path_factory.mktemp("plain") / "mcsync.toml")
    finally:
        sim.stop()


def mcsync(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MCSYNC_CONFIG": str(config), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "mcsync", *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
    )


def test_a_plain_table_has_a_header_and_aligned_columns() -> None:
    stream = StringIO()
    Output(stream=stream).table(
        "people", ["id", "email", "note"], [(1, "a@example.org", None), (12345, "b@x.org", "hi")]
    )
    title, header, *rows = stream.getvalue().splitlines()
    assert title == "people"
    assert header.split() == ["id", "email", "note"]
    for column in ("email", "note"):
        start = header.index(column)
        for row, value in zip(rows, (("a@example.org", ""), ("b@x.org", "hi")), strict=True):
            cell = value[0] if column == "email" else value[1]
            assert row[start : start + len(cell)] == cell
    assert "=" not in stream.getvalue()


def test_tsv_keeps_every_row_the_width_of_the_header_even_with_tabs_in_values() -> None:
    stream = StringIO()
    Output(stream=stream, tsv=True).table("t", ["a", "b"], [("x\ty", None), ("line\nbreak", 2)])
    lines = [line.split("\t") for line in stream.getvalue().splitlines()]
    assert lines == [["a", "b"], ["x y", ""], ["line break", "2"]]


def test_discover_prints_aligned_columns_under_a_pipe(world: tuple[SimWorld, Path]) -> None:
    sim, config = world
    result = mcsync(config, "discover")
    assert result.returncode == 0, result.stderr
    assert "=" not in result.stdout
    lines = result.stdout.splitlines()
    header = lines[1]
    assert header.strip().split("  ")[0] == "audience id"
    assert sim.audiences[0].list_id in result.stdout
    group_header = lines.index("CiviCRM static Mailing List groups") + 1
    assert lines[group_header].split() == ["group", "id", "title", "name"]


def test_discover_tsv_and_json_agree(world: tuple[SimWorld, Path]) -> None:
    sim, config = world
    found = json.loads(mcsync(config, "discover", "--json").stdout)
    audience_ids = [a["id"] for acct in found["mailchimp"] for a in acct["audiences"]]
    assert audience_ids == [spec.list_id for spec in sim.audiences]
    group_ids = {g["id"] for g in found["civicrm_groups"]}
    assert sim.audiences[0].group_id in group_ids
    tsv = mcsync(config, "discover", "--tsv").stdout.split("\n\n")[0].splitlines()
    rows = [line.split("\t") for line in tsv]
    assert rows[0] == ["audience id", "audience", "interest category", "interest id", "interest"]
    assert all(len(row) == 5 for row in rows)
    interests = {
        i["id"]
        for acct in found["mailchimp"]
        for a in acct["audiences"]
        for c in a["interest_categories"]
        for i in c["interests"]
    }
    assert {row[3] for row in rows[1:] if row[3]} == interests


def test_config_check_json(world: tuple[SimWorld, Path], tmp_path: Path) -> None:
    sim, config = world
    good = mcsync(config, "config", "check", "--json")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["ok"] is True
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text(config.read_text().replace(sim.audiences[0].list_id, "nosuchlist"))
    bad_config.chmod(0o600)
    bad = mcsync(bad_config, "config", "check", "--json")
    answer = json.loads(bad.stdout)
    assert bad.returncode == 2 and answer["ok"] is False
    assert [p["in_config"] for p in answer["problems"]] == [True]
    assert "audience[0].list_id" in answer["problems"][0]["text"]
    assert bad.stderr == ""

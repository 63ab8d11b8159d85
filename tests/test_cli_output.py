"""How mcsync talks: quiet under cron (a subprocess with no TTY), a summary with -v, errors on
stderr, log lines in the staging DB; every command has --help and is in the README."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mcsync.cli import main
from mcsync.sim.world import SimWorld

README = (Path(__file__).parent.parent / "README.md").read_text()


def commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


@pytest.mark.parametrize("name", [name for name, _ in commands(main)])
def test_every_command_has_help_and_is_in_the_readme(name: str) -> None:
    result = CliRunner().invoke(main, [*name.split(), "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output
    command = dict(commands(main))[name]
    assert command.help, f"{name} has no help text"
    assert f"mcsync {name}" in README, f"README.md does not mention 'mcsync {name}'"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    world = SimWorld.create(members=40, batch_delay=0.0).serve()
    try:
        yield world.write_config(tmp_path_factory.mktemp("cron") / "mcsync.toml")
    finally:
        world.stop()


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


def test_cron_runs_are_quiet_unless_asked(served: Path) -> None:
    first = mcsync(served, "initial-sync", "--yes")
    assert first.returncode == 0, first.stderr
    assert (first.stdout, first.stderr) == ("", "")
    quiet = mcsync(served, "fetch-and-reconcile")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    verbose = mcsync(served, "fetch-and-reconcile", "-v")
    assert verbose.returncode == 0 and verbose.stderr == ""
    lines = verbose.stdout.splitlines()
    assert len(lines) == 1 and "sync complete" in lines[0]
    status = mcsync(served, "status")
    assert "Run complete" in status.stdout  # every run logs to the staging DB
    assert "\x1b[" not in status.stdout  # plain text, no terminal codes


def test_errors_go_to_stderr_with_exit_1(served: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    text = served.read_text().replace('state_db = "', f'state_db = "{served.parent}/')
    broken.write_text(re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:9", text), encoding="utf-8")
    broken.chmod(0o600)
    result = mcsync(broken, "fetch-and-reconcile", "--max-time", "5")
    assert result.returncode == 1
    assert result.stdout == "" and "127.0.0.1:9" in result.stderr

"""The staging DB's storage failing (issue 11, point 7): a read-only file system, a full disk,
a DB locked by another process, a damaged DB, a state_db path that is not a DB at all. Each
gives one clear line (what, where, what to do) and exit 1 — or 2 when the configured path
itself cannot be used — never a traceback; `status` and `failures` work on a read-only DB.

Read-only and full file systems are real: the command runs in a private mount namespace
(``unshare -Urm``, root or an unprivileged user namespace) over a read-only bind mount or a
tiny tmpfs. Where namespaces are not available those tests are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import World
from e2e import RUN_TIMEOUT, SECRETS, Run, Scenario, cli_env

from mcsync.cli import main
from mcsync.store import database as staging_module
from mcsync.store.database import Staging

UNSHARE = shutil.which("unshare")


def _namespaces_work() -> bool:
    if UNSHARE is None:
        return False
    done = subprocess.run([UNSHARE, "-Urm", "true"], capture_output=True, check=False)
    return done.returncode == 0


needs_namespaces = pytest.mark.skipif(
    not _namespaces_work(), reason="needs mount namespaces (unshare -Urm)"
)


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    made = Scenario(tmp_path / "world", members=150, seed=5, sync="batch_threshold = 10")
    made.serve()
    yield made
    made.stop()


def _run_mounted(scenario: Scenario, mount: str, command: str, *args: str) -> Run:
    """The CLI in its own mount namespace after ``mount`` (a shell command) has run."""
    argv = [UNSHARE or "unshare", "-Urm", "sh", "-c", f'{mount} && exec "$@"', "sh"]
    argv += scenario.argv(command, *args)
    started = time.monotonic()
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        cwd=scenario.workdir,
        env=cli_env(None),
        check=False,
    )
    return Run(
        [command, *args], done.returncode, done.stdout, done.stderr, time.monotonic() - started
    )


def _read_only(directory: Path) -> str:
    return f"mount --bind {directory} {directory} && mount -o remount,bind,ro {directory}"


def assert_one_clear_line(run: Run, code: int, *words: str) -> None:
    assert run.code == code, run
    assert "Traceback" not in run.err, run
    lines = [line for line in run.err.splitlines() if line.strip() and line.strip() != "Error:"]
    assert len(lines) == 1, run
    for word in words:
        assert word in run.err, f"{word!r} missing:\n{run}"
    for secret in SECRETS:
        assert secret not in run.text


@needs_namespaces
def test_status_and_failures_work_on_a_read_only_file_system(scenario: Scenario) -> None:
    scenario.converge()
    expected_status = scenario.status()
    expected_failures = scenario.run("failures", "--json")
    assert expected_failures.code == 0, expected_failures
    mode_before = scenario.state_db.stat().st_mode
    ro = _read_only(scenario.workdir)

    status = _run_mounted(scenario, ro, "status", "--json")
    assert status.code == 0 and "Traceback" not in status.err, status
    assert json.loads(status.out) == expected_status
    failures = _run_mounted(scenario, ro, "failures", "--json")
    assert failures.code == 0, failures
    assert json.loads(failures.out) == json.loads(expected_failures.out)
    assert _run_mounted(scenario, ro, "status").code == 0

    # A sync needs to write: the configured place cannot be used (exit 2), said in one line.
    sync = _run_mounted(scenario, ro, "fetch-and-reconcile")
    assert_one_clear_line(sync, 2, "state_db", str(scenario.state_db), "read-only")
    assert scenario.state_db.stat().st_mode == mode_before, "no chmod"


@needs_namespaces
def test_a_full_disk_stops_the_run_with_one_line_and_exit_1(scenario: Scenario) -> None:
    small = scenario.workdir / "small"
    small.mkdir()
    scenario.config_path.write_text(
        scenario.config_path.read_text().replace(
            'state_db = "state.sqlite3"', 'state_db = "small/state.sqlite3"'
        )
    )
    run = _run_mounted(
        scenario, f"mount -t tmpfs -o size=160k tmpfs {small}", "fetch-and-reconcile"
    )
    assert_one_clear_line(run, 1, str(small / "state.sqlite3"), "disk is full", "free")


def test_a_db_locked_by_another_process_gives_one_line_and_exit_1(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another program (a backup, an sqlite3 shell) holds the write lock past the busy
    timeout (30 s; shortened here)."""
    Staging(world.config.state_db).close()
    monkeypatch.setattr(staging_module, "BUSY_TIMEOUT", 0.2)
    holder = sqlite3.connect(world.config.state_db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        result = CliRunner().invoke(
            main, ["fetch-and-reconcile", "--config", str(world.config_path)]
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    run = Run(["fetch-and-reconcile"], result.exit_code, result.stdout, result.stderr, 0.0)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert_one_clear_line(run, 1, str(world.config.state_db), "locked by another process")


def _damage(path: Path) -> None:
    """Overwrite every page after the first (the schema survives, the tables do not)."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for offset in range(page, len(data), 64):
        data[offset : offset + 64] = b"\xa5" * 64
    path.write_bytes(bytes(data))


def test_a_damaged_db_gives_one_line_and_exit_1(scenario: Scenario) -> None:
    assert scenario.run().code == 0
    _damage(scenario.state_db)
    for command in ("fetch-and-reconcile", "status"):
        run = scenario.run(command)
        assert_one_clear_line(run, 1, str(scenario.state_db), "damaged", "initial-sync")


@pytest.mark.parametrize("points_at", ["the config file", "a directory"])
def test_a_state_db_path_that_is_not_a_db_exits_2(scenario: Scenario, points_at: str) -> None:
    target = "mcsync.toml" if points_at == "the config file" else "."
    text = scenario.config_path.read_text()
    scenario.config_path.write_text(
        text.replace('state_db = "state.sqlite3"', f'state_db = "{target}"')
    )
    before = scenario.config_path.read_bytes()
    for command in ("fetch-and-reconcile", "status"):
        run = scenario.run(command)
        assert_one_clear_line(run, 2, "state_db")
    if points_at == "the config file":
        assert scenario.config_path.read_bytes() == before, "the file must be left alone"


def _as_plain_user(argv: list[str]) -> list[str]:
    """Root reads and writes anything; drop every capability so file modes count."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file modes cannot be enforced")
    return [setpriv, "--bounding-set=-all", "--inh-caps=-all", *argv]


def test_a_read_only_db_file_is_read_and_never_chmodded(scenario: Scenario) -> None:
    """The operator made the DB read-only (0400): status and failures read it; a sync says
    the configured file cannot be written (it used to chmod it back to 0600)."""
    scenario.converge()
    expected = scenario.status()
    scenario.state_db.chmod(0o400)

    def run(command: str, *args: str) -> Run:
        done = subprocess.run(
            _as_plain_user(scenario.argv(command, *args)),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            cwd=scenario.workdir,
            env=cli_env(None),
            check=False,
        )
        return Run([command, *args], done.returncode, done.stdout, done.stderr, 0.0)

    status = run("status", "--json")
    assert status.code == 0 and json.loads(status.out) == expected, status
    assert run("failures").code == 0
    sync = run("fetch-and-reconcile")
    assert_one_clear_line(sync, 2, "state_db", str(scenario.state_db))
    assert stat.S_IMODE(scenario.state_db.stat().st_mode) == 0o400, "no chmod"

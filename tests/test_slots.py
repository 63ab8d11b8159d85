"""The cross-process connection cap: never more than N holders across processes."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import stat
import tempfile
import time
from pathlib import Path

import pytest
from e2e import MAILCHIMP_KEY, Scenario

from mcsync.api.slots import ProcessSlots
from mcsync.budget import Budget
from mcsync.errors import StorageError


def _hold_and_count(directory: str, results: multiprocessing.Queue[int]) -> None:
    slots = ProcessSlots("0123-us21", 3, Path(directory))
    for _ in range(5):
        with slots.hold(Budget(None).deadline(), "Mailchimp test"):
            pid = multiprocessing.current_process().pid
            marker = Path(directory) / f"held.{pid}.{time.time_ns()}"
            marker.touch()
            held = len(list(Path(directory).glob("held.*")))
            results.put(held)
            time.sleep(0.01)
            marker.unlink()


def test_slots_cap_holders_across_processes(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[int] = context.Queue()
    workers = [
        context.Process(target=_hold_and_count, args=(str(tmp_path), results)) for _ in range(6)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    seen = [results.get(timeout=5) for _ in range(30)]
    assert max(seen) <= 3
    assert max(seen) >= 2  # the processes really overlapped


def test_slot_files_never_contain_the_key(tmp_path: Path) -> None:
    key = "secret-key-3141-us21"
    slots = ProcessSlots(key, 2, tmp_path)
    with slots.hold(Budget(None).deadline(), "Mailchimp test"):
        pass
    assert all(key not in p.name for p in tmp_path.iterdir())


# -- the directory's safety (issue 11, point 6) ---------------------------------------------
# Under cron there is no XDG_RUNTIME_DIR, so the directory is $TMPDIR/mcsync-slots-<uid>: a
# name anyone can predict and create first. Whoever owns it can hold every lock file and stall
# every run (before: exit 0, silent, after the whole --max-time).
OTHER_UID = 65534  # nobody


def _foreign(directory: Path) -> None:
    """Make ``directory`` another user's (needs root: only root can give files away)."""
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    os.chown(directory, OTHER_UID, OTHER_UID)


def test_a_new_slot_directory_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    slots = ProcessSlots("0123-us21", 2)
    assert slots.directory.parent == tmp_path
    assert stat.S_IMODE(slots.directory.stat().st_mode) == 0o700


def test_an_own_slot_directory_left_open_is_made_private(tmp_path: Path) -> None:
    directory = tmp_path / "slots"
    directory.mkdir()
    directory.chmod(0o777)
    ProcessSlots("0123-us21", 2, directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


@pytest.mark.parametrize("made", ["by another user", "as a symbolic link"])
def test_a_slot_directory_made_by_someone_else_is_refused(tmp_path: Path, made: str) -> None:
    directory = tmp_path / "slots"
    if made == "by another user":
        directory.mkdir(mode=0o777)
        _foreign(directory)
        expected = "belongs to another user"
    else:
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        directory.symlink_to(tmp_path / "elsewhere")
        expected = "symbolic link"
    with pytest.raises(StorageError) as caught:
        ProcessSlots("0123-us21", 2, directory)
    assert str(directory) in str(caught.value) and expected in str(caught.value)


@pytest.mark.parametrize("made", ["by another user", "as a symbolic link"])
def test_a_run_refuses_a_planted_slot_directory_at_once(tmp_path: Path, made: str) -> None:
    """The real command, as cron runs it (no XDG_RUNTIME_DIR, TMPDIR shared): one clear line,
    exit 1, at once — even while the planted directory's lock files are all held."""
    scenario = Scenario(tmp_path / "world", members=20, seed=3)
    scenario.serve()
    shared_tmp = tmp_path / "tmp"
    shared_tmp.mkdir()
    planted = shared_tmp / f"mcsync-slots-{os.getuid()}"
    if made == "by another user":
        planted.mkdir(mode=0o777)
        _foreign(planted)
    else:
        (tmp_path / "theirs").mkdir()
        planted.symlink_to(tmp_path / "theirs")
    try:
        # The planter holds every slot of the account's key.
        slots = ProcessSlots(MAILCHIMP_KEY, 10, tmp_path / "theirs-slots")
        held = [os.open(planted / p.name, os.O_CREAT | os.O_RDWR, 0o666) for p in slots.paths]
        for fd in held:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        env = {"TMPDIR": str(shared_tmp), "XDG_RUNTIME_DIR": ""}
        run = scenario.run("fetch-and-reconcile", "--max-time", "3", env=env)
        assert run.code == 1, run
        assert str(planted) in run.err and "Traceback" not in run.err, run
        assert len(run.err.strip().splitlines()) == 1, run
        assert run.seconds < 3, run
        for fd in held:
            os.close(fd)
    finally:
        scenario.stop()

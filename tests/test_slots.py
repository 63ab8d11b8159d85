"""The cross-process connection cap: never more than N holders across processes."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from mcsync.budget import Budget
from mcsync.slots import ProcessSlots


def _hold_and_count(directory: str, results: multiprocessing.Queue[int]) -> None:
    slots = ProcessSlots("0123-us21", 3, Path(directory))
    for _ in range(5):
        with slots.hold(Budget(None), "Mailchimp test"):
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
    with slots.hold(Budget(None), "Mailchimp test"):
        pass
    assert all(key not in p.name for p in tmp_path.iterdir())

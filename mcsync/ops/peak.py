"""This process's own peak memory, for `make bench` (``MCSYNC_PEAK_RSS_FILE``).

The figure is ``VmHWM`` of ``/proc/self/status``: the high-water mark of the resident set of
this process's own address space, which exec starts afresh. ``ru_maxrss`` will not do, from
``wait4`` or from ``getrusage(RUSAGE_SELF)`` alike: Linux carries the peak of the address space
exec replaced (the process that started mcsync, which forked it) into the new program's
figure, so it reports whatever the starting process held.
"""

from __future__ import annotations

import atexit
import resource
from pathlib import Path


def peak_rss_kib() -> int:
    """This process's peak resident set in KiB (``VmHWM``; ``ru_maxrss`` where /proc lacks)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def report_peak_rss_at_exit(path: str) -> None:
    """Write the peak (KiB) to ``path`` when the interpreter exits."""

    def write() -> None:
        Path(path).write_text(f"{peak_rss_kib()}\n")

    atexit.register(write)

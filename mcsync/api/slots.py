"""A connection cap shared by every mcsync process on this machine.

Mailchimp allows 10 simultaneous connections per account, counted across all clients: two
cron runs (say, two configs sharing one account) must share them. Each slot is a lock file
held with `flock` while a request is in flight; the files are keyed by a hash of the API key,
never the key itself, in a directory private to this user (created 0700; one that another
user made, or a symbolic link, is refused).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mcsync.budget import Deadline
from mcsync.errors import BudgetExhausted, StorageError

POLL_SECONDS = 0.005


def default_directory() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"mcsync-slots-{os.getuid()}"


def private_directory(directory: Path) -> Path:
    """Create ``directory`` 0700, or accept an existing one only if it is a real directory of
    this user. Under cron the name is predictable in the shared temp directory: another user
    who made it first could hold every lock file and stall every run."""
    fix = "remove it, or set XDG_RUNTIME_DIR to a directory only you can write"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(directory)
    except OSError as exc:
        raise StorageError(
            f"connection slot directory {directory}: cannot create it ({exc.strerror}); {fix}"
        ) from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a directory"
        raise StorageError(
            f"connection slot directory {directory} is {kind}, which mcsync never makes; {fix}"
        )
    if info.st_uid != os.geteuid():
        raise StorageError(
            f"connection slot directory {directory} belongs to another user (uid "
            f"{info.st_uid}), who could stall every mcsync run; {fix}"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(directory, 0o700)
    return directory


class ProcessSlots:
    """At most `size` holders at once across processes, for one account."""

    def __init__(self, secret: str, size: int, directory: Path | None = None):
        digest = hashlib.sha256(secret.encode("utf-8")).hexdigest()[:20]
        self.directory = private_directory(directory or default_directory())
        self.paths = [self.directory / f"{digest}.{n}.lock" for n in range(size)]
        self._start = 0
        self._lock = threading.Lock()

    def _try_one(self) -> int | None:
        with self._lock:
            start = self._start = (self._start + 1) % len(self.paths)
        for n in range(len(self.paths)):
            path = self.paths[(start + n) % len(self.paths)]
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return fd
        return None

    @contextmanager
    def hold(self, deadline: Deadline, service: str) -> Iterator[None]:
        """Wait for a free slot (until the deadline), hold it for the block."""
        while (fd := self._try_one()) is None:
            if deadline.remaining() < POLL_SECONDS:
                raise BudgetExhausted(
                    f"{service}: the run's time budget ran out waiting for a free connection"
                )
            time.sleep(POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

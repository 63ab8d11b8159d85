"""The run's deadline (``--max-time``): every wait and retry is capped by it.

A cron run must end before the next one starts, and must end *cleanly*: when the budget is
spent the sync engine catches :class:`~mcsync.errors.BudgetExhausted`, keeps the progress it has
saved and exits 0 so the next run continues. Waiting right up to the deadline only to give up
would waste the time the caller needs for that, so :meth:`Budget.sleep` refuses a wait that would
pass the deadline instead of sleeping part of it.

Only the thread that issues a request reads the budget's clock, once per request
(:meth:`Budget.deadline`); the threads that carry requests out get that reading as a
:class:`Deadline`, plain numbers. Tests drive the budget with a clock that moves a tick per
reading, so readings from several threads would make how far a run gets depend on thread
scheduling.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from mcsync.errors import BudgetExhausted


@dataclass(frozen=True)
class Deadline:
    """One reading of a budget's clock, for another thread to wait and time out by without
    reading that clock again.

    ``left`` is what the reading said (``math.inf``: unlimited); ``until`` is the same
    deadline on :func:`time.monotonic`, which the waits and the HTTP timeouts run on (a
    request handed to a pool may start a little after the reading)."""

    left: float
    until: float

    def remaining(self) -> float:
        """Seconds until the deadline now (never negative; ``math.inf`` when unlimited)."""
        return max(0.0, self.until - time.monotonic())

    def expired(self) -> bool:
        return self.left <= 0.0 or self.remaining() <= 0.0

    def cap(self, seconds: float) -> float:
        """``seconds``, or the time left if that is less: a timeout that cannot outlast the
        deadline (a small floor keeps it usable by the HTTP layer once time is up)."""
        return max(0.001, min(seconds, self.remaining()))


class Budget:
    """A deadline measured on a monotonic clock; ``None`` or ``0`` seconds means no limit."""

    def __init__(
        self,
        max_seconds: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_seconds is not None and max_seconds < 0:
            raise ValueError("max_seconds must be >= 0 (0 or None = unlimited)")
        self._clock = clock
        self._sleep = sleep
        self.max_seconds = max_seconds or None
        self._deadline = math.inf if self.max_seconds is None else clock() + self.max_seconds

    @classmethod
    def unlimited(cls) -> Budget:
        """A budget that never runs out (tests, ``--max-time 0``)."""
        return cls(None)

    @property
    def is_unlimited(self) -> bool:
        return self.max_seconds is None

    def remaining(self) -> float:
        """Seconds left before the deadline (never negative; ``math.inf`` when unlimited)."""
        if self.max_seconds is None:
            return math.inf
        return max(0.0, self._deadline - self._clock())

    def deadline(self) -> Deadline:
        """The deadline as one reading of the clock finds it, for the thread that carries out
        a request (see the module docstring)."""
        left = self.remaining()
        return Deadline(left, time.monotonic() + left)

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def check(self) -> None:
        """Raise :class:`BudgetExhausted` once the deadline has passed."""
        if self.expired():
            raise BudgetExhausted(self._spent_message())

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or raise :class:`BudgetExhausted` at once if that would pass the
        deadline.

        Raising early (rather than sleeping up to the deadline) leaves the caller the remaining
        time to save its progress.
        """
        if seconds <= 0:
            self.check()
            return
        if seconds > self.remaining():
            raise BudgetExhausted(
                f"the run's time budget of {self.max_seconds:g} s (--max-time) has"
                f" {self.remaining():.1f} s left, too little for a {seconds:.1f} s wait"
            )
        self._sleep(seconds)

    def _spent_message(self) -> str:
        return f"the run's time budget of {self.max_seconds:g} s (--max-time) is used up"

"""Records each run of an audience in the run history (store.history), however it ends.

The row is written before the run starts, so a run killed outright keeps a row with no end
(shown as unfinished); every other ending, an exception included, completes it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from mcsync.api.responses import redact
from mcsync.errors import MassChangeBrake
from mcsync.stages.context import RunContext
from mcsync.store.database import iso, utc_now
from mcsync.store.history import RunEnding

if TYPE_CHECKING:
    from mcsync.runner.engine import AudienceResult


@contextmanager
def recorded_run(
    ctx: RunContext,
    result: AudienceResult,
    requests: Callable[[], tuple[int, int]],
    *,
    keep_days: int,
    secrets: Sequence[str],
) -> Iterator[None]:
    """Record the run done inside the block: its start now, its end when the block ends.

    ``requests()`` reads the Mailchimp and CiviCRM clients' request counts; the difference
    between the start and the end is this run's."""
    staging = ctx.staging
    before = requests()
    stage = staging.state(ctx.list_id).get("stage") or "idle"
    history_id = staging.record_run_start(ctx.list_id, ctx.group_id, iso(utc_now()) or "", stage)
    started = time.monotonic()
    failure: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        failure = exc
        raise
    finally:
        try:
            outcome, error = _ending(result, failure)
            after = requests()
            staging.record_run_end(
                history_id,
                changes=ctx.changes,
                keep_days=keep_days,
                ended=iso(utc_now()),
                seconds=round(time.monotonic() - started, 2),
                outcome=outcome.value,
                stage=staging.state(ctx.list_id).get("stage") or "idle",
                error=None if error is None else redact(error, secrets),
                write_failures=ctx.write_failures,
                failing_rows=staging.failing_rows(ctx.list_id),
                mailchimp_requests=after[0] - before[0],
                civicrm_requests=after[1] - before[1],
            )
        except sqlite3.Error:
            if failure is None:
                raise
            # The run failed already (the DB itself, perhaps): its own error is the one told.


def _ending(result: AudienceResult, failure: BaseException | None) -> tuple[RunEnding, str | None]:
    """How the run ended, and the error that ended it, if one did."""
    if failure is not None:
        if isinstance(failure, KeyboardInterrupt):
            return RunEnding.FAILURE, "interrupted (Ctrl-C or SIGINT)"
        if isinstance(failure, SystemExit):
            return RunEnding.FAILURE, "the process was asked to stop"
        return RunEnding.FAILURE, f"{type(failure).__name__}: {failure}"
    if result.busy:
        return RunEnding.BUSY, None
    if result.error is not None:
        if isinstance(result.error, MassChangeBrake):
            return RunEnding.BRAKE, str(result.error)
        return RunEnding.FAILURE, str(result.error)
    if result.outcome is not None and result.outcome.completed:
        return RunEnding.COMPLETE, None
    return RunEnding.BUDGET, None

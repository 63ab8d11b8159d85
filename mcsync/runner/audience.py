"""The staged, resumable run of one audience: fetch → match → reconcile → push → collect.

The current stage and its cursor live in `audience_state`; each stage function commits its
data with its progress, so a run stopped by its budget (or killed) continues from there. The
audience's lease is held for the whole call and renewed by a heartbeat thread.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from mcsync.errors import AudienceBusy, BudgetExhausted, ConfigError
from mcsync.rules.groups import GROUP_SELECT, describe_group
from mcsync.rules.reasons import RETRIED_REASONS
from mcsync.stages import fetch_civicrm, fetch_mailchimp
from mcsync.stages.context import Lease, RunContext
from mcsync.stages.registry import STAGE_NAMES, STAGES
from mcsync.store.database import Staging, iso, parse_iso, this_host, utc_now

# A failed row is due at the run that starts at or after its next-try time; cron starts runs a
# little early or late, so a run that starts within this much of it counts.
RETRY_SLACK = timedelta(minutes=1)


@dataclass
class RunOutcome:
    list_id: str
    group_id: int
    completed: bool
    stage: str
    seconds: float


def lease_owner() -> str:
    return f"{this_host()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseHeartbeat:
    """Renews the audience's lease from its own DB connection, a sixth of the lease after
    the last renewal on the monotonic clock (the run's own checks before writes count too).
    A renewal that finds the lease taken marks it lost, and the run stops at its next check."""

    def __init__(self, path: str, lease: Lease):
        self.lease = lease
        self.path = path
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="lease-heartbeat")

    def __enter__(self) -> LeaseHeartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        staging: Staging | None = None
        try:
            while not self.stop_event.wait(self.lease.due_in()):
                if self.lease.due_in() > 0:  # renewed meanwhile by the run itself
                    continue
                try:
                    staging = staging or Staging(self.path)
                    if not self.lease.renew(staging):
                        return
                except sqlite3.OperationalError:
                    # The run's own connection holds a long write (a set-based statement
                    # over a large audience): beat again soon; the lease has slack.
                    self.stop_event.wait(1.0)
        finally:
            if staging is not None:
                staging.close()


def run_audience(
    ctx: RunContext,
    *,
    since: str | None = None,
    full: bool = False,
    stop_before: str | None = None,
) -> RunOutcome:
    """Continue (or start) this audience's run within the budget.

    Raises AudienceBusy when another process holds the lease; BudgetExhausted is caught here
    and reported as an incomplete outcome (progress is saved)."""
    staging = ctx.staging
    staging.ensure_audience(ctx.list_id, ctx.group_id, ctx.audience.account)
    owner = lease_owner()
    if not staging.acquire_lease(ctx.list_id, owner, ctx.sync.lease_seconds):
        raise AudienceBusy(
            f"audience {ctx.list_id} (group {ctx.group_id}) is busy with another run"
        )
    started = time.monotonic()
    ctx.lease = Lease(ctx.list_id, owner, ctx.sync.lease_seconds)
    try:
        with LeaseHeartbeat(str(staging.path), ctx.lease):
            try:
                check_groups(ctx)
                return _run_stages(ctx, since=since, full=full, stop_before=stop_before, t0=started)
            except BudgetExhausted:
                # Anywhere: the group check, fixing a new run's windows, or a stage.
                stage = staging.state(ctx.list_id)["stage"]
                ctx.log(
                    f"Stopped at its time budget during {stage}; the next run continues from here"
                )
                return RunOutcome(
                    ctx.list_id, ctx.group_id, False, stage, time.monotonic() - started
                )
    finally:
        staging.release_lease(ctx.list_id, owner)


def check_groups(ctx: RunContext) -> None:
    """Refuse to work an audience whose groups were deleted, disabled or turned into smart
    groups since the config was written: their membership would read as "everyone left"
    (veda#104, veda#138). Checked before every run, so nothing is written for it."""

    records = ctx.civicrm.call(
        "Group",
        "get",
        {"select": GROUP_SELECT, "where": [["id", "IN", ctx.all_groups]], "limit": 0},
    )
    groups = {int(r["id"]): r for r in records}
    problems = [p for g in ctx.all_groups if (p := describe_group(groups.get(g), g))]
    if problems:
        ctx.log("Not synced: " + "; ".join(problems), "error")
        raise ConfigError(
            [
                f"{p}; nothing was written for this audience (see mcsync config check)"
                for p in problems
            ]
        )


def _run_stages(
    ctx: RunContext,
    *,
    since: str | None,
    full: bool,
    stop_before: str | None,
    t0: float,
) -> RunOutcome:
    staging = ctx.staging
    state = staging.state(ctx.list_id)
    if state["stage"] == "idle":
        start_run(ctx, since="ever" if full else since)
        state = staging.state(ctx.list_id)
    elif since or full:
        ctx.log(
            f"A run is part-way through (at {state['stage']}); it finishes with the window it "
            "started with, and --since / a full fetch applies to the next run",
            "notice",
        )
    ctx.run_id = state["run_id"]
    mode = "full" if state["run_full"] else "incremental"
    while True:
        stage = staging.state(ctx.list_id)["stage"]
        if stage == "idle":
            break
        if stop_before and stage == stop_before:
            return RunOutcome(ctx.list_id, ctx.group_id, False, stage, time.monotonic() - t0)
        ctx.check_lease()
        if stage == "fetch_mailchimp" and not staging.state(ctx.list_id)["mc_offset"]:
            ctx.read_data_here = True
        index = STAGE_NAMES.index(stage)
        _, function, when = STAGES[index]
        if when in ("any", "write", mode):
            function(ctx)
        advance(ctx, index)
    return RunOutcome(ctx.list_id, ctx.group_id, True, "idle", time.monotonic() - t0)


def parse_since(value: str) -> datetime:
    """Check a --since value before any work starts, so a typo fails with the fix."""
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"--since {value!r}: not a date; use ISO 8601 such as 2026-11-01 or "
            "2026-11-01T09:00:00+00:00, or 'ever' for a full fetch"
        ) from None


def parse_since_utc(value: str) -> datetime:
    """A --since DATE as a UTC time (a date or time without a zone is UTC, as for the
    Mailchimp window)."""
    moment = parse_since(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def start_run(ctx: RunContext, *, since: str | None) -> None:
    """Fix the run's windows once and store them (the seed recomputed them: its §3.3 bug)."""
    state = ctx.staging.state(ctx.list_id)
    now = utc_now()
    window = fetch_mailchimp.since_for_new_run(state["last_run_started"], since)
    full = window is None or since == "ever" or not state["last_sync"]
    retried = 0
    history_target, modified_target, civi_now = fetch_civicrm.civicrm_marks(ctx)
    rewound: dict[str, object] = {}
    if not full and since and since != "ever":
        bookmark, modified = fetch_civicrm.marks_since(ctx, parse_since_utc(since))
        rewound = {"history_bookmark": bookmark, "modified_since": modified}
    with ctx.staging.atomic():
        ctx.staging.set_state(
            ctx.list_id,
            stage=STAGE_NAMES[0],
            run_id=uuid.uuid4().hex,
            run_started=iso(now),
            run_full=int(full),
            mc_since=None if full else iso(window),
            mc_offset=0,
            mc_newest=None,
            cursor=0,
            archived_offset=0,
            history_target=history_target,
            modified_target=modified_target,
            **rewound,
            civi_started=iso(ctx.civi_to_utc(civi_now)),
        )
        if full:
            ctx.staging.redecide_all(ctx.list_id)
        else:
            retried = ctx.staging.requeue_due_retries(
                ctx.list_id, sorted(RETRIED_REASONS), iso(now + RETRY_SLACK) or ""
            )
        # Mailchimp writes an earlier run queued and did not send (--civicrm-only): their
        # rows are decided again on this run's fresh data, which keeps a write that still
        # holds and drops one a newer change overtook (their changes are older than this
        # run's marks, so the push's own check would not see them).
        held = ctx.staging.redecide_held_writes(ctx.list_id)
    ctx.log(
        f"Started {'a full' if full else 'an incremental'} run"
        + ("" if full else f" for Mailchimp changes since {iso(window)}")
    )
    if held:
        ctx.log(f"{held} contact(s) with Mailchimp writes held back are decided again")
    if rewound:
        ctx.log(f"CiviCRM changes are read again from {since} (--since)")
    if retried:
        ctx.log(f"{retried} rows that failed for a passing reason are tried again")


def advance(ctx: RunContext, index: int) -> None:
    """Move to the next stage (or finish the run), resetting the stage cursor, atomically."""
    with ctx.staging.atomic():
        if (
            STAGE_NAMES[index] == "collect_batches"
            and not ctx.hold_mailchimp
            and ctx.staging.count_queued(ctx.list_id) > 0
        ):
            # Batch results queued follow-ups (a compliance refusal retried as pending):
            # send them in this run rather than leaving them for the next.
            ctx.staging.set_state(ctx.list_id, stage="push_mailchimp", cursor=0)
            return
        if index + 1 < len(STAGES):
            ctx.staging.set_state(ctx.list_id, stage=STAGE_NAMES[index + 1], cursor=0)
            return
        state = ctx.staging.state(ctx.list_id)
        started = parse_iso(state["run_started"]) or utc_now()
        values: dict[str, object] = {
            "stage": "idle",
            "cursor": 0,
            "mc_offset": 0,
            "last_run_started": state["run_started"],
            "last_civi_started": state["civi_started"],
            "last_sync": iso(utc_now()),
            "last_sync_seconds": round((utc_now() - started).total_seconds(), 1),
        }
        if state["run_full"]:
            values["history_bookmark"] = max(
                state["history_bookmark"] or 0, state["history_target"] or 0
            )
        if state["modified_target"]:
            values["modified_since"] = state["modified_target"]
        ctx.staging.set_state(ctx.list_id, **values)
    ctx.log("Run complete: both sides are reconciled")


def reset_run(staging: Staging, list_id: str) -> None:
    """Back to the start (abort): the next run starts afresh, with new windows."""
    with staging.atomic():
        staging.set_state(list_id, stage="idle", cursor=0, mc_offset=0, run_id=None)

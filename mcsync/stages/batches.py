"""Mailchimp batches: submit large change sets as `POST /batches`, recover a submission whose
answer was lost, and poll and download results (the collect_batches stage) — mcsync collects
results itself, so no batch webhook is needed. A `POST /batches` is never sent twice.

Large sets of member reads go the same way (`submit_read_batch`, `collect_read_batch`,
`members_from_read_results`): the stages that read members directly submit GET operations
and collect their batch themselves, before applying its results with their chunk.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from typing import Any

from mcsync.api.mailchimp import (
    READ_OPERATION_PREFIX,
    UNIQUE_SUFFIX,
    member_put_operation,
    member_read_operations,
)
from mcsync.api.responses import problem_text
from mcsync.api.shapes import odd_member
from mcsync.errors import (
    ApiError,
    BadResponse,
    BudgetExhausted,
    NotFoundError,
    ResponseTooLarge,
    UnreadableResults,
)
from mcsync.rules import write_results as wr
from mcsync.stages.context import RunContext
from mcsync.stages.overtaken import drop_overtaken_updates
from mcsync.stages.updates import apply_result, fail_update, queued_updates
from mcsync.store.database import iso, parse_iso, utc_now

BATCH_SIZE = 1000
# Batches one overtaken check covers: the check (one SubscriptionHistory read, its contacts in
# one id list) is made for this many batches' updates, which are then submitted straight
# after it, each under its own lease and budget check. One check per batch made the check
# most of a large run's CiviCRM requests (issue 12).
BATCHES_PER_CHECK = 5
OPERATION_PREFIX = "mcsync_"
POLL_SECONDS = 2.0
# The first wait for a batch; each later one doubles, up to POLL_SECONDS. Mailchimp finishes a
# small batch (an incremental run's unsubscribes, a few thousand reads) in about a second, and
# a fixed 2 s wait before every look made polling much of such a run; a batch that takes
# minutes costs only three more GETs.
FIRST_POLL_SECONDS = 0.25
# Runs that may find a batch's results unreadable (a download may be garbled once) before the
# batch is closed and its updates fail with 'bad_result'.
RESULTS_TRIES = 3
# Members read per batch of reads (with a second operation for each known unique_email_id).
# A batch costs a few requests (the POST, a poll or two, the download), so 2500 members keep
# reads well under one request per 500 members, while the results of one batch (about 1-2 KB
# a member with mcsync's fields) stay a few MB, far below the caps on a results file.
READ_BATCH_SIZE = 2500


def push_batches(ctx: RunContext) -> None:
    """Submit batches of queued updates. The updates are tied to a local batch row before the
    POST; a POST whose answer was lost is found again by `recover_submissions`, never re-sent.
    The overtaken check is made for `BATCHES_PER_CHECK` batches at a time, before any of them
    is sent; a run stopped among them leaves the rest queued, checked again before they go."""
    while True:
        ctx.budget.check()
        updates = queued_updates(ctx, BATCH_SIZE * BATCHES_PER_CHECK)
        if not updates:
            return
        updates = drop_overtaken_updates(ctx, updates)
        for start in range(0, len(updates), BATCH_SIZE):
            if start:
                ctx.budget.check()
            _submit_batch(ctx, updates[start : start + BATCH_SIZE])


def _submit_batch(ctx: RunContext, updates: list[sqlite3.Row]) -> None:
    """One batch of checked updates: claimed (committed) for a batch row, then posted."""
    ctx.check_lease()
    batch_row = ctx.staging.claim_for_batch(ctx.list_id, [u["id"] for u in updates], iso(utc_now()))
    operations = [
        member_put_operation(
            ctx.list_id,
            u["email"],
            json.loads(u["body"]),
            f"{OPERATION_PREFIX}{u['id']}",
            skip_merge_validation=ctx.sync.skip_merge_validation,
        )
        for u in updates
    ]
    batch = _submit(ctx, batch_row, operations)
    ctx.log(f"Submitted batch {batch['id']} with {len(updates)} operations")
    ctx.progress("submit batches", len(updates), None)


def _submit(ctx: RunContext, batch_row: int, operations: list[dict[str, Any]]) -> dict[str, Any]:
    """``POST /batches`` for a batch row claimed (committed) before it, and record the batch
    Mailchimp accepted. A refusal (4xx) reached nothing: the row goes (its updates back to the
    queue). Any other failure leaves the row 'submitting', for `recover_submissions`."""
    try:
        batch = ctx.mailchimp.start_batch(operations)
    except ApiError as exc:
        if exc.status is not None and 400 <= exc.status < 500:
            ctx.staging.unsubmit_batch(batch_row)  # refused: nothing reached Mailchimp
        raise
    ctx.staging.batch_submitted(batch_row, batch["id"], batch.get("status", "pending"))
    return batch


def recover_submissions(ctx: RunContext, stuck: list[sqlite3.Row] | None = None) -> None:
    """A kill between `POST /batches` and recording its id leaves a 'submitting' batch row
    (``stuck``; by default the audience's batches of writes). Look for a batch Mailchimp
    accepted at that time with that many operations: adopt it if found, else the POST never
    arrived, the row goes and its updates go back to the queue (a batch of reads is read
    again)."""
    if stuck is None:
        stuck = ctx.staging.submitting_batches(ctx.list_id)
    if not stuck:
        return
    known = ctx.staging.known_batch_ids()
    candidates = [b for b in ctx.mailchimp.batches() if b.get("id") not in known]
    for row in stuck:
        started = parse_iso(row["submitted_at"])
        match = next(
            (
                b
                for b in candidates
                if b.get("total_operations") == row["operations"]
                and started is not None
                and (parse_iso(b.get("submitted_at")) or started) >= started.replace(second=0)
            ),
            None,
        )
        if match is None:
            ctx.staging.unsubmit_batch(row["id"])
            ctx.log("A batch submission was interrupted before Mailchimp got it; re-queued")
            continue
        candidates.remove(match)
        ctx.staging.batch_submitted(row["id"], match["id"], match.get("status", "pending"))
        ctx.log(f"Adopted batch {match['id']} from an interrupted submission")


def collect_batches(ctx: RunContext) -> None:
    """Poll this audience's batches and process finished ones; wait within the budget."""
    recover_submissions(ctx)
    for round_ in itertools.count():
        open_batches = ctx.staging.open_batches(ctx.list_id, writes_only=True)
        if not open_batches:
            return
        waiting = False
        listed = _listed_batches(ctx, len(open_batches))
        for row in open_batches:
            batch = poll_batch(ctx, row, listed)
            if batch.get("status") != "finished":
                waiting = True
                continue
            _process_results(ctx, row, batch)
        if waiting:
            wait_for_batches(ctx, round_)


def poll_batch(
    ctx: RunContext, row: sqlite3.Row, listed: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """One look at a submitted batch (within the budget): Mailchimp's view of it, stored.
    ``listed``: this polling round's answer of ``GET /batches`` (`_listed_batches`); a batch
    it leaves out is asked for by id."""
    ctx.budget.check()
    batch = (listed or {}).get(row["mc_batch_id"]) or ctx.mailchimp.get_batch(row["mc_batch_id"])
    ctx.staging.batch_polled(
        row["id"],
        batch.get("status"),
        batch.get("finished_operations"),
        batch.get("errored_operations"),
    )
    return batch


def poll_wait(round_: int) -> float:
    """Seconds to wait after the ``round_``-th look (from 0) at unfinished batches:
    `FIRST_POLL_SECONDS`, doubling, at most `POLL_SECONDS`."""
    return min(POLL_SECONDS, FIRST_POLL_SECONDS * 2.0 ** min(round_, 16))


def wait_for_batches(ctx: RunContext, round_: int) -> None:
    """Wait (`poll_wait`) before polling unfinished batches again; a budget too short for
    the wait stops the run (the batches stay recorded and are collected by the next run)."""
    seconds = poll_wait(round_)
    if ctx.budget.remaining() < seconds:
        raise BudgetExhausted("waiting for Mailchimp to finish a batch")
    ctx.budget.sleep(seconds)


# -- batches of member reads ------------------------------------------------------------------


def submit_read_batch(
    ctx: RunContext, keys: list[tuple[str, str | None]], reads: dict[str, Any]
) -> int:
    """Submit GET operations reading these members (`member_read_operations`). The batch row
    (with ``reads``: the run, stage, stage cursor and keys it reads for) is committed before
    the POST, so a kill in flight is recovered, never re-sent blind. Returns the row's id."""
    operations = member_read_operations(ctx.list_id, keys)
    ctx.check_lease()
    batch_row = ctx.staging.claim_read_batch(
        ctx.list_id, len(operations), iso(utc_now()), json.dumps(reads)
    )
    batch = _submit(ctx, batch_row, operations)
    ctx.log(f"Submitted batch {batch['id']} reading {len(keys)} member(s)")
    return batch_row


def collect_read_batch(ctx: RunContext, row: sqlite3.Row) -> list[dict[str, Any]] | None:
    """Wait (within the budget) for a submitted batch of reads to finish, and return its
    operation results. None when they cannot be had: the batch is gone at Mailchimp (deleted,
    expired) or its results file is unreadable; the caller reads those members directly.
    A budget ending while it waits leaves the batch recorded: the next run collects it."""
    for round_ in itertools.count():
        try:
            batch = poll_batch(ctx, row)
        except NotFoundError:
            ctx.log(f"Batch {row['mc_batch_id']} of member reads is gone at Mailchimp", "warning")
            return None
        if batch.get("status") == "finished":
            break
        wait_for_batches(ctx, round_)
    try:
        return ctx.mailchimp.batch_results(batch["response_body_url"], batch_id=batch["id"])
    except (ResponseTooLarge, UnreadableResults) as exc:
        ctx.log(f"{exc}; its members are read directly instead", "warning")
        return None


def members_from_read_results(
    keys: list[tuple[str, str | None]], results: list[dict[str, Any]]
) -> tuple[list[dict[str, Any] | None], list[int]]:
    """``(found, unread)`` for the keys a batch of reads was for, from its results, by
    operation id (never by position). ``found[n]``: the member (its hash answered 200, or,
    after a 404, its unique_email_id found it), or None: Mailchimp has no such member (the
    hash answered 404 and the unique_email_id, if known, found nobody). ``unread``: the
    indexes of keys whose answer is anything else (a 5xx or 429 inside the batch, a garbled
    or missing result): neither gone nor new, to be read again; their ``found`` is None."""
    by_id: dict[str, dict[str, Any]] = {}
    for item in results:
        operation_id = item.get("operation_id")
        if isinstance(operation_id, str) and operation_id.startswith(READ_OPERATION_PREFIX):
            by_id[operation_id] = item
    required = ("id", "email_address")
    found: list[dict[str, Any] | None] = []
    unread: list[int] = []
    for index, (subscriber_hash, unique_email_id) in enumerate(keys):
        code, member = _read_answer(by_id.get(f"{READ_OPERATION_PREFIX}{index}"))
        if code == 200 and isinstance(member, dict) and not odd_member(member, required):
            if member.get("id") == subscriber_hash:
                found.append(member)
                continue
        elif code == 404 and not unique_email_id:
            found.append(None)
            continue
        elif code == 404:
            code, page = _read_answer(by_id.get(f"{READ_OPERATION_PREFIX}{index}{UNIQUE_SUFFIX}"))
            listed = page.get("members") if code == 200 and isinstance(page, dict) else None
            if isinstance(listed, list) and not listed:
                found.append(None)
                continue
            if isinstance(listed, list) and not odd_member(listed[0], required):
                found.append(listed[0])
                continue
        found.append(None)
        unread.append(index)
    return found, unread


def _read_answer(result: dict[str, Any] | None) -> tuple[int, Any]:
    """(status code, parsed response) of one read operation; 0 when missing or malformed."""
    if result is None:
        return 0, None
    code, response, problem = _read_result(result)
    return (0, None) if problem else (code, response)


def _listed_batches(ctx: RunContext, open_count: int) -> dict[str, dict[str, Any]]:
    """With several batches open, one ``GET /batches`` answers for all of them in a polling
    round (instead of one ``GET /batches/{id}`` each, every round); a batch the list leaves
    out is asked for by id. With one open, its own GET is as cheap."""
    if open_count < 2:
        return {}
    ctx.budget.check()
    try:
        listed = ctx.mailchimp.batches()
    except BadResponse:  # an odd batch in the list (not necessarily ours): ask by id
        return {}
    return {str(b["id"]): b for b in listed if b.get("id")}


def _process_results(ctx: RunContext, row: sqlite3.Row, batch: dict[str, Any]) -> None:
    try:
        results = ctx.mailchimp.batch_results(batch["response_body_url"], batch_id=batch["id"])
    except ResponseTooLarge as exc:
        # Downloading again gives the same archive: settle the batch so later runs go on, and
        # fail the run once, loudly. Its rows are decided again from Mailchimp's state.
        settled = _settle_unreadable(ctx, row, str(exc))
        raise ResponseTooLarge(
            f"{exc}; the batch is closed and its {settled} updates are decided again next run",
            status=exc.status,
        ) from None
    except UnreadableResults as exc:
        failed = ctx.staging.count_results_failure(row["id"])
        if failed < RESULTS_TRIES:
            raise UnreadableResults(
                f"{exc} (failure {failed} of {RESULTS_TRIES}); the next run downloads them "
                f"again, and after {RESULTS_TRIES} failures closes the batch",
                status=exc.status,
            ) from None
        _give_up_results(ctx, row, f"{exc} (failure {failed} of {RESULTS_TRIES})")
        return
    by_update: dict[int, dict[str, Any]] = {}
    for item in results:
        operation_id = str(item.get("operation_id") or "")
        number = operation_id.removeprefix(OPERATION_PREFIX)
        if operation_id.startswith(OPERATION_PREFIX) and number.isdigit():
            by_update[int(number)] = item
    updates = ctx.staging.updates_in_batch(row["id"])
    with ctx.staging.atomic():
        for update in updates:
            result = by_update.get(update["id"])
            if result is None:
                fail_update(
                    ctx,
                    update,
                    "No result",
                    "Mailchimp's batch results did not "
                    "mention this operation; it will be decided again next run",
                )
                continue
            status_code, response, problem = _read_result(result)
            if problem:
                # One garbled result fails its operation (a reason for `failures`), not the run.
                error = ApiError(problem, title=wr.BAD_RESULT_TITLE, detail=problem)
                apply_result(ctx, update, status_code, None, error)
            elif status_code == 200:
                apply_result(ctx, update, 200, response, None)
            else:
                title, detail = problem_text(response)
                error = ApiError(
                    str(title or "Error"), status=status_code, title=title, detail=detail
                )
                apply_result(ctx, update, status_code, None, error)
        ctx.staging.batch_processed(row["id"], iso(utc_now()))
    ctx.log(
        f"Processed batch {batch['id']}: {batch.get('finished_operations')} operations, "
        f"{batch.get('errored_operations')} errors"
    )


def _read_result(result: dict[str, Any]) -> tuple[int, dict[str, Any], str | None]:
    """``(status_code, response, problem)`` of one operation result; ``problem`` says what is
    malformed (a status code that is no HTTP status, a response that is not a JSON object or
    has fields mcsync cannot read), and the status code is then 0: the operation failed."""
    code = result.get("status_code")
    operation = result.get("operation_id")
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
        problem = (
            f"Mailchimp's batch result for operation {operation} has status_code"
            f" {shown(code)}, not an HTTP status; whether the change was made is unknown"
        )
        return 0, {}, problem
    response = result.get("response")
    odd = odd_fields(response, code) if isinstance(response, dict) else []
    if (response is not None and not isinstance(response, dict)) or odd:
        what = (
            f"a response with unreadable {', '.join(odd)}"
            if odd
            else f"a response that is not a JSON object ({shown(response)})"
        )
        problem = (
            f"Mailchimp's batch result for operation {operation} (HTTP {code}) has {what};"
            " what Mailchimp now holds for this member is unknown"
        )
        return 0, {}, problem
    return code, response or {}, None


# Fields of a result's response that mcsync reads: a member after a write, a problem after an
# error. Each must be a string (interests: an object), or absent.
_MEMBER_TEXT = ("id", "email_address", "status", "last_changed")
_PROBLEM_TEXT = ("title", "detail")


def odd_fields(response: dict[str, Any], code: int) -> list[str]:
    """The fields mcsync reads from a write's answer (a member on 2xx, a problem otherwise)
    that it cannot read; a batch result and a bulk write's member are checked alike."""
    member = 200 <= code < 300
    names = _MEMBER_TEXT if member else _PROBLEM_TEXT
    odd = [n for n in names if response.get(n) is not None and not isinstance(response[n], str)]
    if member:
        if response.get("interests") is not None and not isinstance(response["interests"], dict):
            odd.append("interests")
        if "last_changed" not in odd:
            try:
                parse_iso(response.get("last_changed"))
            except ValueError:
                odd.append("last_changed")
    return odd


def shown(value: Any) -> str:
    """A value as JSON, cut short, for a message about a malformed answer."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _give_up_results(ctx: RunContext, row: sqlite3.Row, why: str) -> None:
    """Results that never parse: close the batch so later runs go on. Whether each change was
    made is unknown, so its updates fail with 'bad_result' and are decided again next run."""
    updates = ctx.staging.updates_in_batch(row["id"])
    problem = f"Mailchimp's batch results could not be read: {why}"
    with ctx.staging.atomic():
        for update in updates:
            error = ApiError(problem, title=wr.BAD_RESULT_TITLE, detail=problem)
            apply_result(ctx, update, 0, None, error)
        ctx.staging.batch_processed(row["id"], iso(utc_now()))
    ctx.log(
        f"{why}; batch {row['mc_batch_id']} closed, its {len(updates)} updates failed "
        "('bad_result') and are decided again next run",
        "error",
    )


def _settle_unreadable(ctx: RunContext, row: sqlite3.Row, why: str) -> int:
    updates = ctx.staging.updates_in_batch(row["id"])
    with ctx.staging.atomic():
        for update in updates:
            fail_update(
                ctx,
                update,
                "Results unreadable",
                "Mailchimp's batch results could not be read; it will be decided again next run",
            )
        ctx.staging.batch_processed(row["id"], iso(utc_now()))
    ctx.log(f"{why}; its {len(updates)} updates will be decided again next run", "error")
    return len(updates)

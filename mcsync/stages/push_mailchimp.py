"""The push_mailchimp stage: queued member updates go as bulk `POST /lists/{id}` when the
change set is small (answered at once) and as `POST /batches` (see ``batches``) when large.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from mcsync.api.mailchimp import BULK_LIMIT
from mcsync.api.shapes import odd_member
from mcsync.errors import ApiError, BudgetExhausted
from mcsync.rules import write_results as wr
from mcsync.rules.addresses import fold_email
from mcsync.stages.batches import odd_fields, push_batches, shown
from mcsync.stages.context import RunContext
from mcsync.stages.overtaken import drop_overtaken_updates
from mcsync.stages.updates import apply_result, fail_update, queued_updates


def push_mailchimp(ctx: RunContext) -> None:
    """Send queued member updates: direct PUTs below the batch threshold, else batches."""
    settle_lost_writes(ctx)
    if ctx.hold_mailchimp:
        held = ctx.staging.held_mailchimp_writes(ctx.list_id)
        if held:
            ctx.log(
                f"{held} Mailchimp write(s) held back (--civicrm-only); a normal run decides "
                "their contacts again and sends what still holds",
                "notice",
            )
        return
    if ctx.only_rows is not None:  # one person's writes (resync --now): answered at once
        _push_direct(ctx)
        return
    queued = ctx.staging.count_queued(ctx.list_id)
    if not queued:
        return
    few_puts = ctx.staging.count_queued_not_creating(ctx.list_id) <= DIRECT_PUTS
    if queued < ctx.sync.batch_threshold and few_puts:
        _push_direct(ctx)
    else:
        push_batches(ctx)


# Unsubscribes a small change set sends one PUT each; with more, the whole set goes as batches.
DIRECT_PUTS = 10


def _push_direct(ctx: RunContext) -> None:
    """Small change sets: status changes as bulk `POST /lists/{id}` (≤ 500 members a request),
    answered at once with per-member errors, so results are recorded in the same pass.
    Data-only updates (interests, merge fields) go as PUTs without a status: a bulk write must
    name a status, and naming `pending` again would send the person another confirmation.
    Unsubscribes go as PUTs too (at most `DIRECT_PUTS`): a bulk write creates a member it
    does not find, and an unsubscribe must not (`rules.reconcile.unsubscribe_body`)."""
    while True:
        ctx.budget.check()
        updates = _one_per_address(queued_updates(ctx, BULK_LIMIT * 2))[:BULK_LIMIT]
        if not updates:
            return
        updates = drop_overtaken_updates(ctx, updates)
        if not updates:
            continue
        ctx.check_lease()
        one_by_one = [u for u in updates if _put_alone(json.loads(u["body"]))]
        if one_by_one:
            _put_each(ctx, one_by_one)
        sent = {u["id"] for u in one_by_one}
        updates = [u for u in updates if u["id"] not in sent]
        if not updates:
            continue
        items = [bulk_item(u["email"], json.loads(u["body"])) for u in updates]
        ctx.staging.mark_sending([u["id"] for u in updates])
        sent_before = ctx.mailchimp.request_count
        try:
            answer = ctx.mailchimp.write_members(
                ctx.list_id, items, skip_merge_validation=ctx.sync.skip_merge_validation
            )
        except (ApiError, BudgetExhausted) as exc:
            # Back to the queue only if nothing can have been applied: never sent, or refused.
            turned_away = isinstance(exc, ApiError) and 400 <= (exc.status or 0) < 500
            if turned_away or ctx.mailchimp.request_count == sent_before:
                ctx.staging.unmark_sending([u["id"] for u in updates])
            raise
        written, refused, garbled, unsure = read_bulk_answer(answer)
        with ctx.staging.atomic():
            for update in updates:
                address = fold_email(update["email"])
                problem = garbled.get(address) or (
                    None if address in written or address in refused else unsure
                )
                if problem:
                    # Made or not, unknown: the row fails with `bad_result` and is decided
                    # again by the next run from Mailchimp's state (never written blind again).
                    error = ApiError(problem, title=wr.BAD_RESULT_TITLE, detail=problem)
                    apply_result(ctx, update, 0, None, error)
                elif address in written:
                    apply_result(ctx, update, 200, written[address], None)
                elif address in refused:
                    apply_result(ctx, update, 400, None, bulk_error(refused[address]))
                else:
                    fail_update(
                        ctx,
                        update,
                        "No result",
                        "Mailchimp's answer did not mention "
                        "this member; it will be decided again next run",
                    )
        if garbled or unsure:
            ctx.log(
                f"POST /lists/{ctx.list_id}: {unsure or next(iter(garbled.values()))}; the "
                "members it does not answer clearly fail ('bad_result') and are decided again "
                "next run",
                "warning",
            )
        ctx.progress("write Mailchimp", len(updates), None)


def read_bulk_answer(
    answer: dict[str, Any],
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, str], str | None]:
    """``(written, refused, garbled, unsure)`` from the answer to a bulk write, by folded
    address: members written, members refused, members whose entry cannot be read (with what
    is wrong), and what is wrong with the answer beyond one member (a list that is not a
    list, an entry that names no address): then every member not named is unsure. A
    malformed answer never raises: each member it leaves in doubt fails on its own."""
    written: dict[str, dict[str, Any]] = {}
    refused: dict[str, dict[str, Any]] = {}
    garbled: dict[str, str] = {}
    problems: list[str] = []
    where = "Mailchimp's answer to the bulk write"
    for key, into in (("new_members", written), ("updated_members", written), ("errors", refused)):
        entries = answer.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list):
            problems.append(f"{where} has '{key}' {shown(entries)}, not a list")
            continue
        for entry in entries:
            email = entry.get("email_address") if isinstance(entry, dict) else None
            if not isinstance(email, str) or not isinstance(entry, dict):
                problems.append(
                    f"{where} has an entry of '{key}' naming no address: {shown(entry)}"
                )
                continue
            address = fold_email(email)
            odd = odd_fields(entry, 200) if into is written else []
            other = odd_member(entry) if into is written else None
            if odd or other:
                what = f"unreadable {', '.join(odd)}" if odd else other
                garbled[address] = (
                    f"{where} has {what} for this member; what Mailchimp now holds for it is "
                    "unknown"
                )
            into[address] = entry
    unsure = None
    if problems:
        unsure = f"{problems[0]}; whether this member was changed is unknown"
    return written, refused, garbled, unsure


def settle_lost_writes(ctx: RunContext) -> None:
    """Direct bulk writes whose answer was lost (a 5xx, a timeout, the deadline, a kill) are
    not sent again: one that was applied and named `pending` would email the person a second
    confirmation. Their rows are decided again by the next run, from Mailchimp's state then:
    a member the write reached has changed and is fetched (already pending or subscribed, it
    needs nothing); one it did not reach gets the write again."""
    lost = ctx.staging.lost_direct_writes(ctx.list_id)
    if not lost:
        return
    with ctx.staging.atomic():
        for update in lost:
            fail_update(
                ctx,
                update,
                "Answer lost",
                "Mailchimp's answer to this write was lost, so it was not sent again (Mailchimp "
                "may have made it); it will be decided again next run",
            )
    ctx.log(
        f"{len(lost)} member writes got no answer from Mailchimp; not sent again, they are "
        "decided again next run from Mailchimp's state",
        "warning",
    )


def _put_alone(body: dict[str, Any]) -> bool:
    """A data-only update (no status), or one that may not create a member (a status with
    no `status_if_new`): sent as its own PUT, never in a bulk write."""
    return "status" not in body or "status_if_new" not in body


def _put_each(ctx: RunContext, updates: list[sqlite3.Row]) -> None:
    results = ctx.mailchimp.put_members(
        ctx.list_id,
        [(u["email"], json.loads(u["body"])) for u in updates],
        skip_merge_validation=ctx.sync.skip_merge_validation,
    )
    with ctx.staging.atomic():
        for update, result in zip(updates, results, strict=True):
            if isinstance(result, ApiError):
                apply_result(ctx, update, result.status or 400, None, result)
            else:
                apply_result(ctx, update, 200, result, None)


def _one_per_address(updates: list[sqlite3.Row]) -> list[sqlite3.Row]:
    """Mailchimp refuses an address twice in one bulk request: later ones wait their turn."""
    seen: set[str] = set()
    kept = []
    for update in updates:
        address = fold_email(update["email"])
        if address not in seen:
            seen.add(address)
            kept.append(update)
    return kept


def bulk_item(email: str, body: dict[str, Any]) -> dict[str, Any]:
    """A member PUT body as a bulk member. Only a status change that may create the member
    (it names `status_if_new`) goes in a bulk write, whose status applies to new and existing
    members alike; the others are PUTs of their own (`_put_alone`)."""
    item = {k: v for k, v in body.items() if k not in ("status_if_new", "email_address")}
    item["email_address"] = email
    item["status"] = body["status"]
    return item


# Bulk errors carry only a message; these are the titles the same refusal has on a PUT.
_BULK_TITLES = (
    ("compliance state", wr.COMPLIANCE_TITLE),
    ("permanently deleted", wr.FORGOTTEN_TITLE),
    ("looks fake or invalid", "Invalid Resource"),
)


def bulk_error(error: dict[str, Any]) -> ApiError:
    message = str(error.get("error") or "")
    title = next((t for needle, t in _BULK_TITLES if needle in message.lower()), None)
    return ApiError(
        message,
        status=400,
        title=title or str(error.get("error_code") or "Error"),
        detail=message,
    )

"""The Mailchimp fetch stages: page the audience's members changed since the run's window into
staging, one committed chunk at a time, and fix that window once per run. On a full run, also
read what changed while the pages were read, and confirm every member (or CiviCRM-only
address) the fetch did not return before it is treated as gone (or as new). On an incremental
run whose window took more than one page, the window is read without skips from its first
answer down (`_fetch_window`), then what changed from that answer on (and the part of that
look paged by offsets is looked over again for members it skipped, `read_skipped_in_window`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from mcsync.api.mailchimp import MAX_PAGE_SIZE, NO_EVENT, member_hash
from mcsync.errors import BadResponse
from mcsync.stages.batches import (
    READ_BATCH_SIZE,
    collect_read_batch,
    members_from_read_results,
    recover_submissions,
    submit_read_batch,
)
from mcsync.stages.context import WINDOW_OVERLAP, RunContext
from mcsync.stages.match import assign_matches
from mcsync.store.database import dumps, iso, parse_iso, utc_now
from mcsync.store.states import BatchState, RowState

Key = tuple[str, str | None]
"""A member to read: (subscriber hash, unique_email_id if known)."""

# Margin before a full run's start for reading the changes made while it paged: covers a
# clock difference with Mailchimp and its whole-second times.
CHANGED_DURING_FETCH_MARGIN = timedelta(minutes=5)


def fetch_mailchimp(ctx: RunContext) -> None:
    """Page members changed since the run's window (all of them on a full run) into `rows`.

    Pages are offsets over live data, sorted by last_changed, newest first, and fetched
    concurrently. While they are read, a member who changes moves to the already-read end,
    and a member archived or deleted moves every later member up a place, so an unread member
    can be skipped. A full run therefore reads what changed meanwhile
    (`fetch_changed_during_fetch`) and confirms every staged member it did not see before
    treating it as gone (`confirm_vanished_members`).
    """
    state = ctx.staging.state(ctx.list_id)
    since = parse_iso(state["mc_since"])
    offset = state["mc_offset"]
    ctx.budget.check()
    if since is not None and (state["mc_newest"] or not offset):
        _fetch_window(ctx, since)
        return
    # A full run (every member, fastest by concurrent offsets), or an incremental fetch an
    # earlier version began by offsets: finished the way it began.
    pages = ctx.mailchimp.member_pages(
        ctx.list_id,
        since_last_changed=since,
        page_size=ctx.sync.page_size_mailchimp,
        start_offset=offset,
    )
    merge_pages(ctx, _noting_window_total(ctx, pages, offset), cursor="mc_offset",
                progress="fetch Mailchimp")  # fmt: skip


def _fetch_window(ctx: RunContext, since: datetime) -> None:
    """An incremental run's window, read so that no member is skipped: no second listing of
    the window is needed afterwards (`read_skipped_in_window` is for fetches begun by offset).

    The first page, newest first, is one answer: if it holds the whole window, that is all.
    Otherwise it tells the newest change in the window (`mc_newest`, on Mailchimp's own
    clock), and every change made after that answer is at least as new. The members older
    than the first page's oldest second were settled when it was answered: that part of the
    window can only shrink, so it is read one page at a time, stepping back when it shrank
    (`settled_member_pages`). The members the first page held from there up are read; the
    ones that changed after it are at least as new as `mc_newest` and are read by
    `fetch_changed_during_fetch`, which looks from `mc_newest` on (by offsets: whatever of
    that look is older than the run's start less the margin, `read_skipped_in_window` looks
    over, as it does a whole window paged by offsets). The stage cursor is the
    time (epoch seconds) down to which the settled part was covered, committed with each
    page: a resumed run reads the rest from its own first page, so a removal while it was
    stopped shifts no one past it."""
    if not ctx.staging.state(ctx.list_id)["mc_newest"] and _first_page_was_whole(ctx, since):
        return
    state = ctx.staging.state(ctx.list_id)
    newest = parse_iso(state["mc_newest"]) or since
    before = min(newest, datetime.fromtimestamp(state["cursor"] + 1, UTC))
    if before <= since:
        return
    ctx.budget.check()
    for covered, members in ctx.mailchimp.settled_member_pages(
        ctx.list_id,
        since_last_changed=since,
        before_last_changed=before,
        page_size=ctx.sync.page_size_mailchimp,
    ):
        oldest = parse_iso(members[-1].get("last_changed")) if members else None
        with ctx.staging.atomic():
            merge_members(ctx, members)
            values: dict[str, Any] = {"mc_offset": state["mc_offset"] + len(members)}
            if covered and oldest is not None:
                values["cursor"] = int(oldest.timestamp())
            ctx.staging.set_state(ctx.list_id, **values)
        state = ctx.staging.state(ctx.list_id)
        ctx.progress("fetch Mailchimp", state["mc_offset"], ctx.window_total)
        ctx.budget.check()


def _first_page_was_whole(ctx: RunContext, since: datetime) -> bool:
    """Read and stage the window's first page; unless it held the whole window, note the
    newest change in it and set the cursor to read the settled part from its oldest second."""
    total, members = ctx.mailchimp.member_page(
        ctx.list_id, since_last_changed=since, page_size=ctx.sync.page_size_mailchimp
    )
    ctx.window_total = total
    whole = total <= len(members)
    times = [t for t in (parse_iso(m.get("last_changed")) for m in members) if t is not None]
    if not whole and (not times or len(times) < len(members)):
        raise BadResponse("Mailchimp listed members without last_changed", service="Mailchimp")
    with ctx.staging.atomic():
        merge_members(ctx, members)
        ctx.staging.set_state(ctx.list_id, mc_offset=len(members))
        if not whole:
            settled_before = min(max(times), min(times) + timedelta(seconds=1))
            ctx.staging.set_state(ctx.list_id, mc_newest=iso(max(times)),
                                  cursor=int(settled_before.timestamp()) - 1)  # fmt: skip
    ctx.progress("fetch Mailchimp", len(members), total)
    return whole


def _noting_window_total(
    ctx: RunContext, pages: Iterator[tuple[int, int, list[dict[str, Any]]]], start_offset: int
) -> Iterator[tuple[int, int, list[dict[str, Any]]]]:
    """The pages, noting the window's size as the first answer gave it (`window_took_pages`)
    when this process reads the window from its start."""
    try:
        for page_offset, total, members in pages:
            if start_offset == 0 and page_offset == 0:
                ctx.window_total = total
            yield page_offset, total, members
    finally:
        close = getattr(pages, "close", None)
        if close:
            close()


def merge_pages(
    ctx: RunContext,
    pages: Iterable[tuple[int, int, list[dict[str, Any]]]],
    *,
    cursor: str,
    progress: str,
) -> None:
    """Stage each page of members with the offset reached (in the state column ``cursor``),
    one transaction a page, so a run stopped anywhere resumes after the last page stored."""
    try:
        for page_offset, total, members in pages:
            with ctx.staging.atomic():
                merge_members(ctx, members)
                ctx.staging.set_state(ctx.list_id, **{cursor: page_offset + len(members)})
            ctx.progress(progress, page_offset + len(members), total)
            ctx.budget.check()
    finally:
        close = getattr(pages, "close", None)
        if close:
            close()


def changed_since(run_started: str | None) -> datetime | None:
    """Where the look for changes made during a full fetch starts: the run's start (the
    first invocation's, when the fetch was spread over several), less a margin for the two
    clocks and Mailchimp's whole-second times. A change older than that was read by the
    fetch itself, or is caught by the next run's overlapping window."""
    started = parse_iso(run_started)
    return None if started is None else started - CHANGED_DURING_FETCH_MARGIN


def window_took_pages(ctx: RunContext, state: dict[str, Any]) -> bool:
    """Did this run's fetch read more than one page? One page is one answer, which cannot
    skip anyone, so an incremental window that fits in a page needs no second look (and
    costs no extra request). A full first page may have had more behind it, unless the
    answer's ``total_items`` said the window held no more than the page (known to the
    process that read it; a fetch resumed by another process counts a full page as more)."""
    page = ctx.sync.page_size_mailchimp
    if state["run_full"] or state["mc_newest"] or state["mc_offset"] > page:
        return True
    if state["mc_offset"] < page:
        return False
    return ctx.window_total is None or ctx.window_total > page


def fetch_changed_during_fetch(ctx: RunContext) -> None:
    """After a full fetch (or an incremental one that took more than one page), read the
    members that changed while it paged (they moved to the already-read end, so the fetch
    may have missed them or read them before the change), then read the members archived
    meanwhile (`read_archived`; on an incremental run, over its whole window). The stage
    cursor is the offset into the changed members; each page commits with it."""
    state = ctx.staging.state(ctx.list_id)
    since = changed_since(state["run_started"])
    # A full run's own fetch read every member not archived; an incremental one only its window.
    archived_since = since if state["run_full"] else parse_iso(state["mc_since"])
    newest = parse_iso(state["mc_newest"])
    if newest is not None:
        # Mailchimp's own clock: whatever changed after the window's first answer is at least
        # this new (``since_last_changed`` is exclusive, and times are whole seconds).
        since = newest - timedelta(seconds=1)
    if since is None or not window_took_pages(ctx, state):
        read_archived(ctx, archived_since)
        return
    ctx.budget.check()
    pages = ctx.mailchimp.member_pages(
        ctx.list_id,
        since_last_changed=since,
        page_size=ctx.sync.page_size_mailchimp,
        start_offset=state["cursor"],
    )
    merge_pages(ctx, pages, cursor="cursor", progress="fetch Mailchimp changes")
    read_archived(ctx, archived_since)


# What staging keeps of a member (``merge_members``): the light page of archived members.
_ARCHIVED_FIELDS = (
    "id",
    "email_address",
    "unique_email_id",
    "status",
    "last_changed",
    "merge_fields",
    "interests",
)


def read_archived(ctx: RunContext, since: datetime | None) -> None:
    """Read the members archived since ``since`` and stage them as read: archived, from their
    own ``last_changed`` (archiving moves it). The audience's member list leaves archived
    members out, so without this an incremental run would never learn that a member left,
    and would decide the row on the stale staged status (a write could even re-add the
    member for an older CiviCRM Added). A full run's own fetch reads the rest (its missing
    members are read directly), so it looks only over the time it paged. One request on most
    runs. Each page commits with the offset reached (``archived_offset``, reset when a run
    starts), so runs with tiny budgets go on where the last one stopped instead of reading
    the first pages again and never finishing; a member archived meanwhile moves the others
    down a place (one is read twice) and is read by the next run's window."""
    if since is None:
        return
    ctx.budget.check()
    archived = ctx.mailchimp.member_pages(
        ctx.list_id,
        since_last_changed=since,
        page_size=ctx.sync.page_size_mailchimp,
        start_offset=ctx.staging.state(ctx.list_id)["archived_offset"],
        status="archived",
        fields=_ARCHIVED_FIELDS,
    )
    try:
        for page_offset, _, members in archived:
            with ctx.staging.atomic():
                merge_members(ctx, [m for m in members if m.get("status") == "archived"])
                ctx.staging.set_state(ctx.list_id, archived_offset=page_offset + len(members))
            ctx.budget.check()
    finally:
        close = getattr(archived, "close", None)
        if close:
            close()


def confirm_vanished_members(ctx: RunContext) -> None:
    """After a full fetch, a staged member the run did not read is gone only once confirmed
    (DESIGN §4): read directly, it is archived or answers 404 (and no member holds its
    unique_email_id under a new address). A member still there is merged as read; it was
    only skipped by offset paging over changing data. Rows are confirmed in chunks, each
    committed with the stage cursor, so a budget end or a kill resumes after the last chunk
    and nothing unconfirmed is ever swept. Costs nothing when nothing went missing.

    An answer with no members at all is never taken to mean that everyone left: nothing is
    confirmed, and the mass-change brake stops the run (DESIGN §5)."""
    if not ctx.staging.seen_any_member(ctx.list_id, ctx.run_id):
        return
    confirmed = reread_members(
        ctx,
        lambda cursor, limit: ctx.staging.unseen_members(ctx.list_id, ctx.run_id, cursor, limit),
        "confirm members missing from the fetch",
    )
    if confirmed:
        ctx.log(f"Confirmed {confirmed} member(s) missing from the full fetch")


def reread_members(
    ctx: RunContext, rows_after: Callable[[int, int], Sequence[Any]], label: str
) -> int:
    """Read the members of the rows ``rows_after(cursor, limit)`` returns, chunk after chunk
    (`read_members_in_chunks`), and stage what Mailchimp has now (`stage_current_members`).
    Returns how many rows were read."""
    read = 0
    for chunk in read_members_in_chunks(
        ctx, rows_after, lambda rows: [(r["mc_hash"], r["mc_unique_id"]) for r in rows]
    ):
        stage_current_members(ctx, chunk.keys, chunk.found)
        read += chunk.rows
        ctx.progress(label, read, None)
    return read


class MembersRead(NamedTuple):
    """A chunk of rows and what Mailchimp has now for the members they stand for, read
    before the chunk's transaction opens (no request holds the staging DB's write lock,
    which the lease heartbeat needs)."""

    last_id: int
    """The chunk's last row id: where the stage cursor moves when it is committed."""
    rows: int
    keys: list[Key]
    found: list[dict[str, Any] | None]
    """One per key: the member (archived too), or None: Mailchimp has no such member."""
    batch_row: int | None
    """The batch of reads the members came from, closed with the chunk; None: read directly."""


def read_members_in_chunks(
    ctx: RunContext,
    rows_after: Callable[[int, int], Sequence[Any]],
    keys_of: Callable[[Sequence[Any]], list[Key]],
) -> Iterator[MembersRead]:
    """The members of the stage's rows (``rows_after(cursor, limit)``, in id order; each
    row's members: ``keys_of(rows)``), read chunk after chunk, each yielded inside the
    transaction that moves the stage cursor past it (`StoreBase.each_chunk`): the caller
    stages them there, so even a short budget makes progress and a kill resumes after the
    last chunk committed.

    Few rows (under ``sync.read_batch_threshold``) are read by concurrent direct GETs
    (`MailchimpClient.current_members`), a chunk per round of connections: answered at once.
    Many are read through batches of GET operations (`submit_read_batch`), `READ_BATCH_SIZE`
    rows a batch: a few requests per batch instead of one per member, for a batch's poll
    latency. A batch's row records the run, stage, stage cursor and keys it reads for, and is
    committed before it is submitted; a run stopped while it is in flight (budget, kill)
    collects that same batch when it resumes, and applies its results only to those keys and
    only at that cursor (a batch of another run, stage or cursor is dropped and its rows read
    afresh). A member whose operation failed inside the batch (a 5xx), or whose result
    cannot be read, is neither gone nor new: it is read again directly, and if that fails the
    run fails before the chunk is committed, so nothing is decided from it. When the batch's
    results cannot be had at all (gone, unreadable), its members are read directly."""
    direct_chunk = max(1, ctx.mailchimp.max_connections)
    threshold = ctx.sync.read_batch_threshold
    mode = {"batched": False, "few": False}

    def read_after(cursor: int) -> list[MembersRead]:
        pending = _pending_read_batch(ctx, cursor)
        if pending is not None:
            mode["batched"] = True
            _submit_next_read_batch(ctx, pending[1], rows_after, keys_of)
            return [_collect_members(ctx, *pending)]
        look = direct_chunk if mode["few"] else max(threshold, READ_BATCH_SIZE)
        rows = rows_after(cursor, look)
        if not rows:
            return []
        if not mode["batched"] and len(rows) < threshold:
            # Rows only leave the stage's list as it goes: the rest stay too few to batch.
            mode["few"] = True
            rows = rows[:direct_chunk]
            keys = keys_of(rows)
            found = ctx.mailchimp.current_members(ctx.list_id, keys)
            return [MembersRead(int(rows[-1]["id"]), len(rows), keys, found, None)]
        mode["batched"] = True
        rows = rows[:READ_BATCH_SIZE]
        keys = keys_of(rows)
        if not keys:
            return [MembersRead(int(rows[-1]["id"]), len(rows), [], [], None)]
        reads = _reads_for(ctx, cursor, rows, keys)
        batch_row = submit_read_batch(ctx, keys, reads)
        _submit_next_read_batch(ctx, reads, rows_after, keys_of)
        return [_collect_members(ctx, batch_row, reads)]

    for chunk in ctx.staging.each_chunk(
        ctx.list_id, ctx.budget.check, read_after, key=lambda read: read.last_id
    ):
        for read in chunk:
            yield read
            if read.batch_row is not None:
                ctx.staging.close_read_batch(read.batch_row, iso(utc_now()), applied=True)


def _reads_for(
    ctx: RunContext, cursor: int, rows: Sequence[Any], keys: list[Key]
) -> dict[str, Any]:
    """What a batch of reads is for: the run, stage and stage cursor it was made at, the
    chunk's last row id and size, and the keys it reads."""
    return {
        "run": ctx.run_id,
        "stage": ctx.staging.state(ctx.list_id)["stage"],
        "cursor": cursor,
        "last_id": int(rows[-1]["id"]),
        "rows": len(rows),
        "keys": keys,
    }


def _submit_next_read_batch(
    ctx: RunContext,
    reads: dict[str, Any],
    rows_after: Callable[[int, int], Sequence[Any]],
    keys_of: Callable[[Sequence[Any]], list[Key]],
) -> None:
    """Submit the batch for the chunk after the one ``reads`` is for, before that one is
    collected, so Mailchimp works on it while mcsync waits for, downloads and applies the
    current one (batches run one after another per account: with one always queued, no
    poll interval or download is spent idle). It is recorded for the cursor that chunk will
    be read at (the current chunk's last row id), and applied only there, like any batch
    of reads; no more than one is submitted ahead. A chunk whose rows have no address to
    read is left to `read_after`."""
    if ctx.staging.open_read_batches(ctx.list_id) > 1:
        return  # submitted already (by a run that stopped before applying the current one)
    cursor = int(reads["last_id"])
    rows = rows_after(cursor, READ_BATCH_SIZE)
    if not rows:
        return
    keys = keys_of(rows)
    if keys:
        submit_read_batch(ctx, keys, _reads_for(ctx, cursor, rows, keys))


def _pending_read_batch(ctx: RunContext, cursor: int) -> tuple[int, dict[str, Any]] | None:
    """The audience's batch of reads not yet applied, if it was submitted for this run,
    stage and cursor: ``(batch row, what it reads for)``. A submission whose answer was lost
    is recovered first (adopted, or its row dropped: the POST never arrived). A batch of
    another run, stage or cursor (an aborted or restarted run) is never applied: it is
    closed (deleted at Mailchimp while unfinished) and its rows are read afresh."""
    while True:
        row = ctx.staging.open_read_batch(ctx.list_id)
        if row is not None and row["status"] == BatchState.SUBMITTING:
            recover_submissions(ctx, [row])
            row = ctx.staging.open_read_batch(ctx.list_id)
        if row is None:
            return None
        reads: dict[str, Any] = json.loads(row["reads"])
        stage = ctx.staging.state(ctx.list_id)["stage"]
        if (reads.get("run"), reads.get("stage"), reads.get("cursor")) == (
            ctx.run_id,
            stage,
            cursor,
        ):
            return int(row["id"]), reads
        if row["mc_batch_id"] and row["status"] != "finished":
            ctx.mailchimp.delete_batch(row["mc_batch_id"])
        with ctx.staging.atomic():
            ctx.staging.close_read_batch(int(row["id"]), iso(utc_now()), applied=False)
        ctx.log(f"Dropped batch {row['mc_batch_id']} of member reads made for another run or step")


def _collect_members(ctx: RunContext, batch_row: int, reads: dict[str, Any]) -> MembersRead:
    """The members a batch of reads found, once it has finished (`collect_read_batch`);
    those it did not read (`members_from_read_results`) are read directly."""
    keys: list[Key] = [(str(h), u) for h, u in reads["keys"]]
    row = ctx.staging.open_read_batch(ctx.list_id)
    results = collect_read_batch(ctx, row) if row is not None else None
    if results is None:
        found: list[dict[str, Any] | None] = ctx.mailchimp.current_members(ctx.list_id, keys)
    else:
        found, unread = members_from_read_results(keys, results)
        if unread:
            ctx.log(
                f"{len(unread)} member(s) the batch did not read (an error for their "
                "operation) are read directly",
                "warning",
            )
            again = ctx.mailchimp.current_members(ctx.list_id, [keys[i] for i in unread])
            for index, member in zip(unread, again, strict=True):
                found[index] = member
    return MembersRead(int(reads["last_id"]), int(reads["rows"]), keys, found, batch_row)


def confirm_unread_subscribes(ctx: RunContext) -> None:
    """Before a staged subscribe adds anyone to the group, make sure it is still there. An
    incremental run reads only the members changed in its window, and a member deleted
    permanently at Mailchimp is in no list at all, so its row keeps the status mcsync last
    read. When CiviCRM sends that row to be decided again (its contact trashed: a new one
    would be created; another owner of the address matched), a stale `subscribed` would add
    a contact for a person Mailchimp no longer has (DESIGN §4: never on stale data). Such
    rows (``unread_subscribes``: decided from a status this run did not read, which could
    add the contact) are read directly, 404 being gone (`stage_current_members`). Rows the
    run read, and rows whose contact is Added or changed later, cost nothing. A run resumed
    by another process read its data before that process began (the member may have gone
    while it was stopped): then every such row is read again. One round of concurrent reads
    per committed chunk, resumable by the stage cursor."""
    # No row is staged as read by "": in a resumed run, what it read counts as unread.
    read_by = ctx.run_id if ctx.read_data_here else ""
    read = reread_members(
        ctx,
        lambda cursor, limit: ctx.staging.unread_subscribes(
            ctx.list_id, ctx.group_id, read_by, cursor, limit
        ),
        "read members staged by an earlier run",
    )
    if read:
        ctx.log(f"Read {read} member(s) staged by an earlier run before adding their contacts")


def read_directly(ctx: RunContext, keys: list[tuple[str, str | None]]) -> None:
    """Read members the paging did not return directly, and stage what Mailchimp has now
    (`stage_current_members`), in one transaction."""
    found = ctx.mailchimp.current_members(ctx.list_id, keys)
    with ctx.staging.atomic():
        stage_current_members(ctx, keys, found)


def stage_current_members(
    ctx: RunContext, keys: list[tuple[str, str | None]], found: list[dict[str, Any] | None]
) -> None:
    """Stage members as a direct read found them (``found``, one per key): a member there,
    archived too, is merged as read (an archive dated by the member's own ``last_changed``,
    never by the run's start: a CiviCRM change made after the archive is the newer choice);
    one answering 404 (with no member holding its unique_email_id under a new address) was
    deleted permanently at an unknown time (``mark_members_gone``)."""
    present = {m["id"]: m for m in found if m is not None}
    gone = [key[0] for key, m in zip(keys, found, strict=True) if m is None]
    merge_members(ctx, list(present.values()))
    ctx.staging.mark_members_gone(ctx.list_id, gone)


def read_skipped_in_window(ctx: RunContext) -> None:
    """After an incremental fetch that took more than one page, find the members of the
    window the offset walk skipped (one per member archived or deleted ahead of it while it
    paged, or between budgeted runs) and read them. A skipped member's change would
    otherwise be lost: it is older than the next run's window.

    The window's settled part, changed before this run started (less the margin), can only
    shrink while we look, so it is listed by ids alone, 1000 a page, one request at a time
    (``settled_member_pages`` steps back when it shrank). Members newer than that were read
    by ``fetch_changed_during_fetch``, or are in the next run's window. A listed member this
    run has not read, and not staged at that ``last_changed`` already, is read directly.
    When `_fetch_window` read the window (``mc_newest`` set), only the look from
    ``mc_newest`` on was paged by offsets, so only its part is looked over.
    The stage cursor is the time (epoch seconds) down to which the window was looked over,
    committed with each page's reads: a resumed run looks over the rest, from its own first
    page, so no removal while it was stopped can shift anyone past it."""
    state = ctx.staging.state(ctx.list_id)
    since = parse_iso(state["mc_since"])
    before = changed_since(state["run_started"])
    newest = parse_iso(state["mc_newest"])
    if newest is not None:
        # `_fetch_window` read the window below `mc_newest` without skips; only the part
        # the look from `mc_newest` on paged by offsets is left (empty when that look began
        # after the margin).
        since = newest - timedelta(seconds=1)
    if since is None or before is None or not window_took_pages(ctx, state):
        return
    if state["cursor"]:
        before = min(before, datetime.fromtimestamp(state["cursor"] + 1, UTC))
    if before <= since:
        return
    chunk = max(1, ctx.mailchimp.max_connections)
    read = 0
    ctx.budget.check()
    for covered, members in ctx.mailchimp.settled_member_pages(
        ctx.list_id,
        since_last_changed=since,
        before_last_changed=before,
        fields=("id", "last_changed"),
        page_size=MAX_PAGE_SIZE,
    ):
        keys = ctx.staging.unread_members(
            ctx.list_id,
            ctx.run_id,
            [(m["id"], iso(parse_iso(m.get("last_changed")))) for m in members],
        )
        for start in range(0, len(keys), chunk):
            ctx.budget.check()
            read_directly(ctx, keys[start : start + chunk])
        read += len(keys)
        oldest = parse_iso(members[-1].get("last_changed")) if members else None
        if covered and oldest is not None:
            with ctx.staging.atomic():
                ctx.staging.set_state(ctx.list_id, cursor=int(oldest.timestamp()))
        ctx.budget.check()
    if read:
        ctx.log(
            f"Read {read} member(s) of the window that the paging skipped (members archived "
            "or deleted while it paged)"
        )


def confirm_civicrm_only(ctx: RunContext) -> None:
    """On a full run, a contact Added in CiviCRM with no member row is about to be subscribed
    at Mailchimp as new, because the fetch did not return its address. Paging over changing
    data can skip a member, and archived members are never listed, and that subscribe would
    overwrite the status the person chose there (re-adding an archived member for an older
    CiviCRM Added). So each such contact's addresses are read first, by subscriber hash
    (`read_members_in_chunks`: direct GETs for a few, batches of GETs for many); a member
    found, archived too, is staged as read and matched, and reconciled like any other (its
    status, its time). Only a 404 lets the contact be subscribed as new; a member whose read
    failed is read again, and the run stops before its chunk is committed if that fails too.
    Resumable by the stage cursor, a committed chunk at a time."""

    def rows_after(cursor: int, limit: int) -> Sequence[Any]:
        return ctx.staging.civicrm_only_added(
            ctx.list_id,
            ctx.group_id,
            cursor,
            limit,
            privacy_flags=ctx.respect_privacy_flags,
        )

    def keys_of(rows: Sequence[Any]) -> list[Key]:
        emails = ctx.staging.unstaged_emails(ctx.list_id, [r["contact_id"] for r in rows])
        return [(member_hash(email), None) for email in emails]

    checked = 0
    for chunk in read_members_in_chunks(ctx, rows_after, keys_of):
        # An archived member is found too: not new, but a member who left, at its own time.
        present = {m["id"]: m for m in chunk.found if m is not None}
        if present:
            merge_members(ctx, list(present.values()))
            new_rows = ctx.staging.unmatched_member_rows(ctx.list_id, list(present))
            if new_rows:
                assign_matches(ctx, new_rows)
            ctx.staging.drop_contact_rows_with_members(ctx.list_id)
            ctx.log(
                f"Found {len(present)} member(s) at Mailchimp that the full fetch "
                "did not return (paging over changing data); reconciled as read"
            )
        checked += chunk.rows
        ctx.progress("check CiviCRM-only contacts at Mailchimp", checked, None)


def merge_members(ctx: RunContext, members: list[dict[str, Any]]) -> None:
    """Upsert one page, keeping per-field change times (seed-behaviour §3.5, v2).

    A field's time moves only when its value changes, so a name edit at Mailchimp cannot make
    Mailchimp "win" the subscription or an interest. A change mcsync itself pushed (recorded in
    `mc_expected`) keeps the time of the choice it carried, not the time of our write.
    """
    if not members:
        return
    existing: dict[str, Any] = {
        r["mc_hash"]: r
        for r in ctx.staging.members_by_hash(ctx.list_id, [m["id"] for m in members])
    }
    _follow_email_changes(ctx, [m for m in members if m["id"] not in existing], existing)
    mapped = list(ctx.interest_groups)
    seen_by = previous_view_floor(ctx)
    # CiviCRM's clock when this run began: each member read here was there after it.
    seen_civi = ctx.staging.state(ctx.list_id).get("civi_started")
    inserts: list[tuple[Any, ...]] = []
    updates: list[tuple[Any, ...]] = []
    for member in members:
        status = member.get("status")
        changed = iso(parse_iso(member.get("last_changed")) or utc_now()) or ""
        merge = member.get("merge_fields") or {}
        fname, lname = merge.get("FNAME") or None, merge.get("LNAME") or None
        member_interests = member.get("interests") or {}
        interests = {i: bool(member_interests[i]) for i in mapped if i in member_interests}
        old = existing.get(member["id"])
        if old is None:
            inserts.append(
                (
                    ctx.list_id,
                    member["id"],
                    member.get("email_address"),
                    status,
                    changed,
                    changed,
                    fname,
                    lname,
                    dumps(interests),
                    dumps({i: changed for i in interests}),
                    member.get("unique_email_id"),
                    ctx.run_id,
                    seen_civi,
                )
            )
            continue
        expected = json.loads(old["mc_expected"] or "{}")
        relevant_change = False
        status_at = old["mc_status_at"] or changed
        status_after = old["mc_status_after"]
        if status != old["mc_status"]:
            relevant_change = True
            status_at, status_after = _status_change_time(expected, member, old, changed, seen_by)
        elif status_after is None:
            status_at, status_after = _possible_round_trip(
                expected, member, old, status_at, changed, seen_by
            )
            # A status that may have gone and come back is decided again, even on a row that
            # failed before (on hold, say): it may be the newest choice (model seed 264).
            relevant_change = status_after is not None
        old_interests = json.loads(old["mc_interests"])
        interests_at = json.loads(old["mc_interests_at"])
        expected_interests = expected.get("interests", {})
        # An expectation of a write dropped unsent holds only for a member last changed by
        # then (`abort_updates`): a later value is someone's choice, not mcsync's echo.
        until = parse_iso(expected.get("until"))
        echo_possible = until is None or (parse_iso(changed) or until) <= until
        for interest_id, value in interests.items():
            if old_interests.get(interest_id) != value:
                relevant_change = True
                if (
                    expected_interests.get(interest_id) == value
                    and expected.get("at")
                    and echo_possible
                ):
                    interests_at[interest_id] = expected["at"]
                else:
                    interests_at[interest_id] = changed
            else:
                interests_at.setdefault(interest_id, changed)
        if ctx.sync.update_names_from_mailchimp and (fname, lname) != (
            old["mc_fname"],
            old["mc_lname"],
        ):
            relevant_change = True  # a name edit, for names_from_mailchimp (stages.profile)
        sync_status = RowState.TODO if relevant_change else old["sync_status"]
        updates.append(
            (
                status,
                changed,
                status_at,
                status_after,
                fname,
                lname,
                dumps(interests),
                dumps(interests_at),
                sync_status,
                ctx.run_id,
                seen_civi,
                member.get("unique_email_id"),
                old["id"],
            )
        )
    ctx.staging.insert_members(inserts)
    ctx.staging.update_members(updates)
    _baseline_merge_fields(ctx, members)


def _baseline_merge_fields(ctx: RunContext, members: list[dict[str, Any]]) -> None:
    """For mapped merge tags mcsync has not pushed yet, count Mailchimp's current value as
    the last known one, so a first sync does not rewrite values that already agree. Values
    mcsync pushed are kept (json_patch: the stored map wins)."""
    tags = list(ctx.audience.merge_fields)
    if not tags:
        return
    values = [
        (m["id"], dumps({t: (m.get("merge_fields") or {}).get(t, "") for t in tags}))
        for m in members
    ]
    ctx.staging.baseline_merge_fields(ctx.list_id, values)


def _follow_email_changes(
    ctx: RunContext, new_members: list[dict[str, Any]], existing: dict[str, Any]
) -> None:
    """A member whose address changed at Mailchimp has a new hash but the same
    unique_email_id: move the staged row to the new hash (seed §5.5, without its webhook), and
    give the contact the new address as its bulk-mail email."""
    by_unique = {m["unique_email_id"]: m for m in new_members if m.get("unique_email_id")}
    if not by_unique:
        return
    for old in ctx.staging.members_by_unique_id(ctx.list_id, list(by_unique)):
        member = by_unique[old["mc_unique_id"]]
        if old["mc_hash"] == member["id"]:
            continue
        email = member.get("email_address")
        existing[member["id"]] = ctx.staging.follow_email_change(
            ctx.list_id, old["id"], member["id"], email
        )
        ctx.log(f"Followed an email change at Mailchimp: {old['mc_email']} -> {email}")


def previous_view_floor(ctx: RunContext) -> str | None:
    """A time mcsync's staged view of every member was still true at: the start of the last
    completed run, less the window overlap (for clock skew). That run read every member
    changed in its window, and each earlier run the rest, so a staged status differs from
    Mailchimp's only by a change made after that run read it, hence after its start. Without
    this, a change is bounded below only by the member's previous `last_changed`, which may
    be years old, and every CiviCRM change since would look unorderable against it."""
    last = parse_iso(ctx.staging.state(ctx.list_id).get("last_run_started"))
    return iso(last - WINDOW_OVERLAP) if last else None


def _status_change_time(
    expected: dict[str, Any],
    member: dict[str, Any],
    old: Any,
    changed: str,
    seen_by: str | None = None,
) -> tuple[str, str | None]:
    """(when the member's status changed, a time it changed after when that is not exact).

    Mailchimp has one ``last_changed`` per member, so a status change followed by a profile
    edit before this fetch is dated by the edit. The change happened after mcsync's previous
    view of the member (its ``last_changed`` then) and by ``changed``. A change mcsync pushed
    keeps its choice's time; a subscribe is dated by ``timestamp_opt`` (the opt-in time) when
    that lies in the interval. Otherwise the previous view is returned as the lower bound:
    `date_status_changes` dates the change exactly when CiviCRM changed inside the interval
    (only then does the order matter), and reconcile leaves the row alone if it cannot."""
    if expected.get("status") == member.get("status") and expected.get("at"):
        return str(expected["at"]), None
    before = max(filter(None, (old["mc_last_changed"], seen_by)), default=None)
    if before is None or before >= changed:
        return changed, None
    if member.get("status") == "subscribed":
        opted = iso(parse_iso(member.get("timestamp_opt") or None))
        if opted is not None and before < opted <= changed:
            return opted, None
    return changed, before


def _possible_round_trip(
    expected: dict[str, Any],
    member: dict[str, Any],
    old: Any,
    status_at: str,
    changed: str,
    seen_by: str | None = None,
) -> tuple[str, str | None]:
    """(the status time, a bound) for a member whose status reads as before but whose
    ``last_changed`` moved: the status may have gone and come back since mcsync's previous
    view of it (unsubscribed, pending, unsubscribed), so its latest change is either the
    known ``status_at`` or lies after that view and by ``changed``. A subscribe whose opt-in
    time lies in that interval is dated by it; otherwise the previous view is returned as the
    bound, and `date_status_changes` reads the feed only when CiviCRM changed inside the
    interval. An archived member, or a change mcsync pushed itself, has no bound."""
    before = max(filter(None, (old["mc_last_changed"], seen_by)), default=None)
    status = member.get("status")
    pushed = expected.get("status") == status and expected.get("at")
    if before is None or before >= changed or status == "archived" or pushed:
        return status_at, None
    if status == "subscribed":
        opted = iso(parse_iso(member.get("timestamp_opt") or None))
        if opted is not None and before < opted <= changed:
            return max(opted, status_at), None
    return status_at, before


def date_status_changes(ctx: RunContext) -> None:
    """Date exactly the Mailchimp status changes whose order against a CiviCRM change is
    unknown (DESIGN §4): the status changed after mcsync's previous view of the member and by
    its ``last_changed``, and the contact's group changed strictly in between. An unsubscribe
    is dated by the newest ``unsub`` event of the member's activity feed, when it lies in the
    interval; the time becomes the status change time. A change not dated (no such event, an
    API error, another status) keeps its bound, and reconcile leaves the row alone. Rows with
    no CiviCRM change in the interval cost nothing. One round of concurrent reads per
    committed chunk, resumable by the stage cursor."""
    chunk = max(1, ctx.mailchimp.max_connections)

    def read_feeds(cursor: int) -> list[tuple[Any, datetime | None]]:
        """The next rows to date, each with its feed's answer (None: not read)."""
        rows = ctx.staging.undated_status_changes(ctx.list_id, ctx.group_id, cursor, chunk)
        if not rows:
            return []
        readable = [r for r in rows if r["mc_status"] in _FEED_EVENTS]
        times = ctx.mailchimp.unsubscribe_times(
            ctx.list_id,
            [r["mc_hash"] for r in readable],
            activities=[_FEED_EVENTS[r["mc_status"]] for r in readable],
        )
        answers = dict(zip((r["id"] for r in readable), times, strict=True))
        return [(r, answers.get(r["id"])) for r in rows]

    dated_count = undated = 0
    for read in ctx.staging.each_chunk(
        ctx.list_id, ctx.budget.check, read_feeds, key=lambda pair: int(pair[0]["id"])
    ):
        dated = [
            (int(row["id"]), at) for row, moment in read if (at := _dated(row, moment)) is not None
        ]
        ctx.staging.date_status_changes(dated)
        dated_count += len(dated)
        undated += len(read) - len(dated)
        ctx.progress("date Mailchimp status changes", dated_count + undated, None)
    if dated_count:
        ctx.log(f"Dated {dated_count} Mailchimp status change(s) exactly (activity feed)")
    if undated:
        ctx.log(
            f"{undated} Mailchimp status change(s) could not be dated against a CiviCRM "
            "change in the same interval: left alone"
        )


# The activity feed event that dates a change to each status (other statuses have none).
_FEED_EVENTS = {"unsubscribed": "unsub", "subscribed": "signup"}


def _dated(row: Any, moment: datetime | None) -> str | None:
    """The exact status change time a feed answer gives a row with a bound, or None (the
    row stays undated). The newest event inside (bound, ``last_changed``] dates it. None
    inside for a status that read as before (a possible round trip, its time not after the
    bound): it did not change since mcsync's previous view, so it keeps its known time."""
    if moment is None:
        return None
    after, status_at = row["mc_status_after"], row["mc_status_at"]
    until = max(status_at, row["mc_last_changed"] or status_at)
    at = iso(moment) if moment != NO_EVENT else None
    if at is not None and after < at <= until:
        return at
    if (at is None or at <= after) and status_at <= after:
        return str(status_at)
    return None


def since_for_new_run(last_run_started: str | None, since_option: str | None) -> datetime | None:
    """The Mailchimp window of a new run: None means a full fetch (seed-behaviour §3.3, fixed
    once per run and stored, unlike the seed)."""
    if since_option == "ever":
        return None
    if since_option:
        moment = datetime.fromisoformat(since_option)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment - WINDOW_OVERLAP
    last = parse_iso(last_run_started)
    return None if last is None else last - WINDOW_OVERLAP

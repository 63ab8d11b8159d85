"""CiviCRM fetch stages: group membership (full runs), subscription history (incremental
runs), modified contacts (every run) and missing contacts, into the staging DB; plus the
contact and email storing the contact stages share.

Each stage commits its data with its progress marker one chunk at a time, checks the budget
between chunks, and returns when the stage is complete (the caller moves to the next stage).

The three large reads (group membership, subscription history, modified contacts) go by id
ranges (`read_by_ranges`): a first page alone (a small read costs one request, as before);
when it is full, one request finds the highest id, the rest of the id space is split into
ranges, and each range is keyset-paged to its end, `[civicrm] concurrency` requests at once.
Every page is committed with its range's cursor (`civi_sweeps`), so a stopped run resumes
each range where it was, and a full run's "who left the group" step waits for every range.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from mcsync.api.civicrm import IdRange, RangePage, split_ranges
from mcsync.errors import ApiError, StorageError
from mcsync.rules.addresses import fold_email
from mcsync.stages.context import TRACKING_MARKER, WINDOW_OVERLAP, RunContext
from mcsync.store.database import iso

CONTACT_FLAGS = ("is_deleted", "is_deceased", "do_not_email", "is_opt_out")
PRIVACY_FLAGS = ("is_deceased", "do_not_email", "is_opt_out")
# Contact ids per APIv4 `IN` filter (Email, SubscriptionHistory, Contact reads). Requests are
# POSTed form bodies (5000 ids are ~40 KB; PHP's post_max_size is 8 MB) and an indexed `IN` of
# a few thousand integers is cheap for MySQL, so a run's reads follow its changes / 5000, not
# / 500 (issue 12: 10,000 changed contacts' emails or history cost 2 requests, not 20).
IN_CHUNK = 5000
# Id ranges per allowed connection: more ranges than connections keep every connection busy
# when ids are spread unevenly; each range costs at most one short page more.
RANGES_PER_CONNECTION = 4


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- CiviCRM: marks for a new run ------------------------------------------------------------
EMPTY_SITE_MARK = "1970-01-01 00:00:00"
"""The modified-contacts mark of a site with no contacts: before any contact's modified_date."""


def civicrm_marks(ctx: RunContext) -> tuple[int, str | None, str | None]:
    """The newest SubscriptionHistory id and Contact.modified_date now: where the next
    incremental run starts (ids avoid clock skew; dates are the server's own); and CiviCRM's
    own clock now (APIv4 ``NOW()``, in the same request; None on a site without it): every
    contact change after it is read by this run or a later one (`store_contacts`)."""
    history = ctx.civicrm.call(
        "SubscriptionHistory", "get", {"select": ["id"], "orderBy": {"id": "DESC"}, "limit": 1}
    )
    params: dict[str, Any] = {
        "select": ["modified_date", "NOW() AS mcsync_now"],
        "where": [["is_deleted", "IN", [True, False]]],
        "orderBy": {"modified_date": "DESC"},
        "limit": 1,
    }
    try:
        modified = ctx.civicrm.call("Contact", "get", params)
    except ApiError:  # an older CiviCRM without NOW()
        modified = ctx.civicrm.call("Contact", "get", {**params, "select": ["modified_date"]})
    top_id = int(history[0]["id"]) if history else 0
    # No contact at all (a new site): every contact there will be is newer than the run's
    # start, so the next run reads them all. Without a mark it would read none, and a flag
    # set on a contact this run creates would wait for a full run (issue 10).
    top_modified = modified[0]["modified_date"] if modified else EMPTY_SITE_MARK
    now = modified[0].get("mcsync_now") if modified else None
    return top_id, top_modified, now


def marks_since(ctx: RunContext, since: datetime) -> tuple[int, str]:
    """`--since DATE` re-reads CiviCRM from that date too: the history bookmark goes back to
    before the first SubscriptionHistory row of the audience's groups dated from DATE (less
    the window's overlap; ids, not dates, are what the history stage pages by, and a row
    dated later always has a larger id than the first one found), and the modified-contacts
    mark back to DATE. Never forward: a later DATE must not skip changes not read yet."""
    state = ctx.staging.state(ctx.list_id)
    local = ctx.civi_local(since - WINDOW_OVERLAP)
    first = ctx.civicrm.call(
        "SubscriptionHistory",
        "get",
        {
            "select": ["id"],
            "where": [["date", ">=", local], ["group_id", "IN", ctx.all_groups]],
            "orderBy": {"id": "ASC"},
            "limit": 1,
        },
    )
    bookmark = int(state["history_bookmark"] or 0)
    if first:
        bookmark = min(bookmark, int(first[0]["id"]) - 1)
    modified = state["modified_since"]
    return bookmark, local if not modified or local < str(modified) else str(modified)


# -- CiviCRM: reads by id ranges ------------------------------------------------------------
def read_by_ranges(
    ctx: RunContext,
    sweep: str,
    entity: str,
    params: dict[str, Any],
    *,
    start: int,
    store: Callable[[RangePage, Any], None],
    progress: str,
    ordered: bool = False,
    prepare: Callable[[RangePage], Any] | None = None,
) -> None:
    """Read every row of ``entity`` matching ``params`` with an id above ``start``, by id
    ranges read concurrently; ``store(page, prepared)`` stages each page inside the
    transaction that commits its range's cursor, ``prepared`` being what ``prepare(page)``
    returned before it (requests a page calls for are made there, outside the transaction,
    which must not hold the database's write lock over a round trip). Returns once every
    range is read to its end (resuming this run's ranges, if an earlier invocation planned
    them). ``ordered`` stores pages in id order (history rows must apply in the order they
    happened)."""
    staging, list_id, run_id = ctx.staging, ctx.list_id, ctx.run_id
    page_size = ctx.sync.page_size_civicrm
    workers = max(1, ctx.civicrm.max_connections)
    ranges = staging.sweep_ranges(list_id, sweep, run_id)
    if not ranges:
        staging.plan_sweep(list_id, sweep, run_id, start)
        ranges = staging.sweep_ranges(list_id, sweep, run_id)
    read = 0

    def commit(lo: int, page: RangePage) -> None:
        nonlocal read
        prepared = prepare(page) if prepare is not None and page.rows else None
        with staging.atomic():
            if page.rows:
                store(page, prepared)
            staging.advance_sweep(list_id, sweep, lo, page.cursor, page.done)
        read += len(page.rows)
        ctx.progress(progress, read, None)
        ctx.budget.check()

    unread = [r for r in ranges if not r["done"]]
    if len(unread) == 1 and unread[0]["hi"] is None and workers > 1:
        lo, cursor = unread[0]["lo"], unread[0]["cursor"]
        if cursor == lo:
            # A first page alone: most reads fit in one, and cost one request as before.
            ctx.budget.check()
            pages = ctx.civicrm.range_pages(
                entity, params, [IdRange(cursor, None)], page_size=page_size, concurrency=1
            )
            try:
                first = next(pages)
            finally:
                pages.close()
            commit(lo, first)
            if first.done:
                return
            cursor = first.cursor
        top = ctx.civicrm.top_id(entity, params.get("where", []))
        parts = split_ranges(
            cursor, top, page_size=page_size, count=workers * RANGES_PER_CONNECTION
        )
        if len(parts) > 1:
            staging.split_sweep(list_id, sweep, run_id, lo, parts)
        ranges = staging.sweep_ranges(list_id, sweep, run_id)
        unread = [r for r in ranges if not r["done"]]
    if unread:
        ctx.budget.check()
        pages = ctx.civicrm.range_pages(
            entity,
            params,
            [IdRange(r["cursor"], r["hi"]) for r in unread],
            page_size=page_size,
            concurrency=workers,
            ordered=ordered,
        )
        try:
            for page in pages:
                commit(unread[page.index]["lo"], page)
        finally:
            pages.close()
    if not staging.sweep_complete(list_id, sweep, run_id):
        raise StorageError(f"CiviCRM {entity} read by id ranges ended with ranges unread")


# -- CiviCRM: full group membership -----------------------------------------------------------
def fetch_civicrm_groups(ctx: RunContext) -> None:
    """Full run: read every GroupContact of the audience's groups (by id ranges, each to its
    end), then forget pairs that were not seen (merged or hard-deleted contacts leave no
    history). The forgetting runs only once every range is read: an unread range is never
    taken for people who left. No change date is kept for a status read: one that reads as
    staged may have gone and come back since (Removed, Added, Removed), and its old date would
    make an older Mailchimp change look newer; `load_history_dates` dates the pairs where the
    sides disagree."""
    state = ctx.staging.state(ctx.list_id)
    params = {
        "select": [
            "id",
            "contact_id",
            "group_id",
            "status",
            *(f"contact_id.{flag}" for flag in CONTACT_FLAGS),
            "contact_id.first_name",
            "contact_id.last_name",
            "contact_id.modified_date",
        ],
        "where": [["group_id", "IN", ctx.all_groups]],
    }

    def store(page: RangePage, _: Any) -> None:
        ctx.staging.store_group_rows(
            [(r["contact_id"], r["group_id"], r["status"], ctx.run_id) for r in page.rows]
        )
        store_contacts(ctx, [contact_from_join(r) for r in page.rows])

    read_by_ranges(
        ctx,
        "groups",
        "GroupContact",
        params,
        start=state["cursor"],
        store=store,
        progress="fetch CiviCRM groups",
    )
    with ctx.staging.atomic():
        ctx.staging.forget_unseen_group_rows(ctx.all_groups, ctx.run_id)
    # A contact hard-deleted (or merged away) since an earlier run vanished from the groups
    # without a trace; rows still pointing at it would queue writes CiviCRM must refuse.
    unseen = ctx.staging.row_contacts_unseen(ctx.list_id, ctx.run_id)
    if unseen:
        _check_contacts_exist(ctx, unseen)


def contact_from_join(record: dict[str, Any]) -> dict[str, Any]:
    contact = {"contact_id": record["contact_id"]}
    for key in (*CONTACT_FLAGS, "first_name", "last_name", "modified_date"):
        joined = f"contact_id.{key}"
        if joined in record:
            contact[key] = record[joined]
    return contact


def store_contacts(ctx: RunContext, contacts: list[dict[str, Any]]) -> None:
    """Upsert contacts' flags and names. `flags_at` keeps when the privacy flags were set as
    far as mcsync knows: the contact's modified_date when a flag is first seen set (the flag's
    own change, or later), kept while no new flag appears, so a later unrelated edit (an
    address, mcsync's own hold) does not make an old flag look new (issue 10). `unflagged_at`
    keeps the modified_date of the last version seen without a flag: a flag seen later was
    set after it (trashing a contact moves its modified_date, hiding the flag's own time).

    A later edit made before that first sight moves modified_date on too, so a flag first seen
    on a contact staged before is also bounded below: `flags_after`, CiviCRM's clock when the
    previous complete run started (that run read the contacts changed in its window after
    that, and saw no such flag). A contact new to staging has no such bound."""
    flags_after = ctx.staging.state(ctx.list_id).get("last_civi_started")
    ctx.staging.store_contacts(
        (
            c["contact_id"],
            *(int(bool(c.get(flag))) for flag in CONTACT_FLAGS),
            c.get("first_name"),
            c.get("last_name"),
            *(
                (iso(ctx.civi_to_utc(c.get("modified_date"))), None)
                if any(c.get(flag) for flag in PRIVACY_FLAGS)
                else (None, iso(ctx.civi_to_utc(c.get("modified_date"))))
            ),
            flags_after,
        )
        for c in contacts
    )


def store_emails(ctx: RunContext, records: list[dict[str, Any]]) -> None:
    """Replace what is staged for the emails returned (by email id)."""
    ctx.staging.store_emails(
        (
            r["id"],
            r["contact_id"],
            r["email"],
            fold_email(r["email"] or ""),
            int(bool(r.get("is_primary"))),
            int(bool(r.get("is_bulkmail"))),
            int(r.get("on_hold") or 0),
        )
        for r in records
        if r.get("email")
    )


EMAIL_SELECT = [
    "id",
    "contact_id",
    "email",
    "is_primary",
    "is_bulkmail",
    "on_hold",
    *(f"contact_id.{flag}" for flag in CONTACT_FLAGS),
    "contact_id.first_name",
    "contact_id.last_name",
    "contact_id.modified_date",
]


def fetch_emails_of_contacts(ctx: RunContext, contact_ids: Sequence[int]) -> None:
    """Refresh staged emails and flags for these contacts (emails they lost are dropped)."""
    for chunk in chunks(list(contact_ids), IN_CHUNK):
        records = ctx.civicrm.call(
            "Email",
            "get",
            {"select": EMAIL_SELECT, "where": [["contact_id", "IN", list(chunk)]], "limit": 0},
        )
        with ctx.staging.atomic():
            ctx.staging.drop_emails_of(chunk)
            store_emails(ctx, records)
            store_contacts(ctx, [contact_from_join(r) for r in records])


# -- CiviCRM: incremental changes ------------------------------------------------------------
def fetch_civicrm_history(ctx: RunContext) -> None:
    """Incremental run: subscription changes since the stored history id (civicrm-api.md §2.6).

    Rows mcsync wrote itself (tracking marker) are skipped: staging already knows them, and
    counting them as a person's choice would let our own echo win the next conflict.
    """
    state = ctx.staging.state(ctx.list_id)
    params = {
        "select": ["id", "contact_id", "group_id", "status", "date", "tracking"],
        # mcsync's own writes are left out by the server: after a large sync the next run
        # need not page through them (and they are skipped below too, should a server not
        # filter).
        "where": [
            ["group_id", "IN", ctx.all_groups],
            ["OR", [["tracking", "IS NULL"], ["tracking", "!=", TRACKING_MARKER]]],
        ],
    }

    def store(page: RangePage, _: Any) -> None:
        changes = [r for r in page.rows if (r.get("tracking") or "") != TRACKING_MARKER]
        ctx.staging.store_group_history(
            (
                r["contact_id"],
                r["group_id"],
                _history_status(r["status"]),
                iso(ctx.civi_to_utc(r["date"])),
            )
            for r in changes
        )
        ctx.staging.mark_contacts_todo(ctx.list_id, {r["contact_id"] for r in changes})
        ctx.staging.set_state(ctx.list_id, history_bookmark=page.cursor)

    read_by_ranges(
        ctx,
        "history",
        "SubscriptionHistory",
        params,
        start=state["history_bookmark"],
        store=store,
        progress="fetch CiviCRM history",
        ordered=True,
    )


def _history_status(status: str) -> str | None:
    """History says Deleted when a GroupContact row was hard-deleted: not in the group."""
    return None if status == "Deleted" else status


def fetch_civicrm_modified(ctx: RunContext) -> None:
    """Every run: contacts modified since the window (opt-outs, trash, deceased, email edits
    and holds leave no subscription history). Full runs need it too: they move the window's
    mark to their start, and their group read does not refresh emails (issue 10)."""
    state = ctx.staging.state(ctx.list_id)
    since_local = state["modified_since"]
    if not since_local:
        return
    since_utc = ctx.civi_to_utc(since_local)
    assert since_utc is not None
    window_start = ctx.civi_local(since_utc - WINDOW_OVERLAP)
    params = {
        "select": [
            "id",
            *CONTACT_FLAGS,
            "first_name",
            "last_name",
            "modified_date",
            "created_date",
            "source",
        ],
        "where": [["modified_date", ">=", window_start], ["is_deleted", "IN", [True, False]]],
    }

    def prepare(page: RangePage) -> set[int]:
        known = _changed_since_seen(ctx, page.rows, since_local)
        if known:
            fetch_emails_of_contacts(ctx, known)
        return set(known)

    def store(page: RangePage, known: set[int]) -> None:
        changed = [r for r in page.rows if r["id"] in known]
        store_contacts(ctx, [{"contact_id": r["id"], **r} for r in changed])
        ctx.staging.set_contacts_modified((r.get("modified_date"), r["id"]) for r in changed)
        ctx.staging.mark_contacts_todo(ctx.list_id, known)

    read_by_ranges(
        ctx,
        "modified",
        "Contact",
        params,
        start=state["cursor"],
        store=store,
        progress="fetch CiviCRM contacts",
        prepare=prepare,
    )


def _changed_since_seen(
    ctx: RunContext, page: list[dict[str, Any]], previous_mark: str
) -> list[int]:
    """The audience's contacts on this page that may have changed since mcsync last read
    them. A contact whose modified_date is what staging saw, and older than the previous
    run's mark (taken before that run read anything), has not changed since: the window's
    overlap need not fetch it again."""
    known = ctx.staging.known_contacts([r["id"] for r in page if not _own_untouched(r)])
    if not known:
        return []
    seen = ctx.staging.contacts_modified(known)
    modified = {r["id"]: r.get("modified_date") for r in page}
    return [
        c
        for c in known
        if not (
            modified[c] is not None
            and seen.get(c) == modified[c]
            and str(modified[c]) < previous_mark
        )
    ]


def _own_untouched(contact: dict[str, Any]) -> bool:
    """A contact mcsync created (``source`` is its marker) that nothing has modified since:
    its modified_date is still its created_date. mcsync creates a contact with its email in
    one request and reads it straight after (``create_contacts``), so staging holds it as it
    is; any later edit (a flag, trash, an email edit or hold, by staff or by mcsync) moves
    modified_date on and the contact is read as usual. Left out, the run after a large first
    sync does not read back every contact it created (issue 12). A contact mcsync never
    staged is loaded by ``fetch_missing_contacts`` whatever its dates. CiviCRM's dates are
    whole seconds: only an edit made in the very second of the creation, after mcsync's read,
    would go unseen (as a Mailchimp change in the second of mcsync's own write would)."""
    created = contact.get("created_date")
    return (
        contact.get("source") == TRACKING_MARKER
        and created is not None
        and contact.get("modified_date") == created
    )


def mark_contacts_todo(ctx: RunContext, contact_ids: Iterable[int]) -> None:
    ctx.staging.mark_contacts_todo(ctx.list_id, contact_ids)


def fetch_missing_contacts(ctx: RunContext) -> None:
    """Contacts the audience refers to but staging has no flags or emails for: Added to the
    group, or matched to a member (a run killed between creating a contact and reading its
    emails leaves such a row; unloaded, it would read as 'no contact' on every run); and
    flagged contacts subscribed at Mailchimp whose flags' time staging does not know yet."""
    _load_unknown_flag_times(ctx)
    while True:
        ctx.budget.check()
        missing = ctx.staging.missing_contacts(ctx.list_id, ctx.group_id, IN_CHUNK * 4)
        if not missing:
            return
        fetch_emails_of_contacts(ctx, missing)
        found = ctx.staging.contacts_present(missing)
        gone = [c for c in missing if c not in found]
        if gone:
            _check_contacts_exist(ctx, gone)


def _load_unknown_flag_times(ctx: RunContext) -> None:
    """Reconcile weighs a privacy flag against a Mailchimp subscribe by their times; a contact
    staged before mcsync kept the flags' time (or read without it) gets it now. One bounded
    pass over the rows to decide, so contacts CiviCRM cannot date are not asked for again."""
    unknown = ctx.staging.flagged_contacts_undated(ctx.list_id)
    if unknown:
        _check_contacts_exist(ctx, unknown)


def _check_contacts_exist(ctx: RunContext, ids: Sequence[int]) -> None:
    """Contacts with no email: load their flags; those CiviCRM no longer has are marked gone."""
    for chunk in chunks(list(ids), IN_CHUNK):
        records = ctx.civicrm.call(
            "Contact",
            "get",
            {
                "select": ["id", *CONTACT_FLAGS, "first_name", "last_name", "modified_date"],
                "where": [["id", "IN", list(chunk)], ["is_deleted", "IN", [True, False]]],
                "limit": 0,
            },
        )
        seen = {r["id"] for r in records}
        with ctx.staging.atomic():
            store_contacts(ctx, [{"contact_id": r["id"], **r} for r in records])
            ctx.staging.mark_contacts_gone(c for c in chunk if c not in seen)

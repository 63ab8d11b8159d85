"""CiviCRM fetch stages: group membership (full runs), subscription history (incremental
runs), modified contacts (every run) and missing contacts, into the staging DB; plus the
contact and email storing the contact stages share.

Each stage commits its data with its progress marker one chunk at a time, checks the budget
between chunks, and returns when the stage is complete (the caller moves to the next stage).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from mcsync.errors import ApiError
from mcsync.rules.addresses import fold_email
from mcsync.stages.context import TRACKING_MARKER, WINDOW_OVERLAP, RunContext
from mcsync.store.database import iso

CONTACT_FLAGS = ("is_deleted", "is_deceased", "do_not_email", "is_opt_out")
PRIVACY_FLAGS = ("is_deceased", "do_not_email", "is_opt_out")
IN_CHUNK = 500  # ids or emails per APIv4 `IN` filter


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- CiviCRM: marks for a new run ------------------------------------------------------------
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
    top_modified = modified[0]["modified_date"] if modified else None
    now = modified[0].get("mcsync_now") if modified else None
    return top_id, top_modified, now


# -- CiviCRM: full group membership -----------------------------------------------------------
def fetch_civicrm_groups(ctx: RunContext) -> None:
    """Full run: page every GroupContact of the audience's groups, then forget pairs that were
    not seen (merged or hard-deleted contacts leave no history). No change date is kept for
    a status read: one that reads as staged may have gone and come back since (Removed,
    Added, Removed), and its old date would make an older Mailchimp change look newer;
    `load_history_dates` dates the pairs where the sides disagree."""
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
    done = 0
    for page in ctx.civicrm.get_pages(
        "GroupContact", params, page_size=ctx.sync.page_size_civicrm, after_id=state["cursor"]
    ):
        with ctx.staging.atomic():
            ctx.staging.conn.executemany(
                "INSERT INTO group_status (contact_id, group_id, status, seen_run) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (contact_id, group_id) DO UPDATE SET "
                "status = excluded.status, seen_run = excluded.seen_run, changed_at = NULL",
                [(r["contact_id"], r["group_id"], r["status"], ctx.run_id) for r in page],
            )
            store_contacts(ctx, [contact_from_join(r) for r in page])
            ctx.staging.set_state(ctx.list_id, cursor=page[-1]["id"])
        done += len(page)
        ctx.progress("fetch CiviCRM groups", done, None)
        ctx.budget.check()
    placeholders = ",".join("?" * len(ctx.all_groups))
    with ctx.staging.atomic():
        ctx.staging.execute(
            f"UPDATE group_status SET status = NULL, changed_at = NULL WHERE group_id IN "
            f"({placeholders}) AND seen_run IS NOT ? AND status IS NOT NULL",
            (*ctx.all_groups, ctx.run_id),
        )
    # A contact hard-deleted (or merged away) since an earlier run vanished from the groups
    # without a trace; rows still pointing at it would queue writes CiviCRM must refuse.
    unseen = [
        r[0]
        for r in ctx.staging.query(
            "SELECT DISTINCT r.contact_id FROM rows r JOIN contacts c ON c.contact_id = "
            "r.contact_id WHERE r.list_id = ? AND c.gone = 0 AND NOT EXISTS (SELECT 1 FROM "
            "group_status g WHERE g.contact_id = r.contact_id AND g.seen_run IS ?)",
            (ctx.list_id, ctx.run_id),
        )
    ]
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
    address, mcsync's own hold) does not make an old flag look new (issue 10).

    A later edit made before that first sight moves modified_date on too, so a flag first seen
    on a contact staged before is also bounded below: `flags_after`, CiviCRM's clock when the
    previous complete run started (that run read the contacts changed in its window after
    that, and saw no such flag). A contact new to staging has no such bound."""
    flags_after = ctx.staging.state(ctx.list_id).get("last_civi_started")
    rows = [
        (
            c["contact_id"],
            *(int(bool(c.get(flag))) for flag in CONTACT_FLAGS),
            c.get("first_name"),
            c.get("last_name"),
            iso(ctx.civi_to_utc(c.get("modified_date")))
            if any(c.get(flag) for flag in PRIVACY_FLAGS)
            else None,
            flags_after,
        )
        for c in contacts
    ]
    ctx.staging.conn.executemany(
        "INSERT INTO contacts (contact_id, is_deleted, is_deceased, do_not_email, is_opt_out, "
        "first_name, last_name, gone, flags_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8) "
        "ON CONFLICT (contact_id) DO UPDATE SET is_deleted = excluded.is_deleted, "
        "is_deceased = excluded.is_deceased, do_not_email = excluded.do_not_email, "
        "is_opt_out = excluded.is_opt_out, first_name = excluded.first_name, "
        "last_name = excluded.last_name, gone = 0, flags_at = CASE "
        f"WHEN {_NO_FLAG} THEN NULL WHEN {_NO_NEW_FLAG} THEN contacts.flags_at "
        "ELSE excluded.flags_at END, flags_after = CASE "
        f"WHEN {_NO_FLAG} THEN NULL WHEN {_NEW_FLAG} THEN ?9 "
        "WHEN contacts.flags_at IS NOT NULL THEN contacts.flags_after ELSE NULL END",
        rows,
    )


# The contact read has no privacy flag set; it has one staging did not have; it has none
# that staging did not have, with their time known.
_NO_FLAG = "excluded.is_deceased + excluded.do_not_email + excluded.is_opt_out = 0"
_NEW_FLAG = (
    "(excluded.is_deceased > contacts.is_deceased OR excluded.do_not_email > "
    "contacts.do_not_email OR excluded.is_opt_out > contacts.is_opt_out)"
)
_NO_NEW_FLAG = (
    "contacts.flags_at IS NOT NULL AND excluded.is_deceased <= contacts.is_deceased "
    "AND excluded.do_not_email <= contacts.do_not_email "
    "AND excluded.is_opt_out <= contacts.is_opt_out"
)


def store_emails(ctx: RunContext, records: list[dict[str, Any]]) -> None:
    """Replace what is staged for the emails returned (by email id)."""
    ctx.staging.conn.executemany(
        "INSERT OR REPLACE INTO emails (email_id, contact_id, email, email_lc, is_primary, "
        "is_bulkmail, on_hold) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
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
        ],
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
            placeholders = ",".join("?" * len(chunk))
            ctx.staging.execute(
                f"DELETE FROM emails WHERE contact_id IN ({placeholders})", tuple(chunk)
            )
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
        "where": [["group_id", "IN", ctx.all_groups]],
    }
    done = 0
    for page in ctx.civicrm.get_pages(
        "SubscriptionHistory",
        params,
        page_size=ctx.sync.page_size_civicrm,
        after_id=state["history_bookmark"],
    ):
        changes = [r for r in page if (r.get("tracking") or "") != TRACKING_MARKER]
        with ctx.staging.atomic():
            ctx.staging.conn.executemany(
                "INSERT INTO group_status (contact_id, group_id, status, changed_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (contact_id, group_id) DO UPDATE SET "
                "status = excluded.status, changed_at = excluded.changed_at",
                [
                    (
                        r["contact_id"],
                        r["group_id"],
                        _history_status(r["status"]),
                        iso(ctx.civi_to_utc(r["date"])),
                    )
                    for r in changes
                ],
            )
            mark_contacts_todo(ctx, {r["contact_id"] for r in changes})
            ctx.staging.set_state(ctx.list_id, history_bookmark=page[-1]["id"])
        done += len(page)
        ctx.progress("fetch CiviCRM history", done, None)
        ctx.budget.check()


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
        "select": ["id", *CONTACT_FLAGS, "first_name", "last_name", "modified_date"],
        "where": [["modified_date", ">=", window_start], ["is_deleted", "IN", [True, False]]],
    }
    done = 0
    for page in ctx.civicrm.get_pages(
        "Contact", params, page_size=ctx.sync.page_size_civicrm, after_id=state["cursor"]
    ):
        known = _changed_since_seen(ctx, page, since_local)
        if known:
            fetch_emails_of_contacts(ctx, known)
        with ctx.staging.atomic():
            store_contacts(
                ctx, [{"contact_id": r["id"], **r} for r in page if r["id"] in set(known)]
            )
            ctx.staging.conn.executemany(
                "UPDATE contacts SET modified_date = ? WHERE contact_id = ?",
                [(r.get("modified_date"), r["id"]) for r in page if r["id"] in set(known)],
            )
            mark_contacts_todo(ctx, set(known))
            ctx.staging.set_state(ctx.list_id, cursor=page[-1]["id"])
        done += len(page)
        ctx.progress("fetch CiviCRM contacts", done, None)
        ctx.budget.check()


def _changed_since_seen(
    ctx: RunContext, page: list[dict[str, Any]], previous_mark: str
) -> list[int]:
    """The audience's contacts on this page that may have changed since mcsync last read
    them. A contact whose modified_date is what staging saw, and older than the previous
    run's mark (taken before that run read anything), has not changed since: the window's
    overlap need not fetch it again."""
    known = _known_contacts(ctx, [r["id"] for r in page])
    if not known:
        return []
    marks = ",".join("?" * len(known))
    seen = {
        r[0]: r[1]
        for r in ctx.staging.query(
            f"SELECT contact_id, modified_date FROM contacts WHERE contact_id IN ({marks})",
            known,
        )
    }
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


def _known_contacts(ctx: RunContext, ids: Sequence[int]) -> list[int]:
    if not ids:
        return []
    placeholders = ",".join("?" * len(ids))
    found = ctx.staging.query(
        f"SELECT DISTINCT contact_id FROM rows WHERE contact_id IN ({placeholders}) "
        f"UNION SELECT DISTINCT contact_id FROM group_status WHERE contact_id IN ({placeholders})",
        (*ids, *ids),
    )
    return sorted(r[0] for r in found)


def mark_contacts_todo(ctx: RunContext, contact_ids: Iterable[int]) -> None:
    ids = list(contact_ids)
    for chunk in chunks(ids, IN_CHUNK):
        placeholders = ",".join("?" * len(chunk))
        ctx.staging.execute(
            f"UPDATE rows SET sync_status = 'todo' WHERE list_id = ? AND sync_status != 'live' "
            f"AND contact_id IN ({placeholders})",
            (ctx.list_id, *chunk),
        )


def fetch_missing_contacts(ctx: RunContext) -> None:
    """Contacts the audience refers to but staging has no flags or emails for: Added to the
    group, or matched to a member (a run killed between creating a contact and reading its
    emails leaves such a row; unloaded, it would read as 'no contact' on every run); and
    flagged contacts subscribed at Mailchimp whose flags' time staging does not know yet."""
    _load_unknown_flag_times(ctx)
    while True:
        ctx.budget.check()
        missing = [
            r[0]
            for r in ctx.staging.query(
                "SELECT DISTINCT g.contact_id FROM group_status g "
                "LEFT JOIN contacts c ON c.contact_id = g.contact_id "
                "WHERE g.group_id = ? AND g.status = 'Added' AND c.contact_id IS NULL "
                "UNION SELECT DISTINCT r.contact_id FROM rows r "
                "LEFT JOIN contacts c ON c.contact_id = r.contact_id "
                "WHERE r.list_id = ? AND r.contact_id IS NOT NULL AND c.contact_id IS NULL "
                "LIMIT ?",
                (ctx.group_id, ctx.list_id, IN_CHUNK * 4),
            )
        ]
        if not missing:
            return
        fetch_emails_of_contacts(ctx, missing)
        found = _contacts_present(ctx, missing)
        gone = [c for c in missing if c not in found]
        if gone:
            _check_contacts_exist(ctx, gone)


def _load_unknown_flag_times(ctx: RunContext) -> None:
    """Reconcile weighs a privacy flag against a Mailchimp subscribe by their times; a contact
    staged before mcsync kept the flags' time (or read without it) gets it now. One bounded
    pass over the rows to decide, so contacts CiviCRM cannot date are not asked for again."""
    unknown = [
        r[0]
        for r in ctx.staging.query(
            "SELECT DISTINCT c.contact_id FROM rows r JOIN contacts c ON c.contact_id = "
            "r.contact_id WHERE r.list_id = ? AND r.sync_status = 'todo' "
            "AND r.mc_status IN ('subscribed', 'pending') AND c.flags_at IS NULL "
            "AND c.gone = 0 AND c.is_deleted = 0 "
            "AND c.is_deceased + c.do_not_email + c.is_opt_out > 0",
            (ctx.list_id,),
        )
    ]
    if unknown:
        _check_contacts_exist(ctx, unknown)


def _contacts_present(ctx: RunContext, ids: Sequence[int]) -> set[int]:
    placeholders = ",".join("?" * len(ids))
    return {
        r[0]
        for r in ctx.staging.query(
            f"SELECT contact_id FROM contacts WHERE contact_id IN ({placeholders})", tuple(ids)
        )
    }


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
            ctx.staging.conn.executemany(
                "INSERT INTO contacts (contact_id, gone) VALUES (?, 1) "
                "ON CONFLICT (contact_id) DO UPDATE SET gone = 1",
                [(c,) for c in chunk if c not in seen],
            )

"""The push_civicrm stage: queued group-status changes, holds and new emails go to CiviCRM
as bulk `save` calls; a change a person made in CiviCRM during the run is never overwritten.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from mcsync.errors import ApiError
from mcsync.rules.reasons import Reason
from mcsync.stages import overtaken
from mcsync.stages.context import TRACKING_MARKER, RunContext
from mcsync.stages.fetch_civicrm import fetch_emails_of_contacts
from mcsync.stages.updates import schedule_retry
from mcsync.store.history import Change


def push_civicrm(ctx: RunContext) -> None:
    """Apply queued group-status changes and holds; each chunk's staging update is committed
    with the removal of its queue rows. A chunk is `[civicrm] write_chunk` writes: one
    overtaken check (`_drop_overtaken`) and then one `GroupContact.save`, so a run's requests
    follow the number of changes divided by the chunk (issue 12)."""
    while True:
        ctx.budget.check()
        writes: list[sqlite3.Row] = _next_writes(ctx, "group")
        if not writes:
            break
        writes = _drop_overtaken(ctx, writes)
        if not writes:
            continue
        ctx.check_lease()
        try:
            _save_group_statuses(ctx, writes)
        except ApiError as exc:
            if type(exc) is not ApiError:  # auth, outage, odd answers: the run fails
                raise
            writes = _save_one_by_one(ctx, writes)
        with ctx.staging.atomic():
            ctx.staging.group_statuses_written(writes)
            ctx.staging.clear_retry_of_contacts(
                ctx.list_id, sorted({w["contact_id"] for w in writes})
            )
        _count_group_writes(ctx, writes)
        ctx.progress("write CiviCRM", len(writes), None)
    _push_holds(ctx)
    _push_new_emails(ctx)


def _next_writes(ctx: RunContext, kind: str) -> list[sqlite3.Row]:
    """The audience's next chunk of queued CiviCRM writes of one kind, oldest first: as
    many as one save request carries (`[civicrm] write_chunk`)."""
    return ctx.staging.next_civi_writes(ctx.list_id, kind, ctx.civicrm.write_chunk)


def _save_group_statuses(ctx: RunContext, writes: Sequence[sqlite3.Row]) -> None:
    ctx.civicrm.call(
        "GroupContact",
        "save",
        {
            "records": [
                {"contact_id": w["contact_id"], "group_id": w["group_id"], "status": w["status"]}
                for w in writes
            ],
            "match": ["contact_id", "group_id"],
            "method": "API",
            "tracking": TRACKING_MARKER,
        },
        retry=True,  # matched on (contact, group): repeating it sets the same status
    )


def _save_one_by_one(ctx: RunContext, writes: list[sqlite3.Row]) -> list[sqlite3.Row]:
    """CiviCRM refused a chunk: save its records one at a time so one bad record (say a
    contact an ACL hides) fails alone, with its reason on its row, and the rest go through."""
    saved = []
    for write in writes:
        ctx.check_lease()
        try:
            _save_group_statuses(ctx, [write])
        except ApiError as exc:
            if type(exc) is not ApiError:
                raise
            with ctx.staging.atomic():
                ctx.staging.forget_civi_writes([write["id"]])
                row_ids = ctx.staging.fail_rows_of_contact(
                    ctx.list_id, write["contact_id"], Reason.CIVICRM_ERROR, str(exc)
                )
                for row_id in row_ids:
                    schedule_retry(ctx, row_id, Reason.CIVICRM_ERROR, exc.status)
            ctx.write_failures += 1
            ctx.log(
                f"CiviCRM refused a group change for contact {write['contact_id']}: {exc}",
                "warning",
            )
            continue
        saved.append(write)
    return saved


def _count_group_writes(ctx: RunContext, writes: Sequence[sqlite3.Row]) -> None:
    """Group changes CiviCRM took, for the run history: the subscription group's by
    direction, interest groups' together."""
    for write in writes:
        if write["group_id"] != ctx.group_id:
            ctx.count(Change.CIVI_INTERESTS)
        elif write["status"] == "Added":
            ctx.count(Change.CIVI_ADDS)
        else:
            ctx.count(Change.CIVI_REMOVES)


def _push_new_emails(ctx: RunContext) -> None:
    """An address changed at Mailchimp is added to the contact as its bulk-mail email."""
    while True:
        ctx.budget.check()
        writes = _next_writes(ctx, "email")
        if not writes:
            return
        # Refresh first: after a crash the address may already be there.
        fetch_emails_of_contacts(ctx, sorted({w["contact_id"] for w in writes}))
        for write in writes:
            if not ctx.staging.contact_has_email(write["contact_id"], write["email"] or ""):
                ctx.check_lease()
                ctx.civicrm.call(
                    "Email",
                    "create",
                    {
                        "values": {
                            "contact_id": write["contact_id"],
                            "email": write["email"],
                            "is_bulkmail": True,
                        }
                    },
                )
                ctx.count(Change.CIVI_EMAILS)
        fetch_emails_of_contacts(ctx, sorted({w["contact_id"] for w in writes}))
        with ctx.staging.atomic():
            ctx.staging.forget_civi_writes([w["id"] for w in writes])


def _drop_overtaken(ctx: RunContext, writes: list[sqlite3.Row]) -> list[sqlite3.Row]:
    """A person may change a group in CiviCRM, or their subscription at Mailchimp, after the
    plan was made (during the run, or while it waited at the brake or for the next cron run):
    such a write is dropped and its row decided again next run, so a fresh choice is never
    overwritten by a stale plan (see overtaken). CiviCRM's history is read last, nearest the
    writes: Mailchimp's news may take many pages, and a staff change made while they are read
    must not slip in between the check and the write."""
    contact_ids = sorted({w["contact_id"] for w in writes})
    moved = overtaken.contacts_changed_at_mailchimp(ctx, contact_ids)
    changed = overtaken.civicrm_changes(ctx, contact_ids)
    dropped = [
        w for w in writes if (w["contact_id"], w["group_id"]) in changed or w["contact_id"] in moved
    ]
    if not dropped:
        return writes
    with ctx.staging.atomic():
        ctx.staging.forget_civi_writes([w["id"] for w in dropped])
        ctx.staging.redecide_contacts(ctx.list_id, [w["contact_id"] for w in dropped])
    ctx.log(
        f"{len(dropped)} planned CiviCRM changes were overtaken by newer changes and not made; "
        "those contacts are decided again next run"
    )
    ids = {w["id"] for w in dropped}
    return [w for w in writes if w["id"] not in ids]


def _push_holds(ctx: RunContext) -> None:
    """Cleaned at Mailchimp → that contact's records of the address go on hold (bounce)."""
    while True:
        ctx.budget.check()
        writes = _next_writes(ctx, "hold")
        if not writes:
            return
        email_ids: list[int] = []
        for write in writes:
            email_ids.extend(
                ctx.staging.unheld_email_ids(write["contact_id"], write["email"] or "")
            )
        if email_ids:
            ctx.check_lease()
            ctx.civicrm.call(  # every record has its id: safe to repeat
                "Email",
                "save",
                {"records": [{"id": i, "on_hold": 1} for i in email_ids]},
                retry=True,
            )
            ctx.count(Change.CIVI_HOLDS, len(email_ids))
        with ctx.staging.atomic():
            ctx.staging.emails_held(email_ids)
            for write in writes:  # the transition to cleaned is done: never held again
                ctx.staging.mark_cleaned_held(ctx.list_id, write["contact_id"], write["email"])
            ctx.staging.forget_civi_writes([w["id"] for w in writes])

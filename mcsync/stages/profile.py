"""Profile changes between the two sides (issue 13, items 1 and 2; seed-behaviour §8.3, §5.5).

``names_from_mailchimp`` (before the merge-field feed reads CiviCRM): a first or last name a
person edited at Mailchimp is written to their contact (``Contact.save``, in bulk), unless the
contact's name was edited in CiviCRM later. It is found in the member data the fetch read (no
webhook): a name is an edit when it differs from what mcsync knew Mailchimp had, which
includes what the merge-field feed pushed, so mcsync's own push never comes back as an edit;
and once applied (or overruled), Mailchimp's name is what mcsync knows, so it is not pushed
back as a change.

``change_member_emails`` (a write stage, before the member writes): when a subscribed
contact's chosen email (bulk-mail, else primary) changed in CiviCRM, the member's address is
changed at Mailchimp (``PATCH`` of the old hash with ``email_address`` only: its status,
history and unique_email_id stay) and the staged row follows the member to its new hash.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from mcsync.errors import ApiError, BudgetExhausted, NotFoundError
from mcsync.rules import reconcile as rc
from mcsync.rules.names import NAME_FIELDS, NameEdit, edited_at_mailchimp, names_to_apply
from mcsync.rules.reasons import EMAIL_CHANGE_REASONS, Reason
from mcsync.rules.write_results import COMPLIANCE_TITLE, FORGOTTEN_TITLE
from mcsync.stages.context import WINDOW_OVERLAP, RunContext
from mcsync.stages.fetch_civicrm import IN_CHUNK
from mcsync.stages.reconcile import load_chunk, policy_for
from mcsync.store.database import iso, parse_iso

NAME_CHUNK = IN_CHUNK


# -- names edited at Mailchimp ---------------------------------------------------------------
def name_tags(ctx: RunContext) -> dict[str, str]:
    """The name tags to copy back (tag → Contact field): FNAME and LNAME, unless the audience
    feeds that tag from another CiviCRM field (copying it to the name would fight the feed)."""
    mapping = dict(ctx.audience.merge_fields)
    return {tag: field for tag, field in NAME_FIELDS.items() if mapping.get(tag) in (None, field)}


class _NameWrite(NamedTuple):
    """A chunk of rows with edited names, decided (and written to CiviCRM) before the
    chunk's transaction opens: no request holds the staging DB's write lock."""

    last_id: int
    seen: list[tuple[int, dict[str, str]]]
    """(row id, {tag: Mailchimp's value}) of every edit read: what mcsync knows now."""
    written: list[tuple[int, dict[str, str]]]
    """(contact id, {field: value}) written to CiviCRM."""
    overruled: list[int]
    """Contacts whose newer CiviCRM name stays: their rows are decided again (the feed)."""


def names_from_mailchimp(ctx: RunContext) -> None:
    """Copy names edited at Mailchimp onto their contacts, a committed chunk at a time."""
    if not ctx.sync.update_names_from_mailchimp:
        return
    tags = name_tags(ctx)
    if not tags:
        return
    with ctx.staging.atomic():
        ctx.staging.baseline_names(ctx.list_id, ctx.run_id, sorted(tags))
    if ctx.dry_run:
        return  # a preview writes no names (`discard_plan` reopens their rows)

    def decide_and_write(cursor: int) -> list[_NameWrite]:
        rows = ctx.staging.name_edits(ctx.list_id, ctx.run_id, sorted(tags), cursor, NAME_CHUNK)
        if not rows:
            return []
        return [_write_names(ctx, rows, tags)]

    written = 0
    for chunk in ctx.staging.each_chunk(
        ctx.list_id, ctx.budget.check, decide_and_write, key=lambda c: c.last_id
    ):
        for part in chunk:
            ctx.staging.names_seen(part.seen)
            ctx.staging.contact_names_written(part.written)
            ctx.staging.reopen_rows_of_contacts(
                ctx.list_id, [contact_id for contact_id, _ in part.written] + part.overruled
            )
            written += len(part.written)
    if written:
        ctx.log(f"Copied names edited at Mailchimp to {written} contact(s)")


def _write_names(ctx: RunContext, rows: Sequence[Any], tags: dict[str, str]) -> _NameWrite:
    """Decide a chunk's name edits against the contacts as CiviCRM has them now (one
    ``Contact.get``) and write the winners (one ``Contact.save``)."""
    contact_ids = sorted({int(r["contact_id"]) for r in rows})
    fields = sorted(set(tags.values()))
    current = {
        int(c["id"]): c
        for c in ctx.civicrm.call(
            "Contact",
            "get",
            {
                "select": ["id", *fields, "modified_date"],
                "where": [["id", "IN", contact_ids]],
                "limit": 0,
            },
        )
    }
    # A contact with several member rows: the latest Mailchimp edit speaks for it.
    latest: dict[int, Any] = {}
    for row in rows:
        contact_id = int(row["contact_id"])
        if contact_id not in latest or (row["mc_last_changed"] or "") > (
            latest[contact_id]["mc_last_changed"] or ""
        ):
            latest[contact_id] = row
    seen: list[tuple[int, dict[str, str]]] = []
    writes: dict[int, dict[str, str]] = {}
    overruled: list[int] = []
    for row in rows:
        contact_id = int(row["contact_id"])
        contact = current.get(contact_id)
        edit = _name_edit(ctx, row, contact, tags)
        edited = edited_at_mailchimp(edit, tags)
        if contact is None:
            continue  # deleted in CiviCRM since it was read: the next fetch sees it gone
        seen.append((int(row["id"]), edited))
        if latest[contact_id] is not row:
            continue
        changes = names_to_apply(edit, tags)
        if changes:
            writes[contact_id] = changes
        if set(changes.values()) != set(edited.values()):
            overruled.append(contact_id)
    if writes:
        ctx.check_lease()
        try:
            ctx.civicrm.save(
                "Contact",
                [{"id": contact_id, **fields} for contact_id, fields in sorted(writes.items())],
            )
        except ApiError as exc:
            # Not acknowledged: the edits are found again by the next run that reads them.
            ctx.log(f"CiviCRM refused to update {len(writes)} contact name(s): {exc}", "warning")
            return _NameWrite(int(rows[-1]["id"]), [], [], [])
    return _NameWrite(int(rows[-1]["id"]), seen, sorted(writes.items()), overruled)


def _name_edit(
    ctx: RunContext, row: Any, contact: dict[str, Any] | None, tags: dict[str, str]
) -> NameEdit:
    known = json.loads(row["pushed_merge"] or "{}")
    columns = {"FNAME": "mc_fname", "LNAME": "mc_lname"}
    return NameEdit(
        mailchimp={tag: row[columns[tag]] for tag in tags},
        known={tag: known.get(tag) for tag in tags},
        civicrm={field: (contact or {}).get(field) for field in tags.values()},
        mailchimp_changed_at=parse_iso(row["mc_last_changed"]),
        civicrm_changed_at=ctx.civi_to_utc((contact or {}).get("modified_date")),
    )


# -- email changes made in CiviCRM -------------------------------------------------------------
EMAIL_CHUNK = 100


class _Moved(NamedTuple):
    row_id: int
    member: dict[str, Any]


class _Refused(NamedTuple):
    row_id: int
    reason: Reason
    detail: str | None
    lasting_email: str | None
    civicrm_changed_at: str | None


class _EmailChunk(NamedTuple):
    last_id: int
    moved: list[_Moved]
    refused: list[_Refused]


def change_member_emails(ctx: RunContext) -> None:
    """Write stage: move subscribed members to their contact's new email (seed §5.5), one
    committed chunk at a time. The ``PATCH`` goes out before its chunk's transaction, which
    then moves the row: a kill in between leaves the row at the old hash, and the repeat
    finds the member already moved (404 at the old hash, the member at the new one) and
    follows it, so nothing is changed twice and no row is lost."""
    if ctx.hold_mailchimp:
        return
    policy = policy_for(ctx)
    only = sorted(ctx.only_rows) if ctx.only_rows is not None else None
    modified_from = _modified_window_start(ctx)

    def change(cursor: int) -> list[_EmailChunk]:
        rows = ctx.staging.email_change_candidates(
            ctx.list_id, cursor, EMAIL_CHUNK, modified_from=modified_from, only_rows=only
        )
        if not rows:
            return []
        return [_change_chunk(ctx, policy, rows)]

    moved = refused = 0
    for chunk in ctx.staging.each_chunk(
        ctx.list_id, ctx.budget.check, change, key=lambda c: c.last_id
    ):
        for part in chunk:
            for move in part.moved:
                if ctx.staging.member_email_changed(
                    move.row_id,
                    str(move.member["id"]),
                    str(move.member["email_address"]),
                    iso(parse_iso(move.member.get("last_changed"))),
                ):
                    moved += 1
            for refusal in part.refused:
                ctx.staging.email_change_refused(
                    refusal.row_id,
                    refusal.reason.value,
                    refusal.detail,
                    refusal.lasting_email,
                    refusal.civicrm_changed_at,
                )
            refused += len(part.refused)
    if moved:
        ctx.log(f"Changed {moved} member address(es) at Mailchimp to the contact's new email")
    if refused:
        ctx.log(f"{refused} member address change(s) refused; see `mcsync failures`", "notice")


def _modified_window_start(ctx: RunContext) -> str | None:
    """Where this run's read of modified contacts started (CiviCRM's local time, as
    `fetch_civicrm_modified` computes it): an email edit bumps the contact's modified_date,
    so only contacts modified since can have a new chosen email. The window overlaps the
    previous run's, so a member whose writes were still on their way then is seen again.
    None on a full run (every row is checked), on a first run, and for one person's rows
    (`resync --now`, which read them afresh)."""
    state = ctx.staging.state(ctx.list_id)
    since = ctx.civi_to_utc(state["modified_since"])
    if state["run_full"] or since is None or ctx.only_rows is not None:
        return None
    return ctx.civi_local(since - WINDOW_OVERLAP)


def _change_chunk(ctx: RunContext, policy: Any, rows: Sequence[Any]) -> _EmailChunk:
    loaded = load_chunk(ctx, rows)
    moved: list[_Moved] = []
    refused: list[_Refused] = []
    last_id = int(rows[-1]["id"])
    for index, row in enumerate(rows):
        try:
            _change_one(ctx, policy, loaded, row, moved, refused)
        except BudgetExhausted:
            if not index:
                raise
            # The budget ran out between two rows: keep what Mailchimp did for the rows
            # before (committed with the cursor); the run stops at the next chunk.
            last_id = int(rows[index - 1]["id"])
            break
    return _EmailChunk(last_id, moved, refused)


def _change_one(
    ctx: RunContext,
    policy: Any,
    loaded: Any,
    row: Any,
    moved: list[_Moved],
    refused: list[_Refused],
) -> None:
    """Decide one row's address and ask Mailchimp to move it; collect what happened."""
    member_row = loaded.member_row(row)
    decision = rc.decide_email_change(member_row, policy)
    if decision is None:
        return
    civi_at = iso(member_row.civicrm.subscription.changed_at)
    if isinstance(decision, rc.EmailChangeRefused):
        refused.append(
            _Refused(
                int(row["id"]),
                decision.reason,
                row["reason_detail"] if row["reason"] == decision.reason else None,
                decision.new_email,
                civi_at,
            )
        )
        return
    ctx.check_lease()
    outcome = _patch(ctx, row, decision)
    if isinstance(outcome, dict):
        moved.append(_Moved(int(row["id"]), outcome))
    elif outcome is not None:
        reason, detail = outcome
        lasting = reason in EMAIL_CHANGE_REASONS and reason != (Reason.EMAIL_CHANGE_NOT_SUBSCRIBED)
        refused.append(
            _Refused(
                int(row["id"]),
                reason,
                detail,
                decision.new_email if lasting else None,
                civi_at,
            )
        )


def _patch(
    ctx: RunContext, row: Any, change: rc.ChangeMemberEmail
) -> dict[str, Any] | tuple[Reason, str] | None:
    """Ask Mailchimp to move the member: the member as moved, a refusal (reason, detail), or
    None (nothing known: the member is not where staging has it; the next fetch reads it)."""
    try:
        return ctx.mailchimp.change_member_email(ctx.list_id, change.old_email, change.new_email)
    except NotFoundError:
        # Moved already (a repeat after a kill, or a lost answer), or gone from the audience.
        found = ctx.mailchimp.get_member(ctx.list_id, change.new_email)
        if found is not None and found.get("unique_email_id") == row["mc_unique_id"]:
            return found
        return None
    except ApiError as exc:
        reason = _refusal_reason(exc)
        if reason is None:
            raise
        detail = " — ".join(p for p in (exc.title, exc.detail) if p) or str(exc)
        return reason, detail


def _refusal_reason(exc: ApiError) -> Reason | None:
    """Mailchimp's refusals of an address change, as reasons (None: not a refusal of this
    change but a failure of the service, which fails the run and is tried again)."""
    if exc.status is None or not 400 <= exc.status < 500 or exc.status == 429:
        return None
    detail = exc.detail or ""
    if exc.title == "Member Exists":
        return Reason.NEW_EMAIL_IN_USE
    if exc.title in (FORGOTTEN_TITLE, COMPLIANCE_TITLE):
        return Reason.NEW_EMAIL_FORGOTTEN
    if "only update email addresses" in detail:
        return Reason.EMAIL_CHANGE_NOT_SUBSCRIBED
    if "looks fake or invalid" in detail:
        return Reason.INVALID_EMAIL
    return Reason.MAILCHIMP_ERROR

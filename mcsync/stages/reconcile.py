"""The reconcile stage: staged rows → `reconcile` decisions → queued writes for both sides.

This module turns SQLite rows into `member_state.MemberRow` values and the pure decisions back
into queue rows (`civi_writes`, `updates`). The brake that follows is in `brake`; the plan
`--dry-run` prints from these queues is in `preview`.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from mcsync.rules import member_state as ms
from mcsync.rules import queue_rules as qr
from mcsync.rules import reconcile as rc
from mcsync.rules.addresses import fold_email
from mcsync.rules.reasons import Reason
from mcsync.stages.context import RunContext
from mcsync.store.database import dumps, iso, parse_iso, utc_now
from mcsync.store.rows import Decided
from mcsync.store.states import RowState

CHUNK = 1000
SETTLE_STEP = 20_000  # rows per set-based statement


def policy_for(ctx: RunContext) -> ms.AudiencePolicy:
    return ms.AudiencePolicy(
        group_id=ctx.group_id,
        interest_groups=ctx.interest_groups,
        respect_privacy_flags=ctx.sync.respect_privacy_flags,
        blank_merge_fields=ctx.sync.blank_merge_fields,
        prefer=None if ctx.sync.prefer == "latest" else ctx.sync.prefer,
    )


def reconcile_rows(ctx: RunContext) -> None:
    """Decide every `todo` row, a chunk per transaction with the cursor; then decide again
    the rows of contacts with several member rows whose CiviCRM state this run changes."""
    policy = policy_for(ctx)
    settle_agreeing_rows(ctx)
    for rows in ctx.staging.each_chunk(
        ctx.list_id,
        ctx.budget.check,
        lambda after: ctx.staging.todo_rows_after(ctx.list_id, after, CHUNK),
        key=lambda row: int(row["id"]),
    ):
        _decide_rows(ctx, policy, rows)
    decide_again(ctx, policy)


def decide_rows(ctx: RunContext, rows: Sequence[sqlite3.Row]) -> None:
    """Decide these rows now, outside the stage's cursor: one person's rows, read afresh
    (`resync --now`), with the same rules and queueing as the stage."""
    if rows:
        with ctx.staging.atomic():
            _decide_rows(ctx, policy_for(ctx), rows)


# Passes over rows decided again: each pass can only make the queued CiviCRM writes newer, so they
# settle within a pass per sibling; contacts with more member rows than this are rarer still.
SIBLING_PASSES = 4


def decide_again(ctx: RunContext, policy: ms.AudiencePolicy) -> None:
    """Decide again the rows whose decision depends on another row's in the same run.

    One contact with several Mailchimp members: one row's decision can queue a CiviCRM write
    (an interest group Removed because that member changed it last, the subscription group
    Added) that the contact's other rows were, or will be, decided without. Decide those
    rows again, now seeing the queued writes (`load_chunk` lays them over the staged
    state), until the writes stop changing, so the run ends where its next run would: the
    other members follow the newer choice in this run, not the next (issue 10, item 12).
    Two contacts not at Mailchimp that share an address would both subscribe it: the one
    matching will link the member to keeps it, the other is told the member exists."""
    for _ in range(SIBLING_PASSES):
        rows = ctx.staging.rows_to_decide_again(ctx.list_id)
        if not rows:
            return
        # A decision queues CiviCRM writes for its own contact only: compare those.
        contact_ids = sorted({r["contact_id"] for r in rows if r["contact_id"] is not None})
        before = ctx.staging.planned_group_writes(ctx.list_id, contact_ids)
        for start in range(0, len(rows), CHUNK):
            ctx.budget.check()
            with ctx.staging.atomic():
                _decide_rows(ctx, policy, rows[start : start + CHUNK])
        if ctx.staging.planned_group_writes(ctx.list_id, contact_ids) == before:
            return


def _decide_rows(ctx: RunContext, policy: ms.AudiencePolicy, rows: Sequence[sqlite3.Row]) -> None:
    """Decide these rows and queue their writes; the caller holds the chunk's transaction."""
    loaded = load_chunk(ctx, rows)
    missing: dict[str, int] = defaultdict(int)
    decided: list[Decided] = []
    for row in rows:
        member_row = loaded.member_row(row)
        decision = rc.reconcile_member(member_row, policy)
        decided.append(
            record_decision(
                ctx,
                row,
                member_row,
                decision,
                loaded.unsubmitted[row["id"]],
                in_flight=row["id"] in loaded.in_flight,
            )
        )
        for outcome in decision.interests:
            if outcome.rule == "5.3-I1-no-data":
                missing[outcome.interest_id] += 1
    ctx.staging.decided(decided)
    for interest_id, count in sorted(missing.items()):
        # Seed §5.3 (lab #19): deleted at Mailchimp, or mapped after these members were
        # fetched; a full run (--since ever) fetches their interests again.
        ctx.log(
            f"Interest {interest_id} is missing from the Mailchimp data of {count} "
            f"subscribed member(s); skipped. Was it deleted in Mailchimp, or newly mapped "
            f"(then run with --since ever)?",
            "notice",
        )
    ctx.progress("reconcile", len(rows), None)


def settle_agreeing_rows(ctx: RunContext) -> int:
    """Mark `ok` the `todo` rows whose sides plainly agree (`RowStore.settled_agreeing`, the
    SQL twin of `reconcile_member`), so only the rows that disagree (or are unusual) go
    through Python: a full run marks every row `todo`."""
    low, high = ctx.staging.todo_id_range(ctx.list_id)
    settled = 0
    # One statement per id range, each its own short transaction: a large audience never
    # holds the write lock for long (the lease heartbeat writes too).
    for start in range(low or 0, (high or -1) + 1, SETTLE_STEP):
        ctx.budget.check()
        settled += ctx.staging.settled_agreeing(
            ctx.list_id, ctx.group_id, ctx.interest_groups, start, start + SETTLE_STEP
        )
    return settled


class LoadedChunk:
    """Everything about a chunk of rows that decisions need, loaded with a few queries."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.contacts: dict[int, sqlite3.Row] = {}
        self.emails: dict[int, list[ms.EmailRecord]] = defaultdict(list)
        self.groups: dict[int, dict[int, ms.GroupState]] = defaultdict(dict)
        self.siblings: dict[int, list[tuple[int, str | None, str | None]]] = defaultdict(list)
        self.held_addresses: set[str] = set()
        self.addresses_in_use: frozenset[str] = frozenset()
        self.addresses_claimed: list[tuple[str, int]] = []
        self.unsubmitted: dict[int, list[qr.QueuedUpdate]] = defaultdict(list)
        self.in_flight: set[int] = set()
        self.merge_fields: dict[int, dict[str, Any]] = {}

    def member_row(self, row: sqlite3.Row) -> ms.MemberRow:
        contact_id = row["contact_id"]
        mailchimp = (
            ms.MailchimpSide(
                email=row["mc_email"],
                status=row["mc_status"],
                last_changed=parse_iso(row["mc_last_changed"]),
                status_changed_at=parse_iso(row["mc_status_at"]),
                status_changed_after=(
                    parse_iso(row["mc_status_after"]) if row["mc_status"] != "archived" else None
                ),
                interests=json.loads(row["mc_interests"]),
                interests_changed_at={
                    k: v
                    for k, v in (
                        (k, parse_iso(v)) for k, v in json.loads(row["mc_interests_at"]).items()
                    )
                    if v is not None
                },
                # What Mailchimp has as far as mcsync knows: what it pushed (seed §10 "previous").
                merge_fields=json.loads(row["pushed_merge"]),
            )
            if row["mc_status"] is not None and row["mc_email"]
            else ms.MailchimpSide()
        )
        civicrm = ms.CivicrmSide()
        contact = self.contacts.get(contact_id) if contact_id is not None else None
        if contact is not None:
            groups = self.groups.get(contact_id, {})
            civicrm = ms.CivicrmSide(
                contact_id=contact_id,
                subscription=groups.get(self.ctx.group_id, ms.GroupState()),
                interest_groups={
                    g: groups.get(g, ms.GroupState()) for g in self.ctx.interest_groups.values()
                },
                is_deleted=bool(contact["is_deleted"] or contact["gone"]),
                is_deceased=bool(contact["is_deceased"]),
                do_not_email=bool(contact["do_not_email"]),
                is_opt_out=bool(contact["is_opt_out"]),
                emails=tuple(self.emails.get(contact_id, ())),
                merge_fields=self.merge_fields.get(contact_id, {}),
                flags_changed_at=parse_iso(contact["flags_at"]),
                flags_changed_after=parse_iso(contact["flags_after"]),
            )
        siblings = (
            tuple(
                ms.Sibling(email, status)  # type: ignore[arg-type]
                for other_id, email, status in self.siblings.get(contact_id, [])
                if other_id != row["id"] and email
            )
            if contact_id is not None
            else ()
        )
        refusal = None
        if row["refusal_reason"] and row["refusal_email"]:
            refusal = ms.Refusal(
                Reason(row["refusal_reason"]),
                row["refusal_email"],
                parse_iso(row["refusal_civi_at"]),
            )
        return ms.MemberRow(
            mailchimp=mailchimp,
            civicrm=civicrm,
            siblings=siblings,
            mailchimp_email_on_hold=fold_email(row["mc_email"] or "") in self.held_addresses,
            refusal=refusal,
            addresses_in_use=self.addresses_in_use.union(
                a for a, owner in self.addresses_claimed if owner < contact_id
            )
            if row["mc_hash"] is None and contact_id is not None
            else frozenset(),
            cleaned_handled=_cleaned_handled(row),
            trashed_removal_at=parse_iso(row["trashed_removal_at"]),
            trashed_flag_after=parse_iso(row["trashed_flag_after"]) if contact_id is None else None,
            trashed_flag_by=parse_iso(row["trashed_flag_by"]) if contact_id is None else None,
            trashed_interest_removals=_interest_removals(row["trashed_interest_removals"]),
        )


def _interest_removals(text: str | None) -> dict[int, datetime]:
    """The stored JSON {group id: UTC time} of trashed owners' interest-group removals."""
    removals: dict[int, datetime] = {}
    for group_id, at in json.loads(text or "{}").items():
        moment = parse_iso(at)
        if moment is not None:
            removals[int(group_id)] = moment
    return removals


def _cleaned_handled(row: sqlite3.Row) -> bool:
    """mcsync acted on this cleaned state: the one it recorded, by its status time (a member
    cleaned again after a re-subscribe has a new one)."""
    handled = row["cleaned_handled_at"]
    return (
        row["mc_status"] == "cleaned"
        and handled is not None
        and handled == (row["mc_status_at"] or row["mc_last_changed"])
    )


def _addresses_in_use(
    ctx: RunContext, rows: Sequence[sqlite3.Row], loaded: LoadedChunk
) -> frozenset[str]:
    """Of the addresses contacts not at Mailchimp could be subscribed with, those another
    member row of this audience already holds."""
    candidates = sorted(
        {
            fold_email(e.email)
            for r in rows
            if r["mc_hash"] is None and r["contact_id"] is not None
            for e in loaded.emails.get(r["contact_id"], ())
        }
    )
    if not candidates:
        return frozenset()
    # Another contact not at Mailchimp yet may be about to subscribe the same address (two
    # contacts share it): the lower contact id, whom matching picks once the member exists,
    # keeps it; see `decide_again`.
    loaded.addresses_claimed = ctx.staging.addresses_claimed(ctx.list_id, candidates)
    return ctx.staging.member_addresses(ctx.list_id, candidates)


def load_chunk(ctx: RunContext, rows: Sequence[sqlite3.Row]) -> LoadedChunk:
    loaded = LoadedChunk(ctx)
    staging = ctx.staging
    contact_ids = sorted({r["contact_id"] for r in rows if r["contact_id"] is not None})
    if contact_ids:
        for contact in staging.contacts_by_id(contact_ids):
            loaded.contacts[contact["contact_id"]] = contact
        for email in staging.emails_of_contacts(contact_ids):
            loaded.emails[email["contact_id"]].append(
                ms.EmailRecord(
                    email["email"],
                    email["on_hold"],
                    bool(email["is_bulkmail"]),
                    bool(email["is_primary"]),
                )
            )
        for data in staging.merge_fields_of(ctx.list_id, contact_ids):
            loaded.merge_fields[data["contact_id"]] = json.loads(data["merge_fields"])
        for group in staging.group_statuses_of(contact_ids, ctx.all_groups):
            loaded.groups[group["contact_id"]][group["group_id"]] = ms.GroupState(
                group["status"], parse_iso(group["changed_at"])
            )
        # Writes this run queued for CiviCRM are what it will have (push_civicrm stores the
        # same status and time after writing): decide against them, not the state before.
        for contact_id, group_id, status, origin_at in staging.planned_group_writes(
            ctx.list_id, contact_ids
        ):
            loaded.groups[contact_id][group_id] = ms.GroupState(
                status,  # type: ignore[arg-type]
                parse_iso(origin_at),
            )
        for sibling in staging.member_rows_of_contacts(ctx.list_id, contact_ids):
            loaded.siblings[sibling["contact_id"]].append(
                (sibling["id"], sibling["mc_email"], sibling["mc_status"])
            )
        # Holds queued this run (a cleaned member) count as on hold already.
        for contact_id, address in staging.planned_holds(ctx.list_id, contact_ids):
            loaded.emails[contact_id] = [
                replace(e, on_hold=1) if fold_email(e.email) == address else e
                for e in loaded.emails.get(contact_id, [])
            ]
    addresses = sorted({fold_email(r["mc_email"]) for r in rows if r["mc_email"]})
    if addresses:
        loaded.held_addresses = staging.held_addresses(addresses)
    loaded.addresses_in_use = _addresses_in_use(ctx, rows, loaded)
    row_ids = [r["id"] for r in rows]
    for update in staging.unsent_updates(row_ids):
        loaded.unsubmitted[update["row_id"]].append(
            qr.QueuedUpdate(update["id"], json.loads(update["body"]))
        )
    loaded.in_flight = staging.rows_in_flight(row_ids)
    return loaded


def record_decision(
    ctx: RunContext,
    row: sqlite3.Row,
    member_row: ms.MemberRow,
    decision: rc.Decision,
    unsubmitted: list[qr.QueuedUpdate],
    *,
    in_flight: bool,
) -> Decided:
    """Queue one decision's writes; return the row's new (state, reason, detail, id),
    which the caller stores for the whole chunk at once. `in_flight`: the row has updates
    that were submitted and not yet answered."""
    staging = ctx.staging
    m, c = member_row.mailchimp, member_row.civicrm
    interest_by_group = {g: i for i, g in ctx.interest_groups.items()}
    for action in decision.civicrm_actions:
        if isinstance(action, rc.SetGroupStatus):
            interest_id = interest_by_group.get(action.group_id)
            if action.group_id == ctx.group_id:
                origin = m.status_time
                if action.status == "Removed" and member_row.trashed_removal_at:
                    # A trashed co-owner's removal, later than the member's status, carried.
                    origin = max(filter(None, (origin, member_row.trashed_removal_at)))
            else:
                origin = m.interest_time(interest_id) if interest_id else m.last_changed
                removed_at = member_row.trashed_interest_removals.get(action.group_id)
                if action.status == "Removed" and removed_at:
                    # A trashed co-owner's removal, later than the member's interest, carried.
                    origin = max(filter(None, (origin, removed_at)))
            staging.plan_group_write(
                ctx.list_id,
                action.contact_id,
                action.group_id,
                action.status,
                iso(origin or utc_now()),
            )
        else:
            staging.plan_hold(ctx.list_id, action.contact_id, action.email)
    if (
        m.status == "cleaned"
        and not member_row.cleaned_handled
        and c.contact_id is not None
        and not c.is_deleted
        and not ctx.dry_run
        and not any(isinstance(a, rc.PutEmailOnHold) for a in decision.actions)
    ):
        # Nothing to hold (already held): the transition is done. A queued hold marks it
        # when push_civicrm writes it (a dry run or abort discards it unwritten).
        staging.mark_cleaned_handled([row["id"]])
    queue = qr.plan_queue(unsubmitted, decision)
    now = iso(utc_now())
    for abort in queue.abort:
        staging.withdraw_update(abort.update_id, now, abort.reason)
    live = len(unsubmitted) > len(queue.abort)
    if queue.abort and not live and queue.enqueue is None:
        # Every queued write dropped, none replacing it (whose expectation would replace it).
        staging.forget_unsent_status([row["id"]])
    if queue.enqueue is not None:
        body = dict(queue.enqueue.body)
        trashed = [member_row.trashed_removal_at, member_row.trashed_flag_after]
        origin = _origin_of(
            body,
            c,
            interest_by_group,
            max(filter(None, trashed), default=None),
            member_row.trashed_interest_removals,
        )
        expected: dict[str, Any] = {"at": iso(origin)}
        if body.get("status"):
            expected["status"] = body["status"]
        if body.get("interests"):
            expected["interests"] = body["interests"]
        staging.queue_update(
            ctx.list_id,
            row["id"],
            queue.enqueue.email,
            dumps(body),
            iso(origin),
            now,
            dumps(expected),
        )
        live = True
    reason = decision.reason.value if decision.reason else None
    state = RowState.LIVE if live or in_flight else RowState.FAIL if reason else RowState.OK
    return Decided(state, reason, decision.detail if reason else None, row["id"])


def _origin_of(
    body: dict[str, Any],
    civicrm: ms.CivicrmSide,
    interest_by_group: dict[int, str],
    trashed_removal_at: datetime | None = None,
    trashed_interest_removals: Mapping[int, datetime] | None = None,
) -> datetime:
    """The time of the CiviCRM choice an update carries: what Mailchimp's side should count
    as its change time once the write lands (never the time of our write). A row may carry
    a trashed contact's removal or privacy flag (`trashed_removal_at`: the latest of them),
    or its removals from interest groups (`trashed_interest_removals`)."""
    times: list[datetime] = []
    if body.get("status") and civicrm.subscription.changed_at:
        times.append(civicrm.subscription.changed_at)
    if body.get("status") and trashed_removal_at:
        times.append(trashed_removal_at)
    for group_id, interest_id in interest_by_group.items():
        if interest_id in (body.get("interests") or {}):
            state = civicrm.interest_groups.get(group_id)
            if state and state.changed_at:
                times.append(state.changed_at)
            removed_at = (trashed_interest_removals or {}).get(group_id)
            if removed_at is not None and body["interests"][interest_id] is False:
                times.append(removed_at)
    return max(times) if times else utc_now()

"""`mcsync resync`: have one person decided again, from both services read afresh.

The person's Mailchimp members (every address involved, by subscriber hash) and CiviCRM
contacts (emails, flags, group memberships dated by their latest history) are read now, under
the audience's lease, and staged the way a run stages them; their rows are then marked to be
decided by the next run. With ``now``, the person is synced at once instead: decided with the
run's rules and their writes sent directly, without touching anyone else's.

Never from stale data (DESIGN §4): the facts are read before the rows are marked, and a run
part-way through is left to finish first (its plan rests on what it read; a fresh read slipped
under it would hide a change its overtaken check must see).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mcsync.api.mailchimp import member_hash
from mcsync.budget import Budget
from mcsync.config.models import AudienceConfig, Config
from mcsync.errors import BudgetExhausted
from mcsync.ops.lookup import Person
from mcsync.runner.audience import check_groups, lease_owner
from mcsync.runner.engine import Connections, connections, selected_audiences
from mcsync.stages import feeds
from mcsync.stages.context import TRACKING_MARKER, Lease, RunContext
from mcsync.stages.fetch_civicrm import (
    CONTACT_FLAGS,
    EMAIL_SELECT,
    contact_from_join,
    fetch_emails_of_contacts,
    store_contacts,
    store_emails,
)
from mcsync.stages.fetch_mailchimp import date_status_changes, read_directly
from mcsync.stages.match import NO_CIVICRM_CHOICE, assign_matches, fix_contact_ids
from mcsync.stages.profile import change_member_emails
from mcsync.stages.push_civicrm import push_civicrm
from mcsync.stages.push_mailchimp import push_mailchimp
from mcsync.stages.reconcile import SIBLING_PASSES, decide_rows
from mcsync.store.database import Staging, iso

RESYNC_BUDGET = 120.0  # seconds for one person, both services


@dataclass
class ResyncResult:
    """What happened in one audience: ``outcome`` is marked, synced, nothing, busy or
    waiting (a run is part-way through)."""

    list_id: str
    group_id: int
    outcome: str
    message: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "list_id": self.list_id,
            "group_id": self.group_id,
            "outcome": self.outcome,
            "message": self.message,
            "rows": self.rows,
        }


def resync(
    config: Config,
    person: Person,
    *,
    now: bool = False,
    group_id: int | None = None,
    debug_http: Callable[[str], None] | None = None,
) -> list[ResyncResult]:
    """Re-read the person on both sides in each selected audience and mark their rows to be
    decided by the next run; with ``now``, decide and write them at once."""
    budget = Budget(RESYNC_BUDGET)
    results = []
    staging = Staging(config.state_db)
    try:
        with connections(config, budget, debug_http=debug_http) as conns:
            for audience in selected_audiences(config, group_id):
                results.append(_resync_audience(config, conns, staging, audience, person, now))
    finally:
        staging.close()
    return results


def _resync_audience(
    config: Config,
    conns: Connections,
    staging: Staging,
    audience: AudienceConfig,
    person: Person,
    now: bool,
) -> ResyncResult:
    list_id = audience.list_id

    def result(
        outcome: str, message: str, rows: list[dict[str, Any]] | None = None
    ) -> ResyncResult:
        return ResyncResult(list_id, audience.group_id, outcome, message, rows or [])

    staging.ensure_audience(list_id, audience.group_id, audience.account)
    settings = config.settings_for(audience)
    owner = lease_owner()
    if not staging.acquire_lease(list_id, owner, settings.lease_seconds):
        return result(
            "busy",
            "busy with another mcsync run; nothing done (try again when it has finished)",
        )
    try:
        state = staging.state(list_id)
        if state["stage"] != "idle":
            return result(
                "waiting",
                f"a run is part-way through (at {state['stage']}); let it finish with "
                f"'mcsync fetch-and-reconcile --group-id {audience.group_id}' (or drop its plan "
                f"with 'mcsync abort --group-id {audience.group_id}'), then resync",
            )
        ctx = RunContext(
            audience=audience,
            sync=settings,
            staging=staging,
            mailchimp=conns.mailchimp_for(audience.account),
            civicrm=conns.civicrm,
            budget=conns.budget,
            civi_zone=config.civicrm.tzinfo,
            run_id=state["run_id"] or "",
            lease=Lease(list_id, owner, settings.lease_seconds),
            read_data_here=True,
        )
        try:
            check_groups(ctx)
            row_ids, history_seen = reread_person(ctx, person)
            if not row_ids:
                return result("nothing", "nothing to sync: no member or contact found")
            if not now:
                with staging.atomic():
                    marked = staging.mark_rows_todo(row_ids)
                ctx.log(
                    f"resync {person.label}: read afresh from both services; {len(row_ids)} "
                    "row(s) to be decided by the next run"
                )
                return result(
                    "marked",
                    f"read afresh from both services; {len(row_ids)} row(s) will be decided "
                    f"by the next run ({marked} marked now, the rest have a write on its way)",
                    _rows_summary(staging, row_ids),
                )
            return _sync_now(ctx, person, row_ids, history_seen, result)
        except BudgetExhausted:
            return result(
                "waiting",
                "ran out of time reading or writing; what was read is kept and the next run "
                "decides the rest",
            )
    finally:
        staging.release_lease(list_id, owner)


def _sync_now(
    ctx: RunContext,
    person: Person,
    row_ids: list[int],
    history_seen: int,
    result: Callable[..., ResyncResult],
) -> ResyncResult:
    """Decide the person's rows and send their writes: CiviCRM group changes and holds,
    then Mailchimp member writes, directly. Nobody else's queued writes are sent."""
    staging = ctx.staging
    contact_ids = staging.person_contact_ids(ctx.list_id, row_ids)
    others = staging.other_civi_writes(ctx.list_id, contact_ids)
    with staging.atomic():
        staging.mark_rows_todo(row_ids)
    if others:
        return result(
            "marked",
            f"{others} CiviCRM change(s) of other contacts are queued in this audience; not "
            "sending them for one person: the person was read afresh and is decided by the "
            "next run",
            _rows_summary(staging, row_ids),
        )
    fix_contact_ids(ctx)
    # Cursor-driven stages, run over the rows to decide (the audience is idle: its cursor is
    # free), then the cursor goes back to where an idle audience keeps it.
    feeds.fetch_contact_data(ctx)
    _reset_cursor(ctx)
    date_status_changes(ctx)
    _reset_cursor(ctx)
    decided = [int(r["id"]) for r in staging.rows_to_decide(row_ids)]
    decide_rows(ctx, staging.rows_by_id(decided))
    # A contact with several members: one row's decision may queue a CiviCRM write the
    # others were decided without; decide them again until the writes settle (as the
    # reconcile stage's `decide_again` does for a run).
    for _ in range(SIBLING_PASSES):
        if len(decided) < 2:
            break
        before = [tuple(w) for w in staging.civi_writes_of(ctx.list_id, contact_ids)]
        decide_rows(ctx, staging.rows_by_id(decided))
        if [tuple(w) for w in staging.civi_writes_of(ctx.list_id, contact_ids)] == before:
            break
    # The person's CiviCRM history was read just now, up to `history_seen`: only a change
    # after that read overtakes their writes (the run's own mark is older).
    state = staging.state(ctx.list_id)
    with staging.atomic():
        staging.set_state(
            ctx.list_id, history_target=max(state["history_target"] or 0, history_seen)
        )
    ctx.only_rows = frozenset(row_ids)
    try:
        push_civicrm(ctx)
        _reset_cursor(ctx)
        change_member_emails(ctx)
        _reset_cursor(ctx)
        push_mailchimp(ctx)
    finally:
        with staging.atomic():
            staging.set_state(ctx.list_id, history_target=state["history_target"], cursor=0)
    ctx.log(f"resync --now {person.label}: decided and written for {len(row_ids)} row(s)")
    return result(
        "synced",
        f"read afresh, decided and written now for {len(row_ids)} row(s)",
        _rows_summary(staging, row_ids),
    )


def _reset_cursor(ctx: RunContext) -> None:
    with ctx.staging.atomic():
        ctx.staging.set_state(ctx.list_id, cursor=0)


def _rows_summary(staging: Staging, row_ids: list[int]) -> list[dict[str, Any]]:
    return [
        {
            "row_id": r["id"],
            "email": r["mc_email"],
            "contact_id": r["contact_id"],
            "mailchimp_status": r["mc_status"],
            "sync_status": r["sync_status"],
            "reason": r["reason"],
        }
        for r in staging.rows_by_id(row_ids)
    ]


def reread_person(ctx: RunContext, person: Person) -> tuple[list[int], int]:
    """Read the person afresh from both services into staging, as a run would stage them;
    return their rows in this audience and the newest CiviCRM history id read for them."""
    staging = ctx.staging
    contact_ids = set(person.contacts(staging))
    if person.email:
        owners = ctx.civicrm.call(
            "Email",
            "get",
            {
                "select": EMAIL_SELECT,
                "where": [["email", "=", person.email], ["contact_id.is_deleted", "=", False]],
                "limit": 0,
            },
        )
        with staging.atomic():
            store_emails(ctx, owners)
            store_contacts(ctx, [contact_from_join(r) for r in owners])
        contact_ids |= {int(r["contact_id"]) for r in owners}
    addresses = person.addresses(staging, sorted(contact_ids))
    rows = staging.person_rows(ctx.list_id, addresses, sorted(contact_ids))
    contact_ids |= {int(r["contact_id"]) for r in rows if r["contact_id"] is not None}
    ids = sorted(contact_ids)
    if ids:
        fetch_emails_of_contacts(ctx, ids)
        _refresh_contacts(ctx, ids)
    addresses = person.addresses(staging, ids)
    # Mailchimp: every address involved, and every member row already staged for them
    # (by hash and unique id: an address changed at Mailchimp is followed).
    keys: dict[str, str | None] = {member_hash(a): None for a in addresses}
    for row in staging.person_rows(ctx.list_id, addresses, ids):
        if row["mc_hash"]:
            keys[row["mc_hash"]] = row["mc_unique_id"]
    read_directly(ctx, sorted(keys.items()))
    history_seen = _refresh_groups(ctx, ids) if ids else 0
    with staging.atomic():
        unmatched = staging.unmatched_rows_of(ctx.list_id, addresses)
        if unmatched:
            assign_matches(ctx, unmatched)
        staging.add_contact_rows(ctx.list_id, ctx.group_id, ids)
        staging.drop_contact_rows_with_members(ctx.list_id)
    rows = staging.person_rows(ctx.list_id, addresses, ids)
    return [int(r["id"]) for r in rows], history_seen


def _refresh_contacts(ctx: RunContext, contact_ids: list[int]) -> None:
    """Flags and names of these contacts now; those CiviCRM no longer has are gone."""
    records = ctx.civicrm.call(
        "Contact",
        "get",
        {
            "select": ["id", *CONTACT_FLAGS, "first_name", "last_name", "modified_date"],
            "where": [["id", "IN", contact_ids], ["is_deleted", "IN", [True, False]]],
            "limit": 0,
        },
    )
    seen = {int(r["id"]) for r in records}
    with ctx.staging.atomic():
        store_contacts(ctx, [{"contact_id": r["id"], **r} for r in records])
        ctx.staging.mark_contacts_gone([c for c in contact_ids if c not in seen])


def _refresh_groups(ctx: RunContext, contact_ids: list[int]) -> int:
    """Stage the memberships CiviCRM holds now for these contacts in the audience's groups.
    A status unchanged keeps its staged time; a changed one, or one staged without a time (a
    full run dates only disagreements), is dated, when the history's last word is that
    status, by the latest history row a person or staff wrote, as the run's history stage
    dates it: a last word mcsync wrote (a Mailchimp choice copied over) is no CiviCRM
    choice, and a membership only mcsync wrote has none (model seed 178: a removal mcsync
    copied from an unsubscribe was left undated, and with `prefer = "civicrm"` it undid the
    person's later sign-up). Otherwise it is left undated. Returns the newest history id
    read."""
    current = {
        (int(r["contact_id"]), int(r["group_id"])): str(r["status"])
        for r in ctx.civicrm.call(
            "GroupContact",
            "get",
            {
                "select": ["contact_id", "group_id", "status"],
                "where": [["contact_id", "IN", contact_ids], ["group_id", "IN", ctx.all_groups]],
                "limit": 0,
            },
        )
    }
    history = ctx.civicrm.call(
        "SubscriptionHistory",
        "get",
        {
            "select": ["id", "contact_id", "group_id", "status", "date", "tracking"],
            "where": [["contact_id", "IN", contact_ids], ["group_id", "IN", ctx.all_groups]],
            "orderBy": {"id": "ASC"},
            "limit": 0,
        },
    )
    last_status: dict[tuple[int, int], str] = {}
    latest_by_people: dict[tuple[int, int], str | None] = {}
    last_by_mcsync: set[tuple[int, int]] = set()
    for record in history:
        pair = (int(record["contact_id"]), int(record["group_id"]))
        last_status[pair] = record["status"]
        if (record.get("tracking") or "") == TRACKING_MARKER:
            last_by_mcsync.add(pair)
        else:
            last_by_mcsync.discard(pair)
            latest_by_people[pair] = iso(ctx.civi_to_utc(record["date"]))
    staged = {
        (int(g["contact_id"]), int(g["group_id"])): (g["status"], g["changed_at"])
        for g in ctx.staging.group_statuses_of(contact_ids, ctx.all_groups)
    }
    changes: list[tuple[int, int, str | None, str | None]] = []
    for pair in sorted(set(current) | set(staged)):
        status = current.get(pair)
        if pair in staged and staged[pair][0] == status and staged[pair][1] is not None:
            continue
        word = status or "Deleted"
        at = latest_by_people.get(pair) if last_status.get(pair) == word else None
        if status is not None and pair in last_status and pair not in latest_by_people:
            at = NO_CIVICRM_CHOICE
        changes.append((pair[0], pair[1], status, at))
    with ctx.staging.atomic():
        ctx.staging.set_group_statuses(changes)
    return max((int(r["id"]) for r in history), default=0)

"""A queued write goes out only if no newer change overtook it (DESIGN §4, the consent
invariant; §5: an override of the brake never sends a plan that newer changes overtook).

A run's plan rests on what it read: CiviCRM's subscription history up to the run's bookmark,
and each member's Mailchimp state as of the `last_changed` staged for it. Writes can wait — at
the brake, across a budget pause, after a crash — and people and staff keep choosing
meanwhile. Before each chunk of writes, both push stages ask both sides:

- CiviCRM: is there SubscriptionHistory after the run's bookmark, not written by mcsync, for
  these contacts and the audience's groups? One request per chunk, always.
- Mailchimp: has the member changed since the run read it? When an earlier process read the
  run's data (the plan waited), the members changed since the run started are read again
  once per process (paged `since_last_changed`, a few requests whatever the audience's size),
  and a member whose `last_changed` is newer than the staged one overtakes the writes of its
  row. A process that read the data itself pushes what it just planned, as any run does.
- CiviCRM contacts, for a plan that waited: an opt-out, do-not-email, death or trash leaves no
  history, only a newer `modified_date`; a contact modified after the run's mark overtakes the
  Mailchimp updates of its rows (one request per chunk). CiviCRM writes follow Mailchimp's
  choices, which such flags never hold back, so they are not checked for it.

An overtaken write is dropped and its row decided again by the next run, whose fetch reads the
newer change (both sides' changes are after the marks the next run starts from).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from mcsync.api.mailchimp import member_hash
from mcsync.stages.context import TRACKING_MARKER, WINDOW_OVERLAP, RunContext
from mcsync.store.database import iso, parse_iso, utc_now

# Only what the comparison needs: a small answer even for a long wait.
_NEWS_FIELDS = ("id", "last_changed")


def civicrm_changes(ctx: RunContext, contact_ids: Sequence[int]) -> set[tuple[int, int]]:
    """(contact, group) pairs a person or staff changed in CiviCRM after the run read the
    history its plan rests on (mcsync's own writes carry the tracking marker)."""
    if not contact_ids:
        return set()
    state = ctx.staging.state(ctx.list_id)
    seen_up_to = max(state["history_bookmark"] or 0, state["history_target"] or 0)
    fresh = ctx.civicrm.call(
        "SubscriptionHistory",
        "get",
        {
            "select": ["contact_id", "group_id", "tracking"],
            "where": [
                ["id", ">", seen_up_to],
                ["contact_id", "IN", sorted(set(contact_ids))],
                ["group_id", "IN", ctx.all_groups],
                # mcsync's own writes (the run's CiviCRM push just made many) are left out by
                # the server, and skipped below should a server not filter.
                ["OR", [["tracking", "IS NULL"], ["tracking", "!=", TRACKING_MARKER]]],
            ],
            "limit": 0,
        },
    )
    return {
        (r["contact_id"], r["group_id"])
        for r in fresh
        if (r.get("tracking") or "") != TRACKING_MARKER
    }


def contacts_modified(ctx: RunContext, contact_ids: Sequence[int]) -> set[int]:
    """Of these contacts, those modified in CiviCRM since the run's mark (taken when it
    started, before it read any contact), when the plan waited for another process."""
    mark = ctx.staging.state(ctx.list_id)["modified_target"]
    if ctx.read_data_here or not contact_ids or not mark:
        return set()
    found = ctx.civicrm.call(
        "Contact",
        "get",
        {
            "select": ["id"],
            "where": [
                ["id", "IN", sorted(set(contact_ids))],
                ["modified_date", ">", mark],
                ["is_deleted", "IN", [True, False]],
            ],
            "limit": 0,
        },
    )
    return {int(r["id"]) for r in found}


def mailchimp_news(ctx: RunContext) -> dict[str, str]:
    """Members changed at Mailchimp since the run read them: subscriber hash → last_changed.
    Empty when this process read the run's data itself; read once per process otherwise.
    Members archived meanwhile are asked for too (the member list leaves them out): a write
    planned before an archive would re-add the member."""
    if ctx.read_data_here:
        return {}
    if ctx.mailchimp_news is None:
        started = parse_iso(ctx.staging.state(ctx.list_id)["run_started"]) or utc_now()
        news: dict[str, str] = {}
        for status in (None, "archived"):
            pages = ctx.mailchimp.member_pages(
                ctx.list_id,
                # The overlap covers clock skew between this machine and Mailchimp's.
                since_last_changed=started - WINDOW_OVERLAP,
                page_size=ctx.sync.page_size_mailchimp,
                fields=_NEWS_FIELDS,
                status=status,
            )
            try:
                for _, _, members in pages:
                    for member in members:
                        news[member["id"]] = iso(parse_iso(member.get("last_changed"))) or ""
            finally:
                close = getattr(pages, "close", None)
                if close:
                    close()
        ctx.mailchimp_news = news
    return ctx.mailchimp_news


def changed_at_mailchimp(news: dict[str, str], subscriber: str | None, staged: str | None) -> bool:
    """The member (by subscriber hash) changed after the `last_changed` the plan saw, or
    appeared at Mailchimp since."""
    if subscriber is None or subscriber not in news:
        return False
    return staged is None or news[subscriber] > staged


def contacts_changed_at_mailchimp(ctx: RunContext, contact_ids: Sequence[int]) -> set[int]:
    """Contacts one of whose members changed at Mailchimp after the run read it."""
    news = mailchimp_news(ctx)
    if not news:
        return set()
    return {
        r["contact_id"]
        for r in ctx.staging.member_rows_of_contacts(ctx.list_id, contact_ids)
        if changed_at_mailchimp(news, r["mc_hash"], r["mc_last_changed"])
    }


def drop_overtaken_updates(ctx: RunContext, updates: list[sqlite3.Row]) -> list[sqlite3.Row]:
    """The updates of this chunk no newer change overtook; the others are marked aborted and
    their rows decided again next run (the mirror of push_civicrm's check)."""
    if not updates:
        return updates
    rows = {r["id"]: r for r in ctx.staging.rows_by_id(sorted({u["row_id"] for u in updates}))}
    contact_ids = [r["contact_id"] for r in rows.values() if r["contact_id"] is not None]
    changed_in_civicrm = {contact for contact, _ in civicrm_changes(ctx, contact_ids)}
    changed_in_civicrm |= contacts_modified(ctx, contact_ids)
    news = mailchimp_news(ctx)
    overtaken = []
    for update in updates:
        row = rows.get(update["row_id"])
        if row is None:
            continue
        hashes = {row["mc_hash"], member_hash(update["email"])}
        if row["contact_id"] in changed_in_civicrm or any(
            changed_at_mailchimp(news, h, row["mc_last_changed"]) for h in hashes
        ):
            overtaken.append(update)
    if not overtaken:
        return updates
    ctx.staging.abort_updates(
        [u["id"] for u in overtaken],
        "Overtaken: the contact or member changed after this update was planned; "
        "decided again next run.",
        iso(utc_now()) or "",
    )
    ctx.log(
        f"{len(overtaken)} planned Mailchimp updates were overtaken by newer changes and not "
        "sent; those contacts are decided again next run"
    )
    dropped = {u["id"] for u in overtaken}
    return [u for u in updates if u["id"] not in dropped]

"""One-way data feeds, CiviCRM → Mailchimp (seed-behaviour §10): merge fields and tags.

``fetch_contact_data`` (before reconcile) reads, in bulk, the values the audience's
``[audience.merge_fields]`` maps, the contact's tags (``sync_tags``) and what plugins feed, for
every contact about to be reconciled (rows whose contact was modified are among them:
``fetch_civicrm_modified`` marks them). Reconcile compares them with what mcsync last pushed.
``push_tags`` (after the member writes) sends tag changes to the member tags endpoint.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mcsync.budget import Deadline
from mcsync.errors import ApiError
from mcsync.plugins import (
    FeedAudience,
    FeedData,
    LoadedFeed,
    ReadOnlyCiviCRM,
    load_feeds,
    merge_under,
    merge_value,
    run_feed,
)
from mcsync.stages.context import RunContext
from mcsync.stages.fetch_civicrm import IN_CHUNK
from mcsync.store.database import dumps
from mcsync.store.history import Change

TAG_PREFIX = "CiviCRM: "
TAG_CHUNK = 50


def fetch_contact_data(ctx: RunContext) -> None:
    """Stage: stage feed values for the contacts of `todo` rows, a committed chunk at a time."""
    mapping = dict(ctx.audience.merge_fields)
    feeds = load_feeds()
    if not mapping and not ctx.sync.sync_tags and not feeds:
        return
    audience = FeedAudience(ctx.list_id, ctx.group_id, ctx.audience.name)
    reader = ReadOnlyCiviCRM(ctx.civicrm)
    with_tags = ctx.sync.sync_tags or bool(feeds)

    def read_after(cursor: int) -> list[tuple[int, str, str | None]]:
        """The next chunk's feed values, read from CiviCRM and the plugins before the chunk's
        transaction opens (no lock is held while they answer)."""
        contact_ids = ctx.staging.contacts_to_feed(ctx.list_id, cursor, IN_CHUNK)
        if not contact_ids:
            return []
        builtin = _mapped_values(ctx, contact_ids, mapping) if mapping else {}
        tags = _contact_tags(ctx, contact_ids) if ctx.sync.sync_tags else {}
        fed = [_feed(ctx, f, audience, contact_ids, reader) for f in feeds]
        records = []
        for contact_id in contact_ids:
            merged = merge_under(
                builtin.get(contact_id, {}),
                [dict(f[contact_id].merge_fields) for f in fed if contact_id in f],
            )
            names = set(tags.get(contact_id, ()))
            for f in fed:
                if contact_id in f:
                    names.update(f[contact_id].tags)
            records.append((contact_id, dumps(merged), dumps(sorted(names)) if with_tags else None))
        return records

    for chunk in ctx.staging.each_chunk(
        ctx.list_id, ctx.budget.check, read_after, key=lambda record: record[0]
    ):
        ctx.staging.store_contact_data(ctx.list_id, chunk, ctx.run_id)
        ctx.progress("fetch contact data", len(chunk), None)


def _mapped_values(
    ctx: RunContext, contact_ids: Sequence[int], mapping: dict[str, str]
) -> dict[int, dict[str, Any]]:
    """One `Contact.get` per chunk selecting every mapped path (implicit joins such as
    `address_primary.city` and custom fields come back under the path as their key)."""
    paths = sorted(set(mapping.values()))
    records = ctx.civicrm.call(
        "Contact",
        "get",
        {
            "select": ["id", *paths],
            "where": [["id", "IN", list(contact_ids)], ["is_deleted", "IN", [True, False]]],
            "limit": 0,
        },
    )
    return {
        int(r["id"]): {tag: merge_value(r.get(path)) for tag, path in mapping.items()}
        for r in records
    }


def _contact_tags(ctx: RunContext, contact_ids: Sequence[int]) -> dict[int, list[str]]:
    """The contacts' CiviCRM tags, as the Mailchimp tag names mcsync owns."""
    records = ctx.civicrm.call(
        "EntityTag",
        "get",
        {
            "select": ["entity_id", "tag_id.name"],
            "where": [
                ["entity_table", "=", "civicrm_contact"],
                ["entity_id", "IN", list(contact_ids)],
            ],
            "limit": 0,
        },
    )
    tags: dict[int, list[str]] = {}
    for record in records:
        name = record.get("tag_id.name")
        if name:
            tags.setdefault(int(record["entity_id"]), []).append(TAG_PREFIX + str(name))
    return tags


def _feed(
    ctx: RunContext,
    loaded: LoadedFeed,
    audience: FeedAudience,
    contact_ids: Sequence[int],
    reader: ReadOnlyCiviCRM,
) -> dict[int, FeedData]:
    return run_feed(
        loaded,
        audience,
        contact_ids,
        reader,
        check_budget=ctx.budget.check,
        warn=lambda m: ctx.log(m, "warning"),
    )


# -- tags to Mailchimp ------------------------------------------------------------------------
def push_tags(ctx: RunContext) -> None:
    """Stage: for subscribed members whose fed tags differ from what mcsync last pushed, send
    only the difference (new → active, dropped → inactive). Tags mcsync never pushed, such as
    Mailchimp's own, are never touched. Held back with the member writes (--civicrm-only)."""
    if ctx.hold_mailchimp:
        return

    def post_after(cursor: int) -> list[tuple[sqlite3.Row, ApiError | None]]:
        """The next chunk of members with tag changes, each posted (outside the chunk's
        transaction) and paired with Mailchimp's refusal, if it refused."""
        rows = ctx.staging.tags_to_push(ctx.list_id, cursor, TAG_CHUNK)
        if not rows:
            return []
        writes = [
            (r, tag_changes(json.loads(r["pushed_tags"]), json.loads(r["tags"]))) for r in rows
        ]
        workers = max(1, min(len(writes), ctx.mailchimp.max_connections))
        ctx.check_lease()
        deadlines = ctx.mailchimp.deadlines(len(writes))  # read here, not by the pool
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mc-tags") as pool:
            results = list(
                pool.map(lambda w, d: _post_tags(ctx, w[0]["mc_email"], w[1], d), writes, deadlines)
            )
        return list(zip(rows, results, strict=True))

    for chunk in ctx.staging.each_chunk(
        ctx.list_id, ctx.budget.check, post_after, key=lambda posted: int(posted[0]["id"])
    ):
        for row, error in chunk:
            if error is None:
                ctx.staging.tags_pushed(row["id"], row["tags"])
                ctx.count(Change.MC_TAGS)
            else:
                ctx.write_failures += 1
                ctx.log(f"Tags for {row['mc_email']} not updated: {error}", "warning")
        ctx.progress("write tags", len(chunk), None)


def tag_changes(pushed: Sequence[str], wanted: Sequence[str]) -> list[dict[str, str]]:
    """The tags-endpoint body items: only what changed since the last push."""
    added = sorted(set(wanted) - set(pushed))
    dropped = sorted(set(pushed) - set(wanted))
    return [{"name": t, "status": "active"} for t in added] + [
        {"name": t, "status": "inactive"} for t in dropped
    ]


def _post_tags(
    ctx: RunContext, email: str, changes: list[dict[str, str]], deadline: Deadline
) -> ApiError | None:
    """`POST /lists/{id}/members/{hash}/tags` (setting a status is idempotent, so retried).
    A refusal about this member is returned; account-wide failures raise."""
    try:
        ctx.mailchimp.update_tags(ctx.list_id, email, changes, deadline=deadline)
    except ApiError as exc:
        if exc.status in (400, 404):
            return exc
        raise
    return None

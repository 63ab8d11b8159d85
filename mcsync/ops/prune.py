"""`mcsync prune`: the staging data of audiences no longer in the config, listed and deleted.

An audience removed from the config keeps its rows, queues, run state and log in the staging
DB forever otherwise. Contacts and emails are shared by every audience and stay; the staged
memberships of its subscription group go when no configured audience uses that group.
"""

from __future__ import annotations

from typing import Any

from mcsync.config.models import Config
from mcsync.errors import McsyncError
from mcsync.runner.audience import lease_owner
from mcsync.store.database import Staging


def configured_groups(config: Config) -> set[int]:
    return {g for a in config.audience for g in (a.group_id, *a.interests.values())}


def stale_audiences(config: Config) -> list[dict[str, Any]]:
    """What the staging DB holds of each audience the config no longer names."""
    if not config.state_db.is_file():
        return []
    staging = Staging(config.state_db, read_only=True)
    try:
        configured = {a.list_id for a in config.audience}
        return [
            staging.audience_footprint(list_id)
            for list_id in staging.staged_audiences()
            if list_id not in configured
        ]
    finally:
        staging.close()


def refusals(stale: list[dict[str, Any]]) -> list[str]:
    """Why deleting these would lose work: Mailchimp writes queued or in flight (their
    results would never be read; queued ones never sent)."""
    return [
        f"audience {s['list_id']} has {s['open_writes']} Mailchimp write(s) queued or in "
        f"flight and {s['open_batches']} open batch(es)"
        for s in stale
        if s["open_writes"] or s["open_batches"]
    ]


def prune(config: Config, stale: list[dict[str, Any]], *, force: bool) -> list[dict[str, Any]]:
    """Delete the staging data of these audiences, each under its lease (a run of another
    config sharing this DB may hold it), after checking again that nothing is in flight."""
    problems = [] if force else refusals(stale)
    if problems:
        raise McsyncError(
            "; ".join(problems) + ". Put the audience back in the config and let a run finish "
            "(or abort it), or run prune --force to delete them anyway"
        )
    used = configured_groups(config)
    staging = Staging(config.state_db)
    deleted = []
    try:
        for item in stale:
            list_id = item["list_id"]
            owner = lease_owner()
            has_state = bool(staging.state(list_id))
            if has_state and not staging.acquire_lease(list_id, owner, config.sync.lease_seconds):
                raise McsyncError(f"audience {list_id} is busy with a running sync; not pruned")
            if not force and refusals([staging.audience_footprint(list_id)]):
                staging.release_lease(list_id, owner)
                raise McsyncError(f"audience {list_id} has writes in flight now; not pruned")
            group = item["group_id"]
            unused = [group] if group is not None and group not in used else []
            counts = staging.delete_audience(list_id, unused)
            deleted.append({"list_id": list_id, "deleted": counts})
    finally:
        staging.close()
    return deleted

"""`mcsync abort`: stop an audience's in-flight work and start its next run afresh."""

from __future__ import annotations

from mcsync.budget import Budget
from mcsync.config.models import AudienceConfig, Config
from mcsync.errors import AudienceBusy
from mcsync.runner.audience import lease_owner, reset_run
from mcsync.runner.engine import connections
from mcsync.store.database import Staging, iso, utc_now

ABORTED = "Sync was aborted"


def abort_audience(config: Config, audience: AudienceConfig) -> str:
    """Cancel pending batches at Mailchimp, mark their updates failed ("aborted"), discard
    unsubmitted updates and planned CiviCRM writes, and reset the run to its start. Only the
    plan goes: every row whose writes are dropped is decided again by the next run (DESIGN §4,
    the consent invariant), so the facts behind the plan still reach the other side."""
    staging = Staging(config.state_db)
    owner = lease_owner()
    list_id = audience.list_id
    try:
        staging.ensure_audience(list_id, audience.group_id, audience.account)
        if not staging.acquire_lease(list_id, owner, config.sync.lease_seconds):
            raise AudienceBusy(
                f"audience {list_id} is busy with a running sync; abort it when that run stops "
                f"(or its lease expires, at most {config.sync.lease_seconds}s after a crash)"
            )
        batches = staging.open_batches(list_id)
        with connections(config, Budget(60)) as conns:
            client = conns.mailchimp_for(audience.account)
            for batch in batches:
                if batch["mc_batch_id"] and batch["status"] != "finished":
                    client.delete_batch(batch["mc_batch_id"])
        redecided, failed, discarded = staging.abort_plan(list_id, ABORTED, iso(utc_now()) or "")
        reset_run(staging, list_id)
        staging.log(
            list_id,
            f"Aborted: {len(batches)} batches cancelled, {failed} submitted updates marked "
            f"failed, {discarded} unsubmitted updates discarded; the next run starts afresh "
            f"and decides again for the {redecided} people concerned",
            "warning",
        )
        return (
            f"Aborted audience {list_id} (group {audience.group_id}): {len(batches)} batches "
            f"cancelled, {failed} submitted updates marked failed, {discarded} unsubmitted "
            f"updates discarded. The next run starts from the beginning and decides again "
            f"for the {redecided} people concerned."
        )
    finally:
        staging.release_lease(list_id, owner)
        staging.close()

"""What every stage of a run needs: the audience, the staging DB, both clients and the budget."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo

from mcsync.api.civicrm import CiviCRMClient
from mcsync.api.mailchimp import MailchimpClient
from mcsync.budget import Budget
from mcsync.config.models import AudienceConfig, SyncConfig
from mcsync.errors import AudienceBusy
from mcsync.store.database import Staging
from mcsync.store.history import Change

# mcsync's own GroupContact writes carry this in SubscriptionHistory.tracking, so they are not
# mistaken for a person's choice (reference/civicrm-api.md §2.4).
TRACKING_MARKER = "mcsync"

# Overlap applied to time windows, as the seed does: covers DST fall-back and clock skew.
WINDOW_OVERLAP = timedelta(hours=2)

ProgressFn = Callable[[str, int, int | None], None]


def _no_progress(stage: str, done: int, total: int | None) -> None:
    return None


class Lease:
    """The audience's lease as its holder sees it.

    Other processes judge a lease by the expiry time stored in the staging DB, on the wall
    clock (the one clock they share). The holder times its own renewals on the monotonic
    clock, which no clock adjustment moves, and asks the DB before every chunk of writes
    whether the lease is still its own: a run that stalled past `lease_seconds` (a suspended
    machine, a hung request) and was taken over stops before writing again, instead of
    writing to the end of its stage beside the run that took over."""

    def __init__(self, list_id: str, owner: str, seconds: float):
        self.list_id = list_id
        self.owner = owner
        self.seconds = seconds
        self.renewed = time.monotonic()  # the last successful renewal
        self.lost = threading.Event()

    def renew(self, staging: Staging) -> bool:
        """Extend the lease if it is still ours (from any thread, with that thread's DB)."""
        started = time.monotonic()
        if self.lost.is_set() or not staging.renew_lease(self.list_id, self.owner, self.seconds):
            self.lost.set()
            return False
        self.renewed = max(self.renewed, started)
        return True

    def due_in(self) -> float:
        """Seconds until the next heartbeat: a sixth of the lease after the last renewal."""
        return max(0.0, self.renewed + max(1.0, self.seconds / 6) - time.monotonic())

    def check(self, staging: Staging) -> None:
        """Raise AudienceBusy unless this run still holds the audience (renewing it)."""
        if not self.renew(staging):
            raise AudienceBusy(
                f"audience {self.list_id}: this run lost its lease (it was stalled past "
                "lease_seconds and another run took over); stopping before its next write"
            )


@dataclass
class RunContext:
    audience: AudienceConfig
    sync: SyncConfig
    staging: Staging
    mailchimp: MailchimpClient
    civicrm: CiviCRMClient
    budget: Budget
    civi_zone: tzinfo = UTC
    dry_run: bool = False
    allow_mass_changes: bool = False
    progress: ProgressFn = _no_progress
    run_id: str = ""
    lease: Lease | None = None
    # True once this process has read the run's data from its first Mailchimp page on: its
    # plan rests on data no older than the process, so its writes need no re-read (overtaken).
    read_data_here: bool = False
    # Members changed at Mailchimp since the run's data was read (hash -> last_changed), read
    # once by a process that writes a plan an earlier process made (see overtaken).
    mailchimp_news: dict[str, str] | None = None
    # How many members the Mailchimp window held when this process read its first page
    # (``total_items`` of the answer at offset 0); None when an earlier process began the
    # fetch. A window that fitted in that one answer cannot have skipped anyone.
    window_total: int | None = None
    # A sync of one person (`resync --now`): only these rows' queued Mailchimp writes are
    # sent, directly (answered at once); None: every queued write of the audience.
    only_rows: frozenset[int] | None = None
    # `--civicrm-only`: the CiviCRM side of the plan is written; Mailchimp writes (members,
    # tags) stay queued for a later normal run, which decides their rows again first.
    hold_mailchimp: bool = False
    # What this process changed, by kind (store.history.Change), and how many of its writes
    # were refused: the runner records them in the run history when the run ends.
    changes: Counter[str] = field(default_factory=Counter)
    write_failures: int = 0

    @property
    def list_id(self) -> str:
        return self.audience.list_id

    @property
    def group_id(self) -> int:
        return self.audience.group_id

    @property
    def interest_groups(self) -> dict[str, int]:
        return dict(self.audience.interests)

    @property
    def all_groups(self) -> list[int]:
        return [self.group_id, *sorted(set(self.audience.interests.values()))]

    @property
    def respect_privacy_flags(self) -> bool:
        override = getattr(self.audience, "respect_privacy_flags", None)
        return self.sync.respect_privacy_flags if override is None else bool(override)

    def check_lease(self) -> None:
        """Before each chunk of writes: stop if another run has taken the audience over."""
        if self.lease is not None:
            self.lease.check(self.staging)

    def count(self, kind: Change, n: int = 1) -> None:
        """Count changes made (for the run history): call once they are confirmed."""
        self.changes[kind.value] += n

    def count_mailchimp_write(self, body: Mapping[str, object]) -> None:
        """A member write Mailchimp applied, counted by what it changed."""
        status = body.get("status")  # absent when the status stays (status_if_new only)
        if status in ("subscribed", "pending"):
            self.count(Change.MC_SUBSCRIBES)
        elif status == "unsubscribed":
            self.count(Change.MC_UNSUBSCRIBES)
        if body.get("interests"):
            self.count(Change.MC_INTERESTS)
        if body.get("merge_fields"):
            self.count(Change.MC_MERGE_FIELDS)

    def log(self, message: str, level: str = "info") -> None:
        self.staging.log(self.list_id, message, level)

    def civi_to_utc(self, local: str | None) -> datetime | None:
        """CiviCRM answers in its site's zone with no offset (civicrm-api.md §2.6)."""
        if not local:
            return None
        moment = datetime.fromisoformat(local.replace(" ", "T"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=self.civi_zone)
        return moment.astimezone(UTC)

    def civi_local(self, moment: datetime) -> str:
        return moment.astimezone(self.civi_zone).strftime("%Y-%m-%d %H:%M:%S")

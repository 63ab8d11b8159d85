"""What every stage of a run needs: the audience, the staging DB, both clients and the budget."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

from mcsync.budget import Budget
from mcsync.civicrm import CiviCRMClient
from mcsync.config import AudienceConfig, SyncConfig
from mcsync.mailchimp import MailchimpClient
from mcsync.staging import Staging

# mcsync's own GroupContact writes carry this in SubscriptionHistory.tracking, so they are not
# mistaken for a person's choice (reference/civicrm-api.md §2.4).
TRACKING_MARKER = "mcsync"

# Overlap applied to time windows, as the seed does: covers DST fall-back and clock skew.
WINDOW_OVERLAP = timedelta(hours=2)

ProgressFn = Callable[[str, int, int | None], None]


def _no_progress(stage: str, done: int, total: int | None) -> None:
    return None


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

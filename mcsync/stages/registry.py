"""The stages of one audience's run, in order: what the runner steps through and what reporting
(status, preview, the CLI) names, without importing the runner."""

from __future__ import annotations

from collections.abc import Callable

from mcsync.stages import (
    batches,
    brake,
    feeds,
    fetch_civicrm,
    fetch_mailchimp,
    match,
    profile,
    push_civicrm,
    push_mailchimp,
    reconcile,
)
from mcsync.stages.context import RunContext

StageFn = Callable[[RunContext], None]

# Stage name → what it does. Full runs read all group membership; incremental runs read
# subscription history since the stored bookmark. Both read the contacts modified since the
# stored mark: a full run moves that mark to its own start too, and its group read refreshes
# flags but not emails, so an email edit or hold made before it would otherwise never be read.
STAGES: list[tuple[str, StageFn, str]] = [
    ("fetch_mailchimp", fetch_mailchimp.fetch_mailchimp, "any"),
    ("fetch_mailchimp_changed", fetch_mailchimp.fetch_changed_during_fetch, "any"),
    ("confirm_vanished", fetch_mailchimp.confirm_vanished_members, "full"),
    ("fetch_mailchimp_skipped", fetch_mailchimp.read_skipped_in_window, "incremental"),
    ("fetch_civicrm_groups", fetch_civicrm.fetch_civicrm_groups, "full"),
    ("fetch_civicrm_history", fetch_civicrm.fetch_civicrm_history, "incremental"),
    ("fetch_civicrm_modified", fetch_civicrm.fetch_civicrm_modified, "any"),
    ("fetch_missing_contacts", fetch_civicrm.fetch_missing_contacts, "any"),
    ("fix_contact_ids", match.fix_contact_ids, "any"),
    ("match_emails", match.match_emails, "any"),
    ("confirm_unread_subscribes", fetch_mailchimp.confirm_unread_subscribes, "any"),
    ("create_contacts", match.create_contacts, "any"),
    ("add_civicrm_only", match.add_civicrm_only, "any"),
    ("confirm_civicrm_only", fetch_mailchimp.confirm_civicrm_only, "full"),
    ("load_history", match.load_history_dates, "any"),
    ("date_status_changes", fetch_mailchimp.date_status_changes, "any"),
    ("names_from_mailchimp", profile.names_from_mailchimp, "any"),
    ("fetch_contact_data", feeds.fetch_contact_data, "any"),
    ("reconcile", reconcile.reconcile_rows, "any"),
    ("brake", brake.check_mass_changes, "any"),
    ("push_civicrm", push_civicrm.push_civicrm, "write"),
    ("change_member_emails", profile.change_member_emails, "write"),
    ("push_mailchimp", push_mailchimp.push_mailchimp, "write"),
    ("collect_batches", batches.collect_batches, "write"),
    ("push_tags", feeds.push_tags, "write"),
]
STAGE_NAMES = [name for name, _, _ in STAGES]
WRITE_STAGES = {name for name, _, when in STAGES if when == "write"}

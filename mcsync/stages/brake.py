"""The mass-change brake (DESIGN §5): the stage between planning and writing that stops a run
whose planned changes look like a mistake rather than people's choices.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from mcsync.errors import MassChangeBrake
from mcsync.stages.context import RunContext
from mcsync.store.database import Staging


def check_mass_changes(ctx: RunContext) -> None:
    """Stop before writing when a run would unsubscribe/remove more than the allowed share
    of the audience's subscribed members, or when one side answered empty for an audience
    that had members (DESIGN §5): a group emptied by mistake, a wrong list id, an outage
    that returned an empty page. Nothing has been written when this raises; the run stays
    at this stage, so the next run stops here again until it is allowed or aborted."""
    if ctx.allow_mass_changes:
        return
    problems = mass_change_problems(
        ctx.staging,
        ctx.list_id,
        ctx.group_id,
        ctx.sync.max_removal_share,
        ctx.interest_groups,
    )
    if problems:
        share = ctx.sync.max_removal_share
        message = (
            f"Mass-change brake for audience {ctx.list_id} (group {ctx.group_id}): "
            f"{'; '.join(problems)}. Nothing was written. If this is intended, run again with "
            f"--allow-mass-changes. If not, fix the cause (a group emptied or an audience "
            f"replaced by mistake?), then run 'mcsync abort --group-id {ctx.group_id}' to drop "
            f"the planned changes and start afresh. (max_removal_share = {share:.0%})"
        )
        ctx.log(message, "error")
        raise MassChangeBrake(message)


def mass_change_problems(
    staging: Staging,
    list_id: str,
    group_id: int,
    share: float,
    interest_groups: Mapping[str, int] | None = None,
) -> list[str]:
    """Why the brake trips for the changes now planned for this audience (empty: it does not).

    Subscriptions count in the direction that loses people (unsubscribes at Mailchimp,
    removals from the CiviCRM group); each mapped interest counts both ways on both sides,
    for people already subscribed (a new subscriber's interests come with its subscribe),
    since switching an interest on for most of an audience is as surely a mistake (a group
    filled by accident) as switching it off. Every count is held against the same share.
    Before the audience's first complete sync there is no agreed state to change, and the
    two sides' interests are being joined: then, as with subscribes, only the switches that
    take an interest away count."""
    state = staging.state(list_id)
    counts = staging.brake_counts(list_id, group_id)
    added, unsubscribes, removals = counts["added"], counts["unsubscribes"], counts["removals"]
    # Counting the subscribed members reads every member row (seconds at a million); it is
    # counted only when a check needs it: a change of more than one, or an empty group.
    subscribed = functools.cache(lambda: staging.subscribed_members(list_id))

    def too_many(count: int) -> bool:
        return count > 1 and count > share * max(subscribed(), added, 1)

    problems = []
    # Like the share checks below, one person leaving is never a "mass" change.
    synced_before = bool(state.get("last_sync"))
    # A full fetch pages every member; mc_offset counts what this run's pages held.
    if state.get("run_full") and synced_before and not state.get("mc_offset"):
        members = staging.staged_members(list_id)
        if members > 1:
            problems.append(
                f"Mailchimp returned no members for this audience, which had {members} when "
                f"last synced (a wrong list_id or API key, or an outage?)"
            )
    if synced_before and not added and subscribed() > 1:
        problems.append(
            f"CiviCRM group {group_id} has no contacts Added, while {subscribed()} members "
            f"are subscribed at Mailchimp (was the group emptied?)"
        )
    if too_many(unsubscribes):
        problems.append(
            f"this run would unsubscribe {unsubscribes} of {subscribed()} members at Mailchimp"
        )
    if too_many(removals):
        problems.append(
            f"this run would remove {removals} of {added} contacts from CiviCRM group {group_id}"
        )
    for interest_id, interest_group in sorted((interest_groups or {}).items()):
        mapped = f"interest {interest_id} (CiviCRM group {interest_group})"
        switches = staging.planned_interest_switches(list_id, interest_id)
        for value, direction in ((False, "off"), (True, "on")):
            if value and not synced_before:
                continue
            count = switches.get(value, 0)
            if too_many(count):
                problems.append(
                    f"this run would switch {mapped} {direction} for {count} of "
                    f"{subscribed()} subscribed members at Mailchimp"
                )
        writes = staging.planned_interest_group_writes(list_id, interest_group, group_id)
        for status, verb in (("Removed", "remove"), ("Added", "add")):
            if status == "Added" and not synced_before:
                continue
            count = writes.get(status, 0)
            preposition = "from" if status == "Removed" else "to"
            if too_many(count):
                problems.append(
                    f"this run would {verb} {count} of {subscribed()} subscribed members "
                    f"{preposition} CiviCRM group {interest_group} (interest {interest_id})"
                )
    return problems

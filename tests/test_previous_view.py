"""A Mailchimp status change is dated after mcsync's previous view of the member: the last
completed run read every member changed in its window, so a staged status still differing
from Mailchimp's changed after that run started — not merely after the member's previous
`last_changed`, which may be years old. CiviCRM changes made before that run are therefore
ordered without reading the member's activity feed (issue 12: an incremental run's requests
grow with its changes, not with its audience's history)."""

from __future__ import annotations

from conftest import World


def feed_reads(world: World, since: int) -> int:
    return sum(1 for _, path in world.mc.request_log[since:] if path.endswith("/activity-feed"))


def test_an_unsubscribe_after_the_last_run_needs_no_feed_against_an_older_staff_change(
    world: World,
) -> None:
    contact = world.person(
        "ann@example.org",
        mc="subscribed",
        civi="Added",
        mc_at=world.ago(days=3),
        civi_at=world.ago(days=2),
    )
    assert contact is not None
    assert world.sync()[0].outcome.completed  # type: ignore[union-attr]
    world.mc.set_member_status(world.list_id, "ann@example.org", "unsubscribed")
    before = len(world.mc.request_log)
    assert world.sync()[0].outcome.completed  # type: ignore[union-attr]
    assert feed_reads(world, before) == 0
    assert world.civi_status(contact) == "Removed"

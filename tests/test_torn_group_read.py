"""A run stopped between reading CiviCRM group statuses and loading their dates, resumed
after staff changed the group: the status read before the change must not be paired with
the date of the change (found by the consent model as "torn_group_read")."""

from __future__ import annotations

from conftest import World

from mcsync.budget import Budget
from mcsync.store.database import Staging


class StopAfterGroupRead:
    """A budget that runs out once the first GroupContact page is stored (the stage reports
    its progress, then checks the budget): the full run stops inside fetch_civicrm_groups,
    its statuses staged, no dates loaded."""

    def __init__(self) -> None:
        self.read = False
        self.budget = Budget(10, clock=lambda: 1e9 if self.read else 0.0)

    def progress(self, what: str, done: int, total: int | None) -> None:
        if what == "fetch CiviCRM groups":
            self.read = True


def test_a_staff_change_after_a_stopped_group_read_is_not_dated_onto_the_old_status(
    world: World,
) -> None:
    """The person subscribed at Mailchimp two days ago; CiviCRM still says Removed (five
    days old). The run reads Removed, stops, then staff add the contact too. Resumed, the
    run must not take the addition's date as the date of the Removed it read: that makes an
    old removal look newer than the person's subscribe, and unsubscribes them."""
    world.write_config("max_removal_share = 1.0")  # one person: no mass-change brake
    contact = world.person(
        "a@example.org", mc="subscribed", civi="Removed", mc_at=world.ago(days=2)
    )
    assert contact is not None
    stop = StopAfterGroupRead()
    stopped = world.sync(budget=stop.budget, progress=stop.progress, full=True)
    assert stopped[0].outcome is not None and not stopped[0].outcome.completed
    staging = Staging(world.tmp_path / "state.sqlite3")
    try:
        stage = staging.query("SELECT stage FROM audience_state")[0][0]
    finally:
        staging.close()
    assert stage == stopped[0].outcome.stage == "fetch_civicrm_groups"

    world.civi.set_group_status(contact, world.group_id, "Added")  # staff, now
    resumed = world.sync()[0].outcome
    assert resumed is not None and resumed.completed

    # Both sides now say subscribed: nothing to write, and nothing planned. (Before the
    # fix, the run planned to unsubscribe the person; only the push's last-moment check
    # for newer CiviCRM history held that write back, leaving the row for another run.)
    assert world.mc_status("a@example.org") == "subscribed"
    assert world.civi_status(contact) == "Added"
    assert world.writes() == []
    staging = Staging(world.tmp_path / "state.sqlite3")
    try:
        row = staging.query("SELECT mc_expected, sync_status FROM rows")[0]
        group = staging.query("SELECT status FROM group_status")[0]
    finally:
        staging.close()
    assert (row["mc_expected"], row["sync_status"], group["status"]) == (None, "ok", "Added")

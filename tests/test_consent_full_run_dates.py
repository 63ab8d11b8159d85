"""A full run never keeps an old date for a CiviCRM group status that went and came back
(DESIGN §4; found by the model-based consent test, long mode seed 66 of 100 steps).

A full run reads every GroupContact, not the subscription history. It used to keep the
staged change date of a status that read as before; but staff may have changed it and back
since (Removed, Added, Removed), and the old date then made an older Mailchimp subscribe look
newer: the contact was Added again against the staff's newest removal. A full run now keeps
no dates for what it reads; where the sides disagree, the latest history row dates it.
"""

from __future__ import annotations

from conftest import World

EMAIL = "g@example.org"


def _completed(world: World, **kwargs: object) -> None:
    [result] = world.sync(**kwargs)
    assert result.error is None, result.error
    assert result.outcome is not None and result.outcome.completed


def test_a_removal_that_went_and_came_back_is_dated_by_its_latest_history(world: World) -> None:
    contact = world.person(
        EMAIL, mc="subscribed", civi="Removed", mc_at=world.ago(days=20), civi_at=world.ago(days=10)
    )
    assert contact is not None
    _completed(world, full=True)  # the removal is newer: the member is unsubscribed
    assert world.mc_status(EMAIL) == "unsubscribed"
    world.advance_clock(minutes=10)
    world.civi.set_group_status(contact, world.group_id, "Added", when=world.clock())  # staff
    world.advance_clock(minutes=5)
    world.mc.set_member_status(world.list_id, EMAIL, "subscribed")  # the person
    world.advance_clock(minutes=5)
    world.civi.set_group_status(contact, world.group_id, "Removed", when=world.clock())  # staff
    world.advance_clock(minutes=5)
    _completed(world, full=True)
    assert world.civi_status(contact) == "Removed"  # the staff's newest choice stands
    assert world.mc_status(EMAIL) == "unsubscribed"
    _completed(world)
    _completed(world, full=True)
    assert world.civi_status(contact) == "Removed"
    assert world.mc_status(EMAIL) == "unsubscribed"

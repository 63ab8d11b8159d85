"""A member deleted permanently went at an unknown time, but after the run that last read it
there (model seed 105). Staff Added the contact; a run then read the member, subscribed, so
both sides agreed; then at Mailchimp the person changed address and the member was deleted
permanently (the old address is on no forgotten list). The next full run found it gone and
dated the deletion at the member's last change, years old: the older Added looked newer, and
mcsync subscribed the old address again, undoing the deletion from an older choice (DESIGN
§4). A gone member is now dated at the later of its last change and the start of the run that
last read it (CiviCRM's clock then)."""

from __future__ import annotations

from typing import Any

from conftest import World


def completed(world: World, **kwargs: Any) -> None:
    results = world.sync(**kwargs)
    assert results[0].error is None, results[0].error
    assert results[0].outcome and results[0].outcome.completed


def synced_then_moved_and_deleted(world: World, *, added_again: bool = False) -> int:
    """A person subscribed at Mailchimp a month ago, Added in CiviCRM two days ago, synced;
    then (optionally staff remove and Add the contact again, after that sync read the
    member) the person changes address at Mailchimp and the member is deleted permanently."""
    contact = world.person(
        "p@example.org",
        mc="subscribed",
        civi="Added",
        mc_at=world.ago(days=30),
        civi_at=world.ago(days=2),
    )
    assert contact is not None
    for n in range(3):  # others staying: an empty answer is never taken as everyone gone
        world.person(f"other{n}@example.org", mc="subscribed", civi="Added")
    completed(world)
    world.advance_clock(minutes=5)
    if added_again:
        world.civi.set_group_status(contact, world.group_id, "Removed")
        world.civi.set_group_status(contact, world.group_id, "Added")
        world.advance_clock(minutes=5)
    world.mc.edit_member(world.list_id, "p@example.org", new_email="p.new@example.org")
    world.mc.forget_member(world.list_id, "p.new@example.org")
    world.advance_clock(minutes=5)
    return contact


def test_a_member_deleted_after_it_was_read_is_not_subscribed_again(world: World) -> None:
    """The deletion came after the sync that read the member, so after the Added: it is the
    latest choice. The old address is not subscribed as new; the contact leaves the group."""
    contact = synced_then_moved_and_deleted(world)
    completed(world, full=True, allow_mass_changes=True)
    assert world.mc_status("p@example.org") is None
    assert world.mc_status("p.new@example.org") is None
    assert world.civi_status(contact) == "Removed"


def test_a_contact_added_again_after_the_member_was_read_still_wins(world: World) -> None:
    """Staff Added the contact again after the sync read the member: when the member went,
    before or after that, is unknown, and as before a CiviCRM change made after everything
    mcsync knew of the member is not overwritten by the deletion: the person is subscribed."""
    contact = synced_then_moved_and_deleted(world, added_again=True)
    completed(world, full=True, allow_mass_changes=True)
    assert world.civi_status(contact) == "Added"
    assert world.mc_status("p@example.org") == "subscribed"

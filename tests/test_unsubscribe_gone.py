"""An unsubscribe is for a member mcsync read; it never creates one (model seed 85). After the
person changed their address at Mailchimp and the member was then deleted permanently, the old
address is on no forgotten list, and an incremental run cannot see the deletion: staff removing
the contact from the group made mcsync upsert an *unsubscribed* member at the old address,
changing "absent" (the deletion, the newer state) from an older choice (DESIGN §4). The
unsubscribe now carries no `status_if_new`, so Mailchimp refuses to create the member; mcsync
takes the refusal as "no member there" and decides the row again without it."""

from __future__ import annotations

from typing import Any

from conftest import World

from mcsync.ops.status import failures
from mcsync.store.database import Staging


def completed(world: World, **kwargs: Any) -> None:
    results = world.sync(**kwargs)
    assert results[0].error is None, results[0].error
    assert results[0].outcome and results[0].outcome.completed


def moved_then_deleted(world: World, count: int) -> list[int]:
    """``count`` people subscribed on both sides and synced; then at Mailchimp each changed
    their address and was deleted permanently; then staff removed them from the group."""
    contacts = []
    for n in range(count):
        contact = world.person(f"p{n}@example.org", mc="subscribed", civi="Added")
        assert contact is not None
        contacts.append(contact)
    completed(world)
    world.advance_clock(minutes=5)
    for n in range(count):
        world.mc.edit_member(world.list_id, f"p{n}@example.org", new_email=f"p{n}.new@example.org")
        world.mc.forget_member(world.list_id, f"p{n}.new@example.org")
    world.advance_clock(minutes=5)
    for contact in contacts:
        world.civi.set_group_status(contact, world.group_id, "Removed")
    return contacts


def assert_nobody_recreated(world: World, count: int) -> None:
    for n in range(count):
        assert world.mc_status(f"p{n}@example.org") is None
        assert world.mc_status(f"p{n}.new@example.org") is None
    staging = Staging(world.config.state_db)
    try:
        assert failures(staging, world.config.audience[0]) == []
    finally:
        staging.close()


def test_an_unsubscribe_sent_alone_does_not_recreate_a_deleted_member(world: World) -> None:
    moved_then_deleted(world, 1)
    before = len(world.mc.request_log)
    completed(world)
    assert_nobody_recreated(world, 1)
    assert ("POST", f"/3.0/lists/{world.list_id}") not in world.mc.request_log[before:]
    # decided again without the member: the next run writes nothing
    before = len(world.mc.request_log)
    completed(world)
    assert [r for r in world.mc.request_log[before:] if r[0] in ("PUT", "PATCH", "POST")] == []
    assert_nobody_recreated(world, 1)


def test_unsubscribes_sent_in_a_batch_do_not_recreate_deleted_members(world: World) -> None:
    """More unsubscribes than are sent one by one go as a batch: each refusal is read from the
    batch's results the same way."""
    moved_then_deleted(world, 12)
    completed(world, allow_mass_changes=True)
    assert ("POST", "/3.0/batches") in world.mc.request_log
    assert_nobody_recreated(world, 12)
    before = len(world.mc.request_log)
    completed(world)
    assert [r for r in world.mc.request_log[before:] if r[0] in ("PUT", "PATCH", "POST")] == []


def test_an_unsubscribe_of_a_member_still_there_is_made(world: World) -> None:
    contact = world.person("ann@example.org", mc="subscribed", civi="Added")
    assert contact is not None
    completed(world)
    world.advance_clock(minutes=5)
    world.civi.set_group_status(contact, world.group_id, "Removed")
    completed(world)
    assert world.mc_status("ann@example.org") == "unsubscribed"


def test_a_data_update_does_not_recreate_a_deleted_member(world: World) -> None:
    """The same with a name edited in CiviCRM: the merge-field update carried the member's
    status as `status_if_new` and would have created a *subscribed* member at the old address."""
    world.write_config()
    with world.config_path.open("a") as handle:
        handle.write('[audience.merge_fields]\nFNAME = "first_name"\n')
    [contact] = moved_then_deleted(world, 1)
    world.civi.set_group_status(contact, world.group_id, "Added")  # staff changed their mind
    world.advance_clock(minutes=5)
    world.civi.update_contact(contact, first_name="Renamed")
    completed(world, allow_mass_changes=True)
    assert_nobody_recreated(world, 1)

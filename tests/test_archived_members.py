"""Archived and permanently deleted Mailchimp members (the consent invariant, DESIGN §4).

Both are hidden from ``GET /lists/{id}/members`` unless ``status=archived`` is asked for, so
mcsync must look for them to learn when a member left: an incremental run lists the members
archived in its window, and a member found archived is dated by its own ``last_changed``, never
by the run's start. A permanent deletion has no date: it never overwrites a CiviCRM change made
after mcsync last saw the member (the address cannot be re-subscribed; it is reported)."""

from __future__ import annotations

from typing import Any

from conftest import World

from mcsync.store.database import Staging

A = "a@example.org"


def _sync(world: World, **kwargs: Any) -> None:
    """One completed run; a one-person audience losing its person is no mass change."""
    results = world.sync(allow_mass_changes=True, **kwargs)
    assert results[0].error is None, results[0].error
    assert results[0].outcome and results[0].outcome.completed, results[0].outcome


def _person(world: World, **kwargs: Any) -> int:
    """A, and someone else who stays: a full fetch that returns nobody confirms nothing."""
    world.person("b@example.org", mc="subscribed", civi="Added")
    contact = world.person(A, **kwargs)
    assert contact is not None
    return contact


def _reason(world: World, email: str) -> str | None:
    staging = Staging(world.config.state_db)
    rows = staging.query("SELECT reason FROM rows WHERE mc_email = ?", (email,))
    return rows[0]["reason"] if rows else None


def test_an_incremental_run_learns_of_an_archive_made_before_it(world: World) -> None:
    """The archive is the later choice: the next incremental run removes the contact, without
    waiting for a full run."""
    contact = _person(world, mc="subscribed", civi="Added")
    _sync(world)
    world.mc.set_member_status(world.list_id, A, "archived")
    _sync(world)
    assert world.civi_status(contact) == "Removed"
    assert world.mc_status(A) == "archived"


def test_an_incremental_run_does_not_revive_an_archived_member(make_world: Any) -> None:
    """A row decided again for another reason (an interest group changed in CiviCRM) must not
    be decided on the stale staged 'subscribed': its update would re-add the archived member
    at Mailchimp for a CiviCRM Added older than the archive."""
    world = make_world(interests=1)
    contact = _person(world, mc="subscribed", civi="Added")
    _sync(world)
    world.mc.set_member_status(world.list_id, A, "archived")
    (interest_group,) = world.interest_ids.values()
    world.civi.set_group_status(contact, interest_group, "Added")
    _sync(world)
    assert world.mc_status(A) == "archived"
    assert world.civi_status(contact) == "Removed"


def test_a_first_full_run_does_not_revive_a_member_archived_after_the_civicrm_added(
    world: World,
) -> None:
    """A contact Added in CiviCRM long ago whose member was archived since is not new at
    Mailchimp: the archive is the later choice, so nothing re-adds the member."""
    contact = _person(world, mc="archived", mc_at=world.ago(days=1), civi="Added")
    _sync(world, full=True)
    assert world.mc_status(A) == "archived"
    assert world.civi_status(contact) == "Removed"


def test_a_full_run_dates_an_archive_by_the_members_last_changed(world: World) -> None:
    """Archived 2 hours before the run, Added again in CiviCRM 1 hour before it: the staff
    choice is the newer one and stands (and, as any newer CiviCRM Added, re-subscribes)."""
    contact = _person(world, mc="subscribed", civi="Added")
    _sync(world)
    world.advance_clock(hours=-2)
    world.mc.set_member_status(world.list_id, A, "archived")
    world.advance_clock(hours=1)
    world.civi.set_group_status(contact, world.group_id, "Added")
    world.advance_clock(hours=1)
    _sync(world, full=True)
    assert world.civi_status(contact) == "Added"
    assert world.mc_status(A) == "subscribed"


def test_a_permanent_deletion_never_overwrites_a_newer_civicrm_change(world: World) -> None:
    """Deleted permanently (404: when is unknown) some time after the sync that last read
    it, and Added again in CiviCRM after that sync: the deletion may be the older choice, so
    CiviCRM is left as it is, and the row is reported as forgotten. (An Added made before
    that sync read the member is older than the deletion: `test_deleted_member_dating`.)"""
    contact = _person(world, mc="subscribed", civi="Added")
    _sync(world)
    world.advance_clock(minutes=5)
    world.civi.set_group_status(contact, world.group_id, "Added")
    world.mc.forget_member(world.list_id, A)
    _sync(world, full=True)
    assert world.civi_status(contact) == "Added"
    assert world.mc_status(A) is None
    assert _reason(world, A) == "forgotten"


def test_a_permanent_deletion_after_the_last_civicrm_change_removes(world: World) -> None:
    """With no CiviCRM change since mcsync last saw the member, the deletion is the later
    event: the contact leaves the group."""
    contact = _person(world, mc="subscribed", civi="Added")
    _sync(world)
    world.mc.forget_member(world.list_id, A)
    _sync(world, full=True)
    assert world.civi_status(contact) == "Removed"

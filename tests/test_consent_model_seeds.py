"""Scenario tests for consent-invariant violations the model-based test found
(tests/test_consent_model.py), end to end against the simulators."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import World


def _completed(world: World, **kwargs: Any) -> None:
    [result] = world.sync(**kwargs)
    assert result.error is None, result.error
    assert result.outcome is not None and result.outcome.completed


@pytest.fixture
def world2(make_world: Any) -> World:
    world: World = make_world(interests=2)
    return world


def test_a_member_mcsync_creates_again_has_no_interest_choice(world2: World) -> None:
    """Found by the model (trash_after_interest_removal, seed 1 of 100 steps): a member
    changed address at Mailchimp, and the new address was deleted permanently before mcsync
    read it. Staff re-added the contact; mcsync's subscribe created a fresh member at the old
    address, with no interests. The next run took those blank interests (mcsync's own write)
    for the person's choice and removed the contact from the interest's group."""
    w = world2
    (i0, g0), _ = sorted(w.interest_ids.items())
    w.mc.seed_member(
        w.list_id,
        "rae@example.org",
        "subscribed",
        interests={i0: False},
        last_changed=w.ago(days=5),
        merge_fields={"FNAME": "", "LNAME": ""},
    )
    w.person("other@example.org", mc="subscribed", civi="Added")  # a full fetch reads someone
    contact = w.civi.add_contact("", "")
    w.civi.add_email(contact, "rae@example.org")
    w.civi.set_group_status(contact, w.group_id, "Added", when=w.ago(days=30))
    w.civi.set_group_status(contact, g0, "Added", when=w.ago(days=2))  # staff: in, newer
    _completed(w)
    member = w.mc.member(w.list_id, "rae@example.org")
    assert member is not None and member["interests"][i0]
    w.advance_clock(minutes=5)
    w.mc.edit_member(w.list_id, "rae@example.org", new_email="rae.new@example.org")
    w.advance_clock(minutes=1)
    w.mc.forget_member(w.list_id, "rae.new@example.org")
    w.advance_clock(minutes=5)
    _completed(w)
    _completed(w, full=True)
    # The deletion (a choice by the account owner) took the contact out; its groups stay.
    assert w.civi_status(contact) == "Removed"
    assert w.civi_status(contact, g0) == "Added"
    w.advance_clock(minutes=5)
    w.civi.set_group_status(contact, w.group_id, "Added")  # staff: re-added
    w.advance_clock(minutes=5)
    _completed(w)
    member = w.mc.member(w.list_id, "rae@example.org")
    assert member is not None and member["status"] == "subscribed"
    w.advance_clock(minutes=5)
    _completed(w)
    _completed(w, full=True)
    assert w.civi_status(contact, g0) == "Added"
    member = w.mc.member(w.list_id, "rae@example.org")
    assert member is not None and member["interests"][i0]


def test_a_flag_on_the_trashed_contact_that_had_the_member_outlives_its_address(
    world: World,
) -> None:
    """Found by the model (trash_after_interest_removal, seed 17 of 100 steps): staff changed
    a contact's address in CiviCRM while its member was unsubscribed (so the member kept the
    old one); the person signed up again, then staff flagged the contact do_not_email (later)
    and trashed it. The trashed contact no longer owns the member's address, so its flag was
    not found, and mcsync created a contact for the member and Added it over the flag."""
    contact = world.person("sam@example.org", mc="subscribed", civi="Added")
    assert contact is not None
    _completed(world)
    world.advance_clock(minutes=5)
    world.mc.set_member_status(world.list_id, "sam@example.org", "unsubscribed")
    world.advance_clock(minutes=1)
    _completed(world)
    assert world.civi_status(contact) == "Removed"
    [email] = world.civi.query("SELECT id FROM email WHERE contact_id = ?", (contact,))
    world.civi.update_email(email["id"], email="sam.new@example.org")
    world.advance_clock(minutes=5)
    world.mc.set_member_status(world.list_id, "sam@example.org", "subscribed")
    world.advance_clock(minutes=1)
    world.civi.update_contact(contact, do_not_email=True)  # staff: later than the sign-up
    world.advance_clock(minutes=5)
    _completed(world)
    assert world.civi_status(contact) == "Removed"
    world.advance_clock(minutes=5)
    world.civi.delete_contact(contact)
    world.advance_clock(minutes=5)
    _completed(world)
    _completed(world, full=True)
    added = [
        r["id"]
        for r in world.civi.query("SELECT id FROM contact WHERE is_deleted = 0")
        if world.civi_status(r["id"]) == "Added"
    ]
    others = [
        r["contact_id"]
        for r in world.civi.query("SELECT contact_id FROM email WHERE email = 'sam@example.org'")
    ]
    assert not set(added) & set(others), "a contact was Added over the trashed one's flag"

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
        w.list_id, "rae@example.org", "subscribed", interests={i0: False},
        last_changed=w.ago(days=5), merge_fields={"FNAME": "", "LNAME": ""},
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

"""`prefer` (issue 13, item 7): the side that wins the conflicts mcsync cannot order, end to
end; a choice known to be later wins whatever it says."""

from __future__ import annotations

import pytest
from conftest import World

from mcsync.errors import ConfigError


def tie(world: World) -> int:
    """Unsubscribed at Mailchimp and Added in CiviCRM in the same second."""
    moment = world.ago(days=2).replace(microsecond=0)
    contact = world.person(
        "ann@example.org", mc="unsubscribed", civi="Added", mc_at=moment, civi_at=moment
    )
    assert contact is not None
    return contact


def test_latest_gives_a_tie_to_civicrm(world: World) -> None:
    contact = tie(world)
    world.sync()
    assert world.mc_status("ann@example.org") == "pending"  # resubscribing asks the person
    assert world.civi_status(contact) == "Added"


def test_prefer_mailchimp_gives_a_tie_to_mailchimp(world: World) -> None:
    world.write_config('prefer = "mailchimp"')
    contact = tie(world)
    world.sync()
    assert world.mc_status("ann@example.org") == "unsubscribed"
    assert world.civi_status(contact) == "Removed"


@pytest.mark.parametrize("prefer", ["mailchimp", "civicrm"])
def test_a_later_choice_wins_whatever_is_preferred(world: World, prefer: str) -> None:
    world.write_config(f'prefer = "{prefer}"')
    later_at_mailchimp = world.person(
        "bo@example.org",
        mc="subscribed",
        civi="Removed",
        mc_at=world.ago(days=1),
        civi_at=world.ago(days=4),
    )
    later_in_civicrm = world.person(
        "cy@example.org",
        mc="subscribed",
        civi="Removed",
        mc_at=world.ago(days=4),
        civi_at=world.ago(days=1),
    )
    world.sync()
    assert later_at_mailchimp is not None and later_in_civicrm is not None
    assert world.civi_status(later_at_mailchimp) == "Added"
    assert world.mc_status("cy@example.org") == "unsubscribed"


def test_the_audience_overrides_sync_and_bad_values_are_refused(world: World) -> None:
    world.write_config('prefer = "civicrm"')
    world.config_path.write_text(world.config_path.read_text() + 'prefer = "mailchimp"\n')
    assert world.config.settings_for(world.config.audience[0]).prefer == "mailchimp"
    world.write_config('prefer = "newest"')
    with pytest.raises(ConfigError) as caught:
        _ = world.config
    assert "sync.prefer" in str(caught.value)


def test_never_in_the_group_is_no_choice_to_prefer(world: World) -> None:
    """Found by the model (prefer seed 7): a contact that was never in the group has no
    CiviCRM choice at all — not an undated one — so `prefer = "civicrm"` must not copy that
    absence over a sign-up at Mailchimp (DESIGN §4): the sign-up is the only choice there is."""
    world.write_config('prefer = "civicrm"')
    contact = world.person("dee@example.org", mc="subscribed", civi="none")
    assert contact is not None
    world.sync()
    assert world.mc_status("dee@example.org") == "subscribed"
    assert world.civi_status(contact) == "Added"


def test_mcsyncs_own_group_write_is_no_civicrm_choice(world: World) -> None:
    """Found by the model (prefer seed 10): mcsync adds a Mailchimp subscriber's contact to the
    group; a full run reads that status without a date (only history written by staff dates
    a status), so it looked like an undated CiviCRM change and `prefer = "civicrm"` copied it
    over the person's later unsubscribe at Mailchimp. The status mcsync wrote carries the
    Mailchimp choice; CiviCRM made none, so there is nothing to prefer."""
    world.write_config('prefer = "civicrm"')
    contact = world.person("eve@example.org", mc="subscribed", civi="none")
    assert contact is not None
    world.sync()
    assert world.civi_status(contact) == "Added"
    world.advance_clock(minutes=10)
    world.sync(since="ever")
    world.advance_clock(minutes=10)
    world.mc.set_member_status(world.list_id, "eve@example.org", "unsubscribed")
    world.advance_clock(minutes=10)
    world.sync()
    assert world.mc_status("eve@example.org") == "unsubscribed"
    assert world.civi_status(contact) == "Removed"

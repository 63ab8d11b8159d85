"""Names edited at Mailchimp reach the contact (issue 13 item 1; seed-behaviour §8.3), found
in the member data mcsync fetches, never in a loop with the one-way merge-field feed."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import World

from mcsync.config.load import load_config
from mcsync.errors import ConfigError
from mcsync.ops.preview import discard_plans
from mcsync.rules.names import NameEdit, names_to_apply

NAMES = {"FNAME": "first_name", "LNAME": "last_name"}


def configure(world: World, mapping: dict[str, str] | None = NAMES, *, audience: str = "") -> None:
    world.write_config()
    with world.config_path.open("a") as handle:
        handle.write(audience)
        if mapping:
            lines = "".join(f'{tag} = "{path}"\n' for tag, path in mapping.items())
            handle.write(f"[audience.merge_fields]\n{lines}")


def completed(world: World, **kwargs: Any) -> None:
    results = world.sync(**kwargs)
    assert results[0].error is None, results[0].error
    assert results[0].outcome and results[0].outcome.completed


def names_of(world: World, contact_id: int) -> tuple[str | None, str | None]:
    found = world.civi.query(
        "SELECT first_name, last_name FROM contact WHERE id = ?", (contact_id,)
    )
    return found[0]["first_name"], found[0]["last_name"]


def mc_names(world: World, email: str) -> tuple[str, str]:
    member = world.mc.member(world.list_id, email)
    assert member is not None
    return member["merge_fields"].get("FNAME", ""), member["merge_fields"].get("LNAME", "")


def name_saves(world: World) -> int:
    return sum(1 for r in world.civi.request_log if r[1] == "Contact.save")


def member_writes(world: World) -> int:
    return sum(
        1
        for r in world.mc.request_log
        if r[0] in ("PUT", "PATCH", "POST") and "/lists/" in r[1] and "/batches" not in r[1]
    )


def ann(world: World) -> int:
    contact = world.person(
        "ann@example.org", mc="subscribed", civi="Added", first="Ann", last="Lee"
    )
    assert contact is not None
    return contact


def test_a_name_edited_at_mailchimp_reaches_the_contact_and_stays(world: World) -> None:
    configure(world)
    contact = ann(world)
    completed(world)
    world.advance_clock(minutes=5)
    world.mc.edit_member(
        world.list_id, "ann@example.org", merge_fields={"FNAME": "Annie", "LNAME": "Lee-Smith"}
    )
    writes = member_writes(world)
    completed(world)
    assert names_of(world, contact) == ("Annie", "Lee-Smith")
    assert mc_names(world, "ann@example.org") == ("Annie", "Lee-Smith")
    # No loop: the name applied from Mailchimp is not pushed back, and the contact's own
    # modified_date (bumped by mcsync's write) brings nothing back either.
    saves = name_saves(world)
    for _ in range(2):
        world.advance_clock(minutes=5)
        completed(world)
    assert member_writes(world) == writes
    assert name_saves(world) == saves
    assert names_of(world, contact) == ("Annie", "Lee-Smith")


def test_the_feed_push_is_not_taken_for_an_edit_at_mailchimp(world: World) -> None:
    """mcsync's own FNAME push shows at Mailchimp as a changed name: it must not come back."""
    configure(world)
    contact = ann(world)
    completed(world)
    world.advance_clock(minutes=5)
    world.civi.update_contact(contact, first_name="Anna")
    completed(world)
    assert mc_names(world, "ann@example.org") == ("Anna", "Lee")
    saves, writes = name_saves(world), member_writes(world)
    for _ in range(2):
        world.advance_clock(minutes=5)
        completed(world)
    assert name_saves(world) == saves, "the feed's own push came back as a Mailchimp edit"
    assert member_writes(world) == writes
    assert names_of(world, contact) == ("Anna", "Lee")


def test_an_empty_name_at_mailchimp_never_wipes_one(world: World) -> None:
    configure(world)
    contact = ann(world)
    completed(world)
    world.advance_clock(minutes=5)
    world.mc.edit_member(world.list_id, "ann@example.org", merge_fields={"LNAME": ""})
    completed(world)
    assert names_of(world, contact) == ("Ann", "Lee")
    world.advance_clock(minutes=5)
    world.mc.edit_member(
        world.list_id, "ann@example.org", merge_fields={"FNAME": "Annie", "LNAME": ""}
    )
    completed(world)
    assert names_of(world, contact) == ("Annie", "Lee")


def test_a_newer_civicrm_edit_wins_and_the_feed_sends_it(world: World) -> None:
    configure(world)
    contact = ann(world)
    completed(world)
    world.advance_clock(minutes=5)
    world.mc.edit_member(world.list_id, "ann@example.org", merge_fields={"FNAME": "Annie"})
    world.advance_clock(minutes=5)
    world.civi.update_contact(contact, first_name="Anne")
    completed(world)
    assert names_of(world, contact) == ("Anne", "Lee")
    assert mc_names(world, "ann@example.org") == ("Anne", "Lee")
    saves = name_saves(world)
    world.advance_clock(minutes=5)
    completed(world)
    assert name_saves(world) == saves
    assert mc_names(world, "ann@example.org") == ("Anne", "Lee")


def test_a_newer_mailchimp_edit_wins_over_an_older_civicrm_edit(world: World) -> None:
    configure(world)
    contact = ann(world)
    completed(world)
    world.advance_clock(minutes=5)
    world.civi.update_contact(contact, first_name="Anne")
    world.advance_clock(minutes=5)
    world.mc.edit_member(world.list_id, "ann@example.org", merge_fields={"FNAME": "Annie"})
    completed(world)
    assert names_of(world, contact) == ("Annie", "Lee")
    assert mc_names(world, "ann@example.org") == ("Annie", "Lee")


def test_names_flow_without_a_merge_field_mapping(world: World) -> None:
    configure(world, None)
    contact = ann(world)
    completed(world)
    world.advance_clock(minutes=5)
    world.mc.edit_member(world.list_id, "ann@example.org", merge_fields={"FNAME": "Annie"})
    completed(world)
    assert names_of(world, contact) == ("Annie", "Lee")
    saves = name_saves(world)
    world.advance_clock(minutes=5)
    completed(world)
    assert name_saves(world) == saves


def test_first_sight_of_a_member_is_no_edit(world: World) -> None:
    """Names that differ when mcsync first meets a member are not edits: CiviCRM keeps its own
    (and the feed, when mapped, sends it)."""
    configure(world, None)
    contact = world.person("bo@example.org", mc="subscribed", civi="Added", first="Bo", last="Ng")
    assert contact is not None
    world.mc.edit_member(world.list_id, "bo@example.org", merge_fields={"FNAME": "Robert"})
    completed(world)
    assert names_of(world, contact) == ("Bo", "Ng")
    assert name_saves(world) == 0


def test_switched_off_per_audience(world: World) -> None:
    configure(world, audience="update_names_from_mailchimp = false\n")
    contact = ann(world)
    completed(world)
    world.advance_clock(minutes=5)
    world.mc.edit_member(world.list_id, "ann@example.org", merge_fields={"FNAME": "Annie"})
    completed(world)
    assert names_of(world, contact) == ("Ann", "Lee")
    assert name_saves(world) == 0


def test_a_dry_run_writes_no_names(world: World) -> None:
    configure(world)
    contact = ann(world)
    completed(world)
    world.advance_clock(minutes=5)
    world.mc.edit_member(world.list_id, "ann@example.org", merge_fields={"FNAME": "Annie"})
    discard_plans(world.config, world.sync(dry_run=True))  # as `--dry-run` does
    assert names_of(world, contact) == ("Ann", "Lee")
    assert name_saves(world) == 0
    completed(world)
    assert names_of(world, contact) == ("Annie", "Lee")


def test_the_setting_is_validated(world: World) -> None:
    world.write_config('update_names_from_mailchimp = "sometimes"')
    with pytest.raises(ConfigError) as caught:
        load_config(world.config_path)
    assert "sync.update_names_from_mailchimp: must be a valid boolean" in str(caught.value)
    configure(world, audience="update_names_from_mailchimp = 7\n")
    with pytest.raises(ConfigError) as caught:
        load_config(world.config_path)
    assert "audience[0].update_names_from_mailchimp: must be a valid boolean" in str(caught.value)


def test_rule_tie_keeps_civicrm(world: World) -> None:
    """Both sides edited in the same second: CiviCRM's name stays (a tie goes to CiviCRM)."""
    at = world.now
    edit = NameEdit(
        mailchimp={"FNAME": "Annie"},
        known={"FNAME": "Ann"},
        civicrm={"first_name": "Anne"},
        mailchimp_changed_at=at,
        civicrm_changed_at=at,
    )
    assert names_to_apply(edit, {"FNAME": "first_name"}) == {}

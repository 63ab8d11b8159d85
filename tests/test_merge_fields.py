"""Merge fields and tags, CiviCRM → Mailchimp (seed-behaviour §10), against the simulators."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from conftest import World

from mcsync.rules.member_state import CivicrmSide, MailchimpSide, MemberRow
from mcsync.rules.reconcile import decide_merge_fields
from mcsync.stages import feeds

MAPPING = {"FNAME": "first_name", "LNAME": "last_name", "CITY": "address_primary.city"}


def configure(world: World, mapping: dict[str, str] | None = None, sync: str = "") -> None:
    """The world's config with an [audience.merge_fields] table (and [sync] lines)."""
    world.write_config(sync)
    lines = "".join(f'{tag} = "{path}"\n' for tag, path in (mapping or MAPPING).items())
    with world.config_path.open("a") as handle:
        handle.write(f"[audience.merge_fields]\n{lines}")
    if "CITY" in (mapping or MAPPING):
        world.mc.add_merge_field(world.list_id, "CITY", "City")


def mc_puts(world: World, email_hash_part: str = "") -> list[tuple[str, str]]:
    return [
        r
        for r in world.mc.request_log
        if r[0] in ("PUT", "POST", "PATCH") and email_hash_part in r[1]
    ]


def merge_of(world: World, email: str) -> dict[str, Any]:
    member = world.mc.member(world.list_id, email)
    assert member is not None
    return dict(member["merge_fields"])


def completed(world: World, **kwargs: Any) -> None:
    results = world.sync(**kwargs)
    assert results[0].error is None, results[0].error
    assert results[0].outcome and results[0].outcome.completed


def test_pushed_once_then_only_on_change(world: World) -> None:
    configure(world)
    ann = world.person("ann@example.org", mc="subscribed", civi="Added", first="Ann", last="Lee")
    assert ann is not None
    world.civi.add_address(ann, city="Leeds")
    completed(world)
    assert merge_of(world, "ann@example.org")["CITY"] == "Leeds"
    assert merge_of(world, "ann@example.org")["FNAME"] == "Ann"
    assert len(mc_puts(world)) == 1
    completed(world)
    assert len(mc_puts(world)) == 1, "nothing changed, nothing written"
    # An address edit bumps Contact.modified_date: the incremental run notices it.
    world.civi.add_address(ann, city="York")
    completed(world)
    assert merge_of(world, "ann@example.org")["CITY"] == "York"
    assert len(mc_puts(world)) == 2
    completed(world)
    assert len(mc_puts(world)) == 2


def test_values_that_already_agree_are_not_rewritten(world: World) -> None:
    configure(world, {"FNAME": "first_name", "LNAME": "last_name"})
    world.person("bo@example.org", mc="subscribed", civi="Added", first="Bo", last="Ng")
    completed(world)
    assert world.writes() == []


def test_an_edit_at_mailchimp_is_not_overwritten_until_civicrm_changes(world: World) -> None:
    configure(world, {"FNAME": "first_name"})
    cy = world.person("cy@example.org", mc="subscribed", civi="Added", first="Cy")
    assert cy is not None
    completed(world)
    world.mc.edit_member(world.list_id, "cy@example.org", merge_fields={"FNAME": "Cyril"})
    completed(world)
    assert merge_of(world, "cy@example.org")["FNAME"] == "Cyril"
    assert world.civi_status(cy) == "Added"
    world.civi.update_contact(cy, first_name="Cyrus")
    completed(world)
    assert merge_of(world, "cy@example.org")["FNAME"] == "Cyrus"


def test_empty_civicrm_values_never_blank_mailchimp(world: World) -> None:
    configure(world)
    world.person("di@example.org", mc="subscribed", civi="Added", first="Di", last="")
    world.mc.edit_member(world.list_id, "di@example.org", merge_fields={"LNAME": "Smith"})
    completed(world)
    assert merge_of(world, "di@example.org")["LNAME"] == "Smith"


def test_blank_merge_fields_clears_them(world: World) -> None:
    configure(
        world, {"FNAME": "first_name", "LNAME": "last_name"}, sync="blank_merge_fields = true"
    )
    world.person("ed@example.org", mc="subscribed", civi="Added", first="Ed", last="")
    world.mc.edit_member(world.list_id, "ed@example.org", merge_fields={"LNAME": "Smith"})
    completed(world)
    assert merge_of(world, "ed@example.org")["LNAME"] == ""
    before = len(mc_puts(world))
    completed(world)
    assert len(mc_puts(world)) == before


def test_new_members_get_their_values_and_new_contacts_get_mailchimp_names(
    world: World,
) -> None:
    configure(world)
    fay = world.person("fay@example.org", civi="Added", first="Fay", last="Orr")
    assert fay is not None
    world.civi.add_address(fay, city="Hull")
    world.person("gus@example.org", mc="subscribed", first="Gus", last="Pim")
    completed(world)
    assert (
        merge_of(world, "fay@example.org").items()
        >= {"FNAME": "Fay", "LNAME": "Orr", "CITY": "Hull"}.items()
    )
    created = world.civi.query(
        "SELECT c.first_name, c.last_name FROM contact c JOIN email e ON e.contact_id = c.id "
        "WHERE e.email = 'gus@example.org'"
    )
    assert created == [{"first_name": "Gus", "last_name": "Pim"}]
    written = {
        r[0]
        for r in sqlite3.connect(world.tmp_path / "state.sqlite3").execute(
            "SELECT lower(email) FROM updates WHERE state = 'done'"
        )
    }
    assert written == {"fay@example.org"}, "only Fay is written; Gus's names already agree"


def test_unsubscribed_members_get_no_merge_fields(world: World) -> None:
    configure(world, {"FNAME": "first_name"})
    world.person("hal@example.org", mc="unsubscribed", civi="none", first="Old")
    contact = world.civi.query("SELECT contact_id FROM email WHERE email = 'hal@example.org'")[0][
        "contact_id"
    ]
    world.civi.update_contact(contact, first_name="New")
    completed(world)
    assert merge_of(world, "hal@example.org")["FNAME"] == "Old"
    assert mc_puts(world) == []


def test_mapped_paths_are_selected_in_one_bulk_call() -> None:
    class Civi:
        def __init__(self) -> None:
            self.calls: list[tuple[str, str, dict[str, Any]]] = []

        def call(self, entity: str, action: str, params: dict[str, Any]) -> list[dict[str, Any]]:
            self.calls.append((entity, action, params))
            return [
                {
                    "id": 7,
                    "Member_Info.Level": ["Gold", "Plus"],
                    "email_primary.email": None,
                    "birth_date": "1990-02-03",
                }
            ]

    class Ctx:
        civicrm = Civi()

    mapping = {"LEVEL": "Member_Info.Level", "EMAIL2": "email_primary.email", "BDAY": "birth_date"}
    values = feeds._mapped_values(Ctx(), [7, 8], mapping)  # type: ignore[arg-type]
    assert values == {7: {"LEVEL": "Gold, Plus", "EMAIL2": "", "BDAY": "1990-02-03"}}
    ((entity, action, params),) = Ctx.civicrm.calls
    assert (entity, action) == ("Contact", "get")
    assert params["select"] == ["id", "Member_Info.Level", "birth_date", "email_primary.email"]
    assert ["id", "IN", [7, 8]] in params["where"]


def test_decide_merge_fields_table() -> None:
    def row(civi: dict[str, Any], known: dict[str, Any], status: Any = "subscribed") -> MemberRow:
        mc = (
            MailchimpSide("x@example.org", status, merge_fields=known)
            if status
            else MailchimpSide()
        )
        return MemberRow(mailchimp=mc, civicrm=CivicrmSide(1, merge_fields=civi))

    assert decide_merge_fields(row({"A": "1"}, {"A": "1"})) == {}
    assert decide_merge_fields(row({"A": "2"}, {"A": "1"})) == {"A": "2"}
    assert decide_merge_fields(row({"A": ""}, {"A": "1"})) == {}
    assert decide_merge_fields(row({"A": ""}, {"A": "1"}), blank=True) == {"A": ""}
    assert decide_merge_fields(row({"A": ""}, {}), blank=True) == {}
    assert decide_merge_fields(row({"A": "1", "B": ""}, {}, None), blank=True) == {"A": "1"}


# -- tags ---------------------------------------------------------------------------------------
def member_tags(world: World, email: str) -> set[str]:
    member = world.mc.member(world.list_id, email)
    assert member is not None
    return {t["name"] for t in member["tags"]}


def test_civicrm_tags_become_prefixed_mailchimp_tags(world: World) -> None:
    configure(world, {"FNAME": "first_name"}, sync="sync_tags = true")
    ivy = world.person("ivy@example.org", mc="subscribed", civi="Added", first="Ivy")
    assert ivy is not None
    volunteer, donor = world.civi.add_tag("Volunteer"), world.civi.add_tag("Donor")
    world.civi.tag_contact(ivy, volunteer)
    world.civi.tag_contact(ivy, donor)
    completed(world)
    assert member_tags(world, "ivy@example.org") == {"CiviCRM: Volunteer", "CiviCRM: Donor"}
    tag_posts = [r for r in world.mc.request_log if r[1].endswith("/tags")]
    assert len(tag_posts) == 1
    # Mailchimp's own tag stays; only the change is pushed; tags leave no modified_date,
    # so a full run picks their removal up.
    _post_own_tag(world, "ivy@example.org", "VIP")
    world.civi.query("DELETE FROM entity_tag WHERE entity_id = ? AND tag_id = ?", (ivy, donor))
    completed(world, full=True)
    assert member_tags(world, "ivy@example.org") == {"CiviCRM: Volunteer", "VIP"}
    completed(world, full=True)
    assert len([r for r in world.mc.request_log if r[1].endswith("/tags")]) == 3


def _post_own_tag(world: World, email: str, name: str) -> None:
    from mcsync.api.mailchimp import member_hash
    from mcsync.sim.base import SimRequest

    body = json.dumps({"tags": [{"name": name, "status": "active"}]}).encode()
    world.mc.handle(
        SimRequest(
            "POST",
            f"/3.0/lists/{world.list_id}/members/{member_hash(email)}/tags",
            {},
            {
                "authorization": "Bearer " + "0123456789abcdef0123456789abcdef-us21",
                "content-type": "application/json",
                "host": "mailchimp.sim",
            },
            body,
        )
    )


def test_tag_changes_are_only_the_difference() -> None:
    assert feeds.tag_changes(["a", "b"], ["b", "c"]) == [
        {"name": "c", "status": "active"},
        {"name": "a", "status": "inactive"},
    ]
    assert feeds.tag_changes([], []) == []

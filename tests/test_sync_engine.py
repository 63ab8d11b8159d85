"""The sync engine end to end, in-process against the simulators (httpx transports)."""

from __future__ import annotations

from conftest import World


def test_first_sync_converges_both_sides(world: World) -> None:
    a = world.person("a@example.org", mc="subscribed", civi="Added")
    b = world.person(
        "b@example.org",
        mc="unsubscribed",
        civi="Added",
        mc_at=world.ago(days=1),
        civi_at=world.ago(days=10),
    )
    world.person("c@example.org", mc="subscribed", first="Cat", last="Case")
    world.person("d@example.org", civi="Added")
    results = world.sync()
    assert results[0].error is None, results[0].error
    assert results[0].outcome and results[0].outcome.completed
    assert world.civi_status(a) == "Added"
    assert world.civi_status(b) == "Removed"
    created = world.civi.query("SELECT contact_id FROM email WHERE email = ?", ("c@example.org",))
    assert len(created) == 1
    assert world.civi_status(created[0]["contact_id"]) == "Added"
    assert world.mc_status("d@example.org") == "subscribed"
    assert world.mc_status("b@example.org") == "unsubscribed"
    before = len(world.writes())
    second = world.sync()
    assert second[0].outcome and second[0].outcome.completed
    assert len(world.writes()) == before, world.writes()[before:]


def test_changes_on_both_sides_between_runs_propagate(world: World) -> None:
    a = world.person("a@example.org", mc="subscribed", civi="Added")
    b = world.person("b@example.org", mc="subscribed", civi="Added")
    world.person("c@example.org", mc="subscribed", civi="Added")
    world.sync()
    world.mc.set_member_status(world.list_id, "a@example.org", "unsubscribed")
    assert b is not None
    world.civi.set_group_status(b, world.group_id, "Removed")
    world.mc.seed_member(world.list_id, "new@example.org", "subscribed")
    results = world.sync()
    assert results[0].outcome and results[0].outcome.completed
    assert world.civi_status(a) == "Removed"
    assert world.mc_status("b@example.org") == "unsubscribed"
    new = world.civi.query("SELECT contact_id FROM email WHERE email = 'new@example.org'")
    assert len(new) == 1 and world.civi_status(new[0]["contact_id"]) == "Added"
    assert world.mc_status("c@example.org") == "subscribed"


def test_unmatched_members_who_are_not_subscribed_get_no_contact(world: World) -> None:
    for status in ("unsubscribed", "cleaned", "transactional"):
        world.person(f"{status}@example.org", mc=status)
    world.person("pending@example.org", mc="pending")
    world.sync()
    emails = {r["email"] for r in world.civi.query("SELECT email FROM email")}
    assert emails == {"pending@example.org"}


def test_matching_prefers_the_contact_already_in_the_group(world: World) -> None:
    first = world.person("shared@example.org", civi="none")
    second = world.person("shared@example.org", civi="Added", mc="subscribed")
    world.sync()
    assert first is not None and second is not None
    assert world.civi_status(first) is None
    assert world.civi_status(second) == "Added"
    contacts = world.civi.query("SELECT COUNT(*) AS n FROM contact")
    assert contacts[0]["n"] == 2


def test_deleted_contacts_are_never_matched(world: World) -> None:
    world.person("gone@example.org", civi="none", is_deleted=True)
    world.person("gone@example.org", mc="subscribed")
    world.sync()
    live = world.civi.query(
        "SELECT c.id FROM contact c JOIN email e ON e.contact_id = c.id "
        "WHERE e.email = 'gone@example.org' AND c.is_deleted = 0"
    )
    assert len(live) == 1
    assert world.civi_status(live[0]["id"]) == "Added"


def test_cleaned_member_email_goes_on_hold_and_is_never_resubscribed(world: World) -> None:
    contact = world.person(
        "bounce@example.org",
        mc="cleaned",
        civi="Added",
        mc_at=world.ago(days=10),
        civi_at=world.ago(days=1),
    )
    world.sync()
    assert world.mc_status("bounce@example.org") == "cleaned"
    hold = world.civi.query("SELECT on_hold FROM email WHERE email = 'bounce@example.org'")
    assert hold[0]["on_hold"] != 0
    assert contact is not None and world.civi_status(contact) == "Added"
    puts = [r for r in world.mc.request_log if r[0] in ("PUT", "POST") and "members" in r[1]]
    assert puts == []


def test_compliance_refusal_is_retried_once_as_pending(world: World) -> None:
    contact = world.person(
        "back@example.org",
        mc="unsubscribed",
        civi="Added",
        mc_at=world.ago(days=10),
        civi_at=world.ago(days=1),
    )
    world.sync()
    assert world.mc_status("back@example.org") == "pending"
    assert contact is not None and world.civi_status(contact) == "Added"
    before = len(world.writes())
    world.sync()
    assert len(world.writes()) == before


def test_several_mailchimp_emails_keep_the_contact_added(world: World) -> None:
    contact = world.person("one@example.org", mc="subscribed", civi="Added")
    assert contact is not None
    world.civi.add_email(contact, "two@example.org", is_primary=False)
    world.mc.seed_member(
        world.list_id, "two@example.org", "unsubscribed", last_changed=world.ago(hours=1)
    )
    world.sync()
    assert world.civi_status(contact) == "Added"
    assert world.mc_status("two@example.org") == "unsubscribed"
    assert world.mc_status("one@example.org") == "subscribed"


def test_privacy_flags_unsubscribe_at_mailchimp_but_keep_the_group(world: World) -> None:
    contact = world.person("quiet@example.org", mc="subscribed", civi="Added", do_not_email=True)
    world.person("gone@example.org", civi="Added", is_deceased=True)
    world.sync()
    assert world.mc_status("quiet@example.org") == "unsubscribed"
    assert world.mc_status("gone@example.org") is None
    assert contact is not None and world.civi_status(contact) == "Added"


def test_large_change_sets_go_as_batches_and_results_are_collected(make_world) -> None:
    world = make_world(batch_threshold=5)
    for n in range(12):
        world.person(f"civi{n}@example.org", civi="Added")
    results = world.sync()
    assert results[0].outcome and results[0].outcome.completed
    assert all(world.mc_status(f"civi{n}@example.org") == "subscribed" for n in range(12))
    assert [r for r in world.mc.request_log if r == ("POST", "/3.0/batches")]
    assert not [r for r in world.mc.request_log if r[0] == "PUT"]


def test_unknown_group_id_is_a_usage_error(world: World) -> None:
    import pytest

    from mcsync.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        world.sync(group_id=999999)
    assert str(world.group_id) in str(caught.value)


def test_a_tiny_budget_stops_and_resumes_to_the_same_result(make_world) -> None:
    from mcsync.budget import Budget

    world = make_world()
    for n in range(60):
        world.person(
            f"m{n}@example.org",
            mc="subscribed" if n % 3 else "unsubscribed",
            civi=None if n % 4 == 0 else "Added",
            mc_at=world.ago(days=2),
            civi_at=world.ago(days=3 if n % 2 else 1),
        )
    clock = iter(range(0, 10**6, 1))
    runs = 0
    while True:
        runs += 1
        budget = Budget(40, clock=lambda: float(next(clock)))
        results = world.sync(budget=budget, allow_mass_changes=True)
        if results[0].outcome and results[0].outcome.completed:
            break
        assert runs < 200, results[0].outcome
    assert runs > 1
    subscribed = {
        m["email_address"]
        for m in world.mc.members(world.list_id)
        if m["status"] in ("subscribed", "pending")
    }
    added = {
        r["email"]
        for r in world.civi.query(
            "SELECT e.email FROM group_contact g JOIN email e ON e.contact_id = g.contact_id "
            "WHERE g.group_id = ? AND g.status = 'Added'",
            (world.group_id,),
        )
    }
    assert subscribed == added


def test_an_email_changed_at_mailchimp_is_followed_not_duplicated(world: World) -> None:
    contact = world.person("old@example.org", mc="subscribed", civi="Added")
    world.sync()
    world.mc.edit_member(world.list_id, "old@example.org", new_email="new@example.org")
    world.sync()
    assert contact is not None
    assert world.civi.query("SELECT COUNT(*) AS n FROM contact")[0]["n"] == 1
    emails = {
        r["email"]
        for r in world.civi.query("SELECT email FROM email WHERE contact_id = ?", (contact,))
    }
    assert emails == {"old@example.org", "new@example.org"}
    assert world.civi_status(contact) == "Added"
    assert world.mc_status("new@example.org") == "subscribed"


def test_a_civicrm_change_made_during_the_run_is_not_overwritten(world: World) -> None:
    from mcsync.stages import push_civicrm

    contact = world.person(
        "racer@example.org",
        mc="subscribed",
        civi="Removed",
        mc_at=world.ago(hours=1),
        civi_at=world.ago(days=3),
    )
    assert contact is not None
    original = push_civicrm._drop_overtaken

    def person_acts_first(ctx, writes):  # type: ignore[no-untyped-def]
        world.civi.set_group_status(contact, world.group_id, "Removed")
        return original(ctx, writes)

    push_civicrm._drop_overtaken = person_acts_first
    try:
        world.sync()
    finally:
        push_civicrm._drop_overtaken = original
    assert world.civi_status(contact) == "Removed"
    world.sync()
    assert world.mc_status("racer@example.org") == "unsubscribed"
    assert world.civi_status(contact) == "Removed"


def test_a_full_run_notices_members_archived_at_mailchimp(world: World) -> None:
    keep = [world.person(f"k{n}@example.org", mc="subscribed", civi="Added") for n in range(20)]
    gone = world.person("gone@example.org", mc="subscribed", civi="Added")
    world.sync()
    world.mc.set_member_status(world.list_id, "gone@example.org", "archived")
    assert not any(
        m["email_address"] == "gone@example.org"
        for m in world.mc.members(world.list_id)
        if m["status"] != "archived"
    )
    world.sync(since="ever")
    assert gone is not None and world.civi_status(gone) == "Removed"
    assert all(world.civi_status(k) == "Added" for k in keep if k is not None)


def test_one_record_civicrm_refuses_fails_alone(world: World) -> None:
    from mcsync.sim.base import SimResponse

    good = world.person("good@example.org", mc="subscribed", civi="none")
    bad = world.person("bad@example.org", mc="subscribed", civi="none")
    assert good is not None and bad is not None
    real = world.civi.handle

    def refuse_bad(request):  # type: ignore[no-untyped-def]
        if request.path.endswith("/GroupContact/save") and f'"contact_id": {bad}' in (
            __import__("urllib.parse").parse.unquote_plus(request.body.decode())
        ):
            return SimResponse.json(500, {"error_code": 0, "error_message": "Permission denied"})
        return real(request)

    world.civi.handle = refuse_bad  # type: ignore[method-assign]
    results = world.sync()
    assert results[0].error is None, results[0].error
    assert world.civi_status(good) == "Added"
    assert world.civi_status(bad) is None
    from mcsync.store.database import Staging

    staging = Staging(world.tmp_path / "state.sqlite3")
    reasons = {r["mc_email"]: r["reason"] for r in staging.query("SELECT * FROM rows")}
    assert reasons["bad@example.org"] == "civicrm_error"


def test_compliance_retries_from_batch_results_go_out_in_the_same_run(make_world) -> None:
    world = make_world(batch_threshold=2)
    for n in range(3):
        world.person(
            f"back{n}@example.org",
            mc="unsubscribed",
            civi="Added",
            mc_at=world.ago(days=10),
            civi_at=world.ago(days=1),
        )
    results = world.sync()
    assert results[0].outcome and results[0].outcome.completed
    assert all(world.mc_status(f"back{n}@example.org") == "pending" for n in range(3))


def test_a_shared_address_held_by_another_contacts_member_is_not_fought_over(
    world: World,
) -> None:
    # The member is linked to the deceased contact (privacy: unsubscribed at Mailchimp); a
    # second contact in the group shares the address and must not re-subscribe it each run.
    first = world.person("shared@example.org", mc="subscribed", civi="Added", is_deceased=True)
    second = world.person("shared@example.org", civi="Added")
    assert first is not None and second is not None
    world.sync()
    assert world.mc_status("shared@example.org") == "unsubscribed"
    before = len(world.writes())
    world.sync()
    world.sync()
    assert world.mc_status("shared@example.org") == "unsubscribed"
    assert len(world.writes()) == before
    from mcsync.store.database import Staging

    reasons = {
        r["contact_id"]: r["reason"]
        for r in Staging(world.tmp_path / "state.sqlite3").query("SELECT * FROM rows")
    }
    assert reasons[second] == "member_exists"


def test_a_privacy_flagged_contact_counts_as_cannot_subscribe_not_to_add(world: World) -> None:
    from mcsync.ops.status import audience_status
    from mcsync.store.database import Staging

    world.person("quiet@example.org", mc="subscribed", civi="Added", is_opt_out=True)
    world.person("fine@example.org", mc="subscribed", civi="Added")
    world.sync()
    assert world.mc_status("quiet@example.org") == "unsubscribed"
    staging = Staging(world.tmp_path / "state.sqlite3")
    status = audience_status(staging, world.config.audience[0])
    assert status["counts"]["to_add"] == 0
    assert status["counts"]["cannot_subscribe"] == 1
    assert status["in_sync"] is True


def test_contacts_modified_in_civicrm_are_read_once_not_every_run(world: World) -> None:
    import json
    import time
    from urllib.parse import parse_qs

    contacts = [world.person(f"c{n}@example.org", mc="subscribed", civi="Added") for n in range(6)]
    world.sync()
    time.sleep(1.1)  # CiviCRM dates have whole seconds
    world.civi.update_contact(contacts[0], is_opt_out=True)
    for contact in contacts[1:5]:
        world.civi.update_contact(contact, last_name="Edited")
    time.sleep(1.1)
    world.civi.update_contact(contacts[5], last_name="Latest")  # the newest modified_date
    read: list[int] = []
    real = world.civi.handle

    def recording(request):  # type: ignore[no-untyped-def]
        if request.path.endswith("/Email/get"):
            params = json.loads(parse_qs(request.body.decode())["params"][0])
            for clause in params.get("where", []):
                if clause[0] == "contact_id" and clause[1] == "IN":
                    read.extend(clause[2])
        return real(request)

    world.civi.handle = recording  # type: ignore[method-assign]
    world.sync()
    assert world.mc_status("c0@example.org") == "unsubscribed"
    assert set(read) >= set(contacts)  # every modified contact was read once
    read.clear()
    world.sync()
    world.sync()
    # Only the contact at the newest modified_date may be read again (same-second safety).
    assert set(read) <= {contacts[5]}, read


def test_data_only_updates_never_name_a_status(make_world) -> None:  # type: ignore[no-untyped-def]
    world = make_world(interests=1)
    ((interest_id, interest_group),) = world.interest_ids.items()
    contact = world.person("waiting@example.org", mc="pending", civi="Added")
    world.sync()
    assert contact is not None
    world.civi.set_group_status(contact, interest_group, "Added")
    world.sync()
    member = world.mc.member(world.list_id, "waiting@example.org")
    assert member is not None and member["status"] == "pending"
    assert member["interests"][interest_id] is True
    puts = [r for r in world.mc.request_log if r[0] == "PUT"]
    assert len(puts) == 1  # the interest went as a PUT without a status, not a bulk "pending"

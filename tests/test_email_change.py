"""Email changes made in CiviCRM reach Mailchimp (issue 13 item 2; seed-behaviour §5.5): the
member's address is changed (PATCH of the old hash), keeping its status and history, instead of
leaving the old address subscribed; Mailchimp's refusals are listed with their reasons."""

from __future__ import annotations

from typing import Any

import httpx
from conftest import World

from mcsync.budget import Budget
from mcsync.ops.status import failures
from mcsync.sim.mailchimp import subscriber_hash
from mcsync.store.database import Staging

OLD, NEW = "ann@example.org", "ann.new@example.org"


def completed(world: World, **kwargs: Any) -> None:
    results = world.sync(**kwargs)
    assert results[0].error is None, results[0].error
    assert results[0].outcome and results[0].outcome.completed


def email_id(world: World, contact_id: int, address: str) -> int:
    found = world.civi.query(
        "SELECT id FROM email WHERE contact_id = ? AND email = ?", (contact_id, address)
    )
    return int(found[0]["id"])


def change_email_in_civicrm(world: World, contact_id: int, old: str, new: str) -> None:
    world.advance_clock(minutes=5)
    world.civi.update_email(email_id(world, contact_id, old), email=new)


def patches(world: World) -> list[tuple[str, str]]:
    return [r for r in world.mc.request_log if r[0] == "PATCH"]


def member_writes(world: World) -> list[tuple[str, str]]:
    return [
        r
        for r in world.mc.request_log
        if r[0] in ("PUT", "PATCH", "POST") and "/lists/" in r[1] and "/batches" not in r[1]
    ]


def staged(world: World) -> list[tuple[Any, ...]]:
    staging = Staging(world.config.state_db)
    try:
        return [
            tuple(r)
            for r in staging.query(
                "SELECT mc_hash, mc_email, mc_status, contact_id, sync_status, reason "
                "FROM rows WHERE list_id = ? ORDER BY id",
                (world.list_id,),
            )
        ]
    finally:
        staging.close()


def failing(world: World) -> list[tuple[str, str | None]]:
    staging = Staging(world.config.state_db)
    try:
        return [(f["reason"], f["email"]) for f in failures(staging, world.config.audience[0])]
    finally:
        staging.close()


def subscribed_ann(world: World) -> int:
    contact = world.person(OLD, mc="subscribed", civi="Added", first="Ann", last="Lee")
    assert contact is not None
    completed(world)
    return contact


def test_the_member_follows_the_contacts_new_email(world: World) -> None:
    contact = subscribed_ann(world)
    unique_id = world.mc.member(world.list_id, OLD)["unique_email_id"]  # type: ignore[index]
    change_email_in_civicrm(world, contact, OLD, NEW)
    completed(world)
    assert world.mc.member(world.list_id, OLD) is None, "the old address stays subscribed"
    member = world.mc.member(world.list_id, NEW)
    assert member is not None
    assert member["status"] == "subscribed"
    assert member["unique_email_id"] == unique_id  # the same member, its history kept
    assert len(patches(world)) == 1
    assert [r for r in member_writes(world) if r[0] != "PATCH"] == []
    assert staged(world) == [(subscriber_hash(NEW), NEW, "subscribed", contact, "ok", None)]
    assert world.civi_status(contact) == "Added"
    # The next runs see the member where it is: no vanished member, no new one, no writes.
    writes = len(member_writes(world))
    for _ in range(2):
        world.advance_clock(minutes=5)
        completed(world)
    completed(world, full=True)
    assert len(member_writes(world)) == writes
    assert staged(world) == [(subscriber_hash(NEW), NEW, "subscribed", contact, "ok", None)]
    assert world.civi_status(contact) == "Added"


def test_a_new_bulk_mail_email_is_followed(world: World) -> None:
    """The chosen email is the bulk-mail one, else the primary (seed §4.4)."""
    contact = subscribed_ann(world)
    world.advance_clock(minutes=5)
    world.civi.add_email(contact, NEW, is_primary=False, is_bulkmail=True)
    completed(world)
    assert world.mc.member(world.list_id, OLD) is None
    assert world.mc_status(NEW) == "subscribed"


def test_an_email_change_never_changes_a_status(world: World) -> None:
    """Unsubscribed members keep their address and status; the contact stays out."""
    contact = world.person(OLD, mc="unsubscribed", civi="Removed", first="Ann")
    assert contact is not None
    completed(world)
    change_email_in_civicrm(world, contact, OLD, NEW)
    completed(world)
    assert patches(world) == []
    assert world.mc_status(OLD) == "unsubscribed"
    assert world.mc.member(world.list_id, NEW) is None
    assert world.civi_status(contact) == "Removed"


def test_new_address_already_a_member_is_refused_with_its_reason(world: World) -> None:
    contact = subscribed_ann(world)
    world.mc.seed_member(world.list_id, NEW, "unsubscribed", last_changed=world.ago(days=9))
    change_email_in_civicrm(world, contact, OLD, NEW)
    completed(world)
    assert world.mc_status(OLD) == "subscribed"
    assert world.mc_status(NEW) == "unsubscribed"
    assert ("new_email_in_use", OLD) in failing(world)
    assert world.civi_status(contact) == "Added"
    asked = len(patches(world))
    assert asked == 1
    world.advance_clock(minutes=5)
    completed(world)
    world.advance_clock(minutes=5)
    world.civi.update_contact(contact, last_name="Lee-Smith")  # decided again: still refused
    completed(world)
    assert len(patches(world)) == asked, "a refused change is not asked again"
    assert ("new_email_in_use", OLD) in failing(world)


def test_forgotten_new_address_is_refused_with_its_reason(world: World) -> None:
    contact = subscribed_ann(world)
    world.mc.seed_member(world.list_id, NEW, "unsubscribed", last_changed=world.ago(days=9))
    world.mc.forget_member(world.list_id, NEW)
    change_email_in_civicrm(world, contact, OLD, NEW)
    completed(world)
    assert world.mc_status(OLD) == "subscribed"
    assert failing(world) == [("new_email_forgotten", OLD)]
    assert world.civi_status(contact) == "Added"


class PauseAtStage(Budget):
    """A budget that runs out when the run reaches a stage (untimed)."""

    def __init__(self, world: World, stage: str):
        super().__init__(None)
        self.world, self.stage = world, stage

    def check(self) -> None:
        staging = Staging(self.world.config.state_db)
        try:
            stage = staging.state(self.world.list_id).get("stage")
        finally:
            staging.close()
        if stage == self.stage:
            from mcsync.errors import BudgetExhausted

            raise BudgetExhausted(f"paused at {stage} for the test")
        super().check()


def test_member_no_longer_subscribed_is_refused_with_its_reason(world: World) -> None:
    """Staged as subscribed, unsubscribed at Mailchimp since the run read it: Mailchimp
    refuses ("You can only update email addresses for members with a status of
    'subscribed'"), the row says so, and the next run syncs the unsubscribe."""
    contact = subscribed_ann(world)
    change_email_in_civicrm(world, contact, OLD, NEW)
    paused = world.sync(budget=PauseAtStage(world, "change_member_emails"))[0]
    assert paused.outcome is not None and paused.outcome.stage == "change_member_emails"
    world.advance_clock(minutes=5)
    world.mc.set_member_status(world.list_id, OLD, "unsubscribed")
    completed(world)
    assert len(patches(world)) == 1
    assert failing(world) == [("email_change_not_subscribed", OLD)]
    assert world.mc_status(OLD) == "unsubscribed"
    assert world.mc.member(world.list_id, NEW) is None
    world.advance_clock(minutes=5)
    completed(world)
    assert world.civi_status(contact) == "Removed"  # the later choice, synced as usual
    assert failing(world) == []
    assert len(patches(world)) == 1


class KillAfterPatch(httpx.BaseTransport):
    """The process dies after Mailchimp applied the PATCH, before its answer arrives."""

    def __init__(self, inner: httpx.BaseTransport):
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "PATCH":
            raise KeyboardInterrupt("killed after the PATCH")
        return response


def expire_lease(world: World) -> None:
    staging = Staging(world.config.state_db)
    try:
        staging.execute("UPDATE audience_state SET lease_owner = NULL, lease_expires = 0")
    finally:
        staging.close()


def test_a_kill_between_the_patch_and_staging_neither_repeats_nor_loses(world: World) -> None:
    contact = subscribed_ann(world)
    change_email_in_civicrm(world, contact, OLD, NEW)
    inner = world.transport
    world.transport = KillAfterPatch(inner)  # type: ignore[assignment]
    try:
        world.sync()
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the run was not killed")
    world.transport = inner
    expire_lease(world)
    assert world.mc_status(NEW) == "subscribed"
    assert staged(world)[0][:2] == (subscriber_hash(OLD), OLD)  # staging never heard
    completed(world)
    assert world.mc.member(world.list_id, OLD) is None
    assert world.mc_status(NEW) == "subscribed"
    assert staged(world) == [(subscriber_hash(NEW), NEW, "subscribed", contact, "ok", None)]
    assert len({m["email_address"] for m in world.mc.members(world.list_id)}) == 1
    writes = len(member_writes(world))
    world.advance_clock(minutes=5)
    completed(world)
    assert len(member_writes(world)) == writes
    assert world.civi_status(contact) == "Added"


class SpentAfterFirstPatch(Budget):
    """The run's time runs out right after the first PATCH was answered."""

    def __init__(self, world: World):
        super().__init__(3600)
        self.world = world

    def remaining(self) -> float:
        if patches(self.world):
            return 0.0
        return super().remaining()


def test_the_budget_running_out_between_patches_keeps_what_was_done(world: World) -> None:
    people = {}
    for name in ("ann", "bob"):
        contact = world.person(f"{name}@example.org", mc="subscribed", civi="Added")
        assert contact is not None
        people[name] = contact
    completed(world)
    for name, contact in people.items():
        change_email_in_civicrm(world, contact, f"{name}@example.org", f"{name}.new@example.org")
    stopped = world.sync(budget=SpentAfterFirstPatch(world))[0]
    assert stopped.outcome is not None and not stopped.outcome.completed
    assert len(patches(world)) == 1
    moved = [r for r in staged(world) if r[1].endswith(".new@example.org")]
    assert len(moved) == 1, "the first change was kept when the budget ran out"
    completed(world)
    assert len(patches(world)) == 2
    assert sorted(r[1] for r in staged(world)) == ["ann.new@example.org", "bob.new@example.org"]
    assert world.mc_status("ann@example.org") is None
    assert world.mc_status("bob@example.org") is None


def test_resync_now_moves_the_member_at_once(world: World, monkeypatch: Any) -> None:
    """`mcsync resync EMAIL --now` makes the person's address change too."""
    import functools

    from mcsync.ops import resync as resync_module
    from mcsync.ops.lookup import Person
    from mcsync.runner import engine

    contact = subscribed_ann(world)
    change_email_in_civicrm(world, contact, OLD, NEW)
    monkeypatch.setattr(
        resync_module,
        "connections",
        functools.partial(engine.connections, transport=world.transport),
    )
    results = resync_module.resync(world.config, Person(None, contact), now=True)
    assert [r.outcome for r in results] == ["synced"]
    assert world.mc.member(world.list_id, OLD) is None
    assert world.mc_status(NEW) == "subscribed"
    assert staged(world) == [(subscriber_hash(NEW), NEW, "subscribed", contact, "ok", None)]


def test_the_simulator_answers_address_changes_as_mailchimp(world: World) -> None:
    """PATCH with a new email_address (mailchimp-api.md): the member moves to md5(new), keeps
    its unique_email_id and status; refusals come as Mailchimp gives them."""
    from conftest import MC_KEY, MC_URL

    from mcsync.api.mailchimp import MailchimpClient
    from mcsync.errors import ApiError, NotFoundError

    list_id = world.list_id
    world.mc.seed_member(list_id, OLD, "subscribed", last_changed=world.ago(days=3))
    world.mc.seed_member(list_id, "taken@example.org", "unsubscribed")
    world.mc.seed_member(list_id, "gone@example.org", "unsubscribed")
    world.mc.forget_member(list_id, "gone@example.org")
    world.mc.seed_member(list_id, "left@example.org", "unsubscribed")
    client = MailchimpClient(
        account_name="main",
        api_key=MC_KEY,
        base_url=MC_URL,
        budget=Budget(None),
        transport=world.transport,
        max_retries=0,
    )
    before = world.mc.member(list_id, OLD)
    assert before is not None
    for new, title in (("taken@example.org", "Member Exists"),
                       ("gone@example.org", "Forgotten Email Not Subscribed")):  # fmt: skip
        try:
            client.change_member_email(list_id, OLD, new)
        except ApiError as exc:
            assert (exc.status, exc.title) == (400, title)
        else:
            raise AssertionError(f"{new}: accepted")
    try:
        client.change_member_email(list_id, "left@example.org", "left.new@example.org")
    except ApiError as exc:
        assert exc.status == 400 and "status of 'subscribed'" in (exc.detail or "")
    else:
        raise AssertionError("an unsubscribed member's address was changed")
    world.advance_clock(minutes=1)
    moved = client.change_member_email(list_id, OLD, NEW)
    assert moved["id"] == subscriber_hash(NEW) and moved["email_address"] == NEW
    assert moved["unique_email_id"] == before["unique_email_id"]
    assert moved["status"] == "subscribed" and moved["last_changed"] > before["last_changed"]
    try:
        client.change_member_email(list_id, OLD, NEW)  # a repeat: the old hash is gone
    except NotFoundError:
        pass
    else:
        raise AssertionError("the old hash still answers")
    client.close()


def test_an_address_changed_at_mailchimp_follows_a_member_mcsync_created(world: World) -> None:
    """Found by the model (email_changes seed 5): a member mcsync itself subscribed from
    CiviCRM was staged before Mailchimp had given it a unique_email_id, and reading it later
    never stored one; when the person then changed their address at Mailchimp, the member
    was taken for a new person (a second contact created) instead of followed."""
    contact = world.person(OLD, civi="Added", first="Ann", last="Lee")
    assert contact is not None
    completed(world)
    assert world.mc_status(OLD) == "subscribed"
    world.advance_clock(minutes=5)
    completed(world, since="ever")  # reads the member mcsync created
    world.advance_clock(minutes=5)
    world.mc.edit_member(world.list_id, OLD, new_email=NEW)
    completed(world)
    emails = world.civi.query("SELECT contact_id, email FROM email ORDER BY id")
    assert [(e["contact_id"], e["email"]) for e in emails] == [(contact, OLD), (contact, NEW)]
    assert [(r[1], r[3]) for r in staged(world)] == [(NEW, contact)]


def test_a_member_mcsync_created_is_followed_without_being_read_again(world: World) -> None:
    """Found by the model (seed 124): the unique_email_id Mailchimp gave the member mcsync
    created was not kept from the write's answer, so when the person changed address at
    Mailchimp and unsubscribed before any run read the member, the moved member was staged
    as a stranger and the contact stayed Added. It is followed, and the unsubscribe reaches
    the contact."""
    contact = world.person(OLD, civi="Added", first="Ann", last="Lee")
    assert contact is not None
    completed(world)
    assert world.mc_status(OLD) == "subscribed"
    world.advance_clock(minutes=5)
    world.mc.edit_member(world.list_id, OLD, new_email=NEW)
    world.mc.set_member_status(world.list_id, NEW, "unsubscribed")
    completed(world, allow_mass_changes=True)
    assert [(r[1], r[3]) for r in staged(world)] == [(NEW, contact)]
    assert world.civi_status(contact) == "Removed"

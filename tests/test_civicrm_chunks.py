"""Requests per changed row (issue 12: an incremental run's requests follow changed rows ÷ the
size of a request): CiviCRM writes go `[civicrm] write_chunk` records a save, each chunk of
group changes checked against newer history just before it is written; contact-id reads
(emails, history) go `IN_CHUNK` ids a request; one overtaken check covers several Mailchimp
batches, made before any of them is sent. Every check the consent invariant needs (DESIGN
§4) is still made before the writes it protects: only the chunking changed."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from conftest import World
from test_paging_churn import _completed

from mcsync.config.models import DEFAULT_CIVICRM_WRITE_CHUNK
from mcsync.stages import batches
from mcsync.stages.fetch_civicrm import IN_CHUNK


@dataclass
class Call:
    """One request as a server saw it: CiviCRM's entity.action and params, or Mailchimp's
    method and path."""

    api: str
    name: str
    params: dict[str, Any]

    def where(self, field: str, op: str = "IN") -> Any:
        """The value of the first ``[field, op, value]`` condition, None if there is none."""
        for condition in self.params.get("where", []):
            if condition[:2] == [field, op]:
                return condition[2]
        return None


class Recorder(httpx.BaseTransport):
    """Both simulators behind the world's transport, every request recorded in order;
    ``after(call)`` runs once a request has been answered (a person acting mid-run)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.calls: list[Call] = []
        self.after: Callable[[Call], None] = lambda call: None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "civicrm.sim":
            entity, action = request.url.path.rstrip("/").split("/")[-2:]
            form = parse_qs(request.read().decode())
            params = json.loads(form["params"][0]) if "params" in form else {}
            call = Call("civicrm", f"{entity}.{action}", params)
        else:
            call = Call("mailchimp", f"{request.method} {request.url.path}", {})
        response = self.inner.handle_request(request)
        self.calls.append(call)
        self.after(call)
        return response

    def civicrm(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.name == name]


def _record(world: World) -> Recorder:
    recorder = Recorder(world.transport)
    world.transport = recorder  # type: ignore[assignment]
    return recorder


def _in_sync(world: World, count: int) -> list[int]:
    """``count`` people subscribed at Mailchimp and Added in CiviCRM for days, one run."""
    contacts = [
        world.person(f"p{n}@example.org", mc="subscribed", civi="Added") for n in range(count)
    ]
    _completed(world.sync())
    world.advance_clock(minutes=10)
    return [c for c in contacts if c is not None]


def _overtaken_checks(calls: list[Call]) -> list[Call]:
    """SubscriptionHistory reads after the run's bookmark for given contacts: the overtaken
    checks before writes (the history stage reads after the bookmark for every contact)."""
    return [
        c
        for c in calls
        if c.name == "SubscriptionHistory.get"
        and c.where("id", ">") is not None
        and c.where("contact_id") is not None
    ]


def _saved_contacts(call: Call) -> set[int]:
    return {int(r["contact_id"]) for r in call.params["records"]}


# -- group writes: write_chunk records a save, each chunk checked just before ------------------


def test_group_writes_go_write_chunk_a_save_each_checked_just_before_it(
    make_world: Callable[..., World],
) -> None:
    """Seven unsubscribes at Mailchimp, `write_chunk = 3`: three GroupContact.save calls
    (3, 3, 1 records), each the request straight after its own history check, which asks
    about exactly the contacts it writes. A staff member re-adds a contact of a later chunk
    while the first chunk is written: that chunk's own check sees it and its removal is not
    made (one check for the whole set, made up front, would have missed it)."""
    world = make_world()
    contacts = _in_sync(world, 7)
    world.write_config("max_removal_share = 1.0", civicrm="write_chunk = 3")
    for n in range(7):
        world.mc.set_member_status(world.list_id, f"p{n}@example.org", "unsubscribed")
    recorder = _record(world)
    readded: list[int] = []

    def staff_readd(call: Call) -> None:
        if call.name == "GroupContact.save" and not readded:
            later = sorted(set(contacts) - _saved_contacts(call))[-1]
            world.civi.set_group_status(later, world.group_id, "Added")
            readded.append(later)

    recorder.after = staff_readd
    _completed(world.sync())

    civicrm = [c for c in recorder.calls if c.api == "civicrm"]
    saves = [i for i, c in enumerate(civicrm) if c.name == "GroupContact.save"]
    checks = [civicrm[i - 1] for i in saves]
    assert all(check in _overtaken_checks(civicrm) for check in checks), checks
    # Each check asks about its chunk of three (the last, one); its save writes that chunk
    # but the re-added contact, whose removal its check found overtaken.
    assert [len(check.where("contact_id")) for check in checks] == [3, 3, 1]
    assert [_saved_contacts(civicrm[i]) for i in saves] == [
        set(check.where("contact_id")) - set(readded) for check in checks
    ]
    assert world.civi_status(readded[0]) == "Added"
    assert [world.civi_status(c) for c in contacts if c != readded[0]] == ["Removed"] * 6


def test_a_large_set_of_group_writes_goes_in_one_save_by_default(
    make_world: Callable[..., World],
) -> None:
    """600 unsubscribes at Mailchimp (more than the 500 a save used to carry): with the
    default write_chunk one history check and one GroupContact.save, and the change dates of
    the 600 disagreeing memberships are read in one SubscriptionHistory request."""
    assert DEFAULT_CIVICRM_WRITE_CHUNK >= 600 and IN_CHUNK >= 600
    world = make_world()
    contacts = _in_sync(world, 600)
    world.write_config("max_removal_share = 1.0")
    for n in range(600):
        world.mc.set_member_status(world.list_id, f"p{n}@example.org", "unsubscribed")
    recorder = _record(world)
    _completed(world.sync())

    saves = recorder.civicrm("GroupContact.save")
    assert [len(s.params["records"]) for s in saves] == [600]
    assert len(_overtaken_checks(recorder.calls)) == 1
    history_reads = [
        c
        for c in recorder.civicrm("SubscriptionHistory.get")
        if c.where("contact_id") is not None and c.where("id", ">") is None
    ]
    assert len(history_reads) == math.ceil(600 / IN_CHUNK) == 1
    assert {world.civi_status(c) for c in contacts} == {"Removed"}


# -- contact creation: write_chunk contacts a save, their emails read back after each ----------


def test_contacts_are_created_write_chunk_a_save_each_read_back_after_it(
    make_world: Callable[..., World],
) -> None:
    """Five new subscribers at Mailchimp, `write_chunk = 2`: Contact.save with 2, 2 and 1
    contacts, each followed by one Email.get of exactly the contacts it created (the read
    that lets the rows point at them; a run stopped before it matches them by email)."""
    world = make_world()
    world.write_config(civicrm="write_chunk = 2")
    for n in range(5):
        world.person(f"new{n}@example.org", mc="subscribed")
    recorder = _record(world)
    _completed(world.sync())

    civicrm = [c for c in recorder.calls if c.api == "civicrm"]
    saves = [i for i, c in enumerate(civicrm) if c.name == "Contact.save"]
    assert [len(civicrm[i].params["records"]) for i in saves] == [2, 2, 1]
    created = world.civi.query("SELECT id FROM contact WHERE source = 'mcsync' ORDER BY id")
    ids = [int(r["id"]) for r in created]
    assert [civicrm[i + 1].name for i in saves] == ["Email.get"] * 3
    assert [civicrm[i + 1].where("contact_id") for i in saves] == [ids[0:2], ids[2:4], ids[4:]]
    assert {world.civi_status(c) for c in ids} == {"Added"}


def test_many_contacts_are_created_in_one_save_and_read_back_in_one_request(
    make_world: Callable[..., World],
) -> None:
    """600 new subscribers at Mailchimp: one Contact.save and one Email.get of the created
    contacts by default (it was two of each, 500 a request)."""
    world = make_world()
    for n in range(600):
        world.person(f"new{n}@example.org", mc="subscribed")
    recorder = _record(world)
    _completed(world.sync())

    saves = recorder.civicrm("Contact.save")
    assert [len(s.params["records"]) for s in saves] == [600]
    read_back = [c for c in recorder.civicrm("Email.get") if c.where("contact_id") is not None]
    assert len(read_back) == 1 and len(read_back[0].where("contact_id")) == 600


# -- reads by contact id: IN_CHUNK ids a request ----------------------------------------------


def test_the_emails_of_many_modified_contacts_are_read_in_one_request(
    make_world: Callable[..., World],
) -> None:
    """Staff edit 600 contacts' names after a sync: the next run reads their emails and flags
    with ceil(600 / IN_CHUNK) = 1 Email.get by contact id (it was 500 ids a request)."""
    world = make_world()
    contacts = _in_sync(world, 600)
    for contact in contacts:
        world.civi.update_contact(contact, first_name="Edited")
    recorder = _record(world)
    _completed(world.sync())

    by_contact = [c for c in recorder.civicrm("Email.get") if c.where("contact_id") is not None]
    assert len(by_contact) == math.ceil(600 / IN_CHUNK) == 1
    assert set(by_contact[0].where("contact_id")) == set(contacts)


# -- Mailchimp batches: one overtaken check for several batches, before any is sent ---------


@pytest.mark.parametrize(("removed", "checks"), [(7, 1), (11, 2)])
def test_one_overtaken_check_covers_several_batches_sent_after_it(
    make_world: Callable[..., World],
    monkeypatch: pytest.MonkeyPatch,
    removed: int,
    checks: int,
) -> None:
    """Staff remove ``removed`` contacts from the group; two operations a batch: the
    Mailchimp unsubscribes go in ceil(removed / 2) batches, checked against newer changes
    ceil(removed / (2 × BATCHES_PER_CHECK)) times (it was once per batch), each check made
    before any batch it covers is posted and asking about the contacts of those batches."""
    monkeypatch.setattr(batches, "BATCH_SIZE", 2)
    world = make_world(batch_threshold=2)
    contacts = _in_sync(world, removed + 1)[:removed]  # one stays: the group is not emptied
    world.write_config("max_removal_share = 1.0")
    for contact in contacts:
        world.civi.set_group_status(contact, world.group_id, "Removed")
    recorder = _record(world)
    _completed(world.sync())

    def is_post(call: Call) -> bool:
        return call.name.startswith("POST") and call.name.rstrip("/").endswith("/batches")

    steps = [c for c in recorder.calls if is_post(c) or c in _overtaken_checks(recorder.calls)]
    per_check = 2 * batches.BATCHES_PER_CHECK
    expected: list[str] = []
    for start in range(0, removed, per_check):
        covered = min(per_check, removed - start)
        expected += ["check"] + ["post"] * math.ceil(covered / 2)
    assert ["post" if is_post(c) else "check" for c in steps] == expected
    assert expected.count("check") == checks
    asked = [c.where("contact_id") for c in steps if not is_post(c)]
    assert all(len(ids) <= per_check for ids in asked)
    assert sorted(i for ids in asked for i in ids) == sorted(contacts)
    assert {world.mc_status(f"p{n}@example.org") for n in range(removed)} == {"unsubscribed"}

"""Large direct member reads go through Mailchimp's batch operations (issue 12): the stages
that must read members one by one (a CiviCRM-only contact's address before it is subscribed,
a staged member a full fetch did not return) submit GET operations in a batch when there are
at least ``sync.read_batch_threshold`` of them, and collect the batch themselves.

The consent rules stay exactly those of the direct reads (DESIGN §4): a member the paging
skipped is found and reconciled, an archived member is not new, a 404 is a member deleted
permanently (or never there), and a member whose operation failed inside the batch is neither
gone nor new: it is read again directly, and nothing is decided from it until that read
succeeds. A batch submitted and not yet collected is collected by the run that resumes,
never submitted again, and its results are applied to exactly the members it read.

The simulator runs GET operations inside a batch through the same routes as direct requests
(``MailchimpSim._post_batch``): a 404 is a result with status 404, ``fields`` is honoured, and
``fail_batch_operations`` makes one operation answer 500 as a real batch now and then does.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from datetime import timedelta
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from conftest import World

from mcsync.api.mailchimp import MailchimpClient, member_read_operations
from mcsync.budget import Budget
from mcsync.cli import main
from mcsync.ops import abort
from mcsync.runner import engine
from mcsync.sim.mailchimp import subscriber_hash
from mcsync.stages import fetch_mailchimp
from mcsync.stages.batches import members_from_read_results

PAGE_SIZE = 5
THRESHOLD = 5


def _email(n: int) -> str:
    return f"m{n:03d}@example.org"


def _new(n: int) -> str:
    return f"new{n:02d}@example.org"


ARCHIVED = "archived@example.org"


def _contact(world: World, email: str, when: Any) -> int:
    contact = world.civi.add_contact("P", email.split("@")[0])
    world.civi.add_email(contact, email)
    world.civi.set_group_status(contact, world.group_id, "Added", when=when)
    return contact


def _first_sync_world(make_world: Callable[..., World], members: int = 30) -> World:
    """A first sync that must read CiviCRM-only contacts at Mailchimp, many enough to batch.

    ``members`` people subscribed at Mailchimp and Added in CiviCRM, member n changed n
    minutes before member 0, paged 5 at a time, one page in flight. After the second page,
    members 0-2 (already read) are archived: every later member moves up three places, so
    members 10-12 are never read by the fetch. They unsubscribed at Mailchimp after CiviCRM
    added them. ARCHIVED was archived a day ago, after CiviCRM added it: not in the member
    list at all. And 8 contacts Added in CiviCRM are not at Mailchimp (a 404 each). So 12
    CiviCRM-only contacts, read in one batch."""
    world = make_world()
    world.write_config(
        f"page_size_mailchimp = {PAGE_SIZE}\nmax_connections = 1\n"
        f"read_batch_threshold = {THRESHOLD}\nmax_removal_share = 1.0\n"
    )
    newest = world.ago(days=3)
    world.mc.seed_members(
        world.list_id,
        [
            (
                _email(n),
                "unsubscribed" if n in (10, 11, 12) else "subscribed",
                {},
                {},
                newest - timedelta(minutes=n),
            )
            for n in range(members)
        ],
    )
    world.contacts = {n: _contact(world, _email(n), world.ago(days=5)) for n in range(members)}  # type: ignore[attr-defined]
    world.mc.seed_member(world.list_id, ARCHIVED, "archived", last_changed=world.ago(days=1))
    world.archived_contact = _contact(world, ARCHIVED, world.ago(days=5))  # type: ignore[attr-defined]
    for n in range(8):
        _contact(world, _new(n), world.ago(days=5))

    def archive_read_members() -> None:
        for n in (0, 1, 2):
            world.mc.set_member_status(world.list_id, _email(n), "archived")

    world.mc.after_member_pages(2, archive_read_members)
    return world


def _completed(results: list[Any]) -> None:
    assert results[0].error is None, results[0].error
    assert results[0].outcome and results[0].outcome.completed, results[0].outcome


def _read_batches(world: World) -> list[Any]:
    """The batches of GET operations the simulator was sent."""
    return [
        b for b in world.mc.submitted_batches() if {op.method for op in b.operations} == {"GET"}
    ]


def _member_gets(world: World, email: str | None = None) -> list[tuple[str, str]]:
    """Direct ``GET /lists/{id}/members/{hash}`` requests (of one member)."""
    prefix = f"/3.0/lists/{world.list_id}/members/"
    return [
        (m, p)
        for m, p in world.mc.request_log
        if m == "GET"
        and p.startswith(prefix)
        and "/" not in p[len(prefix) :]
        and (email is None or p.endswith(subscriber_hash(email)))
    ]


def _assert_first_sync_outcome(world: World) -> None:
    """Skipped and unsubscribed: Removed in CiviCRM, still unsubscribed. Archived after the
    Added: stays archived, Removed. Not at Mailchimp: subscribed as new."""
    contacts: dict[int, int] = world.contacts  # type: ignore[attr-defined]
    for n in (10, 11, 12):
        assert world.mc_status(_email(n)) == "unsubscribed", n
        assert world.civi_status(contacts[n]) == "Removed", n
    assert world.mc_status(ARCHIVED) == "archived"
    assert world.civi_status(world.archived_contact) == "Removed"  # type: ignore[attr-defined]
    assert {world.mc_status(_new(n)) for n in range(8)} == {"subscribed"}
    others = [n for n in contacts if n not in (0, 1, 2, 10, 11, 12)]
    assert {world.mc_status(_email(n)) for n in others} == {"subscribed"}
    assert {world.civi_status(contacts[n]) for n in others} == {"Added"}


def _state(world: World) -> dict[str, Any]:
    with closing(sqlite3.connect(world.tmp_path / "state.sqlite3")) as db:
        db.row_factory = sqlite3.Row
        return dict(db.execute("SELECT * FROM audience_state").fetchone())


def _staged_batches(world: World) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(world.tmp_path / "state.sqlite3")) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM batches ORDER BY id")]


def _release_lease(world: World) -> None:
    """What the lease's expiry does for a killed run, without waiting two minutes."""
    with closing(sqlite3.connect(world.tmp_path / "state.sqlite3")) as db:
        db.execute("UPDATE audience_state SET lease_expires = 0")
        db.commit()


def test_civicrm_only_contacts_are_read_in_one_batch_and_reconciled_as_read(
    make_world: Callable[..., World],
) -> None:
    """The 12 CiviCRM-only contacts' addresses are read by one batch of GETs, not one
    request each: the members the paging skipped are found (and their unsubscribes win), the
    archived member is not new, the 404s are subscribed as new."""
    world = _first_sync_world(make_world)
    _completed(world.sync())
    _assert_first_sync_outcome(world)
    [batch] = _read_batches(world)
    hashes = {op.path.rsplit("/", 1)[-1] for op in batch.operations}
    assert hashes == {
        subscriber_hash(e)
        for e in [_email(10), _email(11), _email(12), ARCHIVED, *map(_new, range(8))]
    }
    assert _member_gets(world) == []
    assert [b["status"] for b in _staged_batches(world) if b["reads"]] == ["processed"]


def test_below_the_threshold_members_are_read_directly(make_world: Callable[..., World]) -> None:
    """Fewer members than the threshold: direct GETs, answered at once, no batch."""
    world = _first_sync_world(make_world)
    world.write_config(
        f"page_size_mailchimp = {PAGE_SIZE}\nmax_connections = 1\nread_batch_threshold = 13\n"
        "max_removal_share = 1.0\n"
    )
    _completed(world.sync())
    _assert_first_sync_outcome(world)
    assert _read_batches(world) == []
    assert len(_member_gets(world)) == 12


def test_an_operation_that_fails_inside_the_batch_is_read_again_directly(
    make_world: Callable[..., World],
) -> None:
    """Member 11's operation answers 500 inside the batch: that is no 404, so it is not
    subscribed as new; it is read again directly and reconciled as the others."""
    world = _first_sync_world(make_world)
    world.mc.fail_batch_operations(world.list_id, _email(11))
    _completed(world.sync())
    _assert_first_sync_outcome(world)
    [batch] = _read_batches(world)
    assert batch.errored == 9  # the 8 new addresses (404) and the 500
    assert len(_member_gets(world, _email(11))) == 1
    assert len(_member_gets(world)) == 1


class FailMemberReads(httpx.BaseTransport):
    """Mailchimp answers 500 to every direct read of one member (its retries too)."""

    def __init__(self, inner: httpx.BaseTransport, list_id: str, email: str):
        self.inner = inner
        self.path = f"/3.0/lists/{list_id}/members/{subscriber_hash(email)}"

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == self.path:
            return httpx.Response(500, json={"title": "Internal Server Error", "status": 500})
        return self.inner.handle_request(request)


def test_a_member_never_read_is_left_undecided_and_its_batch_collected_again(
    make_world: Callable[..., World],
) -> None:
    """Member 11's operation fails inside the batch and every direct read of it fails too:
    the run fails before the chunk is committed, so nobody is subscribed or removed on that
    basis. The next run collects the same batch again (no second batch) and reads member 11."""
    world = _first_sync_world(make_world)
    world.mc.fail_batch_operations(world.list_id, _email(11))
    plain = world.transport
    world.transport = FailMemberReads(plain, world.list_id, _email(11))  # type: ignore[assignment]
    results = world.sync(budget=Budget(None, sleep=lambda seconds: None))
    assert results[0].error is not None
    assert world.mc_status(_email(11)) == "unsubscribed"
    assert world.writes() == [("POST", "/3.0/batches")]  # the batch of reads, nothing else
    state = _state(world)
    assert (state["stage"], state["cursor"]) == ("confirm_civicrm_only", 0)
    [open_batch] = [b for b in _staged_batches(world) if b["reads"]]
    assert open_batch["status"] == "finished"

    world.transport = plain
    _completed(world.sync())
    _assert_first_sync_outcome(world)
    assert len(_read_batches(world)) == 1


class KillOn(httpx.BaseTransport):
    """Kill the run (an exception nothing catches) at the ``nth`` request that ``wanted``
    matches: before it is sent, or (``after_sending``) once the service has handled it but
    before its answer is read, as a SIGKILL with the request in flight would."""

    def __init__(
        self,
        inner: httpx.BaseTransport,
        wanted: Callable[[httpx.Request], bool],
        nth: int = 1,
        *,
        after_sending: bool = False,
    ):
        self.inner, self.wanted, self.left, self.after_sending = inner, wanted, nth, after_sending

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.wanted(request):
            self.left -= 1
            if self.left == 0:
                if self.after_sending:
                    self.inner.handle_request(request)
                raise RuntimeError("killed")
        return self.inner.handle_request(request)


def _is_batch_post(request: httpx.Request) -> bool:
    return request.method == "POST" and request.url.path == "/3.0/batches"


def _is_batch_poll(request: httpx.Request) -> bool:
    return request.method == "GET" and request.url.path.startswith("/3.0/batches/")


def _is_member_get(request: httpx.Request) -> bool:
    parts = request.url.path.rstrip("/").split("/")
    return request.method == "GET" and len(parts) == 6 and parts[-2] == "members"


@pytest.mark.parametrize(
    ("wanted", "after_sending", "extra_fault"),
    [
        (_is_batch_post, True, False),  # POST reached Mailchimp, its answer lost
        (_is_batch_poll, False, False),  # submitted and recorded, killed while polling
        (_is_member_get, False, True),  # results downloaded, killed re-reading a failed op
    ],
    ids=["answer-lost", "polling", "applying"],
)
def test_a_run_killed_with_a_batch_of_reads_in_flight_collects_that_batch(
    make_world: Callable[..., World],
    wanted: Callable[[httpx.Request], bool],
    after_sending: bool,
    extra_fault: bool,
) -> None:
    """Killed at each point of a batch of reads: nothing is decided from it before its
    results are applied with the chunk, and the next run goes on with that same batch
    (found again at Mailchimp when the answer to the POST was lost), never a second one."""
    world = _first_sync_world(make_world)
    if extra_fault:
        world.mc.fail_batch_operations(world.list_id, _email(11))
    plain = world.transport
    world.transport = KillOn(plain, wanted, after_sending=after_sending)  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="killed"):
        world.sync()
    state = _state(world)
    assert (state["stage"], state["cursor"]) == ("confirm_civicrm_only", 0)
    assert len(_read_batches(world)) == 1
    assert world.writes() == [("POST", "/3.0/batches")]
    _release_lease(world)

    world.transport = plain
    _completed(world.sync())
    _assert_first_sync_outcome(world)
    assert len(_read_batches(world)) == 1
    assert [b["status"] for b in _staged_batches(world) if b["reads"]] == ["processed"]


def test_a_submission_that_never_arrived_is_read_again(make_world: Callable[..., World]) -> None:
    """Killed as the POST /batches is about to go: no batch exists at Mailchimp, so the
    recorded submission is dropped and the next run submits the chunk's reads once."""
    world = _first_sync_world(make_world)
    plain = world.transport
    world.transport = KillOn(plain, _is_batch_post)  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="killed"):
        world.sync()
    assert _read_batches(world) == []
    _release_lease(world)
    world.transport = plain
    _completed(world.sync())
    _assert_first_sync_outcome(world)
    assert len(_read_batches(world)) == 1


def test_budgeted_runs_collect_every_batch_of_reads_once(
    make_world: Callable[..., World], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of 4 members, runs with a few clock readings each: runs stop between
    submitting a batch and applying it; each batch is collected by the run that resumes and
    applied once, none is dropped or submitted twice, and the outcome is a single run's."""
    monkeypatch.setattr(fetch_mailchimp, "READ_BATCH_SIZE", 4)
    world = _first_sync_world(make_world)
    clock = iter(range(10**7))
    stopped_with_batch_open = 0
    for _ in range(300):
        budget = Budget(12, clock=lambda: float(next(clock)))
        results = world.sync(budget=budget)
        assert results[0].error is None, results[0].error
        if results[0].outcome.completed:
            break
        if any(b["reads"] and b["status"] != "processed" for b in _staged_batches(world)):
            stopped_with_batch_open += 1
    else:
        raise AssertionError("the runs never completed")
    _assert_first_sync_outcome(world)
    assert stopped_with_batch_open > 0
    reads = [b for b in _staged_batches(world) if b["reads"]]
    # 12 contacts, 4 a batch; a run resuming with fewer left than the threshold reads the
    # rest directly.
    assert len(reads) == len(_read_batches(world)) >= 2
    assert {b["status"] for b in reads} == {"processed"}
    keys = [k[0] for b in reads for k in json.loads(b["reads"])["keys"]]
    assert len(keys) == len(set(keys)) == 4 * len(reads)
    assert len(_member_gets(world)) == 12 - len(keys)


def test_members_missing_from_a_full_fetch_are_confirmed_by_a_batch(
    make_world: Callable[..., World],
) -> None:
    """After a first sync, a full run during which members 0-4 (read) are archived and 30-34
    (not read yet) are deleted permanently: members 15-19 are skipped by the offset walk.
    The 10 missing members are read by one batch (by hash, and by unique_email_id, which
    finds a member under a new address): the skipped ones are kept, the deleted ones (404,
    nobody with their unique_email_id) are gone."""
    world = make_world()
    world.write_config(
        f"page_size_mailchimp = {PAGE_SIZE}\nmax_connections = 1\n"
        f"read_batch_threshold = {THRESHOLD}\n"
    )
    newest = world.ago(days=3)
    world.mc.seed_members(
        world.list_id,
        [(_email(n), "subscribed", {}, {}, newest - timedelta(minutes=n)) for n in range(40)],
    )
    contacts = {n: _contact(world, _email(n), world.ago(days=5)) for n in range(40)}
    _completed(world.sync())

    def churn() -> None:
        for n in range(5):
            world.mc.set_member_status(world.list_id, _email(n), "archived")
        for n in range(30, 35):
            world.mc.forget_member(world.list_id, _email(n))

    world.mc.after_member_pages(3, churn)
    gets_before = len(_member_gets(world))
    _completed(world.sync(full=True, allow_mass_changes=True))
    [batch] = _read_batches(world)
    by_hash = [op for op in batch.operations if op.path.count("/") == 4]
    by_unique = [op for op in batch.operations if op.path.count("/") == 3]
    assert len(by_hash) == len(by_unique) == 10
    assert {op.path.rsplit("/", 1)[-1] for op in by_hash} == {
        subscriber_hash(_email(n)) for n in [*range(15, 20), *range(30, 35)]
    }
    assert len(_member_gets(world)) == gets_before
    gone = {*range(5), *range(30, 35)}
    assert {n for n, c in contacts.items() if world.civi_status(c) != "Added"} == gone
    assert {world.mc_status(_email(n)) for n in range(40) if n not in gone} == {"subscribed"}


def test_a_batch_of_reads_finds_what_direct_reads_find(world: World) -> None:
    """For every kind of member a read can meet, the batch's answer is the direct read's:
    subscribed, archived (returned, status archived), moved to a new address (its old hash
    answers 404; its unique_email_id finds it), deleted permanently (404, no one holds its
    unique_email_id), never there (404), and one whose operation failed (unread, not gone)."""
    for email in ("sub@example.org", "arch@example.org", "old@example.org", "gone@example.org"):
        world.person(email, mc="subscribed")
    keys: list[tuple[str, str | None]] = []
    for email in ("sub@example.org", "arch@example.org", "old@example.org", "gone@example.org"):
        member = world.mc.member(world.list_id, email)
        assert member is not None
        keys.append((member["id"], member["unique_email_id"]))
    keys.append((subscriber_hash("never@example.org"), None))
    keys.append((subscriber_hash("sub@example.org"), None))  # its operation fails: unread
    world.mc.set_member_status(world.list_id, "arch@example.org", "archived")
    world.mc.edit_member(world.list_id, "old@example.org", new_email="moved@example.org")
    world.mc.forget_member(world.list_id, "gone@example.org")

    client = MailchimpClient(
        account_name="main",
        api_key=world.config.mailchimp.accounts["main"].api_key.get_secret_value(),
        base_url="https://mailchimp.sim/3.0",
        budget=Budget(None),
        transport=world.transport,
    )
    direct = client.current_members(world.list_id, keys)
    world.mc.fail_batch_operations(world.list_id, "sub@example.org", times=1)
    operations = member_read_operations(world.list_id, keys)
    # the first operation on sub@example.org is key 0's: fail key 5's instead
    operations = operations[2:] + operations[:2]
    batch = client.start_batch(operations)
    finished = client.get_batch(batch["id"])
    assert finished["status"] == "finished"
    results = client.batch_results(finished["response_body_url"], batch_id=batch["id"])
    found, unread = members_from_read_results(keys, results)

    assert unread == [5]
    assert [m and (m["email_address"], m["status"]) for m in direct] == [
        ("sub@example.org", "subscribed"),
        ("arch@example.org", "archived"),
        ("moved@example.org", "subscribed"),
        None,
        None,
        ("sub@example.org", "subscribed"),
    ]
    assert found[:5] == direct[:5]
    assert found[5] is None


def _stopped_while_mailchimp_works_on_the_batch(world: World) -> dict[str, Any]:
    """Mailchimp takes 10 minutes over the batch of reads: the run polls until its budget
    (clock readings; waits cost none) is too short for another wait, and stops there."""
    world.mc._batches.delay = timedelta(seconds=600)
    clock = iter(range(10**7))
    budget = Budget(400, clock=lambda: float(next(clock)), sleep=lambda seconds: None)
    results = world.sync(budget=budget)
    assert results[0].error is None, results[0].error
    assert results[0].outcome and results[0].outcome.stage == "confirm_civicrm_only"
    assert _state(world)["cursor"] == 0
    [batch] = [b for b in _staged_batches(world) if b["reads"]]
    assert batch["status"] == "pending"
    assert world.writes() == [("POST", "/3.0/batches")]
    return batch


def test_a_budget_ending_while_mailchimp_works_on_the_batch_collects_it_next_run(
    make_world: Callable[..., World],
) -> None:
    """The next run, once Mailchimp has finished, collects the batch the stopped run
    submitted: no second batch, and the outcome is a single run's."""
    world = _first_sync_world(make_world)
    batch = _stopped_while_mailchimp_works_on_the_batch(world)
    world.advance_clock(seconds=601)
    _completed(world.sync())
    _assert_first_sync_outcome(world)
    assert len(_read_batches(world)) == 1
    [after] = [b for b in _staged_batches(world) if b["reads"]]
    assert (after["id"], after["status"]) == (batch["id"], "processed")


def test_abort_cancels_a_batch_of_reads_and_the_next_run_reads_afresh(
    make_world: Callable[..., World], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mcsync abort` with a batch of reads in flight deletes it at Mailchimp and closes it:
    its results are never applied; the next run starts afresh and reads with a new batch."""
    world = _first_sync_world(make_world)
    batch = _stopped_while_mailchimp_works_on_the_batch(world)
    monkeypatch.setattr(
        abort, "connections", functools.partial(engine.connections, transport=world.transport)
    )
    done = CliRunner().invoke(
        main, ["abort", "--group-id", str(world.group_id), "--config", str(world.config_path)]
    )
    assert done.exit_code == 0, done.output
    assert ("DELETE", f"/3.0/batches/{batch['mc_batch_id']}") in world.mc.request_log
    assert [b["status"] for b in _staged_batches(world) if b["reads"]] == ["aborted"]

    world.mc._batches.delay = timedelta(0)
    _completed(world.sync())
    assert [b["status"] for b in _staged_batches(world) if b["reads"]] == ["aborted", "processed"]
    assert len(_read_batches(world)) == 1  # the deleted one is gone at Mailchimp
    contacts: dict[int, int] = world.contacts  # type: ignore[attr-defined]
    for n in (10, 11, 12):
        assert world.mc_status(_email(n)) == "unsubscribed", n
        assert world.civi_status(contacts[n]) == "Removed", n
    assert world.mc_status(ARCHIVED) == "archived"
    assert {world.mc_status(_new(n)) for n in range(8)} == {"subscribed"}


def test_a_batch_is_polled_soon_then_less_often(make_world: Callable[..., World]) -> None:
    """Mailchimp takes 3 s over the batch of reads: mcsync looks after 0.25 s, then 0.5, 1
    and 2 s, so a batch done in about a second costs about a second, not a fixed 2 s wait per
    look (issue 12), while a slow one is polled every 2 s. The waits pass on the services'
    clock, as they would on a real server."""
    world = _first_sync_world(make_world)
    world.mc._batches.delay = timedelta(seconds=3)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        world.advance_clock(seconds=seconds)

    _completed(world.sync(budget=Budget(None, sleep=sleep)))
    _assert_first_sync_outcome(world)
    assert waits[:4] == [0.25, 0.5, 1.0, 2.0]
    assert max(waits) == 2.0


def test_the_next_batch_of_reads_is_at_mailchimp_while_one_is_collected(
    make_world: Callable[..., World], monkeypatch: pytest.MonkeyPatch
) -> None:
    """12 CiviCRM-only contacts in batches of 4, Mailchimp taking 1 s a batch: each batch
    after the first is submitted before the one ahead of it is collected, so Mailchimp is
    never idle while mcsync polls, downloads and applies (issue 12). Each is applied once, at
    its own chunk, and the outcome is a single run's."""
    monkeypatch.setattr(fetch_mailchimp, "READ_BATCH_SIZE", 4)
    world = _first_sync_world(make_world)
    world.mc._batches.delay = timedelta(seconds=1)
    _completed(world.sync(budget=Budget(None, sleep=lambda s: world.advance_clock(seconds=s))))
    _assert_first_sync_outcome(world)
    assert len(_read_batches(world)) == 3
    # Mailchimp's view: batch n+1 arrives before batch n's results are downloaded.
    steps = [
        "submit" if method == "POST" else "download"
        for method, path in world.mc.request_log
        if path == "/3.0/batches" or path.startswith("/_sim/batch-results/")
    ]
    assert steps == ["submit", "submit", "download", "submit", "download", "download"]
    staged = [b for b in _staged_batches(world) if b["reads"]]
    assert [b["status"] for b in staged] == ["processed"] * 3
    cursors = [json.loads(b["reads"])["cursor"] for b in staged]
    assert cursors[0] == 0 and cursors == sorted(set(cursors))


@pytest.mark.parametrize("nth", [2, 3])
def test_a_kill_while_the_next_batch_is_submitted_loses_and_repeats_nothing(
    make_world: Callable[..., World], monkeypatch: pytest.MonkeyPatch, nth: int
) -> None:
    """Batches of 4: the run is killed with the ``nth`` batch's POST in flight (Mailchimp got
    it, mcsync never saw the answer), i.e. while the batch ahead of it is not applied yet.
    The next run collects the batch ahead, adopts the one in flight for its own chunk (never
    sent again), and ends as a single run would."""
    monkeypatch.setattr(fetch_mailchimp, "READ_BATCH_SIZE", 4)
    world = _first_sync_world(make_world)
    plain = world.transport
    world.transport = KillOn(plain, _is_batch_post, nth, after_sending=True)  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="killed"):
        world.sync()
    _release_lease(world)
    world.transport = plain
    _completed(world.sync())
    _assert_first_sync_outcome(world)
    assert len(_read_batches(world)) == 3
    staged = [b for b in _staged_batches(world) if b["reads"]]
    assert [b["status"] for b in staged] == ["processed"] * 3
    assert len(_member_gets(world)) == 0

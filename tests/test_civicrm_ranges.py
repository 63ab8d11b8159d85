"""Large CiviCRM reads by id ranges (issue 12): the id space split into ranges that cover it
exactly, each range keyset-paged to its end, several at once within `[civicrm] concurrency`,
each page committed with its range's cursor. A run stopped mid-read (a kill, a spent budget)
resumes without reading done ranges again, and never takes an unread range for people who
left the group; concurrency 1 and 4 stage the same thing."""

from __future__ import annotations

import functools
import itertools
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from conftest import CIVI_KEY, CIVI_URL, World
from hypothesis import given
from hypothesis import strategies as st

from mcsync.api.civicrm import CiviCRMClient, IdRange, split_ranges
from mcsync.budget import Budget

PEOPLE = 60
PAGE = 5


class Killed(BaseException):
    """The process dying: nothing after it runs, what was committed stays."""


class Recorder(httpx.BaseTransport):
    """The world's transport, noting each CiviCRM `get`'s entity and params; optionally
    dies (raises `Killed`) instead of sending the n-th GroupContact.get."""

    def __init__(self, inner: httpx.BaseTransport, kill_at: int | None = None):
        self.inner = inner
        self.kill_at = kill_at
        self.gets: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.rstrip("/")
        if path.endswith("/get") and "civicrm" in request.url.host:
            entity = path.split("/")[-2]
            params = json.loads(parse_qs(request.read().decode())["params"][0])
            with self.lock:
                self.gets.append((entity, params))
                count = sum(1 for e, _ in self.gets if e == "GroupContact")
            if entity == "GroupContact" and self.kill_at is not None and count >= self.kill_at:
                raise Killed()
        return self.inner.handle_request(request)

    def ranges_read(self, entity: str) -> list[tuple[int, int | None]]:
        """(id >, id <=) of each paged `get` of ``entity``."""
        found = []
        for name, params in self.gets:
            if name != entity or params.get("limit") == 1:
                continue
            lower = [c[2] for c in params["where"] if c[:2] == ["id", ">"]]
            upper = [c[2] for c in params["where"] if c[:2] == ["id", "<="]]
            if not lower:
                continue  # not a paged read (a lookup by contact)
            found.append((lower[0], upper[0] if upper else None))
        return found


def _people(world: World, count: int = PEOPLE) -> list[int]:
    """An agreeing audience; a second group's rows interleave the GroupContact ids (the
    audience's ids are not dense)."""
    other = world.civi.add_group("Other")
    contacts = []
    for n in range(count):
        contact = world.person(f"p{n:03}@example.org", mc="subscribed", civi="Added")
        assert contact is not None
        contacts.append(contact)
        if n % 3 == 0:
            world.civi.set_group_status(contact, other, "Added")
    return contacts


def _configure(world: World, concurrency: int) -> None:
    world.write_config(f"page_size_civicrm = {PAGE}")
    text = world.config_path.read_text()
    world.config_path.write_text(
        text.replace('timezone = "UTC"\n', f'timezone = "UTC"\nconcurrency = {concurrency}\n')
    )


def _db(world: World) -> sqlite3.Connection:
    conn = sqlite3.connect(world.tmp_path / "state.sqlite3")
    conn.row_factory = sqlite3.Row
    return conn


def _staged(world: World) -> dict[str, Any]:
    with _db(world) as conn:
        return {
            "groups": conn.execute(
                "SELECT contact_id, group_id, status FROM group_status ORDER BY 1, 2"
            ).fetchall(),
            "contacts": conn.execute(
                "SELECT contact_id, is_deleted, is_deceased, do_not_email, is_opt_out, "
                "first_name, last_name, gone FROM contacts ORDER BY 1"
            ).fetchall(),
            "emails": conn.execute(
                "SELECT email_id, contact_id, email, is_primary, on_hold FROM emails ORDER BY 1"
            ).fetchall(),
            "rows": conn.execute(
                "SELECT mc_hash, mc_status, contact_id, sync_status, reason FROM rows ORDER BY 1"
            ).fetchall(),
        }


def _in_group(world: World) -> dict[int, str | None]:
    with _db(world) as conn:
        return dict(
            conn.execute(
                "SELECT contact_id, status FROM group_status WHERE group_id = ?",
                (world.group_id,),
            ).fetchall()
        )


# -- the split -----------------------------------------------------------------------------
@given(
    after=st.integers(0, 10_000),
    span=st.integers(-50, 100_000),
    page_size=st.integers(1, 5000),
    count=st.integers(1, 64),
)
def test_ranges_cover_the_id_space_exactly(
    after: int, span: int, page_size: int, count: int
) -> None:
    """Every id above `after` lies in exactly one range: contiguous from `after`, disjoint,
    none empty, the last open-ended (rows created after the highest id was read are read
    too), at most `count` of them, each bounded one a whole number of pages wide."""
    top = after + span
    ranges = split_ranges(after, top, page_size=page_size, count=count)
    assert 1 <= len(ranges) <= count
    assert ranges[0][0] == after and ranges[-1][1] is None
    for (lo, hi), (next_lo, _) in itertools.pairwise(ranges):
        assert hi is not None and hi == next_lo and hi > lo
        assert (hi - lo) % page_size == 0
    probes = {after + 1, top, top + 1, top + page_size, *range(after + 1, after + 200)}
    probes |= {lo for lo, _ in ranges} | {lo + 1 for lo, _ in ranges}
    for probe in probes:
        if probe <= after:
            continue
        holders = [r for r in ranges if r[0] < probe and (r[1] is None or probe <= r[1])]
        assert len(holders) == 1, (probe, ranges)


def test_range_pages_read_every_row_once_in_any_order_or_in_id_order(world: World) -> None:
    """Against the simulator answering `id > x AND id <= y` as APIv4 does: the ranges'
    pages together hold every matching row exactly once; `ordered` yields them in id
    order; each range's last page says so."""
    _people(world, 40)
    client = CiviCRMClient(
        url=CIVI_URL, api_key=CIVI_KEY, budget=Budget(None), transport=world.transport,
        max_connections=4,
    )  # fmt: skip
    where = [["group_id", "IN", [world.group_id]]]
    every = [r["id"] for r in client.call("GroupContact", "get", {"where": where, "limit": 0})]
    top = client.top_id("GroupContact", where)
    assert top == max(every)
    parts = split_ranges(0, top, page_size=PAGE, count=8)
    assert len(parts) > 2
    params = {"select": ["id", "contact_id"], "where": where}
    ranges = [IdRange(lo, hi) for lo, hi in parts]
    for ordered in (False, True):
        pages = list(client.range_pages("GroupContact", params, ranges, page_size=PAGE,
                                        ordered=ordered))  # fmt: skip
        ids = [r["id"] for page in pages for r in page.rows]
        assert sorted(ids) == sorted(every) and len(set(ids)) == len(ids)
        if ordered:
            assert ids == sorted(ids)
        assert sorted(p.index for p in pages if p.done) == list(range(len(ranges)))
        for page in pages:
            lo, hi = parts[page.index]
            assert all(lo < r["id"] and (hi is None or r["id"] <= hi) for r in page.rows)


# -- whole runs ----------------------------------------------------------------------------
def _world(tmp_path: Path, concurrency: int) -> World:
    tmp_path.mkdir(parents=True, exist_ok=True)
    world = World(tmp_path)
    _configure(world, concurrency)
    return world


def test_concurrency_one_and_four_stage_the_same(tmp_path: Path) -> None:
    """The same world synced with `concurrency = 1` and `= 4` stages the same contacts,
    emails, group statuses and rows, on a first full run and on a full run after contacts
    left the group without a trace (a direct SQL delete: no history; a dry run, so that they
    are not added back before the comparison); with 4, the group read went by id ranges."""
    staged = []
    for concurrency in (1, 4):
        world = _world(tmp_path / f"c{concurrency}", concurrency)
        contacts = _people(world)
        recorder = Recorder(world.transport)
        world.transport = recorder
        world.sync()
        first = _staged(world)
        left = contacts[7::9]
        for contact in left:
            world.civi.query(
                "DELETE FROM group_contact WHERE contact_id = ? AND group_id = ?",
                (contact, world.group_id),
            )
        world.sync(full=True, dry_run=True)  # read and decide; nothing written yet
        statuses = _in_group(world)
        assert [c for c in contacts if statuses.get(c) is None] == left
        read = recorder.ranges_read("GroupContact")
        if concurrency == 1:
            assert all(hi is None for _, hi in read)
        else:
            assert sum(1 for _, hi in read if hi is not None) >= 4
        staged.append((first, _staged(world)))
    assert staged[0] == staged[1]


def _snapshot_ranges(world: World) -> list[sqlite3.Row]:
    with _db(world) as conn:
        return conn.execute(
            "SELECT lo, hi, cursor, done FROM civi_sweeps WHERE sweep = 'groups' ORDER BY lo"
        ).fetchall()


def _expire_lease(world: World) -> None:
    with _db(world) as conn:
        conn.execute("UPDATE audience_state SET lease_expires = 0, lease_owner = 'gone'")


@pytest.mark.parametrize("kill_at", [2, 3, 5, 7])
def test_a_kill_mid_read_resumes_each_range_and_nobody_left(tmp_path: Path, kill_at: int) -> None:
    """A full run killed while its group ranges are read: nobody is taken to have left (the
    staged statuses stay Added), the resumed run reads no id a range had committed, and the
    run ends with no write at either side (both agree)."""
    world = _world(tmp_path, 4)
    contacts = _people(world)
    world.sync()
    before = len(world.writes())
    recorder = Recorder(world.transport, kill_at=kill_at)
    world.transport = recorder
    with pytest.raises(Killed):
        world.sync(full=True)
    assert set(_in_group(world).values()) == {"Added"}
    committed = _snapshot_ranges(world)
    _expire_lease(world)
    resumed = Recorder(recorder.inner)
    world.transport = resumed
    result = world.sync()
    assert result[0].error is None
    with _db(world) as conn:
        assert conn.execute("SELECT stage FROM audience_state").fetchone()[0] == "idle"
    for lower, upper in resumed.ranges_read("GroupContact"):
        for r in committed:
            inside = r["lo"] < lower + 1 and (r["hi"] is None or lower < r["hi"])
            if inside:
                assert not r["done"] and lower >= r["cursor"], (lower, upper, dict(r))
    statuses = _in_group(world)
    assert all(statuses[c] == "Added" for c in contacts)
    assert len(world.writes()) == before


def _tick(clock: Iterator[int]) -> float:
    return float(next(clock))


def test_budgets_ending_mid_read_resume_and_nobody_left(tmp_path: Path) -> None:
    """Full runs under ever longer tick-clock budgets, each resuming the last: wherever the
    budget ends in the group ranges, no staged status is lost and no write is made; the
    read completes, and the ranges' ids are read about once in all (a page in flight when
    the budget ended is read again)."""
    world = _world(tmp_path, 4)
    _people(world)
    world.sync()
    before = len(world.writes())
    recorder = Recorder(world.transport)
    world.transport = recorder
    stopped_in_groups = 0
    with _db(world) as conn:
        synced = conn.execute("SELECT last_sync FROM audience_state").fetchone()[0]
    for ticks in itertools.count(1):
        clock = itertools.count()
        budget = Budget(ticks, clock=functools.partial(_tick, clock))
        result = world.sync(budget=budget, full=True)
        assert result[0].error is None
        assert set(_in_group(world).values()) == {"Added"}
        with _db(world) as conn:
            stage, last_sync = conn.execute(
                "SELECT stage, last_sync FROM audience_state"
            ).fetchone()
        stopped_in_groups += stage == "fetch_civicrm_groups"
        if last_sync != synced:
            break
    assert stopped_in_groups >= 2
    assert len(world.writes()) == before
    rows_read = sum(
        1 for name, params in recorder.gets if name == "GroupContact" and params.get("limit") != 1
    )
    # Every range costs its pages; each budget stop can lose what was sent and not committed:
    # the round in flight (4) and, as thread timing decides, the round submitted as its first
    # answer came back (4 more). A re-read of everything per stop would cost 12 pages a stop.
    assert rows_read <= PEOPLE // PAGE + 2 * 8 + 2 * 4 * stopped_in_groups


def test_history_read_by_ranges_applies_in_id_order(tmp_path: Path) -> None:
    """An incremental run whose subscription history spans many pages, read by ranges at
    concurrency 4: a contact's changes apply in the order they happened, whatever order the
    ranges' pages arrive in. Here one contact's last change (Removed) is in the first page
    of the second range, and its earlier ones in the first range's second page, which a
    read in arrival order would apply after it."""
    world = _world(tmp_path, 4)
    contacts = _people(world, 12)
    world.sync()
    world.advance_clock(minutes=5)
    first = contacts[0]
    for n in range(20):
        world.civi.set_group_status(first, world.group_id, "Added" if n % 2 == 0 else "Removed")
    for n in range(10):
        for contact in contacts[1:11]:
            world.civi.set_group_status(
                contact, world.group_id, "Removed" if n % 2 == 0 else "Added"
            )
    recorder = Recorder(world.transport)
    world.transport = recorder
    world.sync()
    read = recorder.ranges_read("SubscriptionHistory")
    assert sum(1 for _, hi in read if hi is not None) >= 2
    statuses = _in_group(world)
    assert statuses[first] == "Removed"
    assert all(statuses[c] == "Added" for c in contacts[1:])
    assert world.mc_status("p000@example.org") == "unsubscribed"


@pytest.mark.parametrize(
    ("value", "valid"), [(0, False), (1, True), (4, True), (10, True), (11, False)]
)
def test_civicrm_concurrency_is_validated(world: World, value: int, valid: bool) -> None:
    """`[civicrm] concurrency`: 1 (a small server) to 10 requests at once; default 4."""
    from mcsync.errors import ConfigError

    assert world.config.civicrm.concurrency == 4
    _configure(world, value)
    if valid:
        assert world.config.civicrm.concurrency == value
    else:
        with pytest.raises(ConfigError, match="concurrency"):
            _ = world.config


def test_the_next_run_does_not_page_through_mcsyncs_own_history(tmp_path: Path) -> None:
    """After a sync that wrote many group changes (contacts created for Mailchimp-only
    subscribers, each Added with mcsync's tracking marker), the next run's history read
    leaves those rows out at the server: one page, not one per page of its own echo."""
    world = _world(tmp_path, 4)
    for n in range(30):
        world.person(f"new{n:02}@example.org", mc="subscribed")
    world.sync()
    assert sum(1 for n in range(30) if world.civi.query(
        "SELECT 1 FROM email WHERE email = ?", (f"new{n:02}@example.org",))) == 30  # fmt: skip
    world.advance_clock(minutes=5)
    recorder = Recorder(world.transport)
    world.transport = recorder
    world.sync()
    assert len(recorder.ranges_read("SubscriptionHistory")) == 1


def test_civicrm_concurrency_holds_across_processes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`[civicrm] concurrency` caps the requests in flight to the site across mcsync
    processes too (two cron runs of different audiences against one small server): each
    request holds one of the site's lock-file slots (keyed by a hash, never the key). With
    every slot held elsewhere, a request waits, and gives up when the budget ends."""
    import fcntl
    import os

    from mcsync.errors import BudgetExhausted

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(world.tmp_path))

    def client_with(budget: Budget) -> CiviCRMClient:
        return CiviCRMClient(url=CIVI_URL, api_key=CIVI_KEY, budget=budget,
                             transport=world.transport, max_connections=1)  # fmt: skip

    # a budget no loaded machine can spend on one answer, then a short one for the wait
    assert client_with(Budget(60)).call("Group", "get", {"select": ["id"]})  # free: answered
    slots = list((world.tmp_path).glob("mcsync-slots-*/*.lock"))
    assert len(slots) == 1 and CIVI_KEY not in slots[0].name
    fd = os.open(slots[0], os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process's request
        asked = len(world.civi.request_log)
        # Which layer notices the end first (the slot wait, or the caller's wait for the
        # answer when a loaded machine starves the waiting thread) varies: either way the
        # request gave up when the budget ended, and it never reached the server.
        with pytest.raises(BudgetExhausted):
            client_with(Budget(1.0)).call("Group", "get", {"select": ["id"]})
        assert len(world.civi.request_log) == asked
    finally:
        os.close(fd)

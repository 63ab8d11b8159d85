"""Paging under churn (issue 10, item 1): a full fetch pages members by offset, newest first,
over live data. A member archived or deleted at Mailchimp while mcsync pages moves every later
member up a place, so one unread member per vanished one is never read; a member who changes
moves to the already-read end. Neither may look like "gone" (DESIGN §4: a member absent from a
full fetch is gone only once confirmed), and changes made during the fetch are read before
reconciling.

The churn runs inside the Mailchimp simulator between two page requests
(``MailchimpSim.after_member_pages``), so the paging is the simulator's real offset paging.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest import World

from mcsync.budget import Budget
from mcsync.errors import MassChangeBrake

MEMBERS = 400
PAGE_SIZE = 10


def _email(n: int) -> str:
    return f"m{n:03d}@example.org"


@pytest.fixture
def churn_world(make_world: Callable[..., World]) -> World:
    """400 people subscribed at Mailchimp and Added in CiviCRM; member n changed n minutes
    before member 0, so member 0 is the newest (page 1) and member 399 the oldest (page 40)."""
    return _churn_world(make_world())


def _churn_world(
    world: World, *, unsubscribed: frozenset[int] = frozenset(), extra: str = ""
) -> World:
    world.write_config(f"page_size_mailchimp = {PAGE_SIZE}\n{extra}")
    newest = world.ago(days=3)
    world.mc.seed_members(
        world.list_id,
        [
            (
                _email(n),
                "unsubscribed" if n in unsubscribed else "subscribed",
                {},
                {},
                newest - timedelta(minutes=n),
            )
            for n in range(MEMBERS)
        ],
    )
    world.contacts = {}  # type: ignore[attr-defined]
    for n in range(MEMBERS):
        contact = world.civi.add_contact(f"P{n}", "Churn")
        world.civi.add_email(contact, _email(n))
        world.civi.set_group_status(contact, world.group_id, "Added", when=world.ago(days=5))
        world.contacts[n] = contact  # type: ignore[attr-defined]
    return world


def _contacts(world: World) -> dict[int, int]:
    found: dict[int, int] = world.contacts  # type: ignore[attr-defined]
    return found


def _completed(results: list[Any]) -> None:
    assert results[0].error is None, results[0].error
    assert results[0].outcome and results[0].outcome.completed, results[0].outcome


def _civi_removed(world: World) -> set[int]:
    return {n for n, c in _contacts(world).items() if world.civi_status(c) != "Added"}


def _mc_statuses(world: World) -> dict[str, str]:
    return {m["email_address"]: m["status"] for m in world.mc.members(world.list_id)}


def _not_subscribed(world: World, among: range = range(MEMBERS)) -> set[int]:
    statuses = _mc_statuses(world)
    return {n for n in among if statuses.get(_email(n)) not in ("subscribed", "pending")}


def _member_pages(world: World) -> int:
    path = f"/3.0/lists/{world.list_id}/members"
    return sum(1 for method, p in world.mc.request_log if method == "GET" and p == path)


def _archive(world: World, numbers: list[int]) -> Callable[[], None]:
    def action() -> None:
        for n in numbers:
            world.mc.set_member_status(world.list_id, _email(n), "archived")

    return action


def _forget(world: World, numbers: list[int]) -> Callable[[], None]:
    def action() -> None:
        for n in numbers:
            world.mc.forget_member(world.list_id, _email(n))

    return action


def _state(world: World) -> dict[str, Any]:
    with closing(sqlite3.connect(world.tmp_path / "state.sqlite3")) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM audience_state").fetchone()
        return dict(row)


def _budgeted_runs(
    world: World, ticks: int, *, between: Callable[[int], None] | None = None, **kwargs: Any
) -> Iterator[Any]:
    """Runs with a budget of ``ticks`` clock readings each, until one completes; yields each
    run's outcome. ``between(n)`` runs before invocation n (n >= 1)."""
    clock = iter(range(0, 10**7))
    for n in range(400):
        if between and n:
            between(n)
        budget = Budget(ticks, clock=lambda: float(next(clock)))
        results = world.sync(budget=budget, **kwargs)
        assert results[0].error is None, results[0].error
        yield results[0].outcome
        if results[0].outcome and results[0].outcome.completed:
            return
    raise AssertionError("the runs never completed")


def test_the_sim_pages_over_live_data_and_runs_churn_between_pages(churn_world: World) -> None:
    """The simulator's part: an archive between two pages moves later members up a place, so
    a plain offset walk misses exactly as many members as vanished."""
    world = churn_world
    world.mc.after_member_pages(2, _archive(world, [0, 1, 2]))
    seen: set[str] = set()
    offsets: list[int] = []
    from mcsync.api.mailchimp import MailchimpClient

    with MailchimpClient(
        account_name="main",
        api_key=world.config.mailchimp.accounts["main"].api_key.get_secret_value(),
        base_url="https://mailchimp.sim/3.0",
        budget=Budget(None),
        transport=world.transport,
        max_connections=1,
    ) as client:
        for offset, _, members in client.member_pages(world.list_id, page_size=PAGE_SIZE):
            offsets.append(offset)
            seen.update(m["email_address"] for m in members)
    assert offsets[-1] == 390  # the last page holds the 7 members left after 397
    missed = {_email(n) for n in range(MEMBERS)} - seen - {_email(n) for n in (0, 1, 2)}
    assert missed == {_email(n) for n in (20, 21, 22)}


def test_a_settled_range_is_paged_without_skipping_anyone(churn_world: World) -> None:
    """Members changed before a past moment only leave that range while it is read: each
    page that finds the range shrunk steps back by as much, so nobody is skipped, and only
    pages read with the range unchanged count as covering it."""
    world = churn_world
    world.mc.after_member_pages(1, _archive(world, [0, 1, 2]))
    world.mc.after_member_pages(3, _forget(world, [30, 31]))
    seen: list[str] = []
    covered: list[bool] = []
    from mcsync.api.mailchimp import MailchimpClient

    with MailchimpClient(
        account_name="main",
        api_key=world.config.mailchimp.accounts["main"].api_key.get_secret_value(),
        base_url="https://mailchimp.sim/3.0",
        budget=Budget(None),
        transport=world.transport,
        max_connections=4,
    ) as client:
        for whole, members in client.settled_member_pages(
            world.list_id,
            since_last_changed=world.ago(days=30),
            before_last_changed=world.ago(days=1),
            fields=("id", "email_address"),
            page_size=PAGE_SIZE,
        ):
            covered.append(whole)
            seen.extend(m["email_address"] for m in members)
    present = {_email(n) for n in range(MEMBERS)} - {_email(n) for n in (0, 1, 2, 30, 31)}
    assert present <= set(seen)
    assert set(seen) - present == {_email(n) for n in (0, 1, 2)}  # read before they left
    assert covered.count(False) == 2, covered
    assert len(seen) - len(set(seen)) <= 2 * PAGE_SIZE + 5  # a page again per step back


def test_members_archived_during_a_full_fetch_skip_nobody(churn_world: World) -> None:
    """(a) 400 members, pages of 10, 3 members archived after page 2: the members the offset
    shift skipped are confirmed present, not swept; over two full runs nobody else is Removed
    in CiviCRM or unsubscribed at Mailchimp. The 3 archived members are gone as before."""
    world = churn_world
    _completed(world.sync())  # the first sync: everyone agrees, every member staged
    assert _civi_removed(world) == set()

    world.mc.after_member_pages(2, _archive(world, [0, 1, 2]))
    _completed(world.sync(full=True))
    assert _civi_removed(world) == {0, 1, 2}
    assert _not_subscribed(world, range(3, MEMBERS)) == set()

    _completed(world.sync(full=True))
    assert _civi_removed(world) == {0, 1, 2}
    assert _not_subscribed(world, range(3, MEMBERS)) == set()
    assert {_mc_statuses(world).get(_email(n)) for n in (0, 1, 2)} == {"archived"}


def test_a_member_skipped_on_the_first_sync_is_read_before_it_is_subscribed(
    make_world: Callable[..., World],
) -> None:
    """On the first sync nothing is staged: a member the paging skipped looks like a contact
    Added in CiviCRM only, to be subscribed at Mailchimp. It is read directly first: members
    20-22 unsubscribed at Mailchimp after CiviCRM added them, so they are Removed in CiviCRM
    and stay unsubscribed (one page at a time, so the skipped members are known)."""
    skipped = frozenset({20, 21, 22})
    world = _churn_world(make_world(), unsubscribed=skipped, extra="max_connections = 1")
    world.mc.after_member_pages(2, _archive(world, [0, 1, 2]))
    _completed(world.sync())
    assert {_mc_statuses(world)[_email(n)] for n in skipped} == {"unsubscribed"}
    assert _civi_removed(world) == {0, 1, 2} | skipped
    assert _not_subscribed(world) == {0, 1, 2} | skipped
    before = len(world.writes())
    _completed(world.sync(full=True))
    assert world.writes()[before:] == []


def test_members_who_change_during_the_first_fetch_are_read_in_the_same_run(
    churn_world: World,
) -> None:
    """(b) On the first sync, members who unsubscribe while the fetch pages move to the
    already-read end; a new subscriber appears there too. They are read before reconciling:
    the unsubscribes reach CiviCRM in the same run and are never re-subscribed, the new
    subscriber gets a contact, and nobody else changes."""
    world = churn_world
    changers = [0, 397, 398, 399]  # one already read, three not yet read

    def churn() -> None:
        for n in changers:
            world.mc.set_member_status(world.list_id, _email(n), "unsubscribed")
        world.mc.seed_member(world.list_id, "new@example.org", "subscribed", last_changed=None)

    world.mc.after_member_pages(2, churn)
    _completed(world.sync())
    assert _civi_removed(world) == set(changers)
    assert _not_subscribed(world) == set(changers)
    assert {_mc_statuses(world)[_email(n)] for n in changers} == {"unsubscribed"}
    new = world.civi.query("SELECT contact_id FROM email WHERE email = 'new@example.org'")
    assert len(new) == 1 and world.civi_status(new[0]["contact_id"]) == "Added"
    before = len(world.writes())
    _completed(world.sync(full=True))
    assert world.writes()[before:] == []


def test_members_who_change_during_a_later_full_fetch_are_read_in_the_same_run(
    churn_world: World,
) -> None:
    """(b) The same on a full run over a staged audience: a member read before it changed,
    and members who moved to the read end before they were read."""
    world = churn_world
    _completed(world.sync())
    changers = [5, 390, 391]

    def churn() -> None:
        for n in changers:
            world.mc.set_member_status(world.list_id, _email(n), "unsubscribed")

    world.mc.after_member_pages(3, churn)
    _completed(world.sync(full=True))
    assert _civi_removed(world) == set(changers)
    assert _not_subscribed(world) == set(changers)


def test_churn_during_a_full_fetch_spread_over_budgeted_runs(churn_world: World) -> None:
    """(c) A full fetch cut by --max-time and resumed by later runs, with members archived
    between runs and during one: only they are gone; nobody else is Removed or unsubscribed,
    and members who unsubscribed meanwhile are read in the same run."""
    world = churn_world
    _completed(world.sync())

    stages: list[str] = []

    def between(n: int) -> None:
        stages.append(_state(world)["stage"])
        if n == 1:
            _archive(world, [0, 1, 2])()
            world.mc.set_member_status(world.list_id, _email(399), "unsubscribed")
        if n == 2:
            world.mc.after_member_pages(1, _archive(world, [3, 4]))

    # 30 clock readings a run (one per request, one per page saved) end the first runs
    # part-way through the 40 pages.
    outcomes = list(_budgeted_runs(world, 30, between=between, full=True))
    assert len(outcomes) > 2
    assert stages[:2] == ["fetch_mailchimp", "fetch_mailchimp"], stages
    assert _civi_removed(world) == {0, 1, 2, 3, 4, 399}
    assert _not_subscribed(world) == {0, 1, 2, 3, 4, 399}
    _completed(world.sync(full=True))
    assert _civi_removed(world) == {0, 1, 2, 3, 4, 399}
    assert _not_subscribed(world) == {0, 1, 2, 3, 4, 399}


def test_hundreds_vanish_mid_fetch_all_confirmed_and_the_brake_still_applies(
    churn_world: World,
) -> None:
    """(d) After 25 pages, 150 members already read are archived and 100 not yet read are
    deleted permanently: the rest move up 250 places and about 150 unread members are
    skipped by the offset walk. Each missing member is confirmed: the 250 are gone, nobody
    skipped is. Removing 250 of 400 trips the brake as it always has; allowed, exactly those
    250 are Removed in CiviCRM and nobody is unsubscribed at Mailchimp."""
    world = churn_world
    _completed(world.sync())
    archived, deleted = list(range(0, 150)), list(range(300, 400))

    def churn() -> None:
        _archive(world, archived)()
        _forget(world, deleted)()

    world.mc.after_member_pages(25, churn)
    results = world.sync(full=True)
    assert isinstance(results[0].error, MassChangeBrake), results[0]
    assert "remove 250 of 400" in str(results[0].error)
    assert _civi_removed(world) == set()

    _completed(world.sync(allow_mass_changes=True))
    assert _civi_removed(world) == set(archived + deleted)
    assert _not_subscribed(world, range(150, 300)) == set()
    _completed(world.sync(full=True))
    assert _civi_removed(world) == set(archived + deleted)
    assert _not_subscribed(world, range(150, 300)) == set()


def test_confirmation_resumes_when_the_budget_ends_mid_way(churn_world: World) -> None:
    """(d) Hundreds to confirm, the budget ending part-way through the confirmation: the
    confirmed rows are kept, the rest are confirmed by the next runs, and only members
    confirmed gone are swept."""
    world = churn_world
    _completed(world.sync())
    deleted = list(range(100, 300))
    world.mc.after_member_pages(1, _forget(world, deleted))
    stages: list[str] = []
    outcomes = list(
        _budgeted_runs(
            world,
            100,
            between=lambda n: stages.append(_state(world)["stage"]),
            full=True,
            allow_mass_changes=True,
        )
    )
    assert outcomes[-1].completed
    assert stages.count("confirm_vanished") >= 2, stages
    assert _civi_removed(world) == set(deleted)
    assert _not_subscribed(world, range(0, 100)) | _not_subscribed(world, range(300, 400)) == set()


class CrashAfter(httpx.BaseTransport):
    """Kill the run (an exception nothing catches) when the ``after``-th request matching
    ``wanted`` is about to be sent, as a SIGKILL between two committed chunks would."""

    def __init__(
        self, inner: httpx.BaseTransport, wanted: Callable[[httpx.Request], bool], after: int
    ):
        self.inner, self.wanted, self.left = inner, wanted, after

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.wanted(request):
            self.left -= 1
            if self.left == 0:
                raise RuntimeError("killed")
        return self.inner.handle_request(request)


def _is_member_get(request: httpx.Request) -> bool:
    parts = request.url.path.rstrip("/").split("/")
    return request.method == "GET" and len(parts) == 6 and parts[-2] == "members"


def test_confirmation_killed_mid_way_resumes_without_redoing_committed_chunks(
    churn_world: World,
) -> None:
    """A run killed while confirming: the chunks committed before the kill are kept, the
    next run confirms the rest, and only the members confirmed gone are swept."""
    world = churn_world
    _completed(world.sync())
    deleted = list(range(100, 300))
    world.mc.after_member_pages(1, _forget(world, deleted))
    plain = world.transport
    world.transport = CrashAfter(plain, _is_member_get, 35)  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="killed"):
        world.sync(full=True, allow_mass_changes=True)
    state = _state(world)
    assert state["stage"] == "confirm_vanished" and state["cursor"] > 0, state
    assert _civi_removed(world) == set()
    with closing(sqlite3.connect(world.tmp_path / "state.sqlite3")) as db:
        db.execute("UPDATE audience_state SET lease_expires = 0")
        db.commit()

    world.transport = plain
    before = [r for r in world.mc.request_log if r[0] == "GET" and "/members/" in r[1]]
    _completed(world.sync(allow_mass_changes=True))
    after = [r for r in world.mc.request_log if r[0] == "GET" and "/members/" in r[1]]
    assert len(after) - len(before) <= len(deleted) - 30 + 10
    assert _civi_removed(world) == set(deleted)
    assert _not_subscribed(world, range(0, 100)) | _not_subscribed(world, range(300, 400)) == set()


def test_a_full_run_without_churn_costs_at_most_two_extra_requests(churn_world: World) -> None:
    """(e) Nothing vanished and nothing changed: confirming costs nothing beyond one look for
    changes made during the fetch (and no member GETs)."""
    world = churn_world
    _completed(world.sync())
    before = len(world.mc.request_log)
    pages_before = _member_pages(world)
    _completed(world.sync(full=True))
    requests = world.mc.request_log[before:]
    pages = _member_pages(world) - pages_before
    assert pages - MEMBERS // PAGE_SIZE <= 2, pages
    single_gets = [r for r in requests if r[0] == "GET" and "/members/" in r[1]]
    assert single_gets == []
    assert len(requests) - MEMBERS // PAGE_SIZE <= 2, requests


def test_a_member_absent_only_because_it_was_skipped_is_kept(churn_world: World) -> None:
    """The rule itself, on the staged rows: after a full run with churn, only the archived
    members are staged as gone, and every other member was seen by this run (read in a page,
    or confirmed by a direct read)."""
    world = churn_world
    _completed(world.sync())
    world.mc.after_member_pages(2, _archive(world, [0, 1, 2]))
    _completed(world.sync(full=True))
    with closing(sqlite3.connect(world.tmp_path / "state.sqlite3")) as db:
        last_run = db.execute("SELECT run_id FROM audience_state").fetchone()[0]
        staged = dict(db.execute("SELECT mc_email, mc_status FROM rows").fetchall())
        unseen = {
            r[0]
            for r in db.execute(
                "SELECT mc_email FROM rows WHERE mc_seen_run IS NOT ? AND mc_status != 'archived'",
                (last_run,),
            )
        }
    assert {e for e, status in staged.items() if status == "archived"} == {
        _email(n) for n in (0, 1, 2)
    }
    assert unseen == set()


# -- incremental runs --------------------------------------------------------------------
# An incremental run pages only the members changed since its window, the same way. A member
# the offset walk skips there is not read again by a later full fetch soon: if its change is
# older than the next run's window, the change is lost (until a full run). So a window that
# took more than one page is looked at again; one that fits in a page cannot skip anyone.

WINDOW = range(0, 30)  # the members who unsubscribed at Mailchimp inside the window


@contextmanager
def _mailchimp_clock_at(world: World, moment: datetime) -> Iterator[None]:
    """Changes made at Mailchimp inside the block carry ``moment`` as their time."""
    real = world.mc._clock
    world.mc._clock = lambda: moment
    try:
        yield
    finally:
        world.mc._clock = real


def _previous_run_was(world: World, ago: timedelta) -> None:
    """The previous run started ``ago`` (cron was down): the next window reaches back that far."""
    with closing(sqlite3.connect(world.tmp_path / "state.sqlite3")) as db:
        db.execute(
            "UPDATE audience_state SET last_run_started = ?",
            ((datetime.now(UTC) - ago).isoformat(),),
        )
        db.commit()


@pytest.fixture
def incremental_world(make_world: Callable[..., World]) -> World:
    """The churn world after its first sync, one page in flight at a time; the previous run
    was a day ago, and members 0-29 unsubscribed at Mailchimp 5 hours ago: the next
    incremental window holds those 30 (3 pages), all older than that run's own overlap."""
    world = _churn_world(make_world(), extra="max_connections = 1")
    _completed(world.sync())
    _previous_run_was(world, timedelta(days=1))
    with _mailchimp_clock_at(world, world.ago(hours=5)):
        for n in WINDOW:
            world.mc.set_member_status(world.list_id, _email(n), "unsubscribed")
    return world


def _assert_window_reached_civicrm(world: World, also: frozenset[int] = frozenset()) -> None:
    """Every unsubscribe in the window (and ``also``) reached CiviCRM; nobody else moved."""
    assert _civi_removed(world) == set(WINDOW) | also
    assert _not_subscribed(world) == set(WINDOW) | also


def test_a_member_archived_during_incremental_paging_skips_nobody(incremental_world: World) -> None:
    """Member 29 (read on page 1) is archived after page 1: the others move up a place and
    the offset walk skips one. It is still read in the same run, so every unsubscribe in the
    window reaches CiviCRM, and stays there after the next run."""
    world = incremental_world
    world.mc.after_member_pages(1, _archive(world, [29]))
    _completed(world.sync(allow_mass_changes=True))
    _assert_window_reached_civicrm(world)
    _completed(world.sync(allow_mass_changes=True))
    _assert_window_reached_civicrm(world)


def test_a_member_deleted_during_incremental_paging_skips_nobody(incremental_world: World) -> None:
    """The same with members deleted permanently (a GDPR erasure) after page 2."""
    world = incremental_world
    world.mc.after_member_pages(2, _forget(world, [29, 25]))
    _completed(world.sync(allow_mass_changes=True))
    assert _civi_removed(world) == set(WINDOW)
    assert _not_subscribed(world, range(30, MEMBERS)) == set()
    _completed(world.sync(allow_mass_changes=True))
    assert _civi_removed(world) == set(WINDOW)


def test_members_who_change_during_incremental_paging_are_read_in_the_same_run(
    incremental_world: World,
) -> None:
    """Members who change while the window is paged move to the already-read end: one from
    outside the window (350), one not yet read (3); with one archived meanwhile. All are read
    before reconciling: their unsubscribes reach CiviCRM in the same run, nobody is skipped."""
    world = incremental_world

    def churn() -> None:
        for n in (350, 3):
            world.mc.set_member_status(world.list_id, _email(n), "unsubscribed")
        _archive(world, [28])()

    world.mc.after_member_pages(1, churn)
    _completed(world.sync(allow_mass_changes=True))
    _assert_window_reached_civicrm(world, frozenset({350}))


def test_churn_during_an_incremental_fetch_spread_over_budgeted_runs(
    incremental_world: World,
) -> None:
    """An incremental run cut by its budget and resumed: members archived between the runs
    and while a page is read, members deleted while the window is looked at again. Every
    unsubscribe in the window reaches CiviCRM; nobody else is Removed or unsubscribed."""
    world = incremental_world
    stages: list[str] = []
    skipped_cursors: list[int] = []

    def between(n: int) -> None:
        state = _state(world)
        stages.append(state["stage"])
        if state["stage"] == "fetch_mailchimp_skipped":
            skipped_cursors.append(state["cursor"])
        if n == 1:
            _archive(world, [29, 28])()
        if n == 2:
            world.mc.after_member_pages(1, _forget(world, [27]))

    # 11 clock readings a run (one per request, each by the thread that issues it, so the
    # same every time) stop the runs in these stages: the window's changes all share one
    # second, so its first answer (page 1) cannot split it by time and the look from that
    # second on is paged by offsets, then looked over; one run stops after looking it over
    # down to a time, and the next goes on from there.
    outcomes = list(_budgeted_runs(world, 11, between=between, allow_mass_changes=True))
    assert len(outcomes) > 4
    assert stages[:3] == [
        "fetch_mailchimp_changed",
        "fetch_mailchimp_changed",
        "fetch_mailchimp_skipped",
    ]
    assert skipped_cursors and skipped_cursors[0] > 0, skipped_cursors
    assert _civi_removed(world) == set(WINDOW)
    assert _not_subscribed(world) == set(WINDOW)
    _completed(world.sync(allow_mass_changes=True))
    assert _civi_removed(world) == set(WINDOW)


def _window_spread_over_seconds(
    make_world: Callable[..., World], size: int
) -> tuple[World, set[int], datetime]:
    """The churn world after its first sync (one page in flight at a time, the previous run a
    day ago), then members 0..size-1 unsubscribed at Mailchimp 5 hours ago, member n at second
    n after ``base``: (world, those members, base)."""
    world = _churn_world(make_world(), extra="max_connections = 1")
    _completed(world.sync())
    _previous_run_was(world, timedelta(days=1))
    base = world.ago(hours=5).replace(microsecond=0)
    for n in range(size):
        with _mailchimp_clock_at(world, base + timedelta(seconds=n)):
            world.mc.set_member_status(world.list_id, _email(n), "unsubscribed")
    return world, set(range(size)), base


def test_a_window_spread_over_seconds_is_read_without_skips_across_budgeted_runs(
    make_world: Callable[..., World],
) -> None:
    """The window's changes lie in different seconds: its first answer splits it, and the part
    older than that answer's oldest second is read one page at a time, stepping back when it
    shrank, by runs cut by their budget part-way through it. Members are archived between
    the runs and deleted while a page is read: every unsubscribe in the window reaches
    CiviCRM, and each run goes on down from the time the last one covered."""
    world, window, base = _window_spread_over_seconds(make_world, 60)
    seen: list[tuple[str, int, bool]] = []

    def between(n: int) -> None:
        state = _state(world)
        seen.append((state["stage"], state["cursor"], bool(state["mc_newest"])))
        covered = int(state["cursor"] - base.timestamp())  # read down to member `covered`
        if n == 1:
            _archive(world, [covered + 1, covered + 2])()  # read already
            # read by this run's first page, then deleted: the unread members move up a place
            world.mc.after_member_pages(1, _forget(world, [covered - 3]))

    outcomes = list(_budgeted_runs(world, 9, between=between, allow_mass_changes=True))
    assert len(outcomes) > 3
    inside = [cursor for stage, cursor, newest in seen if stage == "fetch_mailchimp" and newest]
    assert len(inside) >= 2 and inside == sorted(inside, reverse=True) and inside[-1] < inside[0]
    assert _civi_removed(world) == window
    assert _not_subscribed(world) == window
    _completed(world.sync(allow_mass_changes=True))
    assert _civi_removed(world) == window


def test_a_member_deleted_while_the_settled_window_is_read_skips_nobody(
    make_world: Callable[..., World],
) -> None:
    """The window's older part is read one page at a time: member 45, read on its first page
    (50-41), is deleted before the next, so every unread member moves up a place. The next
    page steps back by one instead of skipping member 40: every unsubscribe still in the
    audience reaches CiviCRM in one run."""
    world, window, base = _window_spread_over_seconds(make_world, 60)
    world.mc.after_member_pages(2, _forget(world, [45]))  # after the first page, then this one
    _completed(world.sync(allow_mass_changes=True))
    assert _civi_removed(world) == window


def test_a_window_spread_over_seconds_costs_one_page_more_than_its_size(
    make_world: Callable[..., World],
) -> None:
    """Nobody changes while it is read: a window of 30 changes in 30 seconds, 10 a page, is
    read by its first page, the three pages of its settled part (the first page's oldest
    second again, then on down: one page of the settled part holds what the first page held
    below its newest second, so 3 + 1 in all), one look from the newest second on, the
    archived members' page, and one light page of ids over the newest second (older than the
    run's start less the margin, so looked over as a look paged by offsets is): no second
    listing of the window."""
    world, _, _ = _window_spread_over_seconds(make_world, len(WINDOW))
    members = ("GET", f"/3.0/lists/{world.list_id}/members")
    before = len(world.mc.request_log)
    _completed(world.sync(allow_mass_changes=True))
    reads = [r for r in world.mc.request_log[before:] if r == members]
    assert len(reads) == 1 + 3 + 1 + 1 + 1, len(reads)
    assert _civi_removed(world) == set(WINDOW)


def test_an_incremental_window_of_one_page_costs_one_extra_request(churn_world: World) -> None:
    """A window that fits in one page is read by one request, which cannot skip anyone: an
    incremental run with nothing changed, or a few changes, reads one member page, and one
    page of the members archived in its window (which the member list leaves out), and
    nothing else at Mailchimp beyond its writes."""
    world = churn_world
    members = ("GET", f"/3.0/lists/{world.list_id}/members")
    _completed(world.sync())
    before = len(world.mc.request_log)
    _completed(world.sync())
    assert world.mc.request_log[before:] == [members, members]

    for n in (5, 6, 7):
        world.mc.set_member_status(world.list_id, _email(n), "unsubscribed")
    before = len(world.mc.request_log)
    _completed(world.sync())
    reads = [r for r in world.mc.request_log[before:] if r[0] == "GET"]
    assert reads == [members, members]
    assert _civi_removed(world) == {5, 6, 7}


def test_an_incremental_window_of_several_pages_without_churn_costs_four_requests(
    incremental_world: World,
) -> None:
    """A window of 3 pages whose changes share one second, with nothing vanishing: its first
    answer cannot split it by time, so beyond its 3 pages it takes one page of what is older
    than that second (empty), one for members archived meanwhile, one light page of ids over
    the second (paged by offsets); no member GETs."""
    world = incremental_world
    before = len(world.mc.request_log)
    pages_before = _member_pages(world)
    _completed(world.sync(allow_mass_changes=True))
    requests = world.mc.request_log[before:]
    assert _member_pages(world) - pages_before == 3 + 4, requests
    assert [r for r in requests if r[0] == "GET" and "/members/" in r[1]] == []
    _assert_window_reached_civicrm(world)

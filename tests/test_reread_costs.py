"""What a run reads again, and what it need not (issue 12): reads a run can show to be
redundant are left out, and the reads the consent invariant needs (DESIGN §4: never act on
stale or half-read data) stay.

- An incremental window whose first answer said it held no more than one page was read in
  that one answer, which cannot skip anyone: no second look, even when the page was full.
  A full page whose answer said more was behind it is looked at again as before.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from conftest import World
from test_paging_churn import (
    MEMBERS,
    PAGE_SIZE,
    _archive,
    _churn_world,
    _civi_removed,
    _completed,
    _email,
    _mailchimp_clock_at,
    _not_subscribed,
    _previous_run_was,
)

from mcsync.stages import batches


def _window_world(make_world: Callable[..., World], size: int) -> World:
    """The churn world after its first sync, one page in flight at a time; the previous run
    was a day ago, and members 0..size-1 unsubscribed at Mailchimp about 5 hours ago, member n
    n minutes before member 0 (so member 0 is first in the window, newest first)."""
    world = _churn_world(make_world(), extra="max_connections = 1")
    _completed(world.sync())
    _previous_run_was(world, timedelta(days=1))
    for n in range(size):
        with _mailchimp_clock_at(world, world.ago(hours=5, minutes=n)):
            world.mc.set_member_status(world.list_id, _email(n), "unsubscribed")
    return world


def _mailchimp_gets(world: World, since: int) -> list[tuple[str, str]]:
    return [r for r in world.mc.request_log[since:] if r[0] == "GET"]


def test_a_window_of_exactly_one_full_page_costs_no_second_look(
    make_world: Callable[..., World],
) -> None:
    """Ten changes, a page of ten: the first answer's total_items (10) says the page held
    the whole window. One member page and one page of archived members, nothing else."""
    world = _window_world(make_world, PAGE_SIZE)
    members = ("GET", f"/3.0/lists/{world.list_id}/members")
    before = len(world.mc.request_log)
    _completed(world.sync(allow_mass_changes=True))
    assert _mailchimp_gets(world, before) == [members, members]
    assert _civi_removed(world) == set(range(PAGE_SIZE))
    assert _not_subscribed(world) == set(range(PAGE_SIZE))


def test_a_full_first_page_of_a_larger_window_is_still_looked_at_again(
    make_world: Callable[..., World],
) -> None:
    """Eleven changes, a page of ten: the first answer says 11. A member of the first page is
    archived before the second page is read, so the eleventh moves up into the first page's
    range and the second page comes back empty: the offset walk read only one full page. The
    window is looked at again (its total said more was behind the page), so the eleventh
    unsubscribe still reaches CiviCRM in this run. Counting a full page as the whole window
    would lose it."""
    world = _window_world(make_world, PAGE_SIZE + 1)
    world.mc.after_member_pages(1, _archive(world, [0]))
    _completed(world.sync(allow_mass_changes=True))
    assert _civi_removed(world) == set(range(PAGE_SIZE + 1))
    assert _not_subscribed(world, range(1, MEMBERS)) == set(range(1, PAGE_SIZE + 1))


# -- contacts mcsync created ------------------------------------------------------------------
# A contact mcsync creates (for a member subscribed only at Mailchimp) is modified after the
# run's CiviCRM mark, so the next run's modified-contacts window holds it. Unless something
# modified it since its creation, the run need not read its emails again nor decide its row.


def _created_by_mcsync(world: World) -> list[int]:
    return [
        int(r["id"])
        for r in world.civi.query("SELECT id FROM contact WHERE source = 'mcsync' ORDER BY id")
    ]


def _civicrm_calls(world: World, since: int, call: str) -> int:
    return sum(1 for _, p in world.civi.request_log[since:] if p == call)


def _owner(world: World, email: str) -> int:
    [row] = world.civi.query("SELECT contact_id FROM email WHERE email = ?", (email,))
    return int(row["contact_id"])


def _first_sync_creating(world: World, emails: list[str]) -> list[int]:
    """Members subscribed only at Mailchimp, synced once: mcsync creates their contacts. One
    person is on both sides from the start, and CiviCRM's contacts were last edited days ago
    (outside the next run's window but for what the sync itself does)."""
    known = world.person("known@example.org", mc="subscribed", civi="Added")
    assert known is not None
    world.civi.update_contact(known, when=world.ago(days=30))  # edited long ago
    unrelated = world.civi.add_contact("Un", "Related")  # the newest edit before the sync
    world.civi.update_contact(unrelated, when=world.ago(days=10))
    for email in emails:
        world.person(email, mc="subscribed")
    _completed(world.sync())
    created = _created_by_mcsync(world)
    assert len(created) == len(emails)
    assert all(world.civi_status(c) == "Added" for c in created)
    return created


def test_contacts_mcsync_created_are_not_read_back_by_the_next_run(world: World) -> None:
    """Nothing changed since the first sync: the next run reads no contact's emails (it used
    to read back every contact the first sync created) and writes nothing."""
    _first_sync_creating(world, ["new1@example.org", "new2@example.org"])
    world.advance_clock(minutes=10)
    before_civi, writes = len(world.civi.request_log), len(world.writes())
    _completed(world.sync())
    assert _civicrm_calls(world, before_civi, "Email.get") == 0
    assert len(world.writes()) == writes


def test_a_contact_mcsync_created_and_staff_edited_since_is_read_again(world: World) -> None:
    """Staff give the created contact a new bulk-mail address after the first sync: its
    modified_date moves past its created_date, so the next run reads its emails and moves the
    member to the new address; staff trash the other created contact: the next run reads that
    too, and its member (still subscribed) gets a new contact, Added (trash is no choice).
    Treating every contact mcsync created as unchanged would miss both."""
    _first_sync_creating(world, ["new1@example.org", "new2@example.org"])
    first, second = (_owner(world, "new1@example.org"), _owner(world, "new2@example.org"))
    world.advance_clock(minutes=10)
    world.civi.add_email(first, "moved@example.org", is_primary=False, is_bulkmail=True)
    world.civi.delete_contact(second)
    world.advance_clock(minutes=10)
    _completed(world.sync())
    assert world.mc.member(world.list_id, "new1@example.org") is None
    assert world.mc_status("moved@example.org") == "subscribed"
    assert world.civi_status(first) == "Added"
    replacement = [c for c in _created_by_mcsync(world) if c not in (first, second)]
    assert len(replacement) == 1
    assert world.civi_status(replacement[0]) == "Added"
    assert world.mc_status("new2@example.org") == "subscribed"


# -- polling batches --------------------------------------------------------------------------


def test_open_batches_are_polled_with_one_list_request_a_round(
    make_world: Callable[..., World], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six CiviCRM-only contacts to subscribe, two operations a batch: three batches open at
    once are polled by one ``GET /batches`` a round, not one ``GET /batches/{id}`` each; all
    six are subscribed and nothing is left open."""
    monkeypatch.setattr(batches, "BATCH_SIZE", 2)
    world = make_world(batch_threshold=2)
    for n in range(6):
        world.person(f"c{n}@example.org", civi="Added")
    _completed(world.sync())
    assert [world.mc_status(f"c{n}@example.org") for n in range(6)] == ["subscribed"] * 6
    posts = [
        p for m, p in world.mc.request_log if m == "POST" and p.rstrip("/").endswith("/batches")
    ]
    assert len(posts) == 3
    polls = [p for m, p in world.mc.request_log if m == "GET" and "/batches" in p]
    assert polls == ["/3.0/batches"], polls


def test_contacts_are_created_write_chunk_a_request(world: World) -> None:
    """300 members subscribed only at Mailchimp: one Contact.save creates their contacts
    (`[civicrm] write_chunk` a request, 2500 by default, as every other bulk write; it was
    200, then 500; tests/test_civicrm_chunks.py has more)."""
    for n in range(300):
        world.person(f"only{n}@example.org", mc="subscribed")
    _completed(world.sync())
    assert len(_created_by_mcsync(world)) == 300
    assert _civicrm_calls(world, 0, "Contact.save") == 1

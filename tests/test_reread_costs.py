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

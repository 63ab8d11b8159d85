"""Lookups by a chunk of ids or addresses use their index, whatever the audience's size: a
query that walked every member row per chunk made the 1M mixed initial sync's reconcile
quadratic (SQLite chose the (list_id, mc_hash) key for `mc_hash IS NOT NULL` over the
contact index). Measured in SQLite's own virtual-machine steps, which do not depend on the
machine: ten times the member rows must not cost ten times as much."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcsync.store.database import Staging

LIST = "list1"
T = "2026-01-01T00:00:00+00:00"


def _steps(
    tmp_path: Path,
    members: int,
    lookup: Callable[[Staging], Any],
    finds: int = 10,
    setup: Callable[[Staging], None] | None = None,
) -> int:
    """SQLite steps (in hundreds) one lookup (of ``finds`` members) takes among ``members``
    rows (after ``setup``, not counted)."""
    staging = Staging(tmp_path / f"{members}.sqlite3")
    try:
        with staging.atomic():
            staging.insert_members(
                [
                    (
                        LIST,
                        f"h{n}",
                        f"p{n}@example.org",
                        "subscribed",
                        T,
                        T,
                        "",
                        "",
                        "{}",
                        "{}",
                        f"u{n}",
                        None,
                        None,
                    )  # fmt: skip
                    for n in range(members)
                ]
            )
            staging.execute("UPDATE rows SET contact_id = id")
            if setup is not None:
                setup(staging)
        steps = 0

        def count() -> int:
            nonlocal steps
            steps += 1
            return 0

        staging.conn.set_progress_handler(count, 100)
        found = lookup(staging)
        staging.conn.set_progress_handler(None, 0)
        assert len(found) == finds
        return steps
    finally:
        staging.close()


def _grows_slowly(
    tmp_path: Path,
    lookup: Callable[[Staging], Any],
    finds: int = 10,
    setup: Callable[[Staging], None] | None = None,
) -> None:
    small = _steps(tmp_path, 2_000, lookup, finds, setup)
    large = _steps(tmp_path, 20_000, lookup, finds, setup)
    assert large <= 2 * small + 5, (small, large)


def test_member_rows_of_contacts_uses_the_contact_index(tmp_path: Path) -> None:
    _grows_slowly(tmp_path, lambda s: s.member_rows_of_contacts(LIST, list(range(1, 11))))


def test_member_addresses_uses_the_address_index(tmp_path: Path) -> None:
    addresses = [f"p{n}@example.org" for n in range(10)]
    _grows_slowly(tmp_path, lambda s: s.member_addresses(LIST, addresses))


def test_tags_to_push_reads_no_member_row_without_fed_tags(tmp_path: Path) -> None:
    """No feed gives tags (contact_data holds none): every run's tag stage answers at once
    instead of joining every subscribed member to contact_data."""
    _grows_slowly(tmp_path, lambda s: s.tags_to_push(LIST, 0, 500), finds=0)


def test_dropping_contact_rows_looks_up_only_their_contacts(tmp_path: Path) -> None:
    """Ten contact-only rows whose contacts have member rows are dropped by looking up those
    ten contacts, not by listing every member row's contact first."""

    def drop(staging: Staging) -> list[Any]:
        staging.conn.executemany(
            "INSERT INTO rows (list_id, contact_id) VALUES (?, ?)",
            [(LIST, n) for n in range(1, 11)],
        )
        staging.drop_contact_rows_with_members(LIST)
        return staging.query("SELECT id FROM rows WHERE list_id = ? AND mc_hash IS NULL", (LIST,))

    _grows_slowly(tmp_path, drop, finds=0)


def test_listing_contacts_to_date_chunk_by_chunk_costs_one_pass(tmp_path: Path) -> None:
    """The history stage asks for the contacts to date 100 at a time: walking all of them
    costs about ten times as much among ten times the rows, not a hundred times (each chunk
    listing them afresh read every row to decide: four minutes of the 1M mixed first sync)."""

    def walk(staging: Staging) -> list[int]:
        seen: list[int] = []
        while chunk := staging.contacts_to_date(LIST, 1, {}, seen[-1] if seen else 0, 100):
            seen.extend(chunk)
        assert seen == sorted(set(seen))
        return seen[:10]

    small, large = _steps(tmp_path, 2_000, walk), _steps(tmp_path, 20_000, walk)
    assert large <= 15 * small, (small, large)


def test_listing_email_change_candidates_chunk_by_chunk_costs_one_pass(tmp_path: Path) -> None:
    """Every contact has a new primary address: the rows whose address may follow it are
    walked 100 at a time in about one pass of the member rows (two and a half minutes of
    the 1M mixed first sync went to listing them afresh for each chunk)."""

    def walk(staging: Staging) -> list[Any]:
        count = staging.scalar("SELECT count(*) FROM rows")
        staging.conn.executemany(
            "INSERT INTO emails (contact_id, email, email_lc, is_primary) VALUES (?, ?, ?, 1)",
            [(n, f"new{n}@example.org", f"new{n}@example.org") for n in range(1, count + 1)],
        )
        seen: list[Any] = []
        while chunk := staging.email_change_candidates(
            LIST, seen[-1]["id"] if seen else 0, 100, modified_from=None
        ):
            seen.extend(chunk)
        assert len(seen) == count
        return seen[:10]

    small, large = _steps(tmp_path, 2_000, walk), _steps(tmp_path, 20_000, walk)
    assert large <= 15 * small, (small, large)


def test_the_civicrm_write_queue_is_worked_through_in_one_pass(tmp_path: Path) -> None:
    """Group writes queued for every contact, then taken 100 at a time and forgotten, as
    push_civicrm does: about ten times the cost for ten times the queue (each chunk sorted
    the whole queue by id before its index on (list_id, kind, id))."""

    def work(staging: Staging) -> list[int]:
        count = staging.scalar("SELECT count(*) FROM rows")
        for contact in range(1, count + 1):
            staging.plan_hold(LIST, contact, f"p{contact}@example.org")
            staging.plan_group_write(LIST, contact, 1, "Added", T)
        done: list[int] = []
        while chunk := staging.next_civi_writes(LIST, "group", 100):
            staging.forget_civi_writes([w["id"] for w in chunk])
            done.extend(w["contact_id"] for w in chunk)
        assert len(done) == count
        return done[:10]

    small, large = _steps(tmp_path, 2_000, work), _steps(tmp_path, 20_000, work)
    assert large <= 15 * small, (small, large)


def test_addresses_claimed_looks_up_only_those_addresses(tmp_path: Path) -> None:
    """Reconcile asks, chunk by chunk, which of a chunk's addresses an open subscribe
    claims: the answer comes from the open updates by folded address, not from reading
    every open update (which grew with the queue as reconcile went on)."""

    def queue_subscribes(staging: Staging) -> None:
        count = staging.scalar("SELECT count(*) FROM rows")
        staging.conn.executemany(
            "INSERT INTO rows (list_id, contact_id) VALUES (?, ?)",
            [(LIST, 10**6 + n) for n in range(count)],
        )
        for row in staging.query("SELECT id, contact_id FROM rows WHERE mc_hash IS NULL"):
            staging.queue_update(LIST, row["id"], f"c{row['contact_id']}@example.org", "{}", T, T)

    _grows_slowly(
        tmp_path,
        lambda s: s.addresses_claimed(LIST, [f"c{10**6 + n}@example.org" for n in range(10)]),
        setup=queue_subscribes,
    )


def test_a_hold_written_marks_its_cleaned_member_by_contact_and_address(tmp_path: Path) -> None:
    """Every member cleaned: marking ten holds written looks up those ten rows, not every
    cleaned member (an index on (list_id, mc_status) drew SQLite to walk them all, for each
    hold: quadratic in the 1M mixed first sync)."""

    def clean_all(staging: Staging) -> None:
        staging.execute("UPDATE rows SET mc_status = 'cleaned'")

    def mark(staging: Staging) -> list[Any]:
        for n in range(1, 11):
            staging.mark_cleaned_held(LIST, n, f"p{n - 1}@example.org")
        return staging.query(
            "SELECT id FROM rows WHERE id <= 10 AND cleaned_handled_at IS NOT NULL"
        )

    _grows_slowly(tmp_path, mark, setup=clean_all)

"""The write queues' transitions (mcsync.store.queues) keep the consent rules they exist for
(DESIGN §4): an update is sent at most once — once it may have reached Mailchimp it is never
queued again, except by the explicit unmark after a request that was refused or never left —
a batch's updates are completed only from that batch's results, and a closed update never
opens again. Each rule is checked on a real staging DB, and the whole set as a property over
random sequences of every transition.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcsync.store.database import Staging
from mcsync.store.states import BatchState, RowState, UpdateState

LIST = "list1"
AT = "2026-11-01T12:00:00+00:00"
BODY = '{"status":"subscribed"}'


@pytest.fixture
def staging(tmp_path: Path) -> Iterator[Staging]:
    store = Staging(tmp_path / "state.sqlite3")
    store.ensure_audience(LIST, 1, "account")
    yield store
    store.close()


def add_row(staging: Staging, n: int = 0) -> int:
    cursor = staging.conn.execute(
        "INSERT INTO rows (list_id, mc_hash, mc_email, sync_status) VALUES (?, ?, ?, ?)",
        (LIST, f"hash{n}", f"person{n}@example.org", RowState.LIVE),
    )
    return int(cursor.lastrowid or 0)


def queue(staging: Staging, row_id: int, at: str = AT) -> int:
    staging.queue_update(LIST, row_id, f"row{row_id}@example.org", BODY, at, at)
    return int(staging.conn.execute("SELECT MAX(id) FROM updates").fetchone()[0])


def state(staging: Staging, update_id: int) -> UpdateState:
    found = staging.conn.execute("SELECT state FROM updates WHERE id = ?", (update_id,))
    return UpdateState(found.fetchone()[0])


def states(staging: Staging) -> dict[int, tuple[UpdateState, int | None]]:
    return {
        r[0]: (UpdateState(r[1]), r[2])
        for r in staging.conn.execute("SELECT id, state, batch_id FROM updates")
    }


# -- an update is sent at most once -----------------------------------------------------------


def test_a_direct_write_is_claimed_before_it_goes_out(staging: Staging) -> None:
    row = add_row(staging)
    sent, waiting = queue(staging, row), queue(staging, row)
    staging.mark_sending([sent])
    assert state(staging, sent) is UpdateState.SUBMITTING
    assert [u["id"] for u in staging.queued_updates(LIST, 10)] == [waiting]
    assert [u["id"] for u in staging.lost_direct_writes(LIST)] == [sent]
    assert staging.count_queued(LIST) == 1


@pytest.fixture
def in_flight(staging: Staging) -> dict[str, int]:
    """Updates that may have reached Mailchimp: a direct write sent (`direct`), a batch
    posted with no answer yet (`posting`, in batch `posting_batch`), and one Mailchimp
    accepted (`accepted`, in batch `accepted_batch`)."""
    row = add_row(staging)
    direct, posting, accepted = queue(staging, row), queue(staging, row), queue(staging, row)
    staging.mark_sending([direct])
    posting_batch = staging.claim_for_batch(LIST, [posting], AT)
    accepted_batch = staging.claim_for_batch(LIST, [accepted], AT)
    staging.batch_submitted(accepted_batch, "mc-accepted", "pending")
    return {
        "row": row,
        "direct": direct,
        "posting": posting,
        "accepted": accepted,
        "posting_batch": posting_batch,
        "accepted_batch": accepted_batch,
    }


SENT = ("direct", "posting", "accepted")


def _withdraw_each(staging: Staging, f: dict[str, int]) -> None:
    for name in SENT:
        staging.withdraw_update(f[name], AT, "newer decision")


OTHER_TRANSITIONS: dict[str, Callable[[Staging, dict[str, int]], object]] = {
    "mark_sending": lambda s, f: s.mark_sending([f[n] for n in SENT]),
    "claim_for_batch": lambda s, f: s.claim_for_batch(LIST, [f[n] for n in SENT], AT),
    "unmark_sending of batch updates": lambda s, f: s.unmark_sending([f["posting"], f["accepted"]]),
    "withdraw_update": _withdraw_each,
    "abort_updates": lambda s, f: s.abort_updates(
        [f[n] for n in SENT], "overtaken", "2026-01-01T00:00:00+00:00"
    ),
    "abort_queue": lambda s, f: s.abort_queue(LIST, AT, "aborted"),
    "discard_queued_since": lambda s, f: s.discard_queued_since(LIST, ""),
    "batch_submitted": lambda s, f: s.batch_submitted(f["accepted_batch"], "mc-again", "started"),
    "unsubmit_batch of the accepted batch": lambda s, f: s.unsubmit_batch(f["accepted_batch"]),
    "batch_polled": lambda s, f: s.batch_polled(f["posting_batch"], "finished", 1, 0),
    "batch_processed": lambda s, f: s.batch_processed(f["posting_batch"], AT),
}


@pytest.mark.parametrize("transition", sorted(OTHER_TRANSITIONS))
def test_no_other_transition_requeues_an_update_that_may_have_been_sent(
    staging: Staging, in_flight: dict[str, int], transition: str
) -> None:
    """Nor marks it withdrawn unsent (`aborted`): whether it was made is unknown, so it can
    only fail, and its row keeps expecting what it carried."""
    OTHER_TRANSITIONS[transition](staging, in_flight)
    for name in SENT:
        assert state(staging, in_flight[name]) not in (UpdateState.QUEUED, UpdateState.ABORTED)
    assert staging.queued_updates(LIST, 10) == []


def test_only_the_unmark_after_a_refused_request_requeues(
    staging: Staging, in_flight: dict[str, int]
) -> None:
    staging.unmark_sending([in_flight["direct"]])
    staging.unsubmit_batch(in_flight["posting_batch"])
    staging.unsubmit_batch(in_flight["accepted_batch"])  # Mailchimp has it: never again
    assert state(staging, in_flight["direct"]) is UpdateState.QUEUED
    assert state(staging, in_flight["posting"]) is UpdateState.QUEUED
    assert state(staging, in_flight["accepted"]) is UpdateState.SUBMITTED
    assert {b["id"] for b in staging.open_batches(LIST)} == {in_flight["accepted_batch"]}


def test_abort_fails_what_may_have_been_sent_and_discards_the_rest(
    staging: Staging, in_flight: dict[str, int]
) -> None:
    waiting = queue(staging, in_flight["row"])
    failed, discarded = staging.abort_queue(LIST, AT, "Sync was aborted")
    assert (failed, discarded) == (3, 1)
    for name in ("direct", "posting", "accepted"):
        assert state(staging, in_flight[name]) is UpdateState.FAILED
    assert state(staging, waiting) is UpdateState.ABORTED
    assert staging.open_batches(LIST) == []
    assert staging.lost_direct_writes(LIST) == []


@pytest.mark.parametrize("closed", [UpdateState.DONE, UpdateState.FAILED, UpdateState.ABORTED])
def test_a_closed_update_never_opens_again(staging: Staging, closed: UpdateState) -> None:
    update = queue(staging, add_row(staging))
    {
        UpdateState.DONE: lambda: staging.update_done(update, AT),
        UpdateState.FAILED: lambda: staging.update_failed(update, AT, "Error", "refused"),
        UpdateState.ABORTED: lambda: staging.withdraw_update(update, AT, "newer decision"),
    }[closed]()
    batch = staging.claim_for_batch(LIST, [update], AT)
    staging.batch_submitted(batch, "mc-1", "pending")
    staging.mark_sending([update])
    staging.unmark_sending([update])
    staging.unsubmit_batch(batch)
    staging.update_done(update, AT)
    staging.update_failed(update, AT, "Error", "again")
    staging.abort_queue(LIST, AT, "aborted")
    assert state(staging, update) is closed


# -- a batch's updates are completed only from its own results ---------------------------------


def test_a_batch_hands_out_only_its_own_accepted_updates(
    staging: Staging, in_flight: dict[str, int]
) -> None:
    other = staging.claim_for_batch(LIST, [queue(staging, in_flight["row"])], AT)
    staging.batch_submitted(other, "mc-other", "pending")
    later = queue(staging, in_flight["row"])
    staging.claim_for_batch(LIST, [later], AT)  # posted after `posting`, no answer yet
    assert [u["id"] for u in staging.updates_in_batch(in_flight["accepted_batch"])] == [
        in_flight["accepted"]
    ]
    # Not confirmed yet: nothing to complete from results (recover_submissions decides).
    assert staging.updates_in_batch(in_flight["posting_batch"]) == []
    staging.batch_submitted(in_flight["posting_batch"], "mc-posting", "pending")
    assert state(staging, in_flight["posting"]) is UpdateState.SUBMITTED
    assert state(staging, later) is UpdateState.SUBMITTING  # its own batch has no answer
    assert state(staging, in_flight["direct"]) is UpdateState.SUBMITTING  # not a batch's


def test_a_processed_or_aborted_batch_is_never_looked_at_again(
    staging: Staging, in_flight: dict[str, int]
) -> None:
    staging.batch_processed(in_flight["accepted_batch"], AT)
    assert {b["id"] for b in staging.open_batches(LIST)} == {in_flight["posting_batch"]}
    assert [b["id"] for b in staging.submitting_batches(LIST)] == [in_flight["posting_batch"]]
    staging.abort_queue(LIST, AT, "aborted")
    assert staging.open_batches(LIST) == []
    statuses = {r[0] for r in staging.conn.execute("SELECT status FROM batches")}
    assert statuses == {BatchState.PROCESSED, BatchState.ABORTED}


def test_unreadable_results_are_counted_across_runs(
    staging: Staging, in_flight: dict[str, int]
) -> None:
    batch = in_flight["accepted_batch"]
    assert [staging.count_results_failure(batch) for _ in range(3)] == [1, 2, 3]


# -- rows wait for every open update of theirs ------------------------------------------------


def test_a_row_is_settled_only_by_its_last_open_update(staging: Staging) -> None:
    row = add_row(staging)
    first, second = queue(staging, row), queue(staging, row)
    staging.update_done(first, AT)
    staging.close_row_when_settled(row, RowState.OK, None, None)
    assert staging.row_status(row) is RowState.LIVE
    staging.update_failed(second, AT, "No result", "unknown")
    staging.redecide_row_when_settled(row)
    assert staging.row_status(row) is RowState.TODO


def test_a_status_write_that_may_have_gone_out_keeps_its_expectation(staging: Staging) -> None:
    sent_row, unsent_row = add_row(staging, 1), add_row(staging, 2)
    expected = '{"at":"2026-11-01T12:00:00+00:00","status":"subscribed"}'
    staging.conn.execute("UPDATE rows SET mc_expected = ?", (expected,))
    staging.mark_sending([queue(staging, sent_row)])
    staging.abort_updates([queue(staging, unsent_row), queue(staging, sent_row)], "overtaken", None)
    found = dict(staging.conn.execute("SELECT id, mc_expected FROM rows").fetchall())
    assert found == {sent_row: expected, unsent_row: None}


# -- the rules together, over any sequence of transitions -------------------------------------

OPEN = {UpdateState.QUEUED, UpdateState.SUBMITTING, UpdateState.SUBMITTED}
TRANSITIONS = [
    "queue",
    "mark_sending",
    "unmark_sending",
    "claim_for_batch",
    "batch_submitted",
    "unsubmit_batch",
    "batch_processed",
    "update_done",
    "update_failed",
    "withdraw_update",
    "abort_updates",
    "abort_queue",
]


def apply(staging: Staging, row: int, name: str, ids: list[int]) -> None:
    """One transition, called on any updates or batch (ids 1-3), sent or not."""
    target = ids[0] if ids else 1
    if name == "queue":
        queue(staging, row)
    elif name == "mark_sending":
        staging.mark_sending(ids)
    elif name == "unmark_sending":
        staging.unmark_sending(ids)
    elif name == "abort_updates":
        if ids:
            staging.abort_updates(ids, "overtaken", None)
    elif name == "claim_for_batch":
        staging.claim_for_batch(LIST, ids, AT)
    elif name == "batch_submitted":
        staging.batch_submitted(target, f"mc-{target}", "pending")
    elif name == "unsubmit_batch":
        staging.unsubmit_batch(target)
    elif name == "batch_processed":
        staging.batch_processed(target, AT)
    elif name == "update_done":
        staging.update_done(target, AT)
    elif name == "update_failed":
        staging.update_failed(target, AT, "Error", "refused")
    elif name == "withdraw_update":
        staging.withdraw_update(target, AT, "newer decision")
    else:
        staging.abort_queue(LIST, AT, "aborted")


def allowed(
    name: str, ids: list[int], old: UpdateState, batch: int | None, new: UpdateState
) -> bool:
    """May this transition move an update (in this batch) from ``old`` to ``new``?"""
    target = ids[0] if ids else 1
    if name in ("mark_sending", "claim_for_batch"):
        return (old, new) == (UpdateState.QUEUED, UpdateState.SUBMITTING)
    if name == "unmark_sending":  # a direct write's request was refused
        return (old, new, batch) == (UpdateState.SUBMITTING, UpdateState.QUEUED, None)
    if name == "unsubmit_batch":  # this batch's POST was refused or never arrived
        return (old, new, batch) == (UpdateState.SUBMITTING, UpdateState.QUEUED, target)
    if name == "batch_submitted":  # this batch was accepted
        return (old, new, batch) == (UpdateState.SUBMITTING, UpdateState.SUBMITTED, target)
    if name == "update_done":
        return old in OPEN and new is UpdateState.DONE
    if name == "update_failed":
        return old in OPEN and new is UpdateState.FAILED
    if name in ("withdraw_update", "abort_updates"):
        return (old, new) == (UpdateState.QUEUED, UpdateState.ABORTED)
    if name == "abort_queue":
        return (old, new) in {
            (UpdateState.QUEUED, UpdateState.ABORTED),
            (UpdateState.SUBMITTING, UpdateState.FAILED),
            (UpdateState.SUBMITTED, UpdateState.FAILED),
        }
    return False


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(TRANSITIONS), st.lists(st.integers(1, 3), max_size=3))))
def test_no_sequence_of_transitions_sends_an_update_twice(
    steps: list[tuple[str, list[int]]],
) -> None:
    """Whatever the order and whichever updates they are called on, the transitions only
    make the moves above: a closed update stays closed, a submitted one is never queued or
    claimed again, and a submitting one is queued again only by its own unmark."""
    with tempfile.TemporaryDirectory() as directory:
        staging = Staging(Path(directory) / "state.sqlite3")
        try:
            staging.ensure_audience(LIST, 1, "account")
            row = add_row(staging)
            for name, ids in steps:
                before = states(staging)
                apply(staging, row, name, ids)
                after = states(staging)
                for update_id, (old, batch) in before.items():
                    new = after[update_id][0]
                    assert new is old or allowed(name, ids, old, batch, new), (
                        f"{name}({ids}) moved update {update_id} (batch {batch}) "
                        f"from {old} to {new}"
                    )
        finally:
            staging.close()

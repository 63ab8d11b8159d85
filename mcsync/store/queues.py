"""The write queues: member updates to Mailchimp (`updates`), the Mailchimp batches that carry
them (`batches`), and the planned CiviCRM writes (`civi_writes`), with every state an update
or a batch moves through (``states.UpdateState``, ``states.BatchState``).

Each transition is one method here and nothing else writes `updates.state` or
`batches.status`, because the consent rules rest on them (DESIGN §4): an update is sent at
most once — it is marked `submitting` before its request goes out, and only a request that
was refused (or never left) puts it back in the queue; a batch's updates are completed only
from that batch's results. What a write's outcome means for its row is written here too; the
stages call those methods in the transaction of the update's transition, so a row and its
updates never disagree.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from mcsync.rules.addresses import fold_email
from mcsync.store.base import StoreBase
from mcsync.store.states import (
    CLOSED_BATCH_STATES,
    OPEN_UPDATE_STATES,
    BatchState,
    RowState,
    UpdateState,
)


def _sql_list(states: Sequence[str]) -> str:
    """States as an SQL list of literals, for `IN` in statements the planner reads whole."""
    return "(" + ", ".join(f"'{state}'" for state in states) + ")"


_OPEN = _sql_list(OPEN_UPDATE_STATES)
_SENT = _sql_list((UpdateState.SUBMITTING, UpdateState.SUBMITTED))
"""Update states in which the write may have reached Mailchimp."""
_CLOSED_BATCH = _sql_list(CLOSED_BATCH_STATES)


class QueueStore(StoreBase):
    """The `updates`, `batches` and `civi_writes` tables and their transitions."""

    # -- updates: reading the queue -------------------------------------------------------
    def queued_updates(self, list_id: str, limit: int) -> list[sqlite3.Row]:
        """The audience's next queued updates, oldest first: the order they were decided in,
        so a later decision about the same member is sent after an earlier one."""
        return self.conn.execute(
            "SELECT * FROM updates WHERE list_id = ? AND state = ? ORDER BY id LIMIT ?",
            (list_id, UpdateState.QUEUED, limit),
        ).fetchall()

    def count_queued(self, list_id: str) -> int:
        """How many updates wait to be sent: the push stage sends few directly, many as
        batches (``sync.batch_threshold``)."""
        count = self.conn.execute(
            "SELECT COUNT(*) FROM updates WHERE list_id = ? AND state = ?",
            (list_id, UpdateState.QUEUED),
        ).fetchone()[0]
        return int(count)

    def count_queued_not_creating(self, list_id: str) -> int:
        """How many queued updates may not create a member (no ``status_if_new``: the
        unsubscribes): a bulk write would create one, so they go one PUT each when few."""
        count = self.conn.execute(
            "SELECT COUNT(*) FROM updates WHERE list_id = ? AND state = ? "
            "AND json_extract(body, '$.status') IS NOT NULL "
            "AND json_extract(body, '$.status_if_new') IS NULL",
            (list_id, UpdateState.QUEUED),
        ).fetchone()[0]
        return int(count)

    def lost_direct_writes(self, list_id: str) -> list[sqlite3.Row]:
        """Updates of a direct bulk write that got no answer: 'submitting' with no batch."""
        return self.conn.execute(
            "SELECT * FROM updates WHERE list_id = ? AND state = ? "
            "AND batch_id IS NULL ORDER BY id",
            (list_id, UpdateState.SUBMITTING),
        ).fetchall()

    # -- updates: transitions -------------------------------------------------------------
    def queue_update(
        self,
        list_id: str,
        row_id: int,
        email: str,
        body: str,
        origin_at: str | None,
        created_at: str | None,
        expected: str | None = None,
    ) -> None:
        """A decided member write (``body``: the PUT body as JSON) joins the queue.
        ``origin_at`` is the time of the choice it carries: a field it changes keeps that
        time at Mailchimp, not the time of the write (DESIGN §4). ``expected`` (JSON: the
        status and interests it sets, dated ``at`` that choice) is what the row then expects
        Mailchimp to show once it lands, so that echo is never taken for a new choice."""
        self.conn.execute(
            "INSERT INTO updates (list_id, row_id, email, body, origin_at, created_at, state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (list_id, row_id, email, body, origin_at, created_at, UpdateState.QUEUED),
        )
        if expected is not None:
            self.conn.execute("UPDATE rows SET mc_expected = ? WHERE id = ?", (expected, row_id))

    def mark_sending(self, update_ids: list[int]) -> None:
        """Updates about to go in a direct bulk write: 'submitting' with no batch, so a write
        whose answer is lost (or a run killed meanwhile) is never sent again from the queue."""
        with self.atomic():
            self.conn.executemany(
                "UPDATE updates SET state = ? WHERE id = ? AND state = ? AND batch_id IS NULL",
                [(UpdateState.SUBMITTING, i, UpdateState.QUEUED) for i in update_ids],
            )

    def unmark_sending(self, update_ids: list[int]) -> None:
        """Back to the queue: the bulk write was refused before Mailchimp applied anything
        (or never left this process). The only way a direct write's update is queued again."""
        with self.atomic():
            self.conn.executemany(
                "UPDATE updates SET state = ? WHERE id = ? AND state = ? AND batch_id IS NULL",
                [(UpdateState.QUEUED, i, UpdateState.SUBMITTING) for i in update_ids],
            )

    def update_done(self, update_id: int, at: str | None) -> None:
        """Mailchimp applied the write (its answer, or its batch's result, says so). A
        data-only write goes out while queued (it cannot send a confirmation twice); the
        others are submitting or submitted. A closed update stays as it closed."""
        self.conn.execute(
            f"UPDATE updates SET state = ?, completed_at = ? WHERE id = ? AND state IN {_OPEN}",
            (UpdateState.DONE, at, update_id),
        )

    def update_failed(
        self, update_id: int, at: str | None, title: str | None, detail: str | None
    ) -> None:
        """Mailchimp refused the write, or whether it was made is unknown (an answer lost,
        results unreadable): it is never sent again; its row is decided again instead."""
        self.conn.execute(
            f"UPDATE updates SET state = ?, completed_at = ?, error_title = ?, error_detail = ? "
            f"WHERE id = ? AND state IN {_OPEN}",
            (UpdateState.FAILED, at, title, detail, update_id),
        )

    def withdraw_update(self, update_id: int, at: str | None, detail: str) -> None:
        """A queued update a newer decision about its row replaces or cancels
        (``queue_rules.plan_queue``): aborted unsent. Only a queued one: an update that may
        have been sent keeps its state until its result is known."""
        self.conn.execute(
            "UPDATE updates SET state = ?, completed_at = ?, error_detail = ? "
            "WHERE id = ? AND state = ?",
            (UpdateState.ABORTED, at, detail, update_id, UpdateState.QUEUED),
        )

    def abort_updates(self, update_ids: list[int], detail: str, now: str | None) -> None:
        """Drop queued updates a newer change overtook and send their rows back to `todo`.
        Their rows stop expecting the status those writes carried (`forget_unsent_status`);
        an expected interest stays: after a crash a data-only write may have been sent
        already, and its echo at Mailchimp must keep the time of the choice it carried. But
        only for a member last changed by ``now``: such an echo cannot be later, and a value
        changed after it is someone's choice (the person ticking the interest themselves)."""
        with self.atomic():
            self.conn.executemany(
                "UPDATE updates SET state = ?, completed_at = ?, error_detail = ? "
                "WHERE id = ? AND state = ?",
                [(UpdateState.ABORTED, now, detail, i, UpdateState.QUEUED) for i in update_ids],
            )
            self.conn.executemany(
                "UPDATE rows SET sync_status = ? "
                "WHERE id = (SELECT row_id FROM updates WHERE id = ?)",
                [(RowState.TODO, i) for i in update_ids],
            )
            marks = ",".join("?" * len(update_ids))
            rows = self.conn.execute(
                f"SELECT DISTINCT row_id FROM updates WHERE id IN ({marks})", update_ids
            ).fetchall()
            self.forget_unsent_status([r[0] for r in rows])
            self.conn.executemany(
                "UPDATE rows SET mc_expected = json_set(mc_expected, '$.until', ?) "
                "WHERE id = ? AND json_extract(mc_expected, '$.interests') IS NOT NULL "
                "AND json_extract(mc_expected, '$.until') IS NULL",
                [(now, r[0]) for r in rows],
            )

    def abort_queue(self, list_id: str, at: str | None, detail: str) -> tuple[int, int]:
        """`mcsync abort`: open batches are closed as aborted; updates that may have reached
        Mailchimp (submitting, submitted) fail with title 'aborted' — their outcome is unknown,
        so they are never sent again — and queued ones are aborted unsent. Returns (failed,
        aborted). Call it after the plan is dropped (``drop_plan`` finds rows by updates)."""
        self.conn.execute(
            f"UPDATE batches SET status = ?, completed_at = ? WHERE list_id = ? "
            f"AND status NOT IN {_CLOSED_BATCH}",
            (BatchState.ABORTED, at, list_id),
        )
        failed = self.conn.execute(
            f"UPDATE updates SET state = ?, completed_at = ?, error_title = 'aborted', "
            f"error_detail = ? WHERE list_id = ? AND state IN {_SENT}",
            (UpdateState.FAILED, at, detail, list_id),
        ).rowcount
        aborted = self.conn.execute(
            "UPDATE updates SET state = ?, completed_at = ?, error_detail = ? "
            "WHERE list_id = ? AND state = ?",
            (UpdateState.ABORTED, at, detail, list_id, UpdateState.QUEUED),
        ).rowcount
        return failed, aborted

    def discard_queued_since(self, list_id: str, since: str) -> None:
        """An undone dry run drops the updates its run queued (created at or after
        ``since``): none was sent. Older queued ones (a compliance retry queued while
        collecting batches) stay."""
        self.conn.execute(
            "DELETE FROM updates WHERE list_id = ? AND state = ? AND created_at >= ?",
            (list_id, UpdateState.QUEUED, since),
        )

    # -- batches --------------------------------------------------------------------------
    def claim_for_batch(self, list_id: str, update_ids: list[int], at: str | None) -> int:
        """A batch row in state 'submitting' carries these updates, written before the
        `POST /batches` is sent: a kill while it is in flight leaves a trace that
        ``recover_submissions`` resolves, so the batch is never posted twice. Only queued
        updates are claimed (the caller read them so under its lease). Returns the batch
        row's id."""
        with self.atomic():
            cursor = self.conn.execute(
                "INSERT INTO batches (list_id, status, operations, submitted_at) "
                "VALUES (?, ?, ?, ?)",
                (list_id, BatchState.SUBMITTING, len(update_ids), at),
            )
            batch_row = int(cursor.lastrowid or 0)
            self.conn.executemany(
                "UPDATE updates SET state = ?, batch_id = ? WHERE id = ? AND state = ?",
                [(UpdateState.SUBMITTING, batch_row, i, UpdateState.QUEUED) for i in update_ids],
            )
        return batch_row

    def batch_submitted(self, batch_row: int, mc_batch_id: str, mc_status: str) -> None:
        """Mailchimp accepted the batch (its answer, or a batch found by
        ``recover_submissions``): its id and Mailchimp's status are stored, and its updates
        wait for its results."""
        with self.atomic():
            self.conn.execute(
                "UPDATE batches SET mc_batch_id = ?, status = ? WHERE id = ?",
                (mc_batch_id, mc_status, batch_row),
            )
            self.conn.execute(
                "UPDATE updates SET state = ? WHERE batch_id = ? AND state = ?",
                (UpdateState.SUBMITTED, batch_row, UpdateState.SUBMITTING),
            )

    def unsubmit_batch(self, batch_row: int) -> None:
        """The `POST /batches` was refused (4xx) or never reached Mailchimp: its updates go
        back to the queue and the batch row goes. The only way a batch's update is queued
        again. A batch Mailchimp accepted is never undone: its updates wait for its results
        (without the batch row they would never be read)."""
        with self.atomic():
            self.conn.execute(
                "UPDATE updates SET state = ?, batch_id = NULL WHERE batch_id = ? AND state = ? "
                "AND EXISTS (SELECT 1 FROM batches WHERE id = ? AND status = ?)",
                (
                    UpdateState.QUEUED,
                    batch_row,
                    UpdateState.SUBMITTING,
                    batch_row,
                    BatchState.SUBMITTING,
                ),
            )
            self.conn.execute(
                "DELETE FROM batches WHERE id = ? AND status = ?",
                (batch_row, BatchState.SUBMITTING),
            )

    def submitting_batches(self, list_id: str) -> list[sqlite3.Row]:
        """Batch rows of writes whose `POST /batches` was sent but whose answer was never
        recorded (a batch of reads is recovered by the stage that reads, `read_batch`)."""
        return self.conn.execute(
            "SELECT * FROM batches WHERE list_id = ? AND status = ? AND reads IS NULL",
            (list_id, BatchState.SUBMITTING),
        ).fetchall()

    def known_batch_ids(self) -> set[str]:
        """Mailchimp's ids of every batch mcsync recorded, of any audience: a batch found at
        Mailchimp that is not among them may be one whose answer was lost."""
        rows = self.conn.execute("SELECT mc_batch_id FROM batches WHERE mc_batch_id IS NOT NULL")
        return {r[0] for r in rows}

    def open_batches(self, list_id: str, *, writes_only: bool = False) -> list[sqlite3.Row]:
        """The audience's batches whose results have not been applied yet (``writes_only``:
        leaving out batches of member reads, which the stage that reads collects)."""
        reads = " AND reads IS NULL" if writes_only else ""
        return self.conn.execute(
            f"SELECT * FROM batches WHERE list_id = ? AND status NOT IN {_CLOSED_BATCH}{reads}",
            (list_id,),
        ).fetchall()

    # -- batches of member reads ------------------------------------------------------------
    def claim_read_batch(self, list_id: str, operations: int, at: str | None, reads: str) -> int:
        """A batch row in state 'submitting' for a batch of member reads (``reads``: what it
        reads for, JSON), written before the `POST /batches` is sent, so a kill while it is
        in flight leaves a trace (``recover_submissions`` adopts the batch or drops the row);
        a batch whose id is recorded is collected, never submitted again. Returns its id."""
        with self.atomic():
            cursor = self.conn.execute(
                "INSERT INTO batches (list_id, status, operations, submitted_at, reads) "
                "VALUES (?, ?, ?, ?, ?)",
                (list_id, BatchState.SUBMITTING, operations, at, reads),
            )
        return int(cursor.lastrowid or 0)

    def open_read_batch(self, list_id: str) -> sqlite3.Row | None:
        """The audience's oldest batch of member reads whose results have not been applied
        (at most two are open: the chunk being read, and the next one's, submitted ahead)."""
        row: sqlite3.Row | None = self.conn.execute(
            f"SELECT * FROM batches WHERE list_id = ? AND status NOT IN {_CLOSED_BATCH} "
            "AND reads IS NOT NULL ORDER BY id LIMIT 1",
            (list_id,),
        ).fetchone()
        return row

    def open_read_batches(self, list_id: str) -> int:
        """How many of the audience's batches of member reads are not applied yet (a stage
        may have the next chunk's batch in flight while it collects the current one)."""
        return int(
            self.scalar(
                f"SELECT count(*) FROM batches WHERE list_id = ? AND status NOT IN "
                f"{_CLOSED_BATCH} AND reads IS NOT NULL",
                (list_id,),
            )
        )

    def close_read_batch(self, batch_row: int, at: str | None, *, applied: bool) -> None:
        """A batch of reads is done with: its results were applied with the chunk they read
        for (``applied``), or they never will be (another run's, gone at Mailchimp,
        unreadable): aborted, and its members are read again."""
        self.conn.execute(
            "UPDATE batches SET status = ?, completed_at = ? WHERE id = ? AND reads IS NOT NULL",
            (BatchState.PROCESSED if applied else BatchState.ABORTED, at, batch_row),
        )

    def batch_polled(
        self,
        batch_row: int,
        mc_status: str | None,
        finished: int | None,
        errored: int | None,
    ) -> None:
        """Mailchimp's view of a batch, stored as reported (pending … finished)."""
        with self.atomic():
            self.conn.execute(
                "UPDATE batches SET status = ?, finished_operations = ?, "
                "errored_operations = ? WHERE id = ?",
                (mc_status, finished, errored, batch_row),
            )

    def updates_in_batch(self, batch_row: int) -> list[sqlite3.Row]:
        """The batch's updates still waiting for its results: only these may be completed
        from them (an update is completed from its own batch's results, never another's)."""
        return self.conn.execute(
            "SELECT * FROM updates WHERE batch_id = ? AND state = ?",
            (batch_row, UpdateState.SUBMITTED),
        ).fetchall()

    def batch_processed(self, batch_row: int, at: str | None) -> None:
        """The batch's results were applied to every update it carried (or they could not be
        read, and its updates failed): mcsync never looks at it again."""
        self.conn.execute(
            "UPDATE batches SET status = ?, completed_at = ? WHERE id = ?",
            (BatchState.PROCESSED, at, batch_row),
        )

    def count_results_failure(self, batch_row: int) -> int:
        """One more run found this batch's results unreadable; how many have, now (committed
        at once, so the count survives the run failing)."""
        with self.atomic():
            self.conn.execute(
                "UPDATE batches SET results_failures = results_failures + 1 WHERE id = ?",
                (batch_row,),
            )
            count = self.conn.execute(
                "SELECT results_failures FROM batches WHERE id = ?", (batch_row,)
            ).fetchone()
        return int(count[0]) if count else 0

    # -- a write's outcome on its row ----------------------------------------------------
    def row_status(self, row_id: int) -> RowState | None:
        """The row's sync status (None: the row is gone)."""
        found = self.conn.execute("SELECT sync_status FROM rows WHERE id = ?", (row_id,))
        row = found.fetchone()
        return None if row is None else RowState(row[0])

    def redecide_row(self, row_id: int) -> None:
        """Mailchimp answered with something other than what was written (a status it
        chose itself): the row is decided again, from what Mailchimp now holds."""
        self.conn.execute("UPDATE rows SET sync_status = ? WHERE id = ?", (RowState.TODO, row_id))

    def redecide_row_when_settled(self, row_id: int) -> None:
        """The row's update failed with its outcome unknown: once it has no other open
        update, it is decided again from Mailchimp's state, never written blind again."""
        self.conn.execute(
            f"UPDATE rows SET sync_status = ? WHERE id = ? AND NOT EXISTS (SELECT 1 "
            f"FROM updates WHERE row_id = ? AND state IN {_OPEN})",
            (RowState.TODO, row_id, row_id),
        )

    def close_row_when_settled(
        self, row_id: int, status: RowState, reason: str | None, detail: str | None
    ) -> None:
        """A row is settled once it has no open updates (two in different batches: wait for
        both); then it takes the outcome of its last write."""
        self.conn.execute(
            f"UPDATE rows SET sync_status = ?, reason = ?, reason_detail = ? WHERE id = ? "
            f"AND NOT EXISTS (SELECT 1 FROM updates WHERE row_id = ? AND state IN {_OPEN})",
            (status, reason, detail, row_id, row_id),
        )

    def record_written_member(
        self,
        row_id: int,
        *,
        mc_hash: str | None,
        mc_email: str | None,
        mc_status: str | None,
        mc_last_changed: str | None,
        mc_status_at: str | None,
        mc_interests: str,
        mc_interests_at: str,
        pushed_merge: str,
        mc_unique_id: str | None,
    ) -> bool:
        """After a successful write, the row holds what Mailchimp now has, and expects
        nothing more. A status mcsync changed has its choice's exact time (the "after"
        bound goes). The member's ``unique_email_id`` is kept: a member mcsync created is
        followed by it when the person changes address at Mailchimp (model seed 124: without
        it, the moved member was staged as a stranger, and its unsubscribe never reached the
        contact). False when the member was fetched into its own row meanwhile: this row is
        deleted and that one carries on."""
        try:
            self.conn.execute(
                "UPDATE rows SET mc_hash = ?, mc_email = ?, mc_status = ?, mc_last_changed = ?, "
                "mc_status_at = ?, mc_interests = ?, mc_interests_at = ?, pushed_merge = ?, "
                "mc_status_after = CASE WHEN mc_status IS ? THEN mc_status_after END, "
                "mc_unique_id = COALESCE(?, mc_unique_id), mc_expected = NULL WHERE id = ?",
                (
                    mc_hash,
                    mc_email,
                    mc_status,
                    mc_last_changed,
                    mc_status_at,
                    mc_interests,
                    mc_interests_at,
                    pushed_merge,
                    mc_status,
                    mc_unique_id,
                    row_id,
                ),
            )
        except sqlite3.IntegrityError:
            self.conn.execute("DELETE FROM rows WHERE id = ?", (row_id,))
            return False
        return True

    def note_retry_reason(self, row_id: int, reason: str, detail: str | None) -> None:
        """A refused write was queued again in another form (a compliance retry): the row
        shows why while the retry waits."""
        self.conn.execute(
            "UPDATE rows SET reason = ?, reason_detail = ? WHERE id = ?", (reason, detail, row_id)
        )

    def record_refusal(
        self, row_id: int, contact_id: int | None, group_id: int, reason: str, email: str
    ) -> None:
        """Mailchimp refused to subscribe this address (compliance, forgotten): remember the
        refusal with the time of the CiviCRM group status it was written for, so the same
        choice is not tried again until the person changes it."""
        self.conn.execute(
            "UPDATE rows SET refusal_reason = ?, refusal_email = ?, refusal_civi_at = "
            "(SELECT changed_at FROM group_status WHERE contact_id = ? AND group_id = ?) "
            "WHERE id = ?",
            (reason, email, contact_id, group_id, row_id),
        )

    def forget_expected(self, row_id: int) -> None:
        """The row's write failed: Mailchimp will show nothing as mcsync's echo of it."""
        self.conn.execute("UPDATE rows SET mc_expected = NULL WHERE id = ?", (row_id,))

    def forget_unsent_status(self, row_ids: Sequence[int]) -> None:
        """These rows' status writes were dropped unsent: they no longer expect Mailchimp to
        show that status. `mc_expected` marks a status Mailchimp shows as mcsync's own echo,
        dated at the choice the write carried; kept for a write that never went out, it would
        take the person's own later change to that status for the echo and date it at that
        older choice, so an older CiviCRM change would undo it (a brake override dropped an
        unsubscribe a re-add overtook; the person unsubscribed later; mcsync subscribed them
        again). A status write is marked submitting before it is sent, so a row with none
        submitting or submitted has none that can reach Mailchimp; with one, it keeps its
        expectation. An expected interest is kept (a data-only write goes out while queued)."""
        if not row_ids:
            return
        marks = ",".join("?" * len(row_ids))
        self.conn.execute(
            f"""
            UPDATE rows SET mc_expected = CASE
                WHEN json_extract(mc_expected, '$.interests') IS NULL THEN NULL
                ELSE json_remove(mc_expected, '$.status') END
            WHERE id IN ({marks}) AND mc_expected IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM updates u WHERE u.row_id = rows.id
                              AND u.state IN {_SENT})
            """,
            list(row_ids),
        )

    # -- CiviCRM writes -------------------------------------------------------------------
    def plan_group_write(
        self, list_id: str, contact_id: int, group_id: int, status: str, origin_at: str | None
    ) -> None:
        """Queue a group-status change for CiviCRM (a later decision about the same contact
        and group replaces it), dated at the Mailchimp choice it carries."""
        self.conn.execute(
            "INSERT INTO civi_writes (list_id, kind, contact_id, group_id, status, origin_at) "
            "VALUES (?, 'group', ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
            "status = excluded.status, origin_at = excluded.origin_at",
            (list_id, contact_id, group_id, status, origin_at),
        )

    def plan_hold(self, list_id: str, contact_id: int, email: str) -> None:
        """Queue a hold of the contact's records of an address Mailchimp cleaned."""
        self.conn.execute(
            "INSERT OR IGNORE INTO civi_writes (list_id, kind, contact_id, email) "
            "VALUES (?, 'hold', ?, ?)",
            (list_id, contact_id, email),
        )

    def next_civi_writes(self, list_id: str, kind: str, limit: int) -> list[sqlite3.Row]:
        """The audience's next chunk of queued CiviCRM writes of one kind, oldest first (a
        written chunk is deleted, so the next call reads the next one)."""
        return self.conn.execute(
            "SELECT * FROM civi_writes WHERE list_id = ? AND kind = ? ORDER BY id LIMIT ?",
            (list_id, kind, limit),
        ).fetchall()

    def forget_civi_writes(self, write_ids: Sequence[int]) -> None:
        """Writes made (or dropped): out of the queue, so they are never made twice."""
        self.conn.executemany("DELETE FROM civi_writes WHERE id = ?", [(i,) for i in write_ids])

    def group_statuses_written(self, writes: Sequence[sqlite3.Row]) -> None:
        """CiviCRM took these group-status writes: staging holds the new statuses, dated at
        the choices they carried (so they are not mistaken for newer changes made in
        CiviCRM), and the writes leave the queue."""
        self.conn.executemany(
            "INSERT INTO group_status (contact_id, group_id, status, changed_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (contact_id, group_id) DO UPDATE SET "
            "status = excluded.status, changed_at = excluded.changed_at",
            [(w["contact_id"], w["group_id"], w["status"], w["origin_at"]) for w in writes],
        )
        self.forget_civi_writes([w["id"] for w in writes])

    def fail_rows_of_contact(
        self, list_id: str, contact_id: int, reason: str, detail: str
    ) -> list[int]:
        """CiviCRM refused a write for this contact: the contact's rows fail with the reason
        (shown by `status` and `failures`). Returns their ids (to schedule their retry)."""
        self.conn.execute(
            "UPDATE rows SET sync_status = ?, reason = ?, reason_detail = ? "
            "WHERE list_id = ? AND contact_id = ?",
            (RowState.FAIL, reason, detail, list_id, contact_id),
        )
        rows = self.conn.execute(
            "SELECT id FROM rows WHERE list_id = ? AND contact_id = ?", (list_id, contact_id)
        )
        return [r[0] for r in rows]

    def redecide_contacts(self, list_id: str, contact_ids: Sequence[int]) -> None:
        """A planned write for these contacts was overtaken by a newer change: their rows are
        decided again next run."""
        self.conn.executemany(
            "UPDATE rows SET sync_status = ? WHERE list_id = ? AND contact_id = ?",
            [(RowState.TODO, list_id, c) for c in contact_ids],
        )

    def contact_has_email(self, contact_id: int, email: str) -> bool:
        """Does the contact have a record of this address (compared folded)?"""
        found = self.conn.execute(
            "SELECT 1 FROM emails WHERE contact_id = ? AND email_lc = ? LIMIT 1",
            (contact_id, fold_email(email)),
        )
        return found.fetchone() is not None

    def unheld_email_ids(self, contact_id: int, email: str) -> list[int]:
        """The contact's records of this address not on hold yet."""
        rows = self.conn.execute(
            "SELECT email_id FROM emails WHERE contact_id = ? AND email_lc = ? AND on_hold = 0",
            (contact_id, fold_email(email)),
        )
        return [r[0] for r in rows]

    def emails_held(self, email_ids: Sequence[int]) -> None:
        """CiviCRM put these email records on hold: staging says so too."""
        self.conn.executemany(
            "UPDATE emails SET on_hold = 1 WHERE email_id = ?", [(i,) for i in email_ids]
        )

"""The states a staged row, a queued Mailchimp update and a Mailchimp batch can be in.

They are stored as their string values (the staging DB schema is documented and stable, so
`sqlite-utils` and Datasette users read the same words), and compared as enums in Python so
that a typo is a type error rather than a row that silently never matches. Which code moves a
row or an update from one state to another is the storage layer's job: each transition is one
named method there, and nothing else writes these columns.
"""

from __future__ import annotations

from enum import StrEnum


class RowState(StrEnum):
    """`rows.sync_status`: where a member/contact pair stands in the reconcile cycle."""

    TODO = "todo"
    """Facts changed since the last decision: the reconcile stage must decide it again."""
    OK = "ok"
    """Decided, and both sides agree (or the differences are ones mcsync does not sync)."""
    FAIL = "fail"
    """Decided, but a change could not be made; `reason` says why (shown by `status`)."""
    LIVE = "live"
    """A write is queued or in flight for this row: it is decided again once the write's
    result is known, never before (that would queue the same change twice)."""


class UpdateState(StrEnum):
    """`updates.state`: one queued write of a member to Mailchimp."""

    QUEUED = "queued"
    """Decided and waiting to be sent."""
    SUBMITTING = "submitting"
    """Claimed by a batch whose submission has not been confirmed yet."""
    SUBMITTED = "submitted"
    """Part of a batch Mailchimp accepted; waiting for the batch's results."""
    DONE = "done"
    """Mailchimp applied it."""
    FAILED = "failed"
    """Mailchimp refused it (or it was given up); `error_title`/`error_detail` say why."""
    ABORTED = "aborted"
    """Withdrawn before it was sent: by `abort`, or because a later choice overtook it."""


OPEN_UPDATE_STATES: tuple[UpdateState, ...] = (
    UpdateState.QUEUED,
    UpdateState.SUBMITTING,
    UpdateState.SUBMITTED,
)
"""The states of an update whose outcome is not known yet."""


class BatchState(StrEnum):
    """`batches.status`: mcsync's own states around Mailchimp's batch statuses
    (pending, preprocessing, started, finalizing, finished), which are stored as reported."""

    SUBMITTING = "submitting"
    """Written before the POST /batches request, so a kill mid-request is found and resolved."""
    PROCESSED = "processed"
    """Its results have been read and applied to every update it carried."""
    ABORTED = "aborted"
    """Given up by `abort`; its updates were marked failed or aborted."""


CLOSED_BATCH_STATES: tuple[BatchState, ...] = (BatchState.PROCESSED, BatchState.ABORTED)
"""Batch states after which mcsync never looks at the batch again."""

"""The Mailchimp update queue of one row (seed §2.4, §5.2 B3, issue #10): fold a new
decision into the row's unsubmitted updates. Pure; the push stages apply the plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mcsync.rules.reconcile import Decision, QueueMailchimpUpdate

ABORT_SUPERSEDED = "Superseded by a newer update before it was submitted."
ABORT_NOT_SUBSCRIBED = "Aborted: the member is no longer to be subscribed."


@dataclass(frozen=True)
class QueuedUpdate:
    """An unsubmitted member update of the row (not in a batch, not completed)."""

    update_id: int
    body: Mapping[str, Any]


@dataclass(frozen=True)
class AbortUpdate:
    update_id: int
    reason: str


@dataclass(frozen=True)
class QueuePlan:
    """Mark ``abort`` completed with their reason, then insert ``enqueue`` (if any)."""

    abort: tuple[AbortUpdate, ...] = ()
    enqueue: QueueMailchimpUpdate | None = None


def keep_pending(
    unsubmitted: Sequence[QueuedUpdate], new: QueueMailchimpUpdate
) -> QueueMailchimpUpdate:
    """A queued ``pending`` (the compliance retry) turns a new ``subscribed`` into ``pending``,
    so later runs never queue ``subscribed`` over it (issue #10)."""
    if new.status != "subscribed" or not any(
        u.body.get("status") == "pending" for u in unsubmitted
    ):
        return new
    return QueueMailchimpUpdate(
        new.email, {**new.body, "status": "pending", "status_if_new": "pending"}
    )


def plan_queue(unsubmitted: Sequence[QueuedUpdate], decision: Decision) -> QueuePlan:
    """Fold a decision into the row's unsubmitted updates.

    A decision is the whole delta computed from both sides' current state (interests and merge
    fields included), so every older unsubmitted update is stale and is aborted: a subscribe
    never goes out after a later unsubscribe, and an old interest value never overwrites a newer
    one. The seed merged old bodies underneath because its data feeds were one-shot; mcsync's are
    state-based. An unsubmitted update identical to the new one is kept instead of re-queued.
    """
    new = decision.mailchimp_update
    if new is not None and decision.final_subscribed:
        new = keep_pending(unsubmitted, new)
    keep = next((u for u in unsubmitted if new is not None and u.body == new.body), None)
    why = ABORT_SUPERSEDED if decision.final_subscribed else ABORT_NOT_SUBSCRIBED
    aborts = tuple(AbortUpdate(u.update_id, why) for u in unsubmitted if u is not keep)
    return QueuePlan(aborts, None if keep is not None else new)

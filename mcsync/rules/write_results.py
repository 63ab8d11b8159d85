"""Classify the answer to one Mailchimp member write, from a batch or a direct call (seed §7,
§5.4): done, retry once as pending (compliance), or failed with a reason. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mcsync.rules.reasons import Reason

COMPLIANCE_TITLE = "Member In Compliance State"
FORGOTTEN_TITLE = "Forgotten Email Not Subscribed"
# Our title for a write's answer that is malformed (not Mailchimp's): an operation result
# from a batch, a member in a bulk write's answer, or a batch's results file that never parses.
BAD_RESULT_TITLE = "Malformed result"


@dataclass(frozen=True)
class Failure:
    """A refused update. ``blocks_resubscribe``: store a ``Refusal`` for the row so the same
    subscribe is not tried again until CiviCRM changes."""

    reason: Reason
    status_code: int
    title: str
    detail: str
    blocks_resubscribe: bool


@dataclass(frozen=True)
class BatchOutcome:
    """``ok``: completed (``recheck``: Mailchimp kept another status, e.g. cleaned; mark the
    row to reconcile again). ``retry``: queue ``retry_body`` as a new update for the row, which
    stays live. ``failed``: record ``failure`` on the row. ``gone``: an unsubscribe found no
    member at its address (deleted, or moved to another address, since mcsync read it):
    nothing was written, and the row is decided again without that member."""

    kind: Literal["ok", "retry", "failed", "gone"]
    retry_body: dict[str, Any] | None = None
    failure: Failure | None = None
    recheck: bool = False


def apply_batch_result(
    body: Mapping[str, Any],
    status_code: int,
    *,
    title: str = "",
    detail: str = "",
    member_status: str | None = None,
) -> BatchOutcome:
    """Classify one operation's result (``title``/``detail`` from Mailchimp's problem body,
    ``member_status`` from a 2xx member response)."""
    asked = body.get("status")
    if 200 <= status_code < 300:
        recheck = asked is not None and member_status is not None and member_status != asked
        return BatchOutcome("ok", recheck=recheck)
    if status_code == 400 and is_member_missing(body, detail):
        return BatchOutcome("gone")
    if status_code == 400 and title == COMPLIANCE_TITLE and asked == "subscribed":
        # Retried once as pending: Mailchimp emails a confirmation (seed §5.4, issue #10).
        retry = {**body, "status": "pending", "status_if_new": "pending"}
        return BatchOutcome("retry", retry_body=retry)
    reason, blocks = _classify_error(status_code, title, detail)
    return BatchOutcome("failed", failure=Failure(reason, status_code, title, detail, blocks))


def is_member_missing(body: Mapping[str, Any], detail: str) -> bool:
    """Mailchimp refused a write that may not create a member (no ``status_if_new``, as an
    unsubscribe is sent) because it would have: no member is at that address."""
    return "status_if_new" not in body and "status_if_new" in detail


def _classify_error(status_code: int, title: str, detail: str) -> tuple[Reason, bool]:
    if title == BAD_RESULT_TITLE:
        return Reason.BAD_RESULT, False
    if status_code == 400 and title == COMPLIANCE_TITLE:
        return Reason.COMPLIANCE, True
    if status_code == 400 and title == FORGOTTEN_TITLE:
        return Reason.FORGOTTEN, True
    if status_code == 400 and "looks fake or invalid" in detail:
        return Reason.INVALID_EMAIL, True
    if status_code == 400 and title == "Member Exists":
        return Reason.MEMBER_EXISTS, False
    return Reason.MAILCHIMP_ERROR, False

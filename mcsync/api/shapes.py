"""What the records in either API's answers must look like before any stage reads them: a
member or a CiviCRM record is a JSON object, and the fields mcsync reads have the types the
APIs document. A record that does not is reported as a ``BadResponse`` naming the request,
so an odd answer ends as one line, never as a TypeError deep in a stage (issue 11).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

# Mailchimp member fields mcsync reads (reference/mailchimp-api.md §2), by the JSON types
# each may have; a field that is absent is fine (a `fields` filter may leave it out).
_TEXT = (str,)
_TEXT_OR_NULL = (str, type(None))
_OBJECT_OR_NULL = (dict, type(None))
MEMBER_TYPES: dict[str, tuple[type, ...]] = {
    "id": _TEXT,
    "email_address": _TEXT,
    "status": _TEXT,
    "last_changed": _TEXT,
    "unique_email_id": _TEXT_OR_NULL,
    "contact_id": _TEXT_OR_NULL,
    "timestamp_opt": _TEXT_OR_NULL,
    "timestamp_signup": _TEXT_OR_NULL,
    "unsubscribe_reason": _TEXT_OR_NULL,
    "merge_fields": _OBJECT_OR_NULL,
    "interests": _OBJECT_OR_NULL,
    "tags": (list, type(None)),
}
_MEMBER_TIMES = ("last_changed",)
# A member's id is its subscriber hash, the MD5 hex of the lower-cased address: staging keys
# rows by it, so an id of another form would be taken for another member's.
_SUBSCRIBER_HASH = re.compile(r"[0-9a-f]{32}")

# CiviCRM APIv4 fields (by the last part of a possibly joined name, `contact_id.is_deleted`).
_INTEGER_OR_NULL = (int, type(None))
CIVICRM_TYPES: dict[str, tuple[type, ...]] = {
    "id": _INTEGER_OR_NULL,
    "contact_id": _INTEGER_OR_NULL,
    "group_id": _INTEGER_OR_NULL,
    "email": _TEXT_OR_NULL,
    "status": _TEXT_OR_NULL,
    "first_name": _TEXT_OR_NULL,
    "last_name": _TEXT_OR_NULL,
    "display_name": _TEXT_OR_NULL,
    "on_hold": (int, str, type(None)),
    "modified_date": _TEXT_OR_NULL,
    "date": _TEXT_OR_NULL,
}
_CIVICRM_TIMES = ("modified_date", "date", "created_date")


def shown(value: Any) -> str:
    """A value as JSON, cut short, for a message about a malformed answer."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def odd_member(member: Any, required: Sequence[str] = ()) -> str | None:
    """What is wrong with one Mailchimp member as answered, or None. ``required``: fields
    that must be there (asked for, and read without a default)."""
    if not isinstance(member, dict):
        return f"a member that is not a JSON object ({shown(member)})"
    for name in required:
        if member.get(name) is None:
            return f"a member without {name}"
    for name, types in MEMBER_TYPES.items():
        if name in member and not isinstance(member[name], types):
            return f"a member whose {name} is {shown(member[name])}"
    member_id = member.get("id")
    if member_id is not None and not _SUBSCRIBER_HASH.fullmatch(member_id):
        return f"a member whose id is {shown(member_id)}, not a subscriber hash"
    for name in _MEMBER_TIMES:
        if member.get(name) and not _is_time(member[name]):
            return f"a member whose {name} is {shown(member[name])}, not a time"
    return None


def odd_batch(batch: Any) -> str | None:
    """What is wrong with a Mailchimp batch (`POST /batches`, `GET /batches/{id}`), or None:
    it needs its id and status, counts that are numbers, and once finished a results link."""
    if not isinstance(batch, dict):
        return f"a batch that is not a JSON object ({shown(batch)})"
    for name in ("id", "status"):
        if not isinstance(batch.get(name), str) or not batch[name]:
            return f"a batch whose {name} is {shown(batch.get(name))}"
    for name in ("total_operations", "finished_operations", "errored_operations"):
        value = batch.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            return f"a batch whose {name} is {shown(value)}, not a number"
    if batch["status"] == "finished" and not isinstance(batch.get("response_body_url"), str):
        return (
            f"a finished batch whose response_body_url is {shown(batch.get('response_body_url'))}"
        )
    if batch.get("submitted_at") is not None and not _is_time(batch["submitted_at"]):
        return f"a batch whose submitted_at is {shown(batch['submitted_at'])}, not a time"
    return None


def odd_record(record: Any, required: Sequence[str] = ()) -> str | None:
    """What is wrong with one CiviCRM APIv4 record as answered, or None. ``required``: the
    fields the request selected, which every record must carry."""
    if not isinstance(record, dict):
        return f"a record that is not a JSON object ({shown(record)})"
    for name in required:
        if name not in record:
            return f"a record without {name}"
    for name, value in record.items():
        field = name.rsplit(".", 1)[-1]
        types = CIVICRM_TYPES.get(field)
        if types is not None and (isinstance(value, bool) or not isinstance(value, types)):
            if field == "on_hold" and isinstance(value, bool):
                continue
            return f"a record whose {name} is {shown(value)}"
        if field == "on_hold" and isinstance(value, str) and not value.isdigit():
            return f"a record whose {name} is {shown(value)}"
        if field in _CIVICRM_TIMES and value and not _is_time(value):
            return f"a record whose {name} is {shown(value)}, not a time"
    return None


def _is_time(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True

"""Mailchimp's vocabulary in the simulator: the API's constants, ids and times as Mailchimp writes
them, the problem documents errors are answered with, an audience's settings (account, list,
merge fields, interests) and the request being routed (``_Call``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ERROR_TYPE = "https://mailchimp.com/developer/marketing/docs/errors/"
SCHEMA_BASE = "https://us1.api.mailchimp.com/schema/3.0"
STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending", "transactional", "archived")
# Which statuses each write may set ([spec] request-body enums).
SETTABLE = {
    "POST": ("subscribed", "unsubscribed", "cleaned", "pending", "transactional"),
    "PUT": ("subscribed", "unsubscribed", "cleaned", "pending", "transactional"),
    "PATCH": ("subscribed", "unsubscribed", "cleaned", "pending"),
}
MAX_COUNT = 1000
# The activity feed's ``activity_filters`` values ([spec] getListsIdMembersIdActivityFeed).
ACTIVITY_FILTERS = frozenset(
    {
        "bounce", "click", "conversation", "ecommerce_signup", "event", "web_engagement",
        "generic_signup", "landing_page_signup", "marketing_permission", "note", "open",
        "order", "postcard_sent", "sent", "signup", "squatter_signup", "unsub",
        "website_signup", "survey_response", "sms_bulk_sent", "inbox_thread",
        "qbo_payment_link", "video_call_transcripts",
    }
)  # fmt: skip
BULK_LIMIT = 500
MERGE_TYPES = (
    "text",
    "number",
    "address",
    "phone",
    "date",
    "url",
    "imageurl",
    "radio",
    "dropdown",
    "birthday",
    "zip",
)
CATEGORY_TYPES = ("checkboxes", "dropdown", "radio", "hidden")
WEBHOOK_EVENTS = ("subscribe", "unsubscribe", "profile", "cleaned", "upemail", "campaign")
WEBHOOK_SOURCES = ("user", "admin", "api")
# The merge fields a new Mailchimp audience starts with.
DEFAULT_MERGE_FIELDS = (
    ("FNAME", "First Name", "text"),
    ("LNAME", "Last Name", "text"),
    ("ADDRESS", "Address", "address"),
    ("PHONE", "Phone Number", "phone"),
    ("BIRTHDAY", "Birthday", "birthday"),
)
_EMAIL = re.compile(
    r"^[^@\s\"(),:;<>\[\]\\]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}$"
)
_DC_HOST = re.compile(r"^([a-z]+[0-9]+)\.api\.mailchimp\.com(:\d+)?$")
_VALIDATION_DETAIL = (
    "The resource submitted could not be validated. "
    "For field-specific details, see the 'errors' array."
)
_UNSUBSCRIBE_REASON = "N/A (Unsubscribed by an admin)"


def subscriber_hash(email: str) -> str:
    """Mailchimp's member id: the MD5 hex of the lower-cased address."""
    return hashlib.md5(email.strip().lower().encode("utf-8")).hexdigest()


def iso(moment: datetime) -> str:
    """Mailchimp's timestamp format: seconds, explicit +00:00 (sorts as text)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def epoch(moment: datetime) -> int:
    """Whole seconds since 1970 (naive datetimes are taken as UTC); how times are stored."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def _iso_epoch(seconds: int | None) -> str:
    """A stored time as Mailchimp shows it; unset is ``""``."""
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds, UTC).isoformat()


# unique_email_id is a bijection of the member's row number (odd multiplier mod 2**40): unique,
# stable across address changes, and reversible so filtering by it is a primary-key lookup.
_UE_MULTIPLIER = 2654435761
_UE_MODULUS = 1 << 40
_UE_INVERSE = pow(_UE_MULTIPLIER, -1, _UE_MODULUS)


def _unique_email_id(seq: int) -> str:
    return f"{seq * _UE_MULTIPLIER % _UE_MODULUS:010x}"


def _seq_of_unique_email_id(value: str) -> int:
    try:
        return int(value, 16) * _UE_INVERSE % _UE_MODULUS
    except ValueError:
        return -1


def _hex(seed: str, length: int = 10) -> str:
    return hashlib.md5(seed.encode("utf-8")).hexdigest()[:length]


class Problem(Exception):
    """A problem document to answer with (raised by handlers, rendered by ``handle``).

    Internal to the simulator; not :class:`mcsync.errors.ApiError`, which is the client's.
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(f"{status} {title}: {detail}")
        self.status, self.title, self.detail = status, title, detail
        self.errors = errors
        self.headers = headers or {}

    def document(self, instance: str) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": ERROR_TYPE,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        }
        if self.errors is not None:
            doc["errors"] = self.errors
        return doc


def _not_found() -> Problem:
    return Problem(404, "Resource Not Found", "The requested resource could not be found.")


def _invalid(errors: list[dict[str, str]], detail: str = _VALIDATION_DETAIL) -> Problem:
    return Problem(400, "Invalid Resource", detail, errors)


def _require(body: dict[str, Any], names: tuple[str, ...], where: str = "") -> None:
    """Mailchimp's answer to a body missing required fields (empty counts as missing)."""
    missing = [n for n in names if not body.get(n)]
    if missing:
        raise _invalid(
            [
                {
                    "field": where,
                    "message": "Required fields were not provided: " + ", ".join(missing),
                }
            ]
        )


@dataclass
class MergeField:
    merge_id: int
    tag: str
    name: str
    type: str
    required: bool = False
    public: bool = True
    default_value: str = ""
    help_text: str = ""

    def options(self) -> dict[str, Any]:
        by_type: dict[str, dict[str, Any]] = {
            "text": {"size": 25},
            "address": {"default_country": 164},
            "phone": {"phone_format": "US"},
            "date": {"date_format": "MM/DD/YYYY"},
            "birthday": {"date_format": "MM/DD"},
        }
        return by_type.get(self.type, {})


@dataclass
class InterestCategory:
    id: str
    title: str
    type: str
    display_order: int


@dataclass
class Interest:
    id: str
    category_id: str
    name: str
    display_order: int


@dataclass
class Account:
    key: str
    account_id: str
    dc: str
    name: str
    created: str


@dataclass
class MailList:
    """An audience's settings and counters; its members are rows in SQLite."""

    id: str
    web_id: int
    name: str
    account: Account
    date_created: str
    merge_fields: list[MergeField] = field(default_factory=list)
    categories: dict[str, InterestCategory] = field(default_factory=dict)
    interests: dict[str, Interest] = field(default_factory=dict)
    webhooks: dict[str, dict[str, Any]] = field(default_factory=dict)
    tag_ids: dict[str, int] = field(default_factory=dict)
    status_counts: Counter[str] = field(default_factory=Counter)
    interest_counts: Counter[str] = field(default_factory=Counter)  # subscribed members only
    last_sub_date: str = ""
    last_unsub_date: str = ""
    version: int = 0  # moves on every member write; cached totals and cursors go stale with it

    def merge_field(self, tag: str) -> MergeField | None:
        return next((f for f in self.merge_fields if f.tag == tag), None)


Row = dict[str, Any]
Handler = Callable[["_Call"], tuple[int, Any]]


@dataclass(frozen=True)
class _PageQuery:
    """A member-list filter and order at one version of the list (a cache key)."""

    lid: int
    version: int
    condition: str
    cursor_condition: str  # the same, with the last_changed window unusable for index choice
    args: tuple[Any, ...]
    sort_field: str | None
    direction: str


@dataclass
class _Call:
    """One request being routed: who asks, what, and the simulator time it runs at."""

    account: Account
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, list[str]]
    body: bytes
    now: datetime
    host: str

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def flag(self, name: str) -> bool:
        return (self.arg(name) or "").lower() == "true"

    def json_body(self) -> dict[str, Any]:
        if not self.body.strip():
            raise _invalid(
                [{"field": "", "message": "Schema describes object, NULL found instead"}]
            )
        try:
            value = json.loads(self.body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise Problem(
                400, "JSON Parse Error", "We encountered an unspecified JSON parsing error."
            ) from None
        if not isinstance(value, dict):
            raise _invalid(
                [
                    {
                        "field": "",
                        "message": f"Schema describes object, {type(value).__name__} found instead",
                    }
                ]
            )
        return value

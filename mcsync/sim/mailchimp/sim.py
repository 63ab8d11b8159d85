"""A stateful simulator of the Mailchimp Marketing API v3, faithful where mcsync depends on it.

Facts come from ``reference/mailchimp-api.md`` and the official spec
(``mailchimp/marketing-api.json``): member statuses and the rules between them (compliance state,
cleaned, forgotten emails, archiving by DELETE), ``last_changed`` windows and offset paging,
``fields``/``exclude_fields``, bulk subscribe, interests, merge fields, list webhooks, tags and
batch operations (see :mod:`mcsync.sim.mailchimp.batches`). Errors are problem documents like
Mailchimp's. Members live in an in-memory SQLite table (see the storage notes by ``_TABLE``) so
a million-member list pages in time proportional to the page, not the list.

Choices where the sources are silent: ``since_*``/``before_*`` filters are strict (after, before;
times have whole seconds); without ``status`` the member list leaves archived members out; the
default order is the order members were added; ``interests`` is absent from members of a list
without interests; new lists get Mailchimp's default merge fields (FNAME, LNAME, ADDRESS, PHONE,
BIRTHDAY); a write that changes nothing, and any tag change, leaves ``last_changed`` alone.

A member's activity feed (``GET /lists/{id}/members/{hash}/activity-feed``) holds the status
changes made since the simulator started (``unsub`` and ``generic_signup`` events with their
times), newest first; seeded history has none.

Not modelled: campaigns, segments, notes, opens and clicks, marketing permissions, ecommerce, the
hosted signup form (use :meth:`MailchimpSim.confirm_member` / :meth:`set_member_status` for what
a person does there), webhook deliveries, and the one-batch-at-a-time rule. Emails are not sent,
but the double opt-in emails Mailchimp would send are recorded: every API write that sets a
member's status to ``pending`` sends one, also to a member already pending (that is how the
confirmation is re-sent), in :attr:`MailchimpSim.confirmation_emails`. Batch results are served
at a pre-signed link, as object storage does: its query carries a signature that is checked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import json
import marshal
import operator
import re
import sqlite3
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote

from mcsync.sim.base import SimRequest, SimResponse
from mcsync.sim.mailchimp.batches import Batch, BatchInvalid, BatchQueue, parse_operations

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


# Storage is compact because a list may hold millions of members:
# - ``lid`` is the list's web_id and ``hkey`` the first 64 bits of the subscriber hash (the
#   full hash is recomputed from the address and checked on every lookup);
# - times are INTEGER epoch seconds (NULL = unset; a NULL status_changed means last_changed);
# - merge fields are a ``marshal`` blob (never queried in SQL); interests are the comma-joined
#   ids set to true (filtered in SQL with instr); tags and location are JSON;
# - ``seq`` is given explicitly and never reused, so it stands for the member's identity.
_COLUMNS = (
    "seq",
    "lid",
    "hkey",
    "email",
    "status",
    "merge_fields",
    "interests",
    "tags",
    "last_changed",
    "status_changed",
    "timestamp_opt",
    "timestamp_signup",
    "ip_signup",
    "ip_opt",
    "email_type",
    "language",
    "vip",
    "source",
    "unsubscribe_reason",
    "location",
)
# Row fields whose change is a change of the member (and moves last_changed).
_CHANGE_FIELDS = (
    "email",
    "status",
    "merge_fields",
    "interests",
    "timestamp_opt",
    "timestamp_signup",
    "ip_signup",
    "ip_opt",
    "email_type",
    "language",
    "vip",
    "location",
)
_TABLE = """
CREATE TABLE members (seq INTEGER PRIMARY KEY, lid INTEGER, hkey INTEGER, email TEXT,
  status TEXT, merge_fields BLOB, interests TEXT DEFAULT '', tags TEXT DEFAULT '[]',
  last_changed INTEGER, status_changed INTEGER, timestamp_opt INTEGER, timestamp_signup INTEGER,
  ip_signup TEXT DEFAULT '', ip_opt TEXT DEFAULT '', email_type TEXT DEFAULT 'html',
  language TEXT DEFAULT '', vip INTEGER DEFAULT 0, source TEXT DEFAULT 'Import',
  unsubscribe_reason TEXT DEFAULT '', location TEXT);
CREATE TABLE forgotten (lid INTEGER, hkey INTEGER, PRIMARY KEY (lid, hkey)) WITHOUT ROWID;
"""
# Member pages are found inside narrow covering indexes (one per useful order), and only the
# page's rows are read from the table: skipping an offset walks index entries, not rows.
_INDEXES = """
CREATE UNIQUE INDEX members_hash ON members (lid, hkey);
CREATE INDEX members_changed ON members (lid, last_changed, seq, status);
CREATE INDEX members_order ON members (lid, seq, status, last_changed);
"""
_DROP_INDEXES = "DROP INDEX members_hash; DROP INDEX members_changed; DROP INDEX members_order;"
_INSERT = f"INSERT INTO members ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_UPDATE = f"UPDATE members SET {', '.join(c + ' = ?' for c in _COLUMNS[1:])} WHERE seq = ?"
# Seeding binds only what varies; the rest are column defaults or derived here.
_SEED = (
    "INSERT INTO members (seq, lid, hkey, email, status, merge_fields, interests, "
    "last_changed, timestamp_opt, unsubscribe_reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, "
    "CASE WHEN ?5 IN ('pending', 'transactional') THEN NULL ELSE ?8 END, "
    "CASE WHEN ?5 = 'unsubscribed' THEN '{reason}' ELSE '' END)"
)
_SEED = _SEED.format(reason=_UNSUBSCRIBE_REASON)
_BULK_SEED = 20_000  # above this many rows, indexes are rebuilt after the insert (much faster)
_EMPTY_MERGE = marshal.dumps({})
_SMALL_WINDOW = 50_000
_CACHE_SIZE = 256


def _hkey(subscriber_hash_hex: str) -> int | None:
    """The indexed 64-bit key of a subscriber hash (None if it is not one)."""
    try:
        return int.from_bytes(bytes.fromhex(subscriber_hash_hex[:16]), "big", signed=True)
    except ValueError:
        return None


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


class MailchimpSim:
    """The simulator: ``handle`` answers API requests; the other methods seed and inspect."""

    def __init__(self, *, clock: Callable[[], datetime] | None = None, batch_delay: float = 0.5):
        self.lock = threading.RLock()
        self.request_log: list[tuple[str, str]] = []
        self.results_base_url: str | None = None  # else http://<Host header>
        # (list id, email) of every double opt-in email Mailchimp would have sent, in order.
        self.confirmation_emails: list[tuple[str, str]] = []
        self._signing_key = uuid.uuid4().hex.encode()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._accounts: dict[str, Account] = {}
        self._lists: dict[str, MailList] = {}
        self._counter = 0
        self._batches = BatchQueue(batch_delay)
        # (list id, member hash) -> (operations left to fail, their status code)
        self._failing_operations: dict[tuple[str, str], tuple[int, int]] = {}
        self._db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.executescript(_TABLE + _INDEXES)
        self._seq = 0
        self._routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = []
        self._totals: dict[_PageQuery, int] = {}
        self._cursors: dict[tuple[_PageQuery, int], tuple[Any, ...]] = {}
        self._page_hooks: list[list[Any]] = []  # [member pages still to answer, action]
        # member seq -> its activity-feed events, oldest first (status changes only)
        self._activity: dict[int, list[dict[str, Any]]] = {}
        self._add_routes()

    # ---------------------------------------------------------------- seeding and inspection

    def add_account(self, api_key: str) -> None:
        with self.lock:
            if api_key in self._accounts:
                return
            number = self._next()
            self._accounts[api_key] = Account(
                api_key,
                _hex(f"account:{number}", 25),
                api_key.rsplit("-", 1)[-1],
                f"Simulated Account {number}",
                iso(self._now()),
            )

    def add_list(self, api_key: str, name: str, list_id: str | None = None) -> str:
        """A new audience (with Mailchimp's default merge fields); adds the account if new."""
        with self.lock:
            self.add_account(api_key)
            number = self._next()
            list_id = list_id or _hex(f"list:{number}")
            if list_id in self._lists:
                raise ValueError(f"list {list_id} already exists")
            lst = MailList(list_id, number, name, self._accounts[api_key], iso(self._now()))
            self._lists[list_id] = lst
            for tag, label, kind in DEFAULT_MERGE_FIELDS:
                self.add_merge_field(list_id, tag, label, kind)
            return list_id

    def add_merge_field(
        self, list_id: str, tag: str, name: str, type: str = "text", *, required: bool = False
    ) -> int:
        with self.lock:
            lst = self._list(list_id)
            if type not in MERGE_TYPES:
                raise ValueError(f"merge field type {type!r} is not one of {MERGE_TYPES}")
            if lst.merge_field(tag.upper()) is not None:
                raise ValueError(f"merge tag {tag} already exists on list {list_id}")
            merge_id = max((f.merge_id for f in lst.merge_fields), default=0) + 1
            lst.merge_fields.append(MergeField(merge_id, tag.upper(), name, type, required))
            return merge_id

    def add_interest_category(self, list_id: str, title: str, type: str = "checkboxes") -> str:
        with self.lock:
            lst = self._list(list_id)
            if type not in CATEGORY_TYPES:
                raise ValueError(f"interest category type {type!r} is not one of {CATEGORY_TYPES}")
            category_id = _hex(f"category:{self._next()}")
            lst.categories[category_id] = InterestCategory(
                category_id, title, type, len(lst.categories)
            )
            return category_id

    def add_interest(self, list_id: str, category_id: str, name: str) -> str:
        with self.lock:
            lst = self._list(list_id)
            if category_id not in lst.categories:
                raise KeyError(f"no interest category {category_id} in list {list_id}")
            interest_id = _hex(f"interest:{self._next()}")
            order = sum(1 for i in lst.interests.values() if i.category_id == category_id)
            lst.interests[interest_id] = Interest(interest_id, category_id, name, order)
            return interest_id

    def seed_member(
        self,
        list_id: str,
        email: str,
        status: str,
        *,
        merge_fields: dict[str, Any] | None = None,
        interests: dict[str, bool] | None = None,
        last_changed: datetime | None = None,
    ) -> None:
        self.seed_members(
            list_id, [(email, status, merge_fields or {}, interests or {}, last_changed)]
        )

    def seed_members(
        self,
        list_id: str,
        rows: Iterable[tuple[str, str, dict[str, Any], dict[str, bool], datetime | None]],
    ) -> None:
        """Insert members as they are, without validation; built for millions of rows."""
        with self.lock:
            lst = self._list(list_id)
            default_time = epoch(self._now())
            statuses: Counter[str] = Counter(dict.fromkeys(STATUSES, 0))
            interest_counts: Counter[str] = Counter()
            first_seq = self._seq + 1
            last_sub = 0

            def tuples() -> Iterator[tuple[Any, ...]]:
                # The hot loop of a million-row seed: locals only, no per-row function layers.
                nonlocal last_sub
                md5, dumps, seq, lid = hashlib.md5, marshal.dumps, first_seq, lst.web_id
                from_bytes, known = int.from_bytes, statuses
                for email, status, merge, interests, changed in rows:
                    if status not in known:
                        raise ValueError(f"status {status!r} is not one of {STATUSES}")
                    when = (
                        default_time
                        if changed is None
                        else (int(changed.timestamp()) if changed.tzinfo else epoch(changed))
                    )
                    known[status] += 1
                    chosen = [k for k, on in interests.items() if on] if interests else ()
                    if status == "subscribed":
                        last_sub = max(last_sub, when)
                        for interest_id in chosen:
                            interest_counts[interest_id] += 1
                    yield (
                        seq,
                        lid,
                        from_bytes(md5(email.lower().encode()).digest()[:8], "big", signed=True),
                        email,
                        status,
                        dumps(merge) if merge else _EMPTY_MERGE,
                        ",".join(chosen),
                        when,
                    )
                    seq += 1

            chunks = _chunks(tuples(), _BULK_SEED)
            first = next(chunks, [])
            bulk = len(first) == _BULK_SEED
            self._db.execute("BEGIN")
            try:
                if bulk:  # rebuilding the indexes once beats a million random index inserts
                    _run_script(self._db, _DROP_INDEXES)
                self._db.executemany(_SEED, first)
                for chunk in chunks:
                    self._db.executemany(_SEED, chunk)
                if bulk:
                    _run_script(self._db, _INDEXES)
            except sqlite3.IntegrityError as error:
                self._db.execute("ROLLBACK")
                raise ValueError(f"an email is already on list {list_id}") from error
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._seq = first_seq + sum(statuses.values()) - 1
            lst.version += 1
            lst.status_counts.update(statuses)
            lst.interest_counts.update(interest_counts)
            if last_sub:
                lst.last_sub_date = max(lst.last_sub_date, _iso_epoch(last_sub))

    def member(self, list_id: str, email: str) -> dict[str, Any] | None:
        """The member as GET /lists/{id}/members/{hash} would return it (None if absent)."""
        with self.lock:
            self._batches.advance(self._now())
            lst = self._list(list_id)
            row = self._row(list_id, subscriber_hash(email))
            return self._render(lst, row) if row else None

    def members(self, list_id: str) -> Iterator[dict[str, Any]]:
        """Every member, archived included, in insertion order (read in chunks, lock per chunk)."""
        last = 0
        while True:
            with self.lock:
                self._batches.advance(self._now())
                lst = self._list(list_id)
                rows = self._db.execute(
                    "SELECT * FROM members WHERE lid = ? AND seq > ? ORDER BY seq LIMIT 1000",
                    (lst.web_id, last),
                ).fetchall()
                page = [self._render(lst, self._decode(r)) for r in rows]
            if not rows:
                return
            last = rows[-1]["seq"]
            yield from page

    def submitted_batches(self) -> list[Batch]:
        """Every batch not deleted, oldest first, with its operations (for test inspection)."""
        with self.lock:
            self._batches.advance(self._now())
            return self._batches.all()

    def fail_batch_operations(
        self, list_id: str, email: str, times: int = 1, status: int = 500
    ) -> None:
        """The next ``times`` batch operations on this member end in Mailchimp's internal
        error (a 5xx result inside a finished batch, the operation not applied), as happens
        now and then to single operations of a real batch."""
        with self.lock:
            self._failing_operations[(list_id, subscriber_hash(email))] = (times, status)

    def _operation_fault(self, path: str) -> int | None:
        """The status a batch operation on ``path`` fails with, if it is set to fail."""
        parts = path.strip("/").split("/")
        if len(parts) < 4 or parts[0] != "lists" or parts[2] != "members":
            return None
        key = (parts[1], _member_key(parts[3]))
        left, status = self._failing_operations.get(key, (0, 500))
        if left <= 0:
            return None
        self._failing_operations[key] = (left - 1, status)
        return status

    def set_member_status(self, list_id: str, email: str, status: str) -> None:
        """What a person or the account owner does in Mailchimp: any status, no API rules."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        self._edit(list_id, email, {"status": status})

    def confirm_member(self, list_id: str, email: str) -> None:
        """The person clicks the double opt-in link: pending becomes subscribed."""
        with self.lock:
            row = self._row(list_id, subscriber_hash(email))
            if row is None or row["status"] != "pending":
                raise ValueError(f"{email} is not pending on list {list_id}")
            self._edit(list_id, email, {"status": "subscribed"})

    def edit_member(
        self,
        list_id: str,
        email: str,
        *,
        merge_fields: dict[str, Any] | None = None,
        interests: dict[str, bool] | None = None,
        new_email: str | None = None,
    ) -> None:
        """The person updates their profile (or address) on a Mailchimp-hosted form."""
        changes: dict[str, Any] = {}
        if merge_fields is not None:
            changes["merge_fields"] = merge_fields
        if interests is not None:
            changes["interests"] = interests
        if new_email is not None:
            changes["email"] = new_email
        self._edit(list_id, email, changes)

    def forget_member(self, list_id: str, email: str) -> None:
        """The account owner deletes a member permanently (a GDPR erasure in the UI): the row
        goes, later members move up a place in every page, and the address cannot be re-added
        by the API."""
        with self.lock:
            lst = self._list(list_id)
            row = self._row(list_id, subscriber_hash(email))
            if row is None:
                raise KeyError(f"{email} is not on list {list_id}")
            self._delete_permanently(lst, row)

    def after_member_pages(self, pages: int, action: Callable[[], None]) -> None:
        """Run ``action`` once, right after the ``pages``-th member-list page from now
        (``GET /lists/{id}/members``, any list) has been answered, before any other request is
        handled: what people and staff do in Mailchimp while a client is paging. The paging
        itself stays real offset paging over the current data, so a member archived or deleted
        there moves every later member up a place, and a member who changes moves to the
        newest end of a ``last_changed`` order."""
        if pages < 1:
            raise ValueError("pages must be at least 1")
        with self.lock:
            self._page_hooks.append([pages, action])

    # ---------------------------------------------------------------- HTTP entry point

    def handle(self, request: SimRequest) -> SimResponse:
        with self.lock:
            self.request_log.append((request.method, request.path))
            now = self._now()
            self._batches.advance(now)
            try:
                response = self._handle(request, now)
            except Problem as error:
                return self._problem(error)
            if self._page_hooks and _is_member_page(request, response):
                self._run_page_hooks()
            return response

    def _run_page_hooks(self) -> None:
        """Count one member page answered; fire the actions it was the last page for."""
        due = []
        for hook in self._page_hooks:
            hook[0] -= 1
            if hook[0] == 0:
                due.append(hook)
        self._page_hooks = [h for h in self._page_hooks if h[0] > 0]
        for _, action in due:
            action()

    def _handle(self, request: SimRequest, now: datetime) -> SimResponse:
        host = request.headers.get("host", "127.0.0.1")
        if request.path.startswith("/_sim/batch-results/"):
            return self._results(request)
        if request.path != "/3.0" and not request.path.startswith("/3.0/"):
            raise _not_found()
        account = self._authenticate(request, host)
        call = _Call(
            account,
            request.method,
            request.path[4:].rstrip("/"),
            {},
            request.query,
            request.body,
            now,
            host,
        )
        status, payload = self._route(call)
        if payload is None:
            return SimResponse(status, {"X-Request-Id": str(uuid.uuid4())})
        payload = self._project(payload, call.query)
        response = SimResponse.json(status, payload)
        response.headers["X-Request-Id"] = str(uuid.uuid4())
        return response

    def _problem(self, error: Problem) -> SimResponse:
        instance = str(uuid.uuid4())
        response = SimResponse.json(
            error.status, error.document(instance), "application/problem+json; charset=utf-8"
        )
        response.headers["X-Request-Id"] = instance
        response.headers.update(error.headers)
        return response

    def _authenticate(self, request: SimRequest, host: str) -> Account:
        """HTTP Basic (any user, key as password) or Bearer; legacy ``apikey`` on GETs ([docs])."""
        keys: list[str] = []
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credential.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            keys.append(decoded.partition(":")[2])
        elif scheme.lower() == "bearer":
            keys.append(credential.strip())
        query_key = request.arg("apikey")
        if query_key is not None and request.method == "GET":
            keys.append(query_key)
        if not keys or not any(keys):
            raise Problem(401, "API Key Missing", "Your request did not include an API key.")
        account = self._accounts.get(keys[0])
        if account is None or any(k != keys[0] for k in keys):
            raise Problem(
                401,
                "API Key Invalid",
                "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
            )
        dc_match = _DC_HOST.match(host.lower())
        if dc_match and dc_match.group(1) != account.dc:
            raise Problem(
                403, "Wrong Datacenter", "The API key provided is linked to a different datacenter."
            )
        return account

    def _results(self, request: SimRequest) -> SimResponse:
        """The batch results archive; no auth, like the real pre-signed storage link, whose
        signature must match (S3 answers 403 AccessDenied otherwise)."""
        name = request.path.rsplit("/", 1)[-1]
        batch_id = name.removesuffix(".tar.gz")
        signature = request.arg("Signature") or ""
        if not hmac.compare_digest(signature, self._sign(batch_id)):
            return SimResponse(
                403,
                {"Content-Type": "application/xml"},
                b"<Error><Code>AccessDenied</Code><Message>Request has expired or the signature"
                b" does not match</Message></Error>",
            )
        archive = self._batches.archive(batch_id)
        if request.method != "GET" or archive is None:
            return SimResponse(
                404, {"Content-Type": "application/xml"}, b"<Error><Code>NoSuchKey</Code></Error>"
            )
        return SimResponse(200, {"Content-Type": "application/x-gzip"}, archive)

    # ---------------------------------------------------------------- routing

    def _add_routes(self) -> None:
        ident = r"([^/]+)"
        table: list[tuple[str, dict[str, Handler]]] = [
            ("", {"GET": self._get_root}),
            ("/ping", {"GET": self._get_ping}),
            ("/lists", {"GET": self._get_lists}),
            ("/lists/{}", {"GET": self._get_list, "POST": self._post_bulk}),
            ("/lists/{}/members", {"GET": self._get_members, "POST": self._post_member}),
            (
                "/lists/{}/members/{}",
                {
                    "GET": self._get_member,
                    "PUT": self._put_member,
                    "PATCH": self._patch_member,
                    "DELETE": self._archive,
                },
            ),
            ("/lists/{}/members/{}/tags", {"GET": self._get_tags, "POST": self._post_tags}),
            ("/lists/{}/members/{}/activity-feed", {"GET": self._get_activity_feed}),
            ("/lists/{}/members/{}/actions/delete-permanent", {"POST": self._forget}),
            (
                "/lists/{}/merge-fields",
                {"GET": self._get_merge_fields, "POST": self._post_merge_field},
            ),
            ("/lists/{}/merge-fields/{}", {"GET": self._get_merge_field}),
            (
                "/lists/{}/interest-categories",
                {"GET": self._get_categories, "POST": self._post_category},
            ),
            ("/lists/{}/interest-categories/{}", {"GET": self._get_category}),
            (
                "/lists/{}/interest-categories/{}/interests",
                {"GET": self._get_interests, "POST": self._post_interest},
            ),
            ("/lists/{}/interest-categories/{}/interests/{}", {"GET": self._get_interest}),
            ("/lists/{}/webhooks", {"GET": self._get_webhooks, "POST": self._post_webhook}),
            (
                "/lists/{}/webhooks/{}",
                {
                    "GET": self._get_webhook,
                    "PATCH": self._patch_webhook,
                    "DELETE": self._delete_webhook,
                },
            ),
            ("/batches", {"GET": self._get_batches, "POST": self._post_batch}),
            ("/batches/{}", {"GET": self._get_batch, "DELETE": self._delete_batch}),
        ]
        for template, handlers in table:
            pattern = re.escape(template).replace(r"\{\}", ident)
            self._routes.append((re.compile(f"^{pattern}$"), handlers))

    def _route(self, call: _Call) -> tuple[int, Any]:
        for pattern, handlers in self._routes:
            match = pattern.match(call.path)
            if match is None:
                continue
            handler = handlers.get(call.method)
            if handler is None:
                raise Problem(
                    405,
                    "Method Not Allowed",
                    "The requested method and resource are not compatible. See the "
                    "Allow header for this resource's available methods.",
                    headers={"Allow": ", ".join(handlers)},
                )
            call.params = {str(i): unquote(v) for i, v in enumerate(match.groups())}
            return handler(call)
        raise _not_found()

    # ---------------------------------------------------------------- account and lists

    def _get_root(self, call: _Call) -> tuple[int, Any]:
        account = call.account
        total = sum(
            lst.status_counts["subscribed"]
            for lst in self._lists.values()
            if lst.account is account
        )
        return 200, {
            "account_id": account.account_id,
            "login_id": account.account_id[:8],
            "account_name": account.name,
            "email": "owner@example.org",
            "first_name": "Sim",
            "last_name": "Owner",
            "username": account.name.lower().replace(" ", "_"),
            "avatar_url": "",
            "role": "owner",
            "member_since": account.created,
            "pricing_plan_type": "monthly",
            "first_payment": account.created,
            "account_timezone": "UTC",
            "account_industry": "Nonprofit",
            "contact": {
                "company": account.name,
                "addr1": "1 Sim Street",
                "addr2": "",
                "city": "Atlanta",
                "state": "GA",
                "zip": "30308",
                "country": "US",
            },
            "pro_enabled": False,
            "last_login": iso(call.now),
            "total_subscribers": total,
            "industry_stats": {"open_rate": 0, "bounce_rate": 0, "click_rate": 0},
            "_links": self._links(call.account.dc, "", ("self", "GET")),
        }

    def _get_ping(self, call: _Call) -> tuple[int, Any]:
        return 200, {"health_status": "Everything's Chimpy!"}

    def _get_lists(self, call: _Call) -> tuple[int, Any]:
        count, offset = _paging(call)
        lists = [lst for lst in self._lists.values() if lst.account is call.account]
        for name, compare in (
            ("since_date_created", operator.gt),
            ("before_date_created", operator.lt),
        ):
            value = call.arg(name)
            if value:
                bound = iso(_parse_time(value, name))
                lists = [lst for lst in lists if compare(lst.date_created, bound)]
        email = call.arg("email")
        if email:
            wanted = subscriber_hash(email)
            lists = [
                lst
                for lst in lists
                if (row := self._row(lst.id, wanted)) is not None and row["status"] != "archived"
            ]
        if call.arg("sort_field") == "date_created":
            lists.sort(
                key=lambda lst: lst.date_created,
                reverse=(call.arg("sort_dir") or "").upper() == "DESC",
            )
        return 200, {
            "lists": [self._render_list(call, lst) for lst in lists[offset : offset + count]],
            "total_items": len(lists),
            "constraints": {
                "may_create": True,
                "max_instances": 100,
                "current_total_instances": len(lists),
            },
            "_links": self._links(call.account.dc, "/lists", ("self", "GET"), ("create", "POST")),
        }

    def _get_list(self, call: _Call) -> tuple[int, Any]:
        return 200, self._render_list(call, self._own_list(call))

    def _render_list(self, call: _Call, lst: MailList) -> dict[str, Any]:
        counts = lst.status_counts
        stats: dict[str, Any] = {
            "member_count": counts["subscribed"],
            "unsubscribe_count": counts["unsubscribed"],
            "cleaned_count": counts["cleaned"],
            "member_count_since_send": counts["subscribed"],
            "unsubscribe_count_since_send": counts["unsubscribed"],
            "cleaned_count_since_send": counts["cleaned"],
            "campaign_count": 0,
            "campaign_last_sent": "",
            "merge_field_count": len(lst.merge_fields),
            "avg_sub_rate": 0,
            "avg_unsub_rate": 0,
            "target_sub_rate": 0,
            "open_rate": 0,
            "click_rate": 0,
            "last_sub_date": lst.last_sub_date,
            "last_unsub_date": lst.last_unsub_date,
        }
        if call.flag("include_total_contacts"):
            stats["total_contacts"] = sum(n for s, n in counts.items() if s != "archived")
        return {
            "id": lst.id,
            "web_id": lst.web_id,
            "name": lst.name,
            "contact": {
                "company": lst.account.name,
                "address1": "1 Sim Street",
                "address2": "",
                "city": "Atlanta",
                "state": "GA",
                "zip": "30308",
                "country": "US",
                "phone": "",
            },
            "permission_reminder": "You signed up on our website.",
            "use_archive_bar": True,
            "campaign_defaults": {
                "from_name": lst.account.name,
                "from_email": "owner@example.org",
                "subject": "",
                "language": "en",
            },
            "notify_on_subscribe": "",
            "notify_on_unsubscribe": "",
            "date_created": lst.date_created,
            "list_rating": 0,
            "email_type_option": False,
            "subscribe_url_short": f"http://eepurl.com/sim{lst.web_id}",
            "subscribe_url_long": f"https://sim.{lst.account.dc}.list-manage.com/subscribe?id={lst.id}",
            "beamer_address": f"{lst.id}@inbound.mailchimp.com",
            "visibility": "pub",
            "double_optin": False,
            "has_welcome": False,
            "marketing_permissions": False,
            "modules": [],
            "stats": stats,
            "_links": self._links(
                call.account.dc,
                f"/lists/{lst.id}",
                ("self", "GET"),
                ("parent", "GET"),
                ("update", "PATCH"),
                ("batch-sub-unsub-members", "POST"),
                ("members", "GET"),
                ("merge-fields", "GET"),
                ("interest-categories", "GET"),
                ("webhooks", "GET"),
            ),
        }

    # ---------------------------------------------------------------- reading members

    def _get_members(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        count, offset = _paging(call)
        where: list[str] = ["lid = ?"]
        window: list[int] = []  # positions of last_changed bounds, see _PageQuery
        args: list[Any] = [lst.web_id]
        status = call.arg("status")
        if status:
            if status not in STATUSES:
                raise _invalid([{"field": "status", "message": "Value is not one of enum values"}])
            where.append("status = ?")
            args.append(status)
        else:  # archived contacts are left out unless asked for by status
            where.append("status != 'archived'")
        for name, column, op in (
            ("since_last_changed", "last_changed", ">"),
            ("before_last_changed", "last_changed", "<"),
            ("since_timestamp_opt", "timestamp_opt", ">"),
            ("before_timestamp_opt", "timestamp_opt", "<"),
        ):
            value = call.arg(name)
            if value:
                where.append(f"{column} {op} ?")
                args.append(epoch(_parse_time(value, name)))
                if column == "last_changed":
                    window.append(len(where) - 1)
        if call.arg("unsubscribed_since"):
            if status != "unsubscribed":
                raise _invalid(
                    [
                        {
                            "field": "unsubscribed_since",
                            "message": "unsubscribed_since can only be used with "
                            "status=unsubscribed",
                        }
                    ]
                )
            where.append("coalesce(status_changed, last_changed) > ?")
            args.append(epoch(_parse_time(call.arg("unsubscribed_since"), "unsubscribed_since")))
        if call.flag("since_last_campaign") and not status:
            raise _invalid(
                [
                    {
                        "field": "since_last_campaign",
                        "message": "A member status is required to use this filter",
                    }
                ]
            )
        if call.arg("unique_email_id"):
            where.append("seq = ?")
            args.append(_seq_of_unique_email_id(call.arg("unique_email_id") or ""))
        if call.arg("email_type"):
            where.append("email_type = ?")
            args.append(call.arg("email_type"))
        if call.flag("vip_only"):
            where.append("vip = 1")
        where_sql, interest_args = self._interest_filter(call, lst)
        if where_sql:
            where.append(where_sql)
            args.extend(interest_args)
        sort_field = call.arg("sort_field") or None
        if sort_field and sort_field not in ("timestamp_opt", "timestamp_signup", "last_changed"):
            raise _invalid([{"field": "sort_field", "message": "Value is not one of enum values"}])
        direction = "DESC" if (call.arg("sort_dir") or "").upper() == "DESC" else "ASC"
        condition = " AND ".join(where)
        # A unary + keeps a term out of index choice: a cursor, not the window, bounds the scan.
        cursor_condition = " AND ".join(f"+{w}" if i in window else w for i, w in enumerate(where))
        query = _PageQuery(
            lst.web_id, lst.version, condition, cursor_condition, tuple(args), sort_field, direction
        )
        if len(where) == 2:  # only the status condition: the counters know the total
            total = (
                lst.status_counts[status]
                if status
                else sum(n for s, n in lst.status_counts.items() if s != "archived")
            )
        else:
            total = self._total(query)
        # A narrow last_changed window is cheaper to sort than to find by walking the list in
        # seq order; a wide one the other way round.
        narrow = bool(window) and total <= _SMALL_WINDOW
        wanted = _wanted(call.query, ("members",))  # e.g. fields=total_items: no page needed
        seqs = self._page(query, count, offset, narrow=narrow) if wanted else []
        found = {
            r["seq"]: r
            for r in self._db.execute(
                f"SELECT * FROM members WHERE seq IN ({', '.join('?' * len(seqs))})", seqs
            )
        }
        links = _wanted(call.query, ("members", "_links"))
        return 200, {
            "members": [self._render(lst, self._decode(found[q]), links=links) for q in seqs],
            "list_id": lst.id,
            "total_items": total,
            "_links": self._links(
                call.account.dc,
                f"/lists/{lst.id}/members",
                ("self", "GET"),
                ("parent", "GET"),
                ("create", "POST"),
            ),
        }

    def _total(self, query: _PageQuery) -> int:
        """COUNT(*) of a filter, remembered until the list changes (paging repeats it)."""
        total = self._totals.get(query)
        if total is None:
            sql = f"SELECT COUNT(*) FROM members WHERE {query.condition}"
            total = self._totals[query] = self._db.execute(sql, query.args).fetchone()[0]
            while len(self._totals) > _CACHE_SIZE:
                del self._totals[next(iter(self._totals))]
        return int(total)

    def _page(self, query: _PageQuery, count: int, offset: int, *, narrow: bool) -> list[int]:
        """The seqs of one page, found in an index.

        Reading page after page, each request continues from where the previous one ended
        (a keyset cursor, valid while the list is unchanged), so a page costs the same at offset
        900,000 as at 0; any other offset walks the index from the start.
        """
        hint = " INDEXED BY members_changed" if narrow else ""
        way = query.direction
        order = f"{query.sort_field} {way}, seq {way}" if query.sort_field else f"seq {way}"
        columns = f"{query.sort_field}, seq" if query.sort_field else "seq"
        cursor = self._cursors.pop((query, offset), None)
        keyable = query.sort_field in (None, "last_changed")
        if cursor is not None and keyable:
            condition = query.condition if narrow else query.cursor_condition
            compare = ">" if way == "ASC" else "<"
            after = f"({columns}) {compare} ({', '.join('?' * len(cursor))})"
            sql = (
                f"SELECT {columns} FROM members{hint} WHERE {condition} AND {after} "
                f"ORDER BY {order} LIMIT ?"
            )
            rows = self._db.execute(sql, [*query.args, *cursor, count]).fetchall()
        else:
            sql = (
                f"SELECT {columns} FROM members{hint} WHERE {query.condition} "
                f"ORDER BY {order} LIMIT ? OFFSET ?"
            )
            rows = self._db.execute(sql, [*query.args, count, offset]).fetchall()
        if rows and keyable:
            self._cursors[(query, offset + len(rows))] = tuple(rows[-1])
            while len(self._cursors) > _CACHE_SIZE:
                del self._cursors[next(iter(self._cursors))]
        return [row[-1] for row in rows]

    def _interest_filter(self, call: _Call, lst: MailList) -> tuple[str, list[Any]]:
        names = ("interest_category_id", "interest_ids", "interest_match")
        given = [call.arg(n) for n in names]
        if not any(given):
            return "", []
        if not all(given):
            raise _invalid(
                [
                    {
                        "field": "interest_match",
                        "message": "interest_category_id, "
                        "interest_ids and interest_match must be used together",
                    }
                ]
            )
        category_id, ids_text, match = given
        if category_id not in lst.categories:
            raise _not_found()
        ids = [i for i in (ids_text or "").split(",") if i]
        if match not in ("any", "all", "none") or any(i not in lst.interests for i in ids):
            raise _invalid([{"field": "interest_ids", "message": "Invalid interest id or match"}])
        tests = [f"instr(',' || interests || ',', ',{i},') > 0" for i in ids]
        joined = " AND ".join(tests) if match == "all" else " OR ".join(tests)
        return (f"NOT ({joined})" if match == "none" else f"({joined})"), []

    def _get_member(self, call: _Call) -> tuple[int, Any]:
        lst, row = self._own_member(call)
        return 200, self._render(lst, row)

    def _get_activity_feed(self, call: _Call) -> tuple[int, Any]:
        """The member's recent activity, newest first, filtered by ``activity_filters``
        (``signup`` stands for every kind of sign-up), paged by ``count`` and ``offset``."""
        lst, row = self._own_member(call)
        count, offset = _paging(call)
        filters = {f for value in call.query.get("activity_filters", []) for f in value.split(",")}
        unknown = filters - ACTIVITY_FILTERS
        if unknown:
            raise _invalid(
                [{"field": "activity_filters", "message": f"Invalid filter {sorted(unknown)[0]}"}]
            )
        events = [
            e
            for e in reversed(self._activity.get(row["seq"], []))
            if not filters
            or e["activity_type"] in filters
            or ("signup" in filters and e["activity_type"].endswith("_signup"))
        ]
        return 200, {
            "email_id": row["hash"],
            "list_id": lst.id,
            "activity": [dict(e) for e in events[offset : offset + count]],
            "_links": self._links(
                call.account.dc,
                f"/lists/{lst.id}/members/{row['hash']}/activity-feed",
                ("self", "GET"),
                ("parent", "GET"),
            ),
        }

    def _record_status_event(self, row: Row, stamp: int, *, admin: bool) -> None:
        """A status change as the activity feed shows it: ``unsub`` for an unsubscribe, a
        ``generic_signup`` for a subscribe; other statuses leave no event."""
        event: dict[str, Any]
        if row["status"] == "unsubscribed":
            event = {
                "activity_type": "unsub",
                "created_at_timestamp": _iso_epoch(stamp),
                "is_admin_unsubscribed": admin,
                "unsubscribe_reason": row["unsubscribe_reason"],
            }
        elif row["status"] == "subscribed":
            event = {
                "activity_type": "generic_signup",
                "created_at_timestamp": _iso_epoch(stamp),
                "signup_category": "API" if admin else "Hosted form",
            }
        else:
            return
        self._activity.setdefault(row["seq"], []).append(event)

    def _get_tags(self, call: _Call) -> tuple[int, Any]:
        lst, row = self._own_member(call)
        count, offset = _paging(call)
        tags = row["tags"]
        return 200, {
            "tags": tags[offset : offset + count],
            "total_items": len(tags),
            "_links": self._links(
                call.account.dc,
                f"/lists/{lst.id}/members/{row['hash']}/tags",
                ("self", "GET"),
                ("create", "POST"),
            ),
        }

    # ---------------------------------------------------------------- writing members

    def _post_member(self, call: _Call) -> tuple[int, Any]:
        return self._write_member(call, None, "POST")

    def _put_member(self, call: _Call) -> tuple[int, Any]:
        return self._write_member(call, _member_key(call.params["1"]), "PUT")

    def _patch_member(self, call: _Call) -> tuple[int, Any]:
        return self._write_member(call, _member_key(call.params["1"]), "PATCH")

    def _write_member(self, call: _Call, key: str | None, method: str) -> tuple[int, Any]:
        lst = self._own_list(call)
        row = self._write(
            lst,
            key,
            call.json_body(),
            method,
            call.now,
            skip_merge_validation=call.flag("skip_merge_validation"),
        )
        return 200, self._render(lst, row)

    def _archive(self, call: _Call) -> tuple[int, Any]:
        """DELETE archives: hidden from the audience, data kept, revivable by PUT/PATCH."""
        lst, row = self._own_member(call)
        if row["status"] != "archived":
            new = dict(
                row, status="archived", last_changed=epoch(call.now), status_changed=epoch(call.now)
            )
            self._save(lst, row, new)
        return 204, None

    def _forget(self, call: _Call) -> tuple[int, Any]:
        """delete-permanent: the row goes and the address can never be added by the API again."""
        lst, row = self._own_member(call)
        self._delete_permanently(lst, row)
        return 204, None

    def _delete_permanently(self, lst: MailList, row: Row) -> None:
        self._db.execute("DELETE FROM members WHERE seq = ?", (row["seq"],))
        self._activity.pop(row["seq"], None)
        self._count(lst, row, -1)
        lst.version += 1
        self._db.execute(
            "INSERT OR IGNORE INTO forgotten VALUES (?, ?)", (lst.web_id, _hkey(row["hash"]))
        )

    def _post_tags(self, call: _Call) -> tuple[int, Any]:
        """Tags change without touching ``last_changed`` (Mailchimp does not bump it for tags)."""
        lst, row = self._own_member(call)
        body = call.json_body()
        tags = body.get("tags")
        if not isinstance(tags, list):
            raise _invalid([{"field": "", "message": "Required fields were not provided: tags"}])
        current = {t["name"]: t for t in row["tags"]}
        for index, tag in enumerate(tags):
            if (
                not isinstance(tag, dict)
                or not isinstance(tag.get("name"), str)
                or tag.get("status") not in ("active", "inactive")
            ):
                raise _invalid(
                    [
                        {
                            "field": f"tags.item:{index}",
                            "message": "Each tag needs a name and a status of active or inactive",
                        }
                    ]
                )
        for tag in tags:
            name = tag["name"].strip()
            if tag["status"] == "inactive":
                current.pop(name, None)
            elif name and name not in current:
                current[name] = {
                    "id": self._tag_id(lst, name),
                    "name": name,
                    "date_added": iso(call.now),
                }
        self._save(lst, row, dict(row, tags=list(current.values())))
        return 204, None

    def _post_bulk(self, call: _Call) -> tuple[int, Any]:
        """POST /lists/{id}: up to 500 members, each succeeding or failing on its own."""
        lst = self._own_list(call)
        body = call.json_body()
        members = body.get("members")
        if not isinstance(members, list):
            raise _invalid([{"field": "", "message": "Required fields were not provided: members"}])
        if len(members) > BULK_LIMIT:
            raise _invalid(
                [
                    {
                        "field": "members",
                        "message": f"Please limit your request to {BULK_LIMIT} members or fewer",
                    }
                ],
                f"You can only submit up to {BULK_LIMIT} members per request.",
            )
        update_existing = body.get("update_existing") is True
        skip_duplicates = call.flag("skip_duplicate_check")
        created: list[dict[str, Any]] = []
        updated: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        for index, item in enumerate(members):
            email = item.get("email_address") if isinstance(item, dict) else None
            key = subscriber_hash(email) if isinstance(email, str) else None
            if key is not None and key in seen:
                if not skip_duplicates:
                    errors.append(
                        {
                            "email_address": email,
                            "error": f"{email} was included more than once in this request",
                            "error_code": "ERROR_GENERIC",
                            "field": "",
                            "field_message": "",
                        }
                    )
                continue
            if key is not None:
                seen.add(key)
            existing = self._row(lst.id, key) if key is not None else None
            if existing is not None and existing["status"] != "archived" and not update_existing:
                errors.append(
                    {
                        "email_address": email,
                        "error": f"{email} is already a list "
                        "member, do you want to update? please provide update_existing:"
                        "true in the request body",
                        "error_code": "ERROR_CONTACT_EXISTS",
                        "field": "",
                        "field_message": "",
                    }
                )
                continue
            try:
                if not isinstance(item, dict):
                    raise _invalid([{"field": "", "message": "Schema describes object"}])
                body_item = dict(item)
                body_item["status_if_new"] = item.get("status")
                row = self._write(
                    lst,
                    key,
                    body_item,
                    "PUT" if existing else "POST",
                    call.now,
                    skip_merge_validation=call.flag("skip_merge_validation"),
                    where=f"members.item:{index}",
                )
            except Problem as error:
                problem = (error.errors or [{}])[0]
                errors.append(
                    {
                        "email_address": email or "",
                        "error": error.detail,
                        "error_code": "ERROR_GENERIC",
                        "field": problem.get("field", ""),
                        "field_message": problem.get("message", ""),
                    }
                )
                continue
            (updated if existing else created).append(self._render(lst, row))
        return 200, {
            "new_members": created,
            "updated_members": updated,
            "errors": errors,
            "total_created": len(created),
            "total_updated": len(updated),
            "error_count": len(errors),
            "_links": self._links(call.account.dc, f"/lists/{lst.id}", ("parent", "GET")),
        }

    def _write(
        self,
        lst: MailList,
        key: str | None,
        body: dict[str, Any],
        method: str,
        now: datetime,
        *,
        skip_merge_validation: bool,
        where: str = "",
    ) -> Row:
        """Validate and apply one member write (POST, PUT or PATCH) with Mailchimp's rules."""
        _check_body(body, method, where)
        given = body.get("email_address")
        email: str | None = given.strip() if isinstance(given, str) else None
        if email is not None and not _EMAIL.match(email):
            raise _invalid(
                [{"field": _at(where, "email_address"), "message": "Invalid email"}],
                f"{email} looks fake or invalid, please enter a real email address.",
            )
        if method == "POST":
            key = subscriber_hash(email or "")
        elif method == "PUT" and email is not None and key != subscriber_hash(email):
            raise _invalid(
                [
                    {
                        "field": _at(where, "email_address"),
                        "message": "The subscriber hash in the URL does not match the email "
                        "address",
                    }
                ],
                "The email address in the request body does not match the subscriber "
                "hash in the URL.",
            )
        assert key is not None
        old = self._row(lst.id, key)
        if method == "PATCH" and old is None:
            raise _not_found()
        if method == "POST" and old is not None and old["status"] != "archived":
            raise Problem(
                400,
                "Member Exists",
                f"{email} is already a list member. Use PUT to insert or update list members.",
            )
        if old is None and method == "PUT":
            # [spec]: email_address and status_if_new are required only for a new address.
            missing = [n for n in ("email_address", "status_if_new") if body.get(n) is None]
            if missing:
                raise _invalid(
                    [
                        {
                            "field": where,
                            "message": "Required fields were not provided: " + ", ".join(missing),
                        }
                    ]
                )
        if old is None:
            self._refuse_forgotten(lst, key, email or "")
        # status: POST sets it; PUT applies status, else status_if_new for new (or archived)
        # members; PATCH only when given.
        wanted = body.get("status")
        if wanted is None and method == "PUT" and (old is None or old["status"] == "archived"):
            wanted = body.get("status_if_new")
        address = (old or {}).get("email") or email or ""
        if wanted is not None and old is not None:
            _check_transition(address, old["status"], wanted)
        merge = dict(old["merge_fields"]) if old else {}
        merge.update(self._checked_merge(lst, body.get("merge_fields"), where))
        if not skip_merge_validation:
            missing = [
                f.tag for f in lst.merge_fields if f.required and merge.get(f.tag, "") in ("", None)
            ]
            if missing:
                raise _invalid(
                    [{"field": t, "message": "Please enter a value"} for t in missing],
                    "Your merge fields were invalid.",
                )
        interests = dict(old["interests"]) if old else {}
        interests.update(self._checked_interests(lst, body.get("interests"), where))
        stamp = epoch(now)
        new: Row = (
            dict(old)
            if old
            else {
                "seq": None,
                "list_id": lst.id,
                "hash": key,
                "email": email,
                "status": wanted,
                "merge_fields": {},
                "interests": {},
                "tags": [],
                "last_changed": stamp,
                "status_changed": stamp,
                "timestamp_opt": None,
                "timestamp_signup": None,
                "ip_signup": "",
                "ip_opt": "",
                "email_type": "html",
                "language": "",
                "vip": 0,
                "source": "API - Generic",
                "unsubscribe_reason": "",
                "location": None,
            }
        )
        new["merge_fields"], new["interests"] = merge, interests
        if method == "PATCH" and email is not None and subscriber_hash(email) != key:
            self._change_address(lst, new, email)
        elif email is not None:
            new["email"] = email
        for name in (
            "email_type",
            "language",
            "ip_signup",
            "ip_opt",
            "timestamp_signup",
            "timestamp_opt",
        ):
            if body.get(name) is not None:
                if not name.startswith("timestamp"):
                    new[name] = body[name]
                else:
                    new[name] = epoch(_parse_time(body[name], name)) if body[name] else None
        if body.get("vip") is not None:
            new["vip"] = int(body["vip"])
        if body.get("location") is not None:
            new["location"] = {
                k: body["location"][k] for k in ("latitude", "longitude") if k in body["location"]
            }
        if old is None and method == "POST" and body.get("tags"):
            new["tags"] = [
                {"id": self._tag_id(lst, t), "name": t, "date_added": iso(now)}
                for t in dict.fromkeys(body["tags"])
            ]
        if wanted is not None and (old is None or old["status"] != wanted):
            _apply_status(lst, new, wanted, stamp, opt_given=bool(body.get("timestamp_opt")))
        new["interests"] = {k: True for k, on in new["interests"].items() if on}
        if old is None or any(new[c] != old[c] for c in _CHANGE_FIELDS):
            new["last_changed"] = stamp
        self._save(lst, old, new)
        if wanted is not None and (old is None or old["status"] != wanted):
            self._record_status_event(new, stamp, admin=True)
        if wanted == "pending":
            # Setting pending emails the confirmation link, again if the member was pending.
            self.confirmation_emails.append((lst.id, str(new["email"])))
        return new

    def _change_address(self, lst: MailList, row: Row, new_email: str) -> None:
        """PATCH with a new address: the hash follows it, unique_email_id stays ([obs])."""
        if row["status"] != "subscribed":
            raise _invalid(
                [{"field": "email_address", "message": "Cannot change address"}],
                "You can only update email addresses for members with a status of 'subscribed'.",
            )
        new_key = subscriber_hash(new_email)
        if self._row(lst.id, new_key) is not None:
            raise Problem(
                400,
                "Member Exists",
                f"{new_email} is already a list member. Use PUT to insert or update list members.",
            )
        self._refuse_forgotten(lst, new_key, new_email)
        row["hash"], row["email"] = new_key, new_email

    def _refuse_forgotten(self, lst: MailList, key: str, email: str) -> None:
        if self._db.execute(
            "SELECT 1 FROM forgotten WHERE lid = ? AND hkey = ?", (lst.web_id, _hkey(key))
        ).fetchone():
            raise Problem(
                400,
                "Forgotten Email Not Subscribed",
                f"{email} was permanently deleted and cannot be re-imported. The "
                "contact must re-subscribe to get back on the list.",
            )

    def _checked_merge(self, lst: MailList, values: Any, where: str) -> dict[str, Any]:
        if values is None:
            return {}
        errors: list[dict[str, str]] = []
        for tag, value in values.items():
            merge_field = lst.merge_field(tag.upper()) if isinstance(tag, str) else None
            if merge_field is None:
                errors.append({"field": tag, "message": f"Merge field {tag} does not exist"})
            elif merge_field.type == "address":
                if value != "" and not (
                    isinstance(value, dict)
                    and all(
                        isinstance(value.get(k), str) and value.get(k)
                        for k in ("addr1", "city", "state", "zip")
                    )
                ):
                    errors.append({"field": tag, "message": "Please enter a complete address"})
            elif merge_field.type == "number":
                if value != "" and not _is_number(value):
                    errors.append({"field": tag, "message": "Please enter a number"})
            elif not isinstance(value, (str, int, float)) or isinstance(value, bool):
                errors.append({"field": tag, "message": "Please enter a valid value"})
        if errors:
            raise _invalid(
                [dict(e, field=_at(where, "merge_fields." + e["field"])) for e in errors]
                if where
                else errors,
                "Your merge fields were invalid.",
            )
        return {tag.upper(): value for tag, value in values.items()}

    def _checked_interests(self, lst: MailList, values: Any, where: str) -> dict[str, bool]:
        if values is None:
            return {}
        for interest_id, on in values.items():
            if interest_id not in lst.interests:
                raise _invalid(
                    [
                        {
                            "field": _at(where, "interests"),
                            "message": f"Invalid interest ID: '{interest_id}'",
                        }
                    ],
                    f"Invalid interest ID: '{interest_id}'",
                )
            if not isinstance(on, bool):
                raise _invalid(
                    [
                        {
                            "field": _at(where, f"interests.{interest_id}"),
                            "message": "Schema describes boolean",
                        }
                    ]
                )
        return dict(values)

    def _edit(self, list_id: str, email: str, changes: dict[str, Any]) -> None:
        """A change made outside the API (by the person or in the Mailchimp UI)."""
        with self.lock:
            now = self._now()
            self._batches.advance(now)
            lst = self._list(list_id)
            old = self._row(list_id, subscriber_hash(email))
            if old is None:
                raise KeyError(f"{email} is not on list {list_id}")
            stamp = epoch(now)
            new = dict(old)
            if "merge_fields" in changes:
                new["merge_fields"] = {
                    **old["merge_fields"],
                    **{k.upper(): v for k, v in changes["merge_fields"].items()},
                }
            if "interests" in changes:
                new["interests"] = {**old["interests"], **changes["interests"]}
            if "email" in changes:
                new["email"], new["hash"] = changes["email"], subscriber_hash(changes["email"])
                if new["hash"] != old["hash"] and self._row(list_id, new["hash"]) is not None:
                    raise ValueError(f"{changes['email']} is already on list {list_id}")
            if "status" in changes and changes["status"] != old["status"]:
                _apply_status(lst, new, changes["status"], stamp, opt_given=False)
                if changes["status"] == "unsubscribed":
                    new["unsubscribe_reason"] = "N/A (Unsubscribed by the contact)"
            new["interests"] = {k: True for k, on in new["interests"].items() if on}
            if any(new[c] != old[c] for c in _CHANGE_FIELDS):
                new["last_changed"] = stamp
                self._save(lst, old, new)
                if new["status"] != old["status"]:
                    self._record_status_event(new, stamp, admin=False)

    # ---------------------------------------------------------------- merge fields, interests

    def _get_merge_fields(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        count, offset = _paging(call)
        fields = lst.merge_fields
        if call.arg("type"):
            fields = [f for f in fields if f.type == call.arg("type")]
        if call.arg("required"):
            fields = [f for f in fields if f.required == call.flag("required")]
        return 200, {
            "merge_fields": [
                self._render_merge(call, lst, f) for f in fields[offset : offset + count]
            ],
            "list_id": lst.id,
            "total_items": len(fields),
            "_links": self._links(
                call.account.dc,
                f"/lists/{lst.id}/merge-fields",
                ("self", "GET"),
                ("create", "POST"),
            ),
        }

    def _get_merge_field(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        found = next((f for f in lst.merge_fields if str(f.merge_id) == call.params["1"]), None)
        if found is None:
            raise _not_found()
        return 200, self._render_merge(call, lst, found)

    def _post_merge_field(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        body = call.json_body()
        _require(body, ("name", "type"))
        if body["type"] not in MERGE_TYPES:
            raise _invalid([{"field": "type", "message": "Value is not one of enum values"}])
        tag = str(body.get("tag") or f"MMERGE{len(lst.merge_fields) + 1}").upper()
        if len(tag) > 10 or not re.fullmatch(r"[A-Z0-9_]+", tag) or lst.merge_field(tag):
            raise _invalid(
                [{"field": "tag", "message": f'The tag "{tag}" is invalid or already in use'}]
            )
        merge_id = self.add_merge_field(
            lst.id, tag, body["name"], body["type"], required=body.get("required") is True
        )
        found = next(f for f in lst.merge_fields if f.merge_id == merge_id)
        found.public = body.get("public", True) is True
        found.default_value = str(body.get("default_value", ""))
        found.help_text = str(body.get("help_text", ""))
        return 200, self._render_merge(call, lst, found)

    def _render_merge(self, call: _Call, lst: MailList, f: MergeField) -> dict[str, Any]:
        return {
            "merge_id": f.merge_id,
            "tag": f.tag,
            "name": f.name,
            "type": f.type,
            "required": f.required,
            "default_value": f.default_value,
            "public": f.public,
            "display_order": f.merge_id + 1,
            "options": f.options(),
            "help_text": f.help_text,
            "list_id": lst.id,
            "_links": self._links(
                call.account.dc,
                f"/lists/{lst.id}/merge-fields/{f.merge_id}",
                ("self", "GET"),
                ("parent", "GET"),
                ("update", "PATCH"),
                ("delete", "DELETE"),
            ),
        }

    def _get_categories(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        count, offset = _paging(call)
        categories = [
            c for c in lst.categories.values() if not call.arg("type") or c.type == call.arg("type")
        ]
        return 200, {
            "list_id": lst.id,
            "total_items": len(categories),
            "categories": [
                self._render_category(call, lst, c) for c in categories[offset : offset + count]
            ],
            "_links": self._links(
                call.account.dc,
                f"/lists/{lst.id}/interest-categories",
                ("self", "GET"),
                ("create", "POST"),
            ),
        }

    def _get_category(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        return 200, self._render_category(call, lst, self._category(lst, call))

    def _post_category(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        body = call.json_body()
        _require(body, ("title", "type"))
        if body["type"] not in CATEGORY_TYPES:
            raise _invalid([{"field": "type", "message": "Value is not one of enum values"}])
        if any(c.title == body["title"] for c in lst.categories.values()):
            raise _invalid(
                [{"field": "title", "message": "Already exists"}],
                f'Cannot add "{body["title"]}" because it already exists on the list.',
            )
        category_id = self.add_interest_category(lst.id, str(body["title"]), body["type"])
        return 200, self._render_category(call, lst, lst.categories[category_id])

    def _render_category(self, call: _Call, lst: MailList, c: InterestCategory) -> dict[str, Any]:
        return {
            "list_id": lst.id,
            "id": c.id,
            "title": c.title,
            "display_order": c.display_order,
            "type": c.type,
            "_links": self._links(
                call.account.dc,
                f"/lists/{lst.id}/interest-categories/{c.id}",
                ("self", "GET"),
                ("parent", "GET"),
                ("interests", "GET"),
            ),
        }

    def _get_interests(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        category = self._category(lst, call)
        count, offset = _paging(call)
        interests = [i for i in lst.interests.values() if i.category_id == category.id]
        return 200, {
            "interests": [
                self._render_interest(call, lst, i) for i in interests[offset : offset + count]
            ],
            "list_id": lst.id,
            "category_id": category.id,
            "total_items": len(interests),
            "_links": self._links(
                call.account.dc,
                f"/lists/{lst.id}/interest-categories/{category.id}/interests",
                ("self", "GET"),
                ("create", "POST"),
            ),
        }

    def _get_interest(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        category = self._category(lst, call)
        interest = lst.interests.get(call.params["2"])
        if interest is None or interest.category_id != category.id:
            raise _not_found()
        return 200, self._render_interest(call, lst, interest)

    def _post_interest(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        category = self._category(lst, call)
        body = call.json_body()
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid([{"field": "", "message": "Required fields were not provided: name"}])
        if any(i.name == name and i.category_id == category.id for i in lst.interests.values()):
            raise _invalid(
                [{"field": "name", "message": "Already exists"}],
                f'Cannot add "{name}" because it already exists on the list.',
            )
        interest_id = self.add_interest(lst.id, category.id, name)
        return 200, self._render_interest(call, lst, lst.interests[interest_id])

    def _render_interest(self, call: _Call, lst: MailList, i: Interest) -> dict[str, Any]:
        return {
            "category_id": i.category_id,
            "list_id": lst.id,
            "id": i.id,
            "name": i.name,
            "subscriber_count": str(lst.interest_counts[i.id]),
            "display_order": i.display_order,
            "_links": self._links(
                call.account.dc,
                f"/lists/{lst.id}/interest-categories/{i.category_id}/interests/{i.id}",
                ("self", "GET"),
                ("parent", "GET"),
            ),
        }

    def _category(self, lst: MailList, call: _Call) -> InterestCategory:
        category = lst.categories.get(call.params["1"])
        if category is None:
            raise _not_found()
        return category

    # ---------------------------------------------------------------- list webhooks

    def _get_webhooks(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        return 200, {
            "webhooks": [self._render_webhook(call, lst, w) for w in lst.webhooks.values()],
            "list_id": lst.id,
            "total_items": len(lst.webhooks),
            "_links": self._links(
                call.account.dc, f"/lists/{lst.id}/webhooks", ("self", "GET"), ("create", "POST")
            ),
        }

    def _get_webhook(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        return 200, self._render_webhook(call, lst, self._webhook(lst, call))

    def _post_webhook(self, call: _Call) -> tuple[int, Any]:
        """Created without the real URL check (Mailchimp GETs the URL first; no network here)."""
        lst = self._own_list(call)
        body = call.json_body()
        url = body.get("url")
        if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
            raise _invalid([{"field": "url", "message": "This value should be a valid URL."}])
        base = url.split("?", 1)[0]
        if any(w["url"].split("?", 1)[0] == base for w in lst.webhooks.values()):
            raise _invalid(
                [{"field": "url", "message": "A webhook with this URL already exists"}],
                "Sorry, you can't use the same url for more than one webhook.",
            )
        hook: dict[str, Any] = {
            "id": _hex(f"webhook:{self._next()}"),
            "url": url,
            "events": {e: True for e in WEBHOOK_EVENTS},
            "sources": {"user": True, "admin": True, "api": False},
        }
        self._update_webhook(hook, body)
        lst.webhooks[hook["id"]] = hook
        return 200, self._render_webhook(call, lst, hook)

    def _patch_webhook(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        hook = self._webhook(lst, call)
        body = call.json_body()
        if "url" in body:
            if not isinstance(body["url"], str) or not re.match(r"^https?://[^/\s]+", body["url"]):
                raise _invalid([{"field": "url", "message": "This value should be a valid URL."}])
            hook["url"] = body["url"]
        self._update_webhook(hook, body)
        return 200, self._render_webhook(call, lst, hook)

    def _delete_webhook(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        del lst.webhooks[self._webhook(lst, call)["id"]]
        return 204, None

    @staticmethod
    def _update_webhook(hook: dict[str, Any], body: dict[str, Any]) -> None:
        for group, names in (("events", WEBHOOK_EVENTS), ("sources", WEBHOOK_SOURCES)):
            given = body.get(group, {})
            if not isinstance(given, dict) or any(
                k not in names or not isinstance(v, bool) for k, v in given.items()
            ):
                raise _invalid(
                    [
                        {
                            "field": group,
                            "message": f"{group} must map {', '.join(names)} to booleans",
                        }
                    ]
                )
            hook[group].update(given)

    def _render_webhook(self, call: _Call, lst: MailList, hook: dict[str, Any]) -> dict[str, Any]:
        return {
            **hook,
            "events": dict(hook["events"]),
            "sources": dict(hook["sources"]),
            "list_id": lst.id,
            "_links": self._links(
                call.account.dc,
                f"/lists/{lst.id}/webhooks/{hook['id']}",
                ("self", "GET"),
                ("parent", "GET"),
                ("update", "PATCH"),
                ("delete", "DELETE"),
            ),
        }

    def _webhook(self, lst: MailList, call: _Call) -> dict[str, Any]:
        hook = lst.webhooks.get(call.params["1"])
        if hook is None:
            raise _not_found()
        return hook

    # ---------------------------------------------------------------- batches

    def _post_batch(self, call: _Call) -> tuple[int, Any]:
        try:
            operations = parse_operations(call.json_body())
        except BatchInvalid as error:
            raise _invalid(error.errors) from None
        account, host = call.account, call.host

        def execute(
            method: str, path: str, query: dict[str, list[str]], body: str | None, now: datetime
        ) -> tuple[int, str]:
            path, _, query_text = path.partition("?")
            failing = self._operation_fault(path)
            if failing is not None:
                error = Problem(
                    failing,
                    "Internal Server Error",
                    "An unexpected internal error has occurred. Please contact Support for "
                    "more information.",
                )
                return failing, json.dumps(error.document(str(uuid.uuid4())))
            merged = {**parse_qs(query_text, keep_blank_values=True), **query}
            inner = _Call(
                account,
                method,
                "/" + path.strip("/") if path.strip("/") else "",
                {},
                merged,
                (body or "").encode("utf-8"),
                now,
                host,
            )
            try:
                status, payload = self._route(inner)
            except Problem as error:
                return error.status, json.dumps(error.document(str(uuid.uuid4())))
            except Exception as error:  # noqa: BLE001 - a simulator bug must not wedge the queue
                crash = Problem(500, "Internal Server Error", f"{type(error).__name__}: {error}")
                return 500, json.dumps(crash.document(str(uuid.uuid4())))
            if payload is None:
                return status, ""
            return status, json.dumps(self._project(payload, merged))

        batch = self._batches.submit(account.account_id, operations, call.now, execute)
        return 200, self._render_batch(call, batch)

    def _get_batches(self, call: _Call) -> tuple[int, Any]:
        count, offset = _paging(call)
        batches = self._batches.of_owner(call.account.account_id)
        return 200, {
            "batches": [self._render_batch(call, b) for b in batches[offset : offset + count]],
            "total_items": len(batches),
            "_links": self._links(call.account.dc, "/batches", ("self", "GET"), ("create", "POST")),
        }

    def _get_batch(self, call: _Call) -> tuple[int, Any]:
        batch = self._batches.get(call.account.account_id, call.params["0"])
        if batch is None:
            raise _not_found()
        return 200, self._render_batch(call, batch)

    def _delete_batch(self, call: _Call) -> tuple[int, Any]:
        if not self._batches.delete(call.account.account_id, call.params["0"]):
            raise _not_found()
        return 204, None

    def _render_batch(self, call: _Call, batch: Batch) -> dict[str, Any]:
        base = self.results_base_url or f"http://{call.host}"
        signed = (
            f"{base.rstrip('/')}/_sim/batch-results/{batch.id}.tar.gz?AWSAccessKeyId="
            f"AKIASIMULATOR&Expires={epoch(batch.finished_at) + 86400}"
            f"&Signature={self._sign(batch.id)}"
        )
        doc = batch.to_json(call.now, signed, iso)
        doc["_links"] = self._links(
            call.account.dc,
            f"/batches/{batch.id}",
            ("parent", "GET"),
            ("self", "GET"),
            ("delete", "DELETE"),
        )
        return doc

    def _sign(self, batch_id: str) -> str:
        """The pre-signed link's signature: a secret of this simulator over the batch id."""
        return hmac.new(self._signing_key, batch_id.encode(), hashlib.sha256).hexdigest()

    # ---------------------------------------------------------------- state helpers

    def _now(self) -> datetime:
        moment = self._clock()
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def _list(self, list_id: str) -> MailList:
        lst = self._lists.get(list_id)
        if lst is None:
            raise KeyError(f"no list {list_id}")
        return lst

    def _own_list(self, call: _Call) -> MailList:
        lst = self._lists.get(call.params["0"])
        if lst is None or lst.account is not call.account:
            raise _not_found()
        return lst

    def _own_member(self, call: _Call) -> tuple[MailList, Row]:
        lst = self._own_list(call)
        row = self._row(lst.id, _member_key(call.params["1"]))
        if row is None:
            raise _not_found()
        return lst, row

    def _row(self, list_id: str, key: str | None) -> Row | None:
        hkey = _hkey(key) if key else None
        if hkey is None:
            return None
        found = self._db.execute(
            "SELECT * FROM members WHERE lid = ? AND hkey = ?", (self._lists[list_id].web_id, hkey)
        ).fetchone()
        row = self._decode(found) if found is not None else None
        return row if row is not None and row["hash"] == key else None

    @staticmethod
    def _decode(found: sqlite3.Row) -> Row:
        row = dict(found)
        row["hash"] = subscriber_hash(row["email"])
        row["merge_fields"] = marshal.loads(row["merge_fields"])
        row["interests"] = (
            dict.fromkeys(row["interests"].split(","), True) if row["interests"] else {}
        )
        row["tags"] = json.loads(row["tags"])
        row["location"] = json.loads(row["location"]) if row["location"] else None
        return row

    def _save(self, lst: MailList, old: Row | None, new: Row) -> None:
        new["interests"] = {k: True for k, on in new["interests"].items() if on}
        stored = dict(
            new,
            lid=lst.web_id,
            hkey=_hkey(new["hash"]),
            merge_fields=marshal.dumps(new["merge_fields"]),
            interests=",".join(new["interests"]),
            tags=json.dumps(new["tags"]),
            location=json.dumps(new["location"]) if new["location"] else None,
        )
        values = [stored[c] for c in _COLUMNS]
        if old is None:
            self._seq += 1
            new["seq"] = values[0] = self._seq
            self._db.execute(_INSERT, values)
        else:
            self._db.execute(_UPDATE, [*values[1:], old["seq"]])
        self._count(lst, old, -1)
        self._count(lst, new, +1)
        lst.version += 1

    @staticmethod
    def _count(lst: MailList, row: Row | None, sign: int) -> None:
        if row is None:
            return
        lst.status_counts[row["status"]] += sign
        if row["status"] == "subscribed":
            for interest_id, on in row["interests"].items():
                if on:
                    lst.interest_counts[interest_id] += sign

    def _tag_id(self, lst: MailList, name: str) -> int:
        if name not in lst.tag_ids:
            lst.tag_ids[name] = self._next()
        return lst.tag_ids[name]

    def _render(self, lst: MailList, row: Row, *, links: bool = True) -> dict[str, Any]:
        """A member as the API shows it: every merge tag and every interest of the list."""
        stored = row["merge_fields"]
        merge = {f.tag: stored.get(f.tag, "") for f in lst.merge_fields}
        names = [str(merge.get("FNAME") or ""), str(merge.get("LNAME") or "")]
        location = {
            "latitude": 0,
            "longitude": 0,
            "gmtoff": 0,
            "dstoff": 0,
            "country_code": "",
            "timezone": "",
            "region": "",
            **(row["location"] or {}),
        }
        member: dict[str, Any] = {
            "id": row["hash"],
            "email_address": row["email"],
            "unique_email_id": _unique_email_id(row["seq"]),
            "contact_id": hashlib.md5(b"contact:%d" % row["seq"]).hexdigest(),
            "full_name": " ".join(n for n in names if n),
            "web_id": row["seq"],
            "email_type": row["email_type"],
            "status": row["status"],
        }
        if row["status"] == "unsubscribed":
            member["unsubscribe_reason"] = row["unsubscribe_reason"] or _UNSUBSCRIBE_REASON
        member.update({"consents_to_one_to_one_messaging": True, "merge_fields": merge})
        if lst.interests:
            held = row["interests"]
            member["interests"] = {i: bool(held.get(i, False)) for i in lst.interests}
        member.update(
            {
                "stats": {"avg_open_rate": 0, "avg_click_rate": 0},
                "ip_signup": row["ip_signup"],
                "timestamp_signup": _iso_epoch(row["timestamp_signup"]),
                "ip_opt": row["ip_opt"],
                "timestamp_opt": _iso_epoch(row["timestamp_opt"]),
                "member_rating": 2,
                "last_changed": _iso_epoch(row["last_changed"]),
                "language": row["language"],
                "vip": bool(row["vip"]),
                "email_client": "",
                "location": location,
                "source": row["source"],
                "tags_count": len(row["tags"]),
                "tags": [{"id": t["id"], "name": t["name"]} for t in row["tags"][:50]],
                "list_id": lst.id,
            }
        )
        if links:
            path = f"/lists/{lst.id}/members/{row['hash']}"
            member["_links"] = self._links(
                lst.account.dc,
                path,
                ("self", "GET"),
                ("parent", "GET"),
                ("update", "PATCH"),
                ("upsert", "PUT"),
                ("delete", "DELETE"),
            )
        return member

    @staticmethod
    def _links(dc: str, path: str, *rels: tuple[str, str]) -> list[dict[str, str]]:
        base = f"https://{dc}.api.mailchimp.com/3.0"
        parent = path.rsplit("/", 1)[0]
        return [
            {
                "rel": rel,
                "href": base + (parent if rel == "parent" else path),
                "method": method,
                "targetSchema": f"{SCHEMA_BASE}{path or '/'}.json",
            }
            for rel, method in rels
        ]

    @staticmethod
    def _project(payload: Any, query: dict[str, list[str]]) -> Any:
        """Apply ``fields`` and ``exclude_fields`` (comma lists of dot paths) to a response."""
        if not isinstance(payload, dict):
            return payload
        include = _field_tree(query.get("fields", []))
        exclude = _field_tree(query.get("exclude_fields", []))
        if include:
            payload = _keep(payload, include)
        if exclude:
            payload = _drop(payload, exclude)
        return payload


# -------------------------------------------------------------------- module helpers


def _run_script(db: sqlite3.Connection, script: str) -> None:
    """Statements one by one: ``executescript`` would commit the open transaction."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _chunks(items: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


_MEMBER_LIST_PATH = re.compile(r"^/3\.0/lists/[^/]+/members/?$")


def _is_member_page(request: SimRequest, response: SimResponse) -> bool:
    """A member-list page answered with members (what a paging client reads)."""
    return (
        request.method == "GET"
        and response.status == 200
        and _MEMBER_LIST_PATH.match(request.path) is not None
    )


def _member_key(segment: str) -> str:
    """The path accepts the subscriber hash or the address itself ([spec])."""
    return subscriber_hash(segment) if "@" in segment else segment.lower()


def _paging(call: _Call) -> tuple[int, int]:
    values = {}
    for name, default, upper in (("count", 10, MAX_COUNT), ("offset", 0, None)):
        text = call.arg(name)
        try:
            value = int(text) if text not in (None, "") else default
        except ValueError:
            raise _invalid([{"field": name, "message": "Schema describes integer"}]) from None
        if value < 0 or (upper is not None and value > upper):
            raise _invalid(
                [
                    {
                        "field": name,
                        "message": f"{name} must be between 0 and {upper}"
                        if upper
                        else f"{name} must not be negative",
                    }
                ]
            )
        values[name] = value
    return values["count"], values["offset"]


def _parse_time(text: Any, name: str) -> datetime:
    """ISO 8601 as Mailchimp takes it; a '+' that became a space in a raw query is restored."""
    if not isinstance(text, str):
        raise _invalid([{"field": name, "message": "Schema describes string"}])
    cleaned = re.sub(r" (\d\d:?\d\d)$", r"+\1", text.strip())
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise _invalid(
            [{"field": name, "message": f"{text} is not a valid ISO 8601 date"}]
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


_TYPES: dict[str, tuple[type, ...]] = {
    "email_address": (str,),
    "status": (str,),
    "status_if_new": (str,),
    "email_type": (str,),
    "language": (str,),
    "ip_signup": (str,),
    "ip_opt": (str,),
    "timestamp_signup": (str,),
    "timestamp_opt": (str,),
    "merge_fields": (dict,),
    "interests": (dict,),
    "vip": (bool,),
    "location": (dict,),
    "tags": (list,),
    "marketing_permissions": (list,),
}


def _check_body(body: dict[str, Any], method: str, where: str) -> None:
    """The request-body schema of POST/PUT/PATCH members ([spec])."""
    required = ("email_address", "status") if method == "POST" else ()
    missing = [n for n in required if body.get(n) is None]
    if missing:
        raise _invalid(
            [
                {
                    "field": where,
                    "message": "Required fields were not provided: " + ", ".join(missing),
                }
            ]
        )
    errors = []
    for name, types in _TYPES.items():
        if body.get(name) is not None and not isinstance(body[name], types):
            errors.append(
                {"field": _at(where, name), "message": f"Schema describes {types[0].__name__}"}
            )
    for name in ("status", "status_if_new"):
        if isinstance(body.get(name), str) and body[name] not in SETTABLE[method]:
            errors.append({"field": _at(where, name), "message": "Value is not one of enum values"})
    if isinstance(body.get("email_type"), str) and body["email_type"] not in ("html", "text"):
        errors.append(
            {"field": _at(where, "email_type"), "message": "Value is not one of enum values"}
        )
    tags = body.get("tags")
    if isinstance(tags, list) and not all(isinstance(t, str) for t in tags):
        errors.append({"field": _at(where, "tags"), "message": "Schema describes string"})
    location = body.get("location")
    if isinstance(location, dict) and not all(
        _is_number(location.get(k, 0)) for k in ("latitude", "longitude")
    ):
        errors.append({"field": _at(where, "location"), "message": "Schema describes number"})
    if body.get("marketing_permissions"):
        errors.append(
            {
                "field": _at(where, "marketing_permissions"),
                "message": "This list has no marketing permissions",
            }
        )
    if errors:
        raise _invalid(errors)


def _check_transition(email: str, current: str, wanted: str) -> None:
    """Unsubscribed people may only come back through ``pending``; cleaned ones never."""
    if (current == "unsubscribed" and wanted == "subscribed") or (
        current == "cleaned" and wanted in ("subscribed", "pending")
    ):
        raise Problem(
            400,
            "Member In Compliance State",
            f"{email} is in a compliance state due to unsubscribe, bounce, or "
            "compliance review and cannot be subscribed.",
        )


def _apply_status(lst: MailList, row: Row, status: str, stamp: int, *, opt_given: bool) -> None:
    row["status"], row["status_changed"] = status, stamp
    if status == "subscribed":
        if not opt_given:
            row["timestamp_opt"] = stamp
        row["unsubscribe_reason"] = ""
        lst.last_sub_date = _iso_epoch(stamp)
    elif status == "unsubscribed":
        row["unsubscribe_reason"] = _UNSUBSCRIBE_REASON
        lst.last_unsub_date = _iso_epoch(stamp)


_LEAF = "\0"


def _field_tree(values: list[str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for value in values:
        for path in value.split(","):
            path = path.strip()
            if not path:
                continue
            node = tree
            for part in path.split("."):
                node = node.setdefault(part, {})
            node[_LEAF] = True
    return tree


def _keep(value: Any, tree: dict[str, Any]) -> Any:
    if _LEAF in tree:
        return value
    if isinstance(value, list):
        return [_keep(item, tree) for item in value]
    if isinstance(value, dict):
        return {k: _keep(v, tree[k]) for k, v in value.items() if k in tree}
    return value


def _drop(value: Any, tree: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_drop(item, tree) for item in value]
    if isinstance(value, dict):
        return {
            k: (_drop(v, tree[k]) if k in tree else v)
            for k, v in value.items()
            if k not in tree or _LEAF not in tree[k]
        }
    return value


def _wanted(query: dict[str, list[str]], path: tuple[str, ...]) -> bool:
    """Whether ``fields``/``exclude_fields`` keep ``path`` (to skip building what is cut)."""
    include = _field_tree(query.get("fields", []))
    exclude = _field_tree(query.get("exclude_fields", []))
    node = include
    for part in path:
        if not include or _LEAF in node:
            break
        if part not in node:
            return False
        node = node[part]
    node = exclude
    for part in path:
        if part not in node:
            return True
        node = node[part]
        if _LEAF in node:
            return False
    return True

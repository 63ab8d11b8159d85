"""Mailchimp Marketing API v3 client: audiences, paged members since a time, member writes,
batch operations and their results (reference/mailchimp-api.md §1–3)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import tarfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import quote

import httpx

from mcsync.budget import Budget, Deadline
from mcsync.errors import (
    ApiError,
    AuthError,
    BadResponse,
    ConfigError,
    NotFoundError,
    ResponseTooLarge,
    RetriesExhausted,
    UnreadableResults,
)
from mcsync.rules.addresses import fold_email

from .http import HttpSession, SessionClient
from .shapes import odd_batch, odd_member
from .slots import ProcessSlots

#: Member fields fetched by default: what matching, reconciling and merge-field feeds need.
MEMBER_FIELDS: tuple[str, ...] = (
    "id",
    "email_address",
    "unique_email_id",
    "contact_id",
    "status",
    "last_changed",
    "timestamp_opt",
    "timestamp_signup",
    "merge_fields",
    "interests",
    "unsubscribe_reason",
)
MAX_PAGE_SIZE = 1000  # Mailchimp's cap on `count` (§2)
BULK_LIMIT = 500  # members per POST /lists/{id}
UNSUB_EVENTS = 10  # newest unsub events read per member (one is enough; a few for safety)
# A member's feed was read and holds no event of the kind asked for: earlier than any time.
NO_EVENT = datetime.min.replace(tzinfo=UTC)
_DC = re.compile(r"^[a-z]+[0-9]+$")
_USERNAME = "mcsync"  # Basic auth: any username, the key as password (§1)


def data_centre(api_key: str, *, account_name: str = "?") -> str:
    """The data centre (``us21``) from a key's ``-us21`` suffix; ConfigError if it has none."""
    _, sep, dc = api_key.rpartition("-")
    if not sep or not _DC.match(dc):
        raise ConfigError(
            f"mailchimp.accounts.{account_name}.api_key: expected a key ending in its data centre,"
            " like '<key>-us21' (or set base_url)"
        )
    return dc


def member_hash(email: str) -> str:
    """Mailchimp's subscriber hash: MD5 hex of the lower-cased address (§3)."""
    return hashlib.md5(fold_email(email).encode("utf-8")).hexdigest()


def member_put_operation(
    list_id: str,
    email: str,
    body: dict[str, Any],
    operation_id: str,
    *,
    skip_merge_validation: bool = False,
) -> dict[str, Any]:
    """One ``POST /batches`` operation upserting a member; the body must be a JSON *string* (§3).
    ``skip_merge_validation`` goes in the operation's query ``params``, where Mailchimp reads it."""
    operation: dict[str, Any] = {
        "method": "PUT",
        "path": f"/lists/{_seg(list_id)}/members/{member_hash(email)}",
        "operation_id": operation_id,
        "body": json.dumps({"email_address": email, **body}),
    }
    if skip_merge_validation:
        operation["params"] = merge_validation_query(skip_merge_validation)
    return operation


#: Operation ids of a batch of member reads: ``{prefix}{n}`` reads key n by its hash,
#: ``{prefix}{n}{UNIQUE_SUFFIX}`` by its unique_email_id (see :func:`member_read_operations`).
READ_OPERATION_PREFIX = "mcsync_read_"
UNIQUE_SUFFIX = "_unique"


def member_read_operations(
    list_id: str,
    keys: Sequence[tuple[str, str | None]],
    fields: Sequence[str] = MEMBER_FIELDS,
) -> list[dict[str, Any]]:
    """``POST /batches`` GET operations reading each ``(subscriber_hash, unique_email_id)``
    key as :meth:`MailchimpClient.current_members` does: the member by its hash (an archived
    member is returned too), and, for a key with a unique_email_id, the member list filtered
    by it, which finds a member whose address (so hash) changed. A batch cannot make the
    second read depend on the first's 404, so both go; they cost Mailchimp an operation each
    and mcsync no request."""
    path = f"/lists/{_seg(list_id)}/members"
    member_fields = ",".join(fields)
    listed = ",".join(["total_items", *(f"members.{f}" for f in fields)])
    operations: list[dict[str, Any]] = []
    for index, (subscriber_hash, unique_email_id) in enumerate(keys):
        operations.append(
            {
                "method": "GET",
                "path": f"{path}/{_seg(subscriber_hash)}",
                "params": {"fields": member_fields},
                "operation_id": f"{READ_OPERATION_PREFIX}{index}",
            }
        )
        if unique_email_id:
            operations.append(
                {
                    "method": "GET",
                    "path": path,
                    "params": {"unique_email_id": unique_email_id, "count": 1, "fields": listed},
                    "operation_id": f"{READ_OPERATION_PREFIX}{index}{UNIQUE_SUFFIX}",
                }
            )
    return operations


def merge_validation_query(skip: bool) -> dict[str, str]:
    """The query that lets a member write through with required merge fields empty. Mailchimp
    documents it as a query parameter of every member write (the extension mcsync replaces
    sent it in the body, where it is ignored)."""
    return {"skip_merge_validation": "true"} if skip else {}


def _seg(value: str) -> str:
    """A URL path segment, quoted so an id can never change the path."""
    return quote(str(value), safe="")


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("Mailchimp time filters need a timezone-aware datetime")
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _is_activity(activity_type: Any, wanted: str) -> bool:
    """Whether a feed event is of the kind asked for (``signup`` stands for every kind of
    sign-up: ``generic_signup``, ``website_signup``, ...)."""
    if not isinstance(activity_type, str):
        return False
    return activity_type == wanted or (wanted == "signup" and activity_type.endswith("signup"))


def _parse_event_time(value: Any) -> datetime | None:
    """An activity event's ISO 8601 time, in UTC; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.astimezone(UTC) if moment.tzinfo else None


def _required(fields: Sequence[str]) -> list[str]:
    """The member fields asked for that a member cannot lack: its id and address are its
    identity."""
    return [f for f in ("id", "email_address") if f in fields]


def _is_member_error(exc: ApiError) -> bool:
    """A refusal about this one member (compliance state, invalid email...), not the account."""
    return not isinstance(exc, (AuthError, NotFoundError, BadResponse, RetriesExhausted))


class MailchimpClient(SessionClient):
    """One Mailchimp account. Thread-safe; requests share the account's 10-connection cap."""

    def __init__(
        self,
        *,
        account_name: str,
        api_key: str,
        base_url: str | None = None,
        budget: Budget,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 10,
        timeout: float = 30.0,
        debug_http: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] | None = None,
        max_retries: int = 6,
    ) -> None:
        if base_url is None:
            base_url = (
                f"https://{data_centre(api_key, account_name=account_name)}.api.mailchimp.com/3.0"
            )
        self.account_name = account_name
        self.max_connections = max_connections
        basic = base64.b64encode(f"{_USERNAME}:{api_key}".encode()).decode()
        self.session = HttpSession(
            service=f"Mailchimp {account_name}",
            base_url=base_url,
            headers={"Accept": "application/json"},
            auth=httpx.BasicAuth(_USERNAME, api_key),
            budget=budget,
            secrets=[api_key, basic],
            timeout=timeout,
            max_connections=max_connections,
            transport=transport,
            debug_http=debug_http,
            sleep=sleep,
            max_retries=max_retries,
            process_slots=ProcessSlots(api_key, max_connections),
            auth_hint=(
                f"Check mailchimp.accounts.{account_name}.api_key: the key must be active and its"
                " '-dc' suffix must match the account's data centre (or base_url), and the key's"
                " user must have access to the audience."
            ),
        )

    member_hash = staticmethod(member_hash)

    # -- account and audience metadata --------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        """``GET /ping``: proves the key and data centre (health_status "Everything's Chimpy!")."""
        result: dict[str, Any] = self.session.request("GET", "/ping")
        return result

    def lists(self) -> list[dict[str, Any]]:
        return self._collect("/lists", "lists")

    def get_list(self, list_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.session.request(
            "GET", f"/lists/{_seg(list_id)}", params={"exclude_fields": "_links"}
        )
        return result

    def interest_categories(self, list_id: str) -> list[dict[str, Any]]:
        return self._collect(f"/lists/{_seg(list_id)}/interest-categories", "categories")

    def interests(self, list_id: str, category_id: str) -> list[dict[str, Any]]:
        path = f"/lists/{_seg(list_id)}/interest-categories/{_seg(category_id)}/interests"
        return self._collect(path, "interests")

    def merge_fields(self, list_id: str) -> list[dict[str, Any]]:
        return self._collect(f"/lists/{_seg(list_id)}/merge-fields", "merge_fields")

    def _collect(self, path: str, key: str) -> list[dict[str, Any]]:
        """Every item of a (small) collection, page by page until ``total_items``."""
        items: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = self.session.request(
                "GET",
                path,
                params={
                    "count": MAX_PAGE_SIZE,
                    "offset": offset,
                    "exclude_fields": f"_links,{key}._links",
                },
            )
            batch = self._items(page, key, path)
            items.extend(batch)
            offset += MAX_PAGE_SIZE
            if not batch or offset >= int(page.get("total_items", 0)):
                return items

    def deadlines(self, count: int) -> list[Deadline]:
        """The budget read once for each of ``count`` requests about to be handed to a pool,
        here, in their order: the pool's threads never read the budget's clock (see
        :mod:`mcsync.budget`), so a run under a tick clock goes as far every time."""
        return [self.session.budget.deadline() for _ in range(count)]

    def _items(
        self, page: dict[str, Any], key: str, path: str, required: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        items = page.get(key)
        if not isinstance(items, list) or not isinstance(page.get("total_items"), int):
            raise BadResponse(
                f"GET {path} answered without a '{key}' list and 'total_items'",
                service=self.session.service,
            )
        if key == "members":
            for member in items:
                self._check_member(member, f"GET {path}", required)
        return items

    def _check_member(self, member: Any, request: str, required: Sequence[str] = ()) -> None:
        """A member mcsync cannot read ends the run as a BadResponse naming the request."""
        problem = odd_member(member, required)
        if problem:
            raise BadResponse(f"{request} answered {problem}", service=self.session.service)

    # -- members ------------------------------------------------------------------------------

    def member_pages(
        self,
        list_id: str,
        *,
        since_last_changed: datetime | None = None,
        before_last_changed: datetime | None = None,
        page_size: int = MAX_PAGE_SIZE,
        start_offset: int = 0,
        fields: Sequence[str] = MEMBER_FIELDS,
        concurrency: int | None = None,
        sort_dir: str = "DESC",
        status: str | None = None,
    ) -> Iterator[tuple[int, int, list[dict[str, Any]]]]:
        """Yield ``(offset, total_items, members)`` in offset order, sorted by last_changed.

        Offsets are over live data: a member that changes while pages are read jumps to the
        newest end (so it may be missed, and a later offset may repeat a member), and a member
        archived or deleted meanwhile moves every later member up a place (so one unread
        member is skipped); pages fetched concurrently may also be answered out of order. A
        caller that needs every member must look again (see ``fetch_mailchimp``).

        The first page gives ``total_items``; the following pages are fetched concurrently (at most
        ``concurrency`` in flight or buffered) and yielded in order, so a caller that saves
        ``offset + len(members)`` after each page can resume exactly. If ``total_items`` grows
        while paging, the extra pages are fetched too; empty pages after the first are skipped.
        ``status`` restricts the members to one status (the only way to list archived ones).
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}")
        path = f"/lists/{_seg(list_id)}/members"
        params: dict[str, Any] = {
            "count": page_size,
            "fields": ",".join(["total_items", *(f"members.{f}" for f in fields)]),
            "sort_field": "last_changed",
            "sort_dir": sort_dir,
        }
        if since_last_changed is not None:
            params["since_last_changed"] = _iso(since_last_changed)
        if before_last_changed is not None:
            params["before_last_changed"] = _iso(before_last_changed)
        if status is not None:
            params["status"] = status

        def fetch(
            offset: int, deadline: Deadline | None = None
        ) -> tuple[int, list[dict[str, Any]]]:
            page = self.session.request(
                "GET", path, params={**params, "offset": offset}, deadline=deadline
            )
            members = self._items(page, "members", path, _required(fields))
            return int(page["total_items"]), members

        total, members = fetch(start_offset)
        yield start_offset, total, members
        workers = max(1, concurrency or self.max_connections)
        pending: deque[tuple[int, Future[tuple[int, list[dict[str, Any]]]]]] = deque()
        next_offset = start_offset + page_size
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mc-pages") as pool:
            try:
                while True:
                    while len(pending) < workers and next_offset < total:
                        # The budget is read here, in page order, not by the pool's threads.
                        deadline = self.session.budget.deadline()
                        pending.append((next_offset, pool.submit(fetch, next_offset, deadline)))
                        next_offset += page_size
                    if not pending:
                        return
                    offset, future = pending.popleft()
                    total, members = future.result()
                    if members:
                        yield offset, total, members
            finally:
                for _, future in pending:
                    future.cancel()

    def member_page(
        self,
        list_id: str,
        *,
        since_last_changed: datetime | None = None,
        before_last_changed: datetime | None = None,
        page_size: int = MAX_PAGE_SIZE,
        offset: int = 0,
        fields: Sequence[str] = MEMBER_FIELDS,
    ) -> tuple[int, list[dict[str, Any]]]:
        """One page of ``member_pages`` alone, as ``(total_items, members)``: one request,
        one consistent answer, with no pages fetched ahead."""
        pages = self.member_pages(
            list_id,
            since_last_changed=since_last_changed,
            before_last_changed=before_last_changed,
            page_size=page_size,
            start_offset=offset,
            fields=fields,
            concurrency=1,
        )
        try:
            _, total, members = next(pages)
        finally:
            close = getattr(pages, "close", None)
            if close:
                close()
        return total, members

    def settled_member_pages(
        self,
        list_id: str,
        *,
        since_last_changed: datetime,
        before_last_changed: datetime,
        fields: Sequence[str] = MEMBER_FIELDS,
        page_size: int = MAX_PAGE_SIZE,
    ) -> Iterator[tuple[bool, list[dict[str, Any]]]]:
        """Yield ``(covered, members)`` for every member whose last_changed lies in a range
        that ended before now, newest first, skipping none.

        Such a range only shrinks while it is read (a member who changes leaves it for the
        present; one archived or deleted leaves it), so one request at a time is enough: when
        an answer's ``total_items`` is smaller than the previous one's, up to that many
        unread members moved up past the offset, and the next request steps back by as much
        (repeating a few members, never skipping one). ``covered``: every member of the range
        newer than this page's last one has now been yielded (false for a page answered after
        the range shrank). A range that grew (clock skew) is read again from its start."""
        offset, expected = 0, None
        while True:
            total, members = self.member_page(
                list_id,
                since_last_changed=since_last_changed,
                before_last_changed=before_last_changed,
                page_size=page_size,
                offset=offset,
                fields=fields,
            )
            shrunk = 0 if expected is None else expected - total
            expected = total
            yield shrunk == 0, members
            if shrunk > 0:
                offset = max(0, offset - shrunk)
            elif shrunk < 0:
                offset = 0
            else:
                offset += len(members)
                if not members or offset >= total:
                    return

    def get_member(self, list_id: str, email: str) -> dict[str, Any] | None:
        """One member by email, or None when the address is not in the audience."""
        try:
            result: dict[str, Any] = self.session.request(
                "GET",
                f"/lists/{_seg(list_id)}/members/{member_hash(email)}",
                params={"exclude_fields": "_links"},
            )
        except NotFoundError:
            return None
        path = f"GET /lists/{_seg(list_id)}/members/{{hash}}"
        self._check_member(result, path, ("email_address",))
        return result

    def current_members(
        self,
        list_id: str,
        keys: Sequence[tuple[str, str | None]],
        *,
        fields: Sequence[str] = MEMBER_FIELDS,
        concurrency: int | None = None,
    ) -> list[dict[str, Any] | None]:
        """Each member as Mailchimp has it now, read directly, concurrently within the
        account's connections; one result per ``(subscriber_hash, unique_email_id)`` key, in
        order. ``GET /lists/{id}/members/{hash}`` first (an archived member is returned, with
        status ``archived``); on 404 the member list filtered by ``unique_email_id``, which
        survives an address change that gave the member a new hash. None: Mailchimp has no
        such member (deleted permanently, or never there). Other errors raise."""
        query = {"fields": ",".join(fields)}
        path = f"/lists/{_seg(list_id)}/members"
        listed = ",".join(["total_items", *(f"members.{f}" for f in fields)])

        def one(key: tuple[str, str | None], deadline: Deadline) -> dict[str, Any] | None:
            subscriber_hash, unique_email_id = key
            try:
                member: dict[str, Any] = self.session.request(
                    "GET", f"{path}/{_seg(subscriber_hash)}", params=query, deadline=deadline
                )
                self._check_member(member, f"GET {path}/{{hash}}", _required(fields))
                return member
            except NotFoundError:
                if not unique_email_id:
                    return None
            page = self.session.request(
                "GET",
                path,
                params={"unique_email_id": unique_email_id, "count": 1, "fields": listed},
                deadline=deadline,
            )
            members = self._items(page, "members", path, _required(fields))
            return members[0] if members else None

        if not keys:
            return []
        workers = max(1, min(len(keys), concurrency or self.max_connections))
        deadlines = self.deadlines(len(keys))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mc-gets") as pool:
            return list(pool.map(one, keys, deadlines))

    def unsubscribe_times(
        self,
        list_id: str,
        hashes: Sequence[str],
        *,
        activities: Sequence[str] | None = None,
        concurrency: int | None = None,
    ) -> list[datetime | None]:
        """When each member last unsubscribed, from its activity feed
        (``GET /lists/{id}/members/{hash}/activity-feed?activity_filters=unsub``, newest
        first), concurrently within the account's connections; one result per hash, in order.
        ``activities`` (one per hash) may ask for the last ``signup`` instead (any kind of
        sign-up), so a subscribe is dated the same way. ``NO_EVENT``: the feed was read and
        holds no such event. None: the feed could not be read (the caller must not guess). An
        authentication failure raises: it is no one member's problem."""

        def one(subscriber_hash: str, activity: str, deadline: Deadline) -> datetime | None:
            path = f"/lists/{_seg(list_id)}/members/{_seg(subscriber_hash)}/activity-feed"
            params = {
                "activity_filters": activity,
                "count": UNSUB_EVENTS,
                "fields": "activity.activity_type,activity.created_at_timestamp",
            }
            try:
                feed = self.session.request("GET", path, params=params, deadline=deadline)
            except AuthError:
                raise
            except ApiError:
                return None
            events = feed.get("activity") if isinstance(feed, dict) else None
            if not isinstance(events, list):
                return None
            times = [
                _parse_event_time(e.get("created_at_timestamp"))
                for e in events
                if isinstance(e, dict) and _is_activity(e.get("activity_type"), activity)
            ]
            return max((t for t in times if t is not None), default=NO_EVENT)

        if not hashes:
            return []
        kinds = list(activities) if activities is not None else ["unsub"] * len(hashes)
        if len(kinds) != len(hashes):
            raise ValueError("one activity per member hash")
        workers = max(1, min(len(hashes), concurrency or self.max_connections))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mc-feeds") as pool:
            return list(pool.map(one, hashes, kinds, self.deadlines(len(hashes))))

    def put_member(
        self,
        list_id: str,
        email: str,
        body: dict[str, Any],
        *,
        deadline: Deadline | None = None,
        skip_merge_validation: bool = False,
    ) -> dict[str, Any]:
        """Upsert a member (idempotent, so retried). ``body`` needs ``status_if_new`` (§3).
        ``deadline``: from :meth:`deadlines`, when called from a pool's thread."""
        result: dict[str, Any] = self.session.request(
            "PUT",
            f"/lists/{_seg(list_id)}/members/{member_hash(email)}",
            params=merge_validation_query(skip_merge_validation) or None,
            json={"email_address": email, **body},
            deadline=deadline,
        )
        self._check_member(result, f"PUT /lists/{_seg(list_id)}/members/{{hash}}")
        return result

    def change_member_email(self, list_id: str, old_email: str, new_email: str) -> dict[str, Any]:
        """Move a member to a new address: ``PATCH`` its old hash with ``email_address`` only,
        so its status, history and unique_email_id stay; its id becomes md5(new). Mailchimp
        refuses for a member not subscribed, a new address already a member or forgotten. A
        repeat after a lost answer finds the old hash gone (404, ``NotFoundError``): the
        caller reads the new address to see whether the move was made."""
        result: dict[str, Any] = self.session.request(
            "PATCH",
            f"/lists/{_seg(list_id)}/members/{member_hash(old_email)}",
            json={"email_address": new_email},
        )
        self._check_member(result, f"PATCH /lists/{_seg(list_id)}/members/{{hash}}")
        return result

    def write_members(
        self,
        list_id: str,
        members: Sequence[dict[str, Any]],
        *,
        skip_merge_validation: bool = False,
    ) -> dict[str, Any]:
        """Bulk subscribe/update: ``POST /lists/{id}`` with up to 500 members and
        ``update_existing``; Mailchimp answers at once, with per-member ``errors[]``.

        Setting subscribed or unsubscribed again is harmless, so such a call is retried like a
        PUT. Setting ``pending`` emails the person a confirmation each time, so a call naming
        a pending member is never repeated once it may have reached Mailchimp (like
        ``POST /batches``): the caller finds out what happened instead."""
        if len(members) > BULK_LIMIT:
            raise ValueError(f"at most {BULK_LIMIT} members per bulk request")
        result: dict[str, Any] = self.session.request(
            "POST",
            f"/lists/{_seg(list_id)}",
            params=merge_validation_query(skip_merge_validation) or None,
            json={"members": list(members), "update_existing": True},
            retry=not any(m.get("status") == "pending" for m in members),
        )
        return result

    def update_tags(
        self,
        list_id: str,
        email: str,
        tags: Sequence[dict[str, str]],
        *,
        deadline: Deadline | None = None,
    ) -> None:
        """``POST /lists/{id}/members/{hash}/tags``: set tags active/inactive (idempotent).
        ``deadline``: from :meth:`deadlines`, when called from a pool's thread."""
        self.session.request(
            "POST",
            f"/lists/{_seg(list_id)}/members/{member_hash(email)}/tags",
            json={"tags": list(tags)},
            deadline=deadline,
        )

    def batches(self) -> list[dict[str, Any]]:
        """The account's recent batches (``GET /batches``), newest included."""
        page: dict[str, Any] = self.session.request(
            "GET", "/batches", params={"count": 1000, "exclude_fields": "_links"}
        )
        batches = page.get("batches")
        if not isinstance(batches, list):
            raise BadResponse(
                "GET /batches answered without a 'batches' list", service=self.session.service
            )
        for batch in batches:
            self._check_batch(batch, "GET /batches")
        return batches

    def put_members(
        self,
        list_id: str,
        writes: Sequence[tuple[str, dict[str, Any]]],
        *,
        concurrency: int | None = None,
        skip_merge_validation: bool = False,
    ) -> list[dict[str, Any] | ApiError]:
        """Concurrent :meth:`put_member` calls; one result per write, in order.

        A refusal about one member (400 compliance state, invalid address...) is returned as its
        ApiError; account-wide failures (auth, missing list, retries or budget exhausted) raise.
        PUT is idempotent, so re-running writes after such a failure is harmless.
        """

        def one(write: tuple[str, dict[str, Any]], deadline: Deadline) -> dict[str, Any] | ApiError:
            try:
                return self.put_member(
                    list_id,
                    write[0],
                    write[1],
                    deadline=deadline,
                    skip_merge_validation=skip_merge_validation,
                )
            except ApiError as exc:
                if _is_member_error(exc):
                    return exc
                raise

        if not writes:
            return []
        workers = max(1, min(len(writes), concurrency or self.max_connections))
        deadlines = self.deadlines(len(writes))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mc-puts") as pool:
            return list(pool.map(one, writes, deadlines))

    # -- batches ------------------------------------------------------------------------------

    def start_batch(self, operations: list[dict[str, Any]]) -> dict[str, Any]:
        """``POST /batches``; never repeated once it may have reached Mailchimp."""
        result: dict[str, Any] = self.session.request(
            "POST", "/batches", json={"operations": operations}, retry=False
        )
        self._check_batch(result, "POST /batches")
        return result

    def _check_batch(self, batch: Any, request: str) -> None:
        problem = odd_batch(batch)
        if problem:
            raise BadResponse(f"{request} answered {problem}", service=self.session.service)

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.session.request(
            "GET", f"/batches/{_seg(batch_id)}", params={"exclude_fields": "_links"}
        )
        self._check_batch(result, f"GET /batches/{_seg(batch_id)}")
        return result

    def delete_batch(self, batch_id: str) -> None:
        """Stop a batch and drop its results; a batch Mailchimp no longer has is already gone."""
        try:
            self.session.request("DELETE", f"/batches/{_seg(batch_id)}")
        except NotFoundError:
            return

    def batch_results(self, response_body_url: str, *, batch_id: str = "") -> list[dict[str, Any]]:
        """Download a finished batch's gzipped tar (without the API key: it is object storage)
        and return ``[{operation_id, status_code, response}]``, ``response`` parsed or None."""
        try:
            raw: bytes = self.session.request(
                "GET", response_body_url, expect_json=False, authenticate=False
            )
        except (AuthError, NotFoundError) as exc:
            # An expired or missing object-storage link, not a problem with the API key.
            raise BadResponse(
                f"the batch results file is not available (HTTP {exc.status}); get the batch"
                " again for a fresh response_body_url",
                service=self.session.service,
                status=exc.status,
            ) from None
        except ResponseTooLarge as exc:
            raise ResponseTooLarge(
                f"the results file of batch {batch_id or '?'} is too large to download: {exc}",
                service=self.session.service,
            ) from None
        return parse_batch_results(
            raw, service=self.session.service, batch_id=batch_id, budget=self.session.budget
        )


#: Caps on a batch's results once unpacked: one of mcsync's batches (1000 operations, a member
#: of a few KB each) unpacks to a few MB, so anything near these is not a real result file.
MAX_RESULT_FILE_BYTES = 16 * 1024 * 1024
MAX_RESULTS_BYTES = 64 * 1024 * 1024
_READ_CHUNK = 1024 * 1024


def parse_batch_results(
    raw: bytes,
    *,
    service: str = "Mailchimp",
    batch_id: str = "",
    budget: Budget | None = None,
    max_file_bytes: int = MAX_RESULT_FILE_BYTES,
    max_total_bytes: int = MAX_RESULTS_BYTES,
) -> list[dict[str, Any]]:
    """The operation results inside a batch's ``.tar.gz`` (one or more JSON arrays).

    The archive is read as a stream (tarfile's ``r|gz``), each file in chunks, so a small
    download that unpacks to gigabytes is refused at the caps (per file and in all), and the
    run's budget is checked as it goes."""
    results: list[dict[str, Any]] = []
    name = f"batch {batch_id}" if batch_id else "a batch"
    where = f" (batch {batch_id})" if batch_id else ""
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r|gz") as archive:
            for entry in archive:
                if budget is not None:
                    budget.check()
                if not entry.isfile() or not entry.name.endswith(".json"):
                    continue
                total += entry.size
                if entry.size > max_file_bytes or total > max_total_bytes:
                    what = (
                        f"one file ({entry.name!r}) of {entry.size / 2**20:.0f} MiB"
                        if entry.size > max_file_bytes
                        else f"more than {max_total_bytes // 2**20} MiB in all"
                    )
                    raise ResponseTooLarge(
                        f"the results of {name} unpack to {what}, more than any batch of"
                        f" mcsync's can produce (at most {max_file_bytes // 2**20} MiB a file,"
                        f" {max_total_bytes // 2**20} MiB in all); not read",
                        service=service,
                    )
                handle = archive.extractfile(entry)
                items = json.loads(_read_capped(handle, entry.size, budget)) if handle else None
                if not isinstance(items, list):
                    raise UnreadableResults(
                        f"batch results file {entry.name!r}{where} is not a JSON array",
                        service=service,
                    )
                results.extend(_operation_result(item, service, where) for item in items)
    except (tarfile.TarError, OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise UnreadableResults(
            f"batch results{where} are not a readable .tar.gz of JSON files ({type(exc).__name__})",
            service=service,
        ) from None
    return results


def _read_capped(handle: IO[bytes], size: int, budget: Budget | None) -> bytes:
    """One archive member's bytes (its header said ``size``), checking the budget per chunk."""
    chunks: list[bytes] = []
    left = size
    while left > 0:
        chunk = handle.read(min(_READ_CHUNK, left))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
        if budget is not None:
            budget.check()
    return b"".join(chunks)


def _operation_result(item: Any, service: str, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise UnreadableResults(
            f"a batch result entry{where} is not a JSON object", service=service
        )
    response = item.get("response")
    if isinstance(response, str):
        try:
            response = json.loads(response) if response.strip() else None
        except ValueError:
            response = None
    return {
        "operation_id": item.get("operation_id"),
        "status_code": item.get("status_code"),
        "response": response,
    }

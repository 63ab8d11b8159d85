"""Seeding and inspection: what tests and the demo do to the simulated Mailchimp outside the API.

Accounts, lists, merge fields and interests; members one by one or millions at once; reading
members back; failing batch operations on purpose; and what a person or the Mailchimp UI does
(confirming, changing status or details, forgetting), plus actions run after member pages.
"""

from __future__ import annotations

import hashlib
import marshal
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from mcsync.sim.mailchimp.batches import Batch
from mcsync.sim.mailchimp.helpers import _chunks, _member_key, _run_script
from mcsync.sim.mailchimp.model import (
    CATEGORY_TYPES,
    DEFAULT_MERGE_FIELDS,
    MERGE_TYPES,
    STATUSES,
    Account,
    Interest,
    InterestCategory,
    MailList,
    MergeField,
    _hex,
    _iso_epoch,
    epoch,
    iso,
    subscriber_hash,
)
from mcsync.sim.mailchimp.state import MailchimpState
from mcsync.sim.mailchimp.storage import _BULK_SEED, _DROP_INDEXES, _EMPTY_MERGE, _INDEXES, _SEED


class Seeding(MailchimpState):
    """Seeding and inspection (not part of the API)."""

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

"""Configuration and seeding: what tests and the demo do to the simulated CiviCRM outside the API.

API keys and their permissions, the clock and site time zone, groups, contacts, emails,
addresses, tags, group memberships (also smart groups), contacts by the million, merges and
deletes, and reading the state back.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from mcsync.sim.civicrm.helpers import _names
from mcsync.sim.civicrm.model import ApiUser, _Ctx
from mcsync.sim.civicrm.schema import (
    ENTITIES,
    civi_key,
    serialize,
    to_storage,
)
from mcsync.sim.civicrm.state import CiviState


class Seeding(CiviState):
    """Configuration and seeding (not part of the API)."""

    def add_api_key(
        self,
        api_key: str,
        *,
        contact_id: int | None = None,
        can_authenticate: bool = True,
        debug_visible: bool = True,
        view_all_contacts: bool = True,
        edit_all_contacts: bool = True,
        acl_contact_ids: Iterable[int] = (),
    ) -> ApiUser:
        """Register another key; ACL ids are the contacts it may see/edit without "all" rights."""
        with self.lock:
            user = ApiUser(len(self._users) + 1, contact_id, can_authenticate, debug_visible,
                           view_all_contacts, edit_all_contacts)  # fmt: skip
            self._users[api_key] = user
            self._conn.executemany(
                "INSERT OR IGNORE INTO acl_contact (key_id, contact_id) VALUES (?, ?)",
                [(user.key_id, int(cid)) for cid in acl_contact_ids],
            )
            return user

    def now(self) -> str:
        """The server's current time as CiviCRM returns dates: naive, in the site zone."""
        return self._format(self._clock())

    def _format(self, moment: datetime) -> str:
        aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        return aware.astimezone(self._tz).strftime("%Y-%m-%d %H:%M:%S")

    def add_group(
        self,
        title: str,
        *,
        name: str | None = None,
        group_type: list[str] | None = None,
        is_smart: bool = False,
        parents: list[int] | None = None,
        is_active: bool = True,
        is_hidden: bool = False,
    ) -> int:
        """A group; ``group_type`` names default to ["Mailing List"]; smart ones get a search."""
        with self.lock, self._tx():
            cols: dict[str, Any] = {
                "title": title, "name": name, "is_active": int(is_active),
                "is_hidden": int(is_hidden),
                "group_type": to_storage(ENTITIES["Group"].fields["group_type"],
                                         group_type if group_type is not None
                                         else ["Mailing List"], "name"),
                "parents": serialize(parents or []),
            }  # fmt: skip
            if is_smart:
                self._saved_searches += 1
                cols["saved_search_id"] = self._saved_searches
            return self._create_row(_Ctx(None), "Group", cols)

    def add_contact(
        self,
        first_name: str = "",
        last_name: str = "",
        *,
        contact_type: str = "Individual",
        is_deleted: bool = False,
        is_deceased: bool = False,
        do_not_email: bool = False,
        is_opt_out: bool = False,
        email: str | None = None,
    ) -> int:
        with self.lock, self._tx():
            cols = {"contact_type": contact_type, "first_name": first_name or None,
                    "last_name": last_name or None, "is_deleted": int(is_deleted),
                    "is_deceased": int(is_deceased), "do_not_email": int(do_not_email),
                    "is_opt_out": int(is_opt_out)}  # fmt: skip
            contact_id = self._create_row(_Ctx(None), "Contact", cols)
            if email:
                self._create_row(_Ctx(None), "Email", {"contact_id": contact_id, "email": email,
                                                       "is_primary": 1})  # fmt: skip
            return contact_id

    def update_contact(
        self, contact_id: int, *, when: datetime | None = None, **fields: Any
    ) -> None:
        """A CiviCRM-side edit (opt-out, deceased, trash): bumps ``modified_date``, no history.
        ``when`` back-dates the edit (a flag set long ago), which only admin-side helpers can."""
        with self.lock, self._tx():
            self._update_row(_Ctx(None), "Contact", contact_id, self._columns("Contact", fields))
            if when is not None:
                self._conn.execute("UPDATE contact SET modified_date = ? WHERE id = ?",
                                   (self._format(when), contact_id))  # fmt: skip

    def add_email(
        self,
        contact_id: int,
        email: str,
        *,
        is_primary: bool = True,
        is_bulkmail: bool = False,
        on_hold: int = 0,
        location_type_id: int = 1,
    ) -> int:
        with self.lock, self._tx():
            cols = {"contact_id": contact_id, "email": email, "is_primary": int(is_primary),
                    "is_bulkmail": int(is_bulkmail), "on_hold": on_hold,
                    "location_type_id": location_type_id}  # fmt: skip
            return self._create_row(_Ctx(None), "Email", cols)

    def update_email(self, email_id: int, **fields: Any) -> None:
        """Edit an email as CiviCRM does (holds set ``hold_date``; the contact is touched)."""
        with self.lock, self._tx():
            self._update_row(_Ctx(None), "Email", email_id, self._columns("Email", fields))

    def delete_email(self, email_id: int) -> None:
        with self.lock, self._tx():
            self._delete_row(_Ctx(None), "Email", email_id)

    def add_address(self, contact_id: int, **fields: Any) -> int:
        """An address (``city``, ``postal_code``, ``country_id``...), primary unless told not."""
        with self.lock, self._tx():
            cols = {"is_primary": 1, **self._columns("Address", fields), "contact_id": contact_id}
            return self._create_row(_Ctx(None), "Address", cols)

    def add_tag(self, name: str) -> int:
        with self.lock, self._tx():
            return self._create_row(_Ctx(None), "Tag", {"name": name})

    def tag_contact(self, contact_id: int, tag_id: int) -> int:
        with self.lock, self._tx():
            return self._create_row(_Ctx(None), "EntityTag", {"entity_id": contact_id,
                                                              "tag_id": tag_id})  # fmt: skip

    def set_group_status(
        self,
        contact_id: int,
        group_id: int,
        status: str,
        *,
        method: str = "Admin",
        when: datetime | None = None,
        history: bool = True,
    ) -> None:
        """Set a membership as the admin UI does: GroupContact row plus a history row.

        ``history=False`` imitates a direct SQL import (no history). ``when`` back-dates the
        history row, which only admin-side helpers can do.
        """
        with self.lock, self._tx():
            existing = self._conn.execute(
                "SELECT id FROM group_contact WHERE contact_id = ? AND group_id = ?",
                (contact_id, group_id),
            ).fetchone()
            if existing:
                self._conn.execute("UPDATE group_contact SET status = ? WHERE id = ?",
                                   (status, existing[0]))  # fmt: skip
            else:
                self._conn.execute(
                    "INSERT INTO group_contact (group_id, contact_id, status) VALUES (?, ?, ?)",
                    (group_id, contact_id, status),
                )
            if history:
                date = self._format(when) if when else self.now()
                self._conn.execute(
                    "INSERT INTO subscription_history (contact_id, group_id, date, method, "
                    "status) VALUES (?, ?, ?, ?, ?)",
                    (contact_id, group_id, date, method, status),
                )

    def delete_group_contact(
        self,
        contact_id: int,
        group_id: int,
        *,
        method: str = "Admin",
        when: datetime | None = None,
    ) -> None:
        """Delete a membership as the contact's Groups tab "Delete" does (APIv4
        ``GroupContact.delete`` likewise, with method ``API``): the row is hard-deleted and
        history logs status ``Deleted`` (civicrm-api.md §2.4). ``when`` back-dates the history
        row, which only admin-side helpers can do."""
        with self.lock, self._tx():
            deleted = self._conn.execute(
                "DELETE FROM group_contact WHERE contact_id = ? AND group_id = ?",
                (contact_id, group_id),
            ).rowcount
            if deleted:
                date = self._format(when) if when else self.now()
                self._conn.execute(
                    "INSERT INTO subscription_history (contact_id, group_id, date, method, "
                    "status) VALUES (?, ?, ?, ?, 'Deleted')",
                    (contact_id, group_id, date, method),
                )

    def set_smart_group_members(self, group_id: int, contact_ids: Iterable[int]) -> None:
        """Rebuild a smart group's cache (criteria-driven membership: no history, no dates)."""
        with self.lock, self._tx():
            self._conn.execute("DELETE FROM group_contact_cache WHERE group_id = ?", (group_id,))
            self._conn.executemany(
                "INSERT OR IGNORE INTO group_contact_cache (group_id, contact_id) VALUES (?, ?)",
                [(group_id, int(c)) for c in contact_ids],
            )
            self._conn.execute("UPDATE civi_group SET cache_date = ? WHERE id = ?",
                               (self.now(), group_id))  # fmt: skip

    def seed_contacts(
        self,
        rows: Iterable[dict[str, Any]],
        *,
        history: bool = True,
        method: str = "Admin",
        when: datetime | None = None,
        chunk: int = 50_000,
    ) -> list[int]:
        """Bulk-insert contacts (fields as in ``add_contact``) with optional ``email`` and
        ``groups`` ({group_id: status}); ``history=False`` imitates a direct SQL import.

        Memberships go through a scratch table so SQLite copies them into GroupContact and
        SubscriptionHistory itself: a million contacts seed in well under a minute.
        """
        with self.lock, self._tx():
            now = self.now()
            date = self._format(when) if when else now
            ids: list[int] = []
            next_id = self._next_id("contact")
            next_email = self._next_id("email")
            contacts: list[tuple[Any, ...]] = []
            extras: list[tuple[Any, ...]] = []
            emails: list[tuple[Any, ...]] = []
            memberships: list[tuple[Any, ...]] = []
            self._conn.execute("CREATE TEMP TABLE IF NOT EXISTS seed_membership "
                               "(contact_id INTEGER, group_id INTEGER, status TEXT)")  # fmt: skip
            for row in rows:
                cid = next_id
                next_id += 1
                ids.append(cid)
                ctype = row.get("contact_type", "Individual")
                first, last = row.get("first_name") or None, row.get("last_name") or None
                email = row.get("email")
                org, household = row.get("organization_name"), row.get("household_name")
                if ctype == "Individual" and first and last:
                    display, sort = first + " " + last, last + ", " + first
                else:
                    display, sort = _names(ctype, first, last, org, household, email)
                contacts.append((
                    cid, ctype, first, last, display, sort, 1 if row.get("is_deleted") else 0,
                    1 if row.get("is_deceased") else 0, 1 if row.get("do_not_email") else 0,
                    1 if row.get("is_opt_out") else 0, now, now,
                ))  # fmt: skip
                if org or household or row.get("external_identifier") or row.get("source"):
                    extras.append((org, household, row.get("external_identifier"),
                                   row.get("source"), cid))  # fmt: skip
                if email:
                    on_hold = int(row.get("on_hold", 0))
                    emails.append((next_email, cid, email, on_hold,
                                   1 if row.get("is_bulkmail") else 0,
                                   now if on_hold else None))  # fmt: skip
                    next_email += 1
                groups = row.get("groups")
                if groups:
                    memberships.extend((cid, int(g), status) for g, status in groups.items())
                if len(contacts) >= chunk:
                    self._flush_seed(contacts, extras, emails, memberships)
            self._flush_seed(contacts, extras, emails, memberships)
            self._conn.execute(
                "INSERT INTO group_contact (group_id, contact_id, status) SELECT group_id, "
                "contact_id, status FROM seed_membership WHERE true ON CONFLICT "
                "(contact_id, group_id) DO UPDATE SET status = excluded.status"
            )
            if history:
                self._conn.execute(
                    "INSERT INTO subscription_history (contact_id, group_id, date, method, "
                    "status) SELECT contact_id, group_id, ?, ?, status FROM seed_membership "
                    "ORDER BY rowid", (date, method))  # fmt: skip
            self._conn.execute("DELETE FROM seed_membership")
            return ids

    def _flush_seed(self, *batches: list[tuple[Any, ...]]) -> None:
        contacts, extras, emails, memberships = batches
        self._conn.executemany(
            "INSERT INTO contact (id, contact_type, first_name, last_name, display_name, "
            "sort_name, is_deleted, is_deceased, do_not_email, is_opt_out, created_date, "
            "modified_date) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            contacts,
        )
        self._conn.executemany(
            "UPDATE contact SET organization_name = ?, household_name = ?, "
            "external_identifier = ?, source = ? WHERE id = ?",
            extras,
        )
        self._conn.executemany(
            "INSERT INTO email (id, contact_id, email, on_hold, is_bulkmail, hold_date, "
            "location_type_id, is_primary) VALUES (?, ?, ?, ?, ?, ?, 1, 1)",
            emails,
        )
        self._conn.executemany("INSERT INTO seed_membership VALUES (?, ?, ?)", memberships)
        for batch in batches:
            batch.clear()

    def merge_contacts(self, keep_id: int, remove_id: int) -> None:
        """CiviCRM's merge: the loser's emails, addresses and group rows move to the keeper
        (where the keeper has none), its history rows are re-pointed without new dates, and
        the loser goes to the trash."""
        with self.lock, self._tx():
            ctx = _Ctx(None)
            kept = {civi_key(r[0]) for r in self._conn.execute(
                "SELECT email FROM email WHERE contact_id = ?", (keep_id,))}  # fmt: skip
            for email_id, address in self._conn.execute(
                "SELECT id, email FROM email WHERE contact_id = ? ORDER BY id", (remove_id,)
            ).fetchall():
                if civi_key(address) in kept:
                    self._delete_row(ctx, "Email", email_id)
                else:
                    self._conn.execute(
                        "UPDATE email SET contact_id = ?, is_primary = 0 WHERE id = ?",
                        (keep_id, email_id),
                    )
            if not self._conn.execute("SELECT 1 FROM address WHERE contact_id = ?",
                                      (keep_id,)).fetchone():  # fmt: skip
                self._conn.execute("UPDATE address SET contact_id = ? WHERE contact_id = ?",
                                   (keep_id, remove_id))  # fmt: skip
            self._conn.execute(
                "UPDATE group_contact SET contact_id = ? WHERE contact_id = ? AND group_id NOT IN "
                "(SELECT group_id FROM group_contact WHERE contact_id = ?)",
                (keep_id, remove_id, keep_id),
            )
            self._conn.execute("DELETE FROM group_contact WHERE contact_id = ?", (remove_id,))
            self._conn.execute("UPDATE subscription_history SET contact_id = ? WHERE "
                               "contact_id = ?", (keep_id, remove_id))  # fmt: skip
            self._conn.execute(
                "UPDATE entity_tag SET entity_id = ? WHERE entity_id = ? AND tag_id NOT IN "
                "(SELECT tag_id FROM entity_tag WHERE entity_id = ?)", (keep_id, remove_id, keep_id)
            )  # fmt: skip
            self._ensure_primary("email", keep_id)
            self._update_row(ctx, "Contact", keep_id, {})
            self._update_row(ctx, "Contact", remove_id, {"is_deleted": 1})

    def delete_contact(self, contact_id: int, *, permanent: bool = False) -> None:
        """Trash a contact (bumps ``modified_date``) or delete it with all its rows."""
        with self.lock, self._tx():
            self._delete_contact(_Ctx(None), contact_id, use_trash=not permanent)

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        """Raw SQL over the simulator's tables, for test assertions."""
        with self.lock:
            return [dict(r) for r in self._conn.execute(sql, tuple(params)).fetchall()]

    def group_status(self, contact_id: int, group_id: int) -> str | None:
        with self.lock:
            row = self._conn.execute(
                "SELECT status FROM group_contact WHERE contact_id = ? AND group_id = ?",
                (contact_id, group_id),
            ).fetchone()
            return row[0] if row else None

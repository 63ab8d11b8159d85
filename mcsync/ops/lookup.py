"""`mcsync lookup`: one person as mcsync last saw them on both sides, per audience, with its
last decision and why, and the writes queued, in flight or failed for them; with ``--live``,
both services' current state beside it.

What support staff need first when someone says "I unsubscribed and still get mail": the
staged view answers "what did mcsync see and decide", the live view "what is true now".
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from mcsync.budget import Budget
from mcsync.config.models import AudienceConfig, Config
from mcsync.errors import ConfigError
from mcsync.rules.addresses import fold_email
from mcsync.rules.explanations import explain
from mcsync.runner.engine import connections
from mcsync.store.database import Staging
from mcsync.store.states import RowState

# What a row's sync status means to a person (store.states.RowState).
ROW_STATE_TEXT = {
    RowState.TODO: "to be decided by the next run (its facts changed since the last decision)",
    RowState.OK: "decided: both sides agree (or differ only where mcsync does not sync)",
    RowState.FAIL: "decided, but a change could not be made (see the reason)",
    RowState.LIVE: "decided: a write is queued or in flight; decided again once its result is"
    " known",
}
LIVE_BUDGET = 60.0  # seconds for the live reads of one lookup


class Person:
    """Who a lookup (or resync) is about: an address, or a contact id."""

    def __init__(self, email: str | None, contact_id: int | None):
        if (email is None) == (contact_id is None):
            raise ConfigError("give an EMAIL or --contact-id N (one of them)")
        if email is not None and "@" not in email:
            raise ConfigError(
                f"{email!r} is not an email address; to look up a contact by id, use --contact-id N"
            )
        self.email = email.strip() if email else None
        self.contact_id = contact_id

    @property
    def label(self) -> str:
        return self.email or f"contact {self.contact_id}"

    def contacts(self, staging: Staging) -> list[int]:
        """The contacts this person is, as staged: the contact asked for, or every contact
        holding the address."""
        if self.contact_id is not None:
            return [self.contact_id]
        assert self.email is not None
        return staging.contacts_with_address(self.email)

    def addresses(self, staging: Staging, contact_ids: Sequence[int]) -> list[str]:
        """The address asked for and every staged address of the contacts, once each."""
        found: dict[str, str] = {}
        for address in [
            *([self.email] if self.email else []),
            *staging.addresses_of_contacts(contact_ids),
        ]:
            found.setdefault(fold_email(address), address)
        return list(found.values())


def audience_rows(
    staging: Staging, audience: AudienceConfig, person: Person
) -> tuple[list[sqlite3.Row], list[int], list[str]]:
    """The audience's rows of this person, the contacts and the addresses they involve."""
    contact_ids = person.contacts(staging)
    addresses = person.addresses(staging, contact_ids)
    rows = staging.person_rows(audience.list_id, addresses, contact_ids)
    # A member row matched to another contact holding the address belongs to the picture.
    more = sorted({r["contact_id"] for r in rows if r["contact_id"] is not None} - set(contact_ids))
    if more:
        contact_ids = [*contact_ids, *more]
        addresses = person.addresses(staging, contact_ids)
        rows = staging.person_rows(audience.list_id, addresses, contact_ids)
    return rows, contact_ids, addresses


def staged_view(config: Config, person: Person) -> dict[str, Any]:
    """Everything the staging DB holds about the person (no API calls)."""
    staging = Staging(config.state_db, read_only=True)
    try:
        audiences = []
        all_contacts: set[int] = set(person.contacts(staging))
        all_addresses: dict[str, str] = {}
        for audience in config.audience:
            rows, contact_ids, addresses = audience_rows(staging, audience, person)
            all_contacts.update(contact_ids)
            for address in addresses:
                all_addresses.setdefault(fold_email(address), address)
            audiences.append(_audience_view(staging, audience, rows, contact_ids))
        contacts = _contacts_view(staging, sorted(all_contacts))
        return {
            "query": {"email": person.email, "contact_id": person.contact_id},
            "addresses": list(all_addresses.values()),
            "contacts": contacts,
            "audiences": audiences,
        }
    finally:
        staging.close()


def _contacts_view(staging: Staging, contact_ids: list[int]) -> list[dict[str, Any]]:
    emails: dict[int, list[dict[str, Any]]] = {}
    for email in staging.emails_of_contacts(contact_ids):
        emails.setdefault(email["contact_id"], []).append(
            {
                "email": email["email"],
                "is_primary": bool(email["is_primary"]),
                "is_bulkmail": bool(email["is_bulkmail"]),
                "on_hold": int(email["on_hold"]),
            }
        )
    staged = {c["contact_id"]: c for c in staging.contacts_by_id(contact_ids)}
    out = []
    for contact_id in contact_ids:
        contact = staged.get(contact_id)
        out.append(
            {
                "contact_id": contact_id,
                "staged": contact is not None,
                "first_name": contact["first_name"] if contact else None,
                "last_name": contact["last_name"] if contact else None,
                "is_deleted": bool(contact["is_deleted"]) if contact else None,
                "gone": bool(contact["gone"]) if contact else None,
                "is_deceased": bool(contact["is_deceased"]) if contact else None,
                "do_not_email": bool(contact["do_not_email"]) if contact else None,
                "is_opt_out": bool(contact["is_opt_out"]) if contact else None,
                "flags_at": contact["flags_at"] if contact else None,
                "modified_date": contact["modified_date"] if contact else None,
                "emails": emails.get(contact_id, []),
            }
        )
    return out


def _audience_view(
    staging: Staging,
    audience: AudienceConfig,
    rows: Sequence[sqlite3.Row],
    contact_ids: Sequence[int],
) -> dict[str, Any]:
    state = staging.state(audience.list_id)
    groups = [audience.group_id, *sorted(set(audience.interests.values()))]
    memberships: dict[int, list[dict[str, Any]]] = {}
    for g in staging.group_statuses_of(list(contact_ids), groups):
        memberships.setdefault(g["contact_id"], []).append(
            {
                "group_id": g["group_id"],
                "role": _group_role(audience, g["group_id"]),
                "status": g["status"],
                "changed_at": g["changed_at"],
            }
        )
    wanted = {
        d["contact_id"]: {
            "merge_fields": json.loads(d["merge_fields"] or "{}"),
            "tags": json.loads(d["tags"]) if d["tags"] is not None else None,
        }
        for d in staging.contact_data_of(audience.list_id, list(contact_ids))
    }
    updates: dict[int, list[dict[str, Any]]] = {}
    for u in staging.updates_of_rows([r["id"] for r in rows]):
        updates.setdefault(u["row_id"], []).append(
            {
                "id": u["id"],
                "state": u["state"],
                "email": u["email"],
                "change": json.loads(u["body"]),
                "created_at": u["created_at"],
                "completed_at": u["completed_at"],
                "error": ": ".join(p for p in (u["error_title"], u["error_detail"]) if p) or None,
            }
        )
    civi_writes = [
        {
            "contact_id": w["contact_id"],
            "kind": w["kind"],
            "group_id": w["group_id"],
            "status": w["status"],
            "email": w["email"],
            "origin_at": w["origin_at"],
        }
        for w in staging.civi_writes_of(audience.list_id, list(contact_ids))
    ]
    return {
        "list_id": audience.list_id,
        "group_id": audience.group_id,
        "name": audience.name,
        "stage": state.get("stage") or "never synced",
        "last_sync": state.get("last_sync"),
        "rows": [
            _row_view(audience, row, memberships, wanted, updates.get(row["id"], []))
            for row in rows
        ],
        "civicrm_writes": civi_writes,
        "memberships": {str(c): memberships.get(c, []) for c in contact_ids},
    }


def _group_role(audience: AudienceConfig, group_id: int) -> str:
    if group_id == audience.group_id:
        return "subscription"
    interest = next((i for i, g in audience.interests.items() if g == group_id), None)
    return f"interest {interest}"


def _row_view(
    audience: AudienceConfig,
    row: sqlite3.Row,
    memberships: dict[int, list[dict[str, Any]]],
    wanted: dict[int, dict[str, Any]],
    updates: list[dict[str, Any]],
) -> dict[str, Any]:
    interests = json.loads(row["mc_interests"] or "{}")
    interests_at = json.loads(row["mc_interests_at"] or "{}")
    mailchimp = (
        {
            "email": row["mc_email"],
            "subscriber_hash": row["mc_hash"],
            "status": row["mc_status"],
            "status_changed_at": row["mc_status_at"],
            "status_changed_after": row["mc_status_after"],
            "last_changed": row["mc_last_changed"],
            "first_name": row["mc_fname"],
            "last_name": row["mc_lname"],
            "interests": {
                i: {"on": interests[i], "changed_at": interests_at.get(i), "group_id": g}
                for i, g in audience.interests.items()
                if i in interests
            },
            "merge_fields_sent": json.loads(row["pushed_merge"] or "{}"),
            "tags_sent": json.loads(row["pushed_tags"] or "[]"),
        }
        if row["mc_hash"] is not None
        else None
    )
    contact_id = row["contact_id"]
    explanation, advice = explain(row["reason"]) if row["reason"] else (None, None)
    return {
        "row_id": row["id"],
        "contact_id": contact_id,
        "creating_contact": bool(row["creating"]),
        "mailchimp": mailchimp,
        "civicrm": {
            "groups": memberships.get(contact_id, []) if contact_id is not None else [],
            "wanted_at_mailchimp": wanted.get(contact_id) if contact_id is not None else None,
        },
        "decision": {
            "sync_status": row["sync_status"],
            "meaning": ROW_STATE_TEXT.get(row["sync_status"], row["sync_status"]),
            "reason": row["reason"],
            "explanation": explanation,
            "advice": advice,
            "detail": row["reason_detail"],
            "retry_attempts": row["retry_attempts"],
            "retry_at": row["retry_at"],
            "refusal": row["refusal_reason"],
        },
        "mailchimp_writes": updates,
    }


# -- the live view ---------------------------------------------------------------------------


def live_view(
    config: Config, view: dict[str, Any], *, debug_http: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Both services' current state of the person, read fresh: each audience's member by
    subscriber hash for every address involved, and the contacts' emails, flags, group
    memberships and latest subscription history in CiviCRM."""
    addresses = list(view["addresses"])
    contact_ids = [c["contact_id"] for c in view["contacts"]]
    with connections(config, Budget(LIVE_BUDGET), debug_http=debug_http) as conns:
        civicrm = conns.civicrm
        records: list[dict[str, Any]] = []
        if addresses:
            records = civicrm.call(
                "Email",
                "get",
                {
                    "select": ["id", "contact_id", "email", "is_primary", "is_bulkmail", "on_hold"],
                    "where": [["email", "IN", addresses]],
                    "limit": 0,
                },
            )
        found_ids = sorted({*contact_ids, *(int(r["contact_id"]) for r in records)})
        contacts = _live_contacts(civicrm, found_ids)
        all_groups = sorted(
            {g for a in config.audience for g in (a.group_id, *a.interests.values())}
        )
        memberships = _live_memberships(civicrm, found_ids, all_groups) if found_ids else []
        members = []
        for audience in config.audience:
            client = conns.mailchimp_for(audience.account)
            for address in addresses:
                member = client.get_member(audience.list_id, address)
                members.append(_live_member(audience, address, member))
    return {
        "mailchimp": members,
        "civicrm": {"contacts": contacts, "emails": records, "groups": memberships},
    }


def _live_contacts(civicrm: Any, contact_ids: list[int]) -> list[dict[str, Any]]:
    if not contact_ids:
        return []
    found = civicrm.call(
        "Contact",
        "get",
        {
            "select": [
                "id",
                "first_name",
                "last_name",
                "is_deleted",
                "is_deceased",
                "do_not_email",
                "is_opt_out",
                "modified_date",
            ],
            "where": [["id", "IN", contact_ids], ["is_deleted", "IN", [True, False]]],
            "limit": 0,
        },
    )
    emails = civicrm.call(
        "Email",
        "get",
        {
            "select": ["id", "contact_id", "email", "is_primary", "is_bulkmail", "on_hold"],
            "where": [["contact_id", "IN", contact_ids]],
            "limit": 0,
        },
    )
    by_contact: dict[int, list[dict[str, Any]]] = {}
    for email in emails:
        by_contact.setdefault(int(email["contact_id"]), []).append(
            {
                "email": email["email"],
                "is_primary": bool(email.get("is_primary")),
                "is_bulkmail": bool(email.get("is_bulkmail")),
                "on_hold": int(email.get("on_hold") or 0),
            }
        )
    seen = {int(c["id"]): c for c in found}
    out = []
    for contact_id in contact_ids:
        contact = seen.get(contact_id)
        out.append(
            {
                "contact_id": contact_id,
                "exists": contact is not None,
                **(
                    {
                        key: contact.get(key)
                        for key in (
                            "first_name",
                            "last_name",
                            "is_deleted",
                            "is_deceased",
                            "do_not_email",
                            "is_opt_out",
                            "modified_date",
                        )
                    }
                    if contact
                    else {}
                ),
                "emails": by_contact.get(contact_id, []),
            }
        )
    return out


def _live_memberships(
    civicrm: Any, contact_ids: list[int], group_ids: list[int]
) -> list[dict[str, Any]]:
    """GroupContact now, with the latest SubscriptionHistory row of each pair (its date is
    CiviCRM's site time, as CiviCRM answers it)."""
    current = civicrm.call(
        "GroupContact",
        "get",
        {
            "select": ["contact_id", "group_id", "status"],
            "where": [["contact_id", "IN", contact_ids], ["group_id", "IN", group_ids]],
            "limit": 0,
        },
    )
    history = civicrm.call(
        "SubscriptionHistory",
        "get",
        {
            "select": ["id", "contact_id", "group_id", "status", "date", "method", "tracking"],
            "where": [["contact_id", "IN", contact_ids], ["group_id", "IN", group_ids]],
            "orderBy": {"id": "ASC"},
            "limit": 0,
        },
    )
    latest: dict[tuple[int, int], dict[str, Any]] = {}
    for record in history:
        latest[(int(record["contact_id"]), int(record["group_id"]))] = record
    pairs = {(int(r["contact_id"]), int(r["group_id"])): r["status"] for r in current}
    out = []
    for pair in sorted(set(pairs) | set(latest)):
        last = latest.get(pair, {})
        out.append(
            {
                "contact_id": pair[0],
                "group_id": pair[1],
                "status": pairs.get(pair),
                "history_status": last.get("status"),
                "history_date": last.get("date"),
                "history_by_mcsync": (last.get("tracking") or "") == "mcsync",
            }
        )
    return out


def _live_member(
    audience: AudienceConfig, address: str, member: dict[str, Any] | None
) -> dict[str, Any]:
    if member is None:
        return {"list_id": audience.list_id, "email": address, "found": False}
    interests = member.get("interests") or {}
    return {
        "list_id": audience.list_id,
        "email": member.get("email_address", address),
        "found": True,
        "status": member.get("status"),
        "last_changed": member.get("last_changed"),
        "interests": {i: bool(interests[i]) for i in audience.interests if i in interests},
        "merge_fields": member.get("merge_fields") or {},
        "tags": sorted(t.get("name", "") for t in member.get("tags") or []),
    }


def lookup(
    config: Config,
    person: Person,
    *,
    live: bool = False,
    debug_http: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The staged view of the person, and with ``live`` both services' current state."""
    view = staged_view(config, person)
    view["live"] = live_view(config, view, debug_http=debug_http) if live else None
    return view

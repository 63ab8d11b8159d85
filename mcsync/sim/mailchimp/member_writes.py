"""Writing members: add, upsert and update (the status rules, compliance state, forgotten
emails, address changes, merge field and interest checks), archive and permanent delete, tags,
bulk subscribe, and changes made outside the API.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mcsync.sim.mailchimp.helpers import (
    _apply_status,
    _at,
    _check_body,
    _check_transition,
    _is_number,
    _member_key,
    _parse_time,
)
from mcsync.sim.mailchimp.model import (
    _EMAIL,
    BULK_LIMIT,
    MailList,
    Problem,
    Row,
    _Call,
    _invalid,
    _not_found,
    epoch,
    iso,
    subscriber_hash,
)
from mcsync.sim.mailchimp.state import MailchimpState
from mcsync.sim.mailchimp.storage import _CHANGE_FIELDS, _hkey


class MemberWrites(MailchimpState):
    """Writing members."""

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

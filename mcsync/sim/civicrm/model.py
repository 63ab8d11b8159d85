"""CiviCRM's vocabulary in the simulator: the REST routes, the actions and the params each one
takes, the texts of CiviCRM's refusals, an API key's principal (:class:`ApiUser`) with the
permissions that change what the API does for it, and a call's write context and result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

ROUTE = re.compile(r"(?:^|/)civicrm/ajax/api4(?:/([A-Za-z0-9_]+)/([A-Za-z0-9_]+))?/?$")
AUTHX_ID_ROUTE = re.compile(r"(?:^|/)civicrm/authx/id/?$")
ACTIONS = ("get", "create", "update", "save", "delete", "replace", "getFields", "getActions")
COMMON_PARAMS = frozenset({"version", "checkPermissions", "debug", "language", "chain"})
ACTION_PARAMS: dict[str, frozenset[str]] = {
    "get": frozenset({"select", "where", "orderBy", "limit", "offset", "join", "groupBy",
                      "having"}),
    "create": frozenset({"values"}),
    "update": frozenset({"values", "where", "orderBy", "limit", "offset", "reload"}),
    "save": frozenset({"records", "defaults", "match", "reload"}),
    "delete": frozenset({"where", "orderBy", "limit", "offset"}),
    "replace": frozenset({"records", "defaults", "match", "reload", "where"}),
    "getFields": frozenset({"action", "loadOptions", "select", "where", "values", "orderBy",
                            "limit", "offset"}),
    "getActions": frozenset({"select", "where", "orderBy", "limit", "offset"}),
}  # fmt: skip
ENTITY_ACTION_PARAMS: dict[tuple[str, str], frozenset[str]] = {
    ("GroupContact", "create"): frozenset({"method", "tracking"}),
    ("GroupContact", "update"): frozenset({"method", "tracking"}),
    ("GroupContact", "save"): frozenset({"method", "tracking"}),
    ("GroupContact", "replace"): frozenset({"method", "tracking"}),
    ("Contact", "delete"): frozenset({"useTrash"}),
}
CONTACT_CHILD_TABLES = ("email", "address", "group_contact", "subscription_history",
                        "group_contact_cache", "acl_contact")  # fmt: skip
MASKED_MESSAGE = "Sorry an error occurred and your request was not completed. (Error ID: {})"
CSRF_MESSAGE = (
    "SECURITY ALERT: Ajax requests can only be issued by javascript clients, eg. CRM.api4()."
)
GET_MESSAGE = "SECURITY: All requests that modify the database must be http POST, not GET."
FORBIDDEN_HTML = (
    "<!DOCTYPE html>\n<html><head><title>Access denied | CiviCRM</title></head><body>"
    "<h1>Access denied</h1><p>You are not authorized to access this page.</p></body></html>\n"
)


@dataclass
class ApiUser:
    """An API key's principal and the permissions that change what the API does for it."""

    key_id: int
    contact_id: int | None = None
    can_authenticate: bool = True  # "authenticate with api key" (the authx "perm" guard)
    debug_visible: bool = True  # "view debug output": unmasked error messages
    view_all_contacts: bool = True  # otherwise reads are silently limited to its ACL contacts
    edit_all_contacts: bool = True  # otherwise contact-bound writes outside its ACL get 403


@dataclass
class _Ctx:
    """Per-call write context: who writes, and GroupContact's method/tracking params."""

    user: ApiUser | None
    method: str = "API"
    tracking: str | None = None


@dataclass
class _Result:
    values: Any
    count: int
    count_matched: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

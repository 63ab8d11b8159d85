"""CiviCRM APIv4 schema model for the simulator: the entities' fields (types, options, foreign
keys, implicit joins), the SQLite tables that hold them, and the conversion of API values to
and from storage with MySQL-like string semantics (``reference/civicrm-api.md`` §1.6, §5.2):
case-, accent- and trailing-space-insensitive comparison keys.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SEPARATOR = "\x01"  # CiviCRM's SEPARATOR_BOOKEND serialization: "\x01a\x01b\x01"


class CiviApiError(Exception):
    """An exception thrown inside an API action; becomes the JSON error envelope."""

    def __init__(self, message: str, status: int = 500):
        super().__init__(message)
        self.message = message
        self.status = status


def fold(value: Any) -> str | None:
    """utf8mb4_unicode_ci-like folding: case- and accent-insensitive."""
    if value is None:
        return None
    text = str(value)
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def civi_key(value: Any) -> str | None:
    """Comparison key for ``=``/``IN``/``<``: folded and, like MySQL PAD SPACE, right-trimmed."""
    folded = fold(value)
    return None if folded is None else folded.rstrip(" ")


def _regexp(pattern: str | None, value: Any, flags: int) -> int | None:
    if pattern is None or value is None:
        return None
    return 1 if re.search(pattern, str(value), flags) else 0


def register_functions(conn: Any) -> None:
    """SQL functions the schema's indexes and the translated queries rely on."""
    conn.create_function("civi_key", 1, civi_key, deterministic=True)
    conn.create_function("civi_fold", 1, fold, deterministic=True)
    conn.create_function("civi_regexp", 2, lambda p, v: _regexp(p, v, re.I), deterministic=True)
    conn.create_function("civi_regexp_bin", 2, lambda p, v: _regexp(p, v, 0), deterministic=True)


# --------------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class Option:
    """One pseudoconstant option: stored value, machine name, label (and abbr for countries)."""

    value: Any
    name: str
    label: str
    abbr: str | None = None


def _opts(pairs: Iterable[tuple[Any, str]]) -> tuple[Option, ...]:
    return tuple(Option(value, name, name) for value, name in pairs)


CONTACT_TYPES = _opts([("Individual", "Individual"), ("Organization", "Organization"),
                       ("Household", "Household")])  # fmt: skip
GROUP_CONTACT_STATUS = _opts([("Added", "Added"), ("Removed", "Removed"), ("Pending", "Pending")])
HISTORY_STATUS = GROUP_CONTACT_STATUS + _opts([("Deleted", "Deleted")])
HISTORY_METHOD = _opts((m, m) for m in ("Admin", "Email", "Form", "Web", "API"))
ON_HOLD = _opts([(0, "No"), (1, "On Hold Bounce"), (2, "On Hold Opt Out")])
LOCATION_TYPES = _opts([(1, "Home"), (2, "Work"), (3, "Main"), (4, "Other"), (5, "Billing")])
GROUP_TYPES = _opts([("1", "Access Control"), ("2", "Mailing List")])
VISIBILITY = _opts([("User and User Admin Only", "User and User Admin Only"),
                    ("Public Pages", "Public Pages")])  # fmt: skip
COUNTRIES = (
    Option(1013, "Australia", "Australia", "AU"),
    Option(1039, "Canada", "Canada", "CA"),
    Option(1076, "France", "France", "FR"),
    Option(1082, "Germany", "Germany", "DE"),
    Option(1101, "Ireland", "Ireland", "IE"),
    Option(1152, "Netherlands", "Netherlands", "NL"),
    Option(1226, "United Kingdom", "United Kingdom", "GB"),
    Option(1228, "United States", "United States", "US"),
)


@dataclass(frozen=True)
class FieldSpec:
    """One APIv4 field. ``data_type`` is APIv4's: Integer, String, Text, Boolean, Timestamp."""

    name: str
    data_type: str
    title: str = ""
    fk_entity: str | None = None
    options: tuple[Option, ...] | None = None
    serialize: bool = False
    readonly: bool = False
    required: bool = False
    default: Any = None
    max_length: int | None = None
    filter_only: bool = False  # e.g. Contact.groups: usable in where, never selected

    @property
    def is_string(self) -> bool:
        return self.data_type in ("String", "Text") and not self.serialize


@dataclass(frozen=True)
class ImplicitJoin:
    """A Contact-side join to its primary location record (``email_primary``)."""

    entity: str
    fk: str = "contact_id"


@dataclass(frozen=True)
class EntitySpec:
    name: str
    table: str
    fields: dict[str, FieldSpec]
    implicit_joins: dict[str, ImplicitJoin] = field(default_factory=dict)
    title: str = ""

    def core_fields(self) -> list[FieldSpec]:
        """What ``select: ["*"]`` returns: stored columns, not joins or filter-only fields."""
        return [f for f in self.fields.values() if f.name not in VIRTUAL_FIELDS]


def _entity(name: str, table: str, *specs: FieldSpec, joins: dict[str, ImplicitJoin] | None = None
            ) -> EntitySpec:  # fmt: skip
    fields = {"id": FieldSpec("id", "Integer", "ID", readonly=True)}
    fields.update({s.name: s for s in specs})
    return EntitySpec(name, table, fields, joins or {}, name)


F = FieldSpec
ENTITIES: dict[str, EntitySpec] = {
    e.name: e
    for e in (
        _entity(
            "Contact",
            "contact",
            F("contact_type", "String", "Contact Type", options=CONTACT_TYPES, required=True),
            F("first_name", "String", "First Name", max_length=64),
            F("last_name", "String", "Last Name", max_length=64),
            F("organization_name", "String", "Organization Name", max_length=128),
            F("household_name", "String", "Household Name", max_length=128),
            F("display_name", "String", "Display Name", readonly=True),
            F("sort_name", "String", "Sort Name", readonly=True),
            F("external_identifier", "String", "External Identifier", max_length=64),
            F("source", "String", "Contact Source", max_length=255),
            F("is_deleted", "Boolean", "Contact is in Trash", default=0),
            F("is_deceased", "Boolean", "Deceased", default=0),
            F("do_not_email", "Boolean", "Do Not Email", default=0),
            F("is_opt_out", "Boolean", "No Bulk Emails (User Opt Out)", default=0),
            F("created_date", "Timestamp", "Created Date", readonly=True),
            F("modified_date", "Timestamp", "Modified Date", readonly=True),
            F("email_primary", "Integer", "Primary Email", fk_entity="Email", readonly=True),
            F("address_primary", "Integer", "Primary Address", fk_entity="Address", readonly=True),
            F("groups", "Integer", "Groups", fk_entity="Group", filter_only=True),
            joins={
                "email_primary": ImplicitJoin("Email"),
                "address_primary": ImplicitJoin("Address"),
            },
        ),
        _entity(
            "Email",
            "email",
            F("contact_id", "Integer", "Contact ID", fk_entity="Contact", required=True),
            F("location_type_id", "Integer", "Location Type", options=LOCATION_TYPES, default=1),
            F("email", "String", "Email", required=True, max_length=254),
            F("is_primary", "Boolean", "Is Primary", default=0),
            F("is_billing", "Boolean", "Is Billing", default=0),
            F("on_hold", "Integer", "On Hold", options=ON_HOLD, default=0),
            F("is_bulkmail", "Boolean", "Use for Bulk Mail", default=0),
            F("hold_date", "Timestamp", "Hold Date", readonly=True),
            F("reset_date", "Timestamp", "Reset Date", readonly=True),
        ),
        _entity(
            "Address",
            "address",
            F("contact_id", "Integer", "Contact ID", fk_entity="Contact", required=True),
            F("location_type_id", "Integer", "Location Type", options=LOCATION_TYPES, default=1),
            F("is_primary", "Boolean", "Is Primary", default=0),
            F("street_address", "String", "Street Address", max_length=96),
            F("supplemental_address_1", "String", "Supplemental Address 1", max_length=96),
            F("city", "String", "City", max_length=64),
            F("postal_code", "String", "Postal Code", max_length=64),
            F("country_id", "Integer", "Country", options=COUNTRIES),
        ),
        _entity(
            "Group",
            "civi_group",
            F("name", "String", "Group Name", max_length=64),
            F("title", "String", "Group Title", required=True, max_length=255),
            F("frontend_title", "String", "Public Group Title", max_length=255),
            F("description", "Text", "Group Description"),
            F("saved_search_id", "Integer", "Saved Search ID"),
            F("is_active", "Boolean", "Group Enabled", default=1),
            F(
                "visibility",
                "String",
                "Group Visibility Setting",
                options=VISIBILITY,
                default="User and User Admin Only",
            ),
            F("group_type", "String", "Group Type", options=GROUP_TYPES, serialize=True),
            F("cache_date", "Timestamp", "Group Cache Date", readonly=True),
            F("parents", "Integer", "Group Parents", fk_entity="Group", serialize=True),
            F(
                "children",
                "Integer",
                "Group Children",
                fk_entity="Group",
                serialize=True,
                readonly=True,
            ),
            F("is_hidden", "Boolean", "Group is Hidden", default=0),
            F("is_reserved", "Boolean", "Group is Reserved", default=0),
        ),
        _entity(
            "GroupContact",
            "group_contact",
            F("group_id", "Integer", "Group ID", fk_entity="Group", required=True),
            F("contact_id", "Integer", "Contact ID", fk_entity="Contact", required=True),
            F(
                "status",
                "String",
                "Group Contact Status",
                options=GROUP_CONTACT_STATUS,
                default="Added",
            ),
            F("location_id", "Integer", "Location ID"),
            F("email_id", "Integer", "Email ID", fk_entity="Email"),
        ),
        _entity(
            "SubscriptionHistory",
            "subscription_history",
            F("contact_id", "Integer", "Contact ID", fk_entity="Contact", required=True),
            F("group_id", "Integer", "Group ID", fk_entity="Group"),
            F("date", "Timestamp", "Subscription Change Date", readonly=True),
            F(
                "method",
                "String",
                "Subscription History Method",
                options=HISTORY_METHOD,
                max_length=8,
            ),
            F("status", "String", "Subscription Status", options=HISTORY_STATUS),
            F("tracking", "String", "Method Tracking", max_length=255),
        ),
        _entity(
            "Tag",
            "tag",
            F("name", "String", "Tag Name", required=True, max_length=64),
            F("label", "String", "Tag Label", max_length=64),
            F("description", "String", "Description", max_length=255),
            F("parent_id", "Integer", "Parent Tag ID", fk_entity="Tag"),
            F("is_selectable", "Boolean", "Display Tag?", default=1),
            F("used_for", "String", "Used For", default="civicrm_contact"),
        ),
        _entity(
            "EntityTag",
            "entity_tag",
            F("entity_table", "String", "Entity Table", default="civicrm_contact"),
            F("entity_id", "Integer", "Entity ID", fk_entity="Contact", required=True),
            F("tag_id", "Integer", "Tag ID", fk_entity="Tag", required=True),
        ),
    )
}

# Virtual fields that have no column of their own.
VIRTUAL_FIELDS = frozenset({"email_primary", "address_primary", "groups"})

SCHEMA = """
CREATE TABLE contact (
  id INTEGER PRIMARY KEY AUTOINCREMENT, contact_type TEXT NOT NULL, first_name TEXT,
  last_name TEXT, organization_name TEXT, household_name TEXT, display_name TEXT,
  sort_name TEXT, external_identifier TEXT, source TEXT, is_deleted INTEGER NOT NULL DEFAULT 0,
  is_deceased INTEGER NOT NULL DEFAULT 0, do_not_email INTEGER NOT NULL DEFAULT 0,
  is_opt_out INTEGER NOT NULL DEFAULT 0, created_date TEXT, modified_date TEXT);
CREATE INDEX contact_modified ON contact(modified_date);
CREATE TABLE email (
  id INTEGER PRIMARY KEY AUTOINCREMENT, contact_id INTEGER NOT NULL, location_type_id INTEGER,
  email TEXT NOT NULL, is_primary INTEGER NOT NULL DEFAULT 0, is_billing INTEGER NOT NULL
  DEFAULT 0, on_hold INTEGER NOT NULL DEFAULT 0, is_bulkmail INTEGER NOT NULL DEFAULT 0,
  hold_date TEXT, reset_date TEXT);
CREATE INDEX email_contact ON email(contact_id, is_primary);
CREATE INDEX email_email ON email(civi_key(email));
CREATE TABLE address (
  id INTEGER PRIMARY KEY AUTOINCREMENT, contact_id INTEGER NOT NULL, location_type_id INTEGER,
  is_primary INTEGER NOT NULL DEFAULT 0, street_address TEXT, supplemental_address_1 TEXT,
  city TEXT, postal_code TEXT, country_id INTEGER);
CREATE INDEX address_contact ON address(contact_id, is_primary);
CREATE TABLE civi_group (
  id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, title TEXT UNIQUE, frontend_title TEXT,
  description TEXT, saved_search_id INTEGER, is_active INTEGER NOT NULL DEFAULT 1,
  visibility TEXT, group_type TEXT, cache_date TEXT, parents TEXT, children TEXT,
  is_hidden INTEGER NOT NULL DEFAULT 0, is_reserved INTEGER NOT NULL DEFAULT 0);
CREATE TABLE group_contact (
  id INTEGER PRIMARY KEY AUTOINCREMENT, group_id INTEGER NOT NULL, contact_id INTEGER NOT NULL,
  status TEXT, location_id INTEGER, email_id INTEGER, UNIQUE (contact_id, group_id));
CREATE INDEX group_contact_group ON group_contact(group_id, id);
CREATE TABLE subscription_history (
  id INTEGER PRIMARY KEY AUTOINCREMENT, contact_id INTEGER NOT NULL, group_id INTEGER,
  date TEXT NOT NULL, method TEXT, status TEXT, tracking TEXT);
CREATE INDEX history_group ON subscription_history(group_id, id);
CREATE INDEX history_group_date ON subscription_history(group_id, date);
CREATE INDEX history_contact ON subscription_history(contact_id, group_id);
CREATE TABLE group_contact_cache (
  group_id INTEGER NOT NULL, contact_id INTEGER NOT NULL, PRIMARY KEY (group_id, contact_id));
CREATE TABLE tag (
  id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, label TEXT, description TEXT,
  parent_id INTEGER, is_selectable INTEGER NOT NULL DEFAULT 1, used_for TEXT);
CREATE TABLE entity_tag (
  id INTEGER PRIMARY KEY AUTOINCREMENT, entity_table TEXT, entity_id INTEGER NOT NULL,
  tag_id INTEGER NOT NULL, UNIQUE (entity_table, entity_id, tag_id));
CREATE INDEX entity_tag_entity ON entity_tag(entity_id);
CREATE TABLE acl_contact (key_id INTEGER NOT NULL, contact_id INTEGER NOT NULL,
  PRIMARY KEY (key_id, contact_id));
"""


# ------------------------------------------------------------------------- value conversion


def serialize(values: Iterable[Any]) -> str | None:
    items = [str(v) for v in values if v is not None and v != ""]
    return SEPARATOR + SEPARATOR.join(items) + SEPARATOR if items else None


def unserialize(stored: str | None) -> list[str]:
    return [v for v in stored.split(SEPARATOR) if v] if stored else []


def option_value(spec: FieldSpec, ref: Any, suffix: str) -> Any:
    """Map an option name/label/abbr to its stored value; unknown names become NULL."""
    for opt in spec.options or ():
        if getattr(opt, suffix, None) == ref:
            return opt.value
    return None


def option_ref(spec: FieldSpec, value: Any, suffix: str) -> Any:
    for opt in spec.options or ():
        if str(opt.value) == str(value):
            return getattr(opt, suffix, None)
    return None


def to_storage(spec: FieldSpec, value: Any, suffix: str | None = None) -> Any:
    """Coerce an API input value into the column's stored form."""
    if suffix:
        if spec.serialize:
            items = value if isinstance(value, list) else [value]
            return serialize(option_value(spec, v, suffix) for v in items)
        value = option_value(spec, value, suffix)
    if value is None:
        return None
    if spec.serialize:
        items = value if isinstance(value, list) else str(value).split(",")
        return serialize(items)
    if spec.data_type == "Boolean":
        if isinstance(value, str):
            return 0 if value.strip().lower() in ("", "0", "false") else 1
        return 1 if value else 0
    if spec.data_type == "Integer":
        if value == "":
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            raise CiviApiError(f"Expected integer for field '{spec.name}'") from None
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    text = str(value) if not isinstance(value, bool) else str(int(value))
    if spec.max_length is not None and len(text) > spec.max_length:
        raise CiviApiError(f"DB Error: Data too long for column '{spec.name}'")
    return text


def from_storage(spec: FieldSpec, stored: Any, suffix: str | None = None) -> Any:
    """Render a stored value as APIv4 returns it (JSON booleans, ints, lists)."""
    if spec.serialize:
        items: list[Any] = unserialize(stored)
        if suffix:
            return [option_ref(spec, v, suffix) for v in items]
        return [int(v) for v in items] if spec.data_type == "Integer" else items
    if stored is None:
        return None
    if suffix:
        return option_ref(spec, stored, suffix)
    if spec.data_type == "Boolean":
        return bool(stored)
    if spec.data_type == "Integer":
        return int(stored)
    return stored

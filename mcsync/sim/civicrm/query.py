"""The translation of CiviCRM APIv4 get-style params into parameterised SQL for the simulator.

The simulator keeps its state in SQLite tables shaped like CiviCRM's (``schema``); this
module turns ``select``/``where``/``orderBy`` into SQL over them with MySQL-like semantics
(``reference/civicrm-api.md`` §1.6, §5.2 items 13, 17-21): case- and accent-insensitive,
trailing-space-insensitive string comparison, SQL NULL semantics, ``IS EMPTY`` as NULL-or-empty,
``CONTAINS`` on serialized fields by whole element. Values are always bound as parameters, never
formatted into SQL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mcsync.sim.civicrm.schema import (
    ENTITIES,
    SEPARATOR,
    CiviApiError,
    EntitySpec,
    FieldSpec,
    civi_key,
    fold,
    option_value,
    to_storage,
)

PARAM_LIST_LIMIT = 500  # longer IN lists are bound as one JSON parameter

OPERATORS = frozenset(
    {
        "=", "!=", "<>", "<", "<=", ">", ">=", "LIKE", "NOT LIKE", "IN", "NOT IN", "BETWEEN",
        "NOT BETWEEN", "IS NULL", "IS NOT NULL", "IS EMPTY", "IS NOT EMPTY", "CONTAINS",
        "NOT CONTAINS", "CONTAINS ONE OF", "NOT CONTAINS ONE OF", "REGEXP", "NOT REGEXP",
        "REGEXP BINARY", "NOT REGEXP BINARY",
    }
)  # fmt: skip
NO_VALUE_OPERATORS = frozenset({"IS NULL", "IS NOT NULL", "IS EMPTY", "IS NOT EMPTY"})


# ----------------------------------------------------------------------------- translation


@dataclass
class Column:
    """A resolved field expression: its SQL, spec and pseudoconstant suffix."""

    sql: str
    spec: FieldSpec
    suffix: str | None


@dataclass
class SelectItem:
    key: str
    column: Column


class Query:
    """Builds one SELECT over an entity with the implicit joins its field paths need."""

    def __init__(self, entity: str):
        self.spec = ENTITIES[entity]
        self.joins: list[str] = []
        self.aliases: dict[str, tuple[str, EntitySpec]] = {"": ("a", self.spec)}
        self.params: list[Any] = []

    # -- field resolution
    def _join(self, path: str, parent_alias: str, parent: EntitySpec, part: str
              ) -> tuple[str, EntitySpec] | None:  # fmt: skip
        if path in self.aliases:
            return self.aliases[path]
        alias = f"j{len(self.aliases)}"
        if part in parent.implicit_joins:
            target = ENTITIES[parent.implicit_joins[part].entity]
            fk = parent.implicit_joins[part].fk
            on = f"{alias}.{fk} = {parent_alias}.id AND {alias}.is_primary = 1"
        else:
            fspec = parent.fields.get(part)
            if fspec is None or fspec.fk_entity is None or fspec.serialize or fspec.filter_only:
                return None
            target = ENTITIES[fspec.fk_entity]
            on = f"{alias}.id = {parent_alias}.{part}"
        self.joins.append(f"LEFT JOIN {target.table} AS {alias} ON {on}")
        self.aliases[path] = (alias, target)
        return alias, target

    def resolve(self, expr: str) -> Column | None:
        """SQL for a field path like ``contact_id.email_primary.email:name``; None if invalid."""
        if not isinstance(expr, str) or not expr:
            return None
        name, _, suffix = expr.partition(":")
        if suffix and suffix not in ("name", "label", "abbr"):
            return None
        parts = name.split(".")
        alias, entity = "a", self.spec
        for depth, part in enumerate(parts[:-1]):
            joined = self._join(".".join(parts[: depth + 1]), alias, entity, part)
            if joined is None:
                return None
            alias, entity = joined
        spec = entity.fields.get(parts[-1])
        if spec is None or (suffix and not spec.options):
            return None
        if spec.name in entity.implicit_joins:
            joined = self._join(name, alias, entity, spec.name)
            assert joined is not None
            return Column(f"{joined[0]}.id", spec, None)
        if spec.filter_only:
            return Column(f"{alias}.id", spec, None)
        return Column(f"{alias}.{spec.name}", spec, suffix or None)

    def expand_select(self, select: list[Any]) -> tuple[list[SelectItem], bool]:
        """Select items (unknown fields silently dropped) and whether row_count was asked."""
        items: list[SelectItem] = []
        row_count = False
        for expr in select or ["*"]:
            if expr == "row_count":
                row_count = True
                continue
            if isinstance(expr, str) and (expr == "*" or expr.endswith(".*")):
                prefix = expr[:-1]
                if prefix and self.resolve(prefix + "id") is None:
                    continue
                target = self.aliases[prefix[:-1]][1] if prefix else self.spec
                for fspec in target.core_fields():
                    col = self.resolve(prefix + fspec.name)
                    if col is not None:
                        items.append(SelectItem(prefix + fspec.name, col))
                continue
            col = self.resolve(expr) if isinstance(expr, str) else None
            if col is not None and not col.spec.filter_only:
                items.append(SelectItem(expr, col))
        seen: dict[str, SelectItem] = {}
        for item in items:
            seen.setdefault(item.key, item)
        return list(seen.values()), row_count

    # -- where
    def where_sql(self, clauses: Any) -> str:
        if clauses in (None, []):
            return "1"
        if not isinstance(clauses, list):
            raise CiviApiError("Invalid where clause")
        return self._group("AND", clauses)

    def _group(self, op: str, clauses: list[Any]) -> str:
        parts = [self._clause(c) for c in clauses]
        if not parts:
            return "1" if op == "AND" else "0"
        return "(" + f" {op} ".join(parts) + ")"

    def _clause(self, clause: Any) -> str:
        if not isinstance(clause, list) or not clause:
            raise CiviApiError("Invalid where clause")
        head = clause[0]
        if head in ("AND", "OR", "NOT") and len(clause) == 2 and isinstance(clause[1], list):
            if head == "NOT":
                return f"NOT {self._group('AND', clause[1])}"
            return self._group(head, clause[1])
        if len(clause) < 2:
            raise CiviApiError("Invalid where clause")
        op = clause[1]
        if not isinstance(op, str) or op not in OPERATORS:
            raise CiviApiError("Illegal operator")
        col = self.resolve(head) if isinstance(head, str) else None
        if col is None:
            raise CiviApiError(f"Invalid field '{head}'")
        value = clause[2] if len(clause) > 2 else None
        if col.spec.name == "groups" and col.spec.filter_only:
            return self._groups_clause(col, op, value)
        return self._leaf(col, op, value)

    def _bind(self, value: Any) -> str:
        self.params.append(value)
        return "?"

    def _scalar(self, col: Column, value: Any) -> Any:
        """Convert one comparison value to what the column expression compares against."""
        spec = col.spec
        if isinstance(value, (list, dict)):
            if spec.serialize:
                return to_storage(spec, value, col.suffix)
            raise CiviApiError(f"Expected scalar value for field '{spec.name}'")
        if col.suffix:
            value = option_value(spec, value, col.suffix)
        if value is None:
            return None
        if spec.is_string:
            return civi_key(value)
        if spec.data_type == "Boolean":
            return to_storage(spec, value)
        if spec.data_type == "Integer" and not spec.serialize:
            try:
                return int(value)
            except (TypeError, ValueError):
                return str(value)
        return str(value)

    def _lhs(self, col: Column) -> str:
        return f"civi_key({col.sql})" if col.spec.is_string else col.sql

    def _leaf(self, col: Column, op: str, value: Any) -> str:
        spec, lhs = col.spec, self._lhs(col)
        if op in NO_VALUE_OPERATORS:
            if op == "IS NULL":
                return f"{col.sql} IS NULL"
            if op == "IS NOT NULL":
                return f"{col.sql} IS NOT NULL"
            empty = self._empty_value(spec)
            if op == "IS EMPTY":
                return f"({col.sql} IS NULL" + (f" OR {col.sql} = {empty})" if empty else ")")
            return f"({col.sql} IS NOT NULL" + (f" AND {col.sql} != {empty})" if empty else ")")
        if op in ("=", "!=", "<>", "<", "<=", ">", ">="):
            sql_op = "!=" if op == "<>" else op
            return f"{lhs} {sql_op} {self._bind(self._scalar(col, value))}"
        if op in ("IN", "NOT IN"):
            items = value if isinstance(value, list) else [value]
            negate = "NOT " if op == "NOT IN" else ""
            if not items:
                return "1" if negate else "0"
            converted = [self._scalar(col, v) for v in items]
            if len(converted) > PARAM_LIST_LIMIT:
                mark = self._bind(json.dumps(converted))
                return f"{lhs} {negate}IN (SELECT value FROM json_each({mark}))"
            marks = ", ".join(self._bind(v) for v in converted)
            return f"{lhs} {negate}IN ({marks})"
        if op in ("BETWEEN", "NOT BETWEEN"):
            if not isinstance(value, list) or len(value) != 2:
                raise CiviApiError(f"{op} operator requires an array of 2 values")
            low, high = (self._bind(self._scalar(col, v)) for v in value)
            return f"{lhs} {'NOT ' if op == 'NOT BETWEEN' else ''}BETWEEN {low} AND {high}"
        if op in ("LIKE", "NOT LIKE"):
            pattern = fold(value) if spec.is_string else value
            neg = "NOT " if op == "NOT LIKE" else ""
            target = f"civi_fold({col.sql})" if spec.is_string else col.sql
            return f"{target} {neg}LIKE {self._bind(pattern)} ESCAPE '\\'"
        if op.endswith("REGEXP") or op.endswith("REGEXP BINARY"):
            fn = "civi_regexp_bin" if op.endswith("BINARY") else "civi_regexp"
            neg = "NOT " if op.startswith("NOT ") else ""
            return f"{neg}COALESCE({fn}({self._bind(str(value))}, {col.sql}), 0)"
        return self._contains(col, op, value)

    @staticmethod
    def _empty_value(spec: FieldSpec) -> str | None:
        if spec.serialize or spec.data_type in ("String", "Text"):
            return "''"
        if spec.data_type in ("Integer", "Boolean", "Float"):
            return "0"
        return None

    def _contains(self, col: Column, op: str, value: Any) -> str:
        negate = op.startswith("NOT ")
        any_of = op.endswith("ONE OF")
        items = value if isinstance(value, list) else [value]
        parts = []
        for item in items:
            if col.spec.serialize:
                ref = option_value(col.spec, item, col.suffix) if col.suffix else item
                needle = SEPARATOR + str(ref) + SEPARATOR
                parts.append(f"COALESCE(instr({col.sql}, {self._bind(needle)}), 0) > 0")
            else:
                pattern = "%" + _escape_like(fold(item) or "") + "%"
                parts.append(f"COALESCE(civi_fold({col.sql}) LIKE {self._bind(pattern)} "
                             "ESCAPE '\\', 0)")  # fmt: skip
        if not parts:
            return "1" if negate else "0"
        joined = "(" + (" OR " if any_of else " AND ").join(parts) + ")"
        return f"NOT {joined}" if negate else joined

    def _groups_clause(self, col: Column, op: str, value: Any) -> str:
        """Contact.groups: members of static (Added) and smart (cached, not Removed) groups."""
        if op not in ("=", "IN", "NOT IN", "!=", "<>"):
            raise CiviApiError("Illegal operator")
        items = value if isinstance(value, list) else [value]
        ids = [int(v) for v in items]
        if not ids:
            return "1" if op in ("NOT IN", "!=", "<>") else "0"
        marks = ", ".join("?" for _ in ids)
        sub = (
            f"SELECT gc.contact_id FROM group_contact gc WHERE gc.status = 'Added' "
            f"AND gc.group_id IN ({marks}) UNION SELECT cc.contact_id FROM group_contact_cache cc "
            f"WHERE cc.group_id IN ({marks}) AND NOT EXISTS (SELECT 1 FROM group_contact r "
            "WHERE r.contact_id = cc.contact_id AND r.group_id = cc.group_id "
            "AND r.status = 'Removed')"
        )
        self.params.extend(ids + ids)
        negate = "NOT " if op in ("NOT IN", "!=", "<>") else ""
        return f"{col.sql} {negate}IN ({sub})"

    # -- order
    def order_sql(self, order_by: Any) -> str:
        if not order_by:
            return "a.id ASC"
        if not isinstance(order_by, dict):
            raise CiviApiError("Invalid orderBy: expected an object of field => ASC|DESC")
        parts = []
        for expr, direction in order_by.items():
            col = self.resolve(expr)
            if col is None or col.spec.filter_only:
                raise CiviApiError(f"Invalid field '{expr}'")
            direction = str(direction).upper()
            if direction not in ("ASC", "DESC"):
                raise CiviApiError(f"Invalid sort direction. Cannot order by {expr} {direction}")
            parts.append(f"{self._lhs(col)} {direction}")
        return ", ".join(parts)

    def from_sql(self) -> str:
        return " ".join([f"{self.spec.table} AS a", *self.joins])


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def where_mentions(clauses: Any, field_name: str) -> bool:
    """Whether a where tree names a field anywhere (CiviCRM's default-filter test)."""
    if not isinstance(clauses, list):
        return False
    for clause in clauses:
        if not isinstance(clause, list) or not clause:
            continue
        if clause[0] in ("AND", "OR", "NOT") and len(clause) == 2 and isinstance(clause[1], list):
            if where_mentions(clause[1], field_name):
                return True
        elif isinstance(clause[0], str) and clause[0].split(":")[0] == field_name:
            return True
    return False


def where_fetches_by_id(clauses: Any) -> bool:
    """A top-level ``id =`` or ``id IN`` clause disables default filters (fetch by unique key)."""
    return isinstance(clauses, list) and any(
        isinstance(c, list) and len(c) >= 2 and c[0] == "id" and c[1] in ("=", "IN")
        for c in clauses
    )

"""API execution: one APIv4 call from its params to its result. Validates the entity, action and
params, runs chains, and implements the actions (get; the writes create, update, save, delete
and replace; getFields and getActions), down to one record through the API.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from mcsync.sim.civicrm.helpers import (
    _apply_index,
    _contact_column,
    _filter_rows,
    _int_param,
    _now_alias,
    _parse_index,
    _substitute,
)
from mcsync.sim.civicrm.model import (
    ACTION_PARAMS,
    ACTIONS,
    COMMON_PARAMS,
    ENTITY_ACTION_PARAMS,
    MASKED_MESSAGE,
    ApiUser,
    _Ctx,
    _Result,
)
from mcsync.sim.civicrm.query import Query, where_fetches_by_id, where_mentions
from mcsync.sim.civicrm.schema import (
    ENTITIES,
    VIRTUAL_FIELDS,
    CiviApiError,
    from_storage,
    to_storage,
)
from mcsync.sim.civicrm.state import CiviState


class ApiExecution(CiviState):
    """API execution."""

    def _call(self, user: ApiUser, entity: str, action: str, params: Any, index: Any
              ) -> tuple[int, dict[str, Any]]:  # fmt: skip
        """Run one API call; returns (HTTP status, envelope)."""
        try:
            if isinstance(params, str):
                try:
                    params = json.loads(params) if params else {}
                except ValueError:
                    raise CiviApiError("Invalid params: not valid JSON") from None
            if params is None:
                params = {}
            if not isinstance(params, dict):
                raise CiviApiError("Invalid params: expected a JSON object")
            with self._tx():
                result = self._execute(user, entity, action, params)
            values = _apply_index(result.values, _parse_index(index))
        except CiviApiError as exc:
            return self._error(user, exc)
        payload: dict[str, Any] = {
            "values": values, "entity": entity, "action": action, "debug": None, "version": 4,
            "count": result.count, "countFetched": len(result.values),
        }  # fmt: skip
        if result.count_matched is not None:
            payload["countMatched"] = result.count_matched
        payload.update(result.extra)
        return 200, payload

    def _error(self, user: ApiUser | None, exc: CiviApiError) -> tuple[int, dict[str, Any]]:
        error_id = uuid.uuid4().hex[:12]
        error_id = f"{error_id[:4]}-{error_id[4:8]}-{error_id[8:]}"
        self.error_log.append((error_id, exc.message))
        if user is not None and user.debug_visible:
            return exc.status, {"error_id": error_id, "error_code": 0,
                                "error_message": exc.message, "status": exc.status}  # fmt: skip
        return exc.status, {"error_code": "1", "error_message": MASKED_MESSAGE.format(error_id),
                            "status": exc.status}  # fmt: skip

    def _execute(self, user: ApiUser, entity: str, action: str, params: dict[str, Any]
                 ) -> _Result:  # fmt: skip
        if entity not in ENTITIES or action not in ACTIONS:
            raise CiviApiError(
                f"API ({entity}, {action}) does not exist (join the API team and implement it!)"
            )
        allowed = (
            COMMON_PARAMS
            | ACTION_PARAMS[action]
            | ENTITY_ACTION_PARAMS.get((entity, action), frozenset())
        )
        for name in params:
            if name not in allowed:
                raise CiviApiError(f"Unknown api parameter: set{name[:1].upper()}{name[1:]}")
        for unsupported in ("join", "groupBy", "having"):
            if params.get(unsupported):
                raise CiviApiError(f"The simulator does not model the '{unsupported}' parameter")
        ctx = _Ctx(user, str(params.get("method") or "API"), params.get("tracking"))
        result: _Result = getattr(self, f"_action_{action}")(ctx, entity, params)
        if params.get("chain"):
            self._run_chains(user, result.values, params["chain"])
        return result

    def _run_chains(self, user: ApiUser, rows: list[dict[str, Any]], chain: Any) -> None:
        if not isinstance(chain, dict):
            raise CiviApiError("Invalid chain: expected an object")
        for row in rows:
            for name, call in chain.items():
                if not isinstance(call, list) or len(call) < 2:
                    raise CiviApiError(f"Invalid chain '{name}'")
                params = _substitute(call[2] if len(call) > 2 else {}, row)
                sub = self._execute(user, str(call[0]), str(call[1]), params)
                row[name] = _apply_index(sub.values, _parse_index(call[3] if len(call) > 3
                                                                  else None))  # fmt: skip

    # -- get
    def _select(self, ctx: _Ctx, entity: str, params: dict[str, Any]
                ) -> tuple[list[dict[str, Any]], int | None]:  # fmt: skip
        """Rows for a get (and the total when row_count is selected)."""
        query = Query(entity)
        select = params.get("select") or []
        if not isinstance(select, list):
            raise CiviApiError("Invalid select: expected a list")
        # APIv4 SQL functions in select: only NOW() ("NOW() AS alias"), the server's current
        # time in the site's zone like every date it returns (civicrm-core SqlFunctionNOW).
        now_keys = [key for key in map(_now_alias, select) if key]
        fields = [e for e in select if not _now_alias(e)]
        items, row_count = query.expand_select(fields) if fields or not now_keys else ([], False)
        where_sql, order_sql = self._where_and_order(ctx, query, entity, params)
        limit, offset = _int_param(params, "limit"), _int_param(params, "offset")
        total = None
        if row_count:
            total = self._conn.execute(f"SELECT COUNT(*) FROM {query.from_sql()} WHERE {where_sql}",
                                       query.params).fetchone()[0]  # fmt: skip
        if not items and row_count:
            return [], total
        # Every selected field unknown: rows are still returned, with nothing in them.
        cols = ", ".join(f"{item.column.sql} AS c{i}" for i, item in enumerate(items)) or "a.id"
        sql = (f"SELECT {cols} FROM {query.from_sql()} WHERE {where_sql} ORDER BY {order_sql} "
               "LIMIT ? OFFSET ?")  # fmt: skip
        cursor = self._conn.execute(sql, [*query.params, limit or -1, offset])
        rows = [
            {item.key: from_storage(item.column.spec, raw[i], item.column.suffix)
             for i, item in enumerate(items)}
            for raw in cursor
        ]  # fmt: skip
        for row in rows:
            row.update(dict.fromkeys(now_keys, self.now()))
        return rows, total

    def _where_and_order(self, ctx: _Ctx, query: Query, entity: str, params: dict[str, Any]
                         ) -> tuple[str, str]:  # fmt: skip
        where = params.get("where") or []
        clauses = [query.where_sql(where)]
        if (entity == "Contact" and not where_mentions(where, "is_deleted")
                and not where_fetches_by_id(where)):  # fmt: skip
            clauses.append("a.is_deleted = 0")
        user = ctx.user
        if user is not None and not user.view_all_contacts:
            column = _contact_column(entity)
            if column:
                clauses.append(f"a.{column} IN (SELECT contact_id FROM acl_contact "
                               "WHERE key_id = ?)")  # fmt: skip
                query.params.append(user.key_id)
        return " AND ".join(clauses), query.order_sql(params.get("orderBy"))

    def _action_get(self, ctx: _Ctx, entity: str, params: dict[str, Any]) -> _Result:
        rows, total = self._select(ctx, entity, params)
        if total is not None:
            return _Result(rows, total, total)
        limit, offset = _int_param(params, "limit"), _int_param(params, "offset")
        full_page = bool(limit) and len(rows) >= limit
        return _Result(rows, len(rows) if full_page else len(rows) + offset)

    def _matching_ids(self, ctx: _Ctx, entity: str, params: dict[str, Any]) -> list[int]:
        query = Query(entity)
        where_sql, order_sql = self._where_and_order(ctx, query, entity, params)
        sql = (f"SELECT a.id FROM {query.from_sql()} WHERE {where_sql} ORDER BY {order_sql} "
               "LIMIT ? OFFSET ?")  # fmt: skip
        limit, offset = _int_param(params, "limit"), _int_param(params, "offset")
        return [r[0] for r in self._conn.execute(sql, [*query.params, limit or -1, offset])]

    # -- writes
    def _action_create(self, ctx: _Ctx, entity: str, params: dict[str, Any]) -> _Result:
        values = params.get("values") or {}
        if not isinstance(values, dict):
            raise CiviApiError("Invalid values: expected an object")
        record, _ = self._save_record(ctx, entity, values, reload=False)
        return _Result([record], 1)

    def _action_update(self, ctx: _Ctx, entity: str, params: dict[str, Any]) -> _Result:
        values = dict(params.get("values") or {})
        where = params.get("where") or []
        if not where:
            if values.get("id") is None:
                raise CiviApiError(
                    'Parameter "where" is required unless primary keys are supplied in values.'
                )
            where = [["id", "=", values["id"]]]
        values.pop("id", None)
        ids = self._matching_ids(ctx, entity, {**params, "where": where})
        reload = params.get("reload")
        records = [self._save_record(ctx, entity, {**values, "id": i}, reload=reload)[0]
                   for i in ids]  # fmt: skip
        return _Result(records, len(records))

    def _action_save(self, ctx: _Ctx, entity: str, params: dict[str, Any]) -> _Result:
        records = params.get("records")
        if not records or not isinstance(records, list):
            raise CiviApiError('Parameter "records" is required.')
        saved, updated = self._save_all(ctx, entity, params, records)
        return _Result(saved, len(saved), updated)

    def _save_all(self, ctx: _Ctx, entity: str, params: dict[str, Any], records: list[Any]
                  ) -> tuple[list[dict[str, Any]], int]:  # fmt: skip
        defaults = params.get("defaults") or {}
        match = params.get("match") or []
        saved: list[dict[str, Any]] = []
        updated = 0
        for raw in records:
            if not isinstance(raw, dict):
                raise CiviApiError("Invalid records: expected a list of objects")
            record = {**defaults, **raw}
            if record.get("id") is None and match and all(m in record for m in match):
                found = self._matching_ids(ctx, entity, {"where": [
                    [m, "IS EMPTY"] if record[m] in (None, "") else [m, "=", record[m]]
                    for m in match], "limit": 2})  # fmt: skip
                if len(found) == 1:
                    record["id"] = found[0]
            out, was_update = self._save_record(ctx, entity, record, reload=params.get("reload"))
            updated += was_update
            saved.append(out)
        return saved, updated

    def _action_delete(self, ctx: _Ctx, entity: str, params: dict[str, Any]) -> _Result:
        if not params.get("where"):
            raise CiviApiError(f'Cannot delete {entity} with no "where" parameter specified')
        ids = self._matching_ids(ctx, entity, params)
        for record_id in ids:
            self._check_acl(ctx, entity, self._row(entity, record_id))
            if entity == "Contact":
                self._delete_contact(ctx, record_id, use_trash=params.get("useTrash", True)
                                     not in (False, 0, "0", "false"))  # fmt: skip
            else:
                self._delete_row(ctx, entity, record_id)
        return _Result([{"id": i} for i in ids], len(ids))

    def _action_replace(self, ctx: _Ctx, entity: str, params: dict[str, Any]) -> _Result:
        if not params.get("where"):
            raise CiviApiError('Parameter "where" is required.')
        records = params.get("records") or []
        existing = self._matching_ids(ctx, entity, {"where": params["where"]})
        saved, updated = self._save_all(ctx, entity, params, records)
        kept = {r.get("id") for r in saved}
        deleted = [i for i in existing if i not in kept]
        for record_id in deleted:
            if entity == "Contact":
                self._delete_contact(ctx, record_id, use_trash=True)
            else:
                self._delete_row(ctx, entity, record_id)
        return _Result(saved, len(saved), extra={"deleted": [{"id": i} for i in deleted]})

    def _action_getFields(self, ctx: _Ctx, entity: str, params: dict[str, Any]) -> _Result:
        load = params.get("loadOptions")
        rows = []
        for spec in ENTITIES[entity].fields.values():
            row: dict[str, Any] = {
                "name": spec.name, "title": spec.title or spec.name, "entity": entity,
                "type": "Filter" if spec.filter_only else "Field", "data_type": spec.data_type,
                "fk_entity": spec.fk_entity, "serialize": 1 if spec.serialize else None,
                "readonly": spec.readonly, "required": spec.required,
                "default_value": spec.default, "nullable": not spec.required,
                "options": bool(spec.options),
            }  # fmt: skip
            if load and spec.options:
                keys = load if isinstance(load, list) else None
                row["options"] = (
                    [{k: getattr(o, k, None) if k != "id" else o.value for k in keys}
                     for o in spec.options] if keys
                    else {str(o.value): o.label for o in spec.options}
                )  # fmt: skip
            rows.append(row)
        rows = _filter_rows(rows, params.get("where") or [])
        select = params.get("select")
        if select:
            rows = [{k: r.get(k) for k in select} for r in rows]
        return _Result(rows, len(rows))

    def _action_getActions(self, ctx: _Ctx, entity: str, params: dict[str, Any]) -> _Result:
        rows = [{"name": a} for a in ACTIONS]
        return _Result(_filter_rows(rows, params.get("where") or []), len(ACTIONS))

    # -- one record through the API
    def _save_record(self, ctx: _Ctx, entity: str, values: dict[str, Any], reload: Any
                     ) -> tuple[dict[str, Any], bool]:  # fmt: skip
        """Create or update one record from API values; returns (output record, was update)."""
        cols, subs, echo = self._split_values(entity, values)
        record_id = values.get("id")
        if record_id is not None:
            record_id = int(record_id)
            current = self._row(entity, record_id)
            if current is None:
                raise CiviApiError(f"{entity} {record_id} not found")
            self._check_acl(ctx, entity, current)
            self._check_acl(ctx, entity, {**current, **cols})
            self._update_row(ctx, entity, record_id, cols)
        else:
            self._check_acl(ctx, entity, cols)
            record_id = self._create_row(ctx, entity, cols)
        for join, sub in subs.items():
            self._write_primary(ctx, join, record_id, sub)
        stored = self._output(entity, record_id)
        if values.get("id") is None or reload is True:
            out = {k: v for k, v in stored.items() if v is not None and v != []}
        elif isinstance(reload, list):
            out = {k: stored.get(k) for k in ["id", *reload]}
        else:
            out = {"id": record_id}
        for key in values:
            name = key.partition(":")[0]
            if key in echo or "." in key:
                out[key] = None if key in echo else values[key]
            elif name in stored:
                out[key] = (
                    self._output(entity, record_id, [key])[key] if ":" in key else stored[name]
                )
        return out, values.get("id") is not None

    def _split_values(self, entity: str, values: dict[str, Any]
                      ) -> tuple[dict[str, Any], dict[str, dict[str, Any]], set[str]]:  # fmt: skip
        """Writable column values, implicit-join sub-records, and unknown keys to echo as null."""
        spec = ENTITIES[entity]
        cols: dict[str, Any] = {}
        subs: dict[str, dict[str, Any]] = {}
        echo: set[str] = set()
        for key, value in values.items():
            name, _, suffix = key.partition(":")
            head, dot, rest = name.partition(".")
            if dot and head in spec.implicit_joins:
                subs.setdefault(head, {})[rest + (":" + suffix if suffix else "")] = value
                continue
            fspec = spec.fields.get(name)
            if fspec is None or dot:
                echo.add(key)
            elif name != "id" and not fspec.readonly and name not in VIRTUAL_FIELDS:
                cols[name] = to_storage(fspec, value, suffix or None)
        return cols, subs, echo

    def _columns(self, entity: str, fields: dict[str, Any]) -> dict[str, Any]:
        cols, subs, echo = self._split_values(entity, fields)
        if echo or subs:
            raise ValueError(f"unknown {entity} fields: {sorted(echo | set(subs))}")
        return cols

    def _write_primary(self, ctx: _Ctx, join: str, contact_id: int, sub: dict[str, Any]) -> None:
        """``email_primary.email`` etc. on Contact writes: update or create the primary row."""
        target = ENTITIES["Contact"].implicit_joins[join].entity
        table = ENTITIES[target].table
        row = self._conn.execute(f"SELECT id FROM {table} WHERE contact_id = ? AND is_primary = 1",
                                 (contact_id,)).fetchone()  # fmt: skip
        cols, _, _ = self._split_values(target, sub)
        if row:
            self._update_row(ctx, target, row[0], cols)
        elif any(v is not None for v in cols.values()):
            self._create_row(ctx, target, {**cols, "contact_id": contact_id, "is_primary": 1})

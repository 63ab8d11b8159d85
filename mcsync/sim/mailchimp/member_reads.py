"""Reading members: the member list (filters, ``last_changed`` windows, orders and offset paging
served from covering indexes with cached totals and cursors), one member, its activity feed
(status changes recorded here) and its tags.
"""

from __future__ import annotations

from typing import Any

from mcsync.sim.mailchimp.helpers import _paging, _parse_time, _wanted
from mcsync.sim.mailchimp.model import (
    ACTIVITY_FILTERS,
    STATUSES,
    MailList,
    Row,
    _Call,
    _invalid,
    _iso_epoch,
    _not_found,
    _PageQuery,
    _seq_of_unique_email_id,
    epoch,
)
from mcsync.sim.mailchimp.state import MailchimpState
from mcsync.sim.mailchimp.storage import _CACHE_SIZE, _SMALL_WINDOW


class MemberReads(MailchimpState):
    """Reading members."""

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

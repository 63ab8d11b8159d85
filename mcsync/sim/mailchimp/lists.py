"""The account and its lists (``GET /``, ``/ping``, ``/lists``, ``/lists/{id}``) and the lists'
webhooks (``/lists/{id}/webhooks``).
"""

from __future__ import annotations

import operator
import re
from typing import Any

from mcsync.sim.mailchimp.helpers import _paging, _parse_time
from mcsync.sim.mailchimp.model import (
    WEBHOOK_EVENTS,
    WEBHOOK_SOURCES,
    MailList,
    _Call,
    _hex,
    _invalid,
    _not_found,
    iso,
    subscriber_hash,
)
from mcsync.sim.mailchimp.state import MailchimpState


class Lists(MailchimpState):
    """Account and lists, and list webhooks."""

    # ---------------------------------------------------------------- account and lists

    def _get_root(self, call: _Call) -> tuple[int, Any]:
        account = call.account
        total = sum(
            lst.status_counts["subscribed"]
            for lst in self._lists.values()
            if lst.account is account
        )
        return 200, {
            "account_id": account.account_id,
            "login_id": account.account_id[:8],
            "account_name": account.name,
            "email": "owner@example.org",
            "first_name": "Sim",
            "last_name": "Owner",
            "username": account.name.lower().replace(" ", "_"),
            "avatar_url": "",
            "role": "owner",
            "member_since": account.created,
            "pricing_plan_type": "monthly",
            "first_payment": account.created,
            "account_timezone": "UTC",
            "account_industry": "Nonprofit",
            "contact": {
                "company": account.name,
                "addr1": "1 Sim Street",
                "addr2": "",
                "city": "Atlanta",
                "state": "GA",
                "zip": "30308",
                "country": "US",
            },
            "pro_enabled": False,
            "last_login": iso(call.now),
            "total_subscribers": total,
            "industry_stats": {"open_rate": 0, "bounce_rate": 0, "click_rate": 0},
            "_links": self._links(call.account.dc, "", ("self", "GET")),
        }

    def _get_ping(self, call: _Call) -> tuple[int, Any]:
        return 200, {"health_status": "Everything's Chimpy!"}

    def _get_lists(self, call: _Call) -> tuple[int, Any]:
        count, offset = _paging(call)
        lists = [lst for lst in self._lists.values() if lst.account is call.account]
        for name, compare in (
            ("since_date_created", operator.gt),
            ("before_date_created", operator.lt),
        ):
            value = call.arg(name)
            if value:
                bound = iso(_parse_time(value, name))
                lists = [lst for lst in lists if compare(lst.date_created, bound)]
        email = call.arg("email")
        if email:
            wanted = subscriber_hash(email)
            lists = [
                lst
                for lst in lists
                if (row := self._row(lst.id, wanted)) is not None and row["status"] != "archived"
            ]
        if call.arg("sort_field") == "date_created":
            lists.sort(
                key=lambda lst: lst.date_created,
                reverse=(call.arg("sort_dir") or "").upper() == "DESC",
            )
        return 200, {
            "lists": [self._render_list(call, lst) for lst in lists[offset : offset + count]],
            "total_items": len(lists),
            "constraints": {
                "may_create": True,
                "max_instances": 100,
                "current_total_instances": len(lists),
            },
            "_links": self._links(call.account.dc, "/lists", ("self", "GET"), ("create", "POST")),
        }

    def _get_list(self, call: _Call) -> tuple[int, Any]:
        return 200, self._render_list(call, self._own_list(call))

    def _render_list(self, call: _Call, lst: MailList) -> dict[str, Any]:
        counts = lst.status_counts
        stats: dict[str, Any] = {
            "member_count": counts["subscribed"],
            "unsubscribe_count": counts["unsubscribed"],
            "cleaned_count": counts["cleaned"],
            "member_count_since_send": counts["subscribed"],
            "unsubscribe_count_since_send": counts["unsubscribed"],
            "cleaned_count_since_send": counts["cleaned"],
            "campaign_count": 0,
            "campaign_last_sent": "",
            "merge_field_count": len(lst.merge_fields),
            "avg_sub_rate": 0,
            "avg_unsub_rate": 0,
            "target_sub_rate": 0,
            "open_rate": 0,
            "click_rate": 0,
            "last_sub_date": lst.last_sub_date,
            "last_unsub_date": lst.last_unsub_date,
        }
        if call.flag("include_total_contacts"):
            stats["total_contacts"] = sum(n for s, n in counts.items() if s != "archived")
        return {
            "id": lst.id,
            "web_id": lst.web_id,
            "name": lst.name,
            "contact": {
                "company": lst.account.name,
                "address1": "1 Sim Street",
                "address2": "",
                "city": "Atlanta",
                "state": "GA",
                "zip": "30308",
                "country": "US",
                "phone": "",
            },
            "permission_reminder": "You signed up on our website.",
            "use_archive_bar": True,
            "campaign_defaults": {
                "from_name": lst.account.name,
                "from_email": "owner@example.org",
                "subject": "",
                "language": "en",
            },
            "notify_on_subscribe": "",
            "notify_on_unsubscribe": "",
            "date_created": lst.date_created,
            "list_rating": 0,
            "email_type_option": False,
            "subscribe_url_short": f"http://eepurl.com/sim{lst.web_id}",
            "subscribe_url_long": f"https://sim.{lst.account.dc}.list-manage.com/subscribe?id={lst.id}",
            "beamer_address": f"{lst.id}@inbound.mailchimp.com",
            "visibility": "pub",
            "double_optin": False,
            "has_welcome": False,
            "marketing_permissions": False,
            "modules": [],
            "stats": stats,
            "_links": self._links(
                call.account.dc,
                f"/lists/{lst.id}",
                ("self", "GET"),
                ("parent", "GET"),
                ("update", "PATCH"),
                ("batch-sub-unsub-members", "POST"),
                ("members", "GET"),
                ("merge-fields", "GET"),
                ("interest-categories", "GET"),
                ("webhooks", "GET"),
            ),
        }

    # ---------------------------------------------------------------- list webhooks

    def _get_webhooks(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        return 200, {
            "webhooks": [self._render_webhook(call, lst, w) for w in lst.webhooks.values()],
            "list_id": lst.id,
            "total_items": len(lst.webhooks),
            "_links": self._links(
                call.account.dc, f"/lists/{lst.id}/webhooks", ("self", "GET"), ("create", "POST")
            ),
        }

    def _get_webhook(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        return 200, self._render_webhook(call, lst, self._webhook(lst, call))

    def _post_webhook(self, call: _Call) -> tuple[int, Any]:
        """Created without the real URL check (Mailchimp GETs the URL first; no network here)."""
        lst = self._own_list(call)
        body = call.json_body()
        url = body.get("url")
        if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
            raise _invalid([{"field": "url", "message": "This value should be a valid URL."}])
        base = url.split("?", 1)[0]
        if any(w["url"].split("?", 1)[0] == base for w in lst.webhooks.values()):
            raise _invalid(
                [{"field": "url", "message": "A webhook with this URL already exists"}],
                "Sorry, you can't use the same url for more than one webhook.",
            )
        hook: dict[str, Any] = {
            "id": _hex(f"webhook:{self._next()}"),
            "url": url,
            "events": {e: True for e in WEBHOOK_EVENTS},
            "sources": {"user": True, "admin": True, "api": False},
        }
        self._update_webhook(hook, body)
        lst.webhooks[hook["id"]] = hook
        return 200, self._render_webhook(call, lst, hook)

    def _patch_webhook(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        hook = self._webhook(lst, call)
        body = call.json_body()
        if "url" in body:
            if not isinstance(body["url"], str) or not re.match(r"^https?://[^/\s]+", body["url"]):
                raise _invalid([{"field": "url", "message": "This value should be a valid URL."}])
            hook["url"] = body["url"]
        self._update_webhook(hook, body)
        return 200, self._render_webhook(call, lst, hook)

    def _delete_webhook(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        del lst.webhooks[self._webhook(lst, call)["id"]]
        return 204, None

    @staticmethod
    def _update_webhook(hook: dict[str, Any], body: dict[str, Any]) -> None:
        for group, names in (("events", WEBHOOK_EVENTS), ("sources", WEBHOOK_SOURCES)):
            given = body.get(group, {})
            if not isinstance(given, dict) or any(
                k not in names or not isinstance(v, bool) for k, v in given.items()
            ):
                raise _invalid(
                    [
                        {
                            "field": group,
                            "message": f"{group} must map {', '.join(names)} to booleans",
                        }
                    ]
                )
            hook[group].update(given)

    def _render_webhook(self, call: _Call, lst: MailList, hook: dict[str, Any]) -> dict[str, Any]:
        return {
            **hook,
            "events": dict(hook["events"]),
            "sources": dict(hook["sources"]),
            "list_id": lst.id,
            "_links": self._links(
                call.account.dc,
                f"/lists/{lst.id}/webhooks/{hook['id']}",
                ("self", "GET"),
                ("parent", "GET"),
                ("update", "PATCH"),
                ("delete", "DELETE"),
            ),
        }

    def _webhook(self, lst: MailList, call: _Call) -> dict[str, Any]:
        hook = lst.webhooks.get(call.params["1"])
        if hook is None:
            raise _not_found()
        return hook

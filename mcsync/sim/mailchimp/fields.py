"""A list's merge fields, interest categories and interests (``/lists/{id}/merge-fields``,
``/lists/{id}/interest-categories`` and their interests).
"""

from __future__ import annotations

import re
from typing import Any

from mcsync.sim.mailchimp.helpers import _paging
from mcsync.sim.mailchimp.model import (
    CATEGORY_TYPES,
    MERGE_TYPES,
    Interest,
    InterestCategory,
    MailList,
    MergeField,
    _Call,
    _invalid,
    _not_found,
    _require,
)
from mcsync.sim.mailchimp.state import MailchimpState


class MergeFieldsAndInterests(MailchimpState):
    """Merge fields, interest categories and interests."""

    def _get_merge_fields(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        count, offset = _paging(call)
        fields = lst.merge_fields
        if call.arg("type"):
            fields = [f for f in fields if f.type == call.arg("type")]
        if call.arg("required"):
            fields = [f for f in fields if f.required == call.flag("required")]
        return 200, {
            "merge_fields": [
                self._render_merge(call, lst, f) for f in fields[offset : offset + count]
            ],
            "list_id": lst.id,
            "total_items": len(fields),
            "_links": self._links(
                call.account.dc,
                f"/lists/{lst.id}/merge-fields",
                ("self", "GET"),
                ("create", "POST"),
            ),
        }

    def _get_merge_field(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        found = next((f for f in lst.merge_fields if str(f.merge_id) == call.params["1"]), None)
        if found is None:
            raise _not_found()
        return 200, self._render_merge(call, lst, found)

    def _post_merge_field(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        body = call.json_body()
        _require(body, ("name", "type"))
        if body["type"] not in MERGE_TYPES:
            raise _invalid([{"field": "type", "message": "Value is not one of enum values"}])
        tag = str(body.get("tag") or f"MMERGE{len(lst.merge_fields) + 1}").upper()
        if len(tag) > 10 or not re.fullmatch(r"[A-Z0-9_]+", tag) or lst.merge_field(tag):
            raise _invalid(
                [{"field": "tag", "message": f'The tag "{tag}" is invalid or already in use'}]
            )
        merge_id = self.add_merge_field(
            lst.id, tag, body["name"], body["type"], required=body.get("required") is True
        )
        found = next(f for f in lst.merge_fields if f.merge_id == merge_id)
        found.public = body.get("public", True) is True
        found.default_value = str(body.get("default_value", ""))
        found.help_text = str(body.get("help_text", ""))
        return 200, self._render_merge(call, lst, found)

    def _render_merge(self, call: _Call, lst: MailList, f: MergeField) -> dict[str, Any]:
        return {
            "merge_id": f.merge_id,
            "tag": f.tag,
            "name": f.name,
            "type": f.type,
            "required": f.required,
            "default_value": f.default_value,
            "public": f.public,
            "display_order": f.merge_id + 1,
            "options": f.options(),
            "help_text": f.help_text,
            "list_id": lst.id,
            "_links": self._links(
                call.account.dc,
                f"/lists/{lst.id}/merge-fields/{f.merge_id}",
                ("self", "GET"),
                ("parent", "GET"),
                ("update", "PATCH"),
                ("delete", "DELETE"),
            ),
        }

    def _get_categories(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        count, offset = _paging(call)
        categories = [
            c for c in lst.categories.values() if not call.arg("type") or c.type == call.arg("type")
        ]
        return 200, {
            "list_id": lst.id,
            "total_items": len(categories),
            "categories": [
                self._render_category(call, lst, c) for c in categories[offset : offset + count]
            ],
            "_links": self._links(
                call.account.dc,
                f"/lists/{lst.id}/interest-categories",
                ("self", "GET"),
                ("create", "POST"),
            ),
        }

    def _get_category(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        return 200, self._render_category(call, lst, self._category(lst, call))

    def _post_category(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        body = call.json_body()
        _require(body, ("title", "type"))
        if body["type"] not in CATEGORY_TYPES:
            raise _invalid([{"field": "type", "message": "Value is not one of enum values"}])
        if any(c.title == body["title"] for c in lst.categories.values()):
            raise _invalid(
                [{"field": "title", "message": "Already exists"}],
                f'Cannot add "{body["title"]}" because it already exists on the list.',
            )
        category_id = self.add_interest_category(lst.id, str(body["title"]), body["type"])
        return 200, self._render_category(call, lst, lst.categories[category_id])

    def _render_category(self, call: _Call, lst: MailList, c: InterestCategory) -> dict[str, Any]:
        return {
            "list_id": lst.id,
            "id": c.id,
            "title": c.title,
            "display_order": c.display_order,
            "type": c.type,
            "_links": self._links(
                call.account.dc,
                f"/lists/{lst.id}/interest-categories/{c.id}",
                ("self", "GET"),
                ("parent", "GET"),
                ("interests", "GET"),
            ),
        }

    def _get_interests(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        category = self._category(lst, call)
        count, offset = _paging(call)
        interests = [i for i in lst.interests.values() if i.category_id == category.id]
        return 200, {
            "interests": [
                self._render_interest(call, lst, i) for i in interests[offset : offset + count]
            ],
            "list_id": lst.id,
            "category_id": category.id,
            "total_items": len(interests),
            "_links": self._links(
                call.account.dc,
                f"/lists/{lst.id}/interest-categories/{category.id}/interests",
                ("self", "GET"),
                ("create", "POST"),
            ),
        }

    def _get_interest(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        category = self._category(lst, call)
        interest = lst.interests.get(call.params["2"])
        if interest is None or interest.category_id != category.id:
            raise _not_found()
        return 200, self._render_interest(call, lst, interest)

    def _post_interest(self, call: _Call) -> tuple[int, Any]:
        lst = self._own_list(call)
        category = self._category(lst, call)
        body = call.json_body()
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid([{"field": "", "message": "Required fields were not provided: name"}])
        if any(i.name == name and i.category_id == category.id for i in lst.interests.values()):
            raise _invalid(
                [{"field": "name", "message": "Already exists"}],
                f'Cannot add "{name}" because it already exists on the list.',
            )
        interest_id = self.add_interest(lst.id, category.id, name)
        return 200, self._render_interest(call, lst, lst.interests[interest_id])

    def _render_interest(self, call: _Call, lst: MailList, i: Interest) -> dict[str, Any]:
        return {
            "category_id": i.category_id,
            "list_id": lst.id,
            "id": i.id,
            "name": i.name,
            "subscriber_count": str(lst.interest_counts[i.id]),
            "display_order": i.display_order,
            "_links": self._links(
                call.account.dc,
                f"/lists/{lst.id}/interest-categories/{i.category_id}/interests/{i.id}",
                ("self", "GET"),
                ("parent", "GET"),
            ),
        }

    def _category(self, lst: MailList, call: _Call) -> InterestCategory:
        category = lst.categories.get(call.params["1"])
        if category is None:
            raise _not_found()
        return category

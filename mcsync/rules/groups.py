"""Whether a CiviCRM group can be synced (civicrm-api.md §2.3, §2.7): the fields that say so
and the rule. Pure; `config check` reports it and every run refuses to start without it."""

from __future__ import annotations

from typing import Any

GROUP_SELECT = [
    "id",
    "name",
    "title",
    "group_type:name",
    "saved_search_id",
    "is_active",
    "is_hidden",
    "children",
]


def describe_group(group: dict[str, Any] | None, group_id: int) -> str | None:
    """Why a group cannot be synced, or None when it can (civicrm-api.md §2.3, §2.7)."""
    if group is None:
        return f"CiviCRM group {group_id} does not exist"
    if group.get("saved_search_id"):
        return (
            f"CiviCRM group {group_id} ({group.get('title')}) is a smart group; mcsync "
            "syncs static groups only (their membership has history and can be written)"
        )
    types = group.get("group_type:name") or []
    if "Mailing List" not in types:
        return (
            f"CiviCRM group {group_id} ({group.get('title')}) is not a Mailing List group; "
            "tick 'Mailing List' in the group's settings"
        )
    if group.get("is_active") is False:
        return f"CiviCRM group {group_id} ({group.get('title')}) is disabled"
    return None

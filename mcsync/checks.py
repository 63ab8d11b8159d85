"""`config check` and `discover`: test every connection and configured id against the APIs."""

from __future__ import annotations

from typing import Any

from mcsync.budget import Budget
from mcsync.config import Config
from mcsync.console import Output
from mcsync.engine import connections
from mcsync.errors import ApiError, NotFoundError

GROUP_SELECT = ["id", "name", "title", "group_type:name", "saved_search_id", "is_active",
                "is_hidden", "children"]


def describe_group(group: dict[str, Any] | None, group_id: int) -> str | None:
    """Why a group cannot be synced, or None when it can (civicrm-api.md §2.3, §2.7)."""
    if group is None:
        return f"CiviCRM group {group_id} does not exist"
    if group.get("saved_search_id"):
        return (f"CiviCRM group {group_id} ({group.get('title')}) is a smart group; mcsync "
                "syncs static groups only (their membership has history and can be written)")
    types = group.get("group_type:name") or []
    if "Mailing List" not in types:
        return (f"CiviCRM group {group_id} ({group.get('title')}) is not a Mailing List group; "
                "tick 'Mailing List' in the group's settings")
    if group.get("is_active") is False:
        return f"CiviCRM group {group_id} ({group.get('title')}) is disabled"
    return None


def fetch_groups(conns: Any, ids: list[int]) -> dict[int, dict[str, Any]]:
    records = conns.civicrm.call(
        "Group", "get", {"select": GROUP_SELECT, "where": [["id", "IN", ids]], "limit": 0}
    )
    return {int(r["id"]): r for r in records}


def check_config(config: Config, out: Output) -> list[str]:
    """Every problem found, each naming the config key it comes from; empty when all is well."""
    problems: list[str] = []
    with connections(config, Budget(120)) as conns:
        try:
            conns.civicrm.call("Contact", "get", {"select": ["id"], "limit": 1})
            out.say("CiviCRM: connected")
        except ApiError as exc:
            return [f"civicrm: {exc}"]
        for name in config.mailchimp.accounts:
            try:
                account = conns.mailchimp_for(name).ping()
                out.say(f"Mailchimp account {name}: connected ({account.get('account_name', '')})")
            except ApiError as exc:
                problems.append(f"mailchimp.accounts.{name}: {exc}")
        group_ids = sorted({a.group_id for a in config.audience}
                           | {g for a in config.audience for g in a.interests.values()})
        groups = fetch_groups(conns, group_ids) if group_ids else {}
        for index, audience in enumerate(config.audience):
            key = f"audience[{index}]"
            if f"mailchimp.accounts.{audience.account}" in " ".join(problems):
                continue
            client = conns.mailchimp_for(audience.account)
            try:
                listing = client.get_list(audience.list_id)
                out.say(f"{key}: audience {audience.list_id} ({listing.get('name')})")
            except NotFoundError:
                problems.append(f"{key}.list_id: audience {audience.list_id} not found in "
                                f"Mailchimp account {audience.account}; run 'mcsync discover'")
                continue
            problem = describe_group(groups.get(audience.group_id), audience.group_id)
            if problem:
                problems.append(f"{key}.group_id: {problem}")
            problems.extend(_check_interests(client, audience, groups, key))
            problems.extend(_check_merge_fields(client, audience, key))
    return problems


def _check_interests(client: Any, audience: Any, groups: dict[int, Any], key: str) -> list[str]:
    if not audience.interests:
        return []
    known: set[str] = set()
    for category in client.interest_categories(audience.list_id):
        known.update(i["id"] for i in client.interests(audience.list_id, category["id"]))
    problems = []
    for interest_id, group_id in audience.interests.items():
        if interest_id not in known:
            problems.append(f"{key}.interests.{interest_id}: no such interest in audience "
                            f"{audience.list_id}; run 'mcsync discover'")
        problem = describe_group(groups.get(group_id), group_id)
        if problem:
            problems.append(f"{key}.interests.{interest_id}: {problem}")
    return problems


def _check_merge_fields(client: Any, audience: Any, key: str) -> list[str]:
    if not audience.merge_fields:
        return []
    tags = {f["tag"]: f for f in client.merge_fields(audience.list_id)}
    return [
        f"{key}.merge_fields.{tag}: audience {audience.list_id} has no merge field {tag}; "
        f"add it in Mailchimp (Audience > Settings > Audience fields) or fix the tag"
        for tag in audience.merge_fields if tag not in tags
    ]


def discover_all(config: Config, out: Output) -> None:
    """Audiences, interest categories and interests per account; CiviCRM mailing groups."""
    with connections(config, Budget(120)) as conns:
        for name in config.mailchimp.accounts:
            client = conns.mailchimp_for(name)
            rows = []
            for listing in client.lists():
                rows.append((listing["id"], listing.get("name"), "", ""))
                for category in client.interest_categories(listing["id"]):
                    for interest in client.interests(listing["id"], category["id"]):
                        rows.append((listing["id"], "", f"{category.get('title')}",
                                     f"{interest['id']} {interest.get('name')}"))
            out.table(f"Mailchimp account {name}: audiences and interests",
                      ["audience id", "audience", "interest category", "interest id / name"],
                      rows)
        groups = conns.civicrm.call(
            "Group", "get",
            {"select": GROUP_SELECT,
             "where": [["is_active", "=", True], ["saved_search_id", "IS NULL"],
                       ["group_type:name", "CONTAINS", "Mailing List"]],
             "orderBy": {"id": "ASC"}, "limit": 0},
        )
        out.table("CiviCRM static Mailing List groups", ["group id", "title", "name"],
                  [(g["id"], g.get("title"), g.get("name")) for g in groups])

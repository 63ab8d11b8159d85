"""`config check` and `discover`: test every connection and configured id against the APIs."""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from email.utils import parsedate_to_datetime
from typing import Any

from mcsync.budget import Budget
from mcsync.config.models import Config
from mcsync.errors import ApiError, NotFoundError
from mcsync.ops.output import Output
from mcsync.rules.groups import GROUP_SELECT, describe_group
from mcsync.runner.engine import connections


def fetch_groups(conns: Any, ids: list[int]) -> dict[int, dict[str, Any]]:
    records = conns.civicrm.call(
        "Group", "get", {"select": GROUP_SELECT, "where": [["id", "IN", ids]], "limit": 0}
    )
    return {int(r["id"]): r for r in records}


@dataclass(frozen=True)
class Problem:
    """One finding of `config check`. ``in_config``: the config names something that is not
    there or cannot be synced (exit 2); otherwise a connection failed (exit 1)."""

    text: str
    in_config: bool = True


def check_config(
    config: Config, out: Output, *, debug_http: Callable[[str], None] | None = None
) -> list[Problem]:
    """Every problem found, each naming the config key it comes from; empty when all is well."""
    problems: list[Problem] = []
    with connections(config, Budget(120), debug_http=debug_http) as conns:
        try:
            conns.civicrm.call("Contact", "get", {"select": ["id"], "limit": 1})
            out.say("CiviCRM: connected")
        except ApiError as exc:
            return [Problem(f"civicrm: {exc}", in_config=False)]
        mailchimp_clocks: dict[str, datetime | None] = {}
        for name in config.mailchimp.accounts:
            try:
                client = conns.mailchimp_for(name)
                account = client.ping()
                out.say(f"Mailchimp account {name}: connected ({account.get('account_name', '')})")
                mailchimp_clocks[name] = http_date(client.session.server_date)
            except ApiError as exc:
                problems.append(Problem(f"mailchimp.accounts.{name}: {exc}", in_config=False))
        problems.extend(
            Problem(text) for text in check_clocks(config, conns, out, mailchimp_clocks)
        )
        group_ids = sorted(
            {a.group_id for a in config.audience}
            | {g for a in config.audience for g in a.interests.values()}
        )
        groups = fetch_groups(conns, group_ids) if group_ids else {}
        for index, audience in enumerate(config.audience):
            key = f"audience[{index}]"
            if f"mailchimp.accounts.{audience.account}" in " ".join(p.text for p in problems):
                continue
            client = conns.mailchimp_for(audience.account)
            try:
                listing = client.get_list(audience.list_id)
                out.say(f"{key}: audience {audience.list_id} ({listing.get('name')})")
            except NotFoundError:
                problems.append(
                    Problem(
                        f"{key}.list_id: audience {audience.list_id} not found in "
                        f"Mailchimp account {audience.account}; run 'mcsync discover'"
                    )
                )
                continue
            problem = describe_group(groups.get(audience.group_id), audience.group_id)
            if problem:
                problems.append(Problem(f"{key}.group_id: {problem}"))
            found = _check_interests(client, audience, groups, key)
            found += _check_merge_fields(client, audience, key, conns.civicrm)
            found += _check_required_fields(
                client, audience, key, config.settings_for(audience).skip_merge_validation, out
            )
            problems.extend(Problem(text) for text in found)
    return problems


# A wrong zone is hours off; clocks a few minutes apart are only skew.
CLOCK_TOLERANCE = timedelta(minutes=5)
# Zones suggested first when CiviCRM's clock shows their offset (any zone with the offset and
# the site's daylight-saving rules is right; these are the likely ones).
_LIKELY_ZONES = (
    "UTC", "Europe/London", "Europe/Paris", "Europe/Helsinki", "Europe/Moscow", "Asia/Dubai",
    "Asia/Kolkata", "Asia/Shanghai", "Asia/Tokyo", "Australia/Sydney", "Pacific/Auckland",
    "America/Sao_Paulo", "America/New_York", "America/Chicago", "America/Denver",
    "America/Phoenix", "America/Los_Angeles", "America/Anchorage", "Pacific/Honolulu",
    "Africa/Lagos", "Africa/Johannesburg", "Africa/Nairobi",
)  # fmt: skip


def check_clocks(
    config: Config, conns: Any, out: Output, mailchimp_clocks: dict[str, datetime | None]
) -> list[str]:
    """Show what "now" is on every side, and check civicrm.timezone against CiviCRM's clock.

    CiviCRM returns dates in its site's zone with no offset (civicrm-api.md §2.6); read in the
    wrong zone, every CiviCRM change is hours off and the wrong side wins conflicts (issue
    10.9). APIv4's ``NOW()`` gives CiviCRM's local time, the response's ``Date`` header the
    same server's UTC time, so the offset between them is CiviCRM's zone whatever this
    machine's clock says."""
    zone, name = config.civicrm.tzinfo, config.civicrm.timezone
    here = datetime.now(UTC)
    try:
        records = conns.civicrm.call(
            "Group", "get", {"select": ["id", "NOW() AS mcsync_now"], "limit": 1}
        )
    except ApiError:
        records = []  # an older CiviCRM without NOW(): say so below
    civi_text = records[0].get("mcsync_now") if records else None
    civi_server = http_date(conns.civicrm.session.server_date)
    reference = civi_server or here
    clocks = [f"this machine {here:%Y-%m-%d %H:%M:%S} UTC"]
    problems: list[str] = []
    if isinstance(civi_text, str):
        local = datetime.fromisoformat(civi_text.replace(" ", "T")).replace(tzinfo=None)
        read_as = local.replace(tzinfo=zone).astimezone(UTC)
        clocks.append(
            f'CiviCRM {local:%Y-%m-%d %H:%M:%S}, read with timezone = "{name}" as '
            f"{read_as:%Y-%m-%d %H:%M:%S} UTC"
        )
        if abs(read_as - reference) > CLOCK_TOLERANCE:
            problems.append(_wrong_zone(name, zone, local, reference, civi_server is not None))
    else:
        out.always(
            "CiviCRM's clock could not be read (APIv4 has no NOW() on this site); make sure "
            f'civicrm.timezone = "{name}" is the site\'s time zone'
        )
    for account, moment in mailchimp_clocks.items():
        if moment is not None:
            clocks.append(f"Mailchimp {moment:%Y-%m-%d %H:%M:%S} UTC (account {account})")
            if civi_server is not None and abs(moment - civi_server) > CLOCK_TOLERANCE:
                out.error(
                    f"warning: CiviCRM's server clock ({civi_server:%H:%M:%S} UTC) and "
                    f"Mailchimp's ({moment:%H:%M:%S} UTC) are more than "
                    f"{CLOCK_TOLERANCE.seconds // 60} minutes apart; changes made on both sides "
                    "within that time may be ordered wrongly (is CiviCRM's server clock set?)"
                )
    out.always("Clocks: " + "; ".join(clocks))
    return problems


def _wrong_zone(
    name: str, zone: tzinfo, local: datetime, reference: datetime, from_server: bool
) -> str:
    """The problem with a timezone that does not match CiviCRM's clock, and zones that do."""
    quarter = timedelta(minutes=15)
    observed = quarter * round((local - reference.replace(tzinfo=None)) / quarter)
    configured = reference.astimezone(zone).utcoffset() or timedelta(0)

    def shows_observed(zone_name: str) -> bool:
        return reference.astimezone(zoneinfo.ZoneInfo(zone_name)).utcoffset() == observed

    matching = [z for z in _LIKELY_ZONES if shows_observed(z)] or sorted(
        z
        for z in zoneinfo.available_timezones()
        if "/" in z and not z.startswith("Etc/") and shows_observed(z)
    )
    hint = " or ".join(f'"{z}"' for z in matching[:2]) or "the site's zone"
    source = "its server's Date header" if from_server else "this machine's clock"
    return (
        f'civicrm.timezone: timezone = "{name}" does not match CiviCRM: its clock reads '
        f"{local:%Y-%m-%d %H:%M:%S}, which is UTC{_offset(observed)} (UTC is "
        f'{reference:%H:%M:%S} by {source}), while "{name}" is UTC{_offset(configured)} now. '
        f"Read in this zone every CiviCRM date is {_span(observed - configured)} off, and "
        f"the wrong side wins conflicts. Set timezone to the site's time zone, e.g. {hint}"
    )


def _offset(delta: timedelta) -> str:
    """``+01:00`` / ``-05:00``."""
    minutes = round(delta.total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    hours, rest = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{rest:02d}"


def _span(delta: timedelta) -> str:
    """``5 hours``, ``1 hour 30 minutes``."""
    hours, minutes = divmod(abs(round(delta.total_seconds() / 60)), 60)
    parts = [f"{hours} hour{'s' * (hours != 1)}"] if hours else []
    parts += [f"{minutes} minutes"] if minutes else []
    return " ".join(parts) or "0 minutes"


def http_date(value: str | None) -> datetime | None:
    """An HTTP ``Date`` header (always GMT) as an aware UTC time; None when absent or odd."""
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _check_interests(client: Any, audience: Any, groups: dict[int, Any], key: str) -> list[str]:
    if not audience.interests:
        return []
    known: set[str] = set()
    for category in client.interest_categories(audience.list_id):
        known.update(i["id"] for i in client.interests(audience.list_id, category["id"]))
    problems = []
    for interest_id, group_id in audience.interests.items():
        if interest_id not in known:
            problems.append(
                f"{key}.interests.{interest_id}: no such interest in audience "
                f"{audience.list_id}; run 'mcsync discover'"
            )
        problem = describe_group(groups.get(group_id), group_id)
        if problem:
            problems.append(f"{key}.interests.{interest_id}: {problem}")
    return problems


# Mailchimp merge-field type → the CiviCRM data types whose values it accepts; other
# Mailchimp types (text, dropdown, phone, url...) take any value as text.
_NUMERIC = {"Integer", "Float", "Money"}
_DATES = {"Date", "Timestamp", "Datetime"}
_ACCEPTS: dict[str, set[str]] = {
    "number": _NUMERIC,
    "date": _DATES,
    "birthday": _DATES,
    "address": set(),
}


def _check_merge_fields(client: Any, audience: Any, key: str, civicrm: Any) -> list[str]:
    """Each tag exists in the audience, each path exists in CiviCRM (APIv4 silently drops
    unknown fields from a select), and the Mailchimp type can hold the CiviCRM value."""
    if not audience.merge_fields:
        return []
    tags = {f["tag"]: f for f in client.merge_fields(audience.list_id)}
    types = field_types(civicrm, list(audience.merge_fields.values()))
    problems = []
    for tag, path in audience.merge_fields.items():
        here = f"{key}.merge_fields.{tag}"
        if tag not in tags:
            problems.append(
                f"{here}: audience {audience.list_id} has no merge field {tag}; "
                "add it in Mailchimp (Audience > Settings > Audience fields) or "
                "fix the tag"
            )
            continue
        data_type = types.get(path)
        if data_type is None:
            problems.append(
                f"{here}: CiviCRM has no Contact field {path!r}; see "
                "Contact.getFields (custom fields are Group_Name.Field_Name)"
            )
            continue
        mc_type = str(tags[tag].get("type") or "text")
        accepted = _ACCEPTS.get(mc_type)
        if accepted is not None and data_type not in accepted:
            problems.append(
                f"{here}: Mailchimp field {tag} is of type {mc_type} but {path} is "
                f"{data_type}; map a matching field or change the field's type"
            )
    return problems


def _check_required_fields(
    client: Any, audience: Any, key: str, skip_validation: bool, out: Output
) -> list[str]:
    """The audience's required merge fields that no ``[audience.merge_fields]`` entry fills.
    Mailchimp refuses every subscribe that leaves one empty, unless mcsync sends
    ``skip_merge_validation`` (the default): then they are only worth knowing about."""
    unfilled = sorted(
        str(f["tag"])
        for f in client.merge_fields(audience.list_id)
        if f.get("required") and f.get("tag") not in audience.merge_fields
    )
    if not unfilled:
        return []
    names = ", ".join(unfilled)
    if skip_validation:
        out.say(
            f"{key}: required merge fields {names} are not mapped; members are written with "
            "skip_merge_validation, so they may stay empty"
        )
        return []
    return [
        f"{key}.skip_merge_validation: audience {audience.list_id} requires merge fields "
        f"{names}, which no [audience.merge_fields] entry fills, so Mailchimp will refuse "
        "every subscribe; map them or set skip_merge_validation = true"
    ]


def field_types(civicrm: Any, paths: list[str]) -> dict[str, str]:
    """APIv4 data type per Contact field path, following one implicit join
    (``address_primary.city`` → Address.city); custom fields are listed by Contact itself."""
    bare = [p.split(":", 1)[0] for p in paths]
    heads = sorted({p.split(".", 1)[0] for p in bare} | set(bare))
    contact = {
        f["name"]: f
        for f in civicrm.call(
            "Contact",
            "getFields",
            {
                "action": "get",
                "select": ["name", "data_type", "fk_entity"],
                "where": [["name", "IN", heads]],
            },
        )
    }
    found: dict[str, str] = {}
    for path, name in zip(paths, bare, strict=True):
        if name in contact:
            # An option suffix (:label, :name) yields the option's text.
            found[path] = (
                "String" if ":" in path else str(contact[name].get("data_type") or "String")
            )
            continue
        head, _, rest = name.partition(".")
        entity = (contact.get(head) or {}).get("fk_entity")
        if not entity or not rest or "." in rest:
            continue
        joined = civicrm.call(
            entity,
            "getFields",
            {"action": "get", "select": ["name", "data_type"], "where": [["name", "=", rest]]},
        )
        if joined:
            found[path] = "String" if ":" in path else str(joined[0].get("data_type") or "String")
    return found


def discover_all(
    config: Config, *, debug_http: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Audiences with their interest categories and interests, per Mailchimp account, and the
    CiviCRM groups mcsync can sync (static, active, Mailing List): the ids a config needs."""
    accounts: list[dict[str, Any]] = []
    with connections(config, Budget(120), debug_http=debug_http) as conns:
        for name in config.mailchimp.accounts:
            client = conns.mailchimp_for(name)
            audiences = []
            for listing in client.lists():
                categories = [
                    {
                        "id": category["id"],
                        "title": category.get("title"),
                        "interests": [
                            {"id": interest["id"], "name": interest.get("name")}
                            for interest in client.interests(listing["id"], category["id"])
                        ],
                    }
                    for category in client.interest_categories(listing["id"])
                ]
                audiences.append(
                    {
                        "id": listing["id"],
                        "name": listing.get("name"),
                        "interest_categories": categories,
                    }
                )
            accounts.append({"account": name, "audiences": audiences})
        groups = conns.civicrm.call(
            "Group",
            "get",
            {
                "select": GROUP_SELECT,
                "where": [
                    ["is_active", "=", True],
                    ["saved_search_id", "IS NULL"],
                    ["group_type:name", "CONTAINS", "Mailing List"],
                ],
                "orderBy": {"id": "ASC"},
                "limit": 0,
            },
        )
    return {
        "mailchimp": accounts,
        "civicrm_groups": [
            {"id": g["id"], "title": g.get("title"), "name": g.get("name")} for g in groups
        ],
    }

"""The TOML configuration (DESIGN.md §2): pydantic models, their validators, and the checks
for contradictions between tables.

``config.load.load_config`` reads a file into ``Config`` and turns every problem — missing
file, TOML syntax, unset variables, unknown or missing keys, bad values, contradictions between
audiences — into one ``ConfigError`` that lists each problem as ``key.path: message`` so a user
fixes the whole file in one go.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import zoneinfo
from collections.abc import Mapping
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mcsync.errors import ConfigError

CROSS_CHECK_ERROR = "mcsync_cross_check"

# Mailchimp merge tags: upper-case letters, digits and _, at most 10 characters (see
# reference/mailchimp-api.md, "Merge fields").
_MERGE_TAG = re.compile(r"[A-Z0-9_]{1,10}")
# An APIv4 Contact field, optionally through implicit joins and with a pseudoconstant suffix:
# first_name, email_primary.email, address_primary.country_id:label, Group_Name.Field_Name.
_FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[a-z]+)?")
_DATA_CENTRE = re.compile(r"-([A-Za-z]+[0-9]+)$")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_URL_PLACEHOLDERS = ("{entity}", "{action}")


def _check_http_url(url: str) -> str:
    """Accept an absolute http(s) URL without credentials (auth travels in headers)."""
    parts = urlsplit(url.replace("{", "").replace("}", ""))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host name")
    if parts.username or parts.password:
        raise ValueError("must not contain a user name or password; mcsync sends api_key itself")
    return url


def insecure_host(url: str) -> str | None:
    """The host a plain-http URL sends keys to unencrypted; None for https or loopback
    (127.0.0.0/8, ::1, localhost), where nothing leaves the machine."""
    parts = urlsplit(url.replace("{", "").replace("}", ""))
    host = (parts.hostname or "").lower()
    if parts.scheme != "http" or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass  # a host name other than localhost: it may resolve anywhere
    return host


def _check_tls(url: str | None, info: ValidationInfo, table: str) -> str | None:
    """Keys travel in headers: refuse plain http to a remote host unless the table allows it."""
    host = None if url is None else insecure_host(url)
    if host is not None and not info.data.get("allow_insecure_http"):
        raise ValueError(
            f"plain http:// would send the key unencrypted to {host}; use https://, or set "
            f"allow_insecure_http = true in {table} if the network to it is trusted"
        )
    return url


def _strip_secret(value: Any) -> Any:
    """Trailing newlines from ``$(cat keyfile)`` or copy-paste are never part of a key."""
    return value.strip() if isinstance(value, str) else value


def _check_not_blank(value: SecretStr) -> SecretStr:
    if not value.get_secret_value():
        raise ValueError("is empty; set it to the key (for example via ${VARIABLE})")
    return value


def _check_key_characters(value: SecretStr) -> SecretStr:
    """A key is printable ASCII. Anything else (a newline inside an env file, a non-breaking
    space from copy-paste) cannot travel in an HTTP header, and the HTTP library's refusal
    quotes the whole header value; say where it is, never what the key is."""
    for position, char in enumerate(value.get_secret_value(), start=1):
        if not char.isascii():
            raise ValueError(
                f"contains a non-ASCII character at position {position} (often a non-breaking "
                "space or curly quote from copy-paste); a key is printable ASCII"
            )
        if not char.isprintable():
            raise ValueError(
                f"contains a control character at position {position} (a stray newline, tab "
                "or other invisible character); a key is printable ASCII"
            )
    return value


def _check_merge_tag(tag: str) -> str:
    if tag == "EMAIL":
        raise ValueError("EMAIL is the member's address, which mcsync syncs itself; remove it")
    if not _MERGE_TAG.fullmatch(tag):
        hint = f'did you mean "{tag.upper()}"? ' if _MERGE_TAG.fullmatch(tag.upper()) else ""
        raise ValueError(
            f"not a merge tag; {hint}tags are 1-10 upper-case letters, digits or _ as shown in "
            "Mailchimp's audience settings (e.g. FNAME)"
        )
    return tag


def _check_field_path(path: str) -> str:
    if not _FIELD_PATH.fullmatch(path):
        raise ValueError(
            "must be a CiviCRM APIv4 Contact field such as first_name, email_primary.email, "
            "address_primary.city or Custom_Group.Custom_Field"
        )
    return path


def _check_remote_id(value: str) -> str:
    if not value or any(ch.isspace() for ch in value):
        raise ValueError("must be a non-empty id without spaces, as shown by `mcsync discover`")
    return value


def _check_group_id(value: int) -> int:
    if value <= 0:
        raise ValueError("must be a CiviCRM group id (a positive whole number)")
    return value


ApiKey = Annotated[
    SecretStr, AfterValidator(_check_not_blank), AfterValidator(_check_key_characters)
]
RemoteId = Annotated[str, AfterValidator(_check_remote_id)]
GroupId = Annotated[int, AfterValidator(_check_group_id)]
MergeTag = Annotated[str, AfterValidator(_check_merge_tag)]
FieldPath = Annotated[str, AfterValidator(_check_field_path)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyncConfig(_Model):
    """[sync]: how runs behave; every key has a default."""

    respect_privacy_flags: bool = Field(
        default=True,
        description="do not subscribe contacts who are deceased, do_not_email or is_opt_out",
    )
    batch_threshold: int = Field(
        default=1000, ge=1, description="member writes at/above this go via POST /batches"
    )
    read_batch_threshold: int = Field(
        default=1000,
        ge=1,
        description="members to read directly at/above this are read via POST /batches",
    )
    max_removal_share: float = Field(
        default=0.10,
        ge=0.0,
        le=1.0,
        description="mass-change brake: largest share of an audience removed",
    )
    lease_seconds: int = Field(
        default=120, ge=10, description="seconds until an abandoned audience lease expires"
    )
    page_size_mailchimp: int = Field(
        default=1000, ge=1, le=1000, description="members per Mailchimp page"
    )
    page_size_civicrm: int = Field(default=5000, ge=1, description="rows per CiviCRM APIv4 get")
    max_connections: int = Field(
        default=10,
        ge=1,
        le=10,
        description="requests at once per Mailchimp account, which allows 10",
    )
    http_timeout: float = Field(default=30.0, gt=0, description="seconds per HTTP request")
    create_contacts: bool = Field(
        default=True, description="create CiviCRM contacts for new subscribers"
    )
    blank_merge_fields: bool = Field(
        default=False,
        description="send empty CiviCRM values to Mailchimp, clearing its merge fields",
    )
    sync_tags: bool = Field(default=False, description="feed tags to Mailchimp via plugins")
    prefer: Literal["latest", "mailchimp", "civicrm"] = Field(
        default="latest",
        description="the side that wins a conflict whose order cannot be told (same second, "
        "no date); a choice known to be later always wins",
    )
    skip_merge_validation: bool = Field(
        default=True,
        description="let member writes through although the audience's required merge fields "
        "are empty (Mailchimp refuses every such subscribe otherwise)",
    )
    update_names_from_mailchimp: bool = Field(
        default=True,
        description="copy a first or last name edited at Mailchimp (FNAME, LNAME) onto the "
        "contact, when newer than the contact's own edit; an empty name never wipes one",
    )
    history_days: int = Field(
        default=90,
        ge=1,
        le=3660,
        description="days of run history kept (mcsync history, status, report --html)",
    )


# APIv4 `save` takes any number of records; each request costs a round trip and, before group
# changes, an overtaken check (issue 12: the requests of a run follow changed rows / chunk).
DEFAULT_CIVICRM_WRITE_CHUNK = 2500


class CiviCRMConfig(_Model):
    """[civicrm]: the APIv4 REST end-point and its credentials."""

    # Before url, so that the url check can see it.
    allow_insecure_http: bool = Field(
        default=False, description="allow a plain http:// url to a host other than this one"
    )
    url: str = Field(
        description="the APIv4 base, e.g. https://crm.example.org/civicrm/ajax/api4",
        examples=["https://crm.example.org/civicrm/ajax/api4"],
    )
    api_key: ApiKey = Field(description="the API user's key", examples=["${CIVICRM_API_KEY}"])
    site_key: ApiKey | None = None
    # Required: CiviCRM's dates carry no offset, and a wrong zone makes the wrong side win
    # conflicts (issue 10.9), so there is no default to fall back on silently.
    timezone: str = Field(
        description=(
            "the IANA name of the time zone CiviCRM's dates are in, its site's zone, such as "
            "Europe/London, America/New_York or UTC; 'mcsync config check' compares it with "
            "CiviCRM's clock"
        ),
        examples=["Europe/London"],
    )
    concurrency: int = Field(
        default=4,
        ge=1,
        le=10,
        description=(
            "CiviCRM requests in flight at once (pages of large reads fetched by id range); "
            "1 for a small server"
        ),
    )
    write_chunk: int = Field(
        default=DEFAULT_CIVICRM_WRITE_CHUNK,
        ge=1,
        le=10000,
        description=(
            "records per CiviCRM save request (group changes, new contacts, holds, names); "
            "each chunk of group changes is checked against newer history just before it is "
            "written; lower it for a server whose saves take longer than http_timeout"
        ),
    )

    _strip_keys = field_validator("api_key", "site_key", mode="before")(_strip_secret)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        _check_http_url(url)
        placeholders = set(re.findall(r"\{[^{}]*\}", url))
        unknown = placeholders - set(_URL_PLACEHOLDERS)
        if unknown:
            raise ValueError(
                f"unknown placeholder {sorted(unknown)[0]}; only {{entity}} and {{action}} exist"
            )
        if len(placeholders) == 1:
            raise ValueError(
                "a URL template needs both {entity} and {action}, e.g. "
                "https://site/wp-admin/admin.php?page=CiviCRM&q=civicrm/ajax/api4/{entity}/{action}"
            )
        return url if placeholders else url.rstrip("/")

    @field_validator("url")
    @classmethod
    def _require_tls(cls, url: str, info: ValidationInfo) -> str:
        return _check_tls(url, info, "[civicrm]") or url

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, name: str) -> str:
        if name != "UTC":
            try:
                zoneinfo.ZoneInfo(name)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                close = difflib.get_close_matches(name, zoneinfo.available_timezones(), n=1)
                hint = f'did you mean "{close[0]}"? ' if close else ""
                raise ValueError(
                    f"unknown time zone {json.dumps(name)}; {hint}use an IANA name such as "
                    "Europe/London or UTC"
                ) from None
        return name

    @property
    def is_template(self) -> bool:
        return "{entity}" in self.url

    @property
    def tzinfo(self) -> tzinfo:
        """The zone CiviCRM's naive dates are in (UTC needs no tz database)."""
        return UTC if self.timezone == "UTC" else zoneinfo.ZoneInfo(self.timezone)

    def endpoint(self, entity: str, action: str) -> str:
        """The URL to POST an APIv4 call to (path form or template form)."""
        if self.is_template:
            return self.url.replace("{entity}", entity).replace("{action}", action)
        return f"{self.url}/{entity}/{action}"


class MailchimpAccount(_Model):
    """[mailchimp.accounts.<name>]: one Mailchimp API key (one data centre)."""

    # These come first so that the base_url and api_key checks can see them.
    allow_insecure_http: bool = Field(
        default=False, description="allow a plain http:// base_url to a host other than this one"
    )
    base_url: str | None = None
    api_key: ApiKey = Field(
        description="the whole key including its -usNN suffix", examples=["${MAILCHIMP_API_KEY}"]
    )

    _strip_key = field_validator("api_key", mode="before")(_strip_secret)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, url: str | None) -> str | None:
        return None if url is None else _check_http_url(url).rstrip("/")

    @field_validator("base_url")
    @classmethod
    def _require_tls(cls, url: str | None, info: ValidationInfo) -> str | None:
        return _check_tls(url, info, "this [mailchimp.accounts.<name>] table")

    @field_validator("api_key")
    @classmethod
    def _check_data_centre(cls, key: SecretStr, info: ValidationInfo) -> SecretStr:
        if info.data.get("base_url") is None and not _DATA_CENTRE.search(key.get_secret_value()):
            raise ValueError(
                "does not end with a data centre such as -us21; use the whole key as Mailchimp "
                "shows it (Profile > Extras > API keys), or set base_url"
            )
        return key

    @property
    def data_centre(self) -> str | None:
        found = _DATA_CENTRE.search(self.api_key.get_secret_value())
        return found.group(1).lower() if found else None

    def api_root(self) -> str:
        """``https://<dc>.api.mailchimp.com/3.0``, or ``base_url`` for simulators and proxies."""
        if self.base_url is not None:
            return self.base_url
        return f"https://{self.data_centre}.api.mailchimp.com/3.0"


class MailchimpConfig(_Model):
    """[mailchimp]: the accounts audiences refer to by name."""

    accounts: dict[str, MailchimpAccount] = Field(
        min_length=1, description="add a [mailchimp.accounts.<name>] table for each API key"
    )


class AudienceConfig(_Model):
    """[[audience]]: one Mailchimp audience mirrored by one CiviCRM mailing group."""

    account: str = Field(description="the name of a [mailchimp.accounts.<name>]", examples=["main"])
    list_id: RemoteId = Field(description="the Mailchimp audience id", examples=["a1b2c3d4e5"])
    group_id: GroupId = Field(
        description='the CiviCRM mailing group that mirrors "subscribed"', examples=[12]
    )
    name: str | None = None
    interests: dict[RemoteId, GroupId] = Field(default_factory=dict)
    merge_fields: dict[MergeTag, FieldPath] = Field(default_factory=dict)
    respect_privacy_flags: bool | None = None
    sync_tags: bool | None = None
    blank_merge_fields: bool | None = None
    skip_merge_validation: bool | None = None
    prefer: Literal["latest", "mailchimp", "civicrm"] | None = None
    update_names_from_mailchimp: bool | None = None

    @property
    def label(self) -> str:
        """How messages name this audience."""
        return self.name or f"{self.account}/{self.list_id} (group {self.group_id})"


class Config(_Model):
    """The whole file. Build it with ``load_config``."""

    state_db: Path = Path("mcsync.sqlite3")
    civicrm: CiviCRMConfig
    mailchimp: MailchimpConfig
    audience: list[AudienceConfig] = Field(default_factory=list)
    sync: SyncConfig = SyncConfig()  # frozen, so one shared default is safe

    @field_validator("state_db")
    @classmethod
    def _resolve_state_db(cls, path: Path, info: ValidationInfo) -> Path:
        path = path.expanduser()
        base = (info.context or {}).get("base_dir")
        return path if path.is_absolute() or base is None else Path(base) / path

    @model_validator(mode="after")
    def _check_across(self) -> Config:
        problems = cross_check(self.model_dump())
        if problems:
            raise PydanticCustomError(
                CROSS_CHECK_ERROR, "{problems}", {"problems": "; ".join(problems)}
            )
        return self

    def audience_for_group(self, group_id: int) -> AudienceConfig:
        for audience in self.audience:
            if audience.group_id == group_id:
                return audience
        known = ", ".join(str(a.group_id) for a in self.audience) or "none"
        raise ConfigError(
            f"--group-id {group_id}: no [[audience]] has group_id = {group_id}; "
            f"configured group ids: {known}"
        )

    def settings_for(self, audience: AudienceConfig) -> SyncConfig:
        """[sync] with this audience's own overrides applied."""
        overrides = {
            key: getattr(audience, key)
            for key in (
                "respect_privacy_flags",
                "sync_tags",
                "blank_merge_fields",
                "skip_merge_validation",
                "prefer",
                "update_names_from_mailchimp",
            )
            if getattr(audience, key) is not None
        }
        return self.sync.model_copy(update=overrides)

    def insecure_urls(self) -> list[str]:
        """Plain-http URLs to remote hosts that allow_insecure_http lets through, as
        'key.path: warning' for `config check`."""
        urls = {"civicrm.url": self.civicrm.url}
        urls |= {
            f"mailchimp.accounts.{toml_key(n)}.base_url": a.base_url
            for n, a in self.mailchimp.accounts.items()
            if a.base_url
        }
        return [
            f"{key}: plain http:// sends the key unencrypted to {host} "
            "(allow_insecure_http = true); use https:// unless that network is trusted"
            for key, url in urls.items()
            if url and (host := insecure_host(url))
        ]

    def secrets(self) -> list[str]:
        """Every secret value, for redaction in logs and error messages."""
        keys = [self.civicrm.api_key, self.civicrm.site_key]
        keys += [account.api_key for account in self.mailchimp.accounts.values()]
        return [key.get_secret_value() for key in keys if key is not None]


def cross_check(data: Any) -> list[str]:
    """Contradictions between tables, in raw or validated data alike (tolerates bad shapes)."""
    if not isinstance(data, Mapping):
        return []
    mailchimp = data.get("mailchimp")
    accounts = mailchimp.get("accounts") if isinstance(mailchimp, Mapping) else None
    names = list(accounts) if isinstance(accounts, Mapping) else None
    audiences = data.get("audience")
    if not isinstance(audiences, list):
        return []
    problems: list[str] = []
    group_owner: dict[int, int] = {}
    list_owner: dict[tuple[str, str], int] = {}
    for i, audience in enumerate(audiences):
        if not isinstance(audience, Mapping):
            continue
        here = f"audience[{i}]"
        account, list_id = audience.get("account"), audience.get("list_id")
        group_id = _as_int(audience.get("group_id"))
        if isinstance(account, str) and names is not None and account not in names:
            close = difflib.get_close_matches(account, names, n=1)
            hint = f'did you mean "{close[0]}"? ' if close else ""
            problems.append(
                f"{here}.account: no [mailchimp.accounts.{account}] table; {hint}"
                f"configured accounts: {', '.join(names) or 'none'}"
            )
        if group_id is not None:
            if group_id in group_owner:
                problems.append(
                    f"{here}.group_id: group {group_id} is already the group of "
                    f"audience[{group_owner[group_id]}]; each audience needs its own group"
                )
            group_owner.setdefault(group_id, i)
        if isinstance(account, str) and isinstance(list_id, str):
            if (account, list_id) in list_owner:
                problems.append(
                    f"{here}.list_id: audience {list_id} of account {account} is already "
                    f"configured as audience[{list_owner[account, list_id]}]"
                )
            list_owner.setdefault((account, list_id), i)
        problems += _check_groups_unique(here, group_id, audience.get("interests"))
    return problems


def _check_groups_unique(here: str, group_id: int | None, interests: Any) -> list[str]:
    """Within one audience a CiviCRM group can mirror only one thing."""
    if not isinstance(interests, Mapping):
        return []
    problems: list[str] = []
    seen: dict[int, str] = {}
    for interest_id, value in interests.items():
        target = _as_int(value)
        path = f"{here}.interests.{toml_key(interest_id)}"
        if target is None:
            continue
        if target == group_id:
            problems.append(
                f"{path}: group {target} is this audience's subscription group (group_id); "
                "an interest needs a group of its own"
            )
        elif target in seen:
            problems.append(
                f"{path}: group {target} is already mapped to interest {seen[target]}; "
                "each interest needs a group of its own"
            )
        seen.setdefault(target, str(interest_id))
    return problems


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def toml_key(part: Any) -> str:
    """A key as TOML writes it in a dotted path: bare when it can be, else quoted."""
    text = str(part)
    return text if _BARE_KEY.fullmatch(text) else json.dumps(text)

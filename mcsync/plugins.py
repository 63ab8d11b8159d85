"""Data feeds from other Python packages: merge-field values and tags per CiviCRM contact.

A package registers an object under the entry point group ``mcsync.data_feeds``; mcsync calls
its ``fetch(audience, contact_ids, civicrm)`` once per chunk of contacts, inside the run's time
budget, with a read-only APIv4 client. What it returns is merged *under* the built-in
``[audience.merge_fields]`` mapping (built-ins win), and only changes reach Mailchimp.

Unlike the seed's hooks (seed-behaviour §10), a feed can never set ``status`` or anything but
merge fields and tags, several feeds' tags are joined rather than replaced, and a feed keeps no
"previous" state of its own: mcsync stores what it pushed.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mcsync.api.civicrm import CiviCRMClient
from mcsync.errors import McsyncError

ENTRY_POINT_GROUP = "mcsync.data_feeds"
DEFAULT_CHUNK = 500
_MERGE_TAG = re.compile(r"[A-Z0-9_]{1,10}")
# Member-body keys a feed might try to return; they are dropped with a warning, never sent.
_FEED_KEYS = frozenset({"merge_fields", "tags"})


class PluginError(McsyncError):
    """A data feed could not be loaded, failed, or broke the interface; the run stops so that
    missing feed data is never mistaken for removed values or tags."""


@dataclass(frozen=True)
class FeedAudience:
    """The audience a chunk belongs to, so one feed can serve several audiences differently."""

    list_id: str
    group_id: int
    name: str | None = None


@dataclass(frozen=True)
class FeedData:
    """What a feed wants at Mailchimp for one contact: merge tag → value, and tag names."""

    merge_fields: Mapping[str, Any] = field(default_factory=dict)
    tags: Iterable[str] = ()


class ReadOnlyCiviCRM:
    """The APIv4 client with only read actions (``get``, ``getFields``...) allowed."""

    def __init__(self, client: CiviCRMClient):
        self._client = client

    def call(
        self, entity: str, action: str, params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        if not action.startswith("get"):
            raise PluginError(
                f"a data feed tried {entity}.{action}; feeds may only read from CiviCRM"
            )
        return self._client.call(entity, action, params)

    def get(self, entity: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """``{entity}.get`` with APIv4 params (``select``, ``where``, ``limit``...)."""
        return self.call(entity, "get", params)


class DataFeed(Protocol):
    """The interface a plugin object implements. ``chunk_size`` (optional attribute) caps the
    contact ids per call; the default is 500."""

    def fetch(
        self, audience: FeedAudience, contact_ids: Sequence[int], civicrm: ReadOnlyCiviCRM
    ) -> Mapping[int, FeedData | Mapping[str, Any]]: ...


@dataclass(frozen=True)
class LoadedFeed:
    name: str
    feed: DataFeed
    chunk_size: int = DEFAULT_CHUNK


EntryPointsFn = Callable[..., Any]


def load_feeds(entry_points: EntryPointsFn | None = None) -> list[LoadedFeed]:
    """Every registered feed, in entry-point name order (earlier feeds win conflicts). A class
    or factory is called without arguments to get the feed object."""
    found = (entry_points or importlib.metadata.entry_points)(group=ENTRY_POINT_GROUP)
    feeds: list[LoadedFeed] = []
    for entry in sorted(found, key=lambda e: e.name):
        try:
            target = entry.load()
            feed = (
                target
                if callable(getattr(target, "fetch", None)) and not isinstance(target, type)
                else target()
            )
        except Exception as exc:  # a broken plugin must name itself, whatever it raised
            raise PluginError(
                f"data feed {entry.name!r} ({entry.value}) could not be loaded: {exc}"
            ) from exc
        if not callable(getattr(feed, "fetch", None)):
            raise PluginError(
                f"data feed {entry.name!r} ({entry.value}) has no fetch(audience, contact_ids, "
                "civicrm) method"
            )
        size = getattr(feed, "chunk_size", DEFAULT_CHUNK)
        if not isinstance(size, int) or size < 1:
            raise PluginError(f"data feed {entry.name!r}: chunk_size must be a positive int")
        feeds.append(LoadedFeed(entry.name, feed, size))
    return feeds


def run_feed(
    loaded: LoadedFeed,
    audience: FeedAudience,
    contact_ids: Sequence[int],
    civicrm: ReadOnlyCiviCRM,
    *,
    check_budget: Callable[[], None],
    warn: Callable[[str], None],
) -> dict[int, FeedData]:
    """Call one feed over ``contact_ids`` in its chunk size and normalise what it returns."""
    wanted = set(contact_ids)
    result: dict[int, FeedData] = {}
    for start in range(0, len(contact_ids), loaded.chunk_size):
        check_budget()
        chunk = list(contact_ids[start : start + loaded.chunk_size])
        try:
            answer = loaded.feed.fetch(audience, chunk, civicrm)
        except McsyncError:
            raise
        except Exception as exc:  # the plugin's own bug: stop, naming it
            raise PluginError(f"data feed {loaded.name!r} failed: {exc!r}") from exc
        if not isinstance(answer, Mapping):
            raise PluginError(
                f"data feed {loaded.name!r} returned {type(answer).__name__}; expected a "
                "mapping of contact id to FeedData"
            )
        for contact_id, data in answer.items():
            if contact_id not in wanted:
                warn(f"data feed {loaded.name!r}: ignored contact {contact_id!r}, not asked for")
                continue
            result[contact_id] = normalise(loaded.name, contact_id, data, warn)
    return result


def normalise(name: str, contact_id: int, data: Any, warn: Callable[[str], None]) -> FeedData:
    """Only merge fields with valid tags and tag names pass; ``status`` and other member
    fields are dropped with a warning (a feed can never subscribe or unsubscribe anyone)."""
    if isinstance(data, FeedData):
        merge, tags = data.merge_fields, data.tags
    elif isinstance(data, Mapping):
        for key in sorted(set(data) - _FEED_KEYS):
            warn(
                f"data feed {name!r}: ignored {key!r} for contact {contact_id}; feeds may "
                "only set merge_fields and tags"
            )
        merge, tags = data.get("merge_fields") or {}, data.get("tags") or ()
    else:
        raise PluginError(
            f"data feed {name!r} returned {type(data).__name__} for contact {contact_id}; "
            "expected FeedData or a mapping with merge_fields and tags"
        )
    fields: dict[str, Any] = {}
    for tag, value in dict(merge).items():
        if not isinstance(tag, str) or not _MERGE_TAG.fullmatch(tag) or tag == "EMAIL":
            warn(f"data feed {name!r}: ignored merge field {tag!r} for contact {contact_id}")
            continue
        fields[tag] = merge_value(value)
    names = sorted({str(t).strip() for t in tags if str(t).strip()})
    return FeedData(fields, tuple(names))


def merge_value(value: Any) -> Any:
    """A CiviCRM or feed value in the form Mailchimp takes and staging compares: empty is "",
    lists are joined, booleans read Yes/No, numbers and address objects stay as they are."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if isinstance(value, (int, float, dict)):
        return value
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value if v not in (None, ""))
    return str(value)


def merge_under(builtin: Mapping[str, Any], feeds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Built-in values win; among feeds, the earlier (by entry-point name) wins."""
    merged: dict[str, Any] = {}
    for values in feeds:
        for tag, value in values.items():
            merged.setdefault(tag, value)
    merged.update(builtin)
    return merged

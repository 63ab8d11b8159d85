"""`status --prometheus`: the status figures in Prometheus' text exposition format.

Written for node_exporter's textfile collector: cron writes the output to a `.prom` file
atomically (README, "Monitoring"), and Prometheus alerts on it — an audience out of sync, a
last complete sync too long ago, failures by reason. The figures are those of `status --json`
(read from the staging DB only); prometheus_client does the format and the label escaping.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from mcsync.store.database import parse_iso, utc_now

LABELS = ("list_id", "group_id", "audience")

# The balance figures of `status` (README "Status figures"), as gauges named mcsync_<key>.
FIGURE_HELP = {
    "subscribed_at_mailchimp": "Members subscribed (or pending) at Mailchimp.",
    "added_in_civicrm": "Contacts Added to the CiviCRM group.",
    "to_add": "Added in CiviCRM but not subscribed at Mailchimp, with nothing failing.",
    "to_remove": "Subscribed at Mailchimp but not Added in CiviCRM, with nothing failing.",
    "cannot_subscribe": "Added in CiviCRM, not subscribed at Mailchimp, and failing to sync.",
    "other_failures": "Other contacts failing to sync.",
    "remaining": "Rows a run has still to reconcile.",
    "updates_queued": "Mailchimp updates waiting to be sent.",
    "updates_submitted": "Mailchimp updates sent and waiting for their result.",
    "batches_in_flight": "Mailchimp batch operations not yet collected.",
}


def exposition(audiences: Sequence[dict[str, Any]], failures: Sequence[dict[str, Any]]) -> str:
    """The text exposition of these `audience_status` items and `failures` rows."""
    registry = CollectorRegistry()

    def gauge(name: str, help_text: str, extra: tuple[str, ...] = ()) -> Gauge:
        return Gauge(f"mcsync_{name}", help_text, [*LABELS, *extra], registry=registry)

    in_sync = gauge("in_sync", "1 when the audience and its group agree and no run is under way.")
    running = gauge("running", "1 while a run holds the audience's lease.")
    crash = gauge("possible_crash", "1 when a run seems to have died without finishing.")
    problem = gauge("problem", "1 when an error was logged since the last complete sync.")
    last_sync = gauge(
        "last_sync_timestamp_seconds", "When the last complete sync ended (Unix time)."
    )
    sync_age = gauge(
        "last_sync_age_seconds", "Seconds from the last complete sync to when this was written."
    )
    duration = gauge("last_sync_duration_seconds", "How long the last complete sync took.")
    figures = {key: gauge(key, text) for key, text in FIGURE_HELP.items()}
    failing = gauge("failures", "Contacts failing to sync, by reason.", ("reason",))

    now = utc_now()
    by_audience = Counter((f["list_id"], f["reason"]) for f in failures)
    for item in audiences:
        labels = (item["list_id"], str(item["group_id"]), item["name"] or "")
        in_sync.labels(*labels).set(1 if item["in_sync"] else 0)
        running.labels(*labels).set(1 if item["running"] else 0)
        crash.labels(*labels).set(1 if item["possible_crash"] else 0)
        problem.labels(*labels).set(1 if item["problem"] else 0)
        ended = parse_iso(item["last_sync"])
        if ended is not None:
            last_sync.labels(*labels).set(ended.timestamp())
            sync_age.labels(*labels).set(round((now - ended).total_seconds(), 1))
        if item["last_sync_seconds"] is not None:
            duration.labels(*labels).set(item["last_sync_seconds"])
        for key, metric in figures.items():
            metric.labels(*labels).set(item["counts"].get(key, 0))
        for (list_id, reason), count in sorted(by_audience.items()):
            if list_id == item["list_id"]:
                failing.labels(*labels, reason).set(count)
    return generate_latest(registry).decode()

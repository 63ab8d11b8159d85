"""Everything mcsync shows a person: rich tables in a terminal, plain lines otherwise.

The only module that imports rich. Functions take plain values (dicts from `status`, results
from the engine) and write them; nothing here decides anything.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from mcsync.store.database import parse_iso, utc_now


class Output:
    """Where human output goes; `interactive` is False under cron (stdout not a TTY)."""

    def __init__(self, *, verbose: int = 0, quiet: bool = False, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty()
        self.verbose = verbose
        self.quiet = quiet
        self.console = Console(file=self.stream, highlight=False, soft_wrap=True)
        self.errors = Console(file=sys.stderr, highlight=False, soft_wrap=True)

    def say(self, message: str) -> None:
        """Normal output: shown in a terminal, or under cron with -v."""
        if self.quiet or (not self.interactive and not self.verbose):
            return
        self.console.print(message, markup=False)

    def always(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, markup=False)

    def error(self, message: str) -> None:
        self.errors.print(message, markup=False)

    def json(self, payload: Any) -> None:
        self.stream.write(json.dumps(payload, indent=2, default=str) + "\n")

    @contextmanager
    def progress(self) -> Iterator[Any]:
        """A progress callback(stage, done, total): bars in a terminal, silent otherwise."""
        if not self.interactive or self.quiet:
            yield lambda stage, done, total: None
            return
        bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        tasks: dict[str, Any] = {}
        counts: dict[str, int] = {}

        def update(stage: str, done: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=total)
                counts[stage] = 0
            if total is not None:
                bars.update(tasks[stage], completed=done, total=total)
            else:
                counts[stage] += done
                bars.update(tasks[stage], completed=counts[stage])

        with bars:
            yield update

    # -- tables -------------------------------------------------------------------------
    def pairs(self, title: str, items: Sequence[tuple[str, Any]]) -> None:
        """Labelled values: a two-column table in a terminal, "  label: value" lines otherwise."""
        if self.quiet:
            return
        if self.interactive:
            table = Table(title=title, title_justify="left", show_header=False)
            table.add_column(style="bold")
            table.add_column()
            for label, value in items:
                table.add_row(label, "" if value is None else str(value))
            self.console.print(table)
            return
        self.stream.write(f"{title}\n")
        width = max((len(label) for label, _ in items), default=0)
        for label, value in items:
            self.stream.write(f"  {label + ':':<{width + 1}} {'' if value is None else value}\n")

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.quiet:
            return
        if self.interactive:
            table = Table(title=title, title_justify="left")
            for column in columns:
                table.add_column(column)
            for row in rows:
                table.add_row(*("" if v is None else str(v) for v in row))
            self.console.print(table)
            return
        self.stream.write(f"{title}\n")
        for row in rows:
            self.stream.write(
                "  "
                + "  ".join(
                    f"{c}={'' if v is None else v}" for c, v in zip(columns, row, strict=False)
                )
                + "\n"
            )


class RateColumn(ProgressColumn):
    """Items per second of a stage (rows, members, writes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f}/s")


FIGURES = [
    ("subscribed_at_mailchimp", "subscribed at Mailchimp"),
    ("added_in_civicrm", "Added in CiviCRM"),
    ("to_add", "to add to Mailchimp"),
    ("to_remove", "to remove from Mailchimp"),
    ("cannot_subscribe", "cannot subscribe"),
    ("other_failures", "other failures"),
    ("remaining", "remaining to reconcile"),
    ("updates_queued", "updates queued"),
    ("updates_submitted", "updates submitted"),
    ("batches_in_flight", "batches in flight"),
]


def show_status(out: Output, audiences: list[dict[str, Any]], trend: str | None = None) -> None:
    if trend:
        out.always(trend)
    for item in audiences:
        pill = "in sync" if item["in_sync"] else "NOT in sync"
        took = item["last_sync_seconds"]
        last = f"last complete sync {age(item['last_sync'])}" + (
            f", took {_duration(took)}" if took is not None else ""
        )
        name = item["name"] or "Audience"
        heading = (
            f"{name} (Mailchimp {item['list_id']} / CiviCRM group {item['group_id']}): "
            f"{pill}; {last}"
        )
        rows: list[tuple[str, Any]] = []
        if item["possible_crash"]:
            rows.append(("POSSIBLE CRASH", item["possible_crash"]))
        if item["problem"]:
            rows.append(("PROBLEM", item["problem"]))
        rows.append(("run", _run_state(item)))
        rows.extend((label, item["counts"][key]) for key, label in FIGURES)
        out.pairs(heading, rows)
        if item["log"]:
            out.table(
                "recent log",
                ["time", "level", "message"],
                [(line["at"], line["level"], line["message"]) for line in item["log"][-5:]],
            )


def _run_state(item: dict[str, Any]) -> str:
    progress = item["progress"]
    if item["stage"] == "idle":
        return "waiting for the next run"
    where = (
        f"stage {progress['stage_number']}/{progress['stage_count']} {item['stage']}, "
        f"{progress['mailchimp_fetched']} Mailchimp members fetched, "
        f"{progress['rows_to_reconcile']} rows to reconcile; started {age(item['run_started'])}"
    )
    return ("running: " if item["running"] else "paused (continues next run): ") + where


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def show_failures(out: Output, failures: list[dict[str, Any]]) -> None:
    """Grouped by reason: the explanation and advice once, then the contacts."""
    if not failures:
        out.always("No contacts are failing to sync.")
        return
    by_reason: dict[str, list[dict[str, Any]]] = {}
    for failure in failures:
        by_reason.setdefault(failure["reason"], []).append(failure)
    summary = ", ".join(f"{reason} {len(rows)}" for reason, rows in by_reason.items())
    out.always(f"{len(failures)} contacts cannot sync: {summary}")
    for reason, rows in by_reason.items():
        first = rows[0]
        out.always(f"\n{reason} ({len(rows)}): {first['explanation']}.")
        out.always(f"  What to do: {first['advice']}")
        out.table(
            reason,
            ["group", "email", "contact", "Mailchimp status", "detail", "next try"],
            [
                (
                    f["group_id"],
                    f["email"],
                    f["contact_id"],
                    f["mailchimp_status"],
                    f["detail"],
                    _next_try_text(f.get("next_try")),
                )
                for f in rows
            ],
        )


def _next_try_text(next_try: str | None) -> str:
    """When a normal run tries a failed row again; rows failing for a lasting reason wait for
    their data to change (or a full run)."""
    if not next_try:
        return "when the data changes"
    if next_try <= datetime.now(UTC).isoformat():
        return "next run"
    return f"a run from {next_try}"


TOTAL_LABELS = [
    ("contacts_to_create", "contacts to create in CiviCRM"),
    ("civicrm_adds", "Added to CiviCRM groups"),
    ("civicrm_removals", "Removed from CiviCRM groups"),
    ("civicrm_holds", "emails put on hold in CiviCRM"),
    ("mailchimp_subscribes", "subscribed at Mailchimp"),
    ("mailchimp_unsubscribes", "unsubscribed at Mailchimp"),
    ("mailchimp_updates", "other Mailchimp updates"),
    ("civicrm_emails", "email addresses added in CiviCRM"),
]


def show_plan(out: Output, plan: dict[str, Any]) -> None:
    """A dry run's changes, per contact and direction, then the totals."""
    for audience in plan["audiences"]:
        out.always(
            f"Planned changes for audience {audience['list_id']} "
            f"(CiviCRM group {audience['group_id']}):"
        )
        changes = sorted(
            audience["changes"],
            key=lambda c: (c["contact_id"] is None, c["contact_id"] or 0, c["email"] or ""),
        )
        if changes:
            out.table(
                "changes per contact",
                ["contact", "email", "where", "change"],
                [
                    (c["contact_id"] or "(new)", c["email"], c["direction"], c["change"])
                    for c in changes
                ],
            )
        else:
            out.always("  nothing to change")
        totals = audience["totals"]
        out.always(
            "Totals: " + ", ".join(f"{totals.get(key, 0)} {label}" for key, label in TOTAL_LABELS)
        )
        if audience.get("brake"):
            out.always("The mass-change brake would stop the real run (see the message above).")


def age(moment: str | None) -> str:
    when = parse_iso(moment)
    if when is None:
        return "never"
    seconds = (utc_now() - when).total_seconds()
    if seconds < 90:
        return f"{int(seconds)}s ago"
    if seconds < 5400:
        return f"{int(seconds // 60)} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago ({datetime.fromisoformat(moment or '').date()})"


HISTORY_COLUMNS = [
    "started",
    "group",
    "took",
    "ended",
    "stage",
    "to Mailchimp",
    "to CiviCRM",
    "failed writes",
    "requests MC/CiviCRM",
    "error",
]


def show_history(out: Output, runs: list[dict[str, Any]]) -> None:
    """Recorded runs, newest first: a table in a terminal, aligned columns otherwise."""
    if not runs:
        out.always("No runs recorded yet.")
        return
    rows = [
        [
            run["started"],
            run["group_id"],
            "" if run["seconds"] is None else _duration(run["seconds"]),
            run["outcome"],
            "" if run["outcome"] == "complete" else run["stage"],
            _changes_text(run["changes"]["mailchimp"], "subscribes", "unsubscribes"),
            _changes_text(run["changes"]["civicrm"], "adds", "removes"),
            run["write_failures"],
            f"{run['requests']['mailchimp']}/{run['requests']['civicrm']}",
            run["error"] or "",
        ]
        for run in runs
    ]
    if out.quiet:
        return
    if out.interactive:
        out.table("run history", HISTORY_COLUMNS, rows)
        return
    _aligned(out.stream, HISTORY_COLUMNS, rows)


def _changes_text(changes: dict[str, int], plus: str, minus: str) -> str:
    """ "+3 -1, 2 other": subscribes (adds), unsubscribes (removes), and other changes."""
    other = sum(changes.values()) - changes[plus] - changes[minus]
    text = f"+{changes[plus]} -{changes[minus]}"
    return text + (f", {other} other" if other else "")


def _aligned(stream: TextIO, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Plain text for pipes and cron mail: a header, then columns padded to align (the last
    column, free text, is not padded)."""
    cells = [list(columns)] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        padded = [value.ljust(width) for value, width in zip(row[:-1], widths, strict=False)]
        stream.write("  ".join([*padded, row[-1]]).rstrip() + "\n")

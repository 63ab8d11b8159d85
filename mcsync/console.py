"""Everything mcsync shows a person: rich tables in a terminal, plain lines otherwise.

The only module that imports rich. Functions take plain values (dicts from `status`, results
from the engine) and write them; nothing here decides anything.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mcsync.status import age


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
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=self.console, transient=True,
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
                "  " + "  ".join(f"{c}={'' if v is None else v}" for c, v in zip(columns, row))
                + "\n"
            )


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


def show_status(out: Output, audiences: list[dict[str, Any]]) -> None:
    for item in audiences:
        pill = "IN SYNC" if item["in_sync"] else "NOT IN SYNC"
        took = item["last_sync_seconds"]
        heading = (
            f"{item['name']} (audience {item['list_id']}, group {item['group_id']}): {pill}; "
            f"last complete sync {age(item['last_sync'])}"
            + (f", took {took:.0f}s" if took is not None else "")
        )
        rows = [(label, item["counts"][key]) for key, label in FIGURES]
        state = "running" if item["running"] else "waiting"
        rows.append(("stage", f"{item['stage']} ({state})"))
        if item["possible_crash"]:
            rows.append(("POSSIBLE CRASH", item["possible_crash"]))
        out.table(heading, ["figure", "value"], rows)
        if item["log"]:
            out.table(
                "recent log", ["time", "level", "message"],
                [(line["at"], line["level"], line["message"]) for line in item["log"][-5:]],
            )


def show_failures(out: Output, failures: list[dict[str, Any]]) -> None:
    if not failures:
        out.always("No rows are failing to sync.")
        return
    out.table(
        f"{len(failures)} rows cannot sync",
        ["group", "email", "contact", "reason", "what to do", "detail"],
        [
            (f["group_id"], f["email"], f["contact_id"], f["explanation"], f["advice"], f["detail"])
            for f in failures
        ],
    )


def show_plan(out: Output, plan: dict[str, Any]) -> None:
    for audience in plan["audiences"]:
        out.always(
            f"Audience {audience['list_id']} (group {audience['group_id']}): "
            + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in audience["totals"].items())
        )
        rows = [
            (c["direction"], c["contact_id"], c["email"], c["change"])
            for c in audience["changes"]
        ]
        if rows:
            out.table("planned changes", ["where", "contact", "email", "change"], rows)

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

    def __init__(
        self,
        *,
        verbose: int = 0,
        quiet: bool = False,
        stream: TextIO | None = None,
        tsv: bool = False,
    ):
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty() and not tsv
        self.tsv = tsv
        self._tsv_tables = 0
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
        if self.tsv:
            self._tsv(["field", "value"], [(label, value) for label, value in items])
            return
        self.stream.write(f"{title}\n")
        width = max((len(label) for label, _ in items), default=0)
        for label, value in items:
            self.stream.write(f"  {label + ':':<{width + 1}} {'' if value is None else value}\n")

    def page_table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A long table: through the pager (rich's, on $PAGER or less) in a terminal, plain
        lines otherwise (cron, pipes), so scripts and people each get all of it."""
        if self.quiet:
            return
        if not self.interactive:
            self.table(title, columns, rows)
            return
        with self.console.pager(styles=True):
            self.table(title, columns, rows)

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
        if self.tsv:
            self._tsv(columns, rows)
            return
        # Plain text for pipes, mail and logs: a title, a header and aligned columns, as
        # `ps` or `df` print them (an empty cell stays blank, columns stay in line).
        cells = [[_plain(v) for v in row] for row in rows]
        widths = [
            max([len(column)] + [len(row[i]) for row in cells if i < len(row)])
            for i, column in enumerate(columns)
        ]
        self.stream.write(f"{title}\n")
        for line in [list(columns), *cells]:
            padded = [f"{cell:<{widths[i]}}" for i, cell in enumerate(line)]
            self.stream.write(("  " + "  ".join(padded)).rstrip() + "\n")

    def _tsv(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Tab-separated values with a header line, for `cut`, `awk` and spreadsheets: no title,
        no padding; a tab or line break inside a value becomes a space. Several tables in one
        output are separated by an empty line."""
        if self._tsv_tables:
            self.stream.write("\n")
        self._tsv_tables += 1
        for line in [list(columns), *rows]:
            self.stream.write("\t".join(_plain(v) for v in line) + "\n")


def _plain(value: Any) -> str:
    """One cell as plain text: blank for nothing, whitespace runs kept on one line."""
    if value is None:
        return ""
    return " ".join(str(value).split()) if any(c in str(value) for c in "\t\r\n") else str(value)


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


PLAN_EXAMPLES = 3  # changes shown per kind in a plan's summary


def show_plan(out: Output, plan: dict[str, Any], *, details: bool = False) -> None:
    """A preview's changes: per audience, a count of each kind of change with a few examples
    (readable for a first sync of hundreds of thousands); with ``details`` every change, per
    contact, through a pager in a terminal."""
    for audience in plan["audiences"]:
        out.always(
            f"Planned changes for audience {audience['list_id']} "
            f"(CiviCRM group {audience['group_id']}):"
        )
        changes = sorted(
            audience["changes"],
            key=lambda c: (c["contact_id"] is None, c["contact_id"] or 0, c["email"] or ""),
        )
        totals = audience["totals"]
        if not changes:
            out.always("  nothing to change")
        for key, label in TOTAL_LABELS:
            count = totals.get(key, 0)
            if not count:
                continue
            out.always(f"  {count} {label}" + (":" if not details else ""))
            if details:
                continue
            examples = [c for c in changes if c.get("kind") == key][:PLAN_EXAMPLES]
            for change in examples:
                out.always(f"    {_change_line(change)}")
            if count > len(examples):
                out.always(f"    ... and {count - len(examples)} more")
        out.always(
            "Totals: " + ", ".join(f"{totals.get(key, 0)} {label}" for key, label in TOTAL_LABELS)
        )
        if changes and details:
            out.page_table(
                "changes per contact",
                ["contact", "email", "where", "change"],
                [
                    (c["contact_id"] or "(new)", c["email"], c["direction"], c["change"])
                    for c in changes
                ],
            )
        elif changes and len(changes) > PLAN_EXAMPLES:
            out.always("  (--details lists every change, --json gives them all to scripts)")
        if audience.get("brake"):
            out.always("The mass-change brake would stop the real run (see the message above).")


def _change_line(change: dict[str, Any]) -> str:
    who = f"contact {change['contact_id']}" if change["contact_id"] else "new contact"
    return f"{who} {change['email'] or ''}: {change['change']} ({change['direction']})"


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


def show_discovery(out: Output, found: dict[str, Any]) -> None:
    """What `discover` found: one table per Mailchimp account (an audience's line, then a line
    per interest), and the CiviCRM groups that can be synced."""
    for account in found["mailchimp"]:
        rows: list[tuple[Any, ...]] = []
        for audience in account["audiences"]:
            rows.append((audience["id"], audience["name"], "", "", ""))
            for category in audience["interest_categories"]:
                for interest in category["interests"]:
                    rows.append(
                        (audience["id"], "", category["title"], interest["id"], interest["name"])
                    )
        out.table(
            f"Mailchimp account {account['account']}: audiences and interests",
            ["audience id", "audience", "interest category", "interest id", "interest"],
            rows,
        )
    out.table(
        "CiviCRM static Mailing List groups",
        ["group id", "title", "name"],
        [(g["id"], g["title"], g["name"]) for g in found["civicrm_groups"]],
    )


def show_lookup(out: Output, view: dict[str, Any]) -> None:
    """One person, per audience: both sides as mcsync last saw them, its decision and why,
    the writes for them; with the live view, each staged fact beside what is true now."""
    query = view["query"]
    who = query["email"] or f"contact {query['contact_id']}"
    if not view["contacts"] and not any(a["rows"] for a in view["audiences"]):
        out.always(f"mcsync has nothing staged about {who}.")
    else:
        out.always(f"{who}: addresses {', '.join(view['addresses']) or 'none'}")
    for contact in view["contacts"]:
        flags = [
            name
            for name in ("is_deleted", "gone", "is_deceased", "do_not_email", "is_opt_out")
            if contact.get(name)
        ]
        name = " ".join(p for p in (contact["first_name"], contact["last_name"]) if p)
        out.pairs(
            f"CiviCRM contact {contact['contact_id']} (as staged)",
            [
                ("name", name or "-"),
                ("flags", ", ".join(flags) or "none"),
                (
                    "emails",
                    "; ".join(
                        e["email"]
                        + (" (primary)" if e["is_primary"] else "")
                        + (" (bulk mail)" if e["is_bulkmail"] else "")
                        + (" ON HOLD" if e["on_hold"] else "")
                        for e in contact["emails"]
                    )
                    or "none staged",
                ),
            ]
            if contact["staged"]
            else [("staged", "no (not read by any run yet)")],
        )
    for audience in view["audiences"]:
        title = (
            f"{audience['name'] or 'Audience'} (Mailchimp {audience['list_id']} / CiviCRM "
            f"group {audience['group_id']}), last complete sync {age(audience['last_sync'])}"
        )
        if not audience["rows"]:
            out.always(f"\n{title}: no rows for this person")
            continue
        out.always(f"\n{title}")
        for row in audience["rows"]:
            out.pairs(f"row {row['row_id']}", _row_pairs(row))
            for write in row["mailchimp_writes"]:
                out.always(
                    f"  Mailchimp write {write['id']} [{write['state']}] "
                    f"{_change_text(write['change'])} (queued {write['created_at']}"
                    + (f", settled {write['completed_at']}" if write["completed_at"] else "")
                    + ")"
                    + (f": {write['error']}" if write["error"] else "")
                )
        for write in audience["civicrm_writes"]:
            what = (
                f"group {write['group_id']} -> {write['status']}"
                if write["kind"] == "group"
                else f"{write['kind']} {write['email'] or ''}".strip()
            )
            out.always(f"  CiviCRM write queued for contact {write['contact_id']}: {what}")
    if view.get("live"):
        _show_live(out, view)


def _row_pairs(row: dict[str, Any]) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = []
    mc = row["mailchimp"]
    if mc is None:
        pairs.append(("Mailchimp", "not a member (as far as mcsync knows)"))
    else:
        pairs.append(("Mailchimp member", mc["email"]))
        status = f"{mc['status']} since {mc['status_changed_at']}"
        if mc["status_changed_after"]:
            status += f" (changed after {mc['status_changed_after']})"
        pairs.append(("Mailchimp status", status))
        pairs.append(("Mailchimp last change", mc["last_changed"]))
        for interest_id, value in mc["interests"].items():
            pairs.append(
                (
                    f"interest {interest_id}",
                    f"{'on' if value['on'] else 'off'} since {value['changed_at']} "
                    f"(group {value['group_id']})",
                )
            )
        if mc["merge_fields_sent"]:
            pairs.append(
                (
                    "merge fields sent",
                    ", ".join(f"{k}={v!r}" for k, v in mc["merge_fields_sent"].items()),
                )
            )
        if mc["tags_sent"]:
            pairs.append(("tags sent", ", ".join(mc["tags_sent"])))
    pairs.append(("CiviCRM contact", row["contact_id"] or "none matched"))
    for group in row["civicrm"]["groups"]:
        pairs.append(
            (
                f"group {group['group_id']} ({group['role']})",
                f"{group['status'] or 'not a member'}"
                + (f" since {group['changed_at']}" if group["changed_at"] else " (undated)"),
            )
        )
    decision = row["decision"]
    pairs.append(("decision", f"{decision['sync_status']}: {decision['meaning']}"))
    if decision["reason"]:
        pairs.append(("why", f"{decision['reason']}: {decision['explanation']}"))
        if decision["detail"]:
            pairs.append(("detail", decision["detail"]))
        pairs.append(("what to do", decision["advice"]))
        if decision["retry_at"]:
            pairs.append(("next try", _next_try_text(decision["retry_at"])))
    return pairs


def _change_text(body: dict[str, Any]) -> str:
    parts = []
    if body.get("status"):
        parts.append(f"status {body['status']}")
    if body.get("interests"):
        parts.append(
            "interests "
            + ", ".join(f"{k}={'on' if v else 'off'}" for k, v in sorted(body["interests"].items()))
        )
    if body.get("merge_fields"):
        parts.append("merge fields " + ", ".join(sorted(body["merge_fields"])))
    return "; ".join(parts) or "update"


def _show_live(out: Output, view: dict[str, Any]) -> None:
    """The live reads beside the staged facts they correspond to."""
    live = view["live"]
    staged_members = {
        (a["list_id"], (r["mailchimp"] or {}).get("email", "").lower()): r
        for a in view["audiences"]
        for r in a["rows"]
        if r["mailchimp"]
    }
    rows = []
    for member in live["mailchimp"]:
        staged = staged_members.get((member["list_id"], member["email"].lower()))
        mc = staged["mailchimp"] if staged else None
        rows.append(
            (
                member["list_id"],
                member["email"],
                f"{mc['status']} (changed {mc['last_changed']})" if mc else "not staged",
                f"{member['status']} (changed {member['last_changed']})"
                if member["found"]
                else "not a member",
            )
        )
    out.table("Mailchimp: staged vs live", ["audience", "email", "staged", "live now"], rows)
    staged_groups = {
        (int(c), g["group_id"]): g
        for a in view["audiences"]
        for c, groups in a["memberships"].items()
        for g in groups
    }
    group_rows = []
    for group in live["civicrm"]["groups"]:
        staged = staged_groups.get((group["contact_id"], group["group_id"]))
        group_rows.append(
            (
                group["contact_id"],
                group["group_id"],
                f"{staged['status'] or 'not a member'} ({staged['changed_at'] or 'undated'})"
                if staged
                else "not staged",
                f"{group['status'] or 'not a member'} (history: {group['history_status']} "
                f"{group['history_date']}{' by mcsync' if group['history_by_mcsync'] else ''})",
            )
        )
    out.table(
        "CiviCRM groups: staged vs live", ["contact", "group", "staged", "live now"], group_rows
    )
    for contact in live["civicrm"]["contacts"]:
        if not contact["exists"]:
            out.always(f"CiviCRM contact {contact['contact_id']}: not found now (deleted?)")
            continue
        flags = [
            n for n in ("is_deleted", "is_deceased", "do_not_email", "is_opt_out") if contact.get(n)
        ]
        out.always(
            f"CiviCRM contact {contact['contact_id']} now: "
            f"{contact.get('first_name') or ''} {contact.get('last_name') or ''}".rstrip()
            + f"; flags {', '.join(flags) or 'none'}; emails "
            + (
                "; ".join(
                    e["email"] + (" ON HOLD" if e["on_hold"] else "") for e in contact["emails"]
                )
                or "none"
            )
        )


def show_resync(
    out: Output, who: str, results: list[dict[str, Any]], *, as_json: bool = False
) -> None:
    """What resync did per audience; an audience left alone (busy, a run part-way) is said
    on stderr, even with --json (stdout carries the JSON)."""
    for r in results:
        line = f"audience {r['list_id']} (group {r['group_id']}): {who}: {r['message']}"
        if r["outcome"] in ("busy", "waiting"):
            out.error(line)
            continue
        if as_json:
            continue
        out.always(line)
        for row in r["rows"]:
            out.always(
                f"  row {row['row_id']}: {row['email'] or '(not at Mailchimp)'}, contact "
                f"{row['contact_id'] or '-'}, Mailchimp {row['mailchimp_status'] or '-'}, "
                f"{row['sync_status']}" + (f" ({row['reason']})" if row["reason"] else "")
            )


def show_prune(out: Output, stale: list[dict[str, Any]]) -> None:
    """The audiences staged but no longer configured, with what is kept of each."""
    if not stale:
        out.always("Nothing to prune: every audience in the staging DB is in the config.")
        return
    out.table(
        "staging data of audiences no longer in the config",
        ["audience", "group", "last sync", "rows", "writes open", "batches open", "log lines"],
        [
            (
                s["list_id"],
                s["group_id"] if s["group_id"] is not None else "-",
                s["last_sync"] or "never",
                s["rows"]["rows"],
                s["open_writes"],
                s["open_batches"],
                s["rows"]["log"],
            )
            for s in stale
        ],
    )


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
    out.table("run history", HISTORY_COLUMNS, rows)


def _changes_text(changes: dict[str, int], plus: str, minus: str) -> str:
    """ "+3 -1, 2 other": subscribes (adds), unsubscribes (removes), and other changes."""
    other = sum(changes.values()) - changes[plus] - changes[minus]
    text = f"+{changes[plus]} -{changes[minus]}"
    return text + (f", {other} other" if other else "")

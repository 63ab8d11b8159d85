"""`mcsync report --html PATH`: one self-contained status page for the people who ask "are we in
sync?", refreshed by cron into a web-served folder.

The page has no external scripts, fonts, images or style sheets (inline CSS and SVG, and a few
lines of inline script for the filter box), so it works from any folder, offline and under a
strict Content-Security-Policy of its own. Everything it shows comes from the staging DB (no API
calls); every value is HTML-escaped (names, emails and error details are other people's data),
and nothing secret is in the DB to show. It is written to a temporary file in the target's
directory and renamed over the target, so a web server never serves half a page.
"""

from __future__ import annotations

import html
import os
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from mcsync import __version__
from mcsync.config.models import AudienceConfig
from mcsync.ops.history import run_items, trend, trend_line
from mcsync.ops.status import audience_status, failures
from mcsync.store.database import Staging, parse_iso, utc_now

RUNS_CHARTED = 40  # runs per audience in the charts
RUNS_LISTED = 10  # runs per audience in the table of recent runs
PEOPLE_LISTED = 300  # people listed per failure reason (the rest: `mcsync failures`)
REFRESH_SECONDS = 300  # an open page reloads itself: cron rewrites the file meanwhile

# The balance figures, in the order shown: status key, label, what it means in plain words.
# The first four are the balance; the rest are changes on their way.
MAIN_FIGURES = 4
FIGURES: list[tuple[str, str, str]] = [
    (
        "subscribed_at_mailchimp",
        "Subscribed at Mailchimp",
        "People who receive your Mailchimp emails (or were sent a confirmation email).",
    ),
    (
        "added_in_civicrm",
        "In the CiviCRM group",
        "Contacts in the mailing group in CiviCRM (deleted contacts are not counted).",
    ),
    (
        "cannot_subscribe",
        "Can't be subscribed",
        "In the CiviCRM group, but Mailchimp can't email them: bounced, on hold, or asked "
        "not to be emailed. Listed below with what to do.",
    ),
    (
        "other_failures",
        "Other problems",
        "People who could not be synced for another reason, listed below with what to do.",
    ),
    (
        "to_add",
        "Waiting to be subscribed",
        "In the CiviCRM group, to be subscribed at Mailchimp by the run under way or the next.",
    ),
    (
        "to_remove",
        "Waiting to be unsubscribed",
        "Left the CiviCRM group; to be unsubscribed at Mailchimp by the run under way or the next.",
    ),
    (
        "remaining",
        "Still to be checked",
        "People read from both systems whose records the run has not compared yet.",
    ),
    (
        "updates_queued",
        "Changes waiting to be sent",
        "Decided changes not yet sent to Mailchimp.",
    ),
    (
        "updates_submitted",
        "Changes Mailchimp is processing",
        "Sent to Mailchimp in batches whose results have not come back yet.",
    ),
]

# A short title per failure reason (the explanation and advice come from rules.explanations).
REASON_TITLES: dict[str, str] = {
    "cleaned": "Address bounced (cleaned at Mailchimp)",
    "compliance": "Waiting for the person to confirm by email",
    "forgotten": "Asked Mailchimp to forget them",
    "order_unknown": "Changed in both systems at about the same time",
    "on_hold": "Email on hold in CiviCRM",
    "several_emails": "More than one address in the audience",
    "no_usable_email": "No usable email address",
    "invalid_email": "Address rejected as invalid",
    "privacy_flags": "Do not email, opted out, or deceased",
    "no_contact": "No CiviCRM contact",
    "member_exists": "Address already used by another member",
    "mailchimp_error": "Mailchimp refused the change",
    "bad_result": "Mailchimp's answer could not be read",
    "civicrm_error": "CiviCRM refused the change",
    "new_email_in_use": "New address already in the audience",
    "email_change_not_subscribed": "Address change refused: not subscribed",
    "new_email_forgotten": "New address refused by Mailchimp",
    "aborted": "Cancelled by mcsync abort",
}

# How a run ended, in plain words, and the colour class it is shown in.
ENDINGS: dict[str, tuple[str, str]] = {
    "complete": ("Finished", "ok"),
    "budget": ("Paused at its time limit; the next run continues", "wait"),
    "busy": ("Skipped: another run was working", "idle"),
    "brake": ("Stopped by the safety brake", "bad"),
    "failure": ("Failed", "bad"),
    "unfinished": ("Did not finish (stopped, or still running)", "idle"),
}
ENDING_COLOURS = {"ok": "#1f9d55", "wait": "#d98b00", "idle": "#8a94a6", "bad": "#d64545"}
TO_MAILCHIMP, TO_CIVICRM = "#3867d6", "#20a39e"


def e(value: Any) -> str:
    """HTML-escape any value for text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


# -- the data ------------------------------------------------------------------------------
def report_data(staging: Staging, audiences: Sequence[AudienceConfig]) -> dict[str, Any]:
    """Everything the page shows, per audience, read from the staging DB."""
    return {
        "generated": utc_now(),
        "trend": trend_line(trend(staging, list(audiences))),
        "audiences": [
            {
                "status": audience_status(staging, audience),
                "runs": run_items(staging, [audience], RUNS_CHARTED),
                "failures": failures(staging, audience),
                "trend": trend_line(trend(staging, [audience])),
            }
            for audience in audiences
        ],
    }


def write_report(staging: Staging, audiences: Sequence[AudienceConfig], path: Path) -> None:
    """Build the page and replace ``path`` with it atomically."""
    write_atomically(path, render(report_data(staging, audiences)))


def write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file in the same directory, then rename it over ``path``: readers
    see the old page or the new one, never a part. The page keeps the mode of the one it
    replaces (a new one gets the usual mode for new files under the umask)."""
    directory = path.parent if str(path.parent) else Path(".")
    if path.exists():
        mode = path.stat().st_mode & 0o777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# -- the page ------------------------------------------------------------------------------
def render(data: dict[str, Any]) -> str:
    """The whole page as one string."""
    generated: datetime = data["generated"]
    audiences = data["audiences"]
    attention = [a for a in audiences if _state(a)[0] != "ok"]
    if not audiences:
        headline = "No audiences are configured."
    elif not attention:
        headline = (
            "Everything is in sync."
            if len(audiences) > 1
            else "The audience is in sync: Mailchimp and CiviCRM agree."
        )
    elif len(audiences) == 1:
        needs = _state(audiences[0])[0] == "bad"
        headline = "The audience needs attention." if needs else "Not fully in sync yet."
    else:
        headline = f"{len(attention)} of {len(audiences)} audiences are not fully in sync yet."
    cards = "\n".join(_audience_card(a, index) for index, a in enumerate(audiences))
    return PAGE.format(
        refresh=REFRESH_SECONDS,
        csp=CSP,
        style=STYLE,
        script=SCRIPT,
        headline=e(headline),
        headline_class=(
            "bad"
            if any(_state(a)[0] == "bad" for a in audiences)
            else ("ok" if audiences and not attention else "wait")
        ),
        trend=f"All audiences' runs, {e(data['trend'])}. " if len(audiences) > 1 else "",
        generated=e(_when(generated.isoformat(), generated)),
        version=e(__version__),
        toc=_toc(audiences),
        cards=cards,
    )


def _toc(audiences: list[dict[str, Any]]) -> str:
    if len(audiences) < 2:
        return ""
    items = "".join(
        f'<li><a href="#audience-{index}"><span class="dot {_state(a)[0]}"></span>'
        f"{e(_name(a['status']))}</a></li>"
        for index, a in enumerate(audiences)
    )
    return f'<nav class="toc"><ul>{items}</ul></nav>'


def _name(status: dict[str, Any]) -> str:
    return str(status["name"] or f"Audience {status['list_id']}")


def _state(audience: dict[str, Any]) -> tuple[str, str]:
    """The audience's pill: colour class and words."""
    status = audience["status"]
    runs = audience["runs"]
    if (
        status["possible_crash"]
        or status["problem"]
        or (runs and runs[0]["outcome"] in ("failure", "brake"))
    ):
        return "bad", "Needs attention"
    if status["in_sync"]:
        return "ok", "In sync"
    if not status["last_sync"]:
        return "wait", "Not synced yet"
    return "wait", "Catching up"


def _why(audience: dict[str, Any]) -> list[str]:
    """Why the audience is or is not in sync, in plain sentences (HTML-escaped)."""
    status, counts = audience["status"], audience["status"]["counts"]
    reasons: list[str] = []
    if status["possible_crash"]:
        reasons.append(f"A run seems to have stopped unexpectedly. {status['possible_crash']}")
    runs = audience["runs"]
    if runs and runs[0]["outcome"] == "brake":
        reasons.append(
            "The safety brake stopped the last run before it changed anything: it would have "
            "made an unusually large number of removals or changes, which is more often a "
            "mistake than people's own choices. Ask whoever looks after mcsync to check it."
        )
    if status["problem"]:
        reasons.append(f"What mcsync reported: {status['problem']}")
    if runs and runs[0]["outcome"] in ("failure", "brake") and not status["problem"]:
        reasons.append(f"The last run: {ENDINGS[runs[0]['outcome']][0]}. {runs[0]['error'] or ''}")
    if not status["last_sync"]:
        reasons.append("This audience has not been synced completely yet.")
    if status["stage"] != "idle":
        progress = status["progress"]
        where = (
            f"A sync is under way: step {progress['stage_number']} of "
            f"{progress['stage_count']} ({_stage_words(status['stage'])})"
        )
        reasons.append(
            where + (", working now." if status["running"] else "; it continues at the next run.")
        )
    for key, text in (
        ("to_add", "{n} waiting to be subscribed at Mailchimp."),
        ("to_remove", "{n} waiting to be unsubscribed at Mailchimp."),
        ("updates_queued", "{n} changes waiting to be sent to Mailchimp."),
        ("updates_submitted", "{n} changes being processed by Mailchimp."),
    ):
        if counts[key]:
            reasons.append(text.format(n=_people(counts[key]) if "to_" in key else counts[key]))
    if not reasons:
        reasons.append(
            "Every contact in the CiviCRM group is subscribed at Mailchimp, or is listed below "
            "with the reason they can't be; nothing is waiting to be sent."
        )
    return [e(r) for r in reasons]


def _people(n: int) -> str:
    return f"{n} {'person' if n == 1 else 'people'}"


def _stage_words(stage: str) -> str:
    if stage.startswith("fetch") or stage.startswith("confirm"):
        return "reading both systems"
    if stage in ("fix_contact_ids", "match_emails", "create_contacts", "add_civicrm_only"):
        return "matching people to contacts"
    if stage in ("load_history", "date_status_changes", "reconcile"):
        return "deciding what to change"
    if stage == "brake":
        return "safety check before writing"
    if stage == "push_civicrm":
        return "writing to CiviCRM"
    if stage in ("push_mailchimp", "push_tags"):
        return "writing to Mailchimp"
    if stage == "collect_batches":
        return "waiting for Mailchimp to process changes"
    return stage


def _audience_card(audience: dict[str, Any], index: int) -> str:
    status = audience["status"]
    state, words = _state(audience)
    why = "".join(f"<li>{reason}</li>" for reason in _why(audience))
    took = status["last_sync_seconds"]
    last = (
        _when(status["last_sync"]) + ("" if took is None else f", took {_duration(float(took))}")
        if status["last_sync"]
        else "never"
    )
    return CARD.format(
        index=index,
        state=state,
        words=e(words),
        name=e(_name(status)),
        list_id=e(status["list_id"]),
        group_id=e(status["group_id"]),
        why=why,
        last=e(last),
        trend=e(audience["trend"]),
        figures=_figures(status["counts"]),
        balance=_balance(status["counts"]),
        charts=_charts(audience["runs"]),
        runs=_runs_table(audience["runs"][:RUNS_LISTED]),
        failures=_failures(audience["failures"], index),
    )


def _figures(counts: dict[str, int]) -> str:
    """The balance as four large figures, then the changes on their way as smaller ones."""
    cells = []
    for key, label, meaning in FIGURES:
        value = int(counts.get(key, 0))
        quiet = " quiet" if value == 0 and key not in ("subscribed_at_mailchimp",) else ""
        cells.append(
            f'<div class="figure{quiet}" data-figure="{e(key)}"><div class="value">{value:,}'
            f'</div><div class="label">{e(label)}</div><div class="meaning">{e(meaning)}</div>'
            f"</div>"
        )
    return (
        f'<div class="figures main">{"".join(cells[:MAIN_FIGURES])}</div>'
        f'<h3 class="small">On their way</h3>'
        f'<div class="figures pending">{"".join(cells[MAIN_FIGURES:])}</div>'
    )


def _balance(counts: dict[str, int]) -> str:
    """How the figures add up when all is well: subscribed + can't subscribe = in the group."""
    subscribed, blocked = counts["subscribed_at_mailchimp"], counts["cannot_subscribe"]
    added = counts["added_in_civicrm"]
    total = subscribed + blocked
    gap = abs(total - added)
    if not gap:
        verdict = "<strong>they match</strong>."
    elif gap <= max(5, added // 100):
        verdict = (
            f"<strong>a difference of {gap:,}</strong>; a small one is normal (a contact with "
            "more than one subscribed address, people listed below under other problems, or "
            "changes still on their way)."
        )
    else:
        verdict = (
            f"<strong>a difference of {gap:,}</strong>, which the changes on their way and the "
            "problems above should explain."
        )
    return (
        f'<p class="balance">How the numbers fit together: {subscribed:,} subscribed + '
        f"{blocked:,} who can't be = {total:,}, against {added:,} in the CiviCRM group: "
        f"{verdict}</p>"
    )


# -- charts --------------------------------------------------------------------------------
def _charts(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return '<p class="muted">No runs recorded yet.</p>'
    ordered = list(reversed(runs))  # oldest first, left to right
    return (
        '<div class="charts">'
        f'<figure><figcaption>Changes made by each run <span class="key">'
        f'<i style="background:{TO_MAILCHIMP}"></i>to Mailchimp '
        f'<i style="background:{TO_CIVICRM}"></i>to CiviCRM</span></figcaption>'
        f"{_changes_chart(ordered)}</figure>"
        f'<figure><figcaption>How long each run took <span class="key">'
        + "".join(
            f'<i style="background:{ENDING_COLOURS[colour]}"></i>{e(label)} '
            for label, colour in (
                ("finished", "ok"),
                ("paused", "wait"),
                ("failed or stopped", "bad"),
                ("skipped or unfinished", "idle"),
            )
        )
        + f"</span></figcaption>{_duration_chart(ordered)}</figure></div>"
    )


WIDTH, LEFT, RIGHT = 560, 44, 8


def _slots(n: int) -> tuple[float, float]:
    """The horizontal slot per run and its bar width."""
    slot = (WIDTH - LEFT - RIGHT) / max(n, 1)
    return slot, max(2.0, min(slot * 0.7, 28.0))


def _axis_labels(runs: list[dict[str, Any]], y: float) -> str:
    first, last = _short_time(runs[0]["started"]), _short_time(runs[-1]["started"])
    return (
        f'<text x="{LEFT}" y="{y}" class="tick">{e(first)}</text>'
        f'<text x="{WIDTH - RIGHT}" y="{y}" class="tick" text-anchor="end">{e(last)}</text>'
    )


def _scale_top(values: list[int]) -> int:
    """The value the chart's full height stands for. One run far above the rest (the first
    sync) would flatten every other bar: then the scale follows the others, and the tall
    bars are cut and labelled with their value."""
    ordered = sorted(values, reverse=True)
    if len(ordered) > 2 and ordered[1] > 0 and ordered[0] > 4 * ordered[1]:
        return max(1, round(ordered[1] * 1.25))
    return max(ordered[0] if ordered else 0, 1)


def _changes_chart(runs: list[dict[str, Any]]) -> str:
    """Mirrored bars: changes to Mailchimp above the line, to CiviCRM below it."""
    height, middle, reach = 200, 92, 72
    top = _scale_top([max(r["changes_to_mailchimp"], r["changes_to_civicrm"]) for r in runs])
    scale = reach / top
    slot, bar = _slots(len(runs))
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="Changes made by each of the last {len(runs)} runs">',
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{middle}" y2="{middle}" class="axis"/>',
        f'<text x="{LEFT - 6}" y="{middle - reach + 4}" class="tick" text-anchor="end">'
        f"{top:,}</text>",
        f'<text x="{LEFT - 6}" y="{middle + reach + 4}" class="tick" text-anchor="end">'
        f"{top:,}</text>",
        f'<text x="{LEFT - 6}" y="{middle + 4}" class="tick" text-anchor="end">0</text>',
    ]
    for n, run in enumerate(runs):
        x = LEFT + n * slot + (slot - bar) / 2
        up = min(run["changes_to_mailchimp"], top) * scale
        down = min(run["changes_to_civicrm"], top) * scale
        cut = "".join(
            f'<text x="{x + bar / 2:.1f}" y="{y:.1f}" class="tick cut" text-anchor="middle">'
            f"{value:,}</text>"
            for value, y in (
                (run["changes_to_mailchimp"], middle - reach - 4),
                (run["changes_to_civicrm"], middle + reach + 12),
            )
            if value > top
        )
        tip = e(
            f"{_short_time(run['started'])}: {run['changes_to_mailchimp']:,} changes to "
            f"Mailchimp, {run['changes_to_civicrm']:,} to CiviCRM"
        )
        parts.append(
            f'<g><title>{tip}</title><rect x="{x:.1f}" y="{middle - up:.1f}" '
            f'width="{bar:.1f}" height="{up:.1f}" fill="{TO_MAILCHIMP}" rx="1"/>'
            f'<rect x="{x:.1f}" y="{middle:.1f}" width="{bar:.1f}" height="{down:.1f}" '
            f'fill="{TO_CIVICRM}" rx="1"/>'
            f'<rect x="{LEFT + n * slot:.1f}" y="{middle - reach}" width="{slot:.1f}" '
            f'height="{2 * reach}" fill="transparent"/>{cut}</g>'
        )
    parts.append(_axis_labels(runs, height - 8))
    parts.append("</svg>")
    return "".join(parts)


def _duration_chart(runs: list[dict[str, Any]]) -> str:
    """Bars of each run's duration, coloured by how it ended."""
    height, base, reach = 200, 170, 150
    longest = max(float(r["seconds"] or 0) for r in runs)
    scale = reach / max(longest, 0.001)
    slot, bar = _slots(len(runs))
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="How long each of the last {len(runs)} runs took">',
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{base}" y2="{base}" class="axis"/>',
        f'<text x="{LEFT - 6}" y="{base - reach + 4}" class="tick" text-anchor="end">'
        f"{e(_duration(longest))}</text>",
        f'<text x="{LEFT - 6}" y="{base + 4}" class="tick" text-anchor="end">0</text>',
    ]
    for n, run in enumerate(runs):
        x = LEFT + n * slot + (slot - bar) / 2
        seconds = float(run["seconds"] or 0)
        tall = max(seconds * scale, 3.0)
        words, colour = ENDINGS.get(run["outcome"], (run["outcome"], "idle"))
        tip = e(f"{_short_time(run['started'])}: {words}, {_duration(seconds)}")
        # A failed run is often short: a marker above its bar makes it seen.
        marker = (
            f'<circle cx="{x + bar / 2:.1f}" cy="{base - tall - 7:.1f}" r="3.5" '
            f'fill="{ENDING_COLOURS[colour]}"/>'
            if colour == "bad"
            else ""
        )
        parts.append(
            f'<g><title>{tip}</title><rect x="{x:.1f}" y="{base - tall:.1f}" width="{bar:.1f}" '
            f'height="{tall:.1f}" fill="{ENDING_COLOURS[colour]}" rx="1"/>{marker}</g>'
        )
    parts.append(_axis_labels(runs, height - 8 + 6))
    parts.append("</svg>")
    return "".join(parts)


# -- tables --------------------------------------------------------------------------------
def _runs_table(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return ""
    rows = []
    for run in runs:
        words, colour = ENDINGS.get(run["outcome"], (run["outcome"], "idle"))
        problem = run["error"] or ""
        if not problem and run["write_failures"]:
            problem = f"{run['write_failures']} changes refused"
        took = "" if run["seconds"] is None else _duration(float(run["seconds"]))
        rows.append(
            f'<tr><td>{e(_when(run["started"]))}</td><td><span class="dot {colour}"></span>'
            f'{e(words)}</td><td class="num">{e(took)}</td>'
            f'<td class="num">{run["changes_to_mailchimp"]:,}</td>'
            f'<td class="num">{run["changes_to_civicrm"]:,}</td>'
            f'<td class="detail">{e(problem)}</td></tr>'
        )
    return (
        '<details><summary>The last runs</summary><table class="runs"><thead><tr>'
        "<th>Started</th><th>How it ended</th><th>Took</th><th>Changes to Mailchimp</th>"
        "<th>Changes to CiviCRM</th><th>Problem</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></details>"
    )


def _failures(rows: list[dict[str, Any]], index: int) -> str:
    if not rows:
        return (
            '<section class="failures"><h3>People who can\'t be synced</h3>'
            '<p class="muted">Nobody: every contact could be synced.</p></section>'
        )
    by_reason: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_reason.setdefault(row["reason"], []).append(row)
    groups = []
    for reason, people in sorted(by_reason.items(), key=lambda item: -len(item[1])):
        first = people[0]
        shown = people[:PEOPLE_LISTED]
        more = len(people) - len(shown)
        lines = "".join(
            f"<tr data-filter><td>{e(p['email'])}</td><td>{e(p['contact_id'])}</td>"
            f'<td>{e(p["mailchimp_status"])}</td><td class="detail">{e(p["detail"])}</td></tr>'
            for p in shown
        )
        tail = (
            f'<p class="muted">…and {more:,} more: run <code>mcsync failures --reason '
            f"{e(reason)}</code> to see them all.</p>"
            if more
            else ""
        )
        title = REASON_TITLES.get(reason, reason)
        groups.append(
            f'<div class="reason" data-reason="{e(reason)}"><h4>{e(title)} '
            f'<span class="count">{len(people):,}</span></h4>'
            f'<p class="explanation">{e(_sentence(first["explanation"]))}</p>'
            f'<p class="advice"><strong>What to do:</strong> {e(first["advice"])}</p>'
            f"<details><summary>{e(_people(len(people)).capitalize())}</summary>"
            f'<table class="people"><thead><tr><th>Email</th><th>CiviCRM contact</th>'
            f"<th>Mailchimp status</th><th>Detail</th></tr></thead><tbody>{lines}</tbody>"
            f"</table>{tail}</details></div>"
        )
    return (
        f'<section class="failures"><h3>People who can\'t be synced '
        f'<span class="count">{len(rows):,}</span></h3>'
        f'<label class="filter">Find a person, reason or detail: <input type="search" '
        f'class="filter-box" id="filter-{index}" placeholder="e.g. an email address" '
        f'autocomplete="off"></label>{"".join(groups)}'
        '<p class="muted no-match" hidden>Nobody matches.</p></section>'
    )


# -- words ---------------------------------------------------------------------------------
def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _when(moment: str | None, now: datetime | None = None) -> str:
    """A time as people read it, in UTC, with how long ago (at the time of the report)."""
    when = parse_iso(moment)
    if when is None:
        return "never"
    ago = ((now or utc_now()) - when).total_seconds()
    return f"{when.strftime('%-d %b %Y, %H:%M')} UTC ({_ago(ago)})"


def _short_time(moment: str | None) -> str:
    when = parse_iso(moment)
    return when.strftime("%-d %b %H:%M") if when else ""


def _ago(seconds: float) -> str:
    if seconds < 60:
        return "just now"
    if seconds < 5400:
        return f"{int(seconds // 60)} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} hours ago"
    return f"{seconds / 86400:.0f} days ago"


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# The page loads nothing: no script, style, font or image from anywhere but itself.
CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{refresh}">
<meta name="generator" content="mcsync {version}">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>Mailing list sync: Mailchimp and CiviCRM</title>
<style>{style}</style>
</head>
<body>
<header>
<h1>Mailing list sync: Mailchimp and CiviCRM</h1>
<p class="headline {headline_class}">{headline}</p>
<p class="muted">{trend}Report made {generated}; this page reloads itself every few minutes.</p>
{toc}
</header>
<main>
{cards}
</main>
<footer>Made by mcsync {version}. The figures come from mcsync's own records of its last runs,
not from a fresh look at Mailchimp or CiviCRM.</footer>
<script>{script}</script>
</body>
</html>
"""

CARD = """<section class="audience" id="audience-{index}">
<div class="top">
<div><h2>{name}</h2>
<p class="ids">Mailchimp audience {list_id} · CiviCRM group {group_id}</p></div>
<div class="pill {state}" data-state="{state}">{words}</div>
</div>
<ul class="why">{why}</ul>
<p class="last"><strong>Last complete sync:</strong> <span class="last-sync">{last}</span>.
<span class="muted">Runs: {trend}.</span></p>
{figures}
{balance}
{charts}
{runs}
{failures}
</section>
"""

STYLE = """
:root{--ink:#1d2433;--muted:#5b6577;--line:#e3e7ee;--card:#fff;--bg:#f4f6f9;
--ok:#1f9d55;--wait:#d98b00;--bad:#d64545;--idle:#8a94a6}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header,main,footer{max-width:1120px;margin:0 auto;padding:0 24px}
header{padding-top:28px}
h1{font-size:26px;margin:0 0 6px}
h2{font-size:21px;margin:0}
h3{font-size:17px;margin:24px 0 8px}
h4{font-size:15px;margin:16px 0 4px}
.headline{font-size:18px;font-weight:600;margin:4px 0}
.headline.ok{color:var(--ok)}.headline.wait{color:#a86a00}.headline.bad{color:var(--bad)}
.muted{color:var(--muted)}
.toc ul{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:8px 20px}
.toc a{color:var(--ink)}
.audience{background:var(--card);border:1px solid var(--line);border-radius:12px;
padding:22px 24px;margin:20px 0;box-shadow:0 1px 2px rgba(20,30,50,.05)}
.top{display:flex;justify-content:space-between;align-items:flex-start;gap:16px}
.ids{color:var(--muted);margin:2px 0 0;font-size:13px}
.pill{border-radius:999px;padding:6px 16px;font-weight:700;color:#fff;white-space:nowrap}
.pill.ok{background:var(--ok)}.pill.wait{background:var(--wait)}.pill.bad{background:var(--bad)}
.why{margin:14px 0 6px;padding-left:20px}
.figures{display:grid;grid-template-columns:repeat(4,1fr);gap:10px;margin:14px 0 6px}
.figures.pending{grid-template-columns:repeat(5,1fr);margin-top:4px}
.figures.pending .figure{padding:8px 10px}
.figures.pending .value{font-size:19px}
@media (max-width:900px){.figures,.figures.pending{grid-template-columns:repeat(2,1fr)}}
h3.small{font-size:13px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);
margin:14px 0 0}
.figure{border:1px solid var(--line);border-radius:10px;padding:10px 12px}
.figure .value{font-size:26px;font-weight:700;font-variant-numeric:tabular-nums}
.figure .label{font-weight:600}
.figure .meaning{color:var(--muted);font-size:12.5px;line-height:1.35;margin-top:2px}
.figure.quiet .value{color:var(--idle)}
.balance{color:var(--muted);font-size:13.5px}
.charts{display:grid;grid-template-columns:1fr 1fr;gap:18px;margin-top:10px}
@media (max-width:900px){.charts{grid-template-columns:1fr}}
figure{margin:0;border:1px solid var(--line);border-radius:10px;padding:10px 12px}
figcaption{font-weight:600;margin-bottom:4px}
.key{display:block;font-weight:400;color:var(--muted);font-size:12.5px}
.key i{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 4px 0 8px}
.key i:first-child{margin-left:0}
.chart{width:100%;height:auto;display:block}
.chart .axis{stroke:#b8c0cc;stroke-width:1}
.chart .tick{font-size:11px;fill:var(--muted)}
.chart .cut{font-weight:700;fill:var(--ink)}
.chart g:hover rect{opacity:.75}
details{margin-top:14px}
summary{cursor:pointer;font-weight:600}
table{border-collapse:collapse;width:100%;margin-top:6px;font-size:13.5px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600;color:var(--muted)}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.detail{color:var(--muted);max-width:420px;overflow-wrap:anywhere}
.dot{display:inline-block;width:9px;height:9px;border-radius:50%;margin-right:6px}
.dot.ok{background:var(--ok)}.dot.wait{background:var(--wait)}.dot.bad{background:var(--bad)}
.dot.idle{background:var(--idle)}
.count{display:inline-block;background:#eef1f6;border-radius:999px;padding:0 9px;
font-size:13px;color:var(--muted);margin-left:4px}
.reason{border-left:3px solid var(--wait);padding:2px 0 6px 14px;margin:14px 0}
.explanation{margin:2px 0;color:var(--muted)}
.advice{margin:2px 0}
.reason details{margin-top:4px}
.reason summary{font-weight:400;color:#3867d6}
.filter{display:block;margin:6px 0}
.filter input{font:inherit;padding:6px 10px;border:1px solid #c9d0da;border-radius:8px;
width:min(360px,100%);margin-left:6px}
code{background:#eef1f6;padding:1px 5px;border-radius:4px}
footer{color:var(--muted);font-size:13px;padding-bottom:30px}
"""

# The filter box: hides people (and whole reasons) that do not contain the text typed. The
# text is kept in the address (#q=...) so a reload, or a link sent to a colleague, keeps it.
SCRIPT = """
(function () {
  function apply(box) {
    var q = box.value.trim().toLowerCase();
    var section = box.closest('.failures');
    var shown = 0;
    section.querySelectorAll('.reason').forEach(function (reason) {
      var inReason = 0;
      var heading = reason.querySelector('h4').textContent.toLowerCase();
      reason.querySelectorAll('tr[data-filter]').forEach(function (row) {
        var hit = !q || row.textContent.toLowerCase().indexOf(q) >= 0 ||
          heading.indexOf(q) >= 0 || reason.dataset.reason.indexOf(q) >= 0;
        row.hidden = !hit;
        if (hit) { inReason++; }
      });
      reason.hidden = inReason === 0;
      reason.querySelector('details').open = !!q && inReason > 0;
      shown += inReason;
    });
    section.querySelector('.no-match').hidden = shown > 0;
  }
  var boxes = document.querySelectorAll('.filter-box');
  var start = decodeURIComponent((location.hash.match(/^#q=(.*)$/) || [])[1] || '');
  boxes.forEach(function (box) {
    box.addEventListener('input', function () {
      boxes.forEach(function (other) {
        if (other !== box) { other.value = box.value; apply(other); }
      });
      apply(box);
      history.replaceState(null, '', box.value ? '#q=' + encodeURIComponent(box.value) : '#');
    });
    if (start) { box.value = start; apply(box); }
  });
})();
"""

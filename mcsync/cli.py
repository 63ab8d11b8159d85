"""The `mcsync` command line: the only module that imports click.

Each command loads the config, calls one or two library functions and hands the result to
`console`. Exceptions become exit codes here and only here: 0 done (or stopped at the budget,
or busy), 1 a run failed, 2 usage or configuration error.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mcsync import __version__
from mcsync.api.responses import redact
from mcsync.budget import Budget
from mcsync.config.load import config_file_is_private, default_config_path, load_config
from mcsync.config.models import Config
from mcsync.console import (
    Output,
    show_discovery,
    show_failures,
    show_history,
    show_lookup,
    show_plan,
    show_prune,
    show_resync,
    show_status,
)
from mcsync.errors import ConfigError, McsyncError
from mcsync.ops.abort import abort_audience
from mcsync.ops.checks import check_config, discover_all
from mcsync.ops.demo import run_demo, serve_forever
from mcsync.ops.history import run_items, trend, trend_line
from mcsync.ops.lookup import Person, lookup
from mcsync.ops.preview import collect_plan, discard_plans, ensure_no_writes_pending
from mcsync.ops.prometheus import exposition
from mcsync.ops.prune import prune, refusals, stale_audiences
from mcsync.ops.report import write_report
from mcsync.ops.resync import resync
from mcsync.ops.status import audience_status, failures
from mcsync.rules.explanations import REASONS
from mcsync.runner import engine  # engine.sync_audiences read per call: tests swap it
from mcsync.runner.audience import parse_since
from mcsync.runner.engine import selected_audiences
from mcsync.stages.registry import WRITE_STAGES
from mcsync.store.database import Staging, storage_failure


def common_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """--config, -v and -q on every command, as DESIGN §1 promises."""

    @click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Config file (default: $MCSYNC_CONFIG, else ./mcsync.toml).",
    )
    @click.option("-v", "--verbose", count=True, help="Say more (under cron: a summary line).")
    @click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
    @click.option(
        "--debug-http",
        is_flag=True,
        help="Trace every HTTP request and response on stderr (keys redacted); same as -vv.",
    )
    @click.option(
        "--tsv", is_flag=True, help="Tables as tab-separated values with a header (for scripts)."
    )
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    return wrapper


def group_id_option(required: bool = False) -> Callable[..., Any]:
    return click.option(
        "--group-id",
        type=int,
        required=required,
        help="Only the audience whose subscription group is this CiviCRM group id.",
    )


def plan_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """--dry-run, --json and --allow-mass-changes, shared by the two sync commands."""
    for option in reversed(
        [
            click.option(
                "--dry-run", is_flag=True, help="Plan and print the changes; write nothing."
            ),
            click.option(
                "--json", "as_json", is_flag=True, help="With --dry-run: the plan as JSON."
            ),
            click.option(
                "--details",
                is_flag=True,
                help="Show every planned change, not a summary (paged in a terminal).",
            ),
            click.option(
                "--civicrm-only",
                is_flag=True,
                help="Write only the CiviCRM side; keep Mailchimp writes queued for a later "
                "normal run.",
            ),
            click.option(
                "--allow-mass-changes",
                is_flag=True,
                help="Let a run remove more than max_removal_share of an audience.",
            ),
        ]
    ):
        function = option(function)
    return function


class Session:
    """What one command invocation carries: output, config and the secrets to redact."""

    def __init__(
        self,
        config_path: Path | None,
        verbose: int,
        quiet: bool,
        debug_http: bool = False,
        tsv: bool = False,
    ):
        self.out = Output(verbose=verbose, quiet=quiet, tsv=tsv)
        self.path = config_path or default_config_path()
        self.secrets: list[str] = []
        self.state_db: Path | None = None
        self.debug_http = debug_http or verbose >= 2

    def http_trace(self) -> Callable[[str], None] | None:
        """Where HTTP trace lines go (stderr), when asked for; the HTTP layer redacts them."""
        return self.out.error if self.debug_http else None

    def config(self) -> Config:
        config = load_config(self.path)
        self.secrets = config.secrets()
        self.state_db = config.state_db
        return config

    def fail(self, error: BaseException, code: int) -> None:
        self.out.error(redact(str(error), self.secrets))
        sys.exit(code)


def guarded(function: Callable[..., Any]) -> Callable[..., Any]:
    """Translate mcsync's exception tree into exit codes, once."""

    @functools.wraps(function)
    def wrapper(
        *args: Any,
        config_path: Path | None = None,
        verbose: int = 0,
        quiet: bool = False,
        debug_http: bool = False,
        tsv: bool = False,
        **kwargs: Any,
    ) -> Any:
        session = Session(config_path, verbose, quiet, debug_http, tsv)
        try:
            try:
                return function(session, *args, **kwargs)
            except sqlite3.Error as exc:
                # The state DB failed (disk full, locked, damaged...): one line, no traceback.
                raise storage_failure(exc, session.state_db) from None
        except ConfigError as exc:
            session.out.error("Configuration problems:" if len(exc.problems) > 1 else "Error:")
            for problem in exc.problems:
                session.out.error(f"  {redact(problem, session.secrets)}")
            sys.exit(2)
        except McsyncError as exc:
            session.fail(exc, 1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mcsync")
def main() -> None:
    """Keep Mailchimp audiences in sync with CiviCRM mailing groups, from cron."""


def run_sync(
    session: Session,
    *,
    max_time: float,
    group_id: int | None,
    since: str | None,
    full: bool,
    dry_run: bool,
    allow_mass_changes: bool,
    as_json: bool,
    confirm: bool = False,
    details: bool = False,
    civicrm_only: bool = False,
) -> None:
    """A sync, or a preview (dry run, or initial-sync's confirmation) that plans up to the
    brake, shows the plan, and undoes the planning so the next real run decides the same."""

    if as_json and not dry_run:
        raise ConfigError("--json: prints the plan of a dry run; use it with --dry-run")
    config = session.config()
    out = session.out
    if since and since != "ever":
        parse_since(since)
    preview = dry_run or confirm
    if preview:
        ensure_no_writes_pending(config, group_id)
    budget = Budget(max_time or None)
    debug = session.http_trace()
    with out.progress() as progress:
        results = engine.sync_audiences(
            config,
            budget=budget,
            group_id=group_id,
            since=since,
            full=full,
            dry_run=preview,
            allow_mass_changes=allow_mass_changes,
            civicrm_only=civicrm_only,
            progress=progress,
            debug_http=debug,
        )
    if not preview:
        code = report_results(session, results)
        if civicrm_only:
            out.say(
                "--civicrm-only: Mailchimp writes are kept queued ('mcsync status' counts them, "
                "'--dry-run --json' lists them); the next normal run sends them."
            )
        sys.exit(code)
    exit_code = report_preview(session, results)
    planned = collect_plan(config, results)
    if as_json:
        out.json(planned)
    else:
        show_plan(out, planned, details=details)
    discard_plans(config, results)
    if dry_run or exit_code or not planned["audiences"]:
        if not as_json:
            out.always("Dry run: nothing was written to Mailchimp or CiviCRM.")
        sys.exit(exit_code)
    if not click.confirm("Write these changes to both sides?", default=False):
        out.always("Nothing was written.")
        sys.exit(0)
    with out.progress() as progress:
        results = engine.sync_audiences(
            config,
            budget=budget,
            group_id=group_id,
            since=since,
            full=False,
            allow_mass_changes=allow_mass_changes,
            civicrm_only=civicrm_only,
            progress=progress,
            debug_http=debug,
        )
    sys.exit(report_results(session, results))


def report_preview(session: Session, results: list[Any]) -> int:
    """What a preview could not plan, on stderr (stdout carries the plan); 1 if the real run
    would fail or stop at the brake."""

    out, code = session.out, 0
    for result in results:
        label = f"audience {result.audience.list_id} (group {result.audience.group_id})"
        if result.busy:
            out.error(f"{label}: busy with another mcsync run; not planned")
        elif result.error is not None:
            out.error(f"{label}: {redact(str(result.error), session.secrets)}")
            code = max(code, exit_code_for(result.error))
        elif result.outcome is None:
            out.error(f"{label}: not planned, the time budget was used up")
        elif result.outcome.stage not in WRITE_STAGES:
            out.error(
                f"{label}: the time budget ran out during {result.outcome.stage}, before the "
                f"plan was complete; its progress is kept. Run the dry run again (or give it "
                f"--max-time 0) to see the plan."
            )
    return code


def exit_code_for(error: BaseException) -> int:
    """An audience's failure as an exit code: 2 when the config names something unusable (a
    group deleted, disabled or made smart since configuration), else 1."""
    return 2 if isinstance(error, ConfigError) else 1


def report_results(session: Session, results: list[Any]) -> int:
    out, code = session.out, 0
    for result in results:
        label = f"audience {result.audience.list_id} (group {result.audience.group_id})"
        if result.busy:
            out.error(f"{label}: busy with another mcsync run; left alone")
        elif result.error is not None:
            out.error(f"{label}: {redact(str(result.error), session.secrets)}")
            code = max(code, exit_code_for(result.error))
        elif result.outcome is None:
            out.say(f"{label}: not started, the time budget was used up")
        elif result.outcome.completed:
            out.say(f"{label}: sync complete in {result.outcome.seconds:.1f}s")
        else:
            out.say(
                f"{label}: stopped at {result.outcome.stage} after "
                f"{result.outcome.seconds:.1f}s; the next run continues"
            )
    return code


@main.command("fetch-and-reconcile")
@common_options
@click.option(
    "--max-time",
    type=float,
    default=300,
    show_default=True,
    help="Seconds to work before saving progress and stopping; 0 = no limit.",
)
@group_id_option()
@click.option(
    "--since",
    help="Re-check both sides' changes since DATE (ISO 8601; UTC unless it says otherwise), "
    "or 'ever' for a full fetch.",
)
@plan_options
@guarded
def fetch_and_reconcile(
    session: Session,
    max_time: float,
    group_id: int | None,
    since: str | None,
    dry_run: bool,
    as_json: bool,
    details: bool,
    civicrm_only: bool,
    allow_mass_changes: bool,
) -> None:
    """The cron job: fetch both sides' changes, reconcile, push; resumes where it stopped."""
    if details and not dry_run:
        raise ConfigError("--details: lists the plan of a dry run; use it with --dry-run")
    run_sync(
        session,
        max_time=max_time,
        group_id=group_id,
        since=since,
        full=False,
        dry_run=dry_run,
        allow_mass_changes=allow_mass_changes,
        as_json=as_json,
        details=details,
        civicrm_only=civicrm_only,
    )


@main.command("initial-sync")
@common_options
@group_id_option()
@click.option(
    "--max-time",
    type=float,
    default=0,
    show_default=True,
    help="Seconds to work before saving progress; 0 = no limit.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation before writing.")
@plan_options
@guarded
def initial_sync(
    session: Session,
    group_id: int | None,
    max_time: float,
    dry_run: bool,
    yes: bool,
    as_json: bool,
    details: bool,
    civicrm_only: bool,
    allow_mass_changes: bool,
) -> None:
    """First sync after setup: a full fetch of both sides, previewed before writing."""
    confirm = not yes and not dry_run and sys.stdin.isatty() and sys.stdout.isatty()
    run_sync(
        session,
        max_time=max_time,
        group_id=group_id,
        since="ever",
        full=True,
        dry_run=dry_run,
        allow_mass_changes=allow_mass_changes,
        as_json=as_json,
        confirm=confirm,
        details=details,
        civicrm_only=civicrm_only,
    )


@main.command("status")
@common_options
@group_id_option()
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Machine-readable, stable schema (mcsync/ops/status_schema.json).",
)
@click.option(
    "--prometheus",
    is_flag=True,
    help="Prometheus text format, for node_exporter's textfile collector.",
)
@guarded
def status_command(session: Session, group_id: int | None, as_json: bool, prometheus: bool) -> None:
    """How in-sync each audience is: balance figures, stage, last sync, recent log."""

    if as_json and prometheus:
        raise ConfigError("--json and --prometheus: choose one")
    config = session.config()
    staging = Staging(config.state_db, read_only=True)
    audiences = selected_audiences(config, group_id)
    try:
        items = [audience_status(staging, a) for a in audiences]
        figures = trend(staging, audiences)
        failing = [f for a in audiences for f in failures(staging, a)] if prometheus else []
    finally:
        staging.close()
    if as_json:
        session.out.json(items)
    elif prometheus:
        session.out.stream.write(exposition(items, failing))
    else:
        show_status(session.out, items, trend_line(figures))


@main.command("history")
@common_options
@group_id_option()
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Newest N runs."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable, stable keys.")
@guarded
def history_command(session: Session, group_id: int | None, limit: int, as_json: bool) -> None:
    """Recorded runs, newest first: how each ended, its changes each way, failures, requests."""

    config = session.config()
    staging = Staging(config.state_db, read_only=True)
    try:
        runs = run_items(staging, selected_audiences(config, group_id), limit)
    finally:
        staging.close()
    if as_json:
        session.out.json(runs)
    else:
        show_history(session.out, runs)


@main.command("failures")
@common_options
@group_id_option()
@click.option(
    "--reason", type=click.Choice(sorted(REASONS)), help="Only contacts failing for this reason."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Machine-readable (schema: mcsync/ops/status_schema.json).",
)
@guarded
def failures_command(
    session: Session, group_id: int | None, reason: str | None, as_json: bool
) -> None:
    """Every row that cannot sync, with a plain reason and what to do about it."""

    config = session.config()
    staging = Staging(config.state_db, read_only=True)
    try:
        rows = [
            f for a in selected_audiences(config, group_id) for f in failures(staging, a, reason)
        ]
    finally:
        staging.close()
    if as_json:
        session.out.json(rows)
    else:
        show_failures(session.out, rows)


@main.command("report")
@common_options
@group_id_option()
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    required=True,
    help="Write the status page to this file (replaced atomically; safe for a web folder).",
)
@guarded
def report_command(session: Session, group_id: int | None, html_path: Path) -> None:
    """A self-contained HTML status page per audience, for people who are not at a terminal."""

    config = session.config()
    staging = Staging(config.state_db, read_only=True)
    try:
        write_report(staging, selected_audiences(config, group_id), html_path)
    except OSError as exc:
        raise McsyncError(f"report: cannot write {html_path}: {exc.strerror or exc}") from None
    finally:
        staging.close()
    session.out.say(f"Wrote {html_path}")


@main.command("abort")
@common_options
@group_id_option(required=True)
@guarded
def abort_command(session: Session, group_id: int) -> None:
    """Cancel an audience's pending batches, discard unsubmitted updates, restart its run."""

    config = session.config()
    summary = abort_audience(config, config.audience_for_group(group_id))
    session.out.always(summary)


@main.command("lookup")
@common_options
@click.argument("email", required=False)
@click.option("--contact-id", type=int, help="Look up this CiviCRM contact instead of an email.")
@click.option(
    "--live", is_flag=True, help="Also read both services now and show them beside the staged view."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable, for scripts.")
@guarded
def lookup_command(
    session: Session, email: str | None, contact_id: int | None, live: bool, as_json: bool
) -> None:
    """One person as mcsync last saw them on both sides: statuses and change times, group
    history, interests, merge fields and tags sent, the last decision and why, and the writes
    queued, in flight or failed, per audience."""

    config = session.config()
    view = lookup(config, Person(email, contact_id), live=live, debug_http=session.http_trace())
    if as_json:
        session.out.json(view)
    else:
        show_lookup(session.out, view)


@main.command("resync")
@common_options
@click.argument("email", required=False)
@click.option("--contact-id", type=int, help="Re-sync this CiviCRM contact instead of an email.")
@group_id_option()
@click.option(
    "--now",
    is_flag=True,
    help="Sync the person at once (their writes only) instead of at the next run.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable, for scripts.")
@guarded
def resync_command(
    session: Session,
    email: str | None,
    contact_id: int | None,
    group_id: int | None,
    now: bool,
    as_json: bool,
) -> None:
    """Read one person afresh from both services and have them decided again by the next
    run, or with --now synced at once (for that person only)."""

    config = session.config()
    person = Person(email, contact_id)
    results = resync(config, person, now=now, group_id=group_id, debug_http=session.http_trace())
    items = [r.as_dict() for r in results]
    if as_json:
        session.out.json(items)
    show_resync(session.out, person.label, items, as_json=as_json)


@main.command("prune")
@common_options
@click.option("--yes", is_flag=True, help="Delete without asking (for scripts).")
@click.option(
    "--force",
    is_flag=True,
    help="Delete even audiences with Mailchimp writes queued or in flight (never sent then).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable, for scripts.")
@guarded
def prune_command(session: Session, yes: bool, force: bool, as_json: bool) -> None:
    """List the staging data of audiences no longer in the config, and delete it after
    confirmation."""

    config = session.config()
    out = session.out
    stale = stale_audiences(config)
    if not as_json:
        show_prune(out, stale)
    if not stale:
        if as_json:
            out.json({"audiences": [], "deleted": []})
        return
    problems = [] if force else refusals(stale)
    if problems:
        if as_json:
            out.json({"audiences": stale, "deleted": []})
        raise McsyncError(
            "; ".join(problems) + ". Put the audience back in the config and let a run "
            "finish (or abort it), or add --force to delete it anyway"
        )
    if not yes:
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
        if not interactive or not click.confirm("Delete this staging data?", default=False):
            if as_json:
                out.json({"audiences": stale, "deleted": []})
            else:
                out.always("Nothing was deleted" + ("." if interactive else "; add --yes."))
            return
    deleted = prune(config, stale, force=force)
    if as_json:
        out.json({"audiences": stale, "deleted": deleted})
    else:
        out.always(f"Deleted the staging data of {len(deleted)} audience(s).")


@main.group("config")
def config_group() -> None:
    """Check the configuration."""


@config_group.command("check")
@click.option("--json", "as_json", is_flag=True, help="The result as JSON: ok, problems, warnings.")
@common_options
@guarded
def config_check(session: Session, as_json: bool) -> None:
    """Validate the config file and test every connection, audience, interest and group."""

    config = session.config()
    warnings = (
        []
        if config_file_is_private(session.path)
        else [
            f"{session.path} is readable by other users; it holds or points to API keys "
            f"(chmod 600 {session.path})"
        ]
    )
    warnings += config.insecure_urls()
    out = Output(quiet=True) if as_json else session.out
    problems = check_config(config, out, debug_http=session.http_trace())
    # A configured id that is not there (or a group that cannot be synced) is a configuration
    # error; a failed connection alone is a run failure.
    code = (2 if any(problem.in_config for problem in problems) else 1) if problems else 0
    if as_json:
        session.out.json(
            {
                "ok": not problems,
                "problems": [
                    {"text": redact(p.text, session.secrets), "in_config": p.in_config}
                    for p in problems
                ],
                "warnings": [redact(w, session.secrets) for w in warnings],
            }
        )
        sys.exit(code)
    for warning in warnings:
        session.out.error(f"warning: {warning}")
    if problems:
        for problem in problems:
            session.out.error(redact(problem.text, session.secrets))
        sys.exit(code)
    session.out.always("Config OK: every connection, audience, interest and group checked.")


@main.command("discover")
@click.option("--json", "as_json", is_flag=True, help="Everything found, as JSON.")
@common_options
@guarded
def discover(session: Session, as_json: bool) -> None:
    """List audiences, interests and CiviCRM mailing groups with their ids."""

    found = discover_all(session.config(), debug_http=session.http_trace())
    if as_json:
        session.out.json(found)
    else:
        show_discovery(session.out, found)


@main.command("demo")
@common_options
@click.option(
    "--members", type=int, default=2000, show_default=True, help="How many people to generate."
)
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write the demo's config and database here instead of a temp dir.",
)
@guarded
def demo(session: Session, members: int, keep: Path | None) -> None:
    """Run a real sync against the built-in simulators with generated data; needs no accounts."""

    sys.exit(run_demo(session.out, members=members, workdir=keep))


@main.command("simulate")
@common_options
@click.option(
    "--port",
    type=int,
    default=8010,
    show_default=True,
    help="Mailchimp simulator port; CiviCRM listens on port + 1.",
)
@click.option(
    "--members", type=int, default=1000, show_default=True, help="How many people to generate."
)
@click.option(
    "--write-config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write an mcsync config for the simulators to this file.",
)
@guarded
def simulate(session: Session, port: int, members: int, write_config: Path | None) -> None:
    """Run the Mailchimp and CiviCRM simulators on 127.0.0.1 until interrupted."""

    serve_forever(session.out, port=port, members=members, config_path=write_config)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name=os.path.basename(sys.argv[0]))

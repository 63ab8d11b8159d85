"""Runs configured audiences one after another within one budget, from a loaded config.

This is what the CLI's sync commands call; it opens the staging DB and the clients, and
returns outcomes instead of printing or exiting.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import httpx

from mcsync.api.civicrm import CiviCRMClient
from mcsync.api.mailchimp import MailchimpClient
from mcsync.budget import Budget
from mcsync.config.models import AudienceConfig, Config
from mcsync.errors import AudienceBusy, McsyncError
from mcsync.runner.audience import RunOutcome, run_audience
from mcsync.runner.recording import recorded_run
from mcsync.stages.context import ProgressFn, RunContext, _no_progress
from mcsync.store.database import Staging


@dataclass
class Connections:
    """Clients for one invocation: one Mailchimp client per account, one CiviCRM client."""

    config: Config
    budget: Budget
    transport: httpx.BaseTransport | None = None
    debug_http: Callable[[str], None] | None = None
    mailchimp: dict[str, MailchimpClient] = field(default_factory=dict)
    _civicrm: CiviCRMClient | None = None

    def mailchimp_for(self, account: str) -> MailchimpClient:
        if account not in self.mailchimp:
            settings = self.config.mailchimp.accounts[account]
            self.mailchimp[account] = MailchimpClient(
                account_name=account,
                api_key=settings.api_key.get_secret_value(),
                base_url=settings.base_url,
                budget=self.budget,
                transport=self.transport,
                max_connections=self.config.sync.max_connections,
                timeout=self.config.sync.http_timeout,
                debug_http=self.debug_http,
            )
        return self.mailchimp[account]

    @property
    def civicrm(self) -> CiviCRMClient:
        if self._civicrm is None:
            civi = self.config.civicrm
            self._civicrm = CiviCRMClient(
                url=civi.url,
                api_key=civi.api_key.get_secret_value(),
                site_key=civi.site_key.get_secret_value() if civi.site_key else None,
                budget=self.budget,
                transport=self.transport,
                timeout=self.config.sync.http_timeout,
                debug_http=self.debug_http,
                max_connections=civi.concurrency,
                write_chunk=civi.write_chunk,
            )
        return self._civicrm

    def close(self) -> None:
        for client in self.mailchimp.values():
            client.close()
        if self._civicrm is not None:
            self._civicrm.close()


@contextmanager
def connections(
    config: Config,
    budget: Budget,
    *,
    transport: httpx.BaseTransport | None = None,
    debug_http: Callable[[str], None] | None = None,
) -> Iterator[Connections]:
    conns = Connections(config, budget, transport, debug_http)
    try:
        yield conns
    finally:
        conns.close()


@dataclass
class AudienceResult:
    audience: AudienceConfig
    outcome: RunOutcome | None = None
    busy: bool = False
    error: McsyncError | None = None


def selected_audiences(config: Config, group_id: int | None) -> list[AudienceConfig]:
    if group_id is None:
        return list(config.audience)
    return [config.audience_for_group(group_id)]


def sync_audiences(
    config: Config,
    *,
    budget: Budget,
    group_id: int | None = None,
    since: str | None = None,
    full: bool = False,
    dry_run: bool = False,
    allow_mass_changes: bool = False,
    civicrm_only: bool = False,
    transport: httpx.BaseTransport | None = None,
    progress: ProgressFn = _no_progress,
    debug_http: Callable[[str], None] | None = None,
) -> list[AudienceResult]:
    """Each selected audience in config order, each with the time that remains. An audience
    that fails does not stop the others; its error is in its result."""
    results: list[AudienceResult] = []
    audiences = selected_audiences(config, group_id)
    with ExitStack() as stack:
        staging = Staging(config.state_db)
        stack.callback(staging.close)
        conns = stack.enter_context(
            connections(config, budget, transport=transport, debug_http=debug_http)
        )
        for audience in audiences:
            result = AudienceResult(audience)
            results.append(result)
            ctx = RunContext(
                audience=audience,
                sync=config.settings_for(audience),
                staging=staging,
                mailchimp=conns.mailchimp_for(audience.account),
                civicrm=conns.civicrm,
                budget=budget,
                civi_zone=config.civicrm.tzinfo,
                dry_run=dry_run,
                allow_mass_changes=allow_mass_changes,
                hold_mailchimp=civicrm_only,
                progress=progress,
            )
            if dry_run:  # a preview's planning is undone: not a run of the history
                _run_one(ctx, result, since=since, full=full, dry_run=True)
                continue
            with recorded_run(
                ctx,
                result,
                functools.partial(_request_counts, conns, audience.account),
                keep_days=ctx.sync.history_days,
                secrets=config.secrets(),
            ):
                _run_one(ctx, result, since=since, full=full, dry_run=False)
    return results


def _run_one(
    ctx: RunContext, result: AudienceResult, *, since: str | None, full: bool, dry_run: bool
) -> None:
    """One audience's run, its ending stored in ``result`` (not started: the budget is spent)."""
    if ctx.budget.expired():
        return
    try:
        result.outcome = run_audience(
            ctx, since=since, full=full, stop_before="push_civicrm" if dry_run else None
        )
    except AudienceBusy:
        result.busy = True
    except McsyncError as exc:
        result.error = exc
        ctx.staging.log(ctx.list_id, f"Run failed: {exc}", "error")


def _request_counts(conns: Connections, account: str) -> tuple[int, int]:
    """Requests sent so far by the audience's Mailchimp client and the CiviCRM client."""
    return conns.mailchimp_for(account).request_count, conns.civicrm.request_count

"""Previews that scale: `initial-sync` (and `--dry-run`) show a summary by kind of change,
with counts and a few examples each, before asking; `--details` lists every change (paged in
a terminal, plain otherwise); `--json` gives everything to scripts."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import World

from mcsync import cli as cli_module
from mcsync.cli import main
from mcsync.console import PLAN_EXAMPLES
from mcsync.runner import engine


@pytest.fixture
def cli(world: World, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(
        engine,
        "sync_audiences",
        functools.partial(engine.sync_audiences, transport=world.transport),
    )

    def run(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, [*args, "--config", str(world.config_path)], input=input)

    return run


class _Tty:
    """A standard stream that says it is a terminal (initial-sync asks only in one)."""

    def __init__(self, stream: Any):
        self.stream = stream

    def isatty(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class _TerminalSys:
    def __getattr__(self, name: str) -> Any:
        value = getattr(sys, name)
        return _Tty(value) if name in ("stdin", "stdout") else value


def new_subscribers(world: World, count: int) -> list[str]:
    emails = [f"new{n:02d}@example.org" for n in range(count)]
    for email in emails:
        world.person(email, mc="subscribed")
    world.person("both@example.org", mc="subscribed", civi="Added")
    return emails


def test_initial_sync_asks_after_a_summary_with_examples(  # type: ignore[no-untyped-def]
    world: World, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    emails = new_subscribers(world, 8)
    monkeypatch.setattr(cli_module, "sys", _TerminalSys())
    result = cli("initial-sync", input="n\n")
    assert result.exit_code == 0, result.output
    assert world.writes() == []
    out = result.output
    assert "8 contacts to create in CiviCRM:" in out
    shown = [e for e in emails if e in out]
    assert len(shown) == PLAN_EXAMPLES  # a few examples, not every row
    assert "... and 5 more" in out
    assert "--details lists every change" in out
    assert out.index("8 contacts to create") < out.index("Write these changes to both sides?")
    assert "Nothing was written." in out


def test_details_lists_every_change_and_json_gives_all(world: World, cli) -> None:  # type: ignore[no-untyped-def]
    emails = new_subscribers(world, 8)
    summary = cli("initial-sync", "--dry-run")
    assert summary.exit_code == 0, summary.output
    assert len([e for e in emails if e in summary.output]) == PLAN_EXAMPLES
    details = cli("initial-sync", "--dry-run", "--details")
    assert details.exit_code == 0, details.output
    assert all(e in details.output for e in emails)  # plain lines when not a terminal
    assert "... and" not in details.output
    plan = json.loads(cli("initial-sync", "--dry-run", "--json").output)
    [audience] = plan["audiences"]
    created = [c for c in audience["changes"] if c["kind"] == "contacts_to_create"]
    assert sorted(c["email"] for c in created) == emails
    assert audience["totals"]["contacts_to_create"] == 8
    assert world.writes() == []
    refused = cli("fetch-and-reconcile", "--details")
    assert refused.exit_code == 2 and "--dry-run" in refused.output


def test_details_go_through_the_pager_in_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from mcsync.console import Output

    screen = io.StringIO()
    out = Output(stream=_Tty(screen))  # type: ignore[arg-type]
    assert out.interactive
    out.page_table(
        "changes per contact", ["contact", "email"], [(n, f"p{n}@x.org") for n in range(50)]
    )
    # rich's pager hands the whole rendered table to the system pager (pydoc: $PAGER, less),
    # which writes to the real stdout here; nothing is printed straight onto the screen.
    assert screen.getvalue() == ""
    paged = capsys.readouterr().out
    assert "p0@x.org" in paged and "p49@x.org" in paged

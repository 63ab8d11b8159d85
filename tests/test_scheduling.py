"""The ways mcsync is installed and scheduled (issue 15, item 5): the systemd units in
contrib/ run a command the CLI accepts and keep keys out of the unit, and shell completion
comes from click. (Building and installing the wheel is `make package-check`, run by CI.)"""

from __future__ import annotations

import configparser
import os
import shlex
import subprocess
import sys
from pathlib import Path

from mcsync.cli import main

ROOT = Path(__file__).parent.parent
UNITS = ROOT / "contrib" / "systemd"


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text())
    return parser


def test_the_service_runs_a_command_line_the_cli_accepts() -> None:
    service = _unit("mcsync.service")["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/mcsync")
    # click parses the arguments exactly as it would at run time: a renamed command or option
    # in the CLI makes this fail instead of a unit that fails at 3 am.
    context = main.make_context("mcsync", argv[1:], resilient_parsing=False)
    sub = main.get_command(context, argv[1])
    assert sub is not None
    sub.make_context(argv[1], argv[2:], parent=context)
    assert service["Type"] == "oneshot"


def test_the_units_keep_keys_out_of_the_unit_and_the_timer_catches_up() -> None:
    service_text = (UNITS / "mcsync.service").read_text()
    assert "EnvironmentFile=" in service_text
    assert "API_KEY=" not in service_text.replace("# MAILCHIMP_API_KEY=… and CIVICRM_API_KEY=…", "")
    timer = _unit("mcsync.timer")["Timer"]
    assert timer["Persistent"] == "true"
    assert timer["OnCalendar"]


def test_the_readme_shows_the_units_as_they_are_in_contrib() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in ("mcsync.service", "mcsync.timer"):
        for line in (UNITS / name).read_text().splitlines():
            if line and not line.startswith("#"):
                assert line in readme, f"README's copy of {name} lacks: {line}"


def test_shell_completion_comes_from_click() -> None:
    env = {**os.environ, "_MCSYNC_COMPLETE": "bash_source"}
    script = subprocess.run(
        [sys.executable, "-m", "mcsync"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "complete " in script and "_mcsync_completion" in script
    env = {
        **os.environ,
        "_MCSYNC_COMPLETE": "bash_complete",
        "COMP_WORDS": "mcsync fetch-and-re",
        "COMP_CWORD": "1",
    }
    answer = subprocess.run(
        [sys.executable, "-m", "mcsync"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "fetch-and-reconcile" in answer

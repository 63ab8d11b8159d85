"""Secrets (issue 6, point 5): API keys and site keys never appear in stdout, stderr, the
`-vv` HTTP traces, the run log or the staging DB's bytes; the DB is private to its owner, and
`config check` warns when the config file is readable by others.
"""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e import MAILCHIMP_KEY, SECRETS, Run, Scenario, assert_no_secrets

from mcsync.api.responses import redact
from mcsync.sim.faults import FaultPlan

# What a key can turn into on the wire: the Basic credential mcsync sends Mailchimp.
ENCODED = [base64.b64encode(f"mcsync:{MAILCHIMP_KEY}".encode()).decode()]


def assert_clean(text: str | bytes, where: str) -> None:
    assert_no_secrets(text, where)
    data = text.encode() if isinstance(text, str) else text
    for encoded in ENCODED:
        assert encoded.encode() not in data, f"an encoded key appears in {where}"


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Scenario, list[Run]]]:
    """One world synced with -vv under faults (so retries and errors are traced too), plus
    every read-only command's output."""
    plan = FaultPlan(rate=0.15, kinds=("429", "500", "drop"), seed=3, retry_after=None)
    scenario = Scenario(
        tmp_path_factory.mktemp("secrets"),
        members=120,
        seed=9,
        sync="batch_threshold = 10",
        faults=plan,
    )
    scenario.serve()
    runs = [scenario.run("fetch-and-reconcile", "-vv") for _ in range(3)]
    runs += [
        scenario.run("initial-sync", "--dry-run", "--json", "-vv"),
        scenario.run("status", "-v"),
        scenario.run("status", "--json"),
        scenario.run("failures", "--json"),
        scenario.run("failures"),
        scenario.run("config check", "-vv"),
        scenario.run("discover", "--debug-http"),
        scenario.run("fetch-and-reconcile", "--since", "ever", "--debug-http"),
    ]
    yield scenario, runs
    scenario.stop()


def test_no_secret_in_any_output_or_http_trace(traced: tuple[Scenario, list[Run]]) -> None:
    _, runs = traced
    for run in runs:
        assert "Traceback" not in run.err, run
        assert_clean(run.out, f"stdout of mcsync {' '.join(run.args)}")
        assert_clean(run.err, f"stderr of mcsync {' '.join(run.args)}")
    traces = runs[0].err
    # The traces are really there, with the credential headers present but masked.
    assert "Mailchimp main ->" in traces and "CiviCRM ->" in traces, traces[:2000]
    assert "authorization: ***" in traces.lower() and "x-civi-auth: ***" in traces.lower()
    assert "x-civi-key: ***" in traces.lower()
    assert "retry" in traces, "the fault plan should have caused traced retries"
    flagged = runs[-2].err  # discover --debug-http traces like -vv
    assert "Mailchimp main ->" in flagged and "authorization: ***" in flagged.lower()


def test_no_secret_in_the_staging_db_or_its_log(traced: tuple[Scenario, list[Run]]) -> None:
    scenario, _ = traced
    files = [p for p in scenario.workdir.iterdir() if p.name.startswith("state.sqlite3")]
    assert scenario.state_db in files
    for path in files:
        assert_clean(path.read_bytes(), path.name)
    with scenario.db() as db:
        messages = " ".join(r[0] for r in db.execute("SELECT message FROM log"))
        errors = " ".join(
            str(r[0]) + str(r[1])
            for r in db.execute("SELECT error_title, error_detail FROM updates")
        )
    assert_clean(messages + errors, "the run log")


def test_a_failing_run_with_a_wrong_key_never_shows_either_key(tmp_path: Path) -> None:
    scenario = Scenario(tmp_path / "world", members=30, seed=9)
    scenario.serve()
    try:
        wrong = "0123456789abcdef0123456789abcdef-us21"
        text = scenario.config_path.read_text().replace(MAILCHIMP_KEY, wrong)
        scenario.config_path.write_text(text)
        for args in (("fetch-and-reconcile", "-vv"), ("config check", "-vv"), ("discover",)):
            run = scenario.run(*args)
            assert run.code == 1, run
            assert_clean(run.text, f"mcsync {' '.join(args)} with a wrong key")
            assert wrong not in run.text and wrong.split("-")[0] not in run.text, run
        for path in scenario.workdir.glob("state.sqlite3*"):
            assert wrong.encode() not in path.read_bytes()
    finally:
        scenario.stop()


def test_the_staging_db_is_created_private(traced: tuple[Scenario, list[Run]]) -> None:
    scenario, _ = traced
    for path in scenario.workdir.glob("state.sqlite3*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path.name} has mode {oct(mode)}"


def test_config_check_warns_when_the_config_is_readable_by_others(
    traced: tuple[Scenario, list[Run]],
) -> None:
    scenario, runs = traced
    private = next(r for r in runs if r.args[0] == "config check")
    assert "readable by other users" not in private.err, private
    scenario.config_path.chmod(0o644)
    try:
        run = scenario.run("config check")
    finally:
        scenario.config_path.chmod(0o600)
    assert "readable by other users" in run.err and "chmod 600" in run.err, run
    assert_clean(run.text, "config check output")
    for secret in SECRETS:
        assert secret not in run.text


# -- keys with control or non-ASCII characters (issue 11, point 4) -----------------------------
# h11 refuses such a header value with "Illegal header value b'...'", which carried the key
# (escaped) into stderr, the run log and `status --json`. Such keys are now refused when the
# config is loaded, naming the key, never showing it.
ODD_KEY_PARTS = ("oddkeyAAAA1111", "oddkeyBBBB2222")


@pytest.mark.parametrize(
    ("key_path", "odd"),
    [
        ("civicrm.api_key", "\x01"),
        ("civicrm.api_key", "\n"),
        ("civicrm.site_key", "\x7f"),
        ("civicrm.site_key", "\t"),
        ("mailchimp.accounts.main.api_key", "\u00a0"),  # a non-breaking space from copy-paste
        ("mailchimp.accounts.main.api_key", "\u00e9"),
    ],
)
def test_a_key_with_a_control_or_non_ascii_character_is_refused_at_load(
    tmp_path: Path, key_path: str, odd: str
) -> None:
    scenario = Scenario(tmp_path / "world", members=5, seed=9)
    scenario.serve()
    try:
        odd_key = ODD_KEY_PARTS[0] + odd + ODD_KEY_PARTS[1]
        if key_path.startswith("mailchimp"):
            odd_key += "-us21"
        secret = {
            "civicrm.api_key": SECRETS[2],
            "civicrm.site_key": SECRETS[3],
            "mailchimp.accounts.main.api_key": MAILCHIMP_KEY,
        }[key_path]
        text = scenario.config_path.read_text()
        assert f'"{secret}"' in text
        # In the environment, as a cron job would pass it (TOML cannot hold a raw newline).
        scenario.config_path.write_text(text.replace(f'"{secret}"', '"${ODD_KEY}"'))
        for args in (("fetch-and-reconcile",), ("status", "--json"), ("config check",)):
            run = scenario.run(*args, env={"ODD_KEY": odd_key})
            assert run.code == 2, run
            assert key_path in run.err and "Traceback" not in run.err, run
            assert "character" in run.err, run
            for part in ODD_KEY_PARTS:
                assert part not in run.text, f"the key shows in mcsync {' '.join(args)}:\n{run}"
        assert scenario.mailchimp.request_log == [] and scenario.civicrm.request_log == []
        for path in scenario.workdir.glob("state.sqlite3*"):
            for part in ODD_KEY_PARTS:
                assert part.encode() not in path.read_bytes()
    finally:
        scenario.stop()


@pytest.mark.parametrize("odd", ["\x01", "\n", "\x00", "\u00e9", "'", '"', "\\"])
def test_redaction_masks_escaped_and_repr_forms_of_a_secret(odd: str) -> None:
    """Belt and braces behind the load-time check: messages from libraries quote values as
    Python reprs (bytes or str) or JSON, which escape the odd characters."""
    secret = ODD_KEY_PARTS[0] + odd + ODD_KEY_PARTS[1]
    forms = [
        f"Illegal header value {('Bearer ' + secret).encode()!r}",
        f"Illegal header value {secret.encode('utf-8')!r}",
        f"bad value {secret!r} here",
        f"{[secret]}",
        json.dumps({"value": secret}),
        json.dumps({"value": secret}, ensure_ascii=False),
        secret.encode("unicode_escape").decode("ascii"),
    ]
    for text in forms:
        out = redact(text, [secret])
        for part in ODD_KEY_PARTS:
            assert part not in out, f"{text!r} -> {out!r}"

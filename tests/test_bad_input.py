"""Bad input from every direction (issue 6, point 4): each gives a clear error with the right
exit code, and nothing is lost — after the input is fixed, runs reach the same result as a
world that never saw it.

- the config file: malformed, incomplete, wrong types (exit 2, every problem by key path);
- credentials: wrong Mailchimp key or data centre, wrong CiviCRM key (exit 1, says which);
- what the services answer: HTML, plain text, truncated JSON, odd shapes, APIv4 errors,
  problem+json, "Request Blocked" pages, corrupt or missing batch results (exit 1);
- data: invalid, over-long and unicode emails and names; an email changed at Mailchimp; a
  contact merged or hard-deleted in CiviCRM; CiviCRM's zone with summer time; a group that
  was deleted or turned smart after configuration.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import CIVI_KEY, CIVI_URL, MC_KEY, MC_URL, World
from e2e import (
    SECRETS,
    Run,
    Scenario,
    SimRequest,
    SimResponse,
    Tamper,
    assert_no_secrets,
    civi_call,
    differences,
    final_state,
    html,
    plain,
    raw,
)

from mcsync.ops.status import failures
from mcsync.sim.civicrm import CiviSim
from mcsync.sim.transport import MultiSimTransport
from mcsync.store.database import Staging

SEED = 5
MEMBERS = 150
SYNC = "batch_threshold = 10"


# -- the config file ----------------------------------------------------------------------------
GOOD_CONFIG = f"""
state_db = "state.sqlite3"
[civicrm]
url = "{CIVI_URL}"
api_key = "{CIVI_KEY}"
timezone = "UTC"
[mailchimp.accounts.main]
api_key = "{MC_KEY}"
base_url = "{MC_URL}"
[[audience]]
account = "main"
list_id = "a1b2c3d4e5"
group_id = 12
"""


def _cli(config: Path, *args: str) -> Run:
    scenario = Scenario.__new__(Scenario)  # only argv/run are used: no world needed
    scenario.config_path = config
    scenario.workdir = config.parent
    return scenario.run(*args) if args else scenario.run()


def test_malformed_toml_exits_2_with_the_line(tmp_path: Path) -> None:
    config = tmp_path / "mcsync.toml"
    config.write_text(GOOD_CONFIG.replace("[[audience]]", "[[audience]"))
    run = _cli(config)
    assert run.code == 2, run
    assert "TOML" in run.err and "line" in run.err, run
    assert not (tmp_path / "state.sqlite3").exists(), "nothing may be created"


def test_every_config_problem_is_listed_with_its_key_path(tmp_path: Path) -> None:
    config = tmp_path / "mcsync.toml"
    broken = (
        GOOD_CONFIG.replace('url = "https://civicrm', 'ur = "https://civicrm')
        .replace("group_id = 12", 'group_id = "twelve"\ncolour = "blue"')
        .replace('account = "main"', 'account = "other"')
        + "[sync]\nlease_seconds = 3\nbatch_threshold = 0\n"
    )
    config.write_text(broken)
    run = _cli(config)
    assert run.code == 2, run
    for key_path in (
        "civicrm.url",
        "civicrm.ur",
        "audience[0].group_id",
        "audience[0].colour",
        "sync.lease_seconds",
        "sync.batch_threshold",
    ):
        assert key_path in run.err, f"{key_path} not named:\n{run}"
    assert "Traceback" not in run.err
    assert_no_secrets(run.text, "config error output")
    assert not (tmp_path / "state.sqlite3").exists()


def test_an_unknown_account_and_a_missing_variable_are_config_errors(tmp_path: Path) -> None:
    config = tmp_path / "mcsync.toml"
    config.write_text(
        GOOD_CONFIG.replace('account = "main"', 'account = "other"').replace(
            f'"{CIVI_KEY}"', '"${MCSYNC_TEST_UNSET_VARIABLE}"'
        )
    )
    run = _cli(config)
    assert run.code == 2, run
    assert "audience[0].account" in run.err and "MCSYNC_TEST_UNSET_VARIABLE" in run.err, run


def test_a_missing_config_file_exits_2(tmp_path: Path) -> None:
    run = _cli(tmp_path / "nowhere.toml")
    assert run.code == 2, run
    assert "nowhere.toml" in run.err


# -- credentials and answers from the services ------------------------------------------------
@pytest.fixture(scope="module")
def clean_state(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    scenario = Scenario(tmp_path_factory.mktemp("clean"), members=MEMBERS, seed=SEED, sync=SYNC)
    scenario.serve()
    try:
        scenario.converge()
        return final_state(scenario)
    finally:
        scenario.stop()


@pytest.fixture
def tampered(tmp_path: Path) -> Iterator[tuple[Scenario, Tamper, Tamper]]:
    scenario = Scenario(tmp_path / "world", members=MEMBERS, seed=SEED, sync=SYNC)
    mailchimp, civicrm = Tamper(scenario.mailchimp), Tamper(scenario.civicrm)
    scenario.serve(mailchimp=mailchimp, civicrm=civicrm)
    yield scenario, mailchimp, civicrm
    scenario.stop()


def _on(
    side: str,
    match: Callable[[SimRequest], bool],
    answer: Callable[..., SimResponse],
    *,
    after: bool = False,
) -> tuple[str, Any]:
    """A rule answering matching requests with ``answer``; ``after``: the real simulator
    handles the request first (the write happened, its answer is garbled)."""

    def rule(request: SimRequest, forward: Any) -> SimResponse | None:
        if not match(request):
            return None
        if after:
            forward(request)
        return answer()

    return side, rule


def _civi(call: str) -> Callable[[SimRequest], bool]:
    return lambda request: civi_call(request) == call


def _members_page(request: SimRequest) -> bool:
    return request.method == "GET" and request.path.rstrip("/").endswith("/members")


def _results(request: SimRequest) -> bool:
    return "/_sim/batch-results/" in request.path


WORDPRESS_LOGIN = "<!DOCTYPE html><html><head><title>Log In &lsaquo; Site</title></head><body>"
REQUEST_BLOCKED = (
    "<HTML><HEAD><TITLE>Request Blocked</TITLE></HEAD><BODY>Request Blocked. "
    "The request was blocked. Reference&#32;&#35;18&#46;5b4f</BODY></HTML>"
)
PROBLEM = json.dumps(
    {
        "type": "https://mailchimp.com/developer/marketing/docs/errors/",
        "title": "Resource Not Found",
        "status": 404,
        "detail": "The requested resource could not be found.",
        "instance": "ab12",
    }
).encode()
APIV4_ERROR = json.dumps(
    {
        "error_code": 0,
        "error_message": "Api4 GroupContact field 'contact_id.nick' does not exist",
        "status": 500,
    }
).encode()

# (what, rule, words the error must contain). In the order a run meets them: each run fails
# at its rule's request, and the next case's request is still ahead of the saved progress.
ANSWERS: list[tuple[str, tuple[str, Any], tuple[str, ...]]] = [
    (
        "CiviCRM answers an HTML login page",
        _on("civicrm", _civi("Group.get"), lambda: html(200, WORDPRESS_LOGIN)),
        ("CiviCRM", "Group/get", "text/html"),
    ),
    (
        "CiviCRM answers plain text",
        _on("civicrm", _civi("Group.get"), lambda: plain(200, "DB Error: connect failed")),
        ("CiviCRM", "text/plain", "DB Error"),
    ),
    (
        "CiviCRM answers truncated JSON",
        _on("civicrm", _civi("Group.get"), lambda: raw(200, b'{"values": [{"id": 1, "na')),
        ("CiviCRM", "JSON"),
    ),
    (
        "CiviCRM answers 200 with an unexpected shape",
        _on("civicrm", _civi("Group.get"), lambda: raw(200, b'{"is_error": 0, "result": []}')),
        ("CiviCRM", "values"),
    ),
    (
        "CiviCRM answers records that are not objects",
        _on("civicrm", _civi("Group.get"), lambda: raw(200, b'{"values": [7, "x"]}')),
        ("CiviCRM", "Group.get", "not a JSON object"),
    ),
    (
        "CiviCRM answers an APIv4 error",
        _on("civicrm", _civi("Group.get"), lambda: raw(500, APIV4_ERROR)),
        ("CiviCRM", "does not exist"),
    ),
    (
        "Mailchimp answers problem+json",
        _on(
            "mailchimp",
            _members_page,
            lambda: raw(404, PROBLEM, "application/problem+json; charset=utf-8"),
        ),
        ("Mailchimp main", "Resource Not Found"),
    ),
    (
        "Mailchimp answers an HTML Request Blocked page",
        _on("mailchimp", _members_page, lambda: html(403, REQUEST_BLOCKED)),
        ("Mailchimp main", "Request Blocked"),
    ),
    (
        "Mailchimp answers 200 with HTML",
        _on("mailchimp", _members_page, lambda: html(200, "<html>captive portal</html>")),
        ("Mailchimp main", "JSON"),
    ),
    (
        "Mailchimp answers a member that is a list",
        _on("mailchimp", _members_page, lambda: raw(200, b'{"total_items": 1, "members": [[]]}')),
        ("Mailchimp main", "/members", "not a JSON object"),
    ),
    (
        "Mailchimp answers a member whose status is an object",
        _on(
            "mailchimp",
            _members_page,
            lambda: raw(
                200,
                b'{"total_items": 1, "members": [{"id": "%s", "email_address": "a@b.org",'
                b' "status": {"x": 1}}]}' % (b"0" * 32),
            ),
        ),
        ("Mailchimp main", "/members", "status"),
    ),
    (
        "Mailchimp answers a page without members",
        _on("mailchimp", _members_page, lambda: raw(200, b'{"total_items": 3}')),
        ("Mailchimp main", "members"),
    ),
    (
        "CiviCRM saves group changes but answers HTML",
        _on(
            "civicrm",
            _civi("GroupContact.save"),
            lambda: html(502, "<h1>Bad Gateway</h1>"),
            after=True,
        ),
        ("CiviCRM", "GroupContact"),
    ),
    (
        "Mailchimp batch results are a corrupt tar",
        _on(
            "mailchimp",
            _results,
            lambda: raw(200, b"\x1f\x8b\x08\x00garbage", "application/x-gzip"),
        ),
        ("Mailchimp main", "tar"),
    ),
    (
        "Mailchimp batch results are missing",
        _on(
            "mailchimp",
            _results,
            lambda: raw(404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml"),
        ),
        ("Mailchimp main", "batch results"),
    ),
]


def test_bad_answers_fail_clearly_and_lose_nothing(
    clean_state: dict[str, Any], tampered: tuple[Scenario, Tamper, Tamper]
) -> None:
    scenario, mailchimp, civicrm = tampered
    tampers = {"mailchimp": mailchimp, "civicrm": civicrm}
    for what, (side, rule), words in ANSWERS:
        tampers[side].add(rule)
        run = scenario.run()
        tampers[side].clear()
        assert run.code == 1, f"{what}:\n{run}"
        for word in words:
            assert word in run.err, f"{what}: {word!r} missing from the error:\n{run}"
        assert "Traceback" not in run.err, f"{what}:\n{run}"
        assert_no_secrets(run.text, f"the output for: {what}")
    status = scenario.status()[0]
    assert status["counts"]["batches_in_flight"] == 1, "the batch must not be forgotten"
    scenario.converge()
    found = differences(clean_state, final_state(scenario))
    assert not found, "after the bad answers, the result differs:\n" + "\n".join(found)
    for server in scenario.servers:
        assert not server.errors, server.errors[0]


@pytest.mark.parametrize("case", ["mailchimp key", "data centre", "civicrm key", "site key"])
def test_wrong_credentials_exit_1_naming_the_account_never_the_key(
    tampered: tuple[Scenario, Tamper, Tamper], case: str
) -> None:
    scenario, mailchimp, _ = tampered
    config = scenario.config_path.read_text()
    expected: tuple[str, ...]
    if case == "mailchimp key":
        scenario.config_path.write_text(config.replace(SECRETS[0], "f" * 32 + "-us21"))
        expected = ("mailchimp.accounts.main", "API Key Invalid")
    elif case == "data centre":

        def elsewhere(request: SimRequest, forward: Any) -> SimResponse:
            request.headers["host"] = "us7.api.mailchimp.com"
            return forward(request)

        mailchimp.add(elsewhere)
        expected = ("mailchimp.accounts.main", "Wrong Datacenter", "data centre")
    elif case == "civicrm key":
        scenario.config_path.write_text(config.replace(SECRETS[2], "not-the-key-0000"))
        expected = ("civicrm.api_key", "401")
    else:
        scenario.config_path.write_text(config.replace(SECRETS[3], "wrong-site-key"))
        scenario.civicrm.guards = ["site_key"]
        expected = ("civicrm", "401")
    writes_before = _writes(scenario)
    run = scenario.run()
    assert run.code == 1, run
    for word in expected:
        assert word in run.err, f"{word!r} missing:\n{run}"
    assert_no_secrets(run.text, f"the output for a wrong {case}")
    assert "f" * 32 not in run.text and "not-the-key-0000" not in run.text
    assert _writes(scenario) == writes_before, "nothing may be written"


def _writes(scenario: Scenario) -> int:
    mc = [r for r in scenario.mailchimp.request_log if r[0] in ("POST", "PUT", "PATCH", "DELETE")]
    civi = [r for r in scenario.civicrm.request_log if not r[1].endswith(".get")]
    return len(mc) + len(civi)


@pytest.mark.parametrize("change", ["smart", "deleted", "disabled"])
def test_a_group_changed_after_configuration_stops_its_audience(
    tampered: tuple[Scenario, Tamper, Tamper], change: str
) -> None:
    scenario = tampered[0]
    group = scenario.group_ids[0]
    if change == "smart":
        scenario.civicrm.query("UPDATE civi_group SET saved_search_id = 1 WHERE id = ?", (group,))
        said = "smart group"
    elif change == "deleted":
        scenario.civicrm.query("DELETE FROM group_contact WHERE group_id = ?", (group,))
        scenario.civicrm.query("DELETE FROM civi_group WHERE id = ?", (group,))
        said = "does not exist"
    else:
        scenario.civicrm.query("UPDATE civi_group SET is_active = 0 WHERE id = ?", (group,))
        said = "disabled"
    # A configured group that is not a usable static mailing group is a configuration
    # error: exit 2, as the README's exit codes say (issue 11, point 11).
    check = scenario.run("config check")
    assert check.code == 2, check
    assert "audience[0].group_id" in check.err and said in check.err, check
    before = _writes(scenario)
    run = scenario.run()
    assert run.code == 2, run
    assert said in run.err and "nothing was written" in run.err, run
    preview = scenario.run("fetch-and-reconcile", "--dry-run")
    assert preview.code == 2 and said in preview.err, preview
    assert _writes(scenario) == before
    assert scenario.status()[0]["last_sync"] is None


# -- data that is odd but legal (in-process worlds: the same engine, faster) -------------------
def test_invalid_overlong_and_unicode_emails_and_names(world: World) -> None:
    odd = {
        "not-an-email": None,
        "someone@exämple.org": None,  # Mailchimp refuses non-ASCII domains
        "x" * 240 + "@example.org": "subscribed",
        "jöhn.dœ@example.org": "subscribed",
        "名前@example.jp": "subscribed",
        "Mixed.Case@Example.ORG": "subscribed",
    }
    for email in odd:
        world.person(email, civi="Added", first="Zoë 😀 Łukasiewicz", last="O'Brien-" * 40)
    world.person("ok@example.org", mc="subscribed", civi="Added", first="Ñandú ☃", last="\u200b")
    world.person("new@example.org", mc="subscribed", first="Δημήτρης", last="Ο'Νιλ\u0000x")
    result = world.sync()[0]
    assert result.error is None and result.outcome and result.outcome.completed
    for email, status in odd.items():
        assert world.mc_status(email) == status, email
    assert world.mc_status("ok@example.org") == "subscribed"
    created = world.civi.query(
        "SELECT c.first_name FROM contact c JOIN email e ON e.contact_id = c.id "
        "WHERE e.email = 'new@example.org'"
    )
    assert [c["first_name"] for c in created] == ["Δημήτρης"]
    staging = Staging(world.config.state_db)
    try:
        found = failures(staging, world.config.audience[0])
        reasons = {f["email"] or "": f["reason"] for f in found}
    finally:
        staging.close()
    assert reasons.get("someone@exämple.org") == "invalid_email", reasons
    before = len(world.writes())
    assert world.sync()[0].error is None
    assert len(world.writes()) == before, "refused addresses must not be retried every run"


def test_an_email_changed_at_mailchimp_keeps_one_member_and_one_contact(world: World) -> None:
    contact = world.person("old@example.org", mc="subscribed", civi="Added")
    assert contact is not None
    world.sync()
    world.mc.edit_member(world.list_id, "old@example.org", new_email="new@example.org")
    result = world.sync()[0]
    assert result.error is None
    assert world.mc_status("old@example.org") is None, "the old address was re-added"
    assert world.mc_status("new@example.org") == "subscribed"
    owners = world.civi.query("SELECT contact_id FROM email WHERE email = 'new@example.org'")
    assert [o["contact_id"] for o in owners] == [contact], "a second contact was created"
    assert world.civi_status(contact) == "Added"
    before = len(world.writes())
    world.sync()
    assert len(world.writes()) == before


def test_merged_and_hard_deleted_contacts(world: World) -> None:
    keep = world.person("keep@example.org", mc="subscribed", civi="Added")
    merged = world.person("merged@example.org", mc="subscribed", civi="Added")
    gone = world.person("gone@example.org", mc="subscribed", civi="Added")
    assert keep and merged and gone
    world.sync()
    world.civi.merge_contacts(keep, merged)
    world.civi.delete_contact(gone, permanent=True)
    for full in (False, True):  # incremental, then the full run that sees what left no history
        result = world.sync(since="ever", full=True) if full else world.sync()
        assert result[0].error is None, result[0].error
        assert world.mc_status("merged@example.org") == "subscribed", "an unsubscribe was invented"
        assert world.mc_status("gone@example.org") == "subscribed"
    owners = world.civi.query(
        "SELECT e.contact_id FROM email e JOIN contact c ON c.id = e.contact_id "
        "WHERE c.is_deleted = 0 AND e.email = 'merged@example.org'"
    )
    assert [o["contact_id"] for o in owners] == [keep], "a duplicate contact was created"
    assert world.civi_status(keep) == "Added"
    live = world.civi.query(
        "SELECT e.contact_id FROM email e JOIN contact c ON c.id = e.contact_id "
        "WHERE c.is_deleted = 0 AND e.email = 'gone@example.org'"
    )
    assert len(live) <= 1
    before = len(world.writes())
    world.sync()
    assert len(world.writes()) == before


class LondonWorld(World):
    """A CiviCRM site whose dates are London time (UTC+1 in summer, UTC in winter)."""

    def __init__(self, tmp_path: Path, zone_in_config: str = "Europe/London"):
        self.zone_in_config = zone_in_config
        super().__init__(tmp_path)
        self.civi = CiviSim(CIVI_KEY, timezone="Europe/London")
        self.group_id = self.civi.add_group("Newsletter")
        self.transport = MultiSimTransport({"mailchimp.sim": self.mc, "civicrm.sim": self.civi})
        self.write_config()

    def write_config(self, extra: str = "") -> None:
        super().write_config(extra)
        if getattr(self, "zone_in_config", None):
            text = self.config_path.read_text().replace(
                'timezone = "UTC"\n', f'timezone = "{self.zone_in_config}"\n', 1
            )
            self.config_path.write_text(text)


def _utc(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_civicrm_dates_in_a_summer_time_zone_are_compared_in_utc(tmp_path: Path) -> None:
    """Each pair is 15 minutes apart in UTC, but read as UTC the CiviCRM side would be 45
    minutes *later* in summer: the wrong side would win and an unsubscribe would be lost."""
    world = LondonWorld(tmp_path)
    for n in range(20):  # bystanders in sync, so that the changes stay below the brake
        world.person(f"p{n}@example.org", mc="subscribed", civi="Added")
    summer_unsub = world.person(
        "s1@example.org",
        mc="unsubscribed",
        civi="Added",
        mc_at=_utc(2026, 7, 1, 10, 30),
        civi_at=_utc(2026, 7, 1, 10, 15),
    )
    summer_sub = world.person(
        "s2@example.org",
        mc="subscribed",
        civi="Removed",
        mc_at=_utc(2026, 7, 1, 10, 30),
        civi_at=_utc(2026, 7, 1, 10, 15),
    )
    winter = world.person(
        "w1@example.org",
        mc="unsubscribed",
        civi="Added",
        mc_at=_utc(2026, 1, 10, 10, 30),
        civi_at=_utc(2026, 1, 10, 10, 15),
    )
    civi_newer = world.person(
        "s3@example.org",
        mc="unsubscribed",
        civi="Removed",
        mc_at=_utc(2026, 7, 1, 10, 30),
        civi_at=_utc(2026, 7, 1, 10, 45),
    )
    stored = world.civi.query(
        "SELECT date FROM subscription_history WHERE contact_id = ?", (summer_unsub,)
    )
    assert stored[-1]["date"] == "2026-07-01 11:15:00", "the simulator stores local time"
    assert summer_unsub and summer_sub and winter and civi_newer
    result = world.sync()[0]
    assert result.error is None
    assert world.civi_status(summer_unsub) == "Removed", "Mailchimp's newer unsubscribe lost"
    assert world.mc_status("s1@example.org") == "unsubscribed"
    assert world.civi_status(summer_sub) == "Added"
    assert world.mc_status("s2@example.org") == "subscribed"
    assert world.civi_status(winter) == "Removed"
    assert world.civi_status(civi_newer) == "Removed"
    assert world.mc_status("s3@example.org") == "unsubscribed"

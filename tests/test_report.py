"""`mcsync report --html` (issue 15.2): one self-contained page per run of cron, written
atomically; every value escaped; the figures, runs and failures (with their advice) shown."""

from __future__ import annotations

import os
import re
import stat
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import World

from mcsync.cli import main
from mcsync.ops import report
from mcsync.ops.status import audience_status
from mcsync.rules.explanations import REASONS
from mcsync.store.database import Staging

HOSTILE_NAME = '<b>Donors</b> & "friends"'
HOSTILE_EMAIL = "<script>alert(1)</script>@example.org"
HOSTILE_DETAIL = "<img src=x onerror=alert(2)> refused"


def name_audience(world: World, name: str) -> None:
    text = world.config_path.read_text()
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    world.config_path.write_text(
        text.replace("[[audience]]\n", f'[[audience]]\nname = "{escaped}"\n')
    )


def hostile_row(world: World) -> None:
    """A failing row whose email and detail are markup (they are other people's data)."""
    staging = Staging(world.config.state_db)
    try:
        with staging.atomic():
            staging.execute(
                "INSERT INTO rows (list_id, mc_hash, mc_email, mc_status, contact_id, "
                "sync_status, reason, reason_detail) VALUES (?, 'evil', ?, 'subscribed', 99, "
                "'fail', 'mailchimp_error', ?)",
                (world.list_id, HOSTILE_EMAIL, HOSTILE_DETAIL),
            )
    finally:
        staging.close()


def make_report(world: World, path: Path, *args: str) -> str:
    result = CliRunner().invoke(
        main, ["report", "--html", str(path), *args, "--config", str(world.config_path)]
    )
    assert result.exit_code == 0, result.output
    return path.read_text(encoding="utf-8")


def people(world: World) -> None:
    """Five in sync, one bounced in CiviCRM, one who asked not to be emailed."""
    for n in range(5):
        world.person(f"p{n}@example.org", mc="subscribed", civi="Added")
    held = world.civi.add_contact("Held", "Back")
    world.civi.add_email(held, "held@example.org", on_hold=1)
    world.civi.set_group_status(held, world.group_id, "Added", when=world.ago(days=5))
    world.person("private@example.org", civi="Added", do_not_email=True)


class Elements(HTMLParser):
    """The page's elements and attributes, and its text, as a browser's parser reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Elements:
    parser = Elements()
    parser.feed(page)
    return parser


def test_the_page_shows_the_figures_state_runs_and_failures(world: World, tmp_path: Path) -> None:
    people(world)
    world.sync()
    world.sync()
    page = make_report(world, tmp_path / "status.html")
    staging = Staging(world.config.state_db, read_only=True)
    try:
        status = audience_status(staging, world.config.audience[0])
    finally:
        staging.close()
    parsed = parse(page)
    text = " ".join(parsed.text)
    figures = dict(re.findall(r'data-figure="(\w+)"><div class="value">([\d,]+)</div>', page))
    assert figures == {key: f"{status['counts'][key]:,}" for key, _, _ in report.FIGURES}
    assert figures["subscribed_at_mailchimp"] == "5" and figures["cannot_subscribe"] == "2"
    assert 'data-state="ok"' in page and "In sync" in text
    assert "Last complete sync:" in text and "never" not in text
    # Two runs charted: a bar each way per run, and a duration bar per run.
    assert page.count('fill="#3867d6"') == 2 and page.count('fill="#20a39e"') == 2
    assert "How long each run took" in text and "Changes made by each run" in text
    # Failures grouped by reason, with the reason's own explanation and advice.
    for reason in ("no_usable_email", "privacy_flags"):
        plain, advice = REASONS[reason]
        assert f'data-reason="{reason}"' in page
        assert report.e(advice) in page and report.e(plain[1:]) in page
    assert "held@example.org" in text and "private@example.org" in text
    assert any(tag == "input" and attrs.get("type") == "search" for tag, attrs in parsed.tags)


def test_a_failed_last_run_needs_attention(world: World, tmp_path: Path) -> None:
    world.person("a@example.org", mc="subscribed", civi="Added")
    world.sync()
    staging = Staging(world.config.state_db)
    try:
        run = staging.record_run_start(
            world.list_id, world.group_id, "2099-01-01T00:00:00+00:00", "idle"
        )
        staging.record_run_end(
            run, changes={}, keep_days=90, outcome="failure", error="CiviCRM: 401 (check the key)"
        )
    finally:
        staging.close()
    page = make_report(world, tmp_path / "status.html")
    assert 'data-state="bad"' in page and "Needs attention" in page
    assert "CiviCRM: 401 (check the key)" in page


def test_every_value_is_escaped(world: World, tmp_path: Path) -> None:
    name_audience(world, HOSTILE_NAME)
    world.person("a@example.org", mc="subscribed", civi="Added")
    world.sync()
    hostile_row(world)
    page = make_report(world, tmp_path / "status.html")
    parsed = parse(page)
    assert [tag for tag, _ in parsed.tags if tag in ("script", "img", "b")] == ["script"]
    assert "&lt;b&gt;Donors&lt;/b&gt; &amp; &quot;friends&quot;" in page
    assert report.e(HOSTILE_EMAIL) in page and report.e(HOSTILE_DETAIL) in page
    assert HOSTILE_NAME in " ".join(parsed.text)  # shown as the text it is
    assert HOSTILE_EMAIL in " ".join(parsed.text)


def test_the_page_is_self_contained_and_holds_no_secret(world: World, tmp_path: Path) -> None:
    world.person("a@example.org", mc="subscribed", civi="Added")
    world.sync()
    page = make_report(world, tmp_path / "status.html")
    parsed = parse(page)
    for tag, attrs in parsed.tags:
        assert tag not in ("link", "iframe", "object", "embed", "img"), tag
        assert "src" not in attrs, (tag, attrs)
        assert not str(attrs.get("href") or "#").startswith(("http", "//")), attrs
    assert "@import" not in page and "url(" not in page and "@font-face" not in page
    assert "default-src 'none'" in page  # and the browser is told to load nothing else
    for secret in world.config.secrets():
        assert secret not in page


def test_the_page_is_replaced_atomically_keeping_its_mode(world: World, tmp_path: Path) -> None:
    world.person("a@example.org", mc="subscribed", civi="Added")
    world.sync()
    web = tmp_path / "www"
    web.mkdir()
    target = web / "status.html"
    target.write_text("old page")
    target.chmod(0o640)
    inode = target.stat().st_ino
    make_report(world, target)
    assert target.read_text().startswith("<!DOCTYPE html>")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert target.stat().st_ino != inode  # a new file renamed over the old, not rewritten
    assert os.listdir(web) == ["status.html"]  # no temporary file left


def test_a_failed_write_leaves_the_old_page_and_no_temporary_file(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "www" / "status.html"
    target.parent.mkdir()
    target.write_text("old page")

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report.os, "replace", full_disk)
    result = CliRunner().invoke(
        main, ["report", "--html", str(target), "--config", str(world.config_path)]
    )
    assert result.exit_code == 1
    assert "cannot write" in result.output and "No space left on device" in result.output
    assert target.read_text() == "old page"
    assert os.listdir(target.parent) == ["status.html"]


def test_a_new_page_gets_the_usual_mode_for_new_files(world: World, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        make_report(world, tmp_path / "new.html")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.html").stat().st_mode) == 0o644


def test_a_never_synced_audience_says_so(world: World, tmp_path: Path) -> None:
    page = make_report(world, tmp_path / "status.html")
    assert "Not synced yet" in page and "has not been synced completely yet" in page
    assert "No runs recorded yet." in page


def test_many_failures_are_capped_with_the_way_to_see_them_all(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report, "PEOPLE_LISTED", 1)
    for n in range(3):
        world.person(f"private{n}@example.org", civi="Added", do_not_email=True)
    world.sync()
    page = make_report(world, tmp_path / "status.html")
    assert page.count("<tr data-filter>") == 1
    assert "and 2 more" in page and "mcsync failures --reason privacy_flags" in page


def test_the_brake_is_explained_in_plain_words(world: World, tmp_path: Path) -> None:
    contacts = [world.person(f"p{n}@example.org", mc="subscribed", civi="Added") for n in range(20)]
    world.sync()
    for contact in contacts:
        assert contact is not None
        world.civi.set_group_status(contact, world.group_id, "Removed")
    world.sync()
    page = make_report(world, tmp_path / "status.html")
    assert 'data-state="bad"' in page and "The audience needs attention." in page
    assert "The safety brake stopped the last run before it changed anything" in page
    assert "Mass-change brake" in page  # and the details, for whoever looks after mcsync
    assert re.search(r'data-figure="to_remove"><div class="value">20<', page)

"""Data feeds from plugins (entry point group ``mcsync.data_feeds``) reaching Mailchimp."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import CIVI_URL, MC_URL, World

from mcsync import plugins
from mcsync.plugins import FeedAudience, FeedData, ReadOnlyCiviCRM
from mcsync.sim.server import serve_simulators


class NicknameFeed:
    """Reads Contact fields through the read-only client, as a real feed would."""

    chunk_size = 2

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def fetch(
        self, audience: FeedAudience, contact_ids: Sequence[int], civicrm: ReadOnlyCiviCRM
    ) -> Mapping[int, Any]:
        self.calls.append(list(contact_ids))
        rows = civicrm.get(
            "Contact", {"select": ["id", "first_name"], "where": [["id", "IN", list(contact_ids)]]}
        )
        return {
            r["id"]: {
                "merge_fields": {"NICK": (r["first_name"] or "").upper(), "FNAME": "Plugin"},
                "tags": ["Member"],
                "status": "unsubscribed",
            }
            for r in rows
        }


class Entry:
    def __init__(self, name: str, target: Any):
        self.name, self.value, self.target = name, f"tests:{name}", target

    def load(self) -> Any:
        return self.target


@pytest.fixture
def feed(monkeypatch: pytest.MonkeyPatch) -> NicknameFeed:
    instance = NicknameFeed()

    def entry_points(group: str) -> list[Entry]:
        assert group == "mcsync.data_feeds"
        return [Entry("nickname", instance)]

    monkeypatch.setattr(plugins.importlib.metadata, "entry_points", entry_points)
    return instance


def with_merge_fields(world: World) -> None:
    world.write_config()
    with world.config_path.open("a") as handle:
        handle.write('[audience.merge_fields]\nFNAME = "first_name"\n')
    world.mc.add_merge_field(world.list_id, "NICK", "Nickname")


def test_a_plugins_data_reaches_mailchimp(world: World, feed: NicknameFeed) -> None:
    with_merge_fields(world)
    for n, name in enumerate(["Ann", "Bob", "Cy"]):
        world.person(f"p{n}@example.org", mc="subscribed", civi="Added", first=name)
    results = world.sync()
    assert results[0].error is None, results[0].error
    member = world.mc.member(world.list_id, "p0@example.org")
    assert member is not None
    assert member["status"] == "subscribed", "a plugin can never set status"
    assert member["merge_fields"]["NICK"] == "ANN"
    assert member["merge_fields"]["FNAME"] == "Ann", "built-in mappings win"
    assert {t["name"] for t in member["tags"]} == {"Member"}
    assert [len(c) for c in feed.calls] == [2, 1], "called in its chunk size"
    writes = len(world.writes())
    world.sync(full=True)
    assert len(world.writes()) == writes, "only changes are pushed"


def test_a_plugin_cannot_write_to_civicrm(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    class Writer:
        def fetch(self, audience: Any, contact_ids: Any, civicrm: ReadOnlyCiviCRM) -> Any:
            civicrm.call("Contact", "delete", {"where": [["id", "IN", list(contact_ids)]]})
            return {}

    monkeypatch.setattr(
        plugins.importlib.metadata, "entry_points", lambda group: [Entry("writer", Writer)]
    )
    world.person("a@example.org", mc="subscribed", civi="Added")
    results = world.sync()
    assert isinstance(results[0].error, plugins.PluginError)
    assert "may only read" in str(results[0].error)
    assert world.civi.query("SELECT is_deleted FROM contact") == [{"is_deleted": 0}]


def test_normalise_drops_what_a_feed_may_not_set() -> None:
    warnings: list[str] = []
    data = plugins.normalise(
        "f",
        1,
        {
            "merge_fields": {"A": None, "b": 1, "EMAIL": "x", "N": 3, "L": ["x", "y"], "T": True},
            "tags": ["t", " ", "t"],
            "status": "subscribed",
        },
        warnings.append,
    )
    assert data == FeedData({"A": "", "N": 3, "L": "x, y", "T": "Yes"}, ("t",))
    assert len(warnings) == 3
    assert plugins.merge_under({"A": 1}, [{"A": 2, "B": 2}, {"B": 3, "C": 3}]) == {
        "A": 1,
        "B": 2,
        "C": 3,
    }


def test_a_broken_plugin_is_named() -> None:
    def broken(group: str) -> list[Any]:
        class Bad:
            name, value = "bad", "nowhere:thing"

            def load(self) -> Any:
                raise ImportError("No module named 'nowhere'")

        return [Bad()]

    with pytest.raises(plugins.PluginError, match="'bad'.*could not be loaded"):
        plugins.load_feeds(broken)


PLUGIN_SOURCE = '''
"""A test data feed: what a real package would ship."""
from mcsync.plugins import FeedData


class Feed:
    def fetch(self, audience, contact_ids, civicrm):
        rows = civicrm.get("Contact", {"select": ["id", "last_name"],
                                       "where": [["id", "IN", list(contact_ids)]]})
        return {r["id"]: FeedData({"NICK": "Dr " + (r["last_name"] or "")}, ["Doctor"])
                for r in rows}
'''


def test_a_registered_distribution_through_the_cli(world: World, tmp_path: Path) -> None:
    """A real dist on sys.path with an entry_points.txt, and the CLI as cron runs it."""
    site = tmp_path / "site"
    info = site / "mcsync_test_feed-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "mcsync_test_feed.py").write_text(PLUGIN_SOURCE)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mcsync-test-feed\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[mcsync.data_feeds]\ntitles = mcsync_test_feed:Feed\n")
    world.mc.add_merge_field(world.list_id, "NICK", "Nickname")
    world.person("doc@example.org", mc="subscribed", civi="Added", first="Di", last="Who")
    mc_server, civi_server = serve_simulators(world.mc, world.civi)
    try:
        config = tmp_path / "served.toml"
        config.write_text(
            world.config_path.read_text()
            .replace(MC_URL, mc_server.url + "/3.0")
            .replace(CIVI_URL, civi_server.url + "/civicrm/ajax/api4")
        )
        config.chmod(0o600)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(site), str(Path(__file__).resolve().parents[1])]),
        }
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "mcsync",
                "fetch-and-reconcile",
                "--config",
                str(config),
                "--max-time",
                "0",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
    finally:
        mc_server.stop()
        civi_server.stop()
    assert done.returncode == 0, done.stderr + done.stdout
    member = world.mc.member(world.list_id, "doc@example.org")
    assert member is not None
    assert member["merge_fields"]["NICK"] == "Dr Who"
    assert {t["name"] for t in member["tags"]} == {"Doctor"}

"""`mcsync config check` for interests, merge fields and groups, through the CLI."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner, Result
from conftest import CIVI_KEY, CIVI_URL, MC_KEY, MC_URL, World

from mcsync.cli import main
from mcsync.sim.civicrm import CiviSim
from mcsync.sim.server import serve_simulators


@pytest.fixture
def world2(make_world: Any) -> Iterator[World]:
    world = make_world(interests=2)
    yield world


def check(world: World, tmp_path: Path, merge_fields: str = "") -> Result:
    mc_server, civi_server = serve_simulators(world.mc, world.civi)
    try:
        text = world.config_path.read_text()
        if merge_fields:
            text += f"[audience.merge_fields]\n{merge_fields}"
        config = tmp_path / "served.toml"
        config.write_text(
            text.replace(MC_URL, mc_server.url + "/3.0").replace(
                CIVI_URL, civi_server.url + "/civicrm/ajax/api4"
            )
        )
        config.chmod(0o600)
        return CliRunner().invoke(main, ["config", "check", "--config", str(config)])
    finally:
        mc_server.stop()
        civi_server.stop()


def test_a_good_config_passes(world2: World, tmp_path: Path) -> None:
    world2.mc.add_merge_field(world2.list_id, "CITY", "City")
    world2.mc.add_merge_field(world2.list_id, "SINCE", "Since", "date")
    result = check(
        world2,
        tmp_path,
        'FNAME = "first_name"\nCITY = "address_primary.city"\nSINCE = "created_date"\n',
    )
    assert result.exit_code == 0, result.output
    assert MC_KEY not in result.output and CIVI_KEY not in result.output


def test_every_problem_is_listed_by_key(world2: World, tmp_path: Path) -> None:
    w = world2
    w.interest_ids["nosuchid00"] = max(w.interest_ids.values()) + 1000
    w.write_config()
    w.mc.add_merge_field(w.list_id, "COUNT", "Count", "number")
    w.mc.add_merge_field(w.list_id, "CITY2", "City")
    result = check(
        w, tmp_path, 'NOPE = "first_name"\nCOUNT = "last_name"\nCITY2 = "address_primary.nosuch"\n'
    )
    assert result.exit_code != 0
    out = " ".join(result.output.split())
    assert "interests.nosuchid00: no such interest" in out
    assert "does not exist" in out, "its group is missing too"
    assert "merge_fields.NOPE: audience" in out and "no merge field NOPE" in out
    assert "merge_fields.COUNT: Mailchimp field COUNT is of type number" in out
    assert "merge_fields.CITY2: CiviCRM has no Contact field 'address_primary.nosuch'" in out


def test_not_a_static_mailing_group(world2: World, tmp_path: Path) -> None:
    w = world2
    first_interest = sorted(w.interest_ids)[0]
    smart = w.civi.add_group("Smart", is_smart=True)
    w.interest_ids[first_interest] = smart
    w.write_config()
    result = check(w, tmp_path)
    out = " ".join(result.output.split())
    assert result.exit_code != 0
    assert f"interests.{first_interest}: CiviCRM group {smart}" in out and "smart group" in out


def test_not_a_mailing_list_group(world2: World, tmp_path: Path) -> None:
    w = world2
    first_interest = sorted(w.interest_ids)[0]
    plain = w.civi.add_group("Access", group_type=["Access Control"])
    w.interest_ids[first_interest] = plain
    w.write_config()
    out = " ".join(check(w, tmp_path).output.split())
    assert f"CiviCRM group {plain} (Access) is not a Mailing List group" in out


def test_a_group_mapped_twice_in_one_audience(world2: World, tmp_path: Path) -> None:
    w = world2
    first, second = sorted(w.interest_ids)
    w.interest_ids[second] = w.interest_ids[first]
    w.write_config()
    result = check(w, tmp_path)
    assert result.exit_code == 2, result.output
    assert "interests" in result.output and str(w.interest_ids[first]) in result.output


def _site_in(world: World, zone: str, configured: str) -> None:
    """Replace the world's CiviCRM by a site whose dates are in `zone`; the config says
    `configured`."""
    world.civi = CiviSim(CIVI_KEY, timezone=zone)
    world.group_id = world.civi.add_group("Newsletter")
    world.write_config()
    text = world.config_path.read_text()
    world.config_path.write_text(text.replace('timezone = "UTC"', f'timezone = "{configured}"'))


def test_config_check_shows_both_clocks(world: World, tmp_path: Path) -> None:
    """DESIGN §2: the zone must be right, and config check shows both clocks."""
    _site_in(world, "America/New_York", "America/New_York")
    result = check(world, tmp_path)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    now = datetime.now(UTC)
    assert "Clocks:" in out

    def shown(label: str) -> datetime:
        found = re.search(label + r" (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", out)
        assert found, out
        return datetime.fromisoformat(found.group(1))

    def near(moment: datetime) -> bool:
        return abs(moment.replace(tzinfo=None) - now.replace(tzinfo=None)) < timedelta(minutes=1)

    # CiviCRM's own clock, in its zone, and as the configured zone reads it; Mailchimp's.
    new_york = now.astimezone(ZoneInfo("America/New_York")).replace(tzinfo=None)
    assert abs(shown("CiviCRM") - new_york) < timedelta(minutes=1)
    assert near(shown('read with timezone = "America/New_York" as'))
    assert near(shown("Mailchimp"))


@pytest.mark.parametrize("configured", ["UTC", "Europe/London", "America/Los_Angeles"])
def test_config_check_catches_a_wrong_time_zone(
    world: World, tmp_path: Path, configured: str
) -> None:
    """Issue 10.9: a New York site configured as another zone reads every CiviCRM date hours
    off, so the wrong side wins; config check says so and which zone CiviCRM is in."""
    _site_in(world, "America/New_York", configured)
    result = check(world, tmp_path)
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert f'civicrm.timezone: timezone = "{configured}" does not match CiviCRM' in out
    offset = datetime.now(ZoneInfo("America/New_York")).strftime("%z")
    assert f"UTC{offset[:3]}:{offset[3:]}" in out, "the offset CiviCRM's clock shows"
    assert '"America/New_York"' in out, "a zone to set instead"


def test_config_check_refuses_plain_http_to_a_remote_host_and_warns_when_allowed(
    world: World, tmp_path: Path
) -> None:
    """Issue 11, point 5. 0.0.0.0 is not a loopback address (it means "any"), but Linux
    connects it to this host, so the simulators answer while the URL counts as remote."""
    mc_server, civi_server = serve_simulators(world.mc, world.civi)
    try:
        text = world.config_path.read_text()
        config = tmp_path / "served.toml"
        remote_civi = civi_server.url.replace("127.0.0.1", "0.0.0.0") + "/civicrm/ajax/api4"
        text = text.replace(MC_URL, mc_server.url + "/3.0").replace(CIVI_URL, remote_civi)

        def run(config_text: str) -> Result:
            config.write_text(config_text)
            config.chmod(0o600)
            return CliRunner().invoke(main, ["config", "check", "--config", str(config)])

        refused = run(text)
        assert refused.exit_code == 2, refused.output
        assert "civicrm.url" in refused.output and "unencrypted" in refused.output
        assert "Config OK" not in refused.output

        allowed = run(text.replace("[civicrm]\n", "[civicrm]\nallow_insecure_http = true\n"))
        assert allowed.exit_code == 0, allowed.output
        out = " ".join(allowed.output.split())
        assert "warning: civicrm.url" in out and "0.0.0.0" in out and "unencrypted" in out
        assert "Config OK" in out
        assert MC_KEY not in allowed.output and CIVI_KEY not in allowed.output

        loopback = run(text.replace(remote_civi, civi_server.url + "/civicrm/ajax/api4"))
        assert loopback.exit_code == 0 and "unencrypted" not in loopback.output
    finally:
        mc_server.stop()
        civi_server.stop()

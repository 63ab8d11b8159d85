"""One `initial-sync` ends in sync (issue 10 item 12): right after it, `status` says in sync
for every audience and a `--since ever` dry run plans no change, on the demo's world and on
other generated worlds. Rows of one contact (several Mailchimp emails) are decided against
the CiviCRM state their siblings' decisions leave, not the state before the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mcsync.budget import Budget
from mcsync.cli import main
from mcsync.config.load import load_config
from mcsync.ops.preview import collect_plan, discard_plans
from mcsync.runner.engine import AudienceResult, sync_audiences
from mcsync.sim.transport import MultiSimTransport
from mcsync.sim.world import CIVICRM_KEY, CIVICRM_SITE_KEY, MAILCHIMP_KEY, SimWorld

MC = "https://mailchimp.sim"
CIVI = "https://civicrm.sim"


class Generated:
    """A generated world (``mcsync.sim.datagen``) in-process, with a config for it."""

    def __init__(self, tmp_path: Path, *, members: int, seed: int, audiences: int = 1):
        self.world = SimWorld.create(
            members=members, seed=seed, audiences=audiences, batch_delay=0.0
        )
        self.transport = MultiSimTransport(
            {"mailchimp.sim": self.world.mailchimp, "civicrm.sim": self.world.civicrm}
        )
        lines = [
            f'state_db = "{tmp_path / "state.sqlite3"}"',
            "[civicrm]",
            f'url = "{CIVI}/civicrm/ajax/api4"',
            f'api_key = "{CIVICRM_KEY}"',
            'timezone = "UTC"',
            f'site_key = "{CIVICRM_SITE_KEY}"',
            "[mailchimp.accounts.main]",
            f'api_key = "{MAILCHIMP_KEY}"',
            f'base_url = "{MC}/3.0"',
        ]
        for spec in self.world.audiences:
            lines += [
                "[[audience]]",
                'account = "main"',
                f'list_id = "{spec.list_id}"',
                f"group_id = {spec.group_id}",
            ]
            if spec.interest_ids:
                lines.append("[audience.interests]")
                lines += [f'"{i}" = {g}' for i, g in spec.interest_ids.items()]
        self.config_path = tmp_path / "mcsync.toml"
        self.config_path.write_text("\n".join(lines) + "\n")
        self.config_path.chmod(0o600)
        self.config = load_config(self.config_path)

    def sync(self, **kwargs: Any) -> list[AudienceResult]:
        results = sync_audiences(
            self.config, budget=Budget(None), transport=self.transport, **kwargs
        )
        for result in results:
            assert result.error is None, result.error
        return results

    def initial_sync(self) -> None:
        """What `initial-sync --yes --allow-mass-changes` runs (the demo's first step)."""
        results = self.sync(since="ever", full=True, allow_mass_changes=True)
        assert all(r.outcome is not None and r.outcome.completed for r in results)

    def status(self) -> list[dict[str, Any]]:
        result = CliRunner().invoke(main, ["status", "--json", "--config", str(self.config_path)])
        assert result.exit_code == 0, result.output
        parsed: list[dict[str, Any]] = json.loads(result.output)
        return parsed

    def dry_run_changes(self) -> list[dict[str, Any]]:
        """The changes `fetch-and-reconcile --since ever --dry-run` plans."""
        results = self.sync(since="ever", dry_run=True, allow_mass_changes=True)
        plan = collect_plan(self.config, results)
        discard_plans(self.config, results)
        return [change for audience in plan["audiences"] for change in audience["changes"]]


WORLDS = [
    pytest.param(2000, 1, 1, id="demo-world"),
    *(pytest.param(1000, seed, 1, id=f"seed-{seed}") for seed in (2, 3, 4, 5, 6, 9)),
    pytest.param(600, 11, 2, id="seed-11-two-audiences"),
]


@pytest.mark.parametrize(("members", "seed", "audiences"), WORLDS)
def test_one_initial_sync_ends_in_sync(
    tmp_path: Path, members: int, seed: int, audiences: int
) -> None:
    generated = Generated(tmp_path, members=members, seed=seed, audiences=audiences)
    generated.initial_sync()
    status = generated.status()
    assert [a["in_sync"] for a in status] == [True] * audiences, [
        (a["list_id"], a["counts"]) for a in status
    ]
    assert generated.dry_run_changes() == []

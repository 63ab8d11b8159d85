"""A ready-made world for the demo, `mcsync simulate`, end-to-end tests and benchmarks: both
simulators with generated data, served on loopback, and an mcsync config that points at them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from mcsync.sim.civicrm import CiviSim
from mcsync.sim.datagen import AudienceSpec, generate
from mcsync.sim.faults import FaultPlan
from mcsync.sim.mailchimp import MailchimpSim
from mcsync.sim.server import SimServer, serve_simulators

# Fake credentials: the simulators accept exactly these.
MAILCHIMP_KEY = "5f0c1d2e3a4b5c6d7e8f9a0b1c2d3e4f-us21"
CIVICRM_KEY = "sim-civicrm-api-key-7d41"
CIVICRM_SITE_KEY = "sim-site-key-19ab"


@dataclass
class SimWorld:
    mailchimp: MailchimpSim
    civicrm: CiviSim
    audiences: list[AudienceSpec] = field(default_factory=list)
    servers: tuple[SimServer, SimServer] | None = None

    @classmethod
    def create(
        cls,
        *,
        members: int = 1000,
        audiences: int = 1,
        seed: int = 1,
        agree: bool = False,
        batch_delay: float = 0.5,
    ) -> SimWorld:
        world = cls(MailchimpSim(batch_delay=batch_delay), CiviSim(CIVICRM_KEY, CIVICRM_SITE_KEY))
        for index in range(audiences):
            world.audiences.append(
                generate(
                    world.mailchimp,
                    world.civicrm,
                    api_key=MAILCHIMP_KEY,
                    members=members,
                    seed=seed + index,
                    agree=agree,
                    list_name=f"Newsletter {index + 1}",
                )
            )
        return world

    def serve(
        self, *, mailchimp_port: int = 0, civicrm_port: int = 0, faults: FaultPlan | None = None
    ) -> SimWorld:
        self.servers = serve_simulators(
            self.mailchimp,
            self.civicrm,
            mailchimp_port=mailchimp_port,
            civicrm_port=civicrm_port,
            faults=faults,
        )
        return self

    def stop(self) -> None:
        if self.servers:
            for server in self.servers:
                server.stop()
            self.servers = None

    @property
    def mailchimp_url(self) -> str:
        assert self.servers, "serve() first"
        return self.servers[0].url + "/3.0"

    @property
    def civicrm_url(self) -> str:
        assert self.servers, "serve() first"
        return self.servers[1].url + "/civicrm/ajax/api4"

    def config_text(self, state_db: str = "mcsync.sqlite3", extra_sync: str = "") -> str:
        lines = [
            f'state_db = "{state_db}"',
            "",
            "[civicrm]",
            f'url = "{self.civicrm_url}"',
            f'api_key = "{CIVICRM_KEY}"',
            f'site_key = "{CIVICRM_SITE_KEY}"',
            f'timezone = "{self.civicrm.timezone}"',
            "",
            "[mailchimp.accounts.main]",
            f'api_key = "{MAILCHIMP_KEY}"',
            f'base_url = "{self.mailchimp_url}"',
            "",
            "[sync]",
            extra_sync,
        ]
        for spec in self.audiences:
            lines += [
                "",
                "[[audience]]",
                'account = "main"',
                f'list_id = "{spec.list_id}"',
                f"group_id = {spec.group_id}",
            ]
            if spec.interest_ids:
                lines.append("[audience.interests]")
                lines += [f'"{i}" = {g}' for i, g in spec.interest_ids.items()]
        return "\n".join(lines) + "\n"

    def write_config(self, path: Path, **kwargs: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.config_text(**kwargs))
        return path

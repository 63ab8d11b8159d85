"""Shared fixtures: isolation from the real environment, and small simulated worlds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from mcsync.budget import Budget
from mcsync.config.load import load_config
from mcsync.config.models import Config
from mcsync.runner.engine import AudienceResult, sync_audiences
from mcsync.sim.civicrm import CiviSim
from mcsync.sim.mailchimp import MailchimpSim
from mcsync.sim.transport import MultiSimTransport

# CI runs the property tests derandomized (HYPOTHESIS_PROFILE=ci in .ci/run) so a landing
# never depends on luck; locally they explore new examples on every run.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

MC_KEY = "0123456789abcdef0123456789abcdef-us21"
CIVI_KEY = "test-civicrm-key-5512"
# https: mcsync refuses plain http to a remote host (the transport is in-process; no TLS runs).
MC_URL = "https://mailchimp.sim/3.0"
CIVI_URL = "https://civicrm.sim/civicrm/ajax/api4"


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's config or writes into the working tree."""
    monkeypatch.delenv("MCSYNC_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)


class World:
    """Both simulators in-process, one audience, and a config pointing at them."""

    def __init__(self, tmp_path: Path, *, interests: int = 0, batch_threshold: int = 200):
        self.now = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
        self.clock_offset = timedelta(0)  # moved by advance_clock: both services' time
        self.mc = MailchimpSim(batch_delay=0.0, clock=self.clock)
        self.civi = CiviSim(CIVI_KEY, clock=self.clock)
        self.list_id = self.mc.add_list(MC_KEY, "Newsletter")
        self.group_id = self.civi.add_group("Newsletter")
        self.interest_ids: dict[str, int] = {}
        if interests:
            category = self.mc.add_interest_category(self.list_id, "Topics")
            for n in range(interests):
                interest = self.mc.add_interest(self.list_id, category, f"Topic {n}")
                self.interest_ids[interest] = self.civi.add_group(f"Topic {n}")
        self.tmp_path = tmp_path
        self.batch_threshold = batch_threshold
        self.transport = MultiSimTransport(
            # By host, any scheme: the Mailchimp simulator's batch result URLs are http.
            {"mailchimp.sim": self.mc, "civicrm.sim": self.civi}
        )
        self.config_path = tmp_path / "mcsync.toml"
        self.write_config()

    def write_config(self, extra: str = "", *, civicrm: str = "") -> None:
        """``extra``: lines for [sync]; ``civicrm``: lines for [civicrm]."""
        interests = "".join(f'"{i}" = {g}\n' for i, g in self.interest_ids.items())
        self.config_path.write_text(
            f'state_db = "state.sqlite3"\n'
            f'[civicrm]\nurl = "{CIVI_URL}"\napi_key = "{CIVI_KEY}"\ntimezone = "UTC"\n'
            f"{civicrm}\n"
            f'[mailchimp.accounts.main]\napi_key = "{MC_KEY}"\nbase_url = "{MC_URL}"\n'
            f"[sync]\nbatch_threshold = {self.batch_threshold}\n{extra}\n"
            f'[[audience]]\naccount = "main"\nlist_id = "{self.list_id}"\n'
            f"group_id = {self.group_id}\n"
            + (f"[audience.interests]\n{interests}" if interests else "")
        )
        self.config_path.chmod(0o600)

    @property
    def config(self) -> Config:
        return load_config(self.config_path)

    def clock(self) -> datetime:
        """Both simulators' time: the real time, moved on by `advance_clock`."""
        return datetime.now(UTC) + self.clock_offset

    def advance_clock(self, **kwargs: float) -> None:
        """Let time pass at both services (hours between cron runs) without sleeping. mcsync's
        own clock is not moved: its CiviCRM windows come from CiviCRM's own dates, and its
        Mailchimp window from its own clock only gets wider when Mailchimp's runs ahead."""
        self.clock_offset += timedelta(**kwargs)

    def ago(self, **kwargs: float) -> datetime:
        return self.clock() - timedelta(**kwargs)

    def person(
        self,
        email: str,
        *,
        mc: str | None = None,
        civi: str | None = None,
        mc_at: datetime | None = None,
        civi_at: datetime | None = None,
        first: str = "",
        last: str = "",
        **flags: Any,
    ) -> int | None:
        """One person: a Mailchimp member with status `mc`, and/or a contact whose
        subscription-group status is `civi` (None: no contact)."""
        if mc is not None:
            self.mc.seed_member(
                self.list_id,
                email,
                mc,
                last_changed=mc_at or self.ago(days=3),
                merge_fields={"FNAME": first, "LNAME": last},
            )
        if civi is None:
            return None
        contact_id = self.civi.add_contact(first, last, **flags)
        self.civi.add_email(contact_id, email)
        if civi != "none":
            self.civi.set_group_status(
                contact_id, self.group_id, civi, when=civi_at or self.ago(days=5)
            )
        return contact_id

    def sync(self, **kwargs: Any) -> list[AudienceResult]:
        budget = kwargs.pop("budget", None) or Budget(None)
        return sync_audiences(self.config, budget=budget, transport=self.transport, **kwargs)

    def mc_status(self, email: str) -> str | None:
        member = self.mc.member(self.list_id, email)
        return member["status"] if member else None

    def civi_status(self, contact_id: int, group_id: int | None = None) -> str | None:
        return self.civi.group_status(contact_id, group_id or self.group_id)

    def writes(self) -> list[tuple[str, str]]:
        """Requests that change something, on either simulator."""
        mc = [
            r
            for r in self.mc.request_log
            if r[0] in ("POST", "PUT", "PATCH", "DELETE") and not r[1].endswith("/batches/")
        ]
        civi = [r for r in self.civi.request_log if not r[1].endswith(".get")]
        return mc + civi


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield World(tmp_path)


@pytest.fixture
def make_world(tmp_path: Path) -> Any:
    def make(**kwargs: Any) -> World:
        return World(tmp_path, **kwargs)

    return make

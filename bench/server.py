"""The benchmark's simulator process: both simulators served on loopback, driven over stdin.

`bench/run.py` starts this script as a child process, so the simulators' CPU time is not
counted in the mcsync process and the two do not share a GIL. Commands arrive as one JSON
object per line on stdin; each answer is one JSON line on stdout.

Commands: ``create`` (generate a world and serve it: an agreeing audience, or with
``mixed`` a first sync's mix), ``latency`` (seconds added to every
response), ``stats`` (requests per API and kind since the last ``stats``), ``mutate`` (churn
on both sides), ``civicrm_only`` (contacts Added to the group with no Mailchimp member),
``counts`` (rows per CiviCRM table and members per status: what a run wrote), ``stop``.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

from mcsync.sim.datagen import generate, mutate
from mcsync.sim.faults import FaultPlan
from mcsync.sim.civicrm import CiviSim
from mcsync.sim.mailchimp import MailchimpSim
from mcsync.sim.world import CIVICRM_KEY, CIVICRM_SITE_KEY, MAILCHIMP_KEY, SimWorld


def request_kind(api: str, method: str, path: str) -> str:
    """A short label per endpoint: `GET members`, `Email.get`..."""
    if api == "civicrm":
        parts = path.rstrip("/").split("/")
        return ".".join(parts[-2:])
    parts = [p for p in path.split("/") if p and p != "3.0"]
    if parts[:1] == ["lists"] and len(parts) >= 3:
        kind = parts[2] if len(parts) == 3 else parts[2] + "/{id}"
    elif parts[:1] == ["batches"]:
        kind = "batches" if len(parts) == 1 else "batches/{id}"
    else:
        kind = parts[0] if parts else "/"
    return f"{method} {kind}"


class Bench:
    """The world under test and the request-log positions of the last `stats`."""

    def __init__(self) -> None:
        self.world: SimWorld | None = None
        self.faults = FaultPlan(latency=0.0)
        self.seen = {"mailchimp": 0, "civicrm": 0}
        self.clock_offset = timedelta(0)

    def clock(self) -> datetime:
        return datetime.now(timezone.utc) - self.clock_offset

    def create(self, members: int, seed: int, mixed: bool = False) -> dict[str, Any]:
        started = time.perf_counter()
        # The people were created long ago: generate with both clocks a day behind, so the
        # contacts' modified dates and the members' change times lie before the first run.
        self.clock_offset = timedelta(days=1)
        anchor = self.clock() - timedelta(hours=1)
        world = SimWorld(
            MailchimpSim(clock=self.clock, batch_delay=0.2),
            CiviSim(CIVICRM_KEY, CIVICRM_SITE_KEY, clock=self.clock),
        )
        world.audiences.append(
            # mixed: 72% on both sides (mostly agreeing; conflicts, cleaned, compliance and
            # several emails among them), 14% only at Mailchimp, 14% only in CiviCRM.
            generate(world.mailchimp, world.civicrm, api_key=MAILCHIMP_KEY, members=members,
                     seed=seed, agree=not mixed, overlap=0.72, anchor=anchor)  # fmt: skip
        )
        # Real contacts were edited over the years, not all at one instant: spread their
        # modified dates over two years (seeding stamps them all with the seeding time).
        world.civicrm.query(
            "UPDATE contact SET modified_date = datetime(modified_date, "
            "'-' || (id % 730) || ' days', '-' || (id % 86400) || ' seconds')"
        )
        generated = time.perf_counter() - started
        self.clock_offset = timedelta(0)
        world.serve(faults=self.faults)
        self.world = world
        self.seen = {"mailchimp": 0, "civicrm": 0}
        return {
            "seconds": round(generated, 2),
            "config": world.config_text(state_db="@STATE_DB@"),
            "mailchimp_url": world.mailchimp_url,
            "civicrm_url": world.civicrm_url,
            "list_id": world.audiences[0].list_id,
            "group_id": world.audiences[0].group_id,
            "people": world.audiences[0].counts,
        }

    def stats(self) -> dict[str, Any]:
        assert self.world is not None
        counts: dict[str, dict[str, int]] = {}
        for api, sim in (("mailchimp", self.world.mailchimp), ("civicrm", self.world.civicrm)):
            with sim.lock:
                log = sim.request_log[self.seen[api]:]
                self.seen[api] = len(sim.request_log)
            counts[api] = dict(Counter(request_kind(api, m, p) for m, p in log))
        return counts

    def counts(self) -> dict[str, int]:
        """Rows per CiviCRM table and members per Mailchimp status, to tell what a run wrote."""
        assert self.world is not None
        found: dict[str, int] = {}
        for table in ("contact", "email", "group_contact", "subscription_history"):
            found[table] = self.world.civicrm.query(f"SELECT count(*) AS n FROM {table}")[0]["n"]
        for member in self.world.mailchimp.members(self.world.audiences[0].list_id):
            key = f"mc_{member['status']}"
            found[key] = found.get(key, 0) + 1
        return found

    def mutate(self, share: float, seed: int) -> dict[str, int]:
        assert self.world is not None
        return mutate(self.world.mailchimp, self.world.civicrm, self.world.audiences[0],
                      share=share, seed=seed)  # fmt: skip

    def civicrm_only(self, count: int) -> dict[str, Any]:
        """New contacts Added to the audience's group (and no interests) with no member."""
        assert self.world is not None
        spec = self.world.audiences[0]
        rows = (
            {"first_name": "Newcomer", "last_name": f"N{n}",
             "email": f"newcomer{n}@bench.example.org", "groups": {spec.group_id: "Added"}}
            for n in range(count)
        )  # fmt: skip
        ids = self.world.civicrm.seed_contacts(rows)
        return {"contacts": len(ids)}


def main() -> None:
    bench = Bench()
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        name = command.pop("cmd")
        answer: Any
        if name == "create":
            answer = bench.create(
                command["members"], command.get("seed", 1), bool(command.get("mixed"))
            )
        elif name == "latency":
            bench.faults.latency = float(command["seconds"])
            answer = {"latency": bench.faults.latency}
        elif name == "stats":
            answer = bench.stats()
        elif name == "mutate":
            answer = bench.mutate(command["share"], command.get("seed", 7))
        elif name == "counts":
            answer = bench.counts()
        elif name == "civicrm_only":
            answer = bench.civicrm_only(command["count"])
        elif name == "stop":
            if bench.world is not None:
                bench.world.stop()
            print(json.dumps({"stopped": True}), flush=True)
            return
        else:
            answer = {"error": f"unknown command {name!r}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()

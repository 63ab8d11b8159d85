"""`mcsync demo` and `mcsync simulate`: real syncs against the built-in simulators.

The demo runs the real `mcsync` command in child processes, exactly as cron would, against
simulators served on loopback by this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mcsync.ops.output import Output


def _mcsync(config: Path, *args: str) -> int:
    env = {**os.environ, "MCSYNC_CONFIG": str(config)}
    command = [sys.executable, "-m", "mcsync", *args]
    return subprocess.run(command, env=env, check=False).returncode


def run_demo(out: Output, *, members: int, workdir: Path | None) -> int:
    from mcsync.sim.datagen import mutate
    from mcsync.sim.world import SimWorld

    with tempfile.TemporaryDirectory(prefix="mcsync-demo-") as tmp:
        base = workdir or Path(tmp)
        out.always(f"Generating {members} people on each side and starting the simulators...")
        world = SimWorld.create(members=members, batch_delay=0.3).serve()
        try:
            config = world.write_config(base / "mcsync.toml")
            out.always(f"Mailchimp simulator: {world.mailchimp_url}")
            out.always(f"CiviCRM simulator:   {world.civicrm_url}")
            steps: list[tuple[str, list[str]]] = [
                ("Checking the configuration", ["config", "check"]),
                ("Discovering audiences and groups", ["discover"]),
                # Generated data disagrees a lot on purpose, so the first sync removes more
                # than the brake's 10%: say so explicitly, as an operator would.
                ("Initial sync", ["initial-sync", "--yes", "--allow-mass-changes", "-v"]),
                ("A cron run right after (nothing should change)", ["fetch-and-reconcile", "-v"]),
            ]
            for title, args in steps:
                out.always(f"\n== {title}: mcsync {' '.join(args)}")
                code = _mcsync(config, *args)
                if code:
                    out.error(f"mcsync {' '.join(args)} exited {code}")
                    return code
            spec = world.audiences[0]
            time.sleep(1.1)  # so changes made now are later than the last run, to the second
            changed = mutate(world.mailchimp, world.civicrm, spec, share=0.02, seed=7)
            out.always(f"\n== People change their minds on both sides: {changed}")
            for title, args in [
                ("A cron run picks the changes up", ["fetch-and-reconcile", "-v"]),
                ("Status", ["status"]),
                ("Rows that cannot sync, and why", ["failures"]),
            ]:
                out.always(f"\n== {title}: mcsync {' '.join(args)}")
                code = _mcsync(config, *args)
                if code:
                    out.error(f"mcsync {' '.join(args)} exited {code}")
                    return code
            out.always(f"\nDemo complete. Config and staging DB were in {base}.")
            return 0
        finally:
            world.stop()


def serve_forever(out: Output, *, port: int, members: int, config_path: Path | None) -> None:
    from mcsync.sim.world import CIVICRM_KEY, MAILCHIMP_KEY, SimWorld

    world = SimWorld.create(members=members).serve(mailchimp_port=port, civicrm_port=port + 1)
    out.always(f"Mailchimp simulator on {world.mailchimp_url} (API key {MAILCHIMP_KEY})")
    out.always(f"CiviCRM simulator on {world.civicrm_url} (API key {CIVICRM_KEY})")
    for spec in world.audiences:
        out.always(
            f"Audience {spec.list_id} <-> group {spec.group_id}; interests {spec.interest_ids}"
        )
    if config_path:
        world.write_config(config_path)
        out.always(f"Wrote a config for these simulators to {config_path}")
    out.always("Press Ctrl-C to stop.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        world.stop()

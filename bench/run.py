"""`make bench`: the real `mcsync` CLI against simulators in their own process, at scale.

For each size (BENCH_SIZES, default 10000,100000) a simulator process (`bench/server.py`)
generates an already-agreeing audience and serves it on loopback; the scenarios then run
`python -m mcsync` as a subprocess and record its wall time, the HTTP requests each simulator
saw, and the peak RSS of the mcsync process itself (its own VmHWM, reported at exit). The floors are measured in the same
run. A separate micro-benchmark times the match stage's SQL over 50,000 staged emails.
Nothing here is a test: it prints a table and the targets it checks.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from match_bench import match_50k  # noqa: E402

from mcsync.stages.fetch_civicrm import EMAIL_SELECT  # noqa: E402
from mcsync.api.mailchimp import MEMBER_FIELDS  # noqa: E402
from mcsync.sim.world import CIVICRM_KEY, CIVICRM_SITE_KEY, MAILCHIMP_KEY  # noqa: E402

LATENCY = 0.15
MC_CONCURRENCY = 10  # sync.max_connections default: Mailchimp's per-account cap
CIVI_CONCURRENCY = 4  # the CiviCRM client's max_connections
MAX_TIME = 10.0  # the budget scenario's --max-time
# BENCH_SKIP=latency leaves out the slowest scenario (for quick 1M runs); push, budget and
# mixed can be left out the same way (comma-separated).
SKIP = {s for s in os.environ.get("BENCH_SKIP", "").split(",") if s}


@dataclass
class Result:
    size: int
    scenario: str
    seconds: float
    requests: dict[str, dict[str, int]]
    rss_mb: float
    floor: float | None = None
    completed: bool = True
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def total(self, api: str) -> int:
        return sum(self.requests.get(api, {}).values())


class SimProcess:
    """The simulator child process and its line-based JSON control channel."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "server.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip

    def call(self, cmd: str, **args: Any) -> Any:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"simulator process died during {cmd}")
        return json.loads(line)

    def stop(self) -> None:
        try:
            self.call("stop")
        except (RuntimeError, BrokenPipeError):
            pass
        self.proc.wait(timeout=30)


def run_mcsync(config: Path, *args: str, db: Path | None = None) -> tuple[float, float, int]:
    """Run the CLI; return (wall seconds, peak RSS in MB, exit code) of that process.

    The peak is the mcsync process's own (``VmHWM``, which it writes at exit: see
    ``mcsync.ops.peak``), not ``wait4``'s ``ru_maxrss``, which on Linux carries the peak of
    the process that started it (this runner) across fork and exec. With ``db``, the resident
    set is also sampled every 0.2 s with the stage the staging DB shows, into
    ``STAGE_RSS`` (the most seen per stage: where the memory goes)."""
    peak_file = config.parent / f"{config.stem}.peak"
    peak_file.unlink(missing_ok=True)
    env = {**os.environ, "MCSYNC_CONFIG": str(config), "MCSYNC_PEAK_RSS_FILE": str(peak_file)}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcsync", *args, "-q"], env=env, cwd=config.parent
    )
    STAGE_RSS.clear()
    while db is not None:
        pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        _sample_stage_rss(proc.pid, db)
        time.sleep(0.2)
    else:
        _, status, _ = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    try:
        peak_kib = int(peak_file.read_text())
    except (OSError, ValueError):
        peak_kib = 0  # killed before it could write: shown as 0
    return seconds, peak_kib / 1024, proc.returncode


STAGE_RSS: dict[str, float] = {}


def _sample_stage_rss(pid: int, db: Path) -> None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines()
                   if line.startswith("VmRSS:")) / 1024  # fmt: skip
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)
        try:
            row = conn.execute("SELECT stage FROM audience_state").fetchone()
        finally:
            conn.close()
    except (OSError, StopIteration, sqlite3.Error):
        return
    stage = row[0] if row else "start"
    STAGE_RSS[stage] = max(STAGE_RSS.get(stage, 0.0), rss)


def run_stage(db: Path, list_id: str) -> str:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT stage FROM audience_state WHERE list_id = ?", (list_id,))
        found = row.fetchone()
    return found[0] if found else "missing"


def floor_full(mc_url: str, civi_url: str, list_id: str, group_ids: list[int]) -> dict[str, Any]:
    """A plain sequential httpx loop over the pages a full run must read at the least."""
    started = time.perf_counter()
    pages = {"mailchimp": 0, "civicrm": 0}
    with httpx.Client(timeout=60) as client:
        offset, total = 0, 1
        fields = ",".join(["total_items", *(f"members.{f}" for f in MEMBER_FIELDS)])
        while offset < total:
            response = client.get(
                f"{mc_url}/lists/{list_id}/members",
                params={"count": 1000, "offset": offset, "fields": fields,
                        "sort_field": "last_changed", "sort_dir": "DESC"},
                auth=("bench", MAILCHIMP_KEY),
            )  # fmt: skip
            total = response.json()["total_items"]
            offset += 1000
            pages["mailchimp"] += 1
        headers = {"X-Civi-Auth": f"Bearer {CIVICRM_KEY}", "X-Civi-Key": CIVICRM_SITE_KEY,
                   "X-Requested-With": "XMLHttpRequest"}  # fmt: skip
        group_select = ["id", "contact_id", "group_id", "status", "contact_id.is_deleted",
                        "contact_id.is_deceased", "contact_id.do_not_email",
                        "contact_id.is_opt_out", "contact_id.first_name",
                        "contact_id.last_name", "contact_id.modified_date"]  # fmt: skip
        for entity, select, where in (
            ("GroupContact", group_select, [["group_id", "IN", group_ids]]),
            ("Email", EMAIL_SELECT, [["contact_id.is_deleted", "=", False]]),
        ):
            last = 0
            while True:
                params = {"select": select, "where": [*where, ["id", ">", last]],
                          "orderBy": {"id": "ASC"}, "limit": 5000}  # fmt: skip
                response = client.post(f"{civi_url}/{entity}/get", headers=headers,
                                       data={"params": json.dumps(params)})  # fmt: skip
                values = response.json()["values"]
                pages["civicrm"] += 1
                if len(values) < 5000:
                    break
                last = values[-1]["id"]
    seconds = time.perf_counter() - started
    latency_floor = LATENCY * (pages["mailchimp"] / MC_CONCURRENCY
                               + pages["civicrm"] / CIVI_CONCURRENCY)  # fmt: skip
    return {"seconds": seconds, "pages": pages, "latency_floor": latency_floor}


def bench_size(size: int, workdir: Path, largest: bool) -> list[Result]:
    results: list[Result] = []
    sim = SimProcess()
    try:
        print(f"-- {size:,} members: generating...", file=sys.stderr, flush=True)
        world = sim.call("create", members=size)
        print(f"   generated in {world['seconds']:.1f} s", file=sys.stderr, flush=True)
        list_id = world["list_id"]
        group_ids = [world["group_id"], *sorted(set(_interest_groups(world["config"])))]

        def config_for(name: str) -> tuple[Path, Path]:
            db = workdir / f"{size}-{name}.sqlite3"
            path = workdir / f"{size}-{name}.toml"
            path.write_text(world["config"].replace("@STATE_DB@", str(db)))
            path.chmod(0o600)
            return path, db

        def scenario(name: str, config: Path, db: Path, *args: str, floor: float | None = None,
                     note: str = "") -> Result:  # fmt: skip
            print(f"   {name}...", file=sys.stderr, flush=True)
            sim.call("stats")
            seconds, rss, code = run_mcsync(config, *args, db=db)
            stage = run_stage(db, list_id)
            result = Result(size, name, seconds, sim.call("stats"), rss, floor,
                            completed=code == 0 and stage == "idle", note=note)  # fmt: skip
            result.extra["stage_rss"] = dict(STAGE_RSS)
            _progress_line(result)
            if code:
                result.note = f"exit {code} " + note
            elif stage != "idle":
                result.note = f"stopped at {stage} " + note
            results.append(result)
            return result

        floor = floor_full(world["mailchimp_url"], world["civicrm_url"], list_id, group_ids)
        sim.call("stats")
        long = ("--max-time", "86400")
        main_config, main_db = config_for("main")
        full = scenario("full", main_config, main_db, "fetch-and-reconcile", "--since", "ever",
                        *long, floor=floor["seconds"])  # fmt: skip
        full.extra["floor_pages"] = floor["pages"]

        if "latency" not in SKIP:
            sim.call("latency", seconds=LATENCY)
            latency_config, latency_db = config_for("latency")
            scenario("latency", latency_config, latency_db, "fetch-and-reconcile", "--since",
                     "ever", *long, floor=floor["latency_floor"])  # fmt: skip
            sim.call("latency", seconds=0)

        scenario("no-change", main_config, main_db, "fetch-and-reconcile", *long)

        time.sleep(1.1)  # changes made now are later than the last run, to the second
        changed = sim.call("mutate", share=0.01, seed=7)
        incremental = scenario("incremental", main_config, main_db, "fetch-and-reconcile",
                               *long, note=_changed_note(changed))  # fmt: skip
        incremental.extra["changed"] = sum(changed.values())

        if "push" not in SKIP:
            time.sleep(1.1)
            added = sim.call("civicrm_only", count=size // 10)["contacts"]
            push = scenario("push", main_config, main_db, "fetch-and-reconcile", *long,
                            note=f"{added} contacts to subscribe")  # fmt: skip
            push.extra["written"] = added

        if largest and "budget" not in SKIP:
            budget_config, budget_db = config_for("budget")
            scenario("budget", budget_config, budget_db, "fetch-and-reconcile", "--since",
                     "ever", "--max-time", str(MAX_TIME))  # fmt: skip
            results[-1].completed = results[-1].seconds <= MAX_TIME + 3
    finally:
        sim.stop()
    if "mixed" not in SKIP:
        results.extend(bench_mixed(size, workdir))
    return results


def bench_mixed(size: int, workdir: Path) -> list[Result]:
    """A first sync of a mixed world (`initial-sync --yes`), then the cron run after it."""
    results: list[Result] = []
    sim = SimProcess()
    try:
        print(f"-- {size:,} members, mixed: generating...", file=sys.stderr, flush=True)
        world = sim.call("create", members=size, mixed=True)
        print(f"   generated in {world['seconds']:.1f} s", file=sys.stderr, flush=True)
        list_id = world["list_id"]
        db = workdir / f"{size}-mixed.sqlite3"
        config = workdir / f"{size}-mixed.toml"
        config.write_text(world["config"].replace("@STATE_DB@", str(db)))
        config.chmod(0o600)

        def scenario(name: str, *args: str) -> Result:
            print(f"   {name}...", file=sys.stderr, flush=True)
            sim.call("stats")
            before = sim.call("counts")
            seconds, rss, code = run_mcsync(config, *args, "--max-time", "86400", db=db)
            stage = run_stage(db, list_id)
            result = Result(size, name, seconds, sim.call("stats"), rss,
                            completed=code == 0 and stage == "idle")  # fmt: skip
            result.extra["stage_rss"] = dict(STAGE_RSS)
            _progress_line(result)
            after = sim.call("counts")
            result.extra["civi_written"] = sum(
                after[t] - before[t] for t in ("contact", "email", "subscription_history")
            )
            result.extra["mc_written"] = _mailchimp_writes(db)
            result.note = _counts_note(before, after)
            if code:
                result.note = f"exit {code} " + result.note
            elif stage != "idle":
                result.note = f"stopped at {stage} " + result.note
            results.append(result)
            return result

        scenario("initial-mixed", "initial-sync", "--yes")
        time.sleep(1.1)  # the cron run starts in a later second than the initial sync ended
        done = _mailchimp_writes(db)
        cron = scenario("first-cron", "fetch-and-reconcile")
        cron.extra["mc_written"] -= done
    finally:
        sim.stop()
    return results


def _progress_line(r: Result) -> None:
    """Each figure as soon as it is known (a long 1M run may be cut short)."""
    print(f"      {r.seconds:.1f} s, {r.total('mailchimp')} + {r.total('civicrm')} requests, "
          f"{r.rss_mb:.0f} MB, by stage {r.extra.get('stage_rss')}", file=sys.stderr,
          flush=True)  # fmt: skip


def _mailchimp_writes(db: Path) -> int:
    """Member writes Mailchimp applied so far (the staging DB's done updates)."""
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM updates WHERE state = 'done'").fetchone()[0])


def _counts_note(before: dict[str, int], after: dict[str, int]) -> str:
    changed = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(before) | set(after))}
    return ", ".join(f"{k} {v:+}" for k, v in changed.items() if v)


def _interest_groups(config: str) -> list[int]:
    after = config.split("[audience.interests]", 1)[1] if "[audience.interests]" in config else ""
    return [int(line.split("=")[1]) for line in after.splitlines() if "=" in line]


def _changed_note(changed: dict[str, int]) -> str:
    return ", ".join(f"{k.replace('mailchimp', 'mc').replace('civicrm', 'civi')} {v}"
                     for k, v in sorted(changed.items()))  # fmt: skip


def verdicts(results: list[Result]) -> list[str]:
    """Each target of issue 7 that this run can judge, as 'met'/'NOT met' lines."""
    lines: list[str] = []
    by = {(r.size, r.scenario): r for r in results}
    sizes = sorted({r.size for r in results})

    def line(ok: bool, text: str) -> None:
        lines.append(f"[{'met' if ok else 'NOT met'}] {text}")

    for size in sizes:
        full, lat = by.get((size, "full")), by.get((size, "latency"))
        if full and full.floor:
            ratio = full.seconds / full.floor
            line(ratio <= 1.5 or size < 100_000,
                 f"{size:,} full: {ratio:.2f} x floor (<= 1.5 at 100k and 1M)")
        if lat and lat.floor:
            line(lat.seconds / lat.floor <= 1.3,
                 f"{size:,} latency: {lat.seconds / lat.floor:.2f} x floor (<= 1.3)")
        if lat and full:
            overhead = lat.seconds - full.seconds
            mc, civi = lat.total("mailchimp"), lat.total("civicrm")
            allowed = 1.3 * LATENCY * (mc / MC_CONCURRENCY + civi / CIVI_CONCURRENCY)
            line(overhead <= allowed,
                 f"{size:,} latency overhead: wall(latency) - wall(full) = {lat.seconds:.1f} - "
                 f"{full.seconds:.1f} = {overhead:.1f} s <= 1.3 x (requests x latency / "
                 f"concurrency) = 1.3 x ({mc} x {LATENCY} / {MC_CONCURRENCY} + {civi} x "
                 f"{LATENCY} / {CIVI_CONCURRENCY}) = {allowed:.1f} s")  # fmt: skip
        inc = by.get((size, "incremental"))
        if inc and full:
            requests = inc.total("mailchimp") + inc.total("civicrm")
            limit = 2 * inc.extra["changed"] / 1000 + 20
            line(requests <= limit, f"{size:,} incremental: {requests} requests (<= {limit:.1f})")
            line(inc.seconds <= 0.1 * full.seconds,
                 f"{size:,} incremental: {inc.seconds / full.seconds:.1%} of full (<= 10%)")
        nochange = by.get((size, "no-change"))
        if nochange and full:
            most = max(nochange.total("mailchimp"), nochange.total("civicrm"))
            line(most <= 10, f"{size:,} no-change: {most} requests on the busier API (<= 10)")
            if size >= 1_000_000:
                line(nochange.seconds <= 0.03 * full.seconds,
                     f"{size:,} no-change: {nochange.seconds / full.seconds:.1%} of full (<= 3%)")
        push = by.get((size, "push"))
        if push:
            writes = sum(n for k, n in push.requests.get("mailchimp", {}).items()
                         if k.startswith(("POST", "PUT", "PATCH")))  # fmt: skip
            allowed = max(1, -(-push.extra["written"] // 500))
            line(writes <= allowed,
                 f"{size:,} push: {writes} write requests for {push.extra['written']} members "
                 f"(<= {allowed}, plus polling)")
        initial, cron = by.get((size, "initial-mixed")), by.get((size, "first-cron"))
        if initial and full:
            line(initial.seconds <= 2 * full.seconds,
                 f"{size:,} initial-mixed: {initial.seconds:.1f} s = "
                 f"{initial.seconds / full.seconds:.2f} x the agreeing full re-read (<= 2)")
            mc_writes = _write_requests(initial, "mailchimp")
            civi_writes = _write_requests(initial, "civicrm")
            mc_allowed = max(1, -(-initial.extra["mc_written"] // 500))
            civi_allowed = max(1, -(-initial.extra["civi_written"] // 500))
            line(mc_writes <= mc_allowed and civi_writes <= civi_allowed,
                 f"{size:,} initial-mixed: write requests Mailchimp {mc_writes} for "
                 f"{initial.extra['mc_written']} members (<= {mc_allowed}), CiviCRM "
                 f"{civi_writes} for {initial.extra['civi_written']} records (<= {civi_allowed})"
                 )  # fmt: skip
        if initial and cron:
            line(cron.seconds <= 0.05 * initial.seconds,
                 f"{size:,} first-cron: {cron.seconds:.1f} s = "
                 f"{cron.seconds / initial.seconds:.1%} of the initial sync (<= 5%)")
            most = max(cron.total("mailchimp"), cron.total("civicrm"))
            line(most <= 10, f"{size:,} first-cron: {cron.total('mailchimp')} + "
                             f"{cron.total('civicrm')} requests (<= 10 per API, nothing "
                             f"changed since)")  # fmt: skip
        budget = by.get((size, "budget"))
        if budget:
            line(budget.seconds <= MAX_TIME + 3,
                 f"{size:,} budget: exited after {budget.seconds:.1f} s (<= {MAX_TIME + 3:.0f})")
    for size in sizes:
        peak = max(r.rss_mb for r in results if r.size == size)
        if size >= 100_000:
            line(peak <= 250, f"{size:,} peak RSS {peak:.0f} MB, the most of any scenario "
                              f"(<= 250)")  # fmt: skip
    if 1_000_000 in sizes:
        big = by.get((1_000_000, "full"))
        mid = by.get((100_000, "full"))
        if big:
            peak = max(r.rss_mb for r in results if r.size == 1_000_000)
            line(peak <= 250, f"1M peak RSS {peak:.0f} MB (<= 250)")
            if mid:
                mid_peak = max(r.rss_mb for r in results if r.size == 100_000)
                line(peak <= 2 * mid_peak, f"RSS(1M) {peak:.0f} <= 2 x RSS(100k) {mid_peak:.0f}")
    return lines


def _write_requests(result: Result, api: str) -> int:
    """Requests that write: Mailchimp POST/PUT/PATCH (batch polls are GETs), CiviCRM
    save/create/update/delete."""
    kinds = result.requests.get(api, {})
    if api == "mailchimp":
        return sum(n for k, n in kinds.items() if k.startswith(("POST", "PUT", "PATCH")))
    return sum(n for k, n in kinds.items()
               if k.endswith((".save", ".create", ".update", ".delete")))  # fmt: skip


def print_table(results: list[Result], match: dict[str, Any]) -> None:
    header = (f"{'size':>9} {'scenario':<16} {'wall s':>8} {'floor s':>8} {'ratio':>6} "
              f"{'MC req':>7} {'Civi req':>8} {'RSS MB':>7}  requests by kind / note")  # fmt: skip
    print(header)
    print("-" * len(header))
    for r in results:
        floor = f"{r.floor:8.2f}" if r.floor else f"{'':>8}"
        ratio = f"{r.seconds / r.floor:6.2f}" if r.floor else f"{'':>6}"
        kinds = "; ".join(
            f"{k} {n}" for api in ("mailchimp", "civicrm")
            for k, n in sorted(r.requests.get(api, {}).items())
        )  # fmt: skip
        note = (r.note + (" | " if r.note else "") if r.note else "") + kinds
        if not r.completed:
            note = "INCOMPLETE " + note
        print(f"{r.size:>9,} {r.scenario:<16} {r.seconds:8.2f} {floor} {ratio} "
              f"{r.total('mailchimp'):>7} {r.total('civicrm'):>8} {r.rss_mb:>7.0f}  {note}")
    print()
    print("resident set by stage, sampled every 0.2 s (MB; the three largest per scenario):")
    for r in results:
        stages = sorted(r.extra.get("stage_rss", {}).items(), key=lambda kv: -kv[1])[:3]
        if stages:
            print(f"{r.size:>9,} {r.scenario:<16} "
                  + ", ".join(f"{stage} {mb:.0f}" for stage, mb in stages))  # fmt: skip
    print()
    print(f"match 50,000 Mailchimp emails to contacts (assign_matches SQL): "
          f"{match['seconds']:.3f} s over {match['contacts']:,} staged contacts "
          f"(target <= 0.5 s)")  # fmt: skip


def main() -> int:
    sizes = [int(s) for s in os.environ.get("BENCH_SIZES", "10000,100000").split(",") if s]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="mcsync-bench-") as tmp:
        for size in sizes:
            results.extend(bench_size(size, Path(tmp), largest=size == max(sizes)))
        match = match_50k(Path(tmp) / "match.sqlite3")
    print()
    print_table(results, match)
    print()
    for text in verdicts(results) + [
        f"[{'met' if match['seconds'] <= 0.5 else 'NOT met'}] match 50,000 emails: "
        f"{match['seconds']:.3f} s (<= 0.5)"
    ]:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The cron run right after a first sync costs little (issue 12): nothing changed since the
first sync, so the run must not read back or decide again what that sync wrote itself.

Pinned on a small generated world (a first sync's mix: people on both sides, only at
Mailchimp, only in CiviCRM), with CiviCRM's id lists cut to 20 ids a request so that reading
back the contacts the first sync created shows in the request count as it does at scale.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from test_fixed_point import Generated

from mcsync.stages import fetch_civicrm


def _requests(generated: Generated, since: dict[str, int]) -> dict[str, Counter[str]]:
    found: dict[str, Counter[str]] = {}
    for api, sim in (
        ("mailchimp", generated.world.mailchimp),
        ("civicrm", generated.world.civicrm),
    ):
        found[api] = Counter(
            f"{method} {path.rsplit('/', 1)[-1] if api == 'mailchimp' else path}"
            for method, path in sim.request_log[since[api] :]
        )
    return found


def test_the_cron_run_after_a_first_sync_reads_back_nothing_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch_civicrm, "IN_CHUNK", 20)
    generated = Generated(tmp_path, members=600, seed=1)
    # Real contacts were last edited over the years, not all at the instant of seeding.
    generated.world.civicrm.query(
        "UPDATE contact SET modified_date = datetime(modified_date, '-' || (id % 730) || ' days'"
        ", '-' || (id % 86400) || ' seconds'), created_date = datetime(created_date, '-800 days')"
    )
    generated.initial_sync()
    created = generated.world.civicrm.query(
        "SELECT count(*) AS n FROM contact WHERE source = 'mcsync'"
    )[0]["n"]
    assert created > 40  # more than two id lists' worth
    since = {
        "mailchimp": len(generated.world.mailchimp.request_log),
        "civicrm": len(generated.world.civicrm.request_log),
    }
    generated.sync()
    requests = _requests(generated, since)
    totals = {api: sum(kinds.values()) for api, kinds in requests.items()}
    # Mailchimp: the window's one page and the archived members. CiviCRM: the run's marks
    # and group check, the history after the bookmark, the modified contacts, and the
    # emails of those mcsync did not create (it used to read back all it created: 12).
    assert totals == {"mailchimp": 2, "civicrm": 9}, requests
    assert requests["civicrm"]["POST Email.get"] == 3, requests

"""`abort` and an undone dry run drop a plan by one rule (`RowStore.discarded_by_abort`, via
`drop_plan`): on the same staged data, both send back to `todo` the same rows, keep the same
expectations and the same CiviCRM writes (a followed address change is a fact and stays),
and neither loses a row's facts. They differ only in what happens to the Mailchimp updates
(abort marks them failed or aborted; a dry run deletes the ones it queued).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from test_settle_twins import GROUP, LIST, T0, Scenario, scenarios, stage

from mcsync.ops.abort import ABORTED
from mcsync.ops.preview import discard_plan
from mcsync.store.database import Staging, iso
from mcsync.store.states import RowState


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Staging, Staging]]:
    folder = Path(tmp_path_factory.mktemp("drop_plan"))
    first, second = Staging(folder / "abort.sqlite3"), Staging(folder / "dry.sqlite3")
    yield first, second
    first.close()
    second.close()


def snapshot(staging: Staging) -> tuple[list[Any], list[Any]]:
    rows = staging.conn.execute("SELECT * FROM rows ORDER BY id").fetchall()
    writes = staging.conn.execute("SELECT * FROM civi_writes ORDER BY id").fetchall()
    return [tuple(r) for r in rows], [tuple(w) for w in writes]


def begin_run(staging: Staging) -> None:
    staging.ensure_audience(LIST, GROUP, "main")
    with staging.atomic():
        staging.set_state(LIST, stage="push_civicrm", run_started=iso(T0))


@settings(deadline=None, max_examples=150)
@given(scenario=scenarios(busy=True))
def test_abort_and_an_undone_dry_run_send_back_the_same_rows(
    pair: tuple[Staging, Staging], scenario: Scenario
) -> None:
    by_abort, by_dry_run = pair
    for staging in pair:
        stage(staging, scenario)
        begin_run(staging)
    before = {r[0]: r for r in snapshot(by_abort)[0]}
    by_abort.abort_plan(LIST, ABORTED, iso(T0) or "")
    discard_plan(by_dry_run, LIST)
    assert snapshot(by_abort) == snapshot(by_dry_run)
    rows, writes = snapshot(by_abort)
    columns = [d[1] for d in by_abort.conn.execute("PRAGMA table_info(rows)")]
    status = columns.index("sync_status")
    for row in rows:
        old = before[row[0]]
        # Only the state and the expectation change; every fact about the row is kept.
        unchanged = [
            i for i, name in enumerate(columns) if name not in ("sync_status", "mc_expected")
        ]
        assert [row[i] for i in unchanged] == [old[i] for i in unchanged]
        if row[status] != old[status]:
            assert row[status] == RowState.TODO
        if row[1] == LIST and old[status] in (RowState.LIVE, RowState.FAIL):
            assert row[status] == RowState.TODO  # every plan-bound or failed row is decided again
    kept = [(w["kind"], w["contact_id"]) for w in scenario.civi_writes if w["kind"] == "email"]
    assert [(w[2], w[3]) for w in writes] == kept  # followed address changes stay

"""Micro-benchmark: the match stage's set-based SQL (`mcsync.stages.match.assign_matches`)
matching 50,000 staged Mailchimp emails to staged CiviCRM contacts, in the stage's own batch size."""

from __future__ import annotations

import random
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mcsync.rules.addresses import fold_email
from mcsync.stages.fetch_civicrm import IN_CHUNK
from mcsync.stages.match import assign_matches
from mcsync.store.database import Staging

LIST_ID = "benchlist"
GROUP_ID = 1


def fill(staging: Staging, members: int, seed: int = 3) -> int:
    """Contacts with emails (2% shared by a second contact, 5% mixed case at Mailchimp),
    group status for 80% of them, and one unmatched row per Mailchimp member."""
    rng = random.Random(seed)
    contacts: list[tuple[Any, ...]] = []
    emails: list[tuple[Any, ...]] = []
    groups: list[tuple[Any, ...]] = []
    rows: list[tuple[Any, ...]] = []
    next_contact = 1
    for n in range(members):
        address = f"person{n}@example.org"
        owners = 2 if rng.random() < 0.02 else 1
        for _ in range(owners):
            contacts.append((next_contact, 1 if rng.random() < 0.01 else 0))
            emails.append((next_contact, next_contact, address, fold_email(address)))
            if rng.random() < 0.8:
                status = "Added" if rng.random() < 0.9 else "Removed"
                groups.append((next_contact, GROUP_ID, status))
            next_contact += 1
        mc_email = address.upper() if rng.random() < 0.05 else address
        rows.append((LIST_ID, f"hash{n}", mc_email, "subscribed"))
    with staging.atomic():
        staging.conn.executemany(
            "INSERT INTO contacts (contact_id, is_deleted) VALUES (?, ?)", contacts
        )
        staging.conn.executemany(
            "INSERT INTO emails (email_id, contact_id, email, email_lc, is_primary) "
            "VALUES (?, ?, ?, ?, 1)",
            emails,
        )
        staging.conn.executemany(
            "INSERT INTO group_status (contact_id, group_id, status) VALUES (?, ?, ?)", groups
        )
        staging.conn.executemany(
            "INSERT INTO rows (list_id, mc_hash, mc_email, mc_status) VALUES (?, ?, ?, ?)", rows
        )
    return next_contact - 1


def match_50k(path: Path, members: int = 50_000) -> dict[str, Any]:
    staging = Staging(path)
    try:
        contacts = fill(staging, members)
        ctx = SimpleNamespace(staging=staging, group_id=GROUP_ID, list_id=LIST_ID)
        row_ids = [r[0] for r in staging.query("SELECT id FROM rows ORDER BY id")]
        batch = IN_CHUNK * 4  # what match_emails hands to assign_matches at a time
        started = time.perf_counter()
        for start in range(0, len(row_ids), batch):
            with staging.atomic():
                assign_matches(ctx, row_ids[start : start + batch])  # type: ignore[arg-type]
        seconds = time.perf_counter() - started
        matched = staging.scalar("SELECT COUNT(*) FROM rows WHERE contact_id IS NOT NULL")
    finally:
        staging.close()
    return {"seconds": seconds, "contacts": contacts, "matched": matched}


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(match_50k(Path(tmp) / "match.sqlite3"))

"""The data generator: the mix of statuses and odd cases, determinism, agreement, churn."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from mcsync.sim.civicrm import CiviSim
from mcsync.sim.datagen import MC_STATUSES, AudienceSpec, generate, mutate
from mcsync.sim.mailchimp import MailchimpSim

API_KEY = "0123456789abcdef0123456789abcdef-us21"
Pair = tuple[MailchimpSim, CiviSim, AudienceSpec]


def clock() -> datetime:
    return datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def make(members: int, **kwargs: Any) -> Pair:
    mc, civi = MailchimpSim(clock=clock), CiviSim("civi-test-key", clock=clock)
    spec = generate(mc, civi, api_key=API_KEY, members=members, **kwargs)
    return mc, civi, spec


@pytest.fixture(scope="module")
def mixed() -> Pair:
    return make(3000, seed=5)


def mc_statuses(mc: MailchimpSim, spec: AudienceSpec) -> Counter[str]:
    return Counter(m["status"] for m in mc.members(spec.list_id))


def group_statuses(civi: CiviSim, group_id: int) -> dict[str, int]:
    rows = civi.query(
        "SELECT status, COUNT(*) AS n FROM group_contact WHERE group_id = ? GROUP BY status",
        [group_id],
    )
    return {row["status"]: row["n"] for row in rows}


def one(civi: CiviSim, sql: str, *params: Any) -> int:
    return int(next(iter(civi.query(sql, params)[0].values())))


def test_every_mailchimp_status_in_realistic_shares(mixed: Pair) -> None:
    mc, _, spec = mixed
    statuses = mc_statuses(mc, spec)
    assert set(statuses) == set(MC_STATUSES)
    for status in MC_STATUSES:
        assert statuses[status] == spec.counts["mailchimp_" + status]
    assert statuses["subscribed"] > 0.6 * sum(statuses.values())
    assert sum(statuses.values()) == spec.counts["mailchimp_members"]


def test_sides_overlap_and_differ(mixed: Pair) -> None:
    _, civi, spec = mixed
    counts = spec.counts
    assert counts["both"] + counts["mailchimp_only"] + counts["civicrm_only"] == 3000
    assert 0.65 < counts["both"] / 3000 < 0.75
    assert counts["mailchimp_only"] > 100 and counts["civicrm_only"] > 100
    assert one(civi, "SELECT COUNT(*) FROM contact") == counts["civicrm_contacts"]
    groups = group_statuses(civi, spec.group_id)
    assert groups["Added"] >= counts["civicrm_added"] and groups["Removed"] > 100
    for group_id in spec.interest_ids.values():
        assert group_statuses(civi, group_id).get("Added", 0) > 100


def test_odd_cases_are_present(mixed: Pair) -> None:
    mc, civi, spec = mixed
    for flag in ("is_deceased", "do_not_email", "is_opt_out", "is_deleted"):
        assert one(civi, f"SELECT COUNT(*) FROM contact WHERE {flag} = 1") > 5, flag
    assert one(civi, "SELECT COUNT(*) FROM email WHERE on_hold = 1") > 20
    assert one(civi, "SELECT COUNT(*) FROM email WHERE on_hold = 2") > 0
    shared = civi.query(
        "SELECT LOWER(email) FROM email GROUP BY LOWER(email) HAVING COUNT(DISTINCT contact_id) > 1"
    )
    assert len(shared) == spec.counts["shared_email"] > 5
    assert (
        one(civi, "SELECT COUNT(*) FROM email WHERE is_primary = 0") == spec.counts["second_email"]
    )
    assert one(civi, "SELECT COUNT(*) FROM email WHERE email <> LOWER(email)") > 20
    assert any(m["email_address"] != m["email_address"].lower() for m in mc.members(spec.list_id))
    no_email = "SELECT COUNT(*) FROM contact WHERE id NOT IN (SELECT contact_id FROM email)"
    assert one(civi, no_email) == spec.counts["no_email"]
    history = civi.query(
        "SELECT contact_id FROM subscription_history WHERE group_id = ? "
        "GROUP BY contact_id HAVING COUNT(*) >= 2",
        [spec.group_id],
    )
    assert len(history) >= spec.counts["history"] > 0
    names = {row["first_name"] for row in civi.query("SELECT first_name FROM contact")}
    assert {"José", "Zoë", "李"} <= names
    merge_names = {m["merge_fields"]["FNAME"] for m in mc.members(spec.list_id)}
    assert {"José", "Zoë", "李"} <= merge_names


def test_audience_config_names_the_ids(mixed: Pair) -> None:
    _, _, spec = mixed
    config = spec.audience_config("main")
    assert config["list_id"] == spec.list_id and config["group_id"] == spec.group_id
    assert len(config["interests"]) == 2 and config["merge_fields"]["FNAME"] == "first_name"


def snapshot(mc: MailchimpSim, civi: CiviSim, spec: AudienceSpec) -> tuple[Any, ...]:
    members = [
        (m["email_address"], m["status"], m["merge_fields"], m["interests"], m["last_changed"])
        for m in mc.members(spec.list_id)
    ]
    contacts = civi.query(
        "SELECT c.id, first_name, last_name, is_deleted, is_deceased, do_not_email, is_opt_out, "
        "e.email, e.on_hold FROM contact c LEFT JOIN email e ON e.contact_id = c.id ORDER BY c.id"
    )
    groups = civi.query("SELECT contact_id, group_id, status FROM group_contact ORDER BY id")
    history = civi.query("SELECT contact_id, group_id, date, status FROM subscription_history")
    return members, contacts, groups, history


def test_same_seed_same_data_other_seed_other_data() -> None:
    first, second, other = make(500, seed=9), make(500, seed=9), make(500, seed=10)
    assert snapshot(*first) == snapshot(*second)
    assert first[2].counts == second[2].counts
    assert snapshot(*first)[0] != snapshot(*other)[0]


def test_agree_gives_equal_sides() -> None:
    mc, civi, spec = make(1000, agree=True, interests=3)
    assert mc_statuses(mc, spec) == Counter({"subscribed": 1000})
    assert group_statuses(civi, spec.group_id) == {"Added": 1000}
    mc_emails = {m["email_address"] for m in mc.members(spec.list_id)}
    civi_emails = {row["email"] for row in civi.query("SELECT email FROM email")}
    assert mc_emails == civi_emails and len(mc_emails) == 1000
    flags = (
        "SELECT COUNT(*) FROM contact "
        "WHERE is_deleted + is_deceased + do_not_email + is_opt_out > 0"
    )
    assert one(civi, flags) == 0
    assert one(civi, "SELECT COUNT(*) FROM email WHERE on_hold > 0") == 0
    for interest_id, group_id in spec.interest_ids.items():
        at_mc = sum(1 for m in mc.members(spec.list_id) if m["interests"][interest_id])
        assert group_statuses(civi, group_id).get("Added", 0) == at_mc


def test_mutate_changes_about_the_share() -> None:
    mc, civi, spec = make(4000, seed=3)
    before_mc = mc_statuses(mc, spec)
    before_groups = group_statuses(civi, spec.group_id)
    changes = mutate(mc, civi, spec, share=0.02, seed=1)
    mc_side = sum(changes[k] for k in ("mailchimp_unsubscribed", "mailchimp_new",
                                       "mailchimp_interest_edits"))  # fmt: skip
    civi_side = sum(changes[k] for k in ("civicrm_removed", "civicrm_added", "civicrm_name_edits"))
    assert 70 <= mc_side <= 80 and 70 <= civi_side <= 80
    after_mc = mc_statuses(mc, spec)
    assert after_mc["unsubscribed"] == before_mc["unsubscribed"] + changes["mailchimp_unsubscribed"]
    assert after_mc["subscribed"] == (
        before_mc["subscribed"] - changes["mailchimp_unsubscribed"] + changes["mailchimp_new"]
    )
    after_groups = group_statuses(civi, spec.group_id)
    assert after_groups["Added"] == (
        before_groups["Added"] - changes["civicrm_removed"] + changes["civicrm_added"]
    )


def test_mutate_is_deterministic() -> None:
    first, second = make(800, seed=4), make(800, seed=4)
    assert mutate(*first, share=0.05, seed=2) == mutate(*second, share=0.05, seed=2)
    assert snapshot(*first)[:3] == snapshot(*second)[:3]


def test_generation_timing_100k(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.perf_counter()
    _, _, spec = make(100_000, seed=1)
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(f"\ngenerate(100k): {elapsed:.1f} s, {spec.counts['mailchimp_members']} members")
    assert spec.counts["both"] > 60_000

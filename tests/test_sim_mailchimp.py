"""The Mailchimp simulator, driven through ``handle()`` the way the transports and servers do."""

from __future__ import annotations

import base64
import io
import json
import re
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mcsync.sim.base import SimRequest
from mcsync.sim.mailchimp import MailchimpSim, subscriber_hash

KEY = "0123456789abcdef0123456789abcdef-us21"
OTHER_KEY = "fedcba9876543210fedcba9876543210-us7"
START = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
SPEC = Path(__file__).resolve().parents[1].parent / "shared" / "mailchimp" / "marketing-api.json"


class Clock:
    """A fake clock the tests move by hand."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Api:
    """Sends requests to the simulator and records every JSON body sent (for the spec check)."""

    def __init__(self, sim: MailchimpSim, key: str = KEY):
        self.sim, self.key = sim, key
        self.sent: list[tuple[str, str, Any]] = []

    def __call__(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: str = "",
        key: str | None = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        token = base64.b64encode(f"anystring:{key or self.key}".encode()).decode()
        all_headers = {"Authorization": f"Basic {token}", "Host": "127.0.0.1:8010"}
        all_headers.update(headers or {})
        payload = (
            raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        )
        self.sent.append((method, path, body))
        response = self.sim.handle(
            SimRequest.build(method, "/3.0" + path, query, all_headers, payload)
        )
        content = response.body
        parsed = (
            json.loads(content)
            if content and "json" in response.headers.get("Content-Type", "")
            else content
        )
        return response.status, parsed, response.headers


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim(clock: Clock) -> MailchimpSim:
    return MailchimpSim(clock=clock, batch_delay=10)


@pytest.fixture
def api(sim: MailchimpSim) -> Api:
    return Api(sim)


@pytest.fixture
def audience(sim: MailchimpSim) -> dict[str, str]:
    list_id = sim.add_list(KEY, "Newsletter")
    category = sim.add_interest_category(list_id, "Topics")
    return {
        "list": list_id,
        "category": category,
        "news": sim.add_interest(list_id, category, "News"),
        "events": sim.add_interest(list_id, category, "Events"),
    }


def assert_problem(status: int, body: Any, headers: dict[str, str], code: int, title: str) -> None:
    assert status == code, body
    assert headers["Content-Type"].startswith("application/problem+json")
    assert set(body) >= {"type", "title", "status", "detail", "instance"}
    assert body["title"] == title and body["status"] == code
    assert body["type"].startswith("https://mailchimp.com/developer/")


# ------------------------------------------------------------------ auth, routing, lists


def test_unknown_or_missing_key_is_refused_like_mailchimp(sim: MailchimpSim, api: Api) -> None:
    sim.add_account(KEY)
    assert_problem(*api("GET", "/ping", key="nope-us21"), 401, "API Key Invalid")
    status, body, headers = api("GET", "/ping", headers={"Authorization": ""})
    assert_problem(status, body, headers, 401, "API Key Missing")
    assert KEY not in json.dumps(body)


def test_bearer_basic_and_ping(sim: MailchimpSim, api: Api) -> None:
    sim.add_account(KEY)
    assert api("GET", "/ping")[1] == {"health_status": "Everything's Chimpy!"}
    status, body, _ = api("GET", "/", headers={"Authorization": f"Bearer {KEY}"})
    assert status == 200 and body["account_id"] and body["account_name"]


def test_wrong_datacenter_host_is_refused(sim: MailchimpSim, api: Api) -> None:
    sim.add_account(KEY)
    assert api("GET", "/ping", headers={"Host": "us21.api.mailchimp.com"})[0] == 200
    status, body, headers = api("GET", "/ping", headers={"Host": "us3.api.mailchimp.com"})
    assert_problem(status, body, headers, 403, "Wrong Datacenter")


def test_unknown_route_and_wrong_method(audience: dict[str, str], api: Api) -> None:
    assert_problem(*api("GET", "/nothing/here"), 404, "Resource Not Found")
    status, body, headers = api("DELETE", "/lists")
    assert_problem(status, body, headers, 405, "Method Not Allowed")
    assert headers["Allow"] == "GET"


def test_a_key_sees_only_its_own_lists(
    sim: MailchimpSim, audience: dict[str, str], api: Api
) -> None:
    other = sim.add_list(OTHER_KEY, "Theirs")
    assert_problem(*api("GET", f"/lists/{other}"), 404, "Resource Not Found")
    assert_problem(*api("GET", f"/lists/{other}/members"), 404, "Resource Not Found")
    status, body, _ = api("GET", "/lists", query="fields=lists.id,lists.name,total_items")
    assert status == 200
    assert body == {"lists": [{"id": audience["list"], "name": "Newsletter"}], "total_items": 1}


def test_list_stats_count_members_by_status(
    sim: MailchimpSim, audience: dict[str, str], api: Api
) -> None:
    list_id = audience["list"]
    for n, kind in enumerate(["subscribed", "subscribed", "unsubscribed", "cleaned", "archived"]):
        sim.seed_member(list_id, f"p{n}@example.org", kind)
    status, body, _ = api("GET", f"/lists/{list_id}", query="include_total_contacts=true")
    assert status == 200
    stats = body["stats"]
    assert (stats["member_count"], stats["unsubscribe_count"], stats["cleaned_count"]) == (2, 1, 1)
    assert stats["total_contacts"] == 4
    assert api("GET", "/lists", query="email=p3@example.org")[1]["total_items"] == 1
    assert api("GET", "/lists", query="email=p4@example.org")[1]["total_items"] == 0


# ------------------------------------------------------------------ reading members


@pytest.fixture
def seeded(sim: MailchimpSim, audience: dict[str, str]) -> str:
    """25 members, one a minute from START; every fifth unsubscribed, #24 archived."""
    list_id = audience["list"]
    rows = []
    for n in range(25):
        status = "archived" if n == 24 else ("unsubscribed" if n % 5 == 0 else "subscribed")
        rows.append(
            (
                f"Person{n}@Example.org",
                status,
                {"FNAME": f"P{n}"},
                {audience["news"]: n % 2 == 0},
                START + timedelta(minutes=n),
            )
        )
    sim.seed_members(list_id, rows)
    return list_id


def test_member_page_shape_and_defaults(seeded: str, audience: dict[str, str], api: Api) -> None:
    status, body, _ = api("GET", f"/lists/{seeded}/members")
    assert status == 200
    assert body["total_items"] == 24 and body["list_id"] == seeded  # archived left out
    assert len(body["members"]) == 10
    first = body["members"][0]
    assert first["email_address"] == "Person0@Example.org"
    assert first["id"] == subscriber_hash("person0@example.org")
    assert first["status"] == "unsubscribed"
    assert first["last_changed"] == "2024-03-01T12:00:00+00:00"
    assert first["merge_fields"] == {
        "FNAME": "P0",
        "LNAME": "",
        "ADDRESS": "",
        "PHONE": "",
        "BIRTHDAY": "",
    }
    assert first["interests"] == {audience["news"]: True, audience["events"]: False}
    assert re.fullmatch(r"[0-9a-f]{10}", first["unique_email_id"])
    assert first["list_id"] == seeded and first["tags"] == [] and "_links" in first


def test_count_over_1000_is_refused(seeded: str, api: Api) -> None:
    assert_problem(
        *api("GET", f"/lists/{seeded}/members", query="count=1001"), 400, "Invalid Resource"
    )
    assert api("GET", f"/lists/{seeded}/members", query="count=1000")[0] == 200


def test_fields_total_items_alone(seeded: str, api: Api) -> None:
    body = api("GET", f"/lists/{seeded}/members", query="fields=total_items&status=subscribed")[1]
    assert body == {"total_items": 19}


def test_offset_paging_walks_every_member_once(seeded: str, api: Api) -> None:
    seen = []
    for offset in range(0, 24, 7):
        body = api(
            "GET",
            f"/lists/{seeded}/members",
            query=f"count=7&offset={offset}&fields=members.email_address,total_items",
        )[1]
        assert set(body) == {"members", "total_items"}
        seen += [m["email_address"] for m in body["members"]]
    assert len(seen) == len(set(seen)) == 24


def test_since_and_before_last_changed(seeded: str, api: Api) -> None:
    query = (
        "since_last_changed=2024-03-01T12:10:00%2B00:00"
        "&before_last_changed=2024-03-01T12:15:00Z&count=100"
    )
    body = api("GET", f"/lists/{seeded}/members", query=query)[1]
    assert [m["email_address"] for m in body["members"]] == [
        f"Person{n}@Example.org" for n in range(11, 15)
    ]  # strictly after, strictly before
    assert body["total_items"] == 4
    # an unencoded '+' arrives as a space; Mailchimp-style timestamps still work
    body = api(
        "GET", f"/lists/{seeded}/members", query="since_last_changed=2024-03-01T12:22:00+00:00"
    )[1]
    assert body["total_items"] == 1
    assert_problem(
        *api("GET", f"/lists/{seeded}/members", query="since_last_changed=yesterday"),
        400,
        "Invalid Resource",
    )


def test_status_filter_sort_and_exclude_fields(seeded: str, api: Api) -> None:
    body = api(
        "GET",
        f"/lists/{seeded}/members",
        query="status=unsubscribed&sort_field=last_changed&sort_dir=DESC"
        "&exclude_fields=_links,members._links,members.merge_fields",
    )[1]
    assert [m["email_address"] for m in body["members"]] == [
        f"Person{n}@Example.org" for n in (20, 15, 10, 5, 0)
    ]
    assert "_links" not in body and all(
        "_links" not in m and "merge_fields" not in m for m in body["members"]
    )
    archived = api("GET", f"/lists/{seeded}/members", query="status=archived")[1]
    assert [m["email_address"] for m in archived["members"]] == ["Person24@Example.org"]


@pytest.mark.parametrize(
    "order",
    [
        "",
        "&sort_dir=DESC",
        "&sort_field=last_changed",
        "&sort_field=last_changed&sort_dir=DESC",
        "&sort_field=timestamp_opt",
        "&since_last_changed=2024-03-01T11:00:00Z",
        "&since_last_changed=2024-03-01T11:00:00Z&sort_field=last_changed&sort_dir=DESC",
    ],
)
def test_reading_on_page_after_page_matches_jumping_to_each_page(
    sim: MailchimpSim, seeded: str, api: Api, order: str
) -> None:
    """Consecutive pages continue from a cursor; that must give what OFFSET gives."""
    sim.seed_members(  # ties on last_changed, to test the tie-break on seq
        seeded, [(f"tie{n}@example.org", "subscribed", {}, {}, START) for n in range(10)]
    )

    def page(offset: int) -> list[str]:
        query = f"count=7&offset={offset}&fields=members.email_address{order}"
        return [
            m["email_address"]
            for m in api("GET", f"/lists/{seeded}/members", query=query)[1]["members"]
        ]

    offsets = range(0, 34, 7)
    sequential = [email for offset in offsets for email in page(offset)]
    jumping = {offset: page(offset) for offset in reversed(offsets)}
    assert sequential == [email for offset in offsets for email in jumping[offset]]
    assert len(sequential) == len(set(sequential)) == 34


def test_a_write_between_pages_is_seen_like_offset_paging(
    sim: MailchimpSim, seeded: str, api: Api, clock: Clock
) -> None:
    def page(offset: int) -> list[str]:
        query = f"count=5&offset={offset}&sort_field=last_changed&fields=members.email_address"
        return [
            m["email_address"]
            for m in api("GET", f"/lists/{seeded}/members", query=query)[1]["members"]
        ]

    assert page(0)[1] == "Person1@Example.org"
    clock.tick(3600)
    api("PATCH", f"/lists/{seeded}/members/person1@example.org", {"merge_fields": {"FNAME": "X"}})
    assert page(5) == page(5) == [f"Person{n}@Example.org" for n in range(6, 11)]


def test_interest_filter(seeded: str, audience: dict[str, str], api: Api) -> None:
    base = f"interest_category_id={audience['category']}&interest_ids={audience['news']}"
    total = {
        match: api("GET", f"/lists/{seeded}/members", query=f"{base}&interest_match={match}")[1][
            "total_items"
        ]
        for match in ("any", "none")
    }
    assert total == {"any": 12, "none": 12}


def test_get_one_member_by_hash_or_address(seeded: str, api: Api) -> None:
    by_hash = api("GET", f"/lists/{seeded}/members/{subscriber_hash('person3@example.org')}")
    by_email = api("GET", f"/lists/{seeded}/members/PERSON3@example.org")
    assert by_hash[0] == by_email[0] == 200 and by_hash[1] == by_email[1]
    assert_problem(
        *api("GET", f"/lists/{seeded}/members/{subscriber_hash('x@example.org')}"),
        404,
        "Resource Not Found",
    )
    archived = api("GET", f"/lists/{seeded}/members/person24@example.org")[1]
    assert archived["status"] == "archived"


# ------------------------------------------------------------------ writing members


def test_post_creates_then_member_exists(audience: dict[str, str], api: Api, clock: Clock) -> None:
    path = f"/lists/{audience['list']}/members"
    body = {
        "email_address": "New@Example.org",
        "status": "subscribed",
        "merge_fields": {"FNAME": "Nia"},
        "interests": {audience["news"]: True},
        "tags": ["vip"],
    }
    status, member, _ = api("POST", path, body)
    assert status == 200
    assert member["status"] == "subscribed" and member["email_address"] == "New@Example.org"
    assert member["last_changed"] == member["timestamp_opt"] == "2024-03-01T12:00:00+00:00"
    assert member["interests"][audience["news"]] is True and member["tags_count"] == 1
    assert member["source"] == "API - Generic"
    clock.tick(60)
    status, problem, headers = api("POST", path, dict(body, email_address="new@example.org"))
    assert_problem(status, problem, headers, 400, "Member Exists")


@pytest.mark.parametrize(
    "fields, title, detail",
    [
        (
            {"email_address": "not-an-email"},
            "Invalid Resource",
            "not-an-email looks fake or invalid, please enter a real email address.",
        ),
        ({"merge_fields": {"NOPE": "x"}}, "Invalid Resource", "Your merge fields were invalid."),
        (
            {"interests": {"0000000000": True}},
            "Invalid Resource",
            "Invalid interest ID: '0000000000'",
        ),
        ({"status": "archived"}, "Invalid Resource", None),
        (
            {"merge_fields": {"ADDRESS": {"addr1": "1 Road"}}},
            "Invalid Resource",
            "Your merge fields were invalid.",
        ),
    ],
)
def test_invalid_member_writes(
    audience: dict[str, str], api: Api, fields: dict[str, Any], title: str, detail: str | None
) -> None:
    body = {"email_address": "ok@example.org", "status": "subscribed", **fields}
    status, problem, headers = api("POST", f"/lists/{audience['list']}/members", body)
    assert_problem(status, problem, headers, 400, title)
    if detail:
        assert problem["detail"] == detail
    assert problem.get("errors")


def test_bad_json_is_a_parse_error(audience: dict[str, str], api: Api) -> None:
    assert_problem(
        *api("POST", f"/lists/{audience['list']}/members", raw=b"{nope"), 400, "JSON Parse Error"
    )


def test_put_upserts_with_status_if_new(audience: dict[str, str], api: Api, clock: Clock) -> None:
    path = f"/lists/{audience['list']}/members/{subscriber_hash('a@example.org')}"
    created = api("PUT", path, {"email_address": "a@example.org", "status_if_new": "pending"})[1]
    assert created["status"] == "pending" and created["timestamp_opt"] == ""
    clock.tick(5)
    kept = api(
        "PUT",
        path,
        {
            "email_address": "a@example.org",
            "status_if_new": "subscribed",
            "merge_fields": {"LNAME": "Ames"},
        },
    )[1]
    assert kept["status"] == "pending" and kept["merge_fields"]["LNAME"] == "Ames"
    assert kept["last_changed"] == "2024-03-01T12:00:05+00:00"
    clock.tick(5)
    changed = api(
        "PUT",
        path,
        {"email_address": "a@example.org", "status_if_new": "pending", "status": "subscribed"},
    )[1]
    assert changed["status"] == "subscribed"
    # no email and no status_if_new is fine for an existing member, not for a new one
    assert api("PUT", path, {"merge_fields": {"FNAME": "Al"}})[0] == 200
    new_path = f"/lists/{audience['list']}/members/{subscriber_hash('b@example.org')}"
    assert_problem(
        *api("PUT", new_path, {"email_address": "b@example.org"}), 400, "Invalid Resource"
    )


def test_put_with_mismatched_hash_is_refused(audience: dict[str, str], api: Api) -> None:
    path = f"/lists/{audience['list']}/members/{subscriber_hash('a@example.org')}"
    assert_problem(
        *api("PUT", path, {"email_address": "b@example.org", "status_if_new": "subscribed"}),
        400,
        "Invalid Resource",
    )


def test_unsubscribed_can_only_come_back_through_pending(
    sim: MailchimpSim, audience: dict[str, str], api: Api, clock: Clock
) -> None:
    list_id = audience["list"]
    sim.seed_member(list_id, "gone@example.org", "unsubscribed", last_changed=START)
    path = f"/lists/{list_id}/members/{subscriber_hash('gone@example.org')}"
    for method, body in (
        ("PATCH", {"status": "subscribed"}),
        (
            "PUT",
            {
                "email_address": "gone@example.org",
                "status": "subscribed",
                "status_if_new": "subscribed",
            },
        ),
    ):
        status, problem, headers = api(method, path, body)
        assert_problem(status, problem, headers, 400, "Member In Compliance State")
        assert problem["detail"].startswith("gone@example.org is in a compliance state")
    clock.tick(30)
    member = api("PATCH", path, {"status": "pending"})[1]
    assert member["status"] == "pending" and member["last_changed"] == "2024-03-01T12:00:30+00:00"
    clock.tick(3600)
    assert api("GET", path)[1]["status"] == "pending"  # nobody clicked the link yet
    sim.confirm_member(list_id, "gone@example.org")
    confirmed = api("GET", path)[1]
    assert confirmed["status"] == "subscribed"
    assert confirmed["last_changed"] == confirmed["timestamp_opt"] == "2024-03-01T13:00:30+00:00"


@pytest.mark.parametrize("wanted", ["subscribed", "pending"])
def test_cleaned_can_never_be_resubscribed(
    sim: MailchimpSim, audience: dict[str, str], api: Api, wanted: str
) -> None:
    sim.seed_member(audience["list"], "bounce@example.org", "cleaned")
    path = f"/lists/{audience['list']}/members/bounce@example.org"
    assert_problem(*api("PATCH", path, {"status": wanted}), 400, "Member In Compliance State")
    bulk = api(
        "POST",
        f"/lists/{audience['list']}",
        {
            "members": [{"email_address": "bounce@example.org", "status": wanted}],
            "update_existing": True,
        },
    )[1]
    assert bulk["error_count"] == 1 and bulk["errors"][0]["error_code"] == "ERROR_GENERIC"


def test_patch_updates_and_moves_last_changed_only_on_change(
    sim: MailchimpSim, audience: dict[str, str], api: Api, clock: Clock
) -> None:
    sim.seed_member(
        audience["list"],
        "p@example.org",
        "subscribed",
        merge_fields={"FNAME": "Pat"},
        last_changed=START,
    )
    path = f"/lists/{audience['list']}/members/p@example.org"
    assert_problem(
        *api("PATCH", f"/lists/{audience['list']}/members/x@example.org", {"status": "subscribed"}),
        404,
        "Resource Not Found",
    )
    clock.tick(10)
    same = api("PATCH", path, {"merge_fields": {"FNAME": "Pat"}})[1]
    assert same["last_changed"] == "2024-03-01T12:00:00+00:00"
    clock.tick(10)
    changed = api(
        "PATCH",
        path,
        {"merge_fields": {"FNAME": "Patricia"}, "interests": {audience["events"]: True}},
    )[1]
    assert changed["last_changed"] == "2024-03-01T12:00:20+00:00"
    assert changed["full_name"] == "Patricia" and changed["interests"][audience["events"]] is True
    assert_problem(*api("PATCH", path, {"status": "transactional"}), 400, "Invalid Resource")


def test_patch_changes_the_address_and_keeps_unique_email_id(
    sim: MailchimpSim, audience: dict[str, str], api: Api
) -> None:
    sim.seed_member(audience["list"], "old@example.org", "subscribed")
    before = api("GET", f"/lists/{audience['list']}/members/old@example.org")[1]
    after = api(
        "PATCH",
        f"/lists/{audience['list']}/members/old@example.org",
        {"email_address": "new@example.org"},
    )[1]
    assert after["id"] == subscriber_hash("new@example.org")
    assert after["unique_email_id"] == before["unique_email_id"]
    assert api("GET", f"/lists/{audience['list']}/members/old@example.org")[0] == 404
    sim.seed_member(audience["list"], "cleaned@example.org", "cleaned")
    status, problem, _ = api(
        "PATCH",
        f"/lists/{audience['list']}/members/cleaned@example.org",
        {"email_address": "fresh@example.org"},
    )
    assert status == 400 and "status of 'subscribed'" in problem["detail"]


def test_delete_archives_and_put_revives(
    sim: MailchimpSim, audience: dict[str, str], api: Api, clock: Clock
) -> None:
    list_id = audience["list"]
    sim.seed_member(list_id, "arch@example.org", "unsubscribed", last_changed=START)
    path = f"/lists/{list_id}/members/arch@example.org"
    clock.tick(10)
    status, body, _ = api("DELETE", path)
    assert status == 204 and body == b""
    member = api("GET", path)[1]
    assert member["status"] == "archived" and member["last_changed"] == "2024-03-01T12:00:10+00:00"
    assert api("GET", f"/lists/{list_id}/members")[1]["total_items"] == 0
    revived = api(
        "PUT", path, {"email_address": "arch@example.org", "status_if_new": "subscribed"}
    )[1]
    assert revived["status"] == "subscribed"


def test_delete_permanent_forgets_the_address(
    sim: MailchimpSim, audience: dict[str, str], api: Api
) -> None:
    list_id = audience["list"]
    sim.seed_member(list_id, "gdpr@example.org", "subscribed")
    assert (
        api("POST", f"/lists/{list_id}/members/gdpr@example.org/actions/delete-permanent")[0] == 204
    )
    assert api("GET", f"/lists/{list_id}/members/gdpr@example.org")[0] == 404
    assert sim.member(list_id, "gdpr@example.org") is None
    status, problem, headers = api(
        "POST",
        f"/lists/{list_id}/members",
        {"email_address": "gdpr@example.org", "status": "subscribed"},
    )
    assert_problem(status, problem, headers, 400, "Forgotten Email Not Subscribed")
    assert "cannot be re-imported" in problem["detail"]


def test_tags_are_added_and_removed_without_moving_last_changed(
    sim: MailchimpSim, audience: dict[str, str], api: Api, clock: Clock
) -> None:
    sim.seed_member(audience["list"], "t@example.org", "subscribed", last_changed=START)
    path = f"/lists/{audience['list']}/members/t@example.org"
    clock.tick(60)
    assert (
        api(
            "POST",
            path + "/tags",
            {
                "tags": [
                    {"name": "donor", "status": "active"},
                    {"name": "member", "status": "active"},
                ]
            },
        )[0]
        == 204
    )
    api("POST", path + "/tags", {"tags": [{"name": "member", "status": "inactive"}]})
    tags = api("GET", path + "/tags")[1]
    assert [t["name"] for t in tags["tags"]] == ["donor"] and tags["total_items"] == 1
    member = api("GET", path)[1]
    assert [t["name"] for t in member["tags"]] == ["donor"]
    assert member["last_changed"] == "2024-03-01T12:00:00+00:00"


def test_user_actions_move_last_changed(
    sim: MailchimpSim, audience: dict[str, str], clock: Clock
) -> None:
    sim.seed_member(audience["list"], "u@example.org", "subscribed", last_changed=START)
    clock.tick(120)
    sim.set_member_status(audience["list"], "u@example.org", "unsubscribed")
    member = sim.member(audience["list"], "u@example.org")
    assert member is not None
    assert member["status"] == "unsubscribed"
    assert member["last_changed"] == "2024-03-01T12:02:00+00:00"
    clock.tick(60)
    sim.edit_member(audience["list"], "u@example.org", merge_fields={"LNAME": "Ulm"})
    member = sim.member(audience["list"], "u@example.org")
    assert member is not None and member["last_changed"] == "2024-03-01T12:03:00+00:00"
    assert [m["email_address"] for m in sim.members(audience["list"])] == ["u@example.org"]


# ------------------------------------------------------------------ bulk subscribe


def test_bulk_subscribe_reports_each_member(
    sim: MailchimpSim, audience: dict[str, str], api: Api
) -> None:
    list_id = audience["list"]
    sim.seed_member(list_id, "existing@example.org", "subscribed")
    sim.seed_member(list_id, "unsub@example.org", "unsubscribed")
    members = [
        {"email_address": "fresh@example.org", "status": "subscribed"},
        {"email_address": "existing@example.org", "status": "unsubscribed"},
        {"email_address": "bad@@example", "status": "subscribed"},
        {"email_address": "unsub@example.org", "status": "subscribed"},
    ]
    body = api("POST", f"/lists/{list_id}", {"members": members, "update_existing": False})[1]
    assert body["total_created"] == 1 and body["total_updated"] == 0 and body["error_count"] == 3
    codes = {e["email_address"]: e["error_code"] for e in body["errors"]}
    assert codes == {
        "existing@example.org": "ERROR_CONTACT_EXISTS",
        "bad@@example": "ERROR_GENERIC",
        "unsub@example.org": "ERROR_CONTACT_EXISTS",
    }
    body = api("POST", f"/lists/{list_id}", {"members": members, "update_existing": True})[1]
    assert [m["email_address"] for m in body["updated_members"]] == [
        "fresh@example.org",
        "existing@example.org",
    ]
    assert body["updated_members"][1]["status"] == "unsubscribed"
    errors = {e["email_address"]: e["error"] for e in body["errors"]}
    assert "compliance state" in errors["unsub@example.org"]
    too_many = [{"email_address": f"m{n}@example.org", "status": "subscribed"} for n in range(501)]
    assert_problem(
        *api("POST", f"/lists/{list_id}", {"members": too_many}), 400, "Invalid Resource"
    )


# ---------------------------------------------------------------- interests, merge fields, webhooks


def test_interest_categories_interests_and_merge_fields(
    sim: MailchimpSim, audience: dict[str, str], seeded: str, api: Api
) -> None:
    categories = api("GET", f"/lists/{seeded}/interest-categories")[1]
    assert [c["title"] for c in categories["categories"]] == ["Topics"]
    interests = api("GET", f"/lists/{seeded}/interest-categories/{audience['category']}/interests")[
        1
    ]
    counts = {i["name"]: i["subscriber_count"] for i in interests["interests"]}
    assert counts == {"News": "9", "Events": "0"}  # subscribed members only, as strings
    merge = api("GET", f"/lists/{seeded}/merge-fields", query="count=100")[1]
    assert [f["tag"] for f in merge["merge_fields"]][:2] == ["FNAME", "LNAME"]
    assert merge["merge_fields"][0]["merge_id"] == 1
    created = api(
        "POST",
        f"/lists/{seeded}/merge-fields",
        {"name": "Member No", "type": "number", "tag": "MEMNO"},
    )[1]
    assert created["tag"] == "MEMNO"
    assert (
        api("GET", f"/lists/{seeded}/merge-fields/{created['merge_id']}")[1]["name"] == "Member No"
    )


def test_list_webhooks(audience: dict[str, str], api: Api) -> None:
    path = f"/lists/{audience['list']}/webhooks"
    hook = {
        "url": "https://crm.example.org/hook?secret=s3",
        "events": {"subscribe": True, "campaign": False},
        "sources": {"user": True, "admin": True, "api": False},
    }
    status, created, _ = api("POST", path, hook)
    assert (
        status == 200
        and created["sources"]["api"] is False
        and created["events"]["campaign"] is False
    )
    assert_problem(
        *api("POST", path, dict(hook, url="https://crm.example.org/hook?secret=x")),
        400,
        "Invalid Resource",
    )
    assert api("GET", path)[1]["total_items"] == 1
    assert api("DELETE", f"{path}/{created['id']}")[0] == 204
    assert api("GET", path)[1]["webhooks"] == []


# ------------------------------------------------------------------ batches


def results_of(sim: MailchimpSim, url: str) -> list[dict[str, Any]]:
    path, _, query = url.split("127.0.0.1:8010", 1)[1].partition("?")  # a pre-signed link
    response = sim.handle(SimRequest.build("GET", path, query, {}, b""))
    assert response.status == 200
    results = []
    with tarfile.open(fileobj=io.BytesIO(response.body), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile():
                extracted = tar.extractfile(member)
                assert extracted is not None
                results += json.loads(extracted.read())
    return results


def test_batch_runs_on_the_clock_and_serves_results(
    sim: MailchimpSim, audience: dict[str, str], api: Api, clock: Clock
) -> None:
    list_id = audience["list"]
    sim.seed_member(list_id, "unsub@example.org", "unsubscribed")
    operations: list[dict[str, Any]] = [
        {
            "method": "PUT",
            "path": f"/lists/{list_id}/members/{subscriber_hash(f'b{n}@example.org')}",
            "operation_id": f"op{n}",
            "body": json.dumps(
                {"email_address": f"b{n}@example.org", "status_if_new": "subscribed"}
            ),
        }
        for n in range(4)
    ]
    operations.append(
        {
            "method": "PATCH",
            "path": f"/lists/{list_id}/members/unsub@example.org",
            "operation_id": "compliance",
            "body": json.dumps({"status": "subscribed"}),
        }
    )
    operations.append(
        {
            "method": "GET",
            "path": f"/lists/{list_id}/members",
            "params": {"count": 2, "fields": "total_items"},
            "operation_id": "read",
        }
    )
    status, batch, _ = api("POST", "/batches", {"operations": operations})
    assert status == 200
    assert batch["status"] == "pending" and batch["total_operations"] == 6
    assert batch["completed_at"] == "" and batch["response_body_url"] == ""
    assert batch["submitted_at"] == "2024-03-01T12:00:00+00:00"
    assert sim.member(list_id, "b0@example.org") is None

    clock.tick(5)  # half of batch_delay: started, nothing run yet
    assert api("GET", f"/batches/{batch['id']}")[1]["status"] == "started"
    clock.tick(2.5)  # three quarters: half of the operations have run
    running = api("GET", f"/batches/{batch['id']}")[1]
    assert running["status"] == "started" and running["finished_operations"] == 3
    first = sim.member(list_id, "b0@example.org")
    assert first is not None and first["last_changed"] == "2024-03-01T12:00:05+00:00"

    clock.tick(2.5)
    done = api("GET", f"/batches/{batch['id']}")[1]
    assert done["status"] == "finished"
    assert (done["finished_operations"], done["errored_operations"]) == (6, 1)
    assert done["completed_at"] == "2024-03-01T12:00:10+00:00"
    assert done["response_body_url"].startswith("http://127.0.0.1:8010/_sim/batch-results/")
    results = {r["operation_id"]: r for r in results_of(sim, done["response_body_url"])}
    assert set(results) == {"op0", "op1", "op2", "op3", "compliance", "read"}
    assert results["op3"]["status_code"] == 200
    assert json.loads(results["op3"]["response"])["email_address"] == "b3@example.org"
    assert results["compliance"]["status_code"] == 400
    assert json.loads(results["compliance"]["response"])["title"] == "Member In Compliance State"
    assert json.loads(results["read"]["response"]) == {"total_items": 5}
    listed = api("GET", "/batches")[1]
    assert [b["id"] for b in listed["batches"]] == [batch["id"]]
    (submitted,) = sim.submitted_batches()
    assert [op.operation_id for op in submitted.operations][-1] == "read"


def test_batch_delete_stops_it(
    sim: MailchimpSim, audience: dict[str, str], api: Api, clock: Clock
) -> None:
    operation = {
        "method": "POST",
        "path": f"/lists/{audience['list']}/members",
        "body": json.dumps({"email_address": "late@example.org", "status": "subscribed"}),
    }
    batch = api("POST", "/batches", {"operations": [operation]})[1]
    clock.tick(1)
    assert api("DELETE", f"/batches/{batch['id']}")[0] == 204
    clock.tick(60)
    assert_problem(*api("GET", f"/batches/{batch['id']}"), 404, "Resource Not Found")
    assert sim.member(audience["list"], "late@example.org") is None
    assert_problem(*api("DELETE", "/batches/0000000000"), 404, "Resource Not Found")


def test_a_crashing_operation_becomes_a_500_result(
    sim: MailchimpSim,
    audience: dict[str, str],
    api: Api,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def explode(call: object) -> tuple[int, Any]:
        raise RuntimeError("boom")

    routes = [handlers for pattern, handlers in sim._routes if pattern.pattern == "^/ping$"]
    monkeypatch.setitem(routes[0], "GET", explode)
    ops = [{"method": "GET", "path": "/ping", "operation_id": "p"}]
    batch = api("POST", "/batches", {"operations": ops})[1]
    clock.tick(10)
    done = api("GET", f"/batches/{batch['id']}")[1]
    assert (done["status"], done["errored_operations"]) == ("finished", 1)
    (result,) = results_of(sim, done["response_body_url"])
    assert result["status_code"] == 500
    assert json.loads(result["response"])["title"] == "Internal Server Error"


def test_batch_with_an_object_body_is_refused(audience: dict[str, str], api: Api) -> None:
    status, problem, headers = api(
        "POST",
        "/batches",
        {
            "operations": [
                {"method": "PATCH", "path": "/lists/x/members/y", "body": {"status": "subscribed"}}
            ]
        },
    )
    assert_problem(status, problem, headers, 400, "Invalid Resource")
    assert problem["errors"][0]["field"] == "operations.item:0.body"


def test_batches_of_another_account_are_invisible(
    sim: MailchimpSim, audience: dict[str, str], api: Api
) -> None:
    sim.add_account(OTHER_KEY)
    batch = api("POST", "/batches", {"operations": []})[1]
    assert api("GET", f"/batches/{batch['id']}", key=OTHER_KEY)[0] == 404


# ------------------------------------------------------------------ scale and bookkeeping


def test_bulk_seed_pages_and_rolls_back_on_duplicates(
    sim: MailchimpSim, audience: dict[str, str], api: Api
) -> None:
    list_id = audience["list"]
    count = 30_000  # above the bulk-seed threshold, so indexes are rebuilt
    sim.seed_members(
        list_id,
        (
            (f"m{n}@example.org", "subscribed", {}, {}, START + timedelta(seconds=n))
            for n in range(count)
        ),
    )
    body = api(
        "GET",
        f"/lists/{list_id}/members",
        query="count=1000&offset=29500&since_last_changed=2024-03-01T12:00:00Z"
        "&fields=members.email_address,total_items",
    )[1]
    assert body["total_items"] == count - 1
    assert body["members"][0]["email_address"] == "m29501@example.org"
    assert len(body["members"]) == 499
    clash: list[tuple[str, str, dict[str, Any], dict[str, bool], datetime | None]] = [
        (f"x{n}@example.org", "subscribed", {}, {}, None) for n in range(25_000)
    ]
    with pytest.raises(ValueError):  # bulk path: the rebuilt unique index finds the clash
        sim.seed_members(list_id, [*clash, ("M1@example.org", "subscribed", {}, {}, None)])
    with pytest.raises(ValueError):  # small path
        sim.seed_members(list_id, [("y@example.org", "subscribed", {}, {}, None)] * 2)
    assert api("GET", f"/lists/{list_id}")[1]["stats"]["member_count"] == count
    assert api("GET", f"/lists/{list_id}/members/m1@example.org")[0] == 200
    assert sim.member(list_id, "x0@example.org") is None
    assert sim.member(list_id, "y@example.org") is None


def test_request_log_records_every_request(
    sim: MailchimpSim, audience: dict[str, str], api: Api
) -> None:
    api("GET", f"/lists/{audience['list']}/members")
    api("GET", "/ping", key="wrong-us1")
    assert sim.request_log == [
        ("GET", f"/3.0/lists/{audience['list']}/members"),
        ("GET", "/3.0/ping"),
    ]


# ------------------------------------------------------------------ against the official spec


@pytest.mark.skipif(not SPEC.exists(), reason="the shared Mailchimp spec is not present")
def test_requests_the_tests_send_match_the_official_spec(
    sim: MailchimpSim, audience: dict[str, str], api: Api
) -> None:
    """Bodies and paths these tests use are valid by the spec (with SOURCE.md's overlay)."""
    jsonschema = pytest.importorskip("jsonschema")
    spec = json.loads(SPEC.read_text())
    _overlay_merge_fields(spec)
    templates = [
        (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"), p) for p in spec["paths"]
    ]
    list_id = audience["list"]
    hash_a = subscriber_hash("a@example.org")
    calls = [
        (
            "POST",
            f"/lists/{list_id}/members",
            {
                "email_address": "a@example.org",
                "status": "pending",
                "merge_fields": {"FNAME": "Ann"},
                "interests": {audience["news"]: True},
            },
        ),
        (
            "PUT",
            f"/lists/{list_id}/members/{hash_a}",
            {"email_address": "a@example.org", "status_if_new": "subscribed"},
        ),
        ("PATCH", f"/lists/{list_id}/members/{hash_a}", {"status": "unsubscribed"}),
        (
            "POST",
            f"/lists/{list_id}",
            {
                "members": [{"email_address": "b@example.org", "status": "subscribed"}],
                "update_existing": True,
            },
        ),
        (
            "POST",
            f"/lists/{list_id}/members/{hash_a}/tags",
            {"tags": [{"name": "x", "status": "active"}]},
        ),
        (
            "POST",
            f"/lists/{list_id}/webhooks",
            {
                "url": "https://h.example.org/w",
                "events": {"subscribe": True},
                "sources": {"api": False},
            },
        ),
        (
            "POST",
            "/batches",
            {
                "operations": [
                    {
                        "method": "PATCH",
                        "path": f"/lists/{list_id}/members/{hash_a}",
                        "operation_id": "1",
                        "body": json.dumps({"status": "pending"}),
                    }
                ]
            },
        ),
        ("GET", f"/lists/{list_id}/members", None),
        ("DELETE", f"/lists/{list_id}/members/{hash_a}", None),
        ("POST", f"/lists/{list_id}/members/{hash_a}/actions/delete-permanent", None),
    ]
    for method, path, body in calls:
        template = next((t for pattern, t in templates if pattern.match(path)), None)
        assert template is not None, path
        operation = spec["paths"][template][method.lower()]
        if body is not None:
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            jsonschema.validate(body, {**schema, "components": spec["components"]})
        status = api(method, path, body)[0]
        assert str(status) in operation["responses"], (method, path, status)


def _overlay_merge_fields(spec: dict[str, Any]) -> None:
    """SOURCE.md, known error 1: make every ``merge_fields`` value any type."""

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            merge = (
                node.get("properties", {}).get("merge_fields")
                if isinstance(node.get("properties"), dict)
                else None
            )
            if isinstance(merge, dict):
                merge["additionalProperties"] = {}
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)


# ------------------------------------------------------------------ activity feed


def test_activity_feed_records_status_changes_with_their_times(
    sim: MailchimpSim, audience: dict[str, str], api: Api, clock: Clock
) -> None:
    """Unsubscribes and sign-ups are events with their own times, newest first, filtered by
    ``activity_filters``; a later profile edit moves ``last_changed`` but not them, and the
    opt-in time stays the re-subscribe's."""
    list_id = audience["list"]
    sim.seed_member(list_id, "a@x.org", "subscribed", last_changed=START)
    feed = f"/lists/{list_id}/members/{subscriber_hash('a@x.org')}/activity-feed"
    assert api("GET", feed)[1]["activity"] == []  # seeded history has no events
    clock.tick(60)
    status, _, _ = api(
        "PUT",
        f"/lists/{list_id}/members/{subscriber_hash('a@x.org')}",
        {"email_address": "a@x.org", "status": "unsubscribed", "status_if_new": "unsubscribed"},
    )  # the API, 12:01
    assert status == 200
    clock.tick(60)
    sim.set_member_status(list_id, "a@x.org", "subscribed")  # the person, 12:02
    clock.tick(60)
    sim.edit_member(list_id, "a@x.org", merge_fields={"FNAME": "Ann"})  # 12:03
    status, body, _ = api("GET", feed)
    assert status == 200
    assert body["email_id"] == subscriber_hash("a@x.org") and body["list_id"] == list_id
    assert [(e["activity_type"], e["created_at_timestamp"]) for e in body["activity"]] == [
        ("generic_signup", "2024-03-01T12:02:00+00:00"),
        ("unsub", "2024-03-01T12:01:00+00:00"),
    ]
    unsub = api("GET", feed, query="activity_filters=unsub")[1]["activity"]
    assert len(unsub) == 1 and unsub[0]["is_admin_unsubscribed"] is True
    assert [
        e["activity_type"] for e in api("GET", feed, query="activity_filters=signup")[1]["activity"]
    ] == ["generic_signup"]
    assert api("GET", feed, query="count=1&offset=1")[1]["activity"][0]["activity_type"] == "unsub"
    member = sim.member(list_id, "a@x.org")
    assert member is not None
    assert member["timestamp_opt"] == "2024-03-01T12:02:00+00:00"
    assert member["last_changed"] == "2024-03-01T12:03:00+00:00"
    status, body, headers = api("GET", feed, query="activity_filters=nonsense")
    assert_problem(status, body, headers, 400, "Invalid Resource")
    status, body, headers = api("GET", f"/lists/{list_id}/members/{'0' * 32}/activity-feed")
    assert_problem(status, body, headers, 404, "Resource Not Found")

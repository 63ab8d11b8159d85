"""The CiviCRM APIv4 simulator answers like a real site (reference/civicrm-api.md §1, §5.2)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest

from mcsync.sim.base import SimRequest, SimResponse
from mcsync.sim.civicrm import CiviSim

KEY = "test-api-key-0123456789"
SITE_KEY = "site-key-abc"
FORM = "application/x-www-form-urlencoded"


class Clock:
    """A settable clock so dates in assertions are exact."""

    def __init__(self) -> None:
        self.now = datetime(2024, 3, 31, 0, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim(clock: Clock) -> CiviSim:
    return CiviSim(KEY, SITE_KEY, clock=clock, timezone="Europe/London")


def headers(**extra: str) -> dict[str, str]:
    base = {"X-Civi-Auth": f"Bearer {KEY}", "X-Requested-With": "XMLHttpRequest",
            "Content-Type": FORM}  # fmt: skip
    base.update(extra)
    return base


def raw(sim: CiviSim, method: str, path: str, *, query: str = "",
        hdrs: dict[str, str] | None = None, body: bytes = b"") -> SimResponse:  # fmt: skip
    return sim.handle(SimRequest.build(method, path, query, hdrs if hdrs is not None
                                       else headers(), body))  # fmt: skip


def api(sim: CiviSim, entity: str, action: str, params: dict[str, Any] | None = None,
        *, expect: int = 200, **form: str) -> dict[str, Any]:  # fmt: skip
    """POST like mcsync's client: form-encoded ``params`` JSON."""
    fields = {"params": json.dumps(params or {}), **form}
    response = raw(sim, "POST", f"/civicrm/ajax/api4/{entity}/{action}",
                   body=urlencode(fields).encode())  # fmt: skip
    assert response.status == expect, response.body
    return json.loads(response.body)


def values(sim: CiviSim, entity: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    return api(sim, entity, "get", params)["values"]


@pytest.fixture
def world(sim: CiviSim) -> dict[str, int]:
    """Two groups (one smart), three contacts with emails, memberships."""
    news = sim.add_group("Newsletter")
    smart = sim.add_group("Smart one", is_smart=True)
    ann = sim.add_contact("Ann", "Smith", email="Ann@Example.org")
    bob = sim.add_contact("Bob", "Jones", email="bob@example.org")
    cat = sim.add_contact("Cat", "Éclair", email="cat@example.org ", do_not_email=True)
    sim.set_group_status(ann, news, "Added")
    sim.set_group_status(bob, news, "Removed")
    return {"news": news, "smart": smart, "ann": ann, "bob": bob, "cat": cat}


# ------------------------------------------------------------------ transport & auth


def test_success_envelope_and_count_quirk(sim: CiviSim, world: dict[str, int]) -> None:
    body = api(sim, "Contact", "get", {"select": ["id"], "orderBy": {"id": "ASC"}, "limit": 2})
    assert body["values"] == [{"id": world["ann"]}, {"id": world["bob"]}]
    assert (body["entity"], body["action"], body["debug"], body["version"]) == (
        "Contact", "get", None, 4)  # fmt: skip
    assert body["count"] == 2 and body["countFetched"] == 2 and "countMatched" not in body
    last = api(sim, "Contact", "get", {"select": ["id"], "limit": 2, "offset": 2})
    assert last["countFetched"] == 1 and last["count"] == 3  # rows + offset on a short page
    total = api(sim, "Contact", "get", {"select": ["row_count"]})
    assert total["values"] == [] and total["countMatched"] == 3 and total["count"] == 3
    assert sim.request_log[-1] == ("POST", "Contact.get")


def test_missing_credential_is_html_403(sim: CiviSim) -> None:
    response = raw(sim, "POST", "/civicrm/ajax/api4/Contact/get",
                   hdrs={"X-Requested-With": "XMLHttpRequest"})  # fmt: skip
    assert response.status == 403
    assert response.headers["Content-Type"].startswith("text/html")


@pytest.mark.parametrize("auth", ["Bearer wrong", KEY, "Basic dXNlcjpwYXNz"])
def test_bad_credential_is_text_401(sim: CiviSim, auth: str) -> None:
    response = raw(sim, "POST", "/civicrm/ajax/api4/Contact/get", hdrs=headers(**{
        "X-Civi-Auth": auth}))  # fmt: skip
    assert response.status == 401
    assert response.headers["Content-Type"] == "text/plain"
    assert response.body == b"HTTP 401 Invalid credential"
    assert KEY.encode() not in response.body


def test_guards(sim: CiviSim) -> None:
    sim.add_api_key("weak-key", can_authenticate=False)
    hdrs = headers(**{"X-Civi-Auth": "Bearer weak-key"})
    response = raw(sim, "POST", "/civicrm/ajax/api4/Contact/get", hdrs=hdrs)
    assert response.status == 401
    assert response.body == b"HTTP 401 Login not permitted. Must satisfy guard (site_key, perm)."
    ok = raw(sim, "POST", "/civicrm/ajax/api4/Contact/get", hdrs={**hdrs, "X-Civi-Key": SITE_KEY})
    assert ok.status == 200
    sim.guards = []
    assert raw(sim, "POST", "/civicrm/ajax/api4/Contact/get", hdrs=hdrs).status == 200


def test_csrf_rule_applies_to_header_flow_only(sim: CiviSim) -> None:
    xheader = {"X-Civi-Auth": f"Bearer {KEY}", "Content-Type": FORM}
    assert raw(sim, "POST", "/civicrm/ajax/api4/Contact/get", hdrs=xheader).status == 200
    header = {"Authorization": f"Bearer {KEY}", "Content-Type": FORM}
    response = raw(sim, "POST", "/civicrm/ajax/api4/Contact/get", hdrs=header)
    assert response.status == 400
    assert json.loads(response.body)["error_message"].startswith("SECURITY ALERT")
    with_xrw = {**header, "X-Requested-With": "XMLHttpRequest"}
    assert raw(sim, "POST", "/civicrm/ajax/api4/Contact/get", hdrs=with_xrw).status == 200
    sim.header_flow_enabled = False  # Authorization ignored -> anonymous
    assert raw(sim, "POST", "/civicrm/ajax/api4/Contact/get", hdrs=with_xrw).status == 403


def test_param_flow_and_authx_id(sim: CiviSim) -> None:
    response = raw(
        sim,
        "POST",
        "/civicrm/ajax/api4/Contact/get",
        hdrs={"Content-Type": FORM},
        body=urlencode({"_authx": f"Bearer {KEY}", "params": "{}"}).encode(),
    )
    assert response.status == 200
    who = json.loads(raw(sim, "GET", "/civicrm/authx/id").body)
    assert who["flow"] == "xheader" and who["cred"] == "api_key"


def test_get_over_get_and_writes_over_get(sim: CiviSim) -> None:
    query = urlencode({"params": json.dumps({"select": ["id"]})})
    assert raw(sim, "GET", "/civicrm/ajax/api4/Contact/get", query=query).status == 200
    response = raw(sim, "GET", "/civicrm/ajax/api4/Contact/create", query=query)
    assert response.status == 405 and json.loads(response.body)["error_code"] == 405


@pytest.mark.parametrize("query", [
    "page=CiviCRM&q=civicrm/ajax/api4/Contact/get",
    "civiwp=CiviCRM&q=civicrm/ajax/api4/Contact/get",
    "option=com_civicrm&task=civicrm/ajax/api4/Contact/get",
])  # fmt: skip
def test_cms_query_string_routes(sim: CiviSim, query: str) -> None:
    body = urlencode({"params": json.dumps({"select": ["row_count"]})}).encode()
    response = raw(sim, "POST", "/wp-admin/admin.php", query=query, body=body)
    assert response.status == 200
    assert json.loads(response.body)["entity"] == "Contact"


def test_json_body_is_ignored(sim: CiviSim, world: dict[str, int]) -> None:
    response = raw(sim, "POST", "/civicrm/ajax/api4/Contact/get",
                   hdrs=headers(**{"Content-Type": "application/json"}),
                   body=json.dumps({"params": {"limit": 1}}).encode())  # fmt: skip
    assert json.loads(response.body)["countFetched"] == 3  # unlimited: params were empty


def test_maintenance_and_multicall(sim: CiviSim, world: dict[str, int]) -> None:
    calls = {"a": ["Contact", "get", {"select": ["id"], "limit": 1}],
             "b": ["Nope", "get", {}]}  # fmt: skip
    response = raw(sim, "POST", "/civicrm/ajax/api4", body=urlencode(
        {"calls": json.dumps(calls)}).encode())  # fmt: skip
    body = json.loads(response.body)
    assert response.status == 200 and body["a"]["countFetched"] == 1
    assert body["b"]["status"] == 500
    sim.maintenance = True
    response = raw(sim, "POST", "/civicrm/ajax/api4/Contact/get")
    assert response.status == 503 and json.loads(response.body)["status_code"] == 503


def test_index_form_field(sim: CiviSim, world: dict[str, int]) -> None:
    keyed = api(sim, "Contact", "get", {"select": ["id", "first_name"]}, index="id")
    assert keyed["values"][str(world["bob"])]["first_name"] == "Bob"
    single = api(sim, "Contact", "get", {"select": ["id"]}, index="0")
    assert single["values"] == {"id": world["ann"]}


# ------------------------------------------------------------------------ error shapes


@pytest.mark.parametrize(("entity", "action", "params", "message"), [
    ("Nope", "get", {}, "API (Nope, get) does not exist (join the API team and implement it!)"),
    ("Contact", "explode", {}, "API (Contact, explode) does not exist"),
    ("Contact", "get", {"foo": 1}, "Unknown api parameter: setFoo"),
    ("Contact", "get", {"where": [["nope", "=", 1]]}, "Invalid field 'nope'"),
    ("Contact", "get", {"orderBy": {"nope": "ASC"}}, "Invalid field 'nope'"),
    ("Contact", "get", {"where": [["id", "==", 1]]}, "Illegal operator"),
    ("Contact", "create", {"values": {"first_name": "x"}},
     "Mandatory values missing from Api4 Contact::create: contact_type"),
    ("GroupContact", "create", {"values": {}},
     "Mandatory values missing from Api4 GroupContact::create: group_id, contact_id"),
    ("Contact", "update", {"values": {"first_name": "x"}},
     'Parameter "where" is required unless primary keys are supplied in values.'),
    ("Email", "delete", {}, 'Cannot delete Email with no "where" parameter specified'),
    ("GroupContact", "save", {}, 'Parameter "records" is required.'),
])  # fmt: skip
def test_api_errors_are_500_json(sim: CiviSim, entity: str, action: str,
                                 params: dict[str, Any], message: str) -> None:  # fmt: skip
    body = api(sim, entity, action, params, expect=500)
    assert body["error_message"].startswith(message)
    assert body["error_code"] == 0 and body["status"] == 500 and body["error_id"]


def test_invalid_json_params(sim: CiviSim) -> None:
    response = raw(sim, "POST", "/civicrm/ajax/api4/Contact/get",
                   body=urlencode({"params": "{not json"}).encode())  # fmt: skip
    assert response.status == 500
    assert json.loads(response.body)["status"] == 500


def test_masked_errors_without_debug_permission(sim: CiviSim) -> None:
    sim.add_api_key("masked", debug_visible=False)
    response = raw(
        sim,
        "POST",
        "/civicrm/ajax/api4/Contact/get",
        hdrs=headers(**{"X-Civi-Auth": "Bearer masked"}),
        body=urlencode({"params": json.dumps({"where": [["x", "=", 1]]})}).encode(),
    )
    body = json.loads(response.body)
    assert response.status == 500 and body["error_code"] == "1" and "error_id" not in body
    error_id, detail = sim.error_log[-1]
    assert body["error_message"] == (
        f"Sorry an error occurred and your request was not completed. (Error ID: {error_id})"
    )
    assert detail == "Invalid field 'x'"


def test_acl_filters_reads_and_blocks_writes(sim: CiviSim, world: dict[str, int]) -> None:
    sim.add_api_key("limited", view_all_contacts=False, edit_all_contacts=False,
                    acl_contact_ids=[world["ann"]])  # fmt: skip
    hdrs = headers(**{"X-Civi-Auth": "Bearer limited"})
    seen = raw(
        sim,
        "POST",
        "/civicrm/ajax/api4/Contact/get",
        hdrs=hdrs,
        body=urlencode({"params": json.dumps({"select": ["id"]})}).encode(),
    )
    assert json.loads(seen.body)["values"] == [{"id": world["ann"]}]
    params = {"values": {"contact_id": world["bob"], "group_id": world["smart"]}}
    denied = raw(sim, "POST", "/civicrm/ajax/api4/GroupContact/create", hdrs=hdrs,
                 body=urlencode({"params": json.dumps(params)}).encode())  # fmt: skip
    assert denied.status == 403
    assert json.loads(denied.body)["error_message"] == "ACL check failed"


# ---------------------------------------------------------------------- query semantics


def test_select_joins_suffixes_and_unknown_fields(sim: CiviSim, world: dict[str, int]) -> None:
    sim.add_address(world["ann"], city="Leeds", country_id=1226)
    rows = values(sim, "GroupContact", {
        "select": ["contact_id", "status:label", "group_id.title", "contact_id.display_name",
                   "contact_id.email_primary.email", "contact_id.address_primary.city",
                   "contact_id.address_primary.country_id:abbr", "no_such_field"],
        "where": [["contact_id", "=", world["ann"]]],
    })  # fmt: skip
    assert rows == [{
        "contact_id": world["ann"], "status:label": "Added", "group_id.title": "Newsletter",
        "contact_id.display_name": "Ann Smith", "contact_id.email_primary.email": "Ann@Example.org",
        "contact_id.address_primary.city": "Leeds",
        "contact_id.address_primary.country_id:abbr": "GB",
    }]  # fmt: skip
    star = values(sim, "Email", {"select": ["*", "contact_id.*"], "limit": 1})[0]
    assert star["is_primary"] is True and star["contact_id.is_deleted"] is False
    assert star["on_hold"] == 0 and star["location_type_id"] == 1


def test_string_comparison_is_case_accent_and_pad_insensitive(
    sim: CiviSim, world: dict[str, int]
) -> None:
    def ids(where: list[Any]) -> list[int]:
        return [r["contact_id"] for r in values(sim, "Email", {"select": ["contact_id"],
                                                               "where": where})]  # fmt: skip

    assert ids([["email", "=", "ANN@example.org"]]) == [world["ann"]]
    assert ids([["email", "=", "cat@example.org"]]) == [world["cat"]]  # stored with a space
    assert ids([["email", "IN", ["BOB@EXAMPLE.ORG", "x@y.z"]]]) == [world["bob"]]
    assert ids([["email", "LIKE", "%@EXAMPLE.org%"]]) == [world["ann"], world["bob"],
                                                           world["cat"]]  # fmt: skip
    names = values(sim, "Contact", {"select": ["id"], "where": [["last_name", "=", "eclair"]]})
    assert names == [{"id": world["cat"]}]


def test_where_operators(sim: CiviSim, world: dict[str, int]) -> None:
    ann, bob, cat = world["ann"], world["bob"], world["cat"]

    def ids(where: list[Any]) -> list[int]:
        return [r["id"] for r in values(sim, "Contact", {"select": ["id"], "where": where})]

    sim.update_contact(bob, first_name="")
    assert ids([["id", "!=", ann]]) == [bob, cat]
    assert ids([["id", "<>", ann]]) == [bob, cat]
    assert ids([["id", ">", ann], ["id", "<=", cat]]) == [bob, cat]
    assert ids([["id", ">=", bob], ["id", "<", cat]]) == [bob]
    assert ids([["id", "NOT IN", [ann, cat]]]) == [bob]
    assert ids([["id", "BETWEEN", [bob, cat]]]) == [bob, cat]
    assert ids([["id", "NOT BETWEEN", [bob, cat]]]) == [ann]
    assert ids([["first_name", "NOT LIKE", "a%"]]) == [bob, cat]
    assert ids([["first_name", "IS EMPTY"]]) == [bob]
    assert ids([["first_name", "IS NOT EMPTY"]]) == [ann, cat]
    assert ids([["organization_name", "IS NULL"], ["id", "=", ann]]) == [ann]
    assert ids([["organization_name", "IS NOT NULL"]]) == []
    assert ids([["organization_name", "!=", "x"]]) == []  # NULL never matches !=
    assert ids([["do_not_email", "=", True]]) == [cat]
    assert ids([["do_not_email", "IS EMPTY"]]) == [ann, bob]  # false counts as empty
    assert ids([["sort_name", "CONTAINS", "mit"]]) == [ann]
    assert ids([["first_name", "REGEXP", "^(ann|cat)$"]]) == [ann, cat]
    nested = [["OR", [["id", "=", ann], ["AND", [["last_name", "=", "Jones"],
                                                 ["NOT", [["id", "=", cat]]]]]]]]  # fmt: skip
    assert ids(nested) == [ann, bob]


def test_group_filters_and_smart_groups(sim: CiviSim, world: dict[str, int]) -> None:
    sim.set_smart_group_members(world["smart"], [world["bob"], world["cat"]])
    sim.set_group_status(world["cat"], world["smart"], "Removed")
    groups = values(sim, "Group", {
        "select": ["id", "saved_search_id", "group_type", "group_type:name"],
        "where": [["group_type:name", "CONTAINS", "Mailing List"], ["is_active", "=", True],
                  ["is_hidden", "=", False]],
    })  # fmt: skip
    assert [g["saved_search_id"] is not None for g in groups] == [False, True]
    assert groups[0]["group_type"] == ["2"] and groups[0]["group_type:name"] == ["Mailing List"]
    static = values(sim, "Group", {"select": ["id"], "where": [["saved_search_id", "IS NULL"]]})
    assert static == [{"id": world["news"]}]
    members = values(
        sim,
        "Contact",
        {"select": ["id"], "where": [["groups", "IN", [world["news"], world["smart"]]]]},
    )
    assert members == [{"id": world["ann"]}, {"id": world["bob"]}]


def test_trash_hidden_unless_asked_or_by_id(sim: CiviSim, world: dict[str, int]) -> None:
    sim.delete_contact(world["bob"])
    assert [r["id"] for r in values(sim, "Contact", {"select": ["id"]})] == [
        world["ann"],
        world["cat"],
    ]
    by_id = values(sim, "Contact", {"select": ["is_deleted"], "where": [["id", "=", world["bob"]]]})
    assert by_id == [{"is_deleted": True}]
    both = values(
        sim, "Contact", {"select": ["id"], "where": [["is_deleted", "IN", [True, False]]]}
    )
    assert len(both) == 3
    via_email = values(
        sim, "Email", {"select": ["contact_id"], "where": [["contact_id.is_deleted", "=", False]]}
    )
    assert world["bob"] not in [r["contact_id"] for r in via_email]


def test_keyset_paging_and_large_in_lists(sim: CiviSim) -> None:
    group = sim.add_group("Big")
    ids = sim.seed_contacts({"first_name": f"P{i}", "email": f"p{i}@example.org",
                             "groups": {group: "Added"}} for i in range(1200))  # fmt: skip
    seen: list[int] = []
    last = 0
    while True:
        page = values(sim, "GroupContact", {"select": ["id", "contact_id"], "where": [
            ["group_id", "=", group], ["id", ">", last]], "orderBy": {"id": "ASC"},
            "limit": 500})  # fmt: skip
        seen.extend(r["contact_id"] for r in page)
        if len(page) < 500:
            break
        last = page[-1]["id"]
    assert seen == ids
    chunk = values(
        sim, "Email", {"select": ["contact_id"], "where": [["contact_id", "IN", ids[:1000]]]}
    )
    assert len(chunk) == 1000
    emails = values(sim, "Email", {"select": ["id"], "where": [
        ["email", "IN", [f"P{i}@EXAMPLE.ORG" for i in range(600)]]]})  # fmt: skip
    assert len(emails) == 600
    offset_page = api(sim, "Contact", "get", {"select": ["id"], "limit": 100, "offset": 1150})
    assert offset_page["countFetched"] == 50 and offset_page["count"] == 1200


def test_chain(sim: CiviSim, world: dict[str, int]) -> None:
    rows = values(sim, "Contact", {"select": ["id"], "where": [["id", "=", world["ann"]]],
                                   "chain": {"emails": ["Email", "get", {
                                       "select": ["email"],
                                       "where": [["contact_id", "=", "$id"]]}]}})  # fmt: skip
    assert rows == [{"id": world["ann"], "emails": [{"email": "Ann@Example.org"}]}]


def test_get_fields(sim: CiviSim) -> None:
    fields = api(sim, "GroupContact", "getFields", {"loadOptions": True})["values"]
    by_name = {f["name"]: f for f in fields}
    assert by_name["status"]["options"] == {"Added": "Added", "Removed": "Removed",
                                            "Pending": "Pending"}  # fmt: skip
    assert by_name["contact_id"]["fk_entity"] == "Contact"
    actions = [a["name"] for a in api(sim, "Contact", "getActions")["values"]]
    assert "save" in actions


# ------------------------------------------------------------------------ data model


def test_group_contact_writes_always_log_history(sim: CiviSim, world: dict[str, int],
                                                 clock: Clock) -> None:  # fmt: skip
    news, cat = world["news"], world["cat"]
    before = values(sim, "Contact", {"select": ["modified_date"], "where": [["id", "=", cat]]})
    clock.now = datetime(2024, 7, 1, 12, 0, 5, tzinfo=UTC)
    created = api(
        sim,
        "GroupContact",
        "create",
        {"values": {"contact_id": cat, "group_id": news}, "tracking": "mcsync run 7"},
    )
    assert created["values"][0]["status"] == "Added"
    dup = api(sim, "GroupContact", "create", {"values": {"contact_id": cat, "group_id": news}},
              expect=500)  # fmt: skip
    assert dup["error_message"] == "DB Error: already exists"
    saved = api(sim, "GroupContact", "save", {
        "records": [{"contact_id": cat, "group_id": news, "status": "Added"},
                    {"contact_id": world["bob"], "group_id": world["smart"],
                     "status": "Pending"}],
        "match": ["contact_id", "group_id"], "method": "Web"})  # fmt: skip
    assert saved["countMatched"] == 1 and len(saved["values"]) == 2
    api(sim, "GroupContact", "update", {"where": [["contact_id", "=", cat]],
                                        "values": {"status": "Removed"}})  # fmt: skip
    api(sim, "GroupContact", "delete", {"where": [["contact_id", "=", cat]]})
    history = values(sim, "SubscriptionHistory", {
        "select": ["id", "status", "method", "tracking", "date"],
        "where": [["contact_id", "=", cat]], "orderBy": {"id": "ASC"}})  # fmt: skip
    assert [(h["status"], h["method"], h["tracking"]) for h in history] == [
        ("Added", "API", "mcsync run 7"), ("Added", "Web", None), ("Removed", "API", None),
        ("Deleted", "API", None)]  # fmt: skip
    assert history[0]["date"] == "2024-07-01 13:00:05"  # BST, no offset
    assert [h["id"] for h in history] == sorted(h["id"] for h in history)
    assert sim.group_status(cat, news) is None  # delete is a hard delete
    after = values(sim, "Contact", {"select": ["modified_date"], "where": [["id", "=", cat]]})
    assert after == before  # membership changes do not touch the contact


def test_contact_and_email_writes_bump_modified_date(sim: CiviSim, world: dict[str, int],
                                                     clock: Clock) -> None:  # fmt: skip
    ann = world["ann"]

    def modified() -> str:
        rows = values(sim, "Contact", {"select": ["modified_date"], "where": [["id", "=", ann]]})
        return str(rows[0]["modified_date"])

    assert modified() == "2024-03-31 00:30:00"  # GMT before the DST switch
    clock.now = datetime(2024, 3, 31, 1, 30, tzinfo=UTC)
    api(
        sim,
        "Email",
        "create",
        {
            "values": {
                "contact_id": ann,
                "email": "ann@work.org",
                "is_primary": True,
                "location_type_id:name": "Work",
            }
        },
    )
    assert modified() == "2024-03-31 02:30:00"  # BST after it
    emails = values(sim, "Email", {"select": ["email", "is_primary", "location_type_id:name"],
                                   "where": [["contact_id", "=", ann]]})  # fmt: skip
    assert emails == [
        {"email": "Ann@Example.org", "is_primary": False, "location_type_id:name": "Home"},
        {"email": "ann@work.org", "is_primary": True, "location_type_id:name": "Work"},
    ]
    clock.now = datetime(2024, 4, 1, tzinfo=UTC)
    sim.update_email(sim.query("SELECT id FROM email WHERE email = 'ann@work.org'")[0]["id"],
                     on_hold=1)  # fmt: skip
    held = values(sim, "Email", {"select": ["on_hold:name", "hold_date"],
                                 "where": [["on_hold", ">", 0]]})  # fmt: skip
    assert held == [{"on_hold:name": "On Hold Bounce", "hold_date": "2024-04-01 01:00:00"}]
    assert modified() == "2024-04-01 01:00:00"
    clock.now = datetime(2024, 4, 2, tzinfo=UTC)
    updated = api(sim, "Contact", "update", {"values": {"id": ann, "is_opt_out": True,
                                                        "modified_date": "1999-01-01 00:00:00",
                                                        "bogus": 1}})  # fmt: skip
    assert updated["values"] == [
        {"id": ann, "is_opt_out": True, "modified_date": "2024-04-02 01:00:00", "bogus": None}
    ]
    deleted = api(sim, "Email", "delete", {"where": [["email", "=", "ann@work.org"]]})
    assert len(deleted["values"]) == 1
    assert values(
        sim, "Email", {"select": ["is_primary"], "where": [["contact_id", "=", ann]]}
    ) == [{"is_primary": True}]


def test_contact_create_with_primary_email_and_save_match(sim: CiviSim) -> None:
    created = api(sim, "Contact", "create", {"values": {
        "contact_type": "Individual", "first_name": "Dee", "email_primary.email": "dee@x.org",
        "source": "mcsync"}})["values"][0]  # fmt: skip
    assert created["display_name"] == "Dee" and created["email_primary.email"] == "dee@x.org"
    got = values(sim, "Contact", {"select": ["email_primary.email", "email_primary"],
                                  "where": [["id", "=", created["id"]]]})[0]  # fmt: skip
    assert got["email_primary.email"] == "dee@x.org" and isinstance(got["email_primary"], int)
    saved = api(sim, "Contact", "save", {"records": [{"external_identifier": "E1",
                                                      "first_name": "Eve"}],
                                         "defaults": {"contact_type": "Individual"},
                                         "match": ["external_identifier"]})  # fmt: skip
    again = api(sim, "Contact", "save", {"records": [{"external_identifier": "E1",
                                                      "last_name": "Ng"}],
                                         "match": ["external_identifier"]})  # fmt: skip
    assert again["countMatched"] == 1
    assert again["values"][0]["id"] == saved["values"][0]["id"]


def test_contact_delete_trash_and_permanent(sim: CiviSim, world: dict[str, int]) -> None:
    api(sim, "Contact", "delete", {"where": [["id", "=", world["ann"]]]})
    assert sim.query("SELECT is_deleted FROM contact WHERE id = ?", [world["ann"]]) == [
        {"is_deleted": 1}
    ]
    assert sim.group_status(world["ann"], world["news"]) == "Added"  # trash keeps memberships
    api(sim, "Contact", "delete", {"where": [["id", "=", world["bob"]]], "useTrash": False})
    assert sim.query("SELECT * FROM contact WHERE id = ?", [world["bob"]]) == []
    assert sim.query("SELECT * FROM subscription_history WHERE contact_id = ?",
                     [world["bob"]]) == []  # fmt: skip
    assert sim.query("SELECT * FROM email WHERE contact_id = ?", [world["bob"]]) == []


def test_merge_moves_rows_and_trashes_loser(sim: CiviSim, world: dict[str, int]) -> None:
    ann, bob, news = world["ann"], world["bob"], world["news"]
    other = sim.add_group("Other")
    sim.set_group_status(bob, other, "Added")
    sim.add_email(bob, "ANN@example.org", is_primary=False)
    history_ids = [r["id"] for r in sim.query(
        "SELECT id FROM subscription_history WHERE contact_id = ?", [bob])]  # fmt: skip
    sim.merge_contacts(ann, bob)
    assert sim.group_status(ann, news) == "Added"  # keeper's row wins
    assert sim.group_status(ann, other) == "Added"  # loser's row moved
    assert sim.group_status(bob, other) is None
    moved = sim.query("SELECT id FROM subscription_history WHERE contact_id = ? AND id IN (?, ?)",
                      [ann, *history_ids])  # fmt: skip
    assert len(moved) == 2
    emails = sorted(r["email"] for r in sim.query("SELECT email FROM email WHERE contact_id = ?",
                                                   [ann]))  # fmt: skip
    assert emails == ["Ann@Example.org", "bob@example.org"]
    assert sim.query("SELECT is_deleted FROM contact WHERE id = ?", [bob]) == [{"is_deleted": 1}]


def test_group_create_nesting_and_uniqueness(sim: CiviSim) -> None:
    parent = api(
        sim, "Group", "create", {"values": {"title": "Parent", "group_type:name": ["Mailing List"]}}
    )
    pid = parent["values"][0]["id"]
    child = api(sim, "Group", "create", {"values": {"title": "Child", "parents": [pid]}})
    assert child["values"][0]["name"] == "Child"
    got = values(sim, "Group", {"select": ["children", "parents"], "where": [["id", "=", pid]]})
    assert got == [{"children": [child["values"][0]["id"]], "parents": []}]
    dup = api(sim, "Group", "create", {"values": {"title": "Parent"}}, expect=500)
    assert dup["error_message"] == "DB Error: already exists"


def test_tags(sim: CiviSim, world: dict[str, int]) -> None:
    tag = sim.add_tag("VIP")
    api(sim, "EntityTag", "create", {"values": {"entity_id": world["ann"], "tag_id": tag}})
    rows = values(sim, "EntityTag", {"select": ["entity_id", "tag_id.name"]})
    assert rows == [{"entity_id": world["ann"], "tag_id.name": "VIP"}]


def test_seed_without_history_and_backdated_status(sim: CiviSim, world: dict[str, int]) -> None:
    ids = sim.seed_contacts([{"first_name": "Imp", "groups": {world["news"]: "Added"}}],
                            history=False)  # fmt: skip
    assert sim.group_status(ids[0], world["news"]) == "Added"
    assert sim.query("SELECT * FROM subscription_history WHERE contact_id = ?", ids) == []
    sim.set_group_status(ids[0], world["news"], "Removed", method="Email",
                         when=datetime(2020, 1, 1, tzinfo=UTC))  # fmt: skip
    assert values(
        sim,
        "SubscriptionHistory",
        {"select": ["date", "method"], "where": [["contact_id", "=", ids[0]]]},
    ) == [{"date": "2020-01-01 00:00:00", "method": "Email"}]

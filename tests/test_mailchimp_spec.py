"""Every kind of request MailchimpClient sends, checked against Mailchimp's official OpenAPI spec
(``../shared/mailchimp/marketing-api.json``, see its SOURCE.md): a declared path and method, Basic
auth, only declared query parameters with valid values, and a JSON body valid against the
operation's requestBody schema. Batch operations are checked as the requests Mailchimp will run.

Test-only overlay (SOURCE.md "known inaccuracies" 1): ``merge_fields`` values are any type.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from jsonschema import Draft4Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from mcsync.api.mailchimp import MailchimpClient, member_hash, member_put_operation
from mcsync.budget import Budget

SPEC_PATH = (
    Path(__file__).resolve().parents[1].parent / "shared" / "mailchimp" / "marketing-api.json"
)
if not SPEC_PATH.exists():
    pytest.skip(f"Mailchimp spec not found at {SPEC_PATH}", allow_module_level=True)

BASE = "https://us21.api.mailchimp.com/3.0"
SPEC_URI = "urn:mailchimp-marketing-api"
LIST_ID = "a1b2c3d4e5"
METHODS = ("get", "put", "post", "patch", "delete")


class Spec:
    """The spec with the overlay applied, and lookups from a concrete request to its operation."""

    def __init__(self, document: dict[str, Any]) -> None:
        relax_merge_fields(document)
        self.document = document
        self.registry = Registry().with_resource(
            SPEC_URI, Resource.from_contents(document, default_specification=DRAFT4)
        )
        self.routes = [
            (re.compile("^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)) + "$"), template)
            for template in document["paths"]
        ]

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        # Prefer literal segments over parameters (e.g. /lists/{id}/members vs /lists/{id}/{x}).
        matches = sorted(
            (template for pattern, template in self.routes if pattern.match(path)),
            key=lambda t: t.count("{"),
        )
        assert matches, f"{path} matches no path of the spec"
        for template in matches:
            operation = self.document["paths"][template].get(method.lower())
            if operation is not None:
                return template, operation
        raise AssertionError(f"{method} is not declared for {matches[0]}")

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = self.document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    def parameters(
        self, template: str, operation: dict[str, Any]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        declared = [
            *self.document["paths"][template].get("parameters", []),
            *operation.get("parameters", []),
        ]
        return {(p["in"], p["name"]): p for p in map(self.resolve, declared)}

    def validator(self, schema: dict[str, Any]) -> Draft4Validator:
        if "$ref" in schema:
            schema = {"$ref": SPEC_URI + schema["$ref"]}
        return Draft4Validator(
            schema, registry=self.registry, format_checker=Draft4Validator.FORMAT_CHECKER
        )


def relax_merge_fields(node: Any) -> None:
    """Make every ``merge_fields`` value any-type: real text merge values are strings."""
    if isinstance(node, dict):
        merge = (
            node.get("properties", {}).get("merge_fields")
            if isinstance(node.get("properties"), dict)
            else None
        )
        if isinstance(merge, dict) and "additionalProperties" in merge:
            merge["additionalProperties"] = {}
        for value in node.values():
            relax_merge_fields(value)
    elif isinstance(node, list):
        for value in node:
            relax_merge_fields(value)


@pytest.fixture(scope="module")
def spec() -> Spec:
    return Spec(json.loads(SPEC_PATH.read_text(encoding="utf-8")))


def query_value(raw: str, schema: dict[str, Any], explode: bool) -> Any:
    """A query string value decoded to the JSON type its schema declares."""
    kind = schema.get("type")
    if kind == "array":
        items = raw.split(",") if not explode else [raw]
        return [query_value(item, schema.get("items", {}), True) for item in items]
    if kind == "integer":
        return int(raw) if re.fullmatch(r"-?\d+", raw) else raw
    if kind == "number":
        return float(raw)
    if kind == "boolean":
        return {"true": True, "false": False}.get(raw, raw)
    return raw


def check_request(
    spec: Spec, method: str, path: str, request: httpx.Request | None, body: Any
) -> str:
    """Assert a request conforms to the spec; return its operation's path template."""
    template, operation = spec.operation(method, path)
    declared = spec.parameters(template, operation)
    if request is not None:
        assert request.headers["authorization"].startswith("Basic "), "the spec declares basicAuth"
        for name, raw in request.url.params.multi_items():
            parameter = declared.get(("query", name))
            assert parameter is not None, (
                f"{method} {template}: query parameter {name!r} is not declared"
            )
            schema = spec.resolve(parameter["schema"])
            value = query_value(raw, schema, parameter.get("explode", True))
            errors = [e.message for e in spec.validator(schema).iter_errors(value)]
            assert not errors, f"{method} {template} ?{name}={raw}: {errors}"
    for (location, name), parameter in declared.items():
        if parameter.get("required") and location == "query":
            assert request is not None and name in request.url.params, (
                f"{template}: {name} required"
            )
    request_body = operation.get("requestBody")
    if request_body is None:
        assert body is None, f"{method} {template} takes no body"
        return template
    assert body is not None or not request_body.get("required"), f"{method} {template} needs a body"
    schema = request_body["content"]["application/json"]["schema"]
    errors = [
        f"{'/'.join(map(str, e.path))}: {e.message}"
        for e in spec.validator(schema).iter_errors(body)
    ]
    assert not errors, f"{method} {template} body: {errors}"
    return template


# -- a plausible Mailchimp for the client to talk to ---------------------------------------------

MEMBER = {"id": member_hash("a@x.org"), "email_address": "a@x.org", "status": "subscribed"}


def answer(request: httpx.Request) -> httpx.Response:
    path = request.url.path.removeprefix("/3.0")
    method = request.method
    if path == "/ping":
        return httpx.Response(200, json={"health_status": "Everything's Chimpy!"})
    if path == "/lists":
        return httpx.Response(200, json={"lists": [{"id": LIST_ID}], "total_items": 1})
    if path.endswith("/members") and method == "GET":
        offset = int(request.url.params["offset"])
        return httpx.Response(
            200, json={"members": [MEMBER] * 3, "total_items": 2500 if offset < 2000 else 2003}
        )
    if path.endswith("/activity-feed"):
        event = {"activity_type": "unsub", "created_at_timestamp": "2024-01-02T03:04:05+00:00"}
        return httpx.Response(200, json={"email_id": "x", "list_id": LIST_ID, "activity": [event]})
    if "/members/" in path:
        return httpx.Response(200, json=MEMBER)
    for key in ("categories", "interests", "merge_fields"):
        if path.endswith("/" + key.replace("_", "-").replace("categories", "interest-categories")):
            return httpx.Response(200, json={key: [], "total_items": 0})
    if path.startswith("/batches"):
        if method == "DELETE":
            return httpx.Response(204)
        if path == "/batches" and method == "GET":
            return httpx.Response(200, json={"batches": [], "total_items": 0})
        return httpx.Response(200, json={"id": "b1", "status": "pending"})
    if path == f"/lists/{LIST_ID}":
        if method == "POST":
            return httpx.Response(
                200, json={"new_members": [], "updated_members": [], "errors": []}
            )
        return httpx.Response(200, json={"id": LIST_ID})
    if path.endswith("/tags"):
        return httpx.Response(204)
    return httpx.Response(404, json={"title": "Resource Not Found", "status": 404})


@pytest.fixture(scope="module")
def captured() -> Iterator[list[httpx.Request]]:
    """Exercise every public method of the client once; return what it sent."""
    client = MailchimpClient(
        account_name="main", api_key="0" * 32 + "-us21", budget=Budget.unlimited()
    )
    since = datetime(2024, 1, 1, tzinfo=UTC)
    body = {
        "status_if_new": "subscribed",
        "status": "subscribed",
        "merge_fields": {
            "FNAME": "Alice",
            "LNAME": "Liddell",
            "ADDRESS": {"addr1": "1 Road", "city": "X", "state": "", "zip": "1", "country": "GB"},
        },
        "interests": {"9f8e7d6c5b": True, "0a1b2c3d4e": False},
    }
    with respx.mock(assert_all_mocked=True) as router:
        route = router.route(host="us21.api.mailchimp.com").mock(side_effect=answer)
        client.ping()
        client.lists()
        client.get_list(LIST_ID)
        client.interest_categories(LIST_ID)
        client.interests(LIST_ID, "c1d2e3f4a5")
        client.merge_fields(LIST_ID)
        list(
            client.member_pages(
                LIST_ID, since_last_changed=since, before_last_changed=since, concurrency=2
            )
        )
        list(client.member_pages(LIST_ID, page_size=500, start_offset=2000))
        client.get_member(LIST_ID, "A@x.org")
        client.unsubscribe_times(LIST_ID, [member_hash("a@x.org")])
        client.put_member(LIST_ID, "a@x.org", body)
        client.put_member(LIST_ID, "b@x.org", {"status_if_new": "pending"})
        client.put_members(
            LIST_ID, [("c@x.org", {"status_if_new": "unsubscribed", "status": "unsubscribed"})]
        )
        client.start_batch(
            [
                member_put_operation(LIST_ID, "d@x.org", body, "op-1"),
                member_put_operation(
                    LIST_ID, "e@x.org", {"status_if_new": "subscribed", "status": "pending"}, "op-2"
                ),
            ]
        )
        client.get_batch("b1")
        client.delete_batch("b1")
        client.batches()
        client.write_members(
            LIST_ID,
            [
                {
                    "email_address": "f@x.org",
                    "status": "subscribed",
                    "merge_fields": body["merge_fields"],
                    "interests": body["interests"],
                },
                {"email_address": "g@x.org", "status": "unsubscribed"},
            ],
        )
        client.update_tags(LIST_ID, "h@x.org", [{"name": "CiviCRM: Donor", "status": "active"}])
        yield [call.request for call in route.calls]


def request_json(request: httpx.Request) -> Any:
    if not request.content:
        return None
    assert request.headers["content-type"] == "application/json"
    return json.loads(request.content)


def test_every_request_conforms_to_the_spec(spec: Spec, captured: list[httpx.Request]) -> None:
    seen = set()
    for request in captured:
        assert str(request.url).startswith(BASE + "/")
        path = request.url.path.removeprefix("/3.0")
        seen.add(check_request(spec, request.method, path, request, request_json(request)))
    assert seen >= {
        "/ping",
        "/lists",
        "/lists/{listId}",
        "/lists/{listId}/interest-categories",
        "/lists/{listId}/interest-categories/{interestCategoryId}/interests",
        "/lists/{listId}/merge-fields",
        "/lists/{listId}/members",
        "/lists/{listId}/members/{subscriberHash}",
        "/lists/{listId}/members/{subscriberHash}/activity-feed",
        "/batches",
        "/batches/{batchId}",
    }


def test_member_pages_were_exercised(captured: list[httpx.Request]) -> None:
    pages = [r for r in captured if r.method == "GET" and r.url.path.endswith("/members")]
    assert sorted((r.url.params["count"], int(r.url.params["offset"])) for r in pages) == [
        ("1000", 0),
        ("1000", 1000),
        ("1000", 2000),
        ("500", 2000),
    ]


def test_batch_operations_conform_to_the_spec(spec: Spec, captured: list[httpx.Request]) -> None:
    (post,) = [r for r in captured if r.method == "POST" and r.url.path.endswith("/batches")]
    operations = json.loads(post.content)["operations"]
    assert len(operations) == 2
    for operation in operations:
        assert isinstance(operation["body"], str), "a batch operation's body is a JSON string"
        template = check_request(
            spec, operation["method"], operation["path"], None, json.loads(operation["body"])
        )
        assert template == "/lists/{listId}/members/{subscriberHash}"


@pytest.mark.parametrize(
    ("method", "path", "body", "problem"),
    [
        ("PUT", f"/lists/{LIST_ID}/members/x", {"email_address": "a@x.org"}, "status_if_new"),
        (
            "PUT",
            f"/lists/{LIST_ID}/members/x",
            {"email_address": "a@x.org", "status_if_new": "archived"},
            "archived",
        ),
        (
            "POST",
            "/batches",
            {"operations": [{"method": "PUT", "path": "/x", "body": {}}]},
            "string",
        ),
        ("PATCH", "/ping", None, "not declared"),
        ("GET", "/no/such/path", None, "matches no path"),
    ],
)
def test_the_checker_catches_bad_requests(
    spec: Spec, method: str, path: str, body: Any, problem: str
) -> None:
    with pytest.raises(AssertionError, match=problem):
        check_request(spec, method, path, None, body)


def test_the_checker_catches_bad_query_parameters(spec: Spec) -> None:
    auth = {"authorization": "Basic eDp5"}
    too_many = httpx.Request("GET", f"{BASE}/lists/{LIST_ID}/members?count=5000", headers=auth)
    with pytest.raises(AssertionError, match="5000 is greater than the maximum"):
        check_request(spec, "GET", f"/lists/{LIST_ID}/members", too_many, None)
    unknown = httpx.Request("GET", f"{BASE}/lists/{LIST_ID}/members?apikey=x", headers=auth)
    with pytest.raises(AssertionError, match="'apikey' is not declared"):
        check_request(spec, "GET", f"/lists/{LIST_ID}/members", unknown, None)

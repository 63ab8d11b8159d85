"""CiviCRMClient request format (form field params=<json>, auth headers, URL template),
APIv4 error shapes and keyset paging, against respx routes."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx

from mcsync.api.civicrm import CiviCRMClient, endpoint
from mcsync.budget import Budget
from mcsync.errors import ApiError, AuthError, BadResponse, RetriesExhausted

URL = "https://crm.example.org/civicrm/ajax/api4"
KEY = "civiSECRETapikey9876"
SITE_KEY = "siteSECRETkey1234"


def make_client(url: str = URL, **kwargs: Any) -> CiviCRMClient:
    kwargs.setdefault("budget", Budget.unlimited())
    kwargs.setdefault("sleep", lambda seconds: None)
    return CiviCRMClient(url=url, api_key=KEY, **kwargs)


def sent_params(request: httpx.Request) -> Any:
    form = parse_qs(request.content.decode())
    assert list(form) == ["params"]
    return json.loads(form["params"][0])


def values(rows: list[dict[str, Any]]) -> httpx.Response:
    return httpx.Response(200, json={"values": rows, "count": len(rows), "version": 4})


@pytest.fixture
def mock() -> Any:
    with respx.mock(assert_all_called=False) as router:
        yield router


def test_request_format_and_headers(mock: respx.MockRouter) -> None:
    route = mock.post(f"{URL}/Contact/get").mock(return_value=values([{"id": 1}]))
    client = make_client(site_key=SITE_KEY)
    params = {"select": ["id"], "where": [["id", "=", 1]], "limit": 1}
    assert client.call("Contact", "get", params) == [{"id": 1}]
    request = route.calls.last.request
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["x-civi-auth"] == f"Bearer {KEY}"
    assert request.headers["x-civi-key"] == SITE_KEY
    assert request.headers["x-requested-with"] == "XMLHttpRequest"
    assert "authorization" not in request.headers
    assert sent_params(request) == params
    assert client.request_count == 1


def test_no_site_key_header_unless_configured(mock: respx.MockRouter) -> None:
    route = mock.post(f"{URL}/Group/get").mock(return_value=values([]))
    make_client().call("Group", "get")
    assert "x-civi-key" not in route.calls.last.request.headers
    assert sent_params(route.calls.last.request) == {}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (URL, f"{URL}/GroupContact/save"),
        (URL + "/", f"{URL}/GroupContact/save"),
        (
            "https://site/wp-admin/admin.php?page=CiviCRM&q=civicrm/ajax/api4/{entity}/{action}",
            "https://site/wp-admin/admin.php?page=CiviCRM&q=civicrm/ajax/api4/GroupContact/save",
        ),
    ],
)
def test_endpoint(url: str, expected: str) -> None:
    assert endpoint(url, "GroupContact", "save") == expected


def test_template_url_is_used(mock: respx.MockRouter) -> None:
    template = "https://site/wp-admin/admin.php?page=CiviCRM&q=civicrm/ajax/api4/{entity}/{action}"
    route = mock.post(
        "https://site/wp-admin/admin.php",
        params={"page": "CiviCRM", "q": "civicrm/ajax/api4/Email/get"},
    ).mock(return_value=values([{"id": 3}]))
    assert make_client(template).call("Email", "get", {"limit": 1}) == [{"id": 3}]
    assert route.call_count == 1


def test_apiv4_error_becomes_api_error(mock: respx.MockRouter) -> None:
    route = mock.post(f"{URL}/Contact/get").mock(
        return_value=httpx.Response(
            500, json={"error_code": 0, "error_message": "Invalid field 'nope'", "status": 500}
        )
    )
    with pytest.raises(ApiError) as info:
        make_client().call("Contact", "get", {"select": ["nope"]})
    assert type(info.value) is ApiError and info.value.detail == "Invalid field 'nope'"
    assert str(info.value).startswith(
        "CiviCRM: POST https://crm.example.org/civicrm/ajax/api4/Contact/get failed (500"
    )
    assert route.call_count == 1


def test_csrf_rejection_is_an_api_error(mock: respx.MockRouter) -> None:
    body = {
        "error_code": 400,
        "error_message": "SECURITY ALERT: Ajax requests can only be issued by javascript clients",
    }
    mock.post(f"{URL}/Contact/get").mock(return_value=httpx.Response(400, json=body))
    with pytest.raises(ApiError, match="SECURITY ALERT"):
        make_client().call("Contact", "get")


def test_authx_plain_text_401_is_an_auth_error(mock: respx.MockRouter) -> None:
    mock.post(f"{URL}/Contact/get").mock(
        return_value=httpx.Response(
            401, text="HTTP 401 Invalid credential", headers={"content-type": "text/plain"}
        )
    )
    with pytest.raises(AuthError) as info:
        make_client(site_key=SITE_KEY).call("Contact", "get")
    message = str(info.value)
    assert "HTTP 401 Invalid credential" in message and "civicrm.api_key" in message
    assert "civicrm.site_key" in message and KEY not in message and SITE_KEY not in message


def test_cms_html_403_is_an_auth_error(mock: respx.MockRouter) -> None:
    mock.post(f"{URL}/Contact/get").mock(
        return_value=httpx.Response(
            403,
            text="<html><title>Access denied</title></html>",
            headers={"content-type": "text/html"},
        )
    )
    with pytest.raises(AuthError, match="access AJAX API"):
        make_client().call("Contact", "get")


def test_maintenance_503_is_retried(mock: respx.MockRouter) -> None:
    route = mock.post(f"{URL}/Contact/get").mock(
        side_effect=[
            httpx.Response(
                503,
                json={
                    "status_code": 503,
                    "status_message": "Temporarily unavailable for maintenance.",
                },
            ),
            values([{"id": 1}]),
        ]
    )
    assert make_client().call("Contact", "get") == [{"id": 1}]
    assert route.call_count == 2


def test_create_is_not_retried_after_a_timeout(mock: respx.MockRouter) -> None:
    route = mock.post(f"{URL}/Contact/create").mock(
        side_effect=[httpx.ReadTimeout("slow"), values([{"id": 9}])]
    )
    with pytest.raises(RetriesExhausted, match="not retried"):
        make_client().call("Contact", "create", {"values": {"contact_type": "Individual"}})
    assert route.call_count == 1


@pytest.mark.parametrize(
    "body",
    [
        {"values": {"1": {"id": 1}}},
        {"is_error": 0},
        {"error_message": "Unknown api parameter: setFoo"},
    ],
)
def test_unexpected_success_shapes(mock: respx.MockRouter, body: dict[str, Any]) -> None:
    mock.post(f"{URL}/Contact/get").mock(return_value=httpx.Response(200, json=body))
    with pytest.raises(ApiError):
        make_client().call("Contact", "get")


def test_html_page_with_200_is_a_bad_response(mock: respx.MockRouter) -> None:
    mock.post(f"{URL}/Contact/get").mock(
        return_value=httpx.Response(
            200, text="<!DOCTYPE html><html>login</html>", headers={"content-type": "text/html"}
        )
    )
    with pytest.raises(BadResponse, match="text/html: '<!DOCTYPE html>"):
        make_client().call("Contact", "get")


def test_get_pages_uses_keyset_paging(mock: respx.MockRouter) -> None:
    rows = [{"id": i, "contact_id": i * 10} for i in (3, 5, 8, 13, 21)]

    def handler(request: httpx.Request) -> httpx.Response:
        params = sent_params(request)
        last = params["where"][-1][2]
        page = [r for r in rows if r["id"] > last][: params["limit"]]
        return values(page)

    route = mock.post(f"{URL}/SubscriptionHistory/get").mock(side_effect=handler)
    base = {
        "select": ["contact_id"],
        "where": [["group_id", "IN", [4, 5]]],
        "orderBy": {"date": "DESC"},
    }
    pages = list(make_client().get_pages("SubscriptionHistory", base, page_size=2, after_id=1))
    assert pages == [rows[0:2], rows[2:4], rows[4:5]]
    first, second = (sent_params(call.request) for call in route.calls[:2])
    assert first == {
        "select": ["contact_id", "id"],
        "where": [["group_id", "IN", [4, 5]], ["id", ">", 1]],
        "orderBy": {"id": "ASC"},
        "limit": 2,
        "offset": 0,
    }
    assert second["where"][-1] == ["id", ">", 5]
    assert route.call_count == 3  # the short third page ends it
    assert base["where"] == [["group_id", "IN", [4, 5]]]  # the caller's params are untouched


def test_get_pages_stops_on_an_empty_full_boundary(mock: respx.MockRouter) -> None:
    route = mock.post(f"{URL}/GroupContact/get").mock(
        side_effect=[values([{"id": 1}, {"id": 2}]), values([])]
    )
    assert list(make_client().get_pages("GroupContact", {}, page_size=2)) == [
        [{"id": 1}, {"id": 2}]
    ]
    assert route.call_count == 2


def test_get_pages_detects_a_server_that_ignores_the_id_filter(mock: respx.MockRouter) -> None:
    mock.post(f"{URL}/Contact/get").mock(return_value=values([{"id": 1}, {"id": 2}]))
    with pytest.raises(BadResponse, match="stopped advancing"):
        list(make_client().get_pages("Contact", {}, page_size=2))


def test_save_chunks_and_retries_only_matched_saves(mock: respx.MockRouter) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return values([{**r, "id": 100 + r["contact_id"]} for r in sent_params(request)["records"]])

    route = mock.post(f"{URL}/GroupContact/save").mock(side_effect=handler)
    records = [{"contact_id": i, "group_id": 4} for i in range(5)]
    saved = make_client().save(
        "GroupContact",
        records,
        defaults={"status": "Added"},
        match=["contact_id", "group_id"],
        chunk=2,
    )
    assert [r["id"] for r in saved] == [100, 101, 102, 103, 104]
    assert route.call_count == 3
    first = sent_params(route.calls[0].request)
    assert first == {
        "records": records[:2],
        "defaults": {"status": "Added"},
        "match": ["contact_id", "group_id"],
    }


@pytest.mark.parametrize(
    ("records", "match", "calls"),
    [
        ([{"contact_id": 1}], ["contact_id"], 2),  # matched: repeatable, retried
        ([{"id": 7, "on_hold": 1}], None, 2),  # by id: repeatable, retried
        ([{"email": "a@x.org", "contact_id": 1}], None, 1),  # would create: not retried
    ],
)
def test_save_retry_depends_on_whether_repeating_is_safe(
    mock: respx.MockRouter, records: list[dict[str, Any]], match: list[str] | None, calls: int
) -> None:
    route = mock.post(f"{URL}/Email/save").mock(side_effect=[httpx.Response(502), values(records)])
    client = make_client()
    if calls == 2:
        assert client.save("Email", records, match=match) == records
    else:
        with pytest.raises(RetriesExhausted):
            client.save("Email", records, match=match)
    assert route.call_count == calls


def test_keys_never_leak_into_debug_lines(mock: respx.MockRouter) -> None:
    mock.post(f"{URL}/Contact/get").mock(
        return_value=httpx.Response(
            401, text=f"HTTP 401 bad key {KEY}", headers={"content-type": "text/plain"}
        )
    )
    lines: list[str] = []
    with pytest.raises(AuthError) as info:
        make_client(site_key=SITE_KEY, debug_http=lines.append).call("Contact", "get")
    assert lines and any("x-civi-auth: ***" in line.lower() for line in lines)
    for text in [str(info.value), *lines]:
        assert KEY not in text and SITE_KEY not in text

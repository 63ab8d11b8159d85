"""MailchimpClient request shapes and result handling, against respx routes."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
import respx

from mcsync.api.mailchimp import (
    MailchimpClient,
    member_hash,
    member_put_operation,
    parse_batch_results,
)
from mcsync.budget import Budget
from mcsync.errors import ApiError, AuthError, BadResponse, ConfigError, RetriesExhausted

KEY = "5ec4e7f00dbabe5ec4e7f00dbabe1234-us21"
BASE = "https://us21.api.mailchimp.com/3.0"
RESULTS_URL = "https://mailchimp-api-batch.s3.amazonaws.com/b1-response.tar.gz?X-Amz-Signature=x"


def make_client(**kwargs: Any) -> MailchimpClient:
    kwargs.setdefault("budget", Budget.unlimited())
    kwargs.setdefault("sleep", lambda seconds: None)
    return MailchimpClient(account_name="main", api_key=KEY, **kwargs)


@pytest.fixture
def mock() -> Any:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


def query(route: respx.Route, index: int = -1) -> dict[str, str]:
    return dict(route.calls[index].request.url.params)


# -- base URL and auth --------------------------------------------------------------------------


def test_data_centre_comes_from_the_key_and_basic_auth_is_sent(mock: respx.MockRouter) -> None:
    route = mock.get("/ping").mock(
        return_value=httpx.Response(200, json={"health_status": "Everything's Chimpy!"})
    )
    client = make_client()
    assert client.ping() == {"health_status": "Everything's Chimpy!"}
    request = route.calls.last.request
    assert str(request.url) == "https://us21.api.mailchimp.com/3.0/ping"
    expected = base64.b64encode(f"mcsync:{KEY}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected}"
    assert client.request_count == 1


def test_base_url_overrides_the_data_centre() -> None:
    with respx.mock() as router:
        route = router.get("http://127.0.0.1:8010/3.0/ping").mock(
            return_value=httpx.Response(200, json={})
        )
        make_client(base_url="http://127.0.0.1:8010/3.0").ping()
    assert route.call_count == 1


@pytest.mark.parametrize("key", ["nodatacentre", "abc-", "abc-us 21", "abc-https://evil"])
def test_a_key_without_a_data_centre_is_a_config_error(key: str) -> None:
    with pytest.raises(ConfigError, match=r"mailchimp\.accounts\.main\.api_key") as info:
        MailchimpClient(account_name="main", api_key=key, budget=Budget.unlimited())
    assert key not in str(info.value)


def test_auth_error_names_the_account_and_what_to_check(mock: respx.MockRouter) -> None:
    mock.get("/ping").mock(
        return_value=httpx.Response(401, json={"title": "API Key Invalid", "status": 401})
    )
    with pytest.raises(AuthError) as info:
        make_client().ping()
    message = str(info.value)
    assert message.startswith("Mailchimp main: ")
    assert "mailchimp.accounts.main.api_key" in message and "data centre" in message
    assert KEY not in message


# -- metadata -----------------------------------------------------------------------------------


def test_lists_pages_until_total_items(mock: respx.MockRouter) -> None:
    route = mock.get("/lists").mock(
        side_effect=[
            httpx.Response(
                200, json={"lists": [{"id": f"l{i}"} for i in range(1000)], "total_items": 1001}
            ),
            httpx.Response(200, json={"lists": [{"id": "last"}], "total_items": 1001}),
        ]
    )
    lists = make_client().lists()
    assert len(lists) == 1001 and lists[-1] == {"id": "last"}
    assert query(route, 0) == {
        "count": "1000",
        "offset": "0",
        "exclude_fields": "_links,lists._links",
    }
    assert query(route, 1)["offset"] == "1000"


@pytest.mark.parametrize(
    ("method", "args", "path", "key"),
    [
        ("interest_categories", ("L1",), "/lists/L1/interest-categories", "categories"),
        ("interests", ("L1", "C1"), "/lists/L1/interest-categories/C1/interests", "interests"),
        ("merge_fields", ("L1",), "/lists/L1/merge-fields", "merge_fields"),
    ],
)
def test_collections(
    mock: respx.MockRouter, method: str, args: tuple[str, ...], path: str, key: str
) -> None:
    route = mock.get(path).mock(
        return_value=httpx.Response(200, json={key: [{"id": "x"}], "total_items": 1})
    )
    assert getattr(make_client(), method)(*args) == [{"id": "x"}]
    assert route.call_count == 1


def test_collection_without_its_list_is_a_bad_response(mock: respx.MockRouter) -> None:
    mock.get("/lists").mock(return_value=httpx.Response(200, json={"title": "odd"}))
    with pytest.raises(BadResponse, match="'lists' list"):
        make_client().lists()


def test_get_list_and_ids_are_quoted(mock: respx.MockRouter) -> None:
    route = mock.get("/lists/a%2Fb").mock(return_value=httpx.Response(200, json={"id": "a/b"}))
    assert make_client().get_list("a/b") == {"id": "a/b"}
    assert route.call_count == 1


# -- member pages -------------------------------------------------------------------------------


def pages_handler(total_for: Any, delay_for: Any = None) -> tuple[Any, dict[str, Any]]:
    """A members endpoint that answers each offset with ids offset.. and records concurrency."""
    lock = threading.Lock()
    state: dict[str, Any] = {"now": 0, "peak": 0, "offsets": []}

    def handler(request: httpx.Request) -> httpx.Response:
        offset, count = int(request.url.params["offset"]), int(request.url.params["count"])
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
            state["offsets"].append(offset)
        try:
            if delay_for:
                time.sleep(delay_for(offset))
            total = total_for(offset)
            ids = range(offset, min(offset + count, total))
            return httpx.Response(
                200,
                json={
                    "members": [{"id": f"{i:032x}", "email_address": f"m{i}@x.org"} for i in ids],
                    "total_items": total,
                },
            )
        finally:
            with lock:
                state["now"] -= 1

    return handler, state


def test_member_pages_fetch_concurrently_yield_in_order_and_stop_at_total(
    mock: respx.MockRouter,
) -> None:
    # later offsets answer sooner, so completion order differs from offset order
    handler, state = pages_handler(lambda offset: 55, lambda offset: 0.05 - offset / 2000)
    route = mock.get("/lists/L1/members").mock(side_effect=handler)
    since = datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    before = datetime(2024, 6, 1, tzinfo=UTC)
    pages = list(
        make_client().member_pages(
            "L1", since_last_changed=since, before_last_changed=before, page_size=10, concurrency=3
        )
    )
    assert [(offset, total) for offset, total, _ in pages] == [(o, 55) for o in range(0, 60, 10)]
    assert [m["id"] for _, _, members in pages for m in members] == [f"{i:032x}" for i in range(55)]
    assert route.call_count == 6 and sorted(state["offsets"]) == list(range(0, 60, 10))
    assert 2 <= state["peak"] <= 3
    params = query(route, 0)
    assert params["count"] == "10" and params["offset"] == "0"
    assert params["sort_field"] == "last_changed" and params["sort_dir"] == "DESC"
    assert params["since_last_changed"] == "2024-05-01T10:00:00+00:00"
    assert params["before_last_changed"] == "2024-06-01T00:00:00+00:00"
    fields = params["fields"].split(",")
    assert fields[0] == "total_items" and "members.email_address" in fields
    assert "members.last_changed" in fields and "members.interests" in fields


def test_member_pages_start_offset_and_custom_fields(mock: respx.MockRouter) -> None:
    handler, _ = pages_handler(lambda offset: 25)
    route = mock.get("/lists/L1/members").mock(side_effect=handler)
    pages = list(make_client().member_pages("L1", page_size=10, start_offset=10, fields=["id"]))
    assert [offset for offset, _, _ in pages] == [10, 20]
    assert query(route, 0)["fields"] == "total_items,members.id"
    assert "since_last_changed" not in query(route, 0)


def test_member_pages_follow_a_growing_total(mock: respx.MockRouter) -> None:
    handler, _ = pages_handler(lambda offset: 25 if offset == 0 else 35)
    mock.get("/lists/L1/members").mock(side_effect=handler)
    pages = list(make_client().member_pages("L1", page_size=10, concurrency=2))
    assert [offset for offset, _, _ in pages] == [0, 10, 20, 30]
    assert pages[-1][1] == 35


def test_member_pages_skip_pages_emptied_by_a_shrinking_total(mock: respx.MockRouter) -> None:
    handler, _ = pages_handler(lambda offset: 45 if offset == 0 else 15)
    mock.get("/lists/L1/members").mock(side_effect=handler)
    pages = list(make_client().member_pages("L1", page_size=10, concurrency=10))
    assert [offset for offset, _, _ in pages] == [0, 10]


def test_member_pages_of_an_empty_audience(mock: respx.MockRouter) -> None:
    handler, _ = pages_handler(lambda offset: 0)
    route = mock.get("/lists/L1/members").mock(side_effect=handler)
    assert list(make_client().member_pages("L1")) == [(0, 0, [])]
    assert route.call_count == 1


def test_member_pages_error_surfaces_after_earlier_pages(mock: respx.MockRouter) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params["offset"])
        if offset == 20:
            return httpx.Response(400, json={"title": "Invalid Resource", "detail": "bad"})
        member = {"id": f"{offset:032x}", "email_address": f"m{offset}@x.org"}
        return httpx.Response(200, json={"members": [member], "total_items": 40})

    mock.get("/lists/L1/members").mock(side_effect=handler)
    seen: list[int] = []
    with pytest.raises(ApiError, match="Invalid Resource"):
        for offset, _, _ in make_client().member_pages("L1", page_size=10, concurrency=2):
            seen.append(offset)
    assert seen == [0, 10]


def test_member_pages_need_aware_datetimes_and_a_valid_page_size() -> None:
    client = make_client()
    with pytest.raises(ValueError, match="timezone-aware"):
        next(client.member_pages("L1", since_last_changed=datetime(2024, 1, 1)))
    with pytest.raises(ValueError, match="page_size"):
        next(client.member_pages("L1", page_size=1001))


# -- single members -----------------------------------------------------------------------------


def test_member_hash_is_md5_of_the_lower_cased_address() -> None:
    assert (
        member_hash("Urist.McVankab@FreddiesJokes.com")
        == hashlib.md5(b"urist.mcvankab@freddiesjokes.com").hexdigest()
    )
    assert MailchimpClient.member_hash("A@B.C") == member_hash("a@b.c")


def test_get_member_returns_none_when_absent(mock: respx.MockRouter) -> None:
    present = mock.get(f"/lists/L1/members/{member_hash('a@x.org')}").mock(
        return_value=httpx.Response(200, json={"email_address": "a@x.org", "status": "subscribed"})
    )
    mock.get(f"/lists/L1/members/{member_hash('b@x.org')}").mock(
        return_value=httpx.Response(404, json={"title": "Resource Not Found", "status": 404})
    )
    client = make_client()
    assert client.get_member("L1", "A@x.org") == {
        "email_address": "a@x.org",
        "status": "subscribed",
    }
    assert client.get_member("L1", "b@x.org") is None
    assert query(present) == {"exclude_fields": "_links"}


def test_put_member_upserts_by_hash(mock: respx.MockRouter) -> None:
    route = mock.put(f"/lists/L1/members/{member_hash('a@x.org')}").mock(
        return_value=httpx.Response(200, json={"id": member_hash("a@x.org")})
    )
    make_client().put_member(
        "L1", "a@x.org", {"status_if_new": "subscribed", "interests": {"i1": True}}
    )
    body = json.loads(route.calls.last.request.content)
    assert body == {
        "email_address": "a@x.org",
        "status_if_new": "subscribed",
        "interests": {"i1": True},
    }


def test_put_members_returns_member_errors_in_order(mock: respx.MockRouter) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        email = json.loads(request.content)["email_address"]
        if email.startswith("gone"):
            return httpx.Response(
                400,
                json={
                    "title": "Member In Compliance State",
                    "status": 400,
                    "detail": f"{email} is in a compliance state",
                },
            )
        return httpx.Response(200, json={"email_address": email})

    mock.put(url__regex=r"/lists/L1/members/[0-9a-f]{32}$").mock(side_effect=handler)
    writes = [
        (f"{'gone' if i % 3 == 0 else 'ok'}{i}@x.org", {"status_if_new": "subscribed"})
        for i in range(12)
    ]
    results = make_client().put_members("L1", writes, concurrency=4)
    assert len(results) == 12
    for (email, _), result in zip(writes, results, strict=True):
        if email.startswith("gone"):
            assert isinstance(result, ApiError) and result.title == "Member In Compliance State"
            assert result.detail == f"{email} is in a compliance state"
        else:
            assert result == {"email_address": email}
    assert make_client().put_members("L1", []) == []


def test_put_members_raises_account_wide_failures(mock: respx.MockRouter) -> None:
    mock.put(url__regex=r"/lists/L1/members/").mock(
        return_value=httpx.Response(401, json={"title": "API Key Invalid"})
    )
    with pytest.raises(AuthError):
        make_client().put_members("L1", [("a@x.org", {"status_if_new": "subscribed"})] * 3)


# -- batches ------------------------------------------------------------------------------------


def test_member_put_operation() -> None:
    op = member_put_operation("L1", "A@x.org", {"status_if_new": "pending"}, "op-7")
    assert op == {
        "method": "PUT",
        "path": f"/lists/L1/members/{member_hash('a@x.org')}",
        "operation_id": "op-7",
        "body": json.dumps({"email_address": "A@x.org", "status_if_new": "pending"}),
    }


def test_start_batch_posts_operations_once(mock: respx.MockRouter) -> None:
    route = mock.post("/batches").mock(
        side_effect=[httpx.Response(503), httpx.Response(200, json={"id": "b2"})]
    )
    ops = [member_put_operation("L1", "a@x.org", {"status_if_new": "subscribed"}, "1")]
    with pytest.raises(RetriesExhausted, match="not retried"):
        make_client().start_batch(ops)
    assert route.call_count == 1
    assert json.loads(route.calls.last.request.content) == {"operations": ops}


def test_start_batch_timeout_is_not_retried(mock: respx.MockRouter) -> None:
    route = mock.post("/batches").mock(
        side_effect=[httpx.ReadTimeout("slow"), httpx.Response(200, json={})]
    )
    with pytest.raises(RetriesExhausted):
        make_client().start_batch([])
    assert route.call_count == 1


def test_get_and_delete_batch(mock: respx.MockRouter) -> None:
    mock.get("/batches/b1").mock(
        return_value=httpx.Response(200, json={"id": "b1", "status": "started"})
    )
    deleted = mock.delete("/batches/b1").mock(return_value=httpx.Response(204))
    mock.delete("/batches/gone").mock(
        return_value=httpx.Response(404, json={"title": "Resource Not Found"})
    )
    client = make_client()
    assert client.get_batch("b1")["status"] == "started"
    client.delete_batch("b1")
    assert deleted.call_count == 1
    client.delete_batch("gone")  # already gone: no error


def build_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        dir_info = tarfile.TarInfo("b1-response")
        dir_info.type = tarfile.DIRTYPE
        archive.addfile(dir_info)
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_batch_results_downloads_without_credentials_and_parses() -> None:
    part1 = [
        {
            "status_code": 200,
            "operation_id": "1",
            "response": json.dumps({"id": "h1", "status": "subscribed"}),
        },
        {
            "status_code": 400,
            "operation_id": "2",
            "response": json.dumps({"title": "Member In Compliance State"}),
        },
    ]
    part2 = [
        {"status_code": 500, "operation_id": "3", "response": "<html>oops"},
        {"status_code": 204, "operation_id": "4", "response": ""},
    ]
    archive = build_tar(
        {
            "b1-response/1.json": json.dumps(part1).encode(),
            "b1-response/2.json": json.dumps(part2).encode(),
            "b1-response/README.txt": b"ignored",
        }
    )
    with respx.mock() as router:
        route = router.get(RESULTS_URL).mock(return_value=httpx.Response(200, content=archive))
        results = make_client().batch_results(RESULTS_URL)
    assert "authorization" not in route.calls.last.request.headers
    assert results == [
        {"operation_id": "1", "status_code": 200, "response": {"id": "h1", "status": "subscribed"}},
        {
            "operation_id": "2",
            "status_code": 400,
            "response": {"title": "Member In Compliance State"},
        },
        {"operation_id": "3", "status_code": 500, "response": None},
        {"operation_id": "4", "status_code": 204, "response": None},
    ]


@pytest.mark.parametrize(
    "raw",
    [
        b"not a tarball at all",
        build_tar({"r/1.json": b"[]"})[:40],  # truncated gzip
        build_tar({"r/1.json": b'{"not": "a list"}'}),
        build_tar({"r/1.json": b'[{"status_code": 200'}),
        build_tar({"r/1.json": b"[1, 2]"}),
    ],
)
def test_corrupt_batch_results_are_bad_responses(raw: bytes) -> None:
    with pytest.raises(BadResponse, match="batch result"):
        parse_batch_results(raw, service="Mailchimp main")


@pytest.mark.parametrize("status", [403, 404])
def test_expired_or_missing_batch_results_are_bad_responses(status: int) -> None:
    with respx.mock() as router:
        router.get(RESULTS_URL).mock(
            return_value=httpx.Response(status, text="<Error>AccessDenied</Error>")
        )
        with pytest.raises(BadResponse, match=f"not available .HTTP {status}.") as info:
            make_client().batch_results(RESULTS_URL)
    assert info.value.status == status and "api_key" not in str(info.value)

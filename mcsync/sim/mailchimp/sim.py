"""The simulator, whole: :class:`MailchimpSim` combines the parts and answers requests.

Here are the HTTP entry point (authentication, problem documents, page hooks, batch results at
their pre-signed link), the routing table, and batch operations, which replay their operations
through the same router.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, unquote

from mcsync.sim.base import SimRequest, SimResponse
from mcsync.sim.mailchimp.batches import Batch, BatchInvalid, parse_operations
from mcsync.sim.mailchimp.fields import MergeFieldsAndInterests
from mcsync.sim.mailchimp.helpers import _is_member_page, _paging
from mcsync.sim.mailchimp.lists import Lists
from mcsync.sim.mailchimp.member_reads import MemberReads
from mcsync.sim.mailchimp.member_writes import MemberWrites
from mcsync.sim.mailchimp.model import (
    _DC_HOST,
    Account,
    Handler,
    Problem,
    _Call,
    _invalid,
    _not_found,
    epoch,
    iso,
)
from mcsync.sim.mailchimp.seeding import Seeding
from mcsync.sim.mailchimp.state import MailchimpState


class MailchimpSim(
    Seeding, Lists, MemberReads, MemberWrites, MergeFieldsAndInterests, MailchimpState
):
    """The simulator: ``handle`` answers API requests; the other methods seed and inspect."""

    # ---------------------------------------------------------------- HTTP entry point

    def handle(self, request: SimRequest) -> SimResponse:
        with self.lock:
            self.request_log.append((request.method, request.path))
            now = self._now()
            self._batches.advance(now)
            try:
                response = self._handle(request, now)
            except Problem as error:
                return self._problem(error)
            if self._page_hooks and _is_member_page(request, response):
                self._run_page_hooks()
            return response

    def _run_page_hooks(self) -> None:
        """Count one member page answered; fire the actions it was the last page for."""
        due = []
        for hook in self._page_hooks:
            hook[0] -= 1
            if hook[0] == 0:
                due.append(hook)
        self._page_hooks = [h for h in self._page_hooks if h[0] > 0]
        for _, action in due:
            action()

    def _handle(self, request: SimRequest, now: datetime) -> SimResponse:
        host = request.headers.get("host", "127.0.0.1")
        if request.path.startswith("/_sim/batch-results/"):
            return self._results(request)
        if request.path != "/3.0" and not request.path.startswith("/3.0/"):
            raise _not_found()
        account = self._authenticate(request, host)
        call = _Call(
            account,
            request.method,
            request.path[4:].rstrip("/"),
            {},
            request.query,
            request.body,
            now,
            host,
        )
        status, payload = self._route(call)
        if payload is None:
            return SimResponse(status, {"X-Request-Id": str(uuid.uuid4())})
        payload = self._project(payload, call.query)
        response = SimResponse.json(status, payload)
        response.headers["X-Request-Id"] = str(uuid.uuid4())
        return response

    def _problem(self, error: Problem) -> SimResponse:
        instance = str(uuid.uuid4())
        response = SimResponse.json(
            error.status, error.document(instance), "application/problem+json; charset=utf-8"
        )
        response.headers["X-Request-Id"] = instance
        response.headers.update(error.headers)
        return response

    def _authenticate(self, request: SimRequest, host: str) -> Account:
        """HTTP Basic (any user, key as password) or Bearer; legacy ``apikey`` on GETs ([docs])."""
        keys: list[str] = []
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credential.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            keys.append(decoded.partition(":")[2])
        elif scheme.lower() == "bearer":
            keys.append(credential.strip())
        query_key = request.arg("apikey")
        if query_key is not None and request.method == "GET":
            keys.append(query_key)
        if not keys or not any(keys):
            raise Problem(401, "API Key Missing", "Your request did not include an API key.")
        account = self._accounts.get(keys[0])
        if account is None or any(k != keys[0] for k in keys):
            raise Problem(
                401,
                "API Key Invalid",
                "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
            )
        dc_match = _DC_HOST.match(host.lower())
        if dc_match and dc_match.group(1) != account.dc:
            raise Problem(
                403, "Wrong Datacenter", "The API key provided is linked to a different datacenter."
            )
        return account

    def _results(self, request: SimRequest) -> SimResponse:
        """The batch results archive; no auth, like the real pre-signed storage link, whose
        signature must match (S3 answers 403 AccessDenied otherwise)."""
        name = request.path.rsplit("/", 1)[-1]
        batch_id = name.removesuffix(".tar.gz")
        signature = request.arg("Signature") or ""
        if not hmac.compare_digest(signature, self._sign(batch_id)):
            return SimResponse(
                403,
                {"Content-Type": "application/xml"},
                b"<Error><Code>AccessDenied</Code><Message>Request has expired or the signature"
                b" does not match</Message></Error>",
            )
        archive = self._batches.archive(batch_id)
        if request.method != "GET" or archive is None:
            return SimResponse(
                404, {"Content-Type": "application/xml"}, b"<Error><Code>NoSuchKey</Code></Error>"
            )
        return SimResponse(200, {"Content-Type": "application/x-gzip"}, archive)

    # ---------------------------------------------------------------- routing

    def _add_routes(self) -> None:
        ident = r"([^/]+)"
        table: list[tuple[str, dict[str, Handler]]] = [
            ("", {"GET": self._get_root}),
            ("/ping", {"GET": self._get_ping}),
            ("/lists", {"GET": self._get_lists}),
            ("/lists/{}", {"GET": self._get_list, "POST": self._post_bulk}),
            ("/lists/{}/members", {"GET": self._get_members, "POST": self._post_member}),
            (
                "/lists/{}/members/{}",
                {
                    "GET": self._get_member,
                    "PUT": self._put_member,
                    "PATCH": self._patch_member,
                    "DELETE": self._archive,
                },
            ),
            ("/lists/{}/members/{}/tags", {"GET": self._get_tags, "POST": self._post_tags}),
            ("/lists/{}/members/{}/activity-feed", {"GET": self._get_activity_feed}),
            ("/lists/{}/members/{}/actions/delete-permanent", {"POST": self._forget}),
            (
                "/lists/{}/merge-fields",
                {"GET": self._get_merge_fields, "POST": self._post_merge_field},
            ),
            ("/lists/{}/merge-fields/{}", {"GET": self._get_merge_field}),
            (
                "/lists/{}/interest-categories",
                {"GET": self._get_categories, "POST": self._post_category},
            ),
            ("/lists/{}/interest-categories/{}", {"GET": self._get_category}),
            (
                "/lists/{}/interest-categories/{}/interests",
                {"GET": self._get_interests, "POST": self._post_interest},
            ),
            ("/lists/{}/interest-categories/{}/interests/{}", {"GET": self._get_interest}),
            ("/lists/{}/webhooks", {"GET": self._get_webhooks, "POST": self._post_webhook}),
            (
                "/lists/{}/webhooks/{}",
                {
                    "GET": self._get_webhook,
                    "PATCH": self._patch_webhook,
                    "DELETE": self._delete_webhook,
                },
            ),
            ("/batches", {"GET": self._get_batches, "POST": self._post_batch}),
            ("/batches/{}", {"GET": self._get_batch, "DELETE": self._delete_batch}),
        ]
        for template, handlers in table:
            pattern = re.escape(template).replace(r"\{\}", ident)
            self._routes.append((re.compile(f"^{pattern}$"), handlers))

    def _route(self, call: _Call) -> tuple[int, Any]:
        for pattern, handlers in self._routes:
            match = pattern.match(call.path)
            if match is None:
                continue
            handler = handlers.get(call.method)
            if handler is None:
                raise Problem(
                    405,
                    "Method Not Allowed",
                    "The requested method and resource are not compatible. See the "
                    "Allow header for this resource's available methods.",
                    headers={"Allow": ", ".join(handlers)},
                )
            call.params = {str(i): unquote(v) for i, v in enumerate(match.groups())}
            return handler(call)
        raise _not_found()

    # ---------------------------------------------------------------- batches

    def _post_batch(self, call: _Call) -> tuple[int, Any]:
        try:
            operations = parse_operations(call.json_body())
        except BatchInvalid as error:
            raise _invalid(error.errors) from None
        account, host = call.account, call.host

        def execute(
            method: str, path: str, query: dict[str, list[str]], body: str | None, now: datetime
        ) -> tuple[int, str]:
            path, _, query_text = path.partition("?")
            failing = self._operation_fault(path)
            if failing is not None:
                error = Problem(
                    failing,
                    "Internal Server Error",
                    "An unexpected internal error has occurred. Please contact Support for "
                    "more information.",
                )
                return failing, json.dumps(error.document(str(uuid.uuid4())))
            merged = {**parse_qs(query_text, keep_blank_values=True), **query}
            inner = _Call(
                account,
                method,
                "/" + path.strip("/") if path.strip("/") else "",
                {},
                merged,
                (body or "").encode("utf-8"),
                now,
                host,
            )
            try:
                status, payload = self._route(inner)
            except Problem as error:
                return error.status, json.dumps(error.document(str(uuid.uuid4())))
            except Exception as error:  # noqa: BLE001 - a simulator bug must not wedge the queue
                crash = Problem(500, "Internal Server Error", f"{type(error).__name__}: {error}")
                return 500, json.dumps(crash.document(str(uuid.uuid4())))
            if payload is None:
                return status, ""
            return status, json.dumps(self._project(payload, merged))

        batch = self._batches.submit(account.account_id, operations, call.now, execute)
        return 200, self._render_batch(call, batch)

    def _get_batches(self, call: _Call) -> tuple[int, Any]:
        count, offset = _paging(call)
        batches = self._batches.of_owner(call.account.account_id)
        return 200, {
            "batches": [self._render_batch(call, b) for b in batches[offset : offset + count]],
            "total_items": len(batches),
            "_links": self._links(call.account.dc, "/batches", ("self", "GET"), ("create", "POST")),
        }

    def _get_batch(self, call: _Call) -> tuple[int, Any]:
        batch = self._batches.get(call.account.account_id, call.params["0"])
        if batch is None:
            raise _not_found()
        return 200, self._render_batch(call, batch)

    def _delete_batch(self, call: _Call) -> tuple[int, Any]:
        if not self._batches.delete(call.account.account_id, call.params["0"]):
            raise _not_found()
        return 204, None

    def _render_batch(self, call: _Call, batch: Batch) -> dict[str, Any]:
        base = self.results_base_url or f"http://{call.host}"
        signed = (
            f"{base.rstrip('/')}/_sim/batch-results/{batch.id}.tar.gz?AWSAccessKeyId="
            f"AKIASIMULATOR&Expires={epoch(batch.finished_at) + 86400}"
            f"&Signature={self._sign(batch.id)}"
        )
        doc = batch.to_json(call.now, signed, iso)
        doc["_links"] = self._links(
            call.account.dc,
            f"/batches/{batch.id}",
            ("parent", "GET"),
            ("self", "GET"),
            ("delete", "DELETE"),
        )
        return doc

    def _sign(self, batch_id: str) -> str:
        """The pre-signed link's signature: a secret of this simulator over the batch id."""
        return hmac.new(self._signing_key, batch_id.encode(), hashlib.sha256).hexdigest()

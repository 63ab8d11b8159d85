"""The simulator, whole: :class:`CiviSim` combines the parts and is the HTTP front door.

The front door reads the route forms (path, WordPress ``q=``, Joomla ``task=``, multi-call),
authenticates (authx flows and guards), checks route permission, CSRF, the method and
maintenance, and answers with CiviCRM's envelopes.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from mcsync.sim.base import SimRequest, SimResponse
from mcsync.sim.civicrm.execution import ApiExecution
from mcsync.sim.civicrm.helpers import _request_fields, _route, _text_401
from mcsync.sim.civicrm.model import CSRF_MESSAGE, FORBIDDEN_HTML, GET_MESSAGE, ApiUser
from mcsync.sim.civicrm.schema import (
    CiviApiError,
)
from mcsync.sim.civicrm.seeding import Seeding
from mcsync.sim.civicrm.state import CiviState


class CiviSim(Seeding, ApiExecution, CiviState):
    """CiviCRM APIv4 over REST, in memory. Safe to share between threads via ``lock``."""

    def handle(self, request: SimRequest) -> SimResponse:
        """Answer one HTTP request exactly as a CiviCRM site would."""
        with self.lock:
            fields = _request_fields(request)
            route = _route(request)
            if route is None:
                return SimResponse(404, {"Content-Type": "text/html"}, b"<h1>Page not found</h1>")
            if route[0] == "api":
                self.request_log.append((request.method, f"{route[1]}.{route[2]}"))
            if self.maintenance:
                message = "Temporarily unavailable for maintenance."
                return SimResponse.json(503, {"status_code": 503, "status_message": message})
            auth = self._authenticate(request, fields)
            if isinstance(auth, SimResponse):
                return auth
            user, flow = auth
            if route[0] == "authx_id":
                return SimResponse.json(200, {
                    "contact_id": user.contact_id if user else None, "user_id": None,
                    "flow": flow, "cred": "api_key" if user else None,
                })  # fmt: skip
            if user is None:
                return SimResponse(403, {"Content-Type": "text/html; charset=UTF-8"},
                                   FORBIDDEN_HTML.encode())  # fmt: skip
            csrf_exempt = flow in ("xheader", "param", "legacyrest")
            requested_with = request.headers.get("x-requested-with", "")
            if not (csrf_exempt or requested_with == "XMLHttpRequest" or self.debug_enabled
                    or request.method == "OPTIONS"):  # fmt: skip
                return SimResponse.json(400, {"error_code": 400, "error_message": CSRF_MESSAGE})
            if route[0] == "multi":
                return self._multi_call(request, user, fields)
            entity, action = route[1], route[2]
            if request.method == "GET" and not (action.startswith("get")
                                                or action == "autocomplete"):  # fmt: skip
                return SimResponse.json(405, {"error_code": 405, "error_message": GET_MESSAGE})
            status, payload = self._call(user, entity, action, fields.get("params"),
                                         fields.get("index"))  # fmt: skip
            return SimResponse.json(status, payload)

    def _authenticate(
        self, request: SimRequest, fields: dict[str, str]
    ) -> tuple[ApiUser | None, str | None] | SimResponse:
        """authx: credential sources in order, then the guards; failures are text/plain 401."""
        headers = request.headers
        site_key = headers.get("x-civi-key") or fields.get("_authxSiteKey")
        if "x-civi-auth" in headers:
            cred, flow = headers["x-civi-auth"], "xheader"
        elif "authorization" in headers and self.header_flow_enabled:
            cred, flow = headers["authorization"], "header"
        elif fields.get("_authx"):
            cred, flow = fields["_authx"], "param"
        elif fields.get("api_key") and fields.get("key"):
            cred, flow, site_key = "Bearer " + fields["api_key"], "legacyrest", fields["key"]
        else:
            return None, None
        scheme, _, token = cred.strip().partition(" ")
        user = self._lookup_key(token.strip()) if scheme == "Bearer" else None
        if user is None:
            return _text_401("Invalid credential")
        if flow == "legacyrest" and not self._site_key_ok(site_key):
            return _text_401("Invalid credential")
        guard_ok = (
            not self.guards
            or ("site_key" in self.guards and self._site_key_ok(site_key))
            or ("perm" in self.guards and user.can_authenticate)
        )
        if not guard_ok:
            return _text_401(f"Login not permitted. Must satisfy guard ({', '.join(self.guards)}).")
        return user, flow

    def _lookup_key(self, token: str) -> ApiUser | None:
        for key, user in self._users.items():
            if hmac.compare_digest(key.encode(), token.encode()):
                return user
        return None

    def _site_key_ok(self, given: str | None) -> bool:
        return bool(self.site_key and given and hmac.compare_digest(self.site_key, given))

    def _multi_call(self, request: SimRequest, user: ApiUser, fields: dict[str, str]
                    ) -> SimResponse:  # fmt: skip
        try:
            calls = json.loads(fields.get("calls") or "{}")
        except ValueError:
            calls = None
        if not isinstance(calls, dict):
            status, payload = self._error(user, CiviApiError("Invalid calls: expected a JSON "
                                                             "object"))  # fmt: skip
            return SimResponse.json(status, payload)
        out: dict[str, Any] = {}
        any_ok = False
        for name, call in calls.items():
            if not isinstance(call, list) or len(call) < 2:
                status, out[name] = self._error(user, CiviApiError("Invalid call"))
                continue
            entity, action = str(call[0]), str(call[1])
            self.request_log.append((request.method, f"{entity}.{action}"))
            params = call[2] if len(call) > 2 else {}
            index = call[3] if len(call) > 3 else None
            status, out[name] = self._call(user, entity, action, params, index)
            any_ok = any_ok or status == 200
        return SimResponse.json(200 if any_ok or not calls else 500, out)

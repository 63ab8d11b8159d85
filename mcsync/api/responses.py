"""What an HTTP answer from either API means (the single classifier behind every retry), what
it says (problem details, a short body snippet, Retry-After), and the masking that keeps
secrets out of every message built from it.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx

Outcome = Literal["ok", "retry", "auth", "blocked", "not_found", "fatal"]

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MASK = "***"

_SECRET_HEADER = re.compile(
    r"(?i)\b(authorization|x-civi-auth|x-civi-key)(['\"]?\s*[:=]\s*['\"]?)([^'\"\r\n,}]+)"
)
# Keys, and the signatures and credentials of pre-signed object-storage links (S3, GCS).
_SECRET_PARAM = re.compile(
    r"(?i)\b(apikey|api_key|_authx|_authxsitekey|signature|awsaccesskeyid|x-amz-credential"
    r"|x-amz-security-token|x-goog-credential)=([^&\s'\"]+)"
)
_URL_USERINFO = re.compile(r"(?i)\b(https?://)[^/\s:@]+:[^/\s@]+@")

_CIVI_DEADLOCK = re.compile(r"(?i)deadlock|lock wait timeout")
_CIVI_MASKED = "Sorry an error occurred"


def redact(text: str, secrets: Sequence[str]) -> str:
    """Mask every secret (as is, URL-encoded, repr- or JSON-escaped), credential headers, key
    params and URL passwords in ``text``."""
    variants = {v for s in secrets if s for v in _written_forms(s)}
    for secret in sorted(variants, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _SECRET_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = _SECRET_PARAM.sub(lambda m: f"{m.group(1)}={MASK}", text)
    return _URL_USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)


# Characters that repr() or JSON may escape; the runs of a secret between them are masked
# too, so a secret survives no quoting scheme (h11 quotes a refused header value as bytes).
_ESCAPABLE = re.compile(r"[^\x21-\x7e]|['\"\\]")
_MIN_RUN = 8


def _written_forms(secret: str) -> set[str]:
    """The secret as it may appear in a message: as is, URL-encoded, as a Python str or bytes
    repr, as JSON, and each long run of it between escapable characters."""
    forms = {
        secret,
        quote(secret, safe=""),
        repr(secret)[1:-1],
        repr(secret.encode("utf-8"))[2:-1],
        json.dumps(secret)[1:-1],
        secret.encode("unicode_escape").decode("ascii"),
    }
    forms.update(run for run in _ESCAPABLE.split(secret) if len(run) >= _MIN_RUN)
    return forms


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _edge_block(response: httpx.Response) -> bool:
    """An HTML "Request Blocked" page from a CDN/firewall in front of the API (no JSON)."""
    if "html" not in response.headers.get("content-type", "").lower():
        return False
    return "request blocked" in response.text[:2000].lower()


def classify(response: httpx.Response) -> Outcome:
    """The single decision on what a response means for the caller (read the body first)."""
    status = response.status_code
    if 200 <= status < 300:
        return "ok"
    if status == 403 and _edge_block(response):
        # A firewall in front of the API, not the API refusing the key.
        return "blocked"
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if status in RETRY_STATUSES:
        body = _json_object(response) if status == 500 else None
        message = body.get("error_message") if body else None
        # CiviCRM answers 500 for any APIv4 exception; only a deadlock is worth retrying.
        if isinstance(message, str) and not _CIVI_DEADLOCK.search(message):
            return "fatal"
        return "retry"
    return "fatal"


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def problem_details(response: httpx.Response) -> tuple[str | None, str | None]:
    """``(title, detail)`` from a Mailchimp problem document or a CiviCRM APIv4 error body."""
    body = _json_object(response)
    if body is None:
        return None, None
    return problem_text(body)


def problem_text(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(title, detail)`` of a problem document already parsed (a batch operation's
    response too): Mailchimp's field errors are part of the detail."""
    title = body.get("title") if isinstance(body.get("title"), str) else None
    detail = body.get("detail") if isinstance(body.get("detail"), str) else None
    errors = body.get("errors")
    if isinstance(errors, list):
        # Mailchimp 400 "Invalid Resource" lists the failing fields here.
        fields = [
            f"{e.get('field') or '?'}: {e.get('message') or ''}".strip()
            for e in errors
            if isinstance(e, dict)
        ]
        if fields:
            detail = f"{detail} ({'; '.join(fields)})" if detail else "; ".join(fields)
    civi = body.get("error_message") or body.get("status_message")
    if detail is None and isinstance(civi, str):
        detail = civi
        if _CIVI_MASKED in civi:
            detail += " (grant the API user's role 'view debug output' to see the reason)"
    return title, detail


def body_snippet(response: httpx.Response, limit: int = 80) -> str:
    """What arrived, for messages: content type and the first ``limit`` characters."""
    content_type = response.headers.get("content-type", "no content type").split(";")[0]
    text = " ".join(response.text[: limit * 4].split())
    if not text:
        return f"{content_type}, empty body"
    return f"{content_type}: {text[:limit]!r}" + ("..." if len(text) > limit else "")

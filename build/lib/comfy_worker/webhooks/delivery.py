"""One delivery attempt: the body, the signed headers, the POST, and what its answer means.

2xx: delivered. 410 Gone: the receiver wants no more, stop (``failed``). Any other status, a timeout or a
connection error: ``retry`` on the schedule of sql/008_webhooks.sql. Redirects are not followed (a 3xx is a
failed attempt, retried, its Location in the error). A callback URL that the URL policy refuses (a private or
cloud metadata address, not http/https; WEBHOOK_URL_ALLOWLIST opens a host) is ``failed`` at once with the
reason. The operator's WEBHOOK_URL is trusted as configured (it may be on a private network).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from comfy_worker.errors import WebhookRefused, WebhookUnavailable
from comfy_worker.models import WebhookEvent
from comfy_worker.urlpolicy import UrlPolicy, display_url, prepare_request
from comfy_worker.webhooks.signing import sign

WEBHOOK_POLICY = UrlPolicy(
    what="webhook URL", allowlist_var="WEBHOOK_URL_ALLOWLIST", schemes="http or https", rejected=WebhookRefused,
    unavailable=WebhookUnavailable, private_var=None,
)
EXCERPT = 300  # characters of a refusing receiver's body kept in last_error


@dataclass(frozen=True)
class Attempt:
    outcome: str  # delivered | retry | failed
    status: int | None = None
    error: str | None = None


def rfc3339(at: datetime) -> str:
    """``2026-12-07T02:56:14.123456Z``: RFC 3339 UTC with microseconds, the form of the data's timestamps on
    every store (sql/009_webhooks_review.sql's _cw_rfc3339; the SQLite store's own text)."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def body_of(event: WebhookEvent) -> bytes:
    """The request body: ``{"type", "timestamp", "data"}``; the same bytes on every attempt."""
    at = event.created_at or datetime.now(UTC)
    payload = {"type": event.event_type, "timestamp": rfc3339(at), "data": event.payload}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode()


async def deliver(
    client: httpx.AsyncClient,
    event: WebhookEvent,
    url: str,
    keys: list[bytes],
    *,
    timeout_s: float,
    allowlist: tuple[str, ...],
    trusted: bool = False,
) -> Attempt:
    """POST ``event`` to ``url`` once, within ``timeout_s`` in all (connect, send, the receiver's answer).

    ``trusted``: the operator's WEBHOOK_URL, sent as configured. Any other URL (a task's callback_url) must
    resolve to public addresses only, unless its host is in ``allowlist`` (WEBHOOK_URL_ALLOWLIST)."""
    shown = display_url(url)
    if trusted:
        target, headers, extensions = httpx.URL(url), {}, {}
    else:
        try:
            # ALLOW_PRIVATE_URLS is the inputs' switch: it does not open private addresses to callbacks
            target, headers, extensions = await prepare_request(
                url, allowlist=allowlist, allow_private=False, policy=WEBHOOK_POLICY
            )
        except WebhookRefused as exc:
            return Attempt("failed", None, f"refused: {exc}")
        except WebhookUnavailable as exc:
            return Attempt("retry", None, str(exc))
    body = body_of(event)
    headers = {
        **headers,
        **sign(keys, event.webhook_id, int(time.time()), body),
        "content-type": "application/json",
        "user-agent": "comfy-worker-webhooks",
    }
    try:
        async with asyncio.timeout(timeout_s):
            response = await client.post(target, content=body, headers=headers, extensions=extensions)
    except TimeoutError:
        return Attempt("retry", None, f"no answer from {shown} within WEBHOOK_TIMEOUT_S={timeout_s:g} s")
    except httpx.HTTPError as exc:
        return Attempt("retry", None, f"{type(exc).__name__} posting to {shown}: {exc}")
    return classify(response, shown)


def classify(response: httpx.Response, shown: str) -> Attempt:
    status = response.status_code
    if 200 <= status < 300:
        return Attempt("delivered", status)
    excerpt = _excerpt(response)
    if status == 410:
        return Attempt("failed", status, f"{shown} answered 410 Gone: delivery stopped; body: {excerpt}")
    if 300 <= status < 400:
        where = response.headers.get("location", "?")
        return Attempt("retry", status, f"{shown} answered {status} to {where}: redirects are not followed")
    return Attempt("retry", status, f"{shown} answered {status}; body: {excerpt}")


def _excerpt(response: httpx.Response) -> str:
    try:
        text: Any = response.text
    except (UnicodeDecodeError, httpx.HTTPError):
        text = repr(response.content[:EXCERPT])
    text = " ".join(str(text).split())
    return text[:EXCERPT] + ("…" if len(text) > EXCERPT else "")

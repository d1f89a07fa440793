"""Webhooks: each action POSTs one signed JSON document to the action's ``url``.

The body names the action, event and subscription and carries the granule's metadata::

    {"action_id": "00000000000000a1-0000000000000007-0000", "event_id": 161,
     "subscription_id": 7, "action_index": 0, "collection": "AIA_171.1", "event_type": "insert",
     "granule": "2014/02/03/aia_171.jp2", "start": "2014-02-03T02:08:47.340000Z",
     "end": "2014-02-03T02:08:47.340000Z", "start_us": 1391393327340000,
     "end_us": 1391393327340000, "footprint": {"x_min": -1200, "y_min": -1100, "x_max": 1200,
     "y_max": 1100}, "numeric": {"cloud": 12.5}, "strings": {"instrument": "AIA"}}

Signature (the Standard Webhooks convention): headers ``webhook-id`` (the action id, the same on
every retry: use it to drop duplicates), ``webhook-timestamp`` (Unix seconds of this attempt) and
``webhook-signature`` = ``v1,`` + base64(HMAC-SHA256(key, "<id>.<timestamp>.<body>")). The key is
the action's ``secret`` param: a ``whsec_<base64>`` secret is base64-decoded (so Standard Webhooks
libraries verify it as is), any other secret is used as its UTF-8 bytes. A receiver verifies::

    import base64, hashlib, hmac, time

    def verify(secret: bytes, headers, body: bytes, tolerance_s: int = 300) -> bool:
        msg_id, ts = headers["webhook-id"], headers["webhook-timestamp"]
        if abs(time.time() - int(ts)) > tolerance_s:
            return False  # a replay of an old delivery
        mac = hmac.new(secret, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
        expected = "v1," + base64.b64encode(mac).decode()
        return any(hmac.compare_digest(expected, s) for s in headers["webhook-signature"].split())

Replies: 2xx delivered; 410 gone (the driver disables the action); 408, 429, 5xx, timeouts and
connection errors retry, honouring Retry-After; redirects (not followed: the signature is for this
url) and other 4xx failed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from heliostat import __version__
from heliostat.archive.times import iso
from heliostat.subscriptions.channels.base import Delivery, Result
from heliostat.subscriptions.model import ActionKind, MatchedAction, webhook_key

RETRY_STATUSES = frozenset({408, 429})


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0  # for the reply to start, and between its chunks
    total_timeout_s: float = 30.0
    max_per_host: int = 8  # concurrent requests to one host (and so connections kept open to it)
    max_connections: int = 256


class WebhookChannel:
    kind: ActionKind = "webhook"

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def deliver(self, batch: Sequence[Delivery]) -> list[Result]:
        session = self._client()
        return list(await asyncio.gather(*(self._post(session, d.action) for d in batch)))

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            s = self.settings
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=s.max_connections, limit_per_host=s.max_per_host
                ),
                timeout=aiohttp.ClientTimeout(
                    total=s.total_timeout_s, sock_connect=s.connect_timeout_s,
                    sock_read=s.read_timeout_s,
                ),
                headers={"user-agent": f"heliostat/{__version__}"},
            )  # fmt: skip
        return self._session

    async def _post(self, session: aiohttp.ClientSession, a: MatchedAction) -> Result:
        params = dict(a.action.params)
        url, secret = params.get("url", ""), params.get("secret", "")
        try:
            key = webhook_key(secret)
        except ValueError:
            key = b""
        if not url or not key:
            return Result("failed", "the action has no url or no valid secret")
        body = payload(a)
        headers = {"content-type": "application/json", **sign(key, a.id, body)}
        try:
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as r:
                snippet = (await r.content.read(200)).decode("utf-8", "replace").strip()
                detail = f"HTTP {r.status}" + (f": {snippet}" if snippet else "")
                return _status_result(r.status, detail, r.headers.get("retry-after"))
        except (aiohttp.InvalidURL, ValueError) as e:
            return Result("failed", f"bad url: {e}")
        except TimeoutError:
            return Result("retry", "timed out")
        except (aiohttp.ClientError, OSError) as e:
            return Result("retry", f"{type(e).__name__}: {e}")


def _status_result(status: int, detail: str, retry_after: str | None) -> Result:
    if 200 <= status < 300:
        return Result("delivered", detail)
    if status == 410:
        return Result("gone", detail)
    if status >= 500 or status in RETRY_STATUSES:
        return Result("retry", detail, _retry_after_s(retry_after))
    return Result("failed", detail)


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None when absent or junk."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def sign(key: bytes, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The Standard Webhooks headers for body sent as msg_id."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": ts,
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }


def payload(a: MatchedAction) -> bytes:
    e = a.event
    doc: dict[str, Any] = {
        "action_id": a.id, "event_id": a.event_id, "subscription_id": a.subscription_id,
        "action_index": a.index, "collection": e.collection, "event_type": e.type,
        "granule": e.granule, "start": iso(e.start_us), "end": iso(e.end_us),
        "start_us": e.start_us, "end_us": e.end_us,
        "footprint": None if e.box is None else {
            "x_min": e.box.x_min, "y_min": e.box.y_min, "x_max": e.box.x_max, "y_max": e.box.y_max,
        },
        "numeric": dict(e.numeric), "strings": dict(e.strings),
    }  # fmt: skip
    return json.dumps(doc, separators=(",", ":")).encode()

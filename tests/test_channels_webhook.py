"""The webhook channel against a real aiohttp receiver started by the tests."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

import pytest
from aiohttp import web

from heliostat.errors import InvalidArgument
from heliostat.subscriptions.auth import Principal
from heliostat.subscriptions.channels.base import Delivery
from heliostat.subscriptions.channels.webhook import WebhookChannel, WebhookSettings
from heliostat.subscriptions.model import (
    Action,
    Box,
    Collection,
    GranuleEvent,
    MatchedAction,
    Subscription,
    validate_action,
)
from heliostat.subscriptions.service import SubscriptionService

SECRET = "a-secret-of-24-characters"
OPERATOR = Principal("ops", operator=True)
RAW = b"\x01\x02" * 16
WHSEC = "whsec_" + base64.b64encode(RAW).decode()


def verify(secret: bytes, headers: Mapping[str, str], body: bytes, tolerance_s: int = 300) -> bool:
    """The receiver's check as documented in the webhook module."""
    msg_id, ts = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(ts)) > tolerance_s:
        return False
    mac = hmac.new(secret, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(mac).decode()
    return any(hmac.compare_digest(expected, s) for s in headers["webhook-signature"].split())


@dataclass
class Receiver:
    url: str = ""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    peers: set[object] = field(default_factory=set)
    in_flight: int = 0
    max_in_flight: int = 0


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()

    async def ok(request: web.Request) -> web.Response:
        body = await request.read()
        rx.received.append((dict(request.headers), body))
        rx.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        secret = SECRET.encode() if request.query.get("key") != "whsec" else RAW
        if not verify(secret, request.headers, body):
            return web.Response(status=401, text="bad signature")
        return web.Response(status=204)

    async def slow(request: web.Request) -> web.Response:
        rx.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        rx.in_flight += 1
        rx.max_in_flight = max(rx.max_in_flight, rx.in_flight)
        await asyncio.sleep(0.05)
        rx.in_flight -= 1
        return web.Response(status=200, text="thanks")

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(status=200)

    def status(code: int, **headers: str) -> web.RequestHandler:
        async def handler(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(status=code, text=f"answer {code}", headers=headers)

        return handler

    app = web.Application()
    app.router.add_post("/ok", ok)
    app.router.add_post("/slow", slow)
    app.router.add_post("/hang", hang)
    app.router.add_post("/fail", status(500))
    app.router.add_post("/busy", status(429, **{"Retry-After": "7"}))
    app.router.add_post(
        "/later", status(503, **{"Retry-After": formatdate(time.time() + 60, usegmt=True)})
    )
    app.router.add_post("/gone", status(410))
    app.router.add_post("/bad", status(400))
    app.router.add_post("/moved", status(301, Location="/ok"))
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rx.url = f"http://127.0.0.1:{port}"
    yield rx
    await runner.cleanup()


EVENT = GranuleEvent(
    "AIA_171.1", "insert", "2014/02/03/aia_171.jp2", 1_391_393_327_340_000, 1_391_393_328_000_000,
    Box(-1200, -1100, 1200, 1100), (("cloud", 12.5),), (("instrument", "AIA"),),
)  # fmt: skip


def delivery(url: str, event_id: int = 161, secret: str = SECRET) -> Delivery:
    action = validate_action(Action("webhook", (("secret", secret), ("url", url))), 0)
    return Delivery(MatchedAction(event_id, 7, 0, "alice", action, EVENT), 1, None)


async def test_posts_signed_json_that_verifies(receiver: Receiver) -> None:
    ch = WebhookChannel(WebhookSettings())
    d = delivery(receiver.url + "/ok")
    whsec = delivery(receiver.url + "/ok?key=whsec", 162, WHSEC)
    results = await ch.deliver([d, whsec])
    await ch.close()
    assert [(r.outcome, r.detail) for r in results] == [("delivered", "HTTP 204")] * 2
    headers, body = receiver.received[0]
    assert headers["webhook-id"] == d.action.id == "00000000000000a1-0000000000000007-0000"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc == {
        "action_id": d.action.id, "event_id": 161, "subscription_id": 7, "action_index": 0,
        "collection": "AIA_171.1", "event_type": "insert", "granule": "2014/02/03/aia_171.jp2",
        "start": "2014-02-03T02:08:47.340000Z", "end": "2014-02-03T02:08:48.000000Z",
        "start_us": EVENT.start_us, "end_us": EVENT.end_us,
        "footprint": {"x_min": -1200, "y_min": -1100, "x_max": 1200, "y_max": 1100},
        "numeric": {"cloud": 12.5}, "strings": {"instrument": "AIA"},
    }  # fmt: skip
    assert verify(SECRET.encode(), headers, body)
    tampered = body.replace(b"12.5", b"13.5")
    assert not verify(SECRET.encode(), headers, tampered)
    assert not verify(b"another-secret-of-24-chars", headers, body)
    stale = {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) - 3600)}
    assert not verify(SECRET.encode(), stale, body)


async def test_outcomes_follow_the_status(receiver: Receiver) -> None:
    ch = WebhookChannel(WebhookSettings())
    paths = ["/ok", "/fail", "/busy", "/later", "/gone", "/bad", "/moved", "/nowhere"]
    results = await ch.deliver([delivery(receiver.url + p, i) for i, p in enumerate(paths)])
    await ch.close()
    got = {p: r for p, r in zip(paths, results, strict=True)}
    assert got["/ok"].outcome == "delivered"
    assert (got["/fail"].outcome, got["/fail"].detail) == ("retry", "HTTP 500: answer 500")
    assert got["/fail"].retry_after_s is None
    assert (got["/busy"].outcome, got["/busy"].retry_after_s) == ("retry", 7.0)
    later = got["/later"].retry_after_s
    assert got["/later"].outcome == "retry" and later is not None and 50 < later <= 60
    assert (got["/gone"].outcome, got["/gone"].detail) == ("gone", "HTTP 410: answer 410")
    assert got["/bad"].outcome == "failed"
    assert got["/moved"].outcome == "failed" and got["/moved"].detail.startswith("HTTP 301")
    assert (got["/nowhere"].outcome, got["/nowhere"].detail) == (
        "failed",
        "HTTP 404: 404: Not Found",
    )


async def test_hanging_receiver_and_closed_port_retry(receiver: Receiver) -> None:
    ch = WebhookChannel(WebhookSettings(read_timeout_s=0.3, total_timeout_s=1.0))
    t0 = time.monotonic()
    hung, ok = await ch.deliver([delivery(receiver.url + "/hang"), delivery(receiver.url + "/ok")])
    assert time.monotonic() - t0 < 5
    assert (hung.outcome, hung.detail) == ("retry", "timed out")
    assert ok.outcome == "delivered"
    refused = (await ch.deliver([delivery("http://127.0.0.1:1/x")]))[0]
    assert refused.outcome == "retry" and "ClientConnectorError" in refused.detail
    await ch.close()


async def test_bounded_concurrency_per_host_and_connection_reuse(receiver: Receiver) -> None:
    ch = WebhookChannel(WebhookSettings(max_per_host=3))
    results = await ch.deliver([delivery(receiver.url + "/slow", i) for i in range(12)])
    assert {r.outcome for r in results} == {"delivered"}
    assert receiver.max_in_flight == 3
    for i in range(10):
        await ch.deliver([delivery(receiver.url + "/ok", 100 + i)])
    await ch.close()
    # 22 requests over the 3 connections the first burst opened, kept alive
    assert len(receiver.received) == 10 and len(receiver.peers) == 3


def test_secret_is_required_and_long_enough() -> None:
    for params, message in [
        ((("url", "https://h.example/x"),), "needs 'secret'"),
        ((("secret", "short"), ("url", "https://h.example/x")), "at least 16 bytes"),
        (
            (
                ("secret", "whsec_" + base64.b64encode(b"x" * 8).decode()),
                ("url", "https://h.example/x"),
            ),
            "at least 16",
        ),
        ((("secret", "whsec_not base64!"), ("url", "https://h.example/x")), "base64"),
    ]:
        with pytest.raises(InvalidArgument, match=message) as e:
            validate_action(Action("webhook", params), 1)
        assert e.value.field == "actions[1].secret"


async def test_delivers_actions_as_the_service_records_them(
    receiver: Receiver, tmp_path: Path
) -> None:
    """From publish to a verified POST: the MatchedAction the store returns is what is signed."""
    svc = SubscriptionService(tmp_path / "subs")
    try:
        svc.create_collection(OPERATOR, Collection("MODIS", "6", "geographic"))
        hook = Action("webhook", (("secret", SECRET), ("url", receiver.url + "/ok")))
        s = svc.create(
            Principal("alice"),
            Subscription(0, "", "MODIS.6", frozenset({"insert"}), actions=(hook,)),
        )
        event = GranuleEvent(
            "MODIS.6", "insert", "MOD021KM.hdf", 1, 2, Box(-10, -5, 10, 5), (("cloud", 3.0),)
        )
        (stored,) = svc.publish(OPERATOR, [event])
        (action,) = svc.store.actions_after(b"", 10, None)
    finally:
        svc.close()
    ch = WebhookChannel(WebhookSettings())
    (r,) = await ch.deliver([Delivery(action, 1, s)])
    await ch.close()
    assert r.outcome == "delivered"
    ((headers, body),) = receiver.received
    assert verify(SECRET.encode(), headers, body)
    doc = json.loads(body)
    assert (doc["event_id"], doc["subscription_id"], doc["granule"]) == (
        stored.id,
        s.id,
        "MOD021KM.hdf",
    )
    assert headers["webhook-id"] == doc["action_id"] == action.id

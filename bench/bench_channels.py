"""Delivery channel throughput to local receivers, each beside a bare client loop in the same run.

Webhooks: signed deliveries/s from WebhookChannel (batches of 100, 8 connections to the host) to an
aiohttp receiver answering 204, beside a bare aiohttp POST loop of the same bodies at the same
concurrency (no signing, no outcome mapping). E-mail: mails/s from EmailChannel (one address per
action, so one mail each; batches of 50 on one kept connection) to an aiosmtpd server, beside a
bare smtplib sendmail loop on one connection with a prebuilt message (and a bare loop of
aiosmtplib, the client the channel uses); plus actions/s when a batch
folds into digests (10 addresses per batch). Rounds alternate between channel and baseline and
the best of each is reported. Receivers run in their own processes, so client and
receiver each have a core of the 2-core box.

Run: .venv/bin/python bench/bench_channels.py [--webhooks 3000] [--mails 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import smtplib
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import aiosmtplib

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Report

from heliostat.subscriptions.channels.base import Delivery
from heliostat.subscriptions.channels.email import EmailChannel, EmailSettings, render
from heliostat.subscriptions.channels.sendlog import SendLog
from heliostat.subscriptions.channels.webhook import WebhookChannel, WebhookSettings, payload
from heliostat.subscriptions.model import Action, Box, GranuleEvent, MatchedAction
from heliostat.subscriptions.store import SubscriptionStore

SECRET = "bench-secret-of-24-chars"
BATCH = 100  # webhook deliveries per deliver() call
MAIL_BATCH = 50
EVENT = GranuleEvent(
    "AIA_171.1", "insert", "2014/02/03/aia_171.jp2", 1_391_393_327_340_000, 1_391_393_327_340_000,
    Box(-1200, -1100, 1200, 1100), (("cloud", 12.5), ("wavelength", 171.0)),
    (("instrument", "AIA"),),
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def http_receiver(port: int) -> None:
    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", ok)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def smtp_receiver(port: int) -> None:
    from aiosmtpd.controller import Controller

    class Sink:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            return "250 2.0.0 Ok: queued"

    Controller(Sink(), hostname="127.0.0.1", port=port).start()
    while True:
        time.sleep(3600)


def delivery(kind: str, i: int, params: dict[str, str]) -> Delivery:
    action = Action(kind, tuple(sorted(params.items())))  # type: ignore[arg-type]
    return Delivery(MatchedAction(i + 1, 7, 0, "alice", action, EVENT), 1, None)


async def webhook_channel(url: str, n: int) -> float:
    ds = [delivery("webhook", i, {"url": url, "secret": SECRET}) for i in range(n)]
    ch = WebhookChannel(WebhookSettings(max_per_host=8))
    await ch.deliver(ds[:BATCH])  # warm: open the connections
    t0 = time.perf_counter()
    for lo in range(0, n, BATCH):
        results = await ch.deliver(ds[lo : lo + BATCH])
        assert all(r.outcome == "delivered" for r in results), results[0]
    rate = n / (time.perf_counter() - t0)
    await ch.close()
    return rate


async def bare_aiohttp(url: str, n: int) -> float:
    bodies = [payload(delivery("webhook", i, {}).action) for i in range(n)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit_per_host=8)) as s:

        async def post(body: bytes) -> int:
            async with s.post(url, data=body) as r:
                await r.read()
                return r.status

        await asyncio.gather(*(post(b) for b in bodies[:BATCH]))
        t0 = time.perf_counter()
        for lo in range(0, n, BATCH):
            statuses = await asyncio.gather(*(post(b) for b in bodies[lo : lo + BATCH]))
            assert set(statuses) == {204}
        return n / (time.perf_counter() - t0)


async def email_channel(port: int, n: int, addresses: int | None = None) -> float:
    """Actions/s through EmailChannel; one address per action unless addresses is given."""
    settings = EmailSettings(host="127.0.0.1", port=port, digest_window_s=0, rate_limit=0)
    with tempfile.TemporaryDirectory() as tmp, SubscriptionStore(Path(tmp)) as store:
        return await _email_rate(EmailChannel(settings, SendLog(store)), n, addresses)


async def _email_rate(ch: EmailChannel, n: int, addresses: int | None) -> float:
    def address(i: int) -> str:
        return f"user{i if addresses is None else i % addresses}@example.org"

    ds = [delivery("email", i, {"address": address(i)}) for i in range(n)]
    await ch.deliver(ds[:1])  # warm: connect
    t0 = time.perf_counter()
    for lo in range(0, n, MAIL_BATCH):
        results = await ch.deliver(ds[lo : lo + MAIL_BATCH])
        assert all(r.outcome == "delivered" for r in results), results[0]
    rate = n / (time.perf_counter() - t0)
    await ch.close()
    return rate


async def bare_aiosmtplib(port: int, n: int) -> float:
    d = delivery("email", 0, {"address": "user0@example.org"})
    message = render("heliostat@localhost", "user0@example.org", [d])
    s = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
    await s.connect()
    await s.sendmail("heliostat@localhost", ["user0@example.org"], message)
    t0 = time.perf_counter()
    for i in range(n):
        await s.sendmail("heliostat@localhost", [f"user{i}@example.org"], message)
    rate = n / (time.perf_counter() - t0)
    await s.quit()
    return rate


def bare_smtplib(port: int, n: int) -> float:
    d = delivery("email", 0, {"address": "user0@example.org"})
    message = render("heliostat@localhost", "user0@example.org", [d])
    with smtplib.SMTP("127.0.0.1", port) as s:
        s.sendmail("heliostat@localhost", ["user0@example.org"], message)
        t0 = time.perf_counter()
        for i in range(n):
            s.sendmail("heliostat@localhost", [f"user{i}@example.org"], message)
        return n / (time.perf_counter() - t0)


def alternate(rounds: int, *runs: Callable[[], float]) -> list[list[float]]:
    """Rates of each run, taken in turn so that load from other work on the box falls on all."""
    rates: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for run, out in zip(runs, rates, strict=True):
            out.append(run())
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--webhooks", type=int, default=3000)
    ap.add_argument("--mails", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds; best is reported")
    args = ap.parse_args()
    report = Report(
        "channels",
        "Delivery channels to local receivers in their own processes: signed webhooks (batches "
        "of 100, 8 connections) vs a bare aiohttp POST loop; e-mail over one SMTP connection "
        "(batches of 50) vs bare smtplib and aiosmtplib sendmail loops. Rounds alternate with "
        "the baselines; the best of each is reported. 2-core box.",
    )
    ctx = mp.get_context("spawn")
    http_port, smtp_port = free_port(), free_port()
    procs = [ctx.Process(target=http_receiver, args=(http_port,), daemon=True),
             ctx.Process(target=smtp_receiver, args=(smtp_port,), daemon=True)]  # fmt: skip
    for p in procs:
        p.start()
    try:
        wait_listening(http_port)
        wait_listening(smtp_port)
        url = f"http://127.0.0.1:{http_port}/hook"
        n, r = args.webhooks, args.rounds
        ours, bare = alternate(r, lambda: asyncio.run(webhook_channel(url, n)),
                               lambda: asyncio.run(bare_aiohttp(url, n)))  # fmt: skip
        report.add("webhook deliveries (signed, outcome per action)", max(ours), "deliveries/s",
                   baseline_name="bare aiohttp POST loop", baseline_value=max(bare), n=n,
                   rounds=ours, baseline_rounds=bare)  # fmt: skip
        n = args.mails
        ours, bare, bare_aio = alternate(
            r,
            lambda: asyncio.run(email_channel(smtp_port, n)),
            lambda: bare_smtplib(smtp_port, n),
            lambda: asyncio.run(bare_aiosmtplib(smtp_port, n)),
        )
        report.add("e-mails (one action per mail)", max(ours), "mails/s",
                   baseline_name="bare smtplib sendmail loop", baseline_value=max(bare), n=n,
                   rounds=ours, baseline_rounds=bare)  # fmt: skip
        report.add("e-mails (one action per mail), vs the SMTP client it uses", max(ours),
                   "mails/s", baseline_name="bare aiosmtplib sendmail loop",
                   baseline_value=max(bare_aio), n=n, rounds=ours,
                   baseline_rounds=bare_aio)  # fmt: skip
        digests = [asyncio.run(email_channel(smtp_port, n, 10)) for _ in range(r)]
        report.add("e-mail actions folded into digests (10 addresses per batch of 50)",
                   max(digests), "actions/s",
                   baseline_name="bare smtplib sendmail loop (one action per mail)",
                   baseline_value=max(bare), n=n, rounds=digests)  # fmt: skip
    finally:
        for p in procs:
            p.terminate()
            p.join(5)
    print(report.write())


if __name__ == "__main__":
    main()

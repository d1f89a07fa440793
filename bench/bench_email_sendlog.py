"""What the durable e-mail send log costs: mails/s from EmailChannel with rate limits on (each
batch's addresses checked and their send slots reserved in the subscription store's LMDB by one
synced commit before any is mailed, so that processes sharing the store cannot together exceed a
limit), beside the same channel with limits off (no log) in the same run, to an aiosmtpd server
in its own process. One address per action (so one mail each); batches of 50 on one kept
connection; the limit is set high enough never to defer. Rounds alternate; the best of each is
reported.

Run: .venv/bin/python bench/bench_email_sendlog.py [--mails 500] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_channels import MAIL_BATCH, alternate, delivery, free_port, smtp_receiver, wait_listening
from harness import Report

from heliostat.subscriptions.channels.email import EmailChannel, EmailSettings
from heliostat.subscriptions.channels.sendlog import SendLog
from heliostat.subscriptions.store import SubscriptionStore


async def mails_per_s(port: int, n: int, limited: bool) -> float:
    settings = EmailSettings(
        host="127.0.0.1", port=port, digest_window_s=0,
        rate_limit=n + 1 if limited else 0, rate_window_s=3600,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, SubscriptionStore(Path(tmp)) as store:
        ch = EmailChannel(settings, SendLog(store))
        ds = [delivery("email", i, {"address": f"user{i}@example.org"}) for i in range(n + 1)]
        await ch.deliver(ds[:1])  # warm: connect
        t0 = time.perf_counter()
        for lo in range(1, n + 1, MAIL_BATCH):
            results = await ch.deliver(ds[lo : lo + MAIL_BATCH])
            assert all(r.outcome == "delivered" for r in results), results[0]
        rate = n / (time.perf_counter() - t0)
        if limited:
            assert len(SendLog(store).times([f"user{n}@example.org"])[f"user{n}@example.org"]) == 1
        await ch.close()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mails", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds; best is reported")
    args = ap.parse_args()
    report = Report(
        "email-sendlog",
        "E-mail channel with rate limits on (each batch's send slots checked and reserved by one "
        "synced LMDB commit before mailing, so the limits hold across processes and restarts) vs "
        "limits off, same run, one SMTP connection, batches of 50, one address per mail; aiosmtpd "
        "in its own process. Best of alternating rounds. Shared 2-core box.",
    )
    port = free_port()
    proc = mp.get_context("spawn").Process(target=smtp_receiver, args=(port,), daemon=True)
    proc.start()
    try:
        wait_listening(port)
        n = args.mails
        on, off = alternate(
            args.rounds,
            lambda: asyncio.run(mails_per_s(port, n, True)),
            lambda: asyncio.run(mails_per_s(port, n, False)),
        )
        report.add("e-mails, rate limits on (durable send log)", max(on), "mails/s",
                   baseline_name="same channel, limits off (no log)", baseline_value=max(off),
                   n=n, rounds=on, baseline_rounds=off)  # fmt: skip
    finally:
        proc.terminate()
        proc.join(5)
    print(report.write())


if __name__ == "__main__":
    main()

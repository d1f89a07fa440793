"""Delivery pipeline benchmark: actions delivered per second through the drivers (tail → durable
lease → datapool channel → durable result) beside the datapool placement loop alone (the same
atomic, fsynced copy with no ledger) and a bare copy loop, in the same run; plus the time the
ledger adds per action (lease and result transactions) and the publish → delivered latency.

Run: .venv/bin/python bench/bench_delivery.py [--actions N] [--kib K]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Report

from heliostat.subscriptions.auth import Principal
from heliostat.subscriptions.channels import files
from heliostat.subscriptions.channels.base import Delivery, Result
from heliostat.subscriptions.channels.datapool import DataPoolChannel
from heliostat.subscriptions.drivers import Drivers, DriverSettings
from heliostat.subscriptions.model import (
    Action,
    ActionKind,
    Box,
    Collection,
    GranuleEvent,
    MatchedAction,
    Subscription,
)
from heliostat.subscriptions.service import SubscriptionService

OP = Principal("ops", operator=True)


class Accept:
    """A receiver that accepts at once: isolates what the ledger and drivers cost."""

    kind: ActionKind = "datapool"

    async def deliver(self, batch: Sequence[Delivery]) -> list[Result]:
        return [Result("delivered", "accepted")] * len(batch)

    async def close(self) -> None:
        pass


def granules(root: Path, n: int, kib: int) -> list[str]:
    (root / "g").mkdir(parents=True)
    blob = os.urandom(kib << 10)
    names = []
    for i in range(n):
        (root / "g" / f"g{i:06d}.dat").write_bytes(blob)
        names.append(f"g/g{i:06d}.dat")
    return names


def event(name: str) -> GranuleEvent:
    return GranuleEvent("MODIS.6", "insert", name, 0, 0, Box(0, 0, 1, 1))


def published(path: Path, names: list[str]) -> SubscriptionService:
    """A service at path with alice's data-pool subscription on MODIS.6 and an insert event
    published for each name (500 per call): one recorded action each, for the drivers."""
    svc = SubscriptionService(path)
    try:
        svc.create_collection(OP, Collection("MODIS", "6", "geographic"))
        svc.create(
            Principal("alice"),
            Subscription(0, "", "MODIS.6", frozenset({"insert"}),
                         actions=(Action("datapool", (("pool", "pool"),)),)),
        )  # fmt: skip
        for i in range(0, len(names), 500):
            svc.publish(OP, [event(x) for x in names[i : i + 500]])
    except BaseException:
        svc.close()
        raise
    return svc


async def drain(d: Drivers, svc: SubscriptionService, n: int) -> float:
    """Start the drivers and time until n actions are delivered."""
    t0 = time.perf_counter()
    await d.start()
    while svc.stats.snapshot({}).counters["delivered"] < n:
        await asyncio.sleep(0.005)
    took = time.perf_counter() - t0
    await d.stop()
    return took


async def latency(d: Drivers, svc: SubscriptionService, names: list[str]) -> list[float]:
    """Publish one event at a time (at most 20/s) and time publish → delivered."""
    await d.start()
    out = []
    for name in names:
        before = svc.stats.snapshot({}).counters["delivered"]
        t0 = time.perf_counter()
        await asyncio.to_thread(svc.publish, OP, [event(name)])
        while svc.stats.snapshot({}).counters["delivered"] == before:
            await asyncio.sleep(0.0005)
        out.append(time.perf_counter() - t0)
        await asyncio.sleep(0.05)
    await d.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--actions", type=int, default=2000)
    ap.add_argument("--kib", type=int, default=16, help="granule file size")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    n = args.actions
    report = Report(
        "delivery",
        f"{n} datapool actions of {args.kib} KiB files through the delivery drivers "
        f"({args.workers} workers, {args.batch} per lease) beside the placement loop alone and "
        "a bare copy loop, same run, same disk. Every placement is atomic (temp file, fsync, "
        "rename, directory fsync); every lease and result is a synced LMDB commit.",
    )
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        base = Path(tmp)
        archive = base / "archive"
        names = granules(archive, n + 50, args.kib)

        # Baseline 1: a bare copy loop (no fsync, no rename).
        out = base / "bare"
        out.mkdir()
        t0 = time.perf_counter()
        for name in names[:n]:
            shutil.copyfile(archive / name, out / Path(name).name)
        bare = n / (time.perf_counter() - t0)
        # Baseline 2: the datapool placement itself, in a loop, without the ledger.
        folder = base / "loop"
        t0 = time.perf_counter()
        for i, name in enumerate(names[:n]):
            a = MatchedAction(i + 1, 1, 0, "alice", Action("datapool", (("pool", "p"),)),
                              event(name))  # fmt: skip
            files.place(archive / name, folder, a, sidecar=True)
        placed = n / (time.perf_counter() - t0)

        svc = published(base / "subs", names[:n])
        try:
            settings = DriverSettings(action_workers=args.workers, batch=args.batch, poll_s=0.01)
            channel = DataPoolChannel(archive, base / "pool")
            took = asyncio.run(drain(Drivers(svc, [channel], settings), svc, n))
            rate = n / took
            snap = svc.stats.snapshot({})
            lat = asyncio.run(
                latency(Drivers(svc, [DataPoolChannel(archive, base / "pool")], settings), svc,
                        names[n : n + 50])
            )  # fmt: skip
        finally:
            svc.close()
        assert len(list((base / "pool" / "pool").glob("*.json"))) == n + 50

        # The ledger's own ceiling: the same pipeline with a receiver that accepts at once.
        svc = SubscriptionService(base / "subs2")
        try:
            svc.create_collection(OP, Collection("MODIS", "6", "geographic"))
            svc.create(
                Principal("alice"),
                Subscription(0, "", "MODIS.6", frozenset({"insert"}),
                             actions=(Action("datapool", (("pool", "pool"),)),)),
            )  # fmt: skip
            m = 4 * n
            for i in range(0, m, 500):
                svc.publish(OP, [event(f"x{k}") for k in range(i, i + 500)])
            ceiling = m / asyncio.run(drain(Drivers(svc, [Accept()], settings), svc, m))
            tail = svc.stats.snapshot({}).stages["tail"]
        finally:
            svc.close()

    report.add("bare copy loop", bare, "files/s")
    report.add("datapool placement loop (no ledger)", placed, "actions/s",
               baseline_name="bare copy loop", baseline_value=bare)  # fmt: skip
    stages = {k: [v.count, v.mean_s, v.max_s] for k, v in snap.stages.items()}
    report.add("delivered through the pipeline", rate, "actions/s",
               baseline_name="datapool placement loop", baseline_value=placed,
               stages=stages)  # fmt: skip
    report.add("ledger ceiling (a receiver that accepts at once)", ceiling, "actions/s",
               baseline_name="delivered through the pipeline", baseline_value=rate)  # fmt: skip
    report.add("event driver: recorded actions queued", 1 / tail.mean_s, "actions/s",
               baseline_name="ledger ceiling", baseline_value=ceiling)  # fmt: skip
    st = snap.stages
    lease_ms = st["lease"].mean_s * 1e3
    result_ms = st["result"].mean_s * 1e3
    deliver_ms = st["delivery.datapool"].mean_s * 1e3
    report.add("ledger time per action (lease + result commits)", lease_ms + result_ms, "ms",
               baseline_name="datapool delivery per action", baseline_value=deliver_ms,
               lease_ms=lease_ms, result_ms=result_ms)  # fmt: skip
    report.add("publish → delivered, one event at a time (p50)", statistics.median(lat) * 1e3,
               "ms", p90_ms=sorted(lat)[int(len(lat) * 0.9)] * 1e3, max_ms=max(lat) * 1e3,
               placement_ms=1e3 / placed)  # fmt: skip
    print(report.write())


if __name__ == "__main__":
    main()

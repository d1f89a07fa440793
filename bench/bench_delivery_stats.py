"""What statistics shared by every server process cost: the delivery drivers' ceiling (a receiver
that accepts at once, so the ledger and drivers are all there is) with each process's counts
added to the store's totals every second (the default) and every 50 ms, beside the same pipeline
whose counts never leave the process (the per-process statistics of before), alternating rounds
in the same run; plus the time of one flush (a synced LMDB commit, on the drivers' executor) and
of the admin call's snapshot with the totals read beside the in-memory one.

Run: .venv/bin/python bench/bench_delivery_stats.py [--actions 4000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_delivery import Accept, drain, published
from harness import Report, percentiles, repeat

from heliostat.subscriptions.drivers import Drivers, DriverSettings
from heliostat.subscriptions.service import SubscriptionService
from heliostat.subscriptions.stats import PipelineStats

NEVER = 1e9  # the counts stay in the process for the whole run


def ceiling(base: Path, n: int, interval_s: float) -> float:
    """Actions/s through the drivers to a receiver that accepts at once."""
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        svc = published(Path(tmp), [f"x{k}" for k in range(n)])
        try:
            settings = DriverSettings(poll_s=0.01, stats_interval_s=interval_s)
            return n / asyncio.run(drain(Drivers(svc, [Accept()], settings), svc, n))
        finally:
            svc.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--actions", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; best is reported")
    args = ap.parse_args()
    n = args.actions
    report = Report(
        "delivery-stats",
        f"Delivery statistics summed over every process: drivers' ceiling ({n} actions to a "
        "receiver that accepts at once, 2 workers, 64 per lease) with counts flushed to the "
        "store's totals every 1 s and every 50 ms vs never (per-process counts), alternating "
        "rounds, best of each; one flush (synced commit) and the admin snapshot with and without "
        "the totals read. Shared 2-core box.",
    )
    runs: dict[float, list[float]] = {1.0: [], 0.05: [], NEVER: []}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        base = Path(tmp)
        for _ in range(args.rounds):
            for interval in runs:
                runs[interval].append(ceiling(base, n, interval))

        svc = SubscriptionService(base / "subs")
        try:
            stats = svc.stats

            def count_and_flush() -> None:
                for name in ("leased", "delivered", "events"):
                    stats.count(name, 64)
                stats.time("lease", 0.001, 64)
                stats.flush()

            flush = percentiles(repeat(count_and_flush, 50))
            local = PipelineStats()
            local.count("delivered", 5)
            shared = percentiles(repeat(lambda: stats.snapshot({}), 2000))
            alone = percentiles(repeat(lambda: local.snapshot({}), 2000))
            t0 = time.perf_counter()
            for _ in range(100_000):
                stats.count("delivered")
            count_ns = (time.perf_counter() - t0) / 100_000 * 1e9
        finally:
            svc.close()

    best_off = max(runs[NEVER])
    for interval, name in ((1.0, "every 1 s (default)"), (0.05, "every 50 ms")):
        report.add(f"drivers' ceiling, counts flushed to shared totals {name}",
                   max(runs[interval]), "actions/s",
                   baseline_name="same, counts kept per process", baseline_value=best_off,
                   rounds=runs[interval], baseline_rounds=runs[NEVER])  # fmt: skip
    report.add("one flush of a process's counts (synced commit), p50", flush["p50_ms"], "ms",
               **flush)  # fmt: skip
    report.add("admin snapshot with the shared totals read, p50", shared["p50_ms"], "ms",
               baseline_name="in-memory snapshot alone", baseline_value=alone["p50_ms"],
               p99_ms=shared["p99_ms"], baseline_p99_ms=alone["p99_ms"])  # fmt: skip
    report.add("a count on the hot path (lock + add, unchanged)", count_ns, "ns")
    print(report.write())


if __name__ == "__main__":
    main()

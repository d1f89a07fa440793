"""Live delivery latency: from the PublishEvents acknowledgement to the notification arriving on
WatchNotifications, with a publisher at 1,000 events/s in batches (as a data provider sends them).

The server holds N subscriptions over 100 collections with bench_subscriptions' mix of qualifiers
and a mean fan-out of ~5; a fifth of them belong to the watcher and carry a watch action (so it
gets ~1 notification per event), the rest e-mail actions of 1,000 other owners. The clock of a
notification runs from the moment its event's PublishEvents call returned to the publisher to the
moment the watcher's iterator yields it; both run in this process (one monotonic clock), the
server in another (a notification can overtake the acknowledgement: the minimum may be below
zero). Two series: the watcher on the server that records the events (woken after
the commit), and on a second server process sharing the store (woken by its poll of the store).

Baselines in the same run: a no-op RPC (health Check) round trip, sampled every 50 ms throughout,
and the PublishEvents round trip itself.

    .venv/bin/python bench/bench_watch_latency.py [--subs 100000] [--seconds 20] [--batch 50]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import grpc  # noqa: E402
from conftest import RunningServer, start_server, stop_server  # noqa: E402
from grpc_health.v1 import health_pb2  # noqa: E402

from bench.bench_subscriptions import COLLECTIONS, FANOUT, make_event, make_sub  # noqa: E402
from bench.harness import Report, percentiles  # noqa: E402
from heliostat.client import HeliostatClient, NotificationStream  # noqa: E402
from heliostat.server.convert import to_timestamp  # noqa: E402
from heliostat.subscriptions import auth  # noqa: E402
from heliostat.subscriptions.auth import Principal  # noqa: E402
from heliostat.subscriptions.model import (  # noqa: E402
    Action,
    Collection,
    GranuleEvent,
    validate_subscription,
)
from heliostat.subscriptions.service import SubscriptionService  # noqa: E402
from heliostat.v1 import subscriptions_pb2 as pb  # noqa: E402

OP = Principal("ops", operator=True)
WATCHER = "watcher"
WATCH_SHARE = 0.2  # of the subscriptions: the watcher's, with a watch action
TARGET_P99_MS = 100.0


def populate(path: Path, n: int, rng: random.Random) -> dict[str, str]:
    """The subscriptions and two tokens (publisher, watcher), written straight to the store."""
    svc = SubscriptionService(path, map_size=4 << 30)
    try:
        for i in range(COLLECTIONS):
            svc.create_collection(OP, Collection(f"C{i:03d}", "1", "geographic"))
        p = FANOUT / (n / COLLECTIONS)
        for lo in range(0, n, 10_000):
            chunk = []
            for _ in range(min(10_000, n - lo)):
                s = make_sub(rng, p)
                if rng.random() < WATCH_SHARE:
                    s = dataclasses.replace(s, owner=WATCHER, actions=(Action("watch", ()),))
                chunk.append(validate_subscription(s, "geographic"))
            svc.store.create(chunk)
        return {
            "ops": auth.create_token(svc.store, "ops", operator=True),
            WATCHER: auth.create_token(svc.store, WATCHER),
        }
    finally:
        svc.close()


def to_pb(e: GranuleEvent) -> pb.GranuleEvent:
    assert e.box is not None
    return pb.GranuleEvent(
        collection=e.collection, type=pb.SUBSCRIPTION_EVENT_TYPE_INSERT, granule=e.granule,
        time=pb.TimeInterval(start=to_timestamp(e.start_us), end=to_timestamp(e.end_us)),
        footprint=pb.Box(x_min=e.box.x_min, y_min=e.box.y_min, x_max=e.box.x_max,
                         y_max=e.box.y_max),
        numeric=dict(e.numeric), strings=dict(e.strings),
    )  # fmt: skip


class Run:
    """One series: publish at the rate for the duration, watch, ping; then the samples."""

    def __init__(
        self, publish_to: RunningServer, watch_on: RunningServer, tokens: dict[str, str]
    ) -> None:
        self.pub = HeliostatClient(publish_to.target, token=tokens["ops"])
        self.watcher = HeliostatClient(watch_on.target, token=tokens[WATCHER])
        self.pinger = HeliostatClient(publish_to.target)
        self.acks: dict[int, float] = {}  # event id → when its publish call returned
        self.publish_s: list[float] = []
        self.received: list[tuple[int, float]] = []  # (event id, when the watcher got it)
        self.ping_s: list[float] = []
        self.done = threading.Event()

    def close(self) -> None:
        for c in (self.pub, self.watcher, self.pinger):
            c.close()

    def _watch(self, stream: NotificationStream) -> None:
        try:
            for n in stream:
                self.received.append((n.event_id, time.perf_counter()))
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                raise

    def _ping(self) -> None:
        req = health_pb2.HealthCheckRequest()
        while not self.done.is_set():
            t0 = time.perf_counter()
            self.pinger.health.Check(req, timeout=5)
            self.ping_s.append(time.perf_counter() - t0)
            time.sleep(0.05)

    def run(self, batches: list[list[pb.GranuleEvent]], interval: float, drain_s: float) -> float:
        stream = self.watcher.watch()
        assert stream.start_cursor  # open before the first publish
        watcher = threading.Thread(target=self._watch, args=(stream,), daemon=True)
        pinger = threading.Thread(target=self._ping, daemon=True)
        watcher.start()
        pinger.start()
        t0 = time.perf_counter()
        for k, batch in enumerate(batches):
            delay = t0 + k * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            s = time.perf_counter()
            ids = self.pub.publish_events(batch)
            now = time.perf_counter()
            self.publish_s.append(now - s)
            for i in ids:
                self.acks[i] = now
        elapsed = time.perf_counter() - t0
        time.sleep(drain_s)  # the last notifications
        self.done.set()
        stream.cancel()
        watcher.join(5)
        pinger.join(5)
        return elapsed

    def latencies(self) -> list[float]:
        return [t - self.acks[e] for e, t in self.received if e in self.acks]


def replay(report: Report, srv: RunningServer, tokens: dict[str, str]) -> None:
    """The watcher's whole backlog streamed from the oldest, beside paging through the same
    actions with ListActions (1,000 a call) in the same run."""
    with HeliostatClient(srv.target, token=tokens[WATCHER]) as c:
        t0 = time.perf_counter()
        pages = 0
        after = ""
        while page := c.actions(after=after, limit=1000):
            after = page[-1].id
            pages += len(page)
        list_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with c.watch(from_oldest=True) as stream:
            streamed = 0
            for n in stream:
                streamed += 1
                if n.id == after:
                    break
        stream_s = time.perf_counter() - t0
    assert streamed == pages, (streamed, pages)
    report.add("backlog replay from the oldest (WatchNotifications)", streamed / stream_s,
               "notifications/s", baseline_name="ListActions pages of 1,000",
               baseline_value=pages / list_s, notifications=streamed)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--subs", type=int, default=100_000)
    ap.add_argument("--rate", type=int, default=1000, help="events per second")
    ap.add_argument("--batch", type=int, default=50, help="events per PublishEvents call")
    ap.add_argument("--seconds", type=float, default=20.0, help="per series")
    args = ap.parse_args()
    rng = random.Random(11)
    report = Report(
        "watch_latency",
        f"{args.subs:,} subscriptions over {COLLECTIONS} collections (bench_subscriptions' mix, "
        f"fan-out ~{FANOUT:g}; {WATCH_SHARE:.0%} are the watcher's with a watch action). "
        f"Publisher at {args.rate} events/s in batches of {args.batch} for {args.seconds:g} s "
        "per series; one watcher. Latency: PublishEvents returned → notification yielded to the "
        "client (client and server on one 2-core box, shared). Baseline: health Check round trip "
        "sampled every 50 ms in the same run.",
    )
    n_batches = int(args.rate * args.seconds / args.batch)
    interval = args.batch / args.rate
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "archive"
        root.mkdir()
        t0 = time.perf_counter()
        tokens = populate(root / ".heliostat" / "subscriptions", args.subs, rng)
        print(f"populated {args.subs:,} subscriptions in {time.perf_counter() - t0:.1f} s")
        a = start_server(root, ingest=False)
        b = start_server(root, ingest=False)  # a second process on the same store
        try:
            g = 0
            for series, watch_on in (("same process", a), ("other process", b)):
                batches = []
                for _ in range(n_batches):
                    batches.append([to_pb(make_event(rng, g + i)) for i in range(args.batch)])
                    g += args.batch
                run = Run(a, watch_on, tokens)
                try:
                    run.run(batches[:20], interval, 0.5)  # warm up both paths
                    run = Run(a, watch_on, tokens)
                    elapsed = run.run(batches, interval, 2.0)
                finally:
                    run.close()
                lat = percentiles(run.latencies())
                ping = percentiles(run.ping_s)
                pub = percentiles(run.publish_s)
                events = n_batches * args.batch
                report.add(
                    f"{series}: ack → notification p99", lat["p99_ms"], "ms",
                    baseline_name="no-op RPC round trip p99", baseline_value=ping["p99_ms"],
                    target=f"<= {TARGET_P99_MS:g} ms", met=lat["p99_ms"] <= TARGET_P99_MS,
                    latency=lat, noop_rpc=ping, publish_round_trip=pub,
                    events=events, rate=events / elapsed, notifications=len(run.received),
                )  # fmt: skip
                for q in ("p50", "p90", "max"):
                    report.add(
                        f"{series}: ack → notification {q}", lat[f"{q}_ms"], "ms",
                        baseline_name=f"no-op RPC round trip {q}",
                        baseline_value=ping[f"{q}_ms"],
                    )  # fmt: skip
                report.add(
                    f"{series}: PublishEvents round trip p99 ({args.batch} events)",
                    pub["p99_ms"], "ms", baseline_name="no-op RPC round trip p99",
                    baseline_value=ping["p99_ms"], p50_ms=pub["p50_ms"],
                )  # fmt: skip
                report.add(f"{series}: publish rate achieved", events / elapsed, "events/s",
                           notifications=len(run.received))  # fmt: skip
            replay(report, a, tokens)
        finally:
            stop_server(b)
            stop_server(a)
        svc = SubscriptionService(root / ".heliostat" / "subscriptions", map_size=4 << 30)
        try:
            counts = svc.store.counts()
        finally:
            svc.close()
        report.add("mean fan-out (actions per event, all kinds)",
                   counts["actions"] / counts["events"], "actions/event", **counts)  # fmt: skip
    report.write()


if __name__ == "__main__":
    main()

"""Subscription write benchmark: create, update and delete rates with N subscriptions stored (over
100 collections, bench_subscriptions' mix of qualifiers; creates use the same shapes).

Three ways, each beside its baseline measured in the same run:
- in process: 64 requests in flight through the group commit, beside one at a time (one synced
  commit per call);
- unary gRPC (Create/Update/DeleteSubscription) from an asyncio client with 64 calls in flight,
  beside a no-op RPC (health Check) from the same client at the same concurrency, measured just
  before: on a 2-core box the client and server share the cores, so the no-op rate is the
  ceiling of any unary call; the server's CPU time per call (from /proc) is reported beside the
  no-op's, which says what one core of a host without the client on it would sustain;
- the WriteSubscriptions stream (HeliostatClient.write_subscriptions, 100 writes per message,
  and 1 per message to show the per-message cost), beside the same no-op figure.

The server is a separate process on the same store (a fresh archive). Targets: >= 5,000 ops/s.

    .venv/bin/python bench/bench_subscription_writes.py [--subs 100000] [--ops 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import grpc  # noqa: E402
from conftest import RunningServer, start_server, stop_server  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from bench.bench_subscriptions import COLLECTIONS, FANOUT, OP, make_sub  # noqa: E402
from bench.harness import Report  # noqa: E402
from heliostat.client import (  # noqa: E402
    HeliostatClient,
    create_write,
    delete_write,
    update_write,
)
from heliostat.server.convert import to_timestamp  # noqa: E402
from heliostat.subscriptions.model import (  # noqa: E402
    Collection,
    Subscription,
    validate_subscription,
)
from heliostat.subscriptions.service import Patch, SubscriptionService  # noqa: E402
from heliostat.v1 import subscriptions_pb2 as pb  # noqa: E402
from heliostat.v1 import subscriptions_pb2_grpc  # noqa: E402

DEFAULT_SUBS = 100_000
IN_FLIGHT = 64
TARGET = 5000
OPS = ("create", "update", "delete")


def to_pb(s: Subscription) -> pb.Subscription:
    q = s.qualifiers
    out = pb.Subscription(
        collection=s.collection,
        event_types=[pb.SUBSCRIPTION_EVENT_TYPE_INSERT],
        qualifiers=pb.Qualifiers(
            numeric=[pb.NumericQualifier(attribute=n.attribute, min=n.min, max=n.max)
                     for n in q.numeric],
            strings=[pb.StringQualifier(attribute=x.attribute, value=x.value) for x in q.strings],
        ),
        actions=[pb.Action(kind=pb.ACTION_KIND_EMAIL, params=dict(a.params)) for a in s.actions],
    )  # fmt: skip
    if q.spatial is not None:
        b = q.spatial
        out.qualifiers.spatial.CopyFrom(
            pb.Box(x_min=b.x_min, y_min=b.y_min, x_max=b.x_max, y_max=b.y_max)
        )
    if q.temporal is not None:
        out.qualifiers.temporal.start.CopyFrom(to_timestamp(q.temporal.start_us))
        out.qualifiers.temporal.end.CopyFrom(to_timestamp(q.temporal.end_us))
    return out


def populate(path: Path, n: int, rng: random.Random) -> None:
    """n subscriptions written straight to the store, 10,000 per transaction."""
    svc = SubscriptionService(path, map_size=4 << 30)
    try:
        for i in range(COLLECTIONS):
            svc.create_collection(OP, Collection(f"C{i:03d}", "1", "geographic"))
        p = FANOUT / (n / COLLECTIONS)
        for lo in range(0, n, 10_000):
            chunk = [validate_subscription(make_sub(rng, p), "geographic")
                     for _ in range(min(10_000, n - lo))]  # fmt: skip
            svc.store.create(chunk)
    finally:
        svc.close()


def windowed(submit: Callable[[int], Any], items: list[int], window: int) -> list[Any]:
    """Results of submit(item) for every item, at most window futures outstanding."""
    out: list[Any] = []
    pending: collections.deque[Any] = collections.deque()
    for it in items:
        pending.append(submit(it))
        if len(pending) >= window:
            out.append(pending.popleft().result())
    out += [f.result() for f in pending]
    return out


def in_process(
    report: Report, svc: SubscriptionService, rng: random.Random, p: float, n: int
) -> None:
    """IN_FLIGHT at a time through the group commit beside one at a time."""

    def run(name: str, window: int, ids: list[int]) -> list[int]:
        def submit(i: int) -> Future[Subscription]:
            if name == "create":
                return svc.submit_create(OP, make_sub(rng, p))
            if name == "update":
                return svc.submit_update(OP, i, Patch(frozenset({"active"}), active=False))
            return svc.submit_delete(OP, i)

        return [s.id for s in windowed(submit, ids, window)]

    one: dict[str, float] = {}
    for window in (1, IN_FLIGHT):
        ops = n if window > 1 else n // 5
        ids = list(range(ops))
        for name in OPS:
            t0 = time.perf_counter()
            ids = run(name, window, ids)
            rate = ops / (time.perf_counter() - t0)
            if window == 1:
                one[name] = rate
                continue
            report.add(f"{name}, in process, {IN_FLIGHT} in flight (group commit)", rate, "ops/s",
                       baseline_name="one at a time (one synced commit each)",
                       baseline_value=one[name], target=f">= {TARGET:,}/s",
                       met=rate >= TARGET)  # fmt: skip


async def concurrently(call: Callable[[int], Awaitable[Any]], items: list[int]) -> list[Any]:
    """call(item) for every item by IN_FLIGHT concurrent callers; results in item order."""
    out: list[Any] = [None] * len(items)
    todo = iter(enumerate(items))

    async def caller() -> None:
        for k, it in todo:  # shared: each item taken once
            out[k] = await call(it)

    await asyncio.gather(*(caller() for _ in range(IN_FLIGHT)))
    return out


def timed(coro: Callable[[], Awaitable[Any]], n: int) -> tuple[float, Any]:
    async def go() -> tuple[float, Any]:
        t0 = time.perf_counter()
        out = await coro()
        return n / (time.perf_counter() - t0), out

    return asyncio.run(go())


def noop_rate(target: str, n: int) -> float:
    async def run() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            req = health_pb2.HealthCheckRequest()
            await concurrently(lambda _: stub.Check(req), list(range(n)))

    return timed(run, n)[0]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process pid so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def unary(report: Report, srv: RunningServer, token: str, subs: list[pb.Subscription]) -> None:
    auth = (("authorization", f"Bearer {token}"),)
    n = len(subs)

    def run(name: str, ids: list[int]) -> tuple[float, list[int]]:
        async def go() -> list[int]:
            async with grpc.aio.insecure_channel(srv.target) as channel:
                stub = subscriptions_pb2_grpc.SubscriptionServiceStub(channel)

                async def call(i: int) -> int:
                    if name == "create":
                        req = pb.CreateSubscriptionRequest(subscription=subs[i])
                        return int((await stub.CreateSubscription(req, metadata=auth)).id)
                    if name == "update":
                        upd = pb.UpdateSubscriptionRequest(subscription=pb.Subscription(id=i))
                        upd.update_mask.paths.append("active")
                        await stub.UpdateSubscription(upd, metadata=auth)
                    else:
                        await stub.DeleteSubscription(pb.DeleteSubscriptionRequest(id=i),
                                                      metadata=auth)  # fmt: skip
                    return i

                return await concurrently(call, ids)

        return timed(go, n)

    ids = list(range(n))
    pid = srv.proc.pid
    for name in OPS:
        cpu0 = cpu_seconds(pid)
        base = noop_rate(srv.target, n)
        cpu1 = cpu_seconds(pid)
        rate, ids = run(name, ids)
        cpu2 = cpu_seconds(pid)
        report.add(f"{name}, unary gRPC, {IN_FLIGHT} in flight", rate, "ops/s",
                   baseline_name=f"no-op RPC (health Check), {IN_FLIGHT} in flight",
                   baseline_value=base, target=f">= {TARGET:,}/s", met=rate >= TARGET)  # fmt: skip
        ours_us = (cpu2 - cpu1) / n * 1e6
        noop_us = (cpu1 - cpu0) / n * 1e6
        report.add(f"{name}, unary gRPC: server CPU per call", ours_us, "µs",
                   baseline_name="server CPU per no-op call", baseline_value=noop_us,
                   one_core_ops_per_s=1e6 / ours_us if ours_us else None)  # fmt: skip


def stream(
    report: Report, srv: RunningServer, token: str, subs: list[pb.Subscription], per_message: int
) -> None:
    n = len(subs)
    with HeliostatClient(srv.target, token=token) as c:

        def writes(name: str, ids: list[int]) -> Iterator[pb.SubscriptionWrite]:
            if name == "create":
                return (create_write(s) for s in subs)
            if name == "update":
                return (update_write(pb.Subscription(id=i), ["active"]) for i in ids)
            return (delete_write(i) for i in ids)

        ids: list[int] = []
        for name in OPS:
            base = noop_rate(srv.target, 5000)
            t0 = time.perf_counter()
            results = list(c.write_subscriptions(writes(name, ids), per_message=per_message))
            rate = n / (time.perf_counter() - t0)
            assert len(results) == n and all(r.code == 0 for r in results), name
            ids = [r.id for r in results]
            report.add(f"{name}, WriteSubscriptions stream, {per_message} per message", rate,
                       "ops/s", baseline_name=f"no-op RPC (health Check), {IN_FLIGHT} in flight",
                       baseline_value=base, target=f">= {TARGET:,}/s",
                       met=rate >= TARGET)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--subs", type=int, default=DEFAULT_SUBS, help="subscriptions stored")
    ap.add_argument("--ops", type=int, default=10_000, help="per figure in process")
    ap.add_argument("--unary", type=int, default=5000, help="per unary gRPC figure")
    ap.add_argument("--stream", type=int, default=20_000, help="per stream figure")
    args = ap.parse_args()
    n, rng = args.subs, random.Random(7)
    p = FANOUT / (n / COLLECTIONS)
    report = Report(
        "subscription_writes" if n == DEFAULT_SUBS else f"subscription_writes-{n // 1000}k",
        f"Subscription create / update (active) / delete with {n:,} subscriptions stored over "
        f"{COLLECTIONS} collections (bench_subscriptions' shapes), LMDB with synced commits; "
        f"in process, unary gRPC and the WriteSubscriptions stream (server: another process, "
        f"same box). Baselines measured in the same run. 2-core box shared with other work.",
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "archive"
        root.mkdir()
        t0 = time.perf_counter()
        path = root / ".heliostat" / "subscriptions"
        populate(path, n, rng)
        print(f"loaded {n:,} in {time.perf_counter() - t0:.1f} s", flush=True)
        # Opened afresh, as the server would: its index holds them all (no catch-up to do).
        svc = SubscriptionService(path, map_size=4 << 30)
        try:
            in_process(report, svc, rng, p, args.ops)
        finally:
            svc.close()
        token = subprocess.run(
            [sys.executable, "-m", "heliostat.cli", "token", "create", "--archive", str(root),
             "--owner", "ops", "--operator"], capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        shapes = [to_pb(make_sub(rng, p)) for _ in range(max(args.unary, args.stream))]
        srv = start_server(root, ingest=False)
        try:
            unary(report, srv, token, shapes[: args.unary])
            stream(report, srv, token, shapes[: args.stream], 100)
            stream(report, srv, token, shapes[: args.unary // 2], 1)
        finally:
            stop_server(srv)
    print(report.write())


if __name__ == "__main__":
    main()

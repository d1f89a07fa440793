"""WatchNotifications end to end over real gRPC: order and ids, ownership, filters, resuming from a
cursor, image ingest, bad cursors, retention, kill -9 of the server, and other processes' events."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from heliostat.client import HeliostatClient, NotificationStream
from heliostat.errors import InvalidArgument, OutOfRange, ResourceExhausted
from heliostat.subscriptions.auth import Principal, create_token
from heliostat.subscriptions.model import Action, Box, Collection, GranuleEvent, Subscription
from heliostat.subscriptions.notifications import (
    PROGRESS_S,
    Notifications,
    Page,
    Watch,
    WatchFilter,
)
from heliostat.subscriptions.service import SubscriptionService
from heliostat.subscriptions.store import SubscriptionStore
from heliostat.v1 import subscriptions_pb2 as pb
from tests.conftest import RunningServer, place_samples, start_server, stop_server

OWNERS = ("alice", "bob", "ops")
WATCH = pb.Action(kind=pb.ACTION_KIND_WATCH, params={"label": "mine"})
EMAIL = pb.Action(kind=pb.ACTION_KIND_EMAIL, params={"address": "a@example.org"})
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def issue_tokens(root: Path) -> dict[str, str]:
    with SubscriptionStore(root / ".heliostat" / "subscriptions") as store:
        return {o: create_token(store, o, operator=o == "ops") for o in OWNERS}


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningServer, dict[str, str]]]:
    root = tmp_path_factory.mktemp("watch") / "archive"
    place_samples(root)
    tokens = issue_tokens(root)
    srv = start_server(root, ingest=False)
    yield srv, tokens
    stop_server(srv)


def client(served: tuple[RunningServer, dict[str, str]], who: str) -> HeliostatClient:
    srv, tokens = served
    return HeliostatClient(srv.target, token=tokens[who])


def event(collection: str, granule: str, x: float = 0.0) -> pb.GranuleEvent:
    e = pb.GranuleEvent(
        collection=collection,
        type=pb.SUBSCRIPTION_EVENT_TYPE_INSERT,
        granule=granule,
        footprint=pb.Box(x_min=x, y_min=0, x_max=x + 1, y_max=1),
        numeric={"cloud": 3.0},
    )
    e.time.start.FromDatetime(T0)
    return e


def subscribe(
    c: HeliostatClient, collection: str, box: tuple[float, float], actions: list[pb.Action]
) -> pb.Subscription:
    """A subscription on x in [box[0], box[1]] (events are 1 wide at x)."""
    return c.create_subscription(
        pb.Subscription(
            collection=collection,
            event_types=[pb.SUBSCRIPTION_EVENT_TYPE_INSERT],
            qualifiers=pb.Qualifiers(spatial=pb.Box(x_min=box[0], y_min=0, x_max=box[1], y_max=1)),
            actions=actions,
        )
    )


def take(stream: NotificationStream, n: int) -> list[pb.Notification]:
    return list(itertools.islice(stream, n))


def field_of(e: grpc.RpcError) -> str:
    return dict(e.trailing_metadata() or ()).get("heliostat-field", "")  # type: ignore[attr-defined]


def test_order_ids_and_owners(served: tuple[RunningServer, dict[str, str]]) -> None:
    with client(served, "ops") as ops, client(served, "alice") as alice, \
            client(served, "bob") as bob:  # fmt: skip
        ops.create_collection("WATCH_A", "1")
        coll = "WATCH_A.1"
        # alice: two watch subscriptions (one also mails); bob: one on the right half only.
        a1 = subscribe(alice, coll, (-50, 50), [EMAIL, WATCH])
        a2 = subscribe(alice, coll, (-50, 0), [WATCH])
        b1 = subscribe(bob, coll, (10, 50), [WATCH])
        with alice.watch(timeout=30) as sa, ops.watch(timeout=30) as so, \
                ops.watch(owner="bob", timeout=30) as sob:  # fmt: skip
            for s in (sa, so, sob):
                assert s.start_cursor  # opened: what is published from now on is delivered
            ids = []
            for lo in range(0, 30, 10):
                ids += ops.publish_events(
                    [event(coll, f"g{i}", x=-20.0 if i % 2 else 20.0) for i in range(lo, lo + 10)]
                )
            # Odd events (x=-20) hit a1 and a2; even ones (x=20) hit a1 and b1.
            expect = []
            for i, e in enumerate(ids):
                expect += [(e, a1.id), (e, a2.id)] if i % 2 else [(e, a1.id)]
            got = take(sa, len(expect))
            assert [(n.event_id, n.subscription_id) for n in got] == expect
            assert [n.id for n in got] == sorted(n.id for n in got)
            first = got[0]
            assert first.owner == "alice" and first.params["label"] == "mine"
            assert first.id == f"{ids[0]:016x}-{a1.id:016x}-0001"  # the watch is action 1
            assert first.event.granule == "g0" and first.event.collection == coll
            assert first.event.footprint.x_min == 20.0 and first.event.numeric["cloud"] == 3.0
            assert first.event.time.start.ToDatetime(UTC) == T0

            everyone = take(so, len(expect) + 15)
            assert {n.owner for n in everyone} == {"alice", "bob"}
            assert [n.id for n in everyone] == sorted(n.id for n in everyone)
            bobs = take(sob, 15)
            assert [(n.event_id, n.subscription_id) for n in bobs] == [(e, b1.id) for e in ids[::2]]
            # Nothing else is in alice's stream: the next one is this sentinel.
            (last,) = ops.publish_events([event(coll, "sentinel", x=-20.0)])
            assert [(n.event_id, n.event.granule) for n in take(sa, 2)] == [
                (last, "sentinel"),
                (last, "sentinel"),
            ]
        with pytest.raises(grpc.RpcError) as e, bob.watch(owner="alice", timeout=10) as s:
            take(s, 1)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_filters(served: tuple[RunningServer, dict[str, str]]) -> None:
    with client(served, "ops") as ops, client(served, "alice") as alice:
        ops.create_collection("WATCH_F", "1")
        ops.create_collection("WATCH_G", "1")
        f1 = subscribe(alice, "WATCH_F.1", (-50, 50), [WATCH])
        f2 = subscribe(alice, "WATCH_F.1", (-50, 50), [WATCH])
        g1 = subscribe(alice, "WATCH_G.1", (-50, 50), [WATCH])
        with alice.watch(subscription_ids=[f2.id], timeout=30) as by_sub, \
                alice.watch(collection="WATCH_G.1", timeout=30) as by_coll:  # fmt: skip
            assert by_sub.start_cursor and by_coll.start_cursor
            f = ops.publish_events([event("WATCH_F.1", "f")])
            g = ops.publish_events([event("WATCH_G.1", "g")])
            f += ops.publish_events([event("WATCH_F.1", "f2")])
            assert [(n.event_id, n.subscription_id) for n in take(by_sub, 2)] == [
                (f[0], f2.id),
                (f[1], f2.id),
            ]
            assert [(n.event_id, n.subscription_id) for n in take(by_coll, 1)] == [(g[0], g1.id)]
        assert f1.id != f2.id
        with pytest.raises(grpc.RpcError) as e, alice.watch(collection="NOPE.1") as s:
            take(s, 1)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_reconnect_resumes_without_loss_or_repeat(
    served: tuple[RunningServer, dict[str, str]],
) -> None:
    with client(served, "ops") as ops, client(served, "alice") as alice:
        ops.create_collection("WATCH_R", "1")
        s1 = subscribe(alice, "WATCH_R.1", (-50, 50), [WATCH])
        with alice.watch(collection="WATCH_R.1", timeout=30) as s:
            start = s.start_cursor
        # Published while disconnected, before a single notification was seen: the opening
        # cursor is enough to resume.
        ids = ops.publish_events([event("WATCH_R.1", f"r{i}") for i in range(5)])
        received: list[pb.Notification] = []
        with alice.watch(start, collection="WATCH_R.1", timeout=30) as s:
            received += take(s, 3)
        ids += ops.publish_events([event("WATCH_R.1", f"r{i}") for i in range(5, 12)])
        with alice.watch(received[-1].id, collection="WATCH_R.1", timeout=30) as s:
            received += take(s, 4)
            ids += ops.publish_events([event("WATCH_R.1", f"r{i}") for i in range(12, 20)])
            received += take(s, 4)
        with alice.watch(received[-1].id, collection="WATCH_R.1", timeout=30) as s:
            received += take(s, 9)
        assert [n.event_id for n in received] == ids
        assert {n.subscription_id for n in received} == {s1.id}
        assert [n.event.granule for n in received] == [f"r{i}" for i in range(20)]
        # from the oldest: the whole history again, in order
        with alice.watch(from_oldest=True, collection="WATCH_R.1", timeout=30) as s:
            assert [n.id for n in take(s, 20)] == [n.id for n in received]


def test_a_stalled_watcher_holds_back_nobody(
    served: tuple[RunningServer, dict[str, str]],
) -> None:
    """A watcher that stops reading is held by flow control (the server reads a page only once
    the previous one is written); the others keep up, and it gets everything when it reads."""
    with client(served, "ops") as ops, client(served, "alice") as alice, \
            client(served, "bob") as bob:  # fmt: skip
        ops.create_collection("WATCH_S", "1")
        subscribe(alice, "WATCH_S.1", (-50, 50), [WATCH])
        with alice.watch(collection="WATCH_S.1", timeout=60) as slow, \
                alice.watch(collection="WATCH_S.1", timeout=60) as fast, \
                bob.watch(timeout=60) as other:  # fmt: skip
            assert slow.start_cursor and fast.start_cursor and other.start_cursor
            ids = ops.publish_events([event("WATCH_S.1", "s0")])
            assert take(slow, 1)[0].event_id == ids[0]
            for b in range(3):
                ids += ops.publish_events(
                    [event("WATCH_S.1", f"s{b}-{i}", x=-40 + i % 80) for i in range(1000)]
                )
            t0 = time.monotonic()
            assert [n.event_id for n in take(fast, len(ids))] == ids
            fast_s = time.monotonic() - t0
            bobs = subscribe(bob, "WATCH_S.1", (-50, 50), [WATCH])
            (last,) = ops.publish_events([event("WATCH_S.1", "s-last")])
            assert [(n.event_id, n.subscription_id) for n in take(other, 1)] == [(last, bobs.id)]
            assert [n.event_id for n in take(slow, len(ids))] == [*ids[1:], last]
        assert fast_s < 30


def test_client_cursor_moves_on_past_others_events(
    served: tuple[RunningServer, dict[str, str]],
) -> None:
    with client(served, "ops") as ops, client(served, "bob") as bob:
        ops.create_collection("WATCH_P", "1")  # nobody subscribes to it
        stream = bob.watch(timeout=30)
        assert stream.cursor == stream.start_cursor
        got: list[pb.Notification] = []

        def drain() -> None:
            with contextlib.suppress(grpc.RpcError):  # cancelled below
                got.extend(stream)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        ops.publish_events([event("WATCH_P.1", "p0")])
        time.sleep(1.2)  # progress-only messages come at most every second
        (last,) = ops.publish_events([event("WATCH_P.1", "p1")])
        end = f"{last:016x}-{(1 << 64) - 1:016x}-ffff"
        deadline = time.monotonic() + 10
        while stream.cursor != end and time.monotonic() < deadline:
            time.sleep(0.02)
        stream.cancel()
        reader.join(10)
        assert stream.cursor == end and got == []
    with client(served, "bob") as bob, bob.watch(end, timeout=30) as again:
        assert again.start_cursor == end


def test_catalog_images_reach_watchers(served: tuple[RunningServer, dict[str, str]]) -> None:
    srv, _ = served
    with client(served, "alice") as alice:
        s = alice.create_subscription(
            pb.Subscription(
                collection="AIA_171.1",
                event_types=[pb.SUBSCRIPTION_EVENT_TYPE_INSERT],
                actions=[WATCH],
            )
        )
        n_aia = len(list(srv.archive.rglob("*SDO_AIA_AIA_171.jp2")))
        with alice.watch(collection="AIA_171.1", timeout=60) as stream:
            assert stream.start_cursor
            alice.ingest([str(srv.archive)])
            got = take(stream, n_aia)
        assert {n.subscription_id for n in got} == {s.id}
        assert all(n.event.granule.endswith("SDO_AIA_AIA_171.jp2") for n in got)
        assert len({n.event.granule for n in got}) == n_aia
        assert all(n.event.HasField("footprint") for n in got)


def test_bad_requests(served: tuple[RunningServer, dict[str, str]]) -> None:
    srv, _ = served
    with client(served, "alice") as alice:
        for cursor, field in [
            ("nonsense", "cursor"),
            ("0x1-2-3", "cursor"),
            (f"{1 << 40:016x}-{1:016x}-0000", "cursor"),  # an event not recorded yet
        ]:
            with pytest.raises(grpc.RpcError) as e, alice.watch(cursor) as s:
                take(s, 1)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, cursor
            assert field_of(e.value) == field
        with alice.watch() as s:
            cursor = s.start_cursor
        with pytest.raises(grpc.RpcError) as e, alice.watch(cursor, from_oldest=True) as s:
            _ = s.start_cursor
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_of(e.value) == "from_oldest"
    with HeliostatClient(srv.target) as anon:
        with pytest.raises(grpc.RpcError) as e, anon.watch() as s:
            take(s, 1)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_kill_9_then_resume(tmp_path: Path) -> None:
    """Every acknowledged event's notification arrives once, across a kill -9 of the server."""
    root = tmp_path / "archive"
    root.mkdir()
    tokens = issue_tokens(root)
    srv = start_server(root, ingest=False)
    acked: list[int] = []
    received: list[pb.Notification] = []
    try:
        with HeliostatClient(srv.target, token=tokens["ops"]) as ops, \
                HeliostatClient(srv.target, token=tokens["alice"]) as alice:  # fmt: skip
            ops.create_collection("K", "1")
            sub = subscribe(alice, "K.1", (-50, 50), [EMAIL, WATCH])
            stream = alice.watch(timeout=60)
            assert stream.start_cursor
            for b in range(10):
                acked += ops.publish_events([event("K.1", f"k{b}-{i}") for i in range(10)])
                if b < 4:
                    received += take(stream, 10)
            stream.cancel()
            os.kill(srv.proc.pid, signal.SIGKILL)
            srv.proc.wait()
    finally:
        stop_server(srv)
    srv = start_server(root, ingest=False)
    try:
        with HeliostatClient(srv.target, token=tokens["alice"]) as alice, \
                alice.watch(received[-1].id, timeout=60) as stream:  # fmt: skip
            received += take(stream, len(acked) - len(received))
            # A graceful stop ends open streams at once (they would hold it for the grace).
            t0 = time.monotonic()
            stop_server(srv)
            assert time.monotonic() - t0 < 8
            assert list(stream) == []  # ended, not failed: the client reconnects
    finally:
        if srv.proc.poll() is None:
            stop_server(srv)
    assert [n.event_id for n in received] == acked
    assert {n.subscription_id for n in received} == {sub.id}
    assert len({n.id for n in received}) == len(acked)


# -- domain level: retention and other processes -------------------------------------------------

OP = Principal("ops", operator=True)
ALICE = Principal("alice")


def setup_store(path: Path) -> None:
    svc = SubscriptionService(path)
    try:
        svc.create_collection(OP, Collection("D", "1", "geographic"))
        svc.create(ALICE, Subscription(0, "", "D.1", frozenset({"insert"}),
                                       actions=(Action("watch", ()),)))  # fmt: skip
    finally:
        svc.close()


def granules(n: int, start: int = 0) -> list[GranuleEvent]:
    return [GranuleEvent("D.1", "insert", f"d{i}", 0, 0, Box(0, 0, 1, 1))
            for i in range(start, start + n)]  # fmt: skip


async def collect(svc: SubscriptionService, n: int, **kw: object) -> list[str]:
    out: list[str] = []
    pages = svc.watch(ALICE, **kw).pages()  # type: ignore[arg-type]
    async with asyncio.timeout(20):
        async for page in pages:
            out += [a.id for a in page.actions]
            if len(out) >= n:
                break
    return out


REMOVER = """
import sys
from pathlib import Path
from heliostat.subscriptions.store import SubscriptionStore, action_key
# What the retention driver does to finished work: events up to argv[2] go, with their actions.
store = SubscriptionStore(Path(sys.argv[1]))
through = int(sys.argv[2])
keys = [action_key(a.id) for a in store.actions_after(b"", 1_000_000, None)
        if a.event_id <= through]


def remove(txn):
    store.remove_actions_txn(txn, keys)
    events = store.lmdb.env.open_db(b"events", txn=txn)  # those that matched nothing too
    for k in [k for k in txn.cursor(events).iternext(values=False)
              if int.from_bytes(k, "big") <= through]:
        txn.delete(k, db=events)


store.lmdb.write(remove)
store.close()
"""


def remove_events(path: Path, through: int) -> None:
    """Retention, from another process (LMDB must not be opened twice in one)."""
    subprocess.run([sys.executable, "-c", REMOVER, str(path), str(through)], check=True)


def test_retention_cursor_out_of_range(tmp_path: Path) -> None:
    path = tmp_path / "subs"
    setup_store(path)
    svc = SubscriptionService(path)
    try:
        ids = asyncio.run(collect_after_publish(svc, 10))
        overtaken = svc.watch(ALICE, cursor=ids[0])  # valid now; retention then passes it
        remove_events(path, 4)
        with pytest.raises(OutOfRange) as e:
            svc.watch(ALICE, cursor=ids[1])
        assert e.value.field == "cursor"
        with pytest.raises(OutOfRange) as e:
            asyncio.run(first_page(overtaken))
        assert e.value.field == "cursor"
        # Right before the oldest kept, nothing was lost: fine; and from the oldest works.
        assert asyncio.run(collect(svc, 6, cursor=ids[3])) == ids[4:]
        assert asyncio.run(collect(svc, 6, from_oldest=True)) == ids[4:]
        start = svc.watch(ALICE, from_oldest=True).start_id
        assert start == f"{4:016x}-{(1 << 64) - 1:016x}-ffff"
        assert asyncio.run(collect(svc, 6, cursor=start)) == ids[4:]  # a cursor to resume from
        with pytest.raises(InvalidArgument) as e2:
            svc.watch(ALICE, cursor="1-2-3")
        assert e2.value.field == "cursor"
    finally:
        svc.close()


async def collect_after_publish(svc: SubscriptionService, n: int) -> list[str]:
    task = asyncio.create_task(collect(svc, n))
    await asyncio.sleep(0.1)  # the stream is open (it starts after what exists now)
    await asyncio.get_running_loop().run_in_executor(None, svc.publish, OP, granules(n))
    return await task


async def first_page(w: Watch) -> Page:
    async with asyncio.timeout(20):
        async for page in w.pages():
            return page
    raise AssertionError("the stream ended")


def test_idle_cursor_moves_past_others_events(tmp_path: Path) -> None:
    """A watcher with nothing to receive still gets its cursor moved on, so retention of
    others' events does not make it OUT_OF_RANGE."""
    path = tmp_path / "subs"
    setup_store(path)
    svc = SubscriptionService(path)
    try:
        svc.create_collection(OP, Collection("E", "1", "geographic"))
        others = [dataclasses.replace(g, collection="E.1") for g in granules(5)]
        w = svc.watch(ALICE)

        async def run() -> Page:
            task = asyncio.create_task(first_page(w))
            await asyncio.sleep(0.1)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, svc.publish, OP, others[:2])
            await asyncio.sleep(PROGRESS_S + 0.1)
            await loop.run_in_executor(None, svc.publish, OP, others[2:])
            return await task

        page = asyncio.run(run())
        assert page.actions == [] and page.cursor == f"{5:016x}-{(1 << 64) - 1:016x}-ffff"
        remove_events(path, 5)
        with pytest.raises(OutOfRange):
            svc.watch(ALICE, cursor=w.start_id)
        assert svc.watch(ALICE, cursor=page.cursor).start_id == page.cursor
    finally:
        svc.close()


def test_streams_are_limited(tmp_path: Path) -> None:
    path = tmp_path / "subs"
    setup_store(path)
    svc = SubscriptionService(path)
    hub = Notifications(svc.store, max_streams=2)
    try:
        a, b = (hub.open("", False, WatchFilter("alice")) for _ in range(2))
        with pytest.raises(ResourceExhausted):
            hub.open("", False, WatchFilter("alice"))
        a.close()
        a.close()  # once only
        assert hub.streams == 1
        c = hub.open("", False, WatchFilter(None))

        async def end_of_stream() -> None:  # a stream that ends gives its place back
            hub.end_streams()
            async for _ in c.pages():
                raise AssertionError("nothing to send")

        asyncio.run(end_of_stream())
        assert hub.streams == 1
        b.close()
        assert hub.streams == 0
    finally:
        hub.close()
        svc.close()


PUBLISHER = """
import sys, time
from pathlib import Path
from heliostat.subscriptions.auth import Principal
from heliostat.subscriptions.model import Box, GranuleEvent
from heliostat.subscriptions.notifications import (
    PROGRESS_S,
    Notifications,
    Page,
    Watch,
    WatchFilter,
)
from heliostat.subscriptions.service import SubscriptionService
svc = SubscriptionService(Path(sys.argv[1]))
for b in range(5):
    batch = [GranuleEvent("D.1", "insert", f"x{b}-{i}", 0, 0, Box(0, 0, 1, 1)) for i in range(4)]
    svc.publish(Principal("ops", operator=True), batch)
    time.sleep(0.05)
svc.close()
"""


def test_events_of_another_process_are_delivered(tmp_path: Path) -> None:
    """Two processes share the store (serve --processes): a poll picks up the other's events."""
    path = tmp_path / "subs"
    setup_store(path)
    svc = SubscriptionService(path)

    async def run() -> list[str]:
        task = asyncio.create_task(collect(svc, 20))
        await asyncio.sleep(0.1)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PUBLISHER, str(path), stdout=subprocess.PIPE
        )
        await proc.communicate()
        return await task

    try:
        got = asyncio.run(run())
    finally:
        svc.close()
    assert len(got) == len(set(got)) == 20
    assert got == sorted(got)

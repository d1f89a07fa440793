"""WriteSubscriptions over a real server: mixed writes answered in order, each with its own
status and field; owner isolation; authentication; flow control; kill -9 after acknowledgement."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from heliostat.client import HeliostatClient, create_write, delete_write, update_write
from heliostat.v1 import subscriptions_pb2 as pb
from heliostat.v1 import subscriptions_pb2_grpc
from tests.conftest import RunningServer, start_server, stop_server
from tests.test_subscriptions_server import cli

OK = grpc.StatusCode.OK.value[0]
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]

Served = tuple[RunningServer, dict[str, str]]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("writes") / "archive"
    root.mkdir()
    tokens = {
        who: cli("token", "create", "--archive", str(root), "--owner", who, *extra)
        for who, extra in (("alice", ()), ("bob", ()), ("ops", ("--operator",)))
    }
    srv = start_server(root, ingest=False)
    with HeliostatClient(srv.target, token=tokens["ops"]) as ops:
        ops.create_collection("MODIS", "6")
    yield srv, tokens
    stop_server(srv)


def client(served: Served, who: str | None) -> HeliostatClient:
    srv, tokens = served
    return HeliostatClient(srv.target, token=tokens[who] if who else None)


def sub(theme: str = "", address: str = "a@example.org", **kw: object) -> pb.Subscription:
    return pb.Subscription(
        collection="MODIS.6",
        event_types=[pb.SUBSCRIPTION_EVENT_TYPE_INSERT],
        theme=theme,
        actions=[pb.Action(kind=pb.ACTION_KIND_EMAIL, params={"address": address})],
        **kw,  # type: ignore[arg-type]
    )


def field(r: pb.SubscriptionWriteResult) -> tuple[int, str]:
    return r.code, r.field


def test_mixed_writes_answered_in_order(served: Served) -> None:
    with client(served, "alice") as alice, client(served, "bob") as bob:
        mine = alice.create_subscription(sub("mine"))
        bobs = bob.create_subscription(sub("bobs"))
        writes = [
            create_write(sub("s0")),
            create_write(sub("s1", address="nope")),  # invalid
            update_write(pb.Subscription(id=mine.id, theme="renamed"), ["theme"]),
            update_write(pb.Subscription(id=mine.id, active=False), ["active"]),
            update_write(pb.Subscription(id=bobs.id, theme="stolen"), ["theme"]),  # bob's
            delete_write(bobs.id),  # bob's: not found for alice
            update_write(pb.Subscription(id=mine.id, owner="bob"), ["owner"]),  # operator only
            update_write(pb.Subscription(id=mine.id, collection="X.1"), ["collection"]),
            pb.SubscriptionWrite(),  # names no write
            create_write(sub("s2", qualifiers=pb.Qualifiers(spatial=pb.Box(x_min=999)))),
            delete_write(999_999),
            create_write(sub("s3")),
        ]
        # Two per message: neighbours in one message and across messages fail alone.
        results = list(alice.write_subscriptions(writes, per_message=2))
        assert [field(r) for r in results] == [
            (OK, ""),
            (INVALID, "actions[0].address"),
            (OK, ""),
            (OK, ""),
            (NOT_FOUND, "id"),
            (NOT_FOUND, "id"),
            (INVALID, "owner"),
            (INVALID, "collection"),
            (INVALID, "write"),
            (INVALID, "qualifiers.spatial"),
            (NOT_FOUND, "id"),
            (OK, ""),
        ]
        assert all(r.message for r in results if r.code != OK)
        assert results[2].id == results[3].id == mine.id
        assert [r.id for r in results if r.code != OK] == [0] * 8
        got = alice.subscription(mine.id)
        assert (got.theme, got.active, got.owner) == ("renamed", False, "alice")
        assert bob.subscription(bobs.id).theme == "bobs"  # untouched
        themes = {s.id: s.theme for s in alice.subscriptions()}
        assert themes == {mine.id: "renamed", results[0].id: "s0", results[11].id: "s3"}
        assert alice.subscription(results[11].id).owner == "alice"

        with client(served, "ops") as ops:  # the operator changes anyone's
            (by_ops,) = ops.write_subscriptions(
                [update_write(pb.Subscription(id=mine.id, theme="by-ops"), ["theme"])]
            )
            assert (by_ops.code, by_ops.id) == (OK, mine.id)
        assert alice.subscription(mine.id).theme == "by-ops"

        deleted = list(alice.write_subscriptions([delete_write(results[0].id)]))
        assert [(r.code, r.id) for r in deleted] == [(OK, results[0].id)]
        with pytest.raises(grpc.RpcError) as e:
            alice.subscription(results[0].id)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_many_writes_keep_their_order(served: Served) -> None:
    with client(served, "alice") as alice:
        n = 3000  # several group commits, more than one flow-control window of messages
        made = list(alice.write_subscriptions(create_write(sub(f"o{i}")) for i in range(n)))
        assert [r.code for r in made] == [OK] * n
        ids = [r.id for r in made]
        assert ids == sorted(ids) and len(set(ids)) == n  # ids are assigned in write order
        listed = {s.id: s.theme for s in alice.subscriptions(theme="o7")}
        assert listed == {ids[7]: "o7"}
        # Each id updated then deleted; every other delete comes before its update.
        writes = []
        for i, sid in enumerate(ids):
            upd = update_write(pb.Subscription(id=sid, theme=f"p{i}"), ["theme"])
            writes += [upd, delete_write(sid)] if i % 2 else [delete_write(sid), upd]
        codes = [r.code for r in alice.write_subscriptions(writes, per_message=500)]
        assert codes == [OK, NOT_FOUND, OK, OK] * (n // 2)
        assert not [s for s in alice.subscriptions() if s.theme.startswith(("o", "p"))]


def test_authentication(served: Served) -> None:
    srv, tokens = served
    for token in (None, tokens["alice"] + "x", "Bearer"):
        with HeliostatClient(srv.target, token=token) as c:
            with pytest.raises(grpc.RpcError) as e:
                list(c.write_subscriptions([create_write(sub("anon"))]))
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with client(served, "ops") as ops:
        assert not [s for s in ops.subscriptions() if s.theme == "anon"]


def test_too_many_writes_in_a_message(served: Served) -> None:
    with client(served, "alice") as alice:
        first = pb.WriteSubscriptionsRequest(writes=[create_write(sub("first"))])
        big = pb.WriteSubscriptionsRequest(writes=[delete_write(999_999)] * 1001)
        call = alice.subs.WriteSubscriptions(iter([first, big]), metadata=alice._auth, timeout=30)
        results = []
        with pytest.raises(grpc.RpcError) as e:
            for r in call:
                results += r.results
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ("heliostat-field", "writes") in (e.value.trailing_metadata() or ())
        assert [r.code for r in results] == [OK]  # the write before it stands
        assert alice.subscription(results[0].id).theme == "first"


def test_flow_control_bounds_what_the_server_takes(served: Served) -> None:
    """A client that sends without reading results is held back: its sends stop completing
    long before it has sent everything, and reading the results lets it finish."""
    srv, tokens = served
    auth = (("authorization", f"Bearer {tokens['alice']}"),)
    # Updates of a missing subscription with a ~1 KB theme: cheap to answer, big on the wire.
    msg = pb.WriteSubscriptionsRequest(
        writes=[update_write(pb.Subscription(id=999_999, theme="t" * 1000), ["theme"])] * 1000
    )
    messages = 300  # 300 MB: far more than any transport buffer

    async def run() -> tuple[int, int]:
        # A small receive window of its own (no BDP growth): the unread results stay few.
        options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 64 << 10)]
        async with grpc.aio.insecure_channel(srv.target, options=options) as channel:
            stub = subscriptions_pb2_grpc.SubscriptionServiceStub(channel)
            call = stub.WriteSubscriptions(metadata=auth)
            sent = 0
            while sent < messages:
                write = asyncio.ensure_future(call.write(msg))
                done, _ = await asyncio.wait([write], timeout=2)
                if not done:
                    break  # held back; left pending, not cancelled
                sent += 1
            stalled_at = sent
            codes: set[int] = set()
            results = 0

            async def drain() -> None:
                nonlocal results
                async for r in call:
                    results += len(r.results)
                    codes.update(x.code for x in r.results)

            reading = asyncio.create_task(drain())
            await write
            for _ in range(20):
                await call.write(msg)
            await call.done_writing()
            await reading
            assert codes == {NOT_FOUND}
            return stalled_at, results

    stalled_at, results = asyncio.run(run())
    # Unanswered writes the server holds (<= 4096 + one message), the results the client's
    # window takes (~2,000) and what the transports buffer: ~10 messages here, not 300.
    assert stalled_at < 30
    assert results == (stalled_at + 21) * 1000


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    root.mkdir()
    token = cli("token", "create", "--archive", str(root), "--owner", "ops", "--operator")
    srv = start_server(root, ingest=False)
    n = 3000
    acked: list[tuple[str, int, pb.SubscriptionWriteResult]] = []
    try:
        with HeliostatClient(srv.target, token=token) as ops:
            ops.create_collection("MODIS", "6")
            base = [
                r.id for r in ops.write_subscriptions(create_write(sub(f"b{i}")) for i in range(n))
            ]
            # Every write touches its own subscription: what was acknowledged is exactly known.
            plan: list[tuple[str, int]] = []
            for i in range(n):
                plan += [("create", i), ("update", base[i])] if i % 2 else [("delete", base[i])]

            killed = threading.Event()

            def writes() -> Iterator[pb.SubscriptionWrite]:
                for j, (kind, x) in enumerate(plan):
                    if j == 2 * len(plan) // 3:  # the stream stays open until the kill
                        killed.wait(30)
                    if kind == "create":
                        yield create_write(sub(f"c{x}"))
                    elif kind == "update":
                        yield update_write(pb.Subscription(id=x, theme=f"u{x}"), ["theme"])
                    else:
                        yield delete_write(x)

            with pytest.raises(grpc.RpcError):
                try:
                    results = ops.write_subscriptions(writes(), per_message=50)
                    for (kind, x), r in zip(plan, results, strict=False):
                        assert r.code == OK
                        acked.append((kind, x, r))
                        if len(acked) == len(plan) // 3:
                            srv.proc.kill()  # SIGKILL, mid-stream
                finally:
                    killed.set()
            assert len(plan) // 3 <= len(acked) < len(plan)
    finally:
        srv.proc.kill()
        srv.proc.wait()
    srv = start_server(root, ingest=False)
    try:
        with HeliostatClient(srv.target, token=token) as ops:
            for kind, x, r in acked:
                if kind == "delete":
                    with pytest.raises(grpc.RpcError) as e:
                        ops.subscription(x)
                    assert e.value.code() == grpc.StatusCode.NOT_FOUND
                else:
                    theme = f"c{x}" if kind == "create" else f"u{x}"
                    assert ops.subscription(r.id).theme == theme
    finally:
        stop_server(srv)

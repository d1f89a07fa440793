"""Delivery through a real server: catalog images into a data pool, dead letters listed and
replayed over gRPC with ownership, action state with the attempt log, and the admin statistics."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from heliostat.client import HeliostatClient
from heliostat.v1 import subscriptions_pb2 as pb
from tests.conftest import AIA_171, RunningServer, place_samples, start_server, stop_server
from tests.test_subscriptions_server import cli

T = TypeVar("T")
Served = tuple[RunningServer, dict[str, str], Path]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("delivery")
    root = base / "archive"
    place_samples(root, AIA_171)
    tokens = {
        who: cli("token", "create", "--archive", str(root), "--owner", who, *extra)
        for who, extra in (("alice", ()), ("bob", ()), ("ops", ("--operator",)))
    }
    srv = start_server(root, "--pool-root", str(base / "pool"), ingest=False)
    yield srv, tokens, base / "pool"
    stop_server(srv)


def client(served: Served, who: str) -> HeliostatClient:
    return HeliostatClient(served[0].target, token=served[1][who])


def wait_for(fn: Callable[[], T], timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while not (out := fn()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return out


def test_catalog_images_reach_the_pool(served: Served) -> None:
    srv, _, pool = served
    with client(served, "alice") as alice, client(served, "ops") as ops:
        sub = alice.create_subscription(
            pb.Subscription(
                collection="AIA_171.1",
                event_types=[pb.SUBSCRIPTION_EVENT_TYPE_INSERT],
                actions=[pb.Action(kind=pb.ACTION_KIND_DATAPOOL, params={"pool": "aia"})],
            )
        )
        ops.ingest([str(srv.archive)])
        names = sorted(f.name for f in AIA_171)
        folder = pool / "aia"
        wait_for(lambda: folder.is_dir() and len(list(folder.glob("*.json"))) == len(names))
        assert sorted(p.name for p in folder.glob("*.jp2")) == names
        mine = [a for a in alice.actions(limit=1000) if a.subscription_id == sub.id]
        assert len(mine) == len(names)
        st = wait_for(
            lambda: (s := alice.action(mine[0].id)).state == pb.DELIVERY_STATE_DELIVERED and s
        )
        assert st.attempts == 1 and st.kind == pb.ACTION_KIND_DATAPOOL
        (attempt,) = st.attempt_log
        assert attempt.outcome == pb.DELIVERY_OUTCOME_DELIVERED
        assert attempt.detail.startswith("placed ") and attempt.detail.endswith(".jp2")
        assert st.action.event.granule.endswith(".jp2")
    with client(served, "bob") as bob, pytest.raises(grpc.RpcError) as e:
        bob.action(mine[0].id)  # somebody else's action is not revealed
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_dead_letters_list_and_replay(served: Served) -> None:
    srv, _, pool = served
    with (
        client(served, "alice") as alice,
        client(served, "bob") as bob,
        client(served, "ops") as ops,
    ):
        ops.create_collection("MODIS", "6")
        for c, action in (
            (alice, pb.Action(kind=pb.ACTION_KIND_DATAPOOL, params={"pool": "modis"})),
            (bob, pb.Action(kind=pb.ACTION_KIND_DISTRIBUTION,
                            params={"media": "ftp", "destination": "ftp://example.org/in"})),
        ):  # fmt: skip
            c.create_subscription(
                pb.Subscription(
                    collection="MODIS.6",
                    event_types=[pb.SUBSCRIPTION_EVENT_TYPE_INSERT],
                    actions=[action],
                )
            )
        t = datetime(2024, 1, 1, tzinfo=UTC)
        ev = pb.GranuleEvent(
            collection="MODIS.6", type=pb.SUBSCRIPTION_EVENT_TYPE_INSERT,
            granule="incoming/MOD021KM.hdf", time=pb.TimeInterval(start=_ts(t)),
        )  # fmt: skip
        ops.publish_events([ev])
        # The granule is not in the archive yet: both fail at once, before any transfer.
        dead = wait_for(lambda: len(d := ops.dead_letters()) == 2 and d)
        assert {d.owner for d in dead} == {"alice", "bob"}
        assert all(d.state == pb.DELIVERY_STATE_FAILED and d.attempts == 1 for d in dead)
        (mine,) = alice.dead_letters()
        assert "not a file in the archive" in mine.last_result
        (theirs,) = bob.dead_letters()
        assert "not a file in the archive" in theirs.last_result
        assert alice.replay_dead_letters([theirs.id]) == []  # not hers: skipped, still dead
        with pytest.raises(grpc.RpcError) as e:
            alice.replay_dead_letters(["nonsense"])
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert dict(e.value.trailing_metadata())["heliostat-field"] == "ids[0]"
        # The operator puts the file in place; the owner replays.
        (srv.archive / "incoming").mkdir()
        (srv.archive / "incoming" / "MOD021KM.hdf").write_bytes(b"granule")
        assert alice.replay_dead_letters([mine.id]) == [mine.id]
        st = wait_for(
            lambda: (s := alice.action(mine.id)).state == pb.DELIVERY_STATE_DELIVERED and s
        )
        assert [a.outcome for a in st.attempt_log] == [
            pb.DELIVERY_OUTCOME_FAILED, pb.DELIVERY_OUTCOME_DELIVERED,
        ]  # fmt: skip
        assert (pool / "modis" / "MOD021KM.hdf").read_bytes() == b"granule"
        assert [d.id for d in ops.dead_letters()] == [theirs.id]


def test_escaping_destination_names_the_field(served: Served) -> None:
    with client(served, "alice") as alice, pytest.raises(grpc.RpcError) as e:
        alice.create_subscription(
            pb.Subscription(
                collection="AIA_171.1",
                event_types=[pb.SUBSCRIPTION_EVENT_TYPE_INSERT],
                actions=[
                    pb.Action(
                        kind=pb.ACTION_KIND_DISTRIBUTION,
                        params={"media": "file", "destination": "../../etc"},
                    )
                ],
            )
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(e.value.trailing_metadata())["heliostat-field"] == "actions[0].destination"


def test_delivery_stats(served: Served) -> None:
    # Runs after the tests above in this module: there are deliveries to count.
    with client(served, "ops") as ops:
        s = wait_for(lambda: (x := ops.delivery_stats()).counters["delivered"] >= 1 and x)
    stages = {x.stage: x for x in s.stages}
    assert {"match", "record", "queue_wait", "lease", "result", "delivery.datapool"} <= set(stages)
    d = stages["delivery.datapool"]
    assert d.count >= 1 and 0 < d.mean_seconds <= d.max_seconds
    assert s.counters["events"] >= 1 and s.counters["leased"] >= s.counters["delivered"]
    for k in ("pending.datapool", "due.datapool", "leased", "dead_letters", "events_left",
              "actions_left", "untailed"):  # fmt: skip
        assert k in s.depths
    assert s.depths["events_left"] >= 1


def _ts(dt: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(dt)
    return t

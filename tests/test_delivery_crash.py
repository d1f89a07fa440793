"""Kill -9 a server in the middle of deliveries, restart it: every acknowledged event's actions
are delivered (the files are in place), and none recorded delivered before the kill is
delivered again."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from heliostat.client import HeliostatClient
from heliostat.subscriptions.service import SubscriptionService
from heliostat.subscriptions.store import action_key
from heliostat.v1 import subscriptions_pb2 as pb
from tests.conftest import start_server, stop_server
from tests.test_subscriptions_server import cli

EVENTS = 400
BATCH = 5


def _ts() -> Timestamp:
    t = Timestamp()
    t.FromDatetime(datetime(2024, 1, 1, tzinfo=UTC))
    return t


def _event(i: int) -> pb.GranuleEvent:
    return pb.GranuleEvent(
        collection="MODIS.6", type=pb.SUBSCRIPTION_EVENT_TYPE_INSERT,
        granule=f"granules/g{i:04d}.dat", time=pb.TimeInterval(start=_ts()),
    )  # fmt: skip


def _targets(base: Path, i: int) -> list[Path]:
    name = f"g{i:04d}.dat"
    pool = base / "pool" / "modis"
    return [pool / name, pool / (name + ".json"), base / "dist" / "team" / "in" / name]


def test_kill_9_mid_delivery(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    (root / "granules").mkdir(parents=True)
    for i in range(EVENTS):
        (root / "granules" / f"g{i:04d}.dat").write_bytes(os.urandom(32 << 10))
    ops_token = cli("token", "create", "--archive", str(root), "--owner", "ops", "--operator")
    opts = ("--pool-root", str(tmp_path / "pool"), "--distribution-root", str(tmp_path / "dist"),
            "--delivery-lease", "3", "--retry-base", "0.2")  # fmt: skip
    srv = start_server(root, *opts, ingest=False)
    acked: list[int] = []
    try:
        with HeliostatClient(srv.target, token=ops_token) as ops:
            ops.create_collection("MODIS", "6")
            for action in (
                pb.Action(kind=pb.ACTION_KIND_DATAPOOL, params={"pool": "modis"}),
                pb.Action(kind=pb.ACTION_KIND_DISTRIBUTION,
                          params={"media": "file", "destination": "team/in"}),
            ):  # fmt: skip
                ops.create_subscription(
                    pb.Subscription(
                        owner="alice",
                        collection="MODIS.6",
                        event_types=[pb.SUBSCRIPTION_EVENT_TYPE_INSERT],
                        actions=[action],
                    )
                )
            for first in range(0, EVENTS, BATCH):
                acked += ops.publish_events([_event(first + k) for k in range(BATCH)])
                if len(acked) >= EVENTS // 2 and ops.delivery_stats().counters["delivered"] >= 30:
                    break
            # Mid-delivery: some actions delivered, others leased or pending.
            os.kill(srv.proc.pid, signal.SIGKILL)
            srv.proc.wait()
    except grpc.RpcError:
        srv.proc.kill()
        raise
    assert len(acked) >= EVENTS // 2

    # What the store says was delivered at the kill, with each placement's inode and log.
    svc = SubscriptionService(root / ".heliostat" / "subscriptions")
    try:
        states = {}
        cursor = svc.ledger.cursor()
        for a in svc.store.actions_after(b"", 100_000, None):
            key = action_key(a.id)
            st = svc.ledger.state(key)
            states[a.id] = (a, st, len(svc.ledger.attempts(key)))
    finally:
        svc.close()
    delivered = {i: v for i, v in states.items() if v[1] is not None and v[1].state == "delivered"}
    unfinished = [i for i, v in states.items() if v[1] is None or v[1].state != "delivered"]
    assert delivered and unfinished, "the kill came before or after all deliveries"
    inodes = {}
    for aid, (a, _, _) in delivered.items():
        i = int(a.event.granule[-8:-4])
        paths = _targets(tmp_path, i)
        target = paths[2] if a.action.kind == "distribution" else paths[0]
        inodes[aid] = (target, target.stat().st_ino, target.stat().st_mtime_ns)
    assert cursor  # the event driver had started

    srv = start_server(root, *opts, ingest=False)
    try:
        with HeliostatClient(srv.target, token=ops_token) as ops:
            deadline = time.monotonic() + 90
            while True:
                s = ops.delivery_stats()
                if s.depths["untailed"] == 0 and s.depths["actions_left"] == 0:
                    break
                assert time.monotonic() < deadline, f"not drained: {dict(s.depths)}"
                time.sleep(0.2)
            assert s.depths["dead_letters"] == 0
            actions = ops.actions(limit=1000)
            by_event = {a.event_id for a in actions}
            assert set(acked) <= by_event
            for eid in by_event:
                i = int(next(a for a in actions if a.event_id == eid).event.granule[-8:-4])
                assert all(p.is_file() for p in _targets(tmp_path, i)), i
            for a in actions:
                st = ops.action(a.id)
                outcomes = [x.outcome for x in st.attempt_log]
                assert st.state == pb.DELIVERY_STATE_DELIVERED, a.id
                assert outcomes[-1] == pb.DELIVERY_OUTCOME_DELIVERED
                assert outcomes.count(pb.DELIVERY_OUTCOME_DELIVERED) == 1, a.id
                if a.id in delivered:
                    # Recorded delivered before the kill: not handed to a channel again.
                    assert len(outcomes) == delivered[a.id][2]
                    target, ino, mtime = inodes[a.id]
                    assert (target.stat().st_ino, target.stat().st_mtime_ns) == (ino, mtime)
    finally:
        out = stop_server(srv)
    assert "Traceback" not in out, out

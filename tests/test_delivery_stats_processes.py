"""GetDeliveryStats covers every server process on one data directory: two servers share the
store, each records its own events, and either one answers with the sum (its own counts plus the
totals the other has flushed), including after the other has exited."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import lmdb
import pytest

from heliostat.client import HeliostatClient
from heliostat.subscriptions.auth import Principal
from heliostat.subscriptions.model import Box, Collection, GranuleEvent
from heliostat.subscriptions.service import SubscriptionService
from heliostat.subscriptions.stats import PipelineStats, StatsLog
from heliostat.subscriptions.store import SubscriptionStore
from heliostat.v1 import admin_pb2
from heliostat.v1 import subscriptions_pb2 as pb
from tests.conftest import start_server, stop_server
from tests.test_subscriptions_server import cli


def publish(target: str, token: str, n: int) -> None:
    with HeliostatClient(target, token=token) as ops:
        for i in range(n):
            ev = pb.GranuleEvent(
                collection="L2.1", type=pb.SUBSCRIPTION_EVENT_TYPE_INSERT, granule=f"g{i}"
            )
            ev.time.start.FromDatetime(datetime(2026, 1, 1, tzinfo=UTC))
            assert len(ops.publish_events([ev])) == 1


def stats(target: str, token: str) -> admin_pb2.DeliveryStats:
    with HeliostatClient(target, token=token) as ops:
        return ops.delivery_stats()


def wait_until_both_show(targets: list[str], token: str, events: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        seen = [stats(t, token).counters["events"] for t in targets]
        if seen == [events] * len(targets):
            return
        assert time.monotonic() < deadline, f"events counted {seen}, not {events} each"
        time.sleep(0.1)


def test_two_server_processes_answer_with_the_sum(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    root.mkdir()
    token = cli("token", "create", "--archive", str(root), "--owner", "ops", "--operator")
    a = start_server(root, ingest=False)
    b = start_server(root, ingest=False)
    try:
        with HeliostatClient(a.target, token=token) as ops:
            ops.create_collection("L2", "1")
        publish(a.target, token, 3)
        publish(b.target, token, 5)
        wait_until_both_show([a.target, b.target], token, 8)
        for s in (stats(a.target, token), stats(b.target, token)):
            stages = {x.stage: x for x in s.stages}
            assert stages["record"].count == stages["match"].count == 8
        stop_server(b)  # an exited process's counts stay in the totals
        publish(a.target, token, 1)
        wait_until_both_show([a.target], token, 9)
    finally:
        stop_server(a)
        if b.proc.poll() is None:
            stop_server(b)


def test_flushes_add_to_shared_totals_and_a_failed_flush_keeps_its_counts(tmp_path: Path) -> None:
    with SubscriptionStore(tmp_path / "subs") as store:
        log = StatsLog(store)
        one, two = PipelineStats(log), PipelineStats(log)
        one.count("delivered", 3)
        one.time("lease", 0.5, 2)
        two.count("delivered", 4)
        two.time("lease", 3.0, 3)
        assert one.snapshot({}).counters["delivered"] == 3  # nothing flushed yet
        assert one.flush() and two.flush() and not two.flush()  # the last: nothing new
        two.count("delivered")
        snap = one.snapshot({"leased": 1})
        assert snap.counters["delivered"] == 7 and snap.depths == {"leased": 1}
        lease = snap.stages["lease"]
        assert (lease.count, lease.mean_s, lease.max_s) == (5, 0.7, 1.0)
        assert two.snapshot({}).counters["delivered"] == 8  # its own unflushed one too

    broken = PipelineStats(log)  # the store is closed: the write fails
    broken.count("retries", 2)
    with pytest.raises(lmdb.Error):
        broken.flush()
    with SubscriptionStore(tmp_path / "subs") as store:
        again = PipelineStats(StatsLog(store))
        assert again.snapshot({}).counters["retries"] == 0
        broken._log = StatsLog(store)
        assert broken.flush()  # counted again with the next flush
        assert again.snapshot({}).counters["retries"] == 2


def test_a_closed_service_leaves_its_counts(tmp_path: Path) -> None:
    op = Principal("ops", operator=True)
    svc = SubscriptionService(tmp_path / "subs")
    svc.create_collection(op, Collection("MODIS", "6", "geographic"))
    svc.publish(op, [GranuleEvent("MODIS.6", "insert", "g", 0, 0, Box(0, 0, 1, 1))])
    svc.close()
    svc = SubscriptionService(tmp_path / "subs")
    try:
        assert svc.delivery_stats().counters["events"] == 1
    finally:
        svc.close()

"""Dead letters' own retention (the deletion driver expires them with their logs and events) and
the operator's purge, over a real store and, for the purge, a real server restarted on it."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from heliostat.client import HeliostatClient
from heliostat.subscriptions.auth import PermissionDenied
from heliostat.subscriptions.drivers import Drivers, DriverSettings
from heliostat.subscriptions.lifecycle import Ledger, RetryPolicy, action_id_of
from heliostat.subscriptions.model import Collection
from heliostat.subscriptions.service import SubscriptionService
from heliostat.subscriptions.store import action_key
from heliostat.v1 import subscriptions_pb2 as pb
from tests.conftest import start_server, stop_server
from tests.test_delivery_pipeline import ALICE, BOB, EMAIL, OP, Flaky, publish, run_until, subscribe
from tests.test_delivery_server import wait_for
from tests.test_subscriptions_server import cli


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[SubscriptionService]:
    s = SubscriptionService(tmp_path / "subs")
    s.create_collection(OP, Collection("MODIS", "6", "geographic"))
    yield s
    s.close()


def failing(svc: SubscriptionService, dead_letter_retention_s: float) -> tuple[Drivers, Flaky]:
    ch = Flaky("email", fails=99, outcome="failed")
    settings = DriverSettings(retry=RetryPolicy(), dead_letter_retention_s=dead_letter_retention_s)
    return Drivers(svc, [ch], settings, name="test"), ch


def dead_ids(svc: SubscriptionService) -> list[str]:
    return [x.id for x in svc.dead_letters(OP, "", 0)]


def test_dead_letter_past_retention_goes_with_its_log_and_event(
    svc: SubscriptionService,
) -> None:
    subscribe(svc, ALICE, EMAIL)
    d, ch = failing(svc, dead_letter_retention_s=0.5)
    publish(svc)  # event 1: its action fails now
    d.tail()
    run_until(d, lambda: len(dead_ids(svc)) == 1)
    (old,) = dead_ids(svc)
    time.sleep(0.6)
    publish(svc)  # event 2: fails 0.6 s later, inside the retention when the driver runs
    d.tail()
    run_until(d, lambda: len(dead_ids(svc)) == 2)
    (new,) = [x for x in dead_ids(svc) if x != old]
    assert svc.store.counts()["events"] == 2
    assert d.delete_finished() is False
    assert dead_ids(svc) == [new]
    assert [a.id for a in svc.actions(OP, "", 10)] == [new]
    assert svc.store.counts()["events"] == 1
    key = action_key(old)
    assert svc.ledger.state(key) is None and svc.ledger.attempts(key) == []
    counters = svc.delivery_stats().counters
    assert counters["dead_letters_expired"] == 1 and counters["deleted_events"] == 1
    assert counters["deleted_logs"] == 1 and counters["deleted_actions"] == 0
    assert svc.delivery_stats().depths["dead_letters"] == 1
    # The one kept still replays, and is delivered; then it is no dead letter to expire.
    ch.fails = 0
    assert svc.replay(ALICE, [new]) == [new]
    run_until(d, lambda: ch.delivered == [new])
    time.sleep(0.6)
    d.delete_finished()
    _, st, attempts = svc.action_status(ALICE, new)
    assert st is not None and st.state == "delivered"
    assert [a.outcome for a in attempts] == ["failed", "delivered"]


def test_zero_retention_keeps_dead_letters(svc: SubscriptionService) -> None:
    subscribe(svc, ALICE, EMAIL)
    d, _ = failing(svc, dead_letter_retention_s=0)
    publish(svc)
    d.tail()
    run_until(d, lambda: len(dead_ids(svc)) == 1)
    time.sleep(0.05)
    d.delete_finished()
    assert len(dead_ids(svc)) == 1
    assert svc.delivery_stats().counters["dead_letters_expired"] == 0


def test_purge_by_owner_and_age(svc: SubscriptionService) -> None:
    subscribe(svc, ALICE, EMAIL)
    subscribe(svc, BOB, EMAIL)
    d, _ = failing(svc, dead_letter_retention_s=0)
    publish(svc)
    d.tail()
    run_until(d, lambda: len(dead_ids(svc)) == 2)
    cut = time.time_ns() // 1000
    publish(svc)
    d.tail()
    run_until(d, lambda: len(dead_ids(svc)) == 4)
    with pytest.raises(PermissionDenied):
        svc.purge_dead_letters(ALICE, "alice", None)
    assert len(dead_ids(svc)) == 4
    # Alice's older one only; then every one of bob's.
    assert svc.purge_dead_letters(OP, "alice", cut) == 1
    left = svc.dead_letters(OP, "", 0)
    assert sorted(x.owner for x in left) == ["alice", "bob", "bob"]
    assert svc.purge_dead_letters(OP, "bob", None) == 2
    assert [x.owner for x in svc.dead_letters(OP, "", 0)] == ["alice"]
    # Event 1 lost both its actions; event 2 keeps alice's.
    assert svc.store.counts()["events"] == 1
    assert svc.delivery_stats().counters["dead_letters_purged"] == 3


def _ts(t: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(t)
    return ts


def test_purge_over_grpc_is_operator_only_and_durable(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    root.mkdir()
    tokens = {
        who: cli("token", "create", "--archive", str(root), "--owner", who, *extra)
        for who, extra in (("alice", ()), ("bob", ()), ("ops", ("--operator",)))
    }
    srv = start_server(root, "--pool-root", str(tmp_path / "pool"), ingest=False)
    try:
        with (
            HeliostatClient(srv.target, token=tokens["alice"]) as alice,
            HeliostatClient(srv.target, token=tokens["bob"]) as bob,
            HeliostatClient(srv.target, token=tokens["ops"]) as ops,
        ):
            ops.create_collection("MODIS", "6")
            for c in (alice, bob):
                c.create_subscription(
                    pb.Subscription(
                        collection="MODIS.6", event_types=[pb.SUBSCRIPTION_EVENT_TYPE_INSERT],
                        actions=[pb.Action(kind=pb.ACTION_KIND_DATAPOOL, params={"pool": "p"})],
                    )
                )  # fmt: skip
            t = _ts(datetime(2024, 1, 1, tzinfo=UTC))
            ev = pb.GranuleEvent(
                collection="MODIS.6", type=pb.SUBSCRIPTION_EVENT_TYPE_INSERT,
                granule="missing.hdf", time=pb.TimeInterval(start=t),
            )  # fmt: skip
            ops.publish_events([ev])  # not in the archive: both fail at once
            wait_for(lambda: len(ops.dead_letters()) == 2)
            for c in (alice, bob):
                with pytest.raises(grpc.RpcError) as e:
                    c.purge_dead_letters(owner="alice")
                assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert len(ops.dead_letters()) == 2
            assert ops.purge_dead_letters(owner="alice") == 1
            assert alice.dead_letters() == [] and len(bob.dead_letters()) == 1
            stats = ops.delivery_stats()
            assert stats.counters["dead_letters_purged"] == 1
            assert stats.depths["dead_letters"] == 1
    finally:
        stop_server(srv)
    srv = start_server(root, "--pool-root", str(tmp_path / "pool"), ingest=False)
    try:
        with HeliostatClient(srv.target, token=tokens["ops"]) as ops:
            assert [d.owner for d in ops.dead_letters()] == ["bob"]
            (left,) = ops.actions()
            assert left.owner == "bob"
    finally:
        stop_server(srv)


def test_dead_letters_recorded_before_their_age_index_get_one(svc: SubscriptionService) -> None:
    subscribe(svc, ALICE, EMAIL)
    d, _ = failing(svc, dead_letter_retention_s=0)
    publish(svc)
    d.tail()
    run_until(d, lambda: len(dead_ids(svc)) == 1)
    ledger = svc.ledger
    svc.store.lmdb.write(lambda txn: txn.drop(ledger._dead_at, delete=False))  # an older store
    assert ledger.dead_before(2**62, 10) == []
    (entry,) = Ledger(svc.store).dead_before(2**62, 10)
    assert action_id_of(entry[8:]) == dead_ids(svc)[0]


class FailOnce(Ledger):
    """A ledger whose first removal of dead letters fails, as a full disk would make it."""

    failed = False

    def delete_dead(self, dead: Sequence[bytes]) -> tuple[int, int]:
        if not self.failed:
            self.failed = True
            raise OSError("No space left on device")
        return super().delete_dead(dead)


def test_failed_expiry_is_retried(svc: SubscriptionService) -> None:
    subscribe(svc, ALICE, EMAIL)
    d, _ = failing(svc, dead_letter_retention_s=0.01)
    publish(svc)
    d.tail()
    run_until(d, lambda: len(dead_ids(svc)) == 1)
    svc.ledger = d.ledger = FailOnce(svc.store)
    time.sleep(0.02)
    with pytest.raises(OSError):
        d.delete_finished()
    counters = svc.delivery_stats().counters
    assert counters["deletion_failures"] == 1 and counters["deleted_logs"] == 1
    assert len(dead_ids(svc)) == 1  # its log is gone; it is still listed, for the next pass
    d.delete_finished()
    assert dead_ids(svc) == [] and svc.store.counts()["events"] == 0
    assert svc.delivery_stats().counters["dead_letters_expired"] == 1

"""Group commit of subscription writes: requests written together in one transaction see each
other in order, fail alone, and are answered once durable; over gRPC with many calls in flight."""

from __future__ import annotations

import time
from concurrent.futures import Future
from pathlib import Path

import grpc
import pytest

from heliostat.client import HeliostatClient
from heliostat.errors import InvalidArgument, NotFound
from heliostat.subscriptions.auth import Principal
from heliostat.subscriptions.model import Action, Collection, Subscription
from heliostat.subscriptions.service import (
    CreateOp,
    DeleteOp,
    Patch,
    SubscriptionService,
    UpdateOp,
    WriteOp,
)
from heliostat.v1 import subscriptions_pb2 as pb
from tests.conftest import place_samples, start_server, stop_server
from tests.test_subscriptions_server import cli

ALICE = Principal("alice")
BOB = Principal("bob")
OP = Principal("ops", operator=True)
EMAIL = (Action("email", (("address", "a@example.org"),)),)


def sub(**kw: object) -> Subscription:
    fields: dict[str, object] = {
        "owner": "",
        "event_types": frozenset({"insert"}),
        "actions": EMAIL,
    }
    fields.update(kw)
    return Subscription(0, collection="MODIS.6", **fields)  # type: ignore[arg-type]


@pytest.fixture
def svc(tmp_path: Path) -> SubscriptionService:
    s = SubscriptionService(tmp_path / "subs")
    s.create_collection(OP, Collection("MODIS", "6", "geographic"))
    return s


def taken(svc: SubscriptionService) -> None:
    """Wait until the writer has taken what is queued (it then blocks on the service lock)."""
    while svc._writes._queue:
        time.sleep(0.001)


def test_one_batch_sees_its_own_writes_in_order(svc: SubscriptionService, tmp_path: Path) -> None:
    a, b, c = (svc.create(ALICE, sub(theme=t)) for t in ("a", "b", "c"))
    gen = svc.store.changes_after(0)[0]
    with svc._lock:  # the writer blocks in its first batch while the rest queue up
        first = svc.submit_create(BOB, sub())
        taken(svc)
        futs: list[Future[Subscription]] = [
            svc.submit_update(ALICE, a.id, Patch(frozenset({"theme"}), theme="a2")),
            svc.submit_update(ALICE, a.id, Patch(frozenset({"active"}), active=False)),
            svc.submit_delete(ALICE, b.id),
            svc.submit_update(ALICE, b.id, Patch(frozenset({"theme"}), theme="late")),
            svc.submit_delete(BOB, c.id),  # not bob's: fails alone
            svc.submit_update(ALICE, c.id, Patch(frozenset({"expire_time"}), expires_us=-1)),
            svc.submit_create(ALICE, sub(theme="new")),
            svc.submit_update(ALICE, 10_000, Patch(frozenset({"active"}), active=False)),
        ]
        assert len(svc._writes._queue) == len(futs)
    assert first.result() is not None
    upd1, upd2, del_b, late, bob_del, bad, made, missing = futs
    mid = upd1.result()
    assert mid.theme == "a2" and mid.active
    final_a = upd2.result()
    assert final_a.theme == "a2" and not final_a.active
    assert svc.get(ALICE, a.id) == final_a
    assert del_b.result() == b  # a delete answers with the subscription as it was
    with pytest.raises(NotFound):
        late.result()
    with pytest.raises(NotFound):
        svc.get(ALICE, b.id)
    with pytest.raises(NotFound):
        bob_del.result()
    with pytest.raises(InvalidArgument) as e:
        bad.result()
    assert e.value.field == "expire_time"
    assert svc.get(ALICE, c.id) == c  # neither failed request changed it
    created = made.result()
    assert svc.get(ALICE, created.id).theme == "new"
    with pytest.raises(NotFound):
        missing.result()
    # One write each for bob's, a (both updates, in order), b and the new one.
    assert svc.store.changes_after(gen)[0] == gen + 4
    svc.close()
    reopened = SubscriptionService(tmp_path / "subs")
    assert reopened.get(ALICE, a.id) == final_a
    assert len(reopened.engine) == 4  # a, c, bob's, the new one
    reopened.close()


def test_gets_answer_after_commit_and_index(svc: SubscriptionService) -> None:
    futs = [svc.submit_create(ALICE, sub()) for _ in range(200)]
    ids = [f.result().id for f in futs]
    assert len(set(ids)) == 200
    assert len(svc.engine) == 200
    for f in [svc.submit_delete(ALICE, i) for i in ids[:100]]:
        f.result()
    assert len(svc.engine) == 100
    svc.close()
    with pytest.raises(RuntimeError):
        svc.submit_create(ALICE, sub())


def test_writes_submitted_together(svc: SubscriptionService) -> None:
    a = svc.create(ALICE, sub(theme="a"))
    bobs = svc.create(BOB, sub(theme="b"))
    ops: list[WriteOp] = [
        CreateOp(sub(theme="n1")),
        CreateOp(sub(theme="bad theme")),  # fails alone, before queueing
        UpdateOp(a.id, Patch(frozenset({"theme"}), theme="a2")),
        UpdateOp(a.id, Patch(frozenset())),  # names no field
        DeleteOp(bobs.id),  # not alice's
        DeleteOp(a.id),
        UpdateOp(a.id, Patch(frozenset({"active"}), active=False)),  # deleted just before
    ]
    n1, bad, upd, empty, not_hers, deleted, late = svc.submit_writes(ALICE, ops).result()
    assert isinstance(n1, Subscription) and n1.theme == "n1" and n1.owner == "alice"
    assert isinstance(bad, InvalidArgument) and bad.field == "theme"
    assert isinstance(upd, Subscription) and upd.theme == "a2"
    assert isinstance(empty, InvalidArgument) and empty.field == "update_mask"
    assert isinstance(not_hers, NotFound) and isinstance(late, NotFound)
    assert deleted == upd  # as it was when deleted
    assert {s.id for s in svc.list_subscriptions(OP)} == {n1.id, bobs.id}
    assert svc.submit_writes(ALICE, []).result() == []
    svc.close()


def test_many_calls_in_flight_over_grpc(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    place_samples(root)
    ops_token = cli("token", "create", "--archive", str(root), "--owner", "ops", "--operator")
    srv = start_server(root, ingest=False)
    try:
        with HeliostatClient(srv.target, token=ops_token) as ops:
            ops.create_collection("MODIS", "6")
            auth = (("authorization", f"Bearer {ops_token}"),)

            def create(i: int) -> grpc.Future:  # type: ignore[type-arg]
                addr = "nope" if i % 16 == 5 else f"u{i}@example.org"  # every 16th invalid
                s = pb.Subscription(
                    collection="MODIS.6",
                    event_types=[pb.SUBSCRIPTION_EVENT_TYPE_INSERT],
                    active=True,
                    theme=f"t{i}",
                    actions=[pb.Action(kind=pb.ACTION_KIND_EMAIL, params={"address": addr})],
                )
                req = pb.CreateSubscriptionRequest(subscription=s)
                return ops.subs.CreateSubscription.future(req, timeout=30, metadata=auth)

            futs = [create(i) for i in range(128)]
            made = {}
            for i, f in enumerate(futs):
                if i % 16 == 5:
                    assert f.exception().code() == grpc.StatusCode.INVALID_ARGUMENT
                    meta = dict(f.exception().trailing_metadata() or ())
                    assert meta["heliostat-field"] == "actions[0].address"
                else:
                    made[i] = f.result()
            assert len({s.id for s in made.values()}) == 120
            listed = {s.id: s.theme for s in ops.subscriptions(page_size=1000)}
            assert listed == {s.id: f"t{i}" for i, s in made.items()}

            dels = [
                ops.subs.DeleteSubscription.future(
                    pb.DeleteSubscriptionRequest(id=i), timeout=30, metadata=auth
                )
                for i in [*(s.id for s in made.values()), 999_999]
            ]
            for f in dels[:-1]:
                f.result()
            assert dels[-1].exception().code() == grpc.StatusCode.NOT_FOUND
            assert list(ops.subscriptions()) == []
    finally:
        stop_server(srv)

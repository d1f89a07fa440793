"""The delivery pipeline over a real store: leases, retries with backoff, dead letters and
replay, gone receivers, lease expiry, deletion, and the drivers running as asyncio tasks.

The receivers here are channel classes defined in this module that fail a given number of times
and then accept: real receivers for retry timing, with no network in between.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from heliostat.subscriptions.auth import Principal
from heliostat.subscriptions.channels.base import Delivery, Outcome, Result
from heliostat.subscriptions.drivers import Drivers, DriverSettings
from heliostat.subscriptions.lifecycle import Ledger, RetryPolicy, key_of
from heliostat.subscriptions.model import (
    Action,
    ActionKind,
    Box,
    Collection,
    GranuleEvent,
    Subscription,
)
from heliostat.subscriptions.service import SubscriptionService

OP = Principal("ops", operator=True)
ALICE = Principal("alice")
BOB = Principal("bob")
US = 1_000_000


class Flaky:
    """Answers ``outcome`` to the first ``fails`` attempts of each action, then delivered."""

    def __init__(self, kind: ActionKind, fails: int, outcome: Outcome = "retry") -> None:
        self.kind = kind
        self.fails = fails
        self.outcome = outcome
        self.seen: list[tuple[str, int]] = []  # (action id, attempt)
        self.delivered: list[str] = []

    async def deliver(self, batch: Sequence[Delivery]) -> list[Result]:
        out = []
        for d in batch:
            self.seen.append((d.action.id, d.attempt))
            if d.attempt <= self.fails:
                out.append(Result(self.outcome, f"{self.outcome} #{d.attempt}"))
            else:
                self.delivered.append(d.action.id)
                out.append(Result("delivered", "250 2.0.0 Ok: queued"))
        return out

    async def close(self) -> None:
        pass


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[SubscriptionService]:
    s = SubscriptionService(tmp_path / "subs")
    s.create_collection(OP, Collection("MODIS", "6", "geographic"))
    yield s
    s.close()


def subscribe(svc: SubscriptionService, who: Principal, *actions: Action) -> Subscription:
    return svc.create(who, Subscription(0, "", "MODIS.6", frozenset({"insert"}), actions=actions))


def publish(svc: SubscriptionService, n: int = 1) -> None:
    svc.publish(
        OP, [GranuleEvent("MODIS.6", "insert", f"g{i}", 0, 0, Box(0, 0, 1, 1)) for i in range(n)]
    )


EMAIL = Action("email", (("address", "a@example.org"),))
HOOK = Action("webhook", (("secret", "s" * 24), ("url", "http://example.org/h")))


def drivers(svc: SubscriptionService, channel: Flaky, **kw: float) -> Drivers:
    retry = RetryPolicy(
        base_s=kw.pop("base_s", 0.02),
        max_delay_s=kw.pop("max_delay_s", 10.0),
        horizon_s=kw.pop("horizon_s", 60.0),
    )
    settings = DriverSettings(retry=retry, **kw)  # type: ignore[arg-type]
    return Drivers(svc, [channel], settings, name="test")


def run_until(d: Drivers, done: object, timeout: float = 10.0) -> None:
    """Step the action driver until done() holds."""

    async def go() -> None:
        deadline = time.monotonic() + timeout
        while not done():  # type: ignore[operator]
            assert time.monotonic() < deadline, "timed out"
            if await d.deliver_once("w") == 0:
                await asyncio.sleep(0.005)

    asyncio.run(go())


def test_retries_back_off_then_deliver_once(svc: SubscriptionService) -> None:
    subscribe(svc, ALICE, EMAIL)
    publish(svc)
    ch = Flaky("email", fails=4)
    d = drivers(svc, ch)
    assert d.tail() == 1
    (a,) = svc.actions(OP, "", 10)
    dues = []

    async def go() -> None:
        while not ch.delivered:
            if await d.deliver_once("w"):
                st = svc.ledger.state(key_of(a))
                assert st is not None
                dues.append((st.state, st.due_us - st.updated_us))
            await asyncio.sleep(0.002)

    asyncio.run(go())
    assert [x[0] for x in dues] == ["pending"] * 4 + ["delivered"]
    waits = [w / US for _, w in dues[:4]]
    for n, w in enumerate(waits, 1):  # base·2^(n-1), its second half jittered
        full = 0.02 * 2 ** (n - 1)
        assert full / 2 <= w <= full + 1e-6
    assert waits == sorted(waits)
    assert ch.seen == [(a.id, n) for n in range(1, 6)]
    _, st, attempts = svc.action_status(ALICE, a.id)
    assert st is not None and st.state == "delivered" and st.attempts == 5
    assert [x.outcome for x in attempts] == ["retry"] * 4 + ["delivered"]
    assert attempts[-1].detail == "250 2.0.0 Ok: queued"  # the mail server's answer, kept
    # Delivered is final: nothing is leased again.
    assert asyncio.run(d.deliver_once("w")) == 0
    assert svc.delivery_stats().counters["retries"] == 4


def test_horizon_dead_letter_then_replay(svc: SubscriptionService) -> None:
    subscribe(svc, ALICE, EMAIL)
    subscribe(svc, BOB, EMAIL)
    publish(svc)
    ch = Flaky("email", fails=3)
    d = drivers(svc, ch, base_s=0.05, horizon_s=0.1)
    d.tail()
    run_until(d, lambda: len(svc.ledger.dead_letters(b"", 10, None)) == 2)
    dead = svc.dead_letters(OP, "", 0)
    assert {x.owner for x in dead} == {"alice", "bob"}
    assert all(x.state == "failed" and x.detail.startswith("gave up after") for x in dead)
    assert ch.delivered == []
    # An owner sees and replays only their own.
    (mine,) = svc.dead_letters(ALICE, "", 0)
    assert mine.owner == "alice"
    theirs = next(x for x in dead if x.owner == "bob")
    assert svc.replay(ALICE, [theirs.id]) == []
    assert svc.replay(ALICE, [mine.id]) == [mine.id]
    assert [x.id for x in svc.dead_letters(OP, "", 0)] == [theirs.id]
    ch.fails = 0
    run_until(d, lambda: ch.delivered == [mine.id])
    _, st, attempts = svc.action_status(ALICE, mine.id)
    assert st is not None and st.state == "delivered"
    assert [x.outcome for x in attempts][-1] == "delivered"


def test_failed_at_once_is_a_dead_letter(svc: SubscriptionService) -> None:
    subscribe(svc, ALICE, EMAIL)
    publish(svc)
    ch = Flaky("email", fails=1, outcome="failed")
    d = drivers(svc, ch)
    d.tail()
    run_until(d, lambda: ch.seen)
    (dead,) = svc.dead_letters(OP, "", 0)
    assert dead.attempts == 1 and dead.detail == "failed #1"


def test_gone_disables_the_action(svc: SubscriptionService) -> None:
    hook = HOOK
    sub = subscribe(svc, ALICE, hook, EMAIL)
    publish(svc)
    gone = Flaky("webhook", fails=99, outcome="gone")
    mail = Flaky("email", fails=0)
    d = Drivers(svc, [gone, mail], DriverSettings(), name="t")
    d.tail()
    run_until(d, lambda: gone.seen and mail.delivered)
    stored = svc.get(ALICE, sub.id)
    assert dict(stored.actions[0].params)["disabled"].startswith("receiver gone")
    assert "disabled" not in dict(stored.actions[1].params)
    # Later matches produce the e-mail action only.
    publish(svc, 2)
    kinds = [a.action.kind for a in svc.actions(OP, "", 100)]
    assert kinds == ["webhook", "email", "email", "email"]
    d.tail()
    run_until(d, lambda: len(mail.delivered) == 3)
    assert len(gone.seen) == 1


def test_expired_lease_is_requeued_and_delivered_never_repeats(svc: SubscriptionService) -> None:
    subscribe(svc, ALICE, EMAIL)
    publish(svc, 3)
    ch = Flaky("email", fails=0)
    d = drivers(svc, ch, lease_s=0.05)
    d.tail()
    ledger: Ledger = svc.ledger
    # A worker leases everything, delivers the first, then dies.
    stalled = ledger.lease(["email"], 10, time.time_ns() // 1000, "dead-worker", 0.05)
    assert len(stalled) == 3
    now = time.time_ns() // 1000
    dead = "dead-worker"
    ledger.record([(stalled[0], Result("delivered", "ok"), 0.0)], now, RetryPolicy(), dead)
    assert ledger.lease(["email"], 10, now, "w2", 0.05) == []  # still leased
    assert d.recover() is False and svc.delivery_stats().counters["requeued"] == 0
    time.sleep(0.06)
    assert svc.delivery_stats().depths["lease_expired"] == 2
    d.recover()
    assert svc.delivery_stats().counters["requeued"] == 2
    # Re-leased by another worker: a late retry from the stalled one leaves it to the holder.
    now = time.time_ns() // 1000
    again, other = ledger.lease(["email"], 10, now, "w2", 30.0)
    ledger.record([(stalled[1], Result("retry", "late"), 0.0)], now, RetryPolicy(), dead)
    st = ledger.state(again.state.key)
    assert st is not None and (st.state, st.lease_owner) == ("leased", "w2")
    ledger.record([(again, Result("delivered", "ok"), 0.0)], now, RetryPolicy(), "w2")
    assert ledger.release([other], now) == 1  # given back unseen: the drivers deliver it
    run_until(d, lambda: len(ch.delivered) == 1)
    assert stalled[0].state.id not in ch.delivered and again.state.id not in ch.delivered
    # A late answer from the stalled worker changes nothing once delivered.
    ledger.record([(stalled[1], Result("retry", "late"), 0.0)], now, RetryPolicy(), dead)
    st = ledger.state(stalled[1].state.key)
    assert st is not None and st.state == "delivered"
    log = [a.outcome for a in ledger.attempts(stalled[1].state.key)]
    assert log == ["retry", "delivered", "retry"]
    assert asyncio.run(d.deliver_once("w")) == 0


class FailOnce(Ledger):
    """A ledger whose first removal of actions fails, as a full disk would make it."""

    failed = False

    def delete_actions(self, done: Sequence[bytes]) -> tuple[int, int]:
        if not self.failed:
            self.failed = True
            raise OSError("No space left on device")
        return super().delete_actions(done)


def test_deletion_removes_logs_first_and_retries(svc: SubscriptionService) -> None:
    subscribe(svc, ALICE, EMAIL, Action("watch", ()))
    publish(svc, 3)
    ch = Flaky("email", fails=1)
    d = drivers(svc, ch, retention_s=0.0, deletion_batch=4)
    d.tail()
    run_until(d, lambda: len(ch.delivered) == 3)
    keys = [key_of(a) for a in svc.actions(OP, "", 100)]
    assert len(keys) == 6 and svc.store.counts()["events"] == 3
    svc.ledger = d.ledger = FailOnce(svc.store)
    first = svc.ledger.finished_before(2**62, 4)
    with pytest.raises(OSError):
        d.delete_finished()
    stats = svc.delivery_stats().counters
    # The first batch (by finish time: the 3 watch actions, then the first e-mail delivered)
    # lost its attempt logs first; its actions are still there, for the next pass.
    assert stats["deletion_failures"] == 1 and stats["deleted_logs"] == 2
    gone, kept = first[-1][8:], [k for k in keys if k[-1] == 0 and k != first[-1][8:]]
    assert svc.ledger.attempts(gone) == [] and all(len(svc.ledger.attempts(k)) == 2 for k in kept)
    assert None not in svc.store.actions_at(keys)
    while d.delete_finished():
        pass
    assert svc.store.counts() == {"subscriptions": 1, "events": 0, "actions": 0}
    assert all(svc.ledger.state(k) is None and not svc.ledger.attempts(k) for k in keys)
    stats = svc.delivery_stats().counters
    assert stats["deleted_actions"] == 6 and stats["deleted_events"] == 3


def test_drivers_as_tasks_deliver_and_drain(svc: SubscriptionService) -> None:
    subscribe(svc, ALICE, EMAIL)
    ch = Flaky("email", fails=1)
    d = drivers(svc, ch, poll_s=0.01, action_workers=2, batch=8)

    async def go() -> None:
        await d.start()
        for _ in range(5):
            await asyncio.to_thread(publish, svc, 10)
        deadline = time.monotonic() + 20
        while len(ch.delivered) < 50:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await d.stop()

    asyncio.run(go())
    assert len(set(ch.delivered)) == len(ch.delivered) == 50
    publish(svc)  # stopped drivers are no longer told of new events (their loop is closed)
    snap = svc.delivery_stats()
    assert snap.counters["delivered"] == 50 and snap.counters["retries"] == 50
    assert snap.depths["untailed"] == 1 and snap.depths["leased"] == 0
    assert {"match", "record", "queue_wait", "lease", "delivery.email", "result"} <= set(
        snap.stages
    )


class Hang:
    """A receiver that never answers."""

    def __init__(self, kind: ActionKind) -> None:
        self.kind = kind
        self.started = 0

    async def deliver(self, batch: Sequence[Delivery]) -> list[Result]:
        self.started += len(batch)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        pass


def test_stop_past_grace_keeps_in_flight_leased_and_releases_the_rest(
    svc: SubscriptionService,
) -> None:
    subscribe(svc, ALICE, HOOK, EMAIL)
    publish(svc, 2)
    hang, mail = Hang("webhook"), Flaky("email", fails=0)
    settings = DriverSettings(action_workers=1, poll_s=0.01, lease_s=30.0)
    d = Drivers(svc, [hang, mail], settings, name="t")

    async def go() -> None:
        await d.start()
        while not hang.started:
            await asyncio.sleep(0.01)
        await d.stop(grace=0.2)

    asyncio.run(go())
    assert hang.started == 2 and mail.delivered == []
    states = {a.id: svc.ledger.state(key_of(a)) for a in svc.actions(OP, "", 10)}
    by_kind = {(s.kind, s.state) for s in states.values() if s is not None}
    # In the hung receiver's hands: leased until expiry. Never handed over: back in the queue.
    assert by_kind == {("webhook", "leased"), ("email", "pending")}
    assert svc.delivery_stats().counters["released"] == 2


def test_a_kinds_backlog_does_not_starve_the_others(svc: SubscriptionService) -> None:
    subscribe(svc, ALICE, EMAIL, EMAIL, EMAIL)
    subscribe(svc, BOB, HOOK)
    publish(svc, 4)  # 12 e-mails queued before 4 webhook posts
    d = drivers(svc, Flaky("email", fails=0))
    d.tail()
    now = time.time_ns() // 1000
    kinds = [x.state.kind for x in svc.ledger.lease(["email", "webhook"], 6, now, "w", 30.0)]
    assert sorted(kinds) == ["email"] * 3 + ["webhook"] * 3
    kinds = [x.state.kind for x in svc.ledger.lease(["email", "webhook"], 6, now, "w", 30.0)]
    assert sorted(kinds) == ["email"] * 5 + ["webhook"]  # the rest fills from any

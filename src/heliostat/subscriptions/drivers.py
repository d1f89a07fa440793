"""The delivery drivers: asyncio tasks in the server process over the durable ledger.

- event driver: tails newly recorded actions into the queue (lifecycle.Ledger.tail);
- action drivers (``action_workers`` of them): lease a batch of due actions, durably, then hand
  each kind's share to its channel and record every result;
- recovery driver: re-queues actions whose lease expired (a stalled or dead worker, in this
  process or another sharing the store);
- statistics: every stats_interval_s, this process's counts join the totals shared by every
  process serving the store (heliostat.subscriptions.stats);
- deletion driver: removes finished actions older than the retention, and dead letters older
  than theirs (longer: an operator may still replay them), their attempt logs first, in bounded
  transactions; a failed pass is counted and retried on the next. Each pass also posts this
  process's change-log position and prunes the subscription change log up to what every live
  process has applied (SubscriptionStore.prune_changes).

Only kinds with a channel are leased: actions of another kind wait, pending, until a server with
that channel runs. LMDB calls block (a durable commit is an fsync), so they run on a small
executor of their own. The event driver polls (``poll_s``) for new actions.
Stopping drains: no new leases, the batches in flight are delivered and recorded; whatever
is still leased after the grace stays leased until its lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from heliostat.subscriptions.channels.base import Channel, Delivery, Result
from heliostat.subscriptions.lifecycle import US, Leased, RetryPolicy
from heliostat.subscriptions.model import ActionKind, Subscription, redact_text
from heliostat.subscriptions.service import SubscriptionService, now_us

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DriverSettings:
    action_workers: int = 2
    batch: int = 64  # actions leased per transaction
    lease_s: float = 60.0  # a worker silent this long has stalled: its actions are re-queued
    poll_s: float = 0.02  # how often the event driver looks for new actions when idle
    recovery_interval_s: float = 5.0
    deletion_interval_s: float = 60.0
    retention_s: float = 7 * 86400.0  # finished actions (and their events) kept this long
    dead_letter_retention_s: float = 30 * 86400.0  # dead letters kept this long (0: for ever)
    deletion_batch: int = 500  # actions per deletion transaction
    stats_interval_s: float = 1.0  # how often this process's counts join the shared totals
    # Deletion passes hold LMDB's writer lock, which publishes and subscription writes wait for:
    # small passes with a pause between them while more waits (10^6 change-log entries pruned
    # 10,000 at a time back to back put the PublishEvents p99 at 160 ms at 1,000 events/s).
    change_log_batch: int = 2_000  # change-log entries pruned per transaction
    deletion_pause_s: float = 0.05
    # A process that has not posted its change-log position this long (a deletion pass posts
    # it) is taken for gone; if it comes back behind the pruned log, it rebuilds its index.
    reader_ttl_s: float = 600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class Drivers:
    def __init__(
        self,
        service: SubscriptionService,
        channels: Sequence[Channel],
        settings: DriverSettings,
        *,
        name: str | None = None,
    ) -> None:
        self.service = service
        self.ledger = service.ledger
        self.stats = service.stats
        self.settings = settings
        self.channels: dict[ActionKind, Channel] = {c.kind: c for c in channels}
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._executor = ThreadPoolExecutor(2, thread_name_prefix="delivery")
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._work = asyncio.Event()  # new actions were queued
        self._recorded = asyncio.Event()  # this process recorded events: tail now
        self._loop_ref: asyncio.AbstractEventLoop | None = None
        self._unhook: Callable[[], None] | None = None

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def start(self) -> None:
        s = self.settings
        self._loop_ref = loop = asyncio.get_running_loop()

        def recorded() -> None:
            loop.call_soon_threadsafe(self._recorded.set)

        # Events recorded here are tailed at once; those of other processes within poll_s.
        self._unhook = self.service.on_record(recorded)
        self._tasks = [
            asyncio.create_task(self._loop("event", self._tail, s.poll_s, self._recorded)),
            asyncio.create_task(self._loop("recovery", self.recover, s.recovery_interval_s)),
            asyncio.create_task(self._deletion_loop()),
            asyncio.create_task(self._loop("stats", self._flush_stats, s.stats_interval_s)),
        ]
        self._tasks += [
            asyncio.create_task(self._action_worker(f"{self.name}:{i}"))
            for i in range(s.action_workers)
        ]

    async def stop(self, grace: float = 10.0) -> None:
        """Stop leasing, let the batches in flight finish (up to grace seconds), then stop."""
        if self._unhook is not None:
            self._unhook()
            self._unhook = None
        self._stopping.set()
        self._work.set()
        self._recorded.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for c in self.channels.values():
            await c.close()
        try:
            await self._run(lambda: self.service.store.forget_reader(self.name))
        except Exception as e:  # its row expires after reader_ttl_s anyway
            print(f"heliostat: change-log reader: {e!r}", file=sys.stderr, flush=True)
        self._executor.shutdown(wait=True)

    async def _deletion_loop(self) -> None:
        s = self.settings
        await self._loop(
            "deletion", self.delete_finished, s.deletion_interval_s, pause=s.deletion_pause_s
        )

    async def _loop(
        self,
        what: str,
        step: Callable[[], bool],
        interval: float,
        wake: asyncio.Event | None = None,
        pause: float = 0.0,
    ) -> None:
        """Run step every interval (or when woken), again after ``pause`` while it says more
        is waiting."""
        wake = wake or self._stopping
        while not self._stopping.is_set():
            if wake is not self._stopping:
                wake.clear()
            try:
                again = await self._run(step)
            except Exception as e:  # the state is durable: the next pass retries
                self.stats.count("driver_errors")
                print(f"heliostat: {what} driver: {e!r}", file=sys.stderr, flush=True)
                again = False
            if again:  # more is waiting
                if pause:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), pause)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), interval)

    # -- steps (each one blocking call, run on the executor; public for tests) -----------------

    def _tail(self) -> bool:
        return self.tail() >= TAIL_BATCH

    def tail(self) -> int:
        """Queue the actions recorded since the last pass; returns how many were read."""
        t0 = time.perf_counter()
        n = self.ledger.tail(TAIL_BATCH, now_us())
        if n:
            self.stats.time("tail", time.perf_counter() - t0, n)
            self.stats.count("actions_queued", n)
            self._loop_wake()
        return n

    def _loop_wake(self) -> None:
        """Wake the action workers (called from the executor's threads)."""
        if self._loop_ref is not None:
            self._loop_ref.call_soon_threadsafe(self._work.set)

    def _flush_stats(self) -> bool:
        self.stats.flush()
        return False

    def recover(self) -> bool:
        n = self.ledger.requeue_expired(now_us(), 1000)
        if n:
            self.stats.count("requeued", n)
            self._loop_wake()
        return n >= 1000

    def delete_finished(self) -> bool:
        """One bounded deletion step: the change log up to what every live process has applied;
        then logs first, then the actions and emptied events; finished actions past the
        retention, then dead letters past theirs. Returns whether more wait."""
        s = self.settings
        ttl_us = int(max(s.reader_ttl_s, 3 * s.deletion_interval_s) * US)
        pruned, _ = self.service.prune_changes(self.name, ttl_us, s.change_log_batch)
        self.stats.count("changes_pruned", pruned)
        now = now_us()
        ledger = self.ledger
        done = ledger.finished_before(now - int(s.retention_s * US), s.deletion_batch)
        more = self._delete(done, ledger.delete_actions, "deleted_actions")
        if s.dead_letter_retention_s > 0:
            before = now - int(s.dead_letter_retention_s * US)
            dead = ledger.dead_before(before, s.deletion_batch)
            more |= self._delete(dead, ledger.delete_dead, "dead_letters_expired")
        return more or pruned >= s.change_log_batch

    def _delete(
        self, entries: list[bytes], remove: Callable[[list[bytes]], tuple[int, int]], counter: str
    ) -> bool:
        if not entries:
            return False
        try:
            self.stats.count("deleted_logs", self.ledger.delete_logs(entries))
            actions, events = remove(entries)
        except Exception:
            self.stats.count("deletion_failures")
            raise
        self.stats.count(counter, actions)
        self.stats.count("deleted_events", events)
        return len(entries) >= self.settings.deletion_batch

    # -- the action driver ----------------------------------------------------------------------

    async def _action_worker(self, worker: str) -> None:
        while not self._stopping.is_set():
            self._work.clear()
            try:
                n = await self.deliver_once(worker)
            except Exception as e:
                self.stats.count("driver_errors")
                print(f"heliostat: action driver: {e!r}", file=sys.stderr, flush=True)
                n = 0
            if n == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._work.wait(), self.settings.poll_s * 4)

    async def deliver_once(self, worker: str) -> int:
        """Lease one batch of due actions, deliver it kind by kind, record the results; returns
        how many were leased."""
        s = self.settings
        kinds = list(self.channels)
        t0 = time.perf_counter()
        leased = await self._run(
            lambda: self.ledger.lease(kinds, s.batch, now_us(), worker, s.lease_s)
        )
        if not leased:
            return 0
        t_lease = now_us()
        self.stats.time("lease", time.perf_counter() - t0, len(leased))
        self.stats.count("leased", len(leased))
        self.stats.each("queue_wait", [max(0, t_lease - x.queued_us) / US for x in leased])
        subs = await self._run(lambda: self._subscriptions(leased))
        keys = [x.state.key for x in leased]
        actions = await self._run(lambda: self.service.store.actions_at(keys))
        by_kind: dict[ActionKind, list[tuple[Leased, Delivery]]] = defaultdict(list)
        missing: list[tuple[Leased, Result, float]] = []  # removed meanwhile: nothing to do
        for x, a in zip(leased, actions, strict=True):
            if a is None:
                missing.append((x, Result("failed", "the action no longer exists"), 0.0))
                continue
            by_kind[x.state.kind].append((x, Delivery(a, x.attempt, subs.get(a.subscription_id))))
        if missing:
            await self._record(missing, worker)
        # Each kind's results are recorded as soon as its channel answers: a slow channel does
        # not hold back (or outlive the leases of) the others.
        todo = list(by_kind.items())
        try:
            while todo:
                kind, items = todo[0]
                t1 = time.perf_counter()
                try:
                    out = await self.channels[kind].deliver([d for _, d in items])
                    if len(out) != len(items):
                        raise RuntimeError(f"{kind} channel answered {len(out)} of {len(items)}")
                except Exception as e:  # a channel bug is a transient failure of its receiver
                    out = [Result("retry", f"channel error: {e!r}")] * len(items)
                todo.pop(0)
                took = time.perf_counter() - t1
                self.stats.time(f"delivery.{kind}", took, len(items))
                results = [(x, r, took) for (x, _), r in zip(items, out, strict=True)]
                await self._record(results, worker)
        except asyncio.CancelledError:
            # Stopped past the grace: give back what no channel has seen; what one is holding
            # stays leased until its lease expires (its outcome is unknown).
            unseen = [x for _, items in todo[1:] for x, _ in items]
            if unseen:
                self.stats.count("released", self.ledger.release(unseen, now_us()))
            raise
        return len(leased)

    async def _record(self, results: list[tuple[Leased, Result, float]], worker: str) -> None:
        t0 = time.perf_counter()
        retry = self.settings.retry
        recorded = await self._run(lambda: self.ledger.record(results, now_us(), retry, worker))
        self.stats.time("result", time.perf_counter() - t0, len(results))
        gone = []
        for (x, r, _), rec in zip(results, recorded, strict=True):
            if r.outcome in _COUNTED:
                self.stats.count(_COUNTED[r.outcome])
            if rec.dead:
                self.stats.count("dead_letters")
            if rec.gone:
                self.stats.count("disabled")
                gone.append((x, r))
        if gone:
            await self._run(lambda: self._disable(gone))

    def _subscriptions(self, leased: Sequence[Leased]) -> dict[int, Subscription]:
        out = {}
        for x in leased:
            sid = int.from_bytes(x.state.key[8:16], "big")
            if sid not in out and (sub := self.service.store.get(sid)) is not None:
                out[sid] = sub
        return out

    def _disable(self, gone: Sequence[tuple[Leased, Result]]) -> None:
        for x, r in gone:
            sid = int.from_bytes(x.state.key[8:16], "big")
            index = int.from_bytes(x.state.key[16:18], "big")
            reason = redact_text(f"receiver gone: {r.detail}")
            self.service.store.disable_action(sid, index, reason)


TAIL_BATCH = 1000
_COUNTED = {"delivered": "delivered", "retry": "retries", "failed": "failures"}

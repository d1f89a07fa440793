"""Live delivery of "watch" actions: a stream per watcher that reads the store from a cursor, in
action-key order, and then waits for more.

Streams read LMDB, never an in-memory queue, so a reconnect resumes from any cursor and a slow
watcher costs nothing but its position: each read is one page, and the next is read only once the
caller has taken the previous one (gRPC's write awaits the client's flow-control window).

Waking up: the service calls ``RecordSignal.notify`` after each recording transaction commits,
which wakes the streams of this process at once; a poll of the store's last event id every
POLL_S wakes them for events recorded by other processes serving the same store.

Retention: event ids are dense, so when the oldest event kept is above the position's event + 1,
events after the position were removed; rather than skip them silently, the stream refuses to
start, or ends if a stalled stream was overtaken (OutOfRange naming ``cursor``), and the watcher
starts again with ``from_oldest``. The check cannot see the rest of the position's own event
being removed: retention runs on an age far beyond a watcher's reconnect.

Watch actions are read through the store's ``actions_after`` (the owner's actions, or all for
the operator) and filtered here, so a stream reads its owner's other actions too; it keeps to the
store's contract and costs a few microseconds per action.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from heliostat.errors import InvalidArgument, OutOfRange, ResourceExhausted
from heliostat.subscriptions.model import MatchedAction, action_id
from heliostat.subscriptions.store import SubscriptionStore, action_key

POLL_S = 0.025  # how soon events recorded by another process reach this one's streams
PAGE = 256  # actions read per store transaction
PROGRESS_S = 1.0  # how often an idle stream's cursor moves on past others' events
# Streams stay open, and each holds one of the server's concurrent calls: beyond this many in one
# process, more are refused so that they cannot take every call from the other services.
MAX_STREAMS = 256
READ_THREADS = 2
_MAX_SUB = (1 << 64) - 1
_MAX_INDEX = (1 << 16) - 1
_ACTION_ID = re.compile(r"^[0-9a-f]{16}-[0-9a-f]{16}-[0-9a-f]{4}$")


class RecordSignal:
    """The last event id recorded, as known to this process, and coroutines waiting for it to
    pass a value. ``notify`` may be called from any thread; waiters may be on any event loop."""

    def __init__(self, last_recorded: Callable[[], int], *, poll_s: float = POLL_S) -> None:
        self._read = last_recorded
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._last = last_recorded()
        self._closed = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        # One poll task per event loop with waiters (None while it is being created).
        self._pollers: dict[asyncio.AbstractEventLoop, asyncio.Task[None] | None] = {}

    @property
    def last(self) -> int:
        return self._last

    @property
    def closed(self) -> bool:
        return self._closed

    def notify(self, event_id: int) -> None:
        """Events up to event_id are durable: wake the waiters below it."""
        with self._lock:
            if event_id <= self._last:
                return
            self._last = event_id
            waiters, self._waiters = self._waiters, []
        _wake(waiters)

    def close(self) -> None:
        """Wake every waiter for good; streams see ``closed`` and end."""
        with self._lock:
            self._closed = True
            waiters, self._waiters = self._waiters, []
        _wake(waiters)

    async def wait_beyond(self, event_id: int) -> None:
        """Return once an event above event_id is recorded (or the signal is closed)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._last > event_id or self._closed:
                return
            self._waiters.append((loop, fut))
            start_poller = loop not in self._pollers
            if start_poller:
                self._pollers[loop] = None
        if start_poller:
            task = loop.create_task(self._poll(loop))
            with self._lock:
                if loop in self._pollers:
                    self._pollers[loop] = task
        try:
            await fut
        finally:
            with self._lock:
                if (loop, fut) in self._waiters:
                    self._waiters.remove((loop, fut))

    async def _poll(self, loop: asyncio.AbstractEventLoop) -> None:
        """While this loop has waiters, read the store's last event id every poll_s: events
        recorded by other processes."""
        while True:
            await asyncio.sleep(self._poll_s)
            with self._lock:
                if self._closed or not any(w[0] is loop for w in self._waiters):
                    del self._pollers[loop]
                    return
            try:
                last = await loop.run_in_executor(None, self._read)
            except Exception:
                continue  # a store closing under us: the next pass sees closed
            self.notify(last)


def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
    for loop, fut in waiters:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there any more
            loop.call_soon_threadsafe(_resolve, fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


@dataclass(frozen=True, slots=True)
class WatchFilter:
    owner: str | None  # None: everyone's (operator)
    subscription_ids: frozenset[int] = frozenset()
    collection: str = ""

    def __call__(self, a: MatchedAction) -> bool:
        return (
            a.action.kind == "watch"
            and (not self.subscription_ids or a.subscription_id in self.subscription_ids)
            and (not self.collection or a.event.collection == self.collection)
        )


@dataclass(frozen=True, slots=True)
class Page:
    """Notifications in id order, and the position after them: the last one's id, or further
    when the stream read past actions not for this watcher (a cursor to resume from)."""

    actions: list[MatchedAction]
    cursor: str


class Watch:
    """One watcher's stream: a position in action-key order and a filter."""

    def __init__(self, hub: Notifications, start: bytes, start_id: str, keep: WatchFilter) -> None:
        self._hub = hub
        self._key = start
        self.start_id = start_id  # the cursor the stream starts after
        self._keep = keep
        self._open = True

    def close(self) -> None:
        """Give back the stream's place (idempotent; pages() does it when it ends)."""
        if self._open:
            self._open = False
            self._hub.release()

    def _read(self, seen: int) -> tuple[list[MatchedAction], bool]:
        """The next page's watch actions passing the filter, and whether more may follow at
        once; the position moves past every action read, kept or not."""
        store = self._hub.store
        # Checked before the read: events removed by then would be missing from it.
        _check_kept(_event_of(self._key), store.event_ids())
        got = store.actions_after(self._key, PAGE, self._keep.owner)
        if got:
            self._key = action_key(got[-1].id)
        more = len(got) == PAGE
        if not more:
            # Caught up: this read held every action of the events up to `seen`, so the
            # position passes them even when none was this watcher's (retention then removing
            # them is no loss to it).
            self._key = max(self._key, action_key(_end_of(seen)))
        return [a for a in got if self._keep(a)], more

    async def pages(self) -> AsyncIterator[Page]:
        """Pages of notifications for ever (until the hub closes); a page without any, only to
        move the cursor on, at most every PROGRESS_S."""
        loop = asyncio.get_running_loop()
        signal = self._hub.signal
        sent, sent_at = self.start_id, loop.time()
        try:
            while not signal.closed and self._open:
                # Every event up to `seen` was committed before this read starts, so the read
                # holds them all; any event it misses is above `seen` and wakes the wait below.
                seen = signal.last
                actions, more = await loop.run_in_executor(self._hub.executor, self._read, seen)
                cursor = _id_of(self._key)
                if actions or (cursor != sent and loop.time() - sent_at >= PROGRESS_S):
                    yield Page(actions, cursor)
                    sent, sent_at = cursor, loop.time()
                if not more:
                    await signal.wait_beyond(seen)
        finally:
            self.close()


class Notifications:
    """The streams of one process over one store."""

    def __init__(
        self, store: SubscriptionStore, *, poll_s: float = POLL_S, max_streams: int = MAX_STREAMS
    ) -> None:
        self.store = store
        self.signal = RecordSignal(lambda: store.event_ids()[1], poll_s=poll_s)
        self.executor = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="watch")
        self.max_streams = max_streams
        self._lock = threading.Lock()
        self.streams = 0  # open now

    def release(self) -> None:
        with self._lock:
            self.streams -= 1

    def end_streams(self) -> None:
        """End every stream once it has handed out its current page (server shutdown)."""
        self.signal.close()

    def close(self) -> None:
        """End the streams and wait for reads in progress; call before closing the store."""
        self.signal.close()
        self.executor.shutdown(wait=True, cancel_futures=True)

    def open(self, cursor: str, from_oldest: bool, keep: WatchFilter) -> Watch:
        """A stream after ``cursor`` (an action id), from the oldest action kept, or (neither)
        after the last event recorded now."""
        watch = self._open(cursor, from_oldest, keep)
        with self._lock:
            if self.streams >= self.max_streams:
                raise ResourceExhausted(f"{self.max_streams} streams are open; try again later")
            self.streams += 1
        return watch

    def _open(self, cursor: str, from_oldest: bool, keep: WatchFilter) -> Watch:
        oldest, last = self.store.event_ids()
        if from_oldest and cursor:
            raise InvalidArgument("give a cursor or from_oldest, not both", field="from_oldest")
        if from_oldest or not cursor:
            # After every action of the event before the first one wanted: a valid cursor.
            start = _end_of(oldest - 1 if from_oldest else last)
            return Watch(self, action_key(start), start, keep)
        if not _ACTION_ID.match(cursor):
            raise InvalidArgument("not an action id", field="cursor")
        key = action_key(cursor)
        event = _event_of(key)
        if event > last:
            raise InvalidArgument(f"names event {event}, not recorded yet", field="cursor")
        _check_kept(event, (oldest, last))
        return Watch(self, key, cursor, keep)


def _end_of(event: int) -> str:
    """The position after every action of an event."""
    return action_id(event, _MAX_SUB, _MAX_INDEX)


def _id_of(key: bytes) -> str:
    return action_id(*struct.unpack(">QQH", key))


def _event_of(key: bytes) -> int:
    return int(struct.unpack_from(">Q", key)[0])


def _check_kept(event: int, ids: tuple[int, int]) -> None:
    """OutOfRange when events after ``event`` were removed (ids: oldest kept, last recorded)."""
    oldest = ids[0]
    if event + 1 < oldest:
        raise OutOfRange(
            f"events {event + 1}-{oldest - 1} after it were removed by retention; "
            "start again from_oldest",
            field="cursor",
        )

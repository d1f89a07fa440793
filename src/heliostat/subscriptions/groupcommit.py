"""Group commit: requests queued from many threads are written together by one writer thread.

A synced LMDB commit costs about a millisecond whatever it holds, so one commit per call caps
subscription writes near 1,000/s. Here callers queue a request and get a Future; the writer takes
everything queued since its last commit, hands the batch to ``apply`` (one transaction) and then
answers every caller, so each answer still comes after its write is durable. ``apply`` returns a
result or an exception per request: one bad request fails alone, not its neighbours.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

R = TypeVar("R")  # a request
T = TypeVar("T")  # its result

MAX_BATCH = 4096
LINGER_S = 0.0002  # against a synced commit's ~1-5 ms


class GroupCommit(Generic[R, T]):
    def __init__(
        self, apply: Callable[[Sequence[R]], list[T | BaseException]], *, name: str
    ) -> None:
        self._apply = apply
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        # Each entry: requests queued together and what answers them (in order).
        self._queue: list[tuple[Sequence[R], Callable[[list[T | BaseException]], None]]] = []
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, request: R) -> Future[T]:
        fut: Future[T] = Future()

        def answer(results: list[T | BaseException]) -> None:
            (res,) = results
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                fut.set_result(res)

        self._put([request], answer)
        return fut

    def submit_many(self, requests: Sequence[R]) -> Future[list[T | BaseException]]:
        """Queue requests together, in order, for the same commit: one Future for all their
        results, each a result or that request's exception (a bulk writer's way: no Future, lock
        or wake-up per request)."""
        fut: Future[list[T | BaseException]] = Future()
        if requests:
            self._put(requests, fut.set_result)
        else:
            fut.set_result([])
        return fut

    def _put(
        self, requests: Sequence[R], answer: Callable[[list[T | BaseException]], None]
    ) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self._name} is closed")
            if self._thread is None:  # started on first use: most processes never write
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._queue.append((requests, answer))
            self._cond.notify()

    def close(self) -> None:
        """Write what is queued, then stop the writer."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
            # Callers answered by the last commit are sending their next requests: a moment's
            # wait lets them join this batch rather than the one after (one commit, not two).
            time.sleep(LINGER_S)
            with self._cond:
                # Whole entries, up to MAX_BATCH requests (at least one entry).
                taken = size = 0
                for reqs, _ in self._queue:
                    if taken and size + len(reqs) > MAX_BATCH:
                        break
                    taken += 1
                    size += len(reqs)
                batch, self._queue = self._queue[:taken], self._queue[taken:]
            requests = [r for reqs, _ in batch for r in reqs]
            try:
                results = self._apply(requests)
            except BaseException as e:  # the transaction failed: every request in it did
                results = [e] * len(requests)
            at = 0
            for reqs, answer in batch:
                answer(results[at : at + len(reqs)])
                at += len(reqs)

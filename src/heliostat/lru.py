"""A thread-safe least-recently-used cache bounded by the total size of its values."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    size: int = 0
    capacity: int = 0


class SizedLRU(Generic[K, V]):
    """Values are evicted oldest-first once the sum of ``sizeof(value)`` exceeds ``capacity``.

    A value larger than the whole capacity is not cached at all.
    """

    def __init__(self, capacity: int, sizeof: Callable[[V], int]) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._sizeof = sizeof
        self._size = 0
        self._stats = CacheStats(capacity=capacity)
        self.capacity = capacity

    def get(self, key: K) -> V | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                self._stats.misses += 1
                return None
            self._data.move_to_end(key)
            self._stats.hits += 1
            return item[0]

    def put(self, key: K, value: V) -> None:
        size = self._sizeof(value)
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._size -= old[1]
            if size > self.capacity:
                return
            self._data[key] = (value, size)
            self._size += size
            while self._size > self.capacity:
                _, (_, s) = self._data.popitem(last=False)
                self._size -= s
                self._stats.evictions += 1

    def discard(self, predicate: Callable[[K], bool]) -> int:
        """Drop every entry whose key matches; returns how many were dropped."""
        with self._lock:
            doomed = [k for k in self._data if predicate(k)]
            for k in doomed:
                self._size -= self._data.pop(k)[1]
            return len(doomed)

    def stats(self) -> CacheStats:
        with self._lock:
            s = self._stats
            return CacheStats(
                s.hits, s.misses, s.evictions, len(self._data), self._size, self.capacity
            )

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

"""Running statistics of the subscription pipeline, safe to share across threads, and summed over
every process serving one store.

Stages: ``match`` and ``record`` (per event, timed by the service), ``tail`` (recorded action
into the queue), ``queue_wait`` (due to leased), ``lease`` and ``result`` (the ledger's
transactions) and ``delivery.<kind>`` (the channel's time), all per action.

Counting stays in memory (a lock and an add: nothing more on the hot path). ``flush`` adds what a
process counted since its last flush to the store's totals (``pipeline_stats``: one JSON row) in
one write transaction; the delivery drivers flush every ``stats_interval_s`` and the service on
close. A snapshot is those totals (every process's flushed counts, exited ones' included) plus
this process's unflushed ones, so behind SO_REUSEPORT every process answers the same, but for the
last interval of the others. A kill -9 loses at most that process's last interval of counts.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from heliostat.subscriptions.store import SubscriptionStore

COUNTERS = (
    "events", "actions_queued", "leased", "delivered", "retries", "failures", "dead_letters",
    "disabled", "replayed", "requeued", "released", "deleted_actions", "deleted_events",
    "deleted_logs", "deletion_failures", "driver_errors", "dead_letters_expired",
    "dead_letters_purged", "changes_pruned", "index_rebuilds",
)  # fmt: skip
_TOTALS = b"totals"
Txn = Any
Stages = dict[str, list[float]]  # stage → [count, total s, max s]


@dataclass(frozen=True, slots=True)
class StageTiming:
    count: int
    mean_s: float
    max_s: float


@dataclass(frozen=True, slots=True)
class PipelineCounts:
    counters: Mapping[str, int]
    stages: Mapping[str, StageTiming]
    depths: Mapping[str, int]  # queue depths and what is left, read from the store


def _merge(counts: dict[str, int], stages: Stages, more: dict[str, int], more_st: Stages) -> None:
    for k, n in more.items():
        counts[k] = counts.get(k, 0) + n
    for s, (items, total, mx) in more_st.items():
        t = stages.setdefault(s, [0, 0.0, 0.0])
        t[0] += items
        t[1] += total
        t[2] = max(t[2], mx)


class StatsLog:
    """The totals flushed by every process, in the store's LMDB environment."""

    def __init__(self, store: SubscriptionStore) -> None:
        self._db = store.lmdb
        (self._stats,) = store.open_dbs([b"pipeline_stats"])

    def add(self, counts: dict[str, int], stages: Stages) -> None:
        def write(txn: Txn) -> None:
            total_counts, total_stages = self._read(txn)
            _merge(total_counts, total_stages, counts, stages)
            row = {"counters": total_counts, "stages": total_stages}
            txn.put(_TOTALS, json.dumps(row, separators=(",", ":")).encode(), db=self._stats)

        self._db.write(write)

    def totals(self) -> tuple[dict[str, int], Stages]:
        return self._db.read(self._read)

    def _read(self, txn: Txn) -> tuple[dict[str, int], Stages]:
        raw = txn.get(_TOTALS, db=self._stats)
        if raw is None:
            return {}, {}
        d = json.loads(raw)
        return d["counters"], d["stages"]


class PipelineStats:
    def __init__(self, log: StatsLog | None = None) -> None:
        self._lock = threading.Lock()  # guards the unflushed counts
        self._flushing = threading.Lock()  # a flush and a snapshot never interleave
        self._log = log
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._stages: Stages = {}

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def time(self, stage: str, seconds: float, n: int = 1) -> None:
        """n items took seconds in all (their mean counts toward the max)."""
        if n < 1:
            return
        with self._lock:
            t = self._stages.setdefault(stage, [0, 0.0, 0.0])
            t[0] += n
            t[1] += seconds
            t[2] = max(t[2], seconds / n)

    def each(self, stage: str, seconds: list[float]) -> None:
        """One item per value."""
        with self._lock:
            t = self._stages.setdefault(stage, [0, 0.0, 0.0])
            for s in seconds:
                t[0] += 1
                t[1] += s
                t[2] = max(t[2], s)

    def flush(self) -> bool:
        """Add the counts since the last flush to the store's totals (one durable write; none
        when nothing was counted); returns whether there was anything."""
        if self._log is None:
            return False
        with self._flushing:
            with self._lock:
                counts = {k: n for k, n in self._counts.items() if n}
                stages, self._stages = self._stages, {}
                self._counts = dict.fromkeys(COUNTERS, 0)
            if not counts and not stages:
                return False
            try:
                self._log.add(counts, stages)
            except BaseException:
                with self._lock:  # not written: counted again with the next flush
                    _merge(self._counts, self._stages, counts, stages)
                raise
            return True

    def snapshot(self, depths: Mapping[str, int]) -> PipelineCounts:
        """Every process's flushed totals plus this process's counts since."""
        with self._flushing:
            counts, stages = self._log.totals() if self._log is not None else ({}, {})
            with self._lock:
                _merge(counts, stages, self._counts, self._stages)
        return PipelineCounts(
            {k: int(counts.get(k, 0)) for k in COUNTERS},
            {
                s: StageTiming(int(n), total / n if n else 0.0, mx)
                for s, (n, total, mx) in sorted(stages.items())
            },
            dict(depths),
        )

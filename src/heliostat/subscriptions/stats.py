"""Running statistics of the subscription pipeline, per process, safe to share across threads.

Stages: ``match`` and ``record`` (per event, timed by the service), ``tail`` (recorded action
into the queue), ``queue_wait`` (due to leased), ``lease`` and ``result`` (the ledger's
transactions) and ``delivery.<kind>`` (the channel's time), all per action.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

COUNTERS = (
    "events", "actions_queued", "leased", "delivered", "retries", "failures", "dead_letters",
    "disabled", "replayed", "requeued", "released", "deleted_actions", "deleted_events",
    "deleted_logs", "deletion_failures", "driver_errors", "dead_letters_expired",
    "dead_letters_purged", "changes_pruned", "index_rebuilds",
)  # fmt: skip


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


class PipelineStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._stages: dict[str, list[float]] = {}  # count, total s, max s

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

    def snapshot(self, depths: Mapping[str, int]) -> PipelineCounts:
        with self._lock:
            stages = {
                s: StageTiming(int(n), total / n if n else 0.0, mx)
                for s, (n, total, mx) in sorted(self._stages.items())
            }
            return PipelineCounts(dict(self._counts), stages, dict(depths))

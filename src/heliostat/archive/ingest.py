"""Index Helioviewer JP2 files into the catalog.

Files are read header-first (a few kilobytes each), grouped into batches and written one
transaction per batch; a batch is reported only after its commit, so whatever was reported as
indexed survives a crash. Re-ingesting is idempotent: files whose size and modification time are
unchanged are skipped without reading them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from heliostat.archive.header import HeaderError, read_record
from heliostat.catalog.records import ImageRecord
from heliostat.catalog.store import Catalog


@dataclass
class IngestReport:
    indexed: int = 0  # inserted or updated
    unchanged: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    records: list[ImageRecord] = field(default_factory=list)  # what was inserted or updated

    @property
    def seen(self) -> int:
        return self.indexed + self.unchanged + len(self.rejected)


Stage = Literal["wait", "convert", "move", "index"]
STAGES: tuple[Stage, ...] = ("wait", "convert", "move", "index")


@dataclass(frozen=True, slots=True)
class StageTiming:
    files: int
    mean_s: float
    max_s: float


@dataclass(frozen=True, slots=True)
class IngestCounts:
    seen: int
    converted: int
    indexed: int  # inserted or updated
    rejected: int
    deleted: int
    stages: dict[Stage, StageTiming]


class IngestStats:
    """Running totals of the ingest pipeline (watcher and ingest()), safe to share across threads.

    A stage timed for a batch counts as that many files at the batch's mean, so its max is the
    worst per-file mean of a batch.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(("seen", "converted", "indexed", "rejected", "deleted"), 0)
        self._stage = {s: [0, 0.0, 0.0] for s in STAGES}  # files, total s, max s

    def count(
        self, *, seen: int = 0, converted: int = 0, indexed: int = 0, rejected: int = 0,
        deleted: int = 0,
    ) -> None:  # fmt: skip
        with self._lock:
            c = self._counts
            c["seen"] += seen
            c["converted"] += converted
            c["indexed"] += indexed
            c["rejected"] += rejected
            c["deleted"] += deleted

    def time(self, stage: Stage, seconds: float, files: int = 1) -> None:
        if files < 1:
            return
        with self._lock:
            t = self._stage[stage]
            t[0] += files
            t[1] += seconds
            t[2] = max(t[2], seconds / files)

    def snapshot(self) -> IngestCounts:
        with self._lock:
            stages = {
                s: StageTiming(int(n), total / n if n else 0.0, mx)
                for s, (n, total, mx) in self._stage.items()
            }
            return IngestCounts(**self._counts, stages=stages)


def iter_jp2(paths: Iterable[Path]) -> Iterator[Path]:
    """Every .jp2 file named or found (recursively, in sorted order) under the given paths."""
    for p in paths:
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    if name.lower().endswith(".jp2") and not name.startswith("."):
                        yield Path(root) / name
        else:
            yield p


def relative_path(archive_root: Path, path: Path) -> str:
    """Path relative to the archive root, '/'-separated; ValueError when outside the archive."""
    try:
        rel = path.resolve().relative_to(archive_root.resolve())
    except ValueError:
        raise ValueError(f"{path} is outside the archive {archive_root}") from None
    return rel.as_posix()


def ingest(
    catalog: Catalog,
    archive_root: Path,
    paths: Iterable[Path],
    *,
    batch_size: int = 1000,
    on_batch: Callable[[IngestReport], None] | None = None,
    keep_records: bool = False,
    stats: IngestStats | None = None,
) -> IngestReport:
    """Index files and folders (which must lie inside archive_root) into the catalog.

    ``on_batch`` is called after each committed batch with the running report. Missing paths and
    unreadable or inconsistent files are rejected with a reason; they never reach the catalog.
    ``stats`` counts the files seen, indexed and rejected, and times the batches' "index" stage
    (header reads and the commit).
    """
    report = IngestReport()
    batch: list[ImageRecord] = []
    batch_s = 0.0  # header reads of the current batch
    last_reported = -1  # report.seen at the last on_batch call

    def flush() -> None:
        nonlocal batch_s, last_reported
        if not batch:
            return
        t0 = time.perf_counter()
        indexed = 0
        for outcome in catalog.put_images(batch):
            if outcome.kind == "unchanged":
                report.unchanged += 1
            else:
                indexed += 1
                if keep_records:
                    report.records.append(outcome.record)
        report.indexed += indexed
        if stats is not None:
            stats.count(indexed=indexed)
            stats.time("index", batch_s + time.perf_counter() - t0, len(batch))
        batch.clear()
        batch_s = 0.0
        if on_batch is not None:
            on_batch(report)
            last_reported = report.seen

    def reject(name: str, reason: str) -> None:
        report.rejected.append((name, reason))
        if stats is not None:
            stats.count(rejected=1)

    for path in iter_jp2(paths):
        name = str(path)
        if stats is not None:
            stats.count(seen=1)
        try:
            rel = relative_path(archive_root, path)
            st = path.stat()
        except ValueError as e:
            reject(name, str(e))
            continue
        except OSError as e:
            reject(name, f"cannot read the file: {e.strerror or e}")
            continue
        known = catalog.get_by_path(rel)
        if known is not None and (known.file_size, known.file_mtime_ns) == (
            st.st_size,
            st.st_mtime_ns,
        ):
            report.unchanged += 1
            continue
        t0 = time.perf_counter()
        try:
            batch.append(read_record(path, rel))
        except (HeaderError, LookupError) as e:
            reject(name, str(e))
            continue
        finally:
            batch_s += time.perf_counter() - t0
        if len(batch) >= batch_size:
            flush()
    flush()
    # Files skipped as unchanged or rejected after the last commit still get a final report.
    if on_batch is not None and report.seen != last_reported:
        on_batch(report)
    return report

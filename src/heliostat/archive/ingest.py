"""Index Helioviewer JP2 files into the catalog.

Files are read header-first (a few kilobytes each), grouped into batches and written one
transaction per batch; a batch is reported only after its commit, so whatever was reported as
indexed survives a crash. Re-ingesting is idempotent: files whose size and modification time are
unchanged are skipped without reading them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

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
) -> IngestReport:
    """Index files and folders (which must lie inside archive_root) into the catalog.

    ``on_batch`` is called after each committed batch with the running report. Missing paths and
    unreadable or inconsistent files are rejected with a reason; they never reach the catalog.
    """
    report = IngestReport()
    batch: list[ImageRecord] = []

    def flush() -> None:
        if not batch:
            return
        for outcome in catalog.put_images(batch):
            if outcome.kind == "unchanged":
                report.unchanged += 1
            else:
                report.indexed += 1
                if keep_records:
                    report.records.append(outcome.record)
        batch.clear()
        if on_batch is not None:
            on_batch(report)

    for path in iter_jp2(paths):
        name = str(path)
        try:
            rel = relative_path(archive_root, path)
            st = path.stat()
        except ValueError as e:
            report.rejected.append((name, str(e)))
            continue
        except OSError as e:
            report.rejected.append((name, f"cannot read the file: {e.strerror or e}"))
            continue
        known = catalog.get_by_path(rel)
        if known is not None and (known.file_size, known.file_mtime_ns) == (
            st.st_size,
            st.st_mtime_ns,
        ):
            report.unchanged += 1
            continue
        try:
            batch.append(read_record(path, rel))
        except (HeaderError, LookupError) as e:
            report.rejected.append((name, str(e)))
            continue
        if len(batch) >= batch_size:
            flush()
    flush()
    if on_batch is not None and report.seen and not batch:
        on_batch(report)
    return report

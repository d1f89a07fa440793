"""Ingest: idempotence, updates, rejections, and durability of what was reported under kill -9."""

from __future__ import annotations

import os
from pathlib import Path

from heliostat.archive.ingest import ingest
from heliostat.catalog.store import Catalog

from .conftest import SAMPLES, ingest_then_kill, many_links, place_samples


def test_ingest_archive_idempotent_and_updates(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    files = place_samples(root)
    with Catalog(tmp_path / "cat") as cat:
        r = ingest(cat, root, [root])
        assert (r.indexed, r.unchanged, r.rejected) == (len(SAMPLES), 0, [])
        assert cat.total() == len(SAMPLES)
        again = ingest(cat, root, [root])
        assert (again.indexed, again.unchanged) == (0, len(SAMPLES))
        # A replaced file (new mtime) is re-read and keeps its id.
        target = files[0]
        rel = target.relative_to(root).as_posix()
        before = cat.get_by_path(rel)
        assert before is not None
        os.utime(target, ns=(before.file_mtime_ns + 10**9, before.file_mtime_ns + 10**9))
        upd = ingest(cat, root, [target], keep_records=True)
        assert upd.indexed == 1 and upd.records[0].id == before.id
        assert cat.total() == len(SAMPLES)


def test_rejections_change_nothing(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    root.mkdir()
    (root / "junk.jp2").write_bytes(b"\x00" * 100)
    outside = tmp_path / "elsewhere.jp2"
    outside.write_bytes(SAMPLES[0].read_bytes())
    with Catalog(tmp_path / "cat") as cat:
        r = ingest(cat, root, [root, outside, root / "missing.jp2"])
        reasons = dict(r.rejected)
        assert r.indexed == 0 and cat.total() == 0
        assert "not a JP2 file" in reasons[str(root / "junk.jp2")]
        assert "outside the archive" in reasons[str(outside)]
        assert "cannot read" in reasons[str(root / "missing.jp2")]


def test_reported_batches_survive_kill_9(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    many_links(root, place_samples(root), 400)
    reported = ingest_then_kill(root, tmp_path / "cat", batch_size=10, kill_after=50)
    assert reported >= 50
    with Catalog(tmp_path / "cat") as cat:
        assert cat.total() >= reported


def test_progress_reports_each_commit_once_and_the_final_count(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    place_samples(root)
    with Catalog(tmp_path / "cat") as cat:
        seen: list[int] = []
        ingest(cat, root, [root], batch_size=5, on_batch=lambda r: seen.append(r.seen))
        assert seen == [5, 10, len(SAMPLES)]
        seen.clear()
        ingest(cat, root, [root], batch_size=5, on_batch=lambda r: seen.append(r.seen))
        assert seen == [len(SAMPLES)]  # nothing committed: one final report

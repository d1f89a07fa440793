"""Ingest: idempotence, updates, rejections, and durability of what was reported under kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from heliostat.archive.ingest import ingest
from heliostat.catalog.store import Catalog

from .conftest import SAMPLES, place_samples


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
    base = place_samples(root)
    for i in range(400):  # many distinct paths, cheap to make: hard links in the same folders
        src = base[i % len(base)]
        os.link(src, src.with_name(f"copy{i:04d}_{src.name}"))
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from heliostat.archive.ingest import ingest
        from heliostat.catalog.store import Catalog
        cat = Catalog(Path({str(tmp_path / "cat")!r}))
        def report(r):
            print("indexed", r.indexed, flush=True)
        ingest(cat, Path({str(root)!r}), [Path({str(root)!r})], batch_size=10, on_batch=report)
        print("done", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    reported = 0
    for line in proc.stdout:
        if line.startswith("indexed"):
            reported = int(line.split()[1])
            if reported >= 50:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert reported >= 50
    with Catalog(tmp_path / "cat") as cat:
        assert cat.total() >= reported

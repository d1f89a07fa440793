"""Watch folder: latency from a JP2 landing in the incoming folder to its catalog entry.

A watcher thread (the server's settings: 200 ms polls of the incoming folder, 5 s archive
rescans) runs in this process; each file is written under a hidden name and renamed into the
incoming folder (the way uploaders should land files), and the clock runs from the rename until
the catalog holds the file at its archive path. A second series writes the files in place (no
rename), so they are taken only once two polls agree. Baseline in the same run: a direct
in-process ingest() of the same files, already in the archive, into a fresh catalog.

Files are one real AIA 171 sample (1 MB, 4096²) with distinct observation times patched into its
XML header, so every drop is a new image.

    .venv/bin/python bench/bench_watch.py [--files 30]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import AIA_171  # noqa: E402

from bench.harness import Report, percentiles  # noqa: E402
from heliostat.archive import naming, sources  # noqa: E402
from heliostat.archive.header import read_record  # noqa: E402
from heliostat.archive.ingest import IngestStats, ingest  # noqa: E402
from heliostat.archive.watch import Watcher  # noqa: E402
from heliostat.catalog.store import Catalog  # noqa: E402

SAMPLE = AIA_171[0]
SAMPLE_TIME = b"2014-02-03T02:08:47.34"
TARGET_P50_S = 1.0


def frame(series: int, i: int) -> bytes:
    """The sample with its observation time moved to day `series`, minute i (same length)."""
    new = f"2014-02-{10 + series:02d}T{10 + i // 60:02d}:{i % 60:02d}:47.34".encode()
    assert len(new) == len(SAMPLE_TIME)
    return SAMPLE.read_bytes().replace(SAMPLE_TIME, new)


def archive_rel(path: Path) -> str:
    rec = read_record(path, path.name)
    return naming.archive_path(sources.by_id(rec.source_id), rec.time_us)


def watch_latencies(
    tmp: Path, catalog: Catalog, incoming: Path, series: int, n: int, rename: bool
) -> list[float]:
    out = []
    phase = random.Random(series)
    staging = tmp / f"staging{series}"
    staging.mkdir()
    for i in range(n):
        data = frame(series, i)
        probe = staging / f"{i}.jp2"
        probe.write_bytes(data)
        rel = archive_rel(probe)
        time.sleep(phase.uniform(0.0, 0.2))  # land at any phase of the 200 ms poll
        if rename:
            tmp_name = incoming / f".drop{i}.part"
            tmp_name.write_bytes(data)
            t0 = time.perf_counter()
            tmp_name.rename(incoming / f"drop{series}_{i}.jp2")
        else:
            t0 = time.perf_counter()
            (incoming / f"drop{series}_{i}.jp2").write_bytes(data)
        while catalog.get_by_path(rel) is None:
            time.sleep(0.001)
        out.append(time.perf_counter() - t0)
    return out


def direct_ingest(tmp: Path, n: int) -> list[float]:
    root = tmp / "direct"
    paths = []
    for i in range(n):
        staged = tmp / "direct-staging.jp2"
        staged.write_bytes(frame(0, i))
        dest = root / archive_rel(staged)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged.rename(dest)
        paths.append(dest)
    out = []
    with Catalog(tmp / "direct-cat") as cat:
        for p in paths:
            t0 = time.perf_counter()
            r = ingest(cat, root, [p])
            out.append(time.perf_counter() - t0)
            assert r.indexed == 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=30)
    args = ap.parse_args()
    report = Report("watch", __doc__.split("\n\n")[0])
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        baseline = percentiles(direct_ingest(tmp, args.files))
        root = tmp / "archive"
        root.mkdir()
        incoming = tmp / "incoming"
        incoming.mkdir()
        with Catalog(tmp / "cat") as catalog:
            stats = IngestStats()
            watcher = Watcher(catalog, root, incoming, stats=stats)
            stop = threading.Event()
            thread = threading.Thread(target=watcher.run, args=(stop,))
            thread.start()
            try:
                renamed = percentiles(watch_latencies(tmp, catalog, incoming, 1, args.files, True))
                in_place = percentiles(
                    watch_latencies(tmp, catalog, incoming, 2, args.files, False)
                )
            finally:
                stop.set()
                thread.join()
            counts = stats.snapshot()
        assert counts.indexed == 2 * args.files and counts.rejected == 0
        stages = {
            s: {"files": t.files, "mean_ms": t.mean_s * 1e3, "max_ms": t.max_s * 1e3}
            for s, t in counts.stages.items()
        }
        report.add(
            "rename into incoming -> catalogued, p50",
            renamed["p50_ms"],
            "ms",
            baseline_name="direct ingest() p50",
            baseline_value=baseline["p50_ms"],
            target=f"<= {TARGET_P50_S * 1e3:.0f} ms",
            met=renamed["p50_ms"] <= TARGET_P50_S * 1e3,
            latency=renamed,
            baseline=baseline,
            stages=stages,
        )
        report.add(
            "rename into incoming -> catalogued, p90",
            renamed["p90_ms"],
            "ms",
            baseline_name="direct ingest() p90",
            baseline_value=baseline["p90_ms"],
        )
        report.add(
            "written in place -> catalogued, p50",
            in_place["p50_ms"],
            "ms",
            baseline_name="direct ingest() p50",
            baseline_value=baseline["p50_ms"],
            target=f"<= {TARGET_P50_S * 1e3:.0f} ms",
            met=in_place["p50_ms"] <= TARGET_P50_S * 1e3,
            latency=in_place,
        )
        report.add(
            "written in place -> catalogued, p90",
            in_place["p90_ms"],
            "ms",
            baseline_name="direct ingest() p90",
            baseline_value=baseline["p90_ms"],
        )
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()

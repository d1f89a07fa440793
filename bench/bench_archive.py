"""Archive: header ingest rate, and closest-image latency over gRPC with 10⁶ images catalogued.

Baselines in the same run: reading the same files' first 64 KiB (the I/O floor of a header
ingest) and a no-op RPC (health Check) on the same server and channel.

    .venv/bin/python bench/bench_archive.py [--files 3000] [--images 1000000]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import SAMPLES, start_server, stop_server  # noqa: E402
from grpc_health.v1 import health_pb2  # noqa: E402

from bench.harness import Report, percentiles  # noqa: E402
from heliostat.archive import naming, sources, times  # noqa: E402
from heliostat.archive.header import read_record  # noqa: E402
from heliostat.archive.ingest import ingest  # noqa: E402
from heliostat.catalog.records import ImageRecord  # noqa: E402
from heliostat.catalog.store import Catalog  # noqa: E402
from heliostat.client import HeliostatClient  # noqa: E402


def ingest_rate(report: Report, tmp: Path, n_files: int) -> None:
    root = tmp / "ingest"
    for i in range(n_files):
        f = SAMPLES[i % len(SAMPLES)]
        rec = read_record(f, f.name)
        src = sources.by_id(rec.source_id)
        dest = root / naming.folder(src, rec.time_us) / f"{i:06d}_{f.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.hardlink_to(f) if i >= len(SAMPLES) else shutil.copy2(f, dest)
    files = sorted(root.rglob("*.jp2"))
    t0 = time.perf_counter()
    for p in files:
        with open(p, "rb") as fh:
            fh.read(65536)
    floor = len(files) / (time.perf_counter() - t0)
    (tmp / "cat").mkdir()
    with Catalog(tmp / "cat") as cat:
        t0 = time.perf_counter()
        r = ingest(cat, root, [root])
        rate = len(files) / (time.perf_counter() - t0)
        assert r.indexed == len(files), (r.indexed, r.rejected[:3])
        t0 = time.perf_counter()
        again = ingest(cat, root, [root])
        rerun = len(files) / (time.perf_counter() - t0)
        assert again.unchanged == len(files)
    report.add("header ingest", rate, "files/s", baseline_name="read first 64 KiB of each file",
               baseline_value=floor, target=">= 1000 files/s", met=rate >= 1000,
               files=len(files), reingest_files_per_s=rerun)  # fmt: skip


def closest_over_grpc(report: Report, tmp: Path, n_images: int) -> None:
    root = tmp / "big"
    root.mkdir()
    cat_dir = root / ".heliostat" / "catalog"
    cat_dir.mkdir(parents=True)
    start = times.parse("2010-06-01T00:00:00Z")
    ids = [8, 9, 10, 11, 12, 13, 14, 18, 19, 32]
    per = n_images // len(ids)
    t0 = time.perf_counter()
    with Catalog(cat_dir, map_size=4 << 30) as cat:
        for sid in ids:
            src = sources.by_id(sid)
            for b in range(0, per, 20000):
                batch = []
                for k in range(b, min(per, b + 20000)):
                    t = start + k * 36_000_000 + sid * 1000
                    batch.append(ImageRecord(0, sid, t, naming.archive_path(src, t), 4096, 4096,
                                             0.6, 0.6, 2048.5, 2048.5, 0.0, 0.0, 0.0, 1.47e11,
                                             1600.0, 1, 1_000_000, 1))  # fmt: skip
                cat.put_images(batch)
    build_s = time.perf_counter() - t0
    span = per * 36_000_000
    srv = start_server(root, ingest=False)
    try:
        with HeliostatClient(srv.target) as c:
            rng = random.Random(7)
            lat, noop = [], []
            for i in range(4000):
                when = times.to_datetime(start + rng.randrange(span))
                sid = ids[i % len(ids)]
                t0 = time.perf_counter()
                c.closest_image(sid, when)
                lat.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                c.health.Check(health_pb2.HealthCheckRequest())
                noop.append(time.perf_counter() - t0)
        p, b = percentiles(lat), percentiles(noop)
        report.add(f"closest image over gRPC, {n_images:,} images (p50)", p["p50_ms"], "ms",
                   baseline_name="no-op RPC p50", baseline_value=b["p50_ms"],
                   target="p50 <= 1 ms", met=p["p50_ms"] <= 1.0, ours=p, noop=b,
                   catalog_build_s=build_s)  # fmt: skip
    finally:
        stop_server(srv)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--images", type=int, default=1_000_000)
    args = ap.parse_args()
    report = Report("archive", "Header ingest and closest-image lookups over gRPC.")
    with tempfile.TemporaryDirectory() as tmp:
        ingest_rate(report, Path(tmp), args.files)
        closest_over_grpc(report, Path(tmp), args.images)
    report.write()


if __name__ == "__main__":
    main()

"""Catalog benchmark: bulk insert, closest-image latency against a bare LMDB get, range pages,
coverage and evenly spaced frames, on a catalog of N images over ten sources.

Run: .venv/bin/python bench/bench_catalog.py [--images N]
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path

import lmdb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Report, percentiles

from heliostat.archive import naming, sources
from heliostat.catalog.keys import COVERAGE_BIN_US
from heliostat.catalog.records import ImageRecord
from heliostat.catalog.store import Catalog

S = 1_000_000
DAY = 86_400 * S
START = 1_704_067_200 * S  # 2024-01-01T00:00:00Z
# (source id, cadence in seconds): Helioviewer's AIA/HMI/SWAP/LASCO cadences
CADENCES = [(10, 36), (11, 36), (12, 36), (13, 36), (14, 36), (15, 36), (18, 45), (19, 45)]
CADENCES += [(32, 120), (4, 720)]


def source_frames(
    source_id: int, cadence_s: int, end_us: int, rng: random.Random
) -> Iterator[ImageRecord]:
    """A source's images from START to end, at its cadence with a little jitter (whole ms, as
    in Helioviewer file names)."""
    src = sources.by_id(source_id)
    size = 1024 if src.layering_order > 1 else 4096
    k = 0
    while True:
        t = START + k * cadence_s * S + rng.randrange(-1000, 1000) * 1000
        if t >= end_us:
            return
        yield ImageRecord(
            id=0,
            source_id=source_id,
            time_us=t,
            path=naming.archive_path(src, t),
            width=size,
            height=size,
            cdelt1=0.6,
            cdelt2=0.6,
            crpix1=size / 2 + 0.5,
            crpix2=size / 2 + 0.5,
            crval1=rng.uniform(-1, 1),
            crval2=rng.uniform(-1, 1),
            rotation=0.0,
            dsun=1.47e11 + rng.uniform(0, 5e9),
            rsun_px=1600.0,
            layering_order=src.layering_order,
            file_size=rng.randrange(1_000_000, 4_000_000),
            file_mtime_ns=t * 1000 + 3_600_000_000_000,
        )
        k += 1


def timed(fn: Callable[..., object], calls: Iterable[tuple[object, ...]]) -> dict[str, float]:
    """Latency summary of fn(*args) for each args, per call, in µs."""
    samples = []
    clock = time.perf_counter
    for a in calls:
        t0 = clock()
        fn(*a)
        samples.append(clock() - t0)
    summary = percentiles(samples)
    n = summary.pop("n")
    return {"n": n} | {k.replace("_ms", "_us"): v * 1e3 for k, v in summary.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    per_day = sum(86_400 // c for _, c in CADENCES)
    span = -(-args.images * DAY // per_day)  # long enough for N images at these cadences
    end = START + span

    report = Report(
        "catalog",
        f"LMDB catalog of {args.images} images over {len(CADENCES)} sources "
        f"({span / DAY:.1f} days at Helioviewer cadences); latencies per call, in-process.",
    )
    with tempfile.TemporaryDirectory(prefix="bench_catalog_") as tmp:
        path = Path(tmp) / "catalog"

        # -- bulk insert, in time order across sources as an ingest would see them
        frames = heapq.merge(
            *(source_frames(sid, c, end, rng) for sid, c in CADENCES), key=lambda r: r.time_us
        )
        stream = islice(frames, args.images)
        put_s: list[float] = []
        inserted = 0
        t_all = time.perf_counter()
        with Catalog(path) as cat:
            while batch := list(islice(stream, args.batch)):
                t0 = time.perf_counter()
                inserted += len(cat.put_images(batch))
                put_s.append(time.perf_counter() - t0)
            wall = time.perf_counter() - t_all
            counts = cat.source_counts()
            map_size = cat.map_size
        batch_ms = percentiles(put_s)
        # the rate counts time in put_images (one synced commit per batch), not making the records
        report.add(
            "insert rate",
            inserted / sum(put_s),
            "images/s",
            batch=args.batch,
            images=inserted,
            put_images_seconds=sum(put_s),
            wall_seconds_with_record_generation=wall,
            put_images_p50_ms=batch_ms["p50_ms"],
            put_images_p99_ms=batch_ms["p99_ms"],
            map_size=map_size,
            data_bytes=(path / "data.mdb").stat().st_size,
            per_source=counts,
        )

        # -- the floor: a bare py-lmdb get of a known key, in one open transaction
        ids = [rng.randrange(1, inserted + 1).to_bytes(8, "big") for _ in range(args.queries)]
        env = lmdb.open(str(path), max_dbs=8, readonly=True)
        images_db = env.open_db(b"images", create=False)
        with env.begin() as txn:
            floor = timed(txn.get, ((k, None, images_db) for k in ids))

        def begin_get(k: bytes) -> bytes | None:
            with env.begin() as t:
                return t.get(k, db=images_db)

        # what every catalog read pays on top of its work: a transaction of its own
        per_call_txn = timed(begin_get, ((k,) for k in ids))
        env.close()

        # -- catalog reads
        with Catalog(path, readonly=True) as cat:
            sids = [sid for sid, _ in CADENCES]
            queries = [(rng.choice(sids), rng.randrange(START, end)) for _ in range(args.queries)]
            for direction in ("nearest", "before", "after"):
                n = len(queries) if direction == "nearest" else len(queries) // 5
                lat = timed(cat.closest, ((s, t, direction) for s, t in queries[:n]))
                report.add(
                    f"closest {direction} p50",
                    lat["p50_us"],
                    "µs",
                    baseline_name="bare txn.get p50",
                    baseline_value=floor["p50_us"],
                    target="<= 20 µs p50",
                    met=lat["p50_us"] <= 20,
                    latency=lat,
                    bare_get=floor,
                    begin_and_get=per_call_txn,
                )

            days = [START + rng.randrange(span // DAY) * DAY for _ in range(500)]
            pages = timed(
                lambda s, t: cat.range(s, t, t + DAY, limit=100), queries[: args.queries // 20]
            )
            report.add("range page of 100", pages["p50_us"], "µs", latency=pages)

            for label, bin_us in (("30-min table", COVERAGE_BIN_US), ("index scan", 300 * S)):
                cov = timed(cat.coverage, ((sids, d, d + DAY, bin_us) for d in days))
                report.add(
                    f"coverage of {len(sids)} sources over a day ({label})",
                    cov["p50_us"],
                    "µs",
                    bin_us=bin_us,
                    latency=cov,
                )

            spaced = timed(
                cat.evenly_spaced,
                ((s, d, d + DAY, 100) for s, d in zip(sids * 50, days, strict=True)),
            )
            report.add(
                "evenly_spaced 100 frames over a day", spaced["p50_us"], "µs", latency=spaced
            )
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()

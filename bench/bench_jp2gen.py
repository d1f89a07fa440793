"""JP2Gen: FITS → Helioviewer JP2 for a 4096² AIA 171 image (real AIA header, int16 DN).

    .venv/bin/python bench/bench_jp2gen.py

Single process: ``convert`` timed round-robin against a bare glymur/OpenJPEG encode of the same
uint8 array with the same parameters (9/7, 8 levels, 8 layers at 0.5 bpp, RPCL, 128² precincts,
64² code-blocks, PLT), so both see the same machine load. Batch: ``convert_many`` over distinct
files with 2 worker processes, as files/s, beside bare encodes of the same bytes in 2 processes.
"""

from __future__ import annotations

import multiprocessing
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import glymur  # noqa: E402
import numpy as np  # noqa: E402
from astropy.io import fits  # type: ignore[import-untyped]  # noqa: E402
from test_jp2gen import AIA171, AIA_HEADER, _disc_dn, _header_for, _write  # noqa: E402

from bench.harness import Report, percentiles  # noqa: E402
from heliostat.archive.jp2write import compression_ratios, default_levels  # noqa: E402
from heliostat.jp2gen import convert, convert_many  # noqa: E402

SIDE = 4096
ROUNDS = 6
BATCH_FILES = 8
WORKERS = 2


def bare_encode(path: Path, pixels: np.ndarray) -> None:
    levels = default_levels(*pixels.shape)
    glymur.Jp2k(
        path,
        data=pixels,
        irreversible=True,
        cratios=compression_ratios(0.5, 8, lossless=False),
        numres=levels + 1,
        prog="RPCL",
        psizes=[(128, 128)] * (levels + 1),
        cbsize=(64, 64),
        plt=True,
    )


def _bare_job(pixels_npy: Path, out: Path) -> None:
    bare_encode(out, np.load(pixels_npy))


def single(report: Report, fits_path: Path, work: Path) -> None:
    first = convert(fits_path, work / "archive", overwrite=True)
    assert first.scaling is not None
    with fits.open(fits_path) as hdul:
        pixels = first.scaling.to_bytes(hdul[0].data[::-1])
    np.save(work / "pixels.npy", pixels)
    ours: list[float] = []
    bare: list[float] = []
    stages: dict[str, list[float]] = {}
    for i in range(ROUNDS):
        # Alternate which goes first, so neither always runs on a warmer (or busier) machine.
        for which in ("ours", "bare") if i % 2 == 0 else ("bare", "ours"):
            t0 = time.perf_counter()
            if which == "bare":
                bare_encode(work / "bare.j2k", pixels)
                bare.append(time.perf_counter() - t0)
                continue
            result = convert(fits_path, work / "archive", overwrite=True)
            ours.append(time.perf_counter() - t0)
            for stage, seconds in result.seconds.items():
                stages.setdefault(stage, []).append(seconds)
    p, b = percentiles(ours), percentiles(bare)
    overhead = p["p50_ms"] / b["p50_ms"] - 1
    report.add("FITS → JP2, 4096² AIA 171, one process (p50)", p["p50_ms"] / 1e3, "s",
               baseline_name="bare glymur/OpenJPEG encode p50", baseline_value=b["p50_ms"] / 1e3,
               target="overhead <= 10 %", met=overhead <= 0.10, ours=p, bare=b,
               overhead_pct=overhead * 100,
               stages_p50_s={k: statistics.median(v) for k, v in stages.items()},
               output_bytes=first.output.stat().st_size)  # fmt: skip
    report.add("overhead over the bare encode", overhead * 100, "%")
    for stage, samples in stages.items():
        report.add(f"stage {stage} (p50)", statistics.median(samples), "s")


def batch(report: Report, fits_path: Path, work: Path) -> None:
    inbox = work / "inbox"
    inbox.mkdir()
    with fits.open(fits_path) as hdul:
        data, hdr = hdul[0].data, hdul[0].header
        for i in range(BATCH_FILES):
            hdr["DATE-OBS"] = f"2011-02-15T00:{i:02d}:00.34"  # distinct outputs
            fits.PrimaryHDU(data, hdr).writeto(inbox / f"aia_{i}.fits")
    files = sorted(inbox.glob("*.fits"))
    result = convert_many(files, work / "batch", workers=WORKERS, progress=False)
    assert len(result.converted) == BATCH_FILES, result.failed
    rate = len(files) / result.seconds
    # Baseline: the same number of bare encodes in as many processes, pool start-up included.
    t0 = time.perf_counter()
    with ProcessPoolExecutor(WORKERS, multiprocessing.get_context("fork")) as pool:
        outs = [work / f"bare_{i}.j2k" for i in range(BATCH_FILES)]
        list(pool.map(_bare_job, [work / "pixels.npy"] * BATCH_FILES, outs))
    bare_rate = BATCH_FILES / (time.perf_counter() - t0)
    encode_mean = statistics.fmean(r.seconds["encode"] for r in result.converted)
    total_mean = statistics.fmean(r.seconds["total"] for r in result.converted)
    report.add(f"batch, {WORKERS} worker processes", rate, "files/s",
               baseline_name=f"bare encodes in {WORKERS} processes", baseline_value=bare_rate,
               target=">= 0.5 files/s", met=rate >= 0.5, files=len(files),
               wall_s=result.seconds, encode_s_mean=encode_mean,
               total_s_mean=total_mean)  # fmt: skip


def main() -> None:
    report = Report(
        "jp2gen",
        f"FITS → Helioviewer JP2 for a {SIDE}² AIA 171 image (int16 DN, real AIA header): p50 of "
        f"{ROUNDS} conversions round-robin with a bare glymur/OpenJPEG encode of the same bytes "
        f"and parameters; batch of {BATCH_FILES} files with {WORKERS} worker processes.",
    )
    work = Path(tempfile.mkdtemp(prefix="bench_jp2gen_"))
    try:
        hdr = _header_for(AIA_HEADER, SIDE)
        fits_path = _write(work / "aia_171.fits", _disc_dn(hdr, SIDE, AIA171.id, 400.0), hdr)
        single(report, fits_path, work)
        batch(report, fits_path, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report.write())


if __name__ == "__main__":
    main()

"""Colour-table throughput on a 4096² AIA 171 image, and per-tile (512²) encode times.

    .venv/bin/python bench/bench_colortable.py

The lookup kernels are timed against np.copyto of the same-size RGBA output (the memory-bound
floor), np.take and numpy fancy indexing, round-robin in one run so every candidate sees the same
machine load. Encodes are timed on a disc tile and an edge tile of the same image.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench.harness import Report, percentiles  # noqa: E402
from heliostat.imaging import colorize, colortables  # noqa: E402
from heliostat.imaging._openjpeg import J2KDecoder  # noqa: E402
from heliostat.imaging.encode import encode  # noqa: E402

AIA = ROOT / "tests" / "data" / "jp2" / "2014_02_03__02_08_47_34__SDO_AIA_AIA_171.jp2"
SIDE = 4096
TILE = 512
TABLE = "sdoaia171"


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each fn, timed round-robin after one warm-up call each."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return samples


def image() -> np.ndarray:
    img: np.ndarray = J2KDecoder(AIA.read_bytes(), 0).decode(0, 0, SIDE, SIDE)
    return img


def full_image(report: Report, img: np.ndarray) -> None:
    lut = colortables.rgba(TABLE)
    out = np.empty((SIDE, SIDE, 4), dtype=np.uint8)
    copy_dst = np.empty_like(out)
    # The same pixels as a window of a larger array, as tiles are cut from decoded images.
    big = np.zeros((SIDE + 100, SIDE + 200), dtype=np.uint8)
    big[40 : 40 + SIDE, 90 : 90 + SIDE] = img
    window = big[40 : 40 + SIDE, 90 : 90 + SIDE]
    # Off-disc coverage mask with an antialiased edge, as a coronagraph occulter would need.
    y, x = np.ogrid[:SIDE, :SIDE]
    r = np.hypot(x - SIDE / 2, y - SIDE / 2)
    mask = np.clip((1900 - r) * 64, 0, 255).astype(np.uint8)

    fast = interleaved(
        {
            "copy": lambda: np.copyto(copy_dst, out),
            "apply_lut_rgba": lambda: colorize.apply_lut_rgba(img, lut, out),
            "apply_lut_rgba (row-strided window)": lambda: colorize.apply_lut_rgba(
                window, lut, out
            ),
            "apply_lut_rgba_masked": lambda: colorize.apply_lut_rgba_masked(img, mask, lut, out),
            "np.take": lambda: np.take(lut, img, axis=0, out=out),
        },
        rounds=25,
    )
    slow = interleaved({"fancy indexing lut[img]": lambda: lut[img]}, rounds=5)
    assert np.array_equal(colorize.apply_lut_rgba(window, lut, out), lut[img])

    copy = percentiles(fast.pop("copy"))
    report.add("np.copyto 4096²×4 (baseline)", copy["p50_ms"], "ms", stats=copy)
    for name, samples in {**fast, **slow}.items():
        p = percentiles(samples)
        kernel = name.startswith("apply_lut")
        report.add(
            f"{name} 4096²",
            p["p50_ms"],
            "ms",
            baseline_name="np.copyto",
            baseline_value=copy["p50_ms"],
            target="colour table ≤ 2× copy" if kernel else None,
            met=p["p50_ms"] <= 2 * copy["p50_ms"] if kernel else None,
            stats=p,
        )


def png_rgb_level6(tile: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(colortables.load(TABLE)[tile]).save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def tiles(report: Report, img: np.ndarray) -> None:
    c = SIDE // 2
    disc = np.ascontiguousarray(img[c - TILE : c, c - TILE : c])
    # An edge tile: image on the top-left, transparent padding to the right and below.
    edge = disc.copy()
    padding = np.full((TILE, TILE), 255, dtype=np.uint8)
    padding[:, 300:] = 0
    padding[400:, :] = 0
    soft = padding.copy()
    soft[:400, 296:300] = (192, 128, 64, 32)  # an antialiased border forces RGBA

    cases: dict[str, Callable[[], bytes]] = {
        "PNG palette": lambda: encode(disc, table=TABLE, fmt="png"),
        "PNG palette + tRNS (binary padding)": lambda: encode(
            edge, table=TABLE, fmt="png", alpha=padding
        ),
        "PNG RGBA (partial alpha)": lambda: encode(edge, table=TABLE, fmt="png", alpha=soft),
        "JPEG q85": lambda: encode(disc, table=TABLE, fmt="jpeg", quality=85),
        "JPEG q85 grey": lambda: encode(disc, table=None, fmt="jpeg", quality=85),
        "WebP q80": lambda: encode(disc, table=TABLE, fmt="webp", quality=80),
        "WebP q80 + alpha": lambda: encode(edge, table=TABLE, fmt="webp", quality=80, alpha=soft),
        "PNG RGB level 6 (Pillow, never used)": lambda: png_rgb_level6(disc),
    }
    samples = interleaved(dict(cases), rounds=20)
    baseline = percentiles(samples["PNG RGB level 6 (Pillow, never used)"])["p50_ms"]
    for name, fn in cases.items():
        p = percentiles(samples[name])
        size = len(fn())
        png = name.startswith("PNG") and "level 6" not in name
        report.add(
            f"encode 512² {name}",
            p["p50_ms"],
            "ms",
            baseline_name="PNG RGB level 6" if png else None,
            baseline_value=baseline if png else None,
            size_kib=round(size / 1024, 1),
            stats=p,
        )


def main() -> None:
    report = Report(
        "colortable",
        "Colour table applied to a 4096² AIA 171 image (uint8 → RGBA) against np.copyto of the "
        "output (p50 over 25 interleaved rounds); per-tile encodes of 512² tiles (p50 of 20).",
    )
    img = image()
    full_image(report, img)
    tiles(report, img)
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()

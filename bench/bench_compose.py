"""Frame assembly: the affine and blend kernels on 4096² inputs, and a 3-layer 1920×1200 screenshot.

Baselines measured in the same run: a plain copy of the same bytes (numpy copyto),
scipy.ndimage.affine_transform(order=1) for the affine kernel (and the Numba paths beside the C
SIMD rows where this CPU has them), a numpy float32 blend for the blend kernel, Pillow for the
RGBA PNG encoder, and a raw OpenJPEG whole-image decode of the AIA file for the cold screenshot.

    .venv/bin/python bench/bench_compose.py
"""

from __future__ import annotations

import io
import math
import sys
import time
from pathlib import Path

import numba
import numpy as np
from PIL import Image
from scipy import ndimage  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import AIA_171, DATA, LASCO_C3  # noqa: E402

from bench.harness import Report, alternate, percentiles, repeat  # noqa: E402
from heliostat.archive.header import read_record  # noqa: E402
from heliostat.imaging import colorize, colortables, encode  # noqa: E402
from heliostat.imaging._openjpeg import J2KDecoder  # noqa: E402
from heliostat.imaging.blend import blend_over  # noqa: E402
from heliostat.imaging.compose import Compositor, LayerInput  # noqa: E402
from heliostat.imaging.decode import JP2Reader  # noqa: E402
from heliostat.imaging.warp import native, warp_affine  # noqa: E402
from heliostat.screenshots import region as roi  # noqa: E402
from heliostat.screenshots.service import encode_rgba  # noqa: E402

SWAP = sorted(DATA.glob("*PROBA2_SWAP_SWAP_174.jp2"))


def _rotation(deg: float, scale: float, n: int, n_out: int | None = None) -> np.ndarray:
    """Rotate by deg and scale, the centre of an n_out² output (default n) on the centre of the
    n² source."""
    c, s = math.cos(math.radians(deg)) * scale, math.sin(math.radians(deg)) * scale
    mid, out = (n - 1) / 2, ((n if n_out is None else n_out) - 1) / 2
    return np.array([[c, -s, mid - c * out + s * out], [s, c, mid - s * out - c * out]])


def _warp_case(report: Report, aia: np.ndarray, name: str, m: np.ndarray, size: int) -> None:
    """warp_affine beside a copy of the 16 MiB source and scipy order=1, same output size."""
    out = np.empty((size, size), np.uint8)
    alpha = np.empty_like(out)
    src_copy = np.empty_like(aia)
    ours_s, copy_s = alternate([lambda: warp_affine(aia, m, out, alpha),
                                lambda: np.copyto(src_copy, aia)], 15)  # fmt: skip
    ours, copy = percentiles(ours_s), percentiles(copy_s)
    # scipy maps (row, col) output indices to (row, col) input coordinates: swap the axes.
    matrix = np.array([[m[1, 1], m[1, 0]], [m[0, 1], m[0, 0]]])
    offset = (m[1, 2], m[0, 2])
    scipy_out = np.empty_like(out)
    scipy = percentiles(
        repeat(lambda: ndimage.affine_transform(aia, matrix, offset, order=1, output=scipy_out), 3)
    )
    report.add(f"affine {name} (p50)", ours["p50_ms"], "ms",
               baseline_name="copy of the same 16 MiB", baseline_value=copy["p50_ms"],
               target="<= 3 x copy", met=ours["p50_ms"] <= 3 * copy["p50_ms"],
               ours=ours, copy=copy)  # fmt: skip
    report.add(f"affine {name} vs scipy (p50)", ours["p50_ms"], "ms",
               baseline_name="scipy affine_transform order=1", baseline_value=scipy["p50_ms"],
               scipy=scipy)  # fmt: skip
    # Whether the second thread pays: the same warp on one.
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        single = percentiles(repeat(lambda: warp_affine(aia, m, out, alpha), 7))
    finally:
        numba.set_num_threads(threads)
    report.add(f"affine {name} on {threads} threads vs 1 (p50)", ours["p50_ms"], "ms",
               baseline_name="the same on 1 thread", baseline_value=single["p50_ms"],
               single=single)  # fmt: skip


def _simd_case(
    report: Report, aia: np.ndarray, name: str, m: np.ndarray, size: int, kernel: str, numba: str
) -> None:
    """A warp through a C row kernel (``kernel`` in heliostat.imaging.warp.native: its address
    where this CPU has the instructions) beside the same warp with that kernel off: the Numba
    path ``numba``."""
    out = np.empty((size, size), np.uint8)
    alpha = np.empty_like(out)
    simd = getattr(native, kernel)
    if not simd:
        print(f"{kernel}: not on this CPU, the Numba path is the only one", file=sys.stderr)
        return
    ours = percentiles(repeat(lambda: warp_affine(aia, m, out, alpha), 7))
    setattr(native, kernel, 0)
    try:
        numba_path = percentiles(repeat(lambda: warp_affine(aia, m, out, alpha), 7))
    finally:
        setattr(native, kernel, simd)
    report.add(f"affine {name}, SIMD rows vs Numba path (p50)", ours["p50_ms"], "ms",
               baseline_name=numba, baseline_value=numba_path["p50_ms"],
               ours=ours, numba=numba_path)  # fmt: skip


def kernel_figures(report: Report, aia: np.ndarray) -> None:
    n = aia.shape[0]
    # Rotation-free (every AIA/SWAP/EIT/HMI layer): native scale with a subpixel shift, a shrink
    # with 2×2 supersampling, the screenshot's AIA scale, a 180° turn; then rotated (LASCO/COR),
    # at native scale and shrinking.
    shift = np.array([[1.0, 0.0, 0.3], [0.0, 1.0, -0.45]])
    _warp_case(report, aia, "4096² scale 1, subpixel shift", shift, n)
    shrink = np.array([[1.9, 0.0, 0.3], [0.0, 1.9, 0.2]])
    _warp_case(report, aia, "4096² → 2048² scale 1.9, 2×2 supersampled", shrink, n // 2)
    # The AIA layer of a default screenshot: 1.0088 reduced pixels per output pixel, one sample
    # (up to a 1.25 shrink); then the nearest shrink that takes 2×2, where the most taps fall.
    aia_layer = np.array([[1.0088, 0.0, 1.7], [0.0, 1.0088, -2.2]])
    _warp_case(report, aia, "4096² → 4060² scale 1.0088", aia_layer, 4060)
    near = np.array([[1.3, 0.0, 0.4], [0.0, 1.3, -0.3]])
    _warp_case(report, aia, "4096² → 3150² scale 1.3, 2×2 supersampled", near, 3150)
    _simd_case(report, aia, "4096² → 4060² unrotated", aia_layer, 4060, "SEPARABLE_ROW",
               "the Numba float32 passes")  # fmt: skip
    # HMI-style CROTA 180°: cos and sin leave 1e-16 off the diagonal; a mirror of both axes.
    _warp_case(report, aia, "4096² rotate 180°", _rotation(180.0, 1.0, n), n)
    _warp_case(report, aia, "4096² rotate 10°", _rotation(10.0, 1.0, n), n)
    _simd_case(report, aia, "4096² rotate 10°", _rotation(10.0, 1.0, n), n, "BILINEAR_ROW",
               "the Numba fixed-point path")  # fmt: skip
    _warp_case(report, aia, "4096² → 2048² rotate 10°, 2×2 supersampled",
               _rotation(10.0, 1.9, n, n // 2), n // 2)  # fmt: skip

    lut = colortables.rgba("sdoaia171")
    layer = colorize.apply_lut_rgba(aia, lut)
    canvas0 = colorize.apply_lut_rgba(aia[::-1], lut)
    canvas = canvas0.copy()
    canvas_copy = np.empty_like(canvas)
    ours_s, copy_s = alternate([lambda: blend_over(layer, 70, canvas),
                                lambda: np.copyto(canvas_copy, layer)], 9)  # fmt: skip
    ours, copy = percentiles(ours_s), percentiles(copy_s)
    a = layer.astype(np.float32)
    b = canvas0.astype(np.float32)
    fl = percentiles(
        repeat(lambda: (a * np.float32(0.7) + b * np.float32(0.3)).astype(np.uint8), 3)
    )
    report.add("blend 4096² RGBA at 70 % over opaque (p50)", ours["p50_ms"], "ms",
               baseline_name="copy of the same 64 MiB", baseline_value=copy["p50_ms"],
               target="<= 3 x copy", met=ours["p50_ms"] <= 3 * copy["p50_ms"],
               ours=ours, copy=copy)  # fmt: skip
    report.add("blend 4096² vs numpy float32 (p50)", ours["p50_ms"], "ms",
               baseline_name="numpy float32 a*0.7+b*0.3", baseline_value=fl["p50_ms"],
               numpy=fl)  # fmt: skip
    # A canvas with partial alpha takes the float path; OVER makes it more opaque each time, so
    # every sample starts from a fresh copy, and the copy alone is the baseline.
    partial = canvas0.copy()
    partial[..., 3] = aia[::-1] // 2 + 1

    def reset_blend() -> None:
        np.copyto(canvas, partial)
        blend_over(layer, 70, canvas)

    ours = percentiles(repeat(reset_blend, 5))
    copy = percentiles(repeat(lambda: np.copyto(canvas, partial), 5))
    report.add("blend 4096² over partial-alpha canvas, + reset copy (p50)", ours["p50_ms"], "ms",
               baseline_name="the reset copy alone (64 MiB)", baseline_value=copy["p50_ms"],
               ours=ours, copy=copy)  # fmt: skip


def screenshot_figures(report: Report) -> None:
    files = [LASCO_C3, AIA_171[0], SWAP[0]]
    recs = [read_record(f, f.name) for f in files]
    # Coronagraph underneath, the disc over it, SWAP at half opacity on top.
    layers = [LayerInput(recs[0]), LayerInput(recs[1]), LayerInput(recs[2], 50)]
    view = roi.from_centre(0, 0, 1920, 1200, 4.8408817).viewport

    cold, cold_png, raw = [], [], []
    for _ in range(5):
        comp = Compositor(DATA, JP2Reader())
        t0 = time.perf_counter()
        frame = comp.compose(layers, view)
        t1 = time.perf_counter()
        encode_rgba(frame.rgba, "png", 90)
        cold.append(t1 - t0)
        cold_png.append(time.perf_counter() - t0)
        data = AIA_171[0].read_bytes()
        t0 = time.perf_counter()
        dec = J2KDecoder(data, frame.layers[1].reduce)
        dec.decode(0, 0, dec.width, dec.height)  # the whole image at that reduce level
        raw.append(time.perf_counter() - t0)
    c, cp, r = percentiles(cold), percentiles(cold_png), percentiles(raw)
    report.add("screenshot 1920×1200 cold, composed + PNG (p50)", cp["p50_ms"], "ms",
               baseline_name="raw OpenJPEG decode of the AIA layer at its reduce",
               baseline_value=r["p50_ms"], target="<= 800 ms", met=cp["p50_ms"] <= 800,
               compose_only=c, raw=r)  # fmt: skip

    warm = percentiles(repeat(lambda: comp.compose(layers, view), 15))
    frame = comp.compose(layers, view)
    fmts = {f: percentiles(repeat(lambda f=f: encode_rgba(frame.rgba, f, 90), 5))  # type: ignore[misc]
            for f in ("png", "jpeg", "webp")}  # fmt: skip
    total = percentiles(repeat(lambda: encode_rgba(comp.compose(layers, view).rgba, "png", 90), 15))
    report.add("screenshot 1920×1200 warm, composed + PNG (p50)", total["p50_ms"], "ms",
               target="<= 150 ms", met=total["p50_ms"] <= 150, compose_only=warm,
               encode=fmts)  # fmt: skip
    report.add("screenshot 1920×1200 warm, compose only (p50)", warm["p50_ms"], "ms", ours=warm)
    for f, p in fmts.items():
        if f != "png":
            report.add(f"encode 1920×1200 RGBA {f} (p50)", p["p50_ms"], "ms")

    def pillow_png() -> bytes:
        buf = io.BytesIO()
        h, w = frame.rgba.shape[:2]
        im = Image.frombuffer("RGBA", (w, h), frame.rgba, "raw", "RGBA", 0, 1)
        im.save(buf, "PNG", compress_level=encode.PNG_COMPRESS_LEVEL)
        return buf.getvalue()

    pil = percentiles(repeat(pillow_png, 5))
    report.add("encode 1920×1200 RGBA png (p50)", fmts["png"]["p50_ms"], "ms",
               baseline_name="Pillow PNG at the same zlib level", baseline_value=pil["p50_ms"],
               size_bytes=len(encode.png_rgba(frame.rgba)),
               pillow_size_bytes=len(pillow_png()))  # fmt: skip


def main() -> None:
    report = Report(
        "compose",
        "Affine/blend kernels on a real AIA 171 4096² image and a 1920×1200 screenshot of "
        "LASCO C3 + AIA 171 + SWAP 174 (50 %) at 4.84 arcsec/px, in-process.",
    )
    aia = J2KDecoder(AIA_171[0].read_bytes(), 0).decode(0, 0, 4096, 4096)
    kernel_figures(report, aia)
    screenshot_figures(report)
    report.write()


if __name__ == "__main__":
    main()

"""Affine resampling, occulter masks and alpha compositing kernels for multi-layer frames.

``warp_affine``: output pixel ``(u, v)`` (pixel centres at integer positions, as everywhere in
heliostat.imaging) samples the source at ``(x, y) = m @ (u, v, 1)``, ``x`` a column and ``y`` a
row. Sampling is bilinear. When the output shrinks the source by more than 1.25 (source pixels
per output pixel along either axis), each output pixel averages an ``n × n`` grid of bilinear
samples spread over its footprint, ``n = ceil(source pixels per output pixel)``: a box the size
of the footprint convolved with the bilinear tent (samples_per_axis). Up to 1.25 one sample's
tent is the better filter: measured against Lanczos-antialiased reductions (Pillow) of white
noise, a zone plate and real AIA, HMI and LASCO images, it is the closer of the two on every one
(at 1.0088, a default screenshot's AIA layer, 20.1 against 26.6 grey levels rms on noise, 0.53
against 0.62 on AIA: 2 × 2 there only blurs), and 2 × 2 is the closer from ~1.25. Supersampling
was chosen over a separable prefilter because it handles rotation with the same code, and
frames reach this kernel after JPEG 2000 ``reduce`` has done the power-of-two part of any
shrink, so ``n`` is 1 or 2 in practice (4 samples at most per pixel). Samples whose position
falls outside the source count as transparent: the output alpha is the covered fraction of the
footprint.

Without rotation (off-diagonal terms below a millionth of a pixel: a 180° CROTA is a mirror of
both axes) the same mean of bilinear samples factors into a vertical and a horizontal pass with
per-row and per-column weight tables (_warp_separable), within one grey level of the per-pixel
path and with the same alpha. The vertical pass weights whole source rows into a float row; the
horizontal one reads that row with vector loads along runs of columns whose taps are
consecutive (any step near ±1: every native-scale layer), and gathers elsewhere. On a CPU with
AVX-512 BW both passes of a row run in hs_separable_row instead (ext/separable_row.h: 16-bit
lanes and 1/16384 weights, taps by word permutes from a 64-word window wherever they fall, so
steps up to 1.9 and mirrors too; non-temporal stores for frames past 8 MiB; 1.1–3x faster).
Tiles and screenshots both resample through it. Rotated matrices take the per-pixel path
(_warp_general), whose interior pixels go through vectorised position and bilinear passes
around one scalar fetch of the four neighbours; or, on a CPU with AVX-512 VBMI and within ~20°
of the axes, through hs_bilinear_row (ext/bilinear_row.h: byte permutes of the source rows a
run of 32 pixels crosses instead of four loads a pixel; 1.5–4× faster). A three-shear or
two-pass decomposition of the rotation was not adopted: it is not bilinear sampling, so it
would not stay within one grey level of it.

``blend_over`` draws one straight-alpha RGBA layer over a straight-alpha RGBA canvas, Porter–Duff
OVER, the way Helioviewer stacks screenshot layers: branch-free loops over 32-bit pixels that
LLVM vectorises, integer arithmetic over an opaque canvas row, float32 where the canvas row has
partial alpha (straight alpha needs a division).

Both kernels share rows among threads, as many as the work is worth (_threads); the warps deal
them out in blocks of rows in turn (_row_order), so uneven work down a frame is shared too.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from typing import Any

import llvmlite.ir as llvm_ir
import numba
import numpy as np
import numpy.typing as npt
from numba.core import cgutils
from numba.core import types as nb_types
from numba.extending import intrinsic

from heliostat.imaging import _simd

U8Array = npt.NDArray[np.uint8]
U32Array = npt.NDArray[np.uint32]
F32Array = npt.NDArray[np.float32]
F64Array = npt.NDArray[np.float64]
I64Array = npt.NDArray[np.int64]
I32Array = npt.NDArray[np.int32]

# The alpha byte's bits within a native-endian uint32 RGBA word.
_ALPHA_SHIFT = 24 if sys.byteorder == "little" else 0
_ALPHA_BITS = 0xFF << _ALPHA_SHIFT
_RGB_BITS = 0xFFFFFFFF ^ _ALPHA_BITS
# Fractional bits of the fixed-point source positions.
_FIX = 32
_ONE = float(1 << _FIX)
# Index type of the hot loops: numba wraps negative indices, a test per load that stops LLVM
# vectorising a loop; an unsigned index has none.
_I = np.uint64


@numba.njit(cache=True, nogil=True, inline="always")
def _bilinear(src: U8Array, x: float, y: float) -> float:
    h, w = src.shape
    x0 = math.floor(x)
    y0 = math.floor(y)
    fx = x - x0
    fy = y - y0
    # Within half a pixel of the edge the missing neighbour repeats the edge pixel.
    xa = max(x0, 0)
    xb = min(x0 + 1, w - 1)
    ya = max(y0, 0)
    yb = min(y0 + 1, h - 1)
    p = np.float64(src[ya, xa])
    q = np.float64(src[yb, xa])
    top = p + fx * (src[ya, xb] - p)
    bottom = q + fx * (src[yb, xb] - q)
    return float(top + fy * (bottom - top))


@numba.njit(cache=True, nogil=True, inline="always")
def _fixed(x: float) -> int:
    return math.floor(x * _ONE + 0.5)


@numba.njit(cache=True, nogil=True)
def _span(a: float, b: float, lo: float, hi: float, n: int) -> tuple[int, int]:
    """[u0, u1): the u in [0, n) with lo <= a·u + b <= hi, less one at each end for rounding."""
    if a == 0.0:
        return (0, n) if lo <= b <= hi else (0, 0)
    t0 = (lo - b) / a
    t1 = (hi - b) / a
    if t0 > t1:
        t0, t1 = t1, t0
    return max(0, math.ceil(t0) + 1), min(n, math.floor(t1))


@numba.njit(cache=True, nogil=True, inline="always")
def _edge_pixel(
    src: U8Array,
    cx: float,
    cy: float,
    off_x: F64Array,
    off_y: F64Array,
    scale: F64Array,
    cover: U8Array,
) -> tuple[int, int]:
    """(value, coverage) of a pixel whose footprint may reach past the source's edge."""
    h_src, w_src = src.shape
    acc = 0.0
    hits = 0
    for k in range(off_x.size):
        x = cx + off_x[k]
        y = cy + off_y[k]
        if -0.5 <= x < w_src - 0.5 and -0.5 <= y < h_src - 0.5:
            acc += _bilinear(src, x, y)
            hits += 1
    return min(int(acc * scale[hits] + 0.5), 255), cover[hits]


def warp_affine(src: U8Array, m: F64Array, out: U8Array, alpha: U8Array) -> None:
    """Fill ``out`` and its coverage ``alpha`` (both (h, w) uint8) from ``src`` through ``m``.

    ``m`` is a (2, 3) float64 matrix from output pixel coordinates to source coordinates.
    ``src`` may be a strided view. Rows are shared among threads. A matrix without rotation or
    shear takes the separable path (_warp_separable); any other the general one (_warp_general).
    """
    if out.shape != alpha.shape:
        raise ValueError(f"alpha: shape {alpha.shape} differs from out shape {out.shape}")
    n = samples_per_axis(max(math.hypot(m[0, 0], m[1, 0]), math.hypot(m[0, 1], m[1, 1])))
    h, w = out.shape
    chunks = _threads(h, w)
    flat, pitch = _rows(src)
    # Off-diagonal terms that move no sample by a millionth of a pixel are rounding (cos and
    # sin of a multiple of 90°, as a 180° CROTA gives): the matrix is a scale or a mirror.
    if abs(m[0, 1]) * h < 1e-6 and abs(m[1, 0]) * w < 1e-6:
        ax, bx, ay, by = m[0, 0], m[0, 2], m[1, 1], m[1, 2]
        # The C rows write whole rows of bytes.
        simd = _SEPARABLE_ROW if out.strides[1] == alpha.strides[1] == 1 else 0
        with _threads_for(chunks):
            _warp_separable(flat, pitch, src.shape[1], ax, bx, ay, by, n, out, alpha, chunks, simd)
    else:
        simd, simd_mean = _simd_row(m, n)
        with _threads_for(chunks):
            _warp_general(src, flat, pitch, m, n, out, alpha, chunks, simd, simd_mean)


# Shrinks up to this many source pixels per output pixel take one bilinear sample a pixel
# (module docstring).
_ONE_SAMPLE_UP_TO = 1.25


def samples_per_axis(step: float) -> int:
    """Bilinear samples along each axis of an output pixel that covers ``step`` source pixels
    along its longer side: 1 up to a 1.25 shrink, else ceil(step) (an integer step that
    rounding in a matrix left a millionth over is that integer)."""
    return 1 if step <= _ONE_SAMPLE_UP_TO else math.ceil(step - 1e-6)


# The C row kernels, where the CPU has their instructions: hs_bilinear_row (ext/bilinear_row.h,
# AVX-512 VBMI) and hs_separable_row (ext/separable_row.h, AVX-512 BW). HELIOSTAT_SIMD=0 turns
# both off (the tests compare both paths).
_SIMD_ON = os.environ.get("HELIOSTAT_SIMD", "1") != "0"
_BILINEAR_ROW = _simd.bilinear_row_address() if _SIMD_ON else 0
_BILINEAR_MEAN_ROW = _simd.bilinear_mean_row_address() if _SIMD_ON else 0
_SEPARABLE_ROW = _simd.separable_row_address() if _SIMD_ON else 0


# Its output columns a step, and the line window their taps must fit in.
_SEP_LANES = _simd.SEP_LANES
_SEP_WINDOW = _simd.SEP_WINDOW
# Output size from which it writes past the caches (the source, output and alpha then no longer
# fit a 32 MiB L3 together), as memcpy does for large copies.
_STREAM_BYTES = 8 << 20


# Largest row step down the source (per output pixel) for which the SIMD kernel wins: it loads
# every source row that 32 samples cross, ~32·step + 2 of them; past ~20° of rotation that
# costs what gathering does (measured at 10°, 30°, 60° and 95°).
_SIMD_MAX_DROP = 0.36


def _simd_row(m: F64Array, n: int) -> tuple[int, int]:
    """Addresses of the SIMD row kernels, hs_bilinear_row and hs_bilinear_mean_row, if they
    serve this matrix's sample steps along a row (n × n samples a pixel, up to 16 × 16: the
    sums stay 16-bit), else 0s."""
    fits = abs(m[0, 0]) / n <= _simd.MAX_STEP and abs(m[1, 0]) / n <= _SIMD_MAX_DROP
    if not (fits and n <= 16 and _BILINEAR_ROW):
        return 0, 0
    return _BILINEAR_ROW, _BILINEAR_MEAN_ROW


def _call_c_typer(typingctx, fn, args):  # type: ignore[no-untyped-def]
    """fn(*args) for the address ``fn`` of a C function taking int64 and pointer arguments
    (passed as int64 addresses: the same registers in the x86-64 ABI) and returning nothing."""
    if not isinstance(args, nb_types.UniTuple) or args.dtype != nb_types.int64:
        return None
    sig = nb_types.void(fn, args)

    def codegen(context, builder, signature, call_args):  # type: ignore[no-untyped-def]
        fn_, args_ = call_args
        i64 = llvm_ir.IntType(64)
        fnty = llvm_ir.FunctionType(llvm_ir.VoidType(), [i64] * args.count)
        values = cgutils.unpack_tuple(builder, args_, args.count)  # type: ignore[no-untyped-call]
        builder.call(builder.inttoptr(fn_, fnty.as_pointer()), values)
        return context.get_dummy_value()

    return sig, codegen


_call_c: Any = intrinsic(_call_c_typer)


# Rows go to threads in blocks of this many, dealt in turn: a frame's work is rarely even down
# its rows (rows off the source are transparent and cost nothing; a rotated layer fills only
# part of the frame), and halves split the work of a 10°-rotated shrink 1:14.
_BLOCK_ROWS = 16


@numba.njit(cache=True, nogil=True)
def _row_order(h: int, c: int, chunks: int, backwards: bool) -> I64Array:
    """The rows of an h-row frame that chunk c of ``chunks`` computes, in the order it computes
    them: blocks c, c + chunks, ... of _BLOCK_ROWS rows, all from the bottom up if
    ``backwards``."""
    blocks = -(-h // _BLOCK_ROWS)
    rows = np.empty(h, np.int64)
    count = 0
    for i in range(c, blocks, chunks):
        b = blocks - 1 - i if backwards else i
        r0 = b * _BLOCK_ROWS
        r1 = min(r0 + _BLOCK_ROWS, h)
        for j in range(r1 - r0):
            rows[count] = r1 - 1 - j if backwards else r0 + j
            count += 1
    return rows[:count]


@numba.njit(cache=True, nogil=True)
def _coverage(count: int) -> U8Array:
    """Alpha for k of ``count`` samples inside the source, k = 0..count."""
    cover = np.empty(count + 1, np.uint8)
    for k in range(count + 1):
        cover[k] = (k * 255 + count // 2) // count
    return cover


@numba.njit(cache=True, nogil=True)
def _axis_taps(
    n_out: int, n_src: int, a: float, b: float, n: int
) -> tuple[I64Array, F32Array, I64Array]:
    """Per output index: first source index, tap weights and samples inside the source.

    The n samples of output index u sit at ``a·(u + (j + 0.5)/n − 0.5) + b``; the weights are
    the mean of their bilinear (tent) weights over the samples inside, so they sum to 1.
    """
    taps = math.ceil(abs(a) * (1.0 - 1.0 / n) - 1e-9) + 2
    first = np.zeros(n_out, np.int64)
    weights = np.zeros((n_out, taps), np.float32)
    inside = np.zeros(n_out, np.int64)
    for u in range(n_out):
        lo = a * (u + 0.5 / n - 0.5) + b
        hi = a * (u + 0.5 - 0.5 / n) + b
        f = min(max(math.floor(min(lo, hi)), 0), n_src - 1)
        first[u] = f
        k = 0
        for j in range(n):
            x = a * (u + (j + 0.5) / n - 0.5) + b
            if -0.5 <= x < n_src - 0.5:
                x0 = math.floor(x)
                fx = x - x0
                # Within half a pixel of the edge the missing neighbour repeats the edge pixel.
                weights[u, max(x0, 0) - f] += 1.0 - fx
                weights[u, min(x0 + 1, n_src - 1) - f] += fx
                k += 1
        inside[u] = k
        if k:
            weights[u] /= k
    return first, weights, inside


def _rows(a: U8Array) -> tuple[U8Array, int]:
    """``a`` (h, w) as one contiguous run of bytes and its row pitch. Numba vectorises a loop
    over a row of that; over a row of a strided 2-D view (a window of a cached image) it cannot
    know the step is one byte."""
    if a.strides[1] != 1 or a.strides[0] < a.shape[1] or a.size == 0:
        a = np.ascontiguousarray(a)
    h, w = a.shape
    pitch = a.strides[0] if h else w
    size = (h - 1) * pitch + w if h else 0
    flat = np.lib.stride_tricks.as_strided(a, (size,), (1,), writeable=a.flags.writeable)
    return flat, pitch


@numba.njit(cache=True, nogil=True, parallel=True)
def _warp_separable(
    src: U8Array,
    pitch: int,
    w_src: int,
    ax: float,
    bx: float,
    ay: float,
    by: float,
    n: int,
    out: U8Array,
    alpha: U8Array,
    chunks: int,
    simd: int,
) -> None:
    """x = ax·u + bx, y = ay·v + by over ``src``, rows of ``w_src`` bytes ``pitch`` apart: the
    n × n supersampled bilinear mean factors into a vertical pass (whole source rows weighted
    into one float row, plain SIMD) and a horizontal one with per-column taps. ``simd``, if not
    0, is the address of hs_separable_row, which then does both passes of every row, provided
    every run of its columns' taps fits its window (_sep_tables; a step up to ~1.9).

    Only the loops over row chunks are parallel: the tables come from serial functions, since
    numba makes every array expression here a parallel region of its own, and waking the
    threads for each cost ~0.3 ms a call (a 64² warp took 0.4 ms on 2 threads, 12 µs on 1)."""
    h_src = (src.size - w_src) // pitch + 1 if src.size else 0
    h_out, w_out = out.shape
    fx, wx, cx = _axis_taps(w_out, w_src, ax, bx, n)
    fy, wy, cy = _axis_taps(h_out, h_src, ay, by, n)
    alpha_rows = _alpha_rows(cx, n)
    lo, hi, first = _columns(fx, wx.shape[1], w_src)
    if simd != 0:
        base, idx, wq, span, size = _sep_tables(first, wx, hi - lo)
        if span <= _SEP_WINDOW:
            wyq = _q14(wy)
            for c in numba.prange(chunks):
                _separable_rows_simd(
                    simd, src, pitch, h_src, lo, hi, ay, base, idx, wq, fy, wyq, cy, alpha_rows,
                    size, out, alpha, _row_order(h_out, c, chunks, ay < 0.0),
                )  # fmt: skip
            return
    wt, runs, frac = _numba_tables(first, wx, fx, ax, bx, w_src, n)
    for c in numba.prange(chunks):
        _separable_rows(
            src, pitch, first, wt, runs, frac, ax, fy, wy, cy, alpha_rows, lo, hi, out, alpha,
            _row_order(h_out, c, chunks, False),
        )  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _alpha_rows(cx: I64Array, n: int) -> U8Array:
    """Alpha of a row with k samples inside vertically, k = 0..n: one row per k, copied whole."""
    cover = _coverage(n * n)
    alpha_rows = np.empty((n + 1, cx.size), np.uint8)
    for k in range(n + 1):
        for u in range(cx.size):
            alpha_rows[k, u] = cover[cx[u] * k]
    return alpha_rows


@numba.njit(cache=True, nogil=True)
def _columns(fx: I64Array, taps: int, w_src: int) -> tuple[int, int, U32Array]:
    """The source columns [lo, hi) any output column's taps reach, and each output column's
    first tap relative to lo."""
    lo = fx.min()
    hi = min(fx.max() + taps, w_src)
    return lo, hi, (fx - lo).astype(np.uint32)


@numba.njit(cache=True, nogil=True)
def _numba_tables(
    first: U32Array, wx: F32Array, fx: I64Array, ax: float, bx: float, w_src: int, n: int
) -> tuple[F32Array, I64Array, F64Array]:
    """_separable_rows' column tables: the weights tap by tap, the column runs (_runs) and each
    column's position fraction."""
    w_out = first.size
    # One sample a pixel with both neighbours inside: the weights of tmp[first[u]] and the
    # next are 1 − w and w, w = the position's fraction, linear in u along a run.
    linear = np.zeros(w_out, np.bool_)
    frac = np.zeros(w_out, np.float64)
    if n == 1:
        for u in range(w_out):
            x = ax * u + bx
            linear[u] = 0.0 <= x < w_src - 1
            frac[u] = x - fx[u]
    return np.ascontiguousarray(wx.T), _runs(first, linear), frac


@numba.njit(cache=True, nogil=True)
def _q14(w: F32Array) -> npt.NDArray[np.int16]:
    """Tap weights (rows of them summing to 1 or 0) in 1/16384, rounded, each row's sum kept
    exact by its largest weight: a flat image stays flat, an identity stays a copy."""
    q = np.empty(w.shape, np.int16)
    for r in range(w.shape[0]):
        total = 0.0
        big = 0
        got = 0
        for k in range(w.shape[1]):
            total += w[r, k]
            q[r, k] = np.int16(math.floor(w[r, k] * 16384.0 + 0.5))
            got += q[r, k]
            if w[r, k] > w[r, big]:
                big = k
        q[r, big] += np.int16(math.floor(total * 16384.0 + 0.5) - got)
    return q


@numba.njit(cache=True, nogil=True)
def _sep_tables(
    first: U32Array, wx: F32Array, width: int
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int16], npt.NDArray[np.int16], int, int]:
    """hs_separable_row's column tables: per run of SEP_LANES output columns the line index
    its window starts at and whether its taps are consecutive (1, else 0), per column its first
    tap's index in that window, and per run its weights tap by tap (1/16384). Last: the widest
    window any run needs, and the words of line the rows need for ``width`` source columns: a
    window from every base and the vertical pass's 32-word steps. A tap with no weight in any
    column is left out: at whole-pixel positions (a flip about a pixel centre, an integer shift)
    one tap a column is left."""
    lanes = _SEP_LANES
    q = _q14(wx)
    w_out, taps = q.shape
    t0 = 0
    t1 = taps
    while t1 - t0 > 1 and not q[:, t0].any():
        t0 += 1
    while t1 - t0 > 1 and not q[:, t1 - 1].any():
        t1 -= 1
    taps = t1 - t0
    runs = -(-w_out // lanes)
    base = np.zeros((runs, 2), np.int32)
    idx = np.zeros(runs * lanes, np.int16)
    wq = np.zeros((runs, taps, lanes), np.int16)
    span = 0
    for c in range(runs):
        u0 = c * lanes
        u1 = min(u0 + lanes, w_out)
        b = first[u0:u1].min()
        base[c, 0] = b + t0
        base[c, 1] = 1
        span = max(span, first[u0:u1].max() - b + taps)
        for u in range(u0, u1):
            base[c, 1] &= first[u] - b == u - u0
            # Beyond the window the run does not go to hs_separable_row at all.
            idx[u] = min(first[u] - b, 32767)
            for k in range(taps):
                wq[c, k, u - u0] = q[u, t0 + k]
    size = max(base[:, 0].max() + _SEP_WINDOW, -(-width // 32) * 32)
    return base, idx, wq, span, size


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _separable_rows_simd(
    simd: int,
    src: U8Array,
    pitch: int,
    h_src: int,
    lo: int,
    hi: int,
    ay: float,
    base: npt.NDArray[np.int32],
    idx: npt.NDArray[np.int16],
    wq: npt.NDArray[np.int16],
    fy: I64Array,
    wyq: npt.NDArray[np.int16],
    cy: I64Array,
    alpha_rows: U8Array,
    size: int,
    out: U8Array,
    alpha: U8Array,
    rows: I64Array,
) -> None:
    """Output rows ``rows`` of _warp_separable, in that order, through hs_separable_row."""
    w_out = out.shape[1]
    line = np.zeros(size, np.int16)
    # Frames past the caches go out by non-temporal stores, through this row buffer.
    stream = out.size >= _STREAM_BYTES
    buf = np.zeros(w_out if stream else 0, np.uint8)
    src_at = np.int64(src.ctypes.data) + lo
    row_weights = np.int64(wyq.ctypes.data)
    base_at = np.int64(base.ctypes.data)
    idx_at = np.int64(idx.ctypes.data)
    wq_at = np.int64(wq.ctypes.data)
    taps = wyq.shape[1]
    # ``rows`` go in the order that reads the source upwards in memory (bottom up for a mirrored
    # vertical axis): hardware prefetch follows ascending addresses, a 180° turn read downwards
    # takes twice as long.
    step = 1 if ay >= 0.0 else -1
    # Source rows an output row has that the one before has not (prefetched during that one): as
    # many as the step, at the bottom of its taps; all its taps after a jump between blocks.
    fresh = min(math.ceil(abs(ay)), taps)
    for i in range(rows.size):
        v = rows[i]
        o = out[v]
        if cy[v] == 0:
            o[:] = 0
            alpha[v, :] = 0
            continue
        # Zero weights at either end (edge rows, or padding past the last row) are not read.
        k0 = 0
        k1 = taps
        while wyq[v, k0] == 0:
            k0 += 1
        while wyq[v, k1 - 1] == 0:
            k1 -= 1
        pf0 = 0
        pf1 = 0
        if i + 1 < rows.size:
            after = rows[i + 1]
            pf0 = fy[after] + taps - fresh if after == v + step else fy[after]
            pf1 = min(fy[after] + taps, h_src)
        args = (
            src_at + (fy[v] + k0) * pitch, np.int64(pitch), np.int64(k1 - k0),
            row_weights + 2 * (v * taps + k0), np.int64(hi - lo), np.int64(line.ctypes.data),
            src_at + pf0 * pitch, np.int64(max(pf1 - pf0, 0)), base_at, idx_at, wq_at,
            np.int64(wq.shape[1]), np.int64(w_out), np.int64(o.ctypes.data),
            np.int64(alpha[v].ctypes.data), np.int64(alpha_rows[cy[v]].ctypes.data),
            np.int64(buf.ctypes.data if stream else 0),
        )  # fmt: skip
        _call_c(np.int64(simd), args)


# Columns in a row whose first taps are consecutive before a run reads them as vectors.
_MIN_RUN = 16


@numba.njit(cache=True, nogil=True)
def _runs(first: U32Array, linear: npt.NDArray[np.bool_]) -> I64Array:
    """Column ranges (start, end, kind) covering the row in order. Kinds 1 and 2: first[u] − u
    is constant for at least _MIN_RUN columns (any step within 1/_MIN_RUN of 1: every
    native-scale layer), so the taps are plain vector loads; 2 where ``linear`` too (the
    weights then follow the position and need no table, whose loads would not fit in L1 beside
    the row). Kind 3: linear with first[u] + u constant, a mirrored axis (a 180° rotation).
    Kind 0: gathered."""
    runs = np.empty((first.size + 1, 3), np.int64)
    count = 0
    u = 0
    gather_from = 0
    while u < first.size:
        kind = 2 if linear[u] else 1
        e = u + 1
        f = np.int64(first[u])
        while e < first.size and first[e] - e == f - u and linear[e] == linear[u]:
            e += 1
        if e - u < _MIN_RUN and linear[u]:
            kind = 3
            e = u + 1
            while e < first.size and first[e] + e == f + u and linear[e]:
                e += 1
        if e - u >= _MIN_RUN:
            if gather_from < u:
                runs[count] = (gather_from, u, 0)
                count += 1
            runs[count] = (u, e, kind)
            count += 1
            gather_from = e
        u = e
    if gather_from < first.size:
        runs[count] = (gather_from, first.size, 0)
        count += 1
    return runs[:count]


@numba.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _separable_rows(
    src: U8Array,
    pitch: int,
    first: U32Array,
    wt: F32Array,
    runs: I64Array,
    frac: F64Array,
    ax: float,
    fy: I64Array,
    wy: F32Array,
    cy: I64Array,
    alpha_rows: U8Array,
    lo: int,
    hi: int,
    out: U8Array,
    alpha: U8Array,
    rows: I64Array,
) -> None:
    """Output rows ``rows`` of _warp_separable."""
    w_out = out.shape[1]
    # Padding past the source width: taps of edge columns may reach it with weight 0.
    tmp = np.zeros(first.max() + wt.shape[0], np.float32)
    line = tmp[: hi - lo]
    for v in rows:
        o = out[v]
        if cy[v] == 0:
            o[:] = 0
            continue
        _vertical(src, fy[v] * pitch + lo, pitch, wy[v], line)
        # Columns with no sample inside have all-zero weights and come out 0.
        for r in range(runs.shape[0]):
            u0 = runs[r, 0]
            u1 = runs[r, 1]
            kind = runs[r, 2]
            if kind == 2:
                _run_lerp(tmp, first[u0], frac[u0], ax - 1.0, o, u0, u1)
            elif kind == 3:
                _run_lerp_mirrored(tmp, first[u0], frac[u0], ax + 1.0, o, u0, u1)
            elif kind == 1:
                _run_taps(wt, tmp, first[u0], o, u0, u1)
            else:
                _gather_taps(wt, first, tmp, o, u0, u1)
    # Alpha afterwards: written beside the rows above it slows them (cache sets the rows share).
    # An explicit loop: numba's array-to-array slice assignment does not vectorise.
    for v in rows:
        a = alpha[v]
        a_row = alpha_rows[cy[v]]
        for u in range(w_out):
            a[u] = a_row[u]


@numba.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _vertical(src: U8Array, start: int, pitch: int, w: F32Array, line: F32Array) -> None:
    """line = Σ_k w[k] · source row k from ``start``. Zero weights at either end (edge rows, or
    padding past the last row) are not read; up to three rows in one pass over the line."""
    n = line.size
    k0 = 0
    k1 = w.size
    while k0 < k1 and w[k0] == 0.0:
        k0 += 1
    while k1 > k0 and w[k1 - 1] == 0.0:
        k1 -= 1
    if k0 == k1:
        line[:] = 0.0
        return
    a = src[start + k0 * pitch : start + k0 * pitch + n]
    wa = w[k0]
    if k1 - k0 == 1:
        for x in range(n):
            line[x] = wa * np.float32(a[x])
        return
    b = src[start + (k0 + 1) * pitch : start + (k0 + 1) * pitch + n]
    wb = w[k0 + 1]
    if k1 - k0 == 2:
        for x in range(n):
            line[x] = wa * np.float32(a[x]) + wb * np.float32(b[x])
        return
    c = src[start + (k0 + 2) * pitch : start + (k0 + 2) * pitch + n]
    wc = w[k0 + 2]
    for x in range(n):
        line[x] = wa * np.float32(a[x]) + wb * np.float32(b[x]) + wc * np.float32(c[x])
    for k in range(k0 + 3, k1):
        r = src[start + k * pitch : start + k * pitch + n]
        wk = w[k]
        for x in range(n):
            line[x] += wk * np.float32(r[x])


# Horizontal taps of a run of columns: no array is sliced, as numba takes a reference (an
# atomic increment) on every slice, which costs more than a short run itself.


@numba.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _run_lerp(t: F32Array, j: int, w: float, slope: float, o: U8Array, u0: int, u1: int) -> None:
    """o[u] = lerp(t[i], t[i + 1], w + slope·(u − u0)), i = j + u − u0, rounded, u in [u0, u1).
    The weight is a float induction (LLVM vectorises it) rather than converted from u: half the
    time."""
    wu = np.float32(w)
    dw = np.float32(slope)
    ti = _I(j)
    oi = _I(u0)
    for k in range(_I(u1 - u0)):
        a = t[ti + k]
        o[oi + k] = np.int32(a + wu * (t[ti + k + _I(1)] - a) + np.float32(0.5))
        wu += dw


@numba.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _run_lerp_mirrored(
    t: F32Array, j: int, w: float, slope: float, o: U8Array, u0: int, u1: int
) -> None:
    """_run_lerp with i = j − (u − u0): the source read backwards."""
    wu = np.float32(w)
    dw = np.float32(slope)
    ti = _I(j)
    oi = _I(u0)
    for k in range(_I(u1 - u0)):
        a = t[ti - k]
        o[oi + k] = np.int32(a + wu * (t[ti - k + _I(1)] - a) + np.float32(0.5))
        wu += dw


@numba.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _run_taps(wt: F32Array, t: F32Array, j: int, o: U8Array, u0: int, u1: int) -> None:
    """o[u] = Σ_k wt[k, u] · t[j + u − u0 + k], rounded, for u in [u0, u1)."""
    n = _I(u1 - u0)
    ti = _I(j)
    oi = _I(u0)
    if wt.shape[0] == 2:
        w0 = wt[0]
        w1 = wt[1]
        for k in range(n):
            i = ti + k
            u = oi + k
            o[u] = np.int32(w0[u] * t[i] + w1[u] * t[i + _I(1)] + np.float32(0.5))
        return
    if wt.shape[0] == 3:
        w0 = wt[0]
        w1 = wt[1]
        w2 = wt[2]
        for k in range(n):
            i = ti + k
            u = oi + k
            acc = w0[u] * t[i] + w1[u] * t[i + _I(1)] + w2[u] * t[i + _I(2)]
            o[u] = np.int32(acc + np.float32(0.5))
        return
    for k in range(n):
        i = ti + k
        u = oi + k
        acc = np.float32(0.5)
        for tap in range(wt.shape[0]):
            acc += wt[tap, u] * t[i + _I(tap)]
        o[u] = np.int32(min(acc, np.float32(255.0)))


@numba.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _gather_taps(wt: F32Array, first: U32Array, t: F32Array, o: U8Array, u0: int, u1: int) -> None:
    """o[u] = Σ_k wt[k, u] · t[first[u] + k], rounded, for u in [u0, u1)."""
    if wt.shape[0] == 2:
        w0 = wt[0]
        w1 = wt[1]
        for u in range(_I(u0), _I(u1)):
            i = _I(first[u])
            o[u] = np.int32(w0[u] * t[i] + w1[u] * t[i + _I(1)] + np.float32(0.5))
        return
    if wt.shape[0] == 3:
        w0 = wt[0]
        w1 = wt[1]
        w2 = wt[2]
        for u in range(_I(u0), _I(u1)):
            i = _I(first[u])
            acc = w0[u] * t[i] + w1[u] * t[i + _I(1)] + w2[u] * t[i + _I(2)]
            o[u] = np.int32(acc + np.float32(0.5))
        return
    for u in range(_I(u0), _I(u1)):
        i = _I(first[u])
        acc = np.float32(0.5)
        for tap in range(wt.shape[0]):
            acc += wt[tap, u] * t[i + _I(tap)]
        o[u] = np.int32(min(acc, np.float32(255.0)))


@numba.njit(cache=True, nogil=True, parallel=True)
def _warp_general(
    src: U8Array,
    flat: U8Array,
    pitch: int,
    m: F64Array,
    n: int,
    out: U8Array,
    alpha: U8Array,
    chunks: int,
    simd: int,
    simd_mean: int,
) -> None:
    """Any affine: n × n bilinear samples a pixel. Pixels whose whole footprint is inside the
    source take a fixed-point path (positions in 32.32, bilinear weights in 8 bits: 2× the speed
    of floating point, within one grey level of it); the rest a floating-point path with edge
    tests. ``flat`` and ``pitch`` are ``src`` as _rows gives it, for the fixed-point path.
    ``simd``, if not 0, is the address of hs_bilinear_row, which then samples the interior, and
    ``simd_mean`` that of hs_bilinear_mean_row, which takes the n × n mean for n > 1 (of samples
    rounded to whole grey levels: still within one of the exact mean)."""
    h_out = out.shape[0]
    off_x, off_y, fix_x, fix_y, scale, cover, mx, my = _sample_offsets(m, n)
    for c in numba.prange(chunks):
        _general_rows(
            src, flat, pitch, m, off_x, off_y, fix_x, fix_y, scale, cover, mx, my, out, alpha,
            _row_order(h_out, c, chunks, m[0, 1] < 0.0), simd, simd_mean,
        )  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _sample_offsets(
    m: F64Array, n: int
) -> tuple[F64Array, F64Array, I64Array, I64Array, F64Array, U8Array, float, float]:
    """_general_rows' tables for n × n samples a pixel: the samples' offsets from the pixel
    centre in the source (float and 32.32), the mean factor and coverage per count of samples
    inside, and the largest offset along each axis."""
    count = n * n
    off_x = np.empty(count, np.float64)
    off_y = np.empty(count, np.float64)
    for i in range(n):
        for j in range(n):
            du = (j + 0.5) / n - 0.5
            dv = (i + 0.5) / n - 0.5
            off_x[i * n + j] = m[0, 0] * du + m[0, 1] * dv
            off_y[i * n + j] = m[1, 0] * du + m[1, 1] * dv
    fix_x = np.empty(count, np.int64)
    fix_y = np.empty(count, np.int64)
    for k in range(count):
        fix_x[k] = _fixed(off_x[k])
        fix_y[k] = _fixed(off_y[k])
    # Per-hit-count mean factor and coverage, so the pixel loops have no integer division.
    scale = np.empty(count + 1, np.float64)
    for k in range(count + 1):
        scale[k] = 1.0 / max(k, 1)
    cover = _coverage(count)
    # Interior: every sample at least this far from the left/top and short of the last column
    # and row, so all four bilinear neighbours exist.
    mx = np.abs(off_x).max()
    my = np.abs(off_y).max()
    return off_x, off_y, fix_x, fix_y, scale, cover, mx, my


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _general_rows(
    src: U8Array,
    flat: U8Array,
    pitch: int,
    m: F64Array,
    off_x: F64Array,
    off_y: F64Array,
    fix_x: I64Array,
    fix_y: I64Array,
    scale: F64Array,
    cover: U8Array,
    mx: float,
    my: float,
    out: U8Array,
    alpha: U8Array,
    rows: I64Array,
    simd: int,
    simd_mean: int,
) -> None:
    """Output rows ``rows`` of _warp_general, in that order."""
    h_src, w_src = src.shape
    w_out = out.shape[1]
    count = off_x.size
    inv = 1.0 / (count * 65536.0)
    ax = _fixed(m[0, 0])
    ay = _fixed(m[1, 0])
    # Interior pixels of a row go in three passes over these: positions (vector arithmetic),
    # fetches of the four neighbours (the only scalar pass), then the bilinear sums (vector
    # arithmetic). One loop doing all three does not vectorise and takes twice as long.
    idx = np.empty(w_out, np.int64)
    fxs = np.empty(w_out, np.int32)
    fys = np.empty(w_out, np.int32)
    quads = np.empty(w_out, np.uint32)
    acc = np.empty(w_out, np.int64)
    # hs_bilinear_mean_row's sub-row of samples and running sums (the Numba path sums in acc).
    sample = np.empty(w_out * round(math.sqrt(count)) if simd_mean else 0, np.uint8)
    sums = np.empty(w_out if simd_mean else 0, np.uint16)
    # ``rows`` go in the order that moves their source paths rightwards, to higher addresses
    # (bottom up if m[0, 1] < 0): the other order takes twice as long at 4096² (measured at
    # ±10°; cache prefetch follows addresses up).
    for v in rows:
        row_x = m[0, 1] * v + m[0, 2]
        row_y = m[1, 1] * v + m[1, 2]
        o = out[v]
        a = alpha[v]
        xa, xb = _span(m[0, 0], row_x, mx, w_src - 1.001 - mx, w_out)
        ya, yb = _span(m[1, 0], row_y, my, h_src - 1.001 - my, w_out)
        ua, ub = max(xa, ya), min(xb, yb)
        # Outside [oa, ob) every sample misses the source: transparent without a test a sample.
        xa, xb = _span(m[0, 0], row_x, -0.5 - mx, w_src - 0.5 + mx, w_out)
        ya, yb = _span(m[1, 0], row_y, -0.5 - my, h_src - 0.5 + my, w_out)
        oa = min(max(max(xa, ya) - 1, 0), w_out)
        ob = min(max(min(xb, yb) + 1, 0), w_out)
        if ua >= ub:
            ua = ub = max(oa, min(ob, w_out))
        oa = min(oa, ua)
        ob = max(ob, ub)
        for u in range(_I(0), _I(oa)):
            o[u] = 0
            a[u] = 0
        for u in range(_I(ob), _I(w_out)):
            o[u] = 0
            a[u] = 0
        for u in range(oa, ua):
            o[u], a[u] = _edge_pixel(
                src, row_x + m[0, 0] * u, row_y + m[1, 0] * u, off_x, off_y, scale, cover
            )
        # Half a weight step added once rounds the positions to the nearest 1/256 pixel.
        px = _fixed(row_x + m[0, 0] * ua) + (1 << (_FIX - 9))
        py = _fixed(row_y + m[1, 0] * ua) + (1 << (_FIX - 9))
        for u in range(_I(ua), _I(ub)):
            a[u] = 255
        n_in = ub - ua
        if simd != 0 and n_in > 0:
            _simd_interior(
                simd, simd_mean, flat, pitch, px, py, ax, ay, fix_x, fix_y, n_in, o, ua, sample,
                sums,
            )  # fmt: skip
            n_in = 0
        for k in range(count if n_in > 0 else 0):
            _positions(px + fix_x[k], py + fix_y[k], ax, ay, pitch, idx, fxs, fys, n_in)
            _fetch(flat, pitch, idx, quads, n_in)
            if count == 1:
                _bilinear_run(quads, fxs, fys, n_in, o, ua)
            else:
                _accumulate(quads, fxs, fys, n_in, acc, k == 0)
        if count > 1:
            for i in range(n_in):
                o[_I(ua) + _I(i)] = np.int32(acc[i] * inv)
        for u in range(ub, ob):
            o[u], a[u] = _edge_pixel(
                src, row_x + m[0, 0] * u, row_y + m[1, 0] * u, off_x, off_y, scale, cover
            )


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _simd_interior(
    simd: int,
    simd_mean: int,
    flat: U8Array,
    pitch: int,
    px: int,
    py: int,
    ax: int,
    ay: int,
    fix_x: I64Array,
    fix_y: I64Array,
    n: int,
    o: U8Array,
    u0: int,
    sample: U8Array,
    sums: npt.NDArray[np.uint16],
) -> None:
    """o[u0 + i], i < n: the bilinear sample at offset (fix_x, fix_y) through hs_bilinear_row
    (address ``simd``), or the mean of the side × side samples at those offsets through
    hs_bilinear_mean_row (``simd_mean``). A pixel's samples in one of its sub-rows continue
    those of the pixel before at the same spacing, so each sub-row is one run of side·n samples
    at step/side: the source rows a run of 32 crosses are fewer by side than sampling each
    offset across the row in turn."""
    src = np.int64(flat.ctypes.data)
    count = fix_x.size
    if count == 1:
        args = (
            src, np.int64(flat.size), np.int64(pitch), np.int64(px + fix_x[0]),
            np.int64(py + fix_y[0]), np.int64(ax), np.int64(ay), np.int64(n),
            np.int64(o.ctypes.data + u0),
        )  # fmt: skip
        _call_c(np.int64(simd), args)
        return
    side = np.int64(round(math.sqrt(count)))
    mean_args = (
        src, np.int64(flat.size), np.int64(pitch), np.int64(px), np.int64(py),
        np.int64((ax + side // 2) // side), np.int64((ay + side // 2) // side), np.int64(n), side,
        np.int64(fix_x.ctypes.data), np.int64(fix_y.ctypes.data), np.int64(sample.ctypes.data),
        np.int64(sums.ctypes.data), np.int64(o.ctypes.data + u0),
    )  # fmt: skip
    _call_c(np.int64(simd_mean), mean_args)


@numba.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _positions(
    px: int,
    py: int,
    ax: int,
    ay: int,
    pitch: int,
    idx: I64Array,
    fxs: I32Array,
    fys: I32Array,
    n: int,
) -> None:
    """For samples i < n at 32.32 (px + i·ax, py + i·ay): the index of the top-left neighbour in
    rows ``pitch`` apart, and the 8-bit weights of the right and lower ones."""
    for i in range(n):
        sx = px + ax * i
        sy = py + ay * i
        idx[i] = (sy >> _FIX) * pitch + (sx >> _FIX)
        fxs[i] = (sx >> (_FIX - 8)) & 0xFF
        fys[i] = (sy >> (_FIX - 8)) & 0xFF


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _fetch(src: U8Array, pitch: int, idx: I64Array, quads: U32Array, n: int) -> None:
    """quads[i]: the four neighbours from idx[i] as the bytes of one word, left to right, top
    to bottom."""
    down = _I(pitch)
    one = _I(1)
    for i in range(n):
        j = _I(idx[i])
        quads[i] = (
            _U(src[j])
            | _U(src[j + one]) << _U(8)
            | _U(src[j + down]) << _U(16)
            | _U(src[j + down + one]) << _U(24)
        )


@numba.njit(cache=True, nogil=True, inline="always")
def _bilinear_quad(q: np.uint32, fx: np.int32, fy: np.int32) -> np.int32:
    """Bilinear sample ×65536, rounded, of the neighbours packed in q with 8-bit weights."""
    p = np.int32(q & _U(0xFF))
    r = np.int32((q >> _U(8)) & _U(0xFF))
    s = np.int32((q >> _U(16)) & _U(0xFF))
    t = np.int32(q >> _U(24))
    top = (p << 8) + (r - p) * fx
    bottom = (s << 8) + (t - s) * fx
    return (top << 8) + (bottom - top) * fy + np.int32(32768)


@numba.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _bilinear_run(
    quads: U32Array, fxs: I32Array, fys: I32Array, n: int, o: U8Array, u0: int
) -> None:
    """o[u0 + i] = the bilinear samples, i < n."""
    for i in range(n):
        o[_I(u0) + _I(i)] = _bilinear_quad(quads[i], fxs[i], fys[i]) >> 16


@numba.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _accumulate(
    quads: U32Array, fxs: I32Array, fys: I32Array, n: int, acc: I64Array, first: bool
) -> None:
    """acc[i] (+)= the bilinear samples ×65536, i < n."""
    if first:
        for i in range(n):
            acc[i] = _bilinear_quad(quads[i], fxs[i], fys[i])
    else:
        for i in range(n):
            acc[i] += _bilinear_quad(quads[i], fxs[i], fys[i])


@numba.njit(cache=True, nogil=True)
def radial_mask(alpha: U8Array, cx: float, cy: float, r_in: float, r_out: float) -> None:
    """Scale ``alpha`` in place by an annulus around ``(cx, cy)``, radii in output pixels.

    Coverage ramps linearly over one pixel at each edge, so the occulter's rim is antialiased.
    """
    h, w = alpha.shape
    for v in range(h):
        dy2 = (v - cy) ** 2
        for u in range(w):
            a = alpha[v, u]
            if a == 0:
                continue
            r = math.sqrt((u - cx) ** 2 + dy2)
            cov = min(max(r - r_in + 0.5, 0.0), 1.0) * min(max(r_out - r + 0.5, 0.0), 1.0)
            alpha[v, u] = int(a * cov + 0.5)


# Colour byte shifts within the word, and pixels per thread below which another is not worth
# waking: 35–85 µs on this 2-vCPU VM (passive waiting, heliostat/__init__.py), against 0.3 (a
# shift) to 0.6 ns (a rotation) a pixel; 2 threads gained nothing on a 512² shift.
_RGB_SHIFTS = tuple(k for k in range(0, 32, 8) if k != _ALPHA_SHIFT)
_MIN_PIXELS_PER_THREAD = 1 << 18
_U = np.uint32


@numba.njit(cache=True, nogil=True, inline="always")
def _scaled_alpha(s: np.uint32, opacity: int) -> np.uint32:
    # round(alpha · opacity / 100): x // 100 == (x · 5243) >> 19 for x < 43699.
    return (((s >> _ALPHA_SHIFT) & _U(0xFF)) * _U(opacity) + _U(50)) * _U(5243) >> _U(19)


@numba.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _opaque(row: U32Array) -> bool:
    low = _U(255)
    for u in range(row.size):
        low = min(low, (_U(row[u]) >> _U(_ALPHA_SHIFT)) & _U(0xFF))
    return bool(low == _U(255))


@numba.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _blend_row_opaque(src: U32Array, opacity: int, dst: U32Array) -> None:
    """OVER an opaque row: x·a + y·(255 − a), two channels a multiply, exact /255 rounding."""
    mask = _U(0x00FF00FF)
    half = _U(0x00800080)
    for u in range(src.size):
        s = _U(src[u])
        d = _U(dst[u])
        sa = _scaled_alpha(s, opacity)
        inv = _U(255) - sa
        # Every 16-bit field stays below 255² + 128, so fields never carry into each other.
        lo = (s & mask) * sa + (d & mask) * inv + half
        hi = ((s >> _U(8)) & mask) * sa + ((d >> _U(8)) & mask) * inv + half
        lo = ((lo + ((lo >> _U(8)) & mask)) >> _U(8)) & mask
        hi = ((hi + ((hi >> _U(8)) & mask)) >> _U(8)) & mask
        dst[u] = (lo | (hi << _U(8))) & _U(_RGB_BITS) | _U(_ALPHA_BITS)


@numba.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _blend_row(src: U32Array, opacity: int, dst: U32Array) -> None:
    """OVER with any canvas alpha: straight alpha needs a division by the new alpha.

    Scaled by 255² the numerators are integers below 2²⁴, exact in float32, and a float32
    reciprocal vectorises where an integer division does not; results stay within ±0.5 + 2⁻¹⁶ of
    the exact quotient before rounding.
    """
    for u in range(src.size):
        s = _U(src[u])
        d = _U(dst[u])
        sa = _scaled_alpha(s, opacity)
        t = ((d >> _U(_ALPHA_SHIFT)) & _U(0xFF)) * (_U(255) - sa)
        total = sa * _U(255) + t
        k = sa * _U(255)
        rcp = np.float32(1.0) / np.float32(max(total, _U(1)))
        word = ((total + _U(128) + ((total + _U(128)) >> _U(8))) >> _U(8)) << _U(_ALPHA_SHIFT)
        for shift in _RGB_SHIFTS:
            num = ((s >> _U(shift)) & _U(0xFF)) * k + ((d >> _U(shift)) & _U(0xFF)) * t
            word |= _U(np.float32(num) * rcp + np.float32(0.5)) << _U(shift)
        # Nothing on either side: the canvas stays as it was.
        dst[u] = word if total != _U(0) else d


@numba.njit(cache=True, nogil=True, parallel=True)
def _blend_words(layer: U32Array, opacity: int, canvas: U32Array, chunks: int) -> None:
    h = canvas.shape[0]
    for c in numba.prange(chunks):
        for v in range(c * h // chunks, (c + 1) * h // chunks):
            if _opaque(canvas[v]):
                _blend_row_opaque(layer[v], opacity, canvas[v])
            else:
                _blend_row(layer[v], opacity, canvas[v])


def _threads(rows: int, width: int) -> int:
    """Row chunks to run in parallel: one per thread, but no thread for a sliver of work."""
    # numba.get_num_threads inside a kernel would stop numba caching it.
    return max(1, min(numba.get_num_threads(), rows, rows * width // _MIN_PIXELS_PER_THREAD))


@contextlib.contextmanager
def _threads_for(chunks: int) -> Iterator[None]:
    """Numba's threads for a kernel call in ``chunks`` row chunks: all of them, or this one alone
    for a single chunk. A parallel region wakes every thread even when one has all the work:
    ~60 µs a call on this 2-vCPU VM (a 128² warp took 99 µs, 24 µs alone)."""
    if chunks > 1:
        yield
        return
    threads = numba.get_num_threads()
    numba.set_num_threads(1)  # this Python thread's setting only
    try:
        yield
    finally:
        numba.set_num_threads(threads)


def _words(a: U8Array) -> U32Array:
    return a.view(np.uint32)[..., 0]


def blend_over(layer: U8Array, opacity: int, canvas: U8Array) -> None:
    """Draw ``layer`` (h, w, 4) at ``opacity`` percent OVER ``canvas`` (h, w, 4), in place.

    Both are straight (not premultiplied) RGBA uint8 with contiguous rows, as PNG and WebP store
    it; every result is rounded to the nearest integer.
    """
    for name, a in (("layer", layer), ("canvas", canvas)):
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 4 or a.strides[1:] != (4, 1):
            raise ValueError(f"{name}: expected (h, w, 4) uint8 with contiguous pixels")
    if layer.shape != canvas.shape:
        raise ValueError(f"layer: shape {layer.shape} differs from canvas shape {canvas.shape}")
    if not 0 <= opacity <= 100:
        raise ValueError(f"opacity: expected 0..100, got {opacity}")
    chunks = _threads(canvas.shape[0], canvas.shape[1])
    with _threads_for(chunks):
        _blend_words(_words(layer), opacity, _words(canvas), chunks)

"""The per-pixel warp path: any affine, rotated ones included.

Interior pixels (every sample with its four neighbours inside the source) go through vectorised
position and bilinear passes around one scalar fetch of the four neighbours; or, on a CPU with
AVX-512 VBMI and within ~20° of the axes, through hs_bilinear_row (ext/bilinear_row.h: byte
permutes of the source rows a run of 32 pixels crosses instead of four loads a pixel; 1.5–4×
faster). The rest, near the edges, take a floating-point path with edge tests.

A two-pass (sheared) decomposition of the rotation was tried and not adopted. It is not bilinear
sampling: at 10° it is up to 2.2 grey levels from bilinear on AIA and 10 on LASCO (stars), and
at 40° its rms error against a quintic spline is 40 % above bilinear's. It was no faster
either: a strip-tiled AVX-512 prototype rotated a 4096² frame by 10° in 14–18 ms on one thread
against 15–17 ms for hs_bilinear_row, and took 0.84 against 0.69 ns a pixel with the source in
cache. Its second pass crosses as many rows as hs_bilinear_row does. Runs of 32 output pixels
along a source row's direction instead (a staircase through ~7 output rows, crossing 3 source
rows rather than ~8) were prototyped as well: writing each run with a masked store a row cost
what the rows saved (0.25 against 0.23 ms for 512² in cache, 28 against 15 ms at 4096²).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

from heliostat.imaging.threads import row_order
from heliostat.imaging.warp import native
from heliostat.imaging.warp.native import call_c
from heliostat.imaging.warp.sampling import INDEX as _I
from heliostat.imaging.warp.sampling import coverage

U8Array = npt.NDArray[np.uint8]
U32Array = npt.NDArray[np.uint32]
F64Array = npt.NDArray[np.float64]
I64Array = npt.NDArray[np.int64]
I32Array = npt.NDArray[np.int32]

# Fractional bits of the fixed-point source positions.
_FIX = 32
_ONE = float(1 << _FIX)
_U = np.uint32


# Largest row step down the source (per output pixel) for which the SIMD kernel wins: it loads
# every source row that 32 samples cross, ~32·step + 2 of them; past ~20° of rotation that
# costs what gathering does (measured at 10°, 30°, 60° and 95°).
_SIMD_MAX_DROP = 0.36


def simd_row(m: F64Array, n: int) -> tuple[int, int]:
    """Addresses of the SIMD row kernels, hs_bilinear_row and hs_bilinear_mean_row, if they
    serve this matrix's sample steps along a row (n × n samples a pixel, up to 16 × 16: the
    sums stay 16-bit), else 0s."""
    fits = abs(m[0, 0]) / n <= native.MAX_STEP and abs(m[1, 0]) / n <= _SIMD_MAX_DROP
    if not (fits and n <= 16 and native.BILINEAR_ROW):
        return 0, 0
    return native.BILINEAR_ROW, native.BILINEAR_MEAN_ROW


@numba.njit(cache=True, nogil=True, parallel=True)
def warp_general(
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
    tests. ``flat`` and ``pitch`` are ``src`` as flat_rows gives it, for the fixed-point path.
    ``simd``, if not 0, is the address of hs_bilinear_row, which then samples the interior, and
    ``simd_mean`` that of hs_bilinear_mean_row, which takes the n × n mean for n > 1 (of samples
    rounded to whole grey levels: still within one of the exact mean)."""
    h_out = out.shape[0]
    off_x, off_y, fix_x, fix_y, scale, cover, mx, my = _sample_offsets(m, n)
    for c in numba.prange(chunks):
        _general_rows(
            src, flat, pitch, m, off_x, off_y, fix_x, fix_y, scale, cover, mx, my, out, alpha,
            row_order(h_out, c, chunks, m[0, 1] < 0.0), simd, simd_mean,
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
    cover = coverage(count)
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
    """Output rows ``rows`` of warp_general, in that order."""
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
        call_c(np.int64(simd), args)
        return
    side = np.int64(round(math.sqrt(count)))
    mean_args = (
        src, np.int64(flat.size), np.int64(pitch), np.int64(px), np.int64(py),
        np.int64((ax + side // 2) // side), np.int64((ay + side // 2) // side), np.int64(n), side,
        np.int64(fix_x.ctypes.data), np.int64(fix_y.ctypes.data), np.int64(sample.ctypes.data),
        np.int64(sums.ctypes.data), np.int64(o.ctypes.data + u0),
    )  # fmt: skip
    call_c(np.int64(simd_mean), mean_args)


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

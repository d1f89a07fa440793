"""The separable warp path: matrices without rotation (scale, shift, mirror).

The n × n mean of bilinear samples factors into a vertical and a horizontal pass with per-row
and per-column weight tables (warp_separable), within one grey level of the per-pixel path
(heliostat.imaging.warp.general) and with the same alpha. The vertical pass weights whole source
rows into a float row; the horizontal one reads that row with vector loads along runs of columns
whose taps are consecutive (any step near ±1: every native-scale layer), and gathers elsewhere.
On a CPU with AVX-512 BW both passes of a row run in hs_separable_row instead
(ext/separable_row.h: 16-bit lanes and 1/16384 weights, taps by word permutes from a 64-word
window wherever they fall, so steps up to 1.9 and mirrors too; non-temporal stores for frames
past 8 MiB; 1.1–3× faster).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

from heliostat.imaging.threads import row_order
from heliostat.imaging.warp.native import SEP_LANES, SEP_WINDOW, call_c
from heliostat.imaging.warp.sampling import INDEX as _I
from heliostat.imaging.warp.sampling import coverage

U8Array = npt.NDArray[np.uint8]
U32Array = npt.NDArray[np.uint32]
F32Array = npt.NDArray[np.float32]
F64Array = npt.NDArray[np.float64]
I64Array = npt.NDArray[np.int64]

# Output size from which hs_separable_row writes past the caches (the source, output and alpha
# then no longer fit a 32 MiB L3 together), as memcpy does for large copies.
_STREAM_BYTES = 8 << 20


@numba.njit(cache=True, nogil=True, parallel=True)
def warp_separable(
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
        if span <= SEP_WINDOW:
            wyq = _q14(wy)
            for c in numba.prange(chunks):
                _separable_rows_simd(
                    simd, src, pitch, h_src, lo, hi, ay, base, idx, wq, fy, wyq, cy, alpha_rows,
                    size, out, alpha, row_order(h_out, c, chunks, ay < 0.0),
                )  # fmt: skip
            return
    wt, runs, frac = _numba_tables(first, wx, fx, ax, bx, w_src, n)
    for c in numba.prange(chunks):
        _separable_rows(
            src, pitch, first, wt, runs, frac, ax, fy, wy, cy, alpha_rows, lo, hi, out, alpha,
            row_order(h_out, c, chunks, False),
        )  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _alpha_rows(cx: I64Array, n: int) -> U8Array:
    """Alpha of a row with k samples inside vertically, k = 0..n: one row per k, copied whole."""
    cover = coverage(n * n)
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
    lanes = SEP_LANES
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
    size = max(base[:, 0].max() + SEP_WINDOW, -(-width // 32) * 32)
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
    """Output rows ``rows`` of warp_separable, in that order, through hs_separable_row."""
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
        call_c(np.int64(simd), args)


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
    """Output rows ``rows`` of warp_separable."""
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

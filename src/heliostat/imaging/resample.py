"""Axis-aligned resampling kernel: scale and shift an 8-bit image, antialiased when shrinking.

Output pixel ``u`` takes its value around source position ``x0 + (u + 0.5) * sx - 0.5`` (pixel
centres at integer positions), filtered with a triangle of half-width ``max(1, sx)``: bilinear
interpolation when enlarging, an area-weighted average when shrinking. With ``sx == 1`` and an
integer offset it is an exact copy. Samples whose centre falls outside the source get alpha 0.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt


@numba.njit(cache=True, nogil=True)
def _axis_weights(
    n_out: int, n_src: int, x0: float, sx: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32], int]:
    radius = max(1.0, sx)
    taps = math.ceil(radius) * 2 + 1
    first = np.zeros(n_out, np.int64)
    count = np.zeros(n_out, np.int64)
    weights = np.zeros((n_out, taps), np.float32)
    for u in range(n_out):
        c = x0 + (u + 0.5) * sx - 0.5
        lo = max(math.floor(c - radius) + 1, 0)
        hi = min(math.ceil(c + radius) - 1, n_src - 1)
        if hi - lo + 1 > taps:
            hi = lo + taps - 1
        total = 0.0
        k = 0
        for i in range(lo, hi + 1):
            w = 1.0 - abs(i - c) / radius
            if w > 0.0:
                if k == 0:
                    first[u] = i
                weights[u, k] = w
                total += w
                k += 1
        count[u] = k
        if total > 0.0:
            for j in range(k):
                weights[u, j] /= total
    return first, count, weights, taps


@numba.njit(cache=True, nogil=True)
def resample(
    src: npt.NDArray[np.uint8],
    x0: float,
    y0: float,
    sx: float,
    sy: float,
    out: npt.NDArray[np.uint8],
    alpha: npt.NDArray[np.uint8],
) -> None:
    """Fill ``out`` (and ``alpha``: 255 inside the source, 0 outside) from ``src``.

    ``src`` may be a strided view (a slice of a larger decoded image).
    """
    h_src, w_src = src.shape
    h_out, w_out = out.shape
    fx, cx, wx, _ = _axis_weights(w_out, w_src, x0, sx)
    fy, cy, wy, _ = _axis_weights(h_out, h_src, y0, sy)
    # Horizontal pass over just the source rows the vertical pass needs.
    row_lo = h_src
    row_hi = -1
    for v in range(h_out):
        if cy[v] > 0:
            row_lo = min(row_lo, fy[v])
            row_hi = max(row_hi, fy[v] + cy[v] - 1)
    if row_hi < row_lo:
        out[:, :] = 0
        alpha[:, :] = 0
        return
    tmp = np.empty((row_hi - row_lo + 1, w_out), np.float32)
    for r in range(row_lo, row_hi + 1):
        line = src[r]
        for u in range(w_out):
            acc = np.float32(0.0)
            f = fx[u]
            for k in range(cx[u]):
                acc += wx[u, k] * np.float32(line[f + k])
            tmp[r - row_lo, u] = acc
    for v in range(h_out):
        cyv = y0 + (v + 0.5) * sy - 0.5
        inside_y = -0.5 <= cyv < h_src - 0.5 and cy[v] > 0
        f = fy[v] - row_lo
        for u in range(w_out):
            cxu = x0 + (u + 0.5) * sx - 0.5
            if inside_y and -0.5 <= cxu < w_src - 0.5 and cx[u] > 0:
                acc = np.float32(0.0)
                for k in range(cy[v]):
                    acc += wy[v, k] * tmp[f + k, u]
                val = int(acc + 0.5)
                out[v, u] = 255 if val > 255 else (0 if val < 0 else val)
                alpha[v, u] = 255
            else:
                out[v, u] = 0
                alpha[v, u] = 0

"""Alpha compositing of screenshot layers.

``blend_over`` draws one straight-alpha RGBA layer over a straight-alpha RGBA canvas, Porter–Duff
OVER, the way Helioviewer stacks screenshot layers: branch-free loops over 32-bit pixels that
LLVM vectorises, integer arithmetic over an opaque canvas row, float32 where the canvas row has
partial alpha (straight alpha needs a division).
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

from heliostat.imaging.rgba import ALPHA_BITS, ALPHA_SHIFT, RGB_BITS, words
from heliostat.imaging.threads import threads, threads_for

U8Array = npt.NDArray[np.uint8]
U32Array = npt.NDArray[np.uint32]

# Colour byte shifts within the word.
_RGB_SHIFTS = tuple(k for k in range(0, 32, 8) if k != ALPHA_SHIFT)
_U = np.uint32


@numba.njit(cache=True, nogil=True, inline="always")
def _scaled_alpha(s: np.uint32, opacity: int) -> np.uint32:
    # round(alpha · opacity / 100): x // 100 == (x · 5243) >> 19 for x < 43699.
    return (((s >> ALPHA_SHIFT) & _U(0xFF)) * _U(opacity) + _U(50)) * _U(5243) >> _U(19)


@numba.njit(cache=True, nogil=True, fastmath=True, boundscheck=False)
def _opaque(row: U32Array) -> bool:
    low = _U(255)
    for u in range(row.size):
        low = min(low, (_U(row[u]) >> _U(ALPHA_SHIFT)) & _U(0xFF))
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
        dst[u] = (lo | (hi << _U(8))) & _U(RGB_BITS) | _U(ALPHA_BITS)


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
        t = ((d >> _U(ALPHA_SHIFT)) & _U(0xFF)) * (_U(255) - sa)
        total = sa * _U(255) + t
        k = sa * _U(255)
        rcp = np.float32(1.0) / np.float32(max(total, _U(1)))
        word = ((total + _U(128) + ((total + _U(128)) >> _U(8))) >> _U(8)) << _U(ALPHA_SHIFT)
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
    chunks = threads(canvas.shape[0], canvas.shape[1])
    with threads_for(chunks):
        _blend_words(words(layer), opacity, words(canvas), chunks)

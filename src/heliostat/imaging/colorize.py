"""Colouring: 8-bit index images through a 256-entry lookup table into RGB(A) pixels.

The public functions validate their arguments, then run compiled numba loops that release the
GIL, so concurrent requests colour tiles on every core. ``src`` may be any 2-D uint8 array,
including a strided window such as ``big[y0:y1, x0:x1]`` of a larger decoded image; ``out``
(allocated when None) must have a contiguous last axis, so it too may be a window of a larger
canvas. Each function returns ``out``.

Nothing checks bounds inside the loops: the wrappers' shape checks are what keep them in memory.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

from heliostat.imaging.rgba import ALPHA_SHIFT, RGB_BITS, words

U8Array = npt.NDArray[np.uint8]


@numba.njit(cache=True, nogil=True)
def _lut_words(src, lut32, out32):  # type: ignore[no-untyped-def]
    h, w = src.shape
    for i in range(h):
        s = src[i]
        o = out32[i]
        for j in range(w):
            o[j] = lut32[s[j]]


@numba.njit(cache=True, nogil=True)
def _lut_words_masked(src, mask, lut32, out32):  # type: ignore[no-untyped-def]
    h, w = src.shape
    for i in range(h):
        s = src[i]
        m = mask[i]
        o = out32[i]
        for j in range(w):
            a = m[j]
            if a == 255:
                o[j] = lut32[s[j]]
            elif a == 0:
                o[j] = 0
            else:
                word = lut32[s[j]]
                la = (word >> ALPHA_SHIFT) & 0xFF
                o[j] = (word & RGB_BITS) | (((la * a + 127) // 255) << ALPHA_SHIFT)


@numba.njit(cache=True, nogil=True)
def _lut_rgb(src, lut, out):  # type: ignore[no-untyped-def]
    h, w = src.shape
    for i in range(h):
        s = src[i]
        o = out[i]
        for j in range(w):
            v = s[j]
            o[j, 0] = lut[v, 0]
            o[j, 1] = lut[v, 1]
            o[j, 2] = lut[v, 2]


@numba.njit(cache=True, nogil=True)
def _lut_words_over_black(src, mask, lut32, out32):  # type: ignore[no-untyped-def]
    h, w = src.shape
    for i in range(h):
        s = src[i]
        m = mask[i]
        o = out32[i]
        for j in range(w):
            a = m[j]
            if a == 255:
                o[j] = lut32[s[j]]
            elif a == 0:
                o[j] = 0
            else:
                # Every byte of the word scales alike, so the byte order does not matter.
                word = lut32[s[j]]
                scaled = 0
                for shift in range(0, 32, 8):
                    scaled |= ((((word >> shift) & 0xFF) * a + 127) // 255) << shift
                o[j] = scaled


@numba.njit(cache=True, nogil=True)
def _lut_bytes_over_black(src, mask, lut, out):  # type: ignore[no-untyped-def]
    h, w = src.shape
    c = lut.shape[1]
    for i in range(h):
        s = src[i]
        m = mask[i]
        o = out[i]
        for j in range(w):
            a = np.int32(m[j])
            v = s[j]
            if a == 255:
                for k in range(c):
                    o[j, k] = lut[v, k]
            elif a == 0:
                for k in range(c):
                    o[j, k] = 0
            else:
                for k in range(c):
                    o[j, k] = (np.int32(lut[v, k]) * a + 127) // 255


@numba.njit(cache=True, nogil=True)
def _opaque_histogram(src, mask, hist):  # type: ignore[no-untyped-def]
    transparent = 0
    partial = 0
    h, w = src.shape
    for i in range(h):
        for j in range(w):
            a = mask[i, j]
            if a == 255:
                hist[src[i, j]] += 1
            elif a == 0:
                transparent += 1
            else:
                partial += 1
    return transparent, partial


def _check_image(name: str, a: np.ndarray) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D uint8 array, got {_describe(a)}")


def _check_lut(lut: np.ndarray, channels: int | None) -> None:
    ok = isinstance(lut, np.ndarray) and lut.dtype == np.uint8 and lut.ndim == 2
    if not ok or lut.shape[0] != 256 or (channels is not None and lut.shape[1] != channels):
        want = f"(256, {channels})" if channels is not None else "(256, channels)"
        raise ValueError(f"lut: expected a {want} uint8 array, got {_describe(lut)}")


def _describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__


def _out(out: U8Array | None, shape: tuple[int, ...]) -> U8Array:
    if out is None:
        return np.empty(shape, dtype=np.uint8)
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != shape:
        raise ValueError(f"out: expected a uint8 array of shape {shape}, got {_describe(out)}")
    if not out.flags.writeable:
        raise ValueError("out: array is read-only")
    if out.strides[-1] != 1:
        raise ValueError("out: the channel axis must be contiguous")
    return out


def _lut_words_of(lut: U8Array) -> npt.NDArray[np.uint32]:
    return np.ascontiguousarray(lut).view(np.uint32).reshape(256)


def apply_lut_rgba(src: U8Array, lut: U8Array, out: U8Array | None = None) -> U8Array:
    """out[i, j] = lut[src[i, j]]: (h, w) indices through a (256, 4) table into (h, w, 4).

    Each pixel is one 32-bit load from the packed table and one 32-bit store.
    """
    _check_image("src", src)
    _check_lut(lut, 4)
    out = _out(out, (*src.shape, 4))
    _lut_words(src, _lut_words_of(lut), words(out))
    return out


def apply_lut_rgb(src: U8Array, lut: U8Array, out: U8Array | None = None) -> U8Array:
    """out[i, j] = lut[src[i, j]]: (h, w) indices through a (256, 3) table into (h, w, 3)."""
    _check_image("src", src)
    _check_lut(lut, 3)
    out = _out(out, (*src.shape, 3))
    _lut_rgb(src, lut, out)
    return out


def apply_lut_rgba_masked(
    src: U8Array, mask: U8Array, lut: U8Array, out: U8Array | None = None
) -> U8Array:
    """apply_lut_rgba with coverage: alpha = lut alpha × mask / 255 (0 = transparent).

    Straight (not premultiplied) alpha, as PNG and WebP store it; fully transparent pixels are
    (0, 0, 0, 0) so padding compresses to nothing and never leaks colour.
    """
    _check_image("src", src)
    _check_image("mask", mask)
    if mask.shape != src.shape:
        raise ValueError(f"mask: shape {mask.shape} differs from src shape {src.shape}")
    _check_lut(lut, 4)
    out = _out(out, (*src.shape, 4))
    _lut_words_masked(src, mask, _lut_words_of(lut), words(out))
    return out


def apply_lut_over_black(
    src: U8Array, mask: U8Array, lut: U8Array, out: U8Array | None = None
) -> U8Array:
    """lut[src] composited over black by coverage mask: out = lut[src] × mask / 255, rounded.

    For formats without alpha (JPEG): transparent areas come out black, partly covered pixels
    darkened. ``lut`` is (256, c) for any channel count c, ``out`` (h, w, c).
    """
    _check_image("src", src)
    _check_image("mask", mask)
    if mask.shape != src.shape:
        raise ValueError(f"mask: shape {mask.shape} differs from src shape {src.shape}")
    _check_lut(lut, None)
    out = _out(out, (*src.shape, lut.shape[1]))
    if lut.shape[1] == 4:
        _lut_words_over_black(src, mask, _lut_words_of(lut), words(out))
    else:
        _lut_bytes_over_black(src, mask, lut, out)
    return out


def opaque_histogram(src: U8Array, mask: U8Array) -> tuple[npt.NDArray[np.int64], int, int]:
    """(counts of each index among fully opaque pixels, # transparent pixels, # partial pixels).

    Opaque = mask 255, transparent = mask 0, partial = anything between.
    """
    _check_image("src", src)
    _check_image("mask", mask)
    if mask.shape != src.shape:
        raise ValueError(f"mask: shape {mask.shape} differs from src shape {src.shape}")
    hist = np.zeros(256, dtype=np.int64)
    transparent, partial = _opaque_histogram(src, mask, hist)
    return hist, int(transparent), int(partial)

"""What the warp paths share: how many samples a pixel takes, its coverage from the samples
inside, and a source image as one run of bytes."""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

U8Array = npt.NDArray[np.uint8]

# Index type of the hot loops: numba wraps negative indices, a test per load that stops LLVM
# vectorising a loop; an unsigned index has none.
INDEX = np.uint64

# Shrinks up to this many source pixels per output pixel take one bilinear sample a pixel
# (heliostat.imaging.warp's docstring).
_ONE_SAMPLE_UP_TO = 1.25


def samples_per_axis(step: float) -> int:
    """Bilinear samples along each axis of an output pixel that covers ``step`` source pixels
    along its longer side: 1 up to a 1.25 shrink, else ceil(step) (an integer step that
    rounding in a matrix left a millionth over is that integer)."""
    return 1 if step <= _ONE_SAMPLE_UP_TO else math.ceil(step - 1e-6)


@numba.njit(cache=True, nogil=True)
def coverage(count: int) -> U8Array:
    """Alpha for k of ``count`` samples inside the source, k = 0..count."""
    cover = np.empty(count + 1, np.uint8)
    for k in range(count + 1):
        cover[k] = (k * 255 + count // 2) // count
    return cover


def flat_rows(a: U8Array) -> tuple[U8Array, int]:
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

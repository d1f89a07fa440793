"""RGBA pixels as native-endian uint32 words: where the alpha byte sits, and the word view.

The colour-table and blend kernels work a pixel a word; these say which bits of it are alpha on
this machine's byte order.
"""

from __future__ import annotations

import sys

import numpy as np
import numpy.typing as npt

# The alpha byte's bits within a native-endian uint32 RGBA word.
ALPHA_SHIFT = 24 if sys.byteorder == "little" else 0
ALPHA_BITS = 0xFF << ALPHA_SHIFT
RGB_BITS = 0xFFFFFFFF ^ ALPHA_BITS


def words(a: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint32]:
    """An (h, w, 4) uint8 array with a contiguous last axis viewed as (h, w) uint32 words."""
    return a.view(np.uint32)[..., 0]

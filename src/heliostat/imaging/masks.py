"""Coronagraph occulter masks: a layer's coverage cut to the annulus its instrument sees."""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

U8Array = npt.NDArray[np.uint8]


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

"""Coronagraph occulter masks."""

from __future__ import annotations

import numpy as np

from heliostat.imaging.masks import radial_mask


def test_radial_mask_keeps_only_the_annulus_with_soft_edges() -> None:
    alpha = np.full((101, 101), 255, np.uint8)
    radial_mask(alpha, 50.0, 50.0, 10.0, 40.0)
    assert alpha[50, 50] == 0 and alpha[50, 55] == 0
    assert alpha[50, 75] == 255 and alpha[50, 50 + 39] == 255
    assert alpha[0, 0] == 0 and alpha[50, 95] == 0
    assert alpha[50, 60] == 128  # on the inner rim: half covered

"""The OVER blend of screenshot layers against a float reference."""

from __future__ import annotations

import numpy as np
import pytest

from heliostat.imaging.blend import blend_over


def _reference_over(layer: np.ndarray, opacity: int, canvas: np.ndarray) -> np.ndarray:
    # Opacity scales the layer's alpha byte, rounded to a byte, before compositing.
    sa = np.floor(layer[..., 3:].astype(float) * opacity / 100 + 0.5) / 255
    da = canvas[..., 3:].astype(float) / 255
    oa = sa + da * (1 - sa)
    rgb = (layer[..., :3] * sa + canvas[..., :3] * da * (1 - sa)) / np.where(oa > 0, oa, 1)
    out = np.concatenate([np.where(oa > 0, rgb, canvas[..., :3]), oa * 255], axis=-1)
    return np.asarray(out)


@pytest.mark.parametrize("opacity", [0, 1, 37, 50, 100])
def test_blend_matches_porter_duff_over(opacity: int) -> None:
    rng = np.random.default_rng(opacity)
    layer = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    canvas = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    # Every path: transparent, opaque and partial alpha on both sides.
    layer[:16, :, 3] = 0
    layer[16:32, :, 3] = 255
    canvas[:, :16, 3] = 0
    canvas[:, 16:32, 3] = 255
    ref = _reference_over(layer, opacity, canvas)
    out = canvas.copy()
    blend_over(layer, opacity, out)
    covered = ref[..., 3] > 0
    assert np.abs(out[..., 3].astype(float) - ref[..., 3]).max() <= 1
    assert np.abs(out[covered][:, :3].astype(float) - ref[covered][:, :3]).max() <= 1
    if opacity == 0:
        assert np.array_equal(out, canvas)


def test_blend_rejects_mismatched_or_non_rgba_arrays() -> None:
    a = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        blend_over(a, 50, np.zeros((4, 5, 4), np.uint8))
    with pytest.raises(ValueError, match="layer"):
        blend_over(np.zeros((4, 4, 3), np.uint8), 50, a)
    with pytest.raises(ValueError, match="opacity"):
        blend_over(a, 101, a.copy())

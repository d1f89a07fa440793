"""Tile geometry (Helioviewer's grid), the resampling kernel and the tile renderer."""

from __future__ import annotations

import io
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from heliostat.archive.header import read_record
from heliostat.errors import DataLoss, FailedPrecondition, InvalidArgument, OutOfRange
from heliostat.imaging._openjpeg import J2KDecoder
from heliostat.imaging.decode import JP2Reader
from heliostat.imaging.tiles import TILE_SIZE, TileRenderer, plan_tile, tile_range
from heliostat.imaging.warp import samples_per_axis

from .conftest import AIA_171, DATA, LASCO_C3


def test_tile_range_matches_helioviewer_client() -> None:
    # AIA at 2.42044 arcsec/px shows ~998 px: tiles -1..0; at native scale 4096 px: -4..3.
    assert tile_range(4096, 0.59, 2.42044) == (-1, 0)
    assert tile_range(4096, 0.59, 0.59) == (-4, 3)
    assert tile_range(4096, 0.59, 0.30255511) == (-8, 7)
    assert tile_range(1024, 56.0, 1000.0) == (-1, 0)


def test_plan_power_of_two() -> None:
    p = plan_tile(4096, 4096, 9, 0.6, 2.4, -1, -1)
    assert p.reduce == 2 and p.step == pytest.approx(1.0)
    assert (p.kx0, p.ky0) == (0, 0)
    # Output pixel 0 is centred on native 2, reduced sample 0 on native 0.5: k = 1.5 / 4.
    assert (p.x0, p.y0) == (0.375, 0.375)
    p = plan_tile(4096, 4096, 9, 0.6, 0.6 * 3, 0, 0)
    assert p.reduce == 1 and p.step == pytest.approx(1.5)


@pytest.mark.parametrize(
    ("scale", "x", "y", "field", "err"),
    [
        (0.0, 0, 0, "image_scale", InvalidArgument),
        (float("nan"), 0, 0, "image_scale", InvalidArgument),
        (-1.0, 0, 0, "image_scale", InvalidArgument),
        (1e9, 0, 0, "image_scale", InvalidArgument),
        (0.001, 0, 0, "image_scale", InvalidArgument),
        (0.6, 4, 0, "x", OutOfRange),
        (0.6, 0, -5, "y", OutOfRange),
    ],
)
def test_plan_rejects(scale: float, x: int, y: int, field: str, err: type[Exception]) -> None:
    with pytest.raises(err) as info:
        plan_tile(4096, 4096, 9, 0.6, scale, x, y)
    assert info.value.field == field  # type: ignore[attr-defined]


def _renderer(root: Path) -> TileRenderer:
    return TileRenderer(root, JP2Reader(), cache_bytes=64 << 20)


def _decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))


def test_native_scale_tile_is_the_decoded_region(tmp_path: Path) -> None:
    f = AIA_171[0]
    rec = read_record(f, f.name)
    r = _renderer(f.parent)
    samples, alpha, reduce = r.pixels(rec, 0, -1, rec.scale)
    assert reduce == 0 and alpha is None
    region = J2KDecoder(f.read_bytes(), 0).decode(2048, 1536, 2560, 2048)
    assert np.array_equal(samples, region)


def test_power_of_two_tile_is_the_reduced_decode_shifted_onto_native_centres() -> None:
    f = AIA_171[1]
    rec = read_record(f, f.name)
    samples, alpha, reduce = _renderer(f.parent).pixels(rec, -1, 0, rec.scale * 4)
    assert reduce == 2 and alpha is None
    full = J2KDecoder(f.read_bytes(), 2).decode(0, 0, 4096, 4096).astype(float)
    full = np.pad(full, ((0, 1), (0, 1)), mode="edge")  # the last row blends with itself
    # Output pixel u is centred on native 4u + 2; reduced sample k on native 4k + 0.5: so the
    # tile samples the reduced image at k = u + 0.375, a linear blend of k and k + 1.
    ref = 0.625 * full[512:1024, :512] + 0.375 * full[512:1024, 1:513]
    ref = 0.625 * ref + 0.375 * (0.625 * full[513:1025, :512] + 0.375 * full[513:1025, 1:513])
    assert np.abs(samples - np.floor(ref + 0.5)).max() <= 1


def test_many_tiles_from_one_image_equal_region_decodes() -> None:
    f = AIA_171[2]
    rec = read_record(f, f.name)
    r = _renderer(f.parent)
    dec = J2KDecoder(f.read_bytes(), 0)
    # More tiles than promote_after: later ones come from the cached whole-image decode.
    for x, y in [(-4, -4), (3, 3), (0, 0), (-1, 2), (2, -3), (1, 1), (-2, 0), (3, -4)]:
        samples, _, _ = r.pixels(rec, x, y, rec.scale)
        x0, y0 = 2048 + 512 * x, 2048 + 512 * y
        assert np.array_equal(samples, dec.decode(x0, y0, x0 + 512, y0 + 512)), (x, y)
    assert r.stats()["decoded_images"].entries == 1


def _weights(n_out: int, n_src: int, start: float, step: float) -> np.ndarray:
    """Per output pixel, source weights of the mean of n bilinear samples (the kernel's count for
    this step) spread evenly over its footprint [start + u·step, start + (u + 1)·step), pixel
    centres at k."""
    n = samples_per_axis(step)
    w = np.zeros((n_out, n_src))
    for j in range(n):
        x = start + (np.arange(n_out) + (j + 0.5) / n) * step - 0.5
        x = np.clip(x, 0, n_src - 1)  # within half a pixel of the edge: the edge pixel
        w += np.clip(1 - np.abs(np.arange(n_src)[None, :] - x[:, None]), 0, None) / n
    return w


@pytest.mark.parametrize(("ratio", "x", "y"), [(3.0, 0, -1), (1.3, -1, 0), (0.45, 2, -3)])
def test_any_scale_follows_the_tile_geometry(ratio: float, x: int, y: int) -> None:
    # Independent reference: the tile's top-left corner sits at native (W/2 + 512·x·ratio,
    # H/2 + 512·y·ratio); reduce = floor(log2 ratio); the rest is bilinear, supersampled when
    # shrinking (ratio 3: 1.5 reduced pixels per output pixel, 2 × 2 samples).
    rec = read_record(LASCO_C3, LASCO_C3.name)
    samples, alpha, reduce = _renderer(LASCO_C3.parent).pixels(rec, x, y, rec.scale * ratio)
    assert reduce == max(0, math.floor(math.log2(ratio)))
    f = 2**reduce
    full = J2KDecoder(LASCO_C3.read_bytes(), reduce).decode(0, 0, 1024, 1024).astype(float)
    step = ratio / f
    # Reduced sample k is centred on native pixel k·2^r (the wavelet's even samples).
    wy = _weights(512, full.shape[0], (512 + 512 * y * ratio - 0.5) / f + 0.5, step)
    wx = _weights(512, full.shape[1], (512 + 512 * x * ratio - 0.5) / f + 0.5, step)
    ref = np.floor(wy @ full @ wx.T + 0.5)
    inside = np.ones((512, 512), bool) if alpha is None else alpha == 255
    assert inside.any()
    assert np.abs(samples[inside] - ref[inside]).max() <= 1


def test_edge_tiles_are_transparent_outside_the_image() -> None:
    swap = sorted(DATA.glob("*SWAP*.jp2"))[0]
    rec = read_record(swap, swap.name)
    # At 3x native scale the 1024 px image is 341 px: tile (-1,-1) holds its top-left quarter.
    _samples, alpha, _ = _renderer(swap.parent).pixels(rec, -1, -1, rec.scale * 3)
    assert alpha is not None
    inside = 1024 / 2 / 3
    edge = math.ceil(TILE_SIZE - inside)
    assert (alpha[:, : edge - 1] == 0).all() and (alpha[edge + 1 :, edge + 1 :] == 255).all()


def test_render_encodes_and_caches(tmp_path: Path) -> None:
    f = AIA_171[0]
    rec = read_record(f, f.name)
    r = _renderer(f.parent)
    t1 = r.render(rec, 0, 0, rec.scale * 2, "png", 85)
    t2 = r.render(rec, 0, 0, rec.scale * 2, "png", 85)
    assert t1 is t2 and t1.content_type == "image/png" and t1.reduce == 1
    rgba = _decode_png(t1.data)
    assert rgba.shape == (512, 512, 4)
    # AIA 171's table is gold: red >= green >= blue on the disc.
    disc = rgba[100:400, 100:400].reshape(-1, 4).astype(int)
    assert (disc[:, 0] >= disc[:, 1]).mean() > 0.99 and (disc[:, 1] >= disc[:, 2]).mean() > 0.99
    jpeg = r.render(rec, 0, 0, rec.scale * 2, "jpeg", 80)
    assert jpeg.data[:3] == b"\xff\xd8\xff"
    webp = r.render(rec, 0, 0, rec.scale * 2, "webp", 80)
    assert webp.data[8:12] == b"WEBP"
    with pytest.raises(InvalidArgument, match="format"):
        r.render(rec, 0, 0, rec.scale, "gif", 80)
    with pytest.raises(InvalidArgument, match="quality"):
        r.render(rec, 0, 0, rec.scale, "png", 0)


def test_changed_and_corrupt_files(tmp_path: Path) -> None:
    swap = sorted(DATA.glob("*SWAP*.jp2"))[0]
    copy = tmp_path / swap.name
    shutil.copy2(swap, copy)
    rec = read_record(copy, copy.name)
    data = bytearray(copy.read_bytes())
    copy.write_bytes(bytes(data[: len(data) // 2]))  # truncated, as by an interrupted transfer
    with pytest.raises(FailedPrecondition, match="changed since it was indexed"):
        _renderer(tmp_path).pixels(rec, 0, 0, rec.scale)
    # Same size, header intact, codestream headers wiped: indexable, but not decodable.
    start = data.find(b"\xff\x4f\xff\x51")
    data[start + 200 : start + 4000] = bytes(3800)
    copy.write_bytes(bytes(data))
    rec = read_record(copy, copy.name)
    with pytest.raises(DataLoss, match="cannot be decoded"):
        _renderer(tmp_path).pixels(rec, 0, 0, rec.scale)


def test_embedded_palette_colours_swap_tiles() -> None:
    # SWAP files carry their colour table in a pclr box: the same gold ramp Helioviewer shows.
    swap = sorted(DATA.glob("*SWAP*.jp2"))[0]
    rec = read_record(swap, swap.name)
    r = _renderer(swap.parent)
    table = r.table(rec)
    assert isinstance(table, np.ndarray)
    assert [tuple(table[i]) for i in (0, 64, 255)] == [(0, 0, 0), (92, 64, 0), (255, 255, 255)]
    samples, _, _ = r.pixels(rec, -1, -1, rec.scale)
    rgba = _decode_png(r.render(rec, -1, -1, rec.scale, "png", 85).data)
    assert np.array_equal(rgba[..., :3], table[samples])
    # A source with its own standard table keeps it; files without a palette have none.
    aia = read_record(AIA_171[0], AIA_171[0].name)
    assert r.table(aia) == "sdoaia171"

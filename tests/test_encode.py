"""Encoders: decode what they write with Pillow and compare with the colour-table reference."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image

from heliostat.imaging import colortables
from heliostat.imaging import encode as encoders
from heliostat.imaging.encode import FORMATS, content_type, encode, png_rgba

H, W = 200, 300  # not square, so a swapped width and height shows


def smooth_indices(h: int = H, w: int = W) -> np.ndarray:
    """A smooth image with a limb-like bright ring: JPEG and WebP reproduce it closely."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = np.hypot(x - w / 2, y - h / 2) / (min(h, w) / 2)
    img = 60 + 40 * x / w + 120 * np.exp(-(((r - 0.8) / 0.15) ** 2))
    out: np.ndarray = img.clip(0, 255).astype(np.uint8)
    return out


def padding(h: int = H, w: int = W, right: int = 70, bottom: int = 50) -> np.ndarray:
    """Alpha of an edge tile: opaque image, transparent padding on the right and bottom."""
    alpha = np.full((h, w), 255, dtype=np.uint8)
    alpha[:, w - right :] = 0
    alpha[h - bottom :, :] = 0
    return alpha


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def coloured(indices: np.ndarray, table: str | None) -> np.ndarray:
    out: np.ndarray = colortables.rgba(table)[indices]
    return out


# --- PNG --------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", ["sdoaia171", "soholasco2", None])
def test_png_is_a_palette_image_with_the_table_as_plte(table: str | None) -> None:
    idx = smooth_indices()
    im = decode(encode(idx, table=table, fmt="png"))
    assert im.format == "PNG" and im.mode == "P" and im.size == (W, H)
    assert "transparency" not in im.info
    assert np.array_equal(np.asarray(im), idx)
    rgb = colortables.grey() if table is None else colortables.load(table)
    assert im.getpalette() == rgb.reshape(-1).tolist()
    assert np.array_equal(np.asarray(im.convert("RGB")), rgb[idx])


def test_png_of_a_strided_window() -> None:
    big = np.random.default_rng(1).integers(0, 256, (600, 700), dtype=np.uint8)
    window = big[50:562, 100:612]
    im = decode(encode(window, table="sdoaia193", fmt="png"))
    assert im.size == (512, 512)
    assert np.array_equal(np.asarray(im), window)


def test_png_with_transparent_padding_stays_a_palette_image() -> None:
    idx = smooth_indices()  # uses far fewer than 256 indices
    alpha = padding()
    im = decode(encode(idx, table="sdoaia304", fmt="png", alpha=alpha))
    assert im.mode == "P" and im.size == (W, H)
    spare = im.info["transparency"]
    assert spare not in idx[alpha == 255]
    assert im.getpalette() == colortables.load("sdoaia304").reshape(-1).tolist()
    rgba = np.asarray(im.convert("RGBA"))
    assert np.array_equal(rgba[..., 3], alpha)
    opaque = alpha == 255
    assert np.array_equal(rgba[opaque], coloured(idx, "sdoaia304")[opaque])


def test_png_with_padding_and_every_index_in_use_is_rgba() -> None:
    idx = np.random.default_rng(2).integers(0, 256, (H, W), dtype=np.uint8)
    alpha = padding()
    assert np.unique(idx[alpha == 255]).size == 256
    im = decode(encode(idx, table="euvi171", fmt="png", alpha=alpha))
    assert im.mode == "RGBA" and im.size == (W, H)
    want = coloured(idx, "euvi171")
    want[alpha == 0] = 0
    assert np.array_equal(np.asarray(im), want)


def test_png_with_partial_alpha_is_exact_rgba() -> None:
    idx = smooth_indices()
    alpha = padding()
    alpha[:, 100:110] = np.arange(10, 110, 10, dtype=np.uint8)  # an antialiased edge
    im = decode(encode(idx, table=None, fmt="png", alpha=alpha))
    assert im.mode == "RGBA"
    got = np.asarray(im)
    assert np.array_equal(got[..., 3], alpha)
    visible = alpha > 0
    assert np.array_equal(got[..., :3][visible], colortables.grey()[idx][visible])
    assert (got[~visible] == 0).all()


def test_png_with_opaque_alpha_is_the_plain_palette_image() -> None:
    idx = smooth_indices()
    alpha = np.full_like(idx, 255)
    assert encode(idx, table="sdoaia94", fmt="png", alpha=alpha) == encode(
        idx, table="sdoaia94", fmt="png"
    )


def test_fully_transparent_png() -> None:
    idx = smooth_indices()
    im = decode(encode(idx, table="sdoaia211", fmt="png", alpha=np.zeros_like(idx)))
    assert (np.asarray(im.convert("RGBA"))[..., 3] == 0).all()


def _idat(data: bytes) -> bytes:
    """The concatenated IDAT payload of a PNG, checking every chunk's CRC on the way."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert crc == zlib.crc32(tag + body)
        if tag == b"IDAT":
            idat += body
        pos += 12 + n
    return idat


@pytest.mark.parametrize(("bands", "band_bytes"), [(1, 1 << 20), (3, 1), (7, 5000)])
def test_png_rgba_round_trips_whole_or_in_parallel_bands(
    monkeypatch: pytest.MonkeyPatch, bands: int, band_bytes: int
) -> None:
    monkeypatch.setattr(encoders, "_BANDS", bands)
    monkeypatch.setattr(encoders, "_BAND_BYTES", band_bytes)
    rng = np.random.default_rng(bands)
    rgba = coloured(smooth_indices(), "sdoaia171")
    rgba[..., 3] = rng.integers(0, 256, (H, W), dtype=np.uint8)
    rgba[:20] = rng.integers(0, 256, (20, W, 4), dtype=np.uint8)  # incompressible rows too
    data = png_rgba(rgba)
    im = decode(data)
    assert im.format == "PNG" and im.mode == "RGBA" and im.size == (W, H)
    assert np.array_equal(np.asarray(im), rgba)
    # zlib checks the stream's combined adler32, which Pillow does not.
    raw = np.frombuffer(zlib.decompress(_idat(data)), np.uint8).reshape(H, W * 4 + 1)
    assert (raw[:, 0] == 2).all()


def test_png_rgba_of_a_strided_window_and_a_single_pixel() -> None:
    big = coloured(smooth_indices(), "sdoaia304")
    window = big[10:60:2, 5:200]
    assert np.array_equal(np.asarray(decode(png_rgba(window))), window)
    assert np.array_equal(np.asarray(decode(png_rgba(big[:1, :1]))), big[:1, :1])


def test_png_rgba_rejects_non_rgba() -> None:
    with pytest.raises(ValueError, match=r"^rgba:"):
        png_rgba(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"^rgba:"):
        png_rgba(np.zeros((0, 4, 4), np.uint8))


# --- JPEG and WebP ----------------------------------------------------------------------------


def mean_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_jpeg_coloured() -> None:
    idx = smooth_indices()
    im = decode(encode(idx, table="sdoaia171", fmt="jpeg"))
    assert im.format == "JPEG" and im.mode == "RGB" and im.size == (W, H)
    assert mean_error(np.asarray(im), coloured(idx, "sdoaia171")[..., :3]) < 2.0


def test_jpeg_grey_is_single_channel() -> None:
    idx = smooth_indices()
    im = decode(encode(idx, table=None, fmt="jpeg"))
    assert im.mode == "L" and im.size == (W, H)
    assert mean_error(np.asarray(im), idx) < 1.5


@pytest.mark.parametrize("table", ["sdoaia335", None])
def test_jpeg_padding_is_black(table: str | None) -> None:
    idx = smooth_indices()
    alpha = padding()
    got = np.asarray(decode(encode(idx, table=table, fmt="jpeg", alpha=alpha)))
    if got.ndim == 2:
        got = got[..., None]
    want = coloured(idx, table)[..., : got.shape[2]]
    opaque = alpha == 255
    assert mean_error(got[opaque], want[opaque]) < 3.0
    # Away from the image edge, where the 8×8 blocks see only padding, it is black.
    assert got[:, W - 60 :].max() <= 4 and got[H - 40 :].max() <= 4


def test_jpeg_quality_is_applied() -> None:
    idx = np.random.default_rng(3).integers(0, 256, (H, W), dtype=np.uint8)
    low = encode(idx, table="sdoaia171", fmt="jpeg", quality=20)
    high = encode(idx, table="sdoaia171", fmt="jpeg", quality=95)
    assert len(low) < len(high) / 2


def test_webp_opaque() -> None:
    idx = smooth_indices()
    im = decode(encode(idx, table="sdoaia193", fmt="webp", quality=90))
    assert im.format == "WEBP" and im.mode == "RGB" and im.size == (W, H)
    assert mean_error(np.asarray(im), coloured(idx, "sdoaia193")[..., :3]) < 3.0


def test_webp_padding_is_transparent() -> None:
    idx = smooth_indices()
    alpha = padding()
    im = decode(encode(idx, table="sohoeit304", fmt="webp", alpha=alpha))
    assert im.mode == "RGBA" and im.size == (W, H)
    got = np.asarray(im)
    assert np.array_equal(got[..., 3], alpha)  # WebP stores alpha losslessly
    opaque = alpha == 255
    assert mean_error(got[..., :3][opaque], coloured(idx, "sohoeit304")[..., :3][opaque]) < 3.0


def test_webp_quality_is_applied() -> None:
    idx = np.random.default_rng(4).integers(0, 256, (H, W), dtype=np.uint8)
    low = encode(idx, table=None, fmt="webp", quality=10)
    high = encode(idx, table=None, fmt="webp", quality=95)
    assert len(low) < len(high) / 2


# --- content types and arguments --------------------------------------------------------------


def test_content_types() -> None:
    assert [content_type(f) for f in FORMATS] == ["image/png", "image/jpeg", "image/webp"]
    for fmt in FORMATS:
        data = encode(smooth_indices(16, 16), table=None, fmt=fmt)
        assert Image.MIME[decode(data).format or ""] == content_type(fmt)


def test_unknown_content_type() -> None:
    with pytest.raises(ValueError, match=r"^fmt:"):
        content_type("gif")


IDX = smooth_indices(8, 8)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"fmt": "gif"}, "fmt"),
        ({"fmt": "PNG"}, "fmt"),
        ({"quality": 0}, "quality"),
        ({"quality": 101}, "quality"),
        ({"quality": 85.0}, "quality"),
        ({"quality": True}, "quality"),
        ({"indices": IDX.astype(np.float32)}, "indices"),
        ({"indices": np.stack([IDX] * 3, axis=-1)}, "indices"),
        ({"indices": IDX[:0]}, "indices"),
        ({"indices": np.zeros((8, 16_384), np.uint8), "fmt": "webp"}, "indices"),
        ({"alpha": IDX[:4]}, "alpha"),
        ({"alpha": IDX.astype(bool)}, "alpha"),
        ({"table": "sdoaia999"}, "table"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_field(
    kwargs: dict[str, Any], field: str
) -> None:
    args: dict[str, Any] = {"indices": IDX, "table": "sdoaia171", "fmt": "png", **kwargs}
    indices = args.pop("indices")
    with pytest.raises(ValueError, match=rf"^{field}:"):
        encode(indices, **args)

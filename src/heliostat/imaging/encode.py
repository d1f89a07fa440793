"""Tile and image encoders: 8-bit index images plus a colour table into PNG, JPEG or WebP bytes.

Choices, all for speed at tile sizes (512²):

- PNG without alpha is a palette ("P") image whose PLTE is the colour table: a quarter of the
  RGBA data, at zlib level 1. With alpha that is only 0 or 255 (transparent padding of edge
  tiles), an index no opaque pixel uses becomes the transparent entry (tRNS) and the image stays
  a palette PNG; partial alpha, or a tile using all 256 indices, falls back to RGBA (png_rgba).
- ``png_rgba`` writes RGBA PNG itself, 2× faster than Pillow and a little smaller: every row
  takes the Up filter (computed with numpy; Pillow tries filters per row), and large images are
  cut into horizontal bands deflated in parallel threads (zlib releases the GIL), each band a raw
  deflate stream ended by a sync flush, so their concatenation is one valid zlib stream whose
  adler32 is combined from the bands'.
- JPEG is RGB through the lookup kernel (grey "L" without a table); transparent areas are black.
- WebP is lossy at WEBP_METHOD, RGBA when there is alpha.

Colour goes through heliostat.imaging.colorize into 4-byte pixels that Pillow maps without a copy.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from heliostat.imaging import colorize, colortables

Format = Literal["png", "jpeg", "webp"]
FORMATS: tuple[Format, ...] = ("png", "jpeg", "webp")

PNG_COMPRESS_LEVEL = 1  # zlib level: level 6 costs ~10× the time for ~15 % less data
WEBP_METHOD = 0  # libwebp effort 0..6: method 0 is ~2× faster than 2 at about the same size

_CONTENT_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
# Largest width or height each format can store.
_MAX_SIDE: dict[str, int] = {"png": 2**31 - 1, "jpeg": 65_535, "webp": 16_383}

U8Array = npt.NDArray[np.uint8]

# Bytes of pixels per deflate band: below this another thread costs more than it saves.
_BAND_BYTES = 1 << 20
_BANDS = max(1, os.cpu_count() or 1)
_band_pool = ThreadPoolExecutor(_BANDS, thread_name_prefix="png-band")
_ADLER_BASE = 65521
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# zlib stream header: deflate, 32 KiB window, "fastest" level flag, check bits (0x7801 % 31 == 0).
_ZLIB_HEADER = b"\x78\x01"
_FILTER_UP = 2


def content_type(fmt: str) -> str:
    """The MIME type of ``fmt``; ValueError naming ``fmt`` if it is not a supported format."""
    try:
        return _CONTENT_TYPES[fmt]
    except KeyError:
        raise ValueError(f"fmt: unsupported format {fmt!r}, expected one of {FORMATS}") from None


def encode(
    indices: U8Array,
    *,
    table: str | U8Array | None,
    fmt: Format,
    quality: int = 85,
    alpha: U8Array | None = None,
) -> bytes:
    """Encode an (h, w) uint8 index image coloured by ``table`` as ``fmt``.

    ``table`` names a packaged colour table, or is a (256, 3) uint8 palette (a JP2 file's own
    pclr box), or None for grey.

    ``quality`` (1..100) applies to JPEG and WebP. ``alpha`` is an optional (h, w) uint8 coverage
    mask, 0 = transparent. Bad arguments raise ValueError naming the argument.
    """
    content_type(fmt)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality: expected an int in 1..100, got {quality!r}")
    if not isinstance(indices, np.ndarray) or indices.dtype != np.uint8 or indices.ndim != 2:
        raise ValueError(f"indices: expected a 2-D uint8 array, got {_describe(indices)}")
    h, w = indices.shape
    if not 1 <= min(h, w) <= max(h, w) <= _MAX_SIDE[fmt]:
        raise ValueError(f"indices: shape {indices.shape} is empty or too large for {fmt}")
    if alpha is not None and (
        not isinstance(alpha, np.ndarray) or alpha.dtype != np.uint8 or alpha.shape != (h, w)
    ):
        raise ValueError(f"alpha: expected a uint8 array of shape {(h, w)}, got {_describe(alpha)}")
    rgb = _resolve(table)
    if fmt == "png":
        return _png(indices, rgb, alpha)
    if fmt == "jpeg":
        return _jpeg(indices, rgb, alpha, quality)
    return _webp(indices, rgb, alpha, quality)


def _resolve(table: str | U8Array | None) -> U8Array | None:
    """The (256, 3) table to apply, None for grey."""
    if table is None:
        return None
    if isinstance(table, str):
        if table not in colortables.names():
            raise ValueError(f"table: unknown colour table {table!r}")
        return colortables.load(table)
    if not isinstance(table, np.ndarray) or table.dtype != np.uint8 or table.shape != (256, 3):
        raise ValueError(
            f"table: expected a name or a (256, 3) uint8 array, got {_describe(table)}"
        )
    return table


def _lut(rgb: U8Array | None) -> U8Array:
    if rgb is None:
        return colortables.rgba(None)
    lut = np.full((256, 4), 255, np.uint8)
    lut[:, :3] = rgb
    return lut


def _describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__


def _save(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def _pixels(mode: Literal["RGBA", "RGBX"], rgba: U8Array) -> Image.Image:
    """A C-contiguous (h, w, 4) uint8 array as a Pillow image sharing its memory."""
    h, w = rgba.shape[:2]
    return Image.frombuffer(mode, (w, h), rgba, "raw", mode, 0, 1)


def _palette_png(indices: U8Array, rgb: U8Array | None, transparent: int | None) -> bytes:
    im = Image.fromarray(indices)
    im.putpalette((colortables.grey() if rgb is None else rgb).tobytes())
    params: dict[str, Any] = {"compress_level": PNG_COMPRESS_LEVEL}
    if transparent is not None:
        params["transparency"] = transparent
    return _save(im, "PNG", **params)


def _png(indices: U8Array, rgb: U8Array | None, alpha: U8Array | None) -> bytes:
    if alpha is None:
        return _palette_png(indices, rgb, None)
    hist, transparent, partial = colorize.opaque_histogram(indices, alpha)
    if partial == 0:
        if transparent == 0:
            return _palette_png(indices, rgb, None)
        unused = np.flatnonzero(hist == 0)
        if unused.size:
            # The lowest unused index keeps the tRNS chunk (one byte per entry up to it) short.
            spare = np.uint8(unused[0])
            return _palette_png(np.where(alpha == 0, spare, indices), rgb, int(spare))
    return png_rgba(colorize.apply_lut_rgba_masked(indices, alpha, _lut(rgb)))


def png_rgba(rgba: U8Array) -> bytes:
    """An (h, w, 4) uint8 straight-alpha image as an 8-bit RGBA PNG at PNG_COMPRESS_LEVEL."""
    if rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] != 4 or 0 in rgba.shape:
        raise ValueError(f"rgba: expected a non-empty (h, w, 4) uint8 array, got {_describe(rgba)}")
    h, w = rgba.shape[:2]
    rows = rgba.reshape(h, w * 4)
    n = max(1, min(_BANDS, h, rows.nbytes // _BAND_BYTES))
    edges = [h * i // n for i in range(n + 1)]
    # The calling thread deflates the first band while the pool does the rest.
    rest = [
        _band_pool.submit(_deflate_band, rows, edges[i], edges[i + 1], i == n - 1)
        for i in range(1, n)
    ]
    bands = [_deflate_band(rows, edges[0], edges[1], n == 1), *(f.result() for f in rest)]
    adler = 1
    for _, band_adler, size in bands:
        adler = _adler32_combine(adler, band_adler, size)
    idat = b"".join([_ZLIB_HEADER, *(data for data, _, _ in bands), struct.pack(">I", adler)])
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)  # 8-bit RGBA, no interlace
    return b"".join(
        [_PNG_SIGNATURE, _chunk(b"IHDR", ihdr), _chunk(b"IDAT", idat), _chunk(b"IEND", b"")]
    )


def _deflate_band(rows: U8Array, r0: int, r1: int, last: bool) -> tuple[bytes, int, int]:
    """Rows [r0, r1) Up-filtered and deflated: (raw deflate data, adler32, filtered size)."""
    band = rows[r0:r1]
    filtered = np.empty((r1 - r0, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = _FILTER_UP
    # uint8 subtraction wraps modulo 256, as PNG filters do; the first image row has no row above.
    np.subtract(band[1:], band[:-1], out=filtered[1:, 1:])
    if r0 == 0:
        filtered[0, 1:] = band[0]
    else:
        np.subtract(band[0], rows[r0 - 1], out=filtered[0, 1:])
    view = filtered.data
    z = zlib.compressobj(PNG_COMPRESS_LEVEL, zlib.DEFLATED, -15)
    data = z.compress(view) + z.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
    return data, zlib.adler32(view), filtered.size


def _adler32_combine(a1: int, a2: int, len2: int) -> int:
    """adler32 of A + B from adler32(A), adler32(B) and len(B) (zlib's adler32_combine)."""
    rem = len2 % _ADLER_BASE
    s1 = a1 & 0xFFFF
    s2 = rem * s1 % _ADLER_BASE
    s1 = (s1 + (a2 & 0xFFFF) + _ADLER_BASE - 1) % _ADLER_BASE
    s2 = (s2 + (a1 >> 16) + (a2 >> 16) + _ADLER_BASE - rem) % _ADLER_BASE
    return (s2 << 16) | s1


def _chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(tag))
    return b"".join([struct.pack(">I", len(data)), tag, data, struct.pack(">I", crc)])


def _jpeg(indices: U8Array, rgb: U8Array | None, alpha: U8Array | None, quality: int) -> bytes:
    if rgb is None:
        grey = indices
        if alpha is not None:
            grey = colorize.apply_lut_over_black(indices, alpha, colortables.grey()[:, :1])[..., 0]
        im = Image.fromarray(grey)
    else:
        lut = _lut(rgb)
        if alpha is None:
            rgbx = colorize.apply_lut_rgba(indices, lut)
        else:
            rgbx = colorize.apply_lut_over_black(indices, alpha, lut)
        # Pillow stores RGB as 4 bytes a pixel, so RGBX maps without the 3→4 byte unpacking.
        im = _pixels("RGBX", rgbx)
    return _save(im, "JPEG", quality=quality)


def _webp(indices: U8Array, rgb: U8Array | None, alpha: U8Array | None, quality: int) -> bytes:
    lut = _lut(rgb)
    if alpha is None:
        im = _pixels("RGBX", colorize.apply_lut_rgba(indices, lut))
    else:
        im = _pixels("RGBA", colorize.apply_lut_rgba_masked(indices, alpha, lut))
    return _save(im, "WEBP", quality=quality, method=WEBP_METHOD, lossless=False)

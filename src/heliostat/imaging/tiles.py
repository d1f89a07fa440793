"""Helioviewer tiles: 512² pieces of an image at any scale, coloured and encoded.

Geometry (Helioviewer's getTile): with ``s`` the requested scale and ``j`` the image's scale
(both arcsec per pixel at 1 AU), a tile spans ``512·s/j`` native pixels; tile (x, y) starts at
native pixel ``(W/2 + x·512·s/j, H/2 + y·512·s/j)`` — the grid is anchored at the image centre,
y grows downward. JPEG 2000 reduction does the power-of-two part of ``s/j``; the resampling
kernel does the rest; a reduced sample k stands for native pixel k·2^r (the wavelet low-pass
band is centred on the even samples). Parts of a tile outside the image are transparent.

A difference tile (heliostat.imaging.difference) is the tile of the target image minus its
reference sampled onto the same output pixels: by the very same plan when both images share a
grid, else through the reference's own geometry. It is grey unless a table is asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from heliostat.archive import sources
from heliostat.catalog.records import ImageRecord
from heliostat.errors import DataLoss, FailedPrecondition, InvalidArgument, OutOfRange
from heliostat.imaging import difference, encode
from heliostat.imaging.compose import sample_onto
from heliostat.imaging.decode import (
    DecodeError,
    FileChangedError,
    FileKey,
    JP2Reader,
    reduced_size,
)
from heliostat.imaging.warp import warp_affine
from heliostat.lru import CacheStats, SizedLRU

TILE_SIZE = 512
Format = Literal["png", "jpeg", "webp"]
FORMATS: tuple[Format, ...] = ("png", "jpeg", "webp")


@dataclass(frozen=True, slots=True)
class TilePlan:
    reduce: int
    step: float  # reduced-grid pixels per output pixel
    # Region of the reduced image to decode, [kx0, kx1) x [ky0, ky1); empty when off the image.
    kx0: int
    ky0: int
    kx1: int
    ky1: int
    # Position of the tile's top-left corner relative to that region, reduced-grid pixels.
    x0: float
    y0: float

    @property
    def empty(self) -> bool:
        return self.kx0 >= self.kx1 or self.ky0 >= self.ky1


def tile_range(size_px: int, native_scale: float, image_scale: float) -> tuple[int, int]:
    """Valid tile indices along one axis, as Helioviewer's client computes them."""
    scaled = size_px * native_scale / image_scale
    n = max(2, math.ceil(scaled / TILE_SIZE))
    n += n % 2
    return -n // 2, n // 2 - 1


def plan_tile(
    width: int,
    height: int,
    num_resolutions: int,
    native_scale: float,
    image_scale: float,
    x: int,
    y: int,
) -> TilePlan:
    if not math.isfinite(image_scale) or image_scale <= 0:
        raise InvalidArgument(
            f"must be a positive number, got {image_scale!r}", field="image_scale"
        )
    ratio = image_scale / native_scale
    # Beyond these the tile is either mostly interpolation (32x enlargement) or the whole
    # image is smaller than one output pixel.
    if ratio < 1 / 32 or ratio > max(width, height):
        raise InvalidArgument(
            f"{image_scale:g} arcsec/px is outside the usable range "
            f"{native_scale / 32:.6g} to {native_scale * max(width, height):.6g} for this image",
            field="image_scale",
        )
    for name, value, size in (("x", x, width), ("y", y, height)):
        lo, hi = tile_range(size, native_scale, image_scale)
        if not lo <= value <= hi:
            raise OutOfRange(f"tile {value} is off the grid; valid range is {lo}..{hi}", field=name)
    reduce = min(max(0, math.floor(math.log2(ratio))), num_resolutions - 1)
    f = 1 << reduce
    step = ratio / f
    radius = max(1.0, step)
    span = TILE_SIZE * ratio

    def axis(origin: float, n_native: int) -> tuple[int, int, float]:
        # Tile edge on the reduced grid. JPEG 2000's low-pass band keeps the even samples, so
        # reduced sample k is centred on native pixel k·2^r, not on the middle of its 2^r block.
        start = (origin - 0.5) / f + 0.5
        c0 = start + 0.5 * step - 0.5
        c1 = start + (TILE_SIZE - 0.5) * step - 0.5
        k0 = max(0, math.floor(c0 - radius))
        k1 = min(reduced_size(n_native, reduce), math.ceil(c1 + radius) + 1)
        return k0, k1, start - k0

    kx0, kx1, ox = axis(width / 2 + x * span, width)
    ky0, ky1, oy = axis(height / 2 + y * span, height)
    return TilePlan(reduce, step, kx0, ky0, kx1, ky1, ox, oy)


def _copy_window(
    src: npt.NDArray[np.uint8],
    ix: int,
    iy: int,
    out: npt.NDArray[np.uint8],
    alpha: npt.NDArray[np.uint8],
) -> None:
    """The exact-scale case: the tile is a window of src at (ix, iy); out and alpha start at 0."""
    h, w = src.shape
    n = out.shape[0]
    x0, y0, x1, y1 = max(ix, 0), max(iy, 0), min(ix + n, w), min(iy + n, h)
    if x0 < x1 and y0 < y1:
        out[y0 - iy : y1 - iy, x0 - ix : x1 - ix] = src[y0:y1, x0:x1]
        alpha[y0 - iy : y1 - iy, x0 - ix : x1 - ix] = 255


@dataclass(frozen=True, slots=True)
class Tile:
    data: bytes
    content_type: str
    reduce: int
    width: int = TILE_SIZE
    height: int = TILE_SIZE


@dataclass(frozen=True, slots=True)
class TileKey:
    path: str
    size: int
    mtime_ns: int
    x: int
    y: int
    scale: str  # 6 decimals, as Helioviewer's client rounds it, so equal requests share tiles
    fmt: str
    quality: int
    # A difference tile's reference file (path, size, mtime): the options only choose it, the
    # file decides the pixels, and a newly ingested image can change which one they choose.
    reference: tuple[str, int, int] | None = None


def tile_key(
    record: ImageRecord,
    x: int,
    y: int,
    image_scale: float,
    fmt: str,
    quality: int,
    reference: ImageRecord | None = None,
) -> TileKey:
    return TileKey(
        record.path,
        record.file_size,
        record.file_mtime_ns,
        x,
        y,
        f"{image_scale:.6f}",
        fmt,
        quality,
        None
        if reference is None
        else (reference.path, reference.file_size, reference.file_mtime_ns),
    )


class TileRenderer:
    """Renders tiles of catalogued images and keeps a bounded cache of encoded tiles."""

    def __init__(self, archive_root: Path, reader: JP2Reader, *, cache_bytes: int) -> None:
        self.archive_root = archive_root
        self.reader = reader
        self._cache: SizedLRU[TileKey, Tile] = SizedLRU(cache_bytes, lambda t: len(t.data) + 200)

    def cached(self, key: TileKey) -> Tile | None:
        return self._cache.get(key)

    def pixels(
        self, record: ImageRecord, x: int, y: int, image_scale: float
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8] | None, int]:
        """The tile's 8-bit samples, its alpha (None when fully opaque) and the reduce level."""
        fk = FileKey(str(self.archive_root / record.path), record.file_size, record.file_mtime_ns)
        try:
            info = self.reader.info(fk)
            plan = plan_tile(
                info.width, info.height, info.num_resolutions, record.scale, image_scale, x, y
            )
            out = np.zeros((TILE_SIZE, TILE_SIZE), np.uint8)
            alpha = np.zeros((TILE_SIZE, TILE_SIZE), np.uint8)
            if not plan.empty:
                src = self.reader.region(fk, plan.reduce, plan.kx0, plan.ky0, plan.kx1, plan.ky1)
                if plan.step == 1.0 and plan.x0.is_integer() and plan.y0.is_integer():
                    _copy_window(src, int(plan.x0), int(plan.y0), out, alpha)
                else:
                    # Output pixel u is centred on reduced position x0 + (u + 0.5)·step − 0.5.
                    s, bx, by = (
                        plan.step,
                        plan.x0 + 0.5 * plan.step - 0.5,
                        plan.y0 + 0.5 * plan.step - 0.5,
                    )
                    warp_affine(src, np.array([[s, 0.0, bx], [0.0, s, by]]), out, alpha)
        except FileChangedError as e:
            raise FailedPrecondition(f"{e}; re-ingest it", field="image_id") from None
        except DecodeError as e:
            raise DataLoss(f"image {record.id} cannot be decoded: {e}", field="image_id") from None
        return out, (None if alpha.min() == 255 else alpha), plan.reduce

    def _reference_pixels(
        self,
        record: ImageRecord,
        reference: ImageRecord,
        x: int,
        y: int,
        image_scale: float,
        reduce: int,
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
        """The reference's samples (and coverage) on the output pixels of record's tile, decoded
        at the target's reduce level so both get the same wavelet low-pass."""
        if difference.same_grid(record, reference):
            out, alpha, _ = self.pixels(reference, x, y, image_scale)
            return out, np.full_like(out, 255) if alpha is None else alpha
        # Output pixel centre u lies at native column W/2 + x·span − 0.5 + ratio·(u + 0.5).
        ratio = image_scale / record.scale
        span = TILE_SIZE * ratio
        ox = record.width / 2 + x * span - 0.5 + 0.5 * ratio
        oy = record.height / 2 + y * span - 0.5 + 0.5 * ratio
        to_target = np.array([[ratio, 0.0, ox], [0.0, ratio, oy]])
        m = difference.chain(to_target, difference.native_transform(record, reference))
        out = np.zeros((TILE_SIZE, TILE_SIZE), np.uint8)
        alpha = np.zeros((TILE_SIZE, TILE_SIZE), np.uint8)
        fk = FileKey(
            str(self.archive_root / reference.path), reference.file_size, reference.file_mtime_ns
        )
        sample_onto(self.reader, fk, reference, image_scale, m, out, alpha, reduce)
        return out, alpha

    def difference_pixels(
        self, record: ImageRecord, reference: ImageRecord, x: int, y: int, image_scale: float
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8] | None, int]:
        """The difference tile's grey levels, alpha (None when opaque) and the reduce level."""
        new, new_alpha, reduce = self.pixels(record, x, y, image_scale)
        old, old_alpha = self._reference_pixels(record, reference, x, y, image_scale, reduce)
        alpha = np.full_like(new, 255) if new_alpha is None else new_alpha
        difference.difference(new, alpha, old, old_alpha, out=new, out_alpha=alpha)
        return new, (None if alpha.min() == 255 else alpha), reduce

    def table(self, record: ImageRecord) -> str | npt.NDArray[np.uint8] | None:
        """The source's standard colour table, else the file's own palette, else grey."""
        name = sources.by_id(record.source_id).color_table
        if name is not None:
            return name
        fk = FileKey(str(self.archive_root / record.path), record.file_size, record.file_mtime_ns)
        return self.reader.info(fk).palette

    def render(
        self,
        record: ImageRecord,
        x: int,
        y: int,
        image_scale: float,
        fmt: str,
        quality: int,
        reference: ImageRecord | None = None,
    ) -> Tile:
        """The tile of record, or of record minus reference (a difference tile)."""
        if fmt not in FORMATS:
            raise InvalidArgument(f"unknown format {fmt!r}; use one of {FORMATS}", field="format")
        if not 1 <= quality <= 100:
            raise InvalidArgument(f"must be 1-100, got {quality}", field="quality")
        key = tile_key(record, x, y, image_scale, fmt, quality, reference)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if reference is None:
            samples, alpha, reduce = self.pixels(record, x, y, image_scale)
            table = self.table(record)
        else:
            samples, alpha, reduce = self.difference_pixels(record, reference, x, y, image_scale)
            table = None  # Helioviewer shows differences in grey
        data = encode.encode(samples, table=table, fmt=fmt, quality=quality, alpha=alpha)
        tile = Tile(data, encode.content_type(fmt), reduce)
        self._cache.put(key, tile)
        return tile

    def forget(self, path: str) -> None:
        self._cache.discard(
            lambda k: k.path == path or (k.reference is not None and k.reference[0] == path)
        )
        self.reader.forget(str(self.archive_root / path))

    def stats(self) -> dict[str, CacheStats]:
        return {"tiles": self._cache.stats(), **self.reader.stats()}

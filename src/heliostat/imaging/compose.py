"""Frame assembly: several catalogued images resampled onto one view of the Sun and blended.

A view is a rectangle in arcsec from Sun centre (normalised to 1 AU, y down, Helioviewer's
region of interest) at ``scale`` arcsec per output pixel. Each layer is placed by its own
geometry:

* Sun centre: ``ref_pixel_x/y`` (1-based, FITS y up) in the stored image (top row first) is the
  0-based pixel-centre position ``col = ref_pixel_x − 1``, ``row = height − ref_pixel_y``.
* Plate scale: ``record.scale`` (CDELT1 normalised by DSUN), so observers at different distances
  show the Sun at the same size; pixels are taken to be square.
* Rotation: CROTA. A point ``(X, Y)`` arcsec (Y up) lies at pixel offset ``PCᵀ (X, Y) / scale``
  (Y up) with FITS ``PC = [[cos, −sin], [sin, cos]]``, which turns solar north up.

JPEG 2000 ``reduce`` does the power-of-two part of the shrink, ``floor(log2(scale / layer
scale))`` clamped to the file's levels, and only the window of the reduced image the view needs
is decoded. Reduced sample k sits at native position ``2^reduce · k`` (the wavelet low-pass is
centred on the even sample), not at the middle of the native pixels it replaces; the limb tests
at reduce 1 see the difference, half a native pixel. Unrotated layers go through the separable
triangle-filter kernel the tiles use; rotated ones through the supersampled bilinear kernel of
heliostat.imaging.warp. Coronagraphs are masked to their field of view (OCCULTERS). Layers
are drawn in the order given, each OVER what is already there; pixels no layer covers stay
transparent. A difference layer is its image minus its reference, both placed on the view by
their own geometry, mapped to grey by heliostat.imaging.difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from heliostat.archive import sources
from heliostat.catalog.records import ImageRecord
from heliostat.errors import DataLoss, FailedPrecondition, InvalidArgument
from heliostat.imaging import colorize, colortables
from heliostat.imaging.blend import blend_over
from heliostat.imaging.decode import (
    DecodeError,
    FileChangedError,
    FileKey,
    JP2Reader,
    reduced_size,
)
from heliostat.imaging.difference import difference
from heliostat.imaging.masks import radial_mask
from heliostat.imaging.warp import warp_affine

U8Array = npt.NDArray[np.uint8]
F64Array = npt.NDArray[np.float64]

# Solar radius seen from 1 AU, arcsec: the constant Helioviewer normalises radii with.
RSUN_ARCSEC = 959.644

# Field of view of each coronagraph, (inner, outer) in solar radii around Sun centre. LASCO
# values are Helioviewer's HV_ROCC_INNER/OUTER defaults (C2 2.0/7.0, C3 4.4/31.5); COR1 and COR2
# are the instruments' nominal fields (1.5–4 and 2.5–15 R☉). Header-independent on purpose:
# Helioviewer's own alpha masks are fixed per instrument too.
OCCULTERS: dict[int, tuple[float, float]] = {
    4: (2.0, 7.0),
    5: (4.4, 31.5),
    28: (1.5, 4.0),
    29: (2.5, 15.0),
    30: (1.5, 4.0),
    31: (2.5, 15.0),
}


@dataclass(frozen=True, slots=True)
class Viewport:
    x1: float  # arcsec from Sun centre of the top-left corner, y down
    y1: float
    scale: float  # arcsec per output pixel, normalised to 1 AU
    width: int  # output pixels
    height: int


@dataclass(frozen=True, slots=True)
class LayerInput:
    record: ImageRecord
    opacity: int = 100  # percent
    # A packaged colour table's name or a (256, 3) palette; None = the source's standard table,
    # else the file's own palette, else grey (difference layers: grey).
    table: str | U8Array | None = None
    # Set for a difference layer: the earlier image of the same source subtracted from record
    # (heliostat.imaging.difference), each placed by its own geometry.
    reference: ImageRecord | None = None


@dataclass(frozen=True, slots=True)
class LayerPlacement:
    record: ImageRecord
    reduce: int  # JPEG 2000 resolution reduction used
    drawn: bool  # False when the image lies entirely outside the view


@dataclass(frozen=True, slots=True)
class Composite:
    rgba: U8Array  # (height, width, 4), straight alpha
    layers: tuple[LayerPlacement, ...]


def choose_reduce(view_scale: float, layer_scale: float, num_resolutions: int) -> int:
    ratio = view_scale / layer_scale
    if ratio < 1:
        return 0
    return min(math.floor(math.log2(ratio)), num_resolutions - 1)


def layer_matrix(record: ImageRecord, view: Viewport, reduce: int) -> F64Array:
    """The (2, 3) affine from output pixel centres to pixel centres of the reduced image."""
    j = record.scale
    theta = math.radians(record.rotation)
    c, s = math.cos(theta), math.sin(theta)
    col_c = record.ref_pixel_x - 1
    row_c = record.height - record.ref_pixel_y
    f = 1 << reduce
    k = view.scale / (j * f)
    # Arcsec (x right, y down) of output pixel (0, 0)'s centre.
    x0 = view.x1 + 0.5 * view.scale
    y0 = view.y1 + 0.5 * view.scale
    # The wavelet low-pass behind reduced sample k is centred on native sample f·k (not on the
    # middle of the f native pixels it replaces): native position n is reduced position n / f.
    return np.array(
        [
            [c * k, -s * k, (col_c + (c * x0 - s * y0) / j) / f],
            [s * k, c * k, (row_c + (s * x0 + c * y0) / j) / f],
        ]
    )


def _window(m: F64Array, out_w: int, out_h: int, w: int, h: int) -> tuple[int, int, int, int]:
    """The part [x0, x1) × [y0, y1) of a w × h image an out_w × out_h output samples through
    m, with filter margin."""
    us = np.array([-0.5, out_w - 0.5, -0.5, out_w - 0.5])
    vs = np.array([-0.5, -0.5, out_h - 0.5, out_h - 0.5])
    xs = m[0, 0] * us + m[0, 1] * vs + m[0, 2]
    ys = m[1, 0] * us + m[1, 1] * vs + m[1, 2]
    pad = math.ceil(max(abs(m[0, 0]) + abs(m[0, 1]), abs(m[1, 0]) + abs(m[1, 1]))) + 2
    x0 = max(0, math.floor(xs.min()) - pad)
    y0 = max(0, math.floor(ys.min()) - pad)
    x1 = min(w, math.ceil(xs.max()) + pad + 1)
    y1 = min(h, math.ceil(ys.max()) + pad + 1)
    return x0, y0, x1, y1


def sample_onto(
    reader: JP2Reader,
    fk: FileKey,
    record: ImageRecord,
    scale: float,
    m_native: F64Array,
    out: U8Array,
    alpha: U8Array,
    reduce: int | None = None,
) -> tuple[int, bool, U8Array | None]:
    """Fill ``out`` and ``alpha`` (zeroed by the caller) with ``record``'s image sampled at
    ``m_native``, the (2, 3) affine from output pixel centres to native pixel centres, for
    output pixels of ``scale`` arcsec: the JPEG 2000 reduce level is chosen from the scales
    (or given, as for a difference's reference, which must be low-passed like its target) and
    only the window needed is decoded. Returns (reduce, drawn, the file's palette); drawn is
    False when the image lies outside the output."""
    h, w = out.shape
    try:
        info = reader.info(fk)
        if reduce is None:
            reduce = choose_reduce(scale, record.scale, info.num_resolutions)
        reduce = min(reduce, info.num_resolutions - 1)
        rw, rh = reduced_size(info.width, reduce), reduced_size(info.height, reduce)
        # Native position n is reduced position n / 2^reduce (a power of two: exact).
        m = m_native / (1 << reduce)
        x0, y0, x1, y1 = _window(m, w, h, rw, rh)
        if x0 >= x1 or y0 >= y1:
            return reduce, False, info.palette
        src = reader.region(fk, reduce, x0, y0, x1, y1)
    except FileChangedError as e:
        raise FailedPrecondition(f"{e}; re-ingest it", field="image_id") from None
    except DecodeError as e:
        raise DataLoss(f"image {record.id} cannot be decoded: {e}", field="image_id") from None
    m[0, 2] -= x0
    m[1, 2] -= y0
    warp_affine(src, m, out, alpha)
    return reduce, True, info.palette


class Compositor:
    """Renders views of catalogued JP2 images through a shared JP2Reader (and its caches)."""

    def __init__(self, archive_root: Path, reader: JP2Reader) -> None:
        self.archive_root = archive_root
        self.reader = reader

    def _key(self, record: ImageRecord) -> FileKey:
        return FileKey(str(self.archive_root / record.path), record.file_size, record.file_mtime_ns)

    def _lut(self, layer: LayerInput, palette: U8Array | None) -> U8Array:
        table = layer.table
        if table is None and layer.reference is not None:
            return colortables.rgba(None)  # Helioviewer shows differences in grey
        if table is None:
            table = sources.by_id(layer.record.source_id).color_table
        if isinstance(table, str):
            if table not in colortables.names():
                raise InvalidArgument(f"unknown colour table {table!r}", field="table")
            return colortables.rgba(table)
        rgb = palette if table is None else table
        if rgb is None:
            return colortables.rgba(None)
        if rgb.dtype != np.uint8 or rgb.shape != (256, 3):
            raise InvalidArgument(
                f"a palette must be (256, 3) uint8, not {rgb.shape}", field="table"
            )
        lut = np.full((256, 4), 255, np.uint8)
        lut[:, :3] = rgb
        return lut

    def _samples(
        self, record: ImageRecord, view: Viewport, reduce: int | None = None
    ) -> tuple[U8Array, U8Array, int, bool, U8Array | None]:
        """The layer's samples on the output grid, their coverage, reduce, drawn and palette."""
        out = np.zeros((view.height, view.width), np.uint8)
        alpha = np.zeros((view.height, view.width), np.uint8)
        m = layer_matrix(record, view, 0)
        reduce, drawn, palette = sample_onto(
            self.reader, self._key(record), record, view.scale, m, out, alpha, reduce
        )
        if not drawn:
            return out, alpha, reduce, False, palette
        occulter = OCCULTERS.get(record.source_id)
        if occulter is not None:
            # Sun centre in output pixels; radii from R☉ at 1 AU in output pixels.
            cx = -view.x1 / view.scale - 0.5
            cy = -view.y1 / view.scale - 0.5
            r = RSUN_ARCSEC / view.scale
            radial_mask(alpha, cx, cy, occulter[0] * r, occulter[1] * r)
        return out, alpha, reduce, bool(alpha.any()), palette

    def compose(self, layers: Sequence[LayerInput], view: Viewport) -> Composite:
        if view.width < 1 or view.height < 1 or not view.scale > 0:
            raise InvalidArgument(f"empty view {view}", field="region")
        canvas = np.zeros((view.height, view.width, 4), np.uint8)
        scratch: U8Array | None = None
        empty = True
        placed = []
        for layer in layers:
            if not 0 <= layer.opacity <= 100:
                raise InvalidArgument(f"must be 0-100, got {layer.opacity}", field="opacity")
            samples, alpha, reduce, drawn, palette = self._samples(layer.record, view)
            if drawn and layer.reference is not None:
                # At the target's reduce level: a reference a hair smaller or larger on the sky
                # must not cross a power-of-two boundary and get a different low-pass.
                old, old_alpha, *_ = self._samples(layer.reference, view, reduce)
                difference(samples, alpha, old, old_alpha, out=samples, out_alpha=alpha)
                drawn = bool(alpha.any())
            placed.append(LayerPlacement(layer.record, reduce, drawn))
            if not drawn or layer.opacity == 0:
                continue
            lut = self._lut(layer, palette)
            if empty and layer.opacity == 100:
                # OVER an empty canvas is a copy: colour straight into it.
                colorize.apply_lut_rgba_masked(samples, alpha, lut, out=canvas)
            else:
                scratch = colorize.apply_lut_rgba_masked(samples, alpha, lut, out=scratch)
                blend_over(scratch, layer.opacity, canvas)
            empty = False
        return Composite(canvas, tuple(placed))

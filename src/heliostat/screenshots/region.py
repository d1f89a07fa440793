"""Regions of interest, as Helioviewer's screenshot and movie requests give them.

Coordinates are arcsec from Sun centre, normalised to 1 AU, with y positive **down**: (x1, y1) is
the top-left corner, (x2, y2) the bottom-right. A region is given either by its corners or by a
centre (x0, y0) and a size in pixels at ``image_scale`` arcsec per pixel. The output is
``round((x2 − x1) / image_scale)`` × ``round((y2 − y1) / image_scale)`` pixels anchored at the
top-left corner. Helioviewer silently coarsens the scale of an oversized region; here a region
above the configured limit is refused, so a client never gets a different picture from the one
it asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from heliostat.errors import InvalidArgument, ResourceExhausted
from heliostat.imaging.compose import Viewport

MAX_SIDE = 4096


@dataclass(frozen=True, slots=True)
class Region:
    x1: float
    y1: float
    x2: float
    y2: float
    image_scale: float
    width: int
    height: int

    @property
    def viewport(self) -> Viewport:
        return Viewport(self.x1, self.y1, self.image_scale, self.width, self.height)


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise InvalidArgument(f"must be a finite number, got {value!r}", field=name)
    return float(value)


def _sized(
    x1: float, y1: float, x2: float, y2: float, image_scale: float, max_width: int, max_height: int
) -> Region:
    width = round((x2 - x1) / image_scale)
    height = round((y2 - y1) / image_scale)
    if width < 1 or height < 1:
        raise InvalidArgument(
            f"region {x1:g},{y1:g} to {x2:g},{y2:g} is {width}×{height} px at "
            f"{image_scale:g} arcsec/px; it needs at least one pixel each way",
            field="region",
        )
    if width > max_width or height > max_height:
        raise ResourceExhausted(
            f"region is {width}×{height} px, above the limit of {max_width}×{max_height} px; "
            "use a larger image_scale or a smaller region",
            field="region",
        )
    return Region(x1, y1, x2, y2, image_scale, width, height)


def _scale(image_scale: float) -> float:
    if not (math.isfinite(image_scale) and image_scale > 0):
        raise InvalidArgument(
            f"must be a positive number, got {image_scale!r}", field="image_scale"
        )
    return float(image_scale)


def from_corners(
    x1: float,
    y1: float,
    x2: float,
    y2: float,
    image_scale: float,
    *,
    max_width: int = MAX_SIDE,
    max_height: int = MAX_SIDE,
) -> Region:
    """The region with top-left (x1, y1) and bottom-right (x2, y2), arcsec, y down."""
    s = _scale(image_scale)
    a, b = _finite("x1", x1), _finite("y1", y1)
    return _sized(a, b, _finite("x2", x2), _finite("y2", y2), s, max_width, max_height)


def from_centre(
    x0: float,
    y0: float,
    width: int,
    height: int,
    image_scale: float,
    *,
    max_width: int = MAX_SIDE,
    max_height: int = MAX_SIDE,
) -> Region:
    """The ``width`` × ``height`` px region centred on (x0, y0) arcsec, y down."""
    s = _scale(image_scale)
    cx, cy = _finite("x0", x0), _finite("y0", y0)
    for name, n in (("width", width), ("height", height)):
        if isinstance(n, bool) or not isinstance(n, int):
            raise InvalidArgument(f"must be a whole number of pixels, got {n!r}", field=name)
    half_w, half_h = width * s / 2, height * s / 2
    return _sized(cx - half_w, cy - half_h, cx + half_w, cy + half_h, s, max_width, max_height)

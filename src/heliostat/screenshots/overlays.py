"""Overlays drawn over a screenshot: layer labels, a scale indicator and a watermark.

Helioviewer's takeScreenshot options (its "watermark" is the labels and the logo together):

* **labels** — one line per layer, bottom-left, over a translucent backing: the source's
  nickname and the UTC time of the image actually used ("AIA 171  2014-02-03 02:30:23 UTC"),
  or "no image".
* **scale** — ``scale_type`` "earth": a disc the size of the Earth seen at the Sun from 1 AU
  (2 · 6371 km / 1 AU ≈ 17.57″, so ``17.57 / image_scale`` px across, drawn however small);
  "scalebar": a bar of a round number of arcsec (1, 2 or 5 × 10ⁿ, at most a fifth of the width)
  exactly ``round(arcsec / image_scale)`` px long, labelled in arcsec and km at 1 AU. As in
  Helioviewer the marker's box has its top-left corner at (``scale_x``, ``scale_y``) arcsec from
  Sun centre with y **up** (north), i.e. at (scale_x, −scale_y) in the region's y-down
  coordinates; without a position it sits in the top-right corner (Helioviewer's place for the
  Earth marker; the labels hold the bottom-left). A box reaching past the frame is clipped; a
  position outside the frame is refused.
* **watermark** — the project's logo and name, bottom-right, semi-transparent.

Text is DejaVu Sans, shipped in ``fonts/`` with its licence, sized with the frame. ``draw`` is
pure: an RGBA frame (straight alpha) in, a new one out; with every overlay off it returns the
frame itself.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from importlib import resources
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from heliostat.errors import InvalidArgument
from heliostat.imaging.compose import Viewport

U8Array = npt.NDArray[np.uint8]
ScaleType = Literal["earth", "scalebar"]
SCALE_TYPES: tuple[ScaleType, ...] = ("earth", "scalebar")

AU_KM = 149_597_870.7
EARTH_RADIUS_KM = 6371.0
ARCSEC_PER_RADIAN = 180 * 3600 / math.pi
# Earth's diameter seen from 1 AU: what it measures on the Sun in a 1 AU-normalised view.
EARTH_ARCSEC = 2 * EARTH_RADIUS_KM / AU_KM * ARCSEC_PER_RADIAN
KM_PER_ARCSEC = AU_KM / ARCSEC_PER_RADIAN  # at the Sun, seen from 1 AU

TEXT = (255, 255, 255, 255)
BACKING = (0, 0, 0, 150)
EARTH_BLUE = (64, 140, 255)
WATERMARK_OPACITY = 0.6
WATERMARK_NAME = "Heliostat"

# The cached fonts' FreeType faces are not safe to use from several render threads at once.
_FREETYPE = threading.Lock()


@dataclass(frozen=True, slots=True)
class Overlays:
    labels: bool = False
    scale: bool = False
    scale_type: ScaleType = "earth"
    # Arcsec from Sun centre, y up (Helioviewer's scaleX/scaleY): the top-left of the marker's
    # box; None = the top-right corner.
    scale_x: float | None = None
    scale_y: float | None = None
    watermark: bool = False

    @property
    def any(self) -> bool:
        return self.labels or self.scale or self.watermark


NONE = Overlays()


def check(options: Overlays, view: Viewport) -> None:
    """Refuse options that cannot be drawn on the view, naming the field ("overlays.scale_x").

    A scale position must lie in the frame; a marker box reaching past its edge is clipped.
    """
    if options.scale_type not in SCALE_TYPES:
        message = f"unknown scale type {options.scale_type!r}; use one of {SCALE_TYPES}"
        raise InvalidArgument(message, field="overlays.scale_type")
    x, y = options.scale_x, options.scale_y
    if (x is None) != (y is None):
        missing = "scale_y" if y is None else "scale_x"
        raise InvalidArgument("give scale_x and scale_y together", field=f"overlays.{missing}")
    if x is None or y is None:
        return
    for name, v in (("scale_x", x), ("scale_y", y)):
        if not math.isfinite(v):
            raise InvalidArgument(f"must be a finite number, got {v!r}", field=f"overlays.{name}")
    if not options.scale:
        return
    x2 = view.x1 + view.width * view.scale
    if not view.x1 <= x < x2:
        raise InvalidArgument(
            f"{x:g} arcsec is outside the frame, which spans x {view.x1:g} to {x2:g}",
            field="overlays.scale_x",
        )
    # y up (north positive): the frame spans −y2 < scale_y ≤ −y1.
    y2 = view.y1 + view.height * view.scale
    if not -y2 < y <= -view.y1:
        raise InvalidArgument(
            f"{y:g} arcsec is outside the frame, which spans y {-y2:g} to {-view.y1:g} (north up)",
            field="overlays.scale_y",
        )


def layer_label(name: str, time_us: int | None) -> str:
    """ "AIA 171  2014-02-03 02:30:23 UTC"; "AIA 171  no image" for a source without one."""
    if time_us is None:
        return f"{name}  no image"
    t = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=time_us)
    return f"{name}  {t:%Y-%m-%d %H:%M:%S} UTC"


def font_px(width: int, height: int) -> int:
    """Text size for a frame: ~1/45 of its smaller side, 10-28 px."""
    return max(10, min(28, round(min(width, height) / 45)))


def scalebar_arcsec(image_scale: float, width: int) -> float:
    """The largest 1, 2 or 5 × 10ⁿ arcsec whose bar is at most a fifth of the frame wide."""
    limit = max(width / 5, 1.0) * image_scale
    power = 10.0 ** math.floor(math.log10(limit))
    return next(m * power for m in (5, 2, 1) if m * power <= limit * (1 + 1e-12))


@cache
def _font_bytes(name: str) -> bytes:
    return resources.files("heliostat.screenshots").joinpath("fonts", name).read_bytes()


@cache
def font(size: int, *, bold: bool = False) -> ImageFont.FreeTypeFont:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(io.BytesIO(_font_bytes(name)), size)


@cache
def _logo(size: int) -> Image.Image:
    data = resources.files("heliostat.screenshots").joinpath("logo.png").read_bytes()
    logo = Image.open(io.BytesIO(data)).convert("RGBA")
    return logo.resize((size, size), Image.Resampling.LANCZOS)


def _pad(size: int) -> int:
    return max(3, size // 3)


def _blit(out: U8Array, im: Image.Image, x: int, y: int) -> None:
    """Alpha-composite im over out with its top-left at (x, y), clipped to the frame."""
    h, w = out.shape[:2]
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + im.width, w), min(y + im.height, h)
    if x0 >= x1 or y0 >= y1:
        return
    fg = im.crop((x0 - x, y0 - y, x1 - x, y1 - y))
    bg = Image.fromarray(np.ascontiguousarray(out[y0:y1, x0:x1]), "RGBA")
    bg.alpha_composite(fg)
    out[y0:y1, x0:x1] = np.asarray(bg)


def _labels(lines: Sequence[str], size: int) -> Image.Image:
    f = font(size)
    pad = _pad(size)
    ascent, descent = f.getmetrics()
    line_h = ascent + descent
    text_w = max(math.ceil(f.getlength(s)) for s in lines)
    im = Image.new("RGBA", (text_w + 2 * pad, line_h * len(lines) + 2 * pad), BACKING)
    d = ImageDraw.Draw(im)
    for i, s in enumerate(lines):
        d.text((pad, pad + i * line_h), s, font=f, fill=TEXT)
    return im


# Markers and the watermark depend only on scale and size: kept, as frames of a series repeat them.
@lru_cache(maxsize=64)
def _scalebar(image_scale: float, width: int, size: int) -> Image.Image:
    arcsec = scalebar_arcsec(image_scale, width)
    n = max(1, round(arcsec / image_scale))
    km = arcsec * KM_PER_ARCSEC
    text = f"{arcsec:g}″ ≈ {float(f'{km:.3g}'):,.0f} km"
    f = font(size)
    pad = _pad(size)
    ascent, descent = f.getmetrics()
    t = max(2, size // 6)
    gap = max(2, size // 4)
    im = Image.new(
        "RGBA",
        (
            max(n, math.ceil(f.getlength(text))) + 2 * pad,
            pad + ascent + descent + gap + 2 * t + pad,
        ),
        BACKING,
    )
    d = ImageDraw.Draw(im)
    d.text((pad, pad), text, font=f, fill=TEXT)
    top = pad + ascent + descent + gap
    # Bar n px long (ticks included) on the bottom row, end ticks rising above it.
    d.rectangle((pad, top + t, pad + n - 1, top + 2 * t - 1), fill=TEXT)
    d.rectangle((pad, top, pad + min(t, n) - 1, top + t - 1), fill=TEXT)
    d.rectangle((pad + max(n - t, 0), top, pad + n - 1, top + t - 1), fill=TEXT)
    return im


@lru_cache(maxsize=8)  # at extreme zoom the disc is large
def _earth(image_scale: float, size: int) -> Image.Image:
    r = EARTH_ARCSEC / image_scale / 2
    r_drawn = max(r, 0.6)  # however small, the marker stays visible (one full pixel)
    f = font(size)
    pad = _pad(size)
    ascent, descent = f.getmetrics()
    text = "Earth"
    disc = math.ceil(2 * r_drawn) + 2
    inner_w = max(disc, math.ceil(f.getlength(text)))
    gap = max(2, size // 4)
    w, h = inner_w + 2 * pad, pad + disc + gap + ascent + descent + pad
    box = np.empty((h, w, 4), np.float64)
    box[:] = BACKING
    # Antialiased disc: pixel coverage ~ how far inside the circle the pixel centre lies.
    cx, cy = pad + inner_w / 2, pad + disc / 2
    ys, xs = np.mgrid[0:h, 0:w]
    cover = np.clip(r_drawn + 0.5 - np.hypot(xs + 0.5 - cx, ys + 0.5 - cy), 0.0, 1.0)
    a_back = box[..., 3:] / 255
    a = cover[..., None] + a_back * (1 - cover[..., None])
    rgb = np.array(EARTH_BLUE) * cover[..., None] + box[..., :3] * a_back * (1 - cover[..., None])
    box[..., :3] = rgb / np.maximum(a, 1e-9)
    box[..., 3:] = a * 255
    im = Image.fromarray(np.rint(box).astype(np.uint8), "RGBA")
    ImageDraw.Draw(im).text(
        (pad + (inner_w - f.getlength(text)) / 2, pad + disc + gap), text, font=f, fill=TEXT
    )
    return im


@lru_cache(maxsize=16)
def _watermark(size: int) -> Image.Image:
    f = font(size, bold=True)
    pad = _pad(size)
    logo = _logo(round(size * 1.8))
    text_w = math.ceil(f.getlength(WATERMARK_NAME))
    ascent, descent = f.getmetrics()
    im = Image.new("RGBA", (logo.width + pad + text_w + 2, max(logo.height, ascent + descent)))
    im.alpha_composite(logo)
    d = ImageDraw.Draw(im)
    d.text(
        (logo.width + pad, (im.height - ascent - descent) / 2),
        WATERMARK_NAME,
        font=f,
        fill=TEXT,
        stroke_width=1,
        stroke_fill=(0, 0, 0, 255),
    )
    alpha = np.asarray(im.getchannel("A"), np.float32) * WATERMARK_OPACITY
    im.putalpha(Image.fromarray(np.rint(alpha).astype(np.uint8), "L"))
    return im


def draw(rgba: U8Array, view: Viewport, options: Overlays, labels: Sequence[str] = ()) -> U8Array:
    """The frame with the overlays drawn (in Helioviewer's order: scale, labels, watermark)."""
    if not options.any:
        return rgba
    h, w = rgba.shape[:2]
    size = font_px(w, h)
    margin = size // 2
    placed: list[tuple[Image.Image, int, int]] = []
    with _FREETYPE:
        if options.scale:
            if options.scale_type == "scalebar":
                marker = _scalebar(view.scale, w, size)
            else:
                marker = _earth(view.scale, size)
            if options.scale_x is None or options.scale_y is None:
                placed.append((marker, w - margin - marker.width, margin))
            else:
                # The pixel holding the position; the epsilon keeps exact edges off float noise.
                x = math.floor((options.scale_x - view.x1) / view.scale + 1e-9)
                y = math.floor((-options.scale_y - view.y1) / view.scale + 1e-9)
                placed.append((marker, x, y))
        if options.labels and labels:
            block = _labels(labels, size)
            placed.append((block, margin, h - margin - block.height))
        if options.watermark:
            mark = _watermark(size)
            placed.append((mark, w - margin - mark.width, h - margin - mark.height))
    out = rgba.copy()
    for im, x, y in placed:
        _blit(out, im, x, y)
    return out

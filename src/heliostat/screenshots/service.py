"""Screenshots: a composite of several data sources at one time, encoded, kept and retrievable.

``take`` resolves each layer to an image — the one named, else the source's image closest to the
requested time — composes them over the region and encodes the frame. A source without any image
is reported in the result (``LayerUsed.image`` is None), not an error, as Helioviewer's client
shows "no image for this layer". A difference layer (running or base, heliostat.imaging.difference)
also resolves its reference, the source's last image at or before the reference time; when there
is none (the time is before the source's first image) the layer is reported with
``missing_reference`` and left out of the picture, again rather than failing the whole
screenshot, so the client can say which layer lacks data. Every screenshot gets an id; encoded
screenshots live in a cache bounded by total size and by age, and the request behind each id
(with the images and references it used) is kept, so ``get`` re-renders the same picture once
the bytes have been evicted. Overlays (labels, scale, watermark) are part of the request, so a
re-rendered screenshot carries them too.

PNG and WebP keep transparency where no layer has data; JPEG is flattened on black.
"""

from __future__ import annotations

import io
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image

from heliostat.catalog.records import ImageRecord
from heliostat.errors import InvalidArgument, NotFound
from heliostat.imaging import encode
from heliostat.imaging.compose import Compositor, LayerInput
from heliostat.lru import CacheStats, SizedLRU
from heliostat.screenshots import overlays as ov
from heliostat.screenshots.layers import LayerSpec
from heliostat.screenshots.region import Region

Format = Literal["png", "jpeg", "webp"]
Direction = Literal["nearest", "before", "after"]


class ImageCatalog(Protocol):
    """What the service needs of heliostat.catalog.store.Catalog."""

    def get(self, image_id: int) -> ImageRecord | None: ...

    def closest(self, source_id: int, time_us: int, direction: Direction) -> ImageRecord | None: ...


@dataclass(frozen=True, slots=True)
class ScreenshotRequest:
    time_us: int
    layers: tuple[LayerSpec, ...]
    region: Region
    fmt: Format = "png"
    quality: int = 90  # JPEG and WebP
    direction: Direction = "nearest"
    overlays: ov.Overlays = ov.NONE


@dataclass(frozen=True, slots=True)
class LayerUsed:
    layer: LayerSpec
    image: ImageRecord | None  # None: the source has no image to show
    offset_us: int  # image time − requested time; 0 without an image
    reduce: int  # JPEG 2000 resolution reduction used
    drawn: bool  # False when the image lies outside the region (or there is none)
    reference: ImageRecord | None = None  # a difference layer's reference image
    missing_reference: bool = False  # a difference layer whose reference time has no image


@dataclass(frozen=True, slots=True)
class Screenshot:
    id: str
    data: bytes
    content_type: str
    width: int
    height: int
    layers: tuple[LayerUsed, ...]
    request: ScreenshotRequest
    created: float  # service clock, seconds


@dataclass(frozen=True, slots=True)
class _Stored:
    request: ScreenshotRequest
    images: tuple[ImageRecord | None, ...]
    references: tuple[ImageRecord | None, ...]  # per layer; None for plain layers


def encode_rgba(rgba: npt.NDArray[np.uint8], fmt: Format, quality: int) -> bytes:
    """A (h, w, 4) straight-alpha frame as PNG (encode.png_rgba), JPEG (on black) or WebP."""
    if fmt == "png":
        return encode.png_rgba(rgba)
    h, w = rgba.shape[:2]
    im = Image.frombuffer("RGBA", (w, h), np.ascontiguousarray(rgba), "raw", "RGBA", 0, 1)
    buf = io.BytesIO()
    if fmt == "jpeg":
        flat = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im)
        flat.convert("RGB").save(buf, "JPEG", quality=quality)
    else:
        im.save(buf, "WEBP", quality=quality, method=encode.WEBP_METHOD, lossless=False)
    return buf.getvalue()


class ScreenshotService:
    def __init__(
        self,
        catalog: ImageCatalog,
        compositor: Compositor,
        *,
        cache_bytes: int = 256 << 20,
        max_age_s: float = 3600.0,
        max_requests: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.catalog = catalog
        self.compositor = compositor
        self.max_age_s = max_age_s
        self._clock = clock
        self._shots: SizedLRU[str, Screenshot] = SizedLRU(cache_bytes, lambda s: len(s.data) + 512)
        self._requests: SizedLRU[str, _Stored] = SizedLRU(max_requests, lambda _: 1)

    def _resolve(self, request: ScreenshotRequest, image_ids: Sequence[int | None]) -> _Stored:
        if len(image_ids) not in (0, len(request.layers)):
            raise InvalidArgument(
                f"{len(image_ids)} image ids for {len(request.layers)} layers", field="image_ids"
            )
        out: list[ImageRecord | None] = []
        for i, layer in enumerate(request.layers):
            image_id = image_ids[i] if image_ids else None
            if image_id is None:
                out.append(
                    self.catalog.closest(layer.source.id, request.time_us, request.direction)
                )
                continue
            record = self.catalog.get(image_id)
            if record is None:
                raise NotFound(f"no image {image_id}", field="image_ids")
            if record.source_id != layer.source.id:
                raise InvalidArgument(
                    f"image {image_id} is not from {layer.source.name} (layer {i})",
                    field="image_ids",
                )
            out.append(record)
        references = []
        for layer, image in zip(request.layers, out, strict=True):
            ref = None
            if layer.diff is not None and image is not None:
                when = layer.diff.reference_time(image.time_us)
                ref = self.catalog.closest(layer.source.id, when, "before")
            references.append(ref)
        return _Stored(request, tuple(out), tuple(references))

    def _render(self, shot_id: str, stored: _Stored) -> Screenshot:
        request = stored.request
        resolved = list(zip(request.layers, stored.images, stored.references, strict=True))

        def missing(layer: LayerSpec, image: ImageRecord | None, ref: ImageRecord | None) -> bool:
            return layer.diff is not None and image is not None and ref is None

        inputs = [
            LayerInput(image, layer.opacity, reference=ref)
            for layer, image, ref in resolved
            if image is not None and not missing(layer, image, ref)
        ]
        frame = self.compositor.compose(inputs, request.region.viewport)
        placements = iter(frame.layers)
        used = []
        for layer, image, ref in resolved:
            if image is None:
                used.append(LayerUsed(layer, None, 0, 0, False))
            elif missing(layer, image, ref):
                offset = image.time_us - request.time_us
                used.append(LayerUsed(layer, image, offset, 0, False, missing_reference=True))
            else:
                p = next(placements)
                offset = image.time_us - request.time_us
                used.append(LayerUsed(layer, image, offset, p.reduce, p.drawn, ref))
        labels = [
            ov.layer_label(u.layer.source.name, u.image.time_us if u.image else None) for u in used
        ]
        rgba = ov.draw(frame.rgba, request.region.viewport, request.overlays, labels)
        data = encode_rgba(rgba, request.fmt, request.quality)
        shot = Screenshot(
            shot_id,
            data,
            encode.content_type(request.fmt),
            request.region.width,
            request.region.height,
            tuple(used),
            request,
            self._clock(),
        )
        self._shots.put(shot_id, shot)
        return shot

    def take(
        self,
        time_us: int,
        layers: Sequence[LayerSpec],
        region: Region,
        fmt: Format = "png",
        quality: int = 90,
        *,
        image_ids: Sequence[int | None] = (),
        direction: Direction = "nearest",
        overlays: ov.Overlays = ov.NONE,
    ) -> Screenshot:
        """Compose, encode and keep a screenshot; ``image_ids`` pins layers to images,
        ``overlays`` says what to draw over it."""
        if fmt not in encode.FORMATS:
            message = f"unknown format {fmt!r}; use one of {encode.FORMATS}"
            raise InvalidArgument(message, field="format")
        if isinstance(quality, bool) or not 1 <= quality <= 100:
            raise InvalidArgument(f"must be 1-100, got {quality}", field="quality")
        if not layers:
            raise InvalidArgument("no visible layers", field="layers")
        if direction not in ("nearest", "before", "after"):
            raise InvalidArgument(f"unknown direction {direction!r}", field="direction")
        ov.check(overlays, region.viewport)
        request = ScreenshotRequest(
            time_us, tuple(layers), region, fmt, quality, direction, overlays
        )
        stored = self._resolve(request, image_ids)
        shot_id = secrets.token_urlsafe(12)
        shot = self._render(shot_id, stored)
        self._requests.put(shot_id, stored)
        return shot

    def get(self, shot_id: str) -> Screenshot:
        """A screenshot by id, re-rendered from its request when evicted or older than max age."""
        shot = self._shots.get(shot_id)
        if shot is not None and self._clock() - shot.created <= self.max_age_s:
            return shot
        stored = self._requests.get(shot_id)
        if stored is None:
            raise NotFound(f"no screenshot {shot_id!r}", field="id")
        return self._render(shot_id, stored)

    def stats(self) -> dict[str, CacheStats]:
        return {"screenshots": self._shots.stats(), "screenshot_requests": self._requests.stats()}

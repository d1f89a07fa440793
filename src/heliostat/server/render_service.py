"""gRPC RenderService: tiles and screenshots.

Cached tiles are answered on the event loop without a thread hop; everything else is rendered in
the executor.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

import grpc

from heliostat.app import Heliostat
from heliostat.catalog.records import ImageRecord
from heliostat.errors import InvalidArgument
from heliostat.imaging import difference
from heliostat.imaging.tiles import Tile, tile_key
from heliostat.screenshots import region
from heliostat.screenshots.overlays import Overlays, ScaleType
from heliostat.screenshots.service import Screenshot
from heliostat.server import convert
from heliostat.server.calls import handles_errors, offload
from heliostat.v1 import render_pb2 as pb
from heliostat.v1 import render_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]

_FORMATS = {pb.IMAGE_FORMAT_PNG: "png", pb.IMAGE_FORMAT_JPEG: "jpeg", pb.IMAGE_FORMAT_WEBP: "webp"}
_SCALE_TYPES: dict[int, ScaleType] = {
    pb.SCALE_TYPE_EARTH: "earth",
    pb.SCALE_TYPE_SCALEBAR: "scalebar",
}
DEFAULT_QUALITY = 85
DEFAULT_SCREENSHOT_QUALITY = 90
WATERMARK_MIN_SIDE = 200


def _message(tile: Tile, reference: ImageRecord | None) -> pb.Tile:
    msg = pb.Tile(
        data=tile.data,
        content_type=tile.content_type,
        width=tile.width,
        height=tile.height,
        reduce=tile.reduce,
    )
    if reference is not None:
        msg.reference_image_id = reference.id
        msg.reference_date.CopyFrom(convert.to_timestamp(reference.time_us))
    return msg


def _difference(request: pb.GetTileRequest) -> difference.Difference | None:
    base = (
        convert.timestamp_us(request.base_diff_time, "base_diff_time")
        if request.HasField("base_diff_time")
        else None
    )
    return difference.options(request.difference, request.diff_count, request.diff_time, base)


def _overlays(msg: pb.Overlays, roi: region.Region) -> Overlays:
    scale_type = _SCALE_TYPES.get(msg.scale_type)
    if scale_type is None:
        raise InvalidArgument(f"unknown scale type {msg.scale_type}", field="overlays.scale_type")
    # Helioviewer draws its watermark (labels and logo) unless told not to, on frames of at
    # least 200x200 px.
    default = roi.width >= WATERMARK_MIN_SIDE and roi.height >= WATERMARK_MIN_SIDE
    return Overlays(
        labels=msg.labels if msg.HasField("labels") else default,
        scale=msg.scale,
        scale_type=scale_type,
        scale_x=msg.scale_x if msg.HasField("scale_x") else None,
        scale_y=msg.scale_y if msg.HasField("scale_y") else None,
        watermark=msg.watermark if msg.HasField("watermark") else default,
    )


def _screenshot(shot: Screenshot) -> pb.Screenshot:
    msg = pb.Screenshot(
        id=shot.id,
        data=shot.data,
        content_type=shot.content_type,
        width=shot.width,
        height=shot.height,
    )
    for used in shot.layers:
        layer = msg.layers.add(
            source_id=used.layer.source.id,
            source_name=used.layer.source.name,
            opacity=used.layer.opacity,
            reduce=used.reduce,
            drawn=used.drawn,
        )
        if used.image is not None:
            layer.image_id = used.image.id
            layer.date.CopyFrom(convert.to_timestamp(used.image.time_us))
            layer.offset.CopyFrom(convert.to_duration(used.offset_us))
        if used.reference is not None:
            layer.reference_image_id = used.reference.id
            layer.reference_date.CopyFrom(convert.to_timestamp(used.reference.time_us))
        layer.missing_reference = used.missing_reference
    return msg


class RenderService(render_pb2_grpc.RenderServiceServicer):
    def __init__(self, app: Heliostat, executor: Executor) -> None:
        self.app = app
        self.executor = executor

    @handles_errors
    async def GetTile(self, request: pb.GetTileRequest, context: Ctx) -> pb.Tile:
        fmt = _FORMATS.get(request.format)
        if fmt is None:
            raise InvalidArgument(f"unknown format {request.format}", field="format")
        quality = request.quality or DEFAULT_QUALITY
        diff = _difference(request)
        record = self.app.image(request.image_id, field="image_id")
        ref = self.app.difference_reference(record, diff)
        hit = self.app.tiles.cached(
            tile_key(record, request.x, request.y, request.image_scale, fmt, quality, ref)
        )
        if hit is not None:
            return _message(hit, ref)
        tile = await offload(
            context,
            self.executor,
            lambda: self.app.tiles.render(
                record, request.x, request.y, request.image_scale, fmt, quality, ref
            ),
        )
        return _message(tile, ref)

    @handles_errors
    async def TakeScreenshot(
        self, request: pb.TakeScreenshotRequest, context: Ctx
    ) -> pb.Screenshot:
        t = convert.required_time(request, "date")
        fmt = _FORMATS.get(request.format)
        if fmt is None:
            raise InvalidArgument(f"unknown format {request.format}", field="format")
        which = request.WhichOneof("region")
        if which == "corners":
            c = request.corners
            roi = region.from_corners(c.x1, c.y1, c.x2, c.y2, request.image_scale)
        elif which == "centre":
            m = request.centre
            roi = region.from_centre(m.x0, m.y0, m.width, m.height, request.image_scale)
        else:
            raise InvalidArgument("give corners or a centre and size", field="region")
        quality = request.quality or DEFAULT_SCREENSHOT_QUALITY
        overlays = _overlays(request.overlays, roi)
        shot = await offload(
            context,
            self.executor,
            lambda: self.app.take_screenshot(
                t, request.layers, roi, fmt, quality, list(request.image_ids), overlays
            ),
        )
        return _screenshot(shot)

    @handles_errors
    async def GetScreenshot(self, request: pb.GetScreenshotRequest, context: Ctx) -> pb.Screenshot:
        if not request.id:
            raise InvalidArgument("is required", field="id")
        return _screenshot(
            await offload(context, self.executor, lambda: self.app.screenshot(request.id))
        )

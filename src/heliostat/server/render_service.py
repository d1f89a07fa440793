"""gRPC RenderService: tiles. Cached tiles are answered on the event loop without a thread hop."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

import grpc

from heliostat.app import Heliostat
from heliostat.errors import InvalidArgument
from heliostat.imaging.tiles import Tile, tile_key
from heliostat.server.calls import handles_errors, offload
from heliostat.v1 import render_pb2 as pb
from heliostat.v1 import render_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]

_FORMATS = {pb.IMAGE_FORMAT_PNG: "png", pb.IMAGE_FORMAT_JPEG: "jpeg", pb.IMAGE_FORMAT_WEBP: "webp"}
DEFAULT_QUALITY = 85


def _message(tile: Tile) -> pb.Tile:
    return pb.Tile(
        data=tile.data,
        content_type=tile.content_type,
        width=tile.width,
        height=tile.height,
        reduce=tile.reduce,
    )


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
        record = self.app.image(request.image_id, field="image_id")
        hit = self.app.tiles.cached(
            tile_key(record, request.x, request.y, request.image_scale, fmt, quality)
        )
        if hit is not None:
            return _message(hit)
        tile = await offload(
            context,
            self.executor,
            lambda: self.app.tiles.render(
                record, request.x, request.y, request.image_scale, fmt, quality
            ),
        )
        return _message(tile)

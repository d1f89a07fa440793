"""A typed Python client for a Heliostat server, over the generated gRPC stubs.

    with HeliostatClient("127.0.0.1:50051") as hs:
        img = hs.closest_image(10, datetime(2014, 2, 3, 2, 30, tzinfo=UTC))
        png = hs.tile(img.id, 0, 0, image_scale=img.scale).data

Errors arrive as ``grpc.RpcError`` with the server's status code and a message naming the field.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Literal

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from heliostat.archive import times
from heliostat.server.convert import to_duration, to_timestamp
from heliostat.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    archive_pb2,
    archive_pb2_grpc,
    render_pb2,
    render_pb2_grpc,
)

_DIRECTIONS = {
    "nearest": archive_pb2.DIRECTION_NEAREST,
    "before": archive_pb2.DIRECTION_BEFORE,
    "after": archive_pb2.DIRECTION_AFTER,
}
_FORMATS = {
    "png": render_pb2.IMAGE_FORMAT_PNG,
    "jpeg": render_pb2.IMAGE_FORMAT_JPEG,
    "webp": render_pb2.IMAGE_FORMAT_WEBP,
}


def _ts(dt: datetime) -> Timestamp:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return to_timestamp(times.from_datetime(dt))


class HeliostatClient:
    def __init__(
        self, target: str, *, timeout: float = 30.0, max_message_bytes: int = 64 << 20
    ) -> None:
        self.timeout = timeout
        self.channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.http2.max_frame_size", 1 << 20),  # fewer frames per tile
            ],
        )
        self.archive = archive_pb2_grpc.ArchiveServiceStub(self.channel)
        self.render = render_pb2_grpc.RenderServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> HeliostatClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the server reports SERVING (kernels warmed), or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                r = self.health.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("server did not report SERVING in time")
            time.sleep(0.05)

    # -- archive -------------------------------------------------------------------------------

    def data_sources(self, *, with_data_only: bool = False) -> list[archive_pb2.DataSource]:
        r = self.archive.ListDataSources(
            archive_pb2.ListDataSourcesRequest(with_data_only=with_data_only), timeout=self.timeout
        )
        return list(r.sources)

    def closest_image(
        self,
        source_id: int,
        date: datetime,
        direction: Literal["nearest", "before", "after"] = "nearest",
    ) -> archive_pb2.Image:
        return self.archive.GetClosestImage(
            archive_pb2.GetClosestImageRequest(
                source_id=source_id, date=_ts(date), direction=_DIRECTIONS[direction]
            ),
            timeout=self.timeout,
        )

    def image(self, image_id: int) -> archive_pb2.Image:
        return self.archive.GetImage(archive_pb2.GetImageRequest(id=image_id), timeout=self.timeout)

    def images(
        self, source_id: int, start: datetime, end: datetime, *, page_size: int = 100
    ) -> Iterator[archive_pb2.Image]:
        """Every image of a source in [start, end], fetched page by page."""
        token = ""
        while True:
            r = self.archive.ListImages(
                archive_pb2.ListImagesRequest(
                    source_id=source_id,
                    start=_ts(start),
                    end=_ts(end),
                    page_size=page_size,
                    page_token=token,
                ),
                timeout=self.timeout,
            )
            yield from r.images
            token = r.next_page_token
            if not token:
                return

    def evenly_spaced(
        self, source_id: int, start: datetime, end: datetime, n: int
    ) -> list[archive_pb2.Image]:
        r = self.archive.ListImages(
            archive_pb2.ListImagesRequest(
                source_id=source_id, start=_ts(start), end=_ts(end), evenly_spaced=n
            ),
            timeout=self.timeout,
        )
        return list(r.images)

    def coverage(
        self, source_ids: Sequence[int], start: datetime, end: datetime, bin: timedelta
    ) -> dict[int, list[int]]:
        r = self.archive.GetCoverage(
            archive_pb2.GetCoverageRequest(
                source_ids=list(source_ids),
                start=_ts(start),
                end=_ts(end),
                bin=to_duration(int(bin / timedelta(microseconds=1))),
            ),
            timeout=self.timeout,
        )
        return {s.source_id: list(s.counts) for s in r.series}

    def status(self) -> list[archive_pb2.SourceStatus]:
        return list(
            self.archive.GetStatus(archive_pb2.GetStatusRequest(), timeout=self.timeout).sources
        )

    def jp2_header(self, image_id: int) -> str:
        return self.archive.GetJP2Header(
            archive_pb2.GetJP2HeaderRequest(id=image_id), timeout=self.timeout
        ).xml

    def ingest(self, paths: Sequence[str]) -> archive_pb2.IngestResponse:
        return self.archive.Ingest(
            archive_pb2.IngestRequest(paths=list(paths)), timeout=self.timeout
        )

    # -- administration ------------------------------------------------------------------------

    def ingest_stats(self) -> admin_pb2.IngestStats:
        return self.admin.GetIngestStats(admin_pb2.GetIngestStatsRequest(), timeout=self.timeout)

    def events(self, after_seq: int = 0, limit: int = 100) -> list[admin_pb2.CatalogEvent]:
        """Catalog events with sequence numbers above after_seq, oldest first."""
        r = self.admin.ListEvents(
            admin_pb2.ListEventsRequest(after_seq=after_seq, limit=limit), timeout=self.timeout
        )
        return list(r.events)

    # -- rendering -----------------------------------------------------------------------------

    def tile(
        self,
        image_id: int,
        x: int,
        y: int,
        image_scale: float,
        fmt: Literal["png", "jpeg", "webp"] = "png",
        quality: int = 0,
    ) -> render_pb2.Tile:
        return self.render.GetTile(
            render_pb2.GetTileRequest(
                image_id=image_id,
                x=x,
                y=y,
                image_scale=image_scale,
                format=_FORMATS[fmt],
                quality=quality,
            ),
            timeout=self.timeout,
        )

    def screenshot(
        self,
        date: datetime,
        layers: str,
        image_scale: float,
        *,
        corners: tuple[float, float, float, float] | None = None,
        centre: tuple[float, float, int, int] | None = None,
        fmt: Literal["png", "jpeg", "webp"] = "png",
        quality: int = 0,
        image_ids: Sequence[int] = (),
    ) -> render_pb2.Screenshot:
        """Composite a Helioviewer layer string ("[SDO,AIA,AIA,171,1,100],[5,1,60]") over a region
        given by corners (x1, y1, x2, y2 arcsec, y down) or centre (x0, y0 arcsec, width,
        height px)."""
        req = render_pb2.TakeScreenshotRequest(
            date=_ts(date),
            layers=layers,
            image_scale=image_scale,
            format=_FORMATS[fmt],
            quality=quality,
            image_ids=list(image_ids),
        )
        if corners is not None:
            req.corners.CopyFrom(
                render_pb2.Corners(x1=corners[0], y1=corners[1], x2=corners[2], y2=corners[3])
            )
        if centre is not None:
            req.centre.CopyFrom(
                render_pb2.Centre(x0=centre[0], y0=centre[1], width=centre[2], height=centre[3])
            )
        return self.render.TakeScreenshot(req, timeout=self.timeout)

    def get_screenshot(self, shot_id: str) -> render_pb2.Screenshot:
        return self.render.GetScreenshot(
            render_pb2.GetScreenshotRequest(id=shot_id), timeout=self.timeout
        )

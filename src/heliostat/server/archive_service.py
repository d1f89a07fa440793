"""gRPC ArchiveService: a thin translation onto heliostat.app.Heliostat."""

from __future__ import annotations

import time
from concurrent.futures import Executor
from typing import Any, get_args

import grpc

from heliostat.app import Direction, Heliostat
from heliostat.errors import InvalidArgument
from heliostat.server import convert
from heliostat.server.calls import handles_errors, offload
from heliostat.v1 import archive_pb2 as pb
from heliostat.v1 import archive_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]
_DIRECTIONS: dict[int, Direction] = {
    pb.DIRECTION_NEAREST: "nearest",
    pb.DIRECTION_BEFORE: "before",
    pb.DIRECTION_AFTER: "after",
}
assert set(_DIRECTIONS.values()) == set(get_args(Direction))


class ArchiveService(archive_pb2_grpc.ArchiveServiceServicer):
    def __init__(self, app: Heliostat, executor: Executor) -> None:
        self.app = app
        self.executor = executor

    @handles_errors
    async def ListDataSources(
        self, request: pb.ListDataSourcesRequest, context: Ctx
    ) -> pb.ListDataSourcesResponse:
        summaries = self.app.data_sources(with_data_only=request.with_data_only)
        out = pb.ListDataSourcesResponse()
        for s in summaries:
            msg = convert.data_source(s.source)
            msg.image_count = s.count
            if s.first is not None and s.last is not None:
                msg.first.CopyFrom(convert.to_timestamp(s.first.time_us))
                msg.last.CopyFrom(convert.to_timestamp(s.last.time_us))
            out.sources.append(msg)
        return out

    @handles_errors
    async def GetClosestImage(self, request: pb.GetClosestImageRequest, context: Ctx) -> pb.Image:
        t = convert.required_time(request, "date")
        direction = _DIRECTIONS.get(request.direction)
        if direction is None:
            raise InvalidArgument(f"unknown direction {request.direction}", field="direction")
        # A catalog probe takes microseconds: answered on the event loop, no thread hop.
        rec = self.app.closest(request.source_id, t, direction)
        return convert.image(rec, requested_us=t)

    @handles_errors
    async def GetImage(self, request: pb.GetImageRequest, context: Ctx) -> pb.Image:
        return convert.image(self.app.image(request.id))

    @handles_errors
    async def ListImages(
        self, request: pb.ListImagesRequest, context: Ctx
    ) -> pb.ListImagesResponse:
        start = convert.required_time(request, "start")
        end = convert.required_time(request, "end")
        if request.evenly_spaced:
            n = request.evenly_spaced
            records = await offload(
                context,
                self.executor,
                lambda: self.app.evenly_spaced(request.source_id, start, end, n),
            )
            token = ""
        else:
            records, token = await offload(
                context,
                self.executor,
                lambda: self.app.list_images(
                    request.source_id,
                    start,
                    end,
                    page_size=request.page_size,
                    page_token=request.page_token,
                ),
            )
        return pb.ListImagesResponse(
            images=[convert.image(r) for r in records], next_page_token=token
        )

    @handles_errors
    async def GetCoverage(
        self, request: pb.GetCoverageRequest, context: Ctx
    ) -> pb.GetCoverageResponse:
        start = convert.required_time(request, "start")
        end = convert.required_time(request, "end")
        if not request.HasField("bin"):
            raise InvalidArgument("is required", field="bin")
        bin_us = convert.duration_us(request.bin)
        counts = await offload(
            context,
            self.executor,
            lambda: self.app.coverage(list(request.source_ids), start, end, bin_us),
        )
        return pb.GetCoverageResponse(
            start=convert.to_timestamp(start),
            bin=convert.to_duration(bin_us),
            series=[pb.CoverageSeries(source_id=s, counts=c) for s, c in counts.items()],
        )

    @handles_errors
    async def GetStatus(self, request: pb.GetStatusRequest, context: Ctx) -> pb.GetStatusResponse:
        now_us = time.time_ns() // 1000
        return pb.GetStatusResponse(
            sources=[
                pb.SourceStatus(
                    source_id=s.source.id,
                    name=s.source.name,
                    latest=convert.to_timestamp(s.latest.time_us),
                    seconds_behind=s.seconds_behind,
                    level=s.level,
                )
                for s in self.app.status(now_us)
            ]
        )

    @handles_errors
    async def GetJP2Header(
        self, request: pb.GetJP2HeaderRequest, context: Ctx
    ) -> pb.GetJP2HeaderResponse:
        xml = await offload(context, self.executor, lambda: self.app.jp2_header(request.id))
        return pb.GetJP2HeaderResponse(xml=xml)

    @handles_errors
    async def Ingest(self, request: pb.IngestRequest, context: Ctx) -> pb.IngestResponse:
        if not request.paths:
            raise InvalidArgument("name at least one file or folder", field="paths")
        report = await offload(context, self.executor, lambda: self.app.ingest(list(request.paths)))
        return pb.IngestResponse(
            indexed=report.indexed,
            unchanged=report.unchanged,
            rejected=[pb.Rejection(path=p, reason=r) for p, r in report.rejected],
        )

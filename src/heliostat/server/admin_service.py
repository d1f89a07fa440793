"""gRPC AdminService: a thin translation onto heliostat.app.Heliostat."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

import grpc

from heliostat.app import Heliostat
from heliostat.catalog.codec import EventKind
from heliostat.server import convert
from heliostat.server.calls import handles_errors, offload
from heliostat.v1 import admin_pb2 as pb
from heliostat.v1 import admin_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]
_KINDS: dict[EventKind, pb.EventKind] = {
    "insert": pb.EVENT_KIND_INSERT,
    "update": pb.EVENT_KIND_UPDATE,
    "delete": pb.EVENT_KIND_DELETE,
}


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, app: Heliostat, executor: Executor) -> None:
        self.app = app
        self.executor = executor

    @handles_errors
    async def GetIngestStats(
        self, request: pb.GetIngestStatsRequest, context: Ctx
    ) -> pb.IngestStats:
        c = self.app.ingest_counts()
        return pb.IngestStats(
            seen=c.seen,
            converted=c.converted,
            indexed=c.indexed,
            rejected=c.rejected,
            deleted=c.deleted,
            stages=[
                pb.StageTiming(stage=s, files=t.files, mean_seconds=t.mean_s, max_seconds=t.max_s)
                for s, t in c.stages.items()
            ],
        )

    @handles_errors
    async def GetDeliveryStats(
        self, request: pb.GetDeliveryStatsRequest, context: Ctx
    ) -> pb.DeliveryStats:
        c = await offload(context, self.executor, self.app.subscriptions.delivery_stats)
        return pb.DeliveryStats(
            counters=dict(c.counters),
            stages=[
                pb.DeliveryStage(stage=s, count=t.count, mean_seconds=t.mean_s, max_seconds=t.max_s)
                for s, t in c.stages.items()
            ],
            depths=dict(c.depths),
        )

    @handles_errors
    async def ListEvents(
        self, request: pb.ListEventsRequest, context: Ctx
    ) -> pb.ListEventsResponse:
        events, last = await offload(
            context, self.executor, lambda: self.app.events(request.after_seq, request.limit)
        )
        return pb.ListEventsResponse(
            events=[
                pb.CatalogEvent(
                    seq=e.seq,
                    kind=_KINDS[e.kind],
                    image_id=e.image_id,
                    source_id=e.source_id,
                    date=convert.to_timestamp(e.time_us),
                    footprint=pb.Footprint(
                        x_min=e.footprint.x_min,
                        y_min=e.footprint.y_min,
                        x_max=e.footprint.x_max,
                        y_max=e.footprint.y_max,
                    ),
                    path=e.path,
                    width=e.width,
                    height=e.height,
                    scale=e.scale,
                )
                for e in events
            ],
            last_seq=last,
        )

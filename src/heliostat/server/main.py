"""The gRPC server: grpc.aio on uvloop, with health, reflection and graceful shutdown."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from heliostat.app import FEED_BATCH, Heliostat
from heliostat.archive.watch import Watcher
from heliostat.server.admin_service import AdminService
from heliostat.server.archive_service import ArchiveService
from heliostat.server.render_service import RenderService
from heliostat.server.subscription_service import SubscriptionServicer
from heliostat.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    archive_pb2,
    archive_pb2_grpc,
    render_pb2,
    render_pb2_grpc,
    subscriptions_pb2,
    subscriptions_pb2_grpc,
)

SERVICE_NAMES = (
    archive_pb2.DESCRIPTOR.services_by_name["ArchiveService"].full_name,
    render_pb2.DESCRIPTOR.services_by_name["RenderService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    subscriptions_pb2.DESCRIPTOR.services_by_name["SubscriptionService"].full_name,
)
MAX_RECEIVE_BYTES = 4 << 20  # requests are small; refuse anything bigger early
FEED_INTERVAL_S = 0.1  # catalog events reach the subscription matcher within this


class Server:
    def __init__(
        self, app: Heliostat, *, host: str = "127.0.0.1", port: int = 0, reuse_port: bool = False
    ) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.port = 0
        profile = app.profile
        self.executor = ThreadPoolExecutor(profile.render_workers, thread_name_prefix="render")
        self.health = HealthServicer()
        self.server = grpc.aio.server(
            options=[
                # Off unless several processes share the port on purpose: otherwise a second
                # server would silently share a busy port instead of failing.
                ("grpc.so_reuseport", 1 if reuse_port else 0),
                ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
                ("grpc.max_send_message_length", profile.max_message_bytes),
                ("grpc.http2.max_frame_size", 1 << 20),  # fewer HTTP/2 frames per tile
            ],
            maximum_concurrent_rpcs=profile.max_concurrent_rpcs,
        )
        archive_pb2_grpc.add_ArchiveServiceServicer_to_server(
            ArchiveService(app, self.executor), self.server
        )
        render_pb2_grpc.add_RenderServiceServicer_to_server(
            RenderService(app, self.executor), self.server
        )
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminService(app, self.executor), self.server
        )
        subscriptions_pb2_grpc.add_SubscriptionServiceServicer_to_server(
            SubscriptionServicer(app.subscriptions, self.executor), self.server
        )
        self._feeder: asyncio.Task[None] | None = None
        self.drivers = app.delivery_drivers()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )

    async def _set_all(self, status: int) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def start(self) -> int:
        """Bind, start, warm the kernels, then report SERVING. Returns the bound port."""
        port = self.server.add_insecure_port(f"{self.host}:{self.requested_port}")
        if port == 0:
            raise OSError(f"cannot listen on {self.host}:{self.requested_port}")
        self.port = port
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self.app.warm)
        await loop.run_in_executor(self.executor, self._feed_all)  # once at start
        # What start-up made (modules, kernels, indexes) lives for good: out of the collector's
        # sight, a full collection takes microseconds instead of pausing every call ~60 ms.
        gc.freeze()
        self._feeder = asyncio.create_task(self._feed_subscriptions())
        await self._set_all(health_pb2.HealthCheckResponse.SERVING)
        await self.drivers.start()
        return port

    def _feed_all(self) -> None:
        while self.app.feed_subscriptions() == FEED_BATCH:
            pass

    async def _feed_subscriptions(self) -> None:
        """Feed catalog events to the subscription matcher every FEED_INTERVAL_S."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(FEED_INTERVAL_S)
            try:
                await loop.run_in_executor(self.executor, self._feed_all)
            except Exception as e:  # the catalog keeps the events: the next pass retries
                print(f"heliostat: subscription feed failed: {e!r}", file=sys.stderr, flush=True)

    async def stop(self, grace: float = 10.0) -> None:
        """Report NOT_SERVING so balancers drain, finish in-flight calls, then stop."""
        await self.health.enter_graceful_shutdown()
        if self._feeder is not None:
            self._feeder.cancel()
        self.app.subscriptions.notifications.end_streams()  # open-ended: they would use the grace
        # Drain deliveries (no new leases; batches in flight recorded) while calls finish.
        await asyncio.gather(self.drivers.stop(grace), self.server.stop(grace))
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.app.close()


async def serve(
    app: Heliostat,
    *,
    host: str,
    port: int,
    reuse_port: bool = False,
    grace: float = 10.0,
    watcher: Watcher | None = None,
    early_stop: threading.Event | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully.

    A watcher given runs in its own thread while the server serves; it is stopped (its pass in
    progress finished) before the server closes the catalog.
    """
    server = Server(app, host=host, port=port, reuse_port=reuse_port)
    bound = await server.start()
    print(f"heliostat: gRPC listening on {host}:{bound} (profile {app.profile.name})", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    if early_stop is not None and early_stop.is_set():
        stopping.set()
    if watcher is not None:
        watcher.start()
    try:
        await stopping.wait()
        print("heliostat: shutting down", flush=True)
    finally:
        if watcher is not None:  # its thread would otherwise keep the process alive
            await loop.run_in_executor(None, watcher.stop)
    await server.stop(grace)

"""A typed Python client for a Heliostat server, over the generated gRPC stubs.

    with HeliostatClient("127.0.0.1:50051") as hs:
        img = hs.closest_image(10, datetime(2014, 2, 3, 2, 30, tzinfo=UTC))
        png = hs.tile(img.id, 0, 0, image_scale=img.scale).data

Errors arrive as ``grpc.RpcError`` with the server's status code and a message naming the field.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Literal, cast

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
    subscriptions_pb2,
    subscriptions_pb2_grpc,
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


class NotificationStream:
    """A live WatchNotifications stream: iterate for notifications; ``cursor`` is where to resume
    (``start_cursor`` the position the server fixed before the first). Ends with
    ``grpc.RpcError`` on a failure or an expired timeout, normally when the server shuts down;
    ``cancel`` (or leaving a ``with`` block) closes it."""

    def __init__(self, call: Iterator[subscriptions_pb2.WatchNotificationsResponse]) -> None:
        self._call = call
        self._cursor = ""
        self._items = self._flatten()

    def _flatten(self) -> Iterator[subscriptions_pb2.Notification]:
        for r in self._call:
            for n in r.notifications:
                self._cursor = n.id
                yield n
            if r.cursor:  # past actions not for us: reached once those above are done
                self._cursor = r.cursor

    @property
    def cursor(self) -> str:
        """Where to resume after a reconnect: the last notification taken from the iterator,
        or further on past others' events; the start cursor before any."""
        return self._cursor or self.start_cursor

    def __iter__(self) -> Iterator[subscriptions_pb2.Notification]:
        return self._items

    def __next__(self) -> subscriptions_pb2.Notification:
        return next(self._items)

    @property
    def start_cursor(self) -> str:
        """Blocks until the server has opened the stream (or raises its error): events recorded
        from then on are delivered."""
        call = cast(grpc.Call, self._call)
        md = dict(call.initial_metadata() or ())
        if "heliostat-cursor" not in md:
            call.code()  # the call failed before it started: wait for its status
            raise cast(grpc.RpcError, call)
        return str(md["heliostat-cursor"])

    def cancel(self) -> None:
        cast(grpc.Call, self._call).cancel()

    def __enter__(self) -> NotificationStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()


def create_write(
    subscription: subscriptions_pb2.Subscription,
) -> subscriptions_pb2.SubscriptionWrite:
    """A WriteSubscriptions write creating subscription (id and times are assigned)."""
    r = subscriptions_pb2.CreateSubscriptionRequest(subscription=subscription)
    return subscriptions_pb2.SubscriptionWrite(create=r)


def update_write(
    subscription: subscriptions_pb2.Subscription, fields: Sequence[str]
) -> subscriptions_pb2.SubscriptionWrite:
    """A write changing the named fields of the subscription with ``subscription.id``."""
    r = subscriptions_pb2.UpdateSubscriptionRequest(subscription=subscription)
    r.update_mask.paths.extend(fields)
    return subscriptions_pb2.SubscriptionWrite(update=r)


def delete_write(subscription_id: int) -> subscriptions_pb2.SubscriptionWrite:
    r = subscriptions_pb2.DeleteSubscriptionRequest(id=subscription_id)
    return subscriptions_pb2.SubscriptionWrite(delete=r)


def _ts(dt: datetime) -> Timestamp:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return to_timestamp(times.from_datetime(dt))


class HeliostatClient:
    def __init__(
        self,
        target: str,
        *,
        timeout: float = 30.0,
        max_message_bytes: int = 64 << 20,
        token: str | None = None,
    ) -> None:
        """``token``: a bearer token (``heliostat token create``) for the subscription calls."""
        self.timeout = timeout
        self._auth = (("authorization", f"Bearer {token}"),) if token else ()
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
        self.subs = subscriptions_pb2_grpc.SubscriptionServiceStub(self.channel)

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

    # -- subscriptions (need a token) --------------------------------------------------------

    def collections(self) -> list[subscriptions_pb2.SubscriptionCollection]:
        r = self.subs.ListCollections(
            subscriptions_pb2.ListCollectionsRequest(), timeout=self.timeout, metadata=self._auth
        )
        return list(r.collections)

    def create_collection(
        self, short_name: str, version: str = "1", owner: str = ""
    ) -> subscriptions_pb2.SubscriptionCollection:
        """A collection of non-image granules with lon/lat footprints, whose events the caller
        (or ``owner``, named by the operator) and the operator publish."""
        c = subscriptions_pb2.SubscriptionCollection(
            short_name=short_name,
            version=version,
            frame=subscriptions_pb2.FRAME_GEOGRAPHIC,
            owner=owner,
        )
        return self.subs.CreateCollection(
            subscriptions_pb2.CreateCollectionRequest(collection=c),
            timeout=self.timeout,
            metadata=self._auth,
        )

    def create_subscription(
        self, subscription: subscriptions_pb2.Subscription
    ) -> subscriptions_pb2.Subscription:
        return self.subs.CreateSubscription(
            subscriptions_pb2.CreateSubscriptionRequest(subscription=subscription),
            timeout=self.timeout,
            metadata=self._auth,
        )

    def subscription(self, subscription_id: int) -> subscriptions_pb2.Subscription:
        return self.subs.GetSubscription(
            subscriptions_pb2.GetSubscriptionRequest(id=subscription_id),
            timeout=self.timeout,
            metadata=self._auth,
        )

    def subscriptions(
        self, *, owner: str = "", theme: str = "", page_size: int = 100
    ) -> Iterator[subscriptions_pb2.Subscription]:
        """The caller's subscriptions (the operator's: everyone's), page by page."""
        token = ""
        while True:
            r = self.subs.ListSubscriptions(
                subscriptions_pb2.ListSubscriptionsRequest(
                    owner=owner, theme=theme, page_size=page_size, page_token=token
                ),
                timeout=self.timeout,
                metadata=self._auth,
            )
            yield from r.subscriptions
            token = r.next_page_token
            if not token:
                return

    def update_subscription(
        self, subscription: subscriptions_pb2.Subscription, fields: Sequence[str]
    ) -> subscriptions_pb2.Subscription:
        """Change the named fields of the subscription with ``subscription.id``."""
        r = subscriptions_pb2.UpdateSubscriptionRequest(subscription=subscription)
        r.update_mask.paths.extend(fields)
        return self.subs.UpdateSubscription(r, timeout=self.timeout, metadata=self._auth)

    def delete_subscription(self, subscription_id: int) -> None:
        self.subs.DeleteSubscription(
            subscriptions_pb2.DeleteSubscriptionRequest(id=subscription_id),
            timeout=self.timeout,
            metadata=self._auth,
        )

    def write_subscriptions(
        self,
        writes: Iterable[subscriptions_pb2.SubscriptionWrite],
        *,
        per_message: int = 100,
        timeout: float | None = None,
    ) -> Iterator[subscriptions_pb2.SubscriptionWriteResult]:
        """Bulk creates, updates and deletes on one WriteSubscriptions stream: one result per
        write, in order, each once its write is durable (``code`` 0, or the error with its
        ``field``). Writes are sent ``per_message`` to a message as the results are read (the
        server holds at most a few thousand unanswered); ``timeout`` bounds the whole stream.

            results = hs.write_subscriptions(create_write(s) for s in subs)
            ids = [r.id for r in results]
        """
        it = iter(writes)

        def requests() -> Iterator[subscriptions_pb2.WriteSubscriptionsRequest]:
            while chunk := list(itertools.islice(it, per_message)):
                yield subscriptions_pb2.WriteSubscriptionsRequest(writes=chunk)

        call = self.subs.WriteSubscriptions(requests(), timeout=timeout, metadata=self._auth)
        try:
            for r in call:
                yield from r.results
        finally:
            call.cancel()  # a no-op once finished; else the reader left early

    def theme(self, op: Literal["suspend", "resume", "cancel"], theme: str) -> int:
        """Suspend, resume or cancel a theme's subscriptions; returns how many changed."""
        call = {
            "suspend": self.subs.SuspendTheme,
            "resume": self.subs.ResumeTheme,
            "cancel": self.subs.CancelTheme,
        }[op]
        req = subscriptions_pb2.ThemeRequest(theme=theme)
        return int(call(req, timeout=self.timeout, metadata=self._auth).count)

    def publish_events(self, events: Sequence[subscriptions_pb2.GranuleEvent]) -> list[int]:
        """Publish granule events (to collections the caller owns, or any as the operator);
        returns their ids once durable."""
        r = self.subs.PublishEvents(
            subscriptions_pb2.PublishEventsRequest(events=list(events)),
            timeout=self.timeout,
            metadata=self._auth,
        )
        return list(r.event_ids)

    def actions(self, after: str = "", limit: int = 100) -> list[subscriptions_pb2.MatchedAction]:
        """Actions produced by matches after an action id, oldest first."""
        r = self.subs.ListActions(
            subscriptions_pb2.ListActionsRequest(after=after, limit=limit),
            timeout=self.timeout,
            metadata=self._auth,
        )
        return list(r.actions)

    def action(self, action_id: str) -> subscriptions_pb2.ActionStatus:
        """An action's delivery state and every attempt, with the receiver's answers."""
        return self.subs.GetAction(
            subscriptions_pb2.GetActionRequest(id=action_id),
            timeout=self.timeout,
            metadata=self._auth,
        )

    def dead_letters(
        self, after: str = "", limit: int = 100
    ) -> list[subscriptions_pb2.ActionStatus]:
        """Actions that failed for good (the caller's own; the operator's: all)."""
        r = self.subs.ListDeadLetters(
            subscriptions_pb2.ListDeadLettersRequest(after=after, limit=limit),
            timeout=self.timeout,
            metadata=self._auth,
        )
        return list(r.dead_letters)

    def replay_dead_letters(self, ids: Sequence[str]) -> list[str]:
        """Queue dead letters again; returns the ids replayed."""
        r = self.subs.ReplayDeadLetters(
            subscriptions_pb2.ReplayDeadLettersRequest(ids=list(ids)),
            timeout=self.timeout,
            metadata=self._auth,
        )
        return list(r.replayed)

    def purge_dead_letters(self, owner: str = "", before_us: int | None = None) -> int:
        """Remove dead letters for good (operator only); returns how many."""
        req = subscriptions_pb2.PurgeDeadLettersRequest(owner=owner)
        if before_us is not None:
            req.before.FromMicroseconds(before_us)
        r = self.subs.PurgeDeadLetters(req, timeout=self.timeout, metadata=self._auth)
        return int(r.purged)

    def delivery_stats(self) -> admin_pb2.DeliveryStats:
        return self.admin.GetDeliveryStats(
            admin_pb2.GetDeliveryStatsRequest(), timeout=self.timeout
        )

    def watch(
        self,
        cursor: str = "",
        *,
        from_oldest: bool = False,
        owner: str = "",
        subscription_ids: Sequence[int] = (),
        collection: str = "",
        timeout: float | None = None,
    ) -> NotificationStream:
        """Live "watch" notifications after cursor (the last id processed; empty: from now on),
        or from the oldest kept; the operator's are everyone's unless owner is named. No
        timeout by default: the stream stays open."""
        call = self.subs.WatchNotifications(
            subscriptions_pb2.WatchNotificationsRequest(
                cursor=cursor,
                from_oldest=from_oldest,
                owner=owner,
                subscription_ids=list(subscription_ids),
                collection=collection,
            ),
            timeout=timeout,
            metadata=self._auth,
        )
        return NotificationStream(call)

    # -- rendering -----------------------------------------------------------------------------

    def tile(
        self,
        image_id: int,
        x: int,
        y: int,
        image_scale: float,
        fmt: Literal["png", "jpeg", "webp"] = "png",
        quality: int = 0,
        *,
        difference: int = 0,
        diff_count: int = 0,
        diff_time: int = 0,
        base_diff_time: datetime | None = None,
    ) -> render_pb2.Tile:
        """A tile; ``difference`` 1 (running: ``diff_count`` units of ``diff_time``, Helioviewer's
        codes 0 s, 1 min, 2 h, 3 d, 4 wk, 5 mo, 6 yr, back) or 2 (base: against
        ``base_diff_time``) makes it a difference tile."""
        req = render_pb2.GetTileRequest(
            image_id=image_id,
            x=x,
            y=y,
            image_scale=image_scale,
            format=_FORMATS[fmt],
            quality=quality,
            difference=difference,  # type: ignore[arg-type]
            diff_count=diff_count,
            diff_time=diff_time,  # type: ignore[arg-type]
        )
        if base_diff_time is not None:
            req.base_diff_time.CopyFrom(_ts(base_diff_time))
        return self.render.GetTile(req, timeout=self.timeout)

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
        overlays: render_pb2.Overlays | None = None,
    ) -> render_pb2.Screenshot:
        """Composite a Helioviewer layer string ("[SDO,AIA,AIA,171,1,100],[5,1,60]") over a region
        given by corners (x1, y1, x2, y2 arcsec, y down) or centre (x0, y0 arcsec, width,
        height px), with ``overlays`` (labels, scale, watermark) drawn over it."""
        req = render_pb2.TakeScreenshotRequest(
            date=_ts(date),
            layers=layers,
            image_scale=image_scale,
            format=_FORMATS[fmt],
            quality=quality,
            image_ids=list(image_ids),
            overlays=overlays,
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

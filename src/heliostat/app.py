"""The Heliostat application: archive, catalog and rendering behind one protocol-free facade.

Protocol layers (gRPC in heliostat.server, the HTTP gateway) validate nothing themselves beyond
decoding their wire format: every check that names a field happens here, so each protocol reports
the same errors.
"""

from __future__ import annotations

import base64
import binascii
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from heliostat.archive import sources
from heliostat.archive.ingest import IngestCounts, IngestReport, IngestStats, ingest
from heliostat.archive.jp2box import JP2FormatError, read_info
from heliostat.archive.watch import Watcher
from heliostat.catalog.codec import CatalogEvent
from heliostat.catalog.records import ImageRecord
from heliostat.catalog.store import Catalog
from heliostat.config import Profile
from heliostat.errors import DataLoss, InvalidArgument, NotFound
from heliostat.imaging import difference, encode
from heliostat.imaging.blend import blend_over
from heliostat.imaging.compose import Compositor
from heliostat.imaging.decode import JP2Reader
from heliostat.imaging.masks import radial_mask
from heliostat.imaging.tiles import FORMATS, Tile, TileRenderer
from heliostat.imaging.warp import warp_affine
from heliostat.screenshots import overlays as ov
from heliostat.screenshots.layers import parse_layers
from heliostat.screenshots.region import Region
from heliostat.screenshots.service import Screenshot, ScreenshotService
from heliostat.subscriptions import matching
from heliostat.subscriptions.channels.base import Channel
from heliostat.subscriptions.channels.datapool import DataPoolChannel
from heliostat.subscriptions.channels.distribution import DistributionChannel
from heliostat.subscriptions.channels.email import EmailChannel, EmailSettings
from heliostat.subscriptions.channels.ftp import FtpPusher
from heliostat.subscriptions.channels.sendlog import SendLog
from heliostat.subscriptions.channels.webhook import WebhookChannel, WebhookSettings
from heliostat.subscriptions.drivers import Drivers, DriverSettings
from heliostat.subscriptions.service import CATALOG_CONSUMER, SubscriptionService

Direction = Literal["nearest", "before", "after"]
HOUR_US = 3_600_000_000
# Helioviewer's getStatus thresholds: 2 h, 4 h, 12 h, 1 week behind.
_STATUS_LEVELS_US = (2 * HOUR_US, 4 * HOUR_US, 12 * HOUR_US, 168 * HOUR_US)
MAX_PAGE_SIZE = 10_000
MAX_EVENLY_SPACED = 10_000
MAX_EVENTS = 10_000
FEED_BATCH = 1000  # catalog events matched per subscription-feed transaction


@dataclass(frozen=True, slots=True)
class SourceSummary:
    source: sources.DataSource
    first: ImageRecord | None
    last: ImageRecord | None
    count: int


@dataclass(frozen=True, slots=True)
class SourceStatus:
    source: sources.DataSource
    latest: ImageRecord
    seconds_behind: int
    level: int


def encode_page_token(cursor: tuple[int, int]) -> str:
    return base64.urlsafe_b64encode(struct.pack(">qQ", *cursor)).decode()


def decode_page_token(token: str) -> tuple[int, int]:
    try:
        raw = base64.urlsafe_b64decode(token.encode())
        t, i = struct.unpack(">qQ", raw)
    except (binascii.Error, struct.error, ValueError):
        raise InvalidArgument("not a token this server issued", field="page_token") from None
    return int(t), int(i)


class Heliostat:
    def __init__(
        self,
        archive_root: Path,
        *,
        profile: Profile,
        catalog_path: Path | None = None,
        delivery: DriverSettings | None = None,
        pool_root: Path | None = None,
        distribution_root: Path | None = None,
        email: EmailSettings | None = None,
    ) -> None:
        if not archive_root.is_dir():
            raise FileNotFoundError(f"archive folder {archive_root} does not exist")
        self.archive_root = archive_root.resolve()
        self.profile = profile
        catalog_path = catalog_path or self.archive_root / ".heliostat" / "catalog"
        catalog_path.mkdir(parents=True, exist_ok=True)
        self.catalog = Catalog(catalog_path, map_size=profile.lmdb_map_size)
        try:
            self.subscriptions = SubscriptionService(
                self.archive_root / ".heliostat" / "subscriptions", map_size=profile.lmdb_map_size
            )
        except BaseException:
            self.catalog.close()
            raise
        self.reader = JP2Reader(
            file_cache_bytes=profile.file_cache_bytes,
            decoded_cache_bytes=profile.decoded_cache_bytes,
            decode_threads=profile.decode_threads,
        )
        self.tiles = TileRenderer(
            self.archive_root, self.reader, cache_bytes=profile.tile_cache_bytes
        )
        self.screenshots = ScreenshotService(
            self.catalog,
            Compositor(self.archive_root, self.reader),
            cache_bytes=profile.tile_cache_bytes // 4,
        )
        self._ingest_lock = threading.Lock()
        self.ingest_stats = IngestStats()
        self.delivery = delivery or DriverSettings(action_workers=profile.delivery_workers)
        state = self.archive_root / ".heliostat"
        self.pool_root = pool_root or state / "pool"
        self.distribution_root = distribution_root or state / "distribution"
        self.email = email or EmailSettings()

    def close(self) -> None:
        self.subscriptions.close()
        self.catalog.close()

    def warm(self) -> None:
        """Compile (or load from cache) every Numba kernel, so no request pays for it."""
        src = np.arange(64, dtype=np.uint8).reshape(8, 8)
        out = np.empty((4, 4), np.uint8)
        alpha = np.empty((4, 4), np.uint8)
        scale = np.array([[1.5, 0.0, 0.25], [0.0, 1.5, 0.25]])
        warp_affine(src, scale, out, alpha)
        warp_affine(src[1:, 1:], scale, out, alpha)  # strided views of cached images
        cached = src.copy()
        cached.flags.writeable = False  # the decoder cache's images are read-only
        warp_affine(cached[1:, 1:], scale, out, alpha)
        rot = np.array([[0.9, -0.4, 1.0], [0.4, 0.9, 0.5]])
        warp_affine(src, rot, out, alpha)
        warp_affine(src[1:, 1:], rot * 2, out, alpha)
        radial_mask(alpha, 2.0, 2.0, 0.5, 1.5)
        difference.difference(out, alpha, out, alpha)
        difference.difference(src[1:5, 1:5], alpha, out, alpha, out=out, out_alpha=alpha)
        canvas = np.zeros((4, 4, 4), np.uint8)
        blend_over(np.full((4, 4, 4), 200, np.uint8), 50, canvas)
        binary = np.array([[0, 255, 255, 255]] * 4, np.uint8)
        partial = np.array([[0, 128, 255, 255]] * 4, np.uint8)
        palette = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
        # Every encoder path: table or palette or grey, with no, binary or partial alpha.
        for fmt in FORMATS:
            for table in ("sdoaia171", palette, None):
                for a in (None, binary, partial):
                    encode.encode(out, table=table, fmt=fmt, quality=85, alpha=a)
        matching.warm()

    # -- catalog -----------------------------------------------------------------------------

    def image(self, image_id: int, *, field: str = "id") -> ImageRecord:
        if image_id <= 0:
            raise InvalidArgument("must be a positive image id", field=field)
        rec = self.catalog.get(image_id)
        if rec is None:
            raise NotFound(f"no image with id {image_id}", field=field)
        return rec

    @staticmethod
    def _source(source_id: int) -> sources.DataSource:
        try:
            return sources.by_id(source_id)
        except sources.UnknownSourceError:
            raise NotFound(f"unknown data source {source_id}", field="source_id") from None

    def closest(
        self, source_id: int, time_us: int, direction: Direction = "nearest"
    ) -> ImageRecord:
        src = self._source(source_id)
        rec = self.catalog.closest(source_id, time_us, direction)
        if rec is None:
            where = {"nearest": "", "before": " before that time", "after": " after that time"}
            raise NotFound(f"no {src.name} image{where[direction]}", field="date")
        return rec

    @staticmethod
    def _check_range(start_us: int, end_us: int) -> None:
        if end_us < start_us:
            raise InvalidArgument("must not be before start", field="end")

    def list_images(
        self, source_id: int, start_us: int, end_us: int, *, page_size: int, page_token: str = ""
    ) -> tuple[list[ImageRecord], str]:
        self._source(source_id)
        self._check_range(start_us, end_us)
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgument(f"must be 0-{MAX_PAGE_SIZE}", field="page_size")
        after = decode_page_token(page_token) if page_token else None
        records, cursor = self.catalog.range(
            source_id, start_us, end_us, limit=page_size or 100, after=after
        )
        return records, (encode_page_token(cursor) if cursor else "")

    def evenly_spaced(
        self, source_id: int, start_us: int, end_us: int, n: int
    ) -> list[ImageRecord]:
        self._source(source_id)
        self._check_range(start_us, end_us)
        if not 1 <= n <= MAX_EVENLY_SPACED:
            raise InvalidArgument(f"must be 1-{MAX_EVENLY_SPACED}", field="evenly_spaced")
        return self.catalog.evenly_spaced(source_id, start_us, end_us, n)

    def coverage(
        self, source_ids: list[int], start_us: int, end_us: int, bin_us: int
    ) -> dict[int, list[int]]:
        if not source_ids:
            raise InvalidArgument("name at least one source", field="source_ids")
        for sid in source_ids:
            self._source(sid)
        self._check_range(start_us, end_us)
        if bin_us < 1_000_000:
            raise InvalidArgument("must be at least one second", field="bin")
        try:
            return self.catalog.coverage(source_ids, start_us, end_us, bin_us)
        except ValueError as e:
            raise InvalidArgument(str(e), field="bin") from None

    def data_sources(self, *, with_data_only: bool = False) -> list[SourceSummary]:
        counts = self.catalog.source_counts()
        out = []
        for src in sources.SOURCES:
            count = counts.get(src.id, 0)
            if with_data_only and not count:
                continue
            fl = self.catalog.first_last(src.id) if count else None
            out.append(SourceSummary(src, fl[0] if fl else None, fl[1] if fl else None, count))
        return out

    def status(self, now_us: int) -> list[SourceStatus]:
        out = []
        for summary in self.data_sources(with_data_only=True):
            assert summary.last is not None
            behind = max(0, now_us - summary.last.time_us)
            level = 1 + sum(behind >= t for t in _STATUS_LEVELS_US)
            out.append(SourceStatus(summary.source, summary.last, behind // 1_000_000, level))
        return out

    def jp2_header(self, image_id: int) -> str:
        rec = self.image(image_id)
        try:
            info = read_info(self.archive_root / rec.path)
        except (OSError, JP2FormatError) as e:
            raise DataLoss(f"cannot read the header of image {image_id}: {e}", field="id") from None
        return info.xml

    def ingest(self, paths: list[str]) -> IngestReport:
        """Index files or folders; relative paths are taken from the archive root."""
        resolved = [p if p.is_absolute() else self.archive_root / p for p in map(Path, paths)]
        with self._ingest_lock:
            report = ingest(
                self.catalog, self.archive_root, resolved, keep_records=True,
                stats=self.ingest_stats,
            )  # fmt: skip
        self._forget([rec.path for rec in report.records])
        return report

    def _forget(self, paths: Sequence[str]) -> None:
        for path in paths:
            self.tiles.forget(path)

    def watch(self, incoming: Path | None, *, rescan_s: float = 5.0) -> Watcher:
        """A watcher of the archive tree (and an incoming folder) feeding this app's catalog,
        counting into its ingest stats and forgetting cached tiles of replaced or deleted files.
        Not started."""
        return Watcher(
            self.catalog, self.archive_root, incoming, stats=self.ingest_stats,
            rescan_s=rescan_s, on_change=self._forget,
        )  # fmt: skip

    def ingest_counts(self) -> IngestCounts:
        return self.ingest_stats.snapshot()

    def events(self, after_seq: int, limit: int) -> tuple[list[CatalogEvent], int]:
        """Catalog events after a sequence number (limit 0: 100), and the last seq logged."""
        if after_seq < 0:
            raise InvalidArgument("must not be negative", field="after_seq")
        if not 0 <= limit <= MAX_EVENTS:
            raise InvalidArgument(f"must be 0-{MAX_EVENTS}", field="limit")
        events = self.catalog.events_after(after_seq, limit or 100)
        return events, self.catalog.last_event_seq()  # read after: never below an event's seq

    def feed_subscriptions(self) -> int:
        """Match the next catalog events against the subscriptions, record them with their
        actions, then acknowledge them in the catalog; returns how many were read.

        The subscription store marks the last catalog event it recorded in the same
        transaction, so a crash before the acknowledgement repeats no event.
        """
        after = max(self.catalog.acked(CATALOG_CONSUMER), self.subscriptions.store.catalog_seq())
        events = self.catalog.events_after(after, FEED_BATCH)
        if events:
            self.subscriptions.consume(events)
            self.catalog.ack_events(CATALOG_CONSUMER, events[-1].seq)
        return len(events)

    def delivery_channels(self) -> list[Channel]:
        """A channel for every action kind the drivers deliver (watch actions are streamed)."""
        return [
            EmailChannel(self.email, SendLog(self.subscriptions.store)),
            WebhookChannel(WebhookSettings()),
            DataPoolChannel(self.archive_root, self.pool_root),
            DistributionChannel(self.archive_root, self.distribution_root, FtpPusher()),
        ]

    def delivery_drivers(self, channels: list[Channel] | None = None) -> Drivers:
        """The subscription delivery drivers over this app's store; not started."""
        return Drivers(
            self.subscriptions,
            self.delivery_channels() if channels is None else channels,
            self.delivery,
        )

    # -- rendering ---------------------------------------------------------------------------

    def take_screenshot(
        self,
        time_us: int,
        layers: str,
        region: Region,
        fmt: str,
        quality: int,
        image_ids: Sequence[int] = (),
        overlays: ov.Overlays = ov.NONE,
    ) -> Screenshot:
        """Composite the layers of a Helioviewer layer string; ``image_ids`` (0 = closest to the
        time) pins layers to images; ``overlays`` are drawn over the composite."""
        specs = parse_layers(layers)
        if not specs:
            raise InvalidArgument("no visible layer", field="layers")
        if len(image_ids) > len(specs):
            raise InvalidArgument(f"more ids than the {len(specs)} layers", field="image_ids")
        if fmt not in FORMATS:
            raise InvalidArgument(f"unknown format {fmt!r}", field="format")
        if not 1 <= quality <= 100:
            raise InvalidArgument(f"must be 1-100, got {quality}", field="quality")
        pins = [i or None for i in image_ids]
        return self.screenshots.take(
            time_us, specs, region, fmt, quality, image_ids=pins, overlays=overlays
        )

    def screenshot(self, shot_id: str) -> Screenshot:
        return self.screenshots.get(shot_id)

    def difference_reference(
        self, record: ImageRecord, diff: difference.Difference | None
    ) -> ImageRecord | None:
        """A difference's reference for record: the source's last image at or before the
        reference time (None without a difference); NotFound naming the field that set the time
        when there is none, as Helioviewer answers "no image before that date"."""
        if diff is None:
            return None
        ref = self.catalog.closest(record.source_id, diff.reference_time(record.time_us), "before")
        if ref is None:
            name = sources.by_id(record.source_id).name
            message = (
                f"no {name} image at or before {diff.describe(record.time_us)} "
                "to difference against"
            )
            raise NotFound(message, field=diff.time_field)
        return ref

    def tile(
        self,
        image_id: int,
        x: int,
        y: int,
        image_scale: float,
        fmt: str,
        quality: int,
        diff: difference.Difference | None = None,
    ) -> Tile:
        """A tile of an image, or of its difference from the reference ``diff`` chooses."""
        record = self.image(image_id, field="image_id")
        reference = self.difference_reference(record, diff)
        return self.tiles.render(record, x, y, image_scale, fmt, quality, reference)

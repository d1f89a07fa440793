"""Between protobuf messages and domain values: times, records, sources."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from heliostat.archive import sources
from heliostat.catalog.records import ImageRecord
from heliostat.errors import InvalidArgument
from heliostat.v1 import archive_pb2 as pb

# Timestamps outside 0001-9999 are invalid in protobuf; observations are well inside.
_MIN_US = -62_135_596_800_000_000
_MAX_US = 253_402_300_799_999_999


def timestamp_us(ts: Timestamp, field: str) -> int:
    us = ts.seconds * 1_000_000 + ts.nanos // 1000
    if not (_MIN_US <= us <= _MAX_US) or not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument("not a valid timestamp", field=field)
    return us


def required_time(msg: object, field: str) -> int:
    if not msg.HasField(field):  # type: ignore[attr-defined]
        raise InvalidArgument("is required", field=field)
    return timestamp_us(getattr(msg, field), field)


def to_timestamp(us: int) -> Timestamp:
    return Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def to_duration(us: int) -> Duration:
    # Duration wants seconds and nanos of the same sign.
    sign = -1 if us < 0 else 1
    a = abs(us)
    return Duration(seconds=sign * (a // 1_000_000), nanos=sign * (a % 1_000_000) * 1000)


def duration_us(d: Duration) -> int:
    return d.seconds * 1_000_000 + d.nanos // 1000


def image(rec: ImageRecord, *, requested_us: int | None = None) -> pb.Image:
    msg = pb.Image(
        id=rec.id,
        source_id=rec.source_id,
        source_name=sources.by_id(rec.source_id).name,
        date=to_timestamp(rec.time_us),
        path=rec.path,
        width=rec.width,
        height=rec.height,
        scale=rec.scale,
        cdelt1=rec.cdelt1,
        cdelt2=rec.cdelt2,
        crpix1=rec.crpix1,
        crpix2=rec.crpix2,
        crval1=rec.crval1,
        crval2=rec.crval2,
        rotation=rec.rotation,
        dsun=rec.dsun,
        rsun=rec.rsun_px,
        ref_pixel_x=rec.ref_pixel_x,
        ref_pixel_y=rec.ref_pixel_y,
        layering_order=rec.layering_order,
    )
    if requested_us is not None:
        msg.offset.CopyFrom(to_duration(rec.time_us - requested_us))
    return msg


def data_source(src: sources.DataSource) -> pb.DataSource:
    return pb.DataSource(
        id=src.id,
        name=src.name,
        observatory=src.observatory,
        instrument=src.instrument,
        detector=src.detector,
        measurement=src.measurement,
        layering_order=src.layering_order,
        description=src.description,
    )

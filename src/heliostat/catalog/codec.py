"""The stored forms of an ImageRecord and of a catalog event: fixed-size little-endian fields, then
the utf-8 path.

The id is not part of the value (it is the key), so two puts of the same record encode to the
same bytes and "unchanged" is a byte comparison.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Literal

from heliostat.archive.sources import UnknownSourceError, by_id
from heliostat.catalog.records import ImageRecord

# source_id, time_us, width, height, 9 floats (cdelt1 .. rsun_px), layering_order, file_size,
# file_mtime_ns: ImageRecord's fields in order without id and path, 110 bytes.
RECORD = struct.Struct("<HqII9diQq")
RECORD_SIZE = RECORD.size
HEAD = struct.Struct("<Hq")  # source_id, time_us: what the indexes need from a stored value
_fields = attrgetter(*(f.name for f in fields(ImageRecord) if f.name not in ("id", "path")))
_FLOATS = (
    "cdelt1",
    "cdelt2",
    "crpix1",
    "crpix2",
    "crval1",
    "crval2",
    "rotation",
    "dsun",
    "rsun_px",
)
_INT_RANGES = (
    ("time_us", -(1 << 62), 1 << 62),  # ±146,000 years, leaving i64 room for bin arithmetic
    ("width", 1, (1 << 32) - 1),
    ("height", 1, (1 << 32) - 1),
    ("layering_order", -(1 << 31), (1 << 31) - 1),
    ("file_size", 0, (1 << 64) - 1),
    ("file_mtime_ns", -(1 << 63), (1 << 63) - 1),
)


def _finite(v: object) -> bool:
    if not isinstance(v, int | float):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond float range
        return False


def _invalid(record: ImageRecord, field: str, why: str) -> ValueError:
    return ValueError(f"invalid image record {record.path!r}: {field} {why}")


def validate(record: ImageRecord, max_path_bytes: int) -> tuple[bytes, bytes]:
    """Check a record and return (path key, encoded value); ValueError names the bad field."""
    try:
        if not isinstance(record.source_id, int):
            raise UnknownSourceError
        by_id(record.source_id)
    except UnknownSourceError:
        raise _invalid(
            record, "source_id", f"is not a known data source: {record.source_id!r}"
        ) from None
    for name, lo, hi in _INT_RANGES:
        v = getattr(record, name)
        if not isinstance(v, int) or not lo <= v <= hi:
            raise _invalid(record, name, f"must be an integer in [{lo}, {hi}], got {v!r}")
    for name in _FLOATS:
        v = getattr(record, name)
        if not _finite(v):
            raise _invalid(record, name, f"must be a finite number, got {v!r}")
    # ImageRecord.scale and ref_pixel_* divide by cdelt; an observer distance is positive
    if record.cdelt1 == 0 or record.cdelt2 == 0:
        raise _invalid(record, "cdelt1" if record.cdelt1 == 0 else "cdelt2", "must not be 0")
    if record.dsun <= 0:
        raise _invalid(record, "dsun", f"must be > 0, got {record.dsun!r}")
    if not isinstance(record.path, str):
        raise _invalid(record, "path", "must be a string")
    try:
        path = record.path.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid(record, "path", "is not encodable as utf-8") from None
    if not 0 < len(path) <= max_path_bytes:  # LMDB keys are 1..max_key_size bytes
        raise _invalid(record, "path", f"must be 1..{max_path_bytes} bytes of utf-8")
    return path, encode(record, path)


def encode(record: ImageRecord, path: bytes) -> bytes:
    return RECORD.pack(*_fields(record)) + path


def decode(image_id: int, value: bytes) -> ImageRecord:
    f = RECORD.unpack_from(value)
    return ImageRecord(image_id, f[0], f[1], value[RECORD_SIZE:].decode("utf-8"), *f[2:])


# -- events ---------------------------------------------------------------------------------------

EventKind = Literal["insert", "update", "delete"]
_KIND_CODES: dict[EventKind, int] = {"insert": 1, "update": 2, "delete": 3}
_KINDS: dict[int, EventKind] = {v: k for k, v in _KIND_CODES.items()}
# kind, image id, source id, time_us, footprint (4 doubles), width, height, scale; then the path.
EVENT = struct.Struct("<BQHq4dIId")


@dataclass(frozen=True, slots=True)
class Footprint:
    """Helioprojective bounding box of an image, arcsec."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float


@dataclass(frozen=True, slots=True)
class CatalogEvent:
    seq: int
    kind: EventKind
    image_id: int
    source_id: int
    time_us: int
    footprint: Footprint
    path: str
    width: int
    height: int
    scale: float


def footprint(record: ImageRecord) -> Footprint:
    """Bounding box of the image's four outer pixel corners in helioprojective arcsec.

    FITS CROTA convention: x = CRVAL1 + CDELT1 cos ρ (i - CRPIX1) - CDELT2 sin ρ (j - CRPIX2),
    y = CRVAL2 + CDELT1 sin ρ (i - CRPIX1) + CDELT2 cos ρ (j - CRPIX2); pixel i spans i ± 0.5.
    """
    rho = math.radians(record.rotation)
    cos, sin = math.cos(rho), math.sin(rho)
    xs, ys = [], []
    for i in (0.5, record.width + 0.5):
        for j in (0.5, record.height + 0.5):
            di = record.cdelt1 * (i - record.crpix1)
            dj = record.cdelt2 * (j - record.crpix2)
            xs.append(record.crval1 + cos * di - sin * dj)
            ys.append(record.crval2 + sin * di + cos * dj)
    return Footprint(min(xs), min(ys), max(xs), max(ys))


def encode_event(kind: EventKind, record: ImageRecord) -> bytes:
    fp = footprint(record)
    return EVENT.pack(
        _KIND_CODES[kind], record.id, record.source_id, record.time_us,
        fp.x_min, fp.y_min, fp.x_max, fp.y_max, record.width, record.height, record.scale,
    ) + record.path.encode("utf-8")  # fmt: skip


def decode_event(seq: int, value: bytes) -> CatalogEvent:
    kind, image_id, sid, t, x0, y0, x1, y1, w, h, scale = EVENT.unpack_from(value)
    return CatalogEvent(
        seq, _KINDS[kind], image_id, sid, t, Footprint(x0, y0, x1, y1),
        value[EVENT.size :].decode("utf-8"), w, h, scale,
    )  # fmt: skip

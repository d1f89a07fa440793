"""The stored form of an ImageRecord: fixed-size little-endian fields, then the utf-8 path.

The id is not part of the value (it is the key), so two puts of the same record encode to the
same bytes and "unchanged" is a byte comparison.
"""

from __future__ import annotations

import math
import struct
from dataclasses import fields
from operator import attrgetter

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

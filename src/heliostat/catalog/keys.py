"""Binary key layouts of the catalog's LMDB sub-databases.

Every key is big-endian so that LMDB's bytewise order is numeric order. Signed times are mapped to
unsigned by adding 2**63, which keeps pre-1970 times sorted before later ones.

- images:   id u64                              → record (see :mod:`heliostat.catalog.codec`)
- times:    source u16 | time u64 | id u64       → empty (the id is in the key)
- paths:    path utf-8                           → id u64
- stats:    source u16                           → image count u64
- coverage: source u16 | 30-min bin start u64    → image count u64
- meta:     name                                 → u64
- events:   seq u64                              → event (see :mod:`heliostat.catalog.codec`)
- cursors:  consumer name utf-8                  → last acknowledged seq u64
"""

from __future__ import annotations

import struct

TIME_BIAS = 1 << 63
COVERAGE_BIN_US = 30 * 60 * 1_000_000  # Helioviewer's data_coverage_30_min granularity

ID = struct.Struct(">Q")
SEQ = struct.Struct(">Q")
COUNT = struct.Struct(">Q")
SOURCE = struct.Struct(">H")
TIME_KEY = struct.Struct(">HQQ")
TIME_KEY_SIZE = TIME_KEY.size
SOURCE_TIME = struct.Struct(">HQ")  # a time key without its id: seeks to the first image at a time
COVERAGE_KEY = SOURCE_TIME

# Appended to a SOURCE_TIME prefix, sorts after every key at that time (ids are 8 bytes).
AFTER_TIME = b"\xff" * (ID.size + 1)
# Appended to a SOURCE prefix, sorts after every key of that source.
AFTER_SOURCE = b"\xff" * (TIME_KEY_SIZE - SOURCE.size + 1)


def source_prefix(source_id: int) -> bytes:
    """The prefix of a source's time keys; ValueError when out of range."""
    try:
        return SOURCE.pack(source_id)
    except struct.error:
        raise ValueError(f"source id {source_id} is out of the catalog's range") from None


def time_key(source_id: int, time_us: int, image_id: int) -> bytes:
    return TIME_KEY.pack(source_id, time_us + TIME_BIAS, image_id)


def time_seek(source_id: int, time_us: int) -> bytes:
    """The smallest possible time key of a source at a time; ValueError when out of range."""
    try:
        return SOURCE_TIME.pack(source_id, time_us + TIME_BIAS)
    except struct.error:
        raise ValueError(
            f"source id {source_id} or time {time_us} µs is out of the catalog's range"
        ) from None


def key_time(key: bytes) -> int:
    """The time (µs) of a time or coverage key."""
    return int.from_bytes(key[2:10], "big") - TIME_BIAS


def key_id(key: bytes) -> int:
    return int.from_bytes(key[10:18], "big")


def coverage_bin(time_us: int) -> int:
    """Start of the 30-minute bin holding a time (floor, so pre-1970 times bin correctly)."""
    return time_us - time_us % COVERAGE_BIN_US


def coverage_key(source_id: int, bin_start_us: int) -> bytes:
    return COVERAGE_KEY.pack(source_id, bin_start_us + TIME_BIAS)

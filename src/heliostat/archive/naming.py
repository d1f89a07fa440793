"""Helioviewer file names and archive folders.

Name: ``YYYY_MM_DD__HH_MM_SS_fff__OBSERVATORY_INSTRUMENT_DETECTOR_MEASUREMENT.jp2``; the
sub-second field is 2 or 3 digits in the wild and is parsed either way, written as 3.
Folder: ``{source folder}/{YYYY}/{MM}/{DD}/{measurement}/``, e.g. ``AIA/2014/02/03/171/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from heliostat.archive import times
from heliostat.archive.sources import DataSource

_NAME_RE = re.compile(
    r"^(?P<y>\d{4})_(?P<mo>\d{2})_(?P<d>\d{2})__(?P<h>\d{2})_(?P<mi>\d{2})_(?P<s>\d{2})"
    r"(?:_(?P<frac>\d{1,6}))?__(?P<rest>[A-Za-z0-9][A-Za-z0-9_\-.]*)\.jp2$"
)


@dataclass(frozen=True, slots=True)
class ParsedName:
    time_us: int
    # Underscore-separated tail, e.g. "SDO_AIA_AIA_171" or "SOHO_LASCO_C3_white-light".
    keys: tuple[str, ...]


def parse_file_name(name: str) -> ParsedName:
    """Parse a Helioviewer JP2 file name; ValueError says what does not match."""
    m = _NAME_RE.match(name)
    if not m:
        raise ValueError(f"not a Helioviewer JP2 file name: {name!r}")
    frac = m.group("frac") or ""
    us = int(frac.ljust(6, "0")) if frac else 0
    t = times.from_parts(
        int(m.group("y")), int(m.group("mo")), int(m.group("d")),
        int(m.group("h")), int(m.group("mi")), int(m.group("s")), us,
    )  # fmt: skip
    return ParsedName(t, tuple(m.group("rest").split("_")))


def file_name(source: DataSource, time_us: int) -> str:
    dt = times.to_datetime(time_us)
    return f"{dt:%Y_%m_%d__%H_%M_%S}_{dt.microsecond // 1000:03d}__{source.file_suffix}.jp2"


def folder(source: DataSource, time_us: int) -> str:
    dt = times.to_datetime(time_us)
    return f"{source.folder}/{dt:%Y/%m/%d}/{source.measurement}"


def archive_path(source: DataSource, time_us: int) -> str:
    """Relative path of an image in the archive: folder + file name."""
    return f"{folder(source, time_us)}/{file_name(source, time_us)}"

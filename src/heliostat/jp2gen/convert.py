"""Convert one FITS file into a Helioviewer JP2 in the archive.

Metadata goes through the same rules as the archive reader (``heliostat.archive.header``): the
FITS cards are checked with ``build_record`` before any pixel is read, so a file that converts
reads back with the same source, time and geometry, and a file that cannot be indexed fails
early with the reader's message naming the keyword.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

# astropy ships no type information.
from astropy.io import fits  # type: ignore[import-untyped]
from astropy.utils.exceptions import AstropyWarning  # type: ignore[import-untyped]

from heliostat import __version__
from heliostat.archive import naming, sources
from heliostat.archive.header import Header, HeaderError, build_record, read_record
from heliostat.archive.jp2box import JP2Info
from heliostat.archive.jp2write import write_jp2
from heliostat.catalog.records import ImageRecord
from heliostat.jp2gen.scaling import Scaling, choose

JP2GEN_VERSION = f"heliostat-{__version__}"
_XML_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
_NOT_NAME_CHAR = re.compile(r"[^A-Za-z0-9_.\-]")


class JP2GenError(ValueError):
    """A FITS file cannot be converted; the message names the file and the reason."""


@dataclass(frozen=True, slots=True)
class ConvertResult:
    fits_path: Path
    output: Path
    source: sources.DataSource
    time_us: int
    scaling: Scaling | None  # None when skipped
    skipped: bool  # the output already existed and read back
    # "read" (header, and unpacking of compressed data: plain files are memory-mapped, so their
    # pages load during "scale"), "scale", "encode" (XML, codestream, boxes) and "total".
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Meta:
    cards: list[tuple[str, str]]
    history: list[str]
    comments: list[str]
    record: ImageRecord
    source: sources.DataSource
    blank: int | None
    exptime: float | None


def _card_text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"  # as IDL writes FITS logicals into Helioviewer headers
    if value is None or isinstance(value, fits.card.Undefined):
        return ""
    return str(value).strip()


def _xml_key(key: str) -> str:
    """FITS keywords as XML element names: HIERARCH keys with spaces get underscores."""
    if _XML_NAME.match(key) and key[:3].lower() != "xml":
        return key
    name = _NOT_NAME_CHAR.sub("_", key)
    return name if _XML_NAME.match(name) and name[:3].lower() != "xml" else f"_{name}"


def _cards(header: fits.Header) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    cards: list[tuple[str, str]] = []
    history: list[str] = []
    comments: list[str] = []
    for card in header.cards:
        key = card.keyword
        if key == "HISTORY":
            history.append(str(card.value))
        elif key == "COMMENT":
            comments.append(str(card.value))
        elif key:
            cards.append((_xml_key(key), _card_text(card.value)))
    return cards, history, comments


def _image_hdu(hdul: fits.HDUList) -> fits.PrimaryHDU | fits.ImageHDU:
    """The first HDU holding a 2-D image; CompImageHDU is an ImageHDU with the image header."""
    for hdu in hdul:
        if isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU):
            h = hdu.header
            if h.get("NAXIS") == 2 and h.get("NAXIS1", 0) > 0 and h.get("NAXIS2", 0) > 0:
                return hdu
    raise JP2GenError("no HDU holds 2-D image data (NAXIS = 2)")


def _number(header: fits.Header, key: str) -> float | None:
    v = header.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _meta(header: fits.Header, path: Path) -> _Meta:
    cards, history, comments = _cards(header)
    h = Header(dict(cards), {})
    height, width = int(header["NAXIS2"]), int(header["NAXIS1"])
    info = JP2Info("", width, height, 1, 8, 0, 0)
    try:
        record = build_record(h, info, rel_path=path.name, file_mtime_ns=0)
    except (HeaderError, sources.UnknownSourceError) as e:
        raise JP2GenError(str(e)) from None
    blank = header.get("BLANK")
    return _Meta(
        cards,
        history,
        comments,
        record,
        sources.by_id(record.source_id),
        blank if isinstance(blank, int) and not isinstance(blank, bool) else None,
        _number(header, "EXPTIME"),
    )


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn astropy's many failure types on a bad file into JP2GenError."""
    try:
        with warnings.catch_warnings():
            # Truncation and card-fixing warnings: truncation still fails on the data read.
            warnings.simplefilter("ignore", AstropyWarning)
            yield
    except JP2GenError:
        raise
    except (OSError, ValueError, TypeError, EOFError, IndexError, KeyError) as e:
        raise JP2GenError(f"corrupt or unreadable FITS: {e}") from None


def _helioviewer(meta: _Meta, scaling: Scaling, fits_name: str) -> dict[str, str]:
    s = meta.source
    unit = " in DN/s (image divided by EXPTIME)" if scaling.exptime is not None else ""
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "HV_OBSERVATORY": s.observatory,
        "HV_INSTRUMENT": s.instrument,
        "HV_DETECTOR": s.detector,
        "HV_MEASUREMENT": s.measurement,
        "HV_ROTATION": f"{meta.record.rotation:.5f}",
        "HV_JP2GEN_VERSION": JP2GEN_VERSION,
        "HV_SOURCE_PROGRAM": "heliostat.jp2gen",
        "HV_COMMENT": (
            f"JP2 file created by heliostat.jp2gen ({JP2GEN_VERSION}) at {created} from "
            f"{fits_name}. Bytes are BYTSCL of HV_IMG_FUNCTION between HV_IMG_DMIN and "
            f"HV_IMG_DMAX{unit}. Rows are stored top (solar north) first."
        ),
        "HV_SUPPORTED": "TRUE",
        "HV_IMG_FUNCTION": scaling.label,
        "HV_IMG_DMIN": f"{scaling.dmin:g}",
        "HV_IMG_DMAX": f"{scaling.dmax:g}",
    }


def output_is_valid(output: Path, rel_path: str) -> bool:
    """True when ``output`` exists and its header reads back: a finished earlier conversion."""
    try:
        read_record(output, rel_path)
    except (HeaderError, sources.UnknownSourceError):
        return False
    return True


def convert(
    fits_path: Path,
    archive_root: Path,
    *,
    lossless: bool = False,
    bits_per_pixel: float = 0.5,
    overwrite: bool = False,
) -> ConvertResult:
    """Convert ``fits_path`` to ``archive_root / naming.archive_path(source, time)``.

    Without ``overwrite``, an existing output whose header reads back is kept (``skipped``);
    an unreadable one is replaced. The image is stored top row first, as Helioviewer does (FITS
    row 0 is the bottom); the header keeps the FITS keywords unchanged, CRPIX included.
    Raises JP2GenError naming the problem (missing keyword, no image HDU, corrupt file).
    """
    fits_path = Path(fits_path)
    t0 = time.perf_counter()
    try:
        with _reading(fits_path), fits.open(fits_path) as hdul:
            hdu = _image_hdu(hdul)
            meta = _meta(hdu.header, fits_path)
            rel = naming.archive_path(meta.source, meta.record.time_us)
            output = Path(archive_root) / rel
            if not overwrite and output.exists() and output_is_valid(output, rel):
                seconds = {"total": time.perf_counter() - t0}
                return ConvertResult(
                    fits_path, output, meta.source, meta.record.time_us, None, True, seconds
                )
            data = np.asarray(hdu.data)
            expected = (meta.record.height, meta.record.width)
            if data.shape != expected:
                raise JP2GenError(f"image data has shape {data.shape}, header says {expected}")
            t_read = time.perf_counter()
            try:
                scaling = choose(meta.source, data, exptime=meta.exptime, blank=meta.blank)
            except ValueError as e:
                raise JP2GenError(str(e)) from None
            # FITS row 0 is the bottom of the image; Helioviewer stores the top row first.
            pixels = scaling.to_bytes(data[::-1], meta.blank)
    except JP2GenError as e:
        raise JP2GenError(f"{fits_path.name}: {e}") from None
    t_scale = time.perf_counter()
    output.parent.mkdir(parents=True, exist_ok=True)
    write_jp2(
        output,
        pixels,
        meta.cards,
        _helioviewer(meta, scaling, fits_path.name),
        lossless=lossless,
        bits_per_pixel=bits_per_pixel,
        history=meta.history,
        comments=meta.comments,
    )
    t_end = time.perf_counter()
    seconds = {
        "read": t_read - t0,
        "scale": t_scale - t_read,
        "encode": t_end - t_scale,
        "total": t_end - t0,
    }
    return ConvertResult(
        fits_path, output, meta.source, meta.record.time_us, scaling, False, seconds
    )


__all__ = ["JP2GEN_VERSION", "ConvertResult", "JP2GenError", "convert", "output_is_valid"]

"""Write Helioviewer-compliant JPEG 2000 (JP2) files.

OpenJPEG (through glymur) encodes the codestream with Helioviewer's conventions: one tile, one
8-bit component, RPCL progression, 128×128 precincts at every resolution, 64×64 code-blocks,
PLT markers and quality layers. The JP2 boxes are then written here so that the header lands
where Helioviewer readers expect it: ``jP  ``, ``ftyp``, ``jp2h`` (``ihdr`` + greyscale
``colr``), ``xml `` and finally ``jp2c``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import glymur
import numpy as np

Fits = Sequence[tuple[str, str]] | Mapping[str, object]

MAX_LEVELS = 8
# Auto-chosen levels stop before the smallest resolution drops below this many pixels.
_MIN_SMALLEST_RES = 16
# The lowest quality layer gets this many times fewer bits than the top one.
_LAYER_SPREAD = 64.0
_MAX_LAYERS = 100  # OpenJPEG's limit on quality layers

_SIGNATURE_BOX = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_FTYP_BOX = struct.pack(">I4s4sI4s", 20, b"ftyp", b"jp2 ", 0, b"jp2 ")
_GREYSCALE = 17  # enumerated colour space of the colr box
# XML names (ASCII subset): FITS keys such as DATE-OBS qualify, "2ND KEY" or "<x>" do not.
_XML_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
# Characters XML 1.0 cannot carry at all, even escaped.
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def default_levels(height: int, width: int) -> int:
    """Helioviewer's 8 decomposition levels, fewer when the smallest resolution would be tiny."""
    smallest = min(height, width)
    levels = 0
    while levels < MAX_LEVELS and smallest >> (levels + 1) >= _MIN_SMALLEST_RES:
        levels += 1
    return levels


def compression_ratios(bits_per_pixel: float, layers: int, *, lossless: bool) -> tuple[float, ...]:
    """Per-layer compression ratios (first layer first) relative to 8 bits per pixel.

    The top lossy layer has ``bits_per_pixel``; lower layers are spread geometrically down to
    1/64 of that. When lossless, one more final layer at ratio 1 (OpenJPEG's "all passes")
    completes the image.
    """
    lossy = layers - 1 if lossless else layers
    top = 8.0 / bits_per_pixel
    if lossy == 1:
        ratios = [top]
    else:
        ratios = [top * _LAYER_SPREAD ** ((lossy - 1 - i) / (lossy - 1)) for i in range(lossy)]
    if lossless:
        ratios.append(1.0)
    return tuple(ratios)


def _item_text(where: str, key: str, value: object) -> str:
    if not _XML_NAME.match(key) or key[:3].lower() == "xml":
        raise ValueError(f"{where}: {key!r} is not usable as an XML element name")
    return f"<{key}>{_text(where, str(value))}</{key}>"


def _text(where: str, value: str) -> str:
    if _XML_FORBIDDEN.search(value):
        raise ValueError(f"{where}: {value!r} contains characters XML cannot represent")
    return escape(value)


def _items(fits: Fits) -> list[tuple[str, object]]:
    if isinstance(fits, Mapping):
        return list(fits.items())
    return [(k, v) for k, v in fits]


def build_xml(
    fits: Fits,
    helioviewer: Mapping[str, object],
    history: Sequence[str] = (),
    comments: Sequence[str] = (),
) -> str:
    """The Helioviewer XML header: ``<meta><fits>…</fits><helioviewer>…</helioviewer></meta>``.

    Values are converted with ``str`` and escaped; ``history`` and ``comments`` become one line
    each inside ``<history>`` and ``<comment>``, as jp2gen writes FITS HISTORY/COMMENT cards.
    Raises ValueError for keys that are not XML names or text XML cannot carry.
    """
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<meta>", "<fits>"]
    lines += [_item_text("fits", k, v) for k, v in _items(fits)]
    for tag, entries in (("history", history), ("comment", comments)):
        if entries:
            lines += [f"<{tag}>", *(_text(tag, e) for e in entries), f"</{tag}>"]
    lines += ["</fits>", "<helioviewer>"]
    lines += [_item_text("helioviewer", k, v) for k, v in helioviewer.items()]
    lines += ["</helioviewer>", "</meta>", ""]
    return "\n".join(lines)


def _box_header(kind: bytes, payload_length: int) -> bytes:
    length = payload_length + 8
    if length <= 0xFFFFFFFF:
        return struct.pack(">I4s", length, kind)
    # XLBox form for payloads past 4 GiB.
    return struct.pack(">I4sQ", 1, kind, payload_length + 16)


def _jp2h_box(height: int, width: int) -> bytes:
    # ihdr: 1 component, 8-bit unsigned (BPC = depth - 1), wavelet, colour space known, no IPR.
    ihdr = struct.pack(">I4sIIHBBBB", 22, b"ihdr", height, width, 1, 7, 7, 0, 0)
    colr = struct.pack(">I4sBBBI", 15, b"colr", 1, 0, 0, _GREYSCALE)
    return struct.pack(">I4s", 8 + len(ihdr) + len(colr), b"jp2h") + ihdr + colr


def _validate(data: np.ndarray, bits_per_pixel: float, levels: int | None, layers: int) -> int:
    if not isinstance(data, np.ndarray) or data.ndim != 2:
        raise ValueError("data must be a 2-D numpy array")
    if data.dtype != np.uint8:
        raise ValueError(f"data must be uint8, not {data.dtype}")
    if data.size == 0:
        raise ValueError(f"data is an empty image (shape {data.shape})")
    if not 0 < bits_per_pixel < 8:
        raise ValueError(f"bits_per_pixel must be in (0, 8), not {bits_per_pixel}")
    if isinstance(layers, bool) or not 1 <= layers <= _MAX_LAYERS:
        raise ValueError(f"layers must be in 1..{_MAX_LAYERS}, not {layers}")
    height, width = data.shape
    if levels is None:
        return default_levels(height, width)
    # OpenJPEG needs every resolution to keep at least one pixel.
    if isinstance(levels, bool) or levels < 0 or 1 << levels > min(height, width):
        raise ValueError(f"levels={levels} does not fit a {height}×{width} image")
    return levels


def write_jp2(
    path: Path,
    data: np.ndarray,
    fits: Fits,
    helioviewer: Mapping[str, object],
    *,
    lossless: bool = False,
    bits_per_pixel: float = 0.5,
    levels: int | None = None,
    layers: int = 8,
    history: Sequence[str] = (),
    comments: Sequence[str] = (),
) -> Path:
    """Encode ``data`` (2-D uint8) as a Helioviewer JP2 at ``path`` and return ``path``.

    Lossy files use the 9/7 irreversible wavelet at ``bits_per_pixel`` for the full quality
    (Helioviewer's 0.5 is about 16:1), with ``layers`` quality layers spread down from there;
    ``lossless`` switches to the reversible 5/3 wavelet and adds a final lossless layer, so the
    pixels decode bit-exactly. ``levels`` defaults to 8 decomposition levels, fewer for small
    images. The file appears atomically: it is built under a temporary name in the same folder
    and renamed, and the temporary files are removed when anything fails.
    """
    path = Path(path)
    levels = _validate(data, bits_per_pixel, levels, layers)
    xml = build_xml(fits, helioviewer, history, comments).encode("utf-8")
    height, width = data.shape

    part = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part"
    codestream = part.with_name(part.name + ".j2k")  # non-.jp2 suffix: glymur writes raw J2K
    try:
        glymur.Jp2k(
            codestream,
            data=np.ascontiguousarray(data),
            irreversible=not lossless,
            cratios=compression_ratios(bits_per_pixel, layers, lossless=lossless),
            numres=levels + 1,
            prog="RPCL",
            # One entry per resolution: OpenJPEG would halve a single entry at lower levels.
            psizes=[(128, 128)] * (levels + 1),
            cbsize=(64, 64),
            plt=True,
        )
        # O_EXCL with 0o666 lets the umask decide permissions (mkstemp would force 0600).
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as out, open(codestream, "rb") as src:
            out.write(_SIGNATURE_BOX + _FTYP_BOX + _jp2h_box(height, width))
            out.write(_box_header(b"xml ", len(xml)) + xml)
            out.write(_box_header(b"jp2c", os.fstat(src.fileno()).st_size))
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, path)
    finally:
        codestream.unlink(missing_ok=True)
        part.unlink(missing_ok=True)
    return path


__all__ = ["MAX_LEVELS", "build_xml", "compression_ratios", "default_levels", "write_jp2"]

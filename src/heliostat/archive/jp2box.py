"""Just enough of the JP2 box structure (ISO/IEC 15444-1 Annex I) to find the header cheaply.

Helioviewer files put the ``xml `` box before the codestream, so reading the first few kilobytes
gives the whole header; the codestream's SIZ marker is read too, to check the header against the
pixels actually stored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_HEAD_BYTES = 65536


class JP2FormatError(ValueError):
    """The file is not a readable JP2 file; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class JP2Info:
    xml: str  # contents of the first XML box ('' when there is none)
    width: int  # from the codestream SIZ marker
    height: int
    components: int
    bits: int
    codestream_offset: int
    file_size: int


def _boxes(buf: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, payload start, payload end) for each box in buf[start:end]; end may exceed buf."""
    out = []
    off = start
    while off + 8 <= min(end, len(buf)):
        length, kind = struct.unpack_from(">I4s", buf, off)
        header = 8
        if length == 1:
            if off + 16 > len(buf):
                break
            length = struct.unpack_from(">Q", buf, off + 8)[0]
            header = 16
        elif length == 0:
            length = end - off
        if length < header:
            raise JP2FormatError(f"corrupt box {kind!r} at offset {off} (length {length})")
        out.append((kind, off + header, off + length))
        off += length
    return out


def read_info(path: Path) -> JP2Info:
    """Read the XML header and codestream size of a JP2 file, touching only its first bytes."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        buf = f.read(_HEAD_BYTES)
        if not buf.startswith(_SIGNATURE):
            raise JP2FormatError("not a JP2 file (missing the JPEG 2000 signature box)")
        boxes = _boxes(buf, 0, size)
        xml = ""
        cs = None
        for kind, start, end in boxes:
            if kind == b"xml " and not xml:
                if end > size:
                    raise JP2FormatError("truncated file: the XML box runs past the end")
                if end > len(buf):
                    f.seek(start)
                    payload = f.read(end - start)
                else:
                    payload = buf[start:end]
                xml = payload.decode("utf-8", errors="replace").rstrip("\x00")
            elif kind == b"jp2c":
                if end > size:
                    raise JP2FormatError(
                        f"truncated file: the codestream box needs {end} bytes, the file has {size}"
                    )
                cs = (start, end)
                break
        if cs is None:
            raise JP2FormatError("no codestream (jp2c) box in the first 64 KiB")
        start, _ = cs
        if start + 42 > size:
            raise JP2FormatError("truncated file: codestream header missing")
        if start + 64 > len(buf):
            f.seek(start)
            siz = f.read(64)
        else:
            siz = buf[start : start + 64]
    if siz[:4] != b"\xff\x4f\xff\x51":
        raise JP2FormatError("codestream does not start with SOC and SIZ markers")
    xsiz, ysiz, x0, y0 = struct.unpack_from(">IIII", siz, 8)
    ncomp = struct.unpack_from(">H", siz, 40)[0]
    ssiz = siz[42] if len(siz) > 42 else 0
    return JP2Info(
        xml=xml,
        width=xsiz - x0,
        height=ysiz - y0,
        components=ncomp,
        bits=(ssiz & 0x7F) + 1,
        codestream_offset=start,
        file_size=size,
    )


def palette(buf: bytes) -> npt.NDArray[np.uint8] | None:
    """The 8-bit RGB palette of a JP2 file's ``pclr`` box (in ``jp2h``), None when it has none.

    Some Helioviewer files (SWAP) carry their colour table this way; other palettes (not 3
    channels of 8 bits, more than 256 entries) are not colour tables and are ignored.
    """
    for kind, start, end in _boxes(buf, 0, len(buf)):
        if kind == b"jp2h":
            for sub, s0, s1 in _boxes(buf, start, end):
                if sub != b"pclr" or s1 > len(buf) or s1 - s0 < 3:
                    continue
                entries, channels = struct.unpack_from(">HB", buf, s0)
                depths = buf[s0 + 3 : s0 + 3 + channels]
                body = buf[s0 + 3 + channels : s1]
                if channels != 3 or any(d & 0x7F != 7 for d in depths) or not 0 < entries <= 256:
                    return None
                if len(body) < entries * 3:
                    raise JP2FormatError("truncated palette (pclr) box")
                table = np.zeros((256, 3), np.uint8)
                table[:entries] = np.frombuffer(body, np.uint8, entries * 3).reshape(entries, 3)
                table[entries:] = table[entries - 1]
                return table
            return None
        if kind == b"jp2c":
            return None
    return None

"""Colour tables: 256-entry 8-bit RGB lookup tables, one per SunPy colormap a data source names.

The tables are CSVs in the package (``colortables/<name>.csv``, 256 lines ``r,g,b``), generated
from SunPy's colormaps by tools/gen_colortables.py, so the server does not need sunpy. Every array
returned here is cached and read-only: share it, never modify it.
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np
import numpy.typing as npt

_PACKAGE = "heliostat.imaging"
_FOLDER = "colortables"

U8Array = npt.NDArray[np.uint8]


@functools.cache
def names() -> tuple[str, ...]:
    """The names of the packaged tables, sorted."""
    folder = resources.files(_PACKAGE).joinpath(_FOLDER)
    return tuple(
        sorted(p.name[: -len(".csv")] for p in folder.iterdir() if p.name.endswith(".csv"))
    )


def _frozen(a: U8Array) -> U8Array:
    a.setflags(write=False)
    return a


@functools.cache
def _load(name: str) -> U8Array:
    text = resources.files(_PACKAGE).joinpath(_FOLDER, f"{name}.csv").read_text("ascii")
    # int() rejects a malformed field and the uint8 conversion an int outside 0..255.
    try:
        rows = [[int(v) for v in line.split(",")] for line in text.splitlines() if line]
        table = np.array(rows, dtype=np.uint8)
    except (OverflowError, ValueError) as exc:
        raise ValueError(f"colour table {name!r}: {exc}") from exc
    if table.shape != (256, 3):
        raise ValueError(f"colour table {name!r} has shape {table.shape}, expected (256, 3)")
    return _frozen(table)


def load(name: str) -> U8Array:
    """The table ``name`` as a 256×3 uint8 array (read-only); KeyError if there is none."""
    # Checked against the listing first so a name can never address another resource.
    if name not in names():
        raise KeyError(f"unknown colour table {name!r}")
    return _load(name)


@functools.cache
def grey() -> U8Array:
    """The identity grey ramp, 256×3 uint8 (read-only): the table of sources without one."""
    return _frozen(np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1))


@functools.cache
def _rgba(name: str | None) -> U8Array:
    rgb = grey() if name is None else load(name)
    out = np.full((256, 4), 255, dtype=np.uint8)
    out[:, :3] = rgb
    return _frozen(out)


def rgba(name: str | None) -> U8Array:
    """The table ``name`` (None = grey) as 256×4 uint8 with alpha 255, C-contiguous, read-only."""
    if name is not None and name not in names():
        raise KeyError(f"unknown colour table {name!r}")
    return _rgba(name)

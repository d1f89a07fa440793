"""Generate the colour tables in src/heliostat/imaging/colortables/ from SunPy's colormaps.

Each table is ``<name>.csv``: 256 lines ``r,g,b`` of 8-bit values, entry i being the colormap at
i/255 as matplotlib's ``cmap(x, bytes=True)`` gives it. sunpy is a development dependency only;
the server reads the CSVs.

    .venv/bin/python tools/gen_colortables.py            # (re)write every table
    .venv/bin/python tools/gen_colortables.py --check    # exit 1 if any table is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib
import numpy as np

from heliostat.archive import sources

# The colour table of every data source (heliostat.archive.sources), by SunPy colormap name.
# Every table a data source uses: the packaged set is exactly these.
NAMES: tuple[str, ...] = tuple(
    sorted({s.color_table for s in sources.SOURCES if s.color_table is not None})
)

OUT_DIR = Path(__file__).resolve().parent.parent / "src" / "heliostat" / "imaging" / "colortables"


def register_sunpy_colormaps() -> None:
    """Import sunpy.visualization.colormaps, which registers SunPy's colormaps with matplotlib."""
    import sunpy.visualization.colormaps  # type: ignore[import-untyped]  # noqa: F401


def table(name: str) -> np.ndarray:
    """The 256×3 uint8 table of one registered colormap."""
    cmap = matplotlib.colormaps[name]
    rgba: np.ndarray = cmap(np.arange(256) / 255.0, bytes=True)
    return rgba[:, :3]


def to_csv(rgb: np.ndarray) -> str:
    return "".join(f"{r},{g},{b}\n" for r, g, b in rgb.tolist())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)

    register_sunpy_colormaps()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stale = []
    for name in NAMES:
        path = OUT_DIR / f"{name}.csv"
        text = to_csv(table(name))
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("stale colour tables: " + ", ".join(stale), file=sys.stderr)
        return 1
    if not args.check:
        print(f"wrote {len(NAMES)} colour tables to {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

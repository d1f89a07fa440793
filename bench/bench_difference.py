"""Difference tiles and screenshots beside the plain ones: same images, same run, interleaved.

Real AIA 171 4096² and SWAP 174 1024² files. In both pairs the observer distance differs (AIA by
about 70 ppm in 30 minutes), so the reference is resampled through its own geometry, the
general path. Each difference figure has the plain rendering of the same target as its baseline,
measured interleaved with it:

* tile cold, in process: a fresh reader (no codec, no decoded image, no tile cached) per sample;
* tile from decoded images: tile cache missed (a new quality each time), decodes cached;
* tile warm over gRPC: the encoded tile cached (the difference also looks up its reference);
* screenshot 1920×1200 AIA 171, cold in process (fresh reader) and warm over gRPC (region moved
  by an arcsecond each time, so composed and encoded anew from cached decodes).

    .venv/bin/python bench/bench_difference.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import AIA_171, DATA, place_samples, start_server, stop_server  # noqa: E402

from bench.harness import Report, percentiles  # noqa: E402
from heliostat.app import Heliostat  # noqa: E402
from heliostat.archive.times import parse  # noqa: E402
from heliostat.catalog.records import ImageRecord  # noqa: E402
from heliostat.client import HeliostatClient  # noqa: E402
from heliostat.config import profile  # noqa: E402
from heliostat.imaging import difference  # noqa: E402
from heliostat.imaging.compose import Compositor  # noqa: E402
from heliostat.imaging.decode import JP2Reader  # noqa: E402
from heliostat.imaging.tiles import TileRenderer  # noqa: E402
from heliostat.screenshots import region  # noqa: E402
from heliostat.screenshots.layers import parse_layers  # noqa: E402
from heliostat.screenshots.service import ScreenshotService  # noqa: E402

SWAP = sorted(DATA.glob("*PROBA2_SWAP*.jp2"))
AIA_T = "2014-02-03T03:30:23Z"  # reference 30 min earlier: 03:00:23
SWAP_T = "2013-06-12T00:08:04Z"  # reference 5 min earlier: 00:01:34
SCALE = 4.8408817  # Helioviewer's default zoom
PLAIN = "[SDO,AIA,AIA,171,1,100]"
RUNNING = "[SDO,AIA,AIA,171,1,100,1,30,1,]"


def _pair(
    report: Report,
    name: str,
    plain: Callable[[int], object],
    diff: Callable[[int], object],
    runs: int,
    target: float,
) -> None:
    """Interleaved samples of plain(i) and diff(i); reports diff with plain as the baseline."""
    p, d = [], []
    for i in range(runs):
        t0 = time.perf_counter()
        plain(i)
        p.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        diff(i)
        d.append(time.perf_counter() - t0)
    pp, pd = percentiles(p), percentiles(d)
    report.add(f"{name} (p50)", pd["p50_ms"], "ms", baseline_name="plain, same target, p50",
               baseline_value=pp["p50_ms"], target=f"<= {target:g} x plain",
               met=pd["p50_ms"] <= target * pp["p50_ms"], difference=pd, plain=pp)  # fmt: skip


def _tile_pair(
    report: Report, app: Heliostat, label: str, rec: ImageRecord, ref: ImageRecord, xy: int
) -> None:
    """Full-resolution tile (xy, xy) of rec, plain and differenced against ref."""
    small = profile("small")

    def cold(reference: ImageRecord | None) -> None:
        reader = JP2Reader(decode_threads=small.decode_threads)
        tiles = TileRenderer(app.archive_root, reader, cache_bytes=64 << 20)
        tiles.render(rec, xy, xy, rec.scale, "png", 85, reference)

    def decoded(i: int, reference: ImageRecord | None) -> None:
        # A new quality each time misses the tile cache; the decoded images stay cached.
        app.tiles.render(rec, xy, xy, rec.scale, "png", 1 + i, reference)

    _pair(report, f"{label}: difference tile, full res, cold",
          lambda i: cold(None), lambda i: cold(ref), 8, 2.5)  # fmt: skip
    decoded(99, None)
    decoded(99, ref)
    _pair(report, f"{label}: difference tile, full res, decoded images cached",
          lambda i: decoded(i, None), lambda i: decoded(i, ref), 20, 2.0)  # fmt: skip


def _tiles(report: Report, app: Heliostat) -> None:
    for label, sid, when, opts, xy in [
        ("AIA 171 4096²", 10, AIA_T, difference.options(1, 30, 1, None), 0),
        ("SWAP 174 1024²", 32, SWAP_T, difference.options(1, 5, 1, None), -1),
    ]:
        rec = app.closest(sid, parse(when))
        ref = app.difference_reference(rec, opts)
        assert ref is not None and ref.id != rec.id
        assert not difference.same_grid(rec, ref)
        _tile_pair(report, app, label, rec, ref, xy)


def _screenshot_cold(report: Report, app: Heliostat) -> None:
    roi = region.from_centre(0, 0, 1920, 1200, SCALE)
    when = parse(AIA_T)

    def shot(layers: str) -> None:
        small = profile("small")
        reader = JP2Reader(decode_threads=small.decode_threads)
        service = ScreenshotService(app.catalog, Compositor(app.archive_root, reader))
        s = service.take(when, parse_layers(layers), roi)
        assert all(u.drawn for u in s.layers)

    _pair(report, "1920×1200 AIA 171 screenshot, running difference, cold, in process",
          lambda i: shot(PLAIN), lambda i: shot(RUNNING), 5, 2.5)  # fmt: skip


def _grpc(report: Report, root: Path) -> None:
    srv = start_server(root)
    try:
        with HeliostatClient(srv.target, timeout=120) as c:
            img = c.closest_image(10, datetime(2014, 2, 3, 3, 30, 23, tzinfo=UTC))
            when = datetime(2014, 2, 3, 3, 30, 23, tzinfo=UTC)

            def tile(i: int, diff: int) -> None:
                t = c.tile(img.id, 0, 0, img.scale, difference=diff, diff_count=30, diff_time=1)
                assert bool(t.reference_image_id) == bool(diff)

            tile(0, 0)  # fill the cache
            tile(0, 1)
            _pair(report, "difference tile, cached, over gRPC",
                  lambda i: tile(i, 0), lambda i: tile(i, 1), 200, 1.5)  # fmt: skip

            def shot(i: int, layers: str) -> None:
                s = c.screenshot(when, layers, SCALE, centre=(float(i + 1), 0.0, 1920, 1200))
                assert all(layer.drawn for layer in s.layers)

            shot(-1, PLAIN)  # decode everything once
            shot(-1, RUNNING)
            _pair(report, "1920×1200 AIA 171 screenshot, running difference, warm, over gRPC",
                  lambda i: shot(i, PLAIN), lambda i: shot(i, RUNNING), 10, 2.0)  # fmt: skip
    finally:
        stop_server(srv)


def main() -> None:
    report = Report("difference", __doc__.splitlines()[0])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "archive"
        place_samples(root, [*AIA_171, *SWAP])
        app = Heliostat(root, profile=profile("small"))
        try:
            app.ingest([str(root)])
            app.warm()
            _tiles(report, app)
            _screenshot_cold(report, app)
        finally:
            app.close()
        _grpc(report, root)
    report.write()


if __name__ == "__main__":
    main()

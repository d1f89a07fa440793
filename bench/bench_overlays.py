"""Screenshot overlays: what labels, scale indicator and watermark add to a 1920×1200 screenshot.

Baseline measured in the same run: the plain warm composite (LASCO C3 + AIA 171 + SWAP 174 at
50 %, as bench_compose), and composite + PNG for the end-to-end figure.

    .venv/bin/python bench/bench_overlays.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import AIA_171, DATA, LASCO_C3  # noqa: E402

from bench.harness import Report, percentiles, repeat  # noqa: E402
from heliostat.archive.header import read_record  # noqa: E402
from heliostat.archive.sources import by_id  # noqa: E402
from heliostat.imaging.compose import Compositor, LayerInput  # noqa: E402
from heliostat.imaging.decode import JP2Reader  # noqa: E402
from heliostat.screenshots import overlays as ov  # noqa: E402
from heliostat.screenshots import region as roi  # noqa: E402
from heliostat.screenshots.service import encode_rgba  # noqa: E402

SWAP = sorted(DATA.glob("*PROBA2_SWAP_SWAP_174.jp2"))
TARGET_MS = 5.0


def main() -> None:
    report = Report(
        "overlays",
        "Labels + scale bar (or Earth marker) + watermark drawn over a warm 1920×1200 screenshot "
        "of LASCO C3 + AIA 171 + SWAP 174 (50 %) at 4.84 arcsec/px, in-process; baseline the "
        "plain composite in the same run.",
    )
    recs = [read_record(f, f.name) for f in (LASCO_C3, AIA_171[0], SWAP[0])]
    layers = [LayerInput(recs[0]), LayerInput(recs[1]), LayerInput(recs[2], 50)]
    view = roi.from_centre(0, 0, 1920, 1200, 4.8408817).viewport
    comp = Compositor(DATA, JP2Reader())
    frame = comp.compose(layers, view)
    labels = [ov.layer_label(by_id(r.source_id).name, r.time_us) for r in recs]
    cases = {
        "labels + scale bar + watermark": ov.Overlays(
            labels=True, scale=True, scale_type="scalebar", watermark=True
        ),
        "labels + Earth marker + watermark": ov.Overlays(labels=True, scale=True, watermark=True),
        "labels only": ov.Overlays(labels=True),
        "scale bar only": ov.Overlays(scale=True, scale_type="scalebar"),
        "Earth marker only": ov.Overlays(scale=True),
        "watermark only": ov.Overlays(watermark=True),
    }
    compose = percentiles(repeat(lambda: comp.compose(layers, view), 15))
    for name, options in cases.items():
        p = percentiles(repeat(lambda o=options: ov.draw(frame.rgba, view, o, labels), 30))  # type: ignore[misc]
        report.add(f"overlays 1920×1200: {name} (p50)", p["p50_ms"], "ms",
                   baseline_name="warm compose of the plain screenshot",
                   baseline_value=compose["p50_ms"], target=f"<= {TARGET_MS:g} ms",
                   met=p["p50_ms"] <= TARGET_MS, ours=p, compose=compose)  # fmt: skip

    # Interleaved, so drifting load on the shared machine hits both alike.
    everything = cases["labels + scale bar + watermark"]
    plain_s: list[float] = []
    drawn_s: list[float] = []
    for _ in range(15):
        t0 = time.perf_counter()
        encode_rgba(comp.compose(layers, view).rgba, "png", 90)
        t1 = time.perf_counter()
        encode_rgba(ov.draw(comp.compose(layers, view).rgba, view, everything, labels), "png", 90)
        plain_s.append(t1 - t0)
        drawn_s.append(time.perf_counter() - t1)
    plain, drawn = percentiles(plain_s), percentiles(drawn_s)
    report.add("screenshot 1920×1200 warm, composed + overlays + PNG (p50)", drawn["p50_ms"],
               "ms", baseline_name="composed + PNG, no overlays", baseline_value=plain["p50_ms"],
               ours=drawn, plain=plain)  # fmt: skip
    report.write()


if __name__ == "__main__":
    main()

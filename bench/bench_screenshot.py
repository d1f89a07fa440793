"""Screenshots end to end over gRPC: 1920×1200 of AIA 171 (4096²) + SWAP 174 + LASCO C3.

Cold: a fresh server process for each sample (nothing decoded yet). Warm: the same layers with the
region moved by an arcsecond each time, so every request is composed and encoded again from the
decoded images already cached. Baseline in the same run: a no-op RPC (health Check).

    .venv/bin/python bench/bench_screenshot.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import AIA_171, DATA, LASCO_C3, place_samples, start_server, stop_server  # noqa: E402
from grpc_health.v1 import health_pb2  # noqa: E402

from bench.harness import Report, percentiles  # noqa: E402
from heliostat.client import HeliostatClient  # noqa: E402

LAYERS = "[SOHO,LASCO,C3,white-light,1,100],[SDO,AIA,AIA,171,1,100],[PROBA2,SWAP,SWAP,174,1,50]"
WHEN = datetime(2014, 2, 3, 2, 30, tzinfo=UTC)
SCALE = 4.8408817  # Helioviewer's default zoom, arcsec per pixel


def _shot(c: HeliostatClient, dx: float) -> float:
    t0 = time.perf_counter()
    s = c.screenshot(WHEN, LAYERS, SCALE, centre=(dx, 0.0, 1920, 1200))
    took = time.perf_counter() - t0
    assert (s.width, s.height) == (1920, 1200) and all(layer.drawn for layer in s.layers)
    return took


def main() -> None:
    report = Report("screenshot", __doc__.splitlines()[0])
    files = [*AIA_171, LASCO_C3, sorted(DATA.glob("*SWAP*.jp2"))[0]]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "archive"
        place_samples(root, files)
        cold, warm, noop = [], [], []
        for i in range(5):
            srv = start_server(root, ingest=(i == 0))
            try:
                with HeliostatClient(srv.target, timeout=60) as c:
                    cold.append(_shot(c, 0.0))
                    if i == 0:
                        for k in range(1, 21):
                            warm.append(_shot(c, float(k)))
                            t0 = time.perf_counter()
                            c.health.Check(health_pb2.HealthCheckRequest())
                            noop.append(time.perf_counter() - t0)
            finally:
                stop_server(srv)
    pc, pw, pn = percentiles(cold), percentiles(warm), percentiles(noop)
    report.add("1920×1200, 3 layers, cold, over gRPC (p50)", pc["p50_ms"], "ms",
               target="<= 800 ms", met=pc["p50_ms"] <= 800, stats=pc)  # fmt: skip
    report.add("1920×1200, 3 layers, warm, over gRPC (p50)", pw["p50_ms"], "ms",
               baseline_name="no-op RPC p50", baseline_value=pn["p50_ms"],
               target="<= 150 ms", met=pw["p50_ms"] <= 150, stats=pw)  # fmt: skip
    report.write()


if __name__ == "__main__":
    main()

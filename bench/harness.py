"""Shared benchmark plumbing: timing, percentiles and the JSON + markdown reports in bench/results/.

Every benchmark measures its baseline in the same run, so a ratio is between two numbers taken on
the same machine under the same load.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def percentiles(samples: list[float]) -> dict[str, float]:
    """Summary of samples given in seconds, reported in milliseconds."""
    s = sorted(samples)
    if not s:
        raise ValueError("no samples")

    def pct(p: float) -> float:
        k = (len(s) - 1) * p
        lo = int(k)
        hi = min(lo + 1, len(s) - 1)
        return (s[lo] + (s[hi] - s[lo]) * (k - lo)) * 1e3

    return {
        "n": float(len(s)),
        "min_ms": s[0] * 1e3,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": s[-1] * 1e3,
        "mean_ms": statistics.fmean(s) * 1e3,
    }


def repeat(fn: Callable[[], object], n: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of n calls of fn after warmup calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def alternate(fns: list[Callable[[], object]], n: int, warmup: int = 1) -> list[list[float]]:
    """Wall-clock seconds of n calls of each of fns, taken in turn (fns[0], fns[1], ..., fns[0],
    ...) after warmup rounds: a ratio between them then holds under load that comes and goes
    during the run, which back-to-back series each catch differently (a 16 MiB copy measured
    1.1 and 1.7 ms minutes apart)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    out: list[list[float]] = [[] for _ in fns]
    for _ in range(n):
        for fn, samples in zip(fns, out, strict=True):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return out


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    baseline_name: str | None = None
    baseline_value: float | None = None
    ratio: float | None = None  # value / baseline_value
    target: str | None = None  # e.g. "<= 2.0 x baseline"
    met: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class Report:
    """Collects the figures of one benchmark and writes bench/results/<name>.json and .md."""

    def __init__(self, name: str, description: str) -> None:
        self.name = name
        self.description = description
        self.figures: list[Figure] = []

    def add(
        self,
        name: str,
        value: float,
        unit: str,
        *,
        baseline_name: str | None = None,
        baseline_value: float | None = None,
        target: str | None = None,
        met: bool | None = None,
        **detail: Any,
    ) -> Figure:
        ratio = value / baseline_value if baseline_value else None
        fig = Figure(name, value, unit, baseline_name, baseline_value, ratio, target, met, detail)
        self.figures.append(fig)
        status = "" if met is None else ("  [met]" if met else "  [NOT met]")
        base = (
            f"  (baseline {baseline_name}: {baseline_value:.4g} {unit}, ratio {ratio:.3g})"
            if (baseline_value and ratio is not None)
            else ""
        )
        print(f"{self.name}: {name} = {value:.4g} {unit}{base}{status}", flush=True)
        return fig

    def write(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        meta = {
            "benchmark": self.name,
            "description": self.description,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "figures": [asdict(f) for f in self.figures],
        }
        path = RESULTS / f"{self.name}.json"
        path.write_text(json.dumps(meta, indent=2) + "\n")
        lines = [
            f"### {self.name}",
            "",
            self.description,
            "",
            "| figure | value | baseline | ratio | target | met |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for f in self.figures:
            base = f"{f.baseline_name}: {f.baseline_value:.4g} {f.unit}" if f.baseline_value else ""
            ratio = f"{f.ratio:.3g}" if f.ratio is not None else ""
            met = "" if f.met is None else ("yes" if f.met else "**no**")
            value = f"{f.value:.4g} {f.unit}"
            lines.append(f"| {f.name} | {value} | {base} | {ratio} | {f.target or ''} | {met} |")
        (RESULTS / f"{self.name}.md").write_text("\n".join(lines) + "\n")
        return path

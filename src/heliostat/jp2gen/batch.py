"""Convert many FITS files in worker processes: resumable, with bad inputs quarantined.

Each file is converted by ``convert`` in a worker (``forkserver`` or ``spawn`` processes, so no
worker inherits the parent's threads or open files). Outputs that already exist and read back
are skipped, which makes an interrupted batch resumable; partial outputs never appear because
``write_jp2`` renames finished files into place. A file rejected as bad input (JP2GenError) is
moved to the quarantine folder with a ``.reason.txt`` beside it; any other failure (disk full,
a bug) is reported but leaves the input where it is.
"""

from __future__ import annotations

import multiprocessing
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from heliostat.jp2gen.convert import ConvertResult, JP2GenError, convert

FITS_SUFFIXES = (".fits", ".fts", ".fit", ".fits.gz", ".fts.gz", ".fit.gz", ".fz")


@dataclass(frozen=True, slots=True)
class Failure:
    path: Path
    reason: str
    quarantined: Path | None  # where the input was moved; None when it was left in place


@dataclass
class BatchReport:
    converted: list[ConvertResult] = field(default_factory=list)
    skipped: list[ConvertResult] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def files_per_second(self) -> float:
        return len(self.converted) / self.seconds if self.seconds > 0 else 0.0


def iter_fits(targets: Iterable[Path]) -> Iterator[Path]:
    """FITS files named directly, and those found under folders, in sorted order."""
    for target in targets:
        if target.is_dir():
            found = (p for p in target.rglob("*") if p.is_file())
            yield from sorted(p for p in found if p.name.lower().endswith(FITS_SUFFIXES))
        else:
            yield target


@dataclass(frozen=True, slots=True)
class _Options:
    archive_root: Path
    lossless: bool
    bits_per_pixel: float
    overwrite: bool


# (result, None), or (None, (reason, is_bad_input)): exceptions cross the process boundary as
# text, since not every library exception pickles.
_Outcome = tuple[ConvertResult | None, tuple[str, bool] | None]


def _run(path: Path, opts: _Options) -> _Outcome:
    try:
        result = convert(
            path,
            opts.archive_root,
            lossless=opts.lossless,
            bits_per_pixel=opts.bits_per_pixel,
            overwrite=opts.overwrite,
        )
    except JP2GenError as e:
        return None, (str(e), True)
    except Exception as e:
        return None, (f"{path.name}: {type(e).__name__}: {e}", False)
    return result, None


def _quarantine(path: Path, reason: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / path.name
    n = 1
    while dest.exists():  # keep earlier quarantined files with the same name
        dest = folder / f"{path.name}.{n}"
        n += 1
    shutil.move(path, dest)
    dest.with_name(dest.name + ".reason.txt").write_text(reason + "\n")
    return dest


def _pool_context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def convert_many(
    paths: Sequence[Path],
    archive_root: Path,
    *,
    workers: int = 2,
    quarantine: Path | None = None,
    progress: bool = True,
    lossless: bool = False,
    bits_per_pixel: float = 0.5,
    overwrite: bool = False,
) -> BatchReport:
    """Convert ``paths`` into ``archive_root`` with ``workers`` processes (1: in this process).

    Returns what was converted, skipped (output already valid) and failed with the reason.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    opts = _Options(Path(archive_root), lossless, bits_per_pixel, overwrite)
    report = BatchReport()
    t0 = time.perf_counter()

    def record(path: Path, outcome: _Outcome) -> None:
        result, error = outcome
        if result is not None:
            (report.skipped if result.skipped else report.converted).append(result)
            return
        assert error is not None
        reason, bad_input = error
        moved = None
        if bad_input and quarantine is not None and path.exists():
            moved = _quarantine(path, reason, quarantine)
        report.failed.append(Failure(path, reason, moved))

    with tqdm(total=len(paths), unit="file", disable=not progress) as bar:

        def step(path: Path, outcome: _Outcome) -> None:
            record(path, outcome)
            bar.update(1)
            bar.set_postfix(
                converted=len(report.converted),
                skipped=len(report.skipped),
                failed=len(report.failed),
            )

        if workers == 1 or len(paths) <= 1:
            for p in paths:
                step(p, _run(p, opts))
        else:
            pool = ProcessPoolExecutor(min(workers, len(paths)), _pool_context())
            try:
                futures: dict[Future[_Outcome], Path] = {
                    pool.submit(_run, p, opts): p for p in paths
                }
                for fut in as_completed(futures):
                    try:
                        outcome = fut.result()
                    except Exception as e:  # a worker died (e.g. killed): not the file's fault
                        outcome = (None, (f"{futures[fut].name}: worker failed: {e!r}", False))
                    step(futures[fut], outcome)
            finally:
                # On Ctrl-C, drop the queued files instead of converting them all before exiting;
                # a rerun resumes where this one stopped.
                pool.shutdown(cancel_futures=True)
    report.seconds = time.perf_counter() - t0
    return report


__all__ = ["FITS_SUFFIXES", "BatchReport", "Failure", "convert_many", "iter_fits"]

"""Difference images: a frame minus an earlier frame of the same source, as Helioviewer makes them.

Options (Helioviewer's getTile/layer-string ``difference, diffCount, diffTime, baseDiffTime``):

* running difference (mode 1): the reference is the source's last image at or before the target
  image's time − ``count`` units; ``unit`` is Helioviewer's diffTime code, 0 s, 1 min, 2 h,
  3 d, 4 wk, 5 mo, 6 yr. Months and years are calendar steps with the day clamped to the
  month's length (31 March − 1 month = end of February);
* base difference (mode 2): the reference is the source's last image at or before ``base_us``.

"At or before", not "nearest", is Helioviewer's rule; it also means a reference time before the
source's first image has no reference, which callers report rather than silently differencing
against a later image.

Mapping (Helioviewer's ``SubFieldImage::runningDifference``): the byte-scaled samples' difference
``d = new − old`` is clipped to [−64, 63] and shown as ``(d + 64)·2``: 128 is no change, the gain
is 2, and a quarter of the byte range either way saturates to black or white. Helioviewer shows
differences in grey, without the source's colour table; so do we unless a table is asked for.

Geometry: the reference is sampled onto the target's pixels through its own geometry (Sun centre
from CRPIX/CRVAL, plate scale CDELT normalised by DSUN, CROTA), so the Sun's centre and size
coincide even when the two frames were taken with different pointing or from different distances.
"""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass

import numba
import numpy as np
import numpy.typing as npt

from heliostat.archive import times
from heliostat.catalog.records import ImageRecord
from heliostat.errors import InvalidArgument

U8Array = npt.NDArray[np.uint8]
F64Array = npt.NDArray[np.float64]

NONE, RUNNING, BASE = 0, 1, 2
MODES = {NONE: "none", RUNNING: "running", BASE: "base"}
SECONDS, MINUTES, HOURS, DAYS, WEEKS, MONTHS, YEARS = range(7)
UNITS = ("seconds", "minutes", "hours", "days", "weeks", "months", "years")
_FIXED_US = {SECONDS: 1, MINUTES: 60, HOURS: 3600, DAYS: 86_400, WEEKS: 604_800}
MAX_COUNT = 1_000_000


@dataclass(frozen=True, slots=True)
class Difference:
    """Checked options: a running (``count`` ``unit``s back) or base (``base_us``) difference."""

    mode: int  # RUNNING or BASE
    count: int = 0
    unit: int = MINUTES
    base_us: int = 0

    @property
    def time_field(self) -> str:
        """The request field that decides the reference time, for errors about it."""
        return "diff_count" if self.mode == RUNNING else "base_diff_time"

    def reference_time(self, time_us: int) -> int:
        """The time the reference image must be at or before, for a target taken at time_us."""
        if self.mode == BASE:
            return self.base_us
        if self.unit in _FIXED_US:
            return time_us - self.count * _FIXED_US[self.unit] * 1_000_000
        months = self.count * (12 if self.unit == YEARS else 1)
        dt = times.to_datetime(time_us)
        index = dt.year * 12 + dt.month - 1 - months
        year, month = divmod(index, 12)
        if year < 1:
            message = (
                f"{self.count} {UNITS[self.unit]} before {times.iso(time_us)} is before year 1"
            )
            raise InvalidArgument(message, field="diff_count")
        day = min(dt.day, calendar.monthrange(year, month + 1)[1])
        return times.from_datetime(dt.replace(year=year, month=month + 1, day=day))

    def describe(self, time_us: int) -> str:
        if self.mode == BASE:
            return f"base time {times.iso(self.base_us)}"
        return f"{times.iso(time_us)} − {self.count} {UNITS[self.unit]}"


def options(mode: int, count: int, unit: int, base_us: int | None) -> Difference | None:
    """Difference options checked field by field; None for mode 0 (whose other fields are
    ignored, as Helioviewer's client always sends them). Errors are InvalidArgument naming
    ``difference``, ``diff_count``, ``diff_time`` or ``base_diff_time``."""
    if mode not in MODES:
        message = f"must be 0 (none), 1 (running) or 2 (base), not {mode}"
        raise InvalidArgument(message, field="difference")
    if mode == NONE:
        return None
    if mode == BASE:
        if base_us is None:
            raise InvalidArgument("is required for a base difference", field="base_diff_time")
        return Difference(BASE, base_us=base_us)
    if not 1 <= count <= MAX_COUNT:
        message = f"a running difference needs a count of 1-{MAX_COUNT}, not {count}"
        raise InvalidArgument(message, field="diff_count")
    if not 0 <= unit < len(UNITS):
        codes = ", ".join(f"{i} {name}" for i, name in enumerate(UNITS))
        raise InvalidArgument(f"must be one of {codes}, not {unit}", field="diff_time")
    if unit in _FIXED_US and count * _FIXED_US[unit] > 10_000 * 366 * 86_400:
        raise InvalidArgument(f"{count} {UNITS[unit]} is over 10,000 years", field="diff_count")
    return Difference(RUNNING, count, unit)


# -- kernel ------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _difference(new, new_alpha, old, old_alpha, out, out_alpha):  # type: ignore[no-untyped-def]
    h, w = new.shape
    for i in range(h):
        for j in range(w):
            a = new_alpha[i, j]
            if old_alpha[i, j] < a:
                a = old_alpha[i, j]
            d = np.int32(new[i, j]) - np.int32(old[i, j])
            if d < -64:
                d = np.int32(-64)
            elif d > 63:
                d = np.int32(63)
            out[i, j] = 0 if a == 0 else (d + 64) * 2
            out_alpha[i, j] = a


def _check(name: str, a: object, shape: tuple[int, ...] | None) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 2:
        what = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"{name}: expected a 2-D uint8 array, got {what}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name}: shape {a.shape} differs from new's {shape}")


def difference(
    new: U8Array,
    new_alpha: U8Array,
    old: U8Array,
    old_alpha: U8Array,
    *,
    out: U8Array | None = None,
    out_alpha: U8Array | None = None,
) -> tuple[U8Array, U8Array]:
    """``(clip(new − old, −64, 63) + 64)·2`` where both are covered, with coverage the smaller
    of the two alphas (0 outside either image, where the value is 0 too).

    ``out``/``out_alpha`` may be ``new``/``new_alpha`` themselves, to difference in place.
    Runs without the GIL.
    """
    _check("new", new, None)
    for name, a in (("new_alpha", new_alpha), ("old", old), ("old_alpha", old_alpha)):
        _check(name, a, new.shape)
    out = np.empty_like(new) if out is None else out
    out_alpha = np.empty_like(new) if out_alpha is None else out_alpha
    _check("out", out, new.shape)
    _check("out_alpha", out_alpha, new.shape)
    _difference(new, new_alpha, old, old_alpha, out, out_alpha)
    return out, out_alpha


# -- geometry ----------------------------------------------------------------------------------


def same_grid(a: ImageRecord, b: ImageRecord) -> bool:
    """Whether two images put the Sun at the same pixels (size, centre, scale and roll)."""
    return (a.width, a.height, a.scale, a.ref_pixel_x, a.ref_pixel_y, a.rotation) == (
        b.width, b.height, b.scale, b.ref_pixel_x, b.ref_pixel_y, b.rotation,
    )  # fmt: skip


def native_transform(target: ImageRecord, reference: ImageRecord) -> F64Array:
    """The (2, 3) affine from target pixel centres to the reference's pixel centres (0-based
    column, row, top row first) that shows the same point of the Sun.

    A pixel's offset from Sun centre is ``R(θ)·(X, Y)/scale`` with (X, Y) arcsec at 1 AU (y
    down) and R the FITS rotation of compose.layer_matrix; so target offset ``d`` is reference
    offset ``(j_t/j_r)·R(θ_r − θ_t)·d``.
    """
    k = target.scale / reference.scale
    theta = math.radians(reference.rotation - target.rotation)
    c, s = k * math.cos(theta), k * math.sin(theta)
    tx, ty = target.ref_pixel_x - 1, target.height - target.ref_pixel_y
    rx, ry = reference.ref_pixel_x - 1, reference.height - reference.ref_pixel_y
    return np.array([[c, -s, rx - c * tx + s * ty], [s, c, ry - s * tx - c * ty]])


def chain(first: F64Array, then: F64Array) -> F64Array:
    """The (2, 3) affine applying ``first`` and then ``then``."""
    out = then[:, :2] @ first
    out[:, 2] += then[:, 2]
    return out

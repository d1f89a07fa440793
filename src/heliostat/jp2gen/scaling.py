"""Byte scaling of FITS pixels, as Helioviewer's JP2Gen does it.

AIA (``hvs_version5_aia.pro``): the image is divided by EXPTIME (DN/s), clipped to the
channel's [dmin, dmax] and byte-scaled in log10, sqrt or linear space. AIA 171 is special-cased
by the writer: ``BYTSCL(((img-5) > 0.1)^0.5 < 40 > 1)``, which equals sqrt(img-5) between
img = 6 and 1605 DN/s. HMI: magnetograms linear over ±250 G, continuum linear from 0 to the
image maximum. Every other source: linear between the 0.5 and 99.5 percentiles of the finite
pixels.

JP2Gen pins its range by overwriting two pixels with 0 and 500000 before BYTSCL; here the range
is passed explicitly, so no pixel is altered. Missing pixels (NaN, BLANK) become byte 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from heliostat.archive.sources import DataSource

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

# IDL BYTSCL with TOP=255: floor((x - min) * 255.999 / (max - min)).
_BYTSCL_TOP = 255.999
_DEFAULT_PERCENTILES = (0.5, 99.5)
_HMI_MAG_GAUSS = 250.0

# (dmin, dmax, function) per AIA wavelength, in DN/s (hvs_version5_aia.pro).
AIA_TABLE: dict[str, tuple[float, float, str]] = {
    "94": (0.1, 30.0, "log10"),
    "131": (0.7, 500.0, "log10"),
    "193": (20.0, 2500.0, "log10"),
    "211": (7.0, 1500.0, "log10"),
    "304": (0.8, 250.0, "log10"),
    "335": (0.4, 80.0, "log10"),
    "1600": (20.0, 400.0, "log10"),
    "1700": (220.0, 5000.0, "sqrt"),
    "4500": (4000.0, 20000.0, "log10"),
}
# AIA 171: sqrt(max(img - 5, 0.1)) clipped to [1, 40] is sqrt(img - 5) for img in [6, 1605].
AIA_171 = (6.0, 1605.0, 5.0)

_FUNCTIONS: dict[str, Callable[..., F32]] = {
    "log10": np.log10,
    "sqrt": np.sqrt,
    "linear": np.positive,
}


@dataclass(frozen=True, slots=True)
class Scaling:
    """``byte = BYTSCL(f(clip(img / exptime, dmin, dmax) - offset))``.

    BYTSCL runs over f(dmin - offset)..f(dmax - offset). ``exptime`` is None when the image is
    not exposure-normalised; dmin/dmax are in the units of the normalised image (DN/s for AIA).
    """

    function: str  # "log10", "sqrt" or "linear"
    dmin: float
    dmax: float
    offset: float = 0.0
    exptime: float | None = None

    def __post_init__(self) -> None:
        if self.function not in _FUNCTIONS:
            raise ValueError(f"unknown scaling function {self.function!r}")
        if not self.dmin < self.dmax:
            raise ValueError(f"scaling range is empty: dmin={self.dmin:g} dmax={self.dmax:g}")
        if self.exptime is not None and not self.exptime > 0:
            raise ValueError(f"EXPTIME must be positive, not {self.exptime:g}")

    @property
    def label(self) -> str:
        """The HV_IMG_FUNCTION string, e.g. ``log10`` or ``sqrt(img-5)``."""
        return f"{self.function}(img-{self.offset:g})" if self.offset else self.function

    def _apply(self, x: F32) -> U8:
        """Scale a float32 array in place and return the bytes."""
        if self.exptime is not None:
            x *= np.float32(1.0 / self.exptime)
        # fmax/fmin (not clip) send NaN to dmin, so missing pixels become byte 0.
        np.fmax(x, np.float32(self.dmin), out=x)
        np.fmin(x, np.float32(self.dmax), out=x)
        f = _FUNCTIONS[self.function]
        if self.offset:
            x -= np.float32(self.offset)
        f(x, out=x)
        # The ends go through the same float32 arithmetic as the pixels, so dmin gives exactly 0.
        ends = np.array([self.dmin, self.dmax], np.float32) - np.float32(self.offset)
        lo, hi = (float(v) for v in f(ends))
        x -= np.float32(lo)
        x *= np.float32(_BYTSCL_TOP / (hi - lo))
        np.clip(x, 0, 255, out=x)  # float32 rounding can reach 256.0 at dmax
        return x.astype(np.uint8)

    def to_bytes(self, data: npt.NDArray[np.generic], blank: int | None = None) -> U8:
        """Byte-scale ``data`` (any real dtype, any strides) into a new C-ordered uint8 array.

        Integer images of up to 16 bits go through a lookup table over every possible value
        (identical results, one pass over the pixels); ``blank`` marks missing integer pixels.
        """
        if data.dtype.kind in "iu" and data.dtype.itemsize <= 2:
            unsigned = np.dtype(f"u{data.dtype.itemsize}")
            values = np.arange(1 << (8 * data.dtype.itemsize), dtype=unsigned)
            domain = values.view(data.dtype).astype(np.float32)
            if blank is not None and _in_range(blank, data.dtype):
                domain[np.array(blank, data.dtype).view(unsigned)] = np.nan
            lut = self._apply(domain)
            out: U8 = lut[data.view(unsigned)]
            return out
        x = np.array(data, dtype=np.float32, order="C")
        if blank is not None and data.dtype.kind in "iu":
            x[data == blank] = np.nan
        return self._apply(x)


def _in_range(value: int, dtype: np.dtype[np.generic]) -> bool:
    info = np.iinfo(dtype)  # type: ignore[type-var]
    return bool(info.min <= value <= info.max)


def _finite(data: npt.NDArray[np.generic], blank: int | None) -> npt.NDArray[np.float64]:
    """The valid pixels as float64 (integers are exact in it), missing ones left out."""
    if data.dtype.kind in "iu":
        valid = data[data != blank] if blank is not None else data.ravel()
    else:
        valid = data[np.isfinite(data)]
    return valid.astype(np.float64, copy=False)


def choose(
    source: DataSource,
    data: npt.NDArray[np.generic],
    *,
    exptime: float | None,
    blank: int | None = None,
) -> Scaling:
    """The scaling JP2Gen uses for ``source``; the percentile default for sources without one.

    Raises ValueError when a rule needs something the image lacks (EXPTIME, finite pixels).
    """
    if source.instrument == "AIA":
        if exptime is None or not math.isfinite(exptime) or exptime <= 0:
            raise ValueError(f"EXPTIME is missing or not positive ({exptime}) for {source.name}")
        if source.measurement == "171":
            dmin, dmax, offset = AIA_171
            return Scaling("sqrt", dmin, dmax, offset, exptime)
        if source.measurement in AIA_TABLE:
            dmin, dmax, fn = AIA_TABLE[source.measurement]
            return Scaling(fn, dmin, dmax, exptime=exptime)
    if source.instrument == "HMI" and source.measurement == "magnetogram":
        return Scaling("linear", -_HMI_MAG_GAUSS, _HMI_MAG_GAUSS)
    valid = _finite(data, blank)
    if valid.size == 0:
        raise ValueError("the image has no finite pixels")
    if source.instrument == "HMI" and source.measurement == "continuum":
        return _linear(0.0, float(valid.max()))
    lo, hi = np.percentile(valid, _DEFAULT_PERCENTILES)
    return _linear(float(lo), float(hi))


def _linear(dmin: float, dmax: float) -> Scaling:
    # A flat image still gets a valid (one-unit) range: every pixel maps to byte 0.
    return Scaling("linear", dmin, dmax if dmax > dmin else dmin + 1.0)


__all__ = ["AIA_171", "AIA_TABLE", "Scaling", "choose"]

"""Synthetic solar images and a demo archive built from them plus the real sample files.

``solar_disc`` renders a plausible full-disc image for a Helioviewer data source: a limb
brightened (EUV) or limb darkened (continuum) disc, off-limb corona, active regions, sunspots,
coronal holes and fine structure. Features live on a heliographic map that rotates
differentially, so a sequence of frames shows regions crossing the disc; the fine structure in
the image plane evolves slowly. Large-scale structure is rendered at a quarter of the
resolution and upsampled, which keeps a 4096² frame to a few tenths of a second.

``build_demo_archive`` copies the real sample JP2s into a Helioviewer archive tree and fills it
with synthetic AIA frames whose headers are the real AIA header with times and wavelength
changed.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import struct
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from heliostat.archive import naming, sources
from heliostat.archive.jp2write import write_jp2

F32 = npt.NDArray[np.float32]

# Heliographic map resolution (longitude × latitude): ~0.18° per sample.
_MAP_W, _MAP_H = 2048, 1024
# Image-plane fine structure drifts through a full cycle in this time.
_EVOLVE_S = 6 * 3600.0
_DEG = math.pi / 180.0
# Snodgrass differential rotation (deg/day, sidereal) minus Earth's orbital motion → synodic.
_ROT_A, _ROT_B, _ROT_C = 14.713 - 0.9856, 2.396, 1.787
_RAD_PER_S = _DEG / 86400.0
_PROFILE_STEP = 1.0 / 16  # radial profile table step, pixels

_DEMO_SEED = 2014
# Off-limb structure (in solar radii above the limb) fades over this height.
_FADE_HEIGHT = 0.15


@dataclass(frozen=True, slots=True)
class _Look:
    """How one channel renders the same Sun. Intensities are relative to quiet disc centre."""

    kind: Literal["euv", "uv", "continuum"]
    limb: float  # euv: e in sqrt((1+e)/(mu²+e)); others: linear limb-darkening coefficient
    height: float  # off-limb exponential scale height in solar radii (0: nothing off-limb)
    tail: float  # share of the limb intensity in a slow ρ⁻⁴ coronal tail
    active: float  # log-contrast of active regions
    hole: float  # fractional darkening inside coronal holes
    spot: float  # fractional darkening inside sunspot umbrae
    network: float  # log-amplitude of structure on the heliographic map
    fine: float  # log-amplitude of image-plane fine structure
    zero: float  # intensity mapped to byte 0
    full: float  # intensity mapped to byte 255 (log scale for euv/uv, linear for continuum)


def _euv(height: float, active: float, hole: float) -> _Look:
    # 90 bytes per decade with quiet Sun at ~55, as in Helioviewer's AIA 171 files.
    return _Look("euv", 0.12, height, 0.15, active, hole, 0.0, 0.25, 0.12, 0.245, 167.0)


def _uv(active: float, network: float) -> _Look:
    return _Look("uv", 0.35, 0.004, 0.0, active, 0.0, 0.7, network, 0.1, 0.3, 15.0)


_CONTINUUM = _Look("continuum", 0.6, 0.0, 0.0, 0.0, 0.0, 0.85, 0.0, 0.02, 0.1, 1.05)
_LOOKS: dict[str, _Look] = {
    "94": _euv(0.07, 5.5, 0.6),
    "131": _euv(0.05, 5.0, 0.5),
    "171": _euv(0.045, 4.2, 0.5),
    "174": _euv(0.045, 4.2, 0.5),
    "193": _euv(0.06, 4.5, 0.85),
    "195": _euv(0.06, 4.5, 0.85),
    "211": _euv(0.065, 5.0, 0.85),
    "284": _euv(0.07, 4.8, 0.85),
    "335": _euv(0.08, 5.5, 0.8),
    # Chromospheric: weak limb brightening, thin off-limb layer, strong network.
    "304": _Look("euv", 0.6, 0.012, 0.08, 2.2, 0.3, 0.0, 0.45, 0.12, 0.245, 167.0),
    "1600": _uv(2.0, 0.35),
    "1700": _uv(1.7, 0.3),
    "4500": _CONTINUUM,
    "continuum": _CONTINUUM,
}


def _look(channel: int) -> _Look:
    source = sources.by_id(channel)
    try:
        return _LOOKS[source.measurement]
    except KeyError:
        raise ValueError(f"channel {channel} ({source.name}) has no synthetic look") from None


def _up2(a: F32, wrap: bool) -> F32:
    """Bilinear ×2 upsampling, pixel centres aligned: each input pixel becomes a 2×2 block."""
    p = np.pad(a, 1, mode="wrap" if wrap else "edge")
    h, w = a.shape
    rows = np.empty((2 * h, w + 2), np.float32)
    mid = p[1:-1] * np.float32(0.75)
    np.multiply(p[:-2], np.float32(0.25), out=rows[0::2])
    rows[0::2] += mid
    np.multiply(p[2:], np.float32(0.25), out=rows[1::2])
    rows[1::2] += mid
    out = np.empty((2 * h, 2 * w), np.float32)
    mid = rows[:, 1:-1] * np.float32(0.75)
    np.multiply(rows[:, :-2], np.float32(0.25), out=out[:, 0::2])
    out[:, 0::2] += mid
    np.multiply(rows[:, 2:], np.float32(0.25), out=out[:, 1::2])
    out[:, 1::2] += mid
    return out


def _normal(rng: np.random.Generator, shape: tuple[int, int]) -> F32:
    return rng.standard_normal(shape, dtype=np.float32)


@dataclass(frozen=True, slots=True)
class _Surface:
    """Heliographic maps: row 0 = north pole; longitude increases westward from column 0, the
    central meridian at time 0."""

    active: F32  # active-region strength, 0..1
    spots: F32  # sunspot darkness, 0..1
    holes: F32  # coronal hole mask, 0..1
    network: F32  # unit-variance mottling
    lanes: F32  # 0..1, peaking along thin meandering lanes (network, loop strands)


def _stamp(field: F32, lon: float, lat: float, sigma: float, amp: float) -> None:
    """Add a Gaussian of angular width sigma (degrees) at (lon, lat) to a heliographic map."""
    row = (90.0 - lat) / 180.0 * _MAP_H
    col = lon / 360.0 * _MAP_W
    half_r = 4 * sigma / 180.0 * _MAP_H
    half_c = min(half_r / max(math.cos(lat * _DEG), 0.2), _MAP_W / 2 - 1)
    rows = np.arange(max(0, int(row - half_r)), min(_MAP_H, int(row + half_r) + 2))
    cols = np.arange(int(col - half_c), int(col + half_c) + 2)
    dlat = 90.0 - (rows + 0.5) * 180.0 / _MAP_H - lat
    dlon = ((cols + 0.5) * 360.0 / _MAP_W - lon) * math.cos(lat * _DEG)
    g = np.exp(-(dlat[:, None] ** 2 + dlon[None, :] ** 2) / (2 * sigma**2)) * amp
    field[np.ix_(rows, cols % _MAP_W)] += g.astype(np.float32)


def _fractal(rng: np.random.Generator, gain: float) -> F32:
    """Unit-variance map noise; each coarser octave is ``gain`` times stronger (wraps in lon)."""
    out = _normal(rng, (_MAP_H >> 7, _MAP_W >> 7))
    while out.shape[0] < _MAP_H:
        out = _up2(out, wrap=True) * np.float32(gain)
        out += _normal(rng, out.shape)
    out /= out.std()
    return out


def _ridges(rng: np.random.Generator) -> F32:
    """Zero contours of noise are thin meandering curves: "ridged" noise peaks along them."""
    out: F32 = (1 - np.minimum(np.abs(_fractal(rng, 1.25)), 1)) ** 3
    return out


@functools.lru_cache(maxsize=2)
def _surface(seed: int) -> _Surface:
    rng = np.random.default_rng([seed, 1])
    network = _fractal(rng, 1.5)
    # Two ridge fields, so that no large patch lies far from every lane and looks smooth.
    lanes = (_ridges(rng) + _ridges(rng)) * np.float32(0.5)

    blobs = np.zeros((_MAP_H, _MAP_W), np.float32)
    spots = np.zeros_like(blobs)
    count = int(rng.integers(12, 19))
    for i in range(count):
        # Half the regions start on the visible hemisphere (central meridian = longitude 0).
        lon = rng.uniform(-70, 70) % 360 if i < count // 2 else rng.uniform(0, 360)
        lat = rng.choice([-1, 1]) * rng.uniform(6, 32)
        size, amp = rng.uniform(2.0, 5.0), rng.uniform(0.6, 1.5)
        # Bipolar pair tilted by Joy's law: leader nearer the equator and to the west.
        tilt = 0.5 * abs(lat) * _DEG
        dx, dy = size * math.cos(tilt), -math.copysign(size * math.sin(tilt), lat)
        _stamp(blobs, lon + dx, lat + dy, size, amp)
        _stamp(blobs, lon - dx, lat - dy, size * 1.2, amp * 0.8)
        umbra = rng.uniform(0.4, 0.9)
        _stamp(spots, lon + dx, lat + dy, umbra, 0.45)
        _stamp(spots, lon + dx, lat + dy, umbra * 2.2, 0.55)
        if rng.random() < 0.5:
            _stamp(spots, lon - dx, lat - dy, umbra * 1.5, 0.5)
    np.clip(spots, 0, 1, out=spots)
    # Overlapping regions saturate instead of adding up.
    active = -np.expm1(-blobs)

    lat_deg = (90.0 - (np.arange(_MAP_H, dtype=np.float32) + 0.5) * (180.0 / _MAP_H))[:, None]
    # Polar holes with ragged edges, plus one low-latitude hole away from active regions.
    edge = np.float32(60.0) + np.float32(4.0) * network
    holes = 1 / (1 + np.exp((edge - np.abs(lat_deg)) / np.float32(2.5)))
    low = np.zeros_like(blobs)
    _stamp(low, rng.uniform(0, 360), rng.uniform(-25, 25), rng.uniform(6, 10), 2.0)
    low = np.clip(low + 0.3 * network - 0.6 - 2 * active, 0, 1)
    holes = np.clip(holes + low, 0, 1).astype(np.float32)
    return _Surface(active, spots, holes, network, lanes)


@functools.lru_cache(maxsize=8)
def _surface_log(seed: int, look: _Look) -> F32:
    """The channel's log-brightness modulation on the heliographic map."""
    s = _surface(seed)
    lanes = s.lanes - s.lanes.mean()
    out: F32 = look.network * (s.network + 3 * lanes)
    # Regions peak in compact cores; lanes give them strands rather than a smooth glow.
    out += look.active * s.active**2 * (1.3 + 2 * lanes)
    out += np.log1p(-look.hole * s.holes) + np.log1p(-look.spot * s.spots)
    return out.astype(np.float32)


def _sample(m: F32, lon: F32, lat: F32) -> F32:
    """Bilinear lookup in a heliographic map at (Carrington longitude, latitude), radians."""
    u = lon * np.float32(_MAP_W / (2 * math.pi)) - np.float32(0.5)
    v = (np.float32(math.pi / 2) - lat) * np.float32(_MAP_H / math.pi) - np.float32(0.5)
    np.clip(v, 0, _MAP_H - 1.001, out=v)
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = u - u0, v - v0
    c0 = u0.astype(np.intp) % _MAP_W
    c1 = (c0 + 1) % _MAP_W
    r0 = v0.astype(np.intp)
    r1 = r0 + 1
    top: F32 = m[r0, c0] * (1 - fu) + m[r0, c1] * fu
    bottom: F32 = m[r1, c0] * (1 - fu) + m[r1, c1] * fu
    out: F32 = top * (1 - fv) + bottom * fv
    return out


def _radial_profile(look: _Look, rsun_px: float, r_max: float) -> F32:
    """Intensity against radius in steps of _PROFILE_STEP pixels, averaged over a pixel width.

    Logarithmic for euv/uv looks (natural log), linear for continuum.
    """
    n = round(1 / _PROFILE_STEP)  # samples per pixel
    entries = int(r_max / _PROFILE_STEP) + 2
    # Sample centres from one pixel inside r = 0 (mirrored) to one pixel past r_max.
    r = (np.arange(entries + 2 * n) - n + 0.5) * _PROFILE_STEP
    rho = np.abs(r) / rsun_px
    mu = np.sqrt(np.clip(1 - rho**2, 0, 1))
    if look.kind == "euv":
        # Optically thin corona: brightens toward the limb like a path length, capped.
        disc = np.sqrt((1 + look.limb) / (mu**2 + look.limb))
    else:
        disc = 1 - look.limb * (1 - mu)
    limb = math.sqrt((1 + look.limb) / look.limb) if look.kind == "euv" else 1 - look.limb
    above = np.maximum(rho - 1, 0)
    if look.height > 0:
        off = limb * (
            (1 - look.tail) * np.exp(-above / look.height) + look.tail * np.maximum(rho, 1) ** -4
        )
    else:
        off = np.zeros_like(rho)
    profile = np.where(rho < 1, disc, off)
    # Entry j covers radii [j, j+1) steps; average over the pixel-wide window centred there so
    # the limb is anti-aliased rather than stair-stepped.
    c = np.concatenate(([0.0], np.cumsum(profile)))
    smooth = ((c[n:] - c[:-n]) / n)[n // 2 : n // 2 + entries]
    if look.kind == "continuum":
        return smooth.astype(np.float32)
    return np.log(np.maximum(smooth, 1e-12)).astype(np.float32)


def solar_disc(
    size: int,
    *,
    rsun_px: float,
    center: tuple[float, float],
    channel: int,
    seed: int,
    time_s: float = 0,
) -> npt.NDArray[np.uint8]:
    """A synthetic ``size``×``size`` byte-scaled image of the Sun as seen in ``channel``.

    ``channel`` is a Helioviewer data-source id (10 = AIA 171, 11 = AIA 193, 18 = HMI
    continuum…); ``center`` is the disc centre as (x, y) = (column, row) in 0-based pixel
    coordinates with row 0 at the top (solar north up, west to the right). ``seed`` fixes the
    Sun: the same seed gives the same active regions in every channel. ``time_s`` is seconds
    since the model's reference time, when longitude 0 faces the observer: the Sun rotates
    differentially with it (so regions shear apart over weeks, as real ones would decay) and
    the fine structure evolves.
    """
    if size < 1:
        raise ValueError(f"size must be positive, not {size}")
    if not rsun_px > 0:
        raise ValueError(f"rsun_px must be positive, not {rsun_px}")
    look = _look(channel)
    cx, cy = center

    # Large scale: sample the rotating heliographic map on a grid 4× coarser than the image.
    m = -(-size // 4)
    centres = np.arange(m, dtype=np.float32) * 4 + np.float32(1.5)
    x = ((centres - np.float32(cx)) / np.float32(rsun_px))[None, :]
    y = ((np.float32(cy) - centres) / np.float32(rsun_px))[:, None]
    rho = np.sqrt(x * x + y * y)
    # Off-limb points take the value of the limb below them: coronal structure is radial.
    shrink = 1 / np.maximum(rho, 1)
    xl, yl = x * shrink, y * shrink
    lat = np.arcsin(np.clip(yl, -1, 1))
    lon = np.arctan2(xl, np.sqrt(np.clip(1 - xl * xl - yl * yl, 0, 1)))
    sin2 = np.sin(lat) ** 2
    # Rotation angles reduced modulo 2π in float64 first, so long times keep float32 precision.
    a, b, c = (k * _RAD_PER_S * time_s % (2 * math.pi) for k in (_ROT_A, _ROT_B, _ROT_C))
    lon = lon - (np.float32(a) - np.float32(b) * sin2 - np.float32(c) * sin2 * sin2)
    log_mod = _sample(_surface_log(seed, look), lon % np.float32(2 * math.pi), lat)
    # Loops and streamers fade with height instead of reaching the image edge.
    log_mod *= np.exp(-np.maximum(rho - 1, 0) / np.float32(_FADE_HEIGHT))

    # Fine structure in the image plane, two octaves, each a slowly rotating blend of two
    # fixed noise fields so that consecutive frames differ only a little.
    phase = 2 * math.pi * (time_s % _EVOLVE_S) / _EVOLVE_S
    wa, wb = np.float32(math.cos(phase) * look.fine), np.float32(math.sin(phase) * look.fine)
    rng = np.random.default_rng([seed, 2, size])
    log_mod += _normal(rng, log_mod.shape) * wa + _normal(rng, log_mod.shape) * wb
    log_mod = _up2(log_mod, wrap=False)
    # The finer octave is weaker: EUV images are soft at the pixel scale.
    log_mod += _normal(rng, log_mod.shape) * (wa / 2) + _normal(rng, log_mod.shape) * (wb / 2)
    log_mod = _up2(log_mod, wrap=False)

    # Full resolution: radial profile (sharp limb) combined with the modulation, in bands.
    xs2 = (np.arange(size, dtype=np.float32) - np.float32(cx)) ** 2
    ys2 = (np.arange(size, dtype=np.float32) - np.float32(cy)) ** 2
    r_max = math.sqrt(float(xs2.max()) + float(ys2.max()))
    table = _radial_profile(look, rsun_px, r_max)
    log_scale = look.kind != "continuum"
    lo, hi = (math.log(look.zero), math.log(look.full)) if log_scale else (look.zero, look.full)
    gain, offset = np.float32(255 / (hi - lo)), np.float32(-lo * 255 / (hi - lo))
    out = np.empty((size, size), np.uint8)
    band = 256
    for r0 in range(0, size, band):
        r2 = ys2[r0 : r0 + band, None] + xs2[None, :]
        idx = (np.sqrt(r2) * np.float32(1 / _PROFILE_STEP)).astype(np.int32)
        mod = log_mod[r0 : r0 + band, :size]
        v = table[idx] + mod if log_scale else table[idx] * np.exp(mod)
        v *= gain
        v += offset
        np.clip(v, 0, 255, out=v)
        out[r0 : r0 + band] = v
    return out


# AIA wavelength → (WAVE_STR, telescope number, typical exposure in seconds).
_AIA = {
    94: ("94_THIN", 4, 2.901),
    131: ("131_THIN", 1, 2.901),
    171: ("171_THIN", 3, 1.999),
    193: ("193_THIN", 2, 2.000),
    211: ("211_THIN", 2, 2.901),
    304: ("304_THIN", 4, 2.901),
    335: ("335_THIN", 1, 2.901),
    1600: ("1600", 3, 1.000),
    1700: ("1700", 3, 1.000),
    4500: ("4500", 3, 1.000),
}
# Describe the original data, so wrong for a synthetic frame.
_CHECKSUMS = ("CHECKSUM", "DATASUM")
_STATISTICS = ("DATAMIN", "DATAMAX", "DATAMEDN", "DATAMEAN", "DATARMS", "DATASKEW", "DATAKURT")
_STALE = frozenset(_CHECKSUMS + _STATISTICS)


def _iso(dt: datetime, digits: int = 3) -> str:
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{dt.microsecond // 10 ** (6 - digits):0{digits}d}"


def aia_header(
    template: Sequence[tuple[str, str]] | Mapping[str, object],
    *,
    wavelength: int,
    time_us: int,
    size: int = 4096,
) -> list[tuple[str, str]]:
    """FITS keywords for a synthetic AIA frame, based on a real AIA header ``template``.

    Times (DATE-OBS, DATE_OBS, T_OBS = mid-exposure, DATE), the wavelength (WAVELNTH,
    WAVE_STR), telescope (INSTRUME, CAMERA) and EXPTIME are set for the frame; the geometry
    (CDELT, CRPIX, R_SUN, NAXIS) is the template's rescaled to ``size`` pixels, and the
    distances (DSUN_OBS, RSUN_OBS…) are kept. Checksums and pixel statistics are dropped.
    """
    if wavelength not in _AIA:
        raise ValueError(f"wavelength {wavelength} is not an AIA channel ({sorted(_AIA)})")
    items = list(template.items()) if isinstance(template, Mapping) else list(template)
    fits = {k: str(v) for k, v in items}
    factor = size / float(fits["NAXIS1"])  # KeyError: not a FITS image header
    wave_str, telescope, exptime = _AIA[wavelength]
    obs = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=time_us)
    mid = obs + timedelta(seconds=exptime / 2)
    changes = {
        "NAXIS1": str(size),
        "NAXIS2": str(size),
        "DATE": f"{obs:%Y-%m-%dT%H:%M:%S}",
        "DATE-OBS": _iso(obs),
        "DATE_OBS": _iso(obs),
        "T_OBS": _iso(mid, 2) + "Z",
        "INSTRUME": f"AIA_{telescope}",
        "CAMERA": str(telescope),
        "EXPTIME": f"{exptime:.7f}",
        "WAVELNTH": str(wavelength),
        "WAVE_STR": wave_str,
    }
    for axis in "12":
        changes[f"CDELT{axis}"] = f"{float(fits[f'CDELT{axis}']) / factor:.8g}"
        # Pixel edges scale, centres are half a pixel in: 1-based FITS centre of pixel 1 is 1.0.
        changes[f"CRPIX{axis}"] = f"{(float(fits[f'CRPIX{axis}']) - 0.5) * factor + 0.5:.8g}"
    if "R_SUN" in fits:
        changes["R_SUN"] = f"{float(fits['R_SUN']) * factor:.8g}"
    for key in ("TOTVALS", "DATAVALS"):
        if key in fits:
            changes[key] = str(size * size)
    out = [(k, changes.get(k, str(v))) for k, v in items if k not in _STALE]
    present = {k for k, _ in out}
    out += [(k, v) for k, v in changes.items() if k not in present]
    return out


def _xml_of(path: Path) -> ET.Element:
    """The root of a JP2 file's XML box (before the codestream, as Helioviewer writes it)."""
    with path.open("rb") as f:
        while header := f.read(8):
            length, kind = struct.unpack(">I4s", header)
            size = struct.unpack(">Q", f.read(8))[0] - 16 if length == 1 else length - 8
            if kind == b"xml ":
                # jp2gen's boxes end with a C string terminator, which XML does not allow.
                return ET.fromstring(f.read(size).rstrip(b"\x00"))
            if kind == b"jp2c" or length == 0:
                break
            f.seek(size, os.SEEK_CUR)
    raise ValueError(f"{path} has no XML box before its codestream")


def _template(path: Path) -> list[tuple[str, str]]:
    fits = _xml_of(path).find("fits")
    if fits is None:
        raise ValueError(f"{path} has no <fits> header")
    return [(e.tag, (e.text or "").strip()) for e in fits if e.tag not in ("history", "comment")]


def _source_of(name: str) -> tuple[sources.DataSource, int]:
    parsed = naming.parse_file_name(name)
    # Observatories may contain "_" (STEREO_A); the last three keys never do.
    keys = parsed.keys
    source = sources.by_keys("_".join(keys[:-3]), *keys[-3:])
    return source, parsed.time_us


@dataclass(frozen=True, slots=True)
class _Frame:
    path: Path
    channel: int
    time_us: int
    epoch_us: int  # the model Sun's reference time: the archive's start
    fits: list[tuple[str, str]]


_HELIOVIEWER = {
    "HV_ROTATION": "0.00000",
    "HV_JP2GEN_VERSION": "heliostat.demo",
    "HV_COMMENT": "Synthetic image made by heliostat.demo from a model Sun; not an observation.",
    "HV_SUPPORTED": "TRUE",
}


def _render(frame: _Frame) -> Path:
    h = dict(frame.fits)
    size = int(h["NAXIS1"])
    image = solar_disc(
        size,
        rsun_px=float(h["R_SUN"]),
        # FITS rows count up from the bottom, image rows from the top (north up).
        center=(float(h["CRPIX1"]) - 1, size - float(h["CRPIX2"])),
        channel=frame.channel,
        seed=_DEMO_SEED,
        time_s=(frame.time_us - frame.epoch_us) / 1e6,
    )
    return write_jp2(
        frame.path,
        image,
        frame.fits,
        _HELIOVIEWER,
        history=[f"heliostat.demo synthetic frame, seed {_DEMO_SEED}"],
    )


def _copy_atomically(src: Path, dest: Path) -> None:
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        shutil.copyfile(src, part)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def build_demo_archive(
    dest: Path,
    *,
    sample_dir: Path,
    start_us: int,
    hours: float = 3.0,
    cadence_s: int = 900,
    channels: Sequence[int] = (10, 11, 13),
    size: int = 4096,
    workers: int = 2,
    progress: bool = True,
) -> list[Path]:
    """Fill ``dest`` with the sample JP2s and synthetic AIA frames; return every archive file.

    Sample files keep their names and go to their Helioviewer folders. For each AIA data-source
    id in ``channels`` a frame is made every ``cadence_s`` seconds from ``start_us`` for
    ``hours`` (end excluded), with the header of the first AIA sample as template, rendered and
    encoded in ``workers`` processes. Files that already exist are left alone, so re-running
    only makes what is missing. The default, 3 h × 15 min × 3 channels at 4096², is 36 frames.
    """
    if cadence_s <= 0:
        raise ValueError(f"cadence_s must be positive, not {cadence_s}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if size < 1:
        raise ValueError(f"size must be positive, not {size}")
    wanted = [sources.by_id(c) for c in channels]
    not_aia = [s.name for s in wanted if s.instrument != "AIA" or int(s.measurement) not in _AIA]
    if not_aia:
        raise ValueError(f"channels must be AIA data sources, not {not_aia}")
    dest, sample_dir = Path(dest), Path(sample_dir)

    samples = [(p, *_source_of(p.name)) for p in sorted(sample_dir.glob("*.jp2"))]
    template = next((p for p, source, _ in samples if source.instrument == "AIA"), None)
    if template is None:
        raise ValueError(f"sample_dir {sample_dir} has no AIA JP2 to take the header from")
    fits = _template(template)

    files: list[Path] = []
    for sample, source, time_us in samples:
        target = dest / naming.folder(source, time_us) / sample.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_atomically(sample, target)
        files.append(target)

    todo: list[_Frame] = []
    for source in wanted:
        for k in range(int(hours * 3600 // cadence_s)):
            time_us = start_us + k * cadence_s * 1_000_000
            path = dest / naming.folder(source, time_us) / naming.file_name(source, time_us)
            files.append(path)
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            wavelength = int(source.measurement)
            header = aia_header(fits, wavelength=wavelength, time_us=time_us, size=size)
            todo.append(_Frame(path, source.id, time_us, start_us, header))

    if todo:
        with (
            ProcessPoolExecutor(max_workers=workers) as pool,
            tqdm(total=len(todo), disable=not progress, unit="frame", desc="demo") as bar,
        ):
            futures = [pool.submit(_render, f) for f in todo]
            try:
                for done in as_completed(futures):
                    done.result()
                    bar.update()
            except BaseException:
                # Don't render the rest of the queue before reporting the failure.
                for f in futures:
                    f.cancel()
                raise
    return files

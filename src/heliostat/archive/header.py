"""Helioviewer JP2 headers: the XML box parsed into FITS keywords, and the image geometry.

Real archives are heterogeneous: date keys (``DATE-OBS``, ``DATE_OBS``, a date with a separate
``TIME-OBS``), plate-scale units (``arcsec``, ``deg``), distance and radius keywords (``DSUN_OBS``,
``SOLAR_R``, ``R_SUN``, ``RSUN_OBS``) and rotation keywords all vary by instrument. Every rule
here falls back the way Helioviewer's API server does, and anything that cannot be derived raises
``HeaderError`` naming the keyword.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from heliostat.archive import sources, times
from heliostat.archive.jp2box import JP2FormatError, JP2Info, read_info
from heliostat.catalog.records import AU_M, ImageRecord

# Solar radius seen from 1 AU, arcsec: Helioviewer's constant for deriving distances and radii.
RSUN_ARCSEC_1AU = 959.644
_MIN_DSUN_M = 0.04 * AU_M  # smaller values are placeholders (HMI files carry 0.03)
_MAX_DSUN_M = 2.25e11


class HeaderError(ValueError):
    """The header is unreadable or inconsistent; the message names the keyword."""


@dataclass(frozen=True, slots=True)
class Header:
    fits: dict[str, str]
    helioviewer: dict[str, str]

    def get(self, key: str) -> str | None:
        v = self.fits.get(key)
        return v if v not in (None, "") else None

    def number(self, key: str) -> float | None:
        """A finite float, or None when absent; HeaderError when present but not a number."""
        v = self.get(key)
        if v is None:
            return None
        try:
            x = float(v)
        except ValueError:
            raise HeaderError(f"{key} is not a number: {v!r}") from None
        return x if math.isfinite(x) else None


_BARE_AMP = re.compile(r"&(?!(?:amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);)")
_BARE_LT = re.compile(r"<(?![A-Za-z_/?!])")


def parse_xml(xml: str) -> Header:
    """Parse a ``<meta><fits>…</fits><helioviewer>…</helioviewer></meta>`` box."""
    if not xml.strip():
        raise HeaderError("the file has no XML header box")
    text = xml[xml.find("<meta") :] if "<meta" in xml else xml
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        # Real headers carry unescaped '&' and ' < ' inside comments; Helioviewer escapes them.
        try:
            root = ET.fromstring(_BARE_LT.sub("&lt;", _BARE_AMP.sub("&amp;", text)))
        except ET.ParseError as e:
            raise HeaderError(f"the XML header is not well-formed: {e}") from None
    fits_el = root.find("fits")
    if fits_el is None:
        raise HeaderError("the XML header has no <fits> element")
    fits = {child.tag: (child.text or "").strip() for child in fits_el}
    hv_el = root.find("helioviewer")
    hv = {} if hv_el is None else {c.tag: (c.text or "").strip() for c in hv_el}
    return Header(fits, hv)


def observation_time(h: Header) -> int:
    """Observation time in µs, from whichever of the date keywords holds a full date and time."""
    time_of_day = h.get("TIME-OBS") or h.get("TIME_OBS")
    candidates = [
        ("DATE-OBS", h.get("DATE-OBS")),
        ("DATE_OBS", h.get("DATE_OBS")),
        ("HV_DATE_OBS", h.helioviewer.get("HV_DATE_OBS") or None),
    ]
    for _, value in candidates:
        if value and not times.is_date_only(value):
            try:
                return times.parse(value)
            except ValueError:
                continue
    for key, value in candidates:
        if value and times.is_date_only(value) and time_of_day:
            try:
                return times.parse_date_and_time(value, time_of_day)
            except ValueError as e:
                raise HeaderError(f"{key}/TIME-OBS: {e}") from None
    present = [f"{k}={v!r}" for k, v in candidates if v]
    raise HeaderError(
        "no usable observation time (DATE-OBS, DATE_OBS or a date plus TIME-OBS); found: "
        + (", ".join(present) or "none")
    )


def _instrument(h: Header) -> str:
    telescope = h.get("TELESCOP") or ""
    inst = h.helioviewer.get("HV_INSTRUMENT") or h.get("INSTRUME") or ""
    if not inst and "/" in telescope:
        inst = telescope.split("/", 1)[1]
    # 'AIA_3', 'HMI_FRONT2': the camera suffix is not part of the instrument name.
    return inst.split("_")[0].strip().upper() if inst else ""


def identify(h: Header) -> sources.DataSource:
    """The data source of an image, from its header keywords; UnknownSourceError otherwise."""
    hv = h.helioviewer
    telescope = h.get("TELESCOP") or ""
    obs = hv.get("HV_OBSERVATORY") or telescope.split("/")[0].strip()
    if obs.upper() == "STEREO":
        obs = h.get("OBSRVTRY") or obs
    inst = _instrument(h)
    if not obs or not inst:
        raise HeaderError("TELESCOP and INSTRUME are needed to identify the data source")
    det = hv.get("HV_DETECTOR") or (
        (h.get("DETECTOR") or "") if inst in ("LASCO", "SECCHI") else inst
    )
    meas = hv.get("HV_MEASUREMENT") or ""
    if not meas:
        if inst == "HMI":
            content = (h.get("CONTENT") or "").upper()
            meas = "magnetogram" if "MAGNETOGRAM" in content else "continuum" if content else ""
        elif inst == "MDI":
            mode = (h.get("DPC_OBSR") or h.get("CONTENT") or "").lower()
            meas = "magnetogram" if "magnetogram" in mode else "continuum" if mode else ""
        elif inst == "LASCO" or det.upper().startswith("COR"):
            meas = "white-light"
        else:
            wl = h.number("WAVELNTH")
            meas = f"{wl:g}" if wl is not None else ""
    if not meas:
        raise HeaderError(f"cannot tell the measurement of this {obs} {inst} image")
    return sources.by_keys(obs, inst, det or inst, meas)


def _angle_arcsec(h: Header, key: str, unit_key: str, *, required: bool) -> float | None:
    v = h.number(key)
    if v is None:
        if required:
            raise HeaderError(f"{key} is missing")
        return None
    unit = (h.get(unit_key) or "arcsec").strip().lower()
    if unit in ("deg", "degree", "degrees"):
        return v * 3600.0
    if unit in ("arcmin",):
        return v * 60.0
    if unit in ("arcsec", "arcsecs", "arcseconds"):
        return v
    raise HeaderError(f"{unit_key} {unit!r} is not an angular unit")


def _positive(h: Header, *keys: str) -> float | None:
    for k in keys:
        v = h.number(k)
        if v is not None and v > 0:
            return v
    return None


def distance(h: Header, cdelt1: float) -> float:
    """Observer–Sun distance in metres: DSUN_OBS → DSUN → from the radius in pixels → 1 AU."""
    for key in ("DSUN_OBS", "DSUN"):
        v = h.number(key)
        if v is not None and v > _MIN_DSUN_M:
            if v >= _MAX_DSUN_M:
                raise HeaderError(f"{key} {v:g} m is beyond any solar observer")
            return v
    r_px = _positive(h, "SOLAR_R", "RADIUS", "R_SUN")
    if r_px is not None:
        d = RSUN_ARCSEC_1AU / (r_px * cdelt1) * AU_M
        if _MIN_DSUN_M < d < _MAX_DSUN_M:
            return d
    return AU_M


def solar_radius_px(h: Header, cdelt1: float, dsun: float) -> float:
    """Solar radius in pixels: R_SUN/SOLAR_R/RADIUS → RSUN_ARC/RSUN_OBS / CDELT → from DSUN."""
    r_px = _positive(h, "R_SUN", "SOLAR_R", "RADIUS")
    if r_px is not None:
        return r_px
    r_arc = _positive(h, "RSUN_ARC", "RSUN_OBS")
    if r_arc is not None:
        return r_arc / cdelt1
    return RSUN_ARCSEC_1AU * AU_M / dsun / cdelt1


def _rotation(h: Header) -> float:
    for key in ("CROTA", "CROTA2", "CROTA1"):
        v = h.number(key)
        if v is not None:
            return v
    return 0.0


def build_record(h: Header, info: JP2Info, *, rel_path: str, file_mtime_ns: int) -> ImageRecord:
    """The catalog record of an image from its parsed header and codestream facts."""
    width = h.number("NAXIS1")
    height = h.number("NAXIS2")
    if width is None or height is None:
        raise HeaderError("NAXIS1/NAXIS2 are missing")
    if (int(width), int(height)) != (info.width, info.height):
        raise HeaderError(
            f"NAXIS1 x NAXIS2 = {int(width)} x {int(height)} disagrees with the codestream "
            f"size {info.width} x {info.height}"
        )
    if info.components < 1:
        raise HeaderError("codestream has no image components")
    cdelt1 = _angle_arcsec(h, "CDELT1", "CUNIT1", required=True)
    cdelt2 = _angle_arcsec(h, "CDELT2", "CUNIT2", required=False)
    assert cdelt1 is not None
    if cdelt1 <= 0:
        raise HeaderError(f"CDELT1 must be positive, got {cdelt1:g}")
    if cdelt2 is None or cdelt2 <= 0:
        cdelt2 = cdelt1
    crpix1 = h.number("CRPIX1")
    crpix2 = h.number("CRPIX2")
    if crpix1 is None or crpix2 is None:
        raise HeaderError("CRPIX1/CRPIX2 are missing")
    crval1 = _angle_arcsec(h, "CRVAL1", "CUNIT1", required=False) or 0.0
    crval2 = _angle_arcsec(h, "CRVAL2", "CUNIT2", required=False) or 0.0
    source = identify(h)
    dsun = distance(h, cdelt1)
    return ImageRecord(
        id=0,
        source_id=source.id,
        time_us=observation_time(h),
        path=rel_path,
        width=info.width,
        height=info.height,
        cdelt1=cdelt1,
        cdelt2=cdelt2,
        crpix1=crpix1,
        crpix2=crpix2,
        crval1=crval1,
        crval2=crval2,
        rotation=_rotation(h),
        dsun=dsun,
        rsun_px=solar_radius_px(h, cdelt1, dsun),
        layering_order=source.layering_order,
        file_size=info.file_size,
        file_mtime_ns=file_mtime_ns,
    )


def read_record(path: Path, rel_path: str) -> ImageRecord:
    """Read a Helioviewer JP2 file's header into a catalog record (id 0).

    Raises HeaderError (a ValueError) with the reason when the file cannot be indexed.
    """
    try:
        st = path.stat()
        info = read_info(path)
    except JP2FormatError as e:
        raise HeaderError(str(e)) from None
    except OSError as e:
        raise HeaderError(f"cannot read the file: {e.strerror or e}") from None
    return build_record(parse_xml(info.xml), info, rel_path=rel_path, file_mtime_ns=st.st_mtime_ns)

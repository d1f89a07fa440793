"""The catalog's record of one image: identity, time and the geometry needed to place it."""

from __future__ import annotations

from dataclasses import dataclass

AU_M = 149_597_870_700.0  # IAU 2012 astronomical unit, metres


@dataclass(frozen=True, slots=True)
class ImageRecord:
    id: int  # assigned by the catalog; 0 before the image is stored
    source_id: int
    time_us: int  # observation time, microseconds since 1970-01-01T00:00:00 UTC
    path: str  # relative to the archive root, '/'-separated
    width: int
    height: int
    cdelt1: float  # arcsec per pixel
    cdelt2: float
    crpix1: float  # FITS reference pixel, 1-based, y up
    crpix2: float
    crval1: float  # arcsec at the reference pixel
    crval2: float
    rotation: float  # degrees (CROTA)
    dsun: float  # observer–Sun distance, metres
    rsun_px: float  # solar radius in pixels
    layering_order: int
    file_size: int
    file_mtime_ns: int

    @property
    def scale(self) -> float:
        """Plate scale normalised to 1 AU (arcsec per pixel), Helioviewer's image scale."""
        return self.cdelt1 * self.dsun / AU_M

    @property
    def ref_pixel_x(self) -> float:
        """Sun-centre pixel (1-based, FITS y-up): CRPIX - CRVAL / CDELT."""
        return self.crpix1 - self.crval1 / self.cdelt1

    @property
    def ref_pixel_y(self) -> float:
        return self.crpix2 - self.crval2 / self.cdelt2

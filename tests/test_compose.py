"""Frame assembly: layers placed on the Sun by their headers and blended; the screenshot service."""

from __future__ import annotations

import io
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from heliostat.archive.header import read_record
from heliostat.archive.jp2write import write_jp2
from heliostat.catalog.records import AU_M, ImageRecord
from heliostat.errors import InvalidArgument, NotFound
from heliostat.imaging import colorize, colortables
from heliostat.imaging._openjpeg import J2KDecoder
from heliostat.imaging.compose import Compositor, LayerInput, Viewport
from heliostat.imaging.decode import JP2Reader
from heliostat.screenshots import region as roi
from heliostat.screenshots.layers import parse_layers
from heliostat.screenshots.service import ScreenshotService

from .conftest import AIA_171, DATA

BG, FG = 20, 220
GREY = colortables.grey()


@dataclass(frozen=True)
class Geometry:
    keys: dict[str, str]  # identifying keywords
    cdelt: float
    crpix: tuple[float, float]
    dsun: float
    crota: float = 0.0


# Geometry of the real sample files (tests/data/jp2), AIA's 4096² scaled to 1024² for speed.
INSTRUMENTS = {
    "aia": Geometry(
        {"TELESCOP": "SDO/AIA", "INSTRUME": "AIA_3", "WAVELNTH": "171"},
        2.4,
        (512.5, 512.5),
        1.47454310e11,
    ),
    "swap": Geometry(
        {"TELESCOP": "PROBA2", "INSTRUME": "SWAP", "WAVELNTH": "174"},
        3.16226783969,
        (512.5, 512.5),
        1.51912e11,
    ),
    "eit": Geometry(
        {"TELESCOP": "SOHO", "INSTRUME": "EIT", "WAVELNTH": "171"},
        2.63,
        (512.74, 521.95),
        1.48558e11,
    ),
    "lasco_c3": Geometry(
        {"TELESCOP": "SOHO", "INSTRUME": "LASCO", "DETECTOR": "C3"},
        56.0,
        (519.2, 533.5),
        AU_M,
        -7.42291,
    ),
}
# A disc of known centre and radius (normalised arcsec, x right, y down) in each: the Sun for
# the disc imagers; for LASCO C3 a blob north-west, beyond the occulter, where CROTA matters.
SCENES = {
    "aia": ((0.0, 0.0), 960.0),
    "swap": ((0.0, 0.0), 960.0),
    "eit": ((0.0, 0.0), 960.0),
    "lasco_c3": ((3000.0, -9000.0), 900.0),
}
SIZE = 1024


def _world_to_pixel(geo: Geometry, x: float, y_down: float) -> tuple[float, float]:
    """0-based (col, row) in the stored image (top row first) by the FITS WCS definition."""
    t = math.radians(geo.crota)
    pc = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    # Normalised arcsec (1 AU) to the observer's arcsec, y up.
    world = np.array([x, -y_down]) * AU_M / geo.dsun
    p = np.array(geo.crpix) + np.linalg.solve(pc, world / geo.cdelt)  # 1-based, y up
    return float(p[0] - 1), float(SIZE - p[1])


def _disc(cx: float, cy: float, r: float) -> np.ndarray:
    """An antialiased disc (4×4 supersampled coverage) of FG on BG."""
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    cover = np.zeros((SIZE, SIZE), np.float32)
    for dy in sub:
        for dx in sub:
            cover += ((xx + dx - cx) ** 2 + (yy + dy - cy) ** 2 <= r * r) / 16.0
    return np.asarray(np.round(BG + (FG - BG) * cover), np.uint8)


def _write(root: Path, name: str) -> ImageRecord:
    geo = INSTRUMENTS[name]
    (px, py), radius = SCENES[name]
    scale = geo.cdelt * geo.dsun / AU_M
    cx, cy = _world_to_pixel(geo, px, py)
    fits = [("DATE-OBS", "2014-02-03T02:08:47.340"), ("NAXIS1", str(SIZE)), ("NAXIS2", str(SIZE))]
    fits += [*geo.keys.items(), ("DSUN_OBS", str(geo.dsun)), ("CROTA", str(geo.crota))]
    for axis in (1, 2):
        fits += [(f"CDELT{axis}", str(geo.cdelt)), (f"CUNIT{axis}", "arcsec")]
        fits += [(f"CRPIX{axis}", str(geo.crpix[axis - 1])), (f"CRVAL{axis}", "0.0")]
    fits.append(("R_SUN", str(959.644 / scale)))
    path = write_jp2(root / f"{name}.jp2", _disc(cx, cy, radius / scale), fits, {}, lossless=True)
    return read_record(path, path.name)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, ImageRecord]]:
    root = tmp_path_factory.mktemp("synthetic")
    return root, {name: _write(root, name) for name in INSTRUMENTS}


def _measure(rgba: np.ndarray) -> tuple[float, float, float]:
    """Centre (u, v) and radius of the disc in a composite, from its first moments and area."""
    assert rgba[..., 3].min() == 255
    frac = (rgba[..., 0].astype(float) - BG) / (FG - BG)
    vv, uu = np.mgrid[0 : rgba.shape[0], 0 : rgba.shape[1]]
    area = frac.sum()
    return (frac * uu).sum() / area, (frac * vv).sum() / area, math.sqrt(area / math.pi)


@pytest.mark.parametrize("name", list(INSTRUMENTS))
@pytest.mark.parametrize("zoom", [1.0, 1.37, 2.9, 0.6])
def test_layer_lands_where_its_geometry_says(
    synthetic: tuple[Path, dict[str, ImageRecord]], name: str, zoom: float
) -> None:
    root, records = synthetic
    rec = records[name]
    (px, py), radius = SCENES[name]
    s = rec.scale * zoom
    half = math.ceil(1.25 * radius / s)
    # A fraction of a pixel off-centre, so any half-pixel slip would show.
    view = Viewport(px - (half + 0.3) * s, py - (half - 0.2) * s, s, 2 * half, 2 * half)
    frame = Compositor(root, JP2Reader()).compose([LayerInput(rec, table=GREY)], view)
    u, v, r = _measure(frame.rgba)
    # Where the disc centre falls: output pixel u's centre is at x1 + (u + 0.5)·s.
    assert u == pytest.approx((px - view.x1) / s - 0.5, abs=0.1)
    assert v == pytest.approx((py - view.y1) / s - 0.5, abs=0.1)
    assert r == pytest.approx(radius / s, abs=0.25)
    assert frame.layers[0].reduce == max(0, math.floor(math.log2(zoom)))


def test_coronagraph_occulter_and_layer_order(
    synthetic: tuple[Path, dict[str, ImageRecord]],
) -> None:
    root, records = synthetic
    s = 60.0
    view = Viewport(-300 * s, -300 * s, s, 600, 600)  # Sun centre at pixel 299.5
    comp = Compositor(root, JP2Reader())
    alone = comp.compose([LayerInput(records["lasco_c3"], table=GREY)], view).rgba
    r_sun = 959.644 / s
    assert alone[300, 300, 3] == 0  # behind the occulter
    assert alone[300, 300 + round(4.3 * r_sun), 3] == 0
    assert alone[300, 300 + round(4.6 * r_sun), 3] == 255
    # The disc imager drawn OVER the coronagraph fills the occulted middle.
    both = comp.compose(
        [LayerInput(records["lasco_c3"], table=GREY), LayerInput(records["aia"], table=GREY)], view
    ).rgba
    assert both[300, 300, 3] == 255 and both[300, 300, 0] == FG
    assert np.array_equal(both[:, :20], alone[:, :20])


def test_half_opacity_layers_of_one_image_equal_the_image(
    synthetic: tuple[Path, dict[str, ImageRecord]],
) -> None:
    root, records = synthetic
    rec = records["eit"]
    view = Viewport(-1200.0, -1100.0, rec.scale * 1.6, 600, 560)
    comp = Compositor(root, JP2Reader())
    single = comp.compose([LayerInput(rec)], view).rgba.astype(int)
    halves = comp.compose([LayerInput(rec, 50), LayerInput(rec, 50)], view).rgba.astype(int)
    under = comp.compose([LayerInput(rec), LayerInput(rec, 50)], view).rgba.astype(int)
    assert np.abs(under - single).max() <= 1
    assert np.abs(halves[..., :3] - single[..., :3]).max() <= 1
    assert np.abs(halves[..., 3] - 191).max() <= 1  # 1 − (1 − ½)²


def test_full_disc_at_native_scale_is_the_colour_mapped_decode() -> None:
    f = AIA_171[0]
    rec = read_record(f, f.name)
    col_c, row_c = rec.ref_pixel_x - 1, rec.height - rec.ref_pixel_y
    s = rec.scale
    view = Viewport(-(col_c + 0.5) * s, -(row_c + 0.5) * s, s, rec.width, rec.height)
    frame = Compositor(DATA, JP2Reader()).compose([LayerInput(rec)], view)
    img = J2KDecoder(f.read_bytes(), 0).decode(0, 0, rec.width, rec.height)
    ref = colorize.apply_lut_rgba(img, colortables.rgba("sdoaia171"))
    assert np.abs(frame.rgba.astype(int) - ref).max() <= 1
    assert frame.layers[0].reduce == 0 and frame.layers[0].drawn


def test_area_without_data_is_transparent(synthetic: tuple[Path, dict[str, ImageRecord]]) -> None:
    root, records = synthetic
    rec = records["swap"]
    off = Viewport(1e5, 1e5, 5.0, 64, 48)
    frame = Compositor(root, JP2Reader()).compose([LayerInput(rec)], off)
    assert frame.rgba.shape == (48, 64, 4) and not frame.rgba.any()
    assert not frame.layers[0].drawn
    # Straddling the image's right edge: data on the left, transparent on the right.
    edge = rec.scale * (SIZE - rec.ref_pixel_x + 0.5)
    frame = Compositor(root, JP2Reader()).compose(
        [LayerInput(rec)], Viewport(edge - 32 * rec.scale, -16 * rec.scale, rec.scale, 64, 32)
    )
    assert (frame.rgba[:, :32, 3] == 255).all() and (frame.rgba[:, 32:, 3] == 0).all()


class FakeCatalog:
    def __init__(self, records: list[ImageRecord]) -> None:
        self.records = {r.id: r for r in records}

    def get(self, image_id: int) -> ImageRecord | None:
        return self.records.get(image_id)

    def closest(self, source_id: int, time_us: int, direction: str) -> ImageRecord | None:
        same = [r for r in self.records.values() if r.source_id == source_id]
        return min(same, key=lambda r: abs(r.time_us - time_us), default=None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(tmp_path: Path, clock: Clock) -> ScreenshotService:
    for f in AIA_171[:2]:
        shutil.copy2(f, tmp_path / f.name)
    lasco = next(DATA.glob("*LASCO_C3*.jp2"))
    shutil.copy2(lasco, tmp_path / lasco.name)
    records = [
        replace(read_record(tmp_path / f.name, f.name), id=i + 1)
        for i, f in enumerate([*AIA_171[:2], lasco])
    ]
    return ScreenshotService(
        FakeCatalog(records),
        Compositor(tmp_path, JP2Reader()),
        cache_bytes=1 << 20,
        max_age_s=60,
        clock=clock,
    )


def test_screenshot_reports_images_offsets_and_missing_layers(service: ScreenshotService) -> None:
    t = AIA_171[1]
    rec2 = service.catalog.get(2)
    assert rec2 is not None
    layers = parse_layers("[SOHO,LASCO,C3,white-light,1,100],[SDO,AIA,171,1,100],[32,1,100]")
    region = roi.from_centre(0, 0, 320, 200, 12.0)
    shot = service.take(rec2.time_us + 5_000_000, layers, region, "png")
    im = Image.open(io.BytesIO(shot.data))
    assert (im.size, im.mode, shot.content_type) == ((320, 200), "RGBA", "image/png")
    lasco, aia, swap = shot.layers
    assert aia.image is not None and aia.image.id == 2 and aia.offset_us == -5_000_000
    assert aia.reduce == 4 and aia.drawn
    assert lasco.image is not None and lasco.image.source_id == 5
    assert swap.image is None and not swap.drawn  # no SWAP image: reported, not an error
    assert t.name in aia.image.path
    # Pinning the layer to the other AIA image.
    pinned = service.take(rec2.time_us, layers[1:2], region, "jpeg", image_ids=[1])
    assert pinned.layers[0].image is not None and pinned.layers[0].image.id == 1
    assert Image.open(io.BytesIO(pinned.data)).format == "JPEG"


def test_screenshot_cache_evicts_and_rerenders_from_the_request(
    service: ScreenshotService, clock: Clock
) -> None:
    layers = parse_layers("[10,1,100]")
    shot = service.take(0, layers, roi.from_centre(0, 0, 256, 256, 9.6), "webp")
    assert Image.open(io.BytesIO(shot.data)).format == "WEBP"
    assert service.get(shot.id) is shot
    clock.now += 61
    again = service.get(shot.id)
    assert again is not shot and again.data == shot.data and again.id == shot.id
    assert again.layers[0].image == shot.layers[0].image
    # Fill the 1 MiB cache with big PNGs until the first one is evicted.
    big = roi.from_centre(0, 0, 1024, 1024, 2.4)
    ids = [service.take(0, layers, big, "png").id for _ in range(4)]
    assert service.stats()["screenshots"].evictions > 0
    assert service.get(ids[0]).data == service.take(0, layers, big, "png").data
    with pytest.raises(NotFound):
        service.get("nope")


def test_screenshot_rejects_bad_requests(service: ScreenshotService) -> None:
    region = roi.from_centre(0, 0, 64, 64, 10.0)
    layers = parse_layers("[10,1,100]")
    with pytest.raises(InvalidArgument) as e:
        service.take(0, layers, region, "gif")  # type: ignore[arg-type]
    assert e.value.field == "format"
    with pytest.raises(NotFound):
        service.take(0, layers, region, image_ids=[99])
    with pytest.raises(InvalidArgument, match="not from"):
        service.take(0, layers, region, image_ids=[3])
    with pytest.raises(InvalidArgument, match="no visible"):
        service.take(0, (), region)

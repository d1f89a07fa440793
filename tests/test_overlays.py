"""Screenshot overlays: layer labels, the scale bar and Earth marker, the watermark."""

from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageDraw, ImageFont

from heliostat.app import Heliostat
from heliostat.client import HeliostatClient
from heliostat.config import profile
from heliostat.errors import InvalidArgument
from heliostat.imaging.compose import Compositor, Viewport
from heliostat.screenshots import overlays as ov
from heliostat.screenshots import region as roi
from heliostat.screenshots.layers import parse_layers
from heliostat.screenshots.service import ScreenshotService
from heliostat.v1 import render_pb2

from .conftest import AIA_171, LASCO_C3, RunningServer, place_samples

U8 = npt.NDArray[np.uint8]
FONTS = Path(ov.__file__).parent / "fonts"
T0 = datetime(2014, 2, 3, 2, 30, tzinfo=UTC)
AIA_LABEL = "AIA 171  2014-02-03 02:30:23 UTC"  # the AIA image closest to T0


def _frame(width: int, height: int, grey: int = 0) -> U8:
    rgba = np.full((height, width, 4), grey, np.uint8)
    rgba[..., 3] = 255
    return rgba


def _view(width: int, height: int, scale: float) -> Viewport:
    return Viewport(-width * scale / 2, -height * scale / 2, scale, width, height)


def _runs(mask: npt.NDArray[np.bool_]) -> int:
    """The longest horizontal run of True in any row."""
    best = 0
    for row in mask:
        padded = np.concatenate(([0], row.astype(np.int8), [0]))
        edges = np.flatnonzero(np.diff(padded))
        if edges.size:
            best = max(best, int((edges[1::2] - edges[::2]).max()))
    return best


def _text_mask(text: str, size: int) -> npt.NDArray[np.bool_]:
    """Where Pillow puts ink for text in the shipped font, cropped to the ink."""
    font = ImageFont.truetype(str(FONTS / "DejaVuSans.ttf"), size)
    im = Image.new("L", (round(font.getlength(text)) + 4 * size, 3 * size))
    ImageDraw.Draw(im).text((size, size), text, font=font, fill=255)
    ink = np.asarray(im) > 0
    return _crop(ink)


def _crop(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    ys, xs = np.nonzero(mask)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _bands(mask: npt.NDArray[np.bool_]) -> list[npt.NDArray[np.bool_]]:
    """The mask split into bands of rows with ink, separated by empty rows (text lines)."""
    rows = mask.any(axis=1)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], rows.astype(np.int8), [0]))))
    return [_crop(mask[a:b]) for a, b in zip(edges[::2], edges[1::2], strict=True)]


# -- the pure drawing ------------------------------------------------------------------------


def test_overlays_off_leave_the_frame_alone() -> None:
    rgba = _frame(64, 48, 90)
    view = _view(64, 48, 2.0)
    assert ov.draw(rgba, view, ov.NONE, ["AIA 171  no image"]) is rgba
    placed_but_off = ov.Overlays(scale_x=0.0, scale_y=0.0, scale_type="scalebar")
    assert ov.draw(rgba, view, placed_but_off) is rgba


@pytest.mark.parametrize("scale", [0.3, 0.6, 1.25, 2.42, 7.3, 60.0])
def test_scale_bar_is_a_round_number_of_arcsec_exactly_that_long(scale: float) -> None:
    w, h = 800, 500
    view = _view(w, h, scale)
    # Box top-left 10 px right of and 20 px below the frame's top-left corner (scale_y is up).
    options = ov.Overlays(
        scale=True,
        scale_type="scalebar",
        scale_x=view.x1 + 10.5 * scale,
        scale_y=-(view.y1 + 20.5 * scale),
    )
    ov.check(options, view)
    out = ov.draw(_frame(w, h), view, options)
    arcsec = ov.scalebar_arcsec(scale, w)
    mantissa = arcsec / 10 ** math.floor(math.log10(arcsec))
    assert min(abs(mantissa - m) for m in (1, 2, 5)) < 1e-9
    n = round(arcsec / scale)
    assert w / 12.5 <= n <= w / 5
    # The bar is pure white; glyph strokes of its label are far shorter.
    white = (out[..., :3] == 255).all(axis=2)
    assert _runs(white) == n
    bar_rows = [y for y in range(h) if white[y].sum() >= n and _runs(white[y : y + 1]) == n]
    assert bar_rows and min(bar_rows) > 20 and max(bar_rows) < 20 + 80
    start = int(np.argmax(white[bar_rows[0]]))
    assert 10 < start < 20 and white[bar_rows[0], start : start + n].all()
    # The marker's box (its backing darkens grey) starts at the position; the rest is untouched.
    changed = (ov.draw(_frame(w, h, 100), view, options) != _frame(w, h, 100)).any(axis=2)
    ys, xs = np.nonzero(changed)
    assert (xs.min(), ys.min()) == (10, 20)


@pytest.mark.parametrize("scale", [0.15, 0.3, 0.6, 1.2, 2.4, 10.0, 30.0])
def test_earth_marker_is_the_size_of_the_earth(scale: float) -> None:
    w, h = 600, 400
    view = _view(w, h, scale)
    options = ov.Overlays(scale=True, scale_type="earth", scale_x=0.0, scale_y=0.0)
    out = ov.draw(_frame(w, h), view, options).astype(int)
    diameter = 2 * 6371 / 149_597_870.7 * 180 * 3600 / math.pi / scale
    assert abs(ov.EARTH_ARCSEC - 17.5686) < 1e-4
    # The disc is blue over black: blue = coverage · 255, red = coverage · 64; the label is grey.
    r, b = out[..., 0], out[..., 2]
    disc = b > 2 * r
    assert disc.any()  # drawn however small
    area = b[disc].sum() / 255
    assert abs(2 * math.sqrt(area / math.pi) - diameter) < 1
    ys, xs = np.nonzero(disc)
    cy = round(float(np.average(ys, weights=b[disc]) - 0.5))
    across = int((b[cy] >= 128).sum() if diameter > 2 else 1)
    assert abs(across - diameter) <= 1
    # The box starts at the given position (Sun centre: the middle of the frame).
    changed = (ov.draw(_frame(w, h, 100), view, options) != _frame(w, h, 100)).any(axis=2)
    ys, xs = np.nonzero(changed)
    assert (xs.min(), ys.min()) == (w // 2, h // 2)


def test_scale_marker_clipped_at_the_edge_and_refused_outside() -> None:
    w, h, s = 300, 200, 1.0
    view = _view(w, h, s)
    edge = ov.Overlays(scale=True, scale_type="scalebar", scale_x=view.x1 + (w - 5) * s, scale_y=0)
    ov.check(edge, view)
    out = ov.draw(_frame(w, h), view, edge)
    changed = (out != _frame(w, h)).any(axis=2)
    assert changed[:, w - 5 :].any() and not changed[:, : w - 5].any()
    # The default place is the top-right corner.
    corner = ov.draw(_frame(w, h), view, ov.Overlays(scale=True))
    ys, xs = np.nonzero((corner != _frame(w, h)).any(axis=2))
    assert xs.max() > w - 20 and xs.min() > w / 2 and ys.min() < 20 and ys.max() < h / 2
    # scale_y is north-up: a positive value is above Sun centre.
    north = ov.Overlays(scale=True, scale_x=0.0, scale_y=50.0)
    ys, xs = np.nonzero((ov.draw(_frame(w, h, 100), view, north) != _frame(w, h, 100)).any(axis=2))
    assert (xs.min(), ys.min()) == (w // 2, h // 2 - 50)
    for options, field in [
        (ov.Overlays(scale=True, scale_x=view.x1 + w * s, scale_y=0.0), "overlays.scale_x"),
        (ov.Overlays(scale=True, scale_x=0.0, scale_y=-view.y1 + 1), "overlays.scale_y"),
        (ov.Overlays(scale=True, scale_x=0.0, scale_y=view.y1), "overlays.scale_y"),
        (ov.Overlays(scale=True, scale_x=math.nan, scale_y=0.0), "overlays.scale_x"),
        (ov.Overlays(scale=True, scale_x=0.0), "overlays.scale_y"),
        (ov.Overlays(scale=True, scale_type="ruler"), "overlays.scale_type"),  # type: ignore[arg-type]
    ]:
        with pytest.raises(InvalidArgument) as e:
            ov.check(options, view)
        assert e.value.field == field


def test_labels_show_each_layer_bottom_left_over_a_backing() -> None:
    w, h = 900, 600
    view = _view(w, h, 2.4)
    lines = [ov.layer_label("LASCO C3", None), ov.layer_label("AIA 171", 1391394623_340000)]
    assert lines == ["LASCO C3  no image", AIA_LABEL]
    out = ov.draw(_frame(w, h), view, ov.Overlays(labels=True), lines)
    # Over black, the backing stays black: ink is where red > 0.
    ink = out[..., 0] > 0
    ys, xs = np.nonzero(ink)
    assert xs.min() < w // 8 and ys.min() > h * 3 // 4
    size = ov.font_px(w, h)
    bands = _bands(ink)
    assert len(bands) == 2
    for band, text in zip(bands, lines, strict=True):
        assert np.array_equal(band, _text_mask(text, size))
    assert not np.array_equal(bands[1], _text_mask(AIA_LABEL.replace("23 UTC", "24 UTC"), size))
    # Over white, the translucent backing darkens the block behind the text.
    bright = ov.draw(_frame(w, h, 255), view, ov.Overlays(labels=True), lines)
    block = bright[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1, :3]
    assert (block < 255).mean() > 0.5 and (block[..., 0] < 128).mean() > 0.3


def test_font_size_follows_the_frame() -> None:
    assert ov.font_px(200, 200) == 10
    assert ov.font_px(1920, 1200) == 27
    assert ov.font_px(4096, 4096) == 28


def test_watermark_is_a_semi_transparent_mark_bottom_right() -> None:
    w, h, grey = 800, 500, 128
    view = _view(w, h, 2.4)
    out = ov.draw(_frame(w, h, grey), view, ov.Overlays(watermark=True)).astype(int)
    changed = (out[..., :3] != grey).any(axis=2)
    ys, xs = np.nonzero(changed)
    assert xs.min() > w // 2 and ys.min() > h * 3 // 4 and xs.max() < w and ys.max() < h
    mark = out[changed]
    # Sun-coloured logo pixels, and nothing fully covering the picture.
    assert ((mark[:, 0] - mark[:, 2]) > 60).sum() > 100
    limit = grey + ov.WATERMARK_OPACITY * (255 - grey)
    assert mark[:, :3].max() <= limit + 1 and mark[:, :3].min() >= grey * 0.4 - 1


def test_render_threads_draw_the_same_overlays() -> None:
    w, h = 700, 450
    view = _view(w, h, 1.2)
    options = ov.Overlays(labels=True, scale=True, scale_type="scalebar", watermark=True)
    frames = [_frame(w, h, g) for g in range(0, 200, 10)]
    lines = [[ov.layer_label("AIA 171", 1391394623_340000 + g * 1_000_000)] for g in range(20)]
    serial = [ov.draw(f, view, options, s) for f, s in zip(frames, lines, strict=True)]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda f, s: ov.draw(f, view, options, s), frames, lines))
    assert all(np.array_equal(a, b) for a, b in zip(serial, threaded, strict=True))


# -- the screenshot service ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Heliostat:
    root = tmp_path_factory.mktemp("overlays") / "archive"
    place_samples(root, [*AIA_171, LASCO_C3])
    heliostat = Heliostat(root, profile=profile("small"))
    heliostat.ingest(["."])
    yield heliostat  # type: ignore[misc]
    heliostat.close()


def _rgba(data: bytes) -> U8:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))


def test_screenshot_overlays_are_kept_with_the_request(app: Heliostat) -> None:
    clock = Clock()
    service = ScreenshotService(
        app.catalog,
        Compositor(app.archive_root, app.reader),
        cache_bytes=1 << 20,
        max_age_s=60,
        clock=clock,
    )
    t = round(T0.timestamp() * 1_000_000)
    layers = parse_layers("[SOHO,LASCO,C3,white-light,1,100],[SDO,AIA,171,1,100]")
    region = roi.from_centre(0, 0, 640, 400, 12.0)
    plain = service.take(t, layers, region)
    off = service.take(t, layers, region, overlays=ov.Overlays(scale_x=1.0, scale_y=2.0))
    assert off.data == plain.data
    options = ov.Overlays(labels=True, scale=True, scale_type="scalebar", watermark=True)
    shot = service.take(t, layers, region, overlays=options)
    assert shot.request.overlays == options
    before, after = _rgba(plain.data), _rgba(shot.data)
    changed = (before != after).any(axis=2)
    # Scale bar top-right, labels bottom-left, watermark bottom-right; the Sun untouched.
    assert changed[:40, -40:].any() and changed[-40:, :40].any() and changed[-40:, -40:].any()
    assert not changed[150:250, 250:390].any()
    # Exactly the plain picture with the labels of the images used drawn over it.
    lasco, aia = shot.layers
    assert lasco.image is not None and aia.image is not None
    lasco_time = datetime.strptime(LASCO_C3.name[:20], "%Y_%m_%d__%H_%M_%S")
    lasco_label = f"LASCO C3  {lasco_time:%Y-%m-%d %H:%M:%S} UTC"
    expected = ov.draw(before, region.viewport, options, [lasco_label, AIA_LABEL])
    assert np.array_equal(after, expected)
    # Older than max age: re-rendered from the request, same bytes.
    clock.now += 61
    again = service.get(shot.id)
    assert again is not shot and again.data == shot.data
    # Evicted by size: re-rendered, same bytes.
    big = roi.from_centre(0, 0, 1024, 1024, 2.4)
    for _ in range(4):
        service.take(t, layers[1:], big)
    assert service.stats()["screenshots"].evictions > 0
    rerendered = service.get(shot.id)
    assert rerendered is not again and rerendered.data == shot.data


# -- over gRPC -------------------------------------------------------------------------------


@pytest.fixture
def client(server: RunningServer) -> HeliostatClient:
    with HeliostatClient(server.target, timeout=60) as c:
        yield c  # type: ignore[misc]


def test_overlays_over_grpc(client: HeliostatClient) -> None:
    options = render_pb2.Overlays(
        labels=True,
        scale=True,
        scale_type=render_pb2.SCALE_TYPE_EARTH,
        scale_x=-300.0,
        scale_y=200.0,  # north up: 200 arcsec above Sun centre
        watermark=True,
    )
    centre = (0.0, 0.0, 500, 400)
    shot = client.screenshot(T0, "[SDO,AIA,171,1,100]", 2.4, centre=centre, overlays=options)
    none = render_pb2.Overlays(labels=False, watermark=False)
    plain = client.screenshot(T0, "[SDO,AIA,171,1,100]", 2.4, centre=centre, overlays=none)
    assert plain.data != shot.data
    assert client.get_screenshot(shot.id).data == shot.data
    a, b = _rgba(plain.data), _rgba(shot.data)
    changed = (a != b).any(axis=2)
    # The Earth marker's box starts at (-300, 200 north) arcsec: pixel (250 − 125, 200 − 83.3).
    ys, xs = np.nonzero(changed[:200, :250])
    assert (xs.min(), ys.min()) == (125, 116)
    assert changed[-40:, :40].any() and changed[-40:, -40:].any()


def test_labels_and_watermark_are_on_by_default_over_grpc(client: HeliostatClient) -> None:
    def shot(size: int, options: render_pb2.Overlays | None) -> U8:
        centre = (0.0, 0.0, size, size)
        data = client.screenshot(T0, "[10,1,100]", 2.4, centre=centre, overlays=options).data
        return _rgba(data)

    off = render_pb2.Overlays(labels=False, watermark=False)
    default = shot(400, None)
    changed = (default != shot(400, off)).any(axis=2)
    assert changed[-40:, :40].any() and changed[-40:, -40:].any() and not changed[:200].any()
    assert np.array_equal(shot(400, render_pb2.Overlays()), default)
    only_logo = (shot(400, render_pb2.Overlays(labels=False)) != shot(400, off)).any(axis=2)
    assert only_logo[-40:, -40:].any() and not only_logo[:, :100].any()
    # Below 200x200 px, as Helioviewer, nothing unless asked.
    assert np.array_equal(shot(150, None), shot(150, off))


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (render_pb2.Overlays(scale=True, scale_type=7), "overlays.scale_type"),  # type: ignore[arg-type]
        (render_pb2.Overlays(scale=True, scale_x=5.0), "overlays.scale_y"),
        (render_pb2.Overlays(scale=True, scale_x=5000.0, scale_y=0.0), "overlays.scale_x"),
        (render_pb2.Overlays(scale=True, scale_x=0.0, scale_y=math.inf), "overlays.scale_y"),
    ],
)
def test_bad_overlays_over_grpc(
    client: HeliostatClient, options: render_pb2.Overlays, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as e:
        client.screenshot(T0, "[10,1,100]", 2.4, centre=(0.0, 0.0, 300, 200), overlays=options)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert field in e.value.details()  # type: ignore[attr-defined]

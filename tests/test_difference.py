"""Difference imaging: the kernel, the options, choosing and aligning the reference, tiles and
screenshots in process and over gRPC.

The archive holds the real AIA 171 and SWAP samples plus three generated 4096² AIA 171 frames of
the same model Sun a minute apart: one centred, one pointed 36 px west and 20 px south (CRPIX
shifted, the disc drawn where the header says), one seen from 3 % farther away (DSUN, R_SUN).
Aligned by geometry, what is left of their differences from the centred one is the model's
fine structure (drawn in the image plane, so it does not move with the Sun) and compression
noise; differenced pixel for pixel, the Sun's structure and limb stand out.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from PIL import Image

from heliostat import demo
from heliostat.app import Heliostat
from heliostat.archive import naming, sources
from heliostat.archive.jp2write import write_jp2
from heliostat.archive.times import iso, parse
from heliostat.catalog.records import ImageRecord
from heliostat.client import HeliostatClient
from heliostat.config import profile
from heliostat.errors import InvalidArgument, NotFound
from heliostat.imaging import difference as dif
from heliostat.imaging.decode import FileKey
from heliostat.imaging.tiles import tile_key
from heliostat.screenshots import region as roi
from heliostat.screenshots.layers import parse_layers
from heliostat.v1 import render_pb2

from .conftest import AIA_171, DATA, RunningServer, place_samples, start_server, stop_server

SWAP = sorted(DATA.glob("*PROBA2_SWAP*.jp2"))
NEW_US = parse("2014-02-04T00:00:00Z")  # generated frame, centred
OLD_US = parse("2014-02-03T23:59:00Z")  # generated frame, pointed elsewhere
SHIFT = (36, -20)  # the old frame's Sun centre minus the new one's, native pixels (x, y down)
FAR_US = parse("2014-02-03T23:58:00Z")  # generated frame, seen from 3 % farther away
FAR = 1.03


def _grey(png: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(grey level, alpha) of a grey difference PNG."""
    im = Image.open(io.BytesIO(png)).convert("RGBA")
    rgba = np.asarray(im)
    assert (rgba[..., 0] == rgba[..., 1]).all() and (rgba[..., 1] == rgba[..., 2]).all()
    return rgba[..., 0], rgba[..., 3]


# -- kernel ------------------------------------------------------------------------------------


def test_zero_difference_is_uniform_mid_grey() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    full = np.full_like(a, 255)
    out, alpha = dif.difference(a, full, a, full)
    assert (out == 128).all() and (alpha == 255).all()


def test_known_offsets_map_to_known_values_and_clip() -> None:
    old = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    new = old.T.copy()
    full = np.full_like(old, 255)
    out, _ = dif.difference(new, full, old, full)
    d = new.astype(int) - old.astype(int)
    assert (out == (np.clip(d, -64, 63) + 64) * 2).all()
    # Spot values: +1 → 130, −1 → 126, saturation at ±64 counts to 254 and 0.
    assert out[101, 100] == 130 and out[100, 101] == 126
    assert out[163, 100] == 254 and out[255, 0] == 254 and out[36, 100] == 0 and out[0, 255] == 0
    assert out.min() == 0 and out.max() == 254


def test_coverage_is_the_smaller_alpha_and_in_place_works() -> None:
    new = np.array([[10, 20, 30, 40]], np.uint8)
    old = np.array([[10, 10, 10, 10]], np.uint8)
    new_alpha = np.array([[255, 255, 0, 128]], np.uint8)
    old_alpha = np.array([[255, 0, 255, 255]], np.uint8)
    dif.difference(new, new_alpha, old, old_alpha, out=new, out_alpha=new_alpha)
    assert new.tolist() == [[128, 0, 0, 188]] and new_alpha.tolist() == [[255, 0, 0, 128]]
    # Strided windows of larger images are fine.
    big = np.full((10, 10), 50, np.uint8)
    out, _ = dif.difference(big[::2, 1::3], big[::2, 1::3], big[1::2, 2::3], big[1::2, 2::3])
    assert (out == 128).all()


def test_kernel_rejects_mismatched_arrays_and_releases_the_gil() -> None:
    a = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="old"):
        dif.difference(a, a, np.zeros((4, 5), np.uint8), a)
    with pytest.raises(ValueError, match="new"):
        dif.difference(a.astype(np.int16), a, a, a)  # type: ignore[arg-type]
    assert dif._difference.targetoptions["nogil"]


# -- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((3, 1, 1, None), "difference"),
        ((-1, 1, 1, None), "difference"),
        ((1, 0, 1, None), "diff_count"),
        ((1, -5, 1, None), "diff_count"),
        ((1, 1, 7, None), "diff_time"),
        ((1, 1, -1, None), "diff_time"),
        ((1, 999_999, 4, None), "diff_count"),  # 19,000 years
        ((2, 0, 0, None), "base_diff_time"),
    ],
)
def test_bad_options_name_the_field(args: tuple[int, int, int, int | None], field: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        dif.options(*args)
    assert e.value.field == field


def test_reference_times_follow_helioviewer_units() -> None:
    t = parse("2024-03-31T12:00:00Z")
    assert dif.options(0, 0, 99, None) is None  # mode 0 ignores the rest, as the client sends it
    expected = {
        dif.SECONDS: "2024-03-31T11:59:15",
        dif.MINUTES: "2024-03-31T11:15:00",
        dif.HOURS: "2024-03-29T15:00:00",
        dif.DAYS: "2024-02-15T12:00:00",
        dif.WEEKS: "2023-05-21T12:00:00",
        dif.MONTHS: "2020-06-30T12:00:00",  # 45 months back is June: day clamped to 30
        dif.YEARS: "1979-03-31T12:00:00",
    }
    for unit, want in expected.items():
        opts = dif.options(dif.RUNNING, 45, unit, None)
        assert opts is not None
        assert iso(opts.reference_time(t)).startswith(want), dif.UNITS[unit]
    # Calendar months clamp the day: 31 March − 1 month is 29 February (2024 is a leap year).
    month = dif.options(dif.RUNNING, 1, dif.MONTHS, None)
    year = dif.options(dif.RUNNING, 1, dif.YEARS, None)
    assert month is not None and year is not None
    assert iso(month.reference_time(t)).startswith("2024-02-29T12:00:00")
    assert iso(year.reference_time(parse("2024-02-29T00:00:00Z"))).startswith("2023-02-28")
    base = dif.options(dif.BASE, 0, 0, OLD_US)
    assert base is not None and base.reference_time(t) == OLD_US
    far = dif.options(dif.RUNNING, 3000, dif.YEARS, None)
    assert far is not None
    with pytest.raises(InvalidArgument) as e:
        far.reference_time(t)
    assert e.value.field == "diff_count"


def test_layer_strings_check_difference_options() -> None:
    (la,) = parse_layers("[SDO,AIA,171,1,100,1,30,1,]")
    assert la.diff == dif.Difference(dif.RUNNING, 30, dif.MINUTES)
    (base,) = parse_layers("[SDO,AIA,171,1,100,2,0,0,2014-02-03T23:59:00.000Z]")
    assert base.diff == dif.Difference(dif.BASE, base_us=OLD_US)
    (plain,) = parse_layers("[SOHO,LASCO,C2,white-light,2,100,0,60,1,2024-05-01T11:48:29.000Z]")
    assert plain.diff is None
    for text, fault in [
        ("[SDO,AIA,171,1,100,1,0,1,]", "diffCount"),
        ("[SDO,AIA,171,1,100,1,5,9,]", "diffTime"),
        ("[SDO,AIA,171,1,100,2,0,0,]", "baseDiffTime"),
        ("[SDO,AIA,171,1,100,2,0,0,2014-02-30T00:00:00Z]", "baseDiffTime"),
        ("[SDO,AIA,171,1,100,4,5,1,]", "difference"),
    ]:
        with pytest.raises(InvalidArgument, match=fault) as e:
            parse_layers(text)
        assert e.value.field == "layers"


# -- geometry ----------------------------------------------------------------------------------


def _record(**kw: float) -> ImageRecord:
    base: dict[str, float] = dict(
        width=4096, height=4096, cdelt1=0.6, cdelt2=0.6, crpix1=2048.5, crpix2=2048.5,
        crval1=0.0, crval2=0.0, rotation=0.0, dsun=149_597_870_700.0,
    )  # fmt: skip
    base.update(kw)
    return ImageRecord(0, 10, 0, "x", rsun_px=1600.0, layering_order=1, file_size=0,
                       file_mtime_ns=0, **base)  # type: ignore[arg-type]  # fmt: skip


def test_native_transform_maps_the_same_point_of_the_sun() -> None:
    a = _record()
    assert np.allclose(dif.native_transform(a, a), [[1, 0, 0], [0, 1, 0]])
    # Moved pointing: Sun centre column +36, FITS y +20 (so the row goes up 20).
    b = _record(crpix1=2084.5, crpix2=2068.5)
    assert np.allclose(dif.native_transform(a, b), [[1, 0, 36], [0, 1, -20]])
    # Twice as far from the Sun at the same CDELT: half the size, centred the same.
    c = _record(dsun=2 * 149_597_870_700.0)
    m = dif.native_transform(a, c)
    assert np.allclose(m @ [2047.5, 2047.5, 1], [2047.5, 2047.5])
    assert np.allclose(m @ [2047.5 + 100, 2047.5, 1], [2047.5 + 50, 2047.5])
    # Rolled 90°: a point west of centre in the target lies where R(90°) puts it.
    d = _record(rotation=90.0)
    assert np.allclose(dif.native_transform(a, d) @ [2047.5 + 100, 2047.5, 1], [2047.5, 2147.5])
    assert np.allclose(dif.chain(dif.native_transform(a, b), dif.native_transform(b, a)),
                       [[1, 0, 0], [0, 1, 0]])  # fmt: skip


# -- archive -----------------------------------------------------------------------------------


def _frame(dest: Path, time_us: int, shift: tuple[int, int], distance: float = 1.0) -> None:
    """A 4096² AIA 171 frame of the model Sun with the Sun centre moved by shift (x, y down),
    seen from ``distance`` times the template's distance (so that much smaller)."""
    source = sources.by_id(10)
    fits = dict(demo.aia_header(demo._template(AIA_171[0]), wavelength=171, time_us=time_us))
    fits["CRPIX1"] = f"{float(fits['CRPIX1']) + shift[0]:.8g}"
    fits["CRPIX2"] = f"{float(fits['CRPIX2']) - shift[1]:.8g}"
    fits["DSUN_OBS"] = f"{float(fits['DSUN_OBS']) * distance:.8e}"
    for key in ("R_SUN", "RSUN_OBS"):
        fits[key] = f"{float(fits[key]) / distance:.8g}"
    size = int(fits["NAXIS1"])
    centre = (float(fits["CRPIX1"]) - 1, size - float(fits["CRPIX2"]))
    # time_s fixed: both frames show the same Sun, only the pointing differs.
    image = demo.solar_disc(size, rsun_px=float(fits["R_SUN"]), center=centre, channel=10,
                            seed=7, time_s=0)  # fmt: skip
    path = dest / naming.folder(source, time_us) / naming.file_name(source, time_us)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jp2(path, image, list(fits.items()), demo._HELIOVIEWER)


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("frames")
    _frame(root, NEW_US, (0, 0))
    _frame(root, OLD_US, SHIFT)
    _frame(root, FAR_US, (0, 0), FAR)
    return root


def _archive(root: Path, frames: Path) -> Path:
    place_samples(root, [*AIA_171, *SWAP])
    shutil.copytree(frames, root, dirs_exist_ok=True)
    return root


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, frames: Path) -> Iterator[Heliostat]:
    root = _archive(tmp_path_factory.mktemp("diff") / "archive", frames)
    hs = Heliostat(root, profile=profile("small"))
    hs.ingest([str(root)])
    yield hs
    hs.close()


def _at(app: Heliostat, source_id: int, when: str) -> ImageRecord:
    return app.closest(source_id, parse(when))


def test_running_difference_picks_the_last_image_at_or_before(app: Heliostat) -> None:
    swap = _at(app, 32, "2013-06-12T00:08:04Z")
    five_min = dif.options(dif.RUNNING, 5, dif.MINUTES, None)
    ref = app.difference_reference(swap, five_min)
    # 00:08:04 − 5 min = 00:03:04: the 00:01:34 frame, not the nearer 00:03:44 one.
    assert ref is not None and iso(ref.time_us).startswith("2013-06-12T00:01:34.351")
    aia = _at(app, 10, "2014-02-03T03:30:23Z")
    ref = app.difference_reference(aia, dif.options(dif.RUNNING, 30, dif.MINUTES, None))
    assert ref is not None and iso(ref.time_us).startswith("2014-02-03T03:00:23.34")
    ref = app.difference_reference(aia, dif.options(dif.RUNNING, 1, dif.HOURS, None))
    assert ref is not None and iso(ref.time_us).startswith("2014-02-03T02:30:23.34")  # on the dot
    ref = app.difference_reference(aia, dif.options(dif.RUNNING, 3601, dif.SECONDS, None))
    assert ref is not None and iso(ref.time_us).startswith("2014-02-03T02:08:47.34")
    # A real SWAP running difference: mostly unchanged corona, so mostly near grey.
    grey, alpha = _grey(app.tile(swap.id, 0, 0, swap.scale * 2, "png", 85, five_min).data)
    assert np.median(np.abs(grey[alpha == 255].astype(int) - 128)) <= 4


def test_difference_tiles_are_cached_by_their_reference(app: Heliostat) -> None:
    rec = _at(app, 10, "2014-02-03T03:30:23Z")
    opts = dif.options(dif.RUNNING, 30, dif.MINUTES, None)
    ref = app.difference_reference(rec, opts)
    assert ref is not None
    tile = app.tile(rec.id, 1, 1, rec.scale * 2, "png", 85, opts)
    assert app.tiles.cached(tile_key(rec, 1, 1, rec.scale * 2, "png", 85, ref)) == tile
    plain = app.tile(rec.id, 1, 1, rec.scale * 2, "png", 85)
    assert plain.data != tile.data
    assert app.tiles.cached(tile_key(rec, 1, 1, rec.scale * 2, "png", 85)) == plain
    # Replacing the reference file forgets the difference tiles made from it, not the plain one.
    app.tiles.forget(ref.path)
    assert app.tiles.cached(tile_key(rec, 1, 1, rec.scale * 2, "png", 85, ref)) is None
    assert app.tiles.cached(tile_key(rec, 1, 1, rec.scale * 2, "png", 85)) == plain


def test_no_reference_before_the_first_image_is_not_found(app: Heliostat) -> None:
    first = _at(app, 10, "2014-02-03T02:08:47Z")
    before = app.tiles.stats()["tiles"]
    with pytest.raises(NotFound) as e:
        app.tile(first.id, 0, 0, first.scale, "png", 85, dif.options(1, 30, 1, None))
    assert e.value.field == "diff_count" and "02:08:47" in e.value.message
    with pytest.raises(NotFound) as e:
        app.tile(first.id, 0, 0, first.scale, "png", 85, dif.options(2, 0, 0, first.time_us - 1))
    assert e.value.field == "base_diff_time"
    assert app.tiles.stats()["tiles"] == before  # nothing rendered, nothing cached


def test_an_image_differenced_with_itself_is_uniform_grey(app: Heliostat) -> None:
    for when in ("2014-02-03T03:00:23Z", "2013-06-12T00:05:54Z"):
        rec = app.closest(10 if when.startswith("2014") else 32, parse(when))
        itself = dif.options(dif.BASE, 0, 0, rec.time_us)
        assert app.difference_reference(rec, itself) == rec
        for scale, x, y in [(rec.scale, 0, 0), (rec.scale * 3.3, -1, -1), (rec.scale / 1.7, 1, 0)]:
            grey, alpha = _grey(app.tile(rec.id, x, y, scale, "png", 85, itself).data)
            assert (grey[alpha > 0] == 128).all() and alpha.any()


def test_a_reference_pointed_elsewhere_is_aligned_by_its_header(app: Heliostat) -> None:
    new, old = _at(app, 10, "2014-02-04T00:00:00Z"), _at(app, 10, "2014-02-03T23:59:00Z")
    assert (old.ref_pixel_x - new.ref_pixel_x, new.ref_pixel_y - old.ref_pixel_y) == SHIFT
    # Full resolution: the reference's pixels are taken exactly SHIFT away.
    got, alpha, _ = app.tiles.difference_pixels(new, old, 0, 0, new.scale)
    assert alpha is None
    target = app.reader.region(FileKey(str(app.archive_root / new.path), new.file_size,
                                       new.file_mtime_ns), 0, 2048, 2048, 2560, 2560)  # fmt: skip
    fk = FileKey(str(app.archive_root / old.path), old.file_size, old.file_mtime_ns)
    x0, y0 = 2048 + SHIFT[0], 2048 + SHIFT[1]
    moved = app.reader.region(fk, 0, x0, y0, x0 + 512, y0 + 512)
    full = np.full_like(target, 255)
    assert (got == dif.difference(target, full, moved, full)[0]).all()
    # Reduced, limb included: what is left is image-plane fine structure and compression noise,
    # far below the misregistered pixel-for-pixel difference.
    for scale, x, y in [(new.scale * 4, 0, 0), (new.scale * 4, -1, -1), (new.scale * 1.5, 0, 0)]:
        got, alpha, _ = app.tiles.difference_pixels(new, old, x, y, scale)
        plain_new, _, _ = app.tiles.pixels(new, x, y, scale)
        plain_old, _, _ = app.tiles.pixels(old, x, y, scale)
        covered = np.ones(got.shape, bool) if alpha is None else alpha == 255
        aligned = np.abs(got[covered].astype(int) - 128) / 2
        naive = np.abs(plain_new[covered].astype(int) - plain_old[covered].astype(int))
        assert aligned.mean() < 4 and np.percentile(aligned, 99) <= 12
        assert naive.mean() > 2.5 * aligned.mean() and np.percentile(naive, 99) > 25


def test_a_reference_seen_from_farther_is_scaled_to_the_target(app: Heliostat) -> None:
    new, far = _at(app, 10, "2014-02-04T00:00:00Z"), _at(app, 10, "2014-02-03T23:58:00Z")
    assert far.scale == pytest.approx(new.scale * FAR) and far.rsun_px < new.rsun_px
    # Full-resolution tiles across the limb: the reference's Sun is 3 % smaller in pixels, the
    # difference tile scales it up to the target's; the raw pixel-for-pixel difference does not.
    for x, y in [(3, 0), (-4, -1), (0, -4)]:
        got, alpha, _ = app.tiles.difference_pixels(new, far, x, y, new.scale)
        assert alpha is None
        x0, y0 = 2048 + 512 * x, 2048 + 512 * y
        raw = [
            app.reader.region(FileKey(str(app.archive_root / r.path), r.file_size,
                                      r.file_mtime_ns), 0, x0, y0, x0 + 512, y0 + 512)
            for r in (new, far)
        ]  # fmt: skip
        aligned = np.abs(got.astype(int) - 128) / 2
        naive = np.abs(raw[0].astype(int) - raw[1].astype(int))
        assert aligned.mean() < 4 and np.percentile(aligned, 99) <= 14
        assert naive.mean() > 2 * aligned.mean() and np.percentile(naive, 99) > 20


def test_difference_screenshots(app: Heliostat) -> None:
    region = roi.from_centre(0, 0, 400, 400, 4.8)
    shot = app.take_screenshot(
        NEW_US,
        "[SDO,AIA,171,1,100,1,1,1,],[SDO,AIA,171,1,100,2,0,0,2014-02-04T00:00:00Z]",
        region,
        "png",
        90,
    )
    moved, itself = shot.layers
    assert moved.image is not None and moved.image.time_us == NEW_US
    assert moved.reference is not None and moved.reference.time_us == OLD_US
    assert itself.reference == itself.image and not itself.missing_reference
    rgba = np.asarray(Image.open(io.BytesIO(shot.data)).convert("RGBA"))
    # The second layer (self-difference) is drawn over the first: uniform grey.
    assert (rgba[..., :3] == 128).all() and (rgba[..., 3] == 255).all()
    only_moved = app.take_screenshot(NEW_US, "[SDO,AIA,171,1,100,1,1,1,]", region, "png", 90)
    grey = np.asarray(Image.open(io.BytesIO(only_moved.data)).convert("L")).astype(int)
    assert np.abs(grey - 128).mean() / 2 < 4
    # Before the first AIA image there is no reference: reported, not drawn, others still are.
    early = app.take_screenshot(
        parse("2014-02-03T02:10:00Z"), "[SDO,AIA,171,1,100,1,30,1,],[32,1,100]", region, "png", 90
    )
    aia, swap = early.layers
    assert aia.image is not None and aia.missing_reference and not aia.drawn
    assert aia.reference is None and swap.image is not None and swap.drawn
    # Re-rendered from the stored request after eviction: the same references.
    app.screenshots._shots.discard(lambda _: True)
    again = app.screenshot(shot.id)
    assert again.data == shot.data and again.layers[0].reference == moved.reference


# -- gRPC --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, frames: Path) -> Iterator[RunningServer]:
    srv = start_server(_archive(tmp_path_factory.mktemp("served") / "archive", frames))
    yield srv
    stop_server(srv)


def _dt(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, UTC)


def _field(e: pytest.ExceptionInfo[grpc.RpcError]) -> str:
    meta = dict(e.value.trailing_metadata())  # type: ignore[attr-defined]
    return str(meta.get("heliostat-field"))


def test_difference_tiles_and_screenshots_over_grpc(served: RunningServer) -> None:
    with HeliostatClient(served.target, timeout=120) as c:
        new = c.closest_image(10, _dt(NEW_US))
        plain = c.tile(new.id, 0, 0, new.scale * 4)
        running = c.tile(new.id, 0, 0, new.scale * 4, difference=1, diff_count=1, diff_time=1)
        assert running.reference_image_id and running.reference_image_id != new.id
        assert running.reference_date.ToDatetime(tzinfo=UTC) == _dt(OLD_US)
        assert plain.reference_image_id == 0 and running.data != plain.data
        grey, alpha = _grey(running.data)
        assert np.abs(grey[alpha == 255].astype(int) - 128).mean() / 2 < 4
        # Cached under its options: the same request gives the same bytes, another base differs.
        again = c.tile(new.id, 0, 0, new.scale * 4, difference=1, diff_count=1, diff_time=1)
        assert again.data == running.data
        base = c.tile(new.id, 0, 0, new.scale * 4, difference=2, base_diff_time=_dt(NEW_US))
        assert base.reference_image_id == new.id
        grey, alpha = _grey(base.data)
        assert (grey[alpha > 0] == 128).all()

        for kwargs, code, field in [
            ({"difference": 5}, grpc.StatusCode.INVALID_ARGUMENT, "difference"),
            ({"difference": 1, "diff_count": 0}, grpc.StatusCode.INVALID_ARGUMENT, "diff_count"),
            ({"difference": 1, "diff_count": 1, "diff_time": 9},
             grpc.StatusCode.INVALID_ARGUMENT, "diff_time"),
            ({"difference": 2}, grpc.StatusCode.INVALID_ARGUMENT, "base_diff_time"),
            ({"difference": 1, "diff_count": 1, "diff_time": 6},
             grpc.StatusCode.NOT_FOUND, "diff_count"),
        ]:  # fmt: skip
            with pytest.raises(grpc.RpcError) as e:
                c.tile(new.id, 0, 0, new.scale * 4, **kwargs)  # type: ignore[arg-type]
            assert e.value.code() == code, kwargs  # type: ignore[attr-defined]
            assert _field(e) == field

        bad_base = render_pb2.GetTileRequest(image_id=new.id, image_scale=new.scale * 4,
                                             difference=2)  # type: ignore[arg-type]  # fmt: skip
        bad_base.base_diff_time.CopyFrom(Timestamp(seconds=10**9, nanos=-5))
        with pytest.raises(grpc.RpcError) as e:
            c.render.GetTile(bad_base)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert _field(e) == "base_diff_time"

        shot = c.screenshot(
            datetime(2013, 6, 12, 0, 8, 10, tzinfo=UTC),
            "[PROBA2,SWAP,174,1,100,1,5,1,],[SDO,AIA,171,1,100,1,30,1,]",
            4.8,
            centre=(0, 0, 300, 300),
        )
        swap, aia = shot.layers
        assert swap.drawn and swap.reference_image_id and not swap.missing_reference
        assert swap.reference_date.ToDatetime(tzinfo=UTC) == datetime(
            2013, 6, 12, 0, 1, 34, 351000, tzinfo=UTC
        )
        # The AIA image closest to 2013 is the first one (2014): nothing before it to subtract.
        assert aia.image_id and aia.missing_reference and not aia.drawn
        assert aia.reference_image_id == 0
        assert c.get_screenshot(shot.id).layers[0].reference_image_id == swap.reference_image_id
        with pytest.raises(grpc.RpcError) as e:
            c.screenshot(_dt(NEW_US), "[SDO,AIA,171,1,100,1,1,8,]", 4.8, centre=(0, 0, 64, 64))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert _field(e) == "layers" and "diffTime" in e.value.details()  # type: ignore[attr-defined]

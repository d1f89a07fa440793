"""Colour tables against SunPy's colormaps, and the lookup kernels against a numpy reference."""

from __future__ import annotations

import matplotlib
import numba
import numpy as np
import pytest

from heliostat.archive import sources
from heliostat.imaging import colorize, colortables

# Every table a data source uses: the packaged set is exactly these.
TABLES: tuple[str, ...] = tuple(
    sorted({s.color_table for s in sources.SOURCES if s.color_table is not None})
)


@pytest.fixture(scope="module")
def sunpy_colormaps() -> None:
    """Register SunPy's colormaps with matplotlib."""
    import sunpy.visualization.colormaps  # type: ignore[import-untyped]  # noqa: F401


# --- tables -----------------------------------------------------------------------------------


def test_names_cover_every_data_source() -> None:
    assert set(colortables.names()) == set(TABLES)
    for src in sources.iter_sources():
        if src.color_table is not None:
            assert src.color_table in colortables.names(), src.name


@pytest.mark.usefixtures("sunpy_colormaps")
@pytest.mark.parametrize("name", TABLES)
def test_table_matches_sunpy(name: str) -> None:
    table = colortables.load(name)
    assert table.shape == (256, 3) and table.dtype == np.uint8
    want = matplotlib.colormaps[name](np.arange(256) / 255.0, bytes=True)[:, :3]
    diff = np.abs(table.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= 1, f"{name}: entries {np.flatnonzero(diff.max(axis=1) > 1)} differ"


@pytest.mark.parametrize(
    ("index", "rgb", "tolerance"),
    [
        (0, (0, 0, 0), 0),
        (64, (92, 64, 0), 0),
        # Helioviewer's table has (184, 127, 0): its generator truncated values that land a hair
        # below 185.0 and 128.0, where today's matplotlib gives (185, 128, 0).
        (128, (184, 127, 0), 1),
        (192, (255, 192, 7), 0),
        (255, (255, 255, 255), 0),
    ],
)
def test_aia171_matches_helioviewer(index: int, rgb: tuple[int, int, int], tolerance: int) -> None:
    got = colortables.load("sdoaia171")[index].astype(int)
    assert np.abs(got - np.array(rgb)).max() <= tolerance, (index, got)


def test_load_is_cached_and_read_only() -> None:
    a = colortables.load("sdoaia304")
    assert colortables.load("sdoaia304") is a
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0, 0] = 1


@pytest.mark.parametrize("bad", ["sdoaia999", "", "../encode", "colortables/sdoaia171"])
def test_load_unknown_raises_key_error_naming_it(bad: str) -> None:
    with pytest.raises(KeyError, match=repr(bad).replace(".", r"\.")):
        colortables.load(bad)
    with pytest.raises(KeyError):
        colortables.rgba(bad)


def test_grey_and_rgba() -> None:
    grey = colortables.grey()
    assert grey.shape == (256, 3) and not grey.flags.writeable
    assert (grey == np.arange(256)[:, None]).all()
    assert (colortables.rgba(None)[:, :3] == grey).all()
    rgba = colortables.rgba("euvi195")
    assert rgba.shape == (256, 4) and rgba.flags.c_contiguous and not rgba.flags.writeable
    assert (rgba[:, :3] == colortables.load("euvi195")).all()
    assert (rgba[:, 3] == 255).all()


# --- kernels ----------------------------------------------------------------------------------

RNG = np.random.default_rng(20240416)
BIG = RNG.integers(0, 256, (300, 401), dtype=np.uint8)
# Partial alpha in the random LUT exercises the alpha arithmetic of the masked kernels.
LUT4 = RNG.integers(0, 256, (256, 4), dtype=np.uint8)
LUT3 = np.ascontiguousarray(LUT4[:, :3])
# A mask with runs of 0 and 255 (padding) plus scattered partial coverage.
MASK = np.where(RNG.random(BIG.shape) < 0.5, 255, 0).astype(np.uint8)
MASK[:, :37] = 0
MASK[RNG.random(BIG.shape) < 0.1] = RNG.integers(1, 255, dtype=np.uint8)

# Contiguous, a window with a row stride (a tile cut from a bigger image), and both axes strided.
SOURCES = {
    "contiguous": (slice(None), slice(None)),
    "window": (slice(17, 273), slice(33, 289)),
    "strided": (slice(1, None, 2), slice(None, None, 3)),
}


def ref_masked(src: np.ndarray, mask: np.ndarray, lut: np.ndarray) -> np.ndarray:
    out = np.take(lut, src, axis=0)
    out[..., 3] = (lut[src, 3].astype(np.int32) * mask + 127) // 255
    out[mask == 0] = 0
    return out


def ref_over_black(src: np.ndarray, mask: np.ndarray, lut: np.ndarray) -> np.ndarray:
    scaled = (np.take(lut, src, axis=0).astype(np.int32) * mask[..., None] + 127) // 255
    out: np.ndarray = scaled.astype(np.uint8)
    return out


@pytest.mark.parametrize("view", SOURCES)
def test_apply_lut_rgba_matches_take(view: str) -> None:
    src = BIG[SOURCES[view]]
    out = colorize.apply_lut_rgba(src, LUT4)
    assert out.shape == (*src.shape, 4)
    assert np.array_equal(out, np.take(LUT4, src, axis=0))


@pytest.mark.parametrize("view", SOURCES)
def test_apply_lut_rgb_matches_take(view: str) -> None:
    src = BIG[SOURCES[view]]
    out = colorize.apply_lut_rgb(src, LUT3)
    assert np.array_equal(out, np.take(LUT3, src, axis=0))


@pytest.mark.parametrize("view", SOURCES)
def test_apply_lut_rgba_masked_matches_reference(view: str) -> None:
    src, mask = BIG[SOURCES[view]], MASK[SOURCES[view]]
    out = colorize.apply_lut_rgba_masked(src, mask, LUT4)
    want = ref_masked(src, mask, LUT4)
    assert np.array_equal(out, want)
    assert (out[mask == 0] == 0).all()
    opaque = mask == 255
    assert np.array_equal(out[opaque], LUT4[src[opaque]])


@pytest.mark.parametrize("channels", [4, 3, 1])
@pytest.mark.parametrize("view", SOURCES)
def test_apply_lut_over_black_matches_reference(view: str, channels: int) -> None:
    src, mask = BIG[SOURCES[view]], MASK[SOURCES[view]]
    lut = LUT4[:, :channels]  # a non-contiguous LUT for 3 and 1 channels
    out = colorize.apply_lut_over_black(src, mask, lut)
    assert out.shape == (*src.shape, channels)
    assert np.array_equal(out, ref_over_black(src, mask, lut))


def test_kernels_fill_a_window_of_a_larger_canvas() -> None:
    src = BIG[SOURCES["window"]]
    canvas = np.full((400, 500, 4), 7, dtype=np.uint8)
    window = canvas[10 : 10 + src.shape[0], 20 : 20 + src.shape[1]]
    assert colorize.apply_lut_rgba(src, LUT4, window) is window
    assert np.array_equal(window, np.take(LUT4, src, axis=0))
    mask = MASK[SOURCES["window"]]
    assert colorize.apply_lut_rgba_masked(src, mask, LUT4, window) is window
    assert np.array_equal(window, ref_masked(src, mask, LUT4))
    untouched = np.ones(canvas.shape[:2], dtype=bool)
    untouched[10 : 10 + src.shape[0], 20 : 20 + src.shape[1]] = False
    assert (canvas[untouched] == 7).all()


def test_preallocated_out_is_filled_and_returned() -> None:
    out3 = np.zeros((*BIG.shape, 3), dtype=np.uint8)
    assert colorize.apply_lut_rgb(BIG, LUT3, out3) is out3
    assert np.array_equal(out3, np.take(LUT3, BIG, axis=0))
    out1 = np.zeros((*BIG.shape, 1), dtype=np.uint8)
    assert colorize.apply_lut_over_black(BIG, MASK, LUT4[:, :1], out1) is out1
    assert np.array_equal(out1, ref_over_black(BIG, MASK, LUT4[:, :1]))


def test_real_table_through_kernel() -> None:
    src = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = colorize.apply_lut_rgba(src, colortables.rgba("sdoaia171"))
    assert np.array_equal(out.reshape(256, 4)[:, :3], colortables.load("sdoaia171"))
    assert (out[..., 3] == 255).all()


def test_opaque_histogram() -> None:
    hist, transparent, partial = colorize.opaque_histogram(BIG, MASK)
    assert np.array_equal(hist, np.bincount(BIG[MASK == 255], minlength=256))
    assert transparent == int((MASK == 0).sum())
    assert partial == int(((MASK > 0) & (MASK < 255)).sum())


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: colorize.apply_lut_rgba(BIG.astype(np.int16), LUT4), "src"),
        (lambda: colorize.apply_lut_rgba(BIG[None], LUT4), "src"),
        (lambda: colorize.apply_lut_rgba(BIG, LUT3), "lut"),
        (lambda: colorize.apply_lut_rgba(BIG, LUT4[:255]), "lut"),
        (lambda: colorize.apply_lut_rgb(BIG, LUT4), "lut"),
        (lambda: colorize.apply_lut_rgba(BIG, LUT4, np.empty((300, 400, 4), np.uint8)), "out"),
        (lambda: colorize.apply_lut_rgba(BIG, LUT4, np.empty((300, 401, 4), np.int32)), "out"),
        (lambda: colorize.apply_lut_rgba(BIG, LUT4, np.empty((4, 300, 401), np.uint8).T), "out"),
        (lambda: colorize.apply_lut_rgb(BIG, LUT3, np.empty((300, 401, 4), np.uint8)), "out"),
        (lambda: colorize.apply_lut_rgba_masked(BIG, MASK[:, :400], LUT4), "mask"),
        (lambda: colorize.apply_lut_over_black(BIG, MASK.astype(bool), LUT4), "mask"),
        (lambda: colorize.opaque_histogram(BIG, MASK[1:]), "mask"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call: object, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}:"):
        call()  # type: ignore[operator]


def test_read_only_out_is_rejected() -> None:
    out = np.empty((*BIG.shape, 4), dtype=np.uint8)
    out.setflags(write=False)
    with pytest.raises(ValueError, match=r"^out:"):
        colorize.apply_lut_rgba(BIG, LUT4, out)


def test_compiled_loops_release_the_gil() -> None:
    loops = [v for v in vars(colorize).values() if isinstance(v, numba.core.dispatcher.Dispatcher)]
    assert len(loops) >= 5
    for loop in loops:
        assert loop.targetoptions.get("nogil") is True, loop

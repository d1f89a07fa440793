"""Affine resampling (heliostat.imaging.warp) against direct references."""

from __future__ import annotations

import contextlib
import ctypes
import math
import mmap
from collections.abc import Iterator

import numpy as np
import pytest
from scipy import ndimage  # type: ignore[import-untyped]

from heliostat.imaging._openjpeg import J2KDecoder
from heliostat.imaging.warp import samples_per_axis, warp_affine

from .conftest import AIA_171


@pytest.fixture(scope="module")
def aia_image() -> np.ndarray:
    """The AIA 171 sample's 600 × 700 pixels across the limb, full resolution."""
    img: np.ndarray = J2KDecoder(AIA_171[0].read_bytes(), 0).decode(1800, 1500, 2500, 2100)
    return img


def _warp(src: np.ndarray, m: object, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    out = np.empty(shape, np.uint8)
    alpha = np.empty(shape, np.uint8)
    warp_affine(src, np.asarray(m, np.float64), out, alpha)
    return out, alpha


def _rotation(deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c * scale, -s * scale, tx], [s * scale, c * scale, ty]])


@contextlib.contextmanager
def _guarded(h: int, w: int, seed: int) -> Iterator[np.ndarray]:
    """A random (h, w) image whose last byte is the last of a readable page, the next page
    PROT_NONE: a kernel reading past the image faults (the test process dies)."""
    page = mmap.PAGESIZE
    size = h * w
    pages = -(-size // page) + 1
    buf = mmap.mmap(-1, pages * page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    guard = ctypes.c_void_p(base + (pages - 1) * page)
    src = np.frombuffer(buf, np.uint8, size, (pages - 1) * page - size).reshape(h, w)
    src[:] = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
    assert libc.mprotect(guard, ctypes.c_size_t(page), 0) == 0  # PROT_NONE
    try:
        yield src
    finally:
        # Readable again; the mapping goes with the last array viewing it.
        libc.mprotect(guard, ctypes.c_size_t(page), 3)


def test_identity_is_an_exact_copy_of_a_strided_view() -> None:
    big = np.random.default_rng(0).integers(0, 256, (80, 90), dtype=np.uint8)
    view = big[5:75, 10:80]
    out, alpha = _warp(view, [[1, 0, 0], [0, 1, 0]], view.shape)
    assert np.array_equal(out, view)
    assert alpha.min() == 255


def test_enlarging_rotation_is_bilinear_like_scipy() -> None:
    src = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    m = _rotation(23.0, 0.7, 20.0, 5.0)  # 0.7 source px per output px: one sample a pixel
    out, alpha = _warp(src, m, (40, 40))
    # scipy maps (row, col) output indices to (row, col) input coordinates: swap the axes.
    matrix = np.array([[m[1, 1], m[1, 0]], [m[0, 1], m[0, 0]]])
    ref = ndimage.affine_transform(
        src.astype(np.float64), matrix, offset=(m[1, 2], m[0, 2]), output_shape=(40, 40), order=1
    )
    inside = alpha == 255
    assert inside.sum() > 1000
    # 8-bit fixed-point weights: within one grey level of exact bilinear.
    assert np.abs(out[inside].astype(float) - ref[inside]).max() <= 1


def test_shrinking_averages_the_footprint_instead_of_aliasing() -> None:
    # One-pixel stripes: point sampling at 1.7 px steps would give bands of 0 and 255.
    src = np.tile(np.array([0, 255], np.uint8), (200, 100))
    out, alpha = _warp(src, _rotation(10.0, 1.7, 40.0, 20.0), (60, 60))
    core = out[alpha == 255]
    assert core.size > 2000
    assert core.min() >= 90 and core.max() <= 165
    assert abs(core.mean() - 127.5) < 6


@pytest.mark.parametrize(("deg", "scale"), [(10.0, 1.0), (-7.4, 1.3), (100.0, 2.2)])
def test_rotation_is_the_mean_of_bilinear_samples_up_to_the_edges(deg: float, scale: float) -> None:
    # Every output pixel, edges included: value within one grey level, alpha exact.
    src = np.random.default_rng(7).integers(0, 256, (50, 60), dtype=np.uint8)[1:, 2:]
    h, w = src.shape
    m = _rotation(deg, scale, w / 2, h / 2)
    m[:, 2] -= m[:, :2] @ [35.0, 30.0]  # output (35, 30) on the source centre
    out, alpha = _warp(src, m, (60, 70))
    n = samples_per_axis(scale)
    v, u = np.mgrid[0:60, 0:70].astype(float)
    total = np.zeros((60, 70))
    hits = np.zeros((60, 70))
    for j in range(n):
        for i in range(n):
            du, dv = (i + 0.5) / n - 0.5, (j + 0.5) / n - 0.5
            x = m[0, 0] * (u + du) + m[0, 1] * (v + dv) + m[0, 2]
            y = m[1, 0] * (u + du) + m[1, 1] * (v + dv) + m[1, 2]
            inside = (x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5)
            xs, ys = np.clip(x, 0, w - 1), np.clip(y, 0, h - 1)
            val = ndimage.map_coordinates(src.astype(float), [ys, xs], order=1, mode="nearest")
            total += np.where(inside, val, 0)
            hits += inside
    ref_alpha = np.floor(hits * 255 / n**2 + 0.5)
    assert 0 < (alpha == 255).sum() < alpha.size and (alpha == 0).any()
    assert np.abs(alpha - ref_alpha).max() <= 1
    covered = hits > 0
    ref = total[covered] / hits[covered]
    assert np.abs(out[covered] - ref).max() <= 1
    assert (out[~covered] == 0).all()


def test_coverage_is_the_fraction_of_the_footprint_inside_the_source() -> None:
    src = np.full((10, 10), 200, np.uint8)
    # Output pixel u covers source [2u - 1.5, 2u + 0.5) horizontally: column 0 half outside.
    out, alpha = _warp(src, [[2, 0, -0.5], [0, 2, 0.5]], (4, 8))
    assert alpha[0, 0] == 128 and out[0, 0] == 200  # the mean of what is covered
    assert (alpha[:, 1:5] == 255).all()
    assert (alpha[:, 6:] == 0).all() and (out[:, 6:] == 0).all()


@pytest.mark.parametrize(
    ("step", "n"),
    [(0.5, 1), (1.0088, 1), (1.25, 1), (1.2501, 2), (2.0, 2), (2.0 + 1e-9, 2), (2.01, 3)],
)
def test_samples_per_axis_follows_the_shrink(step: float, n: int) -> None:
    # 2 + 1e-9: rounding in a matrix that scales by exactly 2.
    assert samples_per_axis(step) == n


@pytest.mark.parametrize("step", [1.0088, 1.1, 1.6, 1.9])
def test_the_sample_count_is_the_closer_to_a_lanczos_reduction(step: float) -> None:
    # Why one sample up to 1.25 and n × n beyond: on a zone plate (every frequency up to the
    # source's Nyquist) the chosen count lands nearer Pillow's Lanczos-antialiased reduction
    # than the other choice (2 × 2 where one is chosen, one where 2 × 2 is).
    from PIL import Image

    from heliostat.imaging.warp.sampling import flat_rows
    from heliostat.imaging.warp.separable import warp_separable

    size = 512
    y, x = np.mgrid[0:size, 0:size].astype(float)
    r2 = (x - size / 2) ** 2 + (y - size / 2) ** 2
    zone = (127.5 + 127.5 * np.cos(math.pi * r2 / size)).astype(np.uint8)
    n_out = int(size / step)
    box = (0.0, 0.0, n_out * step, n_out * step)
    ref = np.asarray(Image.fromarray(zone).resize((n_out, n_out), Image.LANCZOS, box=box))
    chosen = samples_per_axis(step)
    flat, pitch = flat_rows(zone)
    rms = {}
    for n in (chosen, 2 if chosen == 1 else 1):
        out = np.empty((n_out, n_out), np.uint8)
        alpha = np.empty_like(out)
        b = (step - 1) / 2  # Pillow's pixel centres: output u at source (u + 0.5)·step − 0.5
        warp_separable(flat, pitch, size, step, b, step, b, n, out, alpha, 1, 0)
        d = (out.astype(float) - ref)[8:-8, 8:-8]
        rms[n] = math.sqrt((d**2).mean())
    assert rms[chosen] == min(rms.values()), rms


def test_supersampled_shrink_is_the_mean_of_bilinear_samples() -> None:
    src = np.random.default_rng(3).integers(0, 256, (80, 80), dtype=np.uint8)
    m = _rotation(-31.0, 1.6, 30.0, 8.0)  # 1.6 source px per output px: 2×2 samples
    out, alpha = _warp(src, m, (30, 30))
    v, u = np.mgrid[0:30, 0:30].astype(float)
    ref = np.zeros((30, 30))
    for dv in (-0.25, 0.25):
        for du in (-0.25, 0.25):
            x = m[0, 0] * (u + du) + m[0, 1] * (v + dv) + m[0, 2]
            y = m[1, 0] * (u + du) + m[1, 1] * (v + dv) + m[1, 2]
            ref += ndimage.map_coordinates(src.astype(float), [y, x], order=1, mode="nearest") / 4
    inside = alpha == 255
    assert inside.sum() > 400
    assert np.abs(out[inside] - ref[inside]).max() <= 1


@pytest.mark.parametrize(
    "m",
    [
        [[1.0, 0.0, 0.3], [0.0, 1.0, -0.45]],  # native scale, subpixel shift: the vector lerp
        [[1.0, 0.0, -7.6], [0.0, 1.0, 3.2]],  # ... reaching past both edges
        [[0.7, 0.0, -3.0], [0.0, 0.8, 2.5]],  # enlarging
        [[1.0088, 0.0, 1.7], [0.0, 1.0088, -2.2]],  # the AIA layer of a default screenshot
        [[1.02, 0.0, -5.4], [0.0, 0.98, 0.2]],  # several runs of consecutive taps per row
        [[1.6, 0.0, -4.0], [0.0, 1.9, -6.5]],  # shrinking: 2×2 samples, partly outside
        [[-1.3, 0.0, 70.0], [0.0, 2.6, 1.0]],  # mirrored, 3×3 samples
        [[-1.0, 0.0, 80.4], [0.0, -1.0, 66.2]],  # 180°, subpixel shift: the source read backwards
    ],
)
def test_unrotated_matrix_takes_the_separable_path_with_the_same_result(m: object) -> None:
    # The general kernel is the reference: a shear of 1e-300 sends it there and changes nothing.
    from heliostat.imaging.warp.general import warp_general
    from heliostat.imaging.warp.sampling import flat_rows

    src = np.random.default_rng(4).integers(0, 256, (70, 90), dtype=np.uint8)[3:, 5:]
    mat = np.asarray(m, np.float64)
    out, alpha = _warp(src, mat, (60, 80))
    n = samples_per_axis(max(abs(mat[0, 0]), abs(mat[1, 1])))
    ref = np.empty_like(out)
    ref_alpha = np.empty_like(out)
    tilted = mat.copy()
    tilted[0, 1] = 1e-300
    flat, pitch = flat_rows(src)
    warp_general(src, flat, pitch, tilted, n, ref, ref_alpha, 2, 0, 0)
    assert np.array_equal(alpha, ref_alpha)
    assert (alpha == 255).sum() > 1000
    assert np.abs(out.astype(int) - ref).max() <= 1
    assert (out[alpha == 0] == 0).all()


def test_rotation_by_180_degrees_is_an_exact_flip() -> None:
    # cos and sin of 180° leave off-diagonal terms of 1e-16: still a flip, at copy speed.
    src = np.random.default_rng(6).integers(0, 256, (70, 90), dtype=np.uint8)[2:, 3:]
    h, w = src.shape
    m = _rotation(180.0, 1.0, w - 1, h - 1)
    assert m[0, 1] != 0.0
    out, alpha = _warp(src, m, src.shape)
    assert np.array_equal(out, src[::-1, ::-1])
    assert alpha.min() == 255


@pytest.mark.parametrize(("h", "chunks"), [(1, 1), (40, 3), (4096, 2), (1000, 16)])
@pytest.mark.parametrize("backwards", [False, True])
def test_row_chunks_cover_every_row_once_in_order(h: int, chunks: int, backwards: bool) -> None:
    from heliostat.imaging.threads import BLOCK_ROWS, row_order

    parts = [row_order(h, c, chunks, backwards) for c in range(chunks)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(h))
    for rows in parts:
        steps = np.diff(rows)
        # Within a block one row at a time, downwards or (backwards) upwards.
        assert set(steps[np.abs(steps) == 1].tolist()) <= ({-1} if backwards else {1})
    # Blocks are dealt in turn: chunk c's first block is block c (from the end if backwards).
    first = parts[min(1, chunks - 1)][0]
    block = first // BLOCK_ROWS
    blocks = -(-h // BLOCK_ROWS)
    assert block == (blocks - 1 - min(1, chunks - 1) if backwards else min(1, chunks - 1))


def test_a_one_chunk_warp_leaves_the_thread_count_as_it_was() -> None:
    import numba

    from heliostat.imaging.threads import threads

    before = numba.get_num_threads()
    src = np.arange(64, dtype=np.uint8).reshape(8, 8)
    _out, alpha = _warp(src, _rotation(10.0, 1.0, 4.0, 4.0), (8, 8))
    assert alpha.max() == 255
    assert threads(8, 8) == 1
    assert numba.get_num_threads() == before


@pytest.mark.parametrize("simd", [False, True])
def test_warp_is_the_same_on_one_thread_or_many(simd: bool) -> None:
    from heliostat.imaging.warp.general import simd_row, warp_general
    from heliostat.imaging.warp.native import SEPARABLE_ROW
    from heliostat.imaging.warp.sampling import flat_rows
    from heliostat.imaging.warp.separable import warp_separable

    src = np.random.default_rng(5).integers(0, 256, (300, 300), dtype=np.uint8)
    m = _rotation(10.0, 1.2, 30.0, -20.0)
    fns = simd_row(m, 2) if simd else (0, 0)
    sep = SEPARABLE_ROW if simd else 0
    if simd and not (fns[0] and sep):
        pytest.skip("this CPU has no AVX-512 VBMI")
    outs = []
    for chunks in (1, 3):
        out = np.empty((256, 256), np.uint8)
        alpha = np.empty_like(out)
        flat, pitch = flat_rows(src)
        warp_general(src, flat, pitch, m, 2, out, alpha, chunks, *fns)
        outs.append((out, alpha))
        out = np.empty((256, 256), np.uint8)
        alpha = np.empty_like(out)
        warp_separable(flat, pitch, 300, 1.2, 0.5, 1.2, -0.5, 2, out, alpha, chunks, sep)
        outs.append((out, alpha))
    for a, b in zip(outs[:2], outs[2:], strict=True):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def _general(src: np.ndarray, m: np.ndarray, shape: tuple[int, int], fns: tuple[int, int]) -> tuple:
    from heliostat.imaging.warp.general import warp_general
    from heliostat.imaging.warp.sampling import flat_rows

    out = np.empty(shape, np.uint8)
    alpha = np.empty(shape, np.uint8)
    flat, pitch = flat_rows(src)
    warp_general(src, flat, pitch, m, _side(m), out, alpha, 2, *fns)
    return out, alpha


def _side(m: np.ndarray) -> int:
    return samples_per_axis(max(math.hypot(m[0, 0], m[1, 0]), math.hypot(m[0, 1], m[1, 1])))


def _simd_or_skip(m: np.ndarray) -> tuple[int, int]:
    from heliostat.imaging.warp.general import simd_row
    from heliostat.imaging.warp.native import BILINEAR_ROW

    if not BILINEAR_ROW:
        pytest.skip("this CPU has no AVX-512 VBMI")
    return simd_row(m, _side(m))


@pytest.mark.parametrize(
    ("deg", "scale"),
    [
        *[(10.0, 1.0), (-7.4, 1.0), (-7.4, 0.45), (170.0, 1.0), (3.0, 1.9), (-12.0, 1.3)],
        *[(20.0, 2.6), (5.0, 3.5), (-4.0, 4.6)],  # 3 × 3 to 5 × 5 samples a pixel
    ],
)
def test_simd_rows_equal_the_numba_path_on_a_real_image(
    aia_image: np.ndarray, deg: float, scale: float
) -> None:
    # hs_bilinear_row (16-bit lanes, positions to 1/256 px a run of 64) against the scalar
    # fixed-point path, on a real AIA disc: within one grey level, alpha identical.
    src = aia_image
    h, w = src.shape
    shape = (int(h / scale) - 40, int(w / scale) - 40)
    m = _rotation(deg, scale, 0.0, 0.0)
    m[0, 2] = (w - 1) / 2 - (m[0, 0] * (shape[1] - 1) / 2 + m[0, 1] * (shape[0] - 1) / 2)
    m[1, 2] = (h - 1) / 2 - (m[1, 0] * (shape[1] - 1) / 2 + m[1, 1] * (shape[0] - 1) / 2)
    fns = _simd_or_skip(m)
    assert all(fns), "the SIMD kernels serve this matrix"
    fast, fast_alpha = _general(src, m, shape, fns)
    ref, ref_alpha = _general(src, m, shape, (0, 0))
    assert np.array_equal(fast_alpha, ref_alpha)
    assert (fast_alpha == 255).sum() > shape[0] * shape[1] // 2
    diff = np.abs(fast.astype(int) - ref)
    assert diff.max() <= 1
    assert (diff == 1).mean() < 0.2


def test_simd_rows_read_nothing_past_the_end_of_the_image() -> None:
    # A table load reaching past the image (rows near the bottom, or the last columns) faults.
    h, w = 120, 200
    with _guarded(h, w, 7) as src:
        for deg in (8.0, -8.0, 172.0):
            m = _rotation(deg, 1.0, 0.0, 0.0)
            m[0, 2] = (w - 1) / 2 - (m[0, 0] * (w - 1) / 2 + m[0, 1] * (h - 1) / 2)
            m[1, 2] = (h - 1) / 2 - (m[1, 0] * (w - 1) / 2 + m[1, 1] * (h - 1) / 2)
            fast, fast_alpha = _general(src, m, (h, w), _simd_or_skip(m))
            ref, ref_alpha = _general(src, m, (h, w), (0, 0))
            assert np.array_equal(fast_alpha, ref_alpha)
            assert np.abs(fast.astype(int) - ref).max() <= 1


def _separable(src: np.ndarray, m: list[list[float]], shape: tuple[int, int], fn: int) -> tuple:
    from heliostat.imaging.warp.sampling import flat_rows
    from heliostat.imaging.warp.separable import warp_separable

    out = np.empty(shape, np.uint8)
    alpha = np.empty(shape, np.uint8)
    n = samples_per_axis(max(abs(m[0][0]), abs(m[1][1])))
    flat, pitch = flat_rows(src)
    (ax, _, bx), (_, ay, by) = m
    warp_separable(flat, pitch, src.shape[1], ax, bx, ay, by, n, out, alpha, 2, fn)
    return out, alpha


def _separable_or_skip() -> int:
    from heliostat.imaging.warp.native import SEPARABLE_ROW

    if not SEPARABLE_ROW:
        pytest.skip("this CPU has no AVX-512 BW")
    return SEPARABLE_ROW


@pytest.mark.parametrize(
    "m",
    [
        [[1.0, 0.0, 0.3], [0.0, 1.0, -0.45]],  # native scale, subpixel shift: consecutive taps
        [[1.0088, 0.0, 1.7], [0.0, 1.0088, -2.2]],  # a default screenshot's AIA layer
        [[1.9, 0.0, 0.3], [0.0, 1.9, 0.2]],  # 2×2 samples, the widest window the kernel takes
        [[-1.0, 0.0, 699.3], [0.0, -1.0, 599.1]],  # 180°: both axes read backwards
        [[0.45, 0.0, -20.0], [0.0, 0.7, 10.0]],  # enlarging, reaching past the top left
        [[-1.37, 0.0, 720.0], [0.0, 1.21, -30.0]],  # one mirrored axis, past the edges
    ],
)
def test_simd_separable_rows_equal_the_numba_path_on_a_real_image(
    aia_image: np.ndarray, m: list[list[float]]
) -> None:
    # hs_separable_row (16-bit lanes, 1/16384 weights) against the float32 Numba passes on a real
    # AIA disc, edges included: within one grey level, alpha identical.
    fn = _separable_or_skip()
    src = aia_image[:, 3:]  # a strided view
    shape = (580, 640)
    fast, fast_alpha = _separable(src, m, shape, fn)
    ref, ref_alpha = _separable(src, m, shape, 0)
    assert np.array_equal(fast_alpha, ref_alpha)
    assert (fast_alpha == 255).sum() > shape[0] * shape[1] // 4
    diff = np.abs(fast.astype(int) - ref)
    assert diff.max() <= 1
    assert (diff == 1).mean() < 0.05
    assert (fast[fast_alpha == 0] == 0).all()


def test_simd_separable_rows_stream_a_large_frame_to_the_same_result() -> None:
    # From 8 MiB of output the rows go out by non-temporal stores through a row buffer.
    from heliostat.imaging.warp.separable import _STREAM_BYTES

    fn = _separable_or_skip()
    side = math.isqrt(_STREAM_BYTES) + 8
    src = np.random.default_rng(8).integers(0, 256, (side - 20, side + 50), dtype=np.uint8)
    m = [[1.0088, 0.0, 5.3], [0.0, 1.0088, 7.9]]
    fast, fast_alpha = _separable(src, m, (side, side), fn)
    ref, ref_alpha = _separable(src, m, (side, side), 0)
    assert np.array_equal(fast_alpha, ref_alpha)
    assert (fast_alpha == 0).any() and (fast_alpha == 255).mean() > 0.9
    assert np.abs(fast.astype(int) - ref).max() <= 1


@pytest.mark.parametrize("n", [1, 2])
def test_simd_separable_rows_keep_a_flat_image_flat(n: int) -> None:
    # Each row's and column's weights sum to exactly 1 in fixed point: no drift, at any level.
    fn = _separable_or_skip()
    for level in (0, 1, 128, 254, 255):
        src = np.full((90, 120), level, np.uint8)
        step = 1.0 if n == 1 else 1.73
        out, alpha = _separable(src, [[step, 0.0, 0.37], [0.0, step, 0.61]], (40, 60), fn)
        assert (out[alpha == 255] == level).all()


def test_simd_separable_rows_read_nothing_past_the_end_of_the_image() -> None:
    # A row load reaching past the image (the last rows or columns) faults.
    fn = _separable_or_skip()
    h, w = 120, 203
    with _guarded(h, w, 9) as src:
        for m in (
            [[1.0, 0.0, 0.4], [0.0, 1.0, 0.3]],
            [[1.9, 0.0, 10.2], [0.0, 1.9, 20.7]],
            [[-1.0, 0.0, w - 0.6], [0.0, -1.0, h - 0.7]],
            [[1.0088, 0.0, 1.7], [0.0, 1.0088, 1.2]],
        ):
            fast, fast_alpha = _separable(src, m, (h, w), fn)
            ref, ref_alpha = _separable(src, m, (h, w), 0)
            assert np.array_equal(fast_alpha, ref_alpha)
            assert np.abs(fast.astype(int) - ref).max() <= 1


def test_simd_paths_equal_the_numba_paths_on_random_warps(monkeypatch: pytest.MonkeyPatch) -> None:
    # Many small random cases through warp_affine with the C kernels and without: any shape from
    # 1 px, any angle (axis-aligned, mirrored, small and large rotations), shrinking and
    # enlarging, sources that end at a PROT_NONE page. Same alpha, within one grey level.
    from heliostat.imaging.warp import native

    if not (native.BILINEAR_ROW or native.SEPARABLE_ROW):
        pytest.skip("this CPU has no AVX-512")
    rng = np.random.default_rng(11)
    kernels = (native.BILINEAR_ROW, native.SEPARABLE_ROW)
    for case in range(150):
        h, w = (int(x) for x in rng.integers(1, 70, 2))
        ho, wo = (int(x) for x in rng.integers(1, 80, 2))
        deg = float(rng.choice([0.0, 180.0, 90.0, rng.uniform(-25, 25), rng.uniform(-180, 180)]))
        scale = float(rng.uniform(0.4, 2.6))
        m = _rotation(deg, scale, 0.0, 0.0)
        if rng.random() < 0.2:
            m[:, 0] = -m[:, 0]  # one mirrored axis
        # Output centre onto a random point near the source, so edges and interiors both occur.
        cx, cy = rng.uniform(-0.2, 1.2) * w, rng.uniform(-0.2, 1.2) * h
        m[0, 2] = cx - (m[0, 0] * (wo - 1) / 2 + m[0, 1] * (ho - 1) / 2)
        m[1, 2] = cy - (m[1, 0] * (wo - 1) / 2 + m[1, 1] * (ho - 1) / 2)
        with _guarded(h, w, case) as src:
            results = []
            for bilinear, separable in (kernels, (0, 0)):
                monkeypatch.setattr(native, "BILINEAR_ROW", bilinear)
                monkeypatch.setattr(native, "SEPARABLE_ROW", separable)
                results.append(_warp(src, m, (ho, wo)))
        (fast, fast_alpha), (ref, ref_alpha) = results
        where = f"case {case}: {h}x{w} -> {ho}x{wo}, {deg:.1f}°, scale {scale:.2f}"
        assert np.array_equal(fast_alpha, ref_alpha), where
        assert np.abs(fast.astype(int) - ref).max() <= 1, where

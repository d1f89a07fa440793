"""The Cython OpenJPEG kernel against glymur, and its handling of bad codestreams."""

from __future__ import annotations

import glymur
import numpy as np
import pytest

from heliostat.imaging._openjpeg import DecodeError, J2KDecoder

from .conftest import AIA_171, DATA

SWAP = sorted(DATA.glob("*SWAP*.jp2"))[0]


def test_aia_codestream_parameters() -> None:
    dec = J2KDecoder(AIA_171[0].read_bytes(), 0)
    assert (dec.width, dec.height) == (4096, 4096)
    assert dec.num_resolutions == 9
    assert dec.num_quality_layers == 8
    assert dec.precision == 8 and not dec.signed
    assert not dec.reversible
    assert dec.progression == 2  # RPCL
    assert (dec.tiles_x, dec.tiles_y) == (1, 1)


@pytest.mark.parametrize(("reduce", "box"), [(0, (1536, 1024, 2048, 1536)), (2, (0, 0, 4096, 4096)),
                                             (1, (1000, 3000, 3001, 4096))])  # fmt: skip
def test_matches_glymur(reduce: int, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    ours = J2KDecoder(AIA_171[0].read_bytes(), reduce).decode(x0, y0, x1, y1)
    step = 1 << reduce
    ref = glymur.Jp2k(str(AIA_171[0]))[y0:y1:step, x0:x1:step]
    assert ours.shape == ref.shape
    assert np.array_equal(ours, ref)


def test_reused_codec_gives_identical_regions() -> None:
    dec = J2KDecoder(SWAP.read_bytes(), 0)
    a = dec.decode(0, 0, 512, 512)
    dec.decode(512, 512, 1024, 1024)
    b = dec.decode(0, 0, 512, 512)
    assert np.array_equal(a, b)
    full = J2KDecoder(SWAP.read_bytes(), 0).decode(0, 0, 1024, 1024)
    assert np.array_equal(full[:512, :512], a)


def test_decode_into_preallocated_output() -> None:
    dec = J2KDecoder(SWAP.read_bytes(), 1)
    assert dec.output_shape(0, 0, 1024, 1024) == (512, 512)
    out = np.zeros((512, 512), np.uint8)
    assert dec.decode(0, 0, 1024, 1024, out) is out
    assert out.any()
    with pytest.raises(ValueError, match="out must be"):
        dec.decode(0, 0, 1024, 1024, np.zeros((10, 10), np.uint8))


def test_bad_regions_and_parameters() -> None:
    dec = J2KDecoder(SWAP.read_bytes(), 0)
    with pytest.raises(ValueError, match="outside"):
        dec.decode(0, 0, 2048, 10)
    with pytest.raises(ValueError, match="empty"):
        dec.decode(10, 10, 10, 20)
    with pytest.raises(DecodeError, match="resolutions"):
        J2KDecoder(SWAP.read_bytes(), 20)


def test_not_jpeg2000() -> None:
    with pytest.raises(DecodeError, match="not a JPEG 2000 file"):
        J2KDecoder(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(DecodeError, match="too short"):
        J2KDecoder(b"\x00\x00")


@pytest.mark.parametrize("keep", [0.5, 0.95])
def test_truncated_codestream_is_an_error(keep: float) -> None:
    data = SWAP.read_bytes()
    with pytest.raises(DecodeError):
        J2KDecoder(data[: int(len(data) * keep)], 0).decode(0, 0, 1024, 1024)


def test_corrupted_codestream_is_an_error_not_a_crash() -> None:
    data = bytearray(SWAP.read_bytes())
    start = data.find(b"\xff\x4f\xff\x51")
    data[start + 200 : start + 4000] = bytes(3800)  # wipe the headers after SIZ
    with pytest.raises(DecodeError):
        J2KDecoder(bytes(data), 0).decode(0, 0, 1024, 1024)

"""heliostat.archive.jp2write: box layout, XML header, codestream parameters, fidelity, safety."""

from __future__ import annotations

import itertools
import os
import struct
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, BinaryIO

import glymur
import numpy as np
import pytest

from heliostat.archive import jp2write
from heliostat.archive.jp2write import build_xml, default_levels, write_jp2

FITS = [
    ("SIMPLE", "1"),
    ("NAXIS", "2"),
    ("DATE-OBS", "2014-02-03T02:08:47.34"),
    ("WAVELNTH", "171"),
]
HV = {"HV_ROTATION": "0.00000", "HV_SUPPORTED": "TRUE"}


def _boxes(buf: bytes) -> list[tuple[bytes, bytes]]:
    out, off = [], 0
    while off < len(buf):
        length, kind = struct.unpack_from(">I4s", buf, off)
        header = 8
        if length == 1:
            length, header = struct.unpack_from(">Q", buf, off + 8)[0], 16
        elif length == 0:
            length = len(buf) - off
        out.append((kind, buf[off + header : off + length]))
        off += length
    return out


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth disc-like scene with texture: compresses like real imagery, not like noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = np.hypot(x - w / 2, y - h / 2) / (min(h, w) / 3)
    disc = np.where(r < 1, 120 + 60 * np.sqrt(np.clip(1 - r**2, 0, 1)), 40 / (r + 0.5))
    texture = 25 * np.sin(x / 7.0) * np.cos(y / 11.0)
    noise = np.random.default_rng(seed).normal(0, 2, (h, w))
    out: np.ndarray = np.clip(disc + texture + noise, 0, 255).astype(np.uint8)
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


def _cod(path: Path) -> glymur.codestream.CODsegment:
    cs = glymur.Jp2k(path).get_codestream(header_only=False)
    return next(s for s in cs.segment if s.marker_id == "COD")


def test_box_order_and_header_boxes(tmp_path: Path) -> None:
    path = write_jp2(tmp_path / "a.jp2", _image(96, 160), FITS, HV)
    boxes = _boxes(path.read_bytes())
    assert [k for k, _ in boxes] == [b"jP  ", b"ftyp", b"jp2h", b"xml ", b"jp2c"]
    assert boxes[0][1] == b"\r\n\x87\n"
    assert boxes[1][1][:4] == b"jp2 "
    inner = dict(_boxes(boxes[2][1]))
    height, width, nc, bpc = struct.unpack_from(">IIHB", inner[b"ihdr"])
    assert (height, width, nc, bpc) == (96, 160, 1, 7)  # BPC 7 = 8-bit unsigned
    assert struct.unpack(">BBBI", inner[b"colr"]) == (1, 0, 0, 17)  # enumerated greyscale
    assert boxes[4][1][:2] == b"\xff\x4f"  # SOC marker opens the codestream
    assert [b.box_id for b in glymur.Jp2k(path).box] == ["jP  ", "ftyp", "jp2h", "xml ", "jp2c"]


def test_xml_box_carries_keywords_history_comments_and_escaped_values(tmp_path: Path) -> None:
    tricky = "a < b && c > \"d\" 'e'"
    fits = [*FITS, ("OBJECT", tricky), ("HISTORY_X", "x")]
    path = write_jp2(
        tmp_path / "a.jp2",
        _image(64, 64),
        fits,
        {**HV, "HV_COMMENT": "made at <LMSAL> & elsewhere"},
        history=["step 1 <ok>", "step 2 & 3"],
        comments=["2001A&A...376..359H"],
    )
    xml = dict(_boxes(path.read_bytes()))[b"xml "].decode("utf-8")
    assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<meta>\n<fits>\n')
    root = ET.fromstring(xml)
    assert root.tag == "meta"
    fits_el, hv_el = root.find("fits"), root.find("helioviewer")
    assert fits_el is not None and hv_el is not None
    items = [(e.tag, e.text) for e in fits_el if e.tag not in ("history", "comment")]
    assert items == fits
    history = fits_el.find("history")
    comment = fits_el.find("comment")
    assert history is not None and comment is not None
    assert (history.text or "").strip().splitlines() == ["step 1 <ok>", "step 2 & 3"]
    assert (comment.text or "").strip() == "2001A&A...376..359H"
    assert {e.tag: e.text for e in hv_el}["HV_COMMENT"] == "made at <LMSAL> & elsewhere"


def test_build_xml_layout_matches_helioviewer_files() -> None:
    xml = build_xml({"NAXIS1": 4096, "CDELT1": 0.6}, {"HV_SUPPORTED": "TRUE"}, ["h"], ["c"])
    assert xml == (
        '<?xml version="1.0" encoding="UTF-8"?>\n<meta>\n<fits>\n'
        "<NAXIS1>4096</NAXIS1>\n<CDELT1>0.6</CDELT1>\n"
        "<history>\nh\n</history>\n<comment>\nc\n</comment>\n"
        "</fits>\n<helioviewer>\n<HV_SUPPORTED>TRUE</HV_SUPPORTED>\n</helioviewer>\n</meta>\n"
    )
    # No empty history/comment elements when there is nothing to say.
    assert "<history>" not in build_xml(FITS, HV)


@pytest.mark.parametrize(
    ("fits", "hv", "where"),
    [
        ([("BAD KEY", "1")], {}, "fits"),
        ([("2ND", "1")], {}, "fits"),
        ([("xmlns", "1")], {}, "fits"),
        ([("A", "bell\x07")], {}, "fits"),
        ([], {"<HV>": "1"}, "helioviewer"),
    ],
)
def test_build_xml_rejects_what_xml_cannot_carry(
    fits: list[tuple[str, str]], hv: dict[str, str], where: str
) -> None:
    with pytest.raises(ValueError, match=where):
        build_xml(fits, hv)


def test_codestream_follows_helioviewer_conventions(tmp_path: Path) -> None:
    path = write_jp2(tmp_path / "a.jp2", _image(256, 256), FITS, HV)
    cs = glymur.Jp2k(path).get_codestream(header_only=False)
    markers = [s.marker_id for s in cs.segment]
    siz = cs.segment[1]
    assert siz.marker_id == "SIZ"
    assert (siz.xsiz, siz.ysiz, siz.xtsiz, siz.ytsiz) == (256, 256, 256, 256)  # one tile
    assert siz.bitdepth == (8,) and siz.signed == (False,)
    assert markers.count("SOT") == 1
    assert "PLT" in markers
    cod = _cod(path)
    assert cod.layers == 8
    assert cod.prog_order == glymur.core.RPCL
    assert cod.num_res == 4  # 256 px: 4 levels leaves a 16-px smallest resolution
    assert cod.xform == glymur.core.WAVELET_XFORM_9X7_IRREVERSIBLE
    assert cod.code_block_size == (64, 64)
    assert [tuple(p) for p in cod.precinct_size] == [(128, 128)] * 5


def test_explicit_levels_and_layers(tmp_path: Path) -> None:
    path = write_jp2(tmp_path / "a.jp2", _image(128, 200), FITS, HV, levels=2, layers=3)
    cod = _cod(path)
    assert (cod.num_res, cod.layers) == (2, 3)


def test_default_levels_keep_the_smallest_resolution_useful() -> None:
    assert default_levels(4096, 4096) == 8  # Helioviewer's 8 levels: 16-px thumbnail
    assert default_levels(1024, 1024) == 6
    assert default_levels(4096, 40) == 1
    assert default_levels(16, 16) == 0


def test_layer_rates_descend_from_the_target(tmp_path: Path) -> None:
    ratios = jp2write.compression_ratios(0.5, 8, lossless=False)
    assert ratios[-1] == pytest.approx(16.0)  # 8 bits / 0.5 bpp
    assert ratios[0] == pytest.approx(16.0 * 64)
    assert all(a > b for a, b in itertools.pairwise(ratios))
    assert jp2write.compression_ratios(0.5, 3, lossless=True) == pytest.approx((16 * 64, 16, 1))


def test_lossy_decode_is_close_and_layers_refine(tmp_path: Path) -> None:
    img = _image(256, 320)
    path = write_jp2(tmp_path / "a.jp2", img, FITS, HV, bits_per_pixel=1.0)
    size_bpp = path.stat().st_size * 8 / img.size
    assert size_bpp < 1.15  # the rate is honoured (plus a few hundred bytes of header)
    jp2 = glymur.Jp2k(path)
    full = _psnr(jp2[:], img)
    assert full > 33
    # glymur passes .layer to OpenJPEG as the number of layers to decode (0 = all).
    jp2.layer = 1
    first = _psnr(jp2[:], img)
    jp2.layer = 4
    assert first < _psnr(jp2[:], img) < full
    assert first < full - 5  # the first layer alone is much coarser


def test_lossless_round_trips_exactly(tmp_path: Path) -> None:
    img = np.random.default_rng(3).integers(0, 256, (61, 97), dtype=np.uint8)
    path = write_jp2(tmp_path / "a.jp2", img, FITS, HV, lossless=True)
    assert np.array_equal(glymur.Jp2k(path)[:], img)
    cod = _cod(path)
    assert cod.xform == glymur.core.WAVELET_XFORM_5X3_REVERSIBLE
    assert cod.layers == 8


def test_non_contiguous_input(tmp_path: Path) -> None:
    img = np.random.default_rng(4).integers(0, 256, (80, 80), dtype=np.uint8)
    path = write_jp2(tmp_path / "a.jp2", img[::2, ::-1], FITS, HV, lossless=True)
    assert np.array_equal(glymur.Jp2k(path)[:], img[::2, ::-1])


def test_full_size_frame(tmp_path: Path) -> None:
    img = np.tile(_image(512, 512), (8, 8))
    path = write_jp2(tmp_path / "big.jp2", img, FITS, HV)
    assert 0.40 < path.stat().st_size * 8 / img.size < 0.52  # Helioviewer's ~0.5 bpp
    cod = _cod(path)
    assert cod.num_res == 8  # decomposition levels: 9 resolutions
    assert glymur.Jp2k(path)[::256, ::256].shape == (16, 16)


@pytest.mark.parametrize(
    ("data", "kwargs", "name"),
    [
        (np.zeros((4, 4, 1), np.uint8), {}, "data"),
        (np.zeros(16, np.uint8), {}, "data"),
        (np.zeros((16, 16), np.uint16), {}, "data"),
        (np.zeros((16, 16), np.float32), {}, "data"),
        (np.zeros((0, 16), np.uint8), {}, "data"),
        (np.zeros((16, 16), np.uint8), {"bits_per_pixel": 0}, "bits_per_pixel"),
        (np.zeros((16, 16), np.uint8), {"bits_per_pixel": -1.0}, "bits_per_pixel"),
        (np.zeros((16, 16), np.uint8), {"bits_per_pixel": 8}, "bits_per_pixel"),
        (np.zeros((16, 16), np.uint8), {"levels": 5}, "levels"),
        (np.zeros((16, 16), np.uint8), {"levels": -1}, "levels"),
        (np.zeros((16, 16), np.uint8), {"layers": 0}, "layers"),
    ],
)
def test_invalid_arguments_name_the_parameter(
    tmp_path: Path, data: np.ndarray, kwargs: dict[str, Any], name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        write_jp2(tmp_path / "a.jp2", data, FITS, HV, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_failure_leaves_no_temporary_files_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "a.jp2"
    target.write_bytes(b"previous version")

    def broken_copy(src: BinaryIO, dst: BinaryIO) -> None:
        dst.write(b"partial")
        dst.flush()
        raise OSError("disk full")

    monkeypatch.setattr("shutil.copyfileobj", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        write_jp2(target, _image(32, 32), FITS, HV)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jp2"]
    assert target.read_bytes() == b"previous version"


def test_encoder_failure_leaves_no_temporary_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_encoder(filename: Path, **kwargs: object) -> None:
        Path(filename).write_bytes(b"\xff\x4f half a codestream")
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr("glymur.Jp2k", broken_encoder)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        write_jp2(tmp_path / "a.jp2", _image(32, 32), FITS, HV)
    assert list(tmp_path.iterdir()) == []


def test_rewrite_replaces_and_respects_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_jp2(tmp_path / "a.jp2", _image(32, 32), FITS, HV)
        first = path.read_bytes()
        write_jp2(path, _image(32, 32, seed=1), FITS, HV, lossless=True)
    finally:
        os.umask(old)
    assert path.read_bytes() != first
    assert path.stat().st_mode & 0o777 == 0o644  # readable by the server, unlike mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jp2"]

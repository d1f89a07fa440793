"""Every real sample indexes with the right source, time and geometry; bad files are rejected."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from heliostat.archive import sources, times
from heliostat.archive.header import HeaderError, parse_xml, read_record
from heliostat.archive.jp2box import read_info
from heliostat.catalog.records import AU_M

from .conftest import DATA

# (file, source id, ISO time, width, cdelt1, rsun px, rotation)
EXPECTED = [
    ("2005_01_11__23_59_32_227__SOHO_MDI_MDI_continuum.jp2", 7, "2005-01-11T23:59:32.227000Z",
     1024, 1.9856373, 495.65612, 0.0),
    ("2010_12_06__18_56_41_105__SDO_HMI_HMI_continuum.jp2", 18, "2010-12-06T18:56:41.100000Z",
     4096, 0.6, None, 0.0),
    ("2013_06_12__00_01_34_351__PROBA2_SWAP_SWAP_174.jp2", 32, "2013-06-12T00:01:34.351000Z",
     1024, 3.16226783969, 945.010278166 / 3.16226783969, 0.0),
    ("2014_02_03__02_08_47_34__SDO_AIA_AIA_171.jp2", 10, "2014-02-03T02:08:47.340000Z",
     4096, 0.6, 1624.0422, 0.0),
    ("2023_12_01__00_06_07_373__SOHO_LASCO_C3_white-light.jp2", 5, "2023-12-01T00:06:07.373000Z",
     1024, 56.0, None, -7.42291),
    ("2024_04_16__13_00_13_908__SOHO_EIT_EIT_171.jp2", 0, "2024-04-16T13:00:13.908000Z",
     1024, 2.63, 367.44, 0.0),
]  # fmt: skip


@pytest.mark.parametrize(("name", "sid", "iso", "width", "cdelt", "rsun", "rot"), EXPECTED)
def test_real_samples(
    name: str, sid: int, iso: str, width: int, cdelt: float, rsun: float | None, rot: float
) -> None:
    rec = read_record(DATA / name, name)
    assert rec.source_id == sid
    assert times.iso(rec.time_us) == iso
    assert (rec.width, rec.height) == (width, width)
    assert rec.cdelt1 == pytest.approx(cdelt)
    assert rec.rotation == pytest.approx(rot)
    if rsun is not None:
        assert rec.rsun_px == pytest.approx(rsun, rel=1e-6)
    assert 0.95 * AU_M < rec.dsun < 1.05 * AU_M
    assert rec.scale == pytest.approx(rec.cdelt1 * rec.dsun / AU_M)
    assert rec.layering_order == sources.by_id(sid).layering_order


def test_every_sample_indexes() -> None:
    files = sorted(DATA.glob("*.jp2"))
    assert len(files) == 12
    for f in files:
        assert read_record(f, f.name).time_us > 0


def test_aia_geometry_matches_helioviewer() -> None:
    rec = read_record(DATA / EXPECTED[3][0], "x.jp2")
    # DSUN_OBS 1.4745431e11 m: normalised scale 0.6 * DSUN / AU.
    assert rec.dsun == pytest.approx(1.4745431e11)
    assert rec.scale == pytest.approx(0.6 * 1.4745431e11 / AU_M)
    assert (rec.ref_pixel_x, rec.ref_pixel_y) == (2048.5, 2048.5)


def test_hmi_placeholder_distance_falls_back_to_one_au() -> None:
    # This HMI file carries DSUN_OBS = 0.03 and RSUN_OBS = 0: both placeholders.
    rec = read_record(DATA / EXPECTED[1][0], "x.jp2")
    assert rec.dsun == AU_M
    assert rec.rsun_px == pytest.approx(959.644 / 0.6)


def test_eit_distance_derived_from_solar_radius() -> None:
    rec = read_record(DATA / EXPECTED[5][0], "x.jp2")
    assert rec.dsun == pytest.approx(959.644 / (367.44 * 2.63) * AU_M)


def _with_xml(tmp_path: Path, xml: str) -> Path:
    src = (DATA / EXPECTED[2][0]).read_bytes()
    info = read_info(DATA / EXPECTED[2][0])
    start = src.find(b"<meta")
    end = src.find(b"</meta>") + len(b"</meta>")
    box_start = src.rfind(b"xml ", 0, start) - 4
    new = xml.encode()
    box = (len(new) + 8).to_bytes(4, "big") + b"xml " + new
    out = src[:box_start] + box + src[end:]
    assert info.codestream_offset > end - 1
    p = tmp_path / "edited.jp2"
    p.write_bytes(out)
    return p


def _swap_xml() -> str:
    info = read_info(DATA / EXPECTED[2][0])
    return info.xml[info.xml.find("<meta") :]


def test_unescaped_characters_are_tolerated(tmp_path: Path) -> None:
    xml = _swap_xml().replace("<OBJECT>Sun EUV</OBJECT>", "<OBJECT>Sun & EUV < 2</OBJECT>")
    rec = read_record(_with_xml(tmp_path, xml), "x.jp2")
    assert rec.source_id == 32


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("<CDELT1>3.16226783969</CDELT1>", ""), "CDELT1 is missing"),
        (("<CDELT1>3.16226783969</CDELT1>", "<CDELT1>abc</CDELT1>"), "CDELT1 is not a number"),
        (("<NAXIS1>1024</NAXIS1>", "<NAXIS1>2048</NAXIS1>"), "disagrees with the codestream"),
        (("<DATE-OBS>2013-06-12T00:01:34.351</DATE-OBS>", ""), "no usable observation time"),
        (("<INSTRUME>SWAP</INSTRUME>", "<INSTRUME>NOPE</INSTRUME>"), "no data source"),
        (("<CRPIX1>512.500</CRPIX1>", ""), "CRPIX1/CRPIX2 are missing"),
        (("<DSUN_OBS>151912951632</DSUN_OBS>", "<DSUN_OBS>9e11</DSUN_OBS>"), "DSUN_OBS"),
    ],
)
def test_bad_headers_name_the_keyword(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    xml = _swap_xml()
    assert edit[0] in xml
    with pytest.raises((HeaderError, LookupError), match=message):
        read_record(_with_xml(tmp_path, xml.replace(*edit)), "x.jp2")


def test_not_a_jp2(tmp_path: Path) -> None:
    p = tmp_path / "fake.jp2"
    p.write_bytes(b"GIF89a" + bytes(100))
    with pytest.raises(HeaderError, match="not a JP2 file"):
        read_record(p, "fake.jp2")


def test_truncated_file(tmp_path: Path) -> None:
    p = tmp_path / "cut.jp2"
    p.write_bytes((DATA / EXPECTED[0][0]).read_bytes()[:3000])
    with pytest.raises(HeaderError, match="truncated"):
        read_record(p, "cut.jp2")


def test_malformed_xml() -> None:
    with pytest.raises(HeaderError, match="not well-formed"):
        parse_xml("<meta><fits><A>1</B></fits></meta>")
    with pytest.raises(HeaderError, match="no <fits>"):
        parse_xml("<meta><helioviewer/></meta>")


def test_units_in_degrees(tmp_path: Path) -> None:
    xml = _swap_xml().replace("<CUNIT1>arcsec</CUNIT1>", "<CUNIT1>deg</CUNIT1>")
    xml = xml.replace("<CDELT1>3.16226783969</CDELT1>", f"<CDELT1>{3.16226783969 / 3600}</CDELT1>")
    rec = read_record(_with_xml(tmp_path, xml), "x.jp2")
    assert math.isclose(rec.cdelt1, 3.16226783969, rel_tol=1e-9)


def test_truncated_codestream_is_rejected_at_ingest(tmp_path: Path) -> None:
    # The header survives, the pixels do not: an interrupted copy must not be indexed.
    p = tmp_path / "cut.jp2"
    data = (DATA / EXPECTED[3][0]).read_bytes()
    p.write_bytes(data[: len(data) - 1000])
    with pytest.raises(HeaderError, match="truncated file: the codestream box"):
        read_record(p, "cut.jp2")

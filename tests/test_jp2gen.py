"""heliostat.jp2gen: FITS → Helioviewer JP2, from real instrument headers with generated pixels."""

from __future__ import annotations

import importlib.util
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import glymur
import numpy as np
import numpy.typing as npt
import pytest
from astropy.io import fits  # type: ignore[import-untyped]

from heliostat.archive import naming, sources
from heliostat.archive.header import read_record
from heliostat.archive.jp2box import read_info
from heliostat.cli import main
from heliostat.demo import solar_disc
from heliostat.imaging._openjpeg import J2KDecoder
from heliostat.jp2gen import JP2GenError, Scaling, choose, convert, convert_many, iter_fits
from heliostat.jp2gen.scaling import AIA_TABLE

# SunPy's test data: real instrument headers (found without importing sunpy, which is slow).
_SUNPY = importlib.util.find_spec("sunpy")
assert _SUNPY is not None and _SUNPY.submodule_search_locations
SUNPY_TEST = Path(_SUNPY.submodule_search_locations[0]) / "data" / "test"
AIA_HEADER = SUNPY_TEST / "aia_171_level1.fits"  # resampled from 4096² to 128²
EIT_FITS = SUNPY_TEST / "EIT" / "efz20040301.000010_s.fits"
SWAP_HEADER = SUNPY_TEST / "SWAP" / "resampled0_swap.header"
HMI_FITS = SUNPY_TEST / "resampled_hmi.fits"

AIA171 = sources.by_keys("SDO", "AIA", "AIA", "171")
AIA193 = sources.by_keys("SDO", "AIA", "AIA", "193")
EIT195 = sources.by_keys("SOHO", "EIT", "EIT", "195")
HMI_MAG = sources.by_keys("SDO", "HMI", "HMI", "magnetogram")
HMI_INT = sources.by_keys("SDO", "HMI", "HMI", "continuum")
# Geometry keywords a produced file must carry unchanged.
GEOMETRY = ("CDELT1", "CDELT2", "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2", "DSUN_OBS", "DATE-OBS")

pytestmark = pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")


def _header_for(path: Path, size: int) -> fits.Header:
    """A real instrument header, rescaled to a size×size image of the same field of view."""
    hdr = fits.Header.fromtextfile(path) if path.suffix == ".header" else fits.getheader(path)
    scale = hdr["NAXIS1"] / size
    for axis in ("1", "2"):
        hdr["CDELT" + axis] *= scale
        hdr["CRPIX" + axis] = (hdr["CRPIX" + axis] - 0.5) / scale + 0.5
    for key in ("BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "BLANK", "BSCALE", "BZERO"):
        hdr.remove(key, ignore_missing=True)
    return hdr


def _disc_dn(hdr: fits.Header, size: int, channel: int, dn_per_s: float) -> npt.NDArray[np.int16]:
    """solar_disc pixels turned back into realistic DN (int16), FITS row order (bottom first)."""
    cdelt = hdr["CDELT1"]
    rsun_px = hdr.get("RSUN_OBS", hdr.get("RSUN_ARC", 960.0)) / cdelt
    centre = (
        hdr["CRPIX1"] - 1 - hdr["CRVAL1"] / cdelt,
        size - hdr["CRPIX2"] + hdr["CRVAL2"] / cdelt,
    )
    img = solar_disc(size, rsun_px=rsun_px, center=centre, channel=channel, seed=7)
    # solar_disc stores EUV intensity in log space: 0.245..167 × quiet Sun over bytes 0..255.
    rel = 0.245 * 10 ** (img / 255.0 * math.log10(167 / 0.245))
    dn: npt.NDArray[np.int16] = np.clip(rel * dn_per_s * hdr.get("EXPTIME", 1.0), 0, 16383)
    return dn.astype(np.int16)[::-1]


def _write(path: Path, data: np.ndarray, hdr: fits.Header, *, rice: bool = False) -> Path:
    if rice:
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, hdr, "RICE_1")]).writeto(path)
    else:
        fits.PrimaryHDU(data, hdr).writeto(path)
    return path


def _xml(path: Path) -> ET.Element:
    return ET.fromstring(read_info(path).xml)


def _decode(path: Path) -> np.ndarray:
    info = read_info(path)
    out: np.ndarray = J2KDecoder(path.read_bytes(), 0).decode(0, 0, info.width, info.height)
    return out


def _cod(path: Path) -> glymur.codestream.CODsegment:
    cs = glymur.Jp2k(path).get_codestream(header_only=False)
    return next(s for s in cs.segment if s.marker_id == "COD")


# --- scaling ---------------------------------------------------------------------------------


def test_aia_171_special_case_at_known_inputs() -> None:
    s = choose(AIA171, np.zeros((2, 2), np.float32), exptime=2.0)
    assert (s.label, s.dmin, s.dmax) == ("sqrt(img-5)", 6.0, 1605.0)
    # DN over EXPTIME 2: 6 DN/s and below → 0; 405 → sqrt(400)=20 → (20-1)·255.999/39 = 124.7.
    raw = np.array([[0, 12, 810, 3210, 1e6, np.nan]])
    assert s.to_bytes(raw).tolist() == [[0, 0, 124, 255, 255, 0]]


def test_aia_171_matches_the_idl_expression() -> None:
    img = np.random.default_rng(1).uniform(-10, 3000, 100_000)
    ours = choose(AIA171, img, exptime=1.0).to_bytes(img).astype(int)
    idl = np.floor((np.clip(np.sqrt(np.maximum(img - 5, 0.1)), 1, 40) - 1) * 255.999 / 39)
    # float32 against float64: only values within rounding of a byte boundary may differ.
    assert np.abs(ours - idl).max() <= 1
    assert np.mean(ours == idl) > 0.999


def test_aia_193_is_log10_between_20_and_2500_dn_per_s() -> None:
    s = choose(AIA193, np.zeros((1, 1)), exptime=2.0)
    assert (s.label, s.dmin, s.dmax) == ("log10", 20.0, 2500.0)
    dn = 2.0 * np.array([[10, 20, math.sqrt(20 * 2500), 2500, 9000]])
    assert s.to_bytes(dn).tolist() == [[0, 0, 127, 255, 255]]


@pytest.mark.parametrize("wavelength", sorted(AIA_TABLE))
def test_every_aia_channel_pins_its_table_range(wavelength: str) -> None:
    dmin, dmax, fn = AIA_TABLE[wavelength]
    s = choose(sources.by_keys("SDO", "AIA", "AIA", wavelength), np.zeros(1), exptime=3.0)
    assert (s.function, s.dmin, s.dmax, s.exptime) == (fn, dmin, dmax, 3.0)
    assert s.to_bytes(3.0 * np.array([dmin, dmax])).tolist() == [0, 255]


def test_aia_needs_exptime() -> None:
    with pytest.raises(ValueError, match="EXPTIME"):
        choose(AIA193, np.zeros(4), exptime=None)


def test_unknown_instrument_uses_the_percentile_default() -> None:
    data = np.arange(10_000, dtype=np.float64).reshape(100, 100)
    data[0, :50] = np.nan  # missing pixels neither count nor break the scaling
    s = choose(EIT195, data, exptime=13.0)
    valid = data[np.isfinite(data)]
    lo, hi = np.percentile(valid, [0.5, 99.5])
    assert (s.function, s.exptime) == ("linear", None)
    assert (s.dmin, s.dmax) == pytest.approx((lo, hi))
    out = s.to_bytes(data)
    assert out[0, 0] == 0 and out[-1, -1] == 255
    assert out[50, 0] == math.floor((data[50, 0] - lo) * 255.999 / (hi - lo))


def test_hmi_rules() -> None:
    mag = choose(HMI_MAG, np.zeros(1), exptime=None)
    assert (mag.function, mag.dmin, mag.dmax) == ("linear", -250.0, 250.0)
    assert mag.to_bytes(np.array([-1000.0, 0.0, 1000.0])).tolist() == [0, 127, 255]
    cont = choose(HMI_INT, np.array([np.nan, 100.0, 52_000.0]), exptime=None)
    assert (cont.dmin, cont.dmax) == (0.0, 52_000.0)


def test_lookup_table_path_equals_direct_path() -> None:
    s = Scaling("log10", 3.0, 9000.0, exptime=1.7)
    raw = np.random.default_rng(2).integers(-32768, 32767, (64, 64), dtype=np.int16)
    raw[5, 5] = -32768
    big_endian = raw.astype(">i2")  # as FITS stores it
    direct = s.to_bytes(raw.astype(np.float64))
    direct[5, 5] = 0  # BLANK is missing → byte 0
    assert np.array_equal(s.to_bytes(big_endian[::-1], blank=-32768), direct[::-1])
    u8 = raw.astype(np.uint8)
    assert np.array_equal(s.to_bytes(u8), s.to_bytes(u8.astype(np.float32)))


# --- one full-size AIA conversion ------------------------------------------------------------


@pytest.fixture(scope="module")
def aia_4096(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, fits.Header, np.ndarray]:
    hdr = _header_for(AIA_HEADER, 4096)
    hdr["R_SUN"] = hdr["RSUN_OBS"] / hdr["CDELT1"]
    dn = _disc_dn(hdr, 4096, AIA171.id, 400.0)
    path = _write(tmp_path_factory.mktemp("fits") / "aia_171.fits", dn, hdr)
    return path, fits.getheader(path), dn


def test_aia_4096_full_conversion(
    aia_4096: tuple[Path, fits.Header, np.ndarray], tmp_path: Path
) -> None:
    path, hdr, dn = aia_4096
    result = convert(path, tmp_path)
    assert not result.skipped
    assert result.source == AIA171
    assert set(result.seconds) == {"read", "scale", "encode", "total"}

    # Name and folder from the header's source and DATE-OBS.
    rel = result.output.relative_to(tmp_path).as_posix()
    assert rel == "AIA/2011/02/15/171/2011_02_15__00_00_00_340__SDO_AIA_AIA_171.jp2"
    assert rel == naming.archive_path(AIA171, result.time_us)

    # Our reader sees the FITS geometry.
    rec = read_record(result.output, rel)
    assert (rec.source_id, rec.width, rec.height) == (AIA171.id, 4096, 4096)
    assert (rec.cdelt1, rec.cdelt2) == pytest.approx((hdr["CDELT1"], hdr["CDELT2"]))
    assert (rec.crpix1, rec.crpix2) == (hdr["CRPIX1"], hdr["CRPIX2"])
    assert (rec.crval1, rec.crval2) == pytest.approx((hdr["CRVAL1"], hdr["CRVAL2"]))
    assert rec.dsun == pytest.approx(hdr["DSUN_OBS"])
    assert rec.rotation == pytest.approx(hdr["CROTA2"])
    assert rec.time_us == result.time_us

    # Every keyword in FITS order, HISTORY/COMMENT kept, the Helioviewer section filled in.
    root = _xml(result.output)
    fits_el = root.find("fits")
    assert fits_el is not None
    tags = [e.tag for e in fits_el if e.tag not in ("history", "comment")]
    assert tags == [k for k in hdr if k not in ("HISTORY", "COMMENT", "")]
    for key in GEOMETRY:
        assert fits_el.findtext(key) == str(hdr[key]).strip()
    assert fits_el.findtext("INSTRUME") == "AIA_3"
    assert fits_el.findtext("SIMPLE") == "1"
    assert "2001A&A...376..359H" in (fits_el.findtext("comment") or "")
    hv_el = root.find("helioviewer")
    assert hv_el is not None
    hv = {e.tag: e.text or "" for e in hv_el}
    assert hv["HV_IMG_FUNCTION"] == "sqrt(img-5)"
    assert (hv["HV_IMG_DMIN"], hv["HV_IMG_DMAX"]) == ("6", "1605")
    assert hv["HV_SUPPORTED"] == "TRUE"
    assert hv["HV_ROTATION"] == f"{hdr['CROTA2']:.5f}"
    assert hv["HV_JP2GEN_VERSION"].startswith("heliostat-")
    assert "aia_171.fits" in hv["HV_COMMENT"]

    # Helioviewer codestream: 8 levels, 8 layers, RPCL, irreversible 9/7.
    cod = _cod(result.output)
    assert (cod.num_res, cod.layers, cod.prog_order) == (8, 8, glymur.core.RPCL)  # levels
    assert cod.xform == glymur.core.WAVELET_XFORM_9X7_IRREVERSIBLE

    # Lossy pixels: close to the scaled FITS image, stored top row first.
    expected = result.scaling.to_bytes(dn) if result.scaling else None
    assert expected is not None
    decoded = _decode(result.output).astype(np.float64)
    flipped_err = np.mean(np.abs(decoded - expected[::-1]))
    assert flipped_err < 3
    assert np.mean(np.abs(decoded - expected)) > 5 * flipped_err


# --- other instruments, encodings and inputs --------------------------------------------------


def test_lossless_round_trip_keeps_orientation(tmp_path: Path) -> None:
    hdr = _header_for(AIA_HEADER, 512)
    hdr["WAVELNTH"] = 193
    dn = _disc_dn(hdr, 512, AIA193.id, 120.0)
    dn[:8, :8] = 16000  # a bright mark at FITS row 0, the bottom of the image
    path = _write(tmp_path / "aia193.fits", dn, hdr)
    result = convert(path, tmp_path / "archive", lossless=True)
    assert result.source == AIA193 and result.scaling is not None
    assert result.scaling.label == "log10"
    decoded = _decode(result.output)
    assert np.array_equal(decoded, result.scaling.to_bytes(dn)[::-1])
    assert decoded[-1, 0] == 255 and decoded[0, 0] < 255
    assert _cod(result.output).xform == glymur.core.WAVELET_XFORM_5X3_REVERSIBLE


@pytest.mark.parametrize("kind", ["gzip", "rice"])
def test_compressed_inputs_match_plain(kind: str, tmp_path: Path) -> None:
    hdr = _header_for(AIA_HEADER, 256)
    dn = _disc_dn(hdr, 256, AIA171.id, 400.0)
    plain = convert(_write(tmp_path / "a.fits", dn, hdr), tmp_path / "plain", lossless=True)
    if kind == "gzip":
        other_path = _write(tmp_path / "a.fits.gz", dn, hdr)
    else:
        other_path = _write(tmp_path / "a_rice.fits", dn, hdr, rice=True)
        assert isinstance(fits.open(other_path)[1], fits.CompImageHDU)
    other = convert(other_path, tmp_path / kind, lossless=True)
    assert other.output.name == plain.output.name
    assert np.array_equal(_decode(other.output), _decode(plain.output))
    rec = read_record(other.output, other.output.name)
    assert rec.crpix1 == hdr["CRPIX1"]
    assert rec.cdelt1 == pytest.approx(hdr["CDELT1"])


def test_real_eit_file_uses_its_own_pixels_and_the_default_rule(tmp_path: Path) -> None:
    result = convert(EIT_FITS, tmp_path)
    assert result.source == EIT195
    assert result.output.name == "2004_03_01__00_00_10_515__SOHO_EIT_EIT_195.jp2"
    assert result.scaling is not None and result.scaling.function == "linear"
    data = fits.getdata(EIT_FITS)
    lo, hi = np.percentile(data[np.isfinite(data)], [0.5, 99.5])
    assert (result.scaling.dmin, result.scaling.dmax) == pytest.approx((lo, hi))
    rec = read_record(result.output, "x")
    hdr = fits.getheader(EIT_FITS)
    assert (rec.cdelt1, rec.crpix1, rec.crpix2) == (hdr["CDELT1"], hdr["CRPIX1"], hdr["CRPIX2"])
    fits_el = _xml(result.output).find("fits")
    assert fits_el is not None
    assert "Version 4.0, 2001 December 10" in (fits_el.findtext("history") or "")
    assert "LEB_PROC = 12 (Rice)" in (fits_el.findtext("comment") or "")


def test_swap_header_with_generated_pixels(tmp_path: Path) -> None:
    hdr = _header_for(SWAP_HEADER, 1024)
    dn = _disc_dn(hdr, 1024, sources.by_keys("PROBA2", "SWAP", "SWAP", "174").id, 20.0)
    result = convert(_write(tmp_path / "swap.fits", dn.astype(np.float32), hdr), tmp_path)
    assert result.output.name == "2011_10_04__23_56_41_222__PROBA2_SWAP_SWAP_174.jp2"
    rec = read_record(result.output, "x")
    assert rec.dsun == hdr["DSUN_OBS"]
    assert rec.rsun_px == pytest.approx(hdr["RSUN_ARC"] / hdr["CDELT1"])
    assert _cod(result.output).num_res == 6  # decomposition levels for 1024 px


def test_real_hmi_file_keeps_its_rotation(tmp_path: Path) -> None:
    result = convert(HMI_FITS, tmp_path)
    assert result.source == HMI_INT
    assert result.scaling is not None and result.scaling.dmin == 0.0
    assert result.scaling.dmax == pytest.approx(np.nanmax(fits.getdata(HMI_FITS)))
    rec = read_record(result.output, "x")
    assert rec.rotation == pytest.approx(179.929779)
    hv = _xml(result.output).find("helioviewer")
    assert hv is not None and hv.findtext("HV_ROTATION") == "179.92978"


def test_keywords_that_are_not_xml_names(tmp_path: Path) -> None:
    path = _small_aia(tmp_path / "a.fits", **{"HIERARCH DET TEMP C": -70.5, "DATE-OBS": None})
    hdr = fits.getheader(path)
    hdr["DATE_OBS"] = "2011-02-15T00:00:00.34"  # the underscore spelling is read as well
    fits.writeto(path, fits.getdata(path), hdr, overwrite=True)
    fits_el = _xml(convert(path, tmp_path).output).find("fits")
    assert fits_el is not None
    assert fits_el.findtext("DET_TEMP_C") == "-70.5"
    assert fits_el.findtext("DATE_OBS") == "2011-02-15T00:00:00.34"


# --- errors and resuming ----------------------------------------------------------------------


def _small_aia(path: Path, **changes: object) -> Path:
    hdr = _header_for(AIA_HEADER, 64)
    for key, value in changes.items():
        if value is None:
            del hdr[key]
        else:
            hdr[key] = value
    return _write(path, _disc_dn(_header_for(AIA_HEADER, 64), 64, AIA171.id, 400.0), hdr)


@pytest.mark.parametrize(
    ("missing", "message"),
    [("DATE-OBS", "DATE-OBS"), ("CDELT1", "CDELT1 is missing"), ("EXPTIME", "EXPTIME")],
)
def test_missing_keyword_is_named(missing: str, message: str, tmp_path: Path) -> None:
    path = _small_aia(tmp_path / "a.fits", **{missing: None})
    with pytest.raises(JP2GenError, match=message) as info:
        convert(path, tmp_path / "archive")
    assert "a.fits" in str(info.value)
    assert not (tmp_path / "archive").exists() or not any((tmp_path / "archive").rglob("*.jp2"))


def test_no_image_hdu_and_corrupt_files(tmp_path: Path) -> None:
    table = fits.BinTableHDU.from_columns([fits.Column("x", "E", array=np.zeros(3))])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(tmp_path / "table.fits")
    with pytest.raises(JP2GenError, match="no HDU holds 2-D image data"):
        convert(tmp_path / "table.fits", tmp_path)
    (tmp_path / "junk.fits").write_bytes(os.urandom(4000))
    with pytest.raises(JP2GenError, match="corrupt or unreadable FITS"):
        convert(tmp_path / "junk.fits", tmp_path)
    good = _small_aia(tmp_path / "good.fits").read_bytes()
    (tmp_path / "cut.fits").write_bytes(good[: len(good) - 4000])
    with pytest.raises(JP2GenError, match="corrupt or unreadable FITS"):
        convert(tmp_path / "cut.fits", tmp_path)


def test_resume_skips_valid_outputs_and_redoes_broken_ones(tmp_path: Path) -> None:
    path = _small_aia(tmp_path / "a.fits")
    first = convert(path, tmp_path / "archive")
    mtime = first.output.stat().st_mtime_ns
    again = convert(path, tmp_path / "archive")
    assert again.skipped and again.output == first.output and again.scaling is None
    assert first.output.stat().st_mtime_ns == mtime
    first.output.write_bytes(first.output.read_bytes()[:100])  # a damaged earlier output
    redone = convert(path, tmp_path / "archive")
    assert not redone.skipped
    read_record(redone.output, "x")
    assert not convert(path, tmp_path / "archive", overwrite=True).skipped


def test_batch_quarantines_bad_files_and_resumes(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    good = [
        _small_aia(inbox / f"aia_{i}.fits", **{"DATE-OBS": f"2011-02-15T00:0{i}:00.34"})
        for i in range(3)
    ]
    (inbox / "corrupt.fits").write_bytes(b"SIMPLE  =                    T" + os.urandom(3000))
    fits.HDUList([fits.PrimaryHDU()]).writeto(inbox / "empty.fits")
    files = list(iter_fits([inbox]))
    assert len(files) == 5
    archive, quarantine = tmp_path / "archive", tmp_path / "quarantine"

    report = convert_many(files, archive, workers=2, quarantine=quarantine, progress=False)
    assert sorted(r.fits_path.name for r in report.converted) == [p.name for p in good]
    assert {f.path.name for f in report.failed} == {"corrupt.fits", "empty.fits"}
    reasons = {f.path.name: f.reason for f in report.failed}
    assert "no HDU holds 2-D image data" in reasons["empty.fits"]
    assert "corrupt or unreadable FITS" in reasons["corrupt.fits"]
    for f in report.failed:
        assert f.quarantined == quarantine / f.path.name and f.quarantined.exists()
        assert not f.path.exists()
        assert f.reason in f.quarantined.with_name(f.path.name + ".reason.txt").read_text()
    assert len(list(archive.rglob("*.jp2"))) == 3
    assert not [p for p in archive.rglob("*") if p.name.startswith(".")]  # no partial files

    again = convert_many(list(iter_fits([inbox])), archive, workers=1, progress=False)
    assert (len(again.converted), len(again.skipped), len(again.failed)) == (0, 3, 0)


def test_batch_leaves_inputs_in_place_when_the_failure_is_not_theirs(tmp_path: Path) -> None:
    path = _small_aia(tmp_path / "a.fits")
    (tmp_path / "archive").write_text("a file where the archive folder should be")
    report = convert_many(
        [path], tmp_path / "archive", workers=1, quarantine=tmp_path / "q", progress=False
    )
    assert [f.path for f in report.failed] == [path]
    assert report.failed[0].quarantined is None and path.exists()
    assert "a.fits" in report.failed[0].reason
    with pytest.raises(ValueError, match="workers"):
        convert_many([path], tmp_path, workers=0)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _small_aia(inbox / "a.fits")
    (inbox / "bad.fits").write_bytes(b"not fits")
    argv = ["jp2gen", str(inbox), "--archive", str(tmp_path / "archive"), "--workers", "1"]
    code = main([*argv, "--quarantine", str(tmp_path / "q"), "--lossless", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "converted 1, skipped 0, failed 1" in out
    assert "bad.fits" in err and (tmp_path / "q" / "bad.fits").exists()
    assert main([*argv, "--quiet"]) == 0
    assert "converted 0, skipped 1, failed 0" in capsys.readouterr().out

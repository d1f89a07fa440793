"""heliostat.demo: synthetic solar images and the demo archive."""

from __future__ import annotations

import math
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import glymur
import numpy as np
import pytest

from heliostat.archive import naming, sources, times
from heliostat.demo import aia_header, build_demo_archive, solar_disc

SAMPLES = Path(__file__).parent / "data" / "jp2"
AIA_SAMPLE = SAMPLES / "2014_02_03__02_08_47_34__SDO_AIA_AIA_171.jp2"
START = times.parse("2014-02-03T00:00:00")
AIA_171, AIA_193, AIA_304, HMI_CONTINUUM = 10, 11, 13, 18
SYNODIC_EQUATOR_DEG_PER_DAY = 14.713 - 0.9856


def _radius(size: int, center: tuple[float, float]) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    r: np.ndarray = np.hypot(x - center[0], y - center[1])
    return r


def _xml(path: Path) -> ET.Element:
    data = path.read_bytes()
    start = data.index(b"<?xml")
    return ET.fromstring(data[start : data.index(b"</meta>") + 7])


def _fits(path: Path) -> dict[str, str]:
    fits = _xml(path).find("fits")
    assert fits is not None
    return {e.tag: (e.text or "").strip() for e in fits}


@pytest.mark.parametrize("channel", [AIA_171, AIA_193, AIA_304, HMI_CONTINUUM, 15])
def test_disc_is_where_asked(channel: int) -> None:
    center, rsun = (170.3, 140.8), 90.0
    img = solar_disc(320, rsun_px=rsun, center=center, channel=channel, seed=1)
    assert img.shape == (320, 320) and img.dtype == np.uint8
    r = _radius(320, center)
    inside = img[r < 0.9 * rsun].mean()
    far = img[r > 1.4 * rsun].mean()
    assert inside > 30 and inside > 5 * max(far, 1)
    # The disc centre is where asked: the bright area is centred on it, not on the image.
    ys, xs = np.nonzero(img > (inside + far) / 2)
    assert xs.mean() == pytest.approx(center[0], abs=3)
    assert ys.mean() == pytest.approx(center[1], abs=3)


def test_continuum_limb_is_within_a_pixel() -> None:
    center, rsun = (255.5, 250.3), 200.4
    img = solar_disc(512, rsun_px=rsun, center=center, channel=HMI_CONTINUUM, seed=2)
    row = img[250].astype(float)  # 0.3 px from the centre row: the chord is R to 0.0002 px
    threshold = row[int(center[0] + rsun) - 3] / 2
    west = np.nonzero(row[256:] >= threshold)[0].max() + 256 + 0.5  # edge of last bright pixel
    east = np.nonzero(row[:256] >= threshold)[0].min() - 0.5
    assert west == pytest.approx(center[0] + rsun, abs=1.0)
    assert east == pytest.approx(center[0] - rsun, abs=1.0)
    assert row[int(center[0] + rsun) + 2] == 0  # nothing off the disc in white light


def test_euv_limb_brightening_peaks_at_the_limb() -> None:
    center, rsun = (300.7, 280.2), 230.0
    img = solar_disc(600, rsun_px=rsun, center=center, channel=AIA_171, seed=3).astype(float)
    r = _radius(600, center)
    edges = np.arange(0, 290.5, 0.5)
    which = np.digitize(r.ravel(), edges)
    profile = np.bincount(which, img.ravel(), len(edges) + 1)[1:-1] / np.maximum(
        np.bincount(which, minlength=len(edges) + 1)[1:-1], 1
    )
    mids = edges[:-1] + 0.25
    peak = mids[np.argmax(profile)]
    assert peak == pytest.approx(rsun, abs=1.0)
    centre_level = profile[mids < 0.3 * rsun].mean()
    assert profile.max() > 1.3 * centre_level  # brighter at the limb than at disc centre
    assert profile[np.searchsorted(mids, 1.1 * rsun)] > 10  # off-limb corona
    assert profile[np.searchsorted(mids, 1.05 * rsun)] > profile[np.searchsorted(mids, 1.2 * rsun)]


def test_same_arguments_same_image_and_frames_evolve_slowly() -> None:
    def frame(time_s: float) -> np.ndarray:
        return solar_disc(
            256, rsun_px=100.0, center=(127.5, 127.5), channel=AIA_193, seed=5, time_s=time_s
        ).astype(int)

    a = frame(0)
    assert np.array_equal(a, frame(0))
    change = np.abs(a - frame(900)).mean()
    assert 0.2 < change < 6  # 15 minutes: a little different
    assert np.abs(a - frame(6 * 86400)).mean() > 2 * change  # days: regions have moved on


def test_regions_rotate_at_the_solar_rate() -> None:
    size, rsun, center, hours = 1024, 400.0, (511.5, 511.5), 9
    a = solar_disc(size, rsun_px=rsun, center=center, channel=AIA_171, seed=7).astype(float)
    b = solar_disc(
        size, rsun_px=rsun, center=center, channel=AIA_171, seed=7, time_s=hours * 3600
    ).astype(float)
    h, cx, cy = int(0.3 * rsun), int(center[0]), int(center[1])
    patch = a[cy - h : cy + h, cx - h : cx + h].ravel()
    corr = [
        np.corrcoef(patch, b[cy - h : cy + h, cx - h + s : cx + h + s].ravel())[0, 1]
        for s in range(-10, 60)
    ]
    shift = int(np.argmax(corr)) - 10
    # Near disc centre a feature moves R·Δλ westward (to the right).
    expected = rsun * math.sin(math.radians(SYNODIC_EQUATOR_DEG_PER_DAY * hours / 24))
    assert shift == pytest.approx(expected, abs=3)


def test_solar_disc_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="channel"):
        solar_disc(64, rsun_px=20, center=(32, 32), channel=5, seed=0)  # LASCO C3
    with pytest.raises(ValueError, match="rsun_px"):
        solar_disc(64, rsun_px=0, center=(32, 32), channel=AIA_171, seed=0)
    with pytest.raises(ValueError, match="size"):
        solar_disc(0, rsun_px=20, center=(32, 32), channel=AIA_171, seed=0)


def test_aia_header_sets_times_and_wavelength_and_keeps_geometry() -> None:
    template = list(_fits(AIA_SAMPLE).items())
    template = [(k, v) for k, v in template if k not in ("history", "comment")]
    t = times.parse("2014-02-03T05:15:00.25")
    h = aia_header(template, wavelength=193, time_us=t)
    d = dict(h)
    assert d["DATE-OBS"] == d["DATE_OBS"] == "2014-02-03T05:15:00.250"
    assert d["T_OBS"] == "2014-02-03T05:15:01.25Z"  # mid-exposure
    assert (d["WAVELNTH"], d["WAVE_STR"], d["INSTRUME"]) == ("193", "193_THIN", "AIA_2")
    assert float(d["EXPTIME"]) == pytest.approx(2.0)
    for key in ("CDELT1", "CDELT2", "CRPIX1", "CRPIX2", "R_SUN", "RSUN_OBS", "DSUN_OBS"):
        assert float(d[key]) == pytest.approx(float(dict(template)[key]))
    assert "CHECKSUM" not in d and "DATAMEAN" not in d
    assert [k for k, _ in h] == [k for k, _ in template if k in d]  # order kept

    small = dict(aia_header(template, wavelength=304, time_us=t, size=1024))
    assert float(small["CDELT1"]) == pytest.approx(2.4)
    assert float(small["CRPIX1"]) == pytest.approx(512.5)
    assert float(small["R_SUN"]) == pytest.approx(1624.0422 / 4)
    assert small["NAXIS1"] == "1024"
    with pytest.raises(ValueError, match="wavelength"):
        aia_header(template, wavelength=195, time_us=t)


@pytest.fixture(scope="module")
def demo_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    dest = tmp_path_factory.mktemp("archive")
    files = build_demo_archive(
        dest,
        sample_dir=SAMPLES,
        start_us=START,
        hours=0.5,
        channels=(AIA_171, AIA_304),
        size=512,
        workers=1,
        progress=False,
    )
    return dest, files


def test_archive_holds_samples_in_helioviewer_folders(
    demo_archive: tuple[Path, list[Path]],
) -> None:
    dest, files = demo_archive
    expected = {
        "AIA/2014/02/03/171/2014_02_03__02_08_47_34__SDO_AIA_AIA_171.jp2",
        "HMI/2010/12/06/continuum/2010_12_06__18_56_41_105__SDO_HMI_HMI_continuum.jp2",
        "LASCO-C3/2023/12/01/white-light/2023_12_01__00_06_07_373__SOHO_LASCO_C3_white-light.jp2",
        "SWAP/2013/06/12/174/2013_06_12__00_08_04_410__PROBA2_SWAP_SWAP_174.jp2",
        "MDI/2005/01/11/continuum/2005_01_11__23_59_32_227__SOHO_MDI_MDI_continuum.jp2",
        "EIT/2024/04/16/171/2024_04_16__13_00_13_908__SOHO_EIT_EIT_171.jp2",
    }
    rel = {p.relative_to(dest).as_posix() for p in files}
    assert expected <= rel
    for sample in SAMPLES.glob("*.jp2"):
        copies = [p for p in files if p.name == sample.name]
        assert len(copies) == 1 and copies[0].read_bytes() == sample.read_bytes()


def test_archive_has_named_synthetic_frames_with_matching_headers(
    demo_archive: tuple[Path, list[Path]],
) -> None:
    dest, files = demo_archive
    for source_id in (AIA_171, AIA_304):
        source = sources.by_id(source_id)
        for k in range(2):  # 30 minutes at 15-minute cadence
            t = START + k * 900_000_000
            path = dest / naming.folder(source, t) / naming.file_name(source, t)
            assert path in files
            assert path.parent == dest / "AIA" / "2014" / "02" / "03" / source.measurement
            fits = _fits(path)
            assert times.parse(fits["DATE-OBS"]) == t == times.parse(fits["DATE_OBS"])
            assert naming.parse_file_name(path.name).time_us == t
            assert fits["WAVELNTH"] == source.measurement
            assert fits["NAXIS1"] == fits["NAXIS2"] == "512"
            jp2 = glymur.Jp2k(path)
            assert jp2.shape == (512, 512)
            assert [b.box_id for b in jp2.box] == ["jP  ", "ftyp", "jp2h", "xml ", "jp2c"]
    later = naming.file_name(sources.by_id(AIA_171), START + 1_800_000_000)
    assert not any(p.name == later for p in files)  # the end of the span is excluded
    assert len(files) == len(list(SAMPLES.glob("*.jp2"))) + 4
    assert not [p for p in dest.rglob(".*")]  # no temporary files left behind


def test_synthetic_frame_matches_its_header_geometry(demo_archive: tuple[Path, list[Path]]) -> None:
    dest, _ = demo_archive
    source = sources.by_id(AIA_171)
    path = dest / naming.folder(source, START) / naming.file_name(source, START)
    fits = _fits(path)
    img = glymur.Jp2k(path)[:]
    center = (float(fits["CRPIX1"]) - 1, 512 - float(fits["CRPIX2"]))
    r = _radius(512, center) / float(fits["R_SUN"])
    assert img[r < 0.9].mean() > 3 * img[r > 1.4].mean()


def test_rerun_only_makes_what_is_missing(tmp_path: Path) -> None:
    samples = tmp_path / "samples"
    samples.mkdir()
    shutil.copy(AIA_SAMPLE, samples)
    dest = tmp_path / "archive"

    def build() -> list[Path]:
        return build_demo_archive(
            dest,
            sample_dir=samples,
            start_us=START,
            hours=0.75,
            channels=(AIA_193,),
            size=256,
            workers=2,
            progress=False,
        )

    first = build()
    assert len(first) == 4
    stamps = {p: p.stat().st_mtime_ns for p in first}
    first[2].unlink()
    again = build()
    assert again == first
    assert first[2].exists()
    unchanged = [p for p in first if p != first[2]]
    assert all(p.stat().st_mtime_ns == stamps[p] for p in unchanged)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"channels": (HMI_CONTINUUM,)}, "channels"),
        ({"cadence_s": 0}, "cadence_s"),
        ({"workers": 0}, "workers"),
        ({"size": 0}, "size"),
    ],
)
def test_build_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        build_demo_archive(tmp_path, sample_dir=SAMPLES, start_us=START, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_build_needs_an_aia_sample_for_the_header(tmp_path: Path) -> None:
    samples = tmp_path / "samples"
    samples.mkdir()
    shutil.copy(SAMPLES / "2024_04_16__13_00_13_908__SOHO_EIT_EIT_171.jp2", samples)
    with pytest.raises(ValueError, match="sample_dir"):
        build_demo_archive(tmp_path / "a", sample_dir=samples, start_us=START, progress=False)
    assert not (tmp_path / "a").exists()  # checked before anything is copied

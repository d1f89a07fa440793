from __future__ import annotations

import pytest

from heliostat.archive import naming, sources, times


def test_parse_two_and_three_digit_subseconds() -> None:
    a = naming.parse_file_name("2014_01_02__00_00_02_62__SDO_AIA_AIA_335.jp2")
    b = naming.parse_file_name("2022_01_01__00_03_52_835__SDO_AIA_AIA_193.jp2")
    assert times.iso(a.time_us) == "2014-01-02T00:00:02.620000Z"
    assert a.keys == ("SDO", "AIA", "AIA", "335")
    assert times.iso(b.time_us) == "2022-01-01T00:03:52.835000Z"
    c = naming.parse_file_name("2023_12_01__00_06_07_373__SOHO_LASCO_C3_white-light.jp2")
    assert c.keys == ("SOHO", "LASCO", "C3", "white-light")


@pytest.mark.parametrize(
    "bad", ["2014_01_02_00_00_02__SDO_AIA_AIA_335.jp2", "x.jp2", "2014_01_02__00_00_02__.jp2"]
)
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="not a Helioviewer JP2 file name"):
        naming.parse_file_name(bad)


def test_write_exactly() -> None:
    t = times.parse("2014-02-03T02:08:47.34Z")
    aia = sources.by_id(10)
    assert naming.file_name(aia, t) == "2014_02_03__02_08_47_340__SDO_AIA_AIA_171.jp2"
    assert naming.folder(aia, t) == "AIA/2014/02/03/171"
    c3 = sources.by_id(5)
    assert naming.archive_path(c3, t) == (
        "LASCO-C3/2014/02/03/white-light/2014_02_03__02_08_47_340__SOHO_LASCO_C3_white-light.jp2"
    )
    parsed = naming.parse_file_name(naming.file_name(c3, t))
    assert parsed.time_us == t


def test_sources_table() -> None:
    assert sources.by_id(10).name == "AIA 171"
    assert sources.by_keys("SDO", "HMI", "HMI", "continuum").id == 18
    assert sources.by_keys("proba2", "swap", "swap", "174").id == 32
    assert sources.by_id(5).layering_order == 3
    assert sources.tree()["SOHO"]["LASCO"]["C2"]["white-light"].id == 4
    with pytest.raises(sources.UnknownSourceError, match="unknown data source id 999"):
        sources.by_id(999)
    ids = [s.id for s in sources.SOURCES]
    assert len(ids) == len(set(ids))


def test_times() -> None:
    assert times.parse("2005/01/11 23:59:32.227") == times.parse("2005-01-11T23:59:32.227Z")
    assert times.parse_date_and_time("2023/12/01", "00:06:07.373") == times.parse(
        "2023-12-01T00:06:07.373"
    )
    assert times.parse("2016-12-31T23:59:60Z") == times.parse("2017-01-01T00:00:00Z")
    with pytest.raises(ValueError, match="not a date and time"):
        times.parse("yesterday")
    with pytest.raises(ValueError, match="invalid date"):
        times.parse("2014-02-30T00:00:00")

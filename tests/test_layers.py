"""Helioviewer layer strings and regions of interest, including the inputs they must refuse."""

from __future__ import annotations

import math

import pytest

from heliostat.errors import InvalidArgument, ResourceExhausted
from heliostat.screenshots import region as roi
from heliostat.screenshots.layers import parse_layers


def test_all_layer_forms_name_the_same_source() -> None:
    layers = parse_layers("[SDO,AIA,AIA,171,1,100],[SDO,AIA,171,2,50],[10,1,75]")
    assert [la.source.name for la in layers] == ["AIA 171"] * 3
    assert [(la.visible, la.opacity) for la in layers] == [(1, 100), (2, 50), (1, 75)]
    assert [la.source.name for la in parse_layers("[PROBA2,SWAP,174,1,100]")] == ["SWAP 174"]
    c3 = parse_layers("[ SOHO , LASCO , C3 , white-light , 1 , 100 ]")[0]
    assert c3.source.id == 5 and c3.difference == 0


def test_extended_form_carries_difference_options() -> None:
    (la,) = parse_layers("[SOHO,LASCO,C2,white-light,2,100,1,60,1,2024-05-01T11:48:29.000Z]")
    assert (la.source.id, la.visible, la.opacity) == (4, 2, 100)
    assert (la.difference, la.diff_count, la.diff_time) == (1, 60, 1)
    assert la.base_diff_time == "2024-05-01T11:48:29.000Z"
    (base,) = parse_layers("[SDO,AIA,171,1,100,2,0,0,2014-02-03T00:00:00Z]")
    assert base.difference == 2


def test_hidden_and_transparent_layers_are_dropped_and_brackets_decoded() -> None:
    layers = parse_layers("%5B10,0,100%5D,[11,1,0],%5b12,1,40%5d")
    assert [(la.source.id, la.opacity) for la in layers] == [(12, 40)]
    assert parse_layers("[10,0,100]") == ()


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("", "allowed"),
        ("[10,1,100];[11,1,100]", "allowed"),
        ("[10,1,100]<script>", "allowed"),
        ("10,1,100", "groups"),
        ("[10,1,100][11,1,100]", "groups"),
        ("[10,1,100],,[11,1,100]", "groups"),
        ("[10,1]", "[10,1]"),
        ("[999,1,100]", "[999,1,100]"),
        ("[10,1,101]", "opacity"),
        ("[10,x,100]", "visible"),
        ("[SDO,AIA,AIA,9999,1,100]", "SDO,AIA,AIA,9999"),
        ("[SDO,AIA,171,1,100,3,0,0,]", "difference"),
        ("[SDO,AIA,171,1,100,1,0,0,yesterday]", "baseDiffTime"),
        ("[10,1,100,1,0,0,x]", "10,1,100"),
        ("[10,1,100]," * 8 + "[10,1,100]", "at most 8"),
    ],
)
def test_bad_layer_strings_name_the_fault(text: str, fault: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        parse_layers(text)
    assert e.value.field == "layers"
    assert fault in e.value.message


def test_layer_limit_is_configurable() -> None:
    assert len(parse_layers("[10,1,100],[11,1,100]", max_layers=2)) == 2
    with pytest.raises(InvalidArgument, match="at most 1"):
        parse_layers("[10,1,100],[11,1,100]", max_layers=1)


def test_region_from_corners_rounds_the_pixel_size() -> None:
    r = roi.from_corners(-1000, -600, 1000, 601, 2.42044)
    assert (r.width, r.height) == (round(2000 / 2.42044), round(1201 / 2.42044)) == (826, 496)
    v = r.viewport
    assert (v.x1, v.y1, v.scale, v.width, v.height) == (-1000, -600, 2.42044, 826, 496)


def test_region_from_centre_and_size_in_pixels() -> None:
    r = roi.from_centre(100, -50, 1920, 1200, 4.8408817)
    assert (r.width, r.height) == (1920, 1200)
    assert r.x1 == pytest.approx(100 - 960 * 4.8408817)
    assert r.y2 == pytest.approx(-50 + 600 * 4.8408817)


def test_region_limit_is_resource_exhausted_naming_the_limit() -> None:
    roi.from_centre(0, 0, 4096, 4096, 0.6)
    with pytest.raises(ResourceExhausted) as e:
        roi.from_centre(0, 0, 4097, 10, 0.6)
    assert "4096×4096" in e.value.message and e.value.field == "region"
    with pytest.raises(ResourceExhausted, match="2000×1000"):
        roi.from_corners(0, 0, 2001, 10, 1.0, max_width=2000, max_height=1000)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((0, 0, 0, 100, 1.0), "region"),
        ((0, 0, 100, 0.4, 1.0), "region"),
        ((10, 0, 0, 100, 1.0), "region"),
        ((0, 0, 100, 100, 0.0), "image_scale"),
        ((0, 0, 100, 100, -1.0), "image_scale"),
        ((0, 0, 100, 100, math.nan), "image_scale"),
        ((math.inf, 0, 100, 100, 1.0), "x1"),
    ],
)
def test_bad_regions_are_invalid(args: tuple[float, ...], field: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        roi.from_corners(*args)
    assert e.value.field == field


def test_centre_form_needs_whole_positive_pixel_counts() -> None:
    with pytest.raises(InvalidArgument) as e:
        roi.from_centre(0, 0, 10.5, 10, 1.0)  # type: ignore[arg-type]
    assert e.value.field == "width"
    with pytest.raises(InvalidArgument):
        roi.from_centre(0, 0, 0, 10, 1.0)

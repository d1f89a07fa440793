"""End to end: a real server process on a free port, driven through heliostat.client."""

from __future__ import annotations

import io
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from PIL import Image

from heliostat.client import HeliostatClient
from heliostat.v1 import archive_pb2, render_pb2

from .conftest import RunningServer, start_server, stop_server

T0 = datetime(2014, 2, 3, 2, 30, tzinfo=UTC)
AIA_NAME = "2014_02_03__02_08_47_34__SDO_AIA_AIA_171.jp2"


@pytest.fixture
def client(server: RunningServer) -> HeliostatClient:
    with HeliostatClient(server.target, timeout=60) as c:
        yield c  # type: ignore[misc]


def _code(e: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return e.value.code()  # type: ignore[no-any-return]


def test_data_sources_and_status(client: HeliostatClient) -> None:
    srcs = {s.id: s for s in client.data_sources(with_data_only=True)}
    assert set(srcs) == {0, 5, 7, 10, 18, 32}
    aia = srcs[10]
    assert (aia.name, aia.observatory, aia.measurement, aia.image_count) == (
        "AIA 171",
        "SDO",
        "171",
        4,
    )
    assert aia.first.ToDatetime(tzinfo=UTC) == datetime(2014, 2, 3, 2, 8, 47, 340000, tzinfo=UTC)
    assert aia.last.ToDatetime(tzinfo=UTC) == datetime(2014, 2, 3, 3, 30, 23, 340000, tzinfo=UTC)
    assert len(client.data_sources()) > len(srcs)
    status = {s.source_id: s for s in client.status()}
    assert status[10].level == 5 and status[10].seconds_behind > 86400


def test_closest_image(client: HeliostatClient) -> None:
    img = client.closest_image(10, T0)
    assert img.date.ToDatetime(tzinfo=UTC) == datetime(2014, 2, 3, 2, 30, 23, 340000, tzinfo=UTC)
    assert img.offset.ToTimedelta() == timedelta(seconds=23, microseconds=340000)
    assert (img.width, img.height, img.ref_pixel_x) == (4096, 4096, 2048.5)
    assert img.scale == pytest.approx(0.6 * img.dsun / 149_597_870_700.0)
    before = client.closest_image(10, T0, "before")
    assert before.date.ToDatetime(tzinfo=UTC).minute == 8
    after = client.closest_image(10, T0, "after")
    assert after.id == img.id
    assert client.image(img.id).path == img.path
    assert img.path.startswith("AIA/2014/02/03/171/")


def test_list_images_and_coverage(client: HeliostatClient) -> None:
    start, end = T0 - timedelta(hours=1), T0 + timedelta(hours=2)
    pages = list(client.images(10, start, end, page_size=3))
    assert len(pages) == 4 and len({i.id for i in pages}) == 4
    assert [i.date.seconds for i in pages] == sorted(i.date.seconds for i in pages)
    assert len(client.evenly_spaced(10, start, end, 2)) == 2
    cov = client.coverage([10, 32], start, end, timedelta(minutes=30))
    assert sum(cov[10]) == 4 and sum(cov[32]) == 0 and len(cov[10]) == 6


def test_jp2_header(client: HeliostatClient) -> None:
    img = client.closest_image(5, datetime(2023, 12, 1, tzinfo=UTC))
    xml = client.jp2_header(img.id)
    assert "<CROTA>-7.42291</CROTA>" in xml and xml.startswith("<?xml")


def test_tiles_over_grpc(client: HeliostatClient) -> None:
    img = client.closest_image(10, T0)
    tile = client.tile(img.id, -1, -1, image_scale=img.scale * 4)
    assert tile.content_type == "image/png" and tile.reduce == 2
    assert Image.open(io.BytesIO(tile.data)).size == (512, 512)
    again = client.tile(img.id, -1, -1, image_scale=img.scale * 4)
    assert again.data == tile.data
    jpeg = client.tile(img.id, 0, 0, image_scale=img.scale, fmt="jpeg", quality=70)
    assert jpeg.content_type == "image/jpeg" and jpeg.reduce == 0


@pytest.mark.parametrize(
    ("call", "code", "field"),
    [
        (lambda c: c.tile(999_999, 0, 0, 1.0), grpc.StatusCode.NOT_FOUND, "image_id"),
        (lambda c: c.tile(1, 0, 0, -3.0), grpc.StatusCode.INVALID_ARGUMENT, "image_scale"),
        (lambda c: c.tile(1, 0, 0, float("nan")), grpc.StatusCode.INVALID_ARGUMENT, "image_scale"),
        (lambda c: c.tile(1, 50, 0, 2.4), grpc.StatusCode.OUT_OF_RANGE, "x"),
        (lambda c: c.closest_image(10, datetime(2000, 1, 1, tzinfo=UTC), "before"),
         grpc.StatusCode.NOT_FOUND, "date"),
        (lambda c: c.closest_image(4242, T0), grpc.StatusCode.NOT_FOUND, "source_id"),
        (lambda c: c.image(0), grpc.StatusCode.INVALID_ARGUMENT, "id"),
        (lambda c: list(c.images(10, T0, T0 - timedelta(days=1))),
         grpc.StatusCode.INVALID_ARGUMENT, "end"),
        (lambda c: c.coverage([10], T0, T0 + timedelta(days=1), timedelta(milliseconds=1)),
         grpc.StatusCode.INVALID_ARGUMENT, "bin"),
        (lambda c: c.ingest([]), grpc.StatusCode.INVALID_ARGUMENT, "paths"),
    ],
)  # fmt: skip
def test_bad_requests_name_the_field(
    client: HeliostatClient, call: object, code: grpc.StatusCode, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as e:
        call(client)  # type: ignore[operator]
    assert _code(e) == code
    assert field in e.value.details()  # type: ignore[attr-defined]


def test_missing_fields_and_bad_tokens(client: HeliostatClient) -> None:
    with pytest.raises(grpc.RpcError) as e:
        client.archive.GetClosestImage(archive_pb2.GetClosestImageRequest(source_id=10))
    assert _code(e) == grpc.StatusCode.INVALID_ARGUMENT and "date" in e.value.details()  # type: ignore[attr-defined]
    req = archive_pb2.ListImagesRequest(source_id=10, page_token="garbage!")
    req.start.FromDatetime(T0)
    req.end.FromDatetime(T0)
    with pytest.raises(grpc.RpcError) as e:
        client.archive.ListImages(req)
    assert _code(e) == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in e.value.details()  # type: ignore[attr-defined]


def test_health_and_reflection(client: HeliostatClient) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    r = client.health.Check(health_pb2.HealthCheckRequest(service="heliostat.v1.RenderService"))
    assert r.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    resp = next(
        iter(
            stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        )
    )
    names = {s.name for s in resp.list_services_response.service}
    assert {"heliostat.v1.ArchiveService", "heliostat.v1.RenderService"} <= names


def test_ingest_over_grpc_rejects_bad_files_and_is_idempotent(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    root.mkdir()
    srv = start_server(root)
    try:
        with HeliostatClient(srv.target) as c:
            assert c.data_sources(with_data_only=True) == []
            src = Path(__file__).parent / "data" / "jp2"
            shutil.copy2(src / "2024_04_16__13_00_13_908__SOHO_EIT_EIT_171.jp2", root / "a.jp2")
            (root / "bad.jp2").write_bytes(b"not a jp2")
            (root / "cut.jp2").write_bytes((root / "a.jp2").read_bytes()[:2000])
            r = c.ingest(["."])
            assert r.indexed == 1 and r.unchanged == 0
            assert {Path(x.path).name for x in r.rejected} == {"bad.jp2", "cut.jp2"}
            assert all(x.reason for x in r.rejected)
            r2 = c.ingest(["a.jp2"])
            assert (r2.indexed, r2.unchanged) == (0, 1)
            with pytest.raises(grpc.RpcError) as e:
                c.tile(1, 0, 0, 0.0)
            assert _code(e) == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        out = stop_server(srv)
    assert "shutting down" in out
    assert srv.proc.returncode == 0


def test_several_processes_share_the_port(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    root.mkdir()
    shutil.copy2(
        Path(__file__).parent / "data" / "jp2" / "2024_04_16__13_00_13_908__SOHO_EIT_EIT_171.jp2",
        root / "eit.jp2",
    )
    srv = start_server(root, "--processes", "2")
    try:
        for _ in range(6):  # new channels land on either worker; all must see the catalog
            with HeliostatClient(srv.target) as c:
                c.wait_ready(timeout=60)
                assert [s.id for s in c.data_sources(with_data_only=True)] == [0]
    finally:
        out = stop_server(srv)
    assert out.count("shutting down") == 2
    assert srv.proc.returncode == 0


def test_corrupt_codestream_is_data_loss_and_deadlines_hold(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    root.mkdir()
    data = bytearray((Path(__file__).parent / "data" / "jp2" / AIA_NAME).read_bytes())
    sot = data.find(b"\xff\x90", data.find(b"\xff\x4f\xff\x51"))
    data[sot : sot + 12] = bytes(12)  # the tile-part header is gone; the XML header is intact
    (root / "broken.jp2").write_bytes(bytes(data))
    good = Path(__file__).parent / "data" / "jp2" / AIA_NAME
    (root / "good.jp2").write_bytes(good.read_bytes())
    srv = start_server(root)
    try:
        with HeliostatClient(srv.target) as c:
            by_path = {
                i.path: i for i in c.images(10, T0 - timedelta(hours=1), T0 + timedelta(hours=2))
            }
            with pytest.raises(grpc.RpcError) as e:
                c.tile(by_path["broken.jp2"].id, 0, 0, by_path["broken.jp2"].scale)
            assert _code(e) == grpc.StatusCode.DATA_LOSS and "image_id" in e.value.details()  # type: ignore[attr-defined]
            img = by_path["good.jp2"]
            # A cold full-resolution tile takes tens of milliseconds: 1 ms is not enough.
            with pytest.raises(grpc.RpcError) as e:
                c.render.GetTile(
                    render_pb2.GetTileRequest(image_id=img.id, x=1, y=1, image_scale=img.scale),
                    timeout=0.001,
                )
            assert _code(e) == grpc.StatusCode.DEADLINE_EXCEEDED
            # The server is unharmed and serves the same tile with time to do it.
            assert c.tile(img.id, 1, 1, img.scale).width == 512
    finally:
        stop_server(srv)


def test_screenshots_over_grpc(client: HeliostatClient) -> None:
    shot = client.screenshot(
        T0,
        "[SOHO,LASCO,C3,white-light,1,100],[SDO,AIA,AIA,171,1,100],[SDO,HMI,HMI,continuum,1,0]",
        image_scale=60.0,
        corners=(-30000.0, -30000.0, 30000.0, 30000.0),
    )
    assert (shot.width, shot.height) == (1000, 1000) and shot.content_type == "image/png"
    rgba = np.asarray(Image.open(io.BytesIO(shot.data)).convert("RGBA"))
    assert rgba.shape == (1000, 1000, 4)
    # The HMI layer had opacity 0: dropped. LASCO and AIA: the images closest to T0.
    assert [layer.source_id for layer in shot.layers] == [5, 10]
    aia = shot.layers[1]
    assert aia.drawn and aia.offset.ToTimedelta() == timedelta(seconds=23, microseconds=340000)
    assert shot.layers[0].offset.ToTimedelta() > timedelta(days=3000)
    # The AIA disc (radius ~16 px at 60"/px) is gold over the centre; the corona is around it.
    centre = rgba[495:505, 495:505].reshape(-1, 4).astype(int)
    assert (centre[:, 0] > centre[:, 2]).all() and (centre[:, 3] == 255).all()
    again = client.get_screenshot(shot.id)
    assert again.data == shot.data and again.id == shot.id
    small = client.screenshot(T0, "[10,1,100]", 2.4, centre=(0.0, 0.0, 300, 200), fmt="jpeg")
    assert (small.width, small.height) == (300, 200) and small.data[:3] == b"\xff\xd8\xff"


@pytest.mark.parametrize(
    ("kwargs", "code", "field"),
    [
        ({"layers": "[10,1,100]", "image_scale": 0.01, "corners": (-1e5, -1e5, 1e5, 1e5)},
         grpc.StatusCode.RESOURCE_EXHAUSTED, "4096"),
        ({"layers": "[SDO,AIA,AIA,999,1,100]", "image_scale": 10.0,
          "corners": (-100.0, -100.0, 100.0, 100.0)}, grpc.StatusCode.INVALID_ARGUMENT, "layers"),
        ({"layers": "[10,1,100]", "image_scale": 10.0}, grpc.StatusCode.INVALID_ARGUMENT, "region"),
        ({"layers": "[10,1,100]", "image_scale": 10.0, "corners": (5.0, 5.0, 5.0, 9.0)},
         grpc.StatusCode.INVALID_ARGUMENT, ""),
    ],
)  # fmt: skip
def test_bad_screenshots(
    client: HeliostatClient, kwargs: dict[str, object], code: grpc.StatusCode, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as e:
        client.screenshot(T0, **kwargs)  # type: ignore[arg-type]
    assert _code(e) == code
    assert field in e.value.details()  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as e:
        client.get_screenshot("no-such-shot")
    assert _code(e) == grpc.StatusCode.NOT_FOUND

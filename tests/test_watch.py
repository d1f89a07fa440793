"""Live ingest: the incoming folder, the archive rescan, and `serve --watch` end to end."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import sunpy.data.test  # type: ignore[import-untyped]

from heliostat.app import Heliostat
from heliostat.archive import naming, sources, watch
from heliostat.archive.header import read_record
from heliostat.archive.ingest import IngestStats
from heliostat.archive.watch import Watcher
from heliostat.catalog.store import Catalog
from heliostat.client import HeliostatClient
from heliostat.config import profile

from .conftest import AIA_171, LASCO_C3, SAMPLES, place_samples, start_server, stop_server

AIA_FITS = Path(sunpy.data.test.rootdir) / "aia_171_level1.fits"  # a real level-1 file, 128²
EIT = next(f for f in SAMPLES if "_EIT_" in f.name)
SWAP = next(f for f in SAMPLES if "_SWAP_" in f.name)


def _archive_rel(sample: Path) -> str:
    rec = read_record(sample, sample.name)
    return naming.archive_path(sources.by_id(rec.source_id), rec.time_us)


def _drop(sample: Path, incoming: Path, name: str) -> None:
    """Land a file the way uploaders should: written under a hidden name, renamed into place."""
    tmp = incoming / f".{name}.part"
    shutil.copyfile(sample, tmp)
    tmp.rename(incoming / name)


def _until(cond: Callable[[], object], timeout: float) -> float:
    """Seconds until cond() is truthy; fails the test after timeout."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"not within {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - t0


class Setup:
    def __init__(self, tmp: Path, archive_files: list[Path]) -> None:
        self.root = tmp / "archive"
        self.root.mkdir()
        self.placed = place_samples(self.root, archive_files)
        self.incoming = tmp / "incoming"
        self.incoming.mkdir()
        self.catalog = Catalog(tmp / "cat")
        self.stats = IngestStats()
        self.changed: list[str] = []
        self.watcher = Watcher(
            self.catalog,
            self.root,
            self.incoming,
            stats=self.stats,
            poll_s=0.05,
            on_change=self.changed.extend,
        )

    def poll(self, n: int = 1) -> None:
        for _ in range(n):
            self.watcher.poll_incoming()
            time.sleep(0.01)


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(tmp_path, [])
    yield s
    s.watcher.stop()
    s.catalog.close()


def test_dropped_jp2_lands_in_its_archive_folder_and_catalog(ws: Setup) -> None:
    ws.watcher.start()
    rel = _archive_rel(AIA_171[1])
    _drop(AIA_171[1], ws.incoming, "upload.jp2")
    _until(lambda: ws.catalog.get_by_path(rel), timeout=2.0)
    assert (ws.root / rel).read_bytes() == AIA_171[1].read_bytes()
    assert rel.startswith("AIA/2014/02/03/171/2014_02_03__02_30_23_340__SDO_AIA_AIA_171")
    assert os.listdir(ws.incoming) == []
    (event,) = ws.catalog.events_after(0, 10)
    assert (event.kind, event.path) == ("insert", rel)
    c = ws.stats.snapshot()
    assert (c.seen, c.indexed, c.rejected) == (1, 1, 0)
    assert all(c.stages[s].files == 1 for s in ("wait", "move", "index"))
    assert c.stages["convert"].files == 0
    assert 0 <= c.stages["wait"].mean_s <= c.stages["wait"].max_s < 2.0


def test_half_written_file_waits_until_complete(ws: Setup) -> None:
    data = AIA_171[0].read_bytes()
    target = ws.incoming / "growing.jp2"
    with target.open("wb") as f:
        f.write(data[: len(data) // 2])
    ws.poll(5)  # stable for several polls, but its codestream box promises more bytes
    assert target.exists() and ws.catalog.total() == 0
    assert not (ws.incoming / ".rejected").exists()
    with target.open("ab") as f:
        f.write(data[len(data) // 2 :])
    ws.poll(1)  # changed since the last poll: not yet
    assert target.exists()
    ws.poll(1)
    assert not target.exists() and ws.catalog.get_by_path(_archive_rel(AIA_171[0])) is not None


def test_file_landed_complete_is_taken_at_first_sight(ws: Setup) -> None:
    target = ws.incoming / "landed.jp2"
    shutil.copy2(AIA_171[0], target)  # copy2 sets the source's mtime last: ctime > mtime
    ws.poll(1)
    assert not target.exists() and ws.catalog.get_by_path(_archive_rel(AIA_171[0])) is not None


def test_truncated_file_is_rejected_once_it_stops_growing(tmp_path: Path) -> None:
    s = Setup(tmp_path, [])
    s.watcher.incomplete_s = 0.0
    (s.incoming / "cut.jp2").write_bytes(AIA_171[0].read_bytes()[:5000])
    s.poll(2)
    reason = (s.incoming / ".rejected" / "cut.jp2.reason").read_text()
    assert reason.startswith("truncated file")
    s.catalog.close()


def test_bad_files_are_rejected_with_a_reason(ws: Setup) -> None:
    (ws.incoming / "junk.jp2").write_bytes(b"\x00" * 100)
    (ws.incoming / "notes.txt").write_text("hello")
    (ws.incoming / "aia.fits").write_bytes(b"SIMPLE  =                    T")  # cut short
    (ws.incoming / ".hidden.jp2").write_bytes(b"\x00")  # an upload in progress
    ws.poll(2)
    rejected = ws.incoming / ".rejected"
    assert sorted(os.listdir(rejected)) == [
        "aia.fits",
        "aia.fits.reason",
        "junk.jp2",
        "junk.jp2.reason",
        "notes.txt",
        "notes.txt.reason",
    ]
    assert "aia.fits" in (rejected / "aia.fits.reason").read_text()
    assert "not a JP2 file" in (rejected / "junk.jp2.reason").read_text()
    assert "not a JP2 or FITS file" in (rejected / "notes.txt.reason").read_text()
    # A second junk file of the same name does not overwrite the first.
    (ws.incoming / "junk.jp2").write_bytes(b"\x01" * 100)
    ws.poll(2)
    assert (rejected / "junk.jp2.1").read_bytes() == b"\x01" * 100
    assert (rejected / "junk.jp2.1.reason").exists()
    assert (ws.incoming / ".hidden.jp2").exists()
    c = ws.stats.snapshot()
    assert (c.seen, c.rejected, c.indexed, c.converted) == (4, 4, 0, 0)
    assert ws.catalog.total() == 0


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")
def test_fits_file_is_converted_into_the_archive_and_indexed(ws: Setup) -> None:
    _drop(AIA_FITS, ws.incoming, "aia_lev1.fits")
    ws.poll(2)
    rel = "AIA/2011/02/15/171/2011_02_15__00_00_00_340__SDO_AIA_AIA_171.jp2"
    rec = ws.catalog.get_by_path(rel)
    assert rec is not None and (rec.width, rec.height) == (128, 128)
    assert read_record(ws.root / rel, rel) == replace(rec, id=0)
    assert os.listdir(ws.incoming / ".converted") == ["aia_lev1.fits"]
    assert [f for f in os.listdir(ws.incoming) if not f.startswith(".")] == []
    c = ws.stats.snapshot()
    assert (c.seen, c.converted, c.indexed, c.rejected) == (1, 1, 1, 0)
    assert c.stages["convert"].files == 1 and c.stages["move"].files == 0
    (event,) = ws.catalog.events_after(0, 10)
    assert (event.kind, event.path) == ("insert", rel)


def test_move_across_filesystems_copies_fsyncs_and_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.replace
    calls: list[tuple[str, str]] = []

    def cross_device_once(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append((str(src), str(dst)))
        if len(calls) == 1:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real(src, dst)

    monkeypatch.setattr(os, "replace", cross_device_once)
    src = tmp_path / "in" / "a.jp2"
    src.parent.mkdir()
    src.write_bytes(b"payload")
    os.utime(src, ns=(10**18, 10**18))
    dest = tmp_path / "archive" / "x" / "a.jp2"
    watch.move_file(src, dest)
    assert not src.exists() and dest.read_bytes() == b"payload"
    assert dest.stat().st_mtime_ns == 10**18
    assert os.listdir(dest.parent) == ["a.jp2"]  # the temporary file was renamed
    assert Path(calls[1][0]).name.startswith(".a.jp2.")


def test_archive_deletes_and_replacements_reach_the_catalog(tmp_path: Path) -> None:
    s = Setup(tmp_path, [*AIA_171[:2], LASCO_C3])
    (s.root / "junk.jp2").write_bytes(b"\x00" * 100)
    s.watcher.rescan_archive()
    assert s.catalog.total() == 3
    assert [e.kind for e in s.catalog.events_after(0, 10)] == ["insert"] * 3
    c = s.stats.snapshot()
    assert (c.seen, c.indexed, c.rejected) == (4, 3, 1)
    s.watcher.rescan_archive()  # nothing changed: the junk is not read again
    assert s.stats.snapshot().seen == 4 and s.catalog.last_event_seq() == 3
    deleted, replaced, _ = s.placed
    del_rel = deleted.relative_to(s.root).as_posix()
    rep_rel = replaced.relative_to(s.root).as_posix()
    old = s.catalog.get_by_path(rep_rel)
    assert old is not None
    deleted.unlink()
    tmp = replaced.with_name(".replacement")
    shutil.copyfile(AIA_171[3], tmp)  # another image under the same name
    tmp.rename(replaced)
    s.watcher.rescan_archive()
    assert s.catalog.get_by_path(del_rel) is None and s.catalog.total() == 2
    new = s.catalog.get_by_path(rep_rel)
    assert new is not None and new.id == old.id and new.time_us != old.time_us
    events = s.catalog.events_after(3, 10)
    assert sorted((e.kind, e.path) for e in events) == [("delete", del_rel), ("update", rep_rel)]
    assert sorted(s.changed) == sorted([del_rel, rep_rel])
    assert s.stats.snapshot().deleted == 1
    s.catalog.close()


def test_ingest_watch_command_runs_until_sigterm(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    root.mkdir()
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    cmd = [sys.executable, "-m", "heliostat.cli", "ingest", "--archive", str(root),
           "--watch", str(incoming), "--rescan", "0.2"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _drop(LASCO_C3, incoming, "c3.jp2")
        rel = _archive_rel(LASCO_C3)
        _until(lambda: (root / rel).exists(), timeout=10.0)
    finally:
        # Moved; indexing may not have happened yet, but a stop finishes the pass in progress.
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=10)[0]
    assert proc.returncode == 0, out
    assert "seen 1, converted 0, indexed 1, rejected 0, deleted 0" in out
    with Catalog(root / ".heliostat" / "catalog") as cat:
        assert cat.get_by_path(rel) is not None


def test_serve_watch_end_to_end(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    place_samples(root, [LASCO_C3])
    incoming = root / "incoming"  # inside the archive: the rescan must leave it alone
    incoming.mkdir()
    srv = start_server(root, "--watch", str(incoming), "--rescan", "0.5")
    try:
        with HeliostatClient(srv.target, timeout=10) as c:
            rel = _archive_rel(AIA_171[2])
            _drop(AIA_171[2], incoming, "aia.jp2")
            t = datetime(2014, 2, 3, 3, 0, tzinfo=UTC)
            _until(lambda: _found(c, t), timeout=5.0)
            img = c.closest_image(10, t)
            assert img.path == rel
            stats = c.ingest_stats()
            assert stats.indexed >= 2 and stats.seen >= 2  # the initial ingest and the drop
            wait = {s.stage: s for s in stats.stages}["wait"]
            assert wait.files == 1 and wait.max_seconds < 5
            events = c.events()
            assert [(e.kind, e.path) for e in events][-1] == (1, rel)  # EVENT_KIND_INSERT
            assert events[-1].image_id == img.id and events[-1].footprint.x_max > 1200
            assert [e.seq for e in c.events(after_seq=events[0].seq, limit=1)] == [events[1].seq]
            assert c.closest_image(5, datetime(2023, 12, 1, tzinfo=UTC)).path.startswith("LASCO")
            with pytest.raises(grpc.RpcError) as e:
                c.events(limit=20_000)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            metadata: Any = e.value.trailing_metadata()  # (key, value) tuples; the stubs differ
            assert ("heliostat-field", "limit") in metadata
    finally:
        out = stop_server(srv)
    assert srv.proc.returncode == 0, out
    assert "shutting down" in out


def _found(c: HeliostatClient, t: datetime) -> bool:
    try:
        c.closest_image(10, t)
    except grpc.RpcError:
        return False
    return True


def test_app_watcher_forgets_cached_tiles_of_replaced_and_deleted_files(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    eit, swap = place_samples(root, [EIT, SWAP])
    app = Heliostat(root, profile=profile("small"))
    try:
        watcher = app.watch(None)
        watcher.rescan_archive()
        for f in (eit, swap):
            rec = app.catalog.get_by_path(f.relative_to(root).as_posix())
            assert rec is not None
            app.tile(rec.id, 0, 0, rec.scale * 8, "png", 85)
        assert app.tiles.stats()["tiles"].entries == 2
        eit.unlink()
        os.utime(swap, ns=(10**18, 10**18))  # replaced: new mtime, re-read
        watcher.rescan_archive()
        assert app.tiles.stats()["tiles"].entries == 0
        assert [e.kind for e in app.catalog.events_after(2, 10)] == ["delete", "update"]
    finally:
        app.close()

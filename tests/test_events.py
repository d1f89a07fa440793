"""The catalog's event log: one event per committed change, in the change's own transaction."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import lmdb
import pytest

from heliostat.archive.header import read_record
from heliostat.archive.ingest import ingest
from heliostat.catalog.codec import Footprint, footprint
from heliostat.catalog.records import ImageRecord
from heliostat.catalog.store import Catalog

from .conftest import AIA_171, LASCO_C3, ingest_then_kill, many_links, place_samples


def _rec(path: str, **kw: Any) -> ImageRecord:
    base = ImageRecord(
        id=0, source_id=10, time_us=1_000_000, path=path, width=100, height=50,
        cdelt1=2.0, cdelt2=2.0, crpix1=50.5, crpix2=25.5, crval1=0.0, crval2=0.0,
        rotation=0.0, dsun=1.5e11, rsun_px=400.0, layering_order=1, file_size=10,
        file_mtime_ns=1,
    )  # fmt: skip
    return replace(base, **kw)


def test_footprint_of_plain_shifted_and_rotated_images() -> None:
    # 100 x 50 pixels of 2", centred on the reference pixel: ±100" by ±50".
    assert footprint(_rec("a")) == Footprint(-100.0, -50.0, 100.0, 50.0)
    # CRVAL moves the box; CRPIX at the first pixel's centre puts the image right of and above it.
    assert footprint(_rec("a", crval1=10.0, crval2=-20.0, crpix1=1.0, crpix2=1.0)) == Footprint(
        9.0, -21.0, 209.0, 79.0
    )
    # Rotated by 90°, the box swaps its extents.
    fp = footprint(_rec("a", rotation=90.0))
    assert [round(v, 9) for v in (fp.x_min, fp.y_min, fp.x_max, fp.y_max)] == [-50, -100, 50, 100]
    # At 45° the box holds the rotated corners: half-diagonal extents (100 + 50) / √2.
    fp = footprint(_rec("a", rotation=45.0))
    assert fp.x_max == pytest.approx(150 / math.sqrt(2)) and fp.y_min == pytest.approx(
        -150 / math.sqrt(2)
    )


def test_real_aia_footprint_covers_the_disk() -> None:
    rec = read_record(AIA_171[0], AIA_171[0].name)
    fp = footprint(rec)
    # 4096 pixels of ~0.6" around the Sun's centre: about ±1229".
    for v in (fp.x_max, fp.y_max, -fp.x_min, -fp.y_min):
        assert 1200 < v < 1260


def test_insert_update_delete_events(tmp_path: Path) -> None:
    with Catalog(tmp_path / "cat") as cat:
        assert cat.last_event_seq() == 0 and cat.events_after(0, 10) == []
        a, b = _rec("a.jp2"), _rec("b.jp2", time_us=2_000_000, rotation=90.0)
        cat.put_images([a, b])
        cat.put_images([a])  # unchanged: no event
        cat.put_images([replace(a, crval1=30.0)])
        (deleted,) = cat.delete_paths(["b.jp2", "missing.jp2"])
        events = cat.events_after(0, 100)
        assert [(e.seq, e.kind, e.path) for e in events] == [
            (1, "insert", "a.jp2"),
            (2, "insert", "b.jp2"),
            (3, "update", "a.jp2"),
            (4, "delete", "b.jp2"),
        ]
        ins_a, ins_b, upd, dele = events
        assert upd.image_id == ins_a.image_id and dele.image_id == ins_b.image_id == deleted.id
        assert upd.footprint == Footprint(-70.0, -50.0, 130.0, 50.0)  # the new CRVAL1
        assert dele.footprint == footprint(deleted)
        assert (ins_b.source_id, ins_b.time_us, ins_b.width, ins_b.height) == (
            10,
            2_000_000,
            100,
            50,
        )
        assert ins_b.scale == pytest.approx(b.scale)
        assert cat.last_event_seq() == 4
        assert [e.seq for e in cat.events_after(2, 1)] == [3]
        assert cat.events_after(4, 10) == []
    with Catalog(tmp_path / "cat") as cat:  # durable
        assert [e.kind for e in cat.events_after(0, 10)] == ["insert", "insert", "update", "delete"]


def test_rejected_and_failed_batches_leave_no_events(tmp_path: Path) -> None:
    with Catalog(tmp_path / "cat") as cat:
        cat.put_images([_rec("a.jp2")])
        with pytest.raises(ValueError, match="cdelt1"):
            cat.put_images([_rec("b.jp2"), _rec("c.jp2", cdelt1=0.0)])

        real = cat._log_events

        def log_then_fail(txn: Any, changes: Any) -> None:
            real(txn, changes)
            raise lmdb.Error("disk on fire")

        # A batch failing inside its transaction, after its events were appended, leaves none.
        cat._log_events = log_then_fail  # type: ignore[method-assign]
        with pytest.raises(lmdb.Error, match="disk on fire"):
            cat.put_images([_rec("d.jp2")])
        cat._log_events = real  # type: ignore[method-assign]
        assert [e.path for e in cat.events_after(0, 10)] == ["a.jp2"]
        assert cat.last_event_seq() == 1 and cat.total() == 1
        cat.put_images([_rec("e.jp2")])
        assert [e.seq for e in cat.events_after(0, 10)] == [1, 2]  # no gap


def test_consumer_cursors_and_trimming(tmp_path: Path) -> None:
    with Catalog(tmp_path / "cat") as cat:
        cat.put_images([_rec(f"{i}.jp2") for i in range(6)])
        assert cat.acked("subs") == 0
        assert cat.trim_events(3) == 2  # no consumer yet: trims what is asked
        assert [e.seq for e in cat.events_after(0, 10)] == [3, 4, 5, 6]
        cat.ack_events("subs", 4)
        cat.ack_events("slow", 3)
        cat.ack_events("subs", 2)  # an older ack does not move the cursor back
        assert (cat.acked("subs"), cat.acked("slow")) == (4, 3)
        with pytest.raises(ValueError, match=r"events logged are 1\.\.6"):
            cat.ack_events("subs", 7)
        assert cat.trim_events(100) == 1  # only what "slow" has acknowledged too
        assert [e.seq for e in cat.events_after(0, 10)] == [4, 5, 6]
        cat.ack_events("slow", 6)
        assert cat.trim_events(100) == 1  # "subs" still needs 5 and 6
        cat.ack_events("subs", 6)
        assert cat.trim_events(100) == 2 and cat.events_after(0, 10) == []
        assert cat.last_event_seq() == 6  # seqs never restart
        cat.put_images([_rec("new.jp2")])
        assert [e.seq for e in cat.events_after(0, 10)] == [7]
    with Catalog(tmp_path / "cat") as cat:
        assert cat.acked("subs") == 6


def test_every_indexed_file_has_its_event_after_kill_9(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    base = place_samples(root, [*AIA_171, LASCO_C3])
    many_links(root, base, 300)
    reported = ingest_then_kill(root, tmp_path / "cat", batch_size=5, kill_after=40)
    with Catalog(tmp_path / "cat") as cat:
        total = cat.total()
        assert total >= reported >= 40
        events = cat.events_after(0, 10_000)
        assert [e.seq for e in events] == list(range(1, total + 1))
        assert all(e.kind == "insert" for e in events)
        by_path = {e.path: e for e in events}
        assert set(by_path) == set(cat.files())
        for path, e in by_path.items():
            rec = cat.get_by_path(path)
            assert rec is not None and rec.id == e.image_id and footprint(rec) == e.footprint
        # Finishing the ingest continues the log without a gap.
        ingest(cat, root, [root])
        assert [e.seq for e in cat.events_after(0, 10_000)] == list(range(1, len(base) + 301))

"""The datapool and distribution channels on real files: atomic, idempotent placement, deletes,
refused destinations, and the FTP hand-off."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from heliostat.errors import InvalidArgument
from heliostat.subscriptions.channels.base import Delivery, Result
from heliostat.subscriptions.channels.datapool import DataPoolChannel
from heliostat.subscriptions.channels.distribution import DistributionChannel
from heliostat.subscriptions.model import (
    Action,
    EventType,
    GranuleEvent,
    MatchedAction,
    validate_action,
)
from tests.conftest import AIA_171

GRANULE = "2024/01/01/171/" + AIA_171[0].name


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    (root / GRANULE).parent.mkdir(parents=True)
    shutil.copy(AIA_171[0], root / GRANULE)
    return root


def delivery(
    action: Action, granule: str = GRANULE, event_id: int = 1, type: EventType = "insert"
) -> Delivery:
    e = GranuleEvent("AIA_171.1", type, granule, 10, 20, None, (("scale", 0.6),))
    return Delivery(MatchedAction(event_id, 7, 0, "alice", action, e), 1, None)


POOL = Action("datapool", (("pool", "flares"),))


def test_datapool_places_file_and_sidecar_once(archive: Path, tmp_path: Path) -> None:
    ch = DataPoolChannel(archive, tmp_path / "pool")
    (r,) = asyncio.run(ch.deliver([delivery(POOL)]))
    assert r.outcome == "delivered"
    placed = tmp_path / "pool" / "flares" / AIA_171[0].name
    assert placed.read_bytes() == AIA_171[0].read_bytes()
    meta = json.loads(placed.with_name(placed.name + ".json").read_text())
    assert meta["action_id"] == delivery(POOL).action.id
    assert meta["event"]["g"] == GRANULE and meta["event"]["num"] == {"scale": 0.6}
    assert sorted(p.name for p in placed.parent.iterdir()) == [placed.name, placed.name + ".json"]
    inode = placed.stat().st_ino
    # The same action again (a retry after a crash): already placed, not rewritten.
    (again,) = asyncio.run(ch.deliver([delivery(POOL)]))
    assert again.outcome == "delivered" and again.detail.startswith("already placed")
    assert placed.stat().st_ino == inode
    # A later event for the same granule replaces it (atomically: a new file renamed over).
    (later,) = asyncio.run(ch.deliver([delivery(POOL, event_id=2)]))
    assert later.outcome == "delivered" and placed.stat().st_ino != inode
    # A delete takes it out of the pool.
    (gone,) = asyncio.run(ch.deliver([delivery(POOL, event_id=3, type="delete")]))
    assert gone.outcome == "delivered" and list(placed.parent.iterdir()) == []


def test_datapool_refuses_what_is_not_an_archive_file(archive: Path, tmp_path: Path) -> None:
    ch = DataPoolChannel(archive, tmp_path / "pool")
    outside = tmp_path / "secret.txt"
    outside.write_text("no")
    results = asyncio.run(
        ch.deliver([delivery(POOL, "missing.jp2"), delivery(POOL, "../secret.txt")])
    )
    assert [r.outcome for r in results] == ["failed", "failed"]
    assert not (tmp_path / "pool" / "flares" / "secret.txt").exists()
    # A link inside the archive is the archive's business: followed.
    (archive / "linked.jp2").symlink_to(archive / GRANULE)
    (r,) = asyncio.run(ch.deliver([delivery(POOL, "linked.jp2")]))
    assert r.outcome == "delivered"
    assert (tmp_path / "pool" / "flares" / "linked.jp2").read_bytes() == AIA_171[0].read_bytes()


def test_datapool_unwritable_pool_is_retried(archive: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "pool"
    blocker.write_text("a file where the pool folder should be")
    (r,) = asyncio.run(DataPoolChannel(archive, blocker).deliver([delivery(POOL)]))
    assert r.outcome == "retry"


def test_distribution_copies_into_the_destination(archive: Path, tmp_path: Path) -> None:
    dist = Action("distribution", (("destination", "team/in"), ("media", "file")))
    ch = DistributionChannel(archive, tmp_path / "out")
    (r,) = asyncio.run(ch.deliver([delivery(dist)]))
    assert r.outcome == "delivered"
    target = tmp_path / "out" / "team" / "in" / AIA_171[0].name
    assert target.read_bytes() == AIA_171[0].read_bytes()
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary left
    (again,) = asyncio.run(ch.deliver([delivery(dist)]))
    assert again.outcome == "delivered" and target.read_bytes() == AIA_171[0].read_bytes()


@pytest.mark.parametrize("dest", ["../up", "/etc", "a/../../b", "a\\..\\b"])
def test_escaping_destination_is_refused_at_validation(dest: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        validate_action(Action("distribution", (("destination", dest), ("media", "file"))), 2)
    assert e.value.field == "actions[2].destination"


def test_media_and_pool_are_validated() -> None:
    with pytest.raises(InvalidArgument) as e:
        validate_action(Action("distribution", (("destination", "x"), ("media", "tape"))), 0)
    assert e.value.field == "actions[0].media"
    with pytest.raises(InvalidArgument) as e:
        validate_action(Action("distribution", (("destination", "/x"), ("media", "ftp"))), 0)
    assert e.value.field == "actions[0].destination"
    with pytest.raises(InvalidArgument) as e:
        validate_action(Action("datapool", (("pool", "a/b"),)), 1)
    assert e.value.field == "actions[1].pool"


class Recorder:
    """An FTP pusher stand-in that keeps what it was asked to push (a test receiver)."""

    def __init__(self) -> None:
        self.pushed: list[tuple[Path, str, str]] = []

    async def push(self, source: Path, url: str, remote_name: str) -> Result:
        self.pushed.append((source, url, remote_name))
        return Result("delivered", "226 Transfer complete")


def test_ftp_goes_to_the_pusher_or_fails_without_one(archive: Path, tmp_path: Path) -> None:
    ftp = Action("distribution", (("destination", "ftp://host/in"), ("media", "ftp")))
    (r,) = asyncio.run(DistributionChannel(archive, tmp_path).deliver([delivery(ftp)]))
    assert r == Result("failed", "FTP push is not configured")
    pusher = Recorder()
    (r,) = asyncio.run(DistributionChannel(archive, tmp_path, pusher).deliver([delivery(ftp)]))
    assert r.detail == "226 Transfer complete"
    assert pusher.pushed == [(archive.resolve() / GRANULE, "ftp://host/in", AIA_171[0].name)]

"""The subscription change log is pruned up to what every live reader has applied: a reader that
falls behind the pruned horizon rebuilds from the subscriptions (its index and the recording
path's cache end as if it had read every change), a live reader holds pruning back, the deletion
driver prunes in bounded passes and counts them, and kill -9 mid-prune loses nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from heliostat.subscriptions.auth import Principal
from heliostat.subscriptions.drivers import Drivers, DriverSettings
from heliostat.subscriptions.matching import MatchEngine
from heliostat.subscriptions.model import Action, Box, Collection, GranuleEvent, Subscription
from heliostat.subscriptions.service import SubscriptionService
from heliostat.subscriptions.store import ChangesPruned, SubscriptionStore

ALICE = Principal("alice")
OP = Principal("ops", operator=True)
POOL = Action("datapool", (("pool", "old"),))
HOUR_US = 3600 * 10**6

# Another server process on the same store: many subscription writes (one of them changes the
# action list of the subscription given, another deletes one), then its deletion driver's prune
# passes until nothing more is removable; prints the passes' (removed, horizon).
WRITER = """
import dataclasses, sys
from pathlib import Path
from heliostat.subscriptions.auth import Principal
from heliostat.subscriptions.model import Action, Subscription
from heliostat.subscriptions.service import Patch, SubscriptionService

path, changed, deleted, ttl_us = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
op = Principal("ops", operator=True)
svc = SubscriptionService(Path(path))
new = [Subscription(0, "bob", "MODIS.6", frozenset({"insert"}),
                    actions=(Action("datapool", (("pool", f"b{i}"),)),)) for i in range(300)]
svc.store.create(new)
svc.update(op, changed, Patch(frozenset({"actions"}),
                              actions=(Action("datapool", (("pool", "new"),)),)))
svc.delete(op, deleted)
while True:
    removed, horizon = svc.prune_changes("writer", ttl_us, 64)
    print(removed, horizon, flush=True)
    if removed < 64:
        break
svc.close()
"""


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[SubscriptionService]:
    s = SubscriptionService(tmp_path / "subs")
    s.create_collection(OP, Collection("MODIS", "6", "geographic"))
    yield s
    s.close()


def pool_sub(svc: SubscriptionService, pool: str = "old") -> Subscription:
    action = Action("datapool", (("pool", pool),))
    return svc.create(ALICE, Subscription(0, "", "MODIS.6", frozenset({"insert"}),
                                          actions=(action,)))  # fmt: skip


def event(name: str) -> GranuleEvent:
    return GranuleEvent("MODIS.6", "insert", name, 0, 0, Box(0, 0, 1, 1))


def other_process(path: Path, changed: int, deleted: int, ttl_us: int) -> list[tuple[int, int]]:
    out = subprocess.run(
        [sys.executable, "-c", WRITER, str(path), str(changed), str(deleted), str(ttl_us)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [(int(a), int(b)) for a, b in (line.split() for line in out.stdout.splitlines())]


def pools(svc: SubscriptionService, granule: str) -> dict[int, str]:
    """Each subscription's pool in the actions recorded for one granule."""
    return {
        a.subscription_id: dict(a.action.params)["pool"]
        for a in svc.actions(OP, "", 1000)
        if a.event.granule == granule
    }


def test_a_reader_behind_the_pruned_log_rebuilds_and_ends_correct(
    svc: SubscriptionService, tmp_path: Path
) -> None:
    keep, gone = pool_sub(svc), pool_sub(svc, "doomed")
    svc.publish(OP, [event("before")])  # the recording path now caches both action lists
    assert pools(svc, "before") == {keep.id: "old", gone.id: "doomed"}
    generation = svc.store.changes_after(0)[0]

    # This process never posted a position: the other prunes the whole log.
    passes = other_process(tmp_path / "subs", keep.id, gone.id, HOUR_US)
    assert len(passes) >= 5  # bounded: 64 entries a pass
    current = generation + 302
    assert passes[-1][1] == current and sum(n for n, _ in passes) == current
    with pytest.raises(ChangesPruned):
        svc.store.changes_after(generation)

    svc.publish(OP, [event("after")])
    assert svc.delivery_stats().counters["index_rebuilds"] == 1
    after = pools(svc, "after")
    assert len(after) == 301 and gone.id not in after
    assert after[keep.id] == "new"  # not the cached list from before the prune
    assert len(svc.engine) == 301
    rows, attrs, colls, _ = svc.store.index_data()  # what a restart would build
    restarted = MatchEngine.from_rows(rows, attrs, colls)
    assert sorted(svc.engine.match([event("x")], 0)[0][1]) == sorted(
        restarted.match([event("x")], 0)[0][1]
    )


def test_a_live_reader_holds_pruning_back(svc: SubscriptionService, tmp_path: Path) -> None:
    keep, gone = pool_sub(svc), pool_sub(svc, "doomed")
    svc.publish(OP, [event("before")])
    # This process posts its position (generation 2) with a fresh heartbeat, and prunes.
    assert svc.prune_changes("here", HOUR_US, 1000) == (2, 2)
    passes = other_process(tmp_path / "subs", keep.id, gone.id, HOUR_US)
    assert passes == [(0, 2)]  # nothing this reader has not applied
    svc.publish(OP, [event("after")])
    assert svc.delivery_stats().counters["index_rebuilds"] == 0  # caught up from the log
    after = pools(svc, "after")
    assert len(after) == 301 and after[keep.id] == "new" and gone.id not in after
    # Now this reader has applied everything: the next pass prunes the rest.
    assert svc.prune_changes("here", HOUR_US, 1000) == (302, 304)
    # A reader silent past its time to live no longer holds the log back.
    pool_sub(svc)
    store = svc.store
    store.prune_changes("stalled", 1, 10**15, HOUR_US, 0)  # posted at generation 1, long ago
    assert store.prune_changes("here", 305, 10**16, HOUR_US, 1000) == (1, 305)
    # A reader that stops gracefully is forgotten at once.
    store.prune_changes("stopping", 0, 10**16, HOUR_US, 0)
    store.forget_reader("stopping")
    pool_sub(svc)
    assert store.prune_changes("here", 306, 10**16, HOUR_US, 1000) == (1, 306)


def test_the_deletion_driver_prunes_in_bounded_passes(svc: SubscriptionService) -> None:
    svc.store.create(
        [Subscription(0, "alice", "MODIS.6", frozenset({"insert"}), actions=(POOL,))] * 250
    )
    d = Drivers(svc, [], DriverSettings(change_log_batch=100), name="t")
    assert d.delete_finished() is True  # more to prune
    assert svc.delivery_stats().counters["changes_pruned"] == 100
    assert d.delete_finished() is True
    assert d.delete_finished() is False
    assert svc.delivery_stats().counters["changes_pruned"] == 250
    assert svc.store.changes_after(250) == (250, {})
    assert svc.delivery_stats().counters["index_rebuilds"] == 0  # this reader was up to date
    s = pool_sub(svc)  # the log goes on after the horizon
    assert svc.store.changes_after(250)[1] == {s.id: s}


PRUNER = """
import sys
from pathlib import Path
from heliostat.subscriptions.model import Action, Subscription
from heliostat.subscriptions.store import SubscriptionStore

store = SubscriptionStore(Path(sys.argv[1]))
pool = (Action("datapool", (("pool", "p"),)),)
made = store.create([Subscription(0, "alice", "MODIS.6", frozenset({"insert"}), actions=pool)]
                    * 2000)
store.replace([(s, s) for s in made])  # 4000 changes
print("written", flush=True)
while True:
    removed, horizon = store.prune_changes("pruner", 4000, 1, 1, 7)
    print("pruned", horizon, flush=True)
"""


def test_kill_9_during_pruning_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "subs"
    svc = SubscriptionService(path)
    svc.create_collection(OP, Collection("MODIS", "6", "geographic"))
    svc.close()
    proc = subprocess.Popen(
        [sys.executable, "-c", PRUNER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "written"
    for _ in range(60):  # well into the passes, then in the middle of one
        assert proc.stdout.readline().startswith("pruned")
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    with SubscriptionStore(path) as store:
        horizon = store.lmdb.read(store._pruned)
        logged = store.lmdb.read(
            lambda txn: list(txn.cursor(store._changes).iternext(values=False))
        )
        # The log is whole from just after the horizon to the current generation.
        assert 420 <= horizon < 4000
        assert [int.from_bytes(k, "big") for k in logged] == list(range(horizon + 1, 4001))
        with pytest.raises(ChangesPruned):
            store.changes_after(horizon - 1)
        current, changed = store.changes_after(horizon)
        assert current == 4000 and len(changed) == 2000
        assert store.counts()["subscriptions"] == 2000
    svc = SubscriptionService(path)
    try:
        assert len(svc.engine) == 2000
        svc.publish(OP, [event("g")])
        assert len(svc.actions(OP, "", 1000)) == 1000  # the first page of 2000
    finally:
        svc.close()

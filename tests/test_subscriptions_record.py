"""Recording matched events: concurrent publishers, every action of every acknowledged event,
actions in key order for all and per owner, events read back as published."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lmdb
import pytest

from heliostat.subscriptions.auth import Principal
from heliostat.subscriptions.model import (
    Action,
    Box,
    Collection,
    GranuleEvent,
    MatchedAction,
    NumericRange,
    Qualifiers,
    StoredEvent,
    Subscription,
)
from heliostat.subscriptions.service import Patch, SubscriptionService
from heliostat.subscriptions.store import action_key

OP = Principal("ops", operator=True)
TWO = (
    Action("email", (("address", "a@example.org"),)),
    Action(
        "webhook",
        (("secret", "a-webhook-secret-of-32-bytes-000"), ("url", "https://example.org/h")),
    ),
)


def test_concurrent_publishers_record_every_action_in_order(tmp_path: Path) -> None:
    svc = SubscriptionService(tmp_path / "subs")
    svc.create_collection(OP, Collection("MODIS", "6", "geographic"))
    subs = [
        svc.create(
            Principal(f"o{i % 3}"),
            Subscription(
                0,
                "",
                "MODIS.6",
                frozenset({"insert"}),
                actions=TWO[: 1 + i % 2],
                qualifiers=Qualifiers(spatial=Box(i, 0, i + 10, 10)),
            ),
        )
        for i in range(12)
    ]
    subs.append(
        svc.create(
            Principal("o9"),
            Subscription(
                0,
                "",
                "MODIS.6",
                frozenset({"insert"}),
                actions=TWO,
                qualifiers=Qualifiers(numeric=(NumericRange("cloud", 0, 50),)),
            ),
        )
    )

    def batch(k: int) -> list[StoredEvent]:
        evs = [
            GranuleEvent(
                "MODIS.6",
                "insert",
                f"g{k}.{j}",
                k,
                k + 1,
                Box(j, 1, j + 0.5, 2),
                (("cloud", float(10 * j)),),
                (("band", f"b{j}"),),
            )
            for j in range(10)
        ]
        return svc.publish(OP, evs)

    with ThreadPoolExecutor(4) as pool:
        stored = [e for b in pool.map(batch, range(40)) for e in b]
    assert len({e.id for e in stored}) == 400

    def expected(e: GranuleEvent) -> list[tuple[int, int]]:
        out = []
        for s in subs:
            q = s.qualifiers
            hit = (
                q.spatial is not None
                and e.box is not None
                and q.spatial.x_min <= e.box.x_max
                and e.box.x_min <= q.spatial.x_max
            ) or (q.numeric and dict(e.numeric)["cloud"] <= 50)
            out += [(s.id, k) for k in range(len(s.actions))] if hit else []
        return out

    def paged(who: Principal) -> list[MatchedAction]:
        out: list[MatchedAction] = []
        while page := svc.actions(who, out[-1].id if out else "", 1000):
            out += page
        return out

    want = sorted((e.id, sid, k) for e in stored for sid, k in expected(e.event))
    got = paged(OP)
    assert [(a.event_id, a.subscription_id, a.index) for a in got] == want
    keys = [action_key(a.id) for a in got]
    assert keys == sorted(keys)
    by_id = {e.id: e.event for e in stored}
    assert all(a.event == by_id[a.event_id] for a in got)  # read back as published
    assert {a.action for a in got} == set(TWO)
    for owner in ("o0", "o1", "o2", "o9"):
        assert paged(Principal(owner)) == [a for a in got if a.owner == owner]
    svc.close()


def two_owners(tmp_path: Path, n: int) -> SubscriptionService:
    """A service with n subscriptions on one box, owners o0 and o1 in turn, with one action
    and two in turn."""
    svc = SubscriptionService(tmp_path / "subs")
    svc.create_collection(OP, Collection("MODIS", "6", "geographic"))
    for i in range(n):
        svc.create(
            Principal(f"o{i % 2}"),
            Subscription(
                0, "", "MODIS.6", frozenset({"insert"}), actions=TWO[: 1 + i % 2],
                qualifiers=Qualifiers(spatial=Box(0, 0, 10, 10)),
            ),
        )  # fmt: skip
    return svc


def test_owner_pages_across_batches_and_removals(tmp_path: Path) -> None:
    """Per-owner actions are kept one row per owner and batch: pages that start inside a row,
    and removals of some of a row's actions, leave every owner's remaining actions in order."""
    svc = two_owners(tmp_path, 6)
    ev = GranuleEvent("MODIS.6", "insert", "g", 0, 0, Box(1, 1, 2, 2))
    for n in (3, 1, 4):
        svc.publish(OP, [ev] * n)
    every = svc.store.actions_after(b"", 1000, None)
    assert len(every) == 8 * 9  # 3 + 3 * 2 actions per event
    drop = {action_key(a.id) for a in every[::3]}
    svc.store.lmdb.write(lambda txn: svc.store.remove_actions_txn(txn, sorted(drop)))
    left = [a for a in every if action_key(a.id) not in drop]
    assert svc.store.actions_after(b"", 1000, None) == left
    for owner in ("o0", "o1"):
        mine = [a for a in left if a.owner == owner]
        for size in (1, 2, 5):
            got: list[MatchedAction] = []
            while page := svc.store.actions_after(
                action_key(got[-1].id) if got else b"", size, owner
            ):
                got += page
            assert got == mine
        # From any action key, of anyone's, even a removed one.
        for a in every[::5]:
            k = action_key(a.id)
            assert svc.store.actions_after(k, 1000, owner) == [
                b for b in mine if action_key(b.id) > k
            ]
    svc.close()


def test_owner_rows_of_older_stores_are_migrated(tmp_path: Path) -> None:
    """A store whose actions_by_owner holds one row per action (owner NUL action key, as
    written before rows per batch) reads the same after reopening, and records on."""
    svc = two_owners(tmp_path, 4)
    ev = GranuleEvent("MODIS.6", "insert", "g", 0, 0, Box(1, 1, 2, 2))
    svc.publish(OP, [ev] * 3)
    before = {o: svc.store.actions_after(b"", 1000, o) for o in ("o0", "o1")}
    svc.close()
    env = lmdb.open(str(tmp_path / "subs"), max_dbs=32)
    with env.begin(write=True) as txn:
        meta, db = env.open_db(b"meta", txn=txn), env.open_db(b"actions_by_owner", txn=txn)
        txn.delete(b"owner_rows_by_batch", db=meta)
        rows = list(txn.cursor(db).iternext())
        txn.drop(db, delete=False)
        for k, v in rows:
            for i in range(0, len(v), 18):
                txn.put(k[8:] + b"\0" + v[i : i + 18], b"", db=db)
    env.close()
    svc = SubscriptionService(tmp_path / "subs")
    assert {o: svc.store.actions_after(b"", 1000, o) for o in ("o0", "o1")} == before
    svc.publish(OP, [ev])
    assert len(svc.store.actions_after(b"", 1000, "o1")) == len(before["o1"]) + 4
    svc.close()


def test_recording_follows_action_changes_from_any_process(tmp_path: Path) -> None:
    """Recorded actions are the subscription's as stored at commit, though recording keeps
    action lists in memory between batches: changed here, changed by another process on the
    same store, disabled, deleted."""
    path = tmp_path / "subs"
    svc = SubscriptionService(path)
    svc.create_collection(OP, Collection("MODIS", "6", "geographic"))
    s = svc.create(OP, Subscription(0, "", "MODIS.6", frozenset({"insert"}), actions=TWO[:1]))
    ev = GranuleEvent("MODIS.6", "insert", "g", 0, 0)

    def recorded() -> list[tuple[int, str]]:
        (stored,) = svc.publish(OP, [ev])
        got = svc.actions(OP, "", 1000)
        return [(a.index, a.action.kind) for a in got if a.event_id == stored.id]

    def elsewhere(change: str) -> None:
        script = (
            "import sys\n"
            "from pathlib import Path\n"
            "from heliostat.subscriptions.auth import Principal\n"
            "from heliostat.subscriptions.model import Action\n"
            "from heliostat.subscriptions.service import Patch, SubscriptionService\n"
            "svc = SubscriptionService(Path(sys.argv[1]))\n"
            "op = Principal('ops', operator=True)\n"
            f"sid = {s.id}\n"
            f"{change}\n"
            "svc.close()\n"
        )
        subprocess.run([sys.executable, "-c", script, str(path)], check=True)

    assert recorded() == [(0, "email")]
    svc.update(OP, s.id, Patch(frozenset({"actions"}), actions=TWO))
    assert recorded() == [(0, "email"), (1, "webhook")]
    elsewhere(
        "svc.update(op, sid, Patch(frozenset({'actions'}), actions=(Action('webhook', "
        "(('secret', 'a-webhook-secret-of-32-bytes-000'), ('url', 'https://example.org/h'))),)))"
    )
    assert recorded() == [(0, "webhook")]
    svc.store.disable_action(s.id, 0, "gone")
    assert recorded() == []
    elsewhere(
        "svc.update(op, sid, Patch(frozenset({'actions'}), "
        "actions=(Action('email', (('address', 'a@example.org'),)),)))"
    )
    assert recorded() == [(0, "email")]
    elsewhere("svc.delete(op, sid)")
    assert recorded() == []
    svc.close()


def test_publishers_share_commits_and_each_gets_its_own_events(tmp_path: Path) -> None:
    """Batches published together are recorded in one transaction; each caller gets back its
    own events, in its order, with their ids; a failed transaction fails every caller in it and
    records nothing."""
    svc = two_owners(tmp_path, 4)
    commits: list[int] = []
    record = svc.store.record

    def counting(matches: Any, catalog_seqs: Any = None) -> list[StoredEvent]:
        commits.append(len(matches))
        return record(matches, catalog_seqs)

    svc.store.record = counting  # type: ignore[method-assign]
    batches = [
        [GranuleEvent("MODIS.6", "insert", f"g{b}-{i}", 0, 0, Box(1, 1, 2, 2)) for i in range(50)]
        for b in range(16)
    ]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda evs: svc.publish(OP, evs), batches))
    for evs, stored in zip(batches, results, strict=True):
        assert [s.event for s in stored] == evs
        assert [s.id for s in stored] == list(range(stored[0].id, stored[0].id + len(evs)))
    assert sum(commits) == 16 * 50
    assert len(commits) < 16  # some batches shared a commit

    def failing(matches: Any, catalog_seqs: Any = None) -> list[StoredEvent]:
        raise lmdb.DiskError("no space left on device")

    svc.store.record = failing  # type: ignore[method-assign]
    before = svc.store.event_ids()
    with pytest.raises(lmdb.DiskError):
        svc.publish(OP, batches[0])
    svc.store.record = record  # type: ignore[method-assign]
    assert svc.store.event_ids() == before
    assert [s.event for s in svc.publish(OP, batches[1])] == batches[1]
    svc.close()

"""Recording's in-memory action lists against a dict oracle: subscriptions written and deleted
(new ids past the table's end included), lists of several actions, disabled actions; and a
service recording across many action changes, the lists read anew when stale."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest

from heliostat.subscriptions import actionlists
from heliostat.subscriptions.actionlists import ActionLists
from heliostat.subscriptions.auth import Principal
from heliostat.subscriptions.model import Action, Collection, GranuleEvent, Subscription
from heliostat.subscriptions.service import Patch, SubscriptionService

OP = Principal("ops", operator=True)


def blob(owner: str, actions: list[tuple[str, dict[str, str]]]) -> bytes:
    """A sub_actions value, as the store writes it."""
    return bytes([len(actions)]) + owner.encode() + b"\0" + json.dumps(actions).encode()


BLOBS = [
    blob("a", [("email", {"address": "x@example.org"})]),
    blob("b", [("email", {"address": "y@example.org"})]),
    blob("a", [("email", {"address": "x@example.org"}), ("watch", {})]),
    blob("b", [("email", {"address": "y@example.org", "disabled": "gone"}), ("watch", {})]),
    blob("c", [("watch", {"disabled": "gone"})]),
    blob("c", []),
]


def expected_actions(
    stored: dict[int, bytes], pairs: list[tuple[int, int]]
) -> list[tuple[int, int, int, bytes]]:
    out = []
    for e, s in pairs:
        b = stored.get(s)
        if b is not None:
            out += [(e, s, k, b) for k in actionlists.enabled(b)]
    return out


def test_lists_follow_writes_and_deletes() -> None:
    rng = random.Random(3)
    stored = {sid: rng.choice(BLOBS) for sid in range(1, 200, 2)}
    lists = ActionLists(7, [(struct.pack(">Q", s), b) for s, b in sorted(stored.items())])
    for gen in range(8, 60):
        written: dict[int, bytes | None] = {}
        for _ in range(rng.randrange(1, 6)):
            sid = rng.randrange(1, 260)
            written[sid] = None if rng.random() < 0.3 else rng.choice(BLOBS)
        lists.update(gen, written)
        for sid, b in written.items():
            if b is None:
                stored.pop(sid, None)
            else:
                stored[sid] = b
        assert lists.gen == gen
        assert len(lists) == len(stored)
        ids = np.arange(0, 270, dtype=np.int64)
        got = lists.numbers(ids).tolist()
        assert [lists.blobs[n] if n >= 0 else None for n in got] == [
            stored.get(i) for i in ids.tolist()
        ]
        pairs = sorted((rng.randrange(1, 50), rng.randrange(1, 260)) for _ in range(40))
        pairs = sorted(set(pairs))
        events = np.array([e for e, _ in pairs], np.int64)
        sids = np.array([s for _, s in pairs], np.int64)
        keys, numbers, owners = lists.actions(events, sids)
        rows = list(
            zip(
                keys["event"].tolist(), keys["sub"].tolist(), keys["index"].tolist(),
                [lists.blobs[n] for n in numbers.tolist()], strict=True,
            )
        )  # fmt: skip
        assert rows == expected_actions(stored, pairs)
        assert [lists.owners[o] for o in owners.tolist()] == [
            b[1 : b.index(b"\0")] for *_, b in rows
        ]
        # Key records are the store's big-endian (event, subscription, index) keys.
        assert keys.tobytes() == b"".join(struct.pack(">QQH", *r[:3]) for r in rows)


def test_recording_across_many_action_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Actions recorded after each round of changes are the ones stored, while the lists follow
    the change log and, once lists no subscription holds pile up, are read anew."""
    monkeypatch.setattr(actionlists, "_MIN_STALE", 4)
    svc = SubscriptionService(tmp_path / "subs")
    svc.create_collection(OP, Collection("MODIS", "6", "geographic"))
    subs = [
        svc.create(OP, Subscription(0, f"u{i % 3}", "MODIS.6", frozenset({"insert"})))
        for i in range(12)
    ]
    ev = GranuleEvent("MODIS.6", "insert", "g", 0, 0)
    rng = random.Random(5)
    live = {s.id: s for s in subs}
    for round_ in range(25):
        for s in rng.sample(sorted(live.values(), key=lambda s: s.id), min(5, len(live))):
            if rng.random() < 0.05 and len(live) > 6:
                svc.delete(OP, s.id)
                del live[s.id]
                continue
            actions = tuple(
                Action("email", (("address", f"r{round_}-{k}@example.org"),))
                for k in range(rng.randrange(0, 3))
            )
            live[s.id] = svc.update(OP, s.id, Patch(frozenset({"actions"}), actions=actions))
        (stored,) = svc.publish(OP, [ev])
        got = [
            (a.subscription_id, a.index, a.owner, a.action)
            for a in svc.actions(OP, "", 1000)
            if a.event_id == stored.id
        ]
        assert got == [
            (s.id, k, s.owner, a)
            for s in sorted(live.values(), key=lambda s: s.id)
            for k, a in enumerate(s.actions)
        ]
        for owner in ("u0", "u1", "u2"):
            mine = [a for a in svc.actions(Principal(owner), "", 1000)]
            assert [a for a in mine if a.event_id == stored.id] == [
                a for a in svc.actions(OP, "", 1000)
                if a.event_id == stored.id and a.owner == owner
            ]  # fmt: skip
    svc.close()

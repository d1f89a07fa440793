"""The matching engine against a brute-force oracle on random subscriptions and events,
including replacements and removals (tombstones and compaction), and boxes across the
antimeridian."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heliostat.subscriptions import matching
from heliostat.subscriptions.matching import ROW, MatchEngine, attr_row, index_row
from heliostat.subscriptions.model import (
    EVENT_TYPES,
    Box,
    GranuleEvent,
    NumericRange,
    Qualifiers,
    StringEquals,
    Subscription,
    Temporal,
)

NOW = 1_000
COLLECTIONS = ("A.1", "B.1")
ATTRS = ("w", "h")
VALUES = ("x", "y", "z")

# Small integer grids, so that touching edges and equal bounds come up often.
coord = st.integers(-5, 5)


# Longitudes near the antimeridian, for boxes that cross it (x_min > x_max).
lon = st.sampled_from((-180, -179, -178, -5, 0, 5, 178, 179, 180))


@st.composite
def boxes(draw: st.DrawFn) -> Box:
    y0, y1 = sorted((draw(coord), draw(coord)))
    if draw(st.integers(0, 3)) == 0:
        x0, x1 = draw(lon), draw(lon)  # either order: x0 > x1 crosses
    else:
        x0, x1 = sorted((draw(coord), draw(coord)))
    return Box(x0, y0, x1, y1)


def pieces(b: Box) -> list[tuple[float, float]]:
    """The box's x extent as plain intervals: two for a box across the antimeridian."""
    return [(b.x_min, 180), (-180, b.x_max)] if b.x_min > b.x_max else [(b.x_min, b.x_max)]


def boxes_meet(a: Box, b: Box) -> bool:
    return (
        a.y_min <= b.y_max
        and b.y_min <= a.y_max
        and any(p0 <= q1 and q0 <= p1 for p0, p1 in pieces(a) for q0, q1 in pieces(b))
    )


@st.composite
def qualifiers(draw: st.DrawFn) -> Qualifiers:
    t = None
    if draw(st.booleans()):
        a, b = sorted((draw(st.integers(0, 20)), draw(st.integers(0, 20))))
        t = Temporal(a, b)
    nums = []
    for attr in draw(st.lists(st.sampled_from(ATTRS), max_size=2)):
        lo, hi = sorted((draw(coord), draw(coord)))
        nums.append(NumericRange(attr, lo, hi))
    strs = [
        StringEquals(draw(st.sampled_from(ATTRS)), draw(st.sampled_from(VALUES)))
        for _ in range(draw(st.integers(0, 2)))
    ]
    box = draw(st.none() | boxes())
    return Qualifiers(t, tuple(nums), tuple(strs), box)


@st.composite
def subscriptions(draw: st.DrawFn, sub_id: int) -> Subscription:
    return Subscription(
        id=sub_id,
        owner="o",
        collection=draw(st.sampled_from(COLLECTIONS)),
        event_types=frozenset(draw(st.sets(st.sampled_from(EVENT_TYPES), min_size=1))),
        active=draw(st.booleans()),
        expires_us=draw(st.sampled_from((0, 0, NOW - 1, NOW, NOW + 1))),
        qualifiers=draw(qualifiers()),
    )


@st.composite
def events(draw: st.DrawFn) -> GranuleEvent:
    a, b = sorted((draw(st.integers(0, 20)), draw(st.integers(0, 20))))
    nums = {k: float(draw(coord)) for k in draw(st.sets(st.sampled_from(ATTRS)))}
    strs = {
        k: draw(st.sampled_from((*VALUES, "other"))) for k in draw(st.sets(st.sampled_from(ATTRS)))
    }
    return GranuleEvent(
        draw(st.sampled_from((*COLLECTIONS, "C.1"))),
        draw(st.sampled_from(EVENT_TYPES)),
        "g",
        a,
        b,
        draw(st.none() | boxes()),
        tuple(nums.items()),
        tuple(strs.items()),
    )


def oracle(s: Subscription, e: GranuleEvent, now: int) -> bool:
    q = s.qualifiers
    nums, strs = dict(e.numeric), dict(e.strings)
    return (
        s.collection == e.collection
        and s.live(now)
        and e.type in s.event_types
        and (
            q.temporal is None
            or (e.start_us <= q.temporal.end_us and e.end_us >= q.temporal.start_us)
        )
        and all(n.attribute in nums and n.min <= nums[n.attribute] <= n.max for n in q.numeric)
        and all(strs.get(x.attribute) == x.value for x in q.strings)
        and (q.spatial is None or (e.box is not None and boxes_meet(q.spatial, e.box)))
    )


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[list[Subscription], list[tuple[str, Subscription]], list[GranuleEvent]]:
    n = draw(st.integers(0, 40))
    initial = [draw(subscriptions(i + 1)) for i in range(n)]
    ops: list[tuple[str, Subscription]] = []
    for _ in range(draw(st.integers(0, 30))):
        sid = draw(st.integers(1, n + 10))
        new = draw(subscriptions(sid))
        ops.append((draw(st.sampled_from(("upsert", "remove"))), new))
    return initial, ops, draw(st.lists(events(), min_size=1, max_size=12))


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_match_equals_oracle(
    scenario: tuple[list[Subscription], list[tuple[str, Subscription]], list[GranuleEvent]],
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(matching, "_MIN_COMPACT", 3)  # compact often
        check(*scenario)


def check(
    initial: list[Subscription], ops: list[tuple[str, Subscription]], evs: list[GranuleEvent]
) -> None:
    engine = MatchEngine(initial)
    live = {s.id: s for s in initial}
    # Matched before the changes too, so that the changes meet a tree already queried.
    for e, ids in engine.match(evs, NOW):
        assert ids == sorted(s.id for s in live.values() if oracle(s, e, NOW))
    for op, s in ops:
        old = live.get(s.id)
        if op == "upsert":
            if old is not None and old.collection != s.collection:
                continue  # collections are immutable: the service never does this
            engine.upsert(s)
            live[s.id] = s
        elif old is not None:
            engine.remove(old.id)
            del live[s.id]
    got = engine.match(evs, NOW)
    assert [e for e, _ in got] == evs
    for e, ids in got:
        assert ids == sorted(s.id for s in live.values() if oracle(s, e, NOW))
    assert len(engine) == len(live)
    # The engine rebuilt from the stored rows (as at a restart) agrees.
    numbers = {c: i for i, c in enumerate(COLLECTIONS)}
    rows = np.frombuffer(b"".join(index_row(s, numbers[s.collection]) for s in live.values()), ROW)
    attrs = {s.id: json.loads(a) for s in live.values() if (a := attr_row(s)) is not None}
    rebuilt = MatchEngine.from_rows(rows, attrs, dict(enumerate(COLLECTIONS)))
    assert [sorted(ids) for _, ids in rebuilt.match(evs, NOW)] == [sorted(i) for _, i in got]


def test_tree_at_scale_against_oracle() -> None:
    """Thousands of boxes (some across the antimeridian, some world-wide) in a bulk-loaded tree,
    then boxes inserted after the load, tombstones, and a compaction with a fresh bulk load."""
    rng = np.random.default_rng(5)

    def box() -> Box:
        w, h = rng.choice((0.0, 2.0, 10.0, 360.0)), rng.uniform(0, 20)
        y0 = rng.uniform(-90, 90 - h)
        if w == 360.0:
            return Box(-180, y0, 180, y0 + h)
        x0 = rng.uniform(-180, 180)
        x1 = x0 + w
        return Box(x0, y0, x1 - 360 if x1 > 180 else x1, y0 + h)  # past 180: across

    def sub(i: int) -> Subscription:
        return Subscription(
            i, "o", "A.1", frozenset({"insert"}), qualifiers=Qualifiers(spatial=box())
        )

    subs = {i: sub(i) for i in range(1, 4001)}
    evs = [GranuleEvent("A.1", "insert", "g", 0, 0, box()) for _ in range(300)]
    rows = np.frombuffer(b"".join(index_row(s, 0) for s in subs.values()), ROW)
    engine = MatchEngine.from_rows(rows, {}, {0: "A.1"})

    def agree() -> None:
        for e, ids in engine.match(evs, NOW):
            assert ids == sorted(i for i, s in subs.items() if oracle(s, e, NOW))

    agree()
    for i in range(4001, 4400):  # inserted into the loaded tree
        subs[i] = sub(i)
        engine.upsert(subs[i])
    for i in range(1, 400):  # tombstoned
        engine.remove(i)
        del subs[i]
    agree()
    for i in range(400, 1400):  # past a quarter tombstoned: compacted, the tree loaded again
        engine.remove(i)
        del subs[i]
    for i in range(4400, 5200):
        subs[i] = sub(i)
        engine.upsert(subs[i])
    agree()
    assert sum(len(ids) for _, ids in engine.match(evs, NOW)) > 300


def test_remove_with_its_collection() -> None:
    """A removal naming the subscription's collection drops it there; one naming another
    collection finds nothing to drop."""
    subs = [Subscription(i, "o", c, frozenset({"insert"})) for i, c in ((1, "A.1"), (2, "B.1"))]
    engine = MatchEngine(subs)
    engine.remove(1, "B.1")
    assert len(engine) == 2
    engine.remove(1, "A.1")
    engine.remove(2)
    assert len(engine) == 0
    evs = [GranuleEvent(c, "insert", "g", 0, 0) for c in COLLECTIONS]
    assert [ids for _, ids in engine.match(evs, NOW)] == [[], []]

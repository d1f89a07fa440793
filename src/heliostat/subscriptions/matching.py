"""In-memory matching of granule events against subscriptions, one index per collection.

Each collection keeps its subscriptions as a struct of arrays (positions 0..n): active flag,
expiry, event-type mask, temporal interval, box, and the numeric and string qualifiers as
(offset, count) slices into flat constraint arrays. Attribute names and string values are
interned to ints through dicts, so a string qualifier is an int comparison in the kernel.

Per event batch, candidates are those whose box the R-tree (``rtree``, over libspatialindex)
returns for the event's footprint, plus those without a spatial qualifier: looked up by the
event's string values when they have a string qualifier (a dict from interned value to
positions, by their first string qualifier), scanned otherwise. One Numba kernel then checks
every candidate exactly (liveness, type, time overlap, box, numeric ranges, strings).

``rtree`` is not thread-safe even for reads and its deletes are slow in overlapping trees, so
all access goes through one lock, and removal never touches the tree: a removed or replaced
subscription's position is tombstoned (``alive`` false, which the kernel checks) and a new
version is appended. When tombstones reach a quarter of the positions the collection is
compacted and its tree bulk-loaded again (libspatialindex's stream load, fed from numpy arrays:
~4x faster than from a Python generator, 0.7 s against 2.4 s for 700k boxes).

At start the index is built from the store's fixed-size rows (``index_row``: 72 bytes per
subscription, read as one numpy array) plus the attribute qualifiers of the subscriptions that
have any, so a restart decodes no JSON for most subscriptions.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit
from rtree import index as rindex

from heliostat.subscriptions.model import (
    EVENT_TYPES,
    Box,
    EventType,
    GranuleEvent,
    NumericRange,
    Qualifiers,
    StringEquals,
    Subscription,
)

_TYPE_BIT = {t: np.uint8(1 << i) for i, t in enumerate(EVENT_TYPES)}
_MIN_COMPACT = 1024
# One subscription's matching fields, as stored for rebuilding (struct layout = ROW dtype).
_ROW = struct.Struct("<qqqq4dIBBBB")
ROW = np.dtype(
    [("sid", "<i8"), ("expires", "<i8"), ("t0", "<i8"), ("t1", "<i8"), ("box", "<f8", (4,)),
     ("coll", "<u4"), ("active", "u1"), ("types", "u1"), ("has_t", "u1"), ("has_box", "u1")]
)  # fmt: skip
assert ROW.itemsize == _ROW.size
AttrRow = tuple[list[tuple[str, float, float]], list[tuple[str, str]]]
_NO_VALUE = -1  # interned id of a string value no qualifier names

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
U8 = npt.NDArray[np.uint8]
B = npt.NDArray[np.bool_]


@njit(cache=True, nogil=True)
def _check_kernel(
    cand_ev: Any, cand_pos: Any, now: int,
    ev_type: Any, ev_t0: Any, ev_t1: Any, ev_has_box: Any, ev_box: Any, ev_num: Any, ev_str: Any,
    alive: Any, active: Any, expires: Any, types: Any, has_t: Any, t0: Any, t1: Any,
    has_box: Any, box: Any, n_off: Any, n_cnt: Any, n_attr: Any, n_min: Any, n_max: Any,
    s_off: Any, s_cnt: Any, s_attr: Any, s_val: Any,
) -> Any:  # fmt: skip
    out = np.zeros(cand_ev.shape[0], np.bool_)
    for k in range(cand_ev.shape[0]):
        e = cand_ev[k]
        p = cand_pos[k]
        if not alive[p] or not active[p]:
            continue
        if expires[p] != 0 and expires[p] <= now:
            continue
        if (types[p] & ev_type[e]) == 0:
            continue
        if has_t[p] and (ev_t0[e] > t1[p] or ev_t1[e] < t0[p]):
            continue
        if has_box[p]:
            if not ev_has_box[e]:
                continue
            if (
                ev_box[e, 0] > box[p, 2] or box[p, 0] > ev_box[e, 2]
                or ev_box[e, 1] > box[p, 3] or box[p, 1] > ev_box[e, 3]
            ):  # fmt: skip
                continue
        ok = True
        for j in range(n_off[p], n_off[p] + n_cnt[p]):
            v = ev_num[e, n_attr[j]]
            # NaN (attribute absent) fails both comparisons' negation, so check it explicitly.
            if not (v >= n_min[j] and v <= n_max[j]):
                ok = False
                break
        if ok:
            for j in range(s_off[p], s_off[p] + s_cnt[p]):
                if ev_str[e, s_attr[j]] != s_val[j]:
                    ok = False
                    break
        out[k] = ok
    return out


class _Interner:
    """Attribute names and (attribute, string value) pairs as small ints, shared by all
    collections; only ever grows (a few distinct names per archive)."""

    def __init__(self) -> None:
        self.attrs: dict[str, int] = {}
        self.values: dict[tuple[int, str], int] = {}

    def attr(self, name: str) -> int:
        return self.attrs.setdefault(name, len(self.attrs))

    def value(self, attr: int, value: str) -> int:
        return self.values.setdefault((attr, value), len(self.values))


class _Arrays:
    """Growable columns: one numpy array per name, the first ``n`` entries in use."""

    def __init__(self, spec: dict[str, tuple[Any, tuple[int, ...]]], capacity: int = 64) -> None:
        self.n = 0
        self._spec = spec
        self.cols: dict[str, npt.NDArray[Any]] = {
            name: np.zeros((capacity, *shape), dtype) for name, (dtype, shape) in spec.items()
        }

    @classmethod
    def wrap(cls, spec: dict[str, tuple[Any, tuple[int, ...]]], cols: dict[str, Any]) -> _Arrays:
        """Columns given in full (all of spec, equal lengths)."""
        out = cls(spec, 0)
        out.cols = cols
        out.n = len(cols["sid"])
        return out

    def append(self, **values: Any) -> int:
        i = self.n
        if i == len(next(iter(self.cols.values()))):
            for name, col in self.cols.items():
                grown = np.zeros((max(64, 2 * len(col)), *col.shape[1:]), col.dtype)
                grown[:i] = col
                self.cols[name] = grown
        for name, v in values.items():
            self.cols[name][i] = v
        self.n = i + 1
        return i

    def view(self, name: str) -> npt.NDArray[Any]:
        return self.cols[name][: self.n]


_SUB_SPEC: dict[str, tuple[Any, tuple[int, ...]]] = {
    "sid": (np.int64, ()), "alive": (np.bool_, ()), "active": (np.bool_, ()),
    "expires": (np.int64, ()), "types": (np.uint8, ()), "has_t": (np.bool_, ()),
    "t0": (np.int64, ()), "t1": (np.int64, ()), "has_box": (np.bool_, ()),
    "box": (np.float64, (4,)), "n_off": (np.int64, ()), "n_cnt": (np.int64, ()),
    "s_off": (np.int64, ()), "s_cnt": (np.int64, ()),
}  # fmt: skip
_NUM_SPEC: dict[str, tuple[Any, tuple[int, ...]]] = {
    "attr": (np.int64, ()),
    "min": (np.float64, ()),
    "max": (np.float64, ()),
}
_STR_SPEC: dict[str, tuple[Any, tuple[int, ...]]] = {
    "attr": (np.int64, ()),
    "val": (np.int64, ()),
}


def type_mask(types: Iterable[EventType]) -> int:
    mask = 0
    for t in types:
        mask |= int(_TYPE_BIT[t])
    return mask


def index_row(s: Subscription, coll_no: int) -> bytes:
    """The subscription's fixed-size matching fields (a ROW record)."""
    t, b = s.qualifiers.temporal, s.qualifiers.spatial
    return _ROW.pack(
        s.id, s.expires_us, t.start_us if t else 0, t.end_us if t else 0,
        *((b.x_min, b.y_min, b.x_max, b.y_max) if b else (0.0, 0.0, 0.0, 0.0)),
        coll_no, s.active, type_mask(s.event_types), t is not None, b is not None,
    )  # fmt: skip


def attr_row(s: Subscription) -> bytes | None:
    """The numeric and string qualifiers, when there are any (JSON of an AttrRow)."""
    q = s.qualifiers
    if not q.numeric and not q.strings:
        return None
    nums = [[n.attribute, n.min, n.max] for n in q.numeric]
    return json.dumps([nums, [[x.attribute, x.value] for x in q.strings]]).encode()


class _CollectionIndex:
    def __init__(self, interner: _Interner, subs: _Arrays, nums: _Arrays, strs: _Arrays) -> None:
        self._interner = interner
        self._reset(subs, nums, strs)

    def _reset(self, subs: _Arrays, nums: _Arrays, strs: _Arrays) -> None:
        self.subs, self.nums, self.strs = subs, nums, strs
        self.pos_of: dict[int, int] = dict(
            zip(subs.view("sid").tolist(), range(subs.n), strict=True)
        )
        self.dead = 0
        # Positions without a spatial qualifier, when known: without a string qualifier, and
        # by the interned value of their first string qualifier.
        self._unboxed: tuple[I64, dict[int, I64]] | None = None
        self.tree = self._bulk_tree()

    @classmethod
    def of(cls, interner: _Interner, subs: Iterable[Subscription]) -> _CollectionIndex:
        ix = cls(interner, _Arrays(_SUB_SPEC), _Arrays(_NUM_SPEC), _Arrays(_STR_SPEC))
        for s in subs:
            ix.upsert(s)
        return ix

    @classmethod
    def from_rows(
        cls, interner: _Interner, rows: npt.NDArray[Any], attrs: dict[int, AttrRow]
    ) -> _CollectionIndex:
        n = len(rows)
        cols: dict[str, Any] = {
            "sid": rows["sid"].copy(), "alive": np.ones(n, np.bool_),
            "active": rows["active"].astype(np.bool_), "expires": rows["expires"].copy(),
            "types": rows["types"].copy(), "has_t": rows["has_t"].astype(np.bool_),
            "t0": rows["t0"].copy(), "t1": rows["t1"].copy(),
            "has_box": rows["has_box"].astype(np.bool_), "box": rows["box"].copy(),
            "n_off": np.zeros(n, np.int64), "n_cnt": np.zeros(n, np.int64),
            "s_off": np.zeros(n, np.int64), "s_cnt": np.zeros(n, np.int64),
        }  # fmt: skip
        nums, strs = _Arrays(_NUM_SPEC), _Arrays(_STR_SPEC)
        if attrs:
            for pos, sid in enumerate(cols["sid"].tolist()):
                a = attrs.get(sid)
                if a is None:
                    continue
                cols["n_off"][pos], cols["n_cnt"][pos] = nums.n, len(a[0])
                cols["s_off"][pos], cols["s_cnt"][pos] = strs.n, len(a[1])
                for name, lo, hi in a[0]:
                    nums.append(attr=interner.attr(name), min=lo, max=hi)
                for name, value in a[1]:
                    attr = interner.attr(name)
                    strs.append(attr=attr, val=interner.value(attr, value))
        return cls(interner, _Arrays.wrap(_SUB_SPEC, cols), nums, strs)

    def _bulk_tree(self) -> rindex.Index:
        boxed = np.flatnonzero(self.subs.view("has_box") & self.subs.view("alive"))
        # len(tree) is a full-extent query, O(n): track emptiness instead.
        self._tree_empty = not len(boxed)
        if self._tree_empty:
            return rindex.Index()
        box = self.subs.view("box")[boxed]
        return rindex.Index((boxed.astype(np.int64), box[:, :2].copy(), box[:, 2:].copy()))

    def _append(self, s: Subscription) -> int:
        q = self._interner
        quals = s.qualifiers
        n_off = self.nums.n
        for n in quals.numeric:
            self.nums.append(attr=q.attr(n.attribute), min=n.min, max=n.max)
        s_off = self.strs.n
        for x in quals.strings:
            a = q.attr(x.attribute)
            self.strs.append(attr=a, val=q.value(a, x.value))
        t = quals.temporal
        b = quals.spatial
        pos = self.subs.append(
            sid=s.id, alive=True, active=s.active, expires=s.expires_us,
            types=type_mask(s.event_types),
            has_t=t is not None, t0=t.start_us if t else 0, t1=t.end_us if t else 0,
            has_box=b is not None, box=(b.x_min, b.y_min, b.x_max, b.y_max) if b else 0.0,
            n_off=n_off, n_cnt=len(quals.numeric), s_off=s_off, s_cnt=len(quals.strings),
        )  # fmt: skip
        old = self.pos_of.get(s.id)
        if old is not None:
            self.subs.cols["alive"][old] = False
            self.dead += 1
        self.pos_of[s.id] = pos
        if b is None:
            self._unboxed = None
        return pos

    def upsert(self, s: Subscription) -> None:
        pos = self._append(s)
        b = s.qualifiers.spatial
        if b is not None:
            self.tree.insert(pos, (b.x_min, b.y_min, b.x_max, b.y_max))
            self._tree_empty = False
        self._maybe_compact()

    def remove(self, sub_id: int) -> None:
        pos = self.pos_of.pop(sub_id, None)
        if pos is not None:
            self.subs.cols["alive"][pos] = False
            self.dead += 1
            self._maybe_compact()

    def _maybe_compact(self) -> None:
        if self.dead < max(_MIN_COMPACT, self.subs.n // 4):
            return
        keep = np.flatnonzero(self.subs.view("alive"))
        old_subs, old_nums, old_strs = self.subs, self.nums, self.strs
        subs, nums, strs = _Arrays(_SUB_SPEC), _Arrays(_NUM_SPEC), _Arrays(_STR_SPEC)
        for p in keep:
            row = {name: old_subs.cols[name][p] for name in _SUB_SPEC}
            n0, nc = int(row["n_off"]), int(row["n_cnt"])
            s0, sc = int(row["s_off"]), int(row["s_cnt"])
            row["n_off"], row["s_off"] = nums.n, strs.n
            for j in range(n0, n0 + nc):
                nums.append(**{k: old_nums.cols[k][j] for k in _NUM_SPEC})
            for j in range(s0, s0 + sc):
                strs.append(**{k: old_strs.cols[k][j] for k in _STR_SPEC})
            subs.append(**row)
        self._reset(subs, nums, strs)

    def unboxed(self) -> tuple[I64, dict[int, I64]]:
        if self._unboxed is None:
            live = np.flatnonzero(self.subs.view("alive") & ~self.subs.view("has_box"))
            keyed = self.subs.view("s_cnt")[live] > 0
            scan, by_value = live[~keyed], live[keyed]
            values = self.strs.view("val")[self.subs.view("s_off")[by_value]]
            order = np.argsort(values, kind="stable")
            values, by_value = values[order], by_value[order]
            keys, starts = np.unique(values, return_index=True)
            ends = [*starts[1:].tolist(), len(values)][: len(keys)]
            postings = {
                int(k): by_value[a:b] for k, a, b in zip(keys, starts.tolist(), ends, strict=True)
            }
            self._unboxed = (scan.astype(np.int64), postings)
        return self._unboxed

    def match(self, events: Sequence[GranuleEvent], now_us: int) -> list[list[int]]:
        """Ids of the subscriptions each event matches, in position order."""
        E = len(events)
        A = max(1, len(self._interner.attrs))
        ev_type = np.zeros(E, np.uint8)
        ev_t = np.zeros((2, E), np.int64)
        ev_has_box = np.zeros(E, np.bool_)
        ev_box = np.zeros((E, 4), np.float64)
        ev_num = np.full((E, A), np.nan)
        ev_str = np.full((E, A), _NO_VALUE, np.int64)
        attrs, values = self._interner.attrs, self._interner.values
        for i, e in enumerate(events):
            ev_type[i] = _TYPE_BIT[e.type]
            ev_t[0, i], ev_t[1, i] = e.start_us, e.end_us
            if e.box is not None:
                ev_has_box[i] = True
                ev_box[i] = (e.box.x_min, e.box.y_min, e.box.x_max, e.box.y_max)
            for name, v in e.numeric:
                a = attrs.get(name)
                if a is not None:
                    ev_num[i, a] = v
            for name, sv in e.strings:
                a = attrs.get(name)
                if a is not None:
                    ev_str[i, a] = values.get((a, sv), _NO_VALUE)
        scan, postings = self.unboxed()
        cand_ev = [np.repeat(np.arange(E, dtype=np.int64), len(scan))]
        cand_pos = [np.tile(scan.astype(np.int64), E)]
        if postings:
            for i in range(E):
                for v in np.unique(ev_str[i]).tolist():
                    hit = postings.get(v)
                    if hit is not None:
                        cand_ev.append(np.full(len(hit), i, np.int64))
                        cand_pos.append(hit)
        boxed_ev = np.flatnonzero(ev_has_box)
        if len(boxed_ev) and not self._tree_empty:
            intersect: Any = self.tree.intersection_v  # untyped in rtree
            hits, counts = intersect(ev_box[boxed_ev, :2], ev_box[boxed_ev, 2:])
            cand_ev.append(np.repeat(boxed_ev.astype(np.int64), counts.astype(np.int64)))
            cand_pos.append(hits.astype(np.int64))
        ce, cp = np.concatenate(cand_ev), np.concatenate(cand_pos)
        s, n, st = self.subs, self.nums, self.strs
        ok = _check_kernel(
            ce, cp, now_us, ev_type, ev_t[0], ev_t[1], ev_has_box, ev_box, ev_num, ev_str,
            s.view("alive"), s.view("active"), s.view("expires"), s.view("types"),
            s.view("has_t"), s.view("t0"), s.view("t1"), s.view("has_box"), s.view("box"),
            s.view("n_off"), s.view("n_cnt"), n.view("attr"), n.view("min"), n.view("max"),
            s.view("s_off"), s.view("s_cnt"), st.view("attr"), st.view("val"),
        )  # fmt: skip
        ce, cp = ce[ok], cp[ok]
        order = np.lexsort((cp, ce))
        ids = s.view("sid")[cp[order]]
        bounds = np.searchsorted(ce[order], np.arange(E + 1))
        return [ids[bounds[i] : bounds[i + 1]].tolist() for i in range(E)]


class MatchEngine:
    """Thread-safe index of all subscriptions; see the module docstring for the layout."""

    def __init__(self, subs: Iterable[Subscription] = ()) -> None:
        self._lock = threading.Lock()
        self._interner = _Interner()
        by_coll: dict[str, list[Subscription]] = {}
        for s in subs:
            by_coll.setdefault(s.collection, []).append(s)
        self._indexes = {c: _CollectionIndex.of(self._interner, ss) for c, ss in by_coll.items()}

    @classmethod
    def from_rows(
        cls, rows: npt.NDArray[Any], attrs: dict[int, AttrRow], collections: dict[int, str]
    ) -> MatchEngine:
        """The engine over stored ROW records (any order), their attribute qualifiers by
        subscription id, and collection keys by the rows' collection numbers."""
        engine = cls()
        rows = rows[np.argsort(rows["coll"], kind="stable")]
        starts = np.flatnonzero(np.diff(rows["coll"])) + 1
        for chunk in np.split(rows, starts) if len(rows) else []:
            key = collections[int(chunk["coll"][0])]
            engine._indexes[key] = _CollectionIndex.from_rows(engine._interner, chunk, attrs)
        return engine

    def __len__(self) -> int:
        with self._lock:
            return sum(len(ix.pos_of) for ix in self._indexes.values())

    def upsert(self, s: Subscription) -> None:
        """Add a subscription or replace the one with its id (collections never change)."""
        with self._lock:
            ix = self._indexes.get(s.collection)
            if ix is None:
                self._indexes[s.collection] = _CollectionIndex.of(self._interner, [s])
            else:
                ix.upsert(s)

    def remove(self, sub_id: int) -> None:
        with self._lock:
            for ix in self._indexes.values():
                ix.remove(sub_id)

    def match(
        self, events: Sequence[GranuleEvent], now_us: int
    ) -> list[tuple[GranuleEvent, list[int]]]:
        """Each event with the ids of the live subscriptions it matches, in input order."""
        groups: dict[str, list[int]] = {}
        for i, e in enumerate(events):
            groups.setdefault(e.collection, []).append(i)
        out: list[list[int]] = [[] for _ in events]
        with self._lock:
            for coll, idx in groups.items():
                ix = self._indexes.get(coll)
                if ix is None:
                    continue
                for i, ids in zip(idx, ix.match([events[i] for i in idx], now_us), strict=True):
                    out[i] = ids
        return list(zip(events, out, strict=True))


def warm() -> None:
    """Compile (or load from cache) the matching kernel, so no request pays for it."""
    q = Qualifiers(None, (NumericRange("a", 0, 1),), (StringEquals("b", "c"),), Box(0, 0, 1, 1))
    engine = MatchEngine([Subscription(1, "o", "C.1", frozenset({"insert"}), qualifiers=q)])
    engine.match([GranuleEvent("C.1", "insert", "g", 0, 0, Box(0, 0, 1, 1))], 0)

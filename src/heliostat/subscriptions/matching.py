"""In-memory matching of granule events against subscriptions, one index per collection.

Each collection keeps its subscriptions as a record array (positions 0..n): active flag,
expiry, event-type mask, temporal interval, box, and the numeric and string qualifiers as
(offset, count) slices into flat constraint record arrays. Attribute names and string values
are interned to ints through dicts, so a string qualifier is an int comparison in the kernel.

Boxes go into a packed R-tree by position (``_pack``: sort-tile-recursive, nodes of 16, flat
numpy arrays), searched inside the kernel, so a candidate costs no call and no copy.
libspatialindex (``rtree``) was used before: at 10^6 subscriptions its query and Python wrapper
were ~40% of matching, and the engine went from 33-34k to 55k events/s without it. A box across
the antimeridian (a geographic box with x_min > x_max: 170..-170) goes in as two pieces,
170..180 and -180..-170, under the same position; an event across it is looked up as its two
pieces. Subscriptions without a box are looked up by the event's string values when they have a
string qualifier (CSR postings from interned value to positions, by their first string
qualifier), scanned otherwise. One Numba kernel per collection finds and checks every candidate
exactly (liveness, type, time overlap, box, numeric ranges, strings). A pair met through two
pieces comes twice and is dropped after matching.

A packed tree is not updated in place: a new or replaced subscription's position is appended
(the old one tombstoned: ``alive`` false, which the kernel checks) and its pieces are kept in a
short list every query scans, packed into a fresh tree when they pass a sixteenth of the tree
(at least 256; packing 10^4 pieces takes ~1.6 ms, and an upsert at 10^4 per collection cost 16
µs against 26 with rtree inserts). When tombstones reach a quarter of the positions the
collection is compacted and its tree packed again. Every access is under the engine's lock.

At start the index is built from the store's fixed-size rows (``index_row``: 72 bytes per
subscription, read as one numpy array) plus the attribute qualifiers of the subscriptions that
have any, so a restart decodes no JSON for most subscriptions; each tree is packed then.
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
_FANOUT = 16  # entries per tree node
_MAX_LATE = 256  # pieces inserted since the tree was packed, at least, before packing again
# One subscription's matching fields, as stored for rebuilding (struct layout = ROW dtype).
_ROW = struct.Struct("<qqqq4dIBBBB")
ROW = np.dtype(
    [("sid", "<i8"), ("expires", "<i8"), ("t0", "<i8"), ("t1", "<i8"), ("box", "<f8", (4,)),
     ("coll", "<u4"), ("active", "u1"), ("types", "u1"), ("has_t", "u1"), ("has_box", "u1")]
)  # fmt: skip
assert ROW.itemsize == _ROW.size
AttrRow = tuple[list[tuple[str, float, float]], list[tuple[str, str]]]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
U8 = npt.NDArray[np.uint8]
B = npt.NDArray[np.bool_]


_NO_VALUE = -1  # interned id of a string value no qualifier names
_LON = 180.0


@njit(cache=True, nogil=True, inline="always")
def _x_overlap(a0: float, a1: float, b0: float, b1: float) -> bool:
    """Overlap of two x ranges, either of which may cross the antimeridian (x0 > x1)."""
    if a0 <= a1:
        if b0 <= b1:
            return a0 <= b1 and b0 <= a1
        return a1 >= b0 or a0 <= b1
    if b0 <= b1:
        return b1 >= a0 or b0 <= a1
    return True  # both hold ±180


@njit(cache=True, nogil=True, inline="always")
def _check(
    e: int, p: int, now: int,
    ev_type: Any, ev_t0: Any, ev_t1: Any, ev_has_box: Any, ev_box: Any, ev_num: Any, ev_str: Any,
    subs: Any, nums: Any, strs: Any,
) -> bool:  # fmt: skip
    r = subs[p]
    if not r.alive or not r.active:
        return False
    if r.expires != 0 and r.expires <= now:
        return False
    if (r.types & ev_type[e]) == 0:
        return False
    if r.has_t and (ev_t0[e] > r.t1 or ev_t1[e] < r.t0):
        return False
    if r.has_box:
        if not ev_has_box[e]:
            return False
        if ev_box[e, 1] > r.box[3] or r.box[1] > ev_box[e, 3]:
            return False
        if not _x_overlap(ev_box[e, 0], ev_box[e, 2], r.box[0], r.box[2]):
            return False
    for j in range(r.n_off, r.n_off + r.n_cnt):
        c = nums[j]
        v = ev_num[e, c.attr]
        # NaN (attribute absent) fails both comparisons' negation, so check it explicitly.
        if not (v >= c.min and v <= c.max):
            return False
    for j in range(r.s_off, r.s_off + r.s_cnt):  # noqa: SIM110 (a Numba loop)
        if ev_str[e, strs[j].attr] != strs[j].val:
            return False
    return True


@njit(cache=True, nogil=True, inline="always")
def _meet(a: Any, i: int, x0: float, y0: float, x1: float, y1: float) -> bool:
    """Overlap of box a[i] (x0, y0, x1, y1, not across the antimeridian) and a query box (by
    element: a row view per test cost about half of a tree search)."""
    return bool(a[i, 0] <= x1 and x0 <= a[i, 2] and a[i, 1] <= y1 and y0 <= a[i, 3])


@njit(cache=True, nogil=True)
def _take(
    e: int, items: Any, lo: int, hi: int, out_e: Any, out_p: Any, n: int, now: int,
    ev_type: Any, ev_t0: Any, ev_t1: Any, ev_has_box: Any, ev_box: Any, ev_num: Any, ev_str: Any,
    subs: Any, nums: Any, strs: Any,
) -> int:  # fmt: skip
    """Append (e, p) for the candidates p = items[lo:hi] that match event e (see _put)."""
    for k in range(lo, hi):
        p = items[k]
        if _check(
            e, p, now, ev_type, ev_t0, ev_t1, ev_has_box, ev_box, ev_num, ev_str,
            subs, nums, strs,
        ):  # fmt: skip
            n = _put(out_e, out_p, n, e, p)
    return n


@njit(cache=True, nogil=True, inline="always")
def _put(out_e: Any, out_p: Any, n: int, e: int, p: int) -> int:
    """Write match n when it fits (the caller runs again with room for all when not: arrays
    grown and returned by the kernel cost ~300 ns a match in reference counting)."""
    if n < out_e.shape[0]:
        out_e[n] = e
        out_p[n] = p
    return n + 1


@njit(cache=True, nogil=True)
def _str_order(box: Any) -> Any:
    """Sort-tile-recursive order of boxes: vertical slices by x centre, each by y centre, so
    that runs of _FANOUT consecutive boxes are compact."""
    n = box.shape[0]
    cx = box[:, 0] + box[:, 2]
    cy = box[:, 1] + box[:, 3]
    order = np.argsort(cx)
    groups = (n + _FANOUT - 1) // _FANOUT
    run = max(1, int(np.ceil(np.sqrt(groups)))) * _FANOUT
    for s in range(0, n, run):
        seg = order[s : s + run].copy()
        order[s : s + run] = seg[np.argsort(cy[seg])]
    return order


@njit(cache=True, nogil=True)
def _pack(pos: Any, box: Any) -> Any:
    """A packed R-tree of the boxes (by position): items in tree order, then the nodes bottom
    up, each covering a run of items (the first ``n_leaf`` nodes) or of nodes; the root last."""
    n = box.shape[0]
    order = _str_order(box)
    item_pos = pos[order]
    item_box = box[order]
    total = 0
    k = n
    while k > 1 or (k == 1 and total == 0):
        k = (k + _FANOUT - 1) // _FANOUT
        total += k
    node_box = np.empty((total, 4), np.float64)
    node_lo = np.empty(total, np.int64)
    node_hi = np.empty(total, np.int64)
    below, below_start, below_n = item_box, 0, n  # the level being grouped
    at = 0
    n_leaf = (n + _FANOUT - 1) // _FANOUT
    while at < total:
        if at > 0:  # a level of nodes: in STR order first (children move with their node)
            perm = below_start + _str_order(node_box[below_start : below_start + below_n])
            node_box[below_start : below_start + below_n] = node_box[perm]
            node_lo[below_start : below_start + below_n] = node_lo[perm]
            node_hi[below_start : below_start + below_n] = node_hi[perm]
            below = node_box
        start = at
        for lo in range(0, below_n, _FANOUT):
            hi = min(below_n, lo + _FANOUT)
            b = node_box[at]
            b[0], b[1], b[2], b[3] = np.inf, np.inf, -np.inf, -np.inf
            for c in range(below_start + lo, below_start + hi):
                b[0] = min(b[0], below[c, 0])
                b[1] = min(b[1], below[c, 1])
                b[2] = max(b[2], below[c, 2])
                b[3] = max(b[3], below[c, 3])
            node_lo[at], node_hi[at] = below_start + lo, below_start + hi
            at += 1
        below_start, below_n = start, at - start
    return item_pos, item_box, node_box, node_lo, node_hi, n_leaf


@njit(cache=True, nogil=True)
def _match_kernel(
    out_e: Any, out_p: Any, evs: Any, qev: Any, qbox: Any, now: int,
    ev_type: Any, ev_t0: Any, ev_t1: Any, ev_has_box: Any, ev_box: Any, ev_num: Any, ev_str: Any,
    subs: Any, nums: Any, strs: Any,
    item_pos: Any, item_box: Any, node_box: Any, node_lo: Any, node_hi: Any, n_leaf: int,
    late_pos: Any, late_box: Any,
    scan: Any, post_keys: Any, post_start: Any, post_items: Any,
) -> Any:  # fmt: skip
    """The number of matches, written as (event, position) to out_e and out_p as far as they
    have room (see _put): the boxed subscriptions met by query piece r (box ``qbox[r]`` of
    event ``qev[r]``) in the tree and among the boxes inserted since it was packed, and the
    unboxed subscriptions of the events ``evs``; a pair may repeat (see the module docstring)."""
    n = 0
    root = node_box.shape[0] - 1
    stack = np.empty(_FANOUT * 64, np.int64)  # depth x fan-out: 64 levels is 16^64 boxes
    for r in range(qev.shape[0]):
        e = qev[r]
        x0, y0, x1, y1 = qbox[r, 0], qbox[r, 1], qbox[r, 2], qbox[r, 3]
        top = 0
        if root >= 0:
            stack[0] = root
            top = 1
        while top:
            top -= 1
            nd = stack[top]
            if not _meet(node_box, nd, x0, y0, x1, y1):
                continue
            if nd >= n_leaf:
                for c in range(node_lo[nd], node_hi[nd]):
                    stack[top] = c
                    top += 1
                continue
            for k in range(node_lo[nd], node_hi[nd]):
                if _meet(item_box, k, x0, y0, x1, y1) and _check(
                    e, item_pos[k], now, ev_type, ev_t0, ev_t1, ev_has_box, ev_box, ev_num,
                    ev_str, subs, nums, strs,
                ):  # fmt: skip
                    n = _put(out_e, out_p, n, e, item_pos[k])
        for k in range(late_pos.shape[0]):
            if _meet(late_box, k, x0, y0, x1, y1) and _check(
                e, late_pos[k], now, ev_type, ev_t0, ev_t1, ev_has_box, ev_box, ev_num,
                ev_str, subs, nums, strs,
            ):  # fmt: skip
                n = _put(out_e, out_p, n, e, late_pos[k])
    for e in evs:
        # Unboxed: scanned, and looked up by the event's string values.
        n = _take(
            e, scan, 0, scan.shape[0], out_e, out_p, n, now,
            ev_type, ev_t0, ev_t1, ev_has_box, ev_box, ev_num, ev_str,
            subs, nums, strs,
        )  # fmt: skip
        for a in range(ev_str.shape[1]):
            v = ev_str[e, a]
            if v == _NO_VALUE or post_keys.shape[0] == 0:
                continue
            i = np.searchsorted(post_keys, v)
            if i == post_keys.shape[0] or post_keys[i] != v:
                continue
            n = _take(
                e, post_items, post_start[i], post_start[i + 1], out_e, out_p, n, now,
                ev_type, ev_t0, ev_t1, ev_has_box, ev_box, ev_num, ev_str,
                subs, nums, strs,
            )  # fmt: skip
    return n


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
    """A growable record array, the first ``n`` records in use: the kernel reads a candidate's
    fields from one or two cache lines (columns cost a miss each, at 10^6 subscriptions)."""

    def __init__(self, dtype: np.dtype[Any], capacity: int = 64) -> None:
        self.n = 0
        self.data: npt.NDArray[Any] = np.zeros(capacity, dtype)

    @classmethod
    def wrap(cls, dtype: np.dtype[Any], cols: dict[str, Any]) -> _Arrays:
        """Records from columns given in full (equal lengths; missing fields zero)."""
        n = len(next(iter(cols.values())))
        out = cls(dtype, n)
        for name, col in cols.items():
            out.data[name] = col
        out.n = n
        return out

    @classmethod
    def adopt(cls, records: npt.NDArray[Any]) -> _Arrays:
        out = cls(records.dtype, 0)
        out.data, out.n = records, len(records)
        return out

    def append(self, **values: Any) -> int:
        i = self.n
        if i == len(self.data):
            grown = np.zeros(max(64, 2 * i), self.data.dtype)
            grown[:i] = self.data
            self.data = grown
        for name, v in values.items():
            self.data[name][i] = v
        self.n = i + 1
        return i

    def view(self, name: str) -> npt.NDArray[Any]:
        return self.data[name][: self.n]

    def records(self) -> npt.NDArray[Any]:
        return self.data[: self.n]


# Flags first, then what the kernel reads in the order it reads it.
_SUB = np.dtype(
    [("alive", "?"), ("active", "?"), ("types", "u1"), ("has_t", "?"), ("has_box", "?"),
     ("expires", "<i8"), ("t0", "<i8"), ("t1", "<i8"), ("box", "<f8", (4,)),
     ("n_off", "<i4"), ("n_cnt", "<i4"), ("s_off", "<i4"), ("s_cnt", "<i4"), ("sid", "<i8")],
    align=True,
)  # fmt: skip
_NUM = np.dtype([("attr", "<i8"), ("min", "<f8"), ("max", "<f8")], align=True)
_STR = np.dtype([("attr", "<i8"), ("val", "<i8")], align=True)


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


def _pieces(pos: I64, box: F64) -> tuple[I64, F64]:
    """Boxes cut at the antimeridian: one piece each, two for those across it."""
    cross = box[:, 0] > box[:, 2]
    if not cross.any():
        return pos, box
    east, west = box[cross].copy(), box[cross].copy()
    east[:, 2], west[:, 0] = _LON, -_LON
    return (
        np.concatenate((pos[~cross], pos[cross], pos[cross])),
        np.concatenate((box[~cross], east, west)),
    )


def _ranges(starts: I64, counts: I64) -> I64:
    """The indexes starts[i] .. starts[i] + counts[i] - 1 of every i, in order."""
    ends = np.cumsum(counts)
    return np.arange(int(ends[-1]) if len(ends) else 0) + np.repeat(starts - ends + counts, counts)


class _Tree:
    """A packed R-tree (``_pack``) of the pieces of a collection's boxes, by position, and the
    pieces inserted since it was packed, which every query scans until they are packed in."""

    def __init__(self, pos: I64, box: F64) -> None:
        self.packed: tuple[Any, ...] = _pack(pos, np.ascontiguousarray(box))
        self.size = len(pos)
        # Inserted since: positions and boxes, contiguous (so the kernel has one signature).
        self.late_n = 0
        self.late_pos = np.zeros(16, np.int64)
        self.late_box = np.zeros((16, 4), np.float64)

    def insert(self, pos: int, x0: float, y0: float, x1: float, y1: float) -> None:
        n = self.late_n
        if n == len(self.late_pos):
            self.late_pos = np.concatenate((self.late_pos, np.zeros(n, np.int64)))
            self.late_box = np.concatenate((self.late_box, np.zeros((n, 4), np.float64)))
        self.late_pos[n] = pos
        self.late_box[n] = (x0, y0, x1, y1)
        self.late_n = n + 1


def _laid_out(
    subs: _Arrays, nums: _Arrays, strs: _Arrays, keep: I64
) -> tuple[_Arrays, _Arrays, _Arrays]:
    """The subscriptions at positions ``keep`` and their constraints, placed in the order the
    kernel meets them: those without a box by first string value (a posting list is then one
    run of memory), then the boxed in the tree's order (a search's hits lie close). Scattered,
    their records' cache misses were most of matching at 10^6."""
    rec = subs.records()[keep]
    s_val = np.full(len(keep), -1, np.int64)
    keyed = rec["s_cnt"] > 0
    s_val[keyed] = strs.view("val")[rec["s_off"][keyed]]
    unboxed = np.flatnonzero(~rec["has_box"])
    unboxed = unboxed[np.argsort(s_val[unboxed], kind="stable")]
    boxed = np.flatnonzero(rec["has_box"]).astype(np.int64)
    boxed = boxed[_str_order(np.ascontiguousarray(rec["box"][boxed]))]
    rec = rec[np.concatenate((unboxed, boxed))]
    num = nums.records()[_ranges(rec["n_off"].astype(np.int64), rec["n_cnt"])]
    string = strs.records()[_ranges(rec["s_off"].astype(np.int64), rec["s_cnt"])]
    rec["n_off"] = np.cumsum(rec["n_cnt"]) - rec["n_cnt"]
    rec["s_off"] = np.cumsum(rec["s_cnt"]) - rec["s_cnt"]
    return _Arrays.adopt(rec), _Arrays.adopt(num), _Arrays.adopt(string)


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
        self._pack()
        # Positions without a spatial qualifier, when known: without a string qualifier, and
        # postings (sorted values, CSR starts, positions) by their first string qualifier.
        self._unboxed: tuple[I64, I64, I64, I64] | None = None

    def _pack(self) -> None:
        """Pack the live boxes into a fresh tree."""
        boxed = np.flatnonzero(self.subs.view("has_box") & self.subs.view("alive"))
        self.tree = _Tree(*_pieces(boxed.astype(np.int64), self.subs.view("box")[boxed]))

    @classmethod
    def of(cls, interner: _Interner, subs: Iterable[Subscription]) -> _CollectionIndex:
        ix = cls(interner, _Arrays(_SUB), _Arrays(_NUM), _Arrays(_STR))
        for s in subs:
            ix.upsert(s)
        return ix

    @classmethod
    def from_rows(
        cls, interner: _Interner, rows: npt.NDArray[Any], attrs: dict[int, AttrRow], has: B
    ) -> _CollectionIndex:
        """The index of ROW records, ``has`` marking those with attribute qualifiers."""
        n = len(rows)
        cols: dict[str, Any] = {
            "sid": rows["sid"].copy(), "alive": np.ones(n, np.bool_),
            "active": rows["active"].astype(np.bool_), "expires": rows["expires"].copy(),
            "types": rows["types"].copy(), "has_t": rows["has_t"].astype(np.bool_),
            "t0": rows["t0"].copy(), "t1": rows["t1"].copy(),
            "has_box": rows["has_box"].astype(np.bool_), "box": rows["box"].copy(),
        }  # fmt: skip
        # Plain lists, made arrays at the end: per-element numpy writes cost more than the rest.
        offsets: list[list[int]] = [[0] * n for _ in range(4)]  # n_off, n_cnt, s_off, s_cnt
        num: list[list[Any]] = [[], [], []]  # attr, min, max
        strs: list[list[int]] = [[], []]  # attr, val
        sids = cols["sid"].tolist()
        for pos in np.flatnonzero(has).tolist():
            a = attrs[sids[pos]]
            offsets[0][pos], offsets[1][pos] = len(num[0]), len(a[0])
            offsets[2][pos], offsets[3][pos] = len(strs[0]), len(a[1])
            for name, lo, hi in a[0]:
                num[0].append(interner.attr(name))
                num[1].append(lo)
                num[2].append(hi)
            for name, value in a[1]:
                attr = interner.attr(name)
                strs[0].append(attr)
                strs[1].append(interner.value(attr, value))
        for name, col in zip(("n_off", "n_cnt", "s_off", "s_cnt"), offsets, strict=True):
            cols[name] = np.array(col, np.int64)
        nums = _Arrays.wrap(_NUM, {
            "attr": np.array(num[0], np.int64), "min": np.array(num[1], np.float64),
            "max": np.array(num[2], np.float64),
        })  # fmt: skip
        strings = _Arrays.wrap(
            _STR, {"attr": np.array(strs[0], np.int64), "val": np.array(strs[1], np.int64)}
        )
        subs = _Arrays.wrap(_SUB, cols)
        return cls(interner, *_laid_out(subs, nums, strings, np.arange(n, dtype=np.int64)))

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
            self.subs.data["alive"][old] = False
            self.dead += 1
        self.pos_of[s.id] = pos
        if b is None:
            self._unboxed = None
        elif b.x_min > b.x_max:  # across the antimeridian: two pieces
            self.tree.insert(pos, b.x_min, b.y_min, _LON, b.y_max)
            self.tree.insert(pos, -_LON, b.y_min, b.x_max, b.y_max)
        else:
            self.tree.insert(pos, b.x_min, b.y_min, b.x_max, b.y_max)
        return pos

    def upsert(self, s: Subscription) -> None:
        self._append(s)
        self._maybe_compact()

    def remove(self, sub_id: int) -> None:
        pos = self.pos_of.pop(sub_id, None)
        if pos is not None:
            self.subs.data["alive"][pos] = False
            self.dead += 1
            self._maybe_compact()

    def _maybe_compact(self) -> None:
        """Drop the tombstoned positions and pack the tree again, when they are many; pack it
        again when the pieces inserted since it was packed are many."""
        if self.dead < max(_MIN_COMPACT, self.subs.n // 4):
            if self.tree.late_n > max(_MAX_LATE, self.tree.size // 16):
                self._pack()
            return
        keep = np.flatnonzero(self.subs.view("alive")).astype(np.int64)
        self._reset(*_laid_out(self.subs, self.nums, self.strs, keep))

    def unboxed(self) -> tuple[I64, I64, I64, I64]:
        if self._unboxed is None:
            live = np.flatnonzero(self.subs.view("alive") & ~self.subs.view("has_box"))
            keyed = self.subs.view("s_cnt")[live] > 0
            scan, by_value = live[~keyed], live[keyed]
            values = self.strs.view("val")[self.subs.view("s_off")[by_value]]
            order = np.argsort(values, kind="stable")
            values, by_value = values[order], by_value[order]
            keys, starts = np.unique(values, return_index=True)
            starts = np.append(starts, len(values)).astype(np.int64)
            self._unboxed = (
                scan.astype(np.int64),
                keys.astype(np.int64),
                starts,
                by_value.astype(np.int64),
            )
        return self._unboxed

    def match(self, evs: I64, ev: _Events, now_us: int) -> tuple[I64, I64]:
        """(event, subscription id) of the events ``evs``' matches; a pair may repeat."""
        scan, keys, starts, postings = self.unboxed()
        boxed = evs[ev.has_box[evs]]
        qev, qbox = _pieces(boxed, ev.box[boxed])
        t = self.tree
        item_pos, item_box, node_box, node_lo, node_hi, n_leaf = t.packed
        late_pos, late_box = t.late_pos[: t.late_n], t.late_box[: t.late_n]
        while True:
            n = _match_kernel(
                ev.out_e, ev.out_p, evs, qev, qbox, now_us,
                ev.type, ev.t0, ev.t1, ev.has_box, ev.box, ev.num, ev.str,
                self.subs.records(), self.nums.records(), self.strs.records(),
                item_pos, item_box, node_box, node_lo, node_hi, n_leaf, late_pos, late_box,
                scan, keys, starts, postings,
            )  # fmt: skip
            if n <= len(ev.out_e):
                return ev.out_e[:n].copy(), self.subs.view("sid")[ev.out_p[:n]]
            ev.out_e, ev.out_p = np.empty(2 * n, np.int64), np.empty(2 * n, np.int64)


class _Events:
    """A batch of events as columns for the kernel (attributes by interned number)."""

    def __init__(self, events: Sequence[GranuleEvent], interner: _Interner) -> None:
        E = len(events)
        A = max(1, len(interner.attrs))
        self.type = np.zeros(E, np.uint8)
        self.t0 = np.zeros(E, np.int64)
        self.t1 = np.zeros(E, np.int64)
        self.has_box = np.zeros(E, np.bool_)
        self.box = np.zeros((E, 4), np.float64)
        self.num = np.full((E, A), np.nan)
        self.str = np.full((E, A), _NO_VALUE, np.int64)
        # The kernel's output, reused by every collection (grown when a collection needs more).
        self.out_e = np.empty(8 * E + 64, np.int64)
        self.out_p = np.empty(8 * E + 64, np.int64)
        attrs, values = interner.attrs, interner.values
        for i, e in enumerate(events):
            self.type[i] = _TYPE_BIT[e.type]
            self.t0[i], self.t1[i] = e.start_us, e.end_us
            if e.box is not None:
                self.has_box[i] = True
                self.box[i] = (e.box.x_min, e.box.y_min, e.box.x_max, e.box.y_max)
            for name, v in e.numeric:
                a = attrs.get(name)
                if a is not None:
                    self.num[i, a] = v
            for name, sv in e.strings:
                a = attrs.get(name)
                if a is not None:
                    self.str[i, a] = values.get((a, sv), _NO_VALUE)


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
        # Marked at once: a lookup per subscription was a tenth of a restart at 10^6.
        has = np.isin(rows["sid"], np.fromiter(attrs, np.int64, len(attrs)))
        for chunk, mine in zip(np.split(rows, starts), np.split(has, starts), strict=True):
            if not len(chunk):
                continue
            key = collections[int(chunk["coll"][0])]
            ix = engine._indexes[key] = _CollectionIndex.from_rows(
                engine._interner, chunk, attrs, mine
            )
            ix.unboxed()
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

    def remove(self, sub_id: int, collection: str | None = None) -> None:
        """Drop a subscription; its collection, when known, spares a look in every index."""
        with self._lock:
            if collection is not None:
                ix = self._indexes.get(collection)
                if ix is not None:
                    ix.remove(sub_id)
                return
            for ix in self._indexes.values():
                ix.remove(sub_id)

    def match(
        self, events: Sequence[GranuleEvent], now_us: int
    ) -> list[tuple[GranuleEvent, list[int]]]:
        """Each event with the ids of the live subscriptions it matches (ascending), in input
        order."""
        groups: dict[str, list[int]] = {}
        for i, e in enumerate(events):
            groups.setdefault(e.collection, []).append(i)
        found_e: list[I64] = []
        found_id: list[I64] = []
        with self._lock:
            ev = _Events(events, self._interner)
            for coll, idx in groups.items():
                ix = self._indexes.get(coll)
                if ix is not None:
                    at, ids = ix.match(np.array(idx, np.int64), ev, now_us)
                    found_e.append(at)
                    found_id.append(ids)
        if not found_e:
            return [(x, []) for x in events]
        ev_no, ids = np.concatenate(found_e), np.concatenate(found_id)
        order = np.lexsort((ids, ev_no))
        ev_no, ids = ev_no[order], ids[order]
        # A pair met through two pieces (boxes across the antimeridian) comes twice.
        first = np.ones(len(ev_no), np.bool_)
        first[1:] = (ev_no[1:] != ev_no[:-1]) | (ids[1:] != ids[:-1])
        ev_no, ids = ev_no[first], ids[first]
        bounds = np.searchsorted(ev_no, np.arange(len(events) + 1)).tolist()
        id_list = ids.tolist()
        return [(x, id_list[bounds[i] : bounds[i + 1]]) for i, x in enumerate(events)]


def warm() -> None:
    """Compile (or load from cache) the matching kernel, so no request pays for it."""
    q = Qualifiers(None, (NumericRange("a", 0, 1),), (StringEquals("b", "c"),), Box(0, 0, 1, 1))
    engine = MatchEngine([Subscription(1, "o", "C.1", frozenset({"insert"}), qualifiers=q)])
    engine.match([GranuleEvent("C.1", "insert", "g", 0, 0, Box(0, 0, 1, 1))], 0)

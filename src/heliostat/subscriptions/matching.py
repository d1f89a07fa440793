"""In-memory matching of granule events against subscriptions, one index per collection.

Each collection keeps its subscriptions as a struct of arrays (positions 0..n): active flag,
expiry, event-type mask, temporal interval, box, and the numeric and string qualifiers as
(offset, count) slices into flat constraint arrays. Attribute names and string values are
interned to ints through dicts, so a string qualifier is an int comparison in the kernel.

Boxes are cut at the antimeridian into pieces (a geographic box with x_min > x_max crosses it:
170..-170 is 170..180 and -180..-170). Pieces go into a uniform grid (cells about the median
piece size, as CSR arrays), except pieces spanning many cells and those added since the grid was
built, which every event scans. An event visits the cells its own pieces cover and reports a
piece only from the cell holding the lower-left corner of their overlap, so a pair is seen once
per piece pair; a pair met through two piece pairs (both crossing) is dropped after matching.
Subscriptions without a box are looked up by the event's string values when they have a string
qualifier (CSR postings from interned value to positions, by their first string qualifier),
scanned otherwise. One Numba kernel per collection does all of it per event and checks every
candidate exactly (liveness, type, time overlap, box, numeric ranges, strings). The grid
replaced an ``rtree`` R-tree: its per-batch queries were most of the matching time, and its
bulk load most of the restart.

Removal is lazy: a removed or replaced subscription's position is tombstoned (``alive`` false,
which the kernel checks) and a new version appended. When tombstones reach a quarter of the
positions the collection is compacted and its grid rebuilt; the grid is also rebuilt when the
pieces added since outnumber an eighth of it.

At start the index is built from the store's fixed-size rows (``index_row``: 72 bytes per
subscription, read as one numpy array) plus the attribute qualifiers of the subscriptions that
have any, so a restart decodes no JSON for most subscriptions.
"""

from __future__ import annotations

import json
import math
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
_WIDE_CELLS = 64  # pieces spanning more cells are scanned rather than gridded
_MAX_CELLS = 1 << 20
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
def _cell(v: float, g0: float, size: float, n: int) -> int:
    k = math.floor((v - g0) / size)
    return min(max(k, 0), n - 1)


@njit(cache=True, nogil=True)
def _build_grid(
    pbox: Any, plive: Any, gx0: float, gy0: float, cw: float, ch: float, nx: int, ny: int
) -> Any:
    """CSR cells of the live pieces spanning at most _WIDE_CELLS cells, and the others."""
    n = pbox.shape[0]
    start = np.zeros(nx * ny + 1, np.int64)
    wide = np.zeros(n, np.bool_)
    for p in range(n):
        if not plive[p]:
            continue
        x0, x1 = _cell(pbox[p, 0], gx0, cw, nx), _cell(pbox[p, 2], gx0, cw, nx)
        y0, y1 = _cell(pbox[p, 1], gy0, ch, ny), _cell(pbox[p, 3], gy0, ch, ny)
        if (x1 - x0 + 1) * (y1 - y0 + 1) > _WIDE_CELLS:
            wide[p] = True
            continue
        for cy in range(y0, y1 + 1):
            for cx in range(x0, x1 + 1):
                start[cy * nx + cx + 1] += 1
    start = np.cumsum(start)
    fill = start[:-1].copy()
    items = np.empty(start[-1], np.int64)
    for p in range(n):
        if not plive[p] or wide[p]:
            continue
        x0, x1 = _cell(pbox[p, 0], gx0, cw, nx), _cell(pbox[p, 2], gx0, cw, nx)
        y0, y1 = _cell(pbox[p, 1], gy0, ch, ny), _cell(pbox[p, 3], gy0, ch, ny)
        for cy in range(y0, y1 + 1):
            for cx in range(x0, x1 + 1):
                c = cy * nx + cx
                items[fill[c]] = p
                fill[c] += 1
    return start, items, np.flatnonzero(wide)


@njit(cache=True, nogil=True, inline="always")
def _check(
    e: int, p: int, now: int,
    ev_type: Any, ev_t0: Any, ev_t1: Any, ev_has_box: Any, ev_box: Any, ev_num: Any, ev_str: Any,
    alive: Any, active: Any, expires: Any, types: Any, has_t: Any, t0: Any, t1: Any,
    has_box: Any, box: Any, n_off: Any, n_cnt: Any, n_attr: Any, n_min: Any, n_max: Any,
    s_off: Any, s_cnt: Any, s_attr: Any, s_val: Any,
) -> bool:  # fmt: skip
    if not alive[p] or not active[p]:
        return False
    if expires[p] != 0 and expires[p] <= now:
        return False
    if (types[p] & ev_type[e]) == 0:
        return False
    if has_t[p] and (ev_t0[e] > t1[p] or ev_t1[e] < t0[p]):
        return False
    if has_box[p]:
        if not ev_has_box[e]:
            return False
        if ev_box[e, 1] > box[p, 3] or box[p, 1] > ev_box[e, 3]:
            return False
        if not _x_overlap(ev_box[e, 0], ev_box[e, 2], box[p, 0], box[p, 2]):
            return False
    for j in range(n_off[p], n_off[p] + n_cnt[p]):
        v = ev_num[e, n_attr[j]]
        # NaN (attribute absent) fails both comparisons' negation, so check it explicitly.
        if not (v >= n_min[j] and v <= n_max[j]):
            return False
    for j in range(s_off[p], s_off[p] + s_cnt[p]):  # noqa: SIM110 (a Numba loop)
        if ev_str[e, s_attr[j]] != s_val[j]:
            return False
    return True


@njit(cache=True, nogil=True)
def _match_kernel(
    evs: Any, now: int,
    ev_type: Any, ev_t0: Any, ev_t1: Any, ev_has_box: Any, ev_box: Any, ev_num: Any, ev_str: Any,
    alive: Any, active: Any, expires: Any, types: Any, has_t: Any, t0: Any, t1: Any,
    has_box: Any, box: Any, n_off: Any, n_cnt: Any, n_attr: Any, n_min: Any, n_max: Any,
    s_off: Any, s_cnt: Any, s_attr: Any, s_val: Any,
    pbox: Any, ppos: Any, grid: Any, cell_start: Any, cell_items: Any, scan_pieces: Any,
    scan: Any, post_keys: Any, post_start: Any, post_items: Any,
) -> Any:  # fmt: skip
    """(event, position) of every match of the events ``evs``; a pair may repeat (see the
    module docstring)."""
    gx0, gy0, cw, ch = grid[0], grid[1], grid[2], grid[3]
    nx, ny = int(grid[4]), int(grid[5])
    out_e = np.empty(64, np.int64)
    out_p = np.empty(64, np.int64)
    n = 0
    q = np.empty((2, 4), np.float64)
    for e in evs:
        m0 = n
        if ev_has_box[e]:
            q[0, :] = ev_box[e]
            nq = 1
            if ev_box[e, 0] > ev_box[e, 2]:  # across the antimeridian: two pieces
                q[0, 2] = _LON
                q[1, :] = ev_box[e]
                q[1, 0] = -_LON
                nq = 2
            for k in range(nq):
                ex0, ey0, ex1, ey1 = q[k, 0], q[k, 1], q[k, 2], q[k, 3]
                if cell_items.shape[0]:
                    cx0, cx1 = _cell(ex0, gx0, cw, nx), _cell(ex1, gx0, cw, nx)
                    cy0, cy1 = _cell(ey0, gy0, ch, ny), _cell(ey1, gy0, ch, ny)
                    for cy in range(cy0, cy1 + 1):
                        for cx in range(cx0, cx1 + 1):
                            c = cy * nx + cx
                            for j in range(cell_start[c], cell_start[c + 1]):
                                pc = cell_items[j]
                                if (
                                    pbox[pc, 0] > ex1 or ex0 > pbox[pc, 2]
                                    or pbox[pc, 1] > ey1 or ey0 > pbox[pc, 3]
                                ):  # fmt: skip
                                    continue
                                # Only from the cell of the overlap's lower-left corner.
                                if _cell(max(ex0, pbox[pc, 0]), gx0, cw, nx) != cx:
                                    continue
                                if _cell(max(ey0, pbox[pc, 1]), gy0, ch, ny) != cy:
                                    continue
                                if n == out_e.shape[0]:
                                    out_e = np.concatenate((out_e, np.empty(n, np.int64)))
                                    out_p = np.concatenate((out_p, np.empty(n, np.int64)))
                                out_e[n] = e
                                out_p[n] = ppos[pc]
                                n += 1
                for j in range(scan_pieces.shape[0]):
                    pc = scan_pieces[j]
                    if (
                        pbox[pc, 0] > ex1 or ex0 > pbox[pc, 2]
                        or pbox[pc, 1] > ey1 or ey0 > pbox[pc, 3]
                    ):  # fmt: skip
                        continue
                    if n == out_e.shape[0]:
                        out_e = np.concatenate((out_e, np.empty(n, np.int64)))
                        out_p = np.concatenate((out_p, np.empty(n, np.int64)))
                    out_e[n] = e
                    out_p[n] = ppos[pc]
                    n += 1
        # Unboxed: scanned, or by the event's string values.
        extra = scan.shape[0]
        for a in range(ev_str.shape[1]):
            v = ev_str[e, a]
            if v == _NO_VALUE or post_keys.shape[0] == 0:
                continue
            i = np.searchsorted(post_keys, v)
            if i < post_keys.shape[0] and post_keys[i] == v:
                extra += post_start[i + 1] - post_start[i]
        while n + extra > out_e.shape[0]:
            out_e = np.concatenate((out_e, np.empty(out_e.shape[0], np.int64)))
            out_p = np.concatenate((out_p, np.empty(out_p.shape[0], np.int64)))
        for j in range(scan.shape[0]):
            out_e[n] = e
            out_p[n] = scan[j]
            n += 1
        for a in range(ev_str.shape[1]):
            v = ev_str[e, a]
            if v == _NO_VALUE or post_keys.shape[0] == 0:
                continue
            i = np.searchsorted(post_keys, v)
            if i < post_keys.shape[0] and post_keys[i] == v:
                for j in range(post_start[i], post_start[i + 1]):
                    out_e[n] = e
                    out_p[n] = post_items[j]
                    n += 1
        # Check this event's candidates exactly, keeping those that match in place.
        w = m0
        for j in range(m0, n):
            p = out_p[j]
            if _check(
                e, p, now, ev_type, ev_t0, ev_t1, ev_has_box, ev_box, ev_num, ev_str,
                alive, active, expires, types, has_t, t0, t1, has_box, box,
                n_off, n_cnt, n_attr, n_min, n_max, s_off, s_cnt, s_attr, s_val,
            ):  # fmt: skip
                out_e[w] = e
                out_p[w] = p
                w += 1
        n = w
    return out_e[:n], out_p[:n]


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
        out.n = len(next(iter(cols.values())))
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
_PIECE_SPEC: dict[str, tuple[Any, tuple[int, ...]]] = {
    "pos": (np.int64, ()),
    "box": (np.float64, (4,)),
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


class _Grid:
    """The gridded pieces of one collection (see the module docstring)."""

    def __init__(self, pbox: F64, plive: B) -> None:
        live = pbox[plive]
        if not len(live):
            self.params = np.array([0.0, 0.0, 1.0, 1.0, 1, 1])
            self.start, self.items = np.zeros(2, np.int64), np.zeros(0, np.int64)
            self.wide = np.zeros(0, np.int64)
            return
        x0, y0 = float(live[:, 0].min()), float(live[:, 1].min())
        ext_x, ext_y = float(live[:, 2].max()) - x0, float(live[:, 3].max()) - y0
        # Cells about the median piece, within a bounded count per piece.
        cw = max(float(np.median(live[:, 2] - live[:, 0])), ext_x / 1024, 1e-9)
        ch = max(float(np.median(live[:, 3] - live[:, 1])), ext_y / 1024, 1e-9)
        limit = min(_MAX_CELLS, 4 * len(live) + 16)
        while (ext_x / cw + 1) * (ext_y / ch + 1) > limit:
            cw, ch = cw * 1.5, ch * 1.5
        nx, ny = int(ext_x / cw) + 1, int(ext_y / ch) + 1
        self.params = np.array([x0, y0, cw, ch, nx, ny], np.float64)
        self.start, self.items, self.wide = _build_grid(pbox, plive, x0, y0, cw, ch, nx, ny)


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
        boxed = np.flatnonzero(subs.view("has_box") & subs.view("alive"))
        pos, box = _pieces(boxed.astype(np.int64), subs.view("box")[boxed])
        self.pieces = _Arrays.wrap(_PIECE_SPEC, {"pos": pos, "box": box.copy()})
        self._grid: _Grid | None = None  # built at the next match
        self._recent: list[int] = []  # pieces added since the grid was built
        # Positions without a spatial qualifier, when known: without a string qualifier, and
        # postings (sorted values, CSR starts, positions) by their first string qualifier.
        self._unboxed: tuple[I64, I64, I64, I64] | None = None

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
        }  # fmt: skip
        # Plain lists, made arrays at the end: per-element numpy writes cost more than the rest.
        offsets: list[list[int]] = [[0] * n for _ in range(4)]  # n_off, n_cnt, s_off, s_cnt
        num: list[list[Any]] = [[], [], []]  # attr, min, max
        strs: list[list[int]] = [[], []]  # attr, val
        if attrs:
            for pos, sid in enumerate(cols["sid"].tolist()):
                a = attrs.get(sid)
                if a is None:
                    continue
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
        nums = _Arrays.wrap(_NUM_SPEC, {
            "attr": np.array(num[0], np.int64), "min": np.array(num[1], np.float64),
            "max": np.array(num[2], np.float64),
        })  # fmt: skip
        strings = _Arrays.wrap(
            _STR_SPEC, {"attr": np.array(strs[0], np.int64), "val": np.array(strs[1], np.int64)}
        )
        return cls(interner, _Arrays.wrap(_SUB_SPEC, cols), nums, strings)

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
        elif b.x_min > b.x_max:  # across the antimeridian: two pieces
            self._recent.append(self.pieces.append(pos=pos, box=(b.x_min, b.y_min, _LON, b.y_max)))
            self._recent.append(self.pieces.append(pos=pos, box=(-_LON, b.y_min, b.x_max, b.y_max)))
        else:
            self._recent.append(
                self.pieces.append(pos=pos, box=(b.x_min, b.y_min, b.x_max, b.y_max))
            )
        return pos

    def upsert(self, s: Subscription) -> None:
        self._append(s)
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

    def grid(self) -> tuple[_Grid, I64]:
        """The grid, rebuilt when the pieces added since outnumber an eighth of it, and the
        pieces every event scans (wide and recent)."""
        if self._grid is None or len(self._recent) > max(256, len(self.pieces.view("pos")) // 8):
            plive = self.subs.view("alive")[self.pieces.view("pos")]
            self._grid = _Grid(self.pieces.view("box"), plive)
            self._recent = []
        scan = self._grid.wide
        if self._recent:
            scan = np.concatenate((scan, np.array(self._recent, np.int64)))
        return self._grid, scan

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
        grid, scan_pieces = self.grid()
        scan, keys, starts, postings = self.unboxed()
        s, n, st, pc = self.subs, self.nums, self.strs, self.pieces
        e, p = _match_kernel(
            evs, now_us, ev.type, ev.t0, ev.t1, ev.has_box, ev.box, ev.num, ev.str,
            s.view("alive"), s.view("active"), s.view("expires"), s.view("types"),
            s.view("has_t"), s.view("t0"), s.view("t1"), s.view("has_box"), s.view("box"),
            s.view("n_off"), s.view("n_cnt"), n.view("attr"), n.view("min"), n.view("max"),
            s.view("s_off"), s.view("s_cnt"), st.view("attr"), st.view("val"),
            pc.view("box"), pc.view("pos"), grid.params, grid.start, grid.items, scan_pieces,
            scan, keys, starts, postings,
        )  # fmt: skip
        return e, s.view("sid")[p]


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
        for chunk in np.split(rows, starts) if len(rows) else []:
            key = collections[int(chunk["coll"][0])]
            ix = engine._indexes[key] = _CollectionIndex.from_rows(engine._interner, chunk, attrs)
            ix.grid()  # ready means ready: not left to the first match
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

    def remove(self, sub_id: int) -> None:
        with self._lock:
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
        # A pair met through two piece pairs (boxes across the antimeridian) comes twice.
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

"""Every subscription's stored action list, in memory, as recording needs it.

Recording writes, for each match, one action row per enabled action of the subscription, holding
the subscription's action list as stored (a ``sub_actions`` blob: count byte, owner, NUL, JSON),
and one actions_by_owner row per batch and owner. Reading the blobs of a batch's matched
subscriptions from LMDB (~5,000 random B-tree lookups per 1,000 events at 10^6 subscriptions) and
parsing them were over half of recording on a first pass, so they are all read at start (one
sequential scan at 10^6: ~0.25 s when lists repeat, ~2 s when every one differs) and kept up to
date from the change log.

Identical blobs (the same owner and actions) are kept once, numbered; each subscription's number
is in an array indexed by id (-1: none; ids come from one counter, so it is dense: 4 bytes per id
ever given; a binary search over sorted ids instead cost ~9% of publishing at 10^6 in cache
misses). A batch's action keys and owner rows are then built by numpy from arrays of (event,
subscription) pairs, with no Python work per match beyond picking its blob.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
DISABLED = "disabled"  # action param: set (to the reason) when the receiver is gone
KEY = np.dtype([("event", ">u8"), ("sub", ">u8"), ("index", ">u2")])  # an action key
_MIN_STALE = 4096  # lists no subscription holds, at least, before reading all anew
_ALL = [range(n) for n in range(256)]  # the indexes of n actions (a count is one byte)


def enabled(blob: bytes) -> Sequence[int]:
    """The indexes of the enabled actions in a sub_actions blob (its JSON parsed only when one
    may be disabled)."""
    if b'"disabled"' not in blob:
        return _ALL[blob[0]]
    actions = json.loads(blob[blob.index(b"\0") + 1 :])
    return [k for k, (_, params) in enumerate(actions) if not params.get(DISABLED)]


class _Column:
    """A growable int64 array."""

    def __init__(self) -> None:
        self.n = 0
        self.data = np.zeros(64, np.int64)

    def extend(self, values: Any) -> None:
        end = self.n + len(values)
        if end > len(self.data):
            self.data = np.resize(self.data, max(end, 2 * len(self.data)))
        self.data[self.n : end] = values
        self.n = end

    def view(self) -> I64:
        return self.data[: self.n]


class ActionLists:
    def __init__(self, gen: int, rows: Iterable[tuple[bytes, bytes]]) -> None:
        """The lists of the (big-endian id, blob) rows of sub_actions, as of generation gen."""
        self.gen = gen
        self._number: dict[bytes, int] = {}  # blob → list number
        self.blobs: list[bytes] = []
        self.owners: list[bytes] = []  # by owner number
        self._owner_no: dict[bytes, int] = {}
        self._list_owner = _Column()  # per list: owner number
        self._start = _Column()  # per list: its enabled indexes, in _flat
        self._count = _Column()
        self._flat = _Column()
        keys: list[bytes] = []
        numbers: list[int] = []
        for k, blob in rows:
            keys.append(k)
            numbers.append(self._list(blob))
        ids = np.frombuffer(b"".join(keys), ">u8").astype(np.int64)
        self._by_id = np.full(int(ids.max()) + 1 if len(ids) else 64, -1, np.int32)
        self._by_id[ids] = numbers
        self._live = len(ids)
        self._flush()

    def __len__(self) -> int:
        return self._live

    def _list(self, blob: bytes) -> int:
        n = self._number.get(blob)
        if n is None:
            n = self._number[blob] = len(self.blobs)
            self.blobs.append(blob)
        return n

    def _flush(self) -> None:
        """Number the owners and index the enabled actions of the lists added since the last
        flush, in bulk (per list as added cost ~4 s at start with 10^6 distinct lists)."""
        new = self.blobs[self._list_owner.n :]
        if not new:
            return
        number = self._owner_no
        for owner in [b[1 : b.index(b"\0")] for b in new]:
            if owner not in number:
                number[owner] = len(self.owners)
                self.owners.append(owner)
        self._list_owner.extend([number[b[1 : b.index(b"\0")]] for b in new])
        idx = [enabled(b) for b in new]
        count = np.fromiter(map(len, idx), np.int64, len(idx))
        self._start.extend(self._flat.n + np.cumsum(count) - count)
        self._count.extend(count)
        self._flat.extend(np.fromiter(itertools.chain.from_iterable(idx), np.int64))

    @property
    def stale(self) -> bool:
        """Lists no subscription may hold any more outnumber the subscriptions: read anew."""
        return len(self.blobs) > 2 * self._live + _MIN_STALE

    def update(self, gen: int, written: Mapping[int, bytes | None]) -> None:
        """Subscriptions written up to generation gen, with their blobs now (None: deleted)."""
        top = max(written, default=0)
        if top >= len(self._by_id):
            grown = np.full(max(top + 1, 2 * len(self._by_id)), -1, np.int32)
            grown[: len(self._by_id)] = self._by_id
            self._by_id = grown
        for sid, blob in written.items():
            was = int(self._by_id[sid] >= 0)
            self._by_id[sid] = -1 if blob is None else self._list(blob)
            self._live += (blob is not None) - was
        self._flush()
        self.gen = gen

    def numbers(self, sids: I64) -> I64:
        """Each subscription's list number; -1 for one not stored."""
        out = np.full(len(sids), -1, np.int64)
        known = sids < len(self._by_id)
        out[known] = self._by_id[sids[known]]
        return out

    def actions(self, events: I64, sids: I64) -> tuple[npt.NDArray[Any], I64, I64]:
        """For (event id, subscription id) pairs in key order: the keys of their enabled
        actions (KEY records, in order), each action's list number, and its owner number."""
        lists = self.numbers(sids)
        stored = lists >= 0
        events, sids, lists = events[stored], sids[stored], lists[stored]
        count = self._count.view()[lists]
        total = int(count.sum())
        at = np.repeat(np.arange(len(lists)), count)
        within = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
        keys = np.empty(total, KEY)
        keys["event"] = events[at]
        keys["sub"] = sids[at]
        keys["index"] = self._flat.view()[self._start.view()[lists][at] + within]
        action_lists = lists[at]
        return keys, action_lists, self._list_owner.view()[action_lists]

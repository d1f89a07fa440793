"""Every subscription's stored action list, in memory, as recording needs it.

Recording writes, for each match, one action row per enabled action of the subscription, holding
the subscription's action list as stored (a ``sub_actions`` blob: count byte, owner, NUL, JSON),
and one actions_by_owner row per batch and owner. Reading the blobs of a batch's matched
subscriptions from LMDB (~5,000 random B-tree lookups per 1,000 events at 10^6 subscriptions) and
parsing them were over half of recording on a first pass, so they are all read at start (one
sequential scan: ~0.6 s at 10^6) and kept up to date from the change log.

Identical blobs (the same owner and actions) are kept once, numbered (``lists``); each
subscription's number is in two arrays, ids sorted, plus a dict of those written since the arrays
were built (``recent``: id → number, -1 deleted), folded in when it grows. A batch's action keys
and owner rows are then built by numpy from arrays of (event, subscription) pairs, with no Python
work per match beyond picking its blob.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
DISABLED = "disabled"  # action param: set (to the reason) when the receiver is gone
KEY = np.dtype([("event", ">u8"), ("sub", ">u8"), ("index", ">u2")])  # an action key
_MIN_FOLD = 4096  # written subscriptions, at least, kept in ``recent`` before folding them in


def enabled(blob: bytes) -> list[int]:
    """The indexes of the enabled actions in a sub_actions blob (its JSON parsed only when one
    may be disabled)."""
    if b'"disabled"' not in blob:
        return list(range(blob[0]))
    actions = json.loads(blob[blob.index(b"\0") + 1 :])
    return [k for k, (_, params) in enumerate(actions) if not params.get(DISABLED)]


class _Column:
    """A growable int64 array."""

    def __init__(self) -> None:
        self.n = 0
        self.data = np.zeros(64, np.int64)

    def extend(self, values: list[int]) -> None:
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
        self._ids = np.frombuffer(b"".join(keys), ">u8").astype(np.int64)
        self._nums = np.array(numbers, np.int64)
        self.recent: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def _list(self, blob: bytes) -> int:
        n = self._number.get(blob)
        if n is None:
            n = self._number[blob] = len(self.blobs)
            self.blobs.append(blob)
            owner = blob[1 : blob.index(b"\0")]
            o = self._owner_no.setdefault(owner, len(self.owners))
            if o == len(self.owners):
                self.owners.append(owner)
            idx = enabled(blob)
            self._list_owner.extend([o])
            self._start.extend([self._flat.n])
            self._count.extend([len(idx)])
            self._flat.extend(idx)
        return n

    @property
    def stale(self) -> bool:
        """Lists no subscription may hold any more outnumber the subscriptions: build anew."""
        return len(self.blobs) > 2 * len(self._ids) + 2 * len(self.recent) + _MIN_FOLD

    def update(self, gen: int, written: Mapping[int, bytes | None]) -> None:
        """Subscriptions written up to generation gen, with their blobs now (None: deleted)."""
        for sid, blob in written.items():
            self.recent[sid] = -1 if blob is None else self._list(blob)
        self.gen = gen
        if len(self.recent) > max(_MIN_FOLD, len(self._ids) // 64):
            self._fold()

    def _fold(self) -> None:
        ids = np.fromiter(self.recent.keys(), np.int64, len(self.recent))
        nums = np.fromiter(self.recent.values(), np.int64, len(self.recent))
        keep = ~np.isin(self._ids, ids)
        live = nums >= 0
        ids = np.concatenate((self._ids[keep], ids[live]))
        nums = np.concatenate((self._nums[keep], nums[live]))
        order = np.argsort(ids, kind="stable")
        self._ids, self._nums = ids[order], nums[order]
        self.recent = {}

    def numbers(self, sids: I64) -> I64:
        """Each subscription's list number; -1 for one not stored."""
        at = np.minimum(np.searchsorted(self._ids, sids), max(0, len(self._ids) - 1))
        out = np.full(len(sids), -1, np.int64)
        if len(self._ids):
            found = self._ids[at] == sids
            out[found] = self._nums[at[found]]
        if self.recent:
            ids = np.fromiter(self.recent.keys(), np.int64, len(self.recent))
            for i in np.flatnonzero(np.isin(sids, ids)).tolist():
                out[i] = self.recent[int(sids[i])]
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

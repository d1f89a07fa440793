"""The e-mail channel's send log: when each address was last mailed, durable in the subscription
store's LMDB environment, so that a restart (or kill -9) does not reset an address's rate limit,
and shared by every process serving the store.

``email_sent``: BLAKE2b-128 of the address (addresses may outgrow an LMDB key) → the wall-clock
times (µs, 8 bytes each, oldest first) of its last mails: at most ``keep`` of them and none older
than the rate window, pruned on every write; addresses left with none are swept by ``prune``.
Wall-clock times, unlike monotonic ones, mean the same after a restart.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Any

from heliostat.subscriptions.store import SubscriptionStore

_T = struct.Struct(">Q")
Txn = Any


def _key(address: str) -> bytes:
    return hashlib.blake2b(address.encode(), digest_size=16).digest()


def _unpack(raw: bytes | None) -> list[int]:
    if not raw:
        return []
    return [t for (t,) in _T.iter_unpack(raw)]


class SendLog:
    def __init__(self, store: SubscriptionStore) -> None:
        self._db = store.lmdb
        (self._sent,) = store.open_dbs([b"email_sent"])

    def times(self, addresses: Sequence[str]) -> dict[str, list[int]]:
        """Each address's last mail times, oldest first (empty: none kept)."""

        def read(txn: Txn) -> dict[str, list[int]]:
            return {a: _unpack(txn.get(_key(a), db=self._sent)) for a in addresses}

        return self._db.read(read)

    def add(self, sent: Sequence[tuple[str, int]], keep: int, since_us: int) -> None:
        """Log mails (address, time µs), keeping each address's last ``keep`` times from
        since_us on; one transaction, durable when it returns."""

        def write(txn: Txn) -> None:
            for address, time_us in sent:
                k = _key(address)
                times = [t for t in _unpack(txn.get(k, db=self._sent)) if t >= since_us]
                times = sorted([*times, time_us])[-keep:]
                txn.put(k, b"".join(_T.pack(t) for t in times), db=self._sent)

        self._db.write(write)

    def prune(self, since_us: int) -> int:
        """Forget addresses whose last mail is older than since_us; returns how many."""

        def write(txn: Txn) -> int:
            old = [
                k
                for k, raw in txn.cursor(self._sent).iternext()
                if not raw or _T.unpack(raw[-8:])[0] < since_us
            ]
            for k in old:
                txn.delete(k, db=self._sent)
            return len(old)

        return self._db.write(write)

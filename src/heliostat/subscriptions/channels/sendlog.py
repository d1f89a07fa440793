"""The e-mail channel's send log: when each address was last mailed, durable in the subscription
store's LMDB environment, so that a restart (or kill -9) does not reset an address's rate limit,
and shared by every process serving the store.

``email_sent``: BLAKE2b-128 of the address (addresses may outgrow an LMDB key) → the wall-clock
times (µs, 8 bytes each, oldest first) of its last mails: at most ``keep`` of them and none older
than the rate window, pruned on every write; addresses left with none are swept by ``prune``.
Wall-clock times, unlike monotonic ones, mean the same after a restart.

The limit is checked and a slot taken in one write transaction (``reserve``), before the mail
is sent: processes mailing one address at the same instant are serialised by LMDB's writer lock,
so together they send at most the limit. A mail the server refused, or never got, gives its slot
back (``release``); one whose fate is unknown (the connection lost mid-conversation, a timeout, a
crash) keeps it: the limit errs on the side of fewer mails, never more.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from heliostat.subscriptions.store import SubscriptionStore

_T = struct.Struct(">Q")
Txn = Any


@dataclass(frozen=True, slots=True)
class Limits:
    """At most one mail per digest window, and at most rate_limit per rate window (0: no
    rate limit); times in µs."""

    digest_window_us: int
    rate_limit: int
    rate_window_us: int

    @property
    def window_us(self) -> int:
        """How long a mail keeps limiting its address."""
        return max(self.rate_window_us if self.rate_limit else 0, self.digest_window_us)

    def wait_us(self, sent: Sequence[int], now_us: int) -> int:
        """µs until an address with these last mail times may get its next (0: now)."""
        if not sent:
            return 0
        wait = sent[-1] + self.digest_window_us - now_us
        if self.rate_limit and len(sent) >= self.rate_limit:
            wait = max(wait, sent[-self.rate_limit] + self.rate_window_us - now_us)
        # A clock set back waits one window at most.
        return min(max(wait, 0), self.window_us)


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

    def reserve(self, addresses: Sequence[str], now_us: int, limits: Limits) -> dict[str, int]:
        """Take a slot at now_us for each address the limits let have a mail now; returns each
        address's wait in µs (0: reserved). One transaction, durable when it returns."""

        def write(txn: Txn) -> dict[str, int]:
            out = {}
            since = now_us - limits.window_us
            for address in addresses:
                k = _key(address)
                times = [t for t in _unpack(txn.get(k, db=self._sent)) if t >= since]
                out[address] = wait = limits.wait_us(times, now_us)
                if wait == 0:
                    times = sorted([*times, now_us])[-max(limits.rate_limit, 1) :]
                    txn.put(k, b"".join(_T.pack(t) for t in times), db=self._sent)
            return out

        return self._db.write(write)

    def release(self, reserved: Sequence[tuple[str, int]]) -> None:
        """Give back slots (address, reserved at µs) of mails that were not sent."""

        def write(txn: Txn) -> None:
            for address, time_us in reserved:
                k = _key(address)
                times = _unpack(txn.get(k, db=self._sent))
                if time_us in times:
                    times.remove(time_us)
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

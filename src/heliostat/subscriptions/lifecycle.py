"""The delivery ledger: every recorded action's lifecycle, durable in the subscription store's
LMDB environment beside the actions themselves.

    pending ──lease──▶ leased ──delivered──▶ delivered
       ▲                 │ ├──retry (backoff; past the horizon: failed)──▶ pending
       │                 │ ├──failed──▶ failed (the dead-letter list) ──replay──▶ pending
       └─lease expired───┘ └──gone──▶ disabled (and the subscription's action is disabled)

Databases (action keys are the store's: event id, subscription id, action index, 8/8/2 bytes
big-endian):

- ``dl_state``: action key → JSON state (kind, owner, state, attempts, due or lease expiry, lease
  owner, created, last result)
- ``dl_due``: kind number (1) + due time (8) + action key → "": the pending actions
- ``dl_leases``: lease expiry (8) + action key → "": the leased ones
- ``dl_log``: action key + attempt number (2) → JSON (time, outcome, receiver's detail, seconds)
- ``dl_dead``: action key → owner: the dead letters
- ``dl_dead_at``: failure time (8) + action key → "": the dead letters by age, which the deletion
  driver expires after their own (longer) retention and an operator may purge
- ``dl_done``: finish time (8) + action key → "": what the deletion driver removes once old
- ``dl_meta``: the event driver's cursor (the last action key tailed from the store)

A lease is written (and committed) before the channel sees the action, and a result is recorded
only over a state that is not finished yet: an action recorded delivered is never leased again.
Several processes may share the store; every step is one write transaction.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from heliostat.subscriptions.channels.base import Result
from heliostat.subscriptions.model import ACTION_KINDS, ActionKind, MatchedAction, redact_text
from heliostat.subscriptions.store import SubscriptionStore

State = Literal["pending", "leased", "delivered", "failed", "disabled"]
FINISHED: frozenset[State] = frozenset({"delivered", "failed", "disabled"})
_DBS = (
    b"dl_state", b"dl_due", b"dl_leases", b"dl_log", b"dl_dead", b"dl_done", b"dl_meta",
    b"dl_dead_at",
)  # fmt: skip
_CURSOR = b"cursor"
_KEY = struct.Struct(">QQH")
_T = struct.Struct(">Q")
_ATTEMPT = struct.Struct(">H")
_KIND_NO = {k: i for i, k in enumerate(ACTION_KINDS)}
MAX_ATTEMPTS = 65535
US = 1_000_000
Txn = Any


def key_of(a: MatchedAction) -> bytes:
    return _KEY.pack(a.event_id, a.subscription_id, a.index)


def action_id_of(key: bytes) -> str:
    e, s, i = _KEY.unpack(key)
    return f"{e:016x}-{s:016x}-{i:04x}"


def _dumps(v: Any) -> bytes:
    return json.dumps(v, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Jittered exponential backoff: attempt n waits base·2^(n-1) (capped at max_delay_s), of
    which the second half is random ("equal jitter": waits never shrink from one attempt to the
    next, and retries of many actions spread out). A retry that would fall past horizon_s after
    the action was queued fails it into the dead-letter list instead."""

    base_s: float = 5.0
    max_delay_s: float = 6 * 3600.0
    horizon_s: float = 3 * 86400.0

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        d = min(self.max_delay_s, self.base_s * 2.0 ** min(attempt - 1, 62))
        return d / 2 + rng.uniform(0, d / 2)


@dataclass(frozen=True, slots=True)
class ActionState:
    key: bytes
    kind: ActionKind
    owner: str
    state: State
    attempts: int
    due_us: int  # pending: next attempt; leased: lease expiry
    lease_owner: str
    created_us: int  # queued (or replayed): the retry horizon counts from here
    updated_us: int
    detail: str  # the last result's detail

    @property
    def id(self) -> str:
        return action_id_of(self.key)

    def to_json(self) -> bytes:
        return _dumps(
            {"k": self.kind, "o": self.owner, "s": self.state, "n": self.attempts,
             "due": self.due_us, "by": self.lease_owner, "c": self.created_us,
             "u": self.updated_us, "d": self.detail}
        )  # fmt: skip

    @staticmethod
    def from_json(key: bytes, raw: bytes) -> ActionState:
        d = json.loads(raw)
        return ActionState(
            key, d["k"], d["o"], d["s"], d["n"], d["due"], d["by"], d["c"], d["u"], d["d"]
        )

    def index_key(self) -> tuple[bool, bytes]:
        """(leased?, its key in dl_leases or dl_due)."""
        if self.state == "leased":
            return True, _T.pack(self.due_us) + self.key
        return False, bytes([_KIND_NO[self.kind]]) + _T.pack(self.due_us) + self.key


@dataclass(frozen=True, slots=True)
class Attempt:
    number: int
    time_us: int
    outcome: str
    detail: str
    seconds: float  # the channel's time for the batch it was in
    worker: str  # the driver that made it (host:pid:n)


@dataclass(frozen=True, slots=True)
class Leased:
    state: ActionState  # as leased
    queued_us: int  # when it became due (queue wait = lease time - this)

    @property
    def attempt(self) -> int:
        return self.state.attempts + 1


@dataclass(frozen=True, slots=True)
class Recorded:
    """What recording a result did: the state it left (None: the action was removed)."""

    state: State | None
    dead: bool = False  # moved to the dead-letter list now
    gone: bool = False


class Ledger:
    def __init__(self, store: SubscriptionStore, *, seed: int | None = None) -> None:
        self.store = store
        self._db = store.lmdb
        (
            self._state, self._due, self._leases, self._log, self._dead, self._done, self._meta,
            self._dead_at,
        ) = store.open_dbs(_DBS)  # fmt: skip
        self._rng = random.Random(seed)
        counts = self._db.read(
            lambda txn: [txn.stat(db)["entries"] for db in (self._dead, self._dead_at)]
        )
        if counts[0] != counts[1]:
            self._db.write(self._index_dead_letters)

    def _index_dead_letters(self, txn: Txn) -> None:
        """Give dead letters recorded before dl_dead_at existed their entry (by the time their
        state last changed: when they failed)."""
        cur = txn.cursor(self._dead)
        for k in list(cur.iternext(values=False)):
            raw = txn.get(k, db=self._state)
            if raw is not None:
                txn.put(
                    _T.pack(ActionState.from_json(k, raw).updated_us) + k, b"", db=self._dead_at
                )

    def _index(self, txn: Txn, st: ActionState, put: bool) -> None:
        """Add (or remove) an unfinished action's queue entry."""
        if st.state not in ("pending", "leased"):
            return
        leased, k = st.index_key()
        db = self._leases if leased else self._due
        if put:
            txn.put(k, b"", db=db)
        else:
            txn.delete(k, db=db)

    # -- reading --------------------------------------------------------------------------------

    def state(self, key: bytes) -> ActionState | None:
        raw = self._db.read(lambda txn: txn.get(key, db=self._state))
        return None if raw is None else ActionState.from_json(key, raw)

    def attempts(self, key: bytes) -> list[Attempt]:
        def read(txn: Txn) -> list[Attempt]:
            out = []
            cur = txn.cursor(self._log)
            found = cur.set_range(key)
            while found and cur.key()[:18] == key:
                d = json.loads(cur.value())
                out.append(
                    Attempt(
                        _ATTEMPT.unpack(cur.key()[18:])[0], d["t"], d["o"], d["d"], d["s"], d["w"]
                    )
                )
                found = cur.next()
            return out

        return self._db.read(read)

    def cursor(self) -> bytes:
        return self._db.read(lambda txn: txn.get(_CURSOR, db=self._meta) or b"")

    def dead_letters(self, after: bytes, limit: int, owner: str | None) -> list[ActionState]:
        """Dead letters with keys above ``after``, of one owner or all, oldest first."""

        def read(txn: Txn) -> list[ActionState]:
            out: list[ActionState] = []
            cur = txn.cursor(self._dead)
            found = cur.set_range(after + b"\0" if after else b"")
            while found and len(out) < limit:
                k, who = cur.key(), cur.value()
                found = cur.next()
                if owner is not None and who != owner.encode():
                    continue
                raw = txn.get(k, db=self._state)
                if raw is not None:
                    out.append(ActionState.from_json(k, raw))
            return out

        return self._db.read(read)

    def depths(self, now_us: int) -> dict[str, int]:
        """Queue depths: the event driver's (recorded, not yet tailed), the action driver's
        (pending and due now, per kind; leased), the recovery driver's (leases expired), the
        deletion driver's (finished, kept until old), and the dead letters."""

        def read(txn: Txn) -> dict[str, int]:
            out: dict[str, int] = {}
            cur = txn.cursor(self._due)
            for kind in ACTION_KINDS:
                if kind == "watch":
                    continue
                prefix = bytes([_KIND_NO[kind]])
                pending = due = 0
                found = cur.set_range(prefix)
                while found and cur.key()[:1] == prefix:
                    pending += 1
                    due += _T.unpack(cur.key()[1:9])[0] <= now_us
                    found = cur.next()
                out[f"pending.{kind}"] = pending
                out[f"due.{kind}"] = due
            out["leased"] = txn.stat(self._leases)["entries"]
            expired = 0
            cur = txn.cursor(self._leases)
            found = cur.first()
            while found and _T.unpack(cur.key()[:8])[0] <= now_us:
                expired += 1
                found = cur.next()
            out["lease_expired"] = expired  # the recovery driver's queue
            out["dead_letters"] = txn.stat(self._dead)["entries"]
            out["finished"] = txn.stat(self._done)["entries"]
            return out

        out = self._db.read(read)
        out["untailed"] = self.store.count_actions_after(self.cursor(), 1_000_000)
        return out

    # -- the event driver: new actions into the queue -------------------------------------------

    def tail(self, limit: int, now_us: int) -> int:
        """Queue the next recorded actions after the cursor (watch actions are streamed by their
        own RPC, so they only start their retention here); returns how many were read."""
        heads = self.store.action_heads_after(self.cursor(), limit)
        if not heads:
            return 0

        def write(txn: Txn) -> None:
            done = txn.get(_CURSOR, db=self._meta) or b""
            for k, owner, kind in heads:
                if k <= done:
                    continue  # another process tailed it first
                if kind == "watch":
                    txn.put(_T.pack(now_us) + k, b"", db=self._done)
                    continue
                st = ActionState(k, kind, owner, "pending", 0, now_us, "", now_us, now_us, "")
                if txn.put(k, st.to_json(), overwrite=False, db=self._state):
                    self._index(txn, st, True)
            last = heads[-1][0]
            if last > done:
                txn.put(_CURSOR, last, db=self._meta)

        self._db.write(write)
        return len(heads)

    # -- the action driver: lease, then record results ------------------------------------------

    def lease(
        self, kinds: Sequence[ActionKind], limit: int, now_us: int, worker: str, lease_s: float
    ) -> list[Leased]:
        """Lease up to limit pending actions of these kinds that are due, oldest due first
        within a kind; each kind gets an equal share first, so that one kind's backlog does not
        starve the others, then the rest fills from any."""

        def write(txn: Txn) -> list[Leased]:
            out: list[Leased] = []
            until = now_us + int(lease_s * US)
            share = max(1, limit // max(1, len(kinds)))
            for cap in (share, limit):
                for kind in kinds:
                    room = min(cap, limit - len(out))
                    if room > 0:
                        out += self._lease_kind(txn, kind, room, now_us, until, worker)
            return out

        return self._db.write(write)

    def _lease_kind(
        self, txn: Txn, kind: ActionKind, n: int, now_us: int, until: int, worker: str
    ) -> list[Leased]:
        prefix = bytes([_KIND_NO[kind]])
        cur = txn.cursor(self._due)
        found = cur.set_range(prefix)
        todo: list[bytes] = []
        while found and len(todo) < n:
            k = cur.key()
            if k[:1] != prefix or _T.unpack(k[1:9])[0] > now_us:
                break
            todo.append(k)
            found = cur.next()
        out = []
        for k in todo:
            raw = txn.get(k[9:], db=self._state)
            assert raw is not None, "a queued action has a state"
            st = ActionState.from_json(k[9:], raw)
            self._index(txn, st, False)
            new = ActionState(st.key, st.kind, st.owner, "leased", st.attempts, until, worker,
                              st.created_us, now_us, st.detail)  # fmt: skip
            txn.put(st.key, new.to_json(), db=self._state)
            self._index(txn, new, True)
            out.append(Leased(new, st.due_us))
        return out

    def record(
        self,
        results: Sequence[tuple[Leased, Result, float]],
        now_us: int,
        policy: RetryPolicy,
        worker: str,
    ) -> list[Recorded]:
        """Log each attempt and move its action on: delivered; retry after a backoff (failed
        past the horizon); failed into the dead letters; gone → disabled. A result for an
        action already finished (another lease delivered it), or re-leased by another worker
        after this one's lease expired, is logged and changes nothing (unless it was delivered:
        then it is never handed to a channel again)."""

        def write(txn: Txn) -> list[Recorded]:
            out = []
            for leased, result, seconds in results:
                out.append(self._record_one(txn, leased, result, seconds, now_us, policy, worker))
            return out

        return self._db.write(write)

    def _record_one(
        self, txn: Txn, leased: Leased, r: Result, seconds: float, now_us: int,
        policy: RetryPolicy, worker: str,
    ) -> Recorded:  # fmt: skip
        k = leased.state.key
        # A receiver's answer may quote a URL with its password: never kept, so never shown.
        detail = redact_text(r.detail[:2000])
        log = {"t": now_us, "o": r.outcome, "d": detail, "s": seconds, "w": worker}
        raw = txn.get(k, db=self._state)
        if raw is None:
            return Recorded(None)  # deleted meanwhile
        # Numbered by the log, not the lease: two workers may hold it in turn (lease expiry).
        n = min(self._logged(txn, k) + 1, MAX_ATTEMPTS)
        txn.put(k + _ATTEMPT.pack(n), _dumps(log), db=self._log)
        st = ActionState.from_json(k, raw)
        if st.state in FINISHED:
            return Recorded(st.state)
        if st.state == "leased" and st.lease_owner != worker and r.outcome != "delivered":
            return Recorded(st.state)  # re-leased after ours expired: the holder decides
        self._index(txn, st, False)
        state: State
        dead = False
        due = now_us
        if r.outcome == "delivered":
            state = "delivered"
        elif r.outcome == "gone":
            state = "disabled"
        elif r.outcome == "failed":
            state, dead = "failed", True
        else:
            wait = max(policy.delay_s(n, self._rng), r.retry_after_s or 0.0)
            due = now_us + int(wait * US)
            if due > st.created_us + int(policy.horizon_s * US) or n >= MAX_ATTEMPTS:
                state, dead = "failed", True
                detail = f"gave up after {n} attempts: {detail}"
            else:
                state = "pending"
        new = ActionState(k, st.kind, st.owner, state, n, due, "", st.created_us, now_us, detail)
        txn.put(k, new.to_json(), db=self._state)
        if state == "pending":
            self._index(txn, new, True)
        elif dead:
            txn.put(k, st.owner.encode(), db=self._dead)
            txn.put(_T.pack(now_us) + k, b"", db=self._dead_at)  # == new.updated_us
        else:
            txn.put(_T.pack(now_us) + k, b"", db=self._done)
        return Recorded(state, dead=dead, gone=state == "disabled")

    def _logged(self, txn: Txn, key: bytes) -> int:
        """The number of the last attempt logged for an action (0: none)."""
        cur = txn.cursor(self._log)
        found = (cur.set_range(key + b"\xff\xff") and cur.prev()) or cur.last()
        if found and cur.key()[:18] == key:
            return int(_ATTEMPT.unpack(cur.key()[18:])[0])
        return 0

    def release(self, leased: Sequence[Leased], now_us: int) -> int:
        """Give back leases never handed to a channel (a draining server): pending again, due
        now, attempts unchanged."""

        def write(txn: Txn) -> int:
            n = 0
            for item in leased:
                raw = txn.get(item.state.key, db=self._state)
                if raw is None:
                    continue
                st = ActionState.from_json(item.state.key, raw)
                if st.state != "leased" or st.lease_owner != item.state.lease_owner:
                    continue
                n += self._requeue(txn, st, now_us)
            return n

        return self._db.write(write)

    def _requeue(self, txn: Txn, st: ActionState, now_us: int) -> int:
        self._index(txn, st, False)
        new = ActionState(st.key, st.kind, st.owner, "pending", st.attempts, now_us, "",
                          st.created_us, now_us, st.detail)  # fmt: skip
        txn.put(st.key, new.to_json(), db=self._state)
        self._index(txn, new, True)
        return 1

    # -- the recovery driver --------------------------------------------------------------------

    def requeue_expired(self, now_us: int, limit: int) -> int:
        """Put actions whose lease has expired (their worker stalled or died) back in the queue."""

        def write(txn: Txn) -> int:
            expired: list[bytes] = []
            cur = txn.cursor(self._leases)
            found = cur.first()
            while found and len(expired) < limit and _T.unpack(cur.key()[:8])[0] <= now_us:
                expired.append(cur.key()[8:])
                found = cur.next()
            n = 0
            for k in expired:
                raw = txn.get(k, db=self._state)
                if raw is not None and (st := ActionState.from_json(k, raw)).state == "leased":
                    n += self._requeue(txn, st, now_us)
            return n

        return self._db.write(write)

    # -- dead letters ---------------------------------------------------------------------------

    def replay(self, keys: Sequence[bytes], owner: str | None, now_us: int) -> list[bytes]:
        """Queue dead letters again (of this owner only, unless None), due now with a fresh
        retry horizon; returns the keys replayed."""

        def write(txn: Txn) -> list[bytes]:
            out = []
            for k in keys:
                who = txn.get(k, db=self._dead)
                if who is None or (owner is not None and who != owner.encode()):
                    continue
                raw = txn.get(k, db=self._state)
                txn.delete(k, db=self._dead)
                if raw is None:
                    continue
                st = ActionState.from_json(k, raw)
                txn.delete(_T.pack(st.updated_us) + k, db=self._dead_at)
                new = ActionState(k, st.kind, st.owner, "pending", st.attempts, now_us, "",
                                  now_us, now_us, st.detail)  # fmt: skip
                txn.put(k, new.to_json(), db=self._state)
                self._index(txn, new, True)
                out.append(k)
            return out

        return self._db.write(write)

    # -- the deletion driver --------------------------------------------------------------------

    def finished_before(self, before_us: int, limit: int) -> list[bytes]:
        """dl_done entries (finish time + action key) older than before_us, oldest first."""

        def read(txn: Txn) -> list[bytes]:
            out: list[bytes] = []
            cur = txn.cursor(self._done)
            found = cur.first()
            while found and len(out) < limit:
                k = cur.key()
                if _T.unpack(k[:8])[0] >= before_us:
                    break
                out.append(k)
                found = cur.next()
            return out

        return self._db.read(read)

    def delete_logs(self, done: Sequence[bytes]) -> int:
        """Step 1 of deleting finished actions: their attempt logs."""

        def write(txn: Txn) -> int:
            n = 0
            cur = txn.cursor(self._log)
            for d in done:
                k = d[8:]
                while cur.set_range(k) and cur.key()[:18] == k:
                    cur.delete()
                    n += 1
            return n

        return self._db.write(write)

    def delete_actions(self, done: Sequence[bytes]) -> tuple[int, int]:
        """Step 2: the actions, their states and events left without actions; returns (actions,
        events) removed."""

        def write(txn: Txn) -> tuple[int, int]:
            keys = []
            for d in done:
                if txn.delete(d, db=self._done):
                    txn.delete(d[8:], db=self._state)
                    keys.append(d[8:])
            events = self.store.remove_actions_txn(txn, keys)
            return len(keys), events

        return self._db.write(write)

    # -- dead letters past their retention, or purged by the operator ---------------------------

    def dead_before(
        self, before_us: int, limit: int, owner: str | None = None, after: bytes = b""
    ) -> list[bytes]:
        """dl_dead_at entries (failure time + action key) older than before_us and above after,
        of one owner or all, oldest first."""

        def read(txn: Txn) -> list[bytes]:
            out: list[bytes] = []
            cur = txn.cursor(self._dead_at)
            found = cur.set_range(after + b"\0") if after else cur.first()
            while found and len(out) < limit:
                k = cur.key()
                if _T.unpack(k[:8])[0] >= before_us:
                    break
                if owner is None or txn.get(k[8:], db=self._dead) == owner.encode():
                    out.append(k)
                found = cur.next()
            return out

        return self._db.read(read)

    def delete_dead(self, dead: Sequence[bytes]) -> tuple[int, int]:
        """Step 2 of removing dead letters (after delete_logs): their states, actions and events
        left without actions; returns (dead letters, events) removed. One replayed meanwhile is
        skipped (it lost its earlier attempt log to step 1, nothing else)."""

        def write(txn: Txn) -> tuple[int, int]:
            keys = []
            for d in dead:
                if txn.delete(d, db=self._dead_at):
                    txn.delete(d[8:], db=self._dead)
                    txn.delete(d[8:], db=self._state)
                    keys.append(d[8:])
            events = self.store.remove_actions_txn(txn, keys)
            return len(keys), events

        return self._db.write(write)

    def purge_dead(self, owner: str | None, before_us: int, batch: int) -> tuple[int, int, int]:
        """Remove every dead letter (of one owner, or all) that failed before before_us, a batch
        per pair of transactions, each durable when it returns; returns (dead letters, attempt
        logs, events) removed."""
        letters = logs = events = 0
        after = b""
        while dead := self.dead_before(before_us, batch, owner, after):
            logs += self.delete_logs(dead)
            n, e = self.delete_dead(dead)
            letters, events, after = letters + n, events + e, dead[-1]
        return letters, logs, events

"""Durable state of the subscription service in its own LMDB environment.

Databases: ``subs`` (id → JSON), ``by_owner`` / ``by_theme`` (name NUL id → empty),
``idx`` / ``idx_attrs`` (id → the matching fields, see matching.index_row, for a fast restart),
``sub_actions`` (id → the action list as recorded with a match), ``collections`` (key → JSON with
a number for idx rows), ``tokens`` (token id → salted SHA-256 digest, owner, role), ``events``
(event id → model.event_to_bytes), ``actions`` (event id, subscription id, action index → the
subscription's action list when matched), ``actions_by_owner`` (first event id of a recorded
batch, owner → the owner's action keys in it), and ``changes`` (generation → id of the
subscription written), which lets every process that serves the store bring its in-memory index
up to date with writes made by the others. Ids and action keys are big-endian, so these
queues append at the end of their trees and scan in order.

The change log is pruned (``prune_changes``, from the deletion driver) up to the lowest position
posted by a live reader: each serving process posts the generation its index has applied, with a
heartbeat, and a reader silent longer than its time to live no longer holds the log back. The
last generation removed is kept in ``meta``; a reader further behind (stalled past its time to
live, or never posted) gets ChangesPruned and rebuilds from the subscriptions themselves
(``index_data``), so pruning never makes a reader miss a change. The horizon and the entries it
covers go in one transaction: a crash mid-pass leaves either both or neither.

An accepted event batch and every action its matches produce are written in one synced
transaction (``record``), so an event acknowledged to its publisher has all of its actions, and a
retried transaction cannot duplicate any (an action's key is its stable id). Catalog events carry
their catalog sequence number; the last one recorded is kept in the same transaction, so a
consumer that crashes before acknowledging the catalog skips them on its next pass.

Concurrency follows heliostat.catalog.store: writes are serialised by a lock, the map doubles
when near full, and a remap waits until no read transaction of this process is open.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

import lmdb
import numpy as np
import numpy.typing as npt

from heliostat.lmdbenv import LmdbEnv
from heliostat.subscriptions.actionlists import DISABLED, ActionLists
from heliostat.subscriptions.matching import ROW, AttrRow, attr_row, index_row
from heliostat.subscriptions.model import (
    Action,
    ActionKind,
    Collection,
    GranuleEvent,
    MatchedAction,
    StoredEvent,
    Subscription,
    event_from_bytes,
    event_to_bytes,
    subscription_from_dict,
    subscription_to_dict,
)

_DB_NAMES = (
    b"meta", b"subs", b"by_owner", b"by_theme", b"collections", b"tokens", b"events", b"actions",
    b"actions_by_owner", b"idx", b"idx_attrs", b"sub_actions", b"changes",
)  # fmt: skip
EXTRA_DBS = 16  # room for the named databases of other parts (the delivery ledger)
_NEXT_SUB = b"next_sub_id"
_NEXT_EVENT = b"next_event_id"
_CATALOG_SEQ = b"catalog_seq"
_NEXT_GEN = b"next_generation"
_PRUNED_GEN = b"changes_pruned"  # the last generation removed from the change log
_READER = b"change_reader\0"  # + reader name → its generation and heartbeat (µs)
_READER_ROW = struct.Struct(">QQ")
_OWNER_ROWS = b"owner_rows_by_batch"  # set once actions_by_owner holds (batch, owner) rows
_U64 = struct.Struct(">Q")
_ACTION_KEY = struct.Struct(">QQH")

if TYPE_CHECKING:
    _Txn: TypeAlias = lmdb.Transaction[bytes]


def _dumps(v: Any) -> bytes:
    return json.dumps(v, separators=(",", ":")).encode()


def _name_key(name: str, sub_id: int) -> bytes:
    return name.encode() + b"\0" + _U64.pack(sub_id)


class ChangesPruned(Exception):
    """The change log no longer holds every change after the generation asked for: rebuild from
    index_data."""

    def __init__(self, generation: int, pruned: int) -> None:
        super().__init__(f"changes up to generation {pruned} are pruned; asked after {generation}")
        self.pruned = pruned


@dataclass(frozen=True, slots=True)
class TokenRecord:
    token_id: str
    salt: bytes
    digest: bytes
    owner: str
    operator: bool
    created_us: int


class SubscriptionStore:
    def __init__(self, path: Path, *, map_size: int = 1 << 30, max_readers: int = 256) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._db = LmdbEnv(
            path,
            map_size=map_size,
            max_dbs=len(_DB_NAMES) + EXTRA_DBS,
            max_readers=max_readers,
            what="subscription store",
        )
        self._env = self._db.env
        try:
            dbs = self._db.write(lambda txn: [self._env.open_db(n, txn=txn) for n in _DB_NAMES])
        except BaseException:
            self._db.close()
            raise
        (
            self._meta, self._subs, self._by_owner, self._by_theme, self._collections,
            self._tokens, self._events, self._actions, self._actions_by_owner, self._idx,
            self._idx_attrs, self._sub_actions, self._changes,
        ) = dbs  # fmt: skip
        self._coll_no: dict[str, int] = {}  # collection key → number in idx rows
        # Every subscription's action list for recording: read at start (index_data) or by the
        # first record, brought up to date from the change log in each record transaction.
        self._lists: ActionLists | None = None
        self._db.write(self._migrate_owner_rows)

    def _migrate_owner_rows(self, txn: _Txn) -> None:
        """Rewrite the rows of stores written before (batch, owner) rows, one per action keyed
        owner NUL action key, as one row per event and owner (once)."""
        if txn.get(_OWNER_ROWS, db=self._meta) is not None:
            return
        old = [k for k, v in txn.cursor(self._actions_by_owner).iternext() if not v]
        rows: dict[bytes, list[bytes]] = {}
        for k in old:
            owner, akey = k[:-19], k[-18:]
            rows.setdefault(akey[:8] + owner, []).append(akey)
            txn.delete(k, db=self._actions_by_owner)
        for row, keys in rows.items():
            txn.put(row, b"".join(sorted(keys)), db=self._actions_by_owner)
        txn.put(_OWNER_ROWS, b"1", db=self._meta)

    def close(self) -> None:
        self._db.close()

    @property
    def lmdb(self) -> LmdbEnv:
        """The environment, for parts that keep their own databases beside the store's."""
        return self._db

    def open_dbs(self, names: Sequence[bytes]) -> list[Any]:
        return self._db.write(lambda txn: [self._env.open_db(n, txn=txn) for n in names])

    def __enter__(self) -> SubscriptionStore:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- transactions (the catalog's scheme) --------------------------------------------------

    def _next(self, txn: _Txn, key: bytes, n: int) -> int:
        """Reserve n ids from the counter at key; returns the first."""
        raw = txn.get(key, db=self._meta)
        first = 1 if raw is None else _U64.unpack(raw)[0]
        txn.put(key, _U64.pack(first + n), db=self._meta)
        return first

    # -- collections ----------------------------------------------------------------------------

    def collections(self) -> list[Collection]:
        def read(txn: _Txn) -> list[Collection]:
            out = []
            for v in txn.cursor(self._collections).iternext(keys=False):
                d = json.loads(v)
                del d["no"]
                out.append(Collection(**d))
            return out

        return self._db.read(read)

    def add_collections(self, cs: Sequence[Collection]) -> list[Collection]:
        """Add the collections not yet known; returns those added."""

        def write(txn: _Txn) -> list[Collection]:
            added = []
            for c in cs:
                if txn.get(c.key.encode(), db=self._collections) is not None:
                    continue
                value = _dumps(
                    {"short_name": c.short_name, "version": c.version, "frame": c.frame,
                     "source_id": c.source_id, "owner": c.owner,
                     "no": txn.stat(self._collections)["entries"]}
                )  # fmt: skip
                if txn.put(c.key.encode(), value, overwrite=False, db=self._collections):
                    added.append(c)
            return added

        return self._db.write(write)

    # -- subscriptions --------------------------------------------------------------------------

    def create(self, subs: Sequence[Subscription]) -> list[Subscription]:
        """Store new subscriptions under fresh ids (their ``id`` is ignored)."""

        def write(txn: _Txn) -> list[Subscription]:
            first = self._next(txn, _NEXT_SUB, len(subs))
            out = []
            for i, s in enumerate(subs):
                stored = dataclasses.replace(s, id=first + i)
                self._put_sub(txn, stored, None)
                out.append(stored)
            return out

        return self._db.write(write)

    def replace(self, pairs: Sequence[tuple[Subscription, Subscription]]) -> None:
        """Replace each old subscription by its new version (same id)."""

        def write(txn: _Txn) -> None:
            for old, new in pairs:
                self._put_sub(txn, new, old)

        self._db.write(write)

    def delete(self, subs: Sequence[Subscription]) -> None:
        def write(txn: _Txn) -> None:
            for s in subs:
                self._delete_sub(txn, s)

        self._db.write(write)

    def apply(
        self,
        creates: Sequence[Subscription],
        pairs: Sequence[tuple[Subscription, Subscription]],
        deletes: Sequence[Subscription],
    ) -> tuple[list[Subscription], int]:
        """create, replace and delete in one transaction (a group commit); returns the created
        subscriptions with their ids, and the generation before (the transaction logs one change
        per subscription). A subscription appears at most once in pairs and deletes."""

        def write(txn: _Txn) -> tuple[list[Subscription], int]:
            generation = self._generation(txn)
            first = self._next(txn, _NEXT_SUB, len(creates)) if creates else 0
            out = [dataclasses.replace(s, id=first + i) for i, s in enumerate(creates)]
            for s in out:
                self._put_sub(txn, s, None)
            for old, new in pairs:
                self._put_sub(txn, new, old)
            for s in deletes:
                self._delete_sub(txn, s)
            return out, generation

        return self._db.write(write)

    def _delete_sub(self, txn: _Txn, s: Subscription) -> None:
        key = _U64.pack(s.id)
        for db in (self._subs, self._idx, self._idx_attrs, self._sub_actions):
            txn.delete(key, db=db)
        self._log_change(txn, s.id)
        txn.delete(_name_key(s.owner, s.id), db=self._by_owner)
        if s.theme:
            txn.delete(_name_key(s.theme, s.id), db=self._by_theme)

    def _log_change(self, txn: _Txn, sub_id: int) -> None:
        gen = self._next(txn, _NEXT_GEN, 1)
        txn.put(_U64.pack(gen), _U64.pack(sub_id), append=True, db=self._changes)

    def _generation(self, txn: _Txn) -> int:
        raw = txn.get(_NEXT_GEN, db=self._meta)
        return 0 if raw is None else _U64.unpack(raw)[0] - 1

    def _pruned(self, txn: _Txn) -> int:
        raw = txn.get(_PRUNED_GEN, db=self._meta)
        return 0 if raw is None else _U64.unpack(raw)[0]

    def changes_after(self, generation: int) -> tuple[int, dict[int, Subscription | None]]:
        """The current generation, and each subscription written after ``generation`` as it is
        now (None: deleted); ChangesPruned when some of those changes are no longer logged."""

        def read(txn: _Txn) -> tuple[int, dict[int, Subscription | None]]:
            current = self._generation(txn)
            out: dict[int, Subscription | None] = {}
            if current == generation:
                return current, out
            pruned = self._pruned(txn)
            if generation < pruned:
                raise ChangesPruned(generation, pruned)
            cur = txn.cursor(self._changes)
            found = cur.set_range(_U64.pack(generation + 1))
            while found:
                sid = _U64.unpack(cur.value())[0]
                raw = txn.get(cur.value(), db=self._subs)
                out[sid] = None if raw is None else subscription_from_dict(json.loads(raw))
                found = cur.next()
            return current, out

        return self._db.read(read)

    def prune_changes(
        self, reader: str, position: int, now_us: int, ttl_us: int, limit: int
    ) -> tuple[int, int]:
        """One bounded pass: post this reader's position (the generation its index has applied)
        and heartbeat, forget readers silent for ttl_us, and remove up to limit of the oldest
        change-log entries at or below every live reader's position. Returns (entries removed,
        the generation pruned up to)."""

        def write(txn: _Txn) -> tuple[int, int]:
            txn.put(_READER + reader.encode(), _READER_ROW.pack(position, now_us), db=self._meta)
            upto = self._generation(txn)
            cur = txn.cursor(self._meta)
            found = cur.set_range(_READER)
            gone = []
            while found and cur.key().startswith(_READER):
                gen, beat = _READER_ROW.unpack(cur.value())
                if beat < now_us - ttl_us:
                    gone.append(cur.key())
                else:
                    upto = min(upto, gen)
                found = cur.next()
            for k in gone:
                txn.delete(k, db=self._meta)
            pruned = self._pruned(txn)
            cur = txn.cursor(self._changes)
            removed = 0
            while removed < limit and cur.first():
                gen = _U64.unpack(cur.key())[0]
                if gen > upto:
                    break
                cur.delete()
                removed += 1
                pruned = gen
            if removed:
                txn.put(_PRUNED_GEN, _U64.pack(pruned), db=self._meta)
            return removed, pruned

        return self._db.write(write)

    def forget_reader(self, reader: str) -> None:
        """A reader that stops (gracefully) no longer holds the change log back."""
        self._db.write(lambda txn: txn.delete(_READER + reader.encode(), db=self._meta))

    def _put_sub(self, txn: _Txn, s: Subscription, old: Subscription | None) -> None:
        key = _U64.pack(s.id)
        self._log_change(txn, s.id)
        txn.put(key, _dumps(subscription_to_dict(s)), db=self._subs)
        coll_no = self._coll_no.get(s.collection)
        if coll_no is None:  # numbers never change: read once
            raw_coll = txn.get(s.collection.encode(), db=self._collections)
            if raw_coll is None:
                raise ValueError(f"no collection {s.collection}")
            coll_no = self._coll_no[s.collection] = json.loads(raw_coll)["no"]
        txn.put(key, index_row(s, coll_no), db=self._idx)
        attrs = attr_row(s)
        if attrs is None:
            txn.delete(key, db=self._idx_attrs)
        else:
            txn.put(key, attrs, db=self._idx_attrs)
        actions = [[a.kind, dict(a.params)] for a in s.actions]
        blob = bytes([len(actions)]) + s.owner.encode() + b"\0" + _dumps(actions)
        txn.put(key, blob, db=self._sub_actions)
        if old is not None and old.owner != s.owner:
            txn.delete(_name_key(old.owner, s.id), db=self._by_owner)
        if old is not None and old.theme and old.theme != s.theme:
            txn.delete(_name_key(old.theme, s.id), db=self._by_theme)
        txn.put(_name_key(s.owner, s.id), b"", db=self._by_owner)
        if s.theme:
            txn.put(_name_key(s.theme, s.id), b"", db=self._by_theme)

    def get(self, sub_id: int) -> Subscription | None:
        raw = self._db.read(lambda txn: txn.get(_U64.pack(sub_id), db=self._subs))
        return None if raw is None else subscription_from_dict(json.loads(raw))

    def index_data(self) -> tuple[npt.NDArray[Any], dict[int, AttrRow], dict[int, str], int]:
        """What matching.MatchEngine.from_rows needs, read in one transaction: every
        subscription's ROW record, the attribute qualifiers of those that have any, and the
        collection keys by number; then the generation they are of."""

        def read(
            txn: _Txn,
        ) -> tuple[npt.NDArray[Any], dict[int, AttrRow], dict[int, str], int]:
            raw = b"".join(txn.cursor(self._idx).iternext(keys=False))
            rows = np.frombuffer(raw, ROW)
            keys, values = [], []
            for k, v in txn.cursor(self._idx_attrs).iternext():
                keys.append(k)
                values.append(v)
            # One JSON document for all: a parse per row cost more than the parsing.
            ids = np.frombuffer(b"".join(keys), ">u8").tolist()
            attrs = dict(zip(ids, json.loads(b"[" + b",".join(values) + b"]"), strict=True))
            colls = {}
            for k, v in txn.cursor(self._collections).iternext():
                colls[json.loads(v)["no"]] = k.decode()
            gen = self._generation(txn)
            # Recording's too, in the same pass over the store (its first batch reads none).
            self._lists = ActionLists(gen, txn.cursor(self._sub_actions).iternext())
            return rows, attrs, colls, gen

        return self._db.read(read)

    def page(
        self, *, owner: str | None, theme: str | None, after_id: int, limit: int
    ) -> list[Subscription]:
        """Up to limit subscriptions with ids above after_id, by owner, by theme, or all."""

        def read(txn: _Txn) -> list[Subscription]:
            out: list[Subscription] = []
            if owner is None and theme is None:
                cur = txn.cursor(self._subs)
                found = cur.set_range(_U64.pack(after_id + 1))
                while found and len(out) < limit:
                    out.append(subscription_from_dict(json.loads(cur.value())))
                    found = cur.next()
                return out
            name, db = (theme, self._by_theme) if theme is not None else (owner, self._by_owner)
            assert name is not None
            prefix = name.encode() + b"\0"
            cur = txn.cursor(db)
            found = cur.set_range(prefix + _U64.pack(after_id + 1))
            while found and len(out) < limit:
                key = cur.key()
                if not key.startswith(prefix) or len(key) != len(prefix) + 8:
                    break
                raw = txn.get(key[len(prefix) :], db=self._subs)
                if raw is not None:
                    s = subscription_from_dict(json.loads(raw))
                    if owner is None or s.owner == owner:
                        out.append(s)
                found = cur.next()
            return out

        return self._db.read(read)

    # -- events and actions ---------------------------------------------------------------------

    def catalog_seq(self) -> int:
        """The last catalog event recorded (0 when none)."""
        raw = self._db.read(lambda txn: txn.get(_CATALOG_SEQ, db=self._meta))
        return 0 if raw is None else _U64.unpack(raw)[0]

    def record(
        self,
        matches: Sequence[tuple[GranuleEvent, Sequence[int]]],
        catalog_seqs: Sequence[int] | None = None,
    ) -> list[StoredEvent]:
        """Store the events and the actions of their matching subscriptions (by id) in one
        transaction. The actions are those of each subscription as stored at commit; one deleted
        since matching is skipped.

        With catalog_seqs (ascending, one per event), events at or below the catalog sequence
        already recorded are skipped, the last one becomes the new mark, and only events that
        matched are stored.
        """
        return self._db.write(self._record_txn, matches, catalog_seqs)

    def _record_txn(
        self,
        txn: _Txn,
        matches: Sequence[tuple[GranuleEvent, Sequence[int]]],
        catalog_seqs: Sequence[int] | None,
    ) -> list[StoredEvent]:
        if catalog_seqs is not None:
            raw = txn.get(_CATALOG_SEQ, db=self._meta)
            done = 0 if raw is None else _U64.unpack(raw)[0]
            keep = [i for i, seq in enumerate(catalog_seqs) if seq > done]
            matches = [matches[i] for i in keep]
            if catalog_seqs and catalog_seqs[-1] > done:
                txn.put(_CATALOG_SEQ, _U64.pack(catalog_seqs[-1]), db=self._meta)
            # The catalog keeps its own events: only those that matched are worth a copy.
            matches = [m for m in matches if m[1]]
        if not matches:
            return []
        first = self._next(txn, _NEXT_EVENT, len(matches))
        lists = self._action_lists(txn)
        counts = [len(ids) for _, ids in matches]
        flat = itertools.chain.from_iterable(ids for _, ids in matches)
        sids = np.fromiter(flat, np.int64, sum(counts))
        evs = np.repeat(np.arange(first, first + len(matches), dtype=np.int64), counts)
        order = np.lexsort((sids, evs))  # key order
        keys, numbers, owners = lists.actions(evs[order], sids[order])
        # Built first, then written by putmulti (a C loop).
        pack, size = _U64.pack, _ACTION_KEY.size
        events = [(pack(first + i), event_to_bytes(e)) for i, (e, _) in enumerate(matches)]
        raw = keys.tobytes()
        akeys = [raw[i : i + size] for i in range(0, len(raw), size)]
        actions = zip(akeys, map(lists.blobs.__getitem__, numbers.tolist()), strict=True)
        # Ids only grow, so events and actions append at the end of their trees.
        added = txn.cursor(self._events).putmulti(events, overwrite=False, append=True)[1]
        if added != len(events):
            raise lmdb.CorruptedError(f"event ids from {first} are already taken")
        if txn.cursor(self._actions).putmulti(actions, append=True)[1] != len(akeys):
            raise lmdb.CorruptedError(f"action keys from event {first} on are already taken")
        # One row per batch and owner, appended: rows keyed by owner first dirtied a page per
        # owner (each a random place in the tree), most of recording's time at 10^6. A row
        # holds the owner's keys in order: grouped by a stable sort.
        by = np.argsort(owners, kind="stable")
        grouped, owners = keys[by].tobytes(), owners[by]
        bounds = [0, *(np.flatnonzero(np.diff(owners)) + 1).tolist(), len(owners)]
        batch = _U64.pack(first)
        rows = sorted(
            (batch + lists.owners[int(owners[lo])], grouped[lo * size : hi * size])
            for lo, hi in itertools.pairwise(bounds)
            if hi > lo
        )
        if txn.cursor(self._actions_by_owner).putmulti(rows, overwrite=False)[1] != len(rows):
            raise lmdb.CorruptedError(f"owner rows of batch {first} are already taken")
        return [StoredEvent(first + i, e) for i, (e, _) in enumerate(matches)]

    def _action_lists(self, txn: _Txn) -> ActionLists:
        """Every subscription's action list as stored in this transaction: those the change log
        shows written since the lists' generation read again, or all when that is most of them
        or the log no longer holds every change."""
        gen = self._generation(txn)
        lists = self._lists
        if lists is not None and lists.gen != gen and not lists.stale:
            written: list[bytes] = []
            if gen - lists.gen <= max(1024, len(lists) // 4):
                cur = txn.cursor(self._changes)
                found = cur.set_range(_U64.pack(lists.gen + 1))
                while found:
                    written.append(cur.value())
                    found = cur.next()
            if len(written) == gen - lists.gen:
                keys = sorted(set(written))
                blobs = dict(txn.cursor(self._sub_actions).getmulti(keys))
                lists.update(gen, {_U64.unpack(k)[0]: blobs.get(k) for k in keys})
        if lists is None or lists.gen != gen or lists.stale:
            lists = self._lists = ActionLists(gen, txn.cursor(self._sub_actions).iternext())
        return lists

    def disable_action(self, sub_id: int, index: int, reason: str) -> Subscription | None:
        """Mark one action of a subscription disabled (param ``disabled``: the reason), so that
        matches no longer produce it; None when the subscription or action no longer exists."""

        def write(txn: _Txn) -> Subscription | None:
            raw = txn.get(_U64.pack(sub_id), db=self._subs)
            if raw is None:
                return None
            s = subscription_from_dict(json.loads(raw))
            if index >= len(s.actions):
                return None
            a = s.actions[index]
            params = dict(a.params)
            if params.get(DISABLED):
                return s
            params[DISABLED] = reason[:200] or "disabled"
            actions = list(s.actions)
            actions[index] = Action(a.kind, tuple(sorted(params.items())))
            new = dataclasses.replace(s, actions=tuple(actions))
            self._put_sub(txn, new, s)
            return new

        return self._db.write(write)

    def actions_at(self, keys: Sequence[bytes]) -> list[MatchedAction | None]:
        """The actions stored under these keys (None for one removed)."""

        def read(txn: _Txn) -> list[MatchedAction | None]:
            events: dict[int, GranuleEvent] = {}
            out: list[MatchedAction | None] = []
            for akey in keys:
                raw = txn.get(akey, db=self._actions)
                out.append(None if raw is None else self._matched(txn, akey, raw, events))
            return out

        return self._db.read(read)

    def _matched(
        self, txn: _Txn, akey: bytes, raw: bytes, events: dict[int, GranuleEvent]
    ) -> MatchedAction:
        eid, sid, k = _ACTION_KEY.unpack(akey)
        if eid not in events:
            ev_raw = txn.get(_U64.pack(eid), db=self._events)
            assert ev_raw is not None, "an action's event is written with it"
            events[eid] = event_from_bytes(ev_raw)
        sep = raw.index(b"\0")
        kind, params = json.loads(raw[sep + 1 :])[k]
        action = Action(kind, tuple(sorted(params.items())))
        return MatchedAction(eid, sid, k, raw[1:sep].decode(), action, events[eid])

    def action_heads_after(self, after: bytes, limit: int) -> list[tuple[bytes, str, ActionKind]]:
        """(key, owner, kind) of up to limit actions with keys above ``after``: what a queue
        needs, without decoding events (actions_after's order)."""

        def read(txn: _Txn) -> list[tuple[bytes, str, ActionKind]]:
            out: list[tuple[bytes, str, ActionKind]] = []
            lists: dict[bytes, tuple[str, list[Any]]] = {}  # one decode per action list
            cur = txn.cursor(self._actions)
            found = cur.set_range(after + b"\0" if after else b"")
            while found and len(out) < limit:
                key, raw = cur.item()
                if raw not in lists:
                    sep = raw.index(b"\0")
                    lists[raw] = (raw[1:sep].decode(), json.loads(raw[sep + 1 :]))
                owner, actions = lists[raw]
                out.append((key, owner, actions[_ACTION_KEY.unpack(key)[2]][0]))
                found = cur.next()
            return out

        return self._db.read(read)

    def count_actions_after(self, after: bytes, cap: int) -> int:
        """How many actions have keys above ``after`` (counted up to cap)."""

        def read(txn: _Txn) -> int:
            cur = txn.cursor(self._actions)
            found = cur.set_range(after + b"\0" if after else b"")
            n = 0
            while found and n < cap:
                n += 1
                found = cur.next()
            return n

        return self._db.read(read)

    def remove_actions_txn(self, txn: _Txn, keys: Sequence[bytes]) -> int:
        """Within the caller's write transaction (of self.lmdb): remove these actions, then each
        of their events left without actions; returns the events removed."""
        eids = set()
        rows: dict[bytes, set[bytes]] = {}  # actions_by_owner row → action keys to drop
        for akey in keys:
            raw = txn.get(akey, db=self._actions)
            if raw is None:
                continue
            txn.delete(akey, db=self._actions)
            row = self._owner_row(txn, raw[1 : raw.index(b"\0")], akey)
            if row is not None:
                rows.setdefault(row, set()).add(akey)
            eids.add(akey[:8])
        for row, drop in rows.items():
            value = txn.get(row, db=self._actions_by_owner) or b""
            left = b"".join(k for k in _split_keys(value) if k not in drop)
            if left:
                txn.put(row, left, db=self._actions_by_owner)
            else:
                txn.delete(row, db=self._actions_by_owner)
        removed = 0
        for ek in sorted(eids):
            cur = txn.cursor(self._actions)
            if cur.set_range(ek) and cur.key()[:8] == ek:
                continue  # the event still has actions
            removed += bool(txn.delete(ek, db=self._events))
        return removed

    def event_ids(self) -> tuple[int, int]:
        """The oldest event kept and the last one recorded; (last + 1, last) when none is kept.
        Event ids are dense (one counter), so ids below the oldest were recorded and removed."""

        def read(txn: _Txn) -> tuple[int, int]:
            raw = txn.get(_NEXT_EVENT, db=self._meta)
            last = 0 if raw is None else _U64.unpack(raw)[0] - 1
            cur = txn.cursor(self._events)
            oldest = _U64.unpack(cur.key())[0] if cur.first() else last + 1
            return oldest, last

        return self._db.read(read)

    def actions_after(self, after: bytes, limit: int, owner: str | None) -> list[MatchedAction]:
        """Up to limit actions with keys above ``after`` (an action key, b"" from the start),
        of one owner or of all."""

        def read(txn: _Txn) -> list[MatchedAction]:
            out: list[MatchedAction] = []
            events: dict[int, GranuleEvent] = {}
            if owner is None:
                cur = txn.cursor(self._actions)
                found = cur.set_range(after + b"\0" if after else b"")
                while found and len(out) < limit:
                    out.append(self._matched(txn, cur.key(), cur.value(), events))
                    found = cur.next()
                return out
            for akey in self._owner_keys(txn, owner.encode(), after):
                if len(out) == limit:
                    break
                raw = txn.get(akey, db=self._actions)
                if raw is not None:
                    out.append(self._matched(txn, akey, raw, events))
            return out

        return self._db.read(read)

    def _owner_row(self, txn: _Txn, owner: bytes, akey: bytes) -> bytes | None:
        """The key of the actions_by_owner row that holds akey, of this owner: the row of the
        batch holding akey's event, the last batch starting at or before it."""
        cur = txn.cursor(self._actions_by_owner)
        eid = _U64.unpack(akey[:8])[0]
        if not (cur.set_range(_U64.pack(eid + 1)) and cur.prev()) and not cur.last():
            return None
        if cur.key()[:8] > akey[:8]:
            return None  # no batch starts at or before the event
        row = cur.key()[:8] + owner
        return row if txn.get(row, db=self._actions_by_owner) is not None else None

    def _owner_keys(self, txn: _Txn, owner: bytes, after: bytes) -> Iterator[bytes]:
        """The action keys above ``after`` of this owner, in order: its row in each batch from
        the one holding after's event on (two seeks per batch)."""
        cur = txn.cursor(self._actions_by_owner)
        row = self._owner_row(txn, owner, after) if after else None
        found = cur.set_range(row[:8] if row else after[:8])
        while found:
            batch = cur.key()[:8]
            value = txn.get(batch + owner, db=self._actions_by_owner)
            for akey in _split_keys(value or b""):
                if akey > after:
                    yield akey
            found = cur.set_range(_U64.pack(_U64.unpack(batch)[0] + 1))

    def counts(self) -> dict[str, int]:
        def read(txn: _Txn) -> dict[str, int]:
            return {
                "subscriptions": txn.stat(self._subs)["entries"],
                "events": txn.stat(self._events)["entries"],
                "actions": txn.stat(self._actions)["entries"],
            }

        return self._db.read(read)

    # -- tokens ---------------------------------------------------------------------------------

    def add_token(self, t: TokenRecord) -> None:
        value = _dumps(
            {"salt": t.salt.hex(), "digest": t.digest.hex(), "owner": t.owner,
             "operator": t.operator, "created": t.created_us}
        )  # fmt: skip

        def write(txn: _Txn) -> None:
            if not txn.put(t.token_id.encode(), value, overwrite=False, db=self._tokens):
                raise ValueError(f"token id {t.token_id} is taken")

        self._db.write(write)

    def token(self, token_id: str) -> TokenRecord | None:
        raw = self._db.read(lambda txn: txn.get(token_id.encode(), db=self._tokens))
        return None if raw is None else _token(token_id.encode(), raw)

    def remove_token(self, token_id: str) -> bool:
        return self._db.write(lambda txn: bool(txn.delete(token_id.encode(), db=self._tokens)))

    def tokens(self) -> list[TokenRecord]:
        return self._db.read(
            lambda txn: [_token(k, v) for k, v in txn.cursor(self._tokens).iternext()]
        )


def _token(key: bytes, raw: bytes) -> TokenRecord:
    d = json.loads(raw)
    return TokenRecord(
        key.decode(), bytes.fromhex(d["salt"]), bytes.fromhex(d["digest"]), d["owner"],
        d["operator"], d["created"],
    )  # fmt: skip


def _split_keys(value: bytes) -> list[bytes]:
    """The action keys packed in an actions_by_owner value."""
    n = _ACTION_KEY.size
    return [value[i : i + n] for i in range(0, len(value), n)]


def action_key(action_id: str) -> bytes:
    """The store key of an action id (model.action_id); ValueError when malformed."""
    parts = action_id.split("-")
    if len(parts) != 3:
        raise ValueError(f"not an action id: {action_id!r}")
    return _ACTION_KEY.pack(*(int(p, 16) for p in parts))

"""The image catalog: one LMDB environment holding images, their indexes and coverage counts.

Writes are serialised by a lock and run one transaction per call; commits are synced to disk
(``sync=True, metasync=True``), so a write that returned is durable. When the map is full the
transaction is aborted, the map doubled and the whole transaction run again.

Reads may come from any number of threads while a writer writes: each read call begins its own
short read transaction. LMDB allows ``set_mapsize`` only while no transaction of the process is
open (py-lmdb does not enforce it: a read beginning during a remap fails or worse), so reads pass
a gate that counts them in and out, and a remap closes the gate and waits for the count to drop
to zero. Writes need no such exclusion from reads.

Every insert, update and delete appends an event (kind, image id, source, time, footprint, path,
size, scale) under the next sequence number in the same transaction as the change, so the log
holds an event exactly for each committed change. Consumers keep durable cursors in the catalog
(``ack_events``); ``trim_events`` drops only what all of them have acknowledged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, TypeAlias

import lmdb

from heliostat.catalog import codec, keys
from heliostat.catalog.codec import CatalogEvent, EventKind
from heliostat.catalog.records import ImageRecord
from heliostat.lmdbenv import LmdbEnv

SCHEMA_VERSION = 1
MIN_BIN_US = 1_000_000
MAX_BINS = 100_000
MAX_FRAMES = 100_000

# Databases after "meta" were added later: opened writable, an older catalog gains them empty.
_DB_NAMES = (
    b"images", b"times", b"paths", b"stats", b"coverage", b"meta", b"events", b"cursors",
)  # fmt: skip
_META = _DB_NAMES.index(b"meta")
_META_SCHEMA = b"schema_version"
_META_NEXT_ID = b"next_id"
_META_NEXT_SEQ = b"next_event_seq"

Direction = Literal["nearest", "before", "after"]
PutKind = Literal["inserted", "unchanged", "updated"]

if TYPE_CHECKING:  # the lmdb classes are generic only in their stubs
    _Txn: TypeAlias = lmdb.Transaction[bytes]
    _Cur: TypeAlias = lmdb.Cursor[bytes]


@dataclass(frozen=True, slots=True)
class PutOutcome:
    record: ImageRecord  # as stored, with its catalog id
    kind: PutKind


def _after_or_at(cur: _Cur, seek: bytes, hi: bytes) -> bytes | None:
    """First time key ≥ seek and < hi."""
    if cur.set_range(seek):
        key = cur.key()
        if key < hi:
            return key
    return None


def _before_or_at(cur: _Cur, lo: bytes, seek_after: bytes) -> bytes | None:
    """Last time key < seek_after and ≥ lo."""
    found = cur.prev() if cur.set_range(seek_after) else cur.last()
    if found:
        key = cur.key()
        if key >= lo:
            return key
    return None


def _nearest(cur: _Cur, seek: bytes, lo: bytes, hi: bytes) -> bytes | None:
    """Time key in [lo, hi) closest in time to seek's; ties go to the earlier key.

    One set_range and at most one prev: the key found at or after the target and the one just
    before it are the only candidates.
    """
    after: bytes | None = None
    if cur.set_range(seek):
        key = cur.key()
        if key < hi:
            if key[2:10] == seek[2:10]:
                return key  # exact hit
            after = key
        found = cur.prev()
    else:
        found = cur.last()
    before = cur.key() if found else None
    if before is None or before < lo:
        return after
    if after is None:
        return before
    target = int.from_bytes(seek[2:10], "big")
    # The time bias cancels in differences, so compare the stored (biased) times directly.
    if target - int.from_bytes(before[2:10], "big") <= int.from_bytes(after[2:10], "big") - target:
        return before
    return after


class Catalog:
    """Image catalog in one LMDB environment; see the module docstring for the model."""

    def __init__(
        self,
        path: Path,
        *,
        map_size: int = 1 << 30,
        max_readers: int = 256,
        readonly: bool = False,
    ) -> None:
        self._db = LmdbEnv(
            path,
            map_size=map_size,
            max_dbs=len(_DB_NAMES),
            max_readers=max_readers,
            readonly=readonly,
            what="catalog",
        )
        self._env = self._db.env
        try:
            if readonly:
                dbs = [self._env.open_db(name, create=False) for name in _DB_NAMES]
                with self._env.begin() as txn:
                    self._check_schema(txn, path, dbs[_META])
            else:
                dbs = self._db.write(self._init_dbs, path)
        except BaseException:
            self._env.close()
            raise
        (
            self._images, self._times, self._paths, self._stats, self._coverage, self._meta,
            self._events, self._cursors,
        ) = dbs  # fmt: skip
        self._max_path = self._env.max_key_size()

    # -- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the environment, after any read or write in progress in other threads."""
        self._db.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def map_size(self) -> int:
        """Current size of the memory map in bytes (it grows as the catalog does)."""
        return self._db.map_size

    def _init_dbs(self, txn: _Txn, path: Path) -> list[lmdb._Database]:
        dbs = [self._env.open_db(name, txn=txn) for name in _DB_NAMES]
        meta = dbs[_META]
        if txn.get(_META_SCHEMA, db=meta) is None:
            txn.put(_META_SCHEMA, keys.COUNT.pack(SCHEMA_VERSION), db=meta)
            txn.put(_META_NEXT_ID, keys.ID.pack(1), db=meta)
        self._check_schema(txn, path, meta)
        return dbs

    @staticmethod
    def _check_schema(txn: _Txn, path: Path, meta: lmdb._Database) -> None:
        raw = txn.get(_META_SCHEMA, db=meta)
        version = keys.COUNT.unpack(raw)[0] if raw is not None else None
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"catalog {path} has schema version {version}, this code reads {SCHEMA_VERSION}"
            )

    # -- transactions -----------------------------------------------------------------------------

    # -- writes -----------------------------------------------------------------------------------

    def put_images(self, records: Sequence[ImageRecord]) -> list[PutOutcome]:
        """Insert or update records by path, all in one transaction.

        A new path gets a new id ("inserted"); a known path whose stored record is identical is
        left alone ("unchanged"); otherwise the stored record is replaced under its existing id
        ("updated"). ``record.id`` is ignored. Every record is validated first: ValueError names
        the bad field and nothing of the batch is written.
        """
        encoded = [codec.validate(r, self._max_path) for r in records]
        if not encoded:
            return []
        return self._db.write(self._put_txn, encoded)

    def _put_txn(self, txn: _Txn, encoded: list[tuple[bytes, bytes]]) -> list[PutOutcome]:
        images, times, paths = self._images, self._times, self._paths
        raw_next = txn.get(_META_NEXT_ID, db=self._meta)
        if raw_next is None:
            raise lmdb.CorruptedError("the catalog's meta database has no next id")
        next_id = first_new = keys.ID.unpack(raw_next)[0]
        stats: dict[int, int] = {}
        bins: dict[tuple[int, int], int] = {}
        out: list[PutOutcome] = []
        for path, value in encoded:
            sid, t = codec.HEAD.unpack_from(value)
            id_b = txn.get(path, db=paths)
            if id_b is None:
                image_id = next_id
                next_id += 1
                id_b = keys.ID.pack(image_id)
                # Ids only grow, so new images append at the end of the tree (put returns False,
                # rather than raising, if that ever stopped being true).
                if not txn.put(id_b, value, append=True, db=images):
                    raise lmdb.CorruptedError(f"image id {image_id} is already taken")
                txn.put(path, id_b, db=paths)
                kind: PutKind = "inserted"
                reindex = True
            else:
                image_id = keys.ID.unpack(id_b)[0]
                old = self._image_value(txn, id_b)
                if old == value:
                    out.append(PutOutcome(codec.decode(image_id, value), "unchanged"))
                    continue
                txn.put(id_b, value, db=images)
                kind = "updated"
                old_sid, old_t = codec.HEAD.unpack_from(old)
                reindex = (old_sid, old_t) != (sid, t)
                if reindex:
                    txn.delete(keys.time_key(old_sid, old_t, image_id), db=times)
                    stats[old_sid] = stats.get(old_sid, 0) - 1
                    old_bin = (old_sid, keys.coverage_bin(old_t))
                    bins[old_bin] = bins.get(old_bin, 0) - 1
            if reindex:
                txn.put(keys.time_key(sid, t, image_id), b"", db=times)
                stats[sid] = stats.get(sid, 0) + 1
                new_bin = (sid, keys.coverage_bin(t))
                bins[new_bin] = bins.get(new_bin, 0) + 1
            out.append(PutOutcome(codec.decode(image_id, value), kind))
        self._apply_counts(txn, stats, bins)
        if next_id != first_new:
            txn.put(_META_NEXT_ID, keys.ID.pack(next_id), db=self._meta)
        changes: list[tuple[EventKind, ImageRecord]] = [
            ("insert" if o.kind == "inserted" else "update", o.record)
            for o in out
            if o.kind != "unchanged"
        ]
        self._log_events(txn, changes)
        return out

    def _apply_counts(
        self, txn: _Txn, stats: dict[int, int], bins: dict[tuple[int, int], int]
    ) -> None:
        """Add per-source and per-bin deltas, accumulated per batch to touch each key once."""
        updates = [(keys.SOURCE.pack(s), d, self._stats) for s, d in stats.items()]
        updates += [(keys.coverage_key(s, b), d, self._coverage) for (s, b), d in bins.items()]
        for key, delta, db in updates:
            if not delta:
                continue
            raw = txn.get(key, db=db)
            n = (keys.COUNT.unpack(raw)[0] if raw is not None else 0) + delta
            if n:
                txn.put(key, keys.COUNT.pack(n), db=db)
            else:
                txn.delete(key, db=db)

    def delete_paths(self, paths: Iterable[str]) -> list[ImageRecord]:
        """Delete the images at these paths, skipping unknown ones; returns what was deleted."""
        path_keys = [k for k in map(self._path_key, paths) if k is not None]
        if not path_keys:
            return []
        return self._db.write(self._delete_txn, path_keys)

    def _delete_txn(self, txn: _Txn, path_keys: list[bytes]) -> list[ImageRecord]:
        stats: dict[int, int] = {}
        bins: dict[tuple[int, int], int] = {}
        out: list[ImageRecord] = []
        for path in path_keys:
            id_b = txn.pop(path, db=self._paths)
            if id_b is None:
                continue
            value = self._image_value(txn, id_b)
            txn.delete(id_b, db=self._images)
            record = codec.decode(keys.ID.unpack(id_b)[0], value)
            sid, t = record.source_id, record.time_us
            txn.delete(keys.time_key(sid, t, record.id), db=self._times)
            stats[sid] = stats.get(sid, 0) - 1
            b = (sid, keys.coverage_bin(t))
            bins[b] = bins.get(b, 0) - 1
            out.append(record)
        self._apply_counts(txn, stats, bins)
        self._log_events(txn, [("delete", r) for r in out])
        return out

    def _log_events(self, txn: _Txn, changes: list[tuple[EventKind, ImageRecord]]) -> None:
        """Append one event per change, in the transaction that makes the changes."""
        if not changes:
            return
        seq = self._next_seq(txn)
        for kind, record in changes:
            value = codec.encode_event(kind, record)
            # Seqs only grow, so events append at the end of the tree, like new image ids.
            if not txn.put(keys.SEQ.pack(seq), value, append=True, db=self._events):
                raise lmdb.CorruptedError(f"event {seq} is already taken")
            seq += 1
        txn.put(_META_NEXT_SEQ, keys.SEQ.pack(seq), db=self._meta)

    def _next_seq(self, txn: _Txn) -> int:
        raw = txn.get(_META_NEXT_SEQ, db=self._meta)
        return 1 if raw is None else keys.SEQ.unpack(raw)[0]  # None: no event logged yet

    # -- events ---------------------------------------------------------------------------------

    def last_event_seq(self) -> int:
        """Sequence number of the latest event logged (0 before the first), trimmed or not."""
        return self._db.read(self._next_seq) - 1

    def events_after(self, seq: int, limit: int) -> list[CatalogEvent]:
        """Up to ``limit`` events with sequence numbers above ``seq``, oldest first."""
        if limit < 1:
            raise ValueError(f"limit must be ≥ 1, got {limit}")
        if seq < 0:
            raise ValueError(f"seq must be ≥ 0, got {seq}")
        if seq >= (1 << 64) - 1:
            return []  # no sequence number lies above
        return self._db.read(self._events_after_txn, seq, limit)

    def _events_after_txn(self, txn: _Txn, seq: int, limit: int) -> list[CatalogEvent]:
        cur = txn.cursor(self._events)
        out: list[CatalogEvent] = []
        if cur.set_range(keys.SEQ.pack(seq + 1)):
            for key, value in cur:
                out.append(codec.decode_event(keys.SEQ.unpack(key)[0], value))
                if len(out) == limit:
                    break
        return out

    def _consumer_key(self, consumer: str) -> bytes:
        key = consumer.encode("utf-8")
        if not 0 < len(key) <= self._max_path:
            raise ValueError(f"consumer name must be 1..{self._max_path} bytes of utf-8")
        return key

    def ack_events(self, consumer: str, upto_seq: int) -> None:
        """Record that ``consumer`` has handled every event up to ``upto_seq``.

        The cursor only moves forward (an older acknowledgement is ignored); acknowledging an
        event not yet logged is a ValueError. A consumer is registered by its first ack.
        """
        self._db.write(self._ack_txn, self._consumer_key(consumer), upto_seq)

    def _ack_txn(self, txn: _Txn, key: bytes, upto: int) -> None:
        last = self._next_seq(txn) - 1
        if not 0 <= upto <= last:
            raise ValueError(f"cannot acknowledge event {upto}: events logged are 1..{last}")
        raw = txn.get(key, db=self._cursors)
        if raw is None or keys.SEQ.unpack(raw)[0] < upto:
            txn.put(key, keys.SEQ.pack(upto), db=self._cursors)

    def acked(self, consumer: str) -> int:
        """The last event ``consumer`` acknowledged; 0 when it never did."""
        key = self._consumer_key(consumer)
        raw = self._db.read(lambda txn: txn.get(key, db=self._cursors))
        return 0 if raw is None else keys.SEQ.unpack(raw)[0]

    def trim_events(self, before_seq: int) -> int:
        """Delete events below ``before_seq`` that every registered consumer has acknowledged.

        Returns how many were deleted; events a consumer still needs are kept.
        """
        return self._db.write(self._trim_txn, before_seq)

    def _trim_txn(self, txn: _Txn, before: int) -> int:
        for _, raw in txn.cursor(self._cursors):
            before = min(before, keys.SEQ.unpack(raw)[0] + 1)
        cur = txn.cursor(self._events)
        n = 0
        cur.first()
        # delete() moves the cursor to the next entry (key() is empty past the last one).
        while (key := cur.key()) and keys.SEQ.unpack(key)[0] < before:
            cur.delete()
            n += 1
        return n

    def _path_key(self, path: str) -> bytes | None:
        """The path index key, or None when no stored image can have this path."""
        try:
            key = path.encode("utf-8")
        except UnicodeEncodeError:
            return None
        return key if 0 < len(key) <= self._max_path else None

    def _image_value(self, txn: _Txn, id_b: bytes) -> bytes:
        """The stored value of an image an index points at."""
        value = txn.get(id_b, db=self._images)
        if value is None:
            raise lmdb.CorruptedError(f"an index names image {id_b.hex()}, which is missing")
        return value

    # -- point reads ------------------------------------------------------------------------------

    def get(self, image_id: int) -> ImageRecord | None:
        if not 0 < image_id < 1 << 64:
            return None
        return self._db.read(self._get_txn, keys.ID.pack(image_id))

    def _get_txn(self, txn: _Txn, id_b: bytes) -> ImageRecord | None:
        value = txn.get(id_b, db=self._images)
        return None if value is None else codec.decode(keys.ID.unpack(id_b)[0], value)

    def get_by_path(self, path: str) -> ImageRecord | None:
        key = self._path_key(path)
        return None if key is None else self._db.read(self._get_by_path_txn, key)

    def _get_by_path_txn(self, txn: _Txn, key: bytes) -> ImageRecord | None:
        id_b = txn.get(key, db=self._paths)
        return None if id_b is None else self._get_txn(txn, id_b)

    def closest(self, source_id: int, time_us: int, direction: Direction) -> ImageRecord | None:
        """The image of a source closest to a time.

        "before": the last at or before; "after": the first at or after; "nearest": the smaller
        absolute difference, ties going to the earlier image. None when there is none.
        """
        if direction not in ("nearest", "before", "after"):
            raise ValueError(f"direction must be 'nearest', 'before' or 'after', not {direction!r}")
        return self._db.read(self._closest_txn, keys.time_seek(source_id, time_us), direction)

    def _closest_txn(self, txn: _Txn, seek: bytes, direction: Direction) -> ImageRecord | None:
        cur = txn.cursor(self._times)
        lo = seek[:2]  # the source prefix
        hi = lo + keys.AFTER_SOURCE
        if direction == "nearest":
            key = _nearest(cur, seek, lo, hi)
        elif direction == "after":
            key = _after_or_at(cur, seek, hi)
        else:
            key = _before_or_at(cur, lo, seek + keys.AFTER_TIME)
        if key is None:
            return None
        return codec.decode(keys.key_id(key), self._image_value(txn, key[10:]))

    def first_last(self, source_id: int) -> tuple[ImageRecord, ImageRecord] | None:
        """The earliest and latest image of a source, None when it has none."""
        return self._db.read(self._first_last_txn, keys.source_prefix(source_id))

    def _first_last_txn(self, txn: _Txn, lo: bytes) -> tuple[ImageRecord, ImageRecord] | None:
        cur = txn.cursor(self._times)
        hi = lo + keys.AFTER_SOURCE
        first = _after_or_at(cur, lo, hi)
        last = _before_or_at(cur, lo, hi)
        if first is None or last is None:
            return None
        a, b = self._records(txn, [first[10:], last[10:]])
        return a, b

    # -- range reads ------------------------------------------------------------------------------

    def _records(self, txn: _Txn, ids: list[bytes]) -> list[ImageRecord]:
        found = txn.cursor(self._images).getmulti(ids)
        if len(found) != len(ids):
            raise lmdb.CorruptedError("time index names missing image ids")
        return [codec.decode(keys.ID.unpack(k)[0], v) for k, v in found]

    def range(
        self,
        source_id: int,
        start_us: int,
        end_us: int,
        *,
        limit: int,
        after: tuple[int, int] | None = None,
    ) -> tuple[list[ImageRecord], tuple[int, int] | None]:
        """Images with start ≤ time ≤ end in (time, id) order, at most ``limit`` of them.

        ``after`` is the cursor returned with the previous page: (time_us, id) of its last image.
        The second value is the cursor of the next page, None when there is no more.
        """
        if limit < 1:
            raise ValueError(f"limit must be ≥ 1, got {limit}")
        lo = keys.time_seek(source_id, start_us)
        hi = keys.time_seek(source_id, end_us) + keys.AFTER_TIME
        if after is not None:
            at, after_id = after
            if not 0 <= after_id < 1 << 64:
                raise ValueError(f"bad range cursor {after!r}")
            # The smallest key strictly after the cursor's: the same key with a byte appended.
            lo = max(lo, keys.time_seek(source_id, at) + keys.ID.pack(after_id) + b"\x00")
        return self._db.read(self._range_txn, lo, hi, limit)

    def _range_txn(
        self, txn: _Txn, lo: bytes, hi: bytes, limit: int
    ) -> tuple[list[ImageRecord], tuple[int, int] | None]:
        cur = txn.cursor(self._times)
        ids: list[bytes] = []
        if cur.set_range(lo):
            # One key past the page tells whether there is a next page.
            for key in cur.iternext(values=False):
                if key >= hi or len(ids) > limit:
                    break
                ids.append(key[10:])
        more = len(ids) > limit
        records = self._records(txn, ids[:limit])
        return records, ((records[-1].time_us, records[-1].id) if more else None)

    def evenly_spaced(
        self, source_id: int, start_us: int, end_us: int, n: int
    ) -> list[ImageRecord]:
        """Up to n images spread evenly over [start, end], in time order.

        The targets are n times evenly spaced from start to end inclusive (the middle when n is
        1); each takes the image in range nearest to it. Neighbouring targets that pick the same
        image yield it once, so the result never exceeds the number of images in range.
        """
        if not 1 <= n <= MAX_FRAMES:
            raise ValueError(f"n must be in [1, {MAX_FRAMES}], got {n}")
        lo = keys.time_seek(source_id, start_us)
        hi = keys.time_seek(source_id, end_us) + keys.AFTER_TIME
        if end_us < start_us:
            return []
        span = end_us - start_us
        if n == 1:
            targets = [start_us + span // 2]
        else:
            targets = [start_us + span * i // (n - 1) for i in range(n)]
        seeks = [keys.time_seek(source_id, t) for t in targets]
        return self._db.read(self._evenly_spaced_txn, seeks, lo, hi)

    def _evenly_spaced_txn(
        self, txn: _Txn, seeks: list[bytes], lo: bytes, hi: bytes
    ) -> list[ImageRecord]:
        cur = txn.cursor(self._times)
        ids: list[bytes] = []
        for seek in seeks:
            key = _nearest(cur, seek, lo, hi)
            if key is None:
                break  # nothing in range at all
            # The nearest image is monotonic in the target, so repeats are adjacent.
            if not ids or ids[-1] != key[10:]:
                ids.append(key[10:])
        return self._records(txn, ids)

    def count(self, source_id: int, start_us: int, end_us: int) -> int:
        """Number of images with start ≤ time ≤ end (scans the time index)."""
        lo = keys.time_seek(source_id, start_us)
        hi = keys.time_seek(source_id, end_us) + keys.AFTER_TIME
        return self._db.read(self._count_txn, lo, hi)

    def _count_txn(self, txn: _Txn, lo: bytes, hi: bytes) -> int:
        cur = txn.cursor(self._times)
        n = 0
        if cur.set_range(lo):
            for key in cur.iternext(values=False):
                if key >= hi:
                    break
                n += 1
        return n

    def coverage(
        self, source_ids: Iterable[int], start_us: int, end_us: int, bin_us: int
    ) -> dict[int, list[int]]:
        """Image counts per source in bins of bin_us tiling [start, end), the first at start.

        The last bin is cut at end. With 30-minute multiples from an aligned start the counts come
        from the 30-minute coverage table (plus a scan of any final partial 30 minutes); otherwise
        the time index is scanned.
        """
        if bin_us < MIN_BIN_US:
            raise ValueError(f"bin must be at least {MIN_BIN_US} µs, got {bin_us}")
        span = max(end_us - start_us, 0)
        nbins = -(-span // bin_us)
        if nbins > MAX_BINS:
            raise ValueError(f"{nbins} bins requested, at most {MAX_BINS} allowed")
        sids = list(dict.fromkeys(source_ids))
        for sid in sids:  # validate every key before reading
            keys.time_seek(sid, start_us)
            keys.time_seek(sid, end_us)
        return self._db.read(self._coverage_txn, sids, start_us, end_us, bin_us, nbins)

    def _coverage_txn(
        self, txn: _Txn, sids: list[int], start_us: int, end_us: int, bin_us: int, nbins: int
    ) -> dict[int, list[int]]:
        step = keys.COVERAGE_BIN_US
        aggregate = bin_us % step == 0 and start_us % step == 0
        out: dict[int, list[int]] = {}
        times = txn.cursor(self._times)
        table = txn.cursor(self._coverage)
        for sid in sids:
            counts = [0] * nbins
            scan_from = start_us
            if aggregate and nbins:
                scan_from = start_us + (end_us - start_us) // step * step
                hi = keys.coverage_key(sid, scan_from)
                if table.set_range(keys.coverage_key(sid, start_us)):
                    for key, value in table.iternext():
                        if key >= hi:
                            break
                        counts[(keys.key_time(key) - start_us) // bin_us] += keys.COUNT.unpack(
                            value
                        )[0]
            if scan_from < end_us and times.set_range(keys.time_seek(sid, scan_from)):
                hi = keys.time_seek(sid, end_us)
                for key in times.iternext(values=False):
                    if key >= hi:
                        break
                    counts[(keys.key_time(key) - start_us) // bin_us] += 1
            out[sid] = counts
        return out

    # -- totals -----------------------------------------------------------------------------------

    def source_counts(self) -> dict[int, int]:
        """Image count of every source that has images."""
        return self._db.read(self._source_counts_txn)

    def _source_counts_txn(self, txn: _Txn) -> dict[int, int]:
        return {
            keys.SOURCE.unpack(k)[0]: keys.COUNT.unpack(v)[0] for k, v in txn.cursor(self._stats)
        }

    def total(self) -> int:
        return self._db.read(self._total_txn)

    def _total_txn(self, txn: _Txn) -> int:
        return txn.stat(self._images)["entries"]

    def files(self) -> dict[str, tuple[int, int]]:
        """(file size, file mtime ns) of every image by path: what a rescan compares the disk to."""
        return self._db.read(self._files_txn)

    def _files_txn(self, txn: _Txn) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for key, value in txn.cursor(self._images):
            rec = codec.decode(keys.ID.unpack(key)[0], value)
            out[rec.path] = (rec.file_size, rec.file_mtime_ns)
        return out

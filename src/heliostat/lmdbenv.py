"""One LMDB environment shared by threads (and processes): durable writes, a growing map, and
readers that never block the writer.

Two py-lmdb 3.0 behaviours shape this:

1. resizing the map while another thread starts a read makes that read fail
   (``mdb_txn_begin``: LMDB requires that no transaction be open during a resize);
2. aborting a write transaction waits until no thread is inside an LMDB call, which busy readers
   may never allow.

So reads pass a small gate that counts them in and out, and map resizes and write aborts first
close the gate and wait for the reads in progress. Commits need no gate: readers run alongside
normal writes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import lmdb

Txn = Any  # lmdb.Transaction (py-lmdb ships no type information)
_P = ParamSpec("_P")
_T = TypeVar("_T")


class LmdbEnv:
    def __init__(
        self,
        path: Path,
        *,
        map_size: int,
        max_dbs: int,
        max_readers: int = 256,
        readonly: bool = False,
        what: str = "database",
    ) -> None:
        self._write_lock = threading.Lock()
        self._gate = threading.Condition(threading.Lock())  # guards the two fields below
        self._reading = 0  # read transactions in progress
        self._remapping = False  # while True, reads wait at the gate
        self._what = what
        self.readonly = readonly
        # sync and metasync: a write acknowledged is a write on disk.
        self.env = lmdb.open(
            str(path),
            map_size=map_size,
            readonly=readonly,
            max_dbs=max_dbs,
            max_readers=max_readers,
            writemap=False,
            metasync=True,
            sync=True,
            lock=True,
        )
        self._page_size = self.env.stat()["psize"]

    def close(self) -> None:
        """Close the environment, after any read or write in progress in other threads."""
        with self._write_lock:
            self._exclusive(self.env.close)

    @property
    def map_size(self) -> int:
        return int(self.env.info()["map_size"])

    def _exclusive(self, fn: Callable[[], None]) -> None:
        """Run fn with no read transaction open in this process; caller holds the write lock."""
        with self._gate:
            self._remapping = True
            while self._reading:
                self._gate.wait()
        try:
            fn()
        finally:
            with self._gate:
                self._remapping = False
                self._gate.notify_all()

    def _remap(self, size: int) -> None:
        """Resize the map (0 = adopt another process's size); caller holds the write lock."""
        self._exclusive(lambda: self.env.set_mapsize(size))

    def _grow(self) -> None:
        """Double the map; caller holds the write lock."""
        self._remap(self.env.info()["map_size"] * 2)

    def write(
        self, fn: Callable[Concatenate[Txn, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run fn in a write transaction and commit, growing the map and retrying when full.

        fn may run more than once (after a full map), so it must only touch the transaction.
        """
        if self.readonly:
            raise lmdb.ReadonlyError(f"the {self._what} was opened read-only")
        with self._write_lock:
            while True:
                info = self.env.info()
                if (info["last_pgno"] + 1) * self._page_size * 2 > info["map_size"]:
                    self._grow()  # before the map is full: a full map costs an aborted transaction
                try:
                    txn = self.env.begin(write=True)
                except lmdb.MapResizedError:
                    self._remap(0)  # another process grew the map past ours
                    continue
                try:
                    result = fn(txn, *args, **kwargs)
                except BaseException as e:
                    # Abort with the readers held at the gate (see the module docstring).
                    self._exclusive(txn.abort)
                    if not isinstance(e, lmdb.MapFullError):
                        raise
                    self._grow()
                    continue
                try:
                    txn.commit()
                except lmdb.MapFullError:
                    self._grow()  # a failed commit has already ended the transaction
                    continue
                return result

    def read(
        self, fn: Callable[Concatenate[Txn, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run fn in a fresh read transaction of the calling thread."""
        while True:
            self._enter_read()
            try:
                with self.env.begin() as txn:
                    return fn(txn, *args, **kwargs)
            except lmdb.MapResizedError:
                pass  # another process grew the map past ours: adopt its size, once out
            finally:
                self._leave_read()
            with self._write_lock:
                self._remap(0)

    def _enter_read(self) -> None:
        with self._gate:
            while self._remapping:
                self._gate.wait()
            self._reading += 1

    def _leave_read(self) -> None:
        with self._gate:
            self._reading -= 1
            if self._remapping and not self._reading:
                self._gate.notify_all()

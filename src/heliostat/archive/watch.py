"""Live ingest: an incoming folder feeding the archive, and the archive tree kept in the catalog.

Both are polled with os.scandir (no dependency, and it works on network filesystems where change
notification does not):

- The incoming folder, every ``poll_s``: a file is taken once it is complete, i.e. its size and
  mtime are unchanged across two polls, or its ctime is past its mtime (it was renamed or
  copy2'd into place after its last write, so it needs no second look). A JP2 whose boxes still
  promise more bytes than the file has is being written, however still it looks, and is waited for
  up to ``incomplete_s``. A complete JP2 is moved to ``naming.archive_path(source, time)`` in the
  archive (rename, or copy + fsync + rename across filesystems) and indexed. A complete FITS file
  is converted by :mod:`heliostat.jp2gen` straight into the archive, its JP2 indexed and the FITS
  file kept in ``.converted/`` in the incoming folder. Bad files go to ``.rejected/`` there, with
  a ``.reason`` file beside them. Names starting with "." are ignored: writers that rename into
  place use them.
- The archive tree, every ``rescan_s``: files missing from disk are deleted from the catalog and
  files whose size or mtime differ from the catalog's are (re-)indexed, so the catalog's event log
  follows what happens on disk.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from heliostat.archive import naming, sources
from heliostat.archive.header import HeaderError, read_record
from heliostat.archive.ingest import IngestStats, ingest
from heliostat.catalog.records import ImageRecord
from heliostat.catalog.store import Catalog

log = logging.getLogger(__name__)

FITS_SUFFIXES = (".fits", ".fts", ".fit", ".fits.gz")
REJECTED = ".rejected"
CONVERTED = ".converted"


@dataclass
class _Pending:
    size: int
    mtime_ns: int
    first_seen: float  # monotonic seconds
    changed: float  # when size or mtime last changed


def _is_fits(name: str) -> bool:
    return name.lower().endswith(FITS_SUFFIXES)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_file(src: Path, dest: Path) -> None:
    """Move src to dest atomically: a rename, or across filesystems copy + fsync + rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")  # hidden: no scan picks it up
        try:
            shutil.copy2(src, tmp)  # keeps the mtime, which the catalog records
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        src.unlink()
    _fsync_dir(dest.parent)  # the new name survives a crash like the catalog entry does


class Watcher:
    """Polls an incoming folder and the archive tree; see the module docstring.

    ``on_change`` receives the archive paths whose files were replaced or deleted (the server
    forgets its caches of them). Use run() in a thread of your own, or start() and stop().
    """

    def __init__(
        self,
        catalog: Catalog,
        archive_root: Path,
        incoming: Path | None,
        *,
        stats: IngestStats,
        poll_s: float = 0.2,
        rescan_s: float = 5.0,
        incomplete_s: float = 30.0,
        on_change: Callable[[Sequence[str]], None] | None = None,
    ) -> None:
        if incoming is not None and not incoming.is_dir():
            raise FileNotFoundError(f"incoming folder {incoming} does not exist")
        self.catalog = catalog
        self.archive_root = archive_root.resolve()
        self.incoming = incoming.resolve() if incoming is not None else None
        self.stats = stats
        self.poll_s = poll_s
        self.rescan_s = rescan_s
        self.incomplete_s = incomplete_s
        self.on_change = on_change
        self._pending: dict[str, _Pending] = {}
        self._bad: dict[str, tuple[int, int]] = {}  # archive files rejected, until they change
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- running ----------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Poll until stop is set; the archive is rescanned first, then every rescan_s."""
        next_rescan = 0.0
        while not stop.is_set():
            if self.incoming is not None:
                self._guarded(self.poll_incoming)
            if time.monotonic() >= next_rescan:
                self._guarded(self.rescan_archive)
                next_rescan = time.monotonic() + self.rescan_s
            stop.wait(self.poll_s)

    def _guarded(self, fn: Callable[[], None]) -> None:
        # One failed pass (a full disk, a vanished folder) must not end the watch: log and go on.
        try:
            fn()
        except Exception:
            log.exception("watch pass failed")

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, args=(self._stop,), name="watch")
        self._thread.start()

    def stop(self) -> None:
        """Stop after the pass in progress; returns once the thread has ended."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _changed(self, paths: Sequence[str]) -> None:
        if paths and self.on_change is not None:
            self.on_change(paths)

    # -- the incoming folder ----------------------------------------------------------------------

    def poll_incoming(self) -> None:
        """One look at the incoming folder: take every file that is complete."""
        assert self.incoming is not None
        now = time.monotonic()
        present: set[str] = set()
        with os.scandir(self.incoming) as it:
            entries = [e for e in it if not e.name.startswith(".")]
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            name = entry.name
            present.add(name)
            p = self._pending.get(name)
            if p is None:
                p = self._pending[name] = _Pending(st.st_size, st.st_mtime_ns, now, now)
                self.stats.count(seen=1)
                stable = st.st_ctime_ns > st.st_mtime_ns
            elif (p.size, p.mtime_ns) != (st.st_size, st.st_mtime_ns):
                p.size, p.mtime_ns, p.changed = st.st_size, st.st_mtime_ns, now
                stable = False
            else:
                stable = True
            if not stable:
                continue
            try:
                if self._take(Path(entry.path), p, now):
                    present.discard(name)
            except Exception:
                # Left pending and retried next poll; the files after it go on meanwhile.
                log.exception("%s: cannot take it from the incoming folder", name)
        for gone in self._pending.keys() - present:
            del self._pending[gone]

    def _take(self, path: Path, p: _Pending, now: float) -> bool:
        """Move a complete file into the archive and index it, or reject it; False to wait."""
        if _is_fits(path.name):
            self.stats.time("wait", now - p.first_seen)
            self._convert(path)
            return True
        if not path.name.lower().endswith(".jp2"):
            self.stats.time("wait", now - p.first_seen)
            self._reject(path, f"not a JP2 or FITS file ({', '.join(FITS_SUFFIXES)})")
            return True
        try:
            record = read_record(path, path.name)
        except (HeaderError, LookupError) as e:
            if str(e).startswith("truncated") and now - p.changed < self.incomplete_s:
                return False  # still being written
            self.stats.time("wait", now - p.first_seen)
            self._reject(path, str(e))
            return True
        self.stats.time("wait", now - p.first_seen)
        rel = naming.archive_path(sources.by_id(record.source_id), record.time_us)
        dest = self.archive_root / rel
        t0 = time.perf_counter()
        try:
            move_file(path, dest)
        except OSError as e:
            self._reject(path, f"cannot move it into the archive at {rel}: {e}")
            return True
        t1 = time.perf_counter()
        self.stats.time("move", t1 - t0)
        # A rename keeps size and mtime, and so does the copy, but take them from the new file.
        st = dest.stat()
        record = replace(record, path=rel, file_size=st.st_size, file_mtime_ns=st.st_mtime_ns)
        self._index(record, path.name, t1)
        return True

    def _convert(self, path: Path) -> None:
        """Convert a FITS file into the archive, index the JP2 and keep the FITS file aside."""
        # Imported on the first FITS file: astropy takes half a second to import.
        from heliostat.jp2gen import JP2GenError, convert

        t0 = time.perf_counter()
        try:
            result = convert(path, self.archive_root, overwrite=True)
            rel = result.output.relative_to(self.archive_root).as_posix()
            record = read_record(result.output, rel)
        except (JP2GenError, HeaderError, LookupError, OSError) as e:
            self._reject(path, str(e))
            return
        t1 = time.perf_counter()
        self.stats.time("convert", t1 - t0)
        self.stats.count(converted=1)
        self._park(path, CONVERTED)
        self._index(record, path.name, t1)

    def _index(self, record: ImageRecord, name: str, t0: float) -> None:
        try:
            (outcome,) = self.catalog.put_images([record])
        except ValueError as e:
            self._reject(self.archive_root / record.path, str(e))
            return
        self.stats.time("index", time.perf_counter() - t0)
        if outcome.kind != "unchanged":
            self.stats.count(indexed=1)
            log.info("%s: %s as %s", name, outcome.kind, record.path)
        if outcome.kind == "updated":
            self._changed([record.path])

    def _park(self, path: Path, folder_name: str, reason: str | None = None) -> None:
        """Move a file into a folder of the incoming folder, never over an earlier one."""
        assert self.incoming is not None
        folder = self.incoming / folder_name
        folder.mkdir(exist_ok=True)
        dest = folder / path.name
        n = 0
        while dest.exists():
            n += 1
            dest = folder / f"{path.name}.{n}"
        if reason is not None:
            # The reason first, so that whoever sees the rejected file finds why.
            dest.with_name(dest.name + ".reason").write_text(reason + "\n")
        move_file(path, dest)

    def _reject(self, path: Path, reason: str) -> None:
        self._park(path, REJECTED, reason)
        self.stats.count(rejected=1)
        log.warning("%s: rejected: %s", path.name, reason)

    # -- the archive tree -------------------------------------------------------------------------

    def _scan_archive(self) -> dict[str, tuple[int, int]]:
        """(size, mtime ns) of every .jp2 in the archive, skipping hidden names and incoming."""
        out: dict[str, tuple[int, int]] = {}
        stack = [(self.archive_root, "")]
        while stack:
            folder, prefix = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = list(it)
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed while scanning
            for e in entries:
                if e.name.startswith("."):
                    continue
                try:
                    if e.is_dir(follow_symlinks=False):
                        if Path(e.path) != self.incoming:
                            stack.append((Path(e.path), f"{prefix}{e.name}/"))
                    elif e.name.lower().endswith(".jp2") and e.is_file():
                        st = e.stat()
                        out[prefix + e.name] = (st.st_size, st.st_mtime_ns)
                except FileNotFoundError:
                    continue
        return out

    def rescan_archive(self) -> None:
        """Bring the catalog in line with the archive tree: deletions, replacements, new files."""
        # The catalog first: a file indexed after this read is on disk for the scan that follows,
        # so it can never be taken for deleted.
        known = self.catalog.files()
        on_disk = self._scan_archive()
        gone = [
            rel for rel in known if rel not in on_disk and not (self.archive_root / rel).exists()
        ]
        if gone:
            deleted = self.catalog.delete_paths(gone)
            self.stats.count(deleted=len(deleted))
            for rec in deleted:
                log.info("%s: deleted", rec.path)
            self._changed([r.path for r in deleted])
        self._bad = {rel: sig for rel, sig in self._bad.items() if on_disk.get(rel) == sig}
        changed = [
            rel for rel, sig in on_disk.items() if known.get(rel) != sig and rel not in self._bad
        ]
        if not changed:
            return
        report = ingest(
            self.catalog,
            self.archive_root,
            [self.archive_root / rel for rel in changed],
            keep_records=True,
            stats=self.stats,
        )
        self._changed([r.path for r in report.records if r.path in known])
        by_name = {str(self.archive_root / rel): rel for rel in changed}
        for name, reason in report.rejected:
            rel = by_name[name]
            self._bad[rel] = on_disk[rel]
            log.warning("%s: not indexed: %s", rel, reason)

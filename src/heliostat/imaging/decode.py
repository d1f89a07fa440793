"""Decoded pixels of archive JP2 files, with reused codecs and a bounded cache of decoded images.

Measured on the 2-core machine (bench/bench_tiles.py): one 512² full-resolution region costs
25–50 ms on a fresh OpenJPEG codec and 9–18 ms on a codec that has already decoded, while the
whole 4096² image costs ~300 ms. So:

* small decodes (the whole image at this reduce level is at most ``full_decode_pixels``) decode
  the whole image once and serve every later region from the cache;
* large images are served by region decodes on pooled codecs (one codec per file and reduce
  level, reused) until ``promote_after`` regions of the same image have been asked for — a viewer
  is loading it — and then the whole image is decoded once, by one thread, while other requests
  for it wait for that result instead of decoding the same pixels again.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from heliostat.archive import jp2box
from heliostat.imaging._openjpeg import DecodeError, J2KDecoder
from heliostat.lru import CacheStats, SizedLRU

__all__ = ["DecodeError", "FileChangedError", "FileKey", "ImageInfo", "JP2Reader"]

U8Array = npt.NDArray[np.uint8]


class FileChangedError(RuntimeError):
    """The file on disk is not the one that was indexed (size or modification time differ)."""


@dataclass(frozen=True, slots=True)
class FileKey:
    path: str  # absolute path
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class ImageInfo:
    width: int
    height: int
    num_resolutions: int
    num_quality_layers: int
    palette: npt.NDArray[np.uint8] | None  # the file's own colour table (JP2 pclr box)


def reduced_size(n: int, reduce: int) -> int:
    return -(-n // (1 << reduce))


class JP2Reader:
    def __init__(
        self,
        *,
        file_cache_bytes: int = 256 << 20,
        decoded_cache_bytes: int = 512 << 20,
        full_decode_pixels: int = 1024 * 1024,
        promote_after: int = 2,
        decode_threads: int = 1,
        max_pooled_keys: int = 64,
    ) -> None:
        self._files: SizedLRU[FileKey, bytes] = SizedLRU(file_cache_bytes, len)
        self._decoded: SizedLRU[tuple[FileKey, int], U8Array] = SizedLRU(
            decoded_cache_bytes, lambda a: int(a.nbytes)
        )
        self._full_decode_pixels = full_decode_pixels
        self._promote_after = promote_after
        self._threads = decode_threads
        self._lock = threading.Lock()
        self._idle: OrderedDict[tuple[FileKey, int], list[J2KDecoder]] = OrderedDict()
        self._max_pooled_keys = max_pooled_keys
        self._inflight: dict[tuple[FileKey, int], Future[U8Array]] = {}
        self._demand: OrderedDict[tuple[FileKey, int], int] = OrderedDict()
        self._infos: SizedLRU[FileKey, ImageInfo] = SizedLRU(100_000, lambda _: 1)

    # -- file bytes and codecs -------------------------------------------------------------

    def _bytes(self, fk: FileKey) -> bytes:
        data = self._files.get(fk)
        if data is not None:
            return data
        try:
            with open(fk.path, "rb") as f:
                st = os.fstat(f.fileno())
                if (st.st_size, st.st_mtime_ns) != (fk.size, fk.mtime_ns):
                    raise FileChangedError(f"{fk.path} changed since it was indexed")
                data = f.read()
        except FileNotFoundError:
            raise FileChangedError(f"{fk.path} is no longer in the archive") from None
        self._files.put(fk, data)
        return data

    def _acquire(self, fk: FileKey, reduce: int) -> J2KDecoder:
        with self._lock:
            idle = self._idle.get((fk, reduce))
            if idle:
                self._idle.move_to_end((fk, reduce))
                return idle.pop()
        return J2KDecoder(self._bytes(fk), reduce, 0, self._threads)

    def _release(self, fk: FileKey, reduce: int, dec: J2KDecoder) -> None:
        with self._lock:
            idle = self._idle.setdefault((fk, reduce), [])
            self._idle.move_to_end((fk, reduce))
            if len(idle) < 4:
                idle.append(dec)
            while len(self._idle) > self._max_pooled_keys:
                self._idle.popitem(last=False)

    def info(self, fk: FileKey) -> ImageInfo:
        info = self._infos.get(fk)
        if info is None:
            dec = self._acquire(fk, 0)
            info = ImageInfo(
                dec.width,
                dec.height,
                dec.num_resolutions,
                dec.num_quality_layers,
                jp2box.palette(self._bytes(fk)),
            )
            self._release(fk, 0, dec)
            self._infos.put(fk, info)
        return info

    # -- decoding ---------------------------------------------------------------------------

    def _decode_full(self, fk: FileKey, reduce: int) -> U8Array:
        key = (fk, reduce)
        with self._lock:
            fut = self._inflight.get(key)
            owner = fut is None
            if fut is None:
                fut = Future()
                self._inflight[key] = fut
        if not owner:
            return fut.result()
        try:
            dec = J2KDecoder(self._bytes(fk), reduce, 0, self._threads)
            img: U8Array = dec.decode(0, 0, dec.width, dec.height)
            img.setflags(write=False)
            self._decoded.put(key, img)
            fut.set_result(img)
            return img
        except BaseException as e:
            fut.set_exception(e)
            raise
        finally:
            with self._lock:
                del self._inflight[key]

    def region(self, fk: FileKey, reduce: int, x0: int, y0: int, x1: int, y1: int) -> U8Array:
        """Pixels [y0:y1, x0:x1] of the image at ``reduce`` (indices on the reduced grid).

        The result may be a read-only view into a cached decoded image.
        """
        key = (fk, reduce)
        full = self._decoded.get(key)
        if full is not None:
            return full[y0:y1, x0:x1]
        info = self.info(fk)
        w = reduced_size(info.width, reduce)
        h = reduced_size(info.height, reduce)
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise ValueError(f"region [{x0}:{x1}, {y0}:{y1}] outside the {w}x{h} image")
        with self._lock:
            demand = self._demand.get(key, 0) + 1
            self._demand[key] = demand
            self._demand.move_to_end(key)
            while len(self._demand) > 4096:
                self._demand.popitem(last=False)
            promote = (
                w * h <= self._full_decode_pixels
                or demand > self._promote_after
                or key in self._inflight
            )
        if promote:
            return self._decode_full(fk, reduce)[y0:y1, x0:x1]
        f = 1 << reduce
        dec = self._acquire(fk, reduce)
        # A codec whose decode raised is unusable, so it only goes back to the pool on success.
        out: U8Array = dec.decode(x0 * f, y0 * f, min(x1 * f, info.width), min(y1 * f, info.height))
        self._release(fk, reduce, dec)
        return out

    def forget(self, path: str) -> None:
        """Drop everything cached for a file path (it was replaced or deleted)."""
        self._files.discard(lambda k: k.path == path)
        self._decoded.discard(lambda k: k[0].path == path)
        self._infos.discard(lambda k: k.path == path)
        with self._lock:
            for k in [k for k in self._idle if k[0].path == path]:
                del self._idle[k]

    def stats(self) -> dict[str, CacheStats]:
        return {"file_bytes": self._files.stats(), "decoded_images": self._decoded.stats()}

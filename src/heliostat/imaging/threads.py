"""Sharing a kernel's rows among numba's threads: how many to wake, which rows each computes.

Waking a thread costs 35–85 µs on this 2-vCPU VM (OpenMP's passive wait, heliostat/__init__.py)
against 0.3 (a shift) to 0.6 ns (a rotation) a pixel of warp, so small frames run on the calling
thread alone. The warps deal rows out in blocks in turn (row_order), so work that is uneven down
a frame is shared too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numba
import numpy as np
import numpy.typing as npt

# Pixels per thread below which another is not worth waking: 2 threads gained nothing on a 512²
# shift.
_MIN_PIXELS_PER_THREAD = 1 << 18


def threads(rows: int, width: int) -> int:
    """Row chunks to run in parallel: one per thread, but no thread for a sliver of work."""
    # numba.get_num_threads inside a kernel would stop numba caching it.
    return max(1, min(numba.get_num_threads(), rows, rows * width // _MIN_PIXELS_PER_THREAD))


@contextlib.contextmanager
def threads_for(chunks: int) -> Iterator[None]:
    """Numba's threads for a kernel call in ``chunks`` row chunks: all of them, or this one alone
    for a single chunk. A parallel region wakes every thread even when one has all the work:
    ~60 µs a call on this 2-vCPU VM (a 128² warp took 99 µs, 24 µs alone)."""
    if chunks > 1:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(1)  # this Python thread's setting only
    try:
        yield
    finally:
        numba.set_num_threads(before)


# Rows go to threads in blocks of this many, dealt in turn: a frame's work is rarely even down
# its rows (rows off the source are transparent and cost nothing; a rotated layer fills only
# part of the frame), and halves split the work of a 10°-rotated shrink 1:14.
BLOCK_ROWS = 16


@numba.njit(cache=True, nogil=True)
def row_order(h: int, c: int, chunks: int, backwards: bool) -> npt.NDArray[np.int64]:
    """The rows of an h-row frame that chunk c of ``chunks`` computes, in the order it computes
    them: blocks c, c + chunks, ... of BLOCK_ROWS rows, all from the bottom up if
    ``backwards``."""
    blocks = -(-h // BLOCK_ROWS)
    rows = np.empty(h, np.int64)
    count = 0
    for i in range(c, blocks, chunks):
        b = blocks - 1 - i if backwards else i
        r0 = b * BLOCK_ROWS
        r1 = min(r0 + BLOCK_ROWS, h)
        for j in range(r1 - r0):
            rows[count] = r1 - 1 - j if backwards else r0 + j
            count += 1
    return rows[:count]

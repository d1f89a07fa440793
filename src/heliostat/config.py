"""Host profiles: worker counts, cache sizes and the LMDB map size for a kind of machine."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    processes: int  # server processes sharing the port (SO_REUSEPORT); each has its own caches
    render_workers: int  # threads for decode/resample/encode (kernels release the GIL)
    decode_threads: int  # OpenJPEG threads per decode (its thread pool parallelises code-blocks)
    tile_cache_bytes: int  # encoded tiles
    decoded_cache_bytes: int  # whole decoded images per reduce level
    file_cache_bytes: int  # JP2 file bytes held for open codecs
    lmdb_map_size: int  # initial map; the catalog grows it when full
    max_concurrent_rpcs: int  # beyond this the server answers RESOURCE_EXHAUSTED
    max_message_bytes: int
    delivery_workers: int  # subscription action drivers (asyncio tasks; channels wait on I/O)


PROFILES: dict[str, Profile] = {
    # A 2-core, few-GB laptop or CI box: few threads, caches of a few hundred MB.
    "small": Profile(
        name="small",
        processes=1,
        render_workers=4,
        decode_threads=2,
        tile_cache_bytes=256 * MiB,
        decoded_cache_bytes=512 * MiB,
        file_cache_bytes=128 * MiB,
        lmdb_map_size=1 * GiB,
        max_concurrent_rpcs=512,
        max_message_bytes=64 * MiB,
        delivery_workers=2,
    ),
    # Helioviewer's production host: 16 cores, 96 GB. One Python process tops out near 3-4k
    # RPC/s (the GIL), so 8 processes share the port, each with 6 render threads (the kernels
    # release the GIL) and caches of ~5.5 GB: ~44 GB in all, half the memory, leaving the rest to
    # the page cache that holds the JP2 files. 4 GB of decoded images per process holds ~250
    # full-resolution AIA frames; 1 GB of encoded tiles ~7k tiles.
    "16c-96g": Profile(
        name="16c-96g",
        processes=8,
        render_workers=6,
        decode_threads=2,
        tile_cache_bytes=1 * GiB,
        decoded_cache_bytes=4 * GiB,
        file_cache_bytes=512 * MiB,
        lmdb_map_size=64 * GiB,
        max_concurrent_rpcs=2048,
        max_message_bytes=64 * MiB,
        delivery_workers=8,
    ),
}


def profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None

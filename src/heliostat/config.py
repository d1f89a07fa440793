"""Host profiles: worker counts, cache sizes and the LMDB map size for a kind of machine."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    render_workers: int  # threads for decode/resample/encode (kernels release the GIL)
    full_decode_threads: int  # OpenJPEG threads for one whole-image decode
    tile_cache_bytes: int  # encoded tiles
    decoded_cache_bytes: int  # whole decoded images per reduce level
    file_cache_bytes: int  # JP2 file bytes held for open codecs
    lmdb_map_size: int  # initial map; the catalog grows it when full
    max_concurrent_rpcs: int  # beyond this the server answers RESOURCE_EXHAUSTED
    max_message_bytes: int


PROFILES: dict[str, Profile] = {
    # A 2-core, few-GB laptop or CI box: few threads, caches of a few hundred MB.
    "small": Profile(
        name="small",
        render_workers=4,
        full_decode_threads=2,
        tile_cache_bytes=256 * MiB,
        decoded_cache_bytes=512 * MiB,
        file_cache_bytes=128 * MiB,
        lmdb_map_size=1 * GiB,
        max_concurrent_rpcs=512,
        max_message_bytes=64 * MiB,
    ),
    # Helioviewer's production host: 16 cores, 96 GB. Caches take about half the memory:
    # 32 GB of decoded images holds ~2000 full-resolution AIA frames, 8 GB of tiles ~60k tiles.
    "16c-96g": Profile(
        name="16c-96g",
        render_workers=24,
        full_decode_threads=4,
        tile_cache_bytes=8 * GiB,
        decoded_cache_bytes=32 * GiB,
        file_cache_bytes=4 * GiB,
        lmdb_map_size=64 * GiB,
        max_concurrent_rpcs=8192,
        max_message_bytes=64 * MiB,
    ),
}


def profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None

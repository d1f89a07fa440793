"""Tests of the LMDB image catalog (heliostat.catalog.store)."""

from __future__ import annotations

import dataclasses
import random
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from heliostat.catalog.keys import COVERAGE_BIN_US
from heliostat.catalog.records import ImageRecord
from heliostat.catalog.store import Catalog, Direction

S = 1_000_000  # µs per second
MIN = 60 * S
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = 1_700_000_000 * S - (1_700_000_000 * S) % DAY  # a UTC midnight in 2023
AIA_131, AIA_171, AIA_193, AIA_211 = 9, 10, 11, 12


def rec(path: str, source_id: int = AIA_171, time_us: int = T0, **changes: object) -> ImageRecord:
    base = ImageRecord(
        id=0,
        source_id=source_id,
        time_us=time_us,
        path=path,
        width=4096,
        height=4096,
        cdelt1=0.6,
        cdelt2=0.6,
        crpix1=2048.5,
        crpix2=2048.5,
        crval1=0.1,
        crval2=-0.2,
        rotation=0.0,
        dsun=1.49e11,
        rsun_px=1600.0,
        layering_order=1,
        file_size=1_000_000,
        file_mtime_ns=1_700_000_000_000_000_000,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def series(source_id: int, times: list[int]) -> list[ImageRecord]:
    return [rec(f"s{source_id}/{i:06d}.jp2", source_id, t) for i, t in enumerate(times)]


@pytest.fixture
def cat(tmp_path: Path) -> Iterator[Catalog]:
    with Catalog(tmp_path / "cat", map_size=1 << 24) as c:
        yield c


def stored(records: list[ImageRecord], cat: Catalog) -> list[ImageRecord]:
    return [o.record for o in cat.put_images(records)]


# -- writes ----------------------------------------------------------------------------------------


def test_round_trip_and_reopen(tmp_path: Path) -> None:
    records = [
        rec("AIA/a.jp2", AIA_171, T0 + 12 * S, crval1=-3.25, rotation=179.5, layering_order=2),
        rec("LASCO-C2/b.jp2", 4, -5 * DAY, width=1024, height=1024, file_size=7),
        rec("SWAP/ünïcode ☀.jp2", 32, T0, file_mtime_ns=-1, dsun=1.47e11),
    ]
    with Catalog(tmp_path / "cat") as cat:
        outcomes = cat.put_images(records)
        assert [o.kind for o in outcomes] == ["inserted"] * 3
        ids = [o.record.id for o in outcomes]
        assert len(set(ids)) == 3 and all(i > 0 for i in ids)
        for r, o in zip(records, outcomes, strict=True):
            assert o.record == dataclasses.replace(r, id=o.record.id)
    with Catalog(tmp_path / "cat", readonly=True) as cat:
        for r, image_id in zip(records, ids, strict=True):
            want = dataclasses.replace(r, id=image_id)
            assert cat.get(image_id) == want
            assert cat.get_by_path(r.path) == want
        assert cat.get(max(ids) + 1) is None
        assert cat.get(0) is None
        assert cat.get_by_path("nope.jp2") is None
        assert cat.get_by_path("") is None
        assert cat.total() == 3
        assert cat.source_counts() == {AIA_171: 1, 4: 1, 32: 1}
        # pre-1970 times sort and bin like any others
        assert cat.closest(4, -4 * DAY, "before") == cat.get(ids[1])
        assert cat.coverage([4], -6 * DAY, -4 * DAY, DAY) == {4: [0, 1]}
        assert cat.coverage([4], -6 * DAY + S, -4 * DAY + S, DAY) == {4: [1, 0]}
        with pytest.raises(lmdb.Error):
            cat.put_images([rec("c.jp2")])


def test_reput_is_idempotent(cat: Catalog) -> None:
    first = cat.put_images(series(AIA_171, [T0 + i * 12 * S for i in range(50)]))
    again = cat.put_images(series(AIA_171, [T0 + i * 12 * S for i in range(50)]))
    assert [o.kind for o in again] == ["unchanged"] * 50
    assert [o.record for o in again] == [o.record for o in first]
    assert cat.total() == 50
    # an unchanged put consumes no id
    new = cat.put_images([rec("new.jp2")])[0].record
    assert new.id == max(o.record.id for o in first) + 1


def test_same_path_twice_in_one_batch(cat: Catalog) -> None:
    a = rec("x.jp2", time_us=T0)
    b = rec("x.jp2", time_us=T0 + HOUR)
    outcomes = cat.put_images([a, a, b])
    assert [o.kind for o in outcomes] == ["inserted", "unchanged", "updated"]
    assert len({o.record.id for o in outcomes}) == 1
    assert cat.total() == 1
    assert cat.count(AIA_171, T0 - DAY, T0 + DAY) == 1
    assert cat.coverage([AIA_171], T0, T0 + 2 * HOUR, HOUR) == {AIA_171: [0, 1]}


def test_update_keeps_id_and_moves_index_entries(cat: Catalog) -> None:
    old = cat.put_images([rec("x.jp2", AIA_171, T0 + 10 * MIN)])[0].record
    first, _ = stored(series(AIA_171, [T0, T0 + DAY]), cat)

    # same place in the indexes, new file facts
    touched = cat.put_images([rec("x.jp2", AIA_171, T0 + 10 * MIN, file_size=5)])[0]
    assert touched.kind == "updated" and touched.record.id == old.id
    assert cat.get(old.id) == touched.record

    moved = rec("x.jp2", AIA_193, T0 + 3 * HOUR, file_size=6)
    out = cat.put_images([moved])[0]
    assert out.kind == "updated"
    assert out.record == dataclasses.replace(moved, id=old.id)
    assert cat.get_by_path("x.jp2") == out.record
    assert cat.total() == 3
    assert cat.source_counts() == {AIA_171: 2, AIA_193: 1}
    # gone from the old source's time index, present in the new one
    assert cat.count(AIA_171, T0 + S, T0 + HOUR) == 0
    assert cat.closest(AIA_171, T0 + 10 * MIN, "nearest") == first
    assert cat.closest(AIA_193, T0, "after") == out.record
    assert cat.range(AIA_193, T0, T0 + DAY, limit=10) == ([out.record], None)
    assert cat.coverage([AIA_171, AIA_193], T0, T0 + 4 * HOUR, HOUR) == {
        AIA_171: [1, 0, 0, 0],
        AIA_193: [0, 0, 0, 1],
    }


def test_delete(cat: Catalog) -> None:
    stored_ = stored(series(AIA_171, [T0 + i * HOUR for i in range(5)]), cat)
    gone = cat.delete_paths([stored_[1].path, "unknown.jp2", stored_[3].path, stored_[1].path])
    assert gone == [stored_[1], stored_[3]]
    assert cat.get(stored_[1].id) is None
    assert cat.get_by_path(stored_[3].path) is None
    assert cat.total() == 3
    assert cat.source_counts() == {AIA_171: 3}
    assert cat.range(AIA_171, T0, T0 + DAY, limit=10)[0] == [stored_[0], stored_[2], stored_[4]]
    assert cat.closest(AIA_171, T0 + HOUR, "after") == stored_[2]
    assert cat.coverage([AIA_171], T0, T0 + 5 * HOUR, HOUR) == {AIA_171: [1, 0, 1, 0, 1]}
    assert cat.delete_paths([]) == []
    cat.delete_paths([r.path for r in stored_])
    assert cat.total() == 0
    assert cat.source_counts() == {}
    assert cat.first_last(AIA_171) is None
    # ids are never reused
    assert cat.put_images([rec(stored_[0].path)])[0].record.id == stored_[-1].id + 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source_id", 999),
        ("source_id", -1),
        ("width", 0),
        ("height", -4),
        ("width", 1 << 32),
        ("cdelt1", float("nan")),
        ("cdelt2", 0.0),
        ("dsun", float("inf")),
        ("dsun", -1.0),
        ("rsun_px", "1600"),
        ("crval1", 10**400),
        ("time_us", 1 << 63),
        ("file_size", -1),
        ("path", ""),
        ("path", "x" * 600),
    ],
)
def test_invalid_record_writes_nothing(cat: Catalog, field: str, value: object) -> None:
    cat.put_images([rec("kept.jp2", file_size=1)])
    before = (cat.total(), cat.source_counts())
    bad = dataclasses.replace(rec("bad.jp2"), **{field: value})  # type: ignore[arg-type]
    batch = [rec("a.jp2"), rec("kept.jp2", file_size=2), bad]
    with pytest.raises(ValueError, match=field):
        cat.put_images(batch)
    assert (cat.total(), cat.source_counts()) == before
    assert cat.get_by_path("a.jp2") is None
    kept = cat.get_by_path("kept.jp2")
    assert kept is not None and kept.file_size == 1


# -- point reads -----------------------------------------------------------------------------------


@pytest.fixture
def timeline(cat: Catalog) -> dict[str, ImageRecord]:
    """AIA 171 at T0+100 s, +200 s, +260 s (two images) and +400 s, with images of the sources
    on either side in key order (AIA 131 late, AIA 193 early), so that a search leaking out of its
    source would find them."""
    named = {
        "a": rec("a.jp2", AIA_171, T0 + 100 * S),
        "b": rec("b.jp2", AIA_171, T0 + 200 * S),
        "c1": rec("c1.jp2", AIA_171, T0 + 260 * S),
        "c2": rec("c2.jp2", AIA_171, T0 + 260 * S),
        "d": rec("d.jp2", AIA_171, T0 + 400 * S),
        "below": rec("below.jp2", AIA_131, T0 + 10**6 * S),
        "above": rec("above.jp2", AIA_193, T0 - 10**6 * S),
    }
    return {k: o.record for k, o in zip(named, cat.put_images(list(named.values())), strict=True)}


@pytest.mark.parametrize(
    ("seconds", "direction", "want"),
    [
        (100, "nearest", "a"),  # exact hits
        (100, "before", "a"),
        (100, "after", "a"),
        (260, "after", "c1"),  # two at the same time: the first stored
        (260, "nearest", "c1"),
        (140, "nearest", "a"),
        (160, "nearest", "b"),
        (150, "nearest", "a"),  # a tie goes to the earlier image
        (330, "nearest", "c2"),  # tie between c1/c2 and d: the later of the earlier pair
        (150, "before", "a"),
        (150, "after", "b"),
        (399, "after", "d"),
        (401, "before", "d"),
        (-(10**7), "nearest", "a"),  # before the first
        (-(10**7), "after", "a"),
        (-(10**7), "before", None),
        (10**7, "nearest", "d"),  # after the last
        (10**7, "before", "d"),
        (10**7, "after", None),
    ],
)
def test_closest(
    cat: Catalog,
    timeline: dict[str, ImageRecord],
    seconds: int,
    direction: Direction,
    want: str | None,
) -> None:
    got = cat.closest(AIA_171, T0 + seconds * S, direction)
    assert got == (timeline[want] if want else None)


def test_closest_unknown_or_empty_source(cat: Catalog, timeline: dict[str, ImageRecord]) -> None:
    for source_id in (AIA_211, 999, 65535):
        for direction in ("nearest", "before", "after"):
            assert cat.closest(source_id, T0, direction) is None
    with pytest.raises(ValueError, match="direction"):
        cat.closest(AIA_171, T0, "closest")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        cat.closest(-1, T0, "nearest")


def test_first_last_and_totals(cat: Catalog, timeline: dict[str, ImageRecord]) -> None:
    assert cat.first_last(AIA_171) == (timeline["a"], timeline["d"])
    assert cat.first_last(AIA_193) == (timeline["above"], timeline["above"])
    assert cat.first_last(AIA_211) is None
    assert cat.source_counts() == {AIA_131: 1, AIA_171: 5, AIA_193: 1}
    assert cat.total() == 7
    assert cat.count(AIA_171, T0 + 100 * S, T0 + 260 * S) == 4  # both ends inclusive
    assert cat.count(AIA_171, T0 + 101 * S, T0 + 399 * S) == 3
    assert cat.count(AIA_171, T0 + 500 * S, T0 + 100 * S) == 0


# -- range reads -----------------------------------------------------------------------------------


def random_series(cat: Catalog, seed: int, n: int, span: int) -> list[ImageRecord]:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        sid = rng.choice((AIA_171, AIA_193, AIA_211))
        # whole seconds so that equal times (ties) happen
        records.append(rec(f"r/{i}.jp2", sid, T0 + rng.randrange(span // S) * S))
    return stored(records, cat)


@pytest.mark.parametrize("limit", [1, 7, 100, 1000])
def test_range_pagination_covers_every_image_once(cat: Catalog, limit: int) -> None:
    images = random_series(cat, 1, 600, 2 * HOUR)
    start, end = T0 + 10 * MIN, T0 + 100 * MIN
    # make the bounds hit images exactly
    images += stored([rec("start.jp2", AIA_171, start), rec("end.jp2", AIA_171, end)], cat)
    want = sorted(
        (r for r in images if r.source_id == AIA_171 and start <= r.time_us <= end),
        key=lambda r: (r.time_us, r.id),
    )
    got: list[ImageRecord] = []
    after = None
    pages = 0
    while True:
        page, after = cat.range(AIA_171, start, end, limit=limit, after=after)
        pages += 1
        assert 0 < len(page) <= limit
        got += page
        if after is None:
            break
        assert after == (page[-1].time_us, page[-1].id)
    assert got == want
    assert pages == -(-len(want) // limit)  # no empty trailing page


def test_range_edges(cat: Catalog) -> None:
    stored(series(AIA_171, [T0, T0 + S]), cat)
    assert cat.range(AIA_171, T0 + 2 * S, T0 + 3 * S, limit=5) == ([], None)
    assert cat.range(AIA_171, T0 + S, T0, limit=5) == ([], None)
    assert cat.range(AIA_193, T0, T0 + S, limit=5) == ([], None)
    with pytest.raises(ValueError, match="limit"):
        cat.range(AIA_171, T0, T0 + S, limit=0)


def test_evenly_spaced(cat: Catalog) -> None:
    # every 36 s for two hours, plus a gap of half an hour in the middle
    times = [T0 + i * 36 * S for i in range(200)] + [T0 + 2 * HOUR + i * 36 * S for i in range(50)]
    images = stored(series(AIA_171, times), cat)
    stored(series(AIA_193, [T0 + 30 * MIN]), cat)
    start, end = T0 + 5 * MIN, T0 + 150 * MIN
    in_range = [r for r in images if start <= r.time_us <= end]

    def brute(n: int) -> list[ImageRecord]:
        targets = [start + (end - start) * i // (n - 1) for i in range(n)]
        out: list[ImageRecord] = []
        for t in targets:
            best = min(in_range, key=lambda r: (abs(r.time_us - t), r.time_us))
            if best not in out:
                out.append(best)
        return out

    for n in (2, 3, 10, 60, 500):
        got = cat.evenly_spaced(AIA_171, start, end, n)
        assert got == brute(n)
        assert len(got) <= min(n, len(in_range))
    ten = cat.evenly_spaced(AIA_171, start, end, 10)
    assert ten[0] == in_range[0] and ten[-1] == in_range[-1]  # both ends are targets
    assert [r.time_us for r in cat.evenly_spaced(AIA_171, T0, T0 + 100 * S, 1)] == [T0 + 36 * S]
    assert len(cat.evenly_spaced(AIA_171, start, end, 10_000)) == len(in_range)
    assert cat.evenly_spaced(AIA_171, T0 + 3 * HOUR, T0 + 4 * HOUR, 5) == []
    assert cat.evenly_spaced(AIA_171, end, start, 5) == []
    with pytest.raises(ValueError):
        cat.evenly_spaced(AIA_171, start, end, 0)


def brute_coverage(
    images: list[ImageRecord], sid: int, start: int, end: int, bin_us: int
) -> list[int]:
    counts = [0] * -(-(end - start) // bin_us)
    for r in images:
        if r.source_id == sid and start <= r.time_us < end:
            counts[(r.time_us - start) // bin_us] += 1
    return counts


def test_coverage_matches_brute_force(cat: Catalog) -> None:
    images = random_series(cat, 2, 3000, 3 * DAY)
    # updates (some moving across bins and sources) and deletes must keep the 30-min table right
    rng = random.Random(3)
    moved = [
        dataclasses.replace(r, time_us=r.time_us + rng.randrange(-HOUR, HOUR), source_id=AIA_171)
        for r in rng.sample(images, 300)
    ]
    stored(moved, cat)
    deleted = {r.path for r in cat.delete_paths([r.path for r in rng.sample(images, 300)])}
    live = {r.path: r for r in images}
    live.update({r.path: r for r in moved})
    now = [r for p, r in live.items() if p not in deleted]
    assert cat.total() == len(now)
    sids = [AIA_171, AIA_193, AIA_211, 4]
    cases = [
        # the 30-minute table: aligned start, bins multiple of 30 min; ends aligned or not
        (T0, T0 + 3 * DAY, COVERAGE_BIN_US),
        (T0 + HOUR, T0 + 2 * DAY + HOUR, 2 * HOUR),
        (T0 - DAY, T0 + 4 * DAY, DAY),
        (T0 + 30 * MIN, T0 + DAY + 47 * MIN + 3 * S, HOUR),
        # the scan: bins or start not on 30-minute multiples
        (T0, T0 + 3 * DAY, 7 * MIN),
        (T0 + 13 * S, T0 + DAY + 13 * S, HOUR),
        (T0 + 5 * HOUR, T0 + 5 * HOUR + 10 * MIN, S),
    ]
    for start, end, bin_us in cases:
        got = cat.coverage(sids, start, end, bin_us)
        assert got == {s: brute_coverage(now, s, start, end, bin_us) for s in sids}
    assert cat.coverage(sids, T0, T0, HOUR) == {s: [] for s in sids}


def test_coverage_validation(cat: Catalog) -> None:
    with pytest.raises(ValueError, match="bin"):
        cat.coverage([AIA_171], T0, T0 + HOUR, S - 1)
    with pytest.raises(ValueError, match="bins"):
        cat.coverage([AIA_171], T0, T0 + 100_001 * S, S)
    assert len(cat.coverage([AIA_171], T0, T0 + 100_000 * S, S)[AIA_171]) == 100_000


# -- storage ---------------------------------------------------------------------------------------


def test_map_grows(tmp_path: Path) -> None:
    with Catalog(tmp_path / "cat", map_size=64 * 1024) as cat:
        assert cat.map_size == 64 * 1024
        # a single batch far larger than the map, then many smaller ones
        images = stored(series(AIA_171, [T0 + i * S for i in range(3000)]), cat)
        for b in range(5):
            more = [rec(f"m/{b}/{i}.jp2", AIA_193, T0 + i * S) for i in range(400)]
            images += stored(more, cat)
        assert cat.map_size > 1 << 20
        assert cat.total() == 5000
    with Catalog(tmp_path / "cat", map_size=64 * 1024, readonly=True) as cat:
        assert cat.source_counts() == {AIA_171: 3000, AIA_193: 2000}
        assert all(cat.get(r.id) == r for r in images[::97])


def test_schema_version_is_checked(tmp_path: Path) -> None:
    Catalog(tmp_path / "cat").close()
    env = lmdb.open(str(tmp_path / "cat"), max_dbs=8)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(b"schema_version", (99).to_bytes(8, "big"), db=meta)
    env.close()
    with pytest.raises(ValueError, match="schema version 99"):
        Catalog(tmp_path / "cat")


@pytest.mark.timeout(120, method="thread")  # a hang must fail, even one holding the GIL
def test_readers_in_threads_while_a_writer_writes(tmp_path: Path) -> None:
    batch, batches = 200, 15
    # a tiny map, so that the map is also grown under the readers' feet
    cat = Catalog(tmp_path / "cat", map_size=64 * 1024)
    done = threading.Event()
    errors: list[BaseException] = []
    reads = [0] * 4

    def writer() -> None:
        try:
            for b in range(batches):
                times = [T0 + (b * batch + i) * 12 * S for i in range(batch)]
                cat.put_images([rec(f"w/{b}/{i}.jp2", AIA_171, t) for i, t in enumerate(times)])
        except BaseException as e:
            errors.append(e)
        finally:
            done.set()

    def reader(k: int) -> None:
        rng = random.Random(k)
        try:
            while not done.is_set():
                total = cat.total()
                assert total % batch == 0  # batches are atomic
                image = cat.closest(AIA_171, T0 + rng.randrange(4 * HOUR), "nearest")
                if image is not None:
                    assert cat.get(image.id) == image
                page, _ = cat.range(AIA_171, T0, T0 + DAY, limit=50)
                assert [r.time_us for r in page] == sorted(r.time_us for r in page)
                assert sum(cat.coverage([AIA_171], T0, T0 + DAY, HOUR)[AIA_171]) % batch == 0
                reads[k] += 1
        except BaseException as e:
            errors.append(e)

    # daemons, so that a hang fails this test instead of blocking the interpreter's exit
    threads = [threading.Thread(target=reader, args=(k,), daemon=True) for k in range(4)]
    threads.append(threading.Thread(target=writer, daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert all(reads)
    assert cat.total() == batch * batches
    assert cat.map_size > 64 * 1024
    cat.close()


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from heliostat.catalog.records import ImageRecord
    from heliostat.catalog.store import Catalog

    cat = Catalog(Path(sys.argv[1]), map_size=1 << 16)
    n = 0
    for b in range(100_000):
        batch = [
            ImageRecord(0, 10, (b * 50 + i) * 12_000_000, f"d/{b}/{i}.jp2", 4096, 4096, 0.6, 0.6,
                        2048.5, 2048.5, 0.0, 0.0, 0.0, 1.49e11, 1600.0, 1, 1, 1)
            for i in range(50)
        ]
        cat.put_images(batch)
        n += len(batch)
        print("committed", n, flush=True)
    """
)


def test_committed_batches_survive_sigkill(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path / "cat")], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    reported = 0
    for line in proc.stdout:
        reported = int(line.split()[1])
        if reported >= 1000:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    assert reported >= 1000, "the writer died before committing enough"
    with Catalog(tmp_path / "cat") as cat:
        total = cat.total()
        assert total >= reported
        assert total % 50 == 0  # whole batches only
        assert cat.source_counts() == {10: total}
        assert sum(cat.coverage([10], 0, total * 12 * S, DAY)[10]) == total
        # and the catalog is writable after the crash
        assert cat.put_images([rec("after.jp2")])[0].kind == "inserted"

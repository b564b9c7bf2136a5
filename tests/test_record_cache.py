"""The record cache (navistore.backend.record_cache): the backend contract, and exactness.

The whole compliance suite runs over a cache small enough to evict all the time, in front of
memory and sqlite; the unit tests below drive the orders of events the suite cannot choose (a
read that overlaps a write, a reset under way), and measure what an entry costs.
"""

from __future__ import annotations

import gc
import platform
from pathlib import Path
from typing import Any, Callable

import attrs
import pytest
import pytest_twisted
from support.deferreds import fired
from twisted.internet.defer import Deferred, succeed

from navistore.backend import record_cache
from navistore.backend.memory import MemoryBackend
from navistore.backend.record_cache import ENTRY_OVERHEAD, RecordCache, entry_size
from navistore.backend.sqlite import SqliteBackend
from navistore.interfaces import (
    ANY,
    IBackendStatistics,
    IImmediateReads,
    IPrefixChanges,
    ISizedReads,
    IStorageBackend,
)
from navistore.record import Record
from navistore.testing import BackendComplianceTests
from navistore.testing.compliance import make_record, make_tombstone

#: A cache that holds about three small records.
TINY = 3 * ENTRY_OVERHEAD


class TestCachedMemoryCompliance(BackendComplianceTests):
    """The contract holds through a tiny cache over the memory backend."""

    persistent = False

    @pytest.fixture
    def make_backend(self) -> RecordCache:
        return RecordCache(MemoryBackend(), TINY)


class TestCachedSqliteCompliance(BackendComplianceTests):
    """The contract holds through a tiny cache over sqlite, reopening included."""

    persistent = True

    @pytest.fixture
    def make_backend(self, tmp_path: Path) -> RecordCache:
        return RecordCache(SqliteBackend(tmp_path / "store.db"), TINY)

    @pytest.fixture
    def reopen_backend(self, tmp_path: Path) -> Callable[[Any], RecordCache]:
        return lambda old: RecordCache(SqliteBackend(tmp_path / "store.db"), TINY)


class Gated(MemoryBackend):
    """A memory backend whose reads and applies wait until the test lets them finish."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: list[Deferred[None]] = []

    def _gated(self, answer: Deferred[Any]) -> Deferred[Any]:
        gate: Deferred[None] = Deferred()
        self.gates.append(gate)
        result: Deferred[Any] = Deferred()

        def release(_: object) -> None:
            answer.chainDeferred(result)

        gate.addCallback(release)
        return result

    def get(self, key: str) -> Deferred[Record | None]:
        return self._gated(super().get(key))

    def apply(self, record: Record, expect: Any = ANY) -> Deferred[Record | None]:
        return self._gated(super().apply(record, expect))

    def open_gates(self) -> None:
        gates, self.gates = self.gates, []
        for gate in gates:
            gate.callback(None)


def test_optional_interfaces_and_attributes_are_the_backends() -> None:
    """What sqlite offers beyond the contract, the cache in front of it offers too."""
    inner = SqliteBackend(":memory:")
    cache = RecordCache(inner)
    for interface in (IStorageBackend, IImmediateReads, IPrefixChanges, ISizedReads):
        assert interface.providedBy(cache)
    assert IBackendStatistics.providedBy(cache) == IBackendStatistics.providedBy(inner)
    assert cache.kind == "sqlite" and cache.persistent
    assert cache.path == inner.path  # /_backup copies this file
    fired(cache.close())


def test_reads_are_answered_from_memory_after_the_first() -> None:
    backend = MemoryBackend()
    cache = RecordCache(backend)
    stored = fired(cache.apply(make_record("/a", b"1")))
    assert cache.peek("/a") == stored  # the applied record came in with its answer
    assert (cache.hits, cache.misses) == (1, 0)
    fired(cache.get("/a"))
    assert cache.hits == 2


def test_a_write_replaces_what_is_cached() -> None:
    cache = RecordCache(MemoryBackend())
    fired(cache.apply(make_record("/a", b"old", 1000)))
    assert cache.peek("/a").value == b"old"
    fired(cache.apply(make_record("/a", b"new", 2000)))
    assert cache.peek("/a").value == b"new"
    assert fired(cache.get("/a")).value == b"new"
    # A record that loses (an older stamp) changes nothing, in the cache either.
    assert fired(cache.apply(make_record("/a", b"late", 1500))) is None
    assert cache.peek("/a").value == b"new"


def test_tombstones_are_not_cached_and_a_delete_empties_the_entry() -> None:
    cache = RecordCache(MemoryBackend())
    fired(cache.apply(make_record("/a", b"1", 1000)))
    cache.peek("/a")
    fired(cache.apply(make_tombstone("/a", 2000)))
    assert len(cache) == 0
    assert cache.peek("/a").deleted  # the backend's tombstone, as the contract says
    assert len(cache) == 0
    # The collector purging it leaves nothing stale behind.
    fired(cache.purge_tombstones(10**9))
    assert cache.peek("/a") is None


def test_a_read_that_overlaps_a_write_does_not_fill_the_cache() -> None:
    """A read issued before a write may answer what the write replaced: it must not come in
    after the write's own record."""
    backend = Gated()
    cache = RecordCache(backend)
    applying = cache.apply(make_record("/a", b"old", 1000))
    backend.open_gates()
    fired(applying)
    cache.clear()
    reading = cache.get("/a")  # issued first: waits in its gate, answers "old"
    writing = cache.apply(make_record("/a", b"new", 2000))
    gates = list(backend.gates)
    backend.gates = []
    gates[1].callback(None)  # the write is done first ...
    gates[0].callback(None)  # ... then the read answers what it read before
    assert fired(writing).value == b"new"
    assert fired(reading).value == b"old"  # what it read before the write
    assert cache.peek("/a").value == b"new"  # and not what the cache kept


def test_a_key_being_written_is_never_answered_from_the_cache() -> None:
    backend = Gated()
    cache = RecordCache(backend)
    first = cache.apply(make_record("/a", b"1", 1000))
    backend.open_gates()
    fired(first)
    second = cache.apply(make_record("/a", b"2", 2000))
    third = cache.apply(make_record("/a", b"3", 3000))
    assert len(cache) == 0  # dropped the moment the write was issued
    gates, backend.gates = backend.gates, []
    gates[0].callback(None)
    fired(second)
    assert len(cache) == 0  # another write of the key is still under way
    gates[1].callback(None)
    fired(third)
    assert cache.peek("/a").value == b"3"


def test_a_reset_under_way_keeps_the_cache_empty() -> None:
    backend = MemoryBackend()
    cache = RecordCache(backend)
    fired(cache.apply(make_record("/a", b"1")))
    gate: Deferred[None] = Deferred()
    real_reset = backend.reset
    backend.reset = lambda: gate.addCallback(lambda _: real_reset())  # type: ignore[method-assign]
    resetting = cache.reset()
    assert len(cache) == 0
    fired(cache.get("/a"))  # read during the reset: not kept
    assert len(cache) == 0
    gate.callback(None)
    fired(resetting)
    assert cache.peek("/a") is None


def test_the_bound_holds_and_the_least_recently_used_go_first() -> None:
    cache = RecordCache(MemoryBackend(), 10 * 1024)
    for number in range(100):
        fired(cache.apply(make_record(f"/k{number}", b"x" * 100)))
        cache.peek("/k0")  # used all along: stays
        assert cache.bytes <= cache.max_bytes
    assert cache.bytes == sum(entry_size(cache.peek(key)) for key in list(cache._records))
    assert "/k0" in cache._records and "/k1" not in cache._records
    assert "/k99" in cache._records
    # A record larger than the whole cache is never kept.
    fired(cache.apply(make_record("/big", b"x" * 20 * 1024)))
    cache.peek("/big")
    assert "/big" not in cache._records


@pytest.mark.skipif(
    platform.python_implementation() != "CPython",
    reason="tracemalloc measures CPython's allocator; PyPy's objects have other sizes",
)
def test_an_entry_costs_no_more_than_counted() -> None:
    """ENTRY_OVERHEAD covers what an entry really holds: the tuple of its fields, their strings
    and the dictionary's link (the records are made from rows, as sqlite reads them)."""
    import tracemalloc  # CPython's only: PyPy has no _tracemalloc, so not at module level

    count = 2000

    class Rows(MemoryBackend):
        def get(self, key: str) -> Deferred[Record | None]:
            # A new Record per read, with strings of its own, like a row turned into a record.
            number = int(key[2:])
            return succeed(make_record(f"/k{number}".encode().decode(), b"v" * 100, number + 1))

    cache = RecordCache(Rows(), 1 << 30)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for number in range(count):
        fired(cache.get(f"/k{number}"))
    cache._hot.clear()  # the Records of recent reads, bounded apart (HOT_RECORDS)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(cache) == count
    counted = sum(entry_size(cache.peek(key)) for key in list(cache._records))
    assert used <= counted, f"{used / count:.0f} bytes per entry, {counted / count:.0f} counted"


@pytest.mark.skipif(
    platform.python_implementation() != "CPython",
    reason="gc.is_tracked tells CPython's collector; PyPy's collector tracks nothing this way",
)
def test_entries_are_not_tracked_by_the_garbage_collector() -> None:
    """A large cache must not lengthen every full collection (they stall the reactor): once the
    collector has seen them, no entry and nothing in one is an object it tracks."""
    cache = RecordCache(MemoryBackend(), 1 << 20)
    chained = attrs.evolve(make_record("/chained", b"v"), chain=("0123456789abcdef",))
    fired(cache.apply(chained))
    for number in range(100):
        fired(cache.apply(make_record(f"/k{number}", b"v" * 10)))
    gc.collect()
    entries = list(cache._records.values())
    assert len(entries) == 101
    assert not any(gc.is_tracked(entry) for entry in entries)
    assert not any(gc.is_tracked(field) for entry in entries for field in entry)
    cache._hot.clear()
    assert cache.peek("/chained") == fired(MemoryBackend.get(cache.backend, "/chained"))


def test_recent_reads_keep_their_records_up_to_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Records kept beside the tuples are the recently read or written ones, never more
    than HOT_RECORDS, and never one the backend has since replaced."""
    monkeypatch.setattr(record_cache, "HOT_RECORDS", 4)
    backend = MemoryBackend()
    cache = RecordCache(backend, 1 << 20)
    for number in range(10):
        fired(cache.apply(make_record(f"/k{number}", b"v")))
    assert len(cache._hot) <= 4 and len(cache) == 10
    cache._hot.clear()
    first = cache.peek("/k0")
    assert cache.peek("/k0") is first  # the second read finds the very Record
    fired(cache.apply(make_record("/k0", b"w", 2000)))
    again = cache.peek("/k0")
    assert again is not None and again.value == b"w"
    for number in range(1, 10):
        cache.peek(f"/k{number}")
        assert len(cache._hot) <= 4
    assert set(cache._hot) <= set(cache._records)
    for key in cache._hot:
        assert cache._hot[key] == fired(backend.get(key))


@pytest_twisted.ensureDeferred
async def test_sqlite_reads_through_the_cache_see_every_write(tmp_path: Path) -> None:
    """Interleaved writes and immediate reads on sqlite, whose applies finish on another
    thread: every read answers the latest write or says it must wait."""
    from navistore.interfaces import WouldBlock

    cache = RecordCache(SqliteBackend(tmp_path / "store.db"), 2 * ENTRY_OVERHEAD)
    try:
        latest: dict[str, bytes] = {}
        for step in range(60):
            key = f"/k{step % 4}"
            value = b"%d" % step
            writing = cache.apply(make_record(key, value, 1000 + step))
            latest[key] = value
            try:
                seen = cache.peek(key)
            except WouldBlock:
                seen = None
            assert seen is None or seen.value == value
            await writing
            for other, wanted in latest.items():
                record = await cache.get(other)
                assert record is not None and record.value == wanted
    finally:
        await cache.close()

"""The memory backend: the shipped compliance suite, plus what is particular to it.

The memory backend keeps an append-only seq log that it compacts once stale entries are half of
it; the tests below drive many rewrites of a few keys through that compaction and check that the
change feed stays exact. Since every call of the memory backend fires before it returns, the
Hypothesis tests read results synchronously instead of running on the reactor.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from support.deferreds import fired

from navistore.backend.memory import MemoryBackend
from navistore.record import Record
from navistore.testing import BackendComplianceTests
from navistore.testing.compliance import make_record, make_tombstone


class TestMemoryCompliance(BackendComplianceTests):
    """The memory backend honours the whole contract; it is RAM-only, so not persistent."""

    persistent = False

    @pytest.fixture
    def make_backend(self) -> MemoryBackend:
        """A fresh memory backend."""
        return MemoryBackend()


@pytest_twisted.ensureDeferred
async def test_changes_stay_exact_across_log_compaction() -> None:
    """Many rewrites of a few keys compact the seq log, and ``changes`` still lists each key
    once at its latest seq, from any starting point."""
    backend = MemoryBackend()
    keys = ["/hot/a", "/hot/b", "/hot/c"]
    latest: dict[str, Record] = {}
    for wall in range(1, 301):
        key = keys[wall % 3]
        record = (
            make_tombstone(key, wall) if wall % 7 == 0 else make_record(key, b"%d" % wall, wall)
        )
        latest[key] = await backend.apply(record)
    expected = sorted(latest.values(), key=lambda record: record.seq or 0)
    assert await backend.changes(0) == expected
    for since in (0, 100, 297, 298, 299, 300):
        assert await backend.changes(since) == [r for r in expected if (r.seq or 0) > since]
    # The log was compacted: it holds far fewer than the 300 seqs ever assigned.
    assert len(backend._seq_log) <= 64 + 2 * len(keys)


@pytest_twisted.ensureDeferred
async def test_reader_paging_through_compaction_misses_nothing() -> None:
    """A reader paging the feed while writers rewrite keys (compacting the log between its
    pages) still ends with every key's latest record."""
    backend = MemoryBackend()
    for n in range(10):
        await backend.apply(make_record(f"/k/{n}", b"v1", 1))
    since = 0
    seen: dict[str, Record] = {}
    for round_number in range(2, 40):
        page = await backend.changes(since, limit=3)
        for record in page:
            seen[record.key] = record
        if page:
            since = page[-1].seq
        for n in range(0, 10, 3):
            await backend.apply(make_record(f"/k/{n}", b"v%d" % round_number, round_number))
    while page := await backend.changes(since, limit=3):
        for record in page:
            seen[record.key] = record
        since = page[-1].seq
    assert seen == {record.key: record for record in await backend.scan("/k/")}


@pytest_twisted.ensureDeferred
async def test_purge_after_compaction() -> None:
    """Purging tombstones after the log was compacted leaves a consistent feed and scan."""
    backend = MemoryBackend()
    for wall in range(1, 200):
        await backend.apply(make_record("/x", b"v", wall))
    await backend.apply(make_tombstone("/x", 500))
    await backend.apply(make_record("/y", b"y", 1))
    assert await backend.purge_tombstones(await backend.last_seq()) == 1
    assert [r.key for r in await backend.changes(0)] == ["/y"]
    assert [r.key for r in await backend.scan("/", include_deleted=True)] == ["/y"]


_writes = st.lists(
    st.tuples(
        st.sampled_from(["/a", "/a/b", "/b", "/\u00e9"]),
        st.integers(min_value=0, max_value=20),
        st.booleans(),
    ),
    max_size=40,
    # A stamp names one write: two different records never share it.
    unique_by=lambda write: (write[0], write[1]),
)


@given(writes=_writes, data=st.data())
def test_any_arrival_order_gives_the_same_state(
    writes: list[tuple[str, int, bool]], data: st.DataObject
) -> None:
    """Applying one set of records in any two orders gives the same records per key
    (last-writer-wins is commutative), and ``changes`` always lists each key once."""
    records = [
        make_tombstone(key, wall) if deleted else make_record(key, b"%d" % wall, wall)
        for key, wall, deleted in writes
    ]
    shuffled = data.draw(st.permutations(records))
    states = []
    for order in (records, shuffled):
        backend = MemoryBackend()
        for record in order:
            fired(backend.apply(record))
        stored = fired(backend.scan("/", include_deleted=True))
        feed = fired(backend.changes(0))
        assert sorted(r.key for r in feed) == [r.key for r in stored]
        assert [r.seq for r in feed] == sorted(r.seq for r in feed)
        states.append([(r.key, r.value, r.stamp, r.deleted) for r in stored])
    assert states[0] == states[1]

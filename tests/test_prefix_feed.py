"""A prefix-filtered change feed costs what it returns, not the length of the log (issue 12).

- ``changes_under`` (the optional :class:`~navistore.interfaces.IPrefixChanges`) of the memory
  and sqlite backends is the whole feed filtered by prefix, for any history: Hypothesis
  properties here (the shared suite's example tables run in every backend's test module).
- ``Store.changes`` uses it for every prefix but ``/``, one query per prefix of a tuple, merged
  by seq; over a backend without it (the http backend, third-party ones) it examines a bounded
  number of changes per call and says where it stopped (``more``).
- The feeds (long-poll, event stream, ``?wait=true`` on a prefix) read on past such a page
  instead of waiting for a write that may never come.
- The cost: counted, not timed. Over the memory backend the records it visits, over sqlite the
  virtual machine steps it runs, do not grow with the length of the log.

Every backend call of the memory backend fires before it returns, so most tests read results
synchronously (``fired``) instead of running on the reactor.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from support.api import ORIGIN, api_resource
from support.deferreds import fired
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from navistore.backend import sqlite_schema as schema
from navistore.backend.memory import MemoryBackend
from navistore.backend.sqlite import SqliteBackend
from navistore.clock import Stamp
from navistore.interfaces import ANY, Expectation, IPrefixChanges, IStorageBackend
from navistore.keys import prefix_upper_bound
from navistore.record import Record
from navistore.store import ChangesPage, Store
from navistore.store import core as store_core
from navistore.watch_hub import WatchHub
from navistore.web import feeds

NODE = "0123456789abcdef"


def live(key: str, wall: int) -> Record:
    return Record(key, b"%d" % wall, "text/plain", Stamp(wall, 0, NODE))


def tombstone(key: str, wall: int) -> Record:
    return Record.tombstone(key, Stamp(wall, 0, NODE))


@implementer(IStorageBackend)
class WithoutPrefixChanges:
    """A memory backend seen through IStorageBackend alone, as the Store sees the http backend
    or a third-party one; it counts the records its ``changes`` hands out (what the Store
    examines)."""

    kind = "memory, without IPrefixChanges"
    persistent = False

    def __init__(self) -> None:
        self.inner = MemoryBackend()
        self.handed_out: list[int] = []  # per call of changes

    def changes(self, since: int = 0, limit: int = 1000) -> Deferred[list[Record]]:
        def count(records: list[Record]) -> list[Record]:
            self.handed_out.append(len(records))
            return records

        return self.inner.changes(since, limit).addCallback(count)

    def get(self, key: str) -> Deferred[Record | None]:
        return self.inner.get(key)

    def apply(self, record: Record, expect: Expectation = ANY) -> Deferred[Record | None]:
        return self.inner.apply(record, expect)

    def scan(
        self,
        prefix: str = "/",
        after: str | None = None,
        limit: int = 1000,
        include_deleted: bool = False,
    ) -> Deferred[list[Record]]:
        return self.inner.scan(prefix, after, limit, include_deleted)

    def last_seq(self) -> Deferred[int]:
        return self.inner.last_seq()

    def purge_tombstones(self, before_seq: int) -> Deferred[int]:
        return self.inner.purge_tombstones(before_seq)

    def reset(self) -> Deferred[None]:
        return self.inner.reset()

    def get_meta(self, name: str) -> Deferred[str | None]:
        return self.inner.get_meta(name)

    def set_meta(self, name: str, value: str) -> Deferred[None]:
        return self.inner.set_meta(name, value)

    def close(self) -> Deferred[None]:
        return self.inner.close()


def test_the_stand_in_backend_lacks_only_prefix_changes() -> None:
    """The stand-in for a backend without the interface is a whole IStorageBackend, and the
    memory and sqlite backends provide IPrefixChanges."""
    assert verifyObject(IStorageBackend, WithoutPrefixChanges())
    assert not IPrefixChanges.providedBy(WithoutPrefixChanges())
    assert IPrefixChanges.implementedBy(MemoryBackend)
    assert IPrefixChanges.implementedBy(SqliteBackend)


# -- the property: changes_under is the feed filtered by prefix --------------------------------

_KEYS = ["/a", "/a/b", "/a/b/c", "/a/c", "/ab", "/a0", "/b", "/b/a", "/\u00e9", "/\U0001f600/x"]
_PREFIXES = ["/", "/a", "/a/", "/a/b", "/a/b/", "/ab", "/b/", "/\u00e9", "/\U0001f600", "/z"]

#: A history: writes and deletes of a few keys (walls increase, so each one wins), and purges
#: (of the tombstones below a fraction of the seqs used so far).
_operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(_KEYS)),
        st.tuples(st.just("delete"), st.sampled_from(_KEYS)),
        st.tuples(st.just("purge"), st.floats(min_value=0, max_value=1)),
    ),
    max_size=60,
)
_queries = st.lists(
    st.tuples(
        st.sampled_from(_PREFIXES),
        st.floats(min_value=0, max_value=1.1),
        st.integers(min_value=1, max_value=8),
    ),
    min_size=1,
    max_size=10,
)


def _history(operations: list[tuple[str, Any]]) -> Iterable[tuple[str, Any]]:
    """The operations as ("apply", record) or ("purge", before_seq) steps."""
    seqs = 0
    for wall, (kind, argument) in enumerate(operations, start=1):
        if kind == "purge":
            yield "purge", int(argument * seqs) + 1
        else:
            seqs += 1
            yield "apply", (live if kind == "put" else tombstone)(argument, wall)


def _expected(feed: list[Record], prefix: str, since: int, limit: int) -> list[Record]:
    return [r for r in feed if (r.seq or 0) > since and r.key.startswith(prefix)][:limit]


@given(operations=_operations, queries=_queries)
def test_memory_changes_under_is_the_filtered_feed(
    operations: list[tuple[str, Any]], queries: list[tuple[str, float, int]]
) -> None:
    """For any history of writes, deletes and purges, the memory backend's
    ``changes_under(p, since, limit)`` is ``changes`` after ``since`` filtered by ``p``, cut
    to ``limit``: both of its ways (the log walk, the prefix's keys) agree with it."""
    backend = MemoryBackend()
    for step, argument in _history(operations):
        if step == "purge":
            fired(backend.purge_tombstones(argument))
        else:
            fired(backend.apply(argument))
    feed = fired(backend.changes(0, 10_000))
    last = fired(backend.last_seq())
    for prefix, position, limit in queries:
        since = int(position * last)
        expected = _expected(feed, prefix, since, limit)
        assert fired(backend.changes_under(prefix, since, limit)) == expected


@given(operations=_operations, queries=_queries, budget=st.integers(min_value=1, max_value=6))
def test_sqlite_changes_under_is_the_filtered_feed(
    operations: list[tuple[str, Any]], queries: list[tuple[str, float, int]], budget: int
) -> None:
    """The same property for sqlite's query (``sqlite_schema.changes_under``, what the backend
    runs), on a file of its own, with a first window of 1 to 6 changes, so that every way it
    may take (a short log walked, the key index, windows that double, the key index after
    them) is taken by some example."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "store.db")
        connection = sqlite3.connect(path)
        try:
            schema.open_connection(connection, "normal", path)
            for step, argument in _history(operations):
                if step == "purge":
                    schema.transact(connection, schema.purge, argument)
                else:
                    schema.transact(connection, schema.write_batch, [(argument, ANY)])
            cursor = connection.cursor()
            feed = schema.select_records(cursor, schema.CHANGES_SQL, (0, 10_000))
            last = int(schema.read_state(cursor, "last_seq"))
            for prefix, position, limit in queries:
                since = int(position * last)
                bound = prefix_upper_bound(prefix)
                found = schema.changes_under(cursor, prefix, bound, since, limit, budget=budget)
                assert found == _expected(feed, prefix, since, limit)
        finally:
            connection.close()


_prefix_sets = st.lists(st.sampled_from(_PREFIXES[1:]), min_size=1, max_size=4).map(tuple)


@given(
    with_interface=st.booleans(),
    operations=_operations,
    prefixes=_prefix_sets,
    limit=st.integers(1, 5),
    data=st.data(),
)
def test_store_pages_read_each_change_under_the_prefixes_once(
    with_interface: bool,
    operations: list[tuple[str, Any]],
    prefixes: tuple[str, ...],
    limit: int,
    data: st.DataObject,
) -> None:
    """Paging ``Store.changes`` with a tuple of (possibly nested) prefixes, resuming from each
    page's ``last_seq`` while ``more`` says so, reads every change under any of them exactly
    once, in seq order, whether the backend provides IPrefixChanges (one query per prefix,
    merged) or not (a scan bounded to 3 changes a call here, so pages stop early, some empty);
    the last page's ``last_seq`` is the newest seq."""
    backend: IStorageBackend = MemoryBackend() if with_interface else WithoutPrefixChanges()
    for step, argument in _history(operations):
        if step == "purge":
            fired(backend.purge_tombstones(argument))
        else:
            fired(backend.apply(argument))
    store = fired(Store.open(backend))
    last = fired(backend.last_seq())
    since = data.draw(st.integers(0, last), label="since")
    feed = fired(backend.changes(since, 10_000))
    expected = [r for r in feed if r.key.startswith(prefixes)]
    read: list[Record] = []
    pages = 0
    with mock.patch.object(store_core, "FALLBACK_SCAN_RECORDS", 3):
        while True:
            page = fired(store.changes(since, limit=limit, prefix=prefixes))
            assert len(page.records) <= limit
            assert page.last_seq >= since
            if page.records:
                assert page.last_seq >= (page.records[-1].seq or 0)
            read.extend(page.records)
            since = page.last_seq
            pages += 1
            assert pages < 1000, "paging does not end"
            if not page.more:
                break
    assert read == expected
    assert since == last


# -- the Store: the bounded scan, the merge ----------------------------------------------------


def _store_over(backend: IStorageBackend) -> Store:
    return fired(Store.open(backend))


def _write(store: Store, keys: Iterable[str]) -> list[Record]:
    return [fired(store.put(key, b"v")).record for key in keys]


def test_bounded_scan_stops_at_its_bound_and_says_where(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over a backend without IPrefixChanges, one call examines at most the bound (here 20
    changes) and answers what it found with ``last_seq`` where it stopped and ``more``; read
    on from there, the pages together hold every match once, and the last one is complete."""
    monkeypatch.setattr(store_core, "FALLBACK_SCAN_RECORDS", 20)
    backend = WithoutPrefixChanges()
    store = _store_over(backend)
    keys = [f"/p/{n}" if n in (3, 57) else f"/other/{n}" for n in range(100)]
    stored = _write(store, keys)
    pages: list[ChangesPage] = []
    since = 0
    while not pages or pages[-1].more:
        backend.handed_out.clear()
        pages.append(fired(store.changes(since, limit=1, prefix="/p/")))
        assert sum(backend.handed_out) <= 20
        since = pages[-1].last_seq
    assert [(p.records, p.last_seq, p.more) for p in pages] == [
        ([stored[3]], 4, True),  # a full page: its last record
        ([], 24, True),  # the bound, 20 changes further
        ([], 44, True),
        ([stored[57]], 58, True),
        ([], 78, True),
        ([], 98, True),
        ([], 100, False),  # the end: the newest seq
    ]


def test_the_whole_feed_is_not_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound only applies to a prefix-filtered read: ``/`` (alone or in a tuple) reads
    the feed as it is, and a short page is complete (the pushers and the collector rely on
    it)."""
    monkeypatch.setattr(store_core, "FALLBACK_SCAN_RECORDS", 5)
    store = _store_over(WithoutPrefixChanges())
    stored = _write(store, [f"/k/{n}" for n in range(30)])
    for prefix in ("/", ("/", "/k/"), ("/k/1", "/")):
        page = fired(store.changes(0, limit=100, prefix=prefix))
        assert (page.records, page.last_seq, page.more) == (stored, 30, False)
    full = fired(store.changes(0, limit=30))
    assert (full.records, full.last_seq, full.more) == (stored, 30, True)


@pytest.mark.parametrize("backend_kind", ["memory", "without"])
def test_prefixes_are_merged_by_seq_and_a_key_counts_once(backend_kind: str) -> None:
    """A tuple of prefixes (nested, repeated, in any order) lists each matching change once,
    in seq order, up to ``limit``; a full page ends at its last record, a short one at the
    newest seq; no prefix at all lists nothing."""
    backend = MemoryBackend() if backend_kind == "memory" else WithoutPrefixChanges()
    store = _store_over(backend)
    stored = _write(store, ["/a/b/1", "/c/1", "/a/2", "/x", "/a/b/3", "/c/2", "/ab"])
    prefixes = ("/c/", "/a/b/", "/a/", "/a/b/", "/nothing/")
    page = fired(store.changes(0, limit=100, prefix=prefixes))
    expected = [stored[n] for n in (0, 1, 2, 4, 5)]
    assert (page.records, page.last_seq, page.more) == (expected, 7, False)
    page = fired(store.changes(0, limit=3, prefix=prefixes))
    assert (page.records, page.last_seq, page.more) == (expected[:3], 3, True)
    page = fired(store.changes(3, limit=3, prefix=prefixes))
    assert (page.records, page.last_seq, page.more) == (expected[3:], 7, False)
    page = fired(store.changes(0, prefix=()))
    assert (page.records, page.last_seq, page.more) == ([], 7, False)
    with pytest.raises(ValueError, match="limit"):
        fired(store.changes(0, limit=0, prefix="/a/"))


@implementer(IStorageBackend, IPrefixChanges)
class WriteBetweenQueries(WithoutPrefixChanges):
    """A backend with IPrefixChanges that, while the Store reads ``/b/``, has a write to ``/a/``
    land (as a write may between two reads that are not one transaction)."""

    def __init__(self) -> None:
        super().__init__()
        self.landed: list[Record] = []

    def changes_under(
        self, prefix: str = "/", since: int = 0, limit: int = 1000, max_bytes: int | None = None
    ) -> Deferred[list[Record]]:
        if prefix == "/b/" and not self.landed:
            self.landed.append(fired(self.inner.apply(live("/a/late", 10_000))))
        return self.inner.changes_under(prefix, since, limit, max_bytes)


def test_merge_never_passes_a_change_an_earlier_query_could_not_see() -> None:
    """One query per prefix is not one snapshot: a change under the first prefix written
    while the second is read may have a smaller seq than what the second returns. The page
    then stops short of what the first query was complete to, and the next page has it."""
    backend = WriteBetweenQueries()
    store = _store_over(backend)
    _write(store, ["/a/1", "/b/1"])
    page = fired(store.changes(0, limit=10, prefix=("/a/", "/b/")))
    (late,) = backend.landed
    assert late.seq == 3
    assert [r.key for r in page.records] == ["/a/1", "/b/1"]
    assert page.last_seq == 2 and not page.more  # not 3: /a/late was not read
    _write(store, ["/b/2"])
    following = fired(store.changes(page.last_seq, limit=10, prefix=("/a/", "/b/")))
    assert [r.key for r in following.records] == ["/a/late", "/b/2"]


# -- the cost: counted ---------------------------------------------------------------------------


class CountingDict(dict):  # type: ignore[type-arg]
    """A dict counting the lookups made in it (``d[k]`` and ``d.get(k)``)."""

    lookups = 0

    def __getitem__(self, key: Any) -> Any:
        CountingDict.lookups += 1
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        CountingDict.lookups += 1
        return super().get(key, default)


@pytest.mark.parametrize("log_length", [2_000, 50_000])
def test_narrow_feed_over_memory_visits_what_it_returns(
    log_length: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A feed of 10 keys under ``/narrow/`` over a log of 2,000 or 50,000 changes visits a few
    records per change it returns, however long the log: the memory backend walks only as far
    as the prefix's keys would cost, then reads those keys (before IPrefixChanges, the Store
    read the whole log, twice a lookup per change)."""
    backend = MemoryBackend()
    store = _store_over(backend)
    for n in range(log_length):
        key = f"/narrow/{n}" if n % (log_length // 10) == 0 else f"/wide/{n}"
        fired(backend.apply(live(key, n + 1)))
    monkeypatch.setattr(backend, "_records", CountingDict(backend._records))
    monkeypatch.setattr(backend, "_key_at_seq", CountingDict(backend._key_at_seq))
    monkeypatch.setattr(CountingDict, "lookups", 0)
    page = fired(store.changes(0, prefix="/narrow/"))
    assert len(page.records) == 10 and page.last_seq == log_length
    assert CountingDict.lookups <= 4 * len(page.records)
    monkeypatch.setattr(CountingDict, "lookups", 0)
    assert fired(store.changes(log_length - 5, prefix="/narrow/")).records == []
    assert CountingDict.lookups <= 2 * 5  # a recent since: the few changes after it


async def _sqlite_steps(path: Path, log_length: int) -> tuple[int, ChangesPage]:
    """The sqlite virtual machine steps (in tens) of one narrow-prefix feed from 0, over a
    file holding a log of ``log_length`` changes of which 10 are under ``/narrow/``."""
    connection = sqlite3.connect(str(path))
    schema.open_connection(connection, "normal", str(path))
    batch = [
        (live(f"/narrow/{n}" if n % (log_length // 10) == 0 else f"/wide/{n:06}", n + 1), ANY)
        for n in range(log_length)
    ]
    schema.transact(connection, schema.write_batch, batch)
    connection.close()
    backend = SqliteBackend(path)
    try:
        store = await Store.open(backend)
        steps = [0]

        def step() -> int:
            steps[0] += 1
            return 0

        backend._writing_connection().set_progress_handler(step, 10)
        page = await store.changes(0, prefix="/narrow/")
        return steps[0], page
    finally:
        await backend.close()


@pytest_twisted.ensureDeferred
async def test_narrow_feed_over_sqlite_reads_the_same_whatever_the_log_length(
    tmp_path: Path,
) -> None:
    """The same feed over sqlite runs as many virtual machine steps over a log of 30,000
    changes as over one of 3,000 (sqlite counts them: deterministic, unlike a timing): it reads
    the prefix's keys through the key index. Before IPrefixChanges the Store read every change
    of the log, ten times the steps for ten times the log."""
    short_steps, short_page = await _sqlite_steps(tmp_path / "short.db", 3_000)
    long_steps, long_page = await _sqlite_steps(tmp_path / "long.db", 30_000)
    assert len(short_page.records) == len(long_page.records) == 10
    assert long_page.last_seq == 30_000
    assert long_steps <= 1.5 * short_steps + 20, (short_steps, long_steps)


# -- the feeds read on past a page that stopped at its bound ---------------------------------


class Events(Protocol):
    """Collects a streamed body as it arrives."""

    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def keys(self) -> list[str]:
        """The key of every ``change`` event received so far."""
        return [
            json.loads(line.removeprefix("data: "))["key"]
            for line in self.data.decode().split("\n")
            if line.startswith("data: ")
        ]


class Node:
    """The API over StubTreq, over a backend without IPrefixChanges whose Store scans at most
    10 changes a call (or ten pages: ask for pages of one), with 25 changes outside ``/app/``
    before anything under it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(store_core, "FALLBACK_SCAN_RECORDS", 10)
        self.clock = Clock()
        self.store = _store_over(WithoutPrefixChanges())
        self.hub = WatchHub(self.store, clock=self.clock)
        self.stub = StubTreq(api_resource(self.store, watch_hub=self.hub))
        _write(self.store, [f"/other/{n}" for n in range(25)])

    def pump(self) -> None:
        for _ in range(3):
            self.clock.advance(0)
            self.stub.flush()

    def send(self, path: str, params: Mapping[str, str]) -> list[Any]:
        outcome: list[Any] = []
        self.stub.get(ORIGIN + path, params=dict(params)).addBoth(outcome.append)
        self.pump()
        return outcome

    def body(self, outcome: list[Any]) -> bytes:
        assert outcome, "no answer yet"
        content: list[bytes] = []
        outcome[0].content().addCallback(content.append)
        self.pump()
        return content[0]


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    """A node as :class:`Node` says; its watches end with the test."""
    made = Node(monkeypatch)
    yield made
    made.hub.close()
    made.pump()


def test_longpoll_reads_on_past_a_bounded_page(node: Node) -> None:
    """A long-poll whose first matching change lies beyond the Store's scan bound answers at
    once with it, rather than sleeping until the next write (or its timeout) with an older
    change unread."""
    (change,) = _write(node.store, ["/app/a"])
    _write(node.store, ["/other/late"])
    params = {"feed": "longpoll", "prefix": "/app/", "since": "0", "limit": "1"}
    outcome = node.send("/_changes", params)
    assert outcome, "the long-poll waited with a change under its prefix unread"
    answer = json.loads(node.body(outcome))
    assert answer == {"last_seq": change.seq, "results": [mock.ANY]}
    assert answer["results"][0]["key"] == "/app/a"


def test_eventsource_backlog_reads_on_past_a_bounded_page(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event stream replays the whole backlog under its prefix, past pages that stopped
    at the scan bound (short, even empty), before it goes live (pages of one change here, so
    that the bound, ten pages, is 10 changes)."""
    monkeypatch.setattr(feeds, "_STREAM_PAGE", 1)
    _write(node.store, ["/app/a", *[f"/other/x{n}" for n in range(25)], "/app/b"])
    outcome = node.send("/_changes", {"feed": "eventsource", "prefix": "/app/", "since": "0"})
    events = Events()
    outcome[0].deliverBody(events)
    node.pump()
    assert events.keys() == ["/app/a", "/app/b"]
    _write(node.store, ["/app/c"])
    node.pump()
    assert events.keys() == ["/app/a", "/app/b", "/app/c"]


def test_prefix_wait_reads_on_past_a_bounded_page(node: Node) -> None:
    """``GET /<prefix>/?wait=true&index=0`` answers at once when a change under the prefix
    after the index lies beyond the scan bound."""
    _write(node.store, ["/app/a"])
    outcome = node.send("/app/", {"wait": "true", "index": "0"})
    assert outcome, "the wait slept with a change under its prefix unread"
    assert json.loads(node.body(outcome))["keys"] == ["/app/a"]

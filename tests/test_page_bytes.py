"""Pages bounded by bytes as well as by count (issue 12), and purges and resets in chunks.

- The Store cuts listings and feed pages once their keys and values reach ``page_bytes`` (at
  least one record), over a backend with ISizedReads and over one without alike; ``next`` and
  ``last_seq`` go on from there, and paging lists everything once.
- ``GET /_replicate?since=`` pages are cut like pushed batches and say ``more``; a puller
  reads on at once after a page cut by bytes (instead of waiting as if caught up).
- sqlite purges and resets in transactions of ``CHANGE_CHUNK`` records, one a reactor turn,
  while every call issued after them waits: none sees them half done.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from support.api import Api, api_resource
from support.deferreds import fired
from support.nodes import Network, Node, make_clock
from twisted.internet import defer
from zope.interface import implementer

from navistore.backend import sqlite_schema
from navistore.backend.memory import MemoryBackend
from navistore.backend.sqlite import SqliteBackend
from navistore.clock import HybridClock, Stamp
from navistore.interfaces import ISizedReads, IStorageBackend
from navistore.protocol.batches import BATCH_BYTES, decode_batch
from navistore.record import Record
from navistore.store import Store

NODE = "0123456789abcdef"


@implementer(IStorageBackend)
class CountOnly:
    """The memory backend seen without ISizedReads: pages cut by count alone."""

    def __init__(self) -> None:
        self.inner = MemoryBackend()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def scan(self, prefix: str = "/", after: str | None = None, limit: int = 1000,
             include_deleted: bool = False) -> Any:  # fmt: skip
        return self.inner.scan(prefix, after, limit, include_deleted)

    def changes(self, since: int = 0, limit: int = 1000) -> Any:
        return self.inner.changes(since, limit)


def _store(backend: Any, page_bytes: int) -> Store:
    return Store(backend, HybridClock(NODE, wall_ms=lambda: 1_000_000), page_bytes=page_bytes)


def _fill(store: Store, sizes: list[int]) -> None:
    for index, size in enumerate(sizes):
        fired(store.put(f"/v/{index:02}", b"x" * size))


#: Values of 100 B (105 with their 5-byte keys), one of 1,000 B, and small ones.
SIZES = [95, 95, 95, 995, 95, 5, 5, 5, 95, 95]


@pytest.mark.parametrize("backend_kind", ["sized", "count-only"])
def test_listing_pages_are_cut_by_bytes_and_page_on(backend_kind: str) -> None:
    """A listing page ends with the record whose size reaches page_bytes, says ``next``, and
    paging lists every key once, over a backend with or without ISizedReads."""
    backend = MemoryBackend() if backend_kind == "sized" else CountOnly()
    assert ISizedReads.providedBy(backend) == (backend_kind == "sized")
    store = _store(backend, page_bytes=250)
    _fill(store, SIZES)
    first = fired(store.list("/v/", limit=1000))
    assert [r.key for r in first.records] == ["/v/00", "/v/01", "/v/02"]
    assert first.next == "/v/02"
    pages: list[list[str]] = []
    after = None
    while True:
        page = fired(store.list("/v/", after=after, limit=1000))
        pages.append([r.key[3:] for r in page.records])
        if page.next is None:
            break
        after = page.next
    # Cut wherever 250 bytes are reached; the last page cut by bytes cannot know that nothing
    # follows, so an empty page ends the listing.
    assert pages == [["00", "01", "02"], ["03"], ["04", "05", "06", "07", "08", "09"], []]
    assert fired(store.list("/v/", limit=2)).next == "/v/01"  # count still cuts


@pytest.mark.parametrize("backend_kind", ["sized", "count-only"])
@pytest.mark.parametrize("prefix", ["/", "/v/"])
def test_feed_pages_are_cut_by_bytes_and_say_more(backend_kind: str, prefix: str) -> None:
    """A feed page (whole or under a prefix) cut by bytes says ``more`` with ``last_seq`` at
    its last record; reading on from it lists every change once."""
    backend = MemoryBackend() if backend_kind == "sized" else CountOnly()
    store = _store(backend, page_bytes=250)
    _fill(store, SIZES)
    page = fired(store.changes(0, limit=1000, prefix=prefix))
    assert [r.key for r in page.records] == ["/v/00", "/v/01", "/v/02"]
    assert page.more and page.last_seq == page.records[-1].seq
    seen: list[str] = []
    since = 0
    while True:
        page = fired(store.changes(since, limit=1000, prefix=prefix))
        seen += [r.key for r in page.records]
        since = page.last_seq
        if not page.more:
            break
    assert seen == [f"/v/{index:02}" for index in range(len(SIZES))]
    whole = fired(store.changes(0, limit=1000, max_bytes=10**9))
    assert len(whole.records) == len(SIZES) and not whole.more


@pytest_twisted.ensureDeferred
async def test_values_listing_over_big_values_holds_one_per_page(tmp_path: Path) -> None:
    """``GET /?values=true`` over values larger than a page answers one value per page with
    ``next``, never all of them in one answer."""
    backend = SqliteBackend(str(tmp_path / "s.db"))
    store = await Store.open(backend)
    store.page_bytes = 64 * 1024
    try:
        for index in range(4):
            await store.put(f"/big/{index}", bytes([97 + index]) * 100_000)
        api = Api(api_resource(store, max_value_size=200_000))
        after = ""
        pages = []
        while True:
            answer = await api.get(f"/big/?values=true&after={after}")
            assert answer.status == 200
            page = answer.json()
            pages.append([entry["key"] for entry in page["keys"]])
            assert len(answer.body) < 200_000
            if not page["next"]:
                break
            after = page["next"]
        assert pages[:4] == [["/big/0"], ["/big/1"], ["/big/2"], ["/big/3"]]
    finally:
        await backend.close()


def _stamped(key: str, value: bytes, wall: int) -> Record:
    return Record(key, value, "text/plain", Stamp(wall, 0, "1111111111111111"), chain=())


@pytest_twisted.ensureDeferred
async def test_pulled_pages_fit_a_batch_and_say_more() -> None:
    """``GET /_replicate`` cuts its page like a pushed batch (BATCH_BYTES, a first record
    alone), says ``more`` and its last record's seq; the last page says ``more: false``."""
    network = Network()
    node = await Node.create("a", network, make_clock())
    service = await node.start()
    try:
        value = b"v" * (BATCH_BYTES // 3)
        for index in range(5):
            await node.store.put(f"/p/{index}", value)
        since, pages = 0, []
        while True:
            response = await node.api.get(f"{node.url}/_replicate?since={since}&limit=1000")
            body = await response.content()
            assert response.code == 200
            assert len(body) <= BATCH_BYTES + 4096
            batch = decode_batch(body)
            pages.append((len(batch.records), batch.more))
            assert batch.last_seq is not None
            since = batch.last_seq
            if not batch.more:
                break
        assert pages == [(2, True), (2, True), (1, False)]
        assert json.loads(body)["more"] is False
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_reset_and_purge_run_in_chunks_that_nothing_sees_half_done(tmp_path: Path) -> None:
    """A purge and a reset of more than CHANGE_CHUNK records run in several transactions, one
    per reactor turn; a listing and a write issued meanwhile come after it: the listing sees
    the result whole, and the write survives the reset."""
    backend = SqliteBackend(str(tmp_path / "s.db"))
    try:
        count = sqlite_schema.CHANGE_CHUNK * 2 + 10
        records = [
            Record.tombstone(f"/t/{n:05}", Stamp(1000, 0, NODE))
            if n % 2
            else Record(f"/t/{n:05}", b"v", "text/plain", Stamp(1000, 0, NODE))
            for n in range(count * 2)
        ]
        await defer.gatherResults([backend.apply(record) for record in records])
        newest = await backend.last_seq()
        transactions: list[str] = []
        real = backend._interact

        def counting(operation: str, *args: Any) -> Any:
            transactions.append(operation)
            return real(operation, *args)

        backend._interact = counting  # type: ignore[method-assign]
        purged = backend.purge_tombstones(newest + 1)
        listed = backend.scan("/t/", limit=10, include_deleted=True)
        assert await purged == count
        assert [r.deleted for r in await listed] == [False] * 10
        assert transactions.count("purge_tombstones") == 3
        reset = backend.reset()
        written = backend.apply(Record("/after", b"kept", "text/plain", Stamp(2000, 0, NODE)))
        after_reset = backend.scan("/", limit=10)
        await reset
        assert (await written) is not None
        assert [r.key for r in await after_reset] == ["/after"]
        assert transactions.count("reset") == 3  # 4,010 records left: 2,000 + 2,000 + 10
        assert transactions.index("scan") == 3  # the listing waited for the whole purge
    finally:
        await backend.close()

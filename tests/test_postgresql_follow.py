"""Two Stores over one PostgreSQL database, as two nodes sharing it: each wakes for the other's
writes (LISTEN/NOTIFY), its record cache forgets what the other wrote, and conditional writes
racing on one key are decided by the database (exactly one wins)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from navistore.backend import open_backend
from navistore.backend.record_cache import RecordCache
from navistore.clock import Stamp
from navistore.interfaces import IExternalWrites
from navistore.record import Record
from navistore.store.core import Store
from navistore.store.errors import PreconditionFailed

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytest_plugins = ["support.postgres"]

#: The wake latency allowed (the notification is normally a few ms; the fallback poll is 1 s).
WAKE_SECONDS = 5.0


async def _open(url: str) -> Store:
    return await Store.open(RecordCache(open_backend(url)))


@pytest_twisted.async_yield_fixture
async def pair(postgres_url: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two Stores (each with its record cache) over one fresh database."""
    first = await _open(postgres_url)
    second = await _open(postgres_url)
    yield first, second
    await first.close()
    await second.close()


async def _wait_for(condition: Any, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > WAKE_SECONDS:
            raise AssertionError(f"not within {WAKE_SECONDS} s: {what}")
        await task.deferLater(reactor, 0.01, lambda: None)
    return time.monotonic() - started


def _heard(store: Store) -> list[Record]:
    heard: list[Record] = []
    store.subscribe(heard.append)
    return heard


@pytest_twisted.ensureDeferred
async def test_the_backend_announces_writes_through_another_backend(postgres_url: str) -> None:
    listening, writing = open_backend(postgres_url), open_backend(postgres_url)
    try:
        assert IExternalWrites.providedBy(listening)
        seen: list[int] = []
        unsubscribe = listening.subscribe_external(seen.append)
        await _wait_for(lambda: listening._listener.connections, "the listen connection")
        stored = await writing.apply(Record("/k", b"v", "text/plain", _stamp(1)))
        await _wait_for(lambda: stored.seq in seen, "the notification")
        unsubscribe()
        count = len(seen)
        await writing.apply(Record("/k", b"w", "text/plain", _stamp(2)))
        await task.deferLater(reactor, 0.3, lambda: None)
        assert len(seen) == count
    finally:
        await listening.close()
        await writing.close()


@pytest_twisted.ensureDeferred
async def test_a_write_on_one_node_wakes_the_other_once_with_the_database_seq(
    pair: tuple[Store, Store],
) -> None:
    first, second = pair
    await _wait_for(lambda: _listening(second), "the listen connection")
    heard = _heard(second)
    written = await first.put("/wake", b"hello")
    await _wait_for(lambda: heard, "the wake on the other node")
    assert [(r.key, r.value, r.seq) for r in heard] == [("/wake", b"hello", written.record.seq)]
    assert second.newest_seq == written.record.seq
    await task.deferLater(reactor, 1.5, lambda: None)  # a poll later: still announced once
    assert len(heard) == 1


@pytest_twisted.ensureDeferred
async def test_the_record_cache_forgets_what_the_other_node_wrote(
    pair: tuple[Store, Store],
) -> None:
    first, second = pair
    await _wait_for(lambda: _listening(first), "the listen connection")
    await first.put("/k", b"old")
    assert (await first.get("/k")).value == b"old"  # type: ignore[union-attr]
    cache = first.backend
    assert isinstance(cache, RecordCache) and cache.peek("/k") is not None  # cached
    await second.put("/k", b"new")
    await _served(first, "/k", b"new")
    assert cache.peek("/k").value == b"new"  # cached again, the new value
    await second.delete("/k")
    await _served(first, "/k", None)


async def _served(store: Store, key: str, value: bytes | None) -> None:
    """Wait until ``store`` answers ``value`` for ``key`` (a cached old value fails)."""
    started = time.monotonic()
    while True:
        record = await store.get(key)
        if (record.value if record else None) == value:
            return
        assert time.monotonic() - started < WAKE_SECONDS, (key, record, value)
        await task.deferLater(reactor, 0.01, lambda: None)


@pytest.mark.parametrize("rounds", [20])
@pytest_twisted.ensureDeferred
async def test_racing_conditional_writes_on_two_nodes_have_one_winner(
    pair: tuple[Store, Store], rounds: int
) -> None:
    first, second = pair
    for round_ in range(rounds):
        key = f"/race/{round_}"
        outcomes = await defer.DeferredList(
            [
                defer.ensureDeferred(first.put(key, b"first", if_none_match=True)),
                defer.ensureDeferred(second.put(key, b"second", if_none_match=True)),
            ],
            consumeErrors=True,
        )
        assert sorted(ok for ok, _ in outcomes) == [False, True], outcomes
        loser = next(result for ok, result in outcomes if not ok)
        assert loser.check(PreconditionFailed)
        stored = await first.get(key)
        winner = next(result for ok, result in outcomes if ok)
        assert stored is not None and stored.value == winner.record.value
        stamp = stored.stamp.encode()
        outcomes = await defer.DeferredList(
            [
                defer.ensureDeferred(first.put(key, b"A", if_match=stamp)),
                defer.ensureDeferred(second.put(key, b"B", if_match=stamp)),
            ],
            consumeErrors=True,
        )
        assert sorted(ok for ok, _ in outcomes) == [False, True], outcomes
        winner = next(result for ok, result in outcomes if ok)
        assert (await second.get(key)).value == winner.record.value  # type: ignore[union-attr]


def _listening(store: Store) -> bool:
    listener = getattr(store.backend.backend, "_listener", None)  # type: ignore[attr-defined]
    return listener is not None and listener.connections > 0


def _stamp(wall: int) -> Stamp:
    return Stamp(wall, 0, "00000000000000a1")

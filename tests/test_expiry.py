"""Per-key TTL in the Store and the Expirer, on a wall clock and a reactor clock the test moves.

An expired key is absent for every read at once (before its expiry is written); the Expirer
writes the expiry (the tombstone at the successor of the record's stamp) at the deadline, which
watchers hear of as a delete; a write made before the deadline beats the expiry wherever they
meet; a node that was down past a deadline expires the key as it starts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from navistore.backend.memory import MemoryBackend
from navistore.clock import Stamp
from navistore.record import Record
from navistore.store import Change, NotFound, Store
from navistore.store.core import MAX_TTL_MS
from navistore.store.expiry import MAX_SLEEP, Expirer

START_MS = 1_764_633_600_000


class Wall:
    """A wall clock (ms) that moves only when told, together with the reactor's clock."""

    def __init__(self, reactor: Clock) -> None:
        self.ms = START_MS
        self.reactor = reactor

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)
        self.reactor.advance(seconds)


@pytest.fixture
def reactor() -> Clock:
    return Clock()


@pytest.fixture
def wall(reactor: Clock) -> Wall:
    return Wall(reactor)


@pytest_twisted.async_yield_fixture
async def store(wall: Wall) -> AsyncIterator[Store]:
    opened = await Store.open(MemoryBackend(), wall_ms=wall)
    yield opened
    await opened.close()


def test_the_successor_of_a_stamp_is_the_next_one() -> None:
    """No stamp lies between a stamp and its successor, at the edges of each field too."""
    cases = [
        (Stamp(5, 1, "00000000000000a9"), Stamp(5, 1, "00000000000000aa")),
        (Stamp(5, 1, "ffffffffffffffff"), Stamp(5, 2, "0000000000000000")),
        (Stamp(5, 16**6 - 1, "ffffffffffffffff"), Stamp(6, 0, "0000000000000000")),
    ]
    for stamp, successor in cases:
        assert stamp.successor() == successor
        assert stamp < successor
        assert stamp.successor().encode() > stamp.encode()  # the stored text orders the same


def test_an_expiry_is_the_same_tombstone_wherever_it_is_made() -> None:
    """The expiry depends on the record alone: two nodes expiring it make equal tombstones,
    which carry the deadline and beat the record, and nothing else."""
    stamp = Stamp(START_MS, 0, "0123456789abcdef")
    record = Record("/lease", b"me", "text/plain", stamp, expires_ms=START_MS + 5000)
    expiry = record.expiry()
    assert expiry == record.with_seq(3).expiry()
    assert expiry.deleted and expiry.is_expiry and expiry.expires_ms == START_MS + 5000
    assert record.stamp < expiry.stamp == Stamp(START_MS, 0, "0123456789abcdf0")
    assert expiry.stamp < Stamp(START_MS, 0, "0123456789abcdf1")


@pytest_twisted.ensureDeferred
async def test_an_expired_key_is_absent_before_its_expiry_is_written(
    store: Store, wall: Wall
) -> None:
    """Past its deadline a key is not served by get, peek or list, even though nothing has
    written its expiry yet; before, it is, with its deadline and flags."""
    written = await store.put("/app/lease", b"me", ttl_ms=5000, flags=9)
    assert written.record.expires_ms == START_MS + 5000 and written.record.flags == 9
    await store.put("/app/other", b"stays")
    wall.advance(4.999)
    assert await store.get("/app/lease") == written.record
    assert store.peek("/app/lease") == written.record
    wall.advance(0.001)
    assert await store.get("/app/lease") is None
    assert store.peek("/app/lease") is None
    page = await store.list("/app/")
    assert [record.key for record in page.records] == ["/app/other"]
    stored = await store.backend.get("/app/lease")
    assert stored is not None and not stored.deleted  # not written yet: only hidden


@pytest_twisted.ensureDeferred
async def test_writes_treat_an_expired_key_as_absent(store: Store, wall: Wall) -> None:
    """Over an expired key a create-only write succeeds and says it created the key, a delete
    is NotFound, and a write replaces exactly the expired record."""
    await store.put("/lease", b"old", ttl_ms=1000)
    wall.advance(2)
    with pytest.raises(NotFound):
        await store.delete("/lease")
    result = await store.put("/lease", b"new", create_only=True)
    assert result.created and result.previous is None
    assert (await store.get("/lease")) == result.record


@pytest_twisted.ensureDeferred
async def test_ttls_out_of_range_are_refused(store: Store) -> None:
    """A TTL is from 1 ms to ten years."""
    for ttl in (0, -1, MAX_TTL_MS + 1):
        with pytest.raises(ValueError):
            await store.put("/k", b"v", ttl_ms=ttl)
    assert await store.get("/k") is None


@pytest_twisted.ensureDeferred
async def test_a_write_answers_what_it_replaced(store: Store) -> None:
    """``previous`` is the live record a write replaced; ``remove`` answers the deleted one."""
    first = await store.put("/k", b"one")
    second = await store.put("/k", b"two")
    assert first.previous is None and second.previous == first.record
    removed = await store.remove("/k")
    assert removed.record.deleted and removed.previous == second.record


@pytest_twisted.ensureDeferred
async def test_the_expirer_writes_each_expiry_at_its_deadline(
    store: Store, wall: Wall, reactor: Clock
) -> None:
    """The expirer wakes at the soonest deadline, moves earlier for a record stored with an
    earlier one, writes each expiry once (watchers hear a delete carrying the deadline), and
    leaves keys without a TTL alone."""
    heard: list[Record] = []
    store.subscribe(heard.append)
    expirer = Expirer(store, clock=reactor)
    expirer.startService()
    try:
        await store.put("/late", b"v", ttl_ms=10_000)
        await store.put("/forever", b"v")
        await store.put("/soon", b"v", ttl_ms=3000)  # earlier than the timer: it moves
        heard.clear()
        wall.advance(2.9)
        assert heard == []
        wall.advance(0.1)
        assert [(r.key, r.deleted, r.expires_ms) for r in heard] == [
            ("/soon", True, START_MS + 3000)
        ]
        wall.advance(7)
        assert [r.key for r in heard] == ["/soon", "/late"]
        assert store.counters.expiries == 2
        assert [r.key for r in (await store.list("/")).records] == ["/forever"]
        wall.advance(MAX_SLEEP * 3)
        assert len(heard) == 2  # nothing more to expire, nothing written again
    finally:
        await expirer.stopService()
    assert not reactor.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_a_refresh_before_the_deadline_beats_the_expiry(
    store: Store, wall: Wall, reactor: Clock
) -> None:
    """A key written again before its deadline (here with a new TTL, as etcd's refresh does)
    lives on; the old record's expiry, arriving later from a peer, loses to it."""
    expirer = Expirer(store, clock=reactor)
    expirer.startService()
    try:
        old = (await store.put("/lease", b"me", ttl_ms=2000)).record
        wall.advance(1.5)
        refreshed = (await store.put("/lease", b"me", ttl_ms=2000)).record
        wall.advance(1)
        assert await store.get("/lease") == refreshed
        assert await store.apply_remote(old.expiry()) is None
        wall.advance(1.1)
        assert await store.get("/lease") is None
        stored = await store.backend.get("/lease")
        assert stored == refreshed.expiry().with_seq(stored.seq if stored else None)
    finally:
        await expirer.stopService()


@pytest_twisted.ensureDeferred
async def test_deadlines_passed_while_down_expire_at_start(wall: Wall, reactor: Clock) -> None:
    """A node started after deadlines passed expires those keys at once, more than one batch
    of them, and then sleeps until the next deadline."""
    backend = MemoryBackend()
    first = await Store.open(backend, wall_ms=wall)
    for number in range(7):
        await first.put(f"/k{number}", b"v", ttl_ms=1000)
    await first.put("/later", b"v", ttl_ms=60_000)
    wall.ms += 5000  # the node was down meanwhile
    store = await Store.open(backend, wall_ms=wall)
    expirer = Expirer(store, clock=reactor, batch=3)
    expirer.startService()
    try:
        reactor.advance(0)  # the memory backend answers at once: the pass runs to its end
        live = [record.key for record in (await store.list("/")).records]
        assert live == ["/later"]
        assert store.counters.expiries == 7
        [delayed] = reactor.getDelayedCalls()
        assert 54 <= delayed.getTime() - reactor.seconds() <= 55
    finally:
        await expirer.stopService()


@pytest_twisted.ensureDeferred
async def test_keys_written_together_treat_an_expired_key_as_absent(
    store: Store, wall: Wall
) -> None:
    """``write_together`` over a key read as absent because it expired replaces exactly the
    expired record; a key read as absent that someone created meanwhile refuses it whole."""
    await store.put("/lease", b"old", ttl_ms=1000)
    wall.advance(2)
    written = await store.write_together(
        [Change("/lease", None, b"new"), Change("/other", None, b"o")]
    )
    assert written is not None and [record.key for record in written] == ["/lease", "/other"]
    assert (await store.get("/lease")) == written[0]
    await store.put("/late", b"created meanwhile")
    assert await store.write_together([Change("/x", None, b"x")], [("/late", None)]) is None
    assert await store.get("/x") is None

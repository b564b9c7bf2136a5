"""The composite backends' own behaviour: URL syntax and checks, placement, the layout guard,
the interfaces they provide, and a cache tier kept fresh by other writers' writes.

The contract itself is tests/test_composite_compliance.py; seqs across restarts are
tests/test_shards_model.py; a real daemon over shards is tests/test_e2e_composites.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import task
from zope.interface import Interface, alsoProvides, implementer_only

from navistore import interfaces
from navistore.backend import BackendURLError, check_backend, display_url, open_backend
from navistore.backend.cache_tier import CacheTier
from navistore.backend.composite_url import parse_cache_url, parse_size
from navistore.backend.memory import MemoryBackend
from navistore.backend.shards import ShardedBackend, shard_of
from navistore.errors import BackendError, StorageFailure
from navistore.interfaces import (
    IAtomicApply,
    IExpiringRecords,
    IImmediateReads,
    IPrefixChanges,
    ISizedReads,
    IStorageBackend,
)
from navistore.node import NodeConfig, cached_backend
from navistore.testing.compliance import make_record

OPTIONAL = (IImmediateReads, IPrefixChanges, ISizedReads, IExpiringRecords, IAtomicApply)


# -- URL syntax ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [("65536", 65536), ("64MiB", 64 << 20), ("2GB", 2 * 10**9), ("1 kib", 1024), ("3k", 3000)],
)
def test_sizes_take_decimal_and_binary_units(text: str, size: int) -> None:
    """A cache size is a whole number of bytes with an optional unit of 1000s or 1024s."""
    assert parse_size(text) == size


def test_the_inner_url_is_taken_verbatim() -> None:
    """Everything after the second colon is the inner URL, its own colons and options kept."""
    parsed = parse_cache_url("cache:1MiB,max-age=2.5s:postgresql://u:p@h:5/db?a=1&b=2")
    assert (parsed.max_bytes, parsed.max_age) == (1 << 20, 2.5)
    assert parsed.inner == "postgresql://u:p@h:5/db?a=1&b=2"


@pytest.mark.parametrize(
    "url",
    [
        "cache:",
        "cache:64MiB",
        "cache:64MiB:",
        "cache:0:memory:",
        "cache:12XB:memory:",
        "cache:1MiB,colour=red:memory:",
        "cache:1MiB,max-age=0:memory:",
        "cache:1MiB,max-age=soon:memory:",
        "cache:1MiB:nosuch:",
        "cache:1MiB:memory:?extra=1",
        "shards:memory:",
        "shards:memory:;",
        "shards:;memory:",
        "shards:memory:;shards:memory:;memory:",
        "shards:memory:;memory:elsewhere",
        "shards:memory:;nosuch:x",
        "cache:1MiB:shards:memory:",
    ],
)
def test_bad_composite_urls_are_refused_before_anything_opens(url: str) -> None:
    """check_backend refuses a composite whose syntax, settings or any member is wrong, as
    it does while a node's options are parsed (before a port is bound)."""
    with pytest.raises(BackendURLError):
        check_backend(url)


def test_a_bad_member_refuses_the_whole_list_and_creates_no_file(tmp_path: Path) -> None:
    """A later member's error is found before an earlier member's file is made."""
    first = tmp_path / "first.db"
    with pytest.raises(BackendURLError, match="does not exist"):
        open_backend(f"shards:sqlite:{first};sqlite:{tmp_path / 'no' / 'such' / 'dir.db'}")
    assert not first.exists()


def test_passwords_are_hidden_in_every_member() -> None:
    """Logs show a composite URL with each member's password replaced."""
    url = "shards:postgresql://u:one@h/a;cache:1MiB:postgresql://v:two@h/b?x=1"
    shown = display_url(url)
    assert "one" not in shown and "two" not in shown
    assert shown == "shards:postgresql://u:***@h/a;cache:1MiB:postgresql://v:***@h/b?x=1"
    assert display_url("cache:1MiB:postgresql://u:pw@h/db") == "cache:1MiB:postgresql://u:***@h/db"


# -- interfaces ---------------------------------------------------------------------------------


@implementer_only(IStorageBackend)
class PlainMemory(MemoryBackend):
    """The memory backend declaring none of its optional interfaces (a minimal backend)."""


def provided(backend: Any) -> set[Any]:
    return {interface for interface in OPTIONAL if interface.providedBy(backend)}


def test_a_cache_provides_exactly_its_inner_backends_interfaces() -> None:
    """The cache tier offers what the backend behind it offers, no more."""
    assert provided(open_backend("cache:1MiB:memory:")) == set(OPTIONAL)
    assert provided(CacheTier(PlainMemory(), 1 << 20)) == set()


def test_shards_provide_what_every_member_provides_never_atomic_apply() -> None:
    """Shards offer an optional interface only when all members do, and never IAtomicApply
    (a write over two members would be two transactions)."""
    assert provided(open_backend("shards:memory:;memory:")) == set(OPTIONAL) - {IAtomicApply}
    assert provided(ShardedBackend([MemoryBackend(), PlainMemory()])) == set()


def test_a_node_does_not_cache_a_cache_tier_again(tmp_path: Path) -> None:
    """``cache:SIZE:sqlite:...`` is not wrapped in the node's own record cache a second time."""
    backend = open_backend(f"cache:1MiB:sqlite:{tmp_path / 'a.db'}")
    assert cached_backend(NodeConfig(), backend) is backend
    backend.close()


# -- placement and layout -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_first_segment_lives_in_one_member() -> None:
    """Keys are placed by their first path segment: a document and its children together, so
    a listing under ``/seg/`` is one member's; other segments spread over the members."""
    members = [MemoryBackend() for _ in range(3)]
    shards = ShardedBackend(members)
    segments = [f"s{n}" for n in range(30)]
    for segment in segments:
        for key in (f"/{segment}", f"/{segment}/a", f"/{segment}/b/c"):
            await shards.apply(make_record(key, b"v", 1000))
    for segment in segments:
        home = members[shard_of(f"/{segment}", 3)]
        assert [r.key for r in await home.scan(f"/{segment}/")] == [
            f"/{segment}/a",
            f"/{segment}/b/c",
        ]
        assert await home.get(f"/{segment}") is not None
    for member in members:
        assert await member.scan("/")
    assert [r.key for r in await shards.scan("/", limit=5)] == sorted(
        f"/{s}{tail}" for s in segments for tail in ("", "/a", "/b/c")
    )[:5]
    await shards.close()


def test_placement_is_stable_across_processes() -> None:
    """The hash is BLAKE2b of the segment, not Python's salted hash: these never change."""
    assert [shard_of(key, 3) for key in ("/a", "/b/x", "/config/db", "/é")] == [
        shard_of("/a/zzz", 3),
        shard_of("/b", 3),
        shard_of("/config", 3),
        shard_of("/é/1", 3),
    ]
    assert [shard_of(f"/{n}", 7) for n in range(8)] == [2, 2, 1, 4, 6, 1, 5, 3]


@pytest_twisted.ensureDeferred
async def test_a_reordered_list_is_refused(tmp_path: Path) -> None:
    """The member list is the layout: opened again in another order, every call fails."""
    one, two = (f"sqlite:{tmp_path / name}" for name in ("one.db", "two.db"))
    first = open_backend(f"shards:{one};{two}")
    await first.apply(make_record("/k", b"v", 1000))
    await first.close()
    swapped = open_backend(f"shards:{two};{one}")
    with pytest.raises(BackendError, match="cannot be reordered"):
        await swapped.get("/k")
    await swapped.close()


@pytest_twisted.ensureDeferred
async def test_a_record_written_around_the_composite_is_a_storage_failure() -> None:
    """A member holding a record without its composite seq reports it, not a wrong seq."""
    members = [MemoryBackend(), MemoryBackend()]
    shards = ShardedBackend(members)
    await members[shard_of("/k", 2)].apply(make_record("/k", b"v", 1000))
    with pytest.raises(StorageFailure):
        await shards.get("/k")
    await shards.close()


# -- the cache tier and other writers -----------------------------------------------------------


class IReportedWrites(Interface):
    """Stands for ``IExternalWrites`` (reports other nodes' writes) in these tests."""

    def subscribe_external(callback: Callable[..., None]) -> None:
        """Call ``callback(record)`` for every record another writer stored."""


class SharedMemory(MemoryBackend):
    """A memory backend other writers share: it says so by its kind, and reports their
    writes when it provides :class:`IReportedWrites`."""

    kind = "shared"

    def __init__(self) -> None:
        super().__init__()
        self.callbacks: list[Callable[..., None]] = []

    def subscribe_external(self, callback: Callable[..., None]) -> None:
        self.callbacks.append(callback)

    async def written_elsewhere(self, record: Any) -> None:
        stored = await self.apply(record)
        for callback in self.callbacks:
            callback(stored)


@pytest_twisted.ensureDeferred
async def test_a_cache_follows_writes_reported_by_the_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Over a backend reporting other writers' writes, a cached key is read again after
    another node wrote it: never the stale record."""
    monkeypatch.setattr(interfaces, "IExternalWrites", IReportedWrites, raising=False)
    inner = SharedMemory()
    alsoProvides(inner, IReportedWrites)
    cache = CacheTier(inner, 1 << 20)
    assert cache.follows_external_writes
    await cache.apply(make_record("/k", b"mine", 1000))
    assert cache.peek("/k").value == b"mine"
    await inner.written_elsewhere(make_record("/k", b"theirs", 2000))
    assert (await cache.get("/k")).value == b"theirs"
    assert cache.peek("/k").value == b"theirs"


def test_a_cache_over_a_shared_backend_without_reports_needs_max_age() -> None:
    """A backend others may write, and which reports none of their writes, has no unbounded
    cache: the URL must say how stale a read may be."""
    with pytest.raises(BackendURLError, match="max-age"):
        CacheTier(SharedMemory(), 1 << 20)


@pytest_twisted.ensureDeferred
async def test_max_age_bounds_staleness() -> None:
    """With max-age, another writer's write is served at most max-age seconds late."""
    clock = task.Clock()
    inner = SharedMemory()
    cache = CacheTier(inner, 1 << 20, max_age=2.0, call_later=clock.callLater)
    await cache.apply(make_record("/k", b"mine", 1000))
    await inner.apply(make_record("/k", b"theirs", 2000))
    assert cache.peek("/k").value == b"mine"  # within max-age: the cached record
    clock.advance(2.0)
    assert (await cache.get("/k")).value == b"theirs"
    await cache.close()
    assert not clock.getDelayedCalls()

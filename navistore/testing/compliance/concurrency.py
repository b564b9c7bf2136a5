"""Calls issued at once, without waiting for each other, behave as if made one by one.

Twisted callers rarely wait for one apply before issuing the next, and a backend that batches or
runs writes on a thread must still make each apply (check and write) one atomic step; otherwise
create-only and compare-and-swap writes let two writers both win.
"""

from __future__ import annotations

import random
from typing import Any

import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet.defer import gatherResults

from navistore.interfaces import ABSENT, Expectation, IStorageBackend
from navistore.testing.compliance.support import (
    BackendFixtures,
    _store,
    make_record,
)

__all__ = ["ConcurrencyContract"]


class ConcurrencyContract(BackendFixtures):
    """Concurrent applies on distinct keys all land, on one key keep the greatest stamp, and
    concurrent conditional applies let exactly one win."""

    @pytest_twisted.ensureDeferred
    async def test_concurrent_applies_on_distinct_keys(self, backend: IStorageBackend) -> None:
        """200 applies issued at once on distinct keys all land, with 200 distinct seqs."""
        records = [make_record(f"/many/{n:03d}", str(n).encode()) for n in range(200)]
        pending = [backend.apply(record) for record in records]
        stored: list[Any] = await gatherResults(pending, consumeErrors=True)
        assert all(result is not None for result in stored)
        assert [r.value for r in stored] == [r.value for r in records]
        assert len({r.seq for r in stored}) == 200
        assert await backend.last_seq() == max(r.seq for r in stored)
        assert await backend.scan("/many/", limit=1000) == sorted(stored, key=lambda r: r.key)

    @pytest_twisted.ensureDeferred
    async def test_concurrent_applies_on_one_key_keep_the_greatest(
        self, backend: IStorageBackend
    ) -> None:
        """100 applies issued at once on one key, in shuffled stamp order, leave the record
        with the greatest stamp; it was stored (not refused); the feed holds the key once."""
        records = [make_record("/hot", f"v{n}".encode(), 1000 + n) for n in range(100)]
        shuffled = list(records)
        random.Random(11).shuffle(shuffled)
        pending = [backend.apply(record) for record in shuffled]
        results = await gatherResults(pending, consumeErrors=True)
        winner = records[-1]
        assert results[shuffled.index(winner)] is not None
        stored = [r for r in results if r is not None]
        assert len({r.seq for r in stored}) == len(stored)
        final = await backend.get("/hot")
        assert final is not None
        assert (final.value, final.stamp) == (winner.value, winner.stamp)
        assert await backend.changes(0) == [final]
        assert final.seq == await backend.last_seq()

    @pytest_twisted.ensureDeferred
    async def test_concurrent_creates_exactly_one_wins(self, backend: IStorageBackend) -> None:
        """Of 20 create-only (ABSENT) applies issued at once on one key, exactly one stores:
        the check and the write are one atomic step."""
        records = [make_record("/once", f"v{n}".encode(), 1000 + n) for n in range(20)]
        random.Random(5).shuffle(records)
        results = await gatherResults(
            [backend.apply(record, ABSENT) for record in records], consumeErrors=True
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert await backend.get("/once") == winners[0]

    @pytest_twisted.ensureDeferred
    async def test_concurrent_conditional_updates_exactly_one_wins(
        self, backend: IStorageBackend
    ) -> None:
        """Of 20 applies issued at once that all expect the same stored stamp, exactly one
        stores: the others find the stamp changed (a compare-and-swap)."""
        (base,) = await _store(backend, make_record("/cas", b"base", 1000))
        records = [make_record("/cas", f"v{n}".encode(), 2000 + n) for n in range(20)]
        random.Random(9).shuffle(records)
        expectation: Expectation = base.stamp
        results = await gatherResults(
            [backend.apply(record, expectation) for record in records], consumeErrors=True
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert await backend.get("/cas") == winners[0]

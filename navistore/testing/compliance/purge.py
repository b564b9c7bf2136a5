"""``purge_tombstones``: removing tombstones below a seq, and only those.

Tombstones would otherwise grow without bound; but a purged key is as if never stored, so an
older write is accepted again, which is why the Store purges only what every peer has seen.
"""

from __future__ import annotations

import pytest_twisted  # type: ignore[import-untyped]

from navistore.interfaces import ABSENT, IStorageBackend
from navistore.testing.compliance.support import (
    BackendFixtures,
    _seq,
    _snapshot,
    _store,
    make_record,
    make_tombstone,
)

__all__ = ["PurgeContract"]


class PurgeContract(BackendFixtures):
    """``purge_tombstones(before)`` removes exactly the tombstones with ``seq < before``,
    reports how many, and leaves the purged keys unknown."""

    @pytest_twisted.ensureDeferred
    async def test_purge_removes_only_tombstones_below_seq(self, backend: IStorageBackend) -> None:
        """``purge_tombstones(before)`` removes tombstones with ``seq < before`` (not equal),
        leaves live records alone, and fires with how many it removed."""
        live_a, _, _, live_b, dead_c = await _store(
            backend,
            make_record("/live/a"),
            make_tombstone("/dead/a"),
            make_tombstone("/dead/b"),
            make_record("/live/b"),
            make_tombstone("/dead/c"),
        )
        assert await backend.purge_tombstones(_seq(dead_c)) == 2
        assert await backend.get("/dead/a") is None
        assert await backend.get("/dead/b") is None
        assert await backend.get("/dead/c") == dead_c
        assert await backend.scan("/", include_deleted=True) == [dead_c, live_a, live_b]
        assert await backend.changes(0) == [live_a, live_b, dead_c]

    @pytest_twisted.ensureDeferred
    async def test_purge_with_nothing_to_purge(self, backend: IStorageBackend) -> None:
        """Purging when no tombstone qualifies fires with 0 and changes nothing."""
        await _store(backend, make_record("/a"), make_tombstone("/b"))
        before = await _snapshot(backend)
        assert await backend.purge_tombstones(1) == 0
        assert await _snapshot(backend) == before

    @pytest_twisted.ensureDeferred
    async def test_purged_key_is_as_if_never_stored(self, backend: IStorageBackend) -> None:
        """Once its tombstone is purged, a key is unknown: an older write is stored again.

        This is why the Store purges only tombstones every peer has seen.
        """
        await _store(backend, make_record("/k", b"v", 1000), make_tombstone("/k", 2000))
        assert await backend.purge_tombstones(await backend.last_seq() + 1) == 1
        assert await backend.get("/k") is None
        stored = await backend.apply(make_record("/k", b"old", 1500), ABSENT)
        assert stored is not None

"""Sequence numbers: node-local, starting at 1, strictly increasing, never reused.

Peers remember how far they read a node's feed by seq; a reused seq (after a purge of the newest
tombstone, or a reset) would make them skip records for good, so the counter must outlive the
records that carried it.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted  # type: ignore[import-untyped]

from navistore.interfaces import IStorageBackend
from navistore.testing.compliance.support import (
    BackendFixtures,
    _fired_with,
    _seq,
    _store,
    make_record,
    make_tombstone,
)

__all__ = ["SeqContract"]


class SeqContract(BackendFixtures):
    """Every stored record gets a greater seq than any before it, and ``last_seq`` never goes
    down, not after purging the newest record nor after ``reset``."""

    @pytest_twisted.ensureDeferred
    async def test_seqs_strictly_increase(self, backend: IStorageBackend) -> None:
        """Every stored record (create, replace, tombstone) gets a seq greater than all before,
        and ``last_seq`` is the greatest one assigned."""
        stored = await _store(
            backend,
            make_record("/a", b"", 1),
            make_record("/b", b"", 1),
            make_record("/a", b"", 2),
            make_tombstone("/b", 2),
            make_record("/b", b"", 3),
        )
        seqs: list[Any] = [r.seq for r in stored]
        assert all(isinstance(seq, int) and not isinstance(seq, bool) for seq in seqs)
        assert seqs[0] >= 1
        assert all(a < b for a, b in zip(seqs, seqs[1:]))
        assert await backend.last_seq() == seqs[-1]

    @pytest_twisted.ensureDeferred
    async def test_seq_not_reused_after_purging_the_newest_record(
        self, backend: IStorageBackend
    ) -> None:
        """Purging the tombstone holding the greatest seq does not lower ``last_seq``, and the
        next record gets a greater seq."""
        await _store(backend, make_record("/a"), make_record("/b"))
        newest = await backend.apply(make_tombstone("/b", 2000))
        assert await backend.purge_tombstones(_seq(newest) + 1) == 1
        assert await backend.last_seq() == _seq(newest)
        following = await backend.apply(make_record("/c"))
        assert _seq(following) > _seq(newest)

    @pytest_twisted.ensureDeferred
    async def test_seq_not_reused_after_reset(self, backend: IStorageBackend) -> None:
        """``reset`` keeps the seq counter: ``last_seq`` is unchanged and the next record gets
        a greater seq than any before the reset."""
        stored = await _store(backend, make_record("/a"), make_record("/b"), make_tombstone("/c"))
        assert await _fired_with(backend.reset()) is None
        assert await backend.last_seq() == stored[-1].seq
        following = await backend.apply(make_record("/a", b"after reset"))
        assert _seq(following) > _seq(stored[-1])

"""``changes``: the feed replication reads, in seq order, each key once at its latest seq.

A peer follows the feed by remembering the last seq it read, so the feed must never hold a stale
version of a key and must show a rewritten key again past the reader's position; otherwise a
replica would miss or resurrect versions.
"""

from __future__ import annotations

import pytest
import pytest_twisted  # type: ignore[import-untyped]

from navistore.interfaces import IStorageBackend
from navistore.testing.compliance.support import (
    BackendFixtures,
    _page_through_changes,
    _seq,
    _store,
    make_record,
    make_tombstone,
)

__all__ = ["ChangesContract"]


class ChangesContract(BackendFixtures):
    """``changes(since, limit)`` lists each key's latest record with ``seq > since`` in seq
    order, tombstones included, so that paging by the last seq seen misses nothing."""

    @pytest_twisted.ensureDeferred
    async def test_changes_in_seq_order(self, backend: IStorageBackend) -> None:
        """``changes`` lists records in seq order (the order they were stored), not key order."""
        stored = await _store(
            backend, make_record("/c"), make_record("/a"), make_tombstone("/d"), make_record("/b")
        )
        feed = await backend.changes(0)
        assert feed == stored
        assert [r.seq for r in feed] == sorted(_seq(r) for r in feed)

    @pytest_twisted.ensureDeferred
    async def test_changes_show_a_key_once_at_its_latest_seq(
        self, backend: IStorageBackend
    ) -> None:
        """A key changed several times appears once, as its latest record at its latest seq."""
        await _store(backend, make_record("/a", b"a1", 1), make_record("/b", b"b1", 1))
        await _store(backend, make_record("/a", b"a2", 2), make_record("/c", b"c1", 1))
        latest = await backend.apply(make_record("/a", b"a3", 3))
        feed = await backend.changes(0)
        assert [(r.key, r.value) for r in feed] == [("/b", b"b1"), ("/c", b"c1"), ("/a", b"a3")]
        assert feed[-1] == latest
        assert latest.seq == await backend.last_seq()

    @pytest.mark.parametrize(
        ("position", "expected_keys"),
        [
            pytest.param(None, ["/1", "/2", "/3", "/4", "/5"], id="since-zero"),
            pytest.param(0, ["/2", "/3", "/4", "/5"], id="since-first"),
            pytest.param(2, ["/4", "/5"], id="since-middle"),
            pytest.param(4, [], id="since-last"),
        ],
    )
    @pytest_twisted.ensureDeferred
    async def test_changes_since(
        self, backend: IStorageBackend, position: int | None, expected_keys: list[str]
    ) -> None:
        """``changes(since)`` returns exactly the records with ``seq > since``."""
        stored = await _store(backend, *(make_record(f"/{n}") for n in range(1, 6)))
        since = 0 if position is None else _seq(stored[position])
        assert [r.key for r in await backend.changes(since)] == expected_keys

    @pytest_twisted.ensureDeferred
    async def test_changes_since_beyond_last_seq(self, backend: IStorageBackend) -> None:
        """A ``since`` beyond ``last_seq`` (a reader ahead of a reset node) gets nothing."""
        await _store(backend, make_record("/a"), make_record("/b"))
        assert await backend.changes(await backend.last_seq() + 100) == []

    @pytest_twisted.ensureDeferred
    async def test_changes_limit(self, backend: IStorageBackend) -> None:
        """``limit`` caps the feed at the first ``limit`` changes in seq order."""
        stored = await _store(backend, *(make_record(f"/k{n}") for n in range(10)))
        assert await backend.changes(0, limit=4) == stored[:4]
        assert await backend.changes(_seq(stored[5]), limit=2) == stored[6:8]

    @pytest.mark.parametrize("page_size", [1, 3, 10, 1000])
    @pytest_twisted.ensureDeferred
    async def test_changes_pages_by_last_seq(
        self, backend: IStorageBackend, page_size: int
    ) -> None:
        """Paging with ``since`` = the last seq seen reads every key's latest record exactly
        once, in seq order, tombstones included."""
        for wall in (1, 2, 3):
            for n in range(10):
                key = f"/f/{(n * 7) % 10}"
                if (n + wall) % 4 == 0:
                    await _store(backend, make_tombstone(key, wall))
                else:
                    await _store(backend, make_record(key, f"{key}@{wall}".encode(), wall))
        latest = sorted(await backend.scan("/", include_deleted=True), key=_seq)
        pages = await _page_through_changes(backend, 0, page_size)
        rows = [r for page in pages for r in page]
        assert rows == latest
        assert any(r.deleted for r in rows)
        assert all(len(page) == page_size for page in pages[:-1])

    @pytest_twisted.ensureDeferred
    async def test_changes_rewritten_key_moves_past_a_reader(
        self, backend: IStorageBackend
    ) -> None:
        """A key rewritten after a reader's position shows up again, at its new seq, so a
        reader following the feed by ``since`` never misses its latest version."""
        first = await _store(backend, *(make_record(f"/m/{n}", b"v1", 1) for n in range(4)))
        position = _seq(first[1])
        rewritten = await backend.apply(make_record("/m/0", b"v2", 2))
        assert [(r.key, r.value) for r in await backend.changes(position)] == [
            ("/m/2", b"v1"),
            ("/m/3", b"v1"),
            ("/m/0", b"v2"),
        ]
        assert (await backend.changes(position))[-1] == rewritten

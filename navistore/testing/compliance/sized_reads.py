"""The optional :class:`~navistore.interfaces.ISizedReads`: ``scan`` and ``changes`` (and
``changes_under`` of :class:`~navistore.interfaces.IPrefixChanges`) cut by bytes.

The Store asks every page with ``max_bytes``, and tells a page cut by size from the end of a
listing by its size alone: so a backend must stop exactly *after* the record whose
:func:`~navistore.interfaces.stored_size` brings the page to ``max_bytes`` or more, never
before it (the page would look complete, and the listing would end early) and never further
(the bound would not hold). These tests hold it to that, for values, tombstones (a key alone)
and ``max_bytes`` from 1 to past the whole data set.

For a backend that does not provide it, these tests are reported as skipped with ``not
applicable``: the Store then reads pages by count and cuts them itself.
"""

from __future__ import annotations

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from zope.interface.verify import verifyObject

from navistore.errors import BackendClosed
from navistore.interfaces import IPrefixChanges, ISizedReads, IStorageBackend, stored_size
from navistore.record import Record
from navistore.testing.compliance.support import (
    _EVERYTHING,
    BackendFixtures,
    _failure,
    _store,
    make_record,
    make_tombstone,
)

__all__ = ["SizedReadsContract"]

#: Six records under ``/s/`` of 104 bytes each (a 4-byte key, a 100-byte value) but the
#: fourth, a tombstone (4 bytes), and the sixth, 1,004 bytes; then one elsewhere.
_VALUES = [b"a" * 100, b"b" * 100, b"c" * 100, None, b"e" * 100, b"f" * 1000]

#: max_bytes to try: 1 (one record whatever its size), exactly one and two records, between,
#: exactly at the tombstone, and past everything.
_BUDGETS = [1, 104, 105, 208, 312, 316, 317, 5000]


def _expected(records: list[Record], max_bytes: int | None) -> list[Record]:
    """The head of ``records`` through the first that brings their size to ``max_bytes``."""
    if max_bytes is None:
        return records
    kept: list[Record] = []
    total = 0
    for record in records:
        kept.append(record)
        total += stored_size(record)
        if total >= max_bytes:
            break
    return kept


async def _build(backend: IStorageBackend) -> None:
    for index, value in enumerate(_VALUES):
        key = f"/s/{index}"
        await _store(
            backend,
            make_tombstone(key) if value is None else make_record(key, value),
        )
    await _store(backend, make_record("/t", b"elsewhere"))


class SizedReadsContract(BackendFixtures):
    """``scan``, ``changes`` and ``changes_under`` with ``max_bytes`` fire with the head of
    what they fire with without it, through the record that reaches ``max_bytes``."""

    @pytest.fixture
    def sized(self, backend: IStorageBackend) -> ISizedReads:
        """The backend under test as ISizedReads; skips the test for a backend without it."""
        if not ISizedReads.providedBy(backend):
            kind = getattr(backend, "kind", type(backend).__name__)
            pytest.skip(f"not applicable: {kind} does not provide ISizedReads")
        return ISizedReads(backend)

    @pytest_twisted.ensureDeferred
    async def test_provides_sized_reads_interface(
        self, backend: IStorageBackend, sized: ISizedReads
    ) -> None:
        """A backend declaring ISizedReads has ``scan`` and ``changes`` taking ``max_bytes``."""
        assert verifyObject(ISizedReads, backend)

    @pytest.mark.parametrize("max_bytes", [*_BUDGETS, None])
    @pytest_twisted.ensureDeferred
    async def test_scan_stops_after_the_record_that_fills_the_page(
        self, backend: IStorageBackend, sized: ISizedReads, max_bytes: int | None
    ) -> None:
        """``scan`` with ``max_bytes`` is the head of ``scan`` without it, through the first
        record that brings the page to ``max_bytes`` (a tombstone weighs its key); with
        ``limit`` still a bound too."""
        await _build(backend)
        for deleted in (False, True):
            whole = await backend.scan("/s/", None, _EVERYTHING, deleted)
            page = await sized.scan("/s/", None, _EVERYTHING, deleted, max_bytes)
            assert page == _expected(whole, max_bytes)
            assert await sized.scan("/s/", None, 2, deleted, max_bytes) == page[:2]
            after = await sized.scan("/s/", "/s/1", _EVERYTHING, deleted, max_bytes)
            assert after == _expected(whole[2:], max_bytes)

    @pytest.mark.parametrize("max_bytes", [*_BUDGETS, None])
    @pytest_twisted.ensureDeferred
    async def test_changes_stop_after_the_record_that_fills_the_page(
        self, backend: IStorageBackend, sized: ISizedReads, max_bytes: int | None
    ) -> None:
        """``changes`` with ``max_bytes`` is the head of ``changes`` without it, through the
        first record that brings the page to ``max_bytes``; ``since`` and ``limit`` hold."""
        await _build(backend)
        whole = await backend.changes(0, _EVERYTHING)
        assert await sized.changes(0, _EVERYTHING, max_bytes) == _expected(whole, max_bytes)
        since = whole[1].seq
        assert since is not None
        later = await sized.changes(since, _EVERYTHING, max_bytes)
        assert later == _expected(whole[2:], max_bytes)
        assert await sized.changes(0, 1, max_bytes) == whole[:1]

    @pytest.mark.parametrize("max_bytes", _BUDGETS)
    @pytest_twisted.ensureDeferred
    async def test_changes_under_stop_after_the_record_that_fills_the_page(
        self, backend: IStorageBackend, sized: ISizedReads, max_bytes: int
    ) -> None:
        """A backend providing IPrefixChanges too cuts ``changes_under`` the same way."""
        if not IPrefixChanges.providedBy(backend):
            kind = getattr(backend, "kind", type(backend).__name__)
            pytest.skip(f"not applicable: {kind} does not provide IPrefixChanges")
        await _build(backend)
        whole = await IPrefixChanges(backend).changes_under("/s/", 0, _EVERYTHING)
        page = await IPrefixChanges(backend).changes_under("/s/", 0, _EVERYTHING, max_bytes)
        assert page == _expected(whole, max_bytes)

    @pytest_twisted.ensureDeferred
    async def test_paging_by_bytes_lists_everything_once(
        self, backend: IStorageBackend, sized: ISizedReads
    ) -> None:
        """Reading on after each page's last key (or seq) until a page is not full by size
        lists the whole listing (the whole feed) once."""
        await _build(backend)
        keys: list[Record] = []
        after = None
        while True:
            page = await sized.scan("/", after, _EVERYTHING, True, 200)
            keys += page
            if sum(map(stored_size, page)) < 200:
                break
            after = page[-1].key
        assert keys == await backend.scan("/", None, _EVERYTHING, True)
        feed: list[Record] = []
        since = 0
        while True:
            page = await sized.changes(since, _EVERYTHING, 200)
            feed += page
            if sum(map(stored_size, page)) < 200:
                break
            since = page[-1].seq or since
        assert feed == await backend.changes(0, _EVERYTHING)

    @pytest_twisted.ensureDeferred
    async def test_sized_reads_after_close_fail(
        self, backend: IStorageBackend, sized: ISizedReads
    ) -> None:
        """Once closed, sized reads fail with BackendClosed, as errbacks."""
        await _store(backend, make_record("/a"))
        await backend.close()
        await _failure(lambda: sized.scan("/", None, 10, False, 100), BackendClosed)
        await _failure(lambda: sized.changes(0, 10, 100), BackendClosed)

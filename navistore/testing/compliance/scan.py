"""``scan``: a prefix listing in key (code point) order, with ``after`` and ``limit`` paging.

Prefixes are where backends built on SQL or on sorted maps go wrong (LIKE wildcards, upper bounds
such as ``prefix + "\uffff"`` that miss astral characters, UTF-16 ordering), so the tables below
name each trap; paging is checked for every page size around the data set's size.
"""

from __future__ import annotations

import random

import pytest
import pytest_twisted  # type: ignore[import-untyped]

from navistore.interfaces import IStorageBackend
from navistore.testing.compliance.support import (
    BackendFixtures,
    _page_through_scan,
    _store,
    make_record,
    make_tombstone,
)

__all__ = ["ScanContract"]

#: Keys for the prefix table: neighbours of ``/a`` in code point order, and a key whose
#: character lies above U+FFFF (a bound like ``prefix + "\uffff"`` would miss it).
_PREFIX_KEYS = [
    "/A/b",
    "/a",
    "/a-",
    "/a.b",
    "/a/b",
    "/a/c/d",
    "/a/\U0001f600",
    "/a0",
    "/ab",
    "/abc",
    "/b",
]

_PREFIX_TABLE = [
    pytest.param("/a/", ["/a/b", "/a/c/d", "/a/\U0001f600"], id="document-prefix"),
    pytest.param(
        "/a",
        ["/a", "/a-", "/a.b", "/a/b", "/a/c/d", "/a/\U0001f600", "/a0", "/ab", "/abc"],
        id="string-prefix",
    ),
    pytest.param("/", sorted(_PREFIX_KEYS), id="root-matches-all"),
    pytest.param("/a/c/", ["/a/c/d"], id="nested-document"),
    pytest.param("/a/b", ["/a/b"], id="key-is-its-own-prefix"),
    pytest.param("/ab", ["/ab", "/abc"], id="partial-segment"),
    pytest.param("/A", ["/A/b"], id="case-sensitive"),
    pytest.param("/c", [], id="no-match"),
]

#: Characters that are wildcards in SQL LIKE or GLOB patterns must match only themselves.
_WILDCARD_KEYS = [
    "/g*1",
    "/gh",
    "/p%q",
    "/pq",
    "/pxq",
    "/q?",
    "/qq",
    "/r[a]",
    "/ra",
    "/x_y",
    "/xzy",
]

_WILDCARD_TABLE = [
    pytest.param("/x_", ["/x_y"], id="underscore"),
    pytest.param("/p%", ["/p%q"], id="percent"),
    pytest.param("/g*", ["/g*1"], id="star"),
    pytest.param("/q?", ["/q?"], id="question-mark"),
    pytest.param("/r[", ["/r[a]"], id="bracket"),
]

_PAGE_SIZES = [1, 2, 3, 7, 36, 37, 38, 1000]


class ScanContract(BackendFixtures):
    """``scan`` returns the records under a plain string prefix, in code point order, strictly
    after ``after``, at most ``limit``, tombstones only when asked."""

    @pytest_twisted.ensureDeferred
    async def test_scan_returns_records_in_key_order(self, backend: IStorageBackend) -> None:
        """``scan`` returns the stored records (seq included) in key order, whatever the order
        they were written in."""
        keys = [f"/order/{n:02d}" for n in range(30)]
        shuffled = list(keys)
        random.Random(7).shuffle(shuffled)
        stored = await _store(backend, *(make_record(key, key.encode()) for key in shuffled))
        by_key = {record.key: record for record in stored}
        assert await backend.scan("/order/") == [by_key[key] for key in keys]

    @pytest.mark.parametrize(("prefix", "expected"), _PREFIX_TABLE)
    @pytest_twisted.ensureDeferred
    async def test_scan_prefix_semantics(
        self, backend: IStorageBackend, prefix: str, expected: list[str]
    ) -> None:
        """A prefix is a plain string prefix: ``/a/`` matches ``/a/b`` and ``/a/c/d`` but never
        ``/ab`` or ``/a``; ``/a`` matches ``/a``, ``/ab`` and ``/a/b``; ``/`` matches all."""
        await _store(backend, *(make_record(key) for key in _PREFIX_KEYS))
        assert [r.key for r in await backend.scan(prefix)] == expected

    @pytest.mark.parametrize(("prefix", "expected"), _WILDCARD_TABLE)
    @pytest_twisted.ensureDeferred
    async def test_scan_prefix_characters_are_literal(
        self, backend: IStorageBackend, prefix: str, expected: list[str]
    ) -> None:
        """Characters that are wildcards in LIKE or GLOB patterns match only themselves."""
        await _store(backend, *(make_record(key) for key in _WILDCARD_KEYS))
        assert [r.key for r in await backend.scan(prefix)] == expected

    @pytest_twisted.ensureDeferred
    async def test_scan_limit(self, backend: IStorageBackend) -> None:
        """``limit`` caps the result at the first ``limit`` matching records in key order."""
        await _store(backend, *(make_record(f"/l/{n}") for n in range(10)))
        assert [r.key for r in await backend.scan("/l/", limit=3)] == ["/l/0", "/l/1", "/l/2"]
        assert len(await backend.scan("/l/", limit=10)) == 10
        assert len(await backend.scan("/l/", limit=50)) == 10

    @pytest.mark.parametrize(
        ("after", "expected"),
        [
            pytest.param("/s/b", ["/s/c", "/s/d"], id="stored-key"),
            pytest.param("/s/bb", ["/s/c", "/s/d"], id="key-not-stored"),
            pytest.param("/r", ["/s/a", "/s/b", "/s/c", "/s/d"], id="before-the-prefix"),
            pytest.param("/s/d", [], id="last-key"),
            pytest.param("/t", [], id="beyond-the-prefix"),
        ],
    )
    @pytest_twisted.ensureDeferred
    async def test_scan_after(
        self, backend: IStorageBackend, after: str, expected: list[str]
    ) -> None:
        """``after`` keeps only keys strictly greater than it, still within the prefix; it
        need not be a stored key."""
        await _store(backend, *(make_record(key) for key in ["/r/z", "/s/a", "/s/b", "/s/c"]))
        await _store(backend, make_record("/s/d"), make_record("/t/a"))
        assert [r.key for r in await backend.scan("/s/", after=after)] == expected

    @pytest.mark.parametrize("page_size", _PAGE_SIZES)
    @pytest_twisted.ensureDeferred
    async def test_scan_pages_visit_every_key_once(
        self, backend: IStorageBackend, page_size: int
    ) -> None:
        """Paging with ``after`` = last key and a ``limit`` visits every live key under the
        prefix exactly once, in order, with full pages until the last; tombstones and keys
        outside the prefix interleaved with them do not disturb it."""
        live = [f"/p/{n:03d}" for n in range(37)]
        await _store(backend, *(make_record(key, key.encode()) for key in live))
        await _store(backend, *(make_tombstone(f"/p/{n:03d}x") for n in range(0, 37, 5)))
        await _store(backend, make_record("/o"), make_record("/p"), make_record("/q/000"))
        pages = await _page_through_scan(backend, "/p/", page_size)
        assert [r.key for page in pages for r in page] == live
        assert all(len(page) == page_size for page in pages[:-1])
        assert 0 < len(pages[-1]) <= page_size

    @pytest.mark.parametrize("page_size", [1, 4, 1000])
    @pytest_twisted.ensureDeferred
    async def test_scan_pages_with_tombstones(
        self, backend: IStorageBackend, page_size: int
    ) -> None:
        """Paging with ``include_deleted=True`` visits live records and tombstones once each."""
        keys = [f"/t/{n:02d}" for n in range(12)]
        for n, key in enumerate(keys):
            await _store(backend, make_tombstone(key) if n % 3 == 0 else make_record(key))
        pages = await _page_through_scan(backend, "/t/", page_size, include_deleted=True)
        rows = [r for page in pages for r in page]
        assert [r.key for r in rows] == keys
        assert [r.deleted for r in rows] == [n % 3 == 0 for n in range(12)]

    @pytest_twisted.ensureDeferred
    async def test_scan_orders_keys_by_code_point(self, backend: IStorageBackend) -> None:
        """Keys sort by code point (which is UTF-8 byte order), not by locale or UTF-16: so
        ``/z`` < ``/é`` < ``/\uff21`` (fullwidth A) < ``/😀`` (U+1F600)."""
        expected = ["/Z", "/a", "/z", "/\u00e9", "/\uff21", "/\U0001f600"]
        shuffled = list(expected)
        random.Random(3).shuffle(shuffled)
        await _store(backend, *(make_record(key) for key in shuffled))
        assert [r.key for r in await backend.scan("/")] == expected

    @pytest_twisted.ensureDeferred
    async def test_scan_non_ascii_prefix(self, backend: IStorageBackend) -> None:
        """Prefixes with non-ASCII characters match by code points like any other."""
        keys = ["/\u00e9", "/\u00e9/x", "/\u00e9t\u00e9", "/e", "/\u00ea", "/\U0001f600/a"]
        await _store(backend, *(make_record(key) for key in keys))
        matched = [r.key for r in await backend.scan("/\u00e9")]
        assert matched == ["/\u00e9", "/\u00e9/x", "/\u00e9t\u00e9"]
        assert [r.key for r in await backend.scan("/\U0001f600/")] == ["/\U0001f600/a"]

"""The optional :class:`~navistore.interfaces.IPrefixChanges`: ``changes_under``, the change feed
under one prefix.

The Store answers every prefix-filtered feed (watchers, long-polls, event streams) from
``changes_under`` when a backend provides it, and trusts it to be exactly the whole feed
filtered by prefix: a record missing from it is a change a watcher never sees, a stale or
doubled one is a change it sees twice. So these tests hold ``changes_under(prefix, since,
limit)`` to ``[r for r in changes(since) if r.key.startswith(prefix)][:limit]``, on data built
to catch the usual slips: prefixes that are string prefixes of each other (``/a`` and ``/a/``
and ``/ab``), keys past the Basic Multilingual Plane, rewritten keys, tombstones, purges and
resets, and applies issued but not yet fired.

Its cost (proportional to what it returns, not to the length of the log) is the point of the
interface, but a timing is no contract test: each backend checks it in its own tests by counting
what it reads.

The interface is optional: for a backend that does not provide it, these tests are reported as
skipped with ``not applicable``, like the persistence tests of a RAM-only backend.
"""

from __future__ import annotations

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from zope.interface.verify import verifyObject

from navistore.errors import BackendClosed
from navistore.interfaces import IPrefixChanges, IStorageBackend
from navistore.record import Record
from navistore.testing.compliance.support import (
    _EVERYTHING,
    BackendFixtures,
    _failure,
    _seq,
    _store,
    make_record,
    make_tombstone,
)

__all__ = ["PrefixChangesContract"]

#: The keys of the shared data set: string prefixes of each other, a sibling sorting right after
#: a prefix's bound (``/a0`` after ``/a/``), code points beyond the BMP and the largest one.
_KEYS = (
    "/a",
    "/a/b",
    "/a/b/c",
    "/ab",
    "/a0",
    "/b/x",
    "/b/y",
    "/\u00e9/1",
    "/\U0001f600/1",
    "/a/\U0010ffff",
    "/z",
)

#: (prefix, position, limit): ``position`` indexes the seqs of the data set (None: since 0).
_QUERIES = [
    pytest.param("/a", None, 100, id="a-everything"),
    pytest.param("/a/", None, 100, id="a-slash-not-ab-nor-a0"),
    pytest.param("/a/b", None, 100, id="nested"),
    pytest.param("/a/b/", None, 100, id="deepest"),
    pytest.param("/ab", None, 100, id="sibling"),
    pytest.param("/b/", None, 100, id="other-subtree"),
    pytest.param("/\u00e9/", None, 100, id="latin-1"),
    pytest.param("/\U0001f600", None, 100, id="astral"),
    pytest.param("/a/\U0010ffff", None, 100, id="largest-code-point"),
    pytest.param("/nothing/", None, 100, id="matches-nothing"),
    pytest.param("/c", None, 100, id="between-keys"),
    pytest.param("/a", None, 2, id="limit"),
    pytest.param("/a", None, 1, id="limit-one"),
    pytest.param("/a", 5, 100, id="since-middle"),
    pytest.param("/a", 5, 2, id="since-middle-limit"),
    pytest.param("/b/", 12, 100, id="since-between-its-changes"),
    pytest.param("/a/", -1, 100, id="since-last"),
    pytest.param("/", None, 100, id="root"),
    pytest.param("/", 7, 3, id="root-since-limit"),
]


async def _build(backend: IStorageBackend) -> list[Record]:
    """Store the data set: every key once, then rewrites (which move a key past others), a
    delete, and a delete undone; return the stored records in seq order."""
    stored = await _store(backend, *(make_record(key, key.encode(), 1000) for key in _KEYS))
    stored += await _store(
        backend,
        make_record("/a/b", b"rewritten", 2000),
        make_tombstone("/ab", 2000),
        make_record("/b/x", b"rewritten", 2000),
        make_tombstone("/a/b/c", 2000),
        make_record("/a/b/c", b"back", 3000),
    )
    return stored


async def _filtered(backend: IStorageBackend, prefix: str, since: int, limit: int) -> list[Record]:
    """What ``changes_under`` must fire with: the whole feed after ``since``, filtered."""
    feed = await backend.changes(since, _EVERYTHING)
    return [record for record in feed if record.key.startswith(prefix)][:limit]


class PrefixChangesContract(BackendFixtures):
    """``changes_under(prefix, since, limit)`` fires with exactly the records ``changes``
    after ``since`` lists under ``prefix``, the first ``limit`` of them, in seq order."""

    @pytest.fixture
    def prefix_changes(self, backend: IStorageBackend) -> IPrefixChanges:
        """The backend under test as IPrefixChanges; skips the test for a backend without it."""
        if not IPrefixChanges.providedBy(backend):
            kind = getattr(backend, "kind", type(backend).__name__)
            pytest.skip(f"not applicable: {kind} does not provide IPrefixChanges")
        return IPrefixChanges(backend)

    @pytest_twisted.ensureDeferred
    async def test_provides_prefix_changes_interface(
        self, backend: IStorageBackend, prefix_changes: IPrefixChanges
    ) -> None:
        """A backend declaring IPrefixChanges has ``changes_under`` with the declared
        signature."""
        assert verifyObject(IPrefixChanges, backend)

    @pytest.mark.parametrize(("prefix", "position", "limit"), _QUERIES)
    @pytest_twisted.ensureDeferred
    async def test_changes_under_is_the_feed_filtered_by_prefix(
        self,
        backend: IStorageBackend,
        prefix_changes: IPrefixChanges,
        prefix: str,
        position: int | None,
        limit: int,
    ) -> None:
        """``changes_under`` lists exactly the changes after ``since`` whose key starts with
        the prefix (a string prefix: ``/a`` covers ``/ab``, ``/a/`` does not), in seq order,
        each key once at its latest seq, tombstones included, at most ``limit``."""
        stored = await _build(backend)
        since = 0 if position is None else _seq(stored[position])
        expected = await _filtered(backend, prefix, since, limit)
        assert await prefix_changes.changes_under(prefix, since, limit) == expected
        if prefix == "/a/" and position is None:
            assert [r.key for r in expected] == ["/a/\U0010ffff", "/a/b", "/a/b/c"]
            assert expected[-1].value == b"back"

    @pytest.mark.parametrize("page_size", [1, 2, 5])
    @pytest_twisted.ensureDeferred
    async def test_changes_under_pages_by_last_seq(
        self, backend: IStorageBackend, prefix_changes: IPrefixChanges, page_size: int
    ) -> None:
        """Paging with ``since`` = the last seq seen lists every change under the prefix once,
        in seq order, and ends with an empty page."""
        await _build(backend)
        pages: list[list[Record]] = []
        since = 0
        while page := await prefix_changes.changes_under("/a", since, page_size):
            assert len(page) <= page_size
            pages.append(page)
            since = _seq(page[-1])
            assert len(pages) < 100, "paging by the last seq does not end"
        assert [r for page in pages for r in page] == await _filtered(backend, "/a", 0, 100)

    @pytest_twisted.ensureDeferred
    async def test_changes_under_skip_purged_tombstones_and_reset_records(
        self, backend: IStorageBackend, prefix_changes: IPrefixChanges
    ) -> None:
        """Purged tombstones leave the prefix's feed, as they leave the whole feed; after a
        reset only records stored since appear."""
        await _build(backend)
        purged = await backend.purge_tombstones(await backend.last_seq() + 1)
        assert purged == 1  # /ab
        assert await prefix_changes.changes_under("/ab", 0, 100) == []
        assert await prefix_changes.changes_under("/a", 0, 100) == await _filtered(
            backend, "/a", 0, 100
        )
        await backend.reset()
        assert await prefix_changes.changes_under("/a", 0, 100) == []
        (again,) = await _store(backend, make_record("/a/b", b"after reset", 5000))
        assert await prefix_changes.changes_under("/a", 0, 100) == [again]

    @pytest_twisted.ensureDeferred
    async def test_changes_under_sees_the_applies_issued_before_it(
        self, backend: IStorageBackend, prefix_changes: IPrefixChanges
    ) -> None:
        """``changes_under`` issued right after applies (before their Deferreds fired) lists
        them, as ``changes`` would: a watcher reading after a write never misses it."""
        await _store(backend, make_record("/w/0"))
        pending = [backend.apply(make_record(f"/w/{n}", wall_ms=2000)) for n in range(1, 4)]
        pending.append(backend.apply(make_record("/elsewhere", wall_ms=2000)))
        listed = prefix_changes.changes_under("/w/", 0, 100)
        stored = [await applied for applied in pending]
        assert [r.key for r in await listed] == ["/w/0", "/w/1", "/w/2", "/w/3"]
        assert (await listed)[1:] == stored[:3]

    @pytest.mark.parametrize("since", [0, 1000])
    @pytest_twisted.ensureDeferred
    async def test_changes_under_of_an_empty_range(
        self, backend: IStorageBackend, prefix_changes: IPrefixChanges, since: int
    ) -> None:
        """A prefix no key starts with, or a ``since`` beyond the newest seq, fires with
        nothing (not an error)."""
        await _build(backend)
        assert await prefix_changes.changes_under("/nothing/", since, 10) == []
        assert await prefix_changes.changes_under("/a", await backend.last_seq() + since, 10) == []

    @pytest_twisted.ensureDeferred
    async def test_changes_under_after_close_fails(
        self, backend: IStorageBackend, prefix_changes: IPrefixChanges
    ) -> None:
        """Once closed, ``changes_under`` fails with BackendClosed, as an errback."""
        await _store(backend, make_record("/a"))
        await backend.close()
        await _failure(lambda: prefix_changes.changes_under("/a", 0, 10), BackendClosed)

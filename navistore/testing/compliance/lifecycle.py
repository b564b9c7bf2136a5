"""The backend's lifetime: ``close``, and what survives closing and reopening the storage.

``close`` must finish pending work before it fires (a node shutting down must not lose
acknowledged writes), and a persistent backend must give back every record, tombstone, meta value
and the seq counter when reopened. The persistence tests use the ``persistence`` fixture, which
skips them for a suite declaring ``persistent = False``.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet.defer import gatherResults

from navistore.errors import BackendClosed
from navistore.interfaces import IStorageBackend
from navistore.testing.compliance.support import (
    _CALLS,
    NODE_A,
    NODE_B,
    BackendFixtures,
    Reopener,
    _failure,
    _fired_with,
    _get_stored,
    _seq,
    _snapshot,
    _store,
    make_record,
    make_tombstone,
)

__all__ = ["LifecycleContract"]


class LifecycleContract(BackendFixtures):
    """``close`` is idempotent, finishes pending applies and refuses later calls; a persistent
    backend keeps everything across reopening, ``reset`` and purges included."""

    # -- close -------------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_close_twice_is_harmless(self, backend: IStorageBackend) -> None:
        """Closing fires with None, and closing again does too."""
        assert await _fired_with(backend.close()) is None
        assert await _fired_with(backend.close()) is None

    @pytest.mark.parametrize(("method", "arguments"), _CALLS)
    @pytest_twisted.ensureDeferred
    async def test_call_after_close_fails(
        self, backend: IStorageBackend, method: str, arguments: tuple[Any, ...]
    ) -> None:
        """Every call but ``close`` fails with BackendClosed (as an errback) once closed."""
        await backend.close()
        await _failure(lambda: getattr(backend, method)(*arguments), BackendClosed)

    @pytest_twisted.ensureDeferred
    async def test_close_finishes_pending_applies(self, backend: IStorageBackend) -> None:
        """Applies issued before ``close`` complete and are stored; close waits for them."""
        records = [make_record(f"/pending/{n:02d}", b"v") for n in range(20)]
        pending = [backend.apply(record) for record in records]
        closing = backend.close()
        stored: list[Any] = await gatherResults(pending, consumeErrors=True)
        await closing
        assert [r.key for r in stored] == [r.key for r in records]
        assert all(r.seq is not None for r in stored)

    # -- persistence -------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_records_survive_reopen(
        self, backend: IStorageBackend, persistence: Reopener
    ) -> None:
        """Every record, with its value, content type, stamp and seq, survives closing and
        reopening the storage; scan and changes read the same."""
        await _store(
            backend,
            make_record("/a", bytes(range(256)), content_type="text/plain; charset=utf-8"),
            make_record("/\u00e9/\U0001f600", b"emoji", 1, counter=3, node_id=NODE_B),
            make_record("/b", b"", 7),
            make_record("/a", b"second", 2000),
            attrs.evolve(make_record("/relayed", b"r", 3), chain=(NODE_B, NODE_A)),
        )
        records, feed, last = await _snapshot(backend)
        reopened = await persistence.reopen(backend)
        assert await _snapshot(reopened) == (records, feed, last)
        assert (await _get_stored(reopened, "/a")).value == b"second"

    @pytest_twisted.ensureDeferred
    async def test_tombstones_survive_reopen(
        self, backend: IStorageBackend, persistence: Reopener
    ) -> None:
        """Tombstones survive reopening and still beat older writes afterwards."""
        await _store(backend, make_record("/k", b"v", 1000), make_tombstone("/k", 2000))
        tombstone = await backend.get("/k")
        reopened = await persistence.reopen(backend)
        assert await reopened.get("/k") == tombstone
        assert await reopened.changes(0) == [tombstone]
        assert await reopened.apply(make_record("/k", b"late", 1500)) is None

    @pytest_twisted.ensureDeferred
    async def test_meta_survives_reopen(
        self, backend: IStorageBackend, persistence: Reopener
    ) -> None:
        """Meta data survives closing and reopening; a missing name stays missing."""
        await backend.set_meta("node_id", "0123456789abcdef")
        await backend.set_meta("peers", "http://a:1")
        await backend.set_meta("peers", "http://b:2")
        reopened = await persistence.reopen(backend)
        assert await reopened.get_meta("node_id") == "0123456789abcdef"
        assert await reopened.get_meta("peers") == "http://b:2"
        assert await reopened.get_meta("never-set") is None

    @pytest.mark.parametrize("before_reopen", ["nothing", "purge-newest", "reset"])
    @pytest_twisted.ensureDeferred
    async def test_seq_continues_after_reopen(
        self, backend: IStorageBackend, persistence: Reopener, before_reopen: str
    ) -> None:
        """``last_seq`` survives reopening, and new records get greater seqs, even when the
        record holding the greatest seq was purged or the store reset before closing."""
        await _store(backend, make_record("/a"), make_record("/b"))
        newest = await backend.apply(make_tombstone("/c"))
        if before_reopen == "purge-newest":
            assert await backend.purge_tombstones(_seq(newest) + 1) == 1
        elif before_reopen == "reset":
            await backend.reset()
        reopened = await persistence.reopen(backend)
        assert await reopened.last_seq() == _seq(newest)
        following = await reopened.apply(make_record("/d"))
        assert _seq(following) > _seq(newest)

    @pytest_twisted.ensureDeferred
    async def test_reset_is_durable(self, backend: IStorageBackend, persistence: Reopener) -> None:
        """What ``reset`` removed stays removed after reopening, and meta data stays kept."""
        await backend.set_meta("node_id", "0123456789abcdef")
        await _store(backend, make_record("/a"), make_tombstone("/b"))
        await backend.reset()
        reopened = await persistence.reopen(backend)
        assert await reopened.scan("/", include_deleted=True) == []
        assert await reopened.get_meta("node_id") == "0123456789abcdef"

    @pytest_twisted.ensureDeferred
    async def test_purge_is_durable(self, backend: IStorageBackend, persistence: Reopener) -> None:
        """Purged tombstones stay purged after reopening."""
        await _store(backend, make_tombstone("/gone"), make_record("/kept"))
        assert await backend.purge_tombstones(await backend.last_seq() + 1) == 1
        reopened = await persistence.reopen(backend)
        assert await reopened.get("/gone") is None
        assert [r.key for r in await reopened.scan("/", include_deleted=True)] == ["/kept"]

    @pytest_twisted.ensureDeferred
    async def test_pending_applies_are_durable_after_close(
        self, backend: IStorageBackend, persistence: Reopener
    ) -> None:
        """Applies issued just before ``close`` are on storage once close has fired."""
        records = [make_record(f"/pending/{n:02d}", b"v") for n in range(20)]
        pending = [backend.apply(record) for record in records]
        reopened = await persistence.reopen(backend)
        stored = await gatherResults(pending, consumeErrors=True)
        assert await reopened.scan("/pending/") == stored

    @pytest_twisted.ensureDeferred
    async def test_reopen_twice(self, backend: IStorageBackend, persistence: Reopener) -> None:
        """A reopened backend accepts writes that survive the next reopening too."""
        await _store(backend, make_record("/first"))
        second = await persistence.reopen(backend)
        await _store(second, make_record("/second"))
        third = await persistence.reopen(second)
        assert [r.key for r in await third.scan("/")] == ["/first", "/second"]

"""Deletes are stored as tombstones, which win, replicate and hide from plain scans.

A delete that is merely forgotten would be undone by the next replication of an older write, so a
tombstone is a record like any other in the stamp order and the change feed; only ``scan`` hides
it, unless asked.
"""

from __future__ import annotations

import pytest_twisted  # type: ignore[import-untyped]

from navistore.interfaces import IStorageBackend
from navistore.testing.compliance.support import (
    BackendFixtures,
    _get_stored,
    _seq,
    _snapshot,
    _store,
    make_record,
    make_stamp,
    make_tombstone,
)

__all__ = ["TombstoneContract"]


class TombstoneContract(BackendFixtures):
    """Tombstones are stored, returned by ``get`` and ``changes``, hidden by ``scan`` unless
    ``include_deleted``, and compete by stamp with live records of the same key."""

    @pytest_twisted.ensureDeferred
    async def test_tombstone_is_stored_and_returned_by_get(self, backend: IStorageBackend) -> None:
        """A newer tombstone replaces a live record, gets a seq, and ``get`` returns it with
        ``deleted=True`` and no value."""
        (live,) = await _store(backend, make_record("/k", b"v", 1000))
        stored = await backend.apply(make_tombstone("/k", 2000))
        assert stored is not None
        assert stored == make_tombstone("/k", 2000).with_seq(stored.seq)
        assert _seq(stored) > _seq(live)
        fetched = await backend.get("/k")
        assert fetched is not None
        assert fetched == stored
        assert fetched.deleted is True
        assert fetched.value == b""

    @pytest_twisted.ensureDeferred
    async def test_tombstone_for_unknown_key_is_stored(self, backend: IStorageBackend) -> None:
        """A tombstone for a key never stored is kept, so a delete that arrives before the
        write it deletes still beats it."""
        await _store(backend, make_tombstone("/k", 2000))
        assert await backend.apply(make_record("/k", b"late", 1000)) is None
        assert (await _get_stored(backend, "/k")).deleted is True

    @pytest_twisted.ensureDeferred
    async def test_scan_hides_tombstones_unless_asked(self, backend: IStorageBackend) -> None:
        """``scan`` leaves tombstones out, and returns them in key order with
        ``include_deleted=True``."""
        await _store(
            backend,
            make_record("/d/a", b"a"),
            make_tombstone("/d/b"),
            make_record("/d/c", b"c"),
            make_tombstone("/d/d"),
        )
        assert [r.key for r in await backend.scan("/d/")] == ["/d/a", "/d/c"]
        everything = await backend.scan("/d/", include_deleted=True)
        assert [(r.key, r.deleted) for r in everything] == [
            ("/d/a", False),
            ("/d/b", True),
            ("/d/c", False),
            ("/d/d", True),
        ]

    @pytest_twisted.ensureDeferred
    async def test_changes_include_tombstones(self, backend: IStorageBackend) -> None:
        """The change feed carries deletes as tombstones, so they replicate."""
        await _store(backend, make_record("/k", b"v", 1000))
        tombstone = await backend.apply(make_tombstone("/k", 2000))
        assert await backend.changes(0) == [tombstone]

    @pytest_twisted.ensureDeferred
    async def test_newer_write_resurrects_tombstoned_key(self, backend: IStorageBackend) -> None:
        """A write newer than the tombstone brings the key back, visible to get and scan."""
        await _store(backend, make_record("/k", b"v1", 1000), make_tombstone("/k", 2000))
        stored = await backend.apply(make_record("/k", b"v2", 3000))
        assert stored is not None
        assert await backend.get("/k") == stored
        assert await backend.scan("/") == [stored]
        assert await backend.changes(0) == [stored]

    @pytest_twisted.ensureDeferred
    async def test_older_write_does_not_resurrect(self, backend: IStorageBackend) -> None:
        """A write older than the tombstone is ignored: the delete wins."""
        await _store(backend, make_record("/k", b"v1", 1000), make_tombstone("/k", 3000))
        before = await _snapshot(backend)
        assert await backend.apply(make_record("/k", b"v2", 2000)) is None
        assert await _snapshot(backend) == before

    @pytest_twisted.ensureDeferred
    async def test_newer_tombstone_replaces_tombstone(self, backend: IStorageBackend) -> None:
        """Deleting a deleted key again with a newer stamp stores the newer tombstone."""
        await _store(backend, make_tombstone("/k", 1000))
        stored = await backend.apply(make_tombstone("/k", 2000))
        assert stored is not None
        assert (await _get_stored(backend, "/k")).stamp == make_stamp(2000)

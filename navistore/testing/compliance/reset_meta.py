"""``reset`` and meta data, together because each is defined by what the other keeps.

``reset`` wipes the records but keeps meta data (the node's identity, its peers and cursors) and
the seq counter; meta data is a separate namespace that no record operation sees.
"""

from __future__ import annotations

import pytest
import pytest_twisted  # type: ignore[import-untyped]

from navistore.interfaces import ABSENT, IStorageBackend
from navistore.testing.compliance.support import (
    BackendFixtures,
    _fired_with,
    _store,
    make_record,
    make_tombstone,
)

__all__ = ["ResetAndMetaContract"]

_META_VALUES = [
    pytest.param("", id="empty"),
    pytest.param("http://a:1,http://b:2", id="peer-list"),
    pytest.param('{"cursor": 42, "peer": "\u00e9\U0001f600"}', id="json-unicode"),
    pytest.param("line 1\nline 2\n" * 1000, id="long-multiline"),
]


class ResetAndMetaContract(BackendFixtures):
    """``reset`` removes every record and tombstone and forgets their stamps but keeps meta
    data; ``get_meta`` and ``set_meta`` store text apart from records."""

    # -- reset -------------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_reset_removes_records_and_tombstones(self, backend: IStorageBackend) -> None:
        """``reset`` fires with None and removes every record and tombstone: get, scan and
        changes find nothing."""
        await _store(backend, make_record("/a"), make_record("/b/c"), make_tombstone("/d"))
        assert await _fired_with(backend.reset()) is None
        for key in ("/a", "/b/c", "/d"):
            assert await backend.get(key) is None
        assert await backend.scan("/", include_deleted=True) == []
        assert await backend.changes(0) == []

    @pytest_twisted.ensureDeferred
    async def test_reset_keeps_meta(self, backend: IStorageBackend) -> None:
        """``reset`` keeps meta data (the node's identity, peers, cursors)."""
        await backend.set_meta("node_id", "0123456789abcdef")
        await _store(backend, make_record("/a"))
        await backend.reset()
        assert await backend.get_meta("node_id") == "0123456789abcdef"

    @pytest_twisted.ensureDeferred
    async def test_reset_forgets_old_stamps(self, backend: IStorageBackend) -> None:
        """After ``reset`` a key is absent: an older stamp than the removed record is stored
        and ABSENT holds."""
        await _store(backend, make_record("/a", b"old", 5000))
        await backend.reset()
        stored = await backend.apply(make_record("/a", b"new", 1000), ABSENT)
        assert stored is not None
        assert await backend.changes(0) == [stored]

    # -- meta --------------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_get_meta_missing_is_none(self, backend: IStorageBackend) -> None:
        """``get_meta`` of a name never set fires with None."""
        assert await backend.get_meta("never-set") is None

    @pytest.mark.parametrize("value", _META_VALUES)
    @pytest_twisted.ensureDeferred
    async def test_set_meta_then_get(self, backend: IStorageBackend, value: str) -> None:
        """``set_meta`` fires with None and ``get_meta`` returns the text exactly."""
        assert await _fired_with(backend.set_meta("name", value)) is None
        assert await backend.get_meta("name") == value

    @pytest_twisted.ensureDeferred
    async def test_set_meta_overwrites(self, backend: IStorageBackend) -> None:
        """``set_meta`` replaces the previous value of the name, and only of that name."""
        await backend.set_meta("peers", "http://a:1")
        await backend.set_meta("other", "kept")
        await backend.set_meta("peers", "http://b:2")
        assert await backend.get_meta("peers") == "http://b:2"
        assert await backend.get_meta("other") == "kept"

    @pytest_twisted.ensureDeferred
    async def test_meta_is_not_a_record(self, backend: IStorageBackend) -> None:
        """Meta data lives apart from records: it is not listed, not in the feed, not a key."""
        await backend.set_meta("/k", "meta")
        assert await backend.get("/k") is None
        assert await backend.scan("/", include_deleted=True) == []
        assert await backend.changes(0) == []
        await _store(backend, make_record("/k", b"record"))
        assert await backend.get_meta("/k") == "meta"

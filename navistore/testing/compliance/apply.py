"""The core clause of ``apply``: last writer wins by stamp, and a stored record gets a seq.

Replication only converges if every backend agrees on which of two records wins, whatever the
order they arrive in; so each ordering rule of stamps (wall time, counter, node id) has its own
row here, and an equal stamp must be a no-op (idempotence).
"""

from __future__ import annotations

import pytest
import pytest_twisted  # type: ignore[import-untyped]

from navistore.clock import Stamp
from navistore.interfaces import IStorageBackend
from navistore.record import DEFAULT_CONTENT_TYPE, Record
from navistore.testing.compliance.support import (
    NODE_A,
    NODE_B,
    BackendFixtures,
    _get_stored,
    _seq,
    _snapshot,
    _store,
    make_record,
    make_stamp,
)

__all__ = ["ApplyContract"]

#: Stamps newer than make_stamp(1000, 5, NODE_B), one per ordering rule.
_NEWER_STAMPS = [
    pytest.param(make_stamp(1001, 0, NODE_A), id="greater-wall-smaller-counter-and-node"),
    pytest.param(make_stamp(1000, 6, NODE_A), id="same-wall-greater-counter"),
    pytest.param(make_stamp(1000, 5, "00000000000000bc"), id="same-wall-counter-greater-node"),
]

#: Stamps older than make_stamp(1000, 5, NODE_B), one per ordering rule.
_OLDER_STAMPS = [
    pytest.param(
        make_stamp(999, 9, "ffffffffffffffff"), id="smaller-wall-greater-counter-and-node"
    ),
    pytest.param(make_stamp(1000, 4, "ffffffffffffffff"), id="same-wall-smaller-counter"),
    pytest.param(make_stamp(1000, 5, NODE_A), id="same-wall-counter-smaller-node"),
]


class ApplyContract(BackendFixtures):
    """``apply`` stores a new key or a newer stamp with the next seq, and ignores an older or
    equal stamp without changing anything; keys do not compete with each other."""

    @pytest_twisted.ensureDeferred
    async def test_create_returns_the_record_with_seq(self, backend: IStorageBackend) -> None:
        """Storing a new key fires with the record as given plus its ``seq``, starting at 1."""
        record = make_record("/app/db/host", b"db1.example.com", content_type="text/plain")
        stored = await backend.apply(record)
        assert stored == record.with_seq(1)
        assert await backend.last_seq() == 1

    @pytest_twisted.ensureDeferred
    async def test_create_round_trips_every_field(self, backend: IStorageBackend) -> None:
        """``get`` returns exactly what ``apply`` stored: key, value, type, stamp, flag, seq."""
        record = make_record("/app/db/port", b"5432", 1234, counter=7, node_id=NODE_B)
        stored = await backend.apply(record)
        fetched = await backend.get("/app/db/port")
        assert fetched is not None
        assert fetched == stored
        assert fetched.value == b"5432"
        assert fetched.content_type == DEFAULT_CONTENT_TYPE
        assert fetched.stamp == make_stamp(1234, 7, NODE_B)
        assert fetched.deleted is False
        assert isinstance(fetched.seq, int)

    @pytest.mark.parametrize("newer", _NEWER_STAMPS)
    @pytest_twisted.ensureDeferred
    async def test_newer_stamp_replaces(self, backend: IStorageBackend, newer: Stamp) -> None:
        """A record whose stamp is greater (by wall, counter, then node id) replaces the stored
        one and gets a new, greater seq."""
        (old,) = await _store(backend, make_record("/k", b"old", 1000, counter=5, node_id=NODE_B))
        replacement = Record("/k", b"new", "text/plain", newer)
        stored = await backend.apply(replacement)
        assert stored is not None
        assert _seq(stored) > _seq(old)
        assert stored == replacement.with_seq(stored.seq)
        assert await backend.get("/k") == stored
        assert await backend.last_seq() == stored.seq

    @pytest.mark.parametrize("older", _OLDER_STAMPS)
    @pytest_twisted.ensureDeferred
    async def test_older_stamp_is_ignored(self, backend: IStorageBackend, older: Stamp) -> None:
        """A record with a smaller stamp fires with None and changes nothing, not even
        ``last_seq``: last writer wins whatever the order of arrival."""
        await _store(backend, make_record("/k", b"kept", 1000, counter=5, node_id=NODE_B))
        before = await _snapshot(backend)
        assert await backend.apply(Record("/k", b"stale", "text/plain", older)) is None
        assert await _snapshot(backend) == before
        assert (await _get_stored(backend, "/k")).value == b"kept"

    @pytest_twisted.ensureDeferred
    async def test_equal_stamp_is_idempotent(self, backend: IStorageBackend) -> None:
        """Applying the stored record again fires with None and changes nothing."""
        record = make_record("/k", b"once", 2000)
        await _store(backend, record)
        before = await _snapshot(backend)
        assert await backend.apply(record) is None
        assert await _snapshot(backend) == before

    @pytest_twisted.ensureDeferred
    async def test_equal_stamp_with_other_value_is_ignored(self, backend: IStorageBackend) -> None:
        """A different value under an equal stamp does not win: the stamp is the version."""
        await _store(backend, make_record("/k", b"first", 2000))
        before = await _snapshot(backend)
        assert await backend.apply(make_record("/k", b"second", 2000)) is None
        assert await _snapshot(backend) == before
        assert (await _get_stored(backend, "/k")).value == b"first"

    @pytest_twisted.ensureDeferred
    async def test_apply_order_does_not_matter(self, backend: IStorageBackend) -> None:
        """Applying the same records in two orders ends in the same winner (commutativity)."""
        versions = [make_record("/k", f"v{wall}".encode(), wall) for wall in (3, 1, 4, 2)]
        for record in versions:
            await backend.apply(record)
        for record in reversed(versions):
            await backend.apply(Record("/other", record.value, record.content_type, record.stamp))
        first, second = await backend.get("/k"), await backend.get("/other")
        assert first is not None and second is not None
        assert first.value == second.value == b"v4"
        assert first.stamp == second.stamp == make_stamp(4)

    @pytest_twisted.ensureDeferred
    async def test_keys_are_independent(self, backend: IStorageBackend) -> None:
        """A stamp only competes with the stored record of the same key."""
        await _store(backend, make_record("/a", b"a", 5000))
        stored = await backend.apply(make_record("/b", b"b", 1))
        assert stored is not None
        assert (await _get_stored(backend, "/a")).value == b"a"
        assert (await _get_stored(backend, "/b")).value == b"b"

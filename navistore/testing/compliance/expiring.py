"""Deadlines and flags: every backend keeps them, and :class:`IExpiringRecords` lists deadlines.

A record written with a TTL carries ``expires_ms`` and Consul's clients' ``flags``; a backend
that lost either would make a key live forever on one node, or change its flags, after a restart.
So every backend stores both with the record, exactly (the deadline and flags round-trip through
``get``, ``scan`` and ``changes``, and a newer record replaces them). The optional
:class:`~navistore.interfaces.IExpiringRecords` then lists the live records that have a deadline,
soonest first, so that the node writes each expiry when it comes; for a backend without it those
tests are reported as skipped with ``not applicable``.
"""

from __future__ import annotations

import attrs
import pytest
import pytest_twisted  # type: ignore[import-untyped]
from zope.interface.verify import verifyObject

from navistore.errors import BackendClosed
from navistore.interfaces import Deadline, IExpiringRecords, IStorageBackend
from navistore.record import MAX_FLAGS, Record
from navistore.testing.compliance.support import (
    BackendFixtures,
    Reopener,
    _store,
    make_record,
    make_tombstone,
)

__all__ = ["ExpiringContract"]


def _expiring(key: str, deadline: int, wall_ms: int = 1000, flags: int = 0) -> Record:
    return attrs.evolve(make_record(key, b"lease", wall_ms), expires_ms=deadline, flags=flags)


def _deadline(record: Record) -> Deadline:
    assert record.expires_ms is not None
    return Deadline(record.key, record.stamp, record.expires_ms)


class ExpiringContract(BackendFixtures):
    """Deadlines and flags are stored with the record; ``expiring`` lists the live deadlines."""

    # -- every backend --------------------------------------------------------------------------

    @pytest.mark.parametrize("flags", [0, 1, 2**63 - 1, 2**63, MAX_FLAGS])
    @pytest_twisted.ensureDeferred
    async def test_deadline_and_flags_round_trip(
        self, backend: IStorageBackend, flags: int
    ) -> None:
        """``expires_ms`` and ``flags`` (all 64 bits) come back from get, scan and changes as
        they were stored."""
        [stored] = await _store(backend, _expiring("/lease", 1_764_633_600_123, flags=flags))
        assert (stored.expires_ms, stored.flags) == (1_764_633_600_123, flags)
        for found in (
            await backend.get("/lease"),
            (await backend.scan("/"))[0],
            (await backend.changes(0))[0],
        ):
            assert found == stored

    @pytest_twisted.ensureDeferred
    async def test_a_newer_record_replaces_deadline_and_flags(
        self, backend: IStorageBackend
    ) -> None:
        """A newer record without a deadline or flags leaves none behind, and an expiry's
        tombstone keeps the deadline it expired at."""
        [first] = await _store(backend, _expiring("/lease", 5000, flags=7))
        await _store(backend, make_record("/lease", b"plain", 2000))
        found = await backend.get("/lease")
        assert found is not None and (found.expires_ms, found.flags) == (None, 0)
        [second] = await _store(backend, _expiring("/lease", 9000, wall_ms=3000))
        expiry = second.expiry()
        await _store(backend, expiry)
        gone = await backend.get("/lease")
        assert gone is not None and gone.deleted and gone.expires_ms == 9000 and gone.is_expiry
        assert first.expires_ms == 5000

    @pytest_twisted.ensureDeferred
    async def test_deadline_and_flags_survive_reopen(
        self, backend: IStorageBackend, persistence: Reopener
    ) -> None:
        """Deadlines and flags are as durable as the rest of the record."""
        [stored] = await _store(backend, _expiring("/lease", 7000, flags=2**64 - 2))
        reopened = await persistence.reopen(backend)
        assert await reopened.get("/lease") == stored

    @pytest_twisted.ensureDeferred
    async def test_an_expiry_replaces_only_the_record_it_expires(
        self, backend: IStorageBackend
    ) -> None:
        """The expiry of a record (its tombstone at the successor of its stamp) beats that
        record, and loses to any later write, such as a refresh of the TTL made elsewhere."""
        [old] = await _store(backend, _expiring("/lease", 5000, wall_ms=1000))
        refresh = _expiring("/lease", 9000, wall_ms=1001)
        await _store(backend, refresh)
        assert await backend.apply(old.expiry()) is None
        found = await backend.get("/lease")
        assert found is not None and not found.deleted and found.expires_ms == 9000

    # -- IExpiringRecords -----------------------------------------------------------------------

    @pytest.fixture
    def expiring(self, backend: IStorageBackend) -> IExpiringRecords:
        """The backend as IExpiringRecords; skips the test for a backend without it."""
        if not IExpiringRecords.providedBy(backend):
            kind = getattr(backend, "kind", type(backend).__name__)
            pytest.skip(f"not applicable: {kind} does not provide IExpiringRecords")
        verifyObject(IExpiringRecords, backend)
        return backend  # type: ignore[return-value]

    @pytest_twisted.ensureDeferred
    async def test_expiring_lists_live_deadlines_soonest_first(
        self, backend: IStorageBackend, expiring: IExpiringRecords
    ) -> None:
        """Only live records with a deadline are listed, by deadline then key, cut at
        ``limit``; a record without a deadline, a tombstone and a replaced deadline are not."""
        records = [
            _expiring("/c", 3000),
            _expiring("/a", 3000),
            _expiring("/b", 1000),
            _expiring("/late", 9000),
            make_record("/forever", b"v"),
            _expiring("/gone", 500),
            _expiring("/moved", 200),
        ]
        await _store(backend, *records)
        await _store(backend, make_tombstone("/gone", 2000))
        [moved] = await _store(backend, _expiring("/moved", 8000, wall_ms=2000))
        stored = {record.key: record for record in await backend.scan("/")}
        order = ["/b", "/a", "/c", "/moved", "/late"]
        assert await expiring.expiring(10) == [_deadline(stored[key]) for key in order]
        assert await expiring.expiring(2) == [_deadline(stored[key]) for key in order[:2]]
        assert moved.expires_ms == 8000

    @pytest_twisted.ensureDeferred
    async def test_expiring_sees_applies_issued_before_it(
        self, backend: IStorageBackend, expiring: IExpiringRecords
    ) -> None:
        """Like every read, ``expiring`` includes the applies issued before it, even those
        still being written."""
        pending = backend.apply(_expiring("/lease", 4000))
        listed = await expiring.expiring(10)
        stored = await pending
        assert listed == [_deadline(stored)]

    @pytest_twisted.ensureDeferred
    async def test_an_expiry_leaves_the_list(
        self, backend: IStorageBackend, expiring: IExpiringRecords
    ) -> None:
        """Once its expiry is stored a record is no longer listed; reset empties the list."""
        [record, other] = await _store(backend, _expiring("/a", 1000), _expiring("/b", 2000))
        await _store(backend, record.expiry())
        assert await expiring.expiring(10) == [_deadline(other)]
        await backend.reset()
        assert await expiring.expiring(10) == []

    @pytest_twisted.ensureDeferred
    async def test_expiring_after_close_fails(
        self, backend: IStorageBackend, expiring: IExpiringRecords
    ) -> None:
        """Like every call, ``expiring`` fails with BackendClosed once the backend is closed."""
        await backend.close()
        with pytest.raises(BackendClosed):
            await expiring.expiring(10)

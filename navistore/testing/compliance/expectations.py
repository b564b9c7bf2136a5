"""The ``expect`` argument of ``apply``: ABSENT (create-only), a stamp (If-Match) or ANY.

Conditional writes are how HTTP clients avoid lost updates, so their subtle cases are checked one
by one: a tombstone counts as absent, a stamp matches only a live record, and an expectation that
holds never lets an older record win.
"""

from __future__ import annotations

import pytest
import pytest_twisted  # type: ignore[import-untyped]

from navistore.clock import Stamp
from navistore.interfaces import ABSENT, ANY, IStorageBackend
from navistore.testing.compliance.support import (
    NODE_B,
    BackendFixtures,
    _snapshot,
    _store,
    make_record,
    make_stamp,
    make_tombstone,
)

__all__ = ["ExpectationContract"]


class ExpectationContract(BackendFixtures):
    """An expectation is checked against the stored record in the same atomic step as the
    stamp comparison, and both must hold for ``apply`` to store."""

    @pytest_twisted.ensureDeferred
    async def test_absent_holds_on_missing_key(self, backend: IStorageBackend) -> None:
        """``expect=ABSENT`` (create-only) stores a record for a key never stored."""
        stored = await backend.apply(make_record("/new", b"v"), ABSENT)
        assert stored is not None
        assert await backend.get("/new") == stored

    @pytest_twisted.ensureDeferred
    async def test_absent_holds_on_tombstone(self, backend: IStorageBackend) -> None:
        """``expect=ABSENT`` stores over a tombstone: a deleted key counts as absent."""
        await _store(backend, make_tombstone("/k", 1000))
        stored = await backend.apply(make_record("/k", b"again", 2000), ABSENT)
        assert stored is not None
        assert await backend.get("/k") == stored
        assert stored.deleted is False

    @pytest_twisted.ensureDeferred
    async def test_absent_fails_on_live_key(self, backend: IStorageBackend) -> None:
        """``expect=ABSENT`` on a live key fires with None and changes nothing, even with a
        newer stamp."""
        await _store(backend, make_record("/k", b"live", 1000))
        before = await _snapshot(backend)
        assert await backend.apply(make_record("/k", b"clobber", 9000), ABSENT) is None
        assert await _snapshot(backend) == before

    @pytest_twisted.ensureDeferred
    async def test_absent_still_needs_a_newer_stamp(self, backend: IStorageBackend) -> None:
        """ABSENT holding is not enough: a record older than the tombstone is still ignored."""
        await _store(backend, make_tombstone("/k", 5000))
        before = await _snapshot(backend)
        assert await backend.apply(make_record("/k", b"old", 4000), ABSENT) is None
        assert await _snapshot(backend) == before

    @pytest_twisted.ensureDeferred
    async def test_stamp_expectation_holds_when_equal(self, backend: IStorageBackend) -> None:
        """``expect=<stamp>`` (If-Match) stores when the live stored record has that stamp."""
        (old,) = await _store(backend, make_record("/k", b"v1", 1000))
        stored = await backend.apply(make_record("/k", b"v2", 2000), old.stamp)
        assert stored is not None
        assert stored.value == b"v2"
        assert await backend.get("/k") == stored

    @pytest.mark.parametrize(
        ("situation", "expected"),
        [
            pytest.param("live", make_stamp(999), id="older-than-stored"),
            pytest.param("live", make_stamp(1001), id="newer-than-stored"),
            pytest.param("live", make_stamp(1000, 0, NODE_B), id="same-time-other-node"),
            pytest.param("missing", make_stamp(1000), id="key-missing"),
            pytest.param("tombstone", make_stamp(1000), id="tombstone-with-that-stamp"),
        ],
    )
    @pytest_twisted.ensureDeferred
    async def test_stamp_expectation_fails(
        self, backend: IStorageBackend, situation: str, expected: Stamp
    ) -> None:
        """``expect=<stamp>`` fires with None and changes nothing unless a *live* record with
        exactly that stamp is stored: not another stamp, not a missing key, not a tombstone."""
        if situation == "live":
            await _store(backend, make_record("/k", b"stored", 1000))
        elif situation == "tombstone":
            await _store(backend, make_tombstone("/k", 1000))
        await _store(backend, make_record("/unrelated", b"x", 1000))
        before = await _snapshot(backend)
        assert await backend.apply(make_record("/k", b"new", 5000), expected) is None
        assert await _snapshot(backend) == before

    @pytest_twisted.ensureDeferred
    async def test_stamp_expectation_still_needs_a_newer_stamp(
        self, backend: IStorageBackend
    ) -> None:
        """A matching stamp expectation is not enough: the record must also be newer."""
        (old,) = await _store(backend, make_record("/k", b"v1", 1000))
        before = await _snapshot(backend)
        assert await backend.apply(make_record("/k", b"v0", 500), old.stamp) is None
        assert await backend.apply(make_record("/k", b"v1b", 1000), old.stamp) is None
        assert await _snapshot(backend) == before

    @pytest.mark.parametrize("situation", ["missing", "live", "tombstone"])
    @pytest_twisted.ensureDeferred
    async def test_any_expectation_is_plain_last_writer_wins(
        self, backend: IStorageBackend, situation: str
    ) -> None:
        """``expect=ANY`` stores a newer record whatever is stored: nothing, a live record or
        a tombstone."""
        if situation == "live":
            await _store(backend, make_record("/k", b"old", 1000))
        elif situation == "tombstone":
            await _store(backend, make_tombstone("/k", 1000))
        stored = await backend.apply(make_record("/k", b"new", 2000), ANY)
        assert stored is not None
        assert await backend.get("/k") == stored

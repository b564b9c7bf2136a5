"""The optional :class:`~navistore.interfaces.IImmediateReads`: ``peek``, a read without waiting.

The web layer answers most GETs through ``peek`` and only falls back to ``get`` on WouldBlock, so
a ``peek`` that answers from before a write the client already sent would serve stale data while
every Deferred-based test passed. These tests hold ``peek`` to what ``get`` fires with, and allow
WouldBlock wherever waiting may be needed, never an older answer.

The interface is optional: for a backend that does not provide it, these tests are reported as
skipped with ``not applicable``, like the persistence tests of a RAM-only backend.
"""

from __future__ import annotations

from collections.abc import Awaitable

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from zope.interface.verify import verifyObject

from navistore.errors import BackendClosed
from navistore.interfaces import IImmediateReads, IStorageBackend, WouldBlock
from navistore.record import Record
from navistore.testing.compliance.support import (
    BackendFixtures,
    _store,
    make_record,
    make_tombstone,
)

__all__ = ["ImmediateReadsContract"]

#: What a key holds when ``peek`` reads it, once the apply that stored it has fired.
_SETTLED = [
    pytest.param(make_record("/k", b"live", 2000), id="live-record"),
    pytest.param(make_tombstone("/k", 2000), id="tombstone"),
]

#: (what is stored, the apply issued just before ``peek``): one row per way an apply changes the
#: answer, and one where the issued apply loses (the record stored before is then the answer).
_ISSUED = [
    pytest.param(None, make_record("/k", b"new", 2000), id="create"),
    pytest.param(make_record("/k", b"old", 1000), make_record("/k", b"new", 2000), id="replace"),
    pytest.param(make_record("/k", b"old", 1000), make_tombstone("/k", 2000), id="delete"),
    pytest.param(make_tombstone("/k", 1000), make_record("/k", b"new", 2000), id="resurrect"),
    pytest.param(
        make_record("/k", b"kept", 2000), make_record("/k", b"stale", 1000), id="older-refused"
    ),
]


class ImmediateReadsContract(BackendFixtures):
    """``peek`` answers at once exactly what ``get`` would fire with, every call issued before
    it included, or raises WouldBlock; it raises BackendClosed once the backend is closed."""

    @pytest.fixture
    def immediate_reads(self, backend: IStorageBackend) -> IImmediateReads:
        """The backend under test as IImmediateReads; skips the test for a backend without it."""
        if not IImmediateReads.providedBy(backend):
            kind = getattr(backend, "kind", type(backend).__name__)
            pytest.skip(f"not applicable: {kind} does not provide IImmediateReads")
        return IImmediateReads(backend)

    @pytest_twisted.ensureDeferred
    async def test_provides_immediate_reads_interface(
        self, backend: IStorageBackend, immediate_reads: IImmediateReads
    ) -> None:
        """A backend declaring IImmediateReads has ``peek`` with the declared signature."""
        assert verifyObject(IImmediateReads, backend)

    @pytest_twisted.ensureDeferred
    async def test_peek_missing_key_is_none(
        self, backend: IStorageBackend, immediate_reads: IImmediateReads
    ) -> None:
        """``peek`` of a key never written returns None at once, as ``get`` fires with, on a
        backend in use (a fresh one may still have to open its storage, which is waiting)."""
        await _store(backend, make_record("/other"))
        assert immediate_reads.peek("/never/written") is None
        assert await backend.get("/never/written") is None

    @pytest.mark.parametrize("record", _SETTLED)
    @pytest_twisted.ensureDeferred
    async def test_peek_returns_what_get_fires_with(
        self, backend: IStorageBackend, immediate_reads: IImmediateReads, record: Record
    ) -> None:
        """Once the apply storing it has fired, ``peek`` returns exactly the record ``get``
        fires with, seq included, for a live record and for a tombstone alike."""
        await _store(backend, make_record("/k", b"first", 1000))
        (stored,) = await _store(backend, record)
        peeked = immediate_reads.peek("/k")
        assert peeked == await backend.get("/k")
        assert peeked == stored

    @pytest.mark.parametrize(("before", "issued"), _ISSUED)
    @pytest_twisted.ensureDeferred
    async def test_peek_never_answers_older_than_an_issued_apply(
        self,
        backend: IStorageBackend,
        immediate_reads: IImmediateReads,
        before: Record | None,
        issued: Record,
    ) -> None:
        """``peek`` right after an apply was issued (before its Deferred fired) either answers
        with the outcome of that apply or raises WouldBlock; it never answers with what was
        stored before. Once the apply has fired, ``peek`` answers."""
        await _store(backend, before if before is not None else make_record("/other"))
        pending = backend.apply(issued)
        try:
            answer: Record | WouldBlock | None = immediate_reads.peek("/k")
        except WouldBlock as blocked:
            answer = blocked
        await pending
        settled = await backend.get("/k")
        if not isinstance(answer, WouldBlock):
            assert answer == settled, "peek answered from before the apply issued ahead of it"
        assert immediate_reads.peek("/k") == settled

    @pytest.mark.parametrize("call", ["reset", "purge_tombstones"])
    @pytest_twisted.ensureDeferred
    async def test_peek_never_answers_from_before_an_issued_removal(
        self, backend: IStorageBackend, immediate_reads: IImmediateReads, call: str
    ) -> None:
        """``peek`` right after a ``reset`` or a ``purge_tombstones`` that removes the key was
        issued returns None or raises WouldBlock, never the removed record."""
        (tombstone,) = await _store(backend, make_tombstone("/k", 1000))
        assert tombstone.seq is not None
        pending: Awaitable[object] = (
            backend.reset() if call == "reset" else backend.purge_tombstones(tombstone.seq + 1)
        )
        try:
            answer: Record | WouldBlock | None = immediate_reads.peek("/k")
        except WouldBlock as blocked:
            answer = blocked
        await pending
        if not isinstance(answer, WouldBlock):
            assert answer is None, f"peek answered {answer!r}, removed by the {call} before it"
        assert immediate_reads.peek("/k") is None

    @pytest_twisted.ensureDeferred
    async def test_peek_after_close_fails(
        self, backend: IStorageBackend, immediate_reads: IImmediateReads
    ) -> None:
        """Once closed, ``peek`` raises BackendClosed (at once: it returns no Deferred)."""
        await _store(backend, make_record("/k"))
        await backend.close()
        with pytest.raises(BackendClosed):
            immediate_reads.peek("/k")

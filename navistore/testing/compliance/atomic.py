"""The optional :class:`~navistore.interfaces.IAtomicApply`: several records, all or nothing.

A transaction over several keys is only as good as this call: if one item does not hold, not
one record may be stored (nor a seq taken), and what holds is decided against every apply issued
before, in the same place in the order as a single apply would be. For a backend without the
interface these tests are reported as skipped with ``not applicable``.
"""

from __future__ import annotations

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from zope.interface.verify import verifyObject

from navistore.errors import BackendClosed, InvalidRecord
from navistore.interfaces import (
    ABSENT,
    ANY,
    AllOrNothing,
    AtomicItem,
    IAtomicApply,
    IStorageBackend,
)
from navistore.record import Record
from navistore.testing.compliance.support import (
    BackendFixtures,
    _failure,
    _snapshot,
    _store,
    make_record,
    make_tombstone,
)

__all__ = ["AtomicApplyContract"]


class AtomicApplyContract(BackendFixtures):
    """``apply_all`` stores every record of its items, or none of them."""

    @pytest.fixture
    def atomic(self, backend: IStorageBackend) -> IAtomicApply:
        """The backend as IAtomicApply; skips the test for a backend without it."""
        if not IAtomicApply.providedBy(backend):
            kind = getattr(backend, "kind", type(backend).__name__)
            pytest.skip(f"not applicable: {kind} does not provide IAtomicApply")
        verifyObject(IAtomicApply, backend)
        return backend

    @pytest_twisted.ensureDeferred
    async def test_every_record_is_stored_in_order_when_every_item_holds(
        self, backend: IStorageBackend, atomic: IAtomicApply
    ) -> None:
        """Checks and writes that all hold: the records are stored with consecutive seqs in
        the order given, and read back like any apply's."""
        [old] = await _store(backend, make_record("/a", b"old", 1000))
        await _store(backend, make_record("/checked", b"c", 1000))
        checked = await backend.get("/checked")
        assert checked is not None
        items: list[AtomicItem] = [
            (make_record("/a", b"new", 2000), old.stamp),
            ("/checked", checked.stamp),
            ("/absent", ABSENT),
            (make_record("/b", b"fresh", 2000), ABSENT),
            (make_tombstone("/gone", 2000), ANY),
        ]
        outcome = await atomic.apply_all(items)
        assert outcome.refused is None
        assert [(record.key, record.seq) for record in outcome.stored] == [
            ("/a", 3),
            ("/b", 4),
            ("/gone", 5),
        ]
        for record in outcome.stored:
            assert await backend.get(record.key) == record
        assert await backend.last_seq() == 5

    @pytest.mark.parametrize("failing", [0, 1, 2, 3])
    @pytest_twisted.ensureDeferred
    async def test_one_item_that_does_not_hold_stores_nothing(
        self, backend: IStorageBackend, atomic: IAtomicApply, failing: int
    ) -> None:
        """Whichever item fails (a stale expectation, a present key expected absent, an older
        stamp, a check), nothing is stored, no seq is taken, and its index is answered."""
        await _store(backend, make_record("/a", b"old", 1000), make_record("/b", b"b", 5000))
        stored_a = await backend.get("/a")
        assert stored_a is not None
        items: list[tuple[Record | str, object]] = [
            (make_record("/a", b"new", 2000), stored_a.stamp),
            (make_record("/c", b"c", 2000), ABSENT),
            (make_record("/d", b"d", 2000), ANY),
            ("/e", ABSENT),
        ]
        spoilers: list[tuple[Record | str, object]] = [
            (make_record("/a", b"new", 2000), make_record("/x", b"", 999).stamp),
            (make_record("/b", b"c", 2000), ABSENT),  # /b exists
            (make_record("/b", b"older", 3000), ANY),  # older than what /b holds
            ("/b", ABSENT),
        ]
        items[failing] = spoilers[failing]
        before = await _snapshot(backend)
        outcome = await atomic.apply_all(items)  # type: ignore[arg-type]
        assert outcome == AllOrNothing((), failing)
        assert await _snapshot(backend) == before
        [after] = await _store(backend, make_record("/z", b"z", 9000))
        assert after.seq == 3  # the refused transaction took no seq

    @pytest_twisted.ensureDeferred
    async def test_it_is_decided_after_the_applies_issued_before_it(
        self, backend: IStorageBackend, atomic: IAtomicApply
    ) -> None:
        """Applies issued just before (and still being written) are what the items are decided
        against, and an apply issued just after is decided against what the items stored."""
        first = backend.apply(make_record("/a", b"first", 1000))
        refused = atomic.apply_all([(make_record("/a", b"second", 2000), ABSENT)])
        taken = atomic.apply_all([(make_record("/a", b"third", 3000), ANY), ("/b", ABSENT)])
        after = backend.apply(make_record("/a", b"older", 2500))
        stored_first: Record | None = await first
        refused_outcome: AllOrNothing = await refused
        taken_outcome: AllOrNothing = await taken
        stored_after: Record | None = await after
        assert stored_first is not None and refused_outcome.refused == 0  # /a existed by then
        assert taken_outcome.refused is None and stored_after is None
        found = await backend.get("/a")
        assert found is not None and found.value == b"third"

    @pytest.mark.parametrize(
        "items",
        [
            pytest.param([(make_record("/a"), ANY), ("/a", ABSENT)], id="key-twice"),
            pytest.param([(make_record("a"), ANY)], id="malformed-record"),
        ],
    )
    @pytest_twisted.ensureDeferred
    async def test_malformed_items_fail_and_store_nothing(
        self, backend: IStorageBackend, atomic: IAtomicApply, items: list[object]
    ) -> None:
        """A key named twice or a malformed record fails with InvalidRecord; nothing stored."""
        await _store(backend, make_record("/other"))
        before = await _snapshot(backend)
        await _failure(lambda: atomic.apply_all(items), InvalidRecord)  # type: ignore[arg-type]
        assert await _snapshot(backend) == before

    @pytest_twisted.ensureDeferred
    async def test_apply_all_after_close_fails(
        self, backend: IStorageBackend, atomic: IAtomicApply
    ) -> None:
        """Like every call, ``apply_all`` fails with BackendClosed once closed."""
        await backend.close()
        with pytest.raises(BackendClosed):
            await atomic.apply_all([(make_record("/a"), ANY)])

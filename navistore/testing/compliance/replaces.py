"""What a writer had seen: every backend keeps a record's ``replaces`` exactly.

``Record.replaces`` (a version vector: per other node, the newest stamp the writer held) is how
a node tells a concurrent write from a later one (:mod:`navistore.conflicts`). A backend that
dropped it would make every later write look concurrent to the peers it reaches after a
restart, and keep false conflict losers; one that reordered or truncated it would do the same
for some keys. So every backend stores it with the record, and it round-trips through ``get``,
``scan``, ``changes`` (and ``apply_all`` where provided), is replaced with the record, lives on
tombstones too, and survives reopening.
"""

from __future__ import annotations

import attrs
import pytest
import pytest_twisted  # type: ignore[import-untyped]

from navistore.clock import Stamp
from navistore.interfaces import ABSENT, IAtomicApply, IStorageBackend
from navistore.record import MAX_REPLACES, Record
from navistore.testing.compliance.support import (
    BackendFixtures,
    Reopener,
    _store,
    make_record,
    make_tombstone,
)

__all__ = ["ReplacesContract"]

#: Stamps of other nodes a writer saw: one, and the most a record holds.
ONE = (Stamp(900, 2, "00000000000000c1"),)
MOST = tuple(Stamp(800 + index, index, f"{index + 1:016x}") for index in range(MAX_REPLACES))


def _seen(record: Record, replaces: tuple[Stamp, ...]) -> Record:
    return attrs.evolve(record, replaces=replaces)


class ReplacesContract(BackendFixtures):
    """``replaces`` is stored with the record, exactly, in every read."""

    @pytest.mark.parametrize("replaces", [(), ONE, MOST], ids=["none", "one", "most"])
    @pytest_twisted.ensureDeferred
    async def test_replaces_round_trip(
        self, backend: IStorageBackend, replaces: tuple[Stamp, ...]
    ) -> None:
        """get, scan and changes give back the stamps as stored, in their order."""
        [stored] = await _store(backend, _seen(make_record("/k", b"v", 1000), replaces))
        assert stored.replaces == replaces
        for found in (
            await backend.get("/k"),
            (await backend.scan("/"))[0],
            (await backend.changes(0))[0],
        ):
            assert found == stored

    @pytest_twisted.ensureDeferred
    async def test_a_newer_record_replaces_them_and_a_tombstone_keeps_its_own(
        self, backend: IStorageBackend
    ) -> None:
        """The stored record's ``replaces`` are its own: a newer record's (none included), and a
        tombstone's."""
        await _store(backend, _seen(make_record("/k", b"v", 1000), MOST))
        [plain] = await _store(backend, make_record("/k", b"w", 2000))
        assert (await backend.get("/k")) == plain and plain.replaces == ()
        [gone] = await _store(backend, _seen(make_tombstone("/k", 3000), ONE))
        found = await backend.get("/k")
        assert found == gone and found is not None and found.deleted and found.replaces == ONE
        assert (await backend.scan("/", include_deleted=True))[0].replaces == ONE

    @pytest_twisted.ensureDeferred
    async def test_apply_all_keeps_replaces(self, backend: IStorageBackend) -> None:
        """Records stored all or nothing carry theirs too (IAtomicApply only)."""
        if not IAtomicApply.providedBy(backend):
            pytest.skip(f"not applicable: {backend.kind} does not provide IAtomicApply")
        record = _seen(make_record("/together", b"v", 1000), ONE)
        outcome = await backend.apply_all([(record, ABSENT)])
        assert [stored.replaces for stored in outcome.stored] == [ONE]
        assert await backend.get("/together") == outcome.stored[0]

    @pytest_twisted.ensureDeferred
    async def test_replaces_survive_reopen(
        self, backend: IStorageBackend, persistence: Reopener
    ) -> None:
        """``replaces`` are as durable as the rest of the record."""
        [stored] = await _store(backend, _seen(make_record("/k", b"v", 1000), MOST))
        reopened = await persistence.reopen(backend)
        assert await reopened.get("/k") == stored

"""Two backends over one PostgreSQL database, as two Navistore nodes sharing it would hold them.

Conditional writes (``If-None-Match: *``, ``If-Match``) from two nodes racing on one key must be
decided by the database, not by either process: exactly one of two racing writes wins, the other
is refused, and the stored record is the winner's. Every round issues both writes before either
answers, each backend on its own connection pool, so the two transactions really overlap.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from twisted.internet.defer import gatherResults

from navistore.backend import open_backend
from navistore.interfaces import ABSENT, Record
from navistore.testing.compliance.support import NODE_A, NODE_B, make_record

pytest_plugins = ["support.postgres"]

#: Rounds of each race: enough that an undecided race would show at least once.
ROUNDS = 40


@pytest_twisted.async_yield_fixture
async def two_backends(postgres_url: str) -> AsyncIterator[tuple[Any, Any]]:
    """Two backends opened on the same URL (two nodes' views of one database)."""
    first = open_backend(postgres_url)
    second = open_backend(postgres_url)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


def _only_winner(outcomes: list[Record | None]) -> Record:
    winners = [outcome for outcome in outcomes if outcome is not None]
    assert len(winners) == 1, outcomes
    return winners[0]


@pytest_twisted.ensureDeferred
async def test_racing_create_only_writes_have_one_winner(two_backends: tuple[Any, Any]) -> None:
    """Both nodes create the same key with If-None-Match: * at once; one is stored."""
    first, second = two_backends
    for round_ in range(ROUNDS):
        key = f"/race/create/{round_}"
        # B's stamp is the greater, so only the expectation can refuse the later one.
        mine = make_record(key, b"from-a", 1000 + round_, node_id=NODE_A)
        theirs = make_record(key, b"from-b", 1000 + round_, node_id=NODE_B)
        outcomes = await gatherResults(
            [first.apply(mine, ABSENT), second.apply(theirs, ABSENT)], consumeErrors=True
        )
        winner = _only_winner(outcomes)
        for backend in (first, second):
            stored = await backend.get(key)
            assert stored is not None and stored.value == winner.value
            assert stored.seq == winner.seq


@pytest_twisted.ensureDeferred
async def test_racing_if_match_writes_have_one_winner(two_backends: tuple[Any, Any]) -> None:
    """Both nodes read the same stamp and replace the record If-Match it; one is stored, and
    the loser's expectation no longer holds once the winner committed."""
    first, second = two_backends
    key = "/race/match"
    current = await first.apply(make_record(key, b"v0", 1000))
    assert current is not None
    seqs = {current.seq}
    for round_ in range(1, ROUNDS + 1):
        seen = await second.get(key)
        assert seen is not None and seen.stamp == current.stamp
        mine = make_record(key, b"a%d" % round_, 1000 + 2 * round_, node_id=NODE_A)
        theirs = make_record(key, b"b%d" % round_, 1000 + 2 * round_, node_id=NODE_B)
        outcomes = await gatherResults(
            [first.apply(mine, seen.stamp), second.apply(theirs, seen.stamp)],
            consumeErrors=True,
        )
        current = _only_winner(outcomes)
        assert current.seq not in seqs
        seqs.add(current.seq)
        stored = await first.get(key)
        assert stored is not None and stored.stamp == current.stamp
    # One feed: every won write took the database's next seq, whichever node made it.
    assert await first.last_seq() == await second.last_seq() == max(seqs)

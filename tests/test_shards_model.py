"""Model check of ``shards:``: its seqs and feeds against a reference, across restarts.

The shared model (tests/test_model.py) expects seqs without gaps, which the composite does not
promise (an apply that loses still used its seq: the seq is handed out before the member
decides). So this state machine keeps its own model: which applies win comes from a memory
backend given the same calls (itself checked against the plain model), and the seqs the
composite answers are held to the contract: each stored record's seq is greater than every
seq before it, ``last_seq`` is the greatest, and ``changes(since=s)`` is exactly the records
after ``s`` in seq order, for every ``s``, before and after the members are closed and opened
again, purged or reset.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest_twisted
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from test_model import KEYS, PREFIXES, model_settings, on_reactor, stamps
from twisted.internet.defer import gatherResults
from twisted.internet.threads import deferToThread

from navistore.backend import open_backend
from navistore.backend.memory import MemoryBackend
from navistore.interfaces import ABSENT, ANY
from navistore.record import Record


def unsequenced(record: Record | None) -> Record | None:
    """The record without its seq: what the reference and the composite must agree on."""
    return None if record is None else record.with_seq(None)


class ShardsAgainstReference(RuleBasedStateMachine):
    """Random applies, purges, resets and restarts of three sqlite shards, beside a memory
    backend that decides which applies win."""

    numbers = itertools.count()

    def __init__(self, directory: Path) -> None:
        super().__init__()
        number = next(self.numbers)
        members = [f"sqlite:{directory / f'model-{number}-{n}.db'}" for n in range(3)]
        self.url = "shards:" + ";".join(members)
        self.backend = on_reactor(open_backend, self.url)
        self.reference = MemoryBackend()
        #: key -> the record as the composite stored it (seq included), tombstones too.
        self.stored: dict[str, Record] = {}
        self.last_seq = 0

    def call(self, method: str, *args: Any) -> Any:
        return on_reactor(getattr(self.backend, method), *args)

    @rule(
        batch=st.lists(
            st.tuples(
                st.sampled_from(KEYS), stamps, st.booleans(), st.sampled_from(["any", "absent"])
            ),
            min_size=1,
            max_size=4,
        )
    )
    def apply_together(self, batch: list[Any]) -> None:
        """Applies issued at once (to several members) store what the reference stores, each
        at a seq greater than any before, in the order issued."""
        records = [
            Record.tombstone(key, stamp) if deleted else Record(key, b"v", "text/plain", stamp)
            for key, stamp, deleted, _ in batch
        ]
        expects = [ANY if kind == "any" else ABSENT for *_, kind in batch]
        wanted = [
            on_reactor(self.reference.apply, record, expect)
            for record, expect in zip(records, expects)
        ]
        answers = on_reactor(
            lambda: gatherResults(
                [self.backend.apply(record, expect) for record, expect in zip(records, expects)]
            )
        )
        for answer, reference in zip(answers, wanted):
            assert unsequenced(answer) == unsequenced(reference)
            if answer is not None:
                assert answer.seq > self.last_seq
                self.last_seq = answer.seq
                self.stored[answer.key] = answer

    @rule(data=st.data())
    def purge(self, data: st.DataObject) -> None:
        """Purging tombstones below a seq removes exactly those."""
        before = data.draw(st.integers(0, self.last_seq + 2), label="before_seq")
        doomed = [r for r in self.stored.values() if r.deleted and r.seq < before]
        assert self.call("purge_tombstones", before) == len(doomed)
        on_reactor(self.reference.purge_tombstones, 10**9)  # the reference keeps no seqs of ours
        for record in self.stored.values():
            if not record.deleted:
                continue
            if record.seq >= before:
                on_reactor(self.reference.apply, record.with_seq(None))
        for record in doomed:
            del self.stored[record.key]

    @precondition(lambda self: self.stored)
    @rule()
    def reset(self) -> None:
        """A reset empties every member and keeps the counter."""
        self.call("reset")
        on_reactor(self.reference.reset)
        self.stored.clear()

    @rule()
    def restart(self) -> None:
        """Closing and opening the members again changes nothing the invariants see."""
        self.call("close")
        self.backend = on_reactor(open_backend, self.url)

    @rule(data=st.data(), limit=st.integers(1, 4), prefix=st.sampled_from(PREFIXES))
    def feed_pages(self, data: st.DataObject, limit: int, prefix: str) -> None:
        """``changes`` and ``changes_under`` after any seq: exactly the later records."""
        since = data.draw(st.integers(0, self.last_seq + 1), label="since")
        ordered = sorted(self.stored.values(), key=lambda record: record.seq)
        later = [record for record in ordered if record.seq > since]
        assert self.call("changes", since, limit) == later[:limit]
        under = [record for record in later if record.key.startswith(prefix)]
        assert self.call("changes_under", prefix, since, limit) == under[:limit]

    @rule(prefix=st.sampled_from(PREFIXES), limit=st.integers(1, 4))
    def scan_page(self, prefix: str, limit: int) -> None:
        """A listing under a prefix merges the members in key order."""
        live = sorted(
            (r for r in self.stored.values() if not r.deleted and r.key.startswith(prefix)),
            key=lambda record: record.key,
        )
        assert self.call("scan", prefix, None, limit) == live[:limit]

    @invariant()
    def matches(self) -> None:
        ordered = sorted(self.stored.values(), key=lambda record: record.seq)
        assert self.call("changes", 0, 1000) == ordered
        assert self.call("last_seq") == self.last_seq
        for key in KEYS:
            assert self.call("get", key) == self.stored.get(key)

    def teardown(self) -> None:
        self.call("close")


@pytest_twisted.ensureDeferred
async def test_shards_feed_matches_the_model_across_restarts(tmp_path: Path) -> None:
    """Over three sqlite shards, seqs strictly increase, ``last_seq`` is the greatest, and
    ``changes(since=s)`` returns exactly the later records for every ``s``, through concurrent
    applies, purges, resets and restarts (the counter continues from what the members hold)."""
    await deferToThread(
        run_state_machine_as_test,
        lambda: ShardsAgainstReference(tmp_path),
        settings=model_settings(max_examples=15, steps=20),
    )

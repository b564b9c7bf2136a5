"""Model check: real backends against a plain-dict model of the IStorageBackend contract.

A Hypothesis state machine applies the same random operations to a backend and to
:class:`Model`, which implements the contract from the docstrings of :mod:`navistore.interfaces`
on its own (it does not call ``expectation_holds`` or ``supersedes``, so a bug there shows up
here), and compares the two after every step.

Backends answer with Deferreds and the sqlite one works in adbapi threads, so the reactor must
run: the state machine runs in a worker thread (``deferToThread``) and reaches the backend with
``blockingCallFromThread``, while pytest-twisted keeps the reactor running in the main thread.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable, Protocol, Union

import pytest
import pytest_twisted
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.threads import blockingCallFromThread, deferToThread

from navistore.clock import Stamp
from navistore.errors import InvalidRecord
from navistore.interfaces import ABSENT, ANY, Expect, IImmediateReads, IStorageBackend, WouldBlock
from navistore.record import DEFAULT_CONTENT_TYPE, Record

# Few keys under a few prefixes, so that operations collide; '/B' sorts before '/a', '/ab' between
# '/a/...' and '/b/...', and '/b/\u00e9' checks that non-ASCII keys sort by code point.
KEYS = ["/a", "/a/x", "/a/y/z", "/ab", "/b/x", "/b/\u00e9", "/B", "/_replication_slaves"]
PREFIXES = ["/", "/a", "/a/", "/a/y/", "/b/", "/_", "/zz"]
META_NAMES = ["peers", "node_id", "cursor:http://peer:8888"]

NODE_IDS = ["00000000000000aa", "00000000000000bb"]
# A small range of stamps, so that equal and older stamps are common.
stamps = st.builds(Stamp, st.integers(0, 4), st.integers(0, 2), st.sampled_from(NODE_IDS))
keys = st.sampled_from(KEYS)
values = st.sampled_from([b"", b"v1", b"v2", b"\x00\xff binary"])
content_types = st.sampled_from([DEFAULT_CONTENT_TYPE, "text/plain", "application/json"])
# How a write is conditioned: no condition, create-only, If-Match on the key's current stamp (a
# tombstone's stamp too, which must not match), or If-Match on a random stamp.
expect_kinds = st.sampled_from(["any", "absent", "current", "random"])

Expectation = Union[Expect, Stamp]


def on_reactor(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """From a worker thread, call ``function`` in the reactor thread and wait for its result,
    waiting for it too if it is a Deferred; a failure is raised here."""
    from twisted.internet import reactor

    return blockingCallFromThread(reactor, function, *args, **kwargs)


def order(stamp: Stamp) -> tuple[int, int, str]:
    """The model's own statement of stamp order: wall time, then counter, then node id."""
    return (stamp.wall_ms, stamp.counter, stamp.node_id)


class Model:
    """The IStorageBackend contract over a dict, written from the interface's docstrings."""

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}
        self.counter = 0
        self.meta: dict[str, str] = {}

    def holds(self, stored: Record | None, expect: Expectation) -> bool:
        """ANY always; ABSENT when there is no record or a tombstone; a stamp when a live
        record carries exactly that stamp."""
        if expect is ANY:
            return True
        if expect is ABSENT:
            return stored is None or stored.deleted
        assert isinstance(expect, Stamp)
        return stored is not None and not stored.deleted and order(stored.stamp) == order(expect)

    def apply(self, record: Record, expect: Expectation) -> Record | None:
        stored = self.records.get(record.key)
        newer = stored is None or order(record.stamp) > order(stored.stamp)
        if not (newer and self.holds(stored, expect)):
            return None
        self.counter += 1
        self.records[record.key] = Record(
            record.key,
            record.value,
            record.content_type,
            record.stamp,
            deleted=record.deleted,
            seq=self.counter,
        )
        return self.records[record.key]

    def purge(self, before_seq: int) -> int:
        doomed = [
            key
            for key, record in self.records.items()
            if record.deleted and record.seq is not None and record.seq < before_seq
        ]
        for key in doomed:
            del self.records[key]
        return len(doomed)

    def reset(self) -> None:
        self.records = {}

    def scan(
        self,
        prefix: str,
        after: str | None = None,
        limit: int = 1000,
        include_deleted: bool = False,
    ) -> list[Record]:
        found = [
            self.records[key]
            for key in sorted(self.records)
            if key.startswith(prefix)
            and (after is None or key > after)
            and (include_deleted or not self.records[key].deleted)
        ]
        return found[:limit]

    def changes(self, since: int = 0, limit: int = 1000) -> list[Record]:
        by_seq = sorted(self.records.values(), key=lambda record: record.seq or 0)
        return [record for record in by_seq if (record.seq or 0) > since][:limit]


class Opener(Protocol):
    """Opens a backend over one example's storage; again over the same storage for reopening."""

    def open(self) -> Any: ...


class MemoryOpener:
    """A new MemoryBackend per example; it cannot be reopened."""

    def open(self) -> Any:
        from navistore.backend.memory import MemoryBackend

        return on_reactor(MemoryBackend)


class SqliteOpener:
    """A fresh database file per example (state machine run) under one directory."""

    numbers = itertools.count()

    def __init__(self, directory: Path) -> None:
        self.path = directory / f"model-{next(self.numbers)}.db"

    def open(self) -> Any:
        from navistore.backend.sqlite import SqliteBackend

        return on_reactor(SqliteBackend, str(self.path))


class CachedOpener:
    """Another opener's backend behind a :class:`RecordCache` so small that it holds two or
    three records: every step mixes hits, misses and evictions."""

    def __init__(self, inner: Opener) -> None:
        self.inner = inner

    def open(self) -> Any:
        from navistore.backend.record_cache import ENTRY_OVERHEAD, RecordCache

        backend = self.inner.open()
        return on_reactor(RecordCache, backend, 3 * ENTRY_OVERHEAD)


def peeked(backend: Any, key: str) -> Any:
    """What an immediate read answers: the record, or ``WouldBlock``."""
    try:
        return backend.peek(key)
    except WouldBlock:
        return WouldBlock


async def snapshot(backend: Any) -> dict[str, Any]:
    """Read everything the invariants compare, in the reactor thread."""
    peeks = {}
    if IImmediateReads.providedBy(backend):
        peeks = {key: peeked(backend, key) for key in KEYS}
    return {
        "peek": peeks,
        "get": {key: await backend.get(key) for key in KEYS},
        "scan": await backend.scan("/"),
        "scan_deleted": await backend.scan("/", include_deleted=True),
        "changes": await backend.changes(0),
        "last_seq": await backend.last_seq(),
        "meta": {name: await backend.get_meta(name) for name in META_NAMES},
    }


class BackendModel(RuleBasedStateMachine):
    """Random operations on a backend and on the model; they must agree after every step."""

    def __init__(self, opener: Opener) -> None:
        super().__init__()
        self.opener = opener
        self.backend = opener.open()
        assert IStorageBackend.providedBy(self.backend)
        self.model = Model()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return on_reactor(getattr(self.backend, method), *args, **kwargs)

    def expectation(self, kind: str, key: str, random_stamp: Stamp) -> Expectation:
        if kind == "any":
            return ANY
        if kind == "absent":
            return ABSENT
        stored = self.model.records.get(key)
        if kind == "current" and stored is not None:
            return stored.stamp
        return random_stamp

    def stamp_for(self, key: str, random_stamp: Stamp, newer: bool) -> Stamp:
        """A random stamp, or (newer) one just above the key's current stamp, so that
        conditional updates can succeed however far the key's stamp has moved."""
        stored = self.model.records.get(key)
        if newer and stored is not None:
            return Stamp(stored.stamp.wall_ms, stored.stamp.counter + 1, stored.stamp.node_id)
        return random_stamp

    def apply_both(self, record: Record, expect: Expectation) -> None:
        result = self.call("apply", record, expect)
        assert result == self.model.apply(record, expect)

    @rule(
        key=keys,
        value=values,
        content_type=content_types,
        stamp=stamps,
        newer=st.booleans(),
        kind=expect_kinds,
        expect_stamp=stamps,
    )
    def apply_live(
        self,
        key: str,
        value: bytes,
        content_type: str,
        stamp: Stamp,
        newer: bool,
        kind: str,
        expect_stamp: Stamp,
    ) -> None:
        record = Record(key, value, content_type, self.stamp_for(key, stamp, newer))
        self.apply_both(record, self.expectation(kind, key, expect_stamp))

    @rule(key=keys, stamp=stamps, newer=st.booleans(), kind=expect_kinds, expect_stamp=stamps)
    def apply_tombstone(
        self, key: str, stamp: Stamp, newer: bool, kind: str, expect_stamp: Stamp
    ) -> None:
        record = Record.tombstone(key, self.stamp_for(key, stamp, newer))
        self.apply_both(record, self.expectation(kind, key, expect_stamp))

    @rule(key=keys)
    def reapply_current(self, key: str) -> None:
        """Applying the stored record again (a replayed replication batch) changes nothing."""
        stored = self.model.records.get(key)
        if stored is not None:
            record = Record(
                stored.key, stored.value, stored.content_type, stored.stamp, stored.deleted
            )
            self.apply_both(record, ANY)

    @rule(
        record=st.sampled_from(
            [
                Record("a/x", b"v", "text/plain", Stamp(9, 0, NODE_IDS[0])),
                Record("/a//x", b"v", "text/plain", Stamp(9, 0, NODE_IDS[0])),
                Record("/a/./x", b"v", "text/plain", Stamp(9, 0, NODE_IDS[0])),
                Record("/a", "text", "text/plain", Stamp(9, 0, NODE_IDS[0])),  # type: ignore[arg-type]
                Record("/a", b"v", "text/plain", "000000000009-000000-00000000000000aa"),  # type: ignore[arg-type]
                Record("/a", b"v", "", Stamp(9, 0, NODE_IDS[0]), deleted=True),
            ]
        )
    )
    def apply_malformed(self, record: Record) -> None:
        """A malformed record fails with InvalidRecord and stores nothing."""
        with pytest.raises(InvalidRecord):
            self.call("apply", record, ANY)

    @rule(data=st.data())
    def pipelined(self, data: st.DataObject) -> None:
        """Applies and reads issued together, without waiting for each other, answer as if they
        ran one at a time in the order issued (a backend may batch them, not reorder them)."""
        calls: list[tuple[str, tuple[Any, ...]]] = []
        expected: list[Any] = []
        for _ in range(data.draw(st.integers(2, 5), label="calls")):
            operation = data.draw(st.sampled_from(["live", "tombstone", "get", "peek", "last_seq"]))
            key = data.draw(keys)
            if operation == "peek" and IImmediateReads.providedBy(self.backend):
                # At once, between the applies issued before and after it: it sees the earlier
                # ones, or says it would have to wait for them.
                calls.append(("peek", (key,)))
                expected.append(self.model.records.get(key))
            elif operation in ("get", "peek"):
                calls.append(("get", (key,)))
                expected.append(self.model.records.get(key))
            elif operation == "last_seq":
                calls.append(("last_seq", ()))
                expected.append(self.model.counter)
            else:
                stamp = self.stamp_for(key, data.draw(stamps), data.draw(st.booleans()))
                if operation == "live":
                    record = Record(key, data.draw(values), data.draw(content_types), stamp)
                else:
                    record = Record.tombstone(key, stamp)
                expect = self.expectation(data.draw(expect_kinds), key, data.draw(stamps))
                calls.append(("apply", (record, expect)))
                expected.append(self.model.apply(record, expect))

        def issue_all() -> Deferred[list[Any]]:
            issued = [
                succeed(peeked(self.backend, *args))
                if method == "peek"
                else getattr(self.backend, method)(*args)
                for method, args in calls
            ]
            return gatherResults(issued, consumeErrors=True)

        answers = on_reactor(issue_all)
        for (method, _), answer, wanted in zip(calls, answers, expected):
            assert answer == wanted or (method == "peek" and answer is WouldBlock)

    @rule(data=st.data())
    def purge_tombstones(self, data: st.DataObject) -> None:
        before_seq = data.draw(st.integers(0, self.model.counter + 1), label="before_seq")
        purged = self.call("purge_tombstones", before_seq)
        assert purged == self.model.purge(before_seq)

    @precondition(lambda self: self.model.records)
    @rule()
    def reset(self) -> None:
        assert self.call("reset") is None
        self.model.reset()

    @rule(name=st.sampled_from(META_NAMES), value=st.sampled_from(["", "x", "http://a:1,b:2"]))
    def set_meta(self, name: str, value: str) -> None:
        assert self.call("set_meta", name, value) is None
        self.model.meta[name] = value

    @precondition(lambda self: self.backend.persistent)
    @rule()
    def reopen(self) -> None:
        """Closing and opening the storage again changes nothing (the invariants check)."""
        self.call("close")
        self.backend = self.opener.open()

    @rule(
        prefix=st.sampled_from(PREFIXES),
        after=st.sampled_from([None, "/", "/a", "/a/", "/a/x", "/ab", "/b/", "/zz"]),
        limit=st.integers(1, 4),
        include_deleted=st.booleans(),
    )
    def scan_page(self, prefix: str, after: str | None, limit: int, include_deleted: bool) -> None:
        """One page of a listing: the keys under a prefix after a key, at most limit of them."""
        page = self.call("scan", prefix, after=after, limit=limit, include_deleted=include_deleted)
        assert page == self.model.scan(prefix, after, limit, include_deleted)

    @rule(data=st.data(), limit=st.integers(1, 4))
    def changes_page(self, data: st.DataObject, limit: int) -> None:
        """One page of the change feed: records changed after a seq, in seq order."""
        since = data.draw(st.integers(0, self.model.counter + 1), label="since")
        page = self.call("changes", since, limit=limit)
        assert page == self.model.changes(since, limit)

    @invariant()
    def backend_matches_model(self) -> None:
        state = on_reactor(lambda: Deferred.fromCoroutine(snapshot(self.backend)))
        model = self.model
        assert state["get"] == {key: model.records.get(key) for key in KEYS}
        for key, record in state["peek"].items():
            assert record is WouldBlock or record == model.records.get(key)
        assert state["scan"] == model.scan("/")
        assert state["scan_deleted"] == model.scan("/", include_deleted=True)
        assert state["changes"] == model.changes(0)
        assert state["last_seq"] == model.counter
        assert state["meta"] == {name: model.meta.get(name) for name in META_NAMES}

    def teardown(self) -> None:
        self.call("close")


def model_settings(max_examples: int, steps: int) -> settings:
    """Settings for one model run: ``max_examples`` is for the ``ci`` profile (100 examples per
    property); other profiles scale it (``dev`` runs ten times as many)."""
    scale = settings().max_examples / 100
    return settings(
        max_examples=max(1, round(max_examples * scale)),
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


@pytest_twisted.ensureDeferred
async def test_memory_backend_matches_the_model() -> None:
    """The memory backend agrees with the model after every step of random applies (live and
    tombstone, under every kind of expectation), purges, resets and meta writes."""
    await deferToThread(
        run_state_machine_as_test,
        lambda: BackendModel(MemoryOpener()),
        settings=model_settings(max_examples=100, steps=40),
    )


@pytest_twisted.ensureDeferred
async def test_sqlite_backend_matches_the_model(tmp_path: Path) -> None:
    """The sqlite backend agrees with the model after every step, reopening the database file
    included: what was committed is what a new connection reads."""
    pytest.importorskip("navistore.backend.sqlite")
    await deferToThread(
        run_state_machine_as_test,
        lambda: BackendModel(SqliteOpener(tmp_path)),
        settings=model_settings(max_examples=50, steps=30),
    )


@pytest_twisted.ensureDeferred
async def test_record_cache_over_memory_matches_the_model() -> None:
    """A record cache that holds two or three records, over the memory backend, agrees with
    the model after every step, its immediate reads in the middle of pipelined applies too."""
    await deferToThread(
        run_state_machine_as_test,
        lambda: BackendModel(CachedOpener(MemoryOpener())),
        settings=model_settings(max_examples=100, steps=40),
    )


@pytest_twisted.ensureDeferred
async def test_record_cache_over_sqlite_matches_the_model(tmp_path: Path) -> None:
    """The same over sqlite, whose applies are written on another thread while the cache and
    the reader answer on the reactor's; reopening included."""
    await deferToThread(
        run_state_machine_as_test,
        lambda: BackendModel(CachedOpener(SqliteOpener(tmp_path))),
        settings=model_settings(max_examples=50, steps=30),
    )

"""The sqlite backend (navistore.backend.sqlite): schema, PRAGMAs, URLs, migrations, group commit,
failure handling, durability across a process kill, and the shipped compliance suite."""

from __future__ import annotations

import os
import random
import sqlite3
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.utils import getProcessOutputAndValue
from zope.interface.verify import verifyObject

from navistore.backend import BackendURLError, open_backend
from navistore.backend import sqlite_schema as sqlite_module
from navistore.backend.memory import MemoryBackend
from navistore.backend.sqlite import SqliteBackend
from navistore.backend.sqlite_schema import scan_sql
from navistore.clock import Stamp
from navistore.errors import BackendClosed, InvalidRecord, StorageFailure
from navistore.interfaces import ABSENT, ANY, Expectation, IStorageBackend, WouldBlock
from navistore.record import Record
from navistore.testing import BackendComplianceTests

NODE = "0123456789abcdef"
REPOSITORY = Path(__file__).resolve().parent.parent


def stamp(wall: int, counter: int = 0) -> Stamp:
    return Stamp(wall, counter, NODE)


def record(key: str, wall: int, value: bytes = b"value") -> Record:
    return Record(key, value, "text/plain", stamp(wall))


@pytest_twisted.async_yield_fixture
async def backend(tmp_path: Path) -> AsyncIterator[SqliteBackend]:
    """A fresh backend on ``store.db`` in the test's directory, closed afterwards."""
    store = SqliteBackend(tmp_path / "store.db")
    yield store
    await store.close()


@pytest_twisted.async_yield_fixture
async def thread_backend(tmp_path: Path) -> AsyncIterator[SqliteBackend]:
    """Like ``backend``, with the writing connection in the pool's thread (``writer=thread``)."""
    store = SqliteBackend(tmp_path / "store.db", writer="thread")
    yield store
    await store.close()


@contextmanager
def raw_connection(path: Path | str) -> Iterator[sqlite3.Connection]:
    """A second connection to the backend's file, for looking at it from outside, closed when
    the ``with`` block ends (a connection's own ``with`` only ends a transaction; unclosed, it
    would stay open until the garbage collector finds it, which on PyPy may be much later)."""
    connection = sqlite3.connect(str(path), isolation_level=None)
    try:
        yield connection
    finally:
        connection.close()


class BatchCounter:
    """Wraps the backend's transactions so that a test can count the ones applies take."""

    def __init__(self, store: SqliteBackend) -> None:
        self.batch_sizes: list[int] = []
        original = store._interact

        def counting(
            operation: str, interaction: Callable[..., Any], *args: Any
        ) -> defer.Deferred[Any]:
            if operation == "apply":
                self.batch_sizes.append(len(args[0]))
            return original(operation, interaction, *args)

        store._interact = counting  # type: ignore[method-assign]


# -- schema, queries and PRAGMAs ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_provides_the_interface(backend: SqliteBackend) -> None:
    """SqliteBackend provides IStorageBackend, says it is persistent, and fills a new file."""
    assert verifyObject(IStorageBackend, backend)
    assert (backend.kind, backend.persistent) == ("sqlite", True)
    assert await backend.last_seq() == 0


QUERIES = {
    "get": (sqlite_module.GET_SQL, ("/a",)),
    "scan": (scan_sql(False, True, False), ("/a/", "/a0", 10)),
    "scan after": (scan_sql(True, True, False), ("/a/b", "/a0", 10)),
    "scan with tombstones": (scan_sql(False, True, True), ("/a/", "/a0", 10)),
    "scan after, unbounded": (scan_sql(True, False, False), ("/a/b", 10)),
    "changes": (sqlite_module.CHANGES_SQL, (5, 10)),
    "purge_tombstones": (sqlite_module.PURGE_SQL, (5,)),
}


@pytest.mark.parametrize("name", sorted(QUERIES))
@pytest_twisted.ensureDeferred
async def test_queries_use_an_index(backend: SqliteBackend, tmp_path: Path, name: str) -> None:
    """Every query the backend runs seeks through an index: no full scan of ``records`` and no
    sorting in a temporary B-tree (ORDER BY is the index order, so pages are cheap)."""
    await backend.apply(record("/a/b", 1))
    sql, params = QUERIES[name]
    with raw_connection(tmp_path / "store.db") as connection:
        plan = [row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    assert plan, name
    assert any("USING INDEX" in detail for detail in plan), plan
    assert not any(detail.startswith("SCAN") or "TEMP B-TREE" in detail for detail in plan), plan


@pytest.mark.parametrize(("synchronous", "level"), [("normal", 1), ("full", 2)])
@pytest_twisted.ensureDeferred
async def test_pragmas(tmp_path: Path, synchronous: str, level: int) -> None:
    """The connection runs in WAL mode with the chosen synchronous level, 4 KB pages, no foreign
    keys and a busy timeout; ``records`` is a rowid table (values stay off overflow pages)."""
    store = SqliteBackend(tmp_path / "store.db", synchronous=synchronous)
    try:
        pool = store._pool
        assert await pool.runQuery("PRAGMA journal_mode") == [("wal",)]
        assert await pool.runQuery("PRAGMA synchronous") == [(level,)]
        assert await pool.runQuery("PRAGMA page_size") == [(4096,)]
        assert await pool.runQuery("PRAGMA foreign_keys") == [(0,)]
        assert (await pool.runQuery("PRAGMA busy_timeout"))[0][0] >= 1000
        [(schema,)] = await pool.runQuery("SELECT sql FROM sqlite_master WHERE name = 'records'")
        assert "WITHOUT ROWID" not in schema.upper()
    finally:
        await store.close()


# -- URLs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "synchronous"),
    [("", "normal"), ("?synchronous=full", "full"), ("?synchronous=FULL", "full")],
)
@pytest_twisted.ensureDeferred
async def test_absolute_url(tmp_path: Path, query: str, synchronous: str) -> None:
    """``sqlite:///abs/path.db`` opens that file; ``synchronous`` is read case-insensitively."""
    store = open_backend(f"sqlite://{tmp_path}/abs.db{query}")
    try:
        assert isinstance(store, SqliteBackend)
        assert (store.path, store.synchronous) == (str(tmp_path / "abs.db"), synchronous)
        assert await store.last_seq() == 0
        assert (tmp_path / "abs.db").exists()
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_relative_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sqlite:rel.db`` is relative to the working directory when opened, even if the process
    changes directory (as a daemon does) before the file is first touched."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    store = open_backend("sqlite:rel.db")
    monkeypatch.chdir(tmp_path / "elsewhere")
    try:
        await store.set_meta("touched", "yes")
        assert (tmp_path / "rel.db").exists()
        assert not (tmp_path / "elsewhere" / "rel.db").exists()
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("sqlite:", "needs a file"),
        ("sqlite://", "needs a file"),
        ("sqlite:x.db?synchronous=off", "synchronous='off'"),
        ("sqlite:x.db?sync=full", "unknown option(s) sync"),
        ("sqlite::memory:", "memory:"),
    ],
)
def test_bad_urls(url: str, complaint: str) -> None:
    """An empty location, an unknown option or a bad synchronous value is a BackendURLError
    that says what is wrong; nothing is opened."""
    with pytest.raises(BackendURLError) as raised:
        open_backend(url)
    assert complaint in str(raised.value)


def test_bad_synchronous_argument(tmp_path: Path) -> None:
    """The constructor refuses a synchronous level it does not know."""
    with pytest.raises(ValueError, match="synchronous"):
        SqliteBackend(tmp_path / "store.db", synchronous="off")


# -- migrations -----------------------------------------------------------------------------


async def make_current_file(path: Path) -> None:
    store = SqliteBackend(path)
    await store.apply(record("/kept", 1))
    await store.close()


def schema_version(path: Path) -> int:
    with raw_connection(path) as connection:
        [(version,)] = connection.execute(
            "SELECT value FROM backend_state WHERE name = 'schema_version'"
        ).fetchall()
    return int(version)


@pytest_twisted.ensureDeferred
async def test_migration_step_runs_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening a version N file with code at version N+1 runs MIGRATIONS[N] and stores N+1;
    opening it again does not run the step again, and the data survives."""
    path = tmp_path / "store.db"
    await make_current_file(path)
    runs: list[int] = []

    def add_note_column(cursor: sqlite3.Cursor) -> None:
        runs.append(1)
        cursor.execute("ALTER TABLE meta ADD COLUMN note TEXT")

    current = sqlite_module.SCHEMA_VERSION
    monkeypatch.setattr(sqlite_module, "SCHEMA_VERSION", current + 1)
    monkeypatch.setitem(sqlite_module.MIGRATIONS, current, add_note_column)
    for _ in range(2):
        store = SqliteBackend(path)
        assert (await store.get("/kept")) is not None
        await store.close()
    assert runs == [1]
    assert schema_version(path) == current + 1
    with raw_connection(path) as connection:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(meta)")]
    assert "note" in columns


@pytest_twisted.ensureDeferred
async def test_failed_migration_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration that fails (or a missing step) is a StorageFailure, and the file keeps its
    old version and schema: the steps run in one transaction."""
    path = tmp_path / "store.db"
    await make_current_file(path)

    def half_done(cursor: sqlite3.Cursor) -> None:
        cursor.execute("CREATE TABLE half (x)")
        raise sqlite3.OperationalError("step failed midway")

    current = sqlite_module.SCHEMA_VERSION
    monkeypatch.setattr(sqlite_module, "SCHEMA_VERSION", current + 1)
    for step, message in [
        (half_done, "step failed midway"),
        (None, f"no migration from schema version {current} to {current + 1}"),
    ]:
        if step is None:
            monkeypatch.delitem(sqlite_module.MIGRATIONS, current, raising=False)
        else:
            monkeypatch.setitem(sqlite_module.MIGRATIONS, current, step)
        store = SqliteBackend(path)
        with pytest.raises(StorageFailure, match=message):
            await store.get("/kept")
        await store.close()
    assert schema_version(path) == current
    with raw_connection(path) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert "half" not in tables


@pytest_twisted.ensureDeferred
async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A file written by a newer schema version is refused with a StorageFailure naming both
    versions, on every call, and is left untouched."""
    path = tmp_path / "store.db"
    await make_current_file(path)
    with raw_connection(path) as connection:
        connection.execute("UPDATE backend_state SET value = 99 WHERE name = 'schema_version'")
    store = SqliteBackend(path)
    try:
        for call in (lambda: store.get("/kept"), lambda: store.apply(record("/new", 2))):
            with pytest.raises(StorageFailure) as raised:
                await call()
            assert "schema version 99" in str(raised.value)
            assert f"up to {sqlite_module.SCHEMA_VERSION}" in str(raised.value)
    finally:
        await store.close()
    assert schema_version(path) == 99


# -- group commit ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_applies_of_one_turn_share_one_transaction(backend: SqliteBackend) -> None:
    """100 applies issued in one reactor turn are written in one transaction and get the
    distinct seqs 1..100 in the order they were issued."""
    await backend.last_seq()  # open the connection first
    counter = BatchCounter(backend)
    stored = await defer.gatherResults(
        [backend.apply(record(f"/k/{index:03}", 1)) for index in range(100)]
    )
    assert counter.batch_sizes == [100]
    assert [item.seq for item in stored] == list(range(1, 101))
    assert await backend.last_seq() == 100


@pytest_twisted.ensureDeferred
async def test_applies_wait_for_the_running_transaction(
    thread_backend: SqliteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With writer=thread, no apply is acknowledged before its transaction committed, and
    applies issued while a transaction runs wait for it and then share the next one."""
    backend = thread_backend
    counter = BatchCounter(backend)
    started, release = threading.Event(), threading.Event()
    real_write_batch = sqlite_module.write_batch

    def slow_write_batch(txn: Any, batch: Any) -> Any:
        started.set()
        release.wait(10)
        return real_write_batch(txn, batch)

    monkeypatch.setattr(sqlite_module, "write_batch", slow_write_batch)
    try:
        first = [backend.apply(record(f"/first/{index}", 1)) for index in range(10)]
        while not started.is_set():
            await task.deferLater(reactor, 0.01)
        second = [backend.apply(record(f"/second/{index}", 1)) for index in range(10)]
        await task.deferLater(reactor, 0.05)
        assert not any(acknowledged.called for acknowledged in first + second)
        assert counter.batch_sizes == [10]
    finally:
        release.set()
    stored = await defer.gatherResults(first + second)
    assert counter.batch_sizes == [10, 10]
    assert [item.seq for item in stored] == list(range(1, 21))


def random_operation(rng: random.Random, stamps: list[Stamp]) -> tuple[Record, Expectation]:
    key = rng.choice(["/a", "/b", "/c"])
    when = stamp(rng.randint(1, 8))
    stamps.append(when)
    new: Record
    if rng.random() < 0.3:
        new = Record.tombstone(key, when)
    else:
        new = Record(key, bytes([rng.randint(0, 255)]), "text/plain", when)
    expect: Expectation = rng.choice([ANY, ANY, ABSENT, rng.choice(stamps)])
    return new, expect


@pytest.mark.parametrize("seed", range(20))
@pytest_twisted.ensureDeferred
async def test_one_batch_behaves_as_sequential_applies(tmp_path: Path, seed: int) -> None:
    """Applies of the same keys in one batch (equal, older and newer stamps, tombstones,
    ABSENT and stamp expectations) give the same results and the same stored state as the
    memory backend applying them one after another."""
    rng = random.Random(seed)
    stamps: list[Stamp] = []
    operations = [random_operation(rng, stamps) for _ in range(30)]
    reference = MemoryBackend()
    expected = [await reference.apply(new, expect) for new, expect in operations]
    store = SqliteBackend(tmp_path / "store.db")
    try:
        await store.last_seq()
        counter = BatchCounter(store)
        results = await defer.gatherResults([store.apply(new, ex) for new, ex in operations])
        assert counter.batch_sizes == [30]
        assert results == expected
        assert await store.scan(include_deleted=True) == await reference.scan(include_deleted=True)
        assert await store.changes() == await reference.changes()
        assert await store.last_seq() == await reference.last_seq()
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_calls_take_effect_in_issue_order(backend: SqliteBackend) -> None:
    """Calls issued without waiting for each other take effect in the order they were issued,
    as with the memory backend: a read sees the applies issued before it, and a reset removes
    what was applied before it but not what was applied after."""
    before = backend.apply(record("/before", 1))
    seen = backend.get("/before")
    cleared = backend.reset()
    after = backend.apply(record("/after", 1))
    listed = backend.scan()
    first = await before
    assert first is not None and first.seq == 1
    assert await seen == first
    await cleared
    assert [item.key for item in await listed] == ["/after"]
    assert (await after).seq == 2


@pytest_twisted.ensureDeferred
async def test_unstorable_record_fails_alone(backend: SqliteBackend) -> None:
    """A record sqlite cannot store (a content type that is not valid Unicode) fails with
    InvalidRecord before it joins a batch, so the other applies of the same turn succeed."""
    good = backend.apply(record("/good", 1))
    bad = backend.apply(Record("/bad", b"x", "text/\udcff", stamp(1)))
    with pytest.raises(InvalidRecord):
        await bad
    assert (await good).seq == 1
    assert await backend.get("/bad") is None


@pytest_twisted.ensureDeferred
async def test_failed_transaction_fails_the_whole_batch(
    backend: SqliteBackend, tmp_path: Path
) -> None:
    """When sqlite fails in the middle of a batch, every apply of the batch fails with a
    StorageFailure carrying sqlite's message, nothing of the batch is stored and no seq is
    used up; once the failure is gone, applies work again."""
    kept = await backend.apply(record("/a", 1))
    with raw_connection(tmp_path / "store.db") as connection:
        connection.execute(
            "CREATE TRIGGER fail_boom BEFORE INSERT ON records WHEN NEW.key = '/boom'"
            " BEGIN SELECT RAISE(ABORT, 'simulated disk failure'); END"
        )
    batch = [backend.apply(record(key, 2)) for key in ("/a", "/b", "/boom", "/c")]
    for applied in batch:
        with pytest.raises(StorageFailure, match="simulated disk failure"):
            await applied
    assert await backend.scan(include_deleted=True) == [kept]
    assert await backend.changes() == [kept]
    assert await backend.last_seq() == 1
    with raw_connection(tmp_path / "store.db") as connection:
        connection.execute("DROP TRIGGER fail_boom")
    assert (await backend.apply(record("/boom", 2))).seq == 2


# -- seqs, closing and durability -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_seq_continues_after_purge_reset_and_reopen(tmp_path: Path) -> None:
    """Purging the newest tombstone, resetting and reopening never let a seq be reused; reset
    keeps meta data."""
    path = tmp_path / "store.db"
    store = SqliteBackend(path)
    await store.apply(record("/a", 1))
    await store.apply(Record.tombstone("/a", stamp(2)))
    assert await store.purge_tombstones(3) == 1
    assert await store.last_seq() == 2
    assert (await store.apply(record("/b", 1))).seq == 3
    await store.set_meta("node_id", NODE)
    await store.close()
    store = SqliteBackend(path)
    try:
        assert await store.last_seq() == 3
        assert (await store.apply(record("/c", 1))).seq == 4
        await store.reset()
        assert await store.scan(include_deleted=True) == []
        assert (await store.apply(record("/d", 1))).seq == 5
        assert await store.get_meta("node_id") == NODE
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_close_finishes_pending_applies(tmp_path: Path) -> None:
    """close() lets applies already issued commit before it fires; afterwards every call fails
    with BackendClosed as an errback, and closing again is harmless."""
    path = tmp_path / "store.db"
    store = SqliteBackend(path)
    pending = [store.apply(record(f"/k{index}", 1)) for index in range(5)]
    await store.close()
    assert all(applied.called for applied in pending)
    assert [(await applied).seq for applied in pending] == [1, 2, 3, 4, 5]
    calls = [
        store.get("/k1"),
        store.apply(record("/x", 1)),
        store.scan(),
        store.changes(),
        store.last_seq(),
        store.purge_tombstones(10),
        store.reset(),
        store.get_meta("a"),
        store.set_meta("a", "b"),
    ]
    for call in calls:
        with pytest.raises(BackendClosed):
            await call
    await store.close()
    reopened = SqliteBackend(path)
    try:
        assert await reopened.last_seq() == 5
    finally:
        await reopened.close()


@pytest_twisted.ensureDeferred
async def test_pool_stopped_by_reactor_shutdown(thread_backend: SqliteBackend) -> None:
    """With writer=thread, once reactor shutdown has stopped the pool (adbapi's own shutdown
    trigger), writes fail with StorageFailure instead of waiting forever, reads are still
    answered by the reactor thread's connection, and close() still fires."""
    backend = thread_backend
    await backend.apply(record("/a", 1))
    # Fire the pool's "during shutdown" trigger by hand, as the reactor would when stopping.
    reactor.removeSystemEventTrigger(backend._pool.shutdownID)
    backend._pool.finalClose()
    with pytest.raises(StorageFailure, match="shut down"):
        await backend.apply(record("/b", 1))
    found = await backend.get("/a")
    assert found is not None and found.key == "/a"
    assert await backend.get("/b") is None
    with pytest.raises(StorageFailure, match="shut down"):
        await backend.set_meta("name", "value")
    await backend.close()


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from twisted.internet import defer, reactor
    from navistore.backend.sqlite import SqliteBackend
    from navistore.clock import Stamp
    from navistore.record import Record

    async def write():
        store = SqliteBackend(sys.argv[1], synchronous=sys.argv[2])
        stored = await defer.gatherResults([
            store.apply(Record(f"/k/{i}", b"v", "text/plain", Stamp(1, 0, "0123456789abcdef")))
            for i in range(50)
        ])
        print(max(item.seq for item in stored), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    reactor.callWhenRunning(lambda: defer.ensureDeferred(write()))
    reactor.run()
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
@pytest.mark.parametrize("synchronous", ["normal", "full"])
@pytest_twisted.ensureDeferred
async def test_acknowledged_applies_survive_sigkill(tmp_path: Path, synchronous: str) -> None:
    """Every apply acknowledged before the process is killed with SIGKILL (no close, no
    checkpoint) is found when the file is opened again."""
    path = tmp_path / "store.db"
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    # Through a shell, which reports how the writer ended instead of dying with it.
    shell = '"$0" -c "$1" "$2" "$3"; echo "exit $?"'
    out, err, _ = await getProcessOutputAndValue(
        "/bin/sh", ["-c", shell, sys.executable, KILLED_WRITER, str(path), synchronous], env=env
    )
    assert out.split() == [b"50", b"exit", b"137"], err
    store = SqliteBackend(path)
    try:
        assert await store.last_seq() == 50
        assert len(await store.scan(limit=100)) == 50
    finally:
        await store.close()


# -- the shipped contract -------------------------------------------------------------------


class TestSqliteCompliance(BackendComplianceTests):
    """The IStorageBackend compliance suite against sqlite with the default synchronous=normal."""

    persistent = True

    @pytest.fixture
    def make_backend(self, tmp_path: Path) -> SqliteBackend:
        return SqliteBackend(tmp_path / "store.db")

    @pytest.fixture
    def reopen_backend(self, tmp_path: Path) -> Callable[[Any], SqliteBackend]:
        return lambda old: SqliteBackend(tmp_path / "store.db")


class TestSqliteFullSyncCompliance(TestSqliteCompliance):
    """The same suite with synchronous=full, whose commits take another code path (fsync)."""

    @pytest.fixture
    def make_backend(self, tmp_path: Path) -> SqliteBackend:
        return SqliteBackend(tmp_path / "store.db", synchronous="full")

    @pytest.fixture
    def reopen_backend(self, tmp_path: Path) -> Callable[[Any], SqliteBackend]:
        return lambda old: SqliteBackend(tmp_path / "store.db", synchronous="full")


@pytest_twisted.ensureDeferred
async def test_version_1_file_migrates_to_chains(tmp_path: Path) -> None:
    """A file made by schema version 1 (no chain column) is upgraded in place when opened: its
    records read back with an empty chain, new records keep theirs, and the version is stored."""
    path = tmp_path / "v1.db"
    with raw_connection(path) as connection:
        connection.execute("CREATE TABLE backend_state (name TEXT PRIMARY KEY, value)")
        for statement in sqlite_module.VERSION_1:
            connection.execute(statement)
        connection.execute(
            "INSERT INTO records (key, seq, stamp, deleted, content_type, value)"
            " VALUES ('/old', 1, ?, 0, 'text/plain', X'6869')",
            (record("/old", 1).stamp.encode(),),
        )
        connection.execute("UPDATE backend_state SET value = 1 WHERE name = 'last_seq'")
    store = SqliteBackend(path)
    try:
        old = await store.get("/old")
        assert old is not None and old.value == b"hi" and old.chain == ()
        relayed = attrs.evolve(record("/new", 2), chain=("00000000000000aa",))
        stored = await store.apply(relayed)
        assert stored is not None and stored.seq == 2
        assert (await store.get("/new")).chain == ("00000000000000aa",)
    finally:
        await store.close()
    assert schema_version(path) == sqlite_module.SCHEMA_VERSION == 4


# -- the feed under a prefix (IPrefixChanges) -------------------------------------------------

#: Each query changes_under runs, and the index its plan must walk (the key index is the primary
#: key's): "covering" ones read that index alone.
PREFIX_QUERIES = {
    "count": ("sqlite_autoindex_records_1", True),
    "keys": ("sqlite_autoindex_records_1", False),
    "tail": ("records_by_seq", False),
    "window": ("records_by_seq", False),
    "window_end": ("records_by_seq", True),
}


@pytest.mark.parametrize("analyzed", [False, True], ids=["plain", "after-analyze"])
@pytest.mark.parametrize("shape", sorted(PREFIX_QUERIES))
@pytest.mark.parametrize("bounded", [True, False], ids=["bounded", "unbounded"])
@pytest_twisted.ensureDeferred
async def test_prefix_queries_walk_the_index_they_are_meant_to(
    backend: SqliteBackend, tmp_path: Path, shape: str, bounded: bool, analyzed: bool
) -> None:
    """Each query of ``changes_under`` walks the index its way of reading needs, never the
    other one and never the whole table, with or without the statistics of ANALYZE: through
    the seq index a narrow prefix would cost the whole log after ``since``, and through the key
    index a walk of the log would cost every key under the prefix. Only ``keys`` sorts (its
    matches, by seq)."""
    await defer.gatherResults(
        [backend.apply(record(f"/{group}/{n:04}", 1)) for group in "abc" for n in range(300)]
    )
    index, covering = PREFIX_QUERIES[shape]
    sql = sqlite_module.changes_under_sql(shape, bounded)
    with raw_connection(tmp_path / "store.db") as connection:
        if analyzed:
            connection.execute("ANALYZE")
        params = (1,) * sql.count("?")
        plan = [row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    searches = [detail for detail in plan if detail.startswith(("SEARCH", "SCAN records"))]
    assert searches, plan
    using = "USING COVERING INDEX" if covering else "USING INDEX"
    assert all(f"{using} {index} " in detail for detail in searches), plan
    assert ("TEMP B-TREE" in " ".join(plan)) == (shape == "keys"), plan


@pytest_twisted.ensureDeferred
async def test_changes_under_through_the_pool(thread_backend: SqliteBackend) -> None:
    """With writer=thread, ``changes_under`` issued while applies are in flight goes through
    the pool, behind them, and lists them; once they are written it answers on the reactor
    thread's reader alike."""
    backend = thread_backend
    await backend.apply(record("/p/0", 1))
    pending = [backend.apply(record(f"/p/{n}", 1)) for n in range(1, 4)]
    listed = backend.changes_under("/p/", 1, 10)
    stored = await defer.gatherResults(pending)
    assert await listed == stored
    assert await backend.changes_under("/p/", 0, 2) == [await backend.get("/p/0"), stored[0]]


@pytest_twisted.ensureDeferred
async def test_large_values_are_read_off_the_reactor_thread(
    backend: SqliteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value over LARGE_VALUE is never read on the reactor thread: ``peek`` says WouldBlock
    without reading it, and ``get`` reads it on the pool's thread, whole; a small value is still
    read at once."""
    big = await backend.apply(record("/big", 1, b"b" * (sqlite_module.LARGE_VALUE + 1)))
    small = await backend.apply(record("/small", 1))
    threads: list[str] = []
    real = sqlite_module.read_record

    def traced(txn: Any, key: str) -> Any:
        threads.append(threading.current_thread().name)
        return real(txn, key)

    monkeypatch.setattr(sqlite_module, "read_record", traced)
    with pytest.raises(WouldBlock):
        backend.peek("/big")
    assert backend.peek("/small") == small
    assert await backend.get("/big") == big
    assert threads and threading.main_thread().name not in threads
    # (thread, whether the query leaves large values out) of every page read
    pages: list[tuple[str, bool]] = []
    real_select = sqlite_module.select_records
    main = threading.main_thread().name

    def traced_select(txn: Any, sql: str, *args: Any) -> Any:
        pages.append((threading.current_thread().name, "CASE WHEN length(value)" in sql))
        return real_select(txn, sql, *args)

    monkeypatch.setattr(sqlite_module, "select_records", traced_select)
    assert await backend.scan("/", limit=10) == [big, small]
    assert await backend.changes(0, 10) == [big, small]
    assert all(small_only for thread, small_only in pages if thread == main)
    # The two whole reads, values and all, ran on the pool's thread.
    assert [thread == main for thread, small_only in pages if not small_only] == [False, False]
    pages.clear()
    assert await backend.scan("/small", limit=10) == [small]  # small: on the reactor thread
    assert pages == [(main, True)]

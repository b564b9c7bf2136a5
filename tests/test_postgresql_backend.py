"""The PostgreSQL backend (navistore.backend.postgresql) against a real server: schema,
collation, indexes, migrations, group commit, seqs shared by two backends over one database,
durability settings, and connection loss. The contract itself is in
tests/test_postgresql_compliance.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Callable

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from zope.interface.verify import verifyObject

from navistore.backend import open_backend
from navistore.backend import postgresql_schema as schema
from navistore.backend.postgresql import PostgresBackend
from navistore.backend.postgresql_feed import changes_under, changes_under_sql
from navistore.clock import Stamp
from navistore.errors import StorageFailure
from navistore.interfaces import (
    IBackendStatistics,
    IExpiringRecords,
    IImmediateReads,
    IPrefixChanges,
    ISizedReads,
    IStorageBackend,
)
from navistore.keys import prefix_upper_bound
from navistore.record import MAX_FLAGS, Record

if TYPE_CHECKING:
    from support.postgres import PostgresServer

pytest_plugins = ["support.postgres"]

NODE = "0123456789abcdef"


def record(key: str, wall: int, value: bytes = b"value", **fields: Any) -> Record:
    return Record(key, value, "text/plain", Stamp(wall, 0, NODE), **fields)


def database_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


@pytest_twisted.async_yield_fixture
async def backend(postgres_url: str) -> AsyncIterator[PostgresBackend]:
    """A backend over a fresh database, closed afterwards."""
    opened = open_backend(postgres_url)
    assert isinstance(opened, PostgresBackend)
    yield opened
    await opened.close()


async def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking call (a psycopg connection of the test's own) off the reactor thread."""
    return await deferToThread(function, *args)


def query(server: PostgresServer, database: str, sql: str, *params: Any) -> list[Any]:
    """Rows of ``sql`` run as the superuser in ``database``, on a connection of its own."""
    with server.connect(database) as connection:
        cursor = connection.execute(sql, params or None)
        return list(cursor.fetchall()) if cursor.description else []


# -- what it provides ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_provides_the_interfaces_but_not_immediate_reads(backend: PostgresBackend) -> None:
    """The backend provides the contract and the optional interfaces a node uses (prefix feed,
    pages cut by bytes, expiry, statistics), not IImmediateReads (no network read is
    immediate), and says it is persistent."""
    for interface in (
        IStorageBackend,
        IPrefixChanges,
        ISizedReads,
        IExpiringRecords,
        IBackendStatistics,
    ):
        assert verifyObject(interface, backend)
    assert not IImmediateReads.providedBy(backend)
    assert (backend.kind, backend.persistent) == ("postgresql", True)
    assert await backend.last_seq() == 0


@pytest_twisted.ensureDeferred
async def test_postgres_scheme_opens_the_same_backend(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    """``postgres://`` is a synonym of ``postgresql://``: both reach the same database."""
    first = open_backend(postgres_url)
    await first.apply(record("/k", 1))
    await first.close()
    second = open_backend(postgres_server.url(database_of(postgres_url), scheme="postgres"))
    try:
        stored = await second.get("/k")
        assert stored is not None and stored.value == b"value"
    finally:
        await second.close()


# -- schema ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_schema_collation_and_version(
    backend: PostgresBackend, postgres_url: str, postgres_server: PostgresServer
) -> None:
    """``key`` and ``stamp`` are ``COLLATE "C"`` (byte order) although the server's default
    collation (ICU en-US in the test cluster) is not; ``backend_state`` holds the schema
    version and the seq counter."""
    await backend.apply(record("/k", 1))
    database = database_of(postgres_url)
    columns = await in_thread(
        query,
        postgres_server,
        database,
        "SELECT column_name, collation_name FROM information_schema.columns"
        " WHERE table_name = 'records' AND column_name IN ('key', 'stamp') ORDER BY 1",
    )
    assert columns == [("key", "C"), ("stamp", "C")]
    [(byte_order,)] = await in_thread(query, postgres_server, database, "SELECT 'B' < 'a'")
    assert byte_order is False  # the default collation is not byte order: "C" is needed
    state = await in_thread(
        query, postgres_server, database, "SELECT name, value FROM backend_state ORDER BY 1"
    )
    assert state == [("last_seq", 1), ("schema_version", schema.SCHEMA_VERSION)]


PLANNED = {
    "get": (schema.GET_SQL, ("/a",), "records_pkey"),
    "scan": (schema.scan_sql(False, True, False), ("/a/", "/a0", 10), "records_pkey"),
    "scan after": (schema.scan_sql(True, True, True), ("/a/b", "/a0", 10), "records_pkey"),
    "changes": (schema.CHANGES_SQL, (5, 10), "records_by_seq"),
    "expiring": (schema._EXPIRING_SQL, (10,), "records_by_expiry"),
    "purge": (schema.PURGE_SQL, (5,), "records_by_seq"),
}


@pytest.mark.parametrize("name", sorted(PLANNED))
@pytest_twisted.ensureDeferred
async def test_queries_can_run_on_their_index(
    backend: PostgresBackend, postgres_url: str, postgres_server: PostgresServer, name: str
) -> None:
    """Every query has an index that serves it in its order: with sequential scans, bitmap
    scans and sorts priced out, the planner walks that index and sorts nothing, so a page
    costs what it returns (on two rows the planner may rightly prefer a sort)."""
    await backend.apply(record("/a/b", 1, expires_ms=10))
    sql, params, index = PLANNED[name]

    def explain() -> str:
        with postgres_server.connect(database_of(postgres_url)) as connection:
            for method in ("seqscan", "bitmapscan", "sort"):
                connection.execute(f"SET enable_{method} = off")
            rows = connection.execute(f"EXPLAIN {sql}", params).fetchall()
        return "\n".join(row[0] for row in rows)

    plan = await in_thread(explain)
    assert index in plan, plan
    assert "Sort" not in plan and "Seq Scan" not in plan, plan


FEED_SHAPES = {
    "count": ("/a/", "/a0", 10, "records_pkey"),
    "keys": ("/a/", "/a0", 5, 10, "records_pkey"),
    "tail": (5, "/a/", "/a0", 10, "records_by_seq"),
    "window": (5, 50, "/a/", "/a0", 10, "records_by_seq"),
    "window_end": (5, 9, "records_by_seq"),
}


@pytest.mark.parametrize("shape", sorted(FEED_SHAPES))
@pytest_twisted.ensureDeferred
async def test_prefix_feed_queries_run_on_the_index_they_are_for(
    backend: PostgresBackend, postgres_url: str, postgres_server: PostgresServer, shape: str
) -> None:
    """Each query of changes_under reads the index it was written for, whatever the planner
    would estimate: the key index for counting and reading a prefix's keys (the seq condition
    cannot be pushed into that read), the seq index for the walks (no index covers
    ``key || ''``); none reads the whole table."""
    await backend.apply(record("/a/b", 1))
    *params, index = FEED_SHAPES[shape]
    sql = changes_under_sql(shape, bounded=shape != "window_end")

    def explain() -> str:
        with postgres_server.connect(database_of(postgres_url)) as connection:
            connection.execute("SET enable_seqscan = off")
            rows = connection.execute(f"EXPLAIN {sql}", params).fetchall()
        return "\n".join(row[0] for row in rows)

    plan = await in_thread(explain)
    assert index in plan and "Seq Scan" not in plan, plan
    other = {"records_pkey", "records_by_seq"} - {index}
    assert not any(name in plan for name in other), plan


@pytest_twisted.ensureDeferred
async def test_flags_use_the_whole_unsigned_range(
    backend: PostgresBackend, postgres_url: str, postgres_server: PostgresServer
) -> None:
    """Flags of the upper half are stored below zero in the BIGINT (two's complement, as in
    sqlite) and read back exactly."""
    flags = {"/f/max": MAX_FLAGS, "/f/half": 2**63, "/f/below": 2**63 - 1, "/f/zero": 0}
    for key, value in flags.items():
        await backend.apply(record(key, 1, flags=value))
    stored = await in_thread(
        query, postgres_server, database_of(postgres_url), "SELECT key, flags FROM records"
    )
    assert dict(stored) == {"/f/max": -1, "/f/half": -(2**63), "/f/below": 2**63 - 1, "/f/zero": 0}
    for key, value in flags.items():
        found = await backend.get(key)
        assert found is not None and found.flags == value


@pytest_twisted.ensureDeferred
async def test_a_newer_schema_is_refused(
    backend: PostgresBackend, postgres_url: str, postgres_server: PostgresServer
) -> None:
    """A database whose schema version is newer than this code's is refused with a
    StorageFailure saying to upgrade, and left as it is."""
    await backend.last_seq()
    await backend.close()
    database = database_of(postgres_url)
    await in_thread(
        query,
        postgres_server,
        database,
        "UPDATE backend_state SET value = 99 WHERE name = 'schema_version'",
    )
    newer = open_backend(postgres_url)
    try:
        with pytest.raises(StorageFailure, match="newer navistore"):
            await newer.last_seq()
    finally:
        await newer.close()
    [(version,)] = await in_thread(
        query,
        postgres_server,
        database,
        "SELECT value FROM backend_state WHERE name = 'schema_version'",
    )
    assert version == 99


@pytest_twisted.ensureDeferred
async def test_migrations_run_once_and_record_the_version(
    postgres_url: str, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration step runs when a database of the version before it is opened, in the
    transaction that records the new version, and never again; two backends opening one new
    database at once both succeed (the schema lock makes one wait for the other)."""
    ran: list[int] = []

    def add_column(txn: Any) -> None:
        ran.append(1)
        txn.execute("ALTER TABLE records ADD COLUMN note text")

    monkeypatch.setattr(schema, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(schema.MIGRATIONS, 1, add_column)
    first, second = open_backend(postgres_url), open_backend(postgres_url)
    try:
        assert await defer.gatherResults([first.last_seq(), second.last_seq()]) == [0, 0]
    finally:
        await first.close()
        await second.close()
    again = open_backend(postgres_url)
    try:
        await again.apply(record("/k", 1))
    finally:
        await again.close()
    assert ran == [1]
    database = database_of(postgres_url)
    [(version,)] = await in_thread(
        query,
        postgres_server,
        database,
        "SELECT value FROM backend_state WHERE name = 'schema_version'",
    )
    assert version == 2
    assert await in_thread(
        query, postgres_server, database, "SELECT note FROM records WHERE key = '/k'"
    ) == [(None,)]


@pytest_twisted.ensureDeferred
async def test_a_database_that_is_not_utf8_is_refused(postgres_server: PostgresServer) -> None:
    """A database in another encoding than UTF-8 (where keys could not sort by their UTF-8
    bytes, nor hold every code point) is refused with a StorageFailure naming the fix."""
    name = f"latin_{id(postgres_server)}"
    await in_thread(
        query,
        postgres_server,
        "postgres",
        f"CREATE DATABASE {name} OWNER navistore TEMPLATE template0 ENCODING 'SQL_ASCII'"
        " LOCALE_PROVIDER libc LC_COLLATE 'C' LC_CTYPE 'C'",
    )
    opened = open_backend(postgres_server.url(name))
    try:
        with pytest.raises(StorageFailure, match="UTF8"):
            await opened.get("/k")
    finally:
        await opened.close()
        await in_thread(postgres_server.drop_database, name)


# -- writes: group commit, seqs, durability ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_applies_of_one_turn_share_one_statement(
    backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Applies issued in one reactor turn are written by one statement (one transaction, one
    round trip); past BATCH_RECORDS they are split, in issue order, and seqs follow it."""
    batches: list[int] = []
    original = schema.write_batch

    def counting(txn: Any, batch: list[Any]) -> Any:
        batches.append(len(batch))
        return original(txn, batch)

    monkeypatch.setattr(schema, "write_batch", counting)
    monkeypatch.setattr(schema, "BATCH_RECORDS", 10)
    stored = await defer.gatherResults([backend.apply(record(f"/k/{n:02}", 1)) for n in range(25)])
    assert batches == [10, 10, 5]
    assert [found.seq for found in stored] == list(range(1, 26))
    assert backend.statistics.batch_sizes.count == 3
    assert backend.statistics.commit_seconds.count == 3


@pytest_twisted.ensureDeferred
async def test_two_backends_over_one_database_share_the_seq_counter(postgres_url: str) -> None:
    """Two backends over one database never give a seq twice: the database assigns seqs in the
    writing transaction and ``last_seq`` reads it, so each sees the other's writes in order."""
    first, second = open_backend(postgres_url), open_backend(postgres_url)
    try:
        written = await defer.gatherResults(
            [
                (first if number % 2 else second).apply(record(f"/k/{number}", 1))
                for number in range(40)
            ]
        )
        seqs = sorted(found.seq for found in written)
        assert seqs == list(range(1, 41))
        assert await first.last_seq() == await second.last_seq() == 40
        feed = await first.changes(0)
        assert [found.seq for found in feed] == seqs
        assert await second.apply(record("/k/0", 1)) is None  # an equal stamp: nothing
        assert (await first.apply(record("/k/0", 2))).seq == 41
    finally:
        await first.close()
        await second.close()


@pytest_twisted.ensureDeferred
async def test_synchronous_commit_is_on(postgres_url: str, postgres_server: PostgresServer) -> None:
    """The backend's sessions commit with ``synchronous_commit = on``, even in a database
    configured ``off`` (which would acknowledge commits not yet flushed)."""
    database = database_of(postgres_url)
    await in_thread(
        query,
        postgres_server,
        "postgres",
        f"ALTER DATABASE {database} SET synchronous_commit = off",
    )
    opened = open_backend(postgres_url)
    assert isinstance(opened, PostgresBackend)
    try:
        assert await opened._pool.runQuery("SHOW synchronous_commit") == [("on",)]
    finally:
        await opened.close()


@pytest_twisted.ensureDeferred
async def test_measure_sizes(backend: PostgresBackend) -> None:
    """measure_sizes counts live records and tombstones and the bytes the table takes."""
    await backend.apply(record("/a", 1))
    await backend.apply(record("/b", 1))
    await backend.apply(Record.tombstone("/b", Stamp(2, 0, NODE)))
    sizes = await backend.measure_sizes()
    assert (sizes.live_keys, sizes.tombstones) == (1, 1)
    assert sizes.database_bytes is not None and sizes.database_bytes > 0
    assert backend.statistics.sizes == sizes


@pytest_twisted.ensureDeferred
async def test_limits_beyond_a_bigint_are_bounded(backend: PostgresBackend) -> None:
    """A limit larger than a BIGINT holds is read as "everything" rather than failing in the
    database, in every call that takes one."""
    await backend.apply(record("/a/b", 1, expires_ms=5))
    huge = 10**30
    assert len(await backend.scan("/", limit=huge)) == 1
    assert len(await backend.changes(0, limit=huge)) == 1
    assert len(await backend.changes_under("/a/", 0, limit=huge)) == 1
    assert len(await backend.expiring(limit=huge)) == 1


# -- the prefix feed -----------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/a/", "/b/", "/a", "/c/", "/"])
@pytest.mark.parametrize("since", [0, 7, 45])
@pytest_twisted.ensureDeferred
async def test_changes_under_with_small_windows(
    backend: PostgresBackend,
    postgres_url: str,
    postgres_server: PostgresServer,
    prefix: str,
    since: int,
) -> None:
    """With windows of a few changes, every way changes_under finds the changes (the log's
    tail, windows of the seq index, the key index) lists exactly the feed filtered by prefix."""
    for number in range(30):
        await backend.apply(record(f"/a/{number:02}", 1))
        await backend.apply(record(f"/b/{number:02}", 1))
    for number in range(0, 30, 3):
        await backend.apply(record(f"/a/{number:02}", 2))
    everything = await backend.changes(since, limit=1000)

    def listed(limit: int, budget: int) -> list[Record]:
        with postgres_server.connect(database_of(postgres_url)) as connection:
            cursor = connection.cursor()
            found = changes_under(
                cursor, prefix, prefix_upper_bound(prefix), since, limit, budget=budget
            )
            assert connection.info.transaction_status == 0  # committed, not left open
            return found

    for limit in (1, 3, 100):
        for budget in (2, 5, 40):
            expected = [found for found in everything if found.key.startswith(prefix)][:limit]
            assert await in_thread(listed, limit, budget) == expected, (limit, budget)


# -- connection loss -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_lost_connection_fails_one_call_and_reconnects(
    backend: PostgresBackend, postgres_url: str, postgres_server: PostgresServer
) -> None:
    """When the server ends the backend's session, the call in progress fails with a
    StorageFailure (the node answers 503) and the pool connects again for the next one."""
    await backend.apply(record("/k", 1))
    database = database_of(postgres_url)
    terminated = await in_thread(
        query,
        postgres_server,
        database,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        database,
    )
    assert terminated == [(True,)]
    errors = backend.statistics.errors
    with pytest.raises(StorageFailure):
        await backend.get("/k")
    assert backend.statistics.errors == errors + 1
    found = await backend.get("/k")
    assert found is not None and found.value == b"value"
    stored = await backend.apply(record("/k", 2))
    assert stored is not None and stored.seq == 2


@pytest_twisted.ensureDeferred
async def test_writes_fail_while_the_server_is_down_and_resume(
    backend: PostgresBackend, postgres_server: PostgresServer
) -> None:
    """While the server is down, applies fail with a StorageFailure (nothing acknowledged that
    was not committed); once it is back the backend reconnects and what was committed is there."""
    await backend.apply(record("/before", 1))
    await in_thread(postgres_server.stop_server)
    try:
        for attempt in range(2):
            with pytest.raises(StorageFailure):
                await backend.apply(record("/during", 1 + attempt))
        assert backend.statistics.commit_error is not None
    finally:
        await in_thread(postgres_server.start_server)
    assert (await backend.get("/before")) is not None
    assert await backend.get("/during") is None
    stored = await backend.apply(record("/after", 1))
    assert stored is not None and stored.seq == 2
    assert backend.statistics.commit_error is None


@pytest_twisted.ensureDeferred
async def test_failures_never_show_the_password(postgres_server: PostgresServer) -> None:
    """A backend over a wrong password fails its calls with a StorageFailure that names the
    database without the URL's password, and so does its repr."""
    url = postgres_server.url("nowhere", password=False).replace("@", ":hunter2x@")
    opened = open_backend(url)
    try:
        with pytest.raises(StorageFailure) as failed:
            await opened.get("/k")
    finally:
        await opened.close()
    message = str(failed.value)
    assert "password authentication failed" in message
    assert "hunter2x" not in message and "hunter2x" not in repr(opened)
    assert (
        repr(opened)
        == f"<PostgresBackend postgresql://navistore@127.0.0.1:{postgres_server.port}/nowhere>"
    )

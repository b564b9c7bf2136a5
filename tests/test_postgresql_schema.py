"""The PostgreSQL backend's schema (navistore.backend.postgresql_schema) in a real server:
collation, the index each query reads, flags in a BIGINT, migrations, and the databases it
refuses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.threads import deferToThread

from navistore.backend import open_backend
from navistore.backend import postgresql_schema as schema
from navistore.backend.postgresql import PostgresBackend
from navistore.backend.postgresql_feed import changes_under_sql
from navistore.clock import Stamp
from navistore.errors import StorageFailure
from navistore.interfaces import ABSENT
from navistore.record import MAX_FLAGS, Record

if TYPE_CHECKING:
    from support.postgres import PostgresServer

pytest_plugins = ["support.postgres"]

NODE = "0123456789abcdef"


def record(key: str, wall: int, value: bytes = b"value", **fields: Any) -> Record:
    return Record(key, value, "text/plain", Stamp(wall, 0, NODE), **fields)


@pytest.fixture
def backend(postgres_backend: PostgresBackend) -> PostgresBackend:
    return postgres_backend


@pytest_twisted.ensureDeferred
async def test_schema_collation_and_version(
    backend: PostgresBackend, postgres_url: str, postgres_server: PostgresServer
) -> None:
    """``key`` and ``stamp`` are ``COLLATE "C"`` (byte order) although the server's default
    collation (ICU en-US in the test cluster) is not; ``backend_state`` holds the schema
    version and the seq counter."""
    await backend.apply(record("/k", 1))
    database = postgres_server.database_of(postgres_url)
    columns = await deferToThread(
        postgres_server.rows,
        database,
        "SELECT column_name, collation_name FROM information_schema.columns"
        " WHERE table_name = 'records' AND column_name IN ('key', 'stamp') ORDER BY 1",
    )
    assert columns == [("key", "C"), ("stamp", "C")]
    [(byte_order,)] = await deferToThread(postgres_server.rows, database, "SELECT 'B' < 'a'")
    assert byte_order is False  # the default collation is not byte order: "C" is needed
    state = await deferToThread(
        postgres_server.rows, database, "SELECT name, value FROM backend_state ORDER BY 1"
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
        with postgres_server.connect(postgres_server.database_of(postgres_url)) as connection:
            for method in ("seqscan", "bitmapscan", "sort"):
                connection.execute(f"SET enable_{method} = off")
            rows = connection.execute(f"EXPLAIN {sql}", params).fetchall()
        return "\n".join(row[0] for row in rows)

    plan = await deferToThread(explain)
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
        with postgres_server.connect(postgres_server.database_of(postgres_url)) as connection:
            connection.execute("SET enable_seqscan = off")
            rows = connection.execute(f"EXPLAIN {sql}", params).fetchall()
        return "\n".join(row[0] for row in rows)

    plan = await deferToThread(explain)
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
    stored = await deferToThread(
        postgres_server.rows,
        postgres_server.database_of(postgres_url),
        "SELECT key, flags FROM records",
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
    database = postgres_server.database_of(postgres_url)
    await deferToThread(
        postgres_server.rows,
        database,
        "UPDATE backend_state SET value = 99 WHERE name = 'schema_version'",
    )
    newer = open_backend(postgres_url)
    try:
        with pytest.raises(StorageFailure, match="newer navistore"):
            await newer.last_seq()
    finally:
        await newer.close()
    [(version,)] = await deferToThread(
        postgres_server.rows,
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

    newer = schema.SCHEMA_VERSION + 1
    monkeypatch.setattr(schema, "SCHEMA_VERSION", newer)
    monkeypatch.setitem(schema.MIGRATIONS, newer - 1, add_column)
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
    database = postgres_server.database_of(postgres_url)
    [(version,)] = await deferToThread(
        postgres_server.rows,
        database,
        "SELECT value FROM backend_state WHERE name = 'schema_version'",
    )
    assert version == newer
    assert await deferToThread(
        postgres_server.rows, database, "SELECT note FROM records WHERE key = '/k'"
    ) == [(None,)]


@pytest_twisted.ensureDeferred
async def test_a_database_that_is_not_utf8_is_refused(postgres_server: PostgresServer) -> None:
    """A database in another encoding than UTF-8 (where keys could not sort by their UTF-8
    bytes, nor hold every code point) is refused with a StorageFailure naming the fix."""
    name = f"latin_{id(postgres_server)}"
    await deferToThread(
        postgres_server.rows,
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
        await deferToThread(postgres_server.drop_database, name)


@pytest_twisted.ensureDeferred
async def test_a_schema_2_database_upgrades_to_replaces_in_place(
    postgres_url: str, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database made by the previous release (schema 2: its tables and functions, its rows
    written through its own ``navistore_write_batch`` of ten arrays) opens at schema 3: the
    ``replaces`` column is added and the write functions take it; the old rows read back with
    no ``replaces``, new ones keep theirs, through single applies and apply_all alike."""
    with monkeypatch.context() as patched:
        patched.setattr(schema, "SCHEMA_VERSION", 2)
        old = open_backend(postgres_url)
        try:
            assert await old.last_seq() == 0
        finally:
            await old.close()
    database = postgres_server.database_of(postgres_url)
    await deferToThread(
        postgres_server.rows,
        database,
        "SELECT navistore_write_batch(%s::text[], %s::text[], %s::boolean[], %s::text[],"
        " %s::text[], %s::bigint[], %s::bigint[], %s::bytea[], %s::smallint[], %s::text[])",
        ["/old", "/gone"],
        [Stamp(1000, 0, NODE).encode(), Stamp(1001, 0, NODE).encode()],
        [False, True],
        ["text/plain", ""],
        ["", ""],
        [4102444800000, None],
        [7, 0],
        [b"kept", b""],
        [0, 0],
        [None, None],
    )
    backend = open_backend(postgres_url)
    try:
        kept = await backend.get("/old")
        assert kept == Record(
            "/old", b"kept", "text/plain", Stamp(1000, 0, NODE), False, 1, (), 4102444800000, 7
        )
        gone = await backend.get("/gone")
        assert gone is not None and gone.deleted and gone.replaces == ()
        seen = (Stamp(999, 0, "00000000000000aa"),)
        later = record("/old", 2000, b"new", replaces=seen)
        assert await backend.apply(later) == later.with_seq(3)
        together = record("/together", 2001, replaces=seen)
        outcome = await backend.apply_all([(together, ABSENT)])
        assert outcome.stored == (together.with_seq(4),)
        assert [found.replaces for found in await backend.changes(2, 10)] == [seen, seen]
    finally:
        await backend.close()
    [(version,)] = await deferToThread(
        postgres_server.rows,
        database,
        "SELECT value FROM backend_state WHERE name = 'schema_version'",
    )
    assert version == schema.SCHEMA_VERSION == 3

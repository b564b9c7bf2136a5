"""The PostgreSQL backend (navistore.backend.postgresql) against a real server: what it
provides, group commit, seqs shared by two backends over one database, durability settings, the
prefix feed's windows, and connection loss. The schema is tests/test_postgresql_schema.py, the
contract tests/test_postgresql_compliance.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from zope.interface.verify import verifyObject

from navistore.backend import open_backend
from navistore.backend import postgresql_schema as schema
from navistore.backend.postgresql import PostgresBackend
from navistore.backend.postgresql_feed import changes_under
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
from navistore.record import Record

if TYPE_CHECKING:
    from support.postgres import PostgresServer

pytest_plugins = ["support.postgres"]

NODE = "0123456789abcdef"


def record(key: str, wall: int, value: bytes = b"value", **fields: Any) -> Record:
    return Record(key, value, "text/plain", Stamp(wall, 0, NODE), **fields)


@pytest.fixture
def backend(postgres_backend: PostgresBackend) -> PostgresBackend:
    return postgres_backend


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
    second = open_backend(
        postgres_server.url(postgres_server.database_of(postgres_url), scheme="postgres")
    )
    try:
        stored = await second.get("/k")
        assert stored is not None and stored.value == b"value"
    finally:
        await second.close()


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
    database = postgres_server.database_of(postgres_url)
    await deferToThread(
        postgres_server.rows,
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
        with postgres_server.connect(postgres_server.database_of(postgres_url)) as connection:
            cursor = connection.cursor()
            found = changes_under(
                cursor, prefix, prefix_upper_bound(prefix), since, limit, budget=budget
            )
            assert connection.info.transaction_status == 0  # committed, not left open
            return found

    for limit in (1, 3, 100):
        for budget in (2, 5, 40):
            expected = [found for found in everything if found.key.startswith(prefix)][:limit]
            assert await deferToThread(listed, limit, budget) == expected, (limit, budget)


# -- connection loss -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_lost_connection_fails_one_call_and_reconnects(
    backend: PostgresBackend, postgres_url: str, postgres_server: PostgresServer
) -> None:
    """When the server ends the backend's session, the call in progress fails with a
    StorageFailure (the node answers 503) and the pool connects again for the next one."""
    await backend.apply(record("/k", 1))
    database = postgres_server.database_of(postgres_url)
    terminated = await deferToThread(
        postgres_server.rows,
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
    await deferToThread(postgres_server.stop_server)
    try:
        for attempt in range(2):
            with pytest.raises(StorageFailure):
                await backend.apply(record("/during", 1 + attempt))
        assert backend.statistics.commit_error is not None
    finally:
        await deferToThread(postgres_server.start_server)
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

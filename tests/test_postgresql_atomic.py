"""Several records all or nothing over PostgreSQL (``PostgresBackend.apply_all``, the
IAtomicApply of main), against a real server, clause by clause as main's compliance module
``atomic.py`` states them; and the migration (schema version 2) that brings the function."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from navistore.backend import open_backend
from navistore.backend import postgresql_schema as schema
from navistore.backend.postgresql import PostgresBackend
from navistore.errors import BackendClosed, InvalidRecord
from navistore.interfaces import ABSENT, ANY
from navistore.record import Record
from navistore.testing.compliance import make_record, make_tombstone

if TYPE_CHECKING:
    from support.postgres import PostgresServer

pytest_plugins = ["support.postgres"]


@pytest.fixture
def backend(postgres_backend: PostgresBackend) -> PostgresBackend:
    return postgres_backend


async def everything(backend: PostgresBackend) -> tuple[list[Record], list[Record], int]:
    """All a test can observe: every record, the feed, last_seq."""
    records = await backend.scan("/", limit=1000, include_deleted=True)
    return records, await backend.changes(0, limit=1000), await backend.last_seq()


@pytest_twisted.ensureDeferred
async def test_every_record_is_stored_in_order_when_every_item_holds(
    backend: PostgresBackend,
) -> None:
    """Checks and writes that all hold: the records are stored with consecutive seqs in the
    order given (checks take none), and read back like any apply's."""
    old = await backend.apply(make_record("/a", b"old", 1000))
    checked = await backend.apply(make_record("/checked", b"c", 1000))
    assert old is not None and checked is not None
    stored, refused = await backend.apply_all(
        [
            (make_record("/a", b"new", 2000), old.stamp),
            ("/checked", checked.stamp),
            ("/absent", ABSENT),
            (make_record("/b", b"fresh", 2000), ABSENT),
            (make_tombstone("/gone", 2000), ANY),
        ]
    )
    assert refused is None
    assert [(record.key, record.seq) for record in stored] == [("/a", 3), ("/b", 4), ("/gone", 5)]
    for record in stored:
        assert await backend.get(record.key) == record
    assert await backend.last_seq() == 5


SPOILERS: list[tuple[Any, Any]] = [
    (make_record("/a", b"new", 2000), make_record("/x", b"", 999).stamp),  # stale If-Match
    (make_record("/b", b"c", 2000), ABSENT),  # /b exists
    (make_record("/b", b"older", 3000), ANY),  # older than what /b holds
    ("/b", ABSENT),  # a check that fails
]


@pytest.mark.parametrize("failing", range(len(SPOILERS)))
@pytest_twisted.ensureDeferred
async def test_one_item_that_does_not_hold_stores_nothing(
    backend: PostgresBackend, failing: int
) -> None:
    """Whichever item fails, nothing is stored, no seq is taken, and its index is answered."""
    await backend.apply(make_record("/a", b"old", 1000))
    await backend.apply(make_record("/b", b"b", 5000))
    stored_a = await backend.get("/a")
    assert stored_a is not None
    items: list[tuple[Any, Any]] = [
        (make_record("/a", b"new", 2000), stored_a.stamp),
        (make_record("/c", b"c", 2000), ABSENT),
        (make_record("/d", b"d", 2000), ANY),
        ("/e", ABSENT),
    ]
    items[failing] = SPOILERS[failing]
    before = await everything(backend)
    assert await backend.apply_all(items) == ([], failing)
    assert await everything(backend) == before
    after = await backend.apply(make_record("/z", b"z", 9000))
    assert after is not None and after.seq == 3  # the refused call took no seq


@pytest_twisted.ensureDeferred
async def test_it_is_decided_after_the_applies_issued_before_it(backend: PostgresBackend) -> None:
    """Applies issued just before (still waiting for their batch) are what the items are
    decided against, and an apply issued just after is decided against what they stored."""
    first = backend.apply(make_record("/a", b"first", 1000))
    refused = backend.apply_all([(make_record("/a", b"second", 2000), ABSENT)])
    taken = backend.apply_all([(make_record("/a", b"third", 3000), ANY), ("/b", ABSENT)])
    after = backend.apply(make_record("/a", b"older", 2500))
    assert (await first) is not None
    assert (await refused)[1] == 0
    assert (await taken)[1] is None
    assert (await after) is None
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
    backend: PostgresBackend, items: list[Any]
) -> None:
    """A key named twice or a malformed record fails with InvalidRecord; nothing stored."""
    await backend.apply(make_record("/other"))
    before = await everything(backend)
    with pytest.raises(InvalidRecord):
        await backend.apply_all(items)
    assert await everything(backend) == before


@pytest_twisted.ensureDeferred
async def test_apply_all_after_close_fails(backend: PostgresBackend) -> None:
    """Like every call, apply_all fails with BackendClosed once closed."""
    await backend.close()
    with pytest.raises(BackendClosed):
        await backend.apply_all([(make_record("/a"), ANY)])


@pytest_twisted.ensureDeferred
async def test_a_version_1_database_is_migrated_to_apply_all(
    postgres_url: str, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database made at schema version 1 (no navistore_apply_all) keeps its records and its
    seq counter when a version 2 backend opens it, which adds the function."""
    with monkeypatch.context() as patched:
        patched.setattr(schema, "SCHEMA_VERSION", 1)
        old = open_backend(postgres_url)
        await old.apply(make_record("/kept", b"v1", 1000))
        await old.close()
    database = postgres_server.database_of(postgres_url)
    functions = "SELECT proname FROM pg_proc WHERE proname LIKE 'navistore%' ORDER BY 1"
    assert await deferToThread(postgres_server.rows, database, functions) == [
        ("navistore_write_batch",)
    ]
    new = open_backend(postgres_url)
    assert isinstance(new, PostgresBackend)
    try:
        kept = await new.get("/kept")
        assert kept is not None and kept.value == b"v1"
        stored, refused = await new.apply_all([(make_record("/new", b"v2", 1000), ABSENT)])
        assert refused is None and [record.seq for record in stored] == [2]
    finally:
        await new.close()
    assert await deferToThread(postgres_server.rows, database, functions) == [
        ("navistore_apply_all",),
        ("navistore_write_batch",),
    ]
    state = "SELECT value FROM backend_state WHERE name = 'schema_version'"
    assert await deferToThread(postgres_server.rows, database, state) == [(2,)]

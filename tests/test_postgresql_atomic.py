"""The migration (schema version 2) that brings PostgreSQL's all-or-nothing apply
(``navistore_apply_all``); its clauses are the compliance suite's (``atomic.py``), which
tests/test_postgresql_compliance.py runs against a real server."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from navistore.backend import open_backend
from navistore.backend import postgresql_schema as schema
from navistore.backend.postgresql import PostgresBackend
from navistore.interfaces import ABSENT
from navistore.testing.compliance import make_record

if TYPE_CHECKING:
    from support.postgres import PostgresServer

pytest_plugins = ["support.postgres"]


@pytest_twisted.ensureDeferred
async def test_a_version_1_database_is_migrated_to_apply_all(
    postgres_url: str, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database made at schema version 1 (no navistore_apply_all) keeps its records and its
    seq counter when a newer backend opens it, which adds the function."""
    with monkeypatch.context() as patched:
        patched.setattr(schema, "SCHEMA_VERSION", 1)
        old = open_backend(postgres_url)
        assert await old.last_seq() == 0
        await old.close()
    database = postgres_server.database_of(postgres_url)
    # Written as that release wrote it: through its function of ten arrays.
    kept = make_record("/kept", b"v1", 1000)
    await deferToThread(
        postgres_server.rows,
        database,
        "SELECT navistore_write_batch(%s::text[], %s::text[], %s::boolean[], %s::text[],"
        " %s::text[], %s::bigint[], %s::bigint[], %s::bytea[], %s::smallint[], %s::text[])",
        [kept.key],
        [kept.stamp.encode()],
        [False],
        [kept.content_type],
        [""],
        [None],
        [0],
        [kept.value],
        [0],
        [None],
    )
    functions = "SELECT proname FROM pg_proc WHERE proname LIKE 'navistore%' ORDER BY 1"
    assert await deferToThread(postgres_server.rows, database, functions) == [
        ("navistore_write_batch",)
    ]
    new = open_backend(postgres_url)
    assert isinstance(new, PostgresBackend)
    try:
        kept = await new.get("/kept")
        assert kept is not None and kept.value == b"v1"
        outcome = await new.apply_all([(make_record("/new", b"v2", 1000), ABSENT)])
        assert outcome.refused is None and [record.seq for record in outcome.stored] == [2]
    finally:
        await new.close()
    assert await deferToThread(postgres_server.rows, database, functions) == [
        ("navistore_apply_all",),
        ("navistore_write_batch",),
    ]
    state = "SELECT value FROM backend_state WHERE name = 'schema_version'"
    assert await deferToThread(postgres_server.rows, database, state) == [(schema.SCHEMA_VERSION,)]

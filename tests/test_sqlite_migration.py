"""sqlite files written by earlier releases (schemas 2 and 3) open and upgrade in place.

``tests/data/sqlite-schema-2.db`` was written by Navistore at 55e83dc, the last release of
schema 2 (before TTLs and flags): six records, one of them a tombstone, two relayed with chains,
one binary value, and meta data. The upgrade adds the deadline and flags columns and the index
of deadlines, and must keep every record exactly, its seq included.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest_twisted
from support.processes import running, twistd

from navistore.backend import sqlite_schema
from navistore.backend.sqlite import SqliteBackend
from navistore.clock import Stamp
from navistore.record import Record

FIXTURE = Path(__file__).parent / "data" / "sqlite-schema-2.db"
NODE = "0123456789abcdef"
OTHER = "fedcba9876543210"

#: What the fixture holds: key -> (value, content type, stamp, deleted, seq, chain).
EXPECTED = {
    "/app/db/host": (b"db1.lan", "text/plain", "019adc5be000-000000-" + NODE, False, 1, ()),
    "/app/db/port": (b"5432", "text/plain", "019adc5be001-000000-" + NODE, False, 2, ()),
    "/app/blob": (
        bytes(range(256)),
        "application/octet-stream",
        "019adc5be002-000003-" + OTHER,
        False,
        3,
        (OTHER,),
    ),
    "/app/json": (
        b'{"a": [1, 2]}',
        "application/json",
        "019adc5be003-000000-" + NODE,
        False,
        4,
        (),
    ),
    "/app/gone": (b"", "", "019adc5be004-000000-" + NODE, True, 5, ()),
    "/caf\u00e9/\u65e5\u672c": (
        "d\u00e9j\u00e0".encode(),
        "text/plain; charset=utf-8",
        "019adc5be005-000001-" + OTHER,
        False,
        6,
        (OTHER, NODE),
    ),
}


def _copy(tmp_path: Path) -> Path:
    path = tmp_path / "store.db"
    shutil.copyfile(FIXTURE, path)
    return path


def _version(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        row = connection.execute(
            "SELECT value FROM backend_state WHERE name = 'schema_version'"
        ).fetchone()
        return int(row[0])
    finally:
        connection.close()


def test_the_fixture_is_a_schema_2_file() -> None:
    """The file really is what the previous release wrote: schema 2, without the new columns
    (so the tests below exercise the upgrade, not a file already upgraded)."""
    assert _version(FIXTURE) == 2
    connection = sqlite3.connect(FIXTURE)
    try:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(records)")]
    finally:
        connection.close()
    assert columns == ["key", "seq", "stamp", "deleted", "content_type", "value", "chain"]


@pytest_twisted.ensureDeferred
async def test_a_schema_2_file_upgrades_in_place_keeping_every_record(tmp_path: Path) -> None:
    """Opened, the file is upgraded to schema 3 in place: every record reads back as written
    (value, type, stamp, tombstone, seq, chain), with no deadline and no flags; the seq counter
    and the meta data are kept; new records carry a deadline and flags, which the index lists."""
    path = _copy(tmp_path)
    backend = SqliteBackend(path)
    try:
        for key, (value, content_type, stamp, deleted, seq, chain) in EXPECTED.items():
            found = await backend.get(key)
            assert found == Record(
                key, value, content_type, Stamp.decode(stamp), deleted, seq, chain, None, 0
            ), key
        assert [record.key for record in await backend.changes(0, 10)] == list(EXPECTED)
        assert await backend.last_seq() == 6
        assert await backend.get_meta("node_id") == NODE
        assert json.loads(await backend.get_meta("peers") or "") == ["http://127.0.0.1:9999"]
        assert await backend.expiring(10) == []
        fresh = Record(
            "/app/lease",
            b"me",
            "text/plain",
            Stamp(1764633700000, 0, NODE),
            expires_ms=1764633760000,
            flags=2**64 - 1,
        )
        stored = await backend.apply(fresh)
        assert stored is not None and stored.seq == 7
        assert await backend.get("/app/lease") == fresh.with_seq(7)
        [deadline] = await backend.expiring(10)
        assert (deadline.key, deadline.stamp, deadline.expires_ms) == (
            "/app/lease",
            fresh.stamp,
            1764633760000,
        )
    finally:
        await backend.close()
    assert _version(path) == sqlite_schema.SCHEMA_VERSION
    reopened = SqliteBackend(path)  # an upgraded file opens as it is
    try:
        assert (await reopened.get("/app/lease")) == fresh.with_seq(7)
        assert len(await reopened.changes(0, 10)) == 7
    finally:
        await reopened.close()


def test_the_deadline_index_is_what_expiring_reads(tmp_path: Path) -> None:
    """The expiring query walks the partial index of deadlines, not the table."""
    path = _copy(tmp_path)
    backend_connection = sqlite3.connect(path)
    try:
        cursor = backend_connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        sqlite_schema._migrate(cursor)
        backend_connection.commit()
        plan = backend_connection.execute(
            "EXPLAIN QUERY PLAN " + sqlite_schema._EXPIRING_SQL, (10,)
        ).fetchall()
    finally:
        backend_connection.close()
    details = " ".join(str(row[-1]) for row in plan)
    assert "records_by_expiry" in details and "TEMP B-TREE" not in details, details


def test_a_node_serves_a_schema_2_file_after_upgrading_it(tmp_path: Path) -> None:
    """A real node started on the previous release's file serves its keys, keeps its node id
    and its tombstone, and writes keys with a TTL into it."""
    _copy(tmp_path)
    with running(twistd("sqlite:store.db"), tmp_path) as server:
        server.wait_listening()
        assert server.request("GET", "/app/db/host")[:2] == (200, b"db1.lan")
        assert server.request("GET", "/app/gone")[0] == 404
        health = json.loads(server.request("GET", "/_health")[1])
        assert health["node_id"] == NODE and health["last_seq"] == 6
        status, _body, answer = server.request("PUT", "/app/lease?ttl=60", b"me")
        assert status == 201 and answer.getheader("X-Navistore-Index") == "7"
        status, body, answer = server.request("GET", "/app/lease")
        assert (status, body) == (200, b"me")
        assert 58 <= int(answer.getheader("X-Navistore-Expires") or 0) <= 60
    assert _version(tmp_path / "store.db") == sqlite_schema.SCHEMA_VERSION


# -- schema 3 (before Record.replaces) ------------------------------------------------------------

#: ``tests/data/sqlite-schema-3.db`` was written by Navistore at 307259f, the last code of
#: schema 3 (TTLs and flags, before ``replaces``): five records, one expiring with flags, one
#: tombstone, two relayed with chains (one with the largest flags), and meta data.
FIXTURE_3 = Path(__file__).parent / "data" / "sqlite-schema-3.db"

#: key -> (value, content type, stamp, deleted, seq, chain, expires_ms, flags).
EXPECTED_3 = {
    "/app/db/host": (
        b"db1.lan",
        "text/plain",
        "019adc5be000-000000-" + NODE,
        False,
        1,
        (),
        None,
        0,
    ),
    "/app/lease": (
        b"me",
        "text/plain",
        "019adc5be001-000000-" + NODE,
        False,
        2,
        (),
        4102444800000,
        42,
    ),
    "/app/blob": (
        bytes(range(256)),
        "application/octet-stream",
        "019adc5be002-000003-" + OTHER,
        False,
        3,
        (OTHER,),
        None,
        0,
    ),
    "/app/gone": (b"", "", "019adc5be003-000000-" + NODE, True, 4, (), None, 0),
    "/app/flags": (
        b"x",
        "text/plain",
        "019adc5be004-000000-" + OTHER,
        False,
        5,
        (OTHER, NODE),
        None,
        2**64 - 1,
    ),
}


def test_the_fixture_is_a_schema_3_file() -> None:
    """The file is what schema 3 wrote: no ``replaces`` column yet."""
    assert _version(FIXTURE_3) == 3
    connection = sqlite3.connect(FIXTURE_3)
    try:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(records)")]
    finally:
        connection.close()
    assert "replaces" not in columns and {"expires", "flags"} <= set(columns)


@pytest_twisted.ensureDeferred
async def test_a_schema_3_file_upgrades_in_place_keeping_every_record(tmp_path: Path) -> None:
    """Opened, a schema-3 file gains the ``replaces`` column in place: every record reads back
    exactly (seq, chain, deadline and flags included) with no ``replaces``; the seq counter and
    meta data are kept; a new record with ``replaces`` stores and reads back with them."""
    path = tmp_path / "store.db"
    shutil.copyfile(FIXTURE_3, path)
    backend = SqliteBackend(path)
    try:
        for key, (value, kind, stamp, deleted, seq, chain, expires, flags) in EXPECTED_3.items():
            found = await backend.get(key)
            assert found == Record(
                key, value, kind, Stamp.decode(stamp), deleted, seq, chain, expires, flags
            ), key
            assert found is not None and found.replaces == ()
        assert await backend.last_seq() == 5
        assert await backend.get_meta("node_id") == NODE
        [deadline] = await backend.expiring(10)
        assert deadline.key == "/app/lease"
        seen = (Stamp(1764633600002, 3, OTHER), Stamp(1764633600001, 0, "00000000000000aa"))
        later = Record(
            "/app/db/host",
            b"db2.lan",
            "text/plain",
            Stamp(1764633700000, 0, NODE),
            replaces=seen,
        )
        assert await backend.apply(later) == later.with_seq(6)
        assert await backend.get("/app/db/host") == later.with_seq(6)
        assert (await backend.changes(5, 10)) == [later.with_seq(6)]
    finally:
        await backend.close()
    assert _version(path) == sqlite_schema.SCHEMA_VERSION == 4
    reopened = SqliteBackend(path)
    try:
        assert await reopened.get("/app/db/host") == later.with_seq(6)
    finally:
        await reopened.close()

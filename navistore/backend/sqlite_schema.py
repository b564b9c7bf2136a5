"""The sqlite file format and the SQL the backend runs: schema, migrations, and one function per
call, each taking a cursor (an adbapi Transaction, or a cursor on the reactor thread's connection).

Kept apart from :mod:`navistore.backend.sqlite`, which decides *where and when* these run (which
connection, which thread, which batch); this module is only *what* runs.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable

from twisted.enterprise import adbapi

from navistore.clock import Stamp
from navistore.errors import StorageFailure
from navistore.interfaces import Expectation, expectation_holds, supersedes
from navistore.record import Record

__all__ = [
    "BUSY_TIMEOUT_MS",
    "CHANGES_SQL",
    "GET_SQL",
    "MAX_LIMIT",
    "MIGRATIONS",
    "PURGE_SQL",
    "SCHEMA_VERSION",
    "VERSION_1",
    "checkpoint",
    "get_meta",
    "open_connection",
    "purge",
    "read_record",
    "read_state",
    "reset",
    "scan_sql",
    "select_records",
    "set_meta",
    "transact",
    "write_batch",
]

#: The schema version this code writes. Bump it together with a new :data:`MIGRATIONS` step.
SCHEMA_VERSION = 2

#: ``MIGRATIONS[n]`` upgrades a version ``n`` database to ``n + 1``; all steps needed run in one
#: transaction when the connection opens, so an upgrade is never left half done.
MIGRATIONS: dict[int, Callable[[sqlite3.Cursor], None]] = {}


def _add_chain_column(cursor: sqlite3.Cursor) -> None:
    """Version 2: records remember the nodes they passed through (``Record.chain``)."""
    cursor.execute("ALTER TABLE records ADD COLUMN chain TEXT NOT NULL DEFAULT ''")


MIGRATIONS[1] = _add_chain_column

#: How long a connection waits for another's lock before failing.
BUSY_TIMEOUT_MS = 5000
#: The largest LIMIT a query passes (sqlite integers are 64-bit).
MAX_LIMIT = 2**62

_COLUMNS = "key, seq, stamp, deleted, content_type, chain, value"
GET_SQL = f"SELECT {_COLUMNS} FROM records WHERE key = ?"
CHANGES_SQL = f"SELECT {_COLUMNS} FROM records WHERE seq > ? ORDER BY seq LIMIT ?"
_INSERT_SQL = f"INSERT INTO records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
_UPDATE_SQL = (
    "UPDATE records SET seq = ?, stamp = ?, deleted = ?, content_type = ?, chain = ?, value = ?"
    " WHERE key = ?"
)
PURGE_SQL = "DELETE FROM records WHERE deleted = 1 AND seq < ?"
_READ_STATE_SQL = "SELECT value FROM backend_state WHERE name = ?"
_WRITE_STATE_SQL = "UPDATE backend_state SET value = ? WHERE name = ?"

VERSION_1 = (
    "CREATE TABLE records (key TEXT PRIMARY KEY, seq INTEGER NOT NULL, stamp TEXT NOT NULL,"
    " deleted INTEGER NOT NULL, content_type TEXT NOT NULL, value BLOB NOT NULL)",
    "CREATE UNIQUE INDEX records_by_seq ON records (seq)",
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "INSERT INTO backend_state (name, value) VALUES ('schema_version', 1), ('last_seq', 0)",
)


def scan_sql(after: bool, bounded: bool, include_deleted: bool) -> str:
    """Return the range query ``scan`` runs: ``key > after`` replaces ``key >= prefix`` when
    ``after`` is the tighter lower bound, so that sqlite seeks straight to the page's start."""
    where = ["key > ?" if after else "key >= ?"]
    if bounded:
        where.append("key < ?")
    if not include_deleted:
        where.append("deleted = 0")
    return f"SELECT {_COLUMNS} FROM records WHERE {' AND '.join(where)} ORDER BY key LIMIT ?"


def _to_record(row: tuple[Any, ...]) -> Record:
    key, seq, stamp, deleted, content_type, chain, value = row
    nodes = tuple(chain.split(",")) if chain else ()
    return Record(key, bytes(value), content_type, Stamp.decode(stamp), bool(deleted), seq, nodes)


def _migrate(cursor: sqlite3.Cursor) -> None:
    """Create a version 1 schema in an empty file, then run the steps up to SCHEMA_VERSION."""
    cursor.execute("CREATE TABLE IF NOT EXISTS backend_state (name TEXT PRIMARY KEY, value)")
    cursor.execute(_READ_STATE_SQL, ("schema_version",))
    rows = cursor.fetchall()
    if not rows:
        for statement in VERSION_1:
            cursor.execute(statement)
    found = version = int(rows[0][0]) if rows else 1
    if version > SCHEMA_VERSION:
        raise StorageFailure(
            f"the database has schema version {version}, written by a newer navistore; this one "
            f"understands versions up to {SCHEMA_VERSION}: upgrade navistore to open it"
        )
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise StorageFailure(f"no migration from schema version {version} to {version + 1}")
        step(cursor)
        version += 1
    if version != found:
        cursor.execute(_WRITE_STATE_SQL, (version, "schema_version"))


def open_connection(connection: sqlite3.Connection, synchronous: str, path: str) -> None:
    """Configure a new connection and bring its schema up to date (the pool's ``cp_openfun``).

    A failure closes the connection, since adbapi would otherwise drop it unclosed, and reports
    a StorageFailure; the next call tries to open again.
    """
    cursor = connection.cursor()
    try:
        # page_size only takes effect in a new file, so it comes before anything is written.
        for pragma in (
            f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
            "PRAGMA page_size = 4096",
            "PRAGMA foreign_keys = OFF",
            f"PRAGMA synchronous = {synchronous.upper()}",
        ):
            cursor.execute(pragma)
            cursor.fetchall()
        (mode,) = cursor.execute("PRAGMA journal_mode = WAL").fetchall()[0]
        if str(mode).lower() != "wal":
            raise StorageFailure(f"{path}: sqlite refused WAL mode (journal_mode={mode})")
        cursor.execute("BEGIN IMMEDIATE")
        _migrate(cursor)
        cursor.close()
        connection.commit()
    except BaseException as exc:
        cursor.close()
        connection.close()
        if isinstance(exc, sqlite3.Error):
            raise StorageFailure(f"cannot open sqlite database {path}: {exc}") from exc
        raise


def transact(connection: sqlite3.Connection, interaction: Callable[..., Any], *args: Any) -> Any:
    """Run ``interaction`` in a transaction on ``connection``, as adbapi's runInteraction does:
    commit when it returns, roll back when it raises."""
    cursor = connection.cursor()
    try:
        result = interaction(cursor, *args)
        connection.commit()
        return result
    except BaseException:
        connection.rollback()
        raise
    finally:
        cursor.close()


def checkpoint(txn: adbapi.Transaction) -> None:
    # PASSIVE: copy what it can without waiting for the writer or readers.
    txn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    txn.fetchall()


def read_record(txn: adbapi.Transaction, key: str) -> Record | None:
    txn.execute(GET_SQL, (key,))
    rows = txn.fetchall()
    return _to_record(rows[0]) if rows else None


def select_records(txn: adbapi.Transaction, sql: str, params: tuple[Any, ...]) -> list[Record]:
    txn.execute(sql, params)
    return [_to_record(row) for row in txn.fetchall()]


def read_state(txn: adbapi.Transaction, name: str) -> Any:
    txn.execute(_READ_STATE_SQL, (name,))
    return txn.fetchall()[0][0]


def write_batch(
    txn: adbapi.Transaction, batch: list[tuple[Record, Expectation]]
) -> list[Record | None]:
    """Decide and write a batch of applies in one transaction, exactly as if one after another.

    Records written earlier in the batch are remembered, so a later apply of the same key is
    decided against them. The seq counter is read once and written back once.
    """
    txn.execute("BEGIN IMMEDIATE")
    first_seq = last_seq = int(read_state(txn, "last_seq"))
    current: dict[str, Record | None] = {}
    results: list[Record | None] = []
    for record, expect in batch:
        stored = current[record.key] if record.key in current else read_record(txn, record.key)
        if not supersedes(record, stored) or not expectation_holds(stored, expect):
            current[record.key] = stored
            results.append(None)
            continue
        last_seq += 1
        chain = ",".join(record.chain)
        row = (last_seq, record.stamp.encode(), int(record.deleted), record.content_type, chain)
        if stored is None:
            txn.execute(_INSERT_SQL, (record.key, *row, record.value))
        else:
            txn.execute(_UPDATE_SQL, (*row, record.value, record.key))
        current[record.key] = new = record.with_seq(last_seq)
        results.append(new)
    if last_seq != first_seq:
        txn.execute(_WRITE_STATE_SQL, (last_seq, "last_seq"))
    return results


def purge(txn: adbapi.Transaction, before_seq: int) -> int:
    txn.execute(PURGE_SQL, (before_seq,))
    return int(txn.rowcount)


def reset(txn: adbapi.Transaction) -> None:
    txn.execute("DELETE FROM records")


def get_meta(txn: adbapi.Transaction, name: str) -> str | None:
    txn.execute("SELECT value FROM meta WHERE name = ?", (name,))
    rows = txn.fetchall()
    return str(rows[0][0]) if rows else None


def set_meta(txn: adbapi.Transaction, name: str, value: str) -> None:
    txn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

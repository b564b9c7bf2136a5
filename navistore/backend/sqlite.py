"""The reference persistent backend: one sqlite file, one writer connection, group commit.

Durability: an acknowledged apply has been committed to the WAL. With ``synchronous=normal``
(the default) it survives a process kill (SIGKILL), but the last commits may be lost on power
loss or an OS crash (the database stays consistent); with ``synchronous=full`` it also survives
power loss (the WAL is fsynced at each commit, before acknowledging).

Why it is built this way:

- sqlite allows one writer at a time, so the backend owns exactly one connection, used from the
  one thread of an :class:`~twisted.enterprise.adbapi.ConnectionPool`. Every statement runs in
  ``runInteraction`` on that thread, so the reactor never blocks on disk.
- A commit (and with ``synchronous=full`` an fsync) is the expensive part of a write, so applies
  are *group committed*: those issued in one reactor turn, or while the previous batch is being
  written, are decided and written in one transaction, and each is acknowledged only after that
  transaction committed.
- Calls reach the connection in the order they were issued: before any other call is sent to the
  pool, the applies still waiting for a batch are sent ahead of it. So the backend behaves like
  the memory backend even for callers that do not wait for one call before making the next.
- ``records`` is a rowid table with the value as its last column: in a ``WITHOUT ROWID`` table
  1 KB values spill to overflow pages on 4 KB pages (measured: -44 % PUT throughput).
- Schema changes are steps in :data:`MIGRATIONS`; a new file is created at version 1 and
  migrated like any old one, so the upgrade path is exercised every time.
- The seq counter lives in ``backend_state`` rather than being ``max(seq)``, so that purging
  tombstones or resetting never lets a seq be reused.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from typing import TYPE_CHECKING, Any, Callable, cast

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from ..clock import Stamp
from ..errors import BackendClosed, BackendError, InvalidRecord, StorageFailure
from ..interfaces import ANY, Expectation, IStorageBackend, expectation_holds, supersedes
from ..keys import prefix_upper_bound
from ..record import Record, check_record
from . import BackendURL, BackendURLError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    _Pending = tuple[Record, Expectation, Deferred[Record | None]]

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SYNCHRONOUS_MODES", "SqliteBackend", "open_sqlite"]

#: The schema version this code writes. Bump it together with a new :data:`MIGRATIONS` step.
SCHEMA_VERSION = 2

#: ``MIGRATIONS[n]`` upgrades a version ``n`` database to ``n + 1``; all steps needed run in one
#: transaction when the connection opens, so an upgrade is never left half done.
MIGRATIONS: dict[int, Callable[[sqlite3.Cursor], None]] = {}


def _add_chain_column(cursor: sqlite3.Cursor) -> None:
    """Version 2: records remember the nodes they passed through (``Record.chain``)."""
    cursor.execute("ALTER TABLE records ADD COLUMN chain TEXT NOT NULL DEFAULT ''")


MIGRATIONS[1] = _add_chain_column

#: The accepted values of the ``synchronous`` option (see the module docstring).
SYNCHRONOUS_MODES = ("normal", "full")

_BUSY_TIMEOUT_MS = 5000
_MAX_LIMIT = 2**62  # sqlite integers are 64-bit

_COLUMNS = "key, seq, stamp, deleted, content_type, chain, value"
_GET_SQL = f"SELECT {_COLUMNS} FROM records WHERE key = ?"
_CHANGES_SQL = f"SELECT {_COLUMNS} FROM records WHERE seq > ? ORDER BY seq LIMIT ?"
_INSERT_SQL = f"INSERT INTO records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
_UPDATE_SQL = (
    "UPDATE records SET seq = ?, stamp = ?, deleted = ?, content_type = ?, chain = ?, value = ?"
    " WHERE key = ?"
)
_PURGE_SQL = "DELETE FROM records WHERE deleted = 1 AND seq < ?"
_READ_STATE_SQL = "SELECT value FROM backend_state WHERE name = ?"
_WRITE_STATE_SQL = "UPDATE backend_state SET value = ? WHERE name = ?"

_VERSION_1 = (
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
        for statement in _VERSION_1:
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


def _open_connection(connection: sqlite3.Connection, synchronous: str, path: str) -> None:
    """Configure a new connection and bring its schema up to date (the pool's ``cp_openfun``).

    A failure closes the connection, since adbapi would otherwise drop it unclosed, and reports
    a StorageFailure; the next call tries to open again.
    """
    cursor = connection.cursor()
    try:
        # page_size only takes effect in a new file, so it comes before anything is written.
        for pragma in (
            f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}",
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


def _read_record(txn: adbapi.Transaction, key: str) -> Record | None:
    txn.execute(_GET_SQL, (key,))
    rows = txn.fetchall()
    return _to_record(rows[0]) if rows else None


def _select_records(txn: adbapi.Transaction, sql: str, params: tuple[Any, ...]) -> list[Record]:
    txn.execute(sql, params)
    return [_to_record(row) for row in txn.fetchall()]


def _read_state(txn: adbapi.Transaction, name: str) -> Any:
    txn.execute(_READ_STATE_SQL, (name,))
    return txn.fetchall()[0][0]


def _write_batch(
    txn: adbapi.Transaction, batch: list[tuple[Record, Expectation]]
) -> list[Record | None]:
    """Decide and write a batch of applies in one transaction, exactly as if one after another.

    Records written earlier in the batch are remembered, so a later apply of the same key is
    decided against them. The seq counter is read once and written back once.
    """
    txn.execute("BEGIN IMMEDIATE")
    first_seq = last_seq = int(_read_state(txn, "last_seq"))
    current: dict[str, Record | None] = {}
    results: list[Record | None] = []
    for record, expect in batch:
        stored = current[record.key] if record.key in current else _read_record(txn, record.key)
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


def _purge(txn: adbapi.Transaction, before_seq: int) -> int:
    txn.execute(_PURGE_SQL, (before_seq,))
    return int(txn.rowcount)


def _reset(txn: adbapi.Transaction) -> None:
    txn.execute("DELETE FROM records")


def _get_meta(txn: adbapi.Transaction, name: str) -> str | None:
    txn.execute("SELECT value FROM meta WHERE name = ?", (name,))
    rows = txn.fetchall()
    return str(rows[0][0]) if rows else None


def _set_meta(txn: adbapi.Transaction, name: str, value: str) -> None:
    txn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))


@implementer(IStorageBackend)
class SqliteBackend:
    """Records in one sqlite file in WAL mode, written by one connection with group commit.

    :param path: the database file; created with its schema if missing. A relative path is
        resolved now, so a later change of working directory (daemonizing) does not move it.
    :param synchronous: ``normal`` or ``full``; see the module docstring for what each promises.
    :param reactor: the reactor running the pool and scheduling flushes (default: the global one).
    """

    kind = "sqlite"
    persistent = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "normal",
        reactor: IReactorTime | None = None,
    ) -> None:
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous={synchronous!r} is not one of {SYNCHRONOUS_MODES}")
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = cast("IReactorTime", global_reactor)
        self.path = os.path.abspath(os.fspath(path))
        self.synchronous = synchronous
        self._reactor = reactor
        self._pool = adbapi.ConnectionPool(
            "sqlite3",
            self.path,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=functools.partial(_open_connection, synchronous=synchronous, path=self.path),
            cp_reactor=reactor,
        )
        self._pending: list[_Pending] = []
        self._flush_call: IDelayedCall | None = None
        self._batches_in_flight = 0
        self._outstanding = 0  # interactions sent to the pool and not yet finished
        self._closed = False
        self._pool_closed = False
        self._close_waiters: list[Deferred[None]] = []

    def __repr__(self) -> str:
        return f"<SqliteBackend {self.path} synchronous={self.synchronous}>"

    def apply(self, record: Record, expect: Expectation = ANY) -> Deferred[Record | None]:
        if self._closed:
            return fail(BackendClosed("apply"))
        try:
            check_record(record)
        except InvalidRecord as exc:
            return fail(exc)
        acknowledged: Deferred[Record | None] = Deferred()
        self._pending.append((record, expect, acknowledged))
        self._schedule_flush()
        return acknowledged

    def _schedule_flush(self) -> None:
        """Flush on the next reactor turn, so that applies issued in this one share a commit;
        while a batch is being written, new applies wait for it and form the next batch."""
        if self._pending and self._flush_call is None and self._batches_in_flight == 0:
            self._flush_call = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        self._send_pending()

    def _send_pending(self) -> None:
        """Send the waiting applies to the pool as one batch, ahead of anything sent later."""
        if self._flush_call is not None:
            self._flush_call.cancel()
            self._flush_call = None
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        self._batches_in_flight += 1
        written = self._interact("apply", _write_batch, [(r, e) for r, e, _ in batch])
        written.addBoth(self._acknowledge, [acknowledged for _, _, acknowledged in batch])
        written.addBoth(self._release)

    def _acknowledge(
        self, result: list[Record | None] | Failure, waiting: list[Deferred[Record | None]]
    ) -> None:
        self._batches_in_flight -= 1
        if isinstance(result, Failure):
            for acknowledged in waiting:
                acknowledged.errback(StorageFailure(str(result.value)))
        else:
            for acknowledged, stored in zip(waiting, result):
                acknowledged.callback(stored)
        self._schedule_flush()

    def _interact(self, operation: str, interaction: Callable[..., Any], *args: Any) -> Deferred:
        self._outstanding += 1
        if self._pool.threadpool.joined:
            # Reactor shutdown stopped the pool (its own trigger): work sent now would be dropped.
            return fail(StorageFailure(f"{operation}: the pool of {self.path} was shut down"))
        done: Deferred[Any] = self._pool.runInteraction(interaction, *args)
        return done.addErrback(self._storage_failure, operation)

    def _run(self, operation: str, interaction: Callable[..., Any], *args: Any) -> Deferred:
        """Run one interaction after every apply issued before it; BackendClosed once closed."""
        if self._closed:
            return fail(BackendClosed(operation))
        self._send_pending()
        return self._interact(operation, interaction, *args).addBoth(self._release)

    def _storage_failure(self, failure: Failure, operation: str) -> Failure:
        if isinstance(failure.value, BackendError):
            return failure
        error = StorageFailure(
            f"sqlite {operation} failed on {self.path}: "
            f"{type(failure.value).__name__}: {failure.value}"
        )
        error.__cause__ = failure.value
        return Failure(error)

    def get(self, key: str) -> Deferred[Record | None]:
        return self._run("get", _read_record, key)

    def scan(
        self,
        prefix: str = "/",
        after: str | None = None,
        limit: int = 1000,
        include_deleted: bool = False,
    ) -> Deferred[list[Record]]:
        from_after = after is not None and after >= prefix
        bound = prefix_upper_bound(prefix)
        params = (after if from_after else prefix, *([] if bound is None else [bound]))
        sql = scan_sql(from_after, bound is not None, include_deleted)
        return self._select("scan", sql, params, limit)

    def changes(self, since: int = 0, limit: int = 1000) -> Deferred[list[Record]]:
        return self._select("changes", _CHANGES_SQL, (since,), limit)

    def _select(
        self, operation: str, sql: str, params: tuple[Any, ...], limit: int
    ) -> Deferred[list[Record]]:
        if limit <= 0 and not self._closed:
            return succeed([])  # sqlite would read LIMIT -1 as "no limit"
        return self._run(operation, _select_records, sql, (*params, min(limit, _MAX_LIMIT)))

    def last_seq(self) -> Deferred[int]:
        return self._run("last_seq", _read_state, "last_seq").addCallback(int)

    def purge_tombstones(self, before_seq: int) -> Deferred[int]:
        return self._run("purge_tombstones", _purge, before_seq)

    def reset(self) -> Deferred[None]:
        return self._run("reset", _reset)

    def get_meta(self, name: str) -> Deferred[str | None]:
        return self._run("get_meta", _get_meta, name)

    def set_meta(self, name: str, value: str) -> Deferred[None]:
        if not self._closed and (not isinstance(name, str) or not isinstance(value, str)):
            return fail(TypeError("meta names and values are text"))
        return self._run("set_meta", _set_meta, name, value)

    def close(self) -> Deferred[None]:
        """Refuse new calls, let every call already made finish, then close the pool."""
        if self._pool_closed:
            return succeed(None)
        closed: Deferred[None] = Deferred()
        self._close_waiters.append(closed)
        if not self._closed:
            self._closed = True
            self._send_pending()
            if self._outstanding == 0:
                self._close_pool()
        return closed

    def _release(self, result: object) -> object:
        self._outstanding -= 1
        if self._closed and self._outstanding == 0:
            # On a later turn, so that callbacks waiting on the last call run before close fires.
            self._reactor.callLater(0, self._close_pool)
        return result

    def _close_pool(self) -> None:
        if self._pool_closed:
            return
        self._pool_closed = True
        try:
            if not self._pool.threadpool.joined:  # not already stopped by reactor shutdown
                self._pool.close()
        finally:
            waiters, self._close_waiters = self._close_waiters, []
            for closed in waiters:
                closed.callback(None)


def open_sqlite(url: BackendURL) -> SqliteBackend:
    """Make a :class:`SqliteBackend` for ``sqlite:///abs/path.db`` or ``sqlite:relative.db``,
    with the option ``?synchronous=normal|full``."""
    url.refuse_unknown_options(("synchronous",))
    synchronous = url.option("synchronous", "normal", SYNCHRONOUS_MODES)
    if not url.location:
        raise BackendURLError(
            f"{url.text}: sqlite: needs a file, e.g. sqlite:///var/lib/navistore/store.db"
        )
    if url.location == ":memory:":
        raise BackendURLError(f"{url.text}: for a store in RAM use memory:")
    return SqliteBackend(url.location, synchronous=synchronous)

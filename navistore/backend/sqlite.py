"""The reference persistent backend: one sqlite file, one writer connection, group commit.

Durability: an acknowledged apply has been committed to the WAL. With ``synchronous=normal``
(the default) it survives a process kill (SIGKILL), but the last commits may be lost on power
loss or an OS crash (the database stays consistent); with ``synchronous=full`` it also survives
power loss (the WAL is fsynced at each commit, before acknowledging).

Why it is built this way:

- sqlite allows one writer at a time, so the backend owns exactly one writing connection. Where
  it runs is the ``writer`` option:

  - ``reactor`` (the default): on the reactor thread. A group commit with
    ``synchronous=normal`` appends to the WAL without an fsync, which costs less than handing
    the batch to a thread and taking its answer back; threads also contend for the GIL. The
    slow, fsync-heavy part of WAL mode is the checkpoint, so automatic checkpoints are off on
    this connection and a PASSIVE checkpoint runs on the pool's thread instead, at most every
    :data:`CHECKPOINT_INTERVAL` seconds while writes come in. With ``synchronous=full`` each
    group commit's fsync runs on the reactor thread: measured, that still beats the thread.
  - ``thread``: in the one thread of an :class:`~twisted.enterprise.adbapi.ConnectionPool`, as
    every call runs in ``runInteraction``; the reactor never waits for a commit. This is the
    way to run on a disk whose commits may stall for long.
- Reads do not hop to that thread: a point read in sqlite's page cache costs microseconds, far
  less than a thread hop, so reads run on the reactor thread: on the writing connection with
  ``writer=reactor``, else on a second, read-only connection (WAL lets it read while the writer
  commits). A read must see every write issued before it and
  none issued after, so each write takes a *ticket* in issue order: a read of a key with a write
  still in flight (or a listing issued while any write is) goes through the pool instead, queued
  behind those writes. :meth:`SqliteBackend.peek` offers the web layer the same choice: the
  answer at once, or WouldBlock.
- A commit (and with ``synchronous=full`` an fsync) is the expensive part of a write, so applies
  are *group committed*: those issued in one reactor turn, or while the previous batch is being
  written, are decided and written in one transaction, and each is acknowledged only after that
  transaction committed.
- Calls reach the connection in the order they were issued: before any other call is sent to the
  pool, the applies still waiting for a batch are sent ahead of it. So the backend behaves like
  the memory backend even for callers that do not wait for one call before making the next.
- ``records`` is a rowid table with the value as its last column: in a ``WITHOUT ROWID`` table
  1 KB values spill to overflow pages on 4 KB pages (measured: -44 % PUT throughput). Each
  apply is one UPSERT statement whose conditions are :func:`~navistore.interfaces.supersedes`
  and :func:`~navistore.interfaces.expectation_holds` in SQL, so that sqlite finds the key once
  (measured with ``bench/bench_sqlite_apply.py``: a quarter less CPU in the group commit).
- The file format (schema, migrations, the SQL of each call) is
  :mod:`navistore.backend.sqlite_schema`. Schema changes are steps in its ``MIGRATIONS``; a new
  file is created at version 1 and migrated like any old one, so the upgrade path is exercised
  every time.
- The seq counter lives in ``backend_state`` rather than being ``max(seq)``, so that purging
  tombstones or resetting never lets a seq be reused.
- The feed under a prefix (:class:`~navistore.interfaces.IPrefixChanges`) is filtered by sqlite
  through the two indexes there are, the primary key's on ``key`` and the one on ``seq``: it
  walks the log while that is cheaper than reading the prefix's keys, else reads those (see
  :func:`~navistore.backend.sqlite_schema.changes_under`). An index on ``(key, seq)`` was
  measured (``bench/bench_prefix_feed.py``, 400,000 keys): it only speeds up the reads of the
  prefix's keys that reject most of them by seq (a wide prefix, quiet since ``since``), by about
  three times, and costs every write one more B-tree entry, 20 % more time per record; this
  backend does without it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import time
from typing import TYPE_CHECKING, Any, Callable, cast

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from navistore.backend import BackendURL, BackendURLError
from navistore.backend import sqlite_schema as schema
from navistore.errors import BackendClosed, BackendError, InvalidRecord, StorageFailure
from navistore.interfaces import (
    ANY,
    Deadline,
    Expectation,
    IBackendStatistics,
    IExpiringRecords,
    IImmediateReads,
    IPrefixChanges,
    ISizedReads,
    IStorageBackend,
    WouldBlock,
)
from navistore.keys import prefix_upper_bound
from navistore.record import Record, check_record
from navistore.tally import BackendStatistics, StorageSizes

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    _Acknowledgements = list[Deferred[Record | None]]

_perf_counter = time.perf_counter

__all__ = [
    "CHECKPOINT_INTERVAL",
    "SYNCHRONOUS_MODES",
    "WRITER_MODES",
    "SqliteBackend",
    "open_sqlite",
]

log = Logger()

#: The accepted values of the ``synchronous`` option (see the module docstring).
SYNCHRONOUS_MODES = ("normal", "full")

#: The accepted values of the ``writer`` option: where the writing connection runs.
WRITER_MODES = ("reactor", "thread")

#: With ``writer=reactor``: the least time between two checkpoints run on the pool's thread.
CHECKPOINT_INTERVAL = 0.5


@implementer(
    IStorageBackend,
    IImmediateReads,
    IPrefixChanges,
    ISizedReads,
    IBackendStatistics,
    IExpiringRecords,
)
class SqliteBackend:
    """Records in one sqlite file in WAL mode, written by one connection with group commit and
    read by another on the reactor thread.

    :param path: the database file; created with its schema if missing. A relative path is
        resolved now, so a later change of working directory (daemonizing) does not move it.
    :param synchronous: ``normal`` or ``full``; see the module docstring for what each promises.
    :param writer: ``reactor`` or ``thread``: where the writing connection runs (see the module
        docstring).
    :param reactor: the reactor running the pool and scheduling flushes (default: the global one).
    """

    kind = "sqlite"
    persistent = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "normal",
        writer: str = "reactor",
        reactor: IReactorTime | None = None,
    ) -> None:
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous={synchronous!r} is not one of {SYNCHRONOUS_MODES}")
        if writer not in WRITER_MODES:
            raise ValueError(f"writer={writer!r} is not one of {WRITER_MODES}")
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = cast("IReactorTime", global_reactor)
        self.path = os.path.abspath(os.fspath(path))
        self.synchronous = synchronous
        self.writer = writer
        self._reactor = reactor
        self._pool = adbapi.ConnectionPool(
            "sqlite3",
            self.path,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=functools.partial(
                schema.open_connection, synchronous=synchronous, path=self.path
            ),
            cp_reactor=reactor,
        )
        # The applies waiting for a batch, as write_batch takes them, and their Deferreds: two
        # lists rather than one of 4-tuples, so that a batch is sent and acknowledged without
        # building a tuple or a list per record (a replicated batch is hundreds of records).
        self._pending: list[tuple[Record, Expectation]] = []
        self._acknowledgements: _Acknowledgements = []
        self._pending_ticket = 0  # the ticket of the last apply in _pending
        # Read path (see the module docstring): tickets of record-changing calls in issue order.
        self._reader: sqlite3.Connection | None = None
        self._reader_failed = False
        self._schema_ready = False  # the pool connection opened (and migrated) the file once
        self._issued = 0  # the ticket of the last record-changing call issued
        self._done = 0  # the ticket of the last one finished (they finish in ticket order)
        self._barrier = 0  # the ticket of the last reset or purge, which change any key
        # While a reset or purge runs (in chunks): fires when it is over.
        self._changes_over: Deferred[None] | None = None
        self._key_tickets: dict[str, int] = {}  # keys with an apply in flight: its ticket
        # writer=reactor: the writing connection, and the checkpoints run on the pool's thread.
        self._writer: sqlite3.Connection | None = None
        self._checkpoint_due = 0.0
        self._checkpointing = False
        self._flush_call: IDelayedCall | None = None
        self._batches_in_flight = 0
        self._outstanding = 0  # interactions sent to the pool and not yet finished
        self._closed = False
        self._pool_closed = False
        self._close_waiters: list[Deferred[None]] = []
        self.statistics = BackendStatistics()

    def __repr__(self) -> str:
        return f"<SqliteBackend {self.path} synchronous={self.synchronous} writer={self.writer}>"

    def apply(self, record: Record, expect: Expectation = ANY) -> Deferred[Record | None]:
        if self._closed:
            return fail(BackendClosed("apply"))
        try:
            check_record(record)
        except InvalidRecord as exc:
            return fail(exc)
        acknowledged: Deferred[Record | None] = Deferred()
        self._issued = self._pending_ticket = ticket = self._issued + 1
        self._key_tickets[record.key] = ticket
        self._pending.append((record, expect))
        self._acknowledgements.append(acknowledged)
        if self._flush_call is None:
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
        if not self._pending or self._changes_over is not None:
            return  # (a purge or reset under way sends them when it is over)
        batch, self._pending = self._pending, []
        waiting, self._acknowledgements = self._acknowledgements, []
        self._batches_in_flight += 1
        started = _perf_counter()
        written = self._interact("apply", schema.write_batch, batch)
        written.addBoth(self._acknowledge, batch, waiting, self._pending_ticket, started)
        written.addBoth(self._release)

    def _acknowledge(
        self,
        result: list[Record | None] | Failure,
        batch: list[tuple[Record, Expectation]],
        waiting: _Acknowledgements,
        last_ticket: int,
        started: float,
    ) -> None:
        """Fire the Deferreds of a written batch (``last_ticket``: its last apply's ticket)."""
        statistics = self.statistics
        statistics.commit_seconds.observe(_perf_counter() - started)
        statistics.batch_sizes.observe(len(batch))
        self._batches_in_flight -= 1
        # A key's ticket up to last_ticket is this batch's (earlier batches removed theirs);
        # a later one is an apply still waiting.
        tickets = self._key_tickets
        for record, _ in batch:
            if tickets.get(record.key, last_ticket + 1) <= last_ticket:
                del tickets[record.key]
        self._finished(last_ticket)
        statistics.commit_error = None
        if isinstance(result, Failure):
            statistics.commit_error = str(result.value)
            for acknowledged in waiting:
                acknowledged.errback(StorageFailure(str(result.value)))
        else:
            for acknowledged, stored in zip(waiting, result):
                acknowledged.callback(stored)
        self._schedule_flush()

    def _interact(self, operation: str, interaction: Callable[..., Any], *args: Any) -> Deferred:
        self._outstanding += 1
        if self.writer == "reactor":
            return self._interact_here(operation, interaction, *args)
        if self._pool.threadpool.joined:
            # Reactor shutdown stopped the pool (its own trigger): work sent now would be dropped.
            return fail(StorageFailure(f"{operation}: the pool of {self.path} was shut down"))
        done: Deferred[Any] = self._pool.runInteraction(interaction, *args)
        return done.addCallbacks(self._pool_ready, self._storage_failure, errbackArgs=(operation,))

    def _pool_ready(self, result: object) -> object:
        self._schema_ready = True
        return result

    # -- writer=reactor -----------------------------------------------------------------------

    def _interact_here(
        self, operation: str, interaction: Callable[..., Any], *args: Any
    ) -> Deferred:
        """Run an interaction now, on the reactor thread's writing connection."""
        try:
            result = schema.transact(self._writing_connection(), interaction, *args)
        except Exception:
            return fail(self._storage_failure(Failure(), operation))
        self._schema_ready = True
        self._maybe_checkpoint()
        return succeed(result)

    def _writing_connection(self) -> sqlite3.Connection:
        if self._writer is None:
            connection = sqlite3.connect(self.path)
            schema.open_connection(connection, self.synchronous, self.path)
            connection.execute("PRAGMA wal_autocheckpoint = 0").fetchall()
            self._writer = connection
        return self._writer

    def _maybe_checkpoint(self) -> None:
        """Checkpoint the WAL on the pool's thread, at most every CHECKPOINT_INTERVAL seconds
        and one at a time, so that the WAL stays small without the reactor doing the I/O."""
        now = self._reactor.seconds()
        if self._checkpointing or now < self._checkpoint_due or self._pool.threadpool.joined:
            return
        self._checkpointing = True
        self._checkpoint_due = now + CHECKPOINT_INTERVAL
        self._outstanding += 1
        done: Deferred[None] = self._pool.runInteraction(schema.checkpoint)
        done.addErrback(self._checkpoint_failed).addBoth(self._checkpointed)

    def _checkpoint_failed(self, failure: Failure) -> None:
        log.warn("{path}: WAL checkpoint failed: {error}", path=self.path, error=failure.value)

    def _checkpointed(self, _result: object) -> None:
        self._checkpointing = False
        self._release(None)

    def _run(self, operation: str, interaction: Callable[..., Any], *args: Any) -> Deferred:
        """Run one interaction after every apply issued before it (and after a purge or reset
        under way); BackendClosed once closed."""
        if self._closed:
            return fail(BackendClosed(operation))
        if self._changes_over is not None:
            self._outstanding += 1  # closing waits for it

            def go_on(_: None) -> Deferred:
                self._send_pending()  # the applies issued before this call go first
                return self._interact(operation, interaction, *args).addBoth(self._release)

            return _after(self._changes_over).addCallback(go_on).addBoth(self._release)
        self._send_pending()
        return self._interact(operation, interaction, *args).addBoth(self._release)

    def _storage_failure(self, failure: Failure, operation: str) -> Failure:
        if not isinstance(failure.value, BackendClosed):
            self.statistics.errors += 1
        if isinstance(failure.value, BackendError):
            return failure
        error = StorageFailure(
            f"sqlite {operation} failed on {self.path}: "
            f"{type(failure.value).__name__}: {failure.value}"
        )
        error.__cause__ = failure.value
        return Failure(error)

    def _changing(self, operation: str, interaction: Callable[..., Any], *args: Any) -> Deferred:
        """Run a call that may change any record (reset, purge) in transactions of
        :data:`~navistore.backend.sqlite_schema.CHANGE_CHUNK` records, one per reactor turn,
        until one removes fewer; every call issued after it waits until it is over (applies
        form the next batch, reads and meta calls queue), so none sees it half done."""
        if self._closed:
            return fail(BackendClosed(operation))
        self._send_pending()
        self._issued += 1
        self._barrier = ticket = self._issued
        self._batches_in_flight += 1  # applies issued meanwhile wait for it
        self._outstanding += 1
        previous = self._changes_over
        over: Deferred[None] = Deferred()
        self._changes_over = over
        done = Deferred.fromCoroutine(self._in_chunks(previous, operation, interaction, *args))

        def finished(result: object) -> object:
            self._batches_in_flight -= 1
            self._finished(ticket)
            if self._changes_over is over:
                self._changes_over = None
            over.callback(None)
            self._schedule_flush()
            return result

        return done.addBoth(finished).addBoth(self._release)

    async def _in_chunks(
        self,
        previous: Deferred[None] | None,
        operation: str,
        interaction: Callable[..., Any],
        *args: Any,
    ) -> int:
        if previous is not None:
            await _after(previous)
        total = 0
        while True:
            removed = int(
                await self._interact(operation, interaction, *args, schema.CHANGE_CHUNK).addBoth(
                    self._release
                )
            )
            total += removed
            if removed < schema.CHANGE_CHUNK:
                return total
            await deferLater(self._reactor, 0, lambda: None)  # let other connections in

    def _finished_with(self, result: object, ticket: int) -> object:
        self._finished(ticket)
        return result

    def _finished(self, ticket: int) -> None:
        """Calls up to ``ticket`` are done (committed or failed): the reader sees their effect."""
        self._done = max(self._done, ticket)

    # -- the read path ----------------------------------------------------------------------

    def _reader_connection(self) -> sqlite3.Connection | None:
        """The reactor thread's read-only connection, opened once the pool made the schema;
        with writer=reactor, the writing connection (it is never mid-transaction between calls,
        and reads its own writes)."""
        if self._writer is not None:
            return self._writer
        if self._reader is None and self._schema_ready and not self._reader_failed:
            try:
                reader = sqlite3.connect(self.path, isolation_level=None)
                reader.execute("PRAGMA query_only = ON")
            except sqlite3.Error as exc:
                self._reader_failed = True
                log.warn(
                    "{path}: reads go through the writer thread: {error}",
                    path=self.path,
                    error=str(exc),
                )
                return None
            self._reader = reader
        return self._reader

    def _read(self, operation: str, query: Callable[..., Any], *args: Any) -> Any:
        """Run ``query`` on the reader now; WouldBlock when only the pool can answer."""
        reader = self._reader_connection()
        if reader is None:
            raise WouldBlock(operation)
        cursor = reader.cursor()
        try:
            return query(cursor, *args)
        except sqlite3.OperationalError as exc:
            # Busy, or a failure the pool's connection will report in full.
            raise WouldBlock(operation) from exc
        finally:
            cursor.close()

    def _read_after(
        self,
        need: int,
        operation: str,
        query: Callable[..., Any],
        *args: Any,
        here: Callable[..., Any] | None = None,
    ) -> Deferred:
        """Read on the reader when the calls up to ticket ``need`` are done; else (or when the
        reader cannot answer) through the pool, queued behind them and before any later write.

        :param here: what to run on the reader instead of ``query``: one that raises
            :class:`~navistore.backend.sqlite_schema.LargeValue` rather than read a value over
            ``LARGE_VALUE`` (tens of milliseconds of the reactor); ``query`` then reads it all
            on the pool's thread, which sqlite lets run beside the reactor.
        """
        if self._closed:
            return fail(BackendClosed(operation))
        if need <= self._done:
            try:
                return succeed(self._read(operation, here or query, *args))
            except WouldBlock:
                pass
            except schema.LargeValue:
                return self._read_in_pool(operation, query, *args)
        return self._run(operation, query, *args)

    def peek(self, key: str) -> Record | None:
        if self._closed:
            raise BackendClosed("peek")
        if self._key_tickets.get(key, 0) > self._done or self._barrier > self._done:
            raise WouldBlock(key)
        try:
            record: Record | None = self._read("peek", schema.read_small_record, key)
        except schema.LargeValue:
            raise WouldBlock(key) from None
        return record

    def get(self, key: str) -> Deferred[Record | None]:
        need = max(self._key_tickets.get(key, 0), self._barrier)
        return self._read_after(need, "get", schema.read_record, key, here=schema.read_small_record)

    def _read_in_pool(self, operation: str, query: Callable[..., Any], *args: Any) -> Deferred:
        """Read on the pool's thread now, even with writer=reactor: every write the read
        needs is committed already, and WAL lets the pool's connection read beside the
        writer."""
        if self.writer == "thread" or self._pool.threadpool.joined:
            return self._run(operation, query, *args)
        self._outstanding += 1
        done: Deferred[Any] = self._pool.runInteraction(query, *args)
        done.addCallbacks(self._pool_ready, self._storage_failure, errbackArgs=(operation,))
        return done.addBoth(self._release)

    def scan(
        self,
        prefix: str = "/",
        after: str | None = None,
        limit: int = 1000,
        include_deleted: bool = False,
        max_bytes: int | None = None,
    ) -> Deferred[list[Record]]:
        from_after = after is not None and after >= prefix
        bound = prefix_upper_bound(prefix)
        params = (after if from_after else prefix, *([] if bound is None else [bound]))
        sql = schema.scan_sql(from_after, bound is not None, include_deleted)
        return self._select("scan", sql, params, limit, max_bytes)

    def changes(
        self, since: int = 0, limit: int = 1000, max_bytes: int | None = None
    ) -> Deferred[list[Record]]:
        return self._select("changes", schema.CHANGES_SQL, (since,), limit, max_bytes)

    def changes_under(
        self, prefix: str = "/", since: int = 0, limit: int = 1000, max_bytes: int | None = None
    ) -> Deferred[list[Record]]:
        """The feed under ``prefix`` through the key index or the seq index, whichever reads
        fewer rows (:func:`~navistore.backend.sqlite_schema.changes_under`), filtered in sqlite:
        no row outside the prefix is decoded in Python."""
        if limit <= 0 and not self._closed:
            return succeed([])
        bounded = min(limit, schema.MAX_LIMIT)
        bound = prefix_upper_bound(prefix)
        return self._read_after(
            self._issued,
            "changes_under",
            schema.changes_under,
            prefix,
            bound,
            since,
            bounded,
            max_bytes,
        )

    def _select(
        self,
        operation: str,
        sql: str,
        params: tuple[Any, ...],
        limit: int,
        max_bytes: int | None = None,
    ) -> Deferred[list[Record]]:
        if limit <= 0 and not self._closed:
            return succeed([])  # sqlite would read LIMIT -1 as "no limit"
        bounded = (*params, min(limit, schema.MAX_LIMIT))
        return self._read_after(
            self._issued,
            operation,
            schema.select_records,
            sql,
            bounded,
            max_bytes,
            here=schema.select_small_records,
        )

    def expiring(self, limit: int = 100) -> Deferred[list[Deadline]]:
        if limit <= 0 and not self._closed:
            return succeed([])
        bounded = min(limit, schema.MAX_LIMIT)
        return self._read_after(self._issued, "expiring", schema.expiring, bounded)

    def last_seq(self) -> Deferred[int]:
        return self._read_after(
            self._issued, "last_seq", schema.read_state, "last_seq"
        ).addCallback(int)

    def measure_sizes(self) -> Deferred[StorageSizes]:
        """Count live records and tombstones on the pool's thread (a pass over the table) and
        take the file's and the WAL's size: see :class:`~navistore.interfaces.IBackendStatistics`.
        """

        def measured(counts: tuple[int, int]) -> StorageSizes:
            on_disk = 0
            for path in (self.path, self.path + "-wal"):
                with contextlib.suppress(OSError):  # no WAL yet
                    on_disk += os.path.getsize(path)
            sizes = StorageSizes(*counts, on_disk, self._reactor.seconds())
            self.statistics.sizes = sizes
            return sizes

        if self._closed:
            return fail(BackendClosed("measure_sizes"))
        counted: Deferred[tuple[int, int]] = self._read_in_pool(
            "measure_sizes", schema.count_records
        )
        return counted.addCallback(measured)

    def purge_tombstones(self, before_seq: int) -> Deferred[int]:
        return self._changing("purge_tombstones", schema.purge, before_seq)

    def reset(self) -> Deferred[None]:
        return self._changing("reset", schema.reset).addCallback(lambda _: None)

    def get_meta(self, name: str) -> Deferred[str | None]:
        return self._run("get_meta", schema.get_meta, name)

    def set_meta(self, name: str, value: str) -> Deferred[None]:
        if not self._closed and (not isinstance(name, str) or not isinstance(value, str)):
            return fail(TypeError("meta names and values are text"))
        return self._run("set_meta", schema.set_meta, name, value)

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
        for connection in (self._reader, self._writer):
            if connection is not None:
                connection.close()
        self._reader = self._writer = None
        try:
            if not self._pool.threadpool.joined:  # not already stopped by reactor shutdown
                self._pool.close()
        finally:
            waiters, self._close_waiters = self._close_waiters, []
            for closed in waiters:
                closed.callback(None)


def check_sqlite(url: BackendURL) -> None:
    """Refuse a ``sqlite:`` URL that cannot work, without opening anything: unknown options or
    values, no file, or a file this process could not write (or create, with its journal files
    beside it). Run while the options are parsed, so such a start fails before it binds a port.
    """
    url.refuse_unknown_options(("synchronous", "writer"))
    url.option("synchronous", "normal", SYNCHRONOUS_MODES)
    url.option("writer", "reactor", WRITER_MODES)
    if not url.location:
        raise BackendURLError(
            f"{url.text}: sqlite: needs a file, e.g. sqlite:///var/lib/navistore/store.db"
        )
    if url.location == ":memory:":
        raise BackendURLError(f"{url.text}: for a store in RAM use memory:")
    path = os.path.abspath(url.location)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise BackendURLError(f"{url.text}: the directory {directory} does not exist")
    if os.path.isdir(path):
        raise BackendURLError(f"{url.text}: {path} is a directory, not a database file")
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        raise BackendURLError(f"{url.text}: {path} cannot be read and written by this process")
    # WAL mode keeps -wal and -shm files beside the database: the directory must be writable.
    if not os.access(directory, os.W_OK | os.X_OK):
        raise BackendURLError(f"{url.text}: the directory {directory} is not writable")


def open_sqlite(url: BackendURL) -> SqliteBackend:
    """Make a :class:`SqliteBackend` for ``sqlite:///abs/path.db`` or ``sqlite:relative.db``,
    with the options ``?synchronous=normal|full`` and ``?writer=reactor|thread``."""
    check_sqlite(url)
    synchronous = url.option("synchronous", "normal", SYNCHRONOUS_MODES)
    writer = url.option("writer", "reactor", WRITER_MODES)
    return SqliteBackend(url.location, synchronous=synchronous, writer=writer)


def _after(event: Deferred[None]) -> Deferred[None]:
    """A Deferred firing once ``event`` has, without taking its result from other waiters."""
    waited: Deferred[None] = Deferred()

    def passed_on(result: object) -> object:
        waited.callback(None)
        return result

    event.addBoth(passed_on)
    return waited

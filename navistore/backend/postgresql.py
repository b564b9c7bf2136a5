"""Records in a PostgreSQL database, through psycopg 3 in one adbapi thread, with group commit.

``--backend postgresql://user:password@host:port/dbname`` (or ``postgres://``); the options are
libpq's (:data:`~navistore.backend.postgresql_url.LIBPQ_OPTIONS`). ``pip install
'navistore[postgresql]'`` brings psycopg. The schema and its SQL are
:mod:`navistore.backend.postgresql_schema`; the feed under a prefix is
:mod:`navistore.backend.postgresql_feed`.

Durability: an apply is acknowledged once the transaction that wrote it has committed, with
``synchronous_commit`` as the server has it (``on``, PostgreSQL's default: the commit is flushed
to the WAL on disk, and with synchronous standbys configured, to theirs too); a session whose
server says ``off`` sets it ``on``. A write whose connection breaks before the commit is
answered is reported as a :class:`~navistore.errors.StorageFailure`: it may or may not have been
committed, and applying it again is harmless (applies are idempotent by stamp).

Why it is built this way:

- One connection in one pool thread: every call reaches the database in the order it was
  issued, so a read sees every write issued before it, as with the memory backend, and no read
  ever runs on the reactor thread (a network round trip would stall it). Before any other call
  is sent, the applies still waiting for a batch are sent ahead of it.
- Group commit: the applies issued in one reactor turn, or while the previous batch is being
  written, go to the database as one statement (one transaction, one round trip), up to
  :data:`~navistore.backend.postgresql_schema.BATCH_RECORDS` applies or about
  :data:`~navistore.backend.postgresql_schema.BATCH_BYTES` of values; each is acknowledged only
  after that commit.
- Seqs are assigned by the database, in the writing transaction, from a counter row it locks:
  nothing is cached here, so two backends over one database stay correct.
- Connection loss fails the call in progress with a StorageFailure (503); the pool then drops
  the connection (``cp_reconnect``, checked with ``SELECT 1``) and the next call connects again.
- There is no :class:`~navistore.interfaces.IImmediateReads`: no point read over a network is
  immediate; the node uses ``get``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, cast

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from navistore.backend import BackendURL
from navistore.backend import postgresql_atomic as atomic
from navistore.backend import postgresql_schema as schema
from navistore.backend.postgresql_feed import changes_under
from navistore.backend.postgresql_notify import Listener, apply_all_and_notify, write_and_notify
from navistore.backend.postgresql_url import (
    Target,
    import_psycopg,
    open_connection,
    parse_target,
)
from navistore.errors import BackendClosed, BackendError, InvalidRecord, StorageFailure
from navistore.interfaces import (
    ANY,
    AllOrNothing,
    Deadline,
    Expectation,
    IAtomicApply,
    IBackendStatistics,
    IExpiringRecords,
    IExternalWrites,
    IPrefixChanges,
    ISizedReads,
    IStorageBackend,
    check_atomic_items,
)
from navistore.keys import prefix_upper_bound
from navistore.record import Record, check_record
from navistore.tally import BackendStatistics, StorageSizes

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["PostgresBackend", "check_postgresql", "open_postgresql"]

_perf_counter = time.perf_counter

log = Logger()


@implementer(
    IStorageBackend,
    IExternalWrites,
    IPrefixChanges,
    ISizedReads,
    IBackendStatistics,
    IExpiringRecords,
    IAtomicApply,
)
class PostgresBackend:
    """Records in a PostgreSQL database, written with group commit by one pooled connection.

    :param target: where to connect (:func:`~navistore.backend.postgresql_url.parse_target`).
    :param reactor: the reactor running the pool and scheduling flushes (default: the global one).
    """

    kind = "postgresql"
    persistent = True

    def __init__(self, target: Target, *, reactor: IReactorTime | None = None) -> None:
        import_psycopg()
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = cast("IReactorTime", global_reactor)
        self.target = target
        self._reactor = reactor
        self._pool = adbapi.ConnectionPool(
            "psycopg",
            cp_min=1,
            cp_max=1,
            cp_reconnect=True,
            cp_good_sql="SELECT 1",
            cp_noisy=False,
            cp_openfun=open_connection,
            cp_reactor=reactor,
            **target.connect,
        )
        self._pending: list[tuple[Record, Expectation]] = []
        self._acknowledgements: list[Deferred[Record | None]] = []
        self._flush_call: IDelayedCall | None = None
        self._batches_in_flight = 0
        self._outstanding = 0  # interactions sent to the pool and not yet finished
        self._closed = False
        self._pool_closed = False
        self._close_waiters: list[Deferred[None]] = []
        self.statistics = BackendStatistics()
        self._external: list[Callable[[int], None]] = []
        self._listener: Listener | None = None

    def __repr__(self) -> str:
        return f"<PostgresBackend {self.target.display}>"

    # -- writes -----------------------------------------------------------------------------

    def apply(self, record: Record, expect: Expectation = ANY) -> Deferred[Record | None]:
        if self._closed:
            return fail(BackendClosed("apply"))
        try:
            check_record(record)
        except InvalidRecord as exc:
            return fail(exc)
        acknowledged: Deferred[Record | None] = Deferred()
        self._pending.append((record, expect))
        self._acknowledgements.append(acknowledged)
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
        """Send every waiting apply to the pool, in batches, ahead of anything sent later."""
        if self._flush_call is not None:
            self._flush_call.cancel()
            self._flush_call = None
        while self._pending:
            count, size = 0, 0
            for record, _ in self._pending:
                if count and (count == schema.BATCH_RECORDS or size >= schema.BATCH_BYTES):
                    break
                count += 1
                size += len(record.value)
            batch, self._pending = self._pending[:count], self._pending[count:]
            waiting = self._acknowledgements[:count]
            self._acknowledgements = self._acknowledgements[count:]
            self._batches_in_flight += 1
            started = _perf_counter()
            written = self._interact("apply", write_and_notify, batch)
            written.addBoth(self._acknowledge, waiting, started)
            written.addBoth(self._release)

    def _acknowledge(
        self,
        result: list[Record | None] | Failure,
        waiting: list[Deferred[Record | None]],
        started: float,
    ) -> None:
        statistics = self.statistics
        statistics.commit_seconds.observe(_perf_counter() - started)
        statistics.batch_sizes.observe(len(waiting))
        self._batches_in_flight -= 1
        statistics.commit_error = None
        if isinstance(result, Failure):
            statistics.commit_error = str(result.value)
            for acknowledged in waiting:
                acknowledged.errback(StorageFailure(str(result.value)))
        else:
            for acknowledged, stored in zip(waiting, result):
                acknowledged.callback(stored)
        self._schedule_flush()

    def apply_all(self, items: atomic.AtomicItems) -> Deferred[AllOrNothing]:
        """Store several records all or nothing, decided after every apply issued before
        (:mod:`~navistore.backend.postgresql_atomic`): fire with the stored records and None,
        or with no record and the index of the first item that did not hold."""
        if self._closed:
            return fail(BackendClosed("apply_all"))
        try:
            check_atomic_items(items)
        except InvalidRecord as exc:
            return fail(exc)
        done: Deferred[tuple[list[Record], int | None]] = self._run(
            "apply_all", apply_all_and_notify, list(items)
        )
        return done.addCallback(lambda found: AllOrNothing(tuple(found[0]), found[1]))

    # -- writes through other nodes ----------------------------------------------------------

    def subscribe_external(self, callback: Callable[[int], None]) -> Callable[[], None]:
        """Call ``callback(newest_seq)`` after writes through any node over this database
        (:mod:`~navistore.backend.postgresql_notify`); the listen connection is opened by the
        first subscriber and closed with the backend."""
        self._external.append(callback)
        if self._listener is None and not self._closed:
            self._listener = Listener(
                self.target.connect, cast("Any", self._reactor), self._announce_external
            )
            self._listener.start()

        def unsubscribe() -> None:
            if callback in self._external:
                self._external.remove(callback)

        return unsubscribe

    def _announce_external(self, seq: int) -> None:
        for callback in list(self._external):
            try:
                callback(seq)
            except Exception:
                log.failure("external-write callback {callback!r} failed", callback=callback)

    # -- running interactions ---------------------------------------------------------------

    def _interact(self, operation: str, interaction: Callable[..., Any], *args: Any) -> Deferred:
        self._outstanding += 1
        if self._pool.threadpool.joined:
            # Reactor shutdown stopped the pool (its own trigger): work sent now would be dropped.
            return fail(StorageFailure(f"{operation}: the pool of {self.target.display} is shut"))
        done: Deferred[Any] = self._pool.runInteraction(interaction, *args)
        return done.addErrback(self._storage_failure, operation)

    def _run(self, operation: str, interaction: Callable[..., Any], *args: Any) -> Deferred:
        """Run one interaction after every apply issued before it; BackendClosed once closed."""
        if self._closed:
            return fail(BackendClosed(operation))
        self._send_pending()
        return self._interact(operation, interaction, *args).addBoth(self._release)

    def _storage_failure(self, failure: Failure, operation: str) -> Failure:
        if not isinstance(failure.value, BackendClosed):
            self.statistics.errors += 1
        if isinstance(failure.value, BackendError):
            return failure
        error = StorageFailure(
            f"postgresql {operation} failed on {self.target.display}: "
            f"{type(failure.value).__name__}: {failure.value}"
        )
        error.__cause__ = failure.value
        return Failure(error)

    # -- reads ------------------------------------------------------------------------------

    def get(self, key: str) -> Deferred[Record | None]:
        return self._run("get", schema.read_record, key)

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
        return self._select("scan", sql, params, "key", limit, max_bytes)

    def changes(
        self, since: int = 0, limit: int = 1000, max_bytes: int | None = None
    ) -> Deferred[list[Record]]:
        return self._select("changes", schema.CHANGES_SQL, (since,), "seq", limit, max_bytes)

    def changes_under(
        self, prefix: str = "/", since: int = 0, limit: int = 1000, max_bytes: int | None = None
    ) -> Deferred[list[Record]]:
        """The feed under ``prefix`` through the key index or the seq index, whichever reads
        fewer rows (:func:`~navistore.backend.postgresql_feed.changes_under`)."""
        if limit <= 0 and not self._closed:
            return succeed([])
        bounded = min(limit, schema.MAX_LIMIT)
        bound = prefix_upper_bound(prefix)
        return self._run("changes_under", changes_under, prefix, bound, since, bounded, max_bytes)

    def _select(
        self,
        operation: str,
        sql: str,
        params: tuple[Any, ...],
        order: str,
        limit: int,
        max_bytes: int | None,
    ) -> Deferred[list[Record]]:
        if limit <= 0 and not self._closed:
            return succeed([])
        bounded = (*params, min(limit, schema.MAX_LIMIT))
        return self._run(operation, schema.select_records, sql, bounded, order, max_bytes)

    def expiring(self, limit: int = 100) -> Deferred[list[Deadline]]:
        if limit <= 0 and not self._closed:
            return succeed([])
        return self._run("expiring", schema.expiring, min(limit, schema.MAX_LIMIT))

    def last_seq(self) -> Deferred[int]:
        return self._run("last_seq", schema.read_state, "last_seq")

    def measure_sizes(self) -> Deferred[StorageSizes]:
        """Count live records and tombstones (a pass over the table, on the pool's thread and
        the server) and take the size of the table with its indexes and TOAST."""

        def measured(counts: tuple[int, int, int]) -> StorageSizes:
            sizes = StorageSizes(*counts, self._reactor.seconds())
            self.statistics.sizes = sizes
            return sizes

        return self._run("measure_sizes", schema.count_records).addCallback(measured)

    # -- whole-store changes and meta data --------------------------------------------------

    def purge_tombstones(self, before_seq: int) -> Deferred[int]:
        return self._run("purge_tombstones", schema.purge, before_seq)

    def reset(self) -> Deferred[None]:
        return self._run("reset", schema.reset).addCallback(lambda _: None)

    def get_meta(self, name: str) -> Deferred[str | None]:
        return self._run("get_meta", schema.get_meta, name)

    def set_meta(self, name: str, value: str) -> Deferred[None]:
        if not self._closed and (not isinstance(name, str) or not isinstance(value, str)):
            return fail(TypeError("meta names and values are text"))
        return self._run("set_meta", schema.set_meta, name, value)

    # -- closing ----------------------------------------------------------------------------

    def close(self) -> Deferred[None]:
        """Refuse new calls, let every call already made finish, then close the pool."""
        if self._pool_closed:
            return succeed(None)
        closed: Deferred[None] = Deferred()
        self._close_waiters.append(closed)
        if not self._closed:
            self._closed = True
            self._external.clear()
            if self._listener is not None:
                listener, self._listener = self._listener, None
                stopped = listener.stop()
                closed.addCallback(lambda _: stopped)
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


def check_postgresql(url: BackendURL) -> None:
    """Refuse a ``postgresql:`` URL that cannot work, without connecting: unknown options or
    values, no database name, or no psycopg to connect with."""
    parse_target(url)
    import_psycopg()


def open_postgresql(url: BackendURL) -> PostgresBackend:
    """Make a :class:`PostgresBackend` for ``postgresql://user:password@host:port/dbname``."""
    check_postgresql(url)
    return PostgresBackend(parse_target(url))

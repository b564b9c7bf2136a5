"""The sqlite file format and the SQL the backend runs: schema, migrations, and one function per
call, each taking a cursor (an adbapi Transaction, or a cursor on the reactor thread's connection).

Kept apart from :mod:`navistore.backend.sqlite`, which decides *where and when* these run (which
connection, which thread, which batch); this module is only *what* runs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Callable, Union

from twisted.enterprise import adbapi

from navistore.clock import Stamp
from navistore.errors import StorageFailure
from navistore.interfaces import (
    ABSENT,
    ANY,
    AllOrNothing,
    AtomicItem,
    Deadline,
    Expectation,
    expectation_holds,
    stored_size,
    supersedes,
)
from navistore.protocol.records import replaces_from_text, replaces_text
from navistore.record import Record

__all__ = [
    "BUSY_TIMEOUT_MS",
    "CHANGES_SQL",
    "CHANGE_CHUNK",
    "GET_SQL",
    "LARGE_VALUE",
    "MAX_LIMIT",
    "MIGRATIONS",
    "PREFIX_SCAN_BUDGET",
    "PURGE_SQL",
    "SCHEMA_VERSION",
    "UPSERT",
    "VERSION_1",
    "AtomicGroup",
    "BatchEntry",
    "BatchResult",
    "LargeValue",
    "changes_under",
    "changes_under_sql",
    "checkpoint",
    "expiring",
    "get_meta",
    "open_connection",
    "purge",
    "read_record",
    "read_small_record",
    "read_state",
    "reset",
    "scan_sql",
    "select_records",
    "select_small_records",
    "set_meta",
    "transact",
    "write_batch",
]

#: The schema version this code writes. Bump it together with a new :data:`MIGRATIONS` step.
SCHEMA_VERSION = 4

#: ``MIGRATIONS[n]`` upgrades a version ``n`` database to ``n + 1``; all steps needed run in one
#: transaction when the connection opens, so an upgrade is never left half done.
MIGRATIONS: dict[int, Callable[[sqlite3.Cursor], None]] = {}


def _add_chain_column(cursor: sqlite3.Cursor) -> None:
    """Version 2: records remember the nodes they passed through (``Record.chain``)."""
    cursor.execute("ALTER TABLE records ADD COLUMN chain TEXT NOT NULL DEFAULT ''")


MIGRATIONS[1] = _add_chain_column


def _add_expiry_and_flags(cursor: sqlite3.Cursor) -> None:
    """Version 3: records carry a TTL's deadline and Consul's flags (``Record.expires_ms``,
    ``Record.flags``), and the live records that expire are indexed by their deadline.

    Adding a column with a constant default rewrites no row, and the index covers only the
    records that have a deadline (none, in a file from version 2), so the upgrade is instant
    whatever the size of the file.
    """
    cursor.execute("ALTER TABLE records ADD COLUMN expires INTEGER")
    cursor.execute("ALTER TABLE records ADD COLUMN flags INTEGER NOT NULL DEFAULT 0")
    cursor.execute(_EXPIRY_INDEX_SQL)


MIGRATIONS[2] = _add_expiry_and_flags


def _add_replaces(cursor: sqlite3.Cursor) -> None:
    """Version 4: records carry what their writer had seen of the key (``Record.replaces``,
    the stamps joined by ``,``), which tells a concurrent write from a later one. A constant
    default rewrites no row: instant whatever the size of the file."""
    cursor.execute("ALTER TABLE records ADD COLUMN replaces TEXT NOT NULL DEFAULT ''")


MIGRATIONS[3] = _add_replaces

_EXPIRY_INDEX_SQL = (
    "CREATE INDEX records_by_expiry ON records (expires, key)"
    " WHERE expires IS NOT NULL AND deleted = 0"
)
#: Flags are unsigned 64-bit numbers; sqlite's integers are signed: the upper half is stored
#: below zero (two's complement), and read back above.
_FLAGS_WRAP = 2**64
_FLAGS_SIGNED = 2**63

#: How long a connection waits for another's lock before failing.
BUSY_TIMEOUT_MS = 5000
#: The largest LIMIT a query passes (sqlite integers are 64-bit).
MAX_LIMIT = 2**62
#: How many changes the first window of :func:`changes_under`'s walk holds (and how many keys
#: under a prefix make it wide enough to walk at all). Measured with
#: ``bench/bench_prefix_feed.py``: a window this long costs about a millisecond.
PREFIX_SCAN_BUDGET = 10_000

_COLUMNS = "key, seq, stamp, deleted, content_type, chain, expires, flags, replaces, value"
GET_SQL = f"SELECT {_COLUMNS} FROM records WHERE key = ?"
#: The values too large to read on the reactor thread: a 16 MiB value is 4,000 overflow pages,
#: tens of milliseconds to read (measured with bench/hostile.py, fifty clients reading one).
LARGE_VALUE = 1024 * 1024
_SMALL_COLUMNS = (
    "key, seq, stamp, deleted, content_type, chain, expires, flags, replaces,"
    f" CASE WHEN length(value) > {LARGE_VALUE} THEN NULL ELSE value END"
)
_GET_SMALL_SQL = f"SELECT {_SMALL_COLUMNS} FROM records WHERE key = ?"
CHANGES_SQL = f"SELECT {_COLUMNS} FROM records WHERE seq > ? ORDER BY seq LIMIT ?"
_INSERT_SQL = f"INSERT INTO records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_UPDATE_SQL = (
    "UPDATE records SET seq = ?, stamp = ?, deleted = ?, content_type = ?, chain = ?,"
    " expires = ?, flags = ?, replaces = ?, value = ? WHERE key = ?"
)
_EXPIRING_SQL = (
    "SELECT key, stamp, expires FROM records WHERE expires IS NOT NULL AND deleted = 0"
    " ORDER BY expires, key LIMIT ?"
)
#: Whether this sqlite has UPSERT (``INSERT ... ON CONFLICT DO UPDATE``, sqlite 3.24): then
#: :func:`write_batch` decides and writes each apply in one statement; else it reads the stored
#: record first and decides in Python.
UPSERT = sqlite3.sqlite_version_info >= (3, 24, 0)
# The conditions of supersedes() and expectation_holds() in SQL. Stamps are stored in their
# fixed-width form of lowercase hex digits, so that comparing the texts (sqlite's BINARY
# collation, byte order) compares the stamps (wall, then counter, then node id).
_UPSERT_SQL = (
    f"INSERT INTO records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET seq = excluded.seq, stamp = excluded.stamp,"
    " deleted = excluded.deleted, content_type = excluded.content_type, chain = excluded.chain,"
    " expires = excluded.expires, flags = excluded.flags, replaces = excluded.replaces,"
    " value = excluded.value"
    " WHERE excluded.stamp > records.stamp"
)
_UPSERT_IF_ABSENT_SQL = f"{_UPSERT_SQL} AND records.deleted = 1"  # expect=ABSENT
#: expect=<stamp>: only a live record with that stamp is replaced (the caller checked that the
#: new stamp is greater); nothing stored, nothing written.
_UPDATE_IF_STAMP_SQL = f"{_UPDATE_SQL} AND deleted = 0 AND stamp = ?"
PURGE_SQL = "DELETE FROM records WHERE deleted = 1 AND seq < ?"
_PURGE_CHUNK_SQL = (
    "DELETE FROM records WHERE rowid IN"
    " (SELECT rowid FROM records WHERE deleted = 1 AND seq < ? LIMIT ?)"
)
_RESET_CHUNK_SQL = "DELETE FROM records WHERE rowid IN (SELECT rowid FROM records LIMIT ?)"
#: How many records one transaction of a purge or a reset removes (a few milliseconds of
#: work: the reactor thread, which runs them with writer=reactor, is never held long).
CHANGE_CHUNK = 2000
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


def changes_under_sql(shape: str, bounded: bool) -> str:
    """Return one of the queries :func:`changes_under` chooses from; ``bounded``: the prefix
    has an upper bound (``key < ?`` after ``key >= ?``).

    - ``count``: how many keys lie under the prefix, counting at most ``?`` of them; it reads
      the key index alone.
    - ``keys``: the first ``?`` changes after ``?`` under the prefix, found through the key
      index; it reads every key under the prefix and nothing else. ``+seq`` keeps sqlite off
      the seq index, which would have it read the whole log after ``since``.
    - ``tail``: the same, found by walking the log after ``?`` through the seq index up to the
      first ``?`` matching ones; ``+key`` keeps sqlite on the seq index.
    - ``window``: the same as ``tail`` but only up to seq ``?`` (the end of a window).
    - ``window_end``: the seq of the change ``?`` places after the first one after ``?``; it
      reads the seq index alone.
    """
    within = "key >= ? AND key < ?" if bounded else "key >= ?"
    if shape == "count":
        return f"SELECT count(*) FROM (SELECT 1 FROM records WHERE {within} LIMIT ?)"
    if shape == "keys":
        return f"SELECT {_COLUMNS} FROM records WHERE {within} AND +seq > ? ORDER BY +seq LIMIT ?"
    walked = within.replace("key", "+key")
    if shape == "tail":
        return f"SELECT {_COLUMNS} FROM records WHERE seq > ? AND {walked} ORDER BY seq LIMIT ?"
    if shape == "window":
        return (
            f"SELECT {_COLUMNS} FROM records WHERE seq > ? AND seq <= ? AND {walked}"
            " ORDER BY seq LIMIT ?"
        )
    if shape == "window_end":
        return "SELECT seq FROM records WHERE seq > ? ORDER BY seq LIMIT 1 OFFSET ?"
    raise ValueError(f"no query shape {shape!r}")


def _to_record(row: tuple[Any, ...]) -> Record:
    key, seq, stamp, deleted, content_type, chain, expires, flags, seen, value = row
    if value is None:  # values are NOT NULL: this one was left out for its size
        raise LargeValue(key)
    nodes = tuple(chain.split(",")) if chain else ()
    if flags < 0:
        flags += _FLAGS_WRAP
    return Record(
        key,
        bytes(value),
        content_type,
        Stamp.decode(stamp),
        bool(deleted),
        seq,
        nodes,
        expires,
        flags,
        replaces_from_text(seen) if seen else (),
    )


def _stored_flags(record: Record) -> int:
    flags = record.flags
    return flags - _FLAGS_WRAP if flags >= _FLAGS_SIGNED else flags


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


def count_records(txn: adbapi.Transaction) -> tuple[int, int]:
    """How many live records and tombstones there are: one pass over the table, so the
    caller runs it on the pool's thread, never the reactor's."""
    txn.execute("SELECT count(*), coalesce(sum(deleted), 0) FROM records")
    total, deleted = txn.fetchall()[0]
    return int(total) - int(deleted), int(deleted)


def read_record(txn: adbapi.Transaction, key: str) -> Record | None:
    txn.execute(GET_SQL, (key,))
    rows = txn.fetchall()
    return _to_record(rows[0]) if rows else None


class LargeValue(Exception):
    """The record's value is over :data:`LARGE_VALUE`: read it where a long read blocks no one."""


def read_small_record(txn: adbapi.Transaction, key: str) -> Record | None:
    """:func:`read_record`, unless the value is over :data:`LARGE_VALUE` bytes: then raise
    :class:`LargeValue` without reading it (sqlite knows a blob's length from the row's header,
    without reading the chain of overflow pages that holds it)."""
    txn.execute(_GET_SMALL_SQL, (key,))
    rows = txn.fetchall()
    if not rows:
        return None
    return _to_record(rows[0])  # LargeValue if the value was left out for its size


def select_small_records(
    txn: adbapi.Transaction, sql: str, params: tuple[Any, ...], max_bytes: int | None = None
) -> list[Record]:
    """:func:`select_records`, but raise :class:`LargeValue` as soon as a selected value is
    over :data:`LARGE_VALUE` bytes, without reading it (the caller reads the page elsewhere)."""
    return select_records(txn, sql.replace(_COLUMNS, _SMALL_COLUMNS, 1), params, max_bytes)


def select_records(
    txn: adbapi.Transaction, sql: str, params: tuple[Any, ...], max_bytes: int | None = None
) -> list[Record]:
    """The records ``sql`` selects; with ``max_bytes``, cut by size as
    :class:`~navistore.interfaces.ISizedReads` says: rows are stepped one at a time, so the
    rows past the cut are never read."""
    txn.execute(sql, params)
    if max_bytes is None:
        return [_to_record(row) for row in txn.fetchall()]
    found: list[Record] = []
    left = max_bytes
    while left > 0:
        row = txn.fetchone()
        if row is None:
            break
        record = _to_record(row)
        found.append(record)
        left -= stored_size(record)
    return found


def expiring(txn: adbapi.Transaction, limit: int) -> list[Deadline]:
    """The soonest deadlines, through the partial index of the live records that have one."""
    txn.execute(_EXPIRING_SQL, (limit,))
    return [Deadline(key, Stamp.decode(stamp), due) for key, stamp, due in txn.fetchall()]


def read_state(txn: adbapi.Transaction, name: str) -> Any:
    txn.execute(_READ_STATE_SQL, (name,))
    return txn.fetchall()[0][0]


class AtomicGroup:
    """Items of an atomic apply (:class:`~navistore.interfaces.IAtomicApply`), waiting in a
    batch among single applies: decided and written at their place in it, together or not at
    all (a savepoint)."""

    __slots__ = ("items", "keys")

    def __init__(self, items: Sequence[AtomicItem], keys: list[str]) -> None:
        self.items = items
        self.keys = keys


#: A batch's entry: one apply, or an atomic group.
BatchEntry = Union[tuple[Record, Expectation], AtomicGroup]
#: What each entry of a batch came to.
BatchResult = Union[Record, None, AllOrNothing]


def _upsert(txn: adbapi.Transaction, record: Record, expect: Expectation, seq: int) -> bool:
    """Write ``record`` at ``seq`` if it supersedes the stored one and ``expect`` holds (one
    statement); whether it was written."""
    stamp = record.stamp.encode()
    chain = ",".join(record.chain) if record.chain else ""
    flags = record.flags and _stored_flags(record)
    seen = replaces_text(record.replaces) if record.replaces else ""
    row = (seq, stamp, record.deleted, record.content_type, chain, record.expires_ms, flags, seen)
    if expect is ANY or expect is ABSENT:
        txn.execute(
            _UPSERT_SQL if expect is ANY else _UPSERT_IF_ABSENT_SQL,
            (record.key, *row, record.value),
        )
    elif isinstance(expect, Stamp) and record.stamp > expect:
        # If-Match: only the live record with that stamp is replaced.
        txn.execute(_UPDATE_IF_STAMP_SQL, (*row, record.value, record.key, expect.encode()))
    else:  # the record stored with stamp ``expect``, if any, supersedes this one
        return False
    return bool(txn.rowcount == 1)


def write_batch(txn: adbapi.Transaction, batch: list[BatchEntry]) -> list[BatchResult]:
    """Decide and write a batch of applies in one transaction, exactly as if one after another.

    With :data:`UPSERT`, each apply is one statement that writes only if the record supersedes
    the stored one and the expectation holds, so that sqlite finds the key once; a later apply
    of the same key in the batch is decided against what the earlier one left. The seq counter
    is read once and written back once. An atomic group is written under a savepoint, rolled
    back if one of its items does not hold.
    """
    if not UPSERT:
        return _read_then_write_batch(txn, batch)
    txn.execute("BEGIN IMMEDIATE")
    first_seq = last_seq = int(read_state(txn, "last_seq"))
    results: list[BatchResult] = []
    append = results.append
    for entry in batch:
        if isinstance(entry, AtomicGroup):
            outcome, last_seq = _write_group(txn, entry, last_seq)
            append(outcome)
            continue
        record, expect = entry
        seq = last_seq + 1
        if _upsert(txn, record, expect, seq):
            last_seq = seq
            append(record.with_seq(seq))
        else:
            append(None)
    if last_seq != first_seq:
        txn.execute(_WRITE_STATE_SQL, (last_seq, "last_seq"))
    return results


def _write_group(
    txn: adbapi.Transaction, group: AtomicGroup, last_seq: int
) -> tuple[AllOrNothing, int]:
    """An atomic group inside a batch's transaction: the outcome, and the seq reached."""
    txn.execute("SAVEPOINT atomic")
    written: list[Record] = []
    seq = last_seq
    refused: int | None = None
    for index, (item, expect) in enumerate(group.items):
        if isinstance(item, str):
            if not expectation_holds(read_record(txn, item), expect):
                refused = index
                break
        elif _upsert(txn, item, expect, seq + 1):
            seq += 1
            written.append(item.with_seq(seq))
        else:
            refused = index
            break
    if refused is not None:
        txn.execute("ROLLBACK TO atomic")
    txn.execute("RELEASE atomic")
    if refused is not None:
        return AllOrNothing((), refused), last_seq
    return AllOrNothing(tuple(written), None), seq


def _read_then_write_batch(txn: adbapi.Transaction, batch: list[BatchEntry]) -> list[BatchResult]:
    """:func:`write_batch` without UPSERT: read each stored record and decide in Python.

    Records written earlier in the batch are remembered, so a later apply of the same key is
    decided against them; an atomic group is decided whole before any of it is written.
    """
    txn.execute("BEGIN IMMEDIATE")
    first_seq = last_seq = int(read_state(txn, "last_seq"))
    current: dict[str, Record | None] = {}

    def stored_of(key: str) -> Record | None:
        if key not in current:
            current[key] = read_record(txn, key)
        return current[key]

    results: list[BatchResult] = []
    for entry in batch:
        if isinstance(entry, AtomicGroup):
            refused = next(
                (
                    index
                    for index, (item, expect) in enumerate(entry.items)
                    if not expectation_holds(stored_of(entry.keys[index]), expect)
                    or (not isinstance(item, str) and not supersedes(item, stored_of(item.key)))
                ),
                None,
            )
            if refused is not None:
                results.append(AllOrNothing((), refused))
                continue
            written = []
            for item, _expect in entry.items:
                if not isinstance(item, str):
                    last_seq += 1
                    _write_row(txn, item, stored_of(item.key), last_seq)
                    current[item.key] = new = item.with_seq(last_seq)
                    written.append(new)
            results.append(AllOrNothing(tuple(written), None))
            continue
        record, expect = entry
        stored = stored_of(record.key)
        if not supersedes(record, stored) or not expectation_holds(stored, expect):
            results.append(None)
            continue
        last_seq += 1
        _write_row(txn, record, stored, last_seq)
        current[record.key] = new = record.with_seq(last_seq)
        results.append(new)
    if last_seq != first_seq:
        txn.execute(_WRITE_STATE_SQL, (last_seq, "last_seq"))
    return results


def _write_row(txn: adbapi.Transaction, record: Record, stored: Record | None, seq: int) -> None:
    """Insert or update ``record``'s row at ``seq`` (the read-then-write path)."""
    row = (
        seq,
        record.stamp.encode(),
        int(record.deleted),
        record.content_type,
        ",".join(record.chain),
        record.expires_ms,
        _stored_flags(record),
        replaces_text(record.replaces),
    )
    if stored is None:
        txn.execute(_INSERT_SQL, (record.key, *row, record.value))
    else:
        txn.execute(_UPDATE_SQL, (*row, record.value, record.key))


def changes_under(
    txn: adbapi.Transaction,
    prefix: str,
    bound: str | None,
    since: int,
    limit: int,
    max_bytes: int | None = None,
    *,
    budget: int = PREFIX_SCAN_BUDGET,
) -> list[Record]:
    """The changes after ``since`` under ``prefix`` (keys in ``[prefix, bound)``), first
    ``limit``, in seq order, as ``changes`` filtered by prefix would list them, for a cost of
    the keys under the prefix or the changes it passes, whichever is fewer (see
    :class:`~navistore.interfaces.IPrefixChanges`).

    Two ways find them: through the key index (every key under the prefix is read: cheap for a
    narrow prefix, whatever the length of the log) or by walking the log after ``since``
    (cheap when ``since`` is recent, or when the prefix is wide, so that ``limit`` matches come
    soon). Neither cost is known in advance, so it walks the log in windows that double in
    length, starting at ``budget`` changes (at least four times ``limit``), and before each window
    counts the keys under the prefix, at most as many as the window holds (the key index
    answers that from its own pages). As soon as fewer keys than the window lie under the
    prefix, reading them is cheaper than walking on, and the key index finds the rest. So the
    walk never passes more than twice the keys under the prefix, nor twice the changes that
    fill the page. ``max_bytes`` cuts the page by size
    (:class:`~navistore.interfaces.ISizedReads`).
    """
    if limit <= 0:
        return []
    bounded = bound is not None
    within = (prefix,) if bound is None else (prefix, bound)
    # At least the number of changes after ``since`` (rewritten keys leave holes in the seqs).
    if int(read_state(txn, "last_seq")) - since <= limit:
        # The walk reads no more rows than a full page holds.
        tail = (since, *within, limit)
        return select_records(txn, changes_under_sql("tail", bounded), tail, max_bytes)
    found: list[Record] = []
    window = max(budget, 4 * limit)
    while True:
        txn.execute(changes_under_sql("count", bounded), (*within, window))
        under = int(txn.fetchall()[0][0])
        wanted = limit - len(found)
        left = None if max_bytes is None else max_bytes - sum(map(stored_size, found))
        if under < window:
            keys = (*within, since, wanted)
            found.extend(select_records(txn, changes_under_sql("keys", bounded), keys, left))
            return found
        txn.execute(changes_under_sql("window_end", bounded), (since, window - 1))
        rows = txn.fetchall()
        if not rows:  # the log after ``since`` is shorter than the window: walk all of it
            tail = (since, *within, wanted)
            found.extend(select_records(txn, changes_under_sql("tail", bounded), tail, left))
            return found
        window_end = int(rows[0][0])
        walk = (since, window_end, *within, wanted)
        found.extend(select_records(txn, changes_under_sql("window", bounded), walk, left))
        if len(found) == limit:
            return found
        if max_bytes is not None and sum(map(stored_size, found)) >= max_bytes:
            return found
        since = window_end
        window *= 2


def purge(txn: adbapi.Transaction, before_seq: int, chunk: int | None = None) -> int:
    """Remove tombstones below ``before_seq``, at most ``chunk`` of them (None: all)."""
    if chunk is None:
        txn.execute(PURGE_SQL, (before_seq,))
    else:
        txn.execute(_PURGE_CHUNK_SQL, (before_seq, chunk))
    return int(txn.rowcount)


def reset(txn: adbapi.Transaction, chunk: int | None = None) -> int:
    """Remove records, at most ``chunk`` of them (None: all); return how many."""
    if chunk is None:
        txn.execute("DELETE FROM records")
    else:
        txn.execute(_RESET_CHUNK_SQL, (chunk,))
    return int(txn.rowcount)


def get_meta(txn: adbapi.Transaction, name: str) -> str | None:
    txn.execute("SELECT value FROM meta WHERE name = ?", (name,))
    rows = txn.fetchall()
    return str(rows[0][0]) if rows else None


def set_meta(txn: adbapi.Transaction, name: str, value: str) -> None:
    txn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

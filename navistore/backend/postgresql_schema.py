"""The PostgreSQL schema, its migrations, and the SQL each backend call runs.

Kept apart from :mod:`navistore.backend.postgresql`, which decides *when* these run (which
batch, in which order); this module is only *what* runs. Every function here takes an adbapi
``Transaction`` (a cursor on the pool's one connection, in autocommit mode: a single statement
is its own transaction, and a call that needs several opens one explicitly).

Why the schema looks like this:

- ``key`` and ``stamp`` are ``COLLATE "C"``: PostgreSQL's default collation is the database's
  locale (or ICU's), which is not byte order, while keys must sort by code point (UTF-8 byte
  order, which "C" is in a UTF-8 database) and stamps compare as their fixed-width text.
- The seq counter is a row of ``backend_state``, locked (``FOR UPDATE``) by the transaction
  that writes a batch and updated once at its end. Two backends over one database therefore
  write one after the other and their seqs become visible in commit order, never out of it (a
  ``SEQUENCE`` hands out numbers outside transactions, so a reader could see seq 7 committed
  before seq 6 and skip 6 for ever). Nothing is cached in Python; ``last_seq`` reads the row.
- A batch of applies is one call of the PL/pgSQL function ``navistore_write_batch``: one
  statement, one round trip and one commit for the whole group commit, every apply decided by
  an UPSERT whose ``WHERE`` is :func:`~navistore.interfaces.supersedes` and
  :func:`~navistore.interfaces.expectation_holds` in SQL.
- ``flags`` (an unsigned 64-bit number) is a BIGINT holding the upper half below zero (two's
  complement), exactly as the sqlite file does.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable

from navistore.clock import Stamp
from navistore.errors import StorageFailure
from navistore.interfaces import ABSENT, ANY, Deadline, Expectation
from navistore.protocol.records import replaces_from_text, replaces_text
from navistore.record import Record

if TYPE_CHECKING:
    from twisted.enterprise import adbapi

__all__ = [
    "BATCH_BYTES",
    "BATCH_RECORDS",
    "CHANGES_SQL",
    "GET_SQL",
    "MAX_LIMIT",
    "MIGRATIONS",
    "PURGE_SQL",
    "SCHEMA_LOCK",
    "SCHEMA_VERSION",
    "VERSION_1",
    "count_records",
    "expiring",
    "get_meta",
    "migrate",
    "purge",
    "read_record",
    "read_state",
    "reset",
    "scan_sql",
    "select_records",
    "set_meta",
    "sized",
    "stored_flags",
    "write_batch",
]

#: The schema version this code writes. Bump it together with a new :data:`MIGRATIONS` step.
SCHEMA_VERSION = 3

#: ``MIGRATIONS[n]`` upgrades a version ``n`` database to ``n + 1``. All the steps needed run in
#: the one transaction that opens the schema, under :data:`SCHEMA_LOCK`, so that an upgrade is
#: never left half done and two nodes opening one database at once do not both run it.
MIGRATIONS: dict[int, Callable[[Any], None]] = {}


def _add_apply_all(txn: Any) -> None:
    """Version 2: the function that stores several records all or nothing
    (:mod:`navistore.backend.postgresql_atomic`). A new database is made at version 1 and
    migrated like an old one, so that every test opens through a migration."""
    txn.execute(_APPLY_ALL_FUNCTION)


MIGRATIONS[1] = _add_apply_all


def _with_replaces(function: str) -> str:
    """The text of a write function of versions 1 and 2, made to store ``replaces`` too (one
    more array parameter, one more column written): one definition of each function, not two
    copies that could drift apart."""
    steps = (
        (
            r"p_flags bigint\[\],(\s*)p_values bytea\[\]",
            r"p_flags bigint[],\1p_replaces text[], p_values bytea[]",
        ),
        (
            r"flags = p_flags\[i\], value = p_values\[i\]",
            "flags = p_flags[i], replaces = p_replaces[i], value = p_values[i]",
        ),
        (r"chain, expires, flags, value\)", "chain, expires, flags, replaces, value)"),
        (r"p_flags\[i\], p_values\[i\]\)", "p_flags[i], p_replaces[i], p_values[i])"),
        (
            r"flags = excluded\.flags,(\s*)value = excluded\.value",
            r"flags = excluded.flags, replaces = excluded.replaces,\1value = excluded.value",
        ),
    )
    for pattern, replacement in steps:
        function = re.sub(pattern, replacement, function)
    return function


def _add_replaces(txn: Any) -> None:
    """Version 3: records carry what their writer had seen of the key (``Record.replaces``, the
    stamps joined by ``,``); the write functions take it. A constant default rewrites no row."""
    txn.execute("ALTER TABLE records ADD COLUMN replaces text NOT NULL DEFAULT ''")
    txn.execute(
        "DROP FUNCTION navistore_write_batch(text[], text[], boolean[], text[], text[],"
        " bigint[], bigint[], bytea[], smallint[], text[])"
    )
    txn.execute(
        "DROP FUNCTION navistore_apply_all(text[], boolean[], text[], boolean[], text[],"
        " text[], bigint[], bigint[], bytea[], smallint[], text[])"
    )
    txn.execute(_with_replaces(VERSION_1[-1]))
    txn.execute(_with_replaces(_APPLY_ALL_FUNCTION))


MIGRATIONS[2] = _add_replaces

#: The advisory lock (a constant of our own) held while the schema is created or migrated.
SCHEMA_LOCK = 0x6E61_7669_7374_6F72 >> 1  # "navistor", kept within a signed BIGINT

#: The largest LIMIT a query passes (a BIGINT).
MAX_LIMIT = 2**62
#: A group commit sends at most this many applies in one statement ...
BATCH_RECORDS = 1000
#: ... and at most about this many bytes of values (at least one apply, whatever its size):
#: a statement is one message, and the server refuses messages over 1 GiB.
BATCH_BYTES = 32 * 1024 * 1024

_FLAGS_WRAP = 2**64
_FLAGS_SIGNED = 2**63

_STATE_SQL = (
    "CREATE TABLE IF NOT EXISTS backend_state (name text PRIMARY KEY, value bigint NOT NULL)"
)

#: The first schema; later versions are reached through :data:`MIGRATIONS`.
VERSION_1 = (
    'CREATE TABLE records (key text COLLATE "C" PRIMARY KEY, seq bigint NOT NULL,'
    ' stamp text COLLATE "C" NOT NULL, deleted boolean NOT NULL, content_type text NOT NULL,'
    " chain text NOT NULL, expires bigint, flags bigint NOT NULL, value bytea NOT NULL)",
    "CREATE UNIQUE INDEX records_by_seq ON records (seq)",
    "CREATE INDEX records_by_expiry ON records (expires, key)"
    " WHERE expires IS NOT NULL AND NOT deleted",
    "CREATE TABLE meta (name text PRIMARY KEY, value text NOT NULL)",
    "INSERT INTO backend_state (name, value) VALUES ('schema_version', 1), ('last_seq', 0)",
    # expect: 0 ANY, 1 ABSENT, 2 the live record must carry expect_stamps[i] (the caller has
    # checked that the new stamp is greater). Returns each apply's seq, NULL where not stored.
    """CREATE FUNCTION navistore_write_batch(
        p_keys text[], p_stamps text[], p_deleted boolean[], p_content_types text[],
        p_chains text[], p_expires bigint[], p_flags bigint[], p_values bytea[],
        p_expect smallint[], p_expect_stamps text[]
    ) RETURNS bigint[] LANGUAGE plpgsql AS $body$
    DECLARE
        v_first bigint;
        v_last bigint;
        v_seqs bigint[] := '{}';
    BEGIN
        SELECT value INTO v_first FROM backend_state WHERE name = 'last_seq' FOR UPDATE;
        v_last := v_first;
        FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
            IF p_expect[i] = 2 THEN
                UPDATE records SET seq = v_last + 1, stamp = p_stamps[i], deleted = p_deleted[i],
                    content_type = p_content_types[i], chain = p_chains[i],
                    expires = p_expires[i], flags = p_flags[i], value = p_values[i]
                WHERE key = p_keys[i] AND NOT deleted AND stamp = p_expect_stamps[i];
            ELSE
                INSERT INTO records AS stored
                    (key, seq, stamp, deleted, content_type, chain, expires, flags, value)
                VALUES (p_keys[i], v_last + 1, p_stamps[i], p_deleted[i], p_content_types[i],
                    p_chains[i], p_expires[i], p_flags[i], p_values[i])
                ON CONFLICT (key) DO UPDATE SET seq = excluded.seq, stamp = excluded.stamp,
                    deleted = excluded.deleted, content_type = excluded.content_type,
                    chain = excluded.chain, expires = excluded.expires, flags = excluded.flags,
                    value = excluded.value
                WHERE excluded.stamp > stored.stamp AND (p_expect[i] = 0 OR stored.deleted);
            END IF;
            IF FOUND THEN
                v_last := v_last + 1;
                v_seqs[i] := v_last;
            ELSE
                v_seqs[i] := NULL;
            END IF;
        END LOOP;
        IF v_last <> v_first THEN
            UPDATE backend_state SET value = v_last WHERE name = 'last_seq';
        END IF;
        RETURN v_seqs;
    END
    $body$""",
)

# Items in order; p_writes[i]: a record to store, else a check of the key alone. Every key's row
# is locked, then every item decided (expect as in navistore_write_batch); the first that does
# not hold answers {-i}, nothing written; else every record is written (unconditionally: it was
# decided) with the next seqs in order, and the seqs are returned (NULL for a check).
_APPLY_ALL_FUNCTION = """CREATE FUNCTION navistore_apply_all(
    p_keys text[], p_writes boolean[], p_stamps text[], p_deleted boolean[],
    p_content_types text[], p_chains text[], p_expires bigint[], p_flags bigint[],
    p_values bytea[], p_expect smallint[], p_expect_stamps text[]
) RETURNS bigint[] LANGUAGE plpgsql AS $body$
DECLARE
    v_first bigint;
    v_last bigint;
    v_seqs bigint[] := '{}';
    v_stamp text;
    v_deleted boolean;
    v_found boolean;
    v_holds boolean;
    v_count integer := coalesce(array_length(p_keys, 1), 0);
BEGIN
    SELECT value INTO v_first FROM backend_state WHERE name = 'last_seq' FOR UPDATE;
    FOR i IN 1 .. v_count LOOP
        SELECT stamp, deleted INTO v_stamp, v_deleted FROM records WHERE key = p_keys[i]
            FOR UPDATE;
        v_found := FOUND;
        IF p_expect[i] = 1 THEN
            v_holds := NOT v_found OR v_deleted;
        ELSIF p_expect[i] = 2 THEN
            v_holds := v_found AND NOT v_deleted AND v_stamp = p_expect_stamps[i];
        ELSE
            v_holds := true;
        END IF;
        IF v_holds AND p_writes[i] AND v_found THEN
            v_holds := p_stamps[i] COLLATE "C" > v_stamp COLLATE "C";
        END IF;
        IF NOT v_holds THEN
            RETURN ARRAY[-i]::bigint[];
        END IF;
    END LOOP;
    v_last := v_first;
    FOR i IN 1 .. v_count LOOP
        IF p_writes[i] THEN
            v_last := v_last + 1;
            INSERT INTO records AS stored
                (key, seq, stamp, deleted, content_type, chain, expires, flags, value)
            VALUES (p_keys[i], v_last, p_stamps[i], p_deleted[i], p_content_types[i],
                p_chains[i], p_expires[i], p_flags[i], p_values[i])
            ON CONFLICT (key) DO UPDATE SET seq = excluded.seq, stamp = excluded.stamp,
                deleted = excluded.deleted, content_type = excluded.content_type,
                chain = excluded.chain, expires = excluded.expires, flags = excluded.flags,
                value = excluded.value;
            v_seqs[i] := v_last;
        ELSE
            v_seqs[i] := NULL;
        END IF;
    END LOOP;
    IF v_last <> v_first THEN
        UPDATE backend_state SET value = v_last WHERE name = 'last_seq';
    END IF;
    RETURN v_seqs;
END
$body$"""

_WRITE_BATCH_SQL = (
    "SELECT navistore_write_batch(%s::text[], %s::text[], %s::boolean[], %s::text[],"
    " %s::text[], %s::bigint[], %s::bigint[], %s::text[], %s::bytea[], %s::smallint[],"
    " %s::text[])"
)
#: The columns every read of records selects, in the order :func:`_to_record` takes them.
COLUMNS = "key, seq, stamp, deleted, content_type, chain, expires, flags, replaces, value"
_COLUMNS = COLUMNS
GET_SQL = f"SELECT {_COLUMNS} FROM records WHERE key = %s"
CHANGES_SQL = f"SELECT {_COLUMNS} FROM records WHERE seq > %s ORDER BY seq LIMIT %s"
PURGE_SQL = "DELETE FROM records WHERE deleted AND seq < %s"
_EXPIRING_SQL = (
    "SELECT key, stamp, expires FROM records WHERE expires IS NOT NULL AND NOT deleted"
    " ORDER BY expires, key LIMIT %s"
)
_READ_STATE_SQL = "SELECT value FROM backend_state WHERE name = %s"


def scan_sql(after: bool, bounded: bool, include_deleted: bool) -> str:
    """The range query ``scan`` runs, on the key index: ``key > after`` replaces
    ``key >= prefix`` when ``after`` is the tighter lower bound."""
    where = ["key > %s" if after else "key >= %s"]
    if bounded:
        where.append("key < %s")
    if not include_deleted:
        where.append("NOT deleted")
    return f"SELECT {_COLUMNS} FROM records WHERE {' AND '.join(where)} ORDER BY key LIMIT %s"


def sized(sql: str, order: str) -> str:
    """Wrap a page query (its last parameter its LIMIT) so that the server cuts the page by
    bytes as :class:`~navistore.interfaces.ISizedReads` says: a row is kept while the
    :func:`~navistore.interfaces.stored_size` of the rows before it is under the one more
    parameter the wrapped query takes. ``length(key)`` counts code points as Python's ``len``
    does, and ``octet_length`` of a stored value is read from its header, not from its bytes,
    so the rows past the cut are never sent."""
    return (
        f"SELECT {_COLUMNS} FROM (SELECT {_COLUMNS}, sum(length(key) + octet_length(value))"
        f" OVER (ORDER BY {order} ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before"
        f" FROM ({sql}) AS page) AS counted WHERE coalesce(before, 0) < %s ORDER BY {order}"
    )


def _to_record(row: tuple[Any, ...]) -> Record:
    key, seq, stamp, deleted, content_type, chain, expires, flags, seen, value = row
    if flags < 0:
        flags += _FLAGS_WRAP
    return Record(
        key,
        bytes(value),
        content_type,
        Stamp.decode(stamp),
        bool(deleted),
        int(seq),
        tuple(chain.split(",")) if chain else (),
        expires,
        flags,
        replaces_from_text(seen) if seen else (),
    )


def stored_flags(flags: int) -> int:
    """The BIGINT that holds unsigned 64-bit ``flags`` (the upper half below zero)."""
    return flags - _FLAGS_WRAP if flags >= _FLAGS_SIGNED else flags


def migrate(txn: Any) -> None:
    """Create the version 1 schema in an empty database, then run the steps up to
    :data:`SCHEMA_VERSION`, in the caller's transaction, under :data:`SCHEMA_LOCK`."""
    txn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
    txn.execute(_STATE_SQL)
    txn.execute(_READ_STATE_SQL, ("schema_version",))
    rows = txn.fetchall()
    if not rows:
        for statement in VERSION_1:
            txn.execute(statement)
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
        step(txn)
        version += 1
    if version != found:
        txn.execute("UPDATE backend_state SET value = %s WHERE name = 'schema_version'", (version,))


def read_record(txn: adbapi.Transaction, key: str) -> Record | None:
    txn.execute(GET_SQL, (key,))
    rows = txn.fetchall()
    return _to_record(rows[0]) if rows else None


def select_records(
    txn: adbapi.Transaction,
    sql: str,
    params: tuple[Any, ...],
    order: str,
    max_bytes: int | None = None,
) -> list[Record]:
    """The records ``sql`` selects (ordered by ``order``), cut by bytes when ``max_bytes``
    is given (see :func:`sized`)."""
    if max_bytes is None:
        txn.execute(sql, params)
    else:
        txn.execute(sized(sql, order), (*params, max_bytes))
    return [_to_record(row) for row in txn.fetchall()]


def expiring(txn: adbapi.Transaction, limit: int) -> list[Deadline]:
    """The soonest deadlines, through the partial index of the live records that have one."""
    txn.execute(_EXPIRING_SQL, (limit,))
    return [Deadline(key, Stamp.decode(stamp), due) for key, stamp, due in txn.fetchall()]


def read_state(txn: adbapi.Transaction, name: str) -> int:
    txn.execute(_READ_STATE_SQL, (name,))
    return int(txn.fetchall()[0][0])


def write_batch(
    txn: adbapi.Transaction, batch: list[tuple[Record, Expectation]]
) -> list[Record | None]:
    """Decide and write a batch of applies in one statement (so one transaction and one round
    trip), exactly as if one after another: a later apply of a key in the batch is decided
    against what the earlier one left. An If-Match whose stamp is not below the new record's
    cannot hold and is decided here without being sent."""
    sent: list[int] = []
    columns: list[list[Any]] = [[] for _ in range(11)]
    keys, stamps, deleted, types, chains, expires, flags, seen, values, expects, expected = columns
    for index, (record, expect) in enumerate(batch):
        if expect is ANY or expect is ABSENT:
            expects.append(0 if expect is ANY else 1)
            expected.append(None)
        elif isinstance(expect, Stamp) and record.stamp > expect:
            expects.append(2)
            expected.append(expect.encode())
        else:
            continue
        sent.append(index)
        keys.append(record.key)
        stamps.append(record.stamp.encode())
        deleted.append(record.deleted)
        types.append(record.content_type)
        chains.append(",".join(record.chain))
        expires.append(record.expires_ms)
        flags.append(stored_flags(record.flags))
        seen.append(replaces_text(record.replaces) if record.replaces else "")
        values.append(record.value)
    results: list[Record | None] = [None] * len(batch)
    if not sent:
        return results
    txn.execute(_WRITE_BATCH_SQL, columns)
    seqs = txn.fetchall()[0][0]
    for index, seq in zip(sent, seqs):
        if seq is not None:
            results[index] = batch[index][0].with_seq(int(seq))
    return results


def count_records(txn: adbapi.Transaction) -> tuple[int, int, int]:
    """Live records, tombstones, and the bytes the table takes with its indexes and TOAST."""
    txn.execute(
        "SELECT count(*) FILTER (WHERE NOT deleted), count(*) FILTER (WHERE deleted),"
        " pg_total_relation_size('records') FROM records"
    )
    live, tombstones, on_disk = txn.fetchall()[0]
    return int(live), int(tombstones), int(on_disk)


def purge(txn: adbapi.Transaction, before_seq: int) -> int:
    """Remove the tombstones below ``before_seq`` (found through the seq index)."""
    txn.execute(PURGE_SQL, (before_seq,))
    return int(txn.rowcount)


def reset(txn: adbapi.Transaction) -> int:
    """Remove every record (``DELETE``, not ``TRUNCATE``, whose exclusive lock would stall
    every other session's reads); the seq counter stays."""
    txn.execute("DELETE FROM records")
    return int(txn.rowcount)


def get_meta(txn: adbapi.Transaction, name: str) -> str | None:
    txn.execute("SELECT value FROM meta WHERE name = %s", (name,))
    rows = txn.fetchall()
    return str(rows[0][0]) if rows else None


def set_meta(txn: adbapi.Transaction, name: str, value: str) -> None:
    txn.execute(
        "INSERT INTO meta (name, value) VALUES (%s, %s)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (name, value),
    )

"""Several records stored all or nothing in PostgreSQL: ``apply_all`` (``IAtomicApply`` on main).

One call of the PL/pgSQL function ``navistore_apply_all`` (schema version 2,
:mod:`navistore.backend.postgresql_schema`): one statement, so one transaction and one round
trip. It takes the seq counter's lock first, as every write batch does (so two backends over
one database cannot deadlock, and seqs become visible in order), then locks the row of every
key named, decides every item against what is stored, and writes only if every one holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

from navistore.backend.postgresql_schema import stored_flags
from navistore.clock import Stamp
from navistore.errors import InvalidRecord
from navistore.interfaces import ABSENT, ANY, Expectation
from navistore.protocol.records import replaces_text
from navistore.record import Record

if TYPE_CHECKING:
    from twisted.enterprise import adbapi

__all__ = ["AtomicItems", "apply_all"]

#: ``(record, expect)`` to store a record, ``(key, expect)`` to check a key only.
AtomicItems = Sequence[tuple[Union[Record, str], Expectation]]

_APPLY_ALL_SQL = (
    "SELECT navistore_apply_all(%s::text[], %s::boolean[], %s::text[], %s::boolean[],"
    " %s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::text[], %s::bytea[],"
    " %s::smallint[], %s::text[])"
)


def apply_all(txn: adbapi.Transaction, items: AtomicItems) -> tuple[list[Record], int | None]:
    """Store every record of ``items`` with consecutive seqs in their order if every item
    holds; else store nothing. Return the stored records and None, or no record and the index
    of the first item that did not hold."""
    columns: list[list[Any]] = [[] for _ in range(12)]
    (keys, writes, stamps, deleted, types, chains, expires, flags, seen, values, expects) = columns[
        :11
    ]
    expected = columns[11]
    for item, expect in items:
        record = item if isinstance(item, Record) else None
        keys.append(item.key if isinstance(item, Record) else item)
        writes.append(record is not None)
        stamps.append(None if record is None else record.stamp.encode())
        deleted.append(None if record is None else record.deleted)
        types.append(None if record is None else record.content_type)
        chains.append(None if record is None else ",".join(record.chain))
        expires.append(None if record is None else record.expires_ms)
        flags.append(None if record is None else stored_flags(record.flags))
        seen.append(None if record is None else replaces_text(record.replaces))
        values.append(None if record is None else record.value)
        if expect is ANY or expect is ABSENT:
            expects.append(0 if expect is ANY else 1)
            expected.append(None)
        elif isinstance(expect, Stamp):
            expects.append(2)
            expected.append(expect.encode())
        else:
            raise InvalidRecord(f"an expectation is ANY, ABSENT or a Stamp, not {expect!r}")
    if not items:
        return [], None
    txn.execute(_APPLY_ALL_SQL, columns)
    seqs = txn.fetchall()[0][0]
    if len(seqs) == 1 and seqs[0] is not None and seqs[0] < 0:
        return [], -int(seqs[0]) - 1
    stored = [
        item.with_seq(int(seq))
        for (item, _expect), seq in zip(items, seqs)
        if isinstance(item, Record) and seq is not None
    ]
    return stored, None

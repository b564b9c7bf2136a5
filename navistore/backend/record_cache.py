"""A record cache in front of any backend: the keys read most, answered from memory.

A configuration store is read far more than it is written, by many clients asking for the same
keys. On sqlite a GET costs a query on the reactor's thread and a Record built from its row,
which is most of what the node spends on it; from memory it is a dictionary lookup. So
:class:`RecordCache` wraps a backend and keeps its live records, least recently used out first,
in at most ``max_bytes`` (counted as key, value, content type and a measured overhead per
entry).

It is exact, not a "usually right" cache, because every change of the backend goes through it
(the Store, replication, bulk loads and the backend RPC all call the wrapped backend):

- an ``apply`` drops its key at once and keeps the key out of the cache while any apply of it
  is being written; the stored record it fires with (or nothing, if it lost) comes in once the
  last of them is done;
- a read that misses fills the cache only if no apply was issued while it ran (a read started
  before a write may answer what the write replaced);
- ``reset`` empties it and keeps it empty until the reset is done; ``purge_tombstones`` needs
  nothing, since tombstones are never cached (a deleted key's GET is rare and goes to the
  backend, whose answer includes the tombstone the contract asks for).

Entries are kept as plain tuples of the record's fields, not as the Record: a tuple of strings,
bytes and integers is one the garbage collector stops tracking, whereas a Record and its Stamp
are two tracked objects each. A cache of 150,000 records made every full collection walk
300,000 more objects (``bench/bench_scale.py`` at 300,000 keys: GET p99 136 ms, against 8 ms
with the collector off). Rebuilding the Record on a hit costs about a microsecond, so the
:data:`HOT_RECORDS` most recently read keep their Record beside their tuple as well: few enough
for the collector not to matter, and as many as the keys a configuration store's clients read
(they are memory beyond ``max_bytes``: about 3 MiB at most, the Records of entries counted).

Everything else (scans, the change feed, meta data, statistics, the sqlite file's ``path`` for
``/_backup``) is the wrapped backend's, including the optional interfaces it provides.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import alsoProvides, implementer, providedBy

from navistore.clock import Stamp
from navistore.interfaces import (
    ANY,
    AllOrNothing,
    AtomicItem,
    Expectation,
    IImmediateReads,
    IStorageBackend,
    WouldBlock,
)
from navistore.protocol.records import replaces_from_text, replaces_text
from navistore.record import Record

__all__ = ["DEFAULT_RECORD_CACHE_BYTES", "ENTRY_OVERHEAD", "RecordCache"]

#: The default size: 64 MiB holds every key of a typical configuration store (tens of
#: thousands of values of a few hundred bytes) and the hot part of a large one.
DEFAULT_RECORD_CACHE_BYTES = 64 * 1024 * 1024

#: Bytes an entry costs beyond its key, value and content type: the Record, its Stamp and their
#: objects' headers, and the ordered dictionary's link (about 265 measured with tracemalloc on
#: CPython 3.11, for a 100-byte value: tests/test_record_cache.py checks the count covers it).
ENTRY_OVERHEAD = 300


#: How many of the cached records are also kept as Records (the rest only as tuples): 16,384
#: Records and Stamps add some 33,000 objects to a full collection (a few milliseconds).
HOT_RECORDS = 16_384

#: A cached live record without its key: value, content type, the stamp's wall time, counter and
#: node id, seq, chain, expiry, flags, replaces (as text: ``""`` for none). Only atoms and a
#: tuple of strings, so the collector does not track it.
_Entry = tuple[bytes, str, int, int, str, "int | None", "tuple[str, ...]", "int | None", int, str]


def _entry(record: Record) -> _Entry:
    stamp = record.stamp
    return (
        record.value,
        record.content_type,
        stamp.wall_ms,
        stamp.counter,
        stamp.node_id,
        record.seq,
        record.chain,
        record.expires_ms,
        record.flags,
        replaces_text(record.replaces),
    )


def _record(key: str, entry: _Entry) -> Record:
    # The fields came from a checked Record: nothing to check again.
    value, content_type, wall_ms, counter, node_id, seq, chain, expires_ms, flags, seen = entry
    stamp = Stamp._checked(wall_ms, counter, node_id)
    replaces = replaces_from_text(seen) if seen else ()
    return Record(key, value, content_type, stamp, False, seq, chain, expires_ms, flags, replaces)


def _entry_size(key: str, entry: _Entry) -> int:
    return len(key) + len(entry[0]) + len(entry[1]) + len(entry[9]) + ENTRY_OVERHEAD


def entry_size(record: Record) -> int:
    """What keeping ``record`` in the cache costs, in bytes (as counted against the bound)."""
    count = len(record.replaces)
    seen = 37 * count - 1 if count else 0  # its text: the stamps, a comma between two
    return len(record.key) + len(record.value) + len(record.content_type) + seen + ENTRY_OVERHEAD


@implementer(IStorageBackend, IImmediateReads)
class RecordCache:
    """``backend``, with its live records kept in memory up to ``max_bytes``.

    :ivar hits: reads answered from the cache.
    :ivar misses: reads that went to the backend.
    """

    def __init__(self, backend: IStorageBackend, max_bytes: int = DEFAULT_RECORD_CACHE_BYTES):
        self.backend = backend
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._records: OrderedDict[str, _Entry] = OrderedDict()
        # Records of recently read entries of _records (never of anything else), dropped
        # together when there are HOT_RECORDS: cheaper than a second LRU.
        self._hot: dict[str, Record] = {}
        self._writing: dict[str, int] = {}  # key -> applies of it not done yet
        self._resets = 0  # resets not done yet: nothing comes in meanwhile
        self._applies = 0  # applies issued, ever: a read that saw this change fills nothing
        self._peek = getattr(backend, "peek", None) if IImmediateReads.providedBy(backend) else None
        # What the wrapped backend offers beyond the contract (prefix feeds, sized reads,
        # statistics) is offered here too; the calls themselves go through __getattr__.
        alsoProvides(self, *providedBy(backend))

    def __getattr__(self, name: str) -> Any:
        # Only what this class does not define: kind, persistent, path, statistics, ...
        return getattr(self.backend, name)

    def __len__(self) -> int:
        return len(self._records)

    # -- reads ------------------------------------------------------------------------------

    def _cached(self, key: str) -> Record | None:
        """The cached record of ``key`` (now the most recently used), or None."""
        record = self._hot.get(key)
        if record is not None:
            self._records.move_to_end(key)
            self.hits += 1
            return record
        entry = self._records.get(key)
        if entry is None:
            return None
        self._records.move_to_end(key)
        self.hits += 1
        record = _record(key, entry)
        self._keep_hot(key, record)
        return record

    def _keep_hot(self, key: str, record: Record) -> None:
        hot = self._hot
        if len(hot) >= HOT_RECORDS and key not in hot:
            hot.clear()
        hot[key] = record

    def peek(self, key: str) -> Record | None:
        record = self._cached(key)
        if record is not None:
            return record
        if self._peek is None:
            raise WouldBlock(key)
        record = self._peek(key)
        self.misses += 1
        self._fill(key, record)
        return record

    def get(self, key: str) -> Deferred[Record | None]:
        record = self._cached(key)
        if record is not None:
            return succeed(record)
        self.misses += 1
        applies = self._applies
        read: Deferred[Record | None] = self.backend.get(key)
        return read.addCallback(self._filled, key, applies)

    def _filled(self, record: Record | None, key: str, applies: int) -> Record | None:
        if applies == self._applies:
            self._fill(key, record)
        return record

    def _fill(self, key: str, record: Record | None) -> None:
        if record is None or record.deleted or self._resets or key in self._writing:
            return
        size = entry_size(record)
        if size > self.max_bytes:
            return
        records = self._records
        old = records.pop(key, None)
        if old is not None:
            self.bytes -= _entry_size(key, old)
        records[key] = _entry(record)
        self._keep_hot(key, record)
        self.bytes += size
        while self.bytes > self.max_bytes:
            evicted_key, evicted = records.popitem(last=False)
            self._hot.pop(evicted_key, None)
            self.bytes -= _entry_size(evicted_key, evicted)

    def _drop(self, key: str) -> None:
        self._hot.pop(key, None)
        old = self._records.pop(key, None)
        if old is not None:
            self.bytes -= _entry_size(key, old)

    def forget(self, keys: Sequence[str]) -> None:
        """Drop ``keys``: another node over the same database wrote them
        (:mod:`navistore.store.follow`). A read in flight fills nothing, as after an apply."""
        self._applies += 1
        for key in keys:
            self._drop(key)

    def clear(self) -> None:
        """Forget every record (the next reads go to the backend)."""
        self._records.clear()
        self._hot.clear()
        self.bytes = 0

    # -- writes -----------------------------------------------------------------------------

    def apply(self, record: Record, expect: Expectation = ANY) -> Deferred[Record | None]:
        key = getattr(record, "key", None)
        if not isinstance(key, str):  # no record at all: the backend refuses it as it should
            refused: Deferred[Record | None] = self.backend.apply(record, expect)
            return refused
        self._applies += 1
        self._writing[key] = self._writing.get(key, 0) + 1
        self._drop(key)
        try:
            applied: Deferred[Record | None] = self.backend.apply(record, expect)
        except BaseException:
            self._written(key)
            raise
        return applied.addBoth(self._applied, key)

    def apply_all(self, items: Sequence[AtomicItem]) -> Deferred[AllOrNothing]:
        """:meth:`apply` for every key of an atomic apply (its checks' keys too, harmlessly)."""
        backend: Any = self.backend  # it provides IAtomicApply, or this one does not either
        keys = [item if isinstance(item, str) else getattr(item, "key", None) for item, _ in items]
        if not all(isinstance(key, str) for key in keys):
            refused: Deferred[AllOrNothing] = backend.apply_all(items)
            return refused
        self._applies += 1
        for key in keys:
            assert isinstance(key, str)
            self._writing[key] = self._writing.get(key, 0) + 1
            self._drop(key)
        try:
            applied: Deferred[AllOrNothing] = backend.apply_all(items)
        except BaseException:
            self._all_applied(None, keys)
            raise
        return applied.addBoth(self._all_applied, keys)

    def _all_applied(self, result: Any, keys: list[Any]) -> Any:
        stored = {record.key: record for record in getattr(result, "stored", ())}
        for key in keys:
            if self._written(key) and key in stored:
                self._fill(key, stored[key])
        return result

    def _applied(self, result: Any, key: str) -> Any:
        if self._written(key) and isinstance(result, Record):
            self._fill(key, result)
        return result

    def _written(self, key: str) -> bool:
        """One apply of ``key`` is done; True if it was the last one under way."""
        left = self._writing[key] - 1
        if left:
            self._writing[key] = left
            return False
        del self._writing[key]
        return True

    def reset(self) -> Deferred[None]:
        self._resets += 1
        self.clear()
        done: Deferred[None] = self.backend.reset()
        return done.addBoth(self._reset_done)

    def _reset_done(self, result: Any) -> Any:
        self._resets -= 1
        self.clear()
        return result

    def close(self) -> Deferred[None]:
        self.clear()
        closed: Deferred[None] = self.backend.close()
        return closed

    # -- the rest is the backend's ----------------------------------------------------------

    def scan(self, *args: Any, **kwargs: Any) -> Deferred[list[Record]]:
        scanned: Deferred[list[Record]] = self.backend.scan(*args, **kwargs)
        return scanned

    def changes(self, *args: Any, **kwargs: Any) -> Deferred[list[Record]]:
        changed: Deferred[list[Record]] = self.backend.changes(*args, **kwargs)
        return changed

    def last_seq(self) -> Deferred[int]:
        seq: Deferred[int] = self.backend.last_seq()
        return seq

    def purge_tombstones(self, before_seq: int) -> Deferred[int]:
        purged: Deferred[int] = self.backend.purge_tombstones(before_seq)
        return purged

    def get_meta(self, name: str) -> Deferred[str | None]:
        value: Deferred[str | None] = self.backend.get_meta(name)
        return value

    def set_meta(self, name: str, value: str) -> Deferred[None]:
        done: Deferred[None] = self.backend.set_meta(name, value)
        return done

    def __repr__(self) -> str:
        return f"<RecordCache {len(self._records)} records, {self.bytes} bytes of {self.backend!r}>"

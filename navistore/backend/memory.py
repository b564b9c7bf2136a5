"""The embedded RAM-only backend.

Nothing is written anywhere: every record, meta value and the seq counter are lost when the
process exits or the backend is closed. It is the fastest backend and the one the in-process
cluster simulation uses; use sqlite for anything that must survive a restart.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right, insort

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from navistore.backend import BackendURL, BackendURLError
from navistore.errors import BackendClosed, InvalidRecord
from navistore.interfaces import (
    ANY,
    Deadline,
    Expectation,
    IExpiringRecords,
    IImmediateReads,
    IPrefixChanges,
    ISizedReads,
    IStorageBackend,
    expectation_holds,
    stored_size,
    supersedes,
)
from navistore.keys import prefix_upper_bound
from navistore.record import Record, check_record

__all__ = ["MemoryBackend", "open_memory"]


@implementer(IStorageBackend, IImmediateReads, IPrefixChanges, ISizedReads, IExpiringRecords)
class MemoryBackend:
    """Records in a dict, keys in a sorted list, seqs in an append-only log.

    The seq log holds every seq ever assigned in increasing order; entries whose key has since
    moved to a later seq are skipped when read and compacted away once they are half the log.
    """

    kind = "memory"
    persistent = False

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        self._sorted_keys: list[str] = []
        self._seq_log: list[int] = []
        self._key_at_seq: dict[int, str] = {}
        self._expiring: dict[str, int] = {}  # key -> expires_ms, of live records only
        self._meta: dict[str, str] = {}
        self._last_seq = 0
        self._closed = False

    def _closed_error(self, operation: str) -> Deferred:
        return fail(BackendClosed(operation))

    def get(self, key: str) -> Deferred[Record | None]:
        if self._closed:
            return self._closed_error("get")
        return succeed(self._records.get(key))

    def peek(self, key: str) -> Record | None:
        if self._closed:
            raise BackendClosed("peek")
        return self._records.get(key)

    def apply(self, record: Record, expect: Expectation = ANY) -> Deferred[Record | None]:
        if self._closed:
            return self._closed_error("apply")
        try:
            check_record(record)
        except InvalidRecord as exc:
            return fail(exc)
        stored = self._records.get(record.key)
        if not supersedes(record, stored) or not expectation_holds(stored, expect):
            return succeed(None)
        self._last_seq += 1
        new = record.with_seq(self._last_seq)
        if stored is None:
            insort(self._sorted_keys, record.key)
        else:
            assert stored.seq is not None
            del self._key_at_seq[stored.seq]
        self._records[record.key] = new
        if new.expires_ms is not None and not new.deleted:
            self._expiring[record.key] = new.expires_ms
        elif self._expiring:
            self._expiring.pop(record.key, None)
        self._key_at_seq[self._last_seq] = record.key
        self._seq_log.append(self._last_seq)
        if len(self._seq_log) > 64 and len(self._seq_log) > 2 * len(self._key_at_seq):
            self._seq_log = [seq for seq in self._seq_log if seq in self._key_at_seq]
        return succeed(new)

    def scan(
        self,
        prefix: str = "/",
        after: str | None = None,
        limit: int = 1000,
        include_deleted: bool = False,
        max_bytes: int | None = None,
    ) -> Deferred[list[Record]]:
        if self._closed:
            return self._closed_error("scan")
        keys = self._sorted_keys
        start = bisect_left(keys, prefix)
        if after is not None:
            start = max(start, bisect_right(keys, after))
        bound = prefix_upper_bound(prefix)
        found: list[Record] = []
        room = _Room(max_bytes)
        for index in range(start, len(keys)):
            if len(found) >= limit or room.spent:
                break
            key = keys[index]
            if bound is not None and key >= bound:
                break
            record = self._records[key]
            if include_deleted or not record.deleted:
                found.append(record)
                room.take(record)
        return succeed(found)

    def changes(
        self, since: int = 0, limit: int = 1000, max_bytes: int | None = None
    ) -> Deferred[list[Record]]:
        if self._closed:
            return self._closed_error("changes")
        found: list[Record] = []
        room = _Room(max_bytes)
        log = self._seq_log
        for index in range(bisect_right(log, since), len(log)):
            if len(found) >= limit or room.spent:
                break
            key = self._key_at_seq.get(log[index])
            if key is not None:
                found.append(self._records[key])
                room.take(self._records[key])
        return succeed(found)

    def changes_under(
        self, prefix: str = "/", since: int = 0, limit: int = 1000, max_bytes: int | None = None
    ) -> Deferred[list[Record]]:
        """Walk the seq log after ``since``, but never further than reading the prefix's own
        keys would cost; if that walk does not fill the page, read those keys instead (for the
        changes after the walk). Either way it costs at most twice the cheaper of the two, so
        a narrow prefix costs its keys and a wide one the changes that fill the page."""
        if self._closed:
            return self._closed_error("changes_under")
        keys = self._sorted_keys
        first = bisect_left(keys, prefix)
        bound = prefix_upper_bound(prefix)
        end = len(keys) if bound is None else bisect_left(keys, bound, first)
        if first == end or limit <= 0:
            return succeed([])
        log = self._seq_log
        start = bisect_right(log, since)
        stop = min(len(log), start + (end - first))
        found: list[Record] = []
        room = _Room(max_bytes)
        for index in range(start, stop):
            key = self._key_at_seq.get(log[index])
            if key is not None and key.startswith(prefix):
                found.append(self._records[key])
                if len(found) == limit or room.take(self._records[key]):
                    return succeed(found)
        if stop == len(log):
            return succeed(found)
        walked = log[stop - 1]
        rest = (self._records[key] for key in keys[first:end])
        later = [record for record in rest if _seq(record) > walked]
        for record in heapq.nsmallest(limit - len(found), later, key=_seq):
            found.append(record)
            if room.take(record):
                break
        return succeed(found)

    def expiring(self, limit: int = 100) -> Deferred[list[Deadline]]:
        if self._closed:
            return self._closed_error("expiring")
        soonest = heapq.nsmallest(limit, ((due, key) for key, due in self._expiring.items()))
        return succeed([Deadline(key, self._records[key].stamp, due) for due, key in soonest])

    def last_seq(self) -> Deferred[int]:
        if self._closed:
            return self._closed_error("last_seq")
        return succeed(self._last_seq)

    def purge_tombstones(self, before_seq: int) -> Deferred[int]:
        if self._closed:
            return self._closed_error("purge_tombstones")
        doomed = [
            record
            for record in self._records.values()
            if record.deleted and record.seq is not None and record.seq < before_seq
        ]
        for record in doomed:
            self._forget(record)
        return succeed(len(doomed))

    def _forget(self, record: Record) -> None:
        assert record.seq is not None
        del self._records[record.key]
        del self._key_at_seq[record.seq]
        index = bisect_right(self._sorted_keys, record.key) - 1
        del self._sorted_keys[index]

    def reset(self) -> Deferred[None]:
        if self._closed:
            return self._closed_error("reset")
        self._records.clear()
        self._expiring.clear()
        self._sorted_keys.clear()
        self._seq_log.clear()
        self._key_at_seq.clear()
        return succeed(None)

    def get_meta(self, name: str) -> Deferred[str | None]:
        if self._closed:
            return self._closed_error("get_meta")
        return succeed(self._meta.get(name))

    def set_meta(self, name: str, value: str) -> Deferred[None]:
        if self._closed:
            return self._closed_error("set_meta")
        if not isinstance(name, str) or not isinstance(value, str):
            return fail(TypeError("meta names and values are text"))
        self._meta[name] = value
        return succeed(None)

    def close(self) -> Deferred[None]:
        self._closed = True
        return succeed(None)


class _Room:
    """The bytes a page cut by size (:class:`~navistore.interfaces.ISizedReads`) has left."""

    def __init__(self, max_bytes: int | None) -> None:
        self.left = max_bytes
        self.spent = False

    def take(self, record: Record) -> bool:
        """Count ``record`` in; return whether the page is now full by size."""
        if self.left is not None:
            self.left -= stored_size(record)
            self.spent = self.left <= 0
        return self.spent


def _seq(record: Record) -> int:
    assert record.seq is not None
    return record.seq


def check_memory(url: BackendURL) -> None:
    """Refuse a ``memory:`` URL with a location or options (it takes neither)."""
    url.refuse_unknown_options(())
    if url.location:
        raise BackendURLError(f"{url.text}: memory: takes no location")


def open_memory(url: BackendURL) -> MemoryBackend:
    """Make a :class:`MemoryBackend` for ``memory:`` (it takes no location and no options)."""
    check_memory(url)
    return MemoryBackend()

"""The storage backend contract (:class:`IStorageBackend`) and what it may raise.

A backend persists records atomically and answers queries; it knows nothing of HTTP, peers or
clocks. Every method returns a :class:`~twisted.internet.defer.Deferred`; failures arrive as
errbacks carrying one of the errors in :mod:`navistore.errors`. The shipped compliance suite
(:class:`navistore.testing.BackendComplianceTests`) checks every clause below.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Union

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from navistore.clock import Stamp
from navistore.errors import BackendClosed, BackendError, InvalidRecord, StorageFailure
from navistore.record import Record, check_record
from navistore.tally import BackendStatistics, StorageSizes

__all__ = [
    "ABSENT",
    "ANY",
    "AllOrNothing",
    "AtomicItem",
    "BackendClosed",
    "BackendError",
    "Deadline",
    "Expect",
    "Expectation",
    "IAtomicApply",
    "IBackendStatistics",
    "IExpiringRecords",
    "IImmediateReads",
    "IPrefixChanges",
    "ISizedReads",
    "IStorageBackend",
    "InvalidRecord",
    "StorageFailure",
    "WouldBlock",
    "check_atomic_items",
    "cut_by_bytes",
    "expectation_holds",
    "stored_size",
    "supersedes",
]


class Expect(enum.Enum):
    """What ``apply`` may require of the stored record besides a smaller stamp."""

    #: No requirement: plain last-writer-wins.
    ANY = "any"
    #: The key must not exist: no record, or a tombstone (``If-None-Match: *``, create-only).
    ABSENT = "absent"


ANY = Expect.ANY
ABSENT = Expect.ABSENT

#: ``ANY``, ``ABSENT``, or a :class:`Stamp` the stored live record must carry (``If-Match``).
Expectation = Union[Expect, Stamp]


def expectation_holds(stored: Record | None, expect: Expectation) -> bool:
    """Tell whether ``expect`` holds for the currently stored record (``None``: none stored).

    One definition shared by every backend, so that they cannot disagree: a stamp expectation
    only matches a live record with exactly that stamp, never a tombstone.
    """
    if expect is ANY:
        return True
    live = stored is not None and not stored.deleted
    if expect is ABSENT:
        return not live
    return live and stored is not None and stored.stamp == expect


def check_atomic_items(items: Sequence[tuple[Record | str, Expectation]]) -> list[str]:
    """The keys of an atomic apply's items, in order; InvalidRecord for a malformed record,
    a check whose key is no text, or a key named twice (one definition for every backend)."""
    keys: list[str] = []
    for item, _expect in items:
        if isinstance(item, str):
            keys.append(item)
        else:
            keys.append(check_record(item).key)
    if len(set(keys)) != len(keys):
        raise InvalidRecord("an atomic apply names each key once")
    return keys


def supersedes(record: Record, stored: Record | None) -> bool:
    """Tell whether ``record`` wins over ``stored`` under last-writer-wins."""
    return stored is None or record.stamp > stored.stamp


class IStorageBackend(Interface):
    """Persists :class:`~navistore.record.Record` objects atomically and answers queries.

    Ordering: keys sort as strings (code point order, which is UTF-8 byte order). Sequence numbers
    (``seq``) are node-local, start at 1, strictly increase with every stored record, and are
    never reused, not even after ``purge_tombstones``, ``reset`` or reopening the storage.
    """

    kind = Attribute("A short name of the backend kind, e.g. 'memory' or 'sqlite'.")
    persistent = Attribute("True if data survives closing and reopening the storage.")

    def get(key: str) -> Deferred[Record | None]:
        """Return a Deferred firing with the stored Record of ``key`` (tombstones included),
        or None when the key was never stored (or its tombstone was purged)."""

    def apply(record: Record, expect: Expectation = ANY) -> Deferred[Record | None]:
        """Store ``record`` atomically if it wins, and return a Deferred firing with it.

        In one transaction: if ``record.stamp`` is greater than the stored record's stamp (or
        nothing is stored) and the stored record satisfies ``expect``, store ``record``, give it
        the next ``seq`` and fire with the stored record (``seq`` set). Otherwise change nothing
        and fire with None; this makes applying a record idempotent (an equal stamp is a no-op)
        and commutative. A malformed record fails with InvalidRecord, storing nothing.
        """

    def scan(
        prefix: str = "/",
        after: str | None = None,
        limit: int = 1000,
        include_deleted: bool = False,
    ) -> Deferred[list[Record]]:
        """Return a Deferred firing with up to ``limit`` Records whose key starts with
        ``prefix`` (a canonical prefix; ``/`` matches all) and is greater than ``after``, in key
        order. Tombstones only with ``include_deleted``. Paging: pass the last key as ``after``."""

    def changes(since: int = 0, limit: int = 1000) -> Deferred[list[Record]]:
        """Return a Deferred firing with up to ``limit`` Records with ``seq > since`` in seq
        order, tombstones included. A key appears once, at its latest seq."""

    def last_seq() -> Deferred[int]:
        """Return a Deferred firing with the greatest seq ever assigned (0 if none)."""

    def purge_tombstones(before_seq: int) -> Deferred[int]:
        """Remove tombstones whose ``seq`` is below ``before_seq``; fire with how many."""

    def reset() -> Deferred[None]:
        """Remove every record, tombstones included. Meta data and the seq counter are kept,
        so seqs are never reused and the node keeps its identity. Fires with None."""

    def get_meta(name: str) -> Deferred[str | None]:
        """Return a Deferred firing with the text stored under ``name``, or None."""

    def set_meta(name: str, value: str) -> Deferred[None]:
        """Durably store text under ``name`` (replacing any); fire with None."""

    def close() -> Deferred[None]:
        """Finish pending work and release the storage; fire with None. Closing twice is
        harmless; any other call after close fails with BackendClosed."""


class WouldBlock(Exception):
    """An immediate read cannot be answered without waiting: use the Deferred method instead."""


class IImmediateReads(Interface):
    """Optional, beside :class:`IStorageBackend`: point reads answered at once when possible.

    A Deferred and a coroutine per request cost more than a point read in RAM or in sqlite's page
    cache, so the web layer answers most GETs (and finds the version a PUT replaces) through
    :meth:`peek`, and falls back to :meth:`IStorageBackend.get` when it raises WouldBlock.
    """

    def peek(key: str) -> Record | None:
        """Return what ``get(key)`` would fire with now, every apply issued before this call
        included, without blocking; raise WouldBlock when that needs waiting (e.g. an apply of
        the key is still being written), BackendClosed once closed."""


class IPrefixChanges(Interface):
    """Optional, beside :class:`IStorageBackend`: the change feed under one prefix, at the cost
    of what it returns.

    A watcher, a long-poll or an event stream asks for the changes under its prefix. Without
    this interface the Store reads the whole feed (:meth:`IStorageBackend.changes`) and tests
    every key: a prefix that matches nothing costs the whole log, on every poll, and blocks the
    node meanwhile. A backend that can find the changes under a prefix through its key order
    provides :meth:`changes_under`, and the Store uses it for every prefix but ``/``.
    """

    def changes_under(
        prefix: str, since: int = 0, limit: int = 1000, max_bytes: int | None = None
    ) -> Deferred[list[Record]]:
        """Return a Deferred firing with exactly what :meth:`IStorageBackend.changes` after
        ``since`` would list, keeping only the keys that start with the canonical prefix
        ``prefix``, cut to the first ``limit``: seq order, tombstones included, each key once at
        its latest seq, all as of one moment (every call issued before this one included).

        Cost: it must not grow with the length of the log. It may be proportional to the
        number of keys under ``prefix``, or to the changes after ``since`` it passes before it
        has ``limit`` matching ones (whichever is fewer), plus a constant; so a narrow prefix
        costs what it returns, and a prefix matching nothing costs next to nothing, however long
        the log. Fails with BackendClosed once closed, like every other call.

        ``max_bytes`` cuts the page by size as :class:`ISizedReads` says."""


def stored_size(record: Record) -> int:
    """What a record weighs in a page cut by bytes (:class:`ISizedReads`): its key and value."""
    return len(record.key) + len(record.value)


def cut_by_bytes(records: Sequence[Record], max_bytes: int) -> tuple[list[Record], bool]:
    """The records up to and including the one whose size brings the total to ``max_bytes``,
    and whether the total got there (the page is full by size)."""
    left = max_bytes
    for index, record in enumerate(records):
        left -= stored_size(record)
        if left <= 0:
            return list(records[: index + 1]), True
    return list(records), False


class ISizedReads(Interface):
    """Optional, beside :class:`IStorageBackend`: pages cut by bytes as well as by count.

    A page of ``limit`` records over values near the value limit would be gigabytes, read into
    memory at once (and, in sqlite, on the reactor thread). With ``max_bytes`` the read stops
    after the first record that brings the :func:`stored_size` of the page to ``max_bytes`` or
    more: a page holds at least one record and at most ``max_bytes`` plus one record, and a
    page whose size stays under ``max_bytes`` is cut by ``limit`` alone, so the caller tells a
    page cut by bytes (read on after its last record) from the end of the listing. Without it
    (``None``) these are :meth:`IStorageBackend.scan` and :meth:`IStorageBackend.changes`. A
    backend without this interface gets pages cut by count, which the Store then trims.
    """

    def scan(
        prefix: str = "/",
        after: str | None = None,
        limit: int = 1000,
        include_deleted: bool = False,
        max_bytes: int | None = None,
    ) -> Deferred[list[Record]]:
        """:meth:`IStorageBackend.scan`, stopping early by bytes as above."""

    def changes(
        since: int = 0, limit: int = 1000, max_bytes: int | None = None
    ) -> Deferred[list[Record]]:
        """:meth:`IStorageBackend.changes`, stopping early by bytes as above."""


@attrs.frozen
class Deadline:
    """When a live record expires: its key, its stamp (the version that expires) and its
    ``expires_ms``; enough to write its expiry (:meth:`Record.expiry_of
    <navistore.record.Record.expiry_of>`)."""

    key: str
    stamp: Stamp
    expires_ms: int


class IExpiringRecords(Interface):
    """Optional, beside :class:`IStorageBackend`: the live records that carry an expiry
    (:attr:`Record.expires_ms <navistore.record.Record.expires_ms>`), soonest first.

    Every backend stores ``expires_ms`` and ``flags`` with the record and returns them as
    stored; the Store never serves an expired record. This interface lets the node also write
    each expiry as a tombstone when it comes (so that watchers and feeds see it, and the key's
    space is reclaimed) without reading every key: a backend without it keeps expired records
    until they are overwritten, and a node over it refuses new TTLs.
    """

    def expiring(limit: int = 100) -> Deferred[list[Deadline]]:
        """Return a Deferred firing with the :class:`Deadline` of up to ``limit`` live
        records whose ``expires_ms`` is set, in order of ``expires_ms`` (then key), every apply
        issued before this call included. No value is read (a page of large values would be
        gigabytes), and the cost is proportional to what it returns (an index on the
        deadline), not to the number of keys. Fails with BackendClosed once closed."""


#: One item of an atomic apply: a record to store if its expectation holds, or a key whose
#: stored record must satisfy the expectation (a check, storing nothing).
AtomicItem = tuple[Union[Record, str], Expectation]


@attrs.frozen
class AllOrNothing:
    """What :meth:`IAtomicApply.apply_all` did: every record stored (``refused`` None,
    ``stored`` the records with their seqs, in order), or none (``refused`` the index of the
    first item that did not hold, ``stored`` empty)."""

    stored: tuple[Record, ...]
    refused: int | None


class IAtomicApply(Interface):
    """Optional, beside :class:`IStorageBackend`: several records stored together or not at all.

    A transaction of several keys (``POST /_txn``, Consul's ``/v1/txn``) must never leave half
    its writes, nor be decided on a state another write changed meanwhile. Without this
    interface the node refuses such transactions.
    """

    def apply_all(items: Sequence[AtomicItem]) -> Deferred[AllOrNothing]:
        """Decide and store ``items`` in one transaction, after every apply issued before.

        Every item names a different key (else InvalidRecord, storing nothing). A check
        ``(key, expect)`` holds if the key's stored record satisfies ``expect``
        (:func:`expectation_holds`); a write ``(record, expect)`` holds if ``record``
        supersedes the stored one and the stored one satisfies ``expect``, as for
        :meth:`IStorageBackend.apply`. If every item holds, store every record, each with the
        next seq in the order given, and fire with them; else store nothing and fire with the
        index of the first item that did not hold. A malformed record fails with InvalidRecord,
        storing nothing.
        """


class IBackendStatistics(Interface):
    """Optional, beside :class:`IStorageBackend`: what the backend counts as it works, for
    ``/_metrics`` (group commits, their durations, failures, and how much it holds).

    Counting must cost the backend's calls next to nothing: plain numbers in
    :attr:`statistics`, read at scrape time.
    """

    statistics: BackendStatistics = Attribute(
        "The :class:`~navistore.tally.BackendStatistics` the backend adds to as it works."
    )

    def measure_sizes() -> Deferred[StorageSizes]:
        """Measure the live keys, tombstones and bytes held, without stalling the reactor
        (off its thread if that costs); fire with the sizes, also kept in
        ``statistics.sizes``."""


class IExternalWrites(Interface):
    """A backend that other processes may write to (several nodes over one database): it tells
    the node when they did, so that its watchers wake and its caches forget what changed.

    Records the node stored itself are announced too; the follower
    (:mod:`navistore.store.follow`) skips what it already saw.
    """

    def subscribe_external(callback: Callable[[int], None]) -> Callable[[], None]:
        """Call ``callback(newest_seq)`` in the reactor thread whenever the newest seq may have
        moved (a write through any node), within a bounded delay; return an unsubscribe."""

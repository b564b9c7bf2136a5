"""The Store: one node's identity, clock, key rules, conditional writes and change notifications.

The web layer and the replication service talk only to a :class:`Store`; the Store talks only to
its :class:`~navistore.interfaces.IStorageBackend`. Writes are compare-and-set loops over the
backend's atomic ``apply``: the Store reads the key, applies a record conditioned on exactly what
it read, and retries if another write slipped in between. That makes "was this a create?",
``If-Match`` and create-only exact without any lock, for any backend.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Callable

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from navistore.clock import (
    DEFAULT_MAX_DRIFT_MS,
    ClockDriftError,
    HybridClock,
    InvalidStamp,
    Stamp,
    new_node_id,
    validate_node_id,
)
from navistore.conflicts import (
    CONFLICTS_PREFIX,
    DEFAULT_RETENTION_MS,
    HIDDEN_END,
    KEY_ALLOWANCE,
    is_hidden,
    loser_of,
    loser_record,
    parse_conflict_key,
)
from navistore.interfaces import (
    ABSENT,
    ANY,
    AtomicItem,
    Deadline,
    Expectation,
    IAtomicApply,
    IExpiringRecords,
    IImmediateReads,
    IPrefixChanges,
    IStorageBackend,
    WouldBlock,
    cut_by_bytes,
    stored_size,
)
from navistore.keys import DEFAULT_MAX_KEY_BYTES, InvalidKey, normalize_key, normalize_prefix
from navistore.record import DEFAULT_CONTENT_TYPE, DEFAULT_MAX_VALUE_SIZE, Record, merge_seen
from navistore.store.errors import Conflict, NotFound, PreconditionFailed, RefusedRecord
from navistore.store.follow import Follower, follow
from navistore.store.horizon import PurgeHorizon
from navistore.store.pages import Change, ChangesPage, KeysPage, WriteResult
from navistore.store.sized import DEFAULT_PAGE_BYTES, changes_page, scan_page

__all__ = [
    "FALLBACK_SCAN_RECORDS",
    "MATCH_ANY",
    "MAX_TTL_MS",
    "NODE_ID_META",
    "ChangeListener",
    "Store",
    "StoreCounters",
]

log = Logger()

#: The node id lives in the backend's meta data under this name.
NODE_ID_META = "node_id"

#: ``If-Match: *``: the key must exist, whatever its version.
MATCH_ANY = "*"

#: The longest TTL a write may ask for: ten years.
MAX_TTL_MS = 10 * 365 * 86_400_000

#: How often a write retries after losing a compare-and-set race before giving up.
_MAX_WRITE_ATTEMPTS = 100

ChangeListener = Callable[[Record], None]


def _unchanged(stored: Record | None) -> Expectation:
    """The expectation that a key still holds ``stored``: its stamp if live, else absent."""
    return ABSENT if stored is None or stored.deleted else stored.stamp


def _live(record: Record | None) -> Record | None:
    return None if record is None or record.deleted else record


#: Over a backend without IPrefixChanges, the most changes one prefix-filtered read of the feed
#: examines (or ten times its limit, if more): it then answers what it found so far.
FALLBACK_SCAN_RECORDS = 10_000


def _seq_of(record: Record) -> int:
    assert record.seq is not None
    return record.seq


def _outermost(prefix: str | tuple[str, ...]) -> tuple[str, ...]:
    """The prefixes, in key order, without those inside another: a key under two nested
    prefixes counts once. Sorted, the prefixes a string starts with come right before it."""
    kept: list[str] = []
    for candidate in sorted({prefix} if isinstance(prefix, str) else set(prefix)):
        if not (kept and candidate.startswith(kept[-1])):
            kept.append(candidate)
    return tuple(kept)


def _short_page(found: list[Record], since: int, cursor: int, newest: int) -> ChangesPage:
    """A page that is not full, read to the end: complete up to ``cursor``, and at least up
    to ``newest`` (read before it). Nothing after ``since`` may mean the client is ahead of
    this node (restored, or another node behind the same URL): answer the node's own newest
    seq, never an echo."""
    return ChangesPage(found, max(cursor, newest) if cursor > since else newest)


class StoreCounters:
    """What a Store has done since it opened, as plain numbers (``/_metrics`` reads them).

    :ivar reads: key reads answered (:meth:`Store.get`, or a :meth:`Store.peek` that found the
        key; a peek that finds nothing is followed by a get, which counts).
    :ivar puts: records written by this node's own writes (puts, bulk loads).
    :ivar deletes: tombstones written by this node's own deletes.
    :ivar precondition_failures: writes refused by ``If-Match`` / ``If-None-Match`` (412).
    :ivar conflicts: create-only writes refused because the key exists (409).
    :ivar received: records from other nodes (peers, a clone source, an upstream) stored.
    :ivar lww_losses: records from other nodes older than the stored one: last-writer-wins
        kept the stored record.
    :ivar duplicates: records from other nodes this node held already (the same stamp).
    :ivar expiries: tombstones this node wrote for keys whose TTL ran out.
    :ivar conflict_losers: losers of concurrent writes kept here (met here, or received from
        a peer that met them), see :mod:`navistore.conflicts`.
    """

    __slots__ = (
        "conflict_losers",
        "conflicts",
        "deletes",
        "duplicates",
        "expiries",
        "lww_losses",
        "precondition_failures",
        "puts",
        "reads",
        "received",
    )

    def __init__(self) -> None:
        self.reads = self.puts = self.deletes = 0
        self.precondition_failures = self.conflicts = 0
        self.received = self.lww_losses = self.duplicates = 0
        self.expiries = self.conflict_losers = 0


class Store:
    """One Navistore node over one backend.

    Build it with :meth:`open`, which loads (or creates and saves) the node id.

    :param backend: where records live.
    :param clock: the node's hybrid logical clock (its node id is the node's id).
    :param max_key_bytes: the longest key accepted from clients.
    :param page_bytes: the bytes of keys and values one page of :meth:`list` or
        :meth:`changes` holds, unless the call says otherwise (see :mod:`navistore.store.sized`).
    """

    def __init__(
        self,
        backend: IStorageBackend,
        clock: HybridClock,
        *,
        max_key_bytes: int = DEFAULT_MAX_KEY_BYTES,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        page_bytes: int = DEFAULT_PAGE_BYTES,
    ) -> None:
        self.backend = backend
        self.clock = clock
        self.max_key_bytes = max_key_bytes
        self.max_value_size = max_value_size
        self.page_bytes = page_bytes
        #: How long the loser of a conflict is kept (see :mod:`navistore.conflicts`).
        self.conflict_retention_ms = DEFAULT_RETENTION_MS
        self._listeners: list[ChangeListener] = []
        self._horizon = PurgeHorizon(backend)
        self._peek: Callable[[str], Record | None] | None = None
        if IImmediateReads.providedBy(backend):
            self._peek = backend.peek
        self._newest_seq = 0
        self._follower: Follower | None = None
        #: What this Store has done (see :class:`StoreCounters`).
        self.counters = StoreCounters()

    @classmethod
    async def open(
        cls,
        backend: IStorageBackend,
        *,
        max_key_bytes: int = DEFAULT_MAX_KEY_BYTES,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        max_drift_ms: int = DEFAULT_MAX_DRIFT_MS,
        wall_ms: Callable[[], int] | None = None,
    ) -> Store:
        """Open a node over ``backend``: keep its node id, or make one the first time.

        The clock starts past the stamp of the newest stored record, so a node whose wall clock
        went back while it was down still writes newer versions than it wrote before.
        """
        node_id = await backend.get_meta(NODE_ID_META)
        if node_id is None:
            node_id = new_node_id()
            await backend.set_meta(NODE_ID_META, node_id)
        validate_node_id(node_id)
        clock = (
            HybridClock(node_id, wall_ms=wall_ms, max_drift_ms=max_drift_ms)
            if wall_ms is not None
            else HybridClock(node_id, max_drift_ms=max_drift_ms)
        )
        last_seq = await backend.last_seq()
        if last_seq:
            newest = await backend.changes(last_seq - 1, 1)
            for record in newest:
                cls._advance_clock(clock, record.stamp)
        store = cls(backend, clock, max_key_bytes=max_key_bytes, max_value_size=max_value_size)
        store._newest_seq = last_seq
        store._follower = follow(store)
        return store

    @property
    def newest_seq(self) -> int:
        """The newest seq this node has stored (as of :meth:`open`, then of every record it
        stored since), known at once: the index every answer carries, so that a client that
        reads and then watches from it misses nothing."""
        return self._newest_seq

    @property
    def expires_keys(self) -> bool:
        """Whether the backend lists expiring records (:class:`IExpiringRecords`), so that the
        node writes each expiry as a tombstone; writes with a TTL need it."""
        return IExpiringRecords.providedBy(self.backend)

    @property
    def node_id(self) -> str:
        """This node's id: 16 hex digits, kept in the backend's meta data."""
        return self.clock.node_id

    # -- keys ---------------------------------------------------------------------------------

    def canonical_key(self, raw: str | bytes, *, allow_format: bool = False) -> str:
        """The canonical form of a client's key, by this node's rules; InvalidKey otherwise.

        :param allow_format: accept invisible format characters, which no write may carry but
            which keys stored before they were refused may hold (to read and delete those).
        """
        return normalize_key(raw, max_bytes=self.max_key_bytes, allow_format=allow_format)

    def canonical_prefix(self, raw: str | bytes) -> str:
        """The canonical form of a client's listing prefix; InvalidKey otherwise."""
        return normalize_prefix(raw, max_bytes=self.max_key_bytes)

    # -- reads ------------------------------------------------------------------------------

    async def get(self, key: str) -> Record | None:
        """Return the live record of a canonical key, or None if absent, deleted or expired
        (an expired key is absent at once, before its expiry's tombstone is written)."""
        self.counters.reads += 1
        return self._present(await self.backend.get(key))

    def _present(self, record: Record | None) -> Record | None:
        """``record`` if it is live and not expired, else None."""
        if record is None or record.deleted:
            return None
        if record.expires_ms is not None and record.expires_ms <= self.clock.wall_ms():
            return None
        return record

    def peek(self, key: str) -> Record | None:
        """What :meth:`get` would answer, at once; WouldBlock when that needs waiting (or the
        backend has no immediate reads, see :class:`~navistore.interfaces.IImmediateReads`)."""
        if self._peek is None:
            raise WouldBlock(key)
        record = self._peek(key)
        if record is None or record.deleted:
            return None
        if record.expires_ms is not None and record.expires_ms <= self.clock.wall_ms():
            return None
        self.counters.reads += 1
        return record

    async def list(
        self,
        prefix: str = "/",
        *,
        after: str | None = None,
        limit: int = 1000,
        max_bytes: int | None = None,
    ) -> KeysPage:
        """List live records under a canonical prefix in key order, one page at a time.

        A page holds at most ``limit`` records and is cut once its keys and values reach
        ``max_bytes`` (default :attr:`page_bytes`; at least one record): ``next`` then goes on
        after its last key, even if no key follows. Conflict losers (``/_conflicts/...``) are
        listed only under a prefix inside their namespace.
        """
        size = self.page_bytes if max_bytes is None else max_bytes
        records, full = await scan_page(self.backend, prefix, after, limit + 1, False, size)
        if len(records) > limit:
            records = records[:limit]
            full = True
        following = records[-1].key if full else None
        if not prefix.startswith(CONFLICTS_PREFIX) and any(is_hidden(r.key) for r in records):
            records = [record for record in records if not is_hidden(record.key)]
            if following is not None and is_hidden(following):
                # Go on past the losers (no key after them is one), to fill the page.
                rest = await self.list(
                    prefix, after=HIDDEN_END, limit=limit - len(records), max_bytes=size
                )
                records.extend(rest.records)
                following = rest.next
        now = self.clock.wall_ms()
        if any(record.expires_ms is not None and record.expires_ms <= now for record in records):
            records = [record for record in records if not record.expired(now)]
        return KeysPage(records, following)

    async def changes(
        self,
        since: int = 0,
        *,
        limit: int = 1000,
        prefix: str | tuple[str, ...] = "/",
        max_bytes: int | None = None,
        everything: bool = False,
    ) -> ChangesPage:
        """Return what changed after seq ``since``, in seq order, tombstones included.

        The whole feed (prefix ``/``) leaves conflict losers out, as listings do, unless
        ``everything`` (replication and the tombstone collector need every record).

        With a prefix (or a tuple of them: a change under any counts, once even where they
        nest), changes elsewhere are skipped; ``last_seq`` still advances past them so
        that a client resuming from it never re-reads what was skipped. At most ``limit``
        records are returned; when the page is full ``last_seq`` is the seq of its last record.
        A ``since`` beyond the newest seq answers the newest seq, so the client sees it is ahead.

        A backend providing :class:`~navistore.interfaces.IPrefixChanges` finds the changes
        under a prefix at the cost of what it returns. Over any other, one call examines at
        most :data:`FALLBACK_SCAN_RECORDS` changes (or ten pages) and may answer a short, even
        empty, page whose ``last_seq`` is where it stopped, below the newest seq: ``more`` then
        says to read on from there at once. So no call holds the node for the whole log.

        A page is also cut once its keys and values reach ``max_bytes`` (default
        :attr:`page_bytes`; at least one record): ``more`` then says so, and ``last_seq`` is its
        last record's.
        """
        if limit < 1:
            raise ValueError(f"a page holds at least one change, not limit={limit}")
        size = self.page_bytes if max_bytes is None else max_bytes
        # Read the newest seq first: every change up to it is committed, so a client resuming
        # from it after a short page can miss nothing written meanwhile.
        newest = await self.backend.last_seq()
        prefixes = _outermost(prefix)
        if not prefixes:
            return ChangesPage([], newest)
        if prefixes[0] in ("", "/"):
            page = await self._whole_feed(since, limit, newest, size)
            if not everything and any(is_hidden(record.key) for record in page.records):
                kept = [record for record in page.records if not is_hidden(record.key)]
                page = ChangesPage(kept, page.last_seq, more=page.more)
            return page
        if IPrefixChanges.providedBy(self.backend):
            return await self._changes_under(prefixes, since, limit, newest, size)
        return await self._bounded_scan(prefixes, since, limit, newest, size)

    async def _whole_feed(self, since: int, limit: int, newest: int, size: int) -> ChangesPage:
        page, full = await changes_page(self.backend, since, limit, size)
        if full or len(page) == limit:
            return ChangesPage(page, _seq_of(page[-1]), more=True)
        return _short_page(page, since, _seq_of(page[-1]) if page else since, newest)

    async def _changes_under(
        self, prefixes: tuple[str, ...], since: int, limit: int, newest: int, size: int
    ) -> ChangesPage:
        """One ``changes_under`` per prefix (they are disjoint), merged by seq.

        Each read is complete up to some seq: its last record's if it is full, else at least
        ``newest`` (read before it) and its last record's. Records past the least of those
        are left for the next page: a later read may hold a change an earlier one could not
        have seen, and ``last_seq`` must not pass an unread change.
        """
        backend = IPrefixChanges(self.backend)
        complete_to = None
        pages: list[list[Record]] = []
        for prefix in prefixes:
            page: list[Record] = await backend.changes_under(prefix, since, limit, size)
            page, full = cut_by_bytes(page, size)
            pages.append(page)
            if full or len(page) == limit:
                reached = _seq_of(page[-1])
            else:
                reached = max(newest, _seq_of(page[-1]) if page else newest)
            complete_to = reached if complete_to is None else min(complete_to, reached)
        assert complete_to is not None
        found: list[Record] = []
        left = size
        for record in heapq.merge(*pages, key=_seq_of):
            if _seq_of(record) > complete_to:
                break
            found.append(record)
            left -= stored_size(record)
            if len(found) == limit or left <= 0:
                return ChangesPage(found, _seq_of(record), more=True)
        return _short_page(found, since, complete_to, newest)

    async def _bounded_scan(
        self, prefixes: tuple[str, ...], since: int, limit: int, newest: int, size: int
    ) -> ChangesPage:
        """The whole feed page by page, keys tested here, at most a bounded number of changes
        examined (a backend without IPrefixChanges has no better way)."""
        budget = max(FALLBACK_SCAN_RECORDS, 10 * limit)
        found: list[Record] = []
        cursor = since
        batch = max(limit, 100)
        examined = 0
        left = size
        while examined < budget:
            asked = min(batch, budget - examined)
            page, full = await changes_page(self.backend, cursor, asked, size)
            for record in page:
                if record.key.startswith(prefixes):
                    found.append(record)
                    left -= stored_size(record)
                    if len(found) == limit or left <= 0:
                        return ChangesPage(found, _seq_of(record), more=True)
                cursor = _seq_of(record)
            examined += len(page)
            if len(page) < asked and not full:
                return _short_page(found, since, cursor, newest)
        # Stopped at the bound: everything up to ``cursor`` was examined, and no further.
        return ChangesPage(found, cursor, more=cursor < newest)

    async def last_seq(self) -> int:
        """The node's newest seq."""
        result: int = await self.backend.last_seq()
        return result

    # -- writes -----------------------------------------------------------------------------

    async def put(
        self,
        key: str,
        value: bytes,
        content_type: str | None = None,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        create_only: bool = False,
        ttl_ms: int | None = None,
        flags: int = 0,
    ) -> WriteResult:
        """Write a value, optionally conditionally, and return what was stored.

        :param if_match: a stamp text, or ``*`` (the key must exist); else PreconditionFailed.
        :param if_none_match: ``If-None-Match: *``: the key must not exist, else
            PreconditionFailed.
        :param create_only: POST semantics: the key must not exist, else Conflict.
        :param ttl_ms: the key expires this many ms after the write (by this node's wall
            clock), on every node; None: never.
        :param flags: an opaque unsigned 64-bit number kept with the value.
        :raises ValueError: a TTL out of range, or one the backend cannot expire.
        """
        content = content_type or DEFAULT_CONTENT_TYPE
        expires = self._deadline(ttl_ms)

        def make(stamp: Stamp, seen: tuple[Stamp, ...]) -> Record:
            return Record(key, value, content, stamp, False, None, (), expires, flags, seen)

        return await self._write(key, make, if_match, if_none_match, create_only)

    def _seen(self, stored: Record | None) -> tuple[Stamp, ...]:
        """The ``replaces`` of a write by this node over ``stored`` (a tombstone or an expired
        record too: the write has seen it), see :func:`~navistore.record.merge_seen`."""
        if stored is None:
            return ()
        return merge_seen(stored.replaces, stored.stamp, self.clock.node_id)

    def _deadline(self, ttl_ms: int | None) -> int | None:
        """The deadline of a write made now with ``ttl_ms`` (None: none); ValueError for a TTL
        out of range, or one the backend cannot expire."""
        if ttl_ms is None:
            return None
        if not 0 < ttl_ms <= MAX_TTL_MS:
            raise ValueError(f"a TTL is from 1 ms to {MAX_TTL_MS // 1000} s")
        if not self.expires_keys:
            raise ValueError(f"the {self.backend.kind} backend cannot expire keys")
        return self.clock.wall_ms() + ttl_ms

    def put_now(
        self, key: str, value: bytes, content_type: str | None = None
    ) -> Deferred[WriteResult] | None:
        """An unconditional :meth:`put` without a coroutine, when the key's current version is
        known at once (:meth:`peek`); None when it is not, and the caller uses :meth:`put`.

        It is the first round of put's compare-and-set loop: if another write slips in before
        the apply, the rest of the loop (:meth:`put`) decides again.
        """
        if self._peek is None:
            return None
        try:
            raw = self._peek(key)
        except WouldBlock:
            return None
        stored_now = _live(raw)
        record = Record(
            key,
            value,
            content_type or DEFAULT_CONTENT_TYPE,
            self.clock.now(),
            replaces=self._seen(raw) if raw is not None else (),
        )
        expect: Expectation = ABSENT if stored_now is None else stored_now.stamp
        current = self._present(stored_now)

        def decided(stored: Record | None) -> WriteResult | Deferred[WriteResult]:
            if stored is None:
                return Deferred.fromCoroutine(self.put(key, value, content_type))
            self.counters.puts += 1
            self._notify(stored)
            return WriteResult(stored, current is None, current)

        applied: Deferred[Record | None] = self.backend.apply(record, expect)
        return applied.addCallback(decided)

    async def delete(
        self, key: str, *, if_match: str | None = None, if_none_match: bool = False
    ) -> Record:
        """Delete a key (store its tombstone) and return the tombstone.

        :param if_none_match: ``If-None-Match: *``: the key must not exist, else
            PreconditionFailed (so such a delete never deletes anything).
        :raises NotFound: the key does not exist.
        """

        result = await self.remove(key, if_match=if_match, if_none_match=if_none_match)
        return result.record

    async def remove(
        self, key: str, *, if_match: str | None = None, if_none_match: bool = False
    ) -> WriteResult:
        """:meth:`delete`, answering the tombstone with the live record it deleted
        (``previous``)."""

        def make(stamp: Stamp, seen: tuple[Stamp, ...]) -> Record:
            return Record.tombstone(key, stamp, seen)

        return await self._write(key, make, if_match, if_none_match, False, must_exist=True)

    async def expire(self, deadline: Deadline) -> Record | None:
        """Write the expiry of the record ``deadline`` names, whose time has come
        (:meth:`Record.expiry <navistore.record.Record.expiry>`): only if that record is
        still the stored one. Return the tombstone stored, or None (it was replaced, or
        expired already)."""
        # The expiry carries what the expired record had seen (Record.expiry_of).
        current = await self.backend.get(deadline.key)
        if current is None or current.stamp != deadline.stamp or current.deleted:
            return None
        tombstone = Record.expiry_of(
            deadline.key, deadline.stamp, deadline.expires_ms, current.replaces
        )
        stored: Record | None = await self.backend.apply(tombstone, deadline.stamp)
        if stored is not None:
            self.counters.expiries += 1
            self._notify(stored)
        return stored

    @property
    def writes_together(self) -> bool:
        """Whether the backend stores several records all or nothing (:class:`IAtomicApply`),
        which :meth:`write_together` needs."""
        return IAtomicApply.providedBy(self.backend)

    async def write_together(
        self, changes: Sequence[Change], unchanged: Sequence[tuple[str, Record | None]] = ()
    ) -> tuple[Record, ...] | None:
        """Write every change, all or nothing, if every key (``unchanged`` ones too) is still as
        the caller read it; return the stored records in order (a delete's tombstone; a delete
        of an absent key stores nothing), or None when a key changed meanwhile (nothing
        written). One backend transaction: nobody reads half of it on this node.

        :raises ValueError: the backend cannot (see :attr:`writes_together`).
        """
        if not self.writes_together:
            raise ValueError(f"the {self.backend.kind} backend cannot write keys together")
        items: list[AtomicItem] = []
        for change in changes:
            expect = await self._as_read(change.key, change.read)
            if change.read is not None:
                self.clock.observe(change.read.stamp, trusted=True)
            if change.value is None and change.read is None:
                items.append((change.key, expect))
        for key, read in unchanged:
            items.append((key, await self._as_read(key, read)))
        for change in changes:
            if change.value is None and change.read is None:
                continue
            # What the write replaces: the record read, or what is stored where none was (a
            # tombstone, an expired record); the expectations below hold it in place.
            stored = change.read if change.read is not None else await self.backend.get(change.key)
            seen = self._seen(stored)
            stamp = self.clock.now()
            if change.value is None:
                record = Record.tombstone(change.key, stamp, seen)
            else:
                content = change.content_type or DEFAULT_CONTENT_TYPE
                expires = self._deadline(change.ttl_ms)
                record = Record(
                    change.key,
                    change.value,
                    content,
                    stamp,
                    expires_ms=expires,
                    flags=change.flags,
                    replaces=seen,
                )
            items.append((record, await self._as_read(change.key, change.read)))
        atomic: IAtomicApply = self.backend  # type: ignore[assignment]
        outcome = await atomic.apply_all(items)
        if outcome.refused is not None:
            self.counters.precondition_failures += 1
            return None
        for stored in outcome.stored:
            if stored.deleted:
                self.counters.deletes += 1
            else:
                self.counters.puts += 1
            self._notify(stored)
        return outcome.stored

    async def _as_read(self, key: str, read: Record | None) -> Expectation:
        """The expectation that ``key`` is still as read: its stamp, or absent (an expired
        record still stored counts as absent: expect exactly it)."""
        if read is not None:
            return read.stamp
        stored = _live(await self.backend.get(key))
        if stored is not None and stored.expired(self.clock.wall_ms()):
            return stored.stamp
        return ABSENT

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every live key under a canonical prefix; return how many were deleted.

        Each key is deleted on its own (there is no multi-key transaction); a key written
        under the prefix while this runs may survive it.
        """
        deleted = 0
        after: str | None = None
        while True:
            page = await self.list(prefix, after=after, limit=500)
            for record in page.records:
                try:
                    await self.delete(record.key, if_match=record.stamp.encode())
                except (NotFound, PreconditionFailed):
                    continue  # changed meanwhile: the newer write wins
                deleted += 1
            if page.next is None:
                return deleted
            after = page.next

    async def _write(
        self,
        key: str,
        make: Callable[[Stamp, tuple[Stamp, ...]], Record],
        if_match: str | None,
        if_none_match: bool,
        create_only: bool,
        *,
        must_exist: bool = False,
    ) -> WriteResult:
        try:
            return await self._compare_and_set(
                key, make, if_match, if_none_match, create_only, must_exist
            )
        except PreconditionFailed:
            self.counters.precondition_failures += 1
            raise
        except Conflict:
            self.counters.conflicts += 1
            raise

    async def _compare_and_set(
        self,
        key: str,
        make: Callable[[Stamp, tuple[Stamp, ...]], Record],
        if_match: str | None,
        if_none_match: bool,
        create_only: bool,
        must_exist: bool,
    ) -> WriteResult:
        wanted: Stamp | None = None
        if if_match is not None and if_match != MATCH_ANY:
            try:
                wanted = Stamp.decode(if_match)
            except InvalidStamp:
                # Not a version this store ever made, so it matches nothing (RFC 9110 13.1.1).
                raise PreconditionFailed(
                    key, f"If-Match: {if_match}", _live(await self.backend.get(key))
                ) from None
        for _attempt in range(_MAX_WRITE_ATTEMPTS):
            raw = await self.backend.get(key)
            stored_now = _live(raw)
            current = self._present(stored_now)
            # Preconditions are evaluated before the method's own rules (RFC 9110 13.2.2).
            if current is None:
                if if_match is not None:
                    raise PreconditionFailed(key, f"If-Match: {if_match}", None)
                if must_exist:
                    raise NotFound(key)
                # An expired record is absent, but it is still stored until its expiry is
                # written: the write replaces exactly it.
                expect: Expectation = ABSENT if stored_now is None else stored_now.stamp
            else:
                if if_none_match:
                    raise PreconditionFailed(key, "If-None-Match: *", current)
                if wanted is not None and current.stamp != wanted:
                    raise PreconditionFailed(key, f"If-Match: {if_match}", current)
                if create_only:
                    raise Conflict(key, current)
                expect = current.stamp
            record = make(self.clock.now(), self._seen(raw))
            stored = await self.backend.apply(record, expect)
            if stored is not None:
                if stored.deleted:
                    self.counters.deletes += 1
                else:
                    self.counters.puts += 1
                self._notify(stored)
                return WriteResult(stored, current is None, current)
            # Lost a race, or the stored stamp (from a peer, or from before a clock step) is
            # ahead of this clock: catch the clock up and decide again on fresh state.
            latest = await self.backend.get(key)
            if latest is not None:
                self._advance_clock(self.clock, latest.stamp)
        raise RuntimeError(f"write of {key!r} kept losing races; giving up")  # pragma: no cover

    def check_received(self, records: Sequence[Record]) -> None:
        """Refuse records from another node that this node's API would refuse: a key against
        the grammar or over ``max_key_bytes``, a reserved key, a value over ``max_value_size``,
        a stamp too far ahead of this clock. A peer's records are input like any other.

        :raises RefusedRecord: naming the first bad record (by its index in ``records``).
        :raises ClockDriftError: a stamp is too far in the future.
        """
        for index, record in enumerate(records):
            try:
                if is_hidden(record.key):
                    canonical = self._check_loser(record)
                else:
                    canonical = normalize_key(record.key, max_bytes=self.max_key_bytes)
            except InvalidKey as exc:
                raise RefusedRecord(index, record.key, exc.reason) from None
            if canonical != record.key:
                raise RefusedRecord(index, record.key, "the key is not in its canonical form")
            if len(record.value) > self.max_value_size:
                reason = f"a value of {len(record.value)} bytes, the limit is {self.max_value_size}"
                raise RefusedRecord(index, record.key, reason)
            self.clock.check(record.stamp)

    def _check_loser(self, record: Record) -> str:
        """The canonical key of a received loser record (:mod:`navistore.conflicts`), whose key
        names a key this node would accept and the loser's stamp, and whose stamp is that one
        (or, for its expiry, that one's successor); InvalidKey otherwise."""
        parsed = parse_conflict_key(record.key)
        if parsed is None:
            raise InvalidKey(
                record.key, f"not a loser record's key ({CONFLICTS_PREFIX}<key>/<stamp>)"
            )
        key, stamp = parsed
        normalize_key(key, max_bytes=self.max_key_bytes)
        if record.stamp != stamp and not (record.is_expiry and record.stamp == stamp.successor()):
            raise InvalidKey(record.key, "a loser record carries the stamp its key names")
        return normalize_key(
            record.key, max_bytes=self.max_key_bytes + KEY_ALLOWANCE, allow_reserved=True
        )

    async def apply_remote(self, record: Record) -> Record | None:
        """Apply a record received from a peer with last-writer-wins; None if it lost.

        :raises RefusedRecord: the record breaks this node's rules; nothing is stored.
        :raises ClockDriftError: its stamp is too far in the future; nothing is stored.
        """
        [stored] = await self.apply_remote_batch([record])
        return stored

    async def apply_remote_batch(self, records: Sequence[Record]) -> Sequence[Record | None]:
        """Apply a batch received from a peer, each record with last-writer-wins, keeping the
        loser of every conflict it meets (:mod:`navistore.conflicts`).

        Every record is checked by this node's rules first (:meth:`check_received`), so a batch
        is refused whole (RefusedRecord, ClockDriftError) rather than half applied. Each record
        is applied on condition that the key still holds what was read just before, so the
        record it replaced (or lost to) is known exactly; the applies are issued together, so a
        backend with group commit writes the batch in one transaction.
        """
        self.check_received(records)
        if records:
            # Observing the greatest stamp leaves the clock where observing each would; every
            # stamp's drift was checked just above, in this same turn of the reactor.
            self.clock.observe(max(record.stamp for record in records), trusted=True)
        outcomes: list[Record | None] = [None] * len(records)
        losers: list[Record] = []
        waiting = list(range(len(records)))
        for _attempt in range(_MAX_WRITE_ATTEMPTS):
            if not waiting:
                break
            currents = await self._stored_now([records[index].key for index in waiting])
            pending = [
                self.backend.apply(records[index], _unchanged(current))
                for index, current in zip(waiting, currents)
            ]
            applied: list[Record | None] = await gatherResults(pending, consumeErrors=True)
            again: list[int] = []
            for index, current, stored in zip(waiting, currents, applied):
                record = records[index]
                if stored is not None:
                    outcomes[index] = stored
                    self.counters.received += 1
                    if is_hidden(stored.key) and not stored.deleted:
                        self.counters.conflict_losers += 1
                    self._notify(stored)
                elif current is not None and current.stamp >= record.stamp:
                    # Lost to last-writer-wins (the stored stamps of a key only grow), or a
                    # duplicate.
                    if current.stamp == record.stamp:
                        self.counters.duplicates += 1
                    else:
                        self.counters.lww_losses += 1
                else:
                    again.append(index)  # the key changed since it was read: read it again
                    continue
                loser = loser_of(record, current)
                if loser is not None:
                    losers.append(loser_record(loser, self.conflict_retention_ms))
            waiting = again
        if waiting:  # pragma: no cover - a key rewritten under every one of 100 attempts
            raise RuntimeError("a received batch kept losing races; giving up")
        if losers:
            await self._keep_losers(losers)
        return outcomes

    async def _stored_now(self, keys: Sequence[str]) -> Sequence[Record | None]:
        """What is stored for each key (tombstones too): at once where the backend can say,
        else read together."""
        found: list[Record | None] = []
        missing: list[int] = []
        for index, key in enumerate(keys):
            if self._peek is not None:
                try:
                    found.append(self._peek(key))
                    continue
                except WouldBlock:
                    pass
            found.append(None)
            missing.append(index)
        if missing:
            read: list[Record | None] = await gatherResults(
                [self.backend.get(keys[index]) for index in missing], consumeErrors=True
            )
            for index, record in zip(missing, read):
                found[index] = record
        return found

    async def _keep_losers(self, losers: Sequence[Record]) -> None:
        """Store the loser records of the conflicts just met; another node that met the same
        conflict made the same records, so one of the two is a duplicate. A failure is logged,
        never the received batch's: what was received is stored."""
        try:
            kept: list[Record | None] = await gatherResults(
                [self.backend.apply(loser, ANY) for loser in losers], consumeErrors=True
            )
        except Exception:
            log.failure("keeping {count} conflict losers", count=len(losers))
            return
        for stored in kept:
            if stored is not None:
                self.counters.conflict_losers += 1
                self._notify(stored)

    async def get_meta(self, name: str) -> str | None:
        """Read node-level meta data (peers, cursors) kept beside the records."""
        value: str | None = await self.backend.get_meta(name)
        return value

    async def set_meta(self, name: str, value: str) -> None:
        """Durably store node-level meta data."""
        await self.backend.set_meta(name, value)

    async def reset(self) -> None:
        """Wipe this node's records (not replicated); keep its id, meta data and seq counter.

        Records vanish without tombstones, so the purge horizon moves past every seq so far: a
        feed reader resuming from before the reset is told to resync instead of keeping keys
        that are gone.
        """
        await self._horizon.raise_to(await self.backend.last_seq() + 1)
        await self.backend.reset()

    # -- tombstone purge ----------------------------------------------------------------------

    async def purged_before(self) -> int:
        """The purge horizon (:mod:`navistore.store.horizon`): tombstones with a seq below it
        may be gone (0: none ever purged)."""
        return await self._horizon.current()

    async def purge_tombstones(self, before_seq: int) -> int:
        """Remove tombstones whose seq is below ``before_seq``; return how many were removed.

        The horizon is raised before anything is removed, so a feed reader that checks it after
        reading is told to resync rather than miss a delete.
        """
        await self._horizon.raise_to(before_seq)
        purged: int = await self.backend.purge_tombstones(before_seq)
        return purged

    @staticmethod
    def _advance_clock(clock: HybridClock, stamp: Stamp) -> None:
        """Move the clock past a stored stamp, even one beyond the drift limit (it is ours)."""
        try:
            clock.observe(stamp)
        except ClockDriftError:
            log.warn("stored stamp {stamp} is far ahead of the wall clock", stamp=str(stamp))
            clock.observe(stamp, trusted=True)

    # -- notifications ----------------------------------------------------------------------

    def subscribe(self, listener: ChangeListener) -> None:
        """Call ``listener(record)`` after every record this node stores (seq set)."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: ChangeListener) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self, record: Record) -> None:
        seq = record.seq
        if seq is not None and seq > self._newest_seq:
            self._newest_seq = seq
        for listener in list(self._listeners):
            try:
                listener(record)
            except Exception:
                log.failure("change listener {listener!r} failed", listener=listener)

    # -- lifecycle --------------------------------------------------------------------------

    async def health(self) -> dict[str, object]:
        """Answer whether the backend responds; raises whatever the backend fails with."""
        last = await self.backend.last_seq()
        return {"last_seq": last}

    def close(self) -> Deferred[None]:
        """Close the backend (after its pending writes)."""
        if self._follower is not None:
            self._follower.stop()
        result: Deferred[None] = self.backend.close()
        return result

    # -- bulk writes ------------------------------------------------------------------------

    async def put_many(self, entries: Sequence[tuple[str, bytes, str | None]]) -> Sequence[Record]:
        """Write many keys as plain last-writer-wins puts; return the stored records, by seq.

        Each entry is ``(canonical key, value, content type or None)``, like an unconditional
        :meth:`put`. No write is conditional: every record gets a fresh stamp from this clock and
        every apply is issued before any is awaited, so a backend with group commit stores them
        in one transaction (one commit per load, not one per key). A key given twice is written
        once, with its later entry, at the place of that entry: the outcome of running the puts
        in order (each key's current record is read only for its ``replaces``, at once where
        the backend can). Listeners hear of every stored record, as for single writes. A record that
        lost to a stored stamp ahead of this clock (from a peer, or from before a clock step)
        is stamped again once the clock caught up, as :meth:`put` retries.
        """
        latest: dict[str, tuple[bytes, str]] = {}
        for key, value, content_type in entries:
            latest.pop(key, None)  # re-inserted: the later entry's place in the order counts
            latest[key] = (value, content_type or DEFAULT_CONTENT_TYPE)
        stored: list[Record] = []
        waiting = list(latest)
        for _attempt in range(_MAX_WRITE_ATTEMPTS):
            if not waiting:
                return sorted(stored, key=lambda record: record.seq or 0)
            # What each write replaces, for its ``replaces``: read at once where the backend can.
            currents = await self._stored_now(waiting)
            records = [
                Record(key, *latest[key], self.clock.now(), replaces=self._seen(current))
                for key, current in zip(waiting, currents)
            ]
            # A failure becomes its exception as the outcome, so that it hides no stored record.
            pending = [
                self.backend.apply(record, ANY).addErrback(lambda failure: failure.value)
                for record in records
            ]
            outcomes: list[Record | BaseException | None] = await gatherResults(pending)
            error: BaseException | None = None
            lost: list[str] = []
            for record, outcome in zip(records, outcomes):
                if isinstance(outcome, BaseException):
                    error = error or outcome
                elif outcome is None:
                    lost.append(record.key)
                else:
                    stored.append(outcome)
                    self.counters.puts += 1
                    self._notify(outcome)  # what was stored is announced even if a part failed
            if error is not None:
                raise error
            for key in lost:
                latest_stored = await self.backend.get(key)
                if latest_stored is not None:
                    self._advance_clock(self.clock, latest_stored.stamp)
            waiting = lost
        raise RuntimeError("bulk write kept losing races; giving up")  # pragma: no cover

"""``shards:URL;URL;...``: keys spread over several backends, read back as one.

Placement: a key goes to the member chosen by a stable hash (BLAKE2b, not Python's salted
``hash``) of its first path segment: ``/app``, ``/app/db/url`` and everything under ``/app/``
live in one member. So a listing or a prefix feed under ``/app/`` (any prefix with a second
``/``) asks one member; ``/`` and a prefix inside a first segment (``/ap``) ask every member and
merge their pages, in key order for listings and in seq order for feeds. The spread is as even
as the first segments are many: a store whose keys all sit under one top-level name gains
nothing. The member list is the layout; each member records its place (meta
``navistore.shards``) and a reordered or resized list is refused when opened.

Seqs: the composite hands out its own seqs, one counter for all members, and each member stores
a record with its composite seq appended to its ``chain`` as sixteen hex digits (the shape a
node id has, so every backend stores it); reads strip it. Within one member, composite seqs
grow with the member's own seqs (both follow the order applies are issued in), so the records
after composite seq ``s`` in a member are exactly those after one member seq, found by a binary
search of its feed (``changes(since=x, limit=1)``) and remembered for the positions that pages
of the feed end at (the next ``changes(since=...)`` of a follower costs no search). When opened,
the counter continues from the greatest composite seq any member holds, or the one saved (meta
``navistore.shards.seq`` of the first member) before a purge or a reset removed it: seqs are
never reused, across restarts too.

What it is not:

- Not :class:`~navistore.interfaces.IAtomicApply`: a write to two members is two
  transactions, and a failure between them would leave half of it; a node over shards refuses
  ``/_txn``.
- Not for several nodes at once over the same members: each would hand out its own seqs. To
  scale out over one database, give every node the same ``postgresql://`` URL.
- Members are written only through the composite: a record without its composite seq is
  reported as a :class:`~navistore.errors.StorageFailure`.

The other optional interfaces (immediate reads, prefix feeds, pages cut by bytes, expiring
records) are provided when every member provides them. Meta data lives in the first member.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Callable

from twisted.internet.defer import Deferred, FirstError, fail, gatherResults, succeed
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from navistore.backend import BackendURL, check_backend, open_backend
from navistore.backend.composite_url import parse_shards_url
from navistore.errors import BackendClosed, BackendError, InvalidRecord, StorageFailure
from navistore.interfaces import (
    ANY,
    Deadline,
    Expectation,
    IExpiringRecords,
    IImmediateReads,
    IPrefixChanges,
    ISizedReads,
    IStorageBackend,
    WouldBlock,
    cut_by_bytes,
    stored_size,
)
from navistore.record import Record, check_record

__all__ = ["LAYOUT_META", "SEQ_META", "ShardedBackend", "check_shards", "open_shards", "shard_of"]

#: Meta name under which each member keeps its place in the list, ``index/count``.
LAYOUT_META = "navistore.shards"
#: Meta name (first member) of the composite counter, saved before purges and resets.
SEQ_META = "navistore.shards.seq"

#: Optional interfaces offered when every member offers them.
_SHARED_INTERFACES = (IImmediateReads, IPrefixChanges, ISizedReads, IExpiringRecords)

#: How many (member, composite seq) -> member seq answers are remembered.
_POSITIONS_KEPT = 1024


#: A call made while opening: its Deferred, the method and its arguments.
_Queued = tuple[Deferred[Any], Callable[..., Deferred[Any]], tuple[Any, ...]]


def shard_of(key: str, count: int) -> int:
    """The member (0 to ``count - 1``) that holds ``key``: a hash of its first path segment."""
    segment = key[1:].split("/", 1)[0]
    digest = hashlib.blake2b(segment.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def _pinned(prefix: str, count: int) -> int | None:
    """The one member every key under ``prefix`` is in, if the prefix names a first segment."""
    rest = prefix[1:]
    if "/" not in rest:
        return None
    return shard_of(prefix, count)


def _mark(record: Record) -> int:
    """The composite seq a member's record carries (last chain entry)."""
    if not record.chain:
        raise StorageFailure(f"{record.key}: a shard holds a record not written through shards:")
    return int(record.chain[-1], 16)


def _outer(record: Record) -> Record:
    """A member's record as the composite answers it: its composite seq, its own chain."""
    return Record(
        record.key,
        record.value,
        record.content_type,
        record.stamp,
        record.deleted,
        _mark(record),
        record.chain[:-1],
        record.expires_ms,
        record.flags,
        record.replaces,
    )


def _outer_or_none(record: Record | None) -> Record | None:
    return None if record is None else _outer(record)


def _complete(page: Sequence[Record], limit: int, max_bytes: int | None) -> bool:
    """Whether a member's page is all it has (not cut by ``limit`` nor by bytes)."""
    if len(page) >= limit:
        return False
    return max_bytes is None or sum(stored_size(record) for record in page) < max_bytes


def _merge(
    pages: Sequence[Sequence[Record]],
    order: Callable[[Record], Any],
    limit: int,
    max_bytes: int | None,
) -> list[Record]:
    """One page from the members' pages (each sorted by ``order``): merged, kept within what
    every cut page covers (beyond its last record, that member was not read), then cut as one
    member's page would be."""
    ends = [order(page[-1]) for page in pages if page and not _complete(page, limit, max_bytes)]
    bound = min(ends) if ends else None
    merged: list[Record] = []
    for record in heapq.merge(*pages, key=order):
        if len(merged) >= limit or (bound is not None and order(record) > bound):
            break
        merged.append(record)
    if max_bytes is not None:
        merged = cut_by_bytes(merged, max_bytes)[0]
    return merged


def _by_seq(record: Record) -> int:
    assert record.seq is not None
    return record.seq


def _by_key(record: Record) -> str:
    return record.key


@implementer(IStorageBackend)
class ShardedBackend:
    """Several backends as one: a key in the member :func:`shard_of` names, one seq counter.

    :param members: the backends, in the URL's order (the layout); closed with this one.
    """

    kind = "shards"

    def __init__(self, members: Sequence[IStorageBackend]) -> None:
        if len(members) < 2:
            raise ValueError("shards need at least two members")
        self.members = list(members)
        self.persistent = all(getattr(member, "persistent", False) for member in members)
        for interface in _SHARED_INTERFACES:
            if all(interface.providedBy(member) for member in members):
                alsoProvides(self, interface)
        self._reserved = 0  # the greatest composite seq handed out
        self._last = 0  # the greatest composite seq of a stored record
        self._ready = False
        self._failure: Failure | None = None
        self._closed = False
        self._draining = False
        self._waiting: list[_Queued] = []
        self._positions: OrderedDict[tuple[int, int], int] = OrderedDict()
        Deferred.fromCoroutine(self._open()).addBoth(self._opened)

    def __repr__(self) -> str:
        return f"<ShardedBackend of {len(self.members)}: {self.members!r}>"

    # -- opening ----------------------------------------------------------------------------

    async def _open(self) -> None:
        count = len(self.members)
        for index, member in enumerate(self.members):
            expected = f"{index}/{count}"
            found = await member.get_meta(LAYOUT_META)
            if found is None:
                await member.set_meta(LAYOUT_META, expected)
            elif found != expected:
                raise BackendError(
                    f"member {index + 1} of shards: was member {found} of another list: the "
                    "list of shards is the layout and cannot be reordered or resized"
                )
        saved = await self.members[0].get_meta(SEQ_META)
        last = int(saved) if saved else 0
        for member in self.members:
            newest = await self._newest(member)
            if newest is not None:
                last = max(last, _mark(newest))
        self._last = self._reserved = last

    async def _newest(self, member: IStorageBackend) -> Record | None:
        """The member's record at its greatest seq: the one with its greatest composite seq."""
        top = await member.last_seq()
        if top == 0:
            return None
        page = await member.changes(top - 1, 1)
        if page:
            return page[0]
        if not await member.changes(0, 1):
            return None
        low, high = 0, top  # records after low, none after high
        while high - low > 1:
            middle = (low + high) // 2
            if await member.changes(middle, 1):
                low = middle
            else:
                high = middle
        page = await member.changes(low, 1)
        return page[0] if page else None

    def _opened(self, result: object) -> None:
        if isinstance(result, Failure):
            self._failure = result
        self._ready = True
        waiting, self._waiting = self._waiting, []
        for done, method, args in waiting:
            if self._failure is not None and method != self.close:
                done.errback(self._failure)
                continue
            self._draining = True  # calls made before close run, but only those
            try:
                result = method(*args)
            finally:
                self._draining = False
            result.chainDeferred(done)

    def _guard(
        self, operation: str, method: Callable[..., Any], *args: Any
    ) -> Deferred[Any] | None:
        """What a call answers before it can run: BackendClosed once closed, the opening's
        failure, or (while opening) a Deferred of the call, run in order once open."""
        if self._closed and not self._draining:
            return fail(BackendClosed(operation))
        if self._failure is not None:
            return fail(self._failure)
        if not self._ready:
            later: Deferred[Any] = Deferred()
            self._waiting.append((later, method, args))
            return later
        return None

    # -- reads ------------------------------------------------------------------------------

    def _member(self, key: str) -> IStorageBackend:
        return self.members[shard_of(key, len(self.members))]

    def get(self, key: str) -> Deferred[Record | None]:
        early = self._guard("get", self.get, key)
        if early is not None:
            return early
        found: Deferred[Record | None] = self._member(key).get(key)
        return found.addCallback(_outer_or_none)

    def peek(self, key: str) -> Record | None:
        if self._closed:
            raise BackendClosed("peek")
        if not self._ready or self._failure is not None:
            raise WouldBlock(key)
        member: Any = self._member(key)
        return _outer_or_none(member.peek(key))

    def scan(
        self,
        prefix: str = "/",
        after: str | None = None,
        limit: int = 1000,
        include_deleted: bool = False,
        max_bytes: int | None = None,
    ) -> Deferred[list[Record]]:
        early = self._guard("scan", self.scan, prefix, after, limit, include_deleted, max_bytes)
        if early is not None:
            return early
        pinned = _pinned(prefix, len(self.members)) if isinstance(prefix, str) else None
        members = self.members if pinned is None else [self.members[pinned]]
        sized = {} if max_bytes is None else {"max_bytes": max_bytes}
        pages = [member.scan(prefix, after, limit, include_deleted, **sized) for member in members]
        return self._gather(pages).addCallback(_merge, _by_key, limit, max_bytes)

    def _gather(self, pages: list[Deferred[list[Record]]]) -> Deferred[list[list[Record]]]:
        gathered: Deferred[list[list[Record]]] = gatherResults(pages, consumeErrors=True)
        gathered.addErrback(_first_error)
        return gathered.addCallback(lambda found: [[_outer(r) for r in page] for page in found])

    def changes(
        self, since: int = 0, limit: int = 1000, max_bytes: int | None = None
    ) -> Deferred[list[Record]]:
        early = self._guard("changes", self.changes, since, limit, max_bytes)
        if early is not None:
            return early
        return Deferred.fromCoroutine(
            self._feed(range(len(self.members)), None, since, limit, max_bytes)
        )

    def changes_under(
        self, prefix: str = "/", since: int = 0, limit: int = 1000, max_bytes: int | None = None
    ) -> Deferred[list[Record]]:
        early = self._guard("changes_under", self.changes_under, prefix, since, limit, max_bytes)
        if early is not None:
            return early
        pinned = _pinned(prefix, len(self.members))
        indexes = range(len(self.members)) if pinned is None else [pinned]
        return Deferred.fromCoroutine(self._feed(indexes, prefix, since, limit, max_bytes))

    async def _feed(
        self,
        indexes: Sequence[int],
        prefix: str | None,
        since: int,
        limit: int,
        max_bytes: int | None,
    ) -> list[Record]:
        """The composite feed after ``since`` (under ``prefix``, if given) from the members
        ``indexes``: each read after its position for ``since``, all issued in one turn (as of
        one moment), merged by seq."""
        if limit <= 0 or since >= self._reserved:
            return []
        starts = [await self._position(index, since) for index in indexes]
        sized = {} if max_bytes is None else {"max_bytes": max_bytes}
        reads: list[Deferred[list[Record]]] = []
        for index, start in zip(indexes, starts):
            member: Any = self.members[index]
            if prefix is None:
                reads.append(member.changes(start, limit, **sized))
            else:
                reads.append(member.changes_under(prefix, start, limit, **sized))
        pages = await _all(reads)
        outer = [[_outer(record) for record in page] for page in pages]
        merged = _merge(outer, _by_seq, limit, max_bytes)
        if prefix is None and merged:
            self._remember_page_end(indexes, starts, pages, _by_seq(merged[-1]))
        return merged

    def _remember_page_end(
        self,
        indexes: Sequence[int],
        starts: Sequence[int],
        pages: Sequence[Sequence[Record]],
        end: int,
    ) -> None:
        """Remember every member's position for ``end``, the last seq of a page of the whole
        feed: the next page starts there. Every member's records up to ``end`` were in its
        page, so its position is that of its last record up to ``end`` (or where it started)."""
        for index, start, page in zip(indexes, starts, pages):
            position = start
            for record in page:
                if _mark(record) > end:
                    break
                assert record.seq is not None
                position = record.seq
            self._keep_position(index, end, position)

    def _keep_position(self, index: int, since: int, position: int) -> None:
        self._positions[(index, since)] = position
        self._positions.move_to_end((index, since))
        while len(self._positions) > _POSITIONS_KEPT:
            self._positions.popitem(last=False)

    async def _position(self, index: int, since: int) -> int:
        """The member seq after which member ``index`` holds exactly its records with composite
        seqs above ``since``: the least member seq ``x`` whose next record (if any) is above
        ``since``, by binary search (composite seqs grow with member seqs)."""
        if since <= 0:
            return 0
        known = self._positions.get((index, since))
        if known is not None:
            return known
        member = self.members[index]

        async def after(position: int) -> bool:
            page = await member.changes(position, 1)
            return not page or _mark(page[0]) > since

        if await after(0):
            return 0
        low, high = 0, await member.last_seq()  # not after(low); after(high): nothing follows
        while high - low > 1:
            middle = (low + high) // 2
            if await after(middle):
                high = middle
            else:
                low = middle
        self._keep_position(index, since, high)
        return high

    def expiring(self, limit: int = 100) -> Deferred[list[Deadline]]:
        early = self._guard("expiring", self.expiring, limit)
        if early is not None:
            return early
        members: list[Any] = self.members
        soonest: Deferred[list[list[Deadline]]] = gatherResults(
            [member.expiring(limit) for member in members], consumeErrors=True
        )
        soonest.addErrback(_first_error)

        def merged(found: list[list[Deadline]]) -> list[Deadline]:
            ordered = heapq.merge(*found, key=lambda due: (due.expires_ms, due.key))
            return list(ordered)[:limit]

        return soonest.addCallback(merged)

    def last_seq(self) -> Deferred[int]:
        early = self._guard("last_seq", self.last_seq)
        if early is not None:
            return early
        # Every member answers after the applies issued to it before: they have fired then.
        settled = gatherResults([member.last_seq() for member in self.members], consumeErrors=True)
        settled.addErrback(_first_error)
        return settled.addCallback(lambda _: self._last)

    # -- writes -----------------------------------------------------------------------------

    def apply(self, record: Record, expect: Expectation = ANY) -> Deferred[Record | None]:
        early = self._guard("apply", self.apply, record, expect)
        if early is not None:
            return early
        try:
            check_record(record)
        except InvalidRecord as exc:
            return fail(exc)
        self._reserved += 1
        marked = Record(
            record.key,
            record.value,
            record.content_type,
            record.stamp,
            record.deleted,
            None,
            (*record.chain, f"{self._reserved:016x}"),
            record.expires_ms,
            record.flags,
            record.replaces,
        )
        stored: Deferred[Record | None] = self._member(record.key).apply(marked, expect)
        return stored.addCallback(self._stored)

    def _stored(self, record: Record | None) -> Record | None:
        if record is None:
            return None
        outer = _outer(record)
        assert outer.seq is not None
        self._last = max(self._last, outer.seq)
        return outer

    def _save_counter(self, value: int | None = None) -> Deferred[None]:
        """Save the counter where opening finds it: before a purge or reset may remove the
        record that holds the greatest seq, every seq handed out (some applies under way may
        lose); once it is done, the greatest stored, so that ``last_seq`` reads the same after
        a restart."""
        seq = self._reserved if value is None else value
        saved: Deferred[None] = self.members[0].set_meta(SEQ_META, str(seq))
        return saved

    def _save_stored(self, result: Any) -> Deferred[Any]:
        return self._save_counter(self._last).addCallback(lambda _: result)

    def purge_tombstones(self, before_seq: int) -> Deferred[int]:
        early = self._guard("purge_tombstones", self.purge_tombstones, before_seq)
        if early is not None:
            return early
        # Only what was issued before: a later apply's tombstone is never purged by this call.
        return Deferred.fromCoroutine(self._purge(min(before_seq, self._reserved + 1)))

    async def _purge(self, before_seq: int) -> int:
        if before_seq <= 1:
            return 0
        await self._save_counter()
        starts = [await self._position(index, before_seq - 1) for index in range(len(self.members))]
        purges = [member.purge_tombstones(start + 1) for member, start in zip(self.members, starts)]
        purged = sum(await _all(purges))
        await self._save_counter(self._last)
        return purged

    def reset(self) -> Deferred[None]:
        early = self._guard("reset", self.reset)
        if early is not None:
            return early
        saved = self._save_counter()
        resets = [saved] + [member.reset() for member in self.members]
        done: Deferred[list[Any]] = gatherResults(resets, consumeErrors=True)
        done.addErrback(_first_error)
        return done.addCallback(self._save_stored).addCallback(lambda _: None)

    def get_meta(self, name: str) -> Deferred[str | None]:
        early = self._guard("get_meta", self.get_meta, name)
        if early is not None:
            return early
        value: Deferred[str | None] = self.members[0].get_meta(name)
        return value

    def set_meta(self, name: str, value: str) -> Deferred[None]:
        early = self._guard("set_meta", self.set_meta, name, value)
        if early is not None:
            return early
        done: Deferred[None] = self.members[0].set_meta(name, value)
        return done

    def close(self) -> Deferred[None]:
        if self._closed and not self._draining:
            return succeed(None)
        self._closed = True
        if not self._ready:
            later: Deferred[None] = Deferred()
            self._waiting.append((later, self.close, ()))
            return later
        closed: Deferred[list[Any]] = gatherResults(
            [member.close() for member in self.members], consumeErrors=True
        )
        closed.addErrback(_first_error)
        return closed.addCallback(lambda _: None)


def _first_error(failure: Failure) -> Failure:
    """The failure of the first member that failed, not the FirstError wrapping it."""
    if failure.check(FirstError):
        inner: Failure = failure.value.subFailure
        return inner
    return failure


async def _all(calls: list[Deferred[Any]]) -> list[Any]:
    """What every member's call fired with; the first member's failure as it was raised."""
    gathered: Deferred[list[Any]] = gatherResults(calls, consumeErrors=True)
    found: list[Any] = await gathered.addErrback(_first_error)
    return found


def check_shards(url: BackendURL) -> None:
    """Refuse a ``shards:`` URL with fewer than two members or any member that would be."""
    for member in parse_shards_url(url.text):
        check_backend(member)


def open_shards(url: BackendURL) -> ShardedBackend:
    """Make the :class:`ShardedBackend` a ``shards:`` URL names, opening every member."""
    members = parse_shards_url(url.text)
    for member in members:
        check_backend(member)
    opened: list[IStorageBackend] = []
    try:
        for member in members:
            opened.append(open_backend(member))
        return ShardedBackend(opened)
    except BaseException:
        for backend in opened:
            backend.close()
        raise

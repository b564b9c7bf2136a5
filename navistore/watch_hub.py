"""Watches: waiting for the changes under a prefix (or of one key), and never for others.

A :class:`WatchHub` subscribes once to its Store and keeps its watchers indexed by prefix and by
exact key. A stored record is handed only to the watchers whose prefix matches its key, so a
watcher never wakes for a change elsewhere: Consul's blocking queries do, and then send the whole
result again (hashicorp/consul#9449, #410).

Watchers are woken on the reactor turn *after* records arrive, with what they got sorted by seq.
The Store notifies in seq order within one write, but a group commit acknowledges a whole batch
in one turn and a peer's batch is notified after the local writes committed beside it, so the
notifications of one turn may come out of order. A stream that clients resume by seq must never
send a higher seq before a lower one: waiting for the end of the turn costs nothing and fixes it.

The hub caps the number of concurrent watchers (each holds a request and some memory), and
:meth:`WatchHub.close` ends them all at shutdown: long-polls answer with what they have, event
streams end.

Thousands of watchers idle at once (configuration distribution: every application instance holds
one), so an idle watcher is kept small and cheap to wake: its class has ``__slots__``, and its
timeout (a long-poll's, a stream's heartbeat) is an entry in the hub's one deadline heap rather
than a ``callLater`` each, whose ``DelayedCall`` weighs more than the watcher itself and is one
more object for the garbage collector to traverse. ``bench/bench_fanout.py`` measures it.

The HTTP side (the ``/_changes`` feeds and ``?wait=true``) is :mod:`navistore.web.feeds`; a reader
that falls behind the tombstone purge horizon is told to resync (:mod:`navistore.store.feed`).
"""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Hashable
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from navistore.conflicts import CONFLICTS_PREFIX, is_hidden
from navistore.record import Record
from navistore.store import Store

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "DEFAULT_HEARTBEAT",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_MAX_WATCHERS",
    "TooManyWatchers",
    "WatchHub",
    "WatchRefused",
    "Watcher",
    "WatchesClosed",
    "watcher_limit",
]

log = Logger()

T = TypeVar("T")

#: Concurrent watchers per node by default; past it a new watch is refused (503). Sized for a
#: deployment of a few thousand application instances, each holding a watch or two on one node;
#: measured with ``bench/bench_fanout.py``, 10,000 idle watchers cost the node about 150 MiB and
#: one write wakes those of its prefix within a quarter of a second. A node never serves more
#: than its connection limit allows: see :func:`watcher_limit`.
DEFAULT_MAX_WATCHERS = 10_000


def watcher_limit(max_watchers: int, max_connections: int) -> int:
    """The watchers a node serves at most: ``max_watchers``, but at most the connection limit
    less a tenth, since every watch holds a connection and the node must keep connections for
    writes, reads and its peers even when every watcher slot is taken."""
    return max(0, min(max_watchers, max_connections - max_connections // 10))


#: Seconds between heartbeat comments on an idle event stream, so proxies keep it open.
DEFAULT_HEARTBEAT = 15.0
#: Records a watcher may hold undelivered (a slow stream) before it must re-read the feed.
DEFAULT_MAX_PENDING = 10_000


class WatchRefused(Exception):
    """A watch the hub will not start; ``code`` is the API's error name (answered 503)."""

    code = "watch_refused"
    detail: Any = None


class TooManyWatchers(WatchRefused):
    """The node already has as many watchers as it allows."""

    code = "too_many_watchers"

    def __init__(self, max_watchers: int) -> None:
        super().__init__(f"this node already serves {max_watchers} watchers, its limit")
        self.max_watchers = max_watchers
        self.detail = {"max_watchers": max_watchers}


class WatchesClosed(WatchRefused):
    """The node is shutting down: no new watch starts."""

    code = "shutting_down"

    def __init__(self) -> None:
        super().__init__("this node is shutting down; watch another node or retry")


class Watcher:
    """One watch: a prefix (or exact key) and the matching records not yet taken.

    Made by :meth:`WatchHub.watch`; the owner takes records with :meth:`next` and must call
    :meth:`release` when done (releasing twice is harmless).

    :ivar since: records with a seq at or below this are not wanted (already read).
    :ivar overflowed: more records arrived than the watcher may hold; they were dropped and the
        owner must re-read the feed after the last seq it delivered.
    :ivar closed: released, or the hub closed: :meth:`next` fires with None from now on.
    :ivar kind: what the watch serves (``longpoll``, ``eventsource``, ``wait``), for metrics.
    """

    __slots__ = (
        "_deadline",
        "_hub",
        "_pending",
        "_waiting",
        "closed",
        "exact",
        "kind",
        "overflowed",
        "since",
        "target",
    )

    def __init__(
        self, hub: WatchHub, target: str, *, exact: bool, since: int, kind: str = "watch"
    ) -> None:
        self.target = target
        self.kind = kind
        self.exact = exact
        self.since = since
        self.overflowed = False
        self.closed = False
        self._hub = hub
        self._pending: list[Record] = []
        self._waiting: Deferred[list[Record] | None] | None = None
        #: The token of this watcher's entry in the hub's deadline heap (0: none).
        self._deadline = 0

    def __repr__(self) -> str:
        kind = "key" if self.exact else "prefix"
        return f"<Watcher {kind} {self.target!r} since {self.since}>"

    def matches(self, key: str) -> bool:
        """Tell whether a change of ``key`` is one this watcher waits for."""
        return key == self.target if self.exact else key.startswith(self.target)

    def skip_through(self, seq: int) -> None:
        """The owner has read the feed up to ``seq``: drop what it holds up to there."""
        if seq > self.since:
            self.since = seq
            self._pending = [record for record in self._pending if _seq(record) > seq]

    def recovered(self) -> None:
        """The owner re-read the feed after an overflow: hold records again."""
        self.overflowed = False

    def next(self, timeout: float | None = None) -> Deferred[list[Record] | None]:
        """Fire with the records that arrived (in seq order), ``[]`` after ``timeout`` seconds
        without any (or at once after an overflow), and None once closed. Cancellable."""
        if self.closed:
            return succeed(None)
        if self._waiting is not None:
            raise RuntimeError(f"{self!r} is already being waited on")
        if (self._pending or self.overflowed) and not self._hub._is_dirty(self):
            return succeed(self._take())

        def cancel(_: Deferred[list[Record] | None]) -> None:
            self._waiting = None
            self._stop_timer()

        self._waiting = Deferred(cancel)
        if timeout is not None:
            self._hub._at_deadline(self, max(0.0, timeout))
        return self._waiting

    def release(self) -> None:
        """End this watch: forget it in the hub and answer a pending :meth:`next` with None."""
        if not self.closed:
            self._hub._forget(self)
            self._end()

    # -- the hub's side -----------------------------------------------------------------------

    def _offer(self, record: Record) -> bool:
        """Keep a matching record if it is wanted; tell whether the watcher should be woken."""
        if self.closed or _seq(record) <= self.since:
            return False
        if not self.overflowed:
            self._pending.append(record)
            if len(self._pending) > self._hub.max_pending:
                log.info("{watcher} fell behind; it will re-read the feed", watcher=self)
                self.overflowed = True
                self._pending = []
        return True

    def _wake(self) -> None:
        if self._waiting is not None and (self._pending or self.overflowed):
            self._hub.wakeups += 1
            self._fire(self._take())

    def _take(self) -> list[Record]:
        taken, self._pending = sorted(self._pending, key=_seq), []
        return taken

    def _fire(self, result: list[Record] | None) -> None:
        self._stop_timer()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(result)

    def _stop_timer(self) -> None:
        if self._deadline:
            self._deadline = 0
            self._hub._deadline_dropped()

    def _end(self) -> None:
        self.closed = True
        self._pending = []
        self._fire(None)


def _seq(record: Record) -> int:
    return record.seq if record.seq is not None else 0


class WatchHub:
    """Every watch of one node, fed by one subscription to its Store.

    :param clock: times long-poll timeouts and heartbeats.
    :param max_watchers: the most concurrent watchers; :meth:`watch` refuses more.
    :param heartbeat: seconds between heartbeats on an idle event stream.
    :param max_pending: records one watcher may hold before it must re-read the feed instead.
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: IReactorTime,
        max_watchers: int = DEFAULT_MAX_WATCHERS,
        heartbeat: float = DEFAULT_HEARTBEAT,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if max_watchers < 0 or heartbeat <= 0 or max_pending < 1:
            raise ValueError("max_watchers >= 0, heartbeat > 0 and max_pending >= 1, please")
        self.store = store
        self.clock = clock
        self.max_watchers = max_watchers
        self.heartbeat = heartbeat
        self.max_pending = max_pending
        self._by_prefix: dict[str, set[Watcher]] = {}
        self._by_key: dict[str, set[Watcher]] = {}
        self._count = 0
        self._kinds: dict[str, int] = {}
        #: How many times a waiting watcher was woken by a change (not by a timeout).
        self.wakeups = 0
        self._dirty: set[Watcher] = set()
        self._flush_call: IDelayedCall | None = None
        self._closed = False
        #: The highest seq a record was notified with: what the Store holds changes with it.
        self.notified_seq = 0
        # (when, token, watcher); an entry whose token is no longer its watcher's is dropped.
        self._deadlines: list[tuple[float, int, Watcher]] = []
        self._deadline_tokens = 0
        self._dropped_deadlines = 0
        self._deadline_call: IDelayedCall | None = None
        self._shared: dict[Hashable, _Shared[Any]] = {}
        self._shared_call: IDelayedCall | None = None
        store.subscribe(self._on_record)

    @property
    def watching(self) -> int:
        """How many watchers are registered now."""
        return self._count

    def watching_by_kind(self) -> dict[str, int]:
        """How many watchers are registered now, by kind (``longpoll``, ``eventsource``...)."""
        return dict(self._kinds)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def watch(
        self, target: str, *, since: int, exact: bool = False, kind: str = "watch"
    ) -> Watcher:
        """Register a watcher of the changes after seq ``since`` under the canonical prefix
        ``target`` (or, with ``exact``, of the canonical key ``target``).

        Register *before* reading the current state: a change made in between is then held by
        the watcher rather than lost. ``kind`` says what the watch serves, for metrics.

        :raises TooManyWatchers: the node is at its cap.
        :raises WatchesClosed: the hub is closed (the node is shutting down).
        """
        if self._closed:
            raise WatchesClosed()
        if self._count >= self.max_watchers:
            raise TooManyWatchers(self.max_watchers)
        watcher = Watcher(self, target, exact=exact, since=since, kind=kind)
        index = self._by_key if exact else self._by_prefix
        index.setdefault(target, set()).add(watcher)
        self._count += 1
        self._kinds[kind] = self._kinds.get(kind, 0) + 1
        return watcher

    def close(self) -> None:
        """End every watch and refuse new ones; called at shutdown before requests drain."""
        if self._closed:
            return
        self._closed = True
        self.store.unsubscribe(self._on_record)
        for call in (self._flush_call, self._deadline_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._deadline_call = None
        self._deadlines = []
        groups = (*self._by_prefix.values(), *self._by_key.values())
        watchers = [watcher for group in groups for watcher in group]
        self._by_prefix.clear()
        self._by_key.clear()
        self._dirty.clear()
        self._count = 0
        self._kinds.clear()
        for watcher in watchers:
            watcher._end()

    def shared(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> Deferred[T]:
        """The result of ``compute()``, computed once for every caller with the same ``key``
        during this reactor turn (and while that computation runs).

        A write wakes every watcher of its prefix in one turn, and those asking the same thing
        (the feed after the same seq, under the same prefix, as the same caller) get the same
        answer: one read and one encoded body instead of thousands. The key must say all the
        answer depends on, including :attr:`notified_seq` (what the Store holds), so that a
        caller never gets an answer computed before a change it must see.
        """
        entry = self._shared.get(key)
        if entry is None:
            entry = self._shared[key] = _Shared(Deferred.fromCoroutine(_awaited(compute)))
            if self._shared_call is None:
                self._shared_call = self.clock.callLater(0, self._forget_shared)
        return entry.result()

    def _forget_shared(self) -> None:
        self._shared_call = None
        self._shared.clear()

    # -- dispatch -----------------------------------------------------------------------------

    def _matching(self, key: str) -> Iterable[Watcher]:
        """The watchers a change of ``key`` is for, at a cost of min(prefixes, len(key)) lookups."""
        found: list[Watcher] = list(self._by_key.get(key, ()))
        prefixes = self._by_prefix
        if len(prefixes) <= len(key):
            for prefix, group in prefixes.items():
                if key.startswith(prefix):
                    found.extend(group)
        else:
            for end in range(1, len(key) + 1):
                found.extend(prefixes.get(key[:end], ()))
        return found

    def _on_record(self, record: Record) -> None:
        if record.seq is not None and record.seq > self.notified_seq:
            self.notified_seq = record.seq
        hidden = is_hidden(record.key)
        for watcher in self._matching(record.key):
            if hidden and not watcher.target.startswith(CONFLICTS_PREFIX):
                continue  # a conflict's loser record, which watchers of the keys never see
            if watcher._offer(record):
                self._dirty.add(watcher)
        if self._dirty and self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        dirty, self._dirty = self._dirty, set()
        for watcher in dirty:
            watcher._wake()

    def _is_dirty(self, watcher: Watcher) -> bool:
        return watcher in self._dirty

    def _forget(self, watcher: Watcher) -> None:
        index = self._by_key if watcher.exact else self._by_prefix
        group = index.get(watcher.target)
        if group is None or watcher not in group:
            return
        group.discard(watcher)
        if not group:
            del index[watcher.target]
        self._dirty.discard(watcher)
        self._count -= 1
        self._kinds[watcher.kind] -= 1

    # -- deadlines ----------------------------------------------------------------------------

    def _at_deadline(self, watcher: Watcher, delay: float) -> None:
        """Fire ``watcher``'s wait with ``[]`` in ``delay`` seconds."""
        self._deadline_tokens += 1
        token = watcher._deadline = self._deadline_tokens
        when = self.clock.seconds() + delay
        heapq.heappush(self._deadlines, (when, token, watcher))
        if self._deadlines[0][1] == token:  # the earliest now: the timer must move up
            self._schedule_deadlines()

    def _deadline_dropped(self) -> None:
        """A watcher's deadline was cancelled: its entry stays in the heap until it is due, or
        until the dropped entries outnumber the live ones and the heap is rebuilt."""
        self._dropped_deadlines += 1
        if self._dropped_deadlines > 64 and self._dropped_deadlines * 2 > len(self._deadlines):
            self._deadlines = [entry for entry in self._deadlines if entry[2]._deadline == entry[1]]
            heapq.heapify(self._deadlines)
            self._dropped_deadlines = 0

    def _schedule_deadlines(self) -> None:
        heap = self._deadlines
        while heap and heap[0][2]._deadline != heap[0][1]:
            heapq.heappop(heap)
            self._dropped_deadlines = max(0, self._dropped_deadlines - 1)
        call = self._deadline_call
        if not heap:
            if call is not None and call.active():
                call.cancel()
            self._deadline_call = None
            return
        delay = max(0.0, heap[0][0] - self.clock.seconds())
        if call is not None and call.active():
            call.reset(delay)
        else:
            self._deadline_call = self.clock.callLater(delay, self._deadlines_due)

    def _deadlines_due(self) -> None:
        self._deadline_call = None
        heap = self._deadlines
        now = self.clock.seconds()
        due: list[Watcher] = []
        while heap and heap[0][0] <= now:
            _, token, watcher = heapq.heappop(heap)
            if watcher._deadline == token:
                watcher._deadline = 0
                due.append(watcher)
            else:
                self._dropped_deadlines = max(0, self._dropped_deadlines - 1)
        self._schedule_deadlines()
        for watcher in due:
            watcher._fire([])


async def _awaited(compute: Callable[[], Awaitable[T]]) -> T:
    return await compute()


class _Shared(Generic[T]):
    """One computation's result, handed to each caller in a Deferred of its own (so that one
    caller's callbacks, or its cancellation, never touch another's)."""

    __slots__ = ("_done", "_outcome", "_waiting")

    def __init__(self, computing: Deferred[Any]) -> None:
        self._done = False
        self._outcome: Any = None
        self._waiting: list[Deferred[Any]] = []
        computing.addBoth(self._finished)

    def _finished(self, outcome: Any) -> None:
        self._done, self._outcome = True, outcome
        waiting, self._waiting = self._waiting, []
        for each in waiting:
            self._hand(each)

    def _hand(self, waiting: Deferred[Any]) -> None:
        if waiting.called:
            return  # cancelled meanwhile
        if isinstance(self._outcome, Failure):
            waiting.errback(self._outcome)
        else:
            waiting.callback(self._outcome)

    def result(self) -> Deferred[Any]:
        waiting: Deferred[Any] = Deferred()
        if self._done:
            self._hand(waiting)
        else:
            self._waiting.append(waiting)
        return waiting

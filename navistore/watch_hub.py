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

The HTTP side (the ``/_changes`` feeds and ``?wait=true``) is :mod:`navistore.web.feeds`; a reader
that falls behind the tombstone purge horizon is told to resync (:mod:`navistore.store.feed`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

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
]

log = Logger()

#: Concurrent watchers per node by default; past it a new watch is refused (503).
DEFAULT_MAX_WATCHERS = 1000
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
        self._timer: IDelayedCall | None = None

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
            self._timer = self._hub.clock.callLater(max(0.0, timeout), self._fire, [])
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
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

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
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        groups = (*self._by_prefix.values(), *self._by_key.values())
        watchers = [watcher for group in groups for watcher in group]
        self._by_prefix.clear()
        self._by_key.clear()
        self._dirty.clear()
        self._count = 0
        self._kinds.clear()
        for watcher in watchers:
            watcher._end()

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
        for watcher in self._matching(record.key):
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

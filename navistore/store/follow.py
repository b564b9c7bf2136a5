"""Following the writes other nodes make to a shared backend (:class:`IExternalWrites`).

When several nodes share one PostgreSQL database, a write through node B never passes through
node A's Store, so nothing on A would wake its watchers, feeds and blocking queries, and A's
record cache would keep serving the old value. :class:`Follower` closes that gap: told by the
backend that the newest seq moved, it reads ``changes(since=cursor)`` and hands every record
newer than what the Store has announced to the Store's own notification path (the one local
writes use), after the cache has forgotten its key. Nothing is applied again: the records are
already stored.

A record of this node's own is normally announced by its write first, and skipped here by its
seq (the follower listens to the Store's announcements; an external record with a seq below
one of this node's is still announced); if the follower reads it before the write is
acknowledged, its watchers may be told twice about the same seq, which they tolerate (a watch
answers with what is stored).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from navistore.interfaces import IExternalWrites

if TYPE_CHECKING:
    from navistore.interfaces import IStorageBackend
    from navistore.record import Record

__all__ = ["Follower", "follow"]

log = Logger()

#: Records read per ``changes`` call while catching up.
PAGE = 500


class _Followed(Protocol):
    backend: IStorageBackend

    @property
    def newest_seq(self) -> int: ...

    def _notify(self, record: Record) -> None: ...

    def subscribe(self, listener: Callable[[Record], None]) -> None: ...

    def unsubscribe(self, listener: Callable[[Record], None]) -> None: ...


class Follower:
    """Feeds the records other nodes wrote into ``store``'s notifications.

    :param store: the Store (its backend provides :class:`IExternalWrites`).
    :param since: the seq up to which everything has been announced already.
    """

    def __init__(self, store: _Followed, since: int) -> None:
        self._store = store
        self._cursor = since
        self._wanted = since
        self._reading = False
        self._stopped = False
        self._unsubscribe: Callable[[], None] = lambda: None
        # Seqs above the cursor this node announced already (its own writes): not again, and
        # their keys stay cached (the cache saw those writes).
        self._announced: set[int] = set()
        #: Records announced for other nodes (tests and metrics read it).
        self.followed = 0

    def start(self) -> None:
        self._store.subscribe(self._saw)
        self._unsubscribe = self._store.backend.subscribe_external(self.moved)  # type: ignore[attr-defined]

    def stop(self) -> None:
        self._stopped = True
        self._store.unsubscribe(self._saw)
        self._unsubscribe()

    def _saw(self, record: Record) -> None:
        if record.seq is not None and record.seq > self._cursor:
            self._announced.add(record.seq)

    def moved(self, newest: int) -> None:
        """The backend's newest seq is ``newest``: read up to it (one reader at a time)."""
        if newest > self._wanted:
            self._wanted = newest
        if not self._reading and self._wanted > self._cursor and not self._stopped:
            self._reading = True
            reading: Deferred[None] = ensureDeferred(self._catch_up())
            reading.addErrback(self._failed)

    def _failed(self, failure: object) -> None:
        self._reading = False
        log.warn("following external writes failed: {failure}", failure=failure)

    async def _catch_up(self) -> None:
        backend = self._store.backend
        forget = getattr(backend, "forget", None)
        while self._wanted > self._cursor and not self._stopped:
            records = await backend.changes(self._cursor, PAGE)
            if not records:
                break
            external = [r for r in records if (r.seq or 0) not in self._announced]
            if forget is not None and external:
                forget([record.key for record in external])
            for record in external:
                self.followed += 1
                self._store._notify(record)
            self._cursor = max(self._cursor, max(record.seq or 0 for record in records))
            self._announced = {seq for seq in self._announced if seq > self._cursor}
        self._reading = False


def follow(store: _Followed) -> Follower | None:
    """Start following ``store``'s backend if other nodes may write to it, else None."""
    if not IExternalWrites.providedBy(store.backend):
        return None
    follower = Follower(store, store.newest_seq)
    follower.start()
    return follower

"""Expiry: each key whose TTL ran out becomes a tombstone when its deadline comes, on every node.

A record written with a TTL carries its deadline (:attr:`Record.expires_ms
<navistore.record.Record.expires_ms>`, wall-clock ms) and replicates with it. The Store never
serves a record past its deadline, whether or not anything below happened yet; the
:class:`Expirer` then writes the record's expiry, a tombstone derived from the record alone
(:meth:`Record.expiry <navistore.record.Record.expiry>`), so that watchers and feeds see the
expiry as a delete and the key's space is reclaimed. No leader is needed: every node holding the
record writes the same tombstone at its own deadline, the first one to arrive anywhere wins, and
the others are duplicates. A write made before the deadline (a refresh of the TTL, a new value)
beats the tombstone wherever the two meet, since the tombstone is only just above the record it
expires.

The expirer keeps one timer, at the soonest deadline it knows of: it asks the backend for the
soonest expiring records (:class:`~navistore.interfaces.IExpiringRecords`) when it starts and
whenever that timer fires, and moves the timer earlier when a record with an earlier deadline
is stored (by this node or a peer). The timer never waits more than :data:`MAX_SLEEP` seconds,
so a step of the wall clock is noticed within that.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from navistore.interfaces import Deadline, IExpiringRecords
from navistore.record import Record
from navistore.store.core import Store

__all__ = ["EXPIRY_BATCH", "MAX_SLEEP", "Expirer"]

log = Logger()

#: How many expiring records one read asks for (and one pass writes at most before reading on).
EXPIRY_BATCH = 256
#: The longest the timer sleeps, in seconds, even when no deadline is near.
MAX_SLEEP = 60.0
#: Seconds before a pass that failed (the backend unavailable) runs again.
RETRY_DELAY = 1.0


class Expirer(Service):
    """Writes the expiry of each record of ``store`` at its deadline (see the module's text).

    :param clock: what the timer runs on (the reactor).
    :param batch: how many deadlines one read of the backend asks for.
    """

    def __init__(self, store: Store, *, clock: IReactorTime, batch: int = EXPIRY_BATCH) -> None:
        self.store = store
        self.clock = clock
        self.batch = batch
        self._timer: IDelayedCall | None = None
        self._due_ms: int | None = None  # the deadline the timer is set for
        self._running: Deferred[int | None] | None = None
        self._arrived_ms: int | None = None  # the soonest deadline stored while a pass ran

    def startService(self) -> None:
        super().startService()
        if not IExpiringRecords.providedBy(self.store.backend):
            log.info("the {kind} backend cannot list expiring keys", kind=self.store.backend.kind)
            return
        self.store.subscribe(self._stored)
        self._wake_at(None)

    def stopService(self) -> Deferred[None]:
        """Stop the timer, and fire once a pass under way is done."""
        super().stopService()
        self.store.unsubscribe(self._stored)
        self._stop_timer()
        running = self._running
        if running is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        running.addBoth(lambda _result: done.callback(None))
        return done

    # -- the timer --------------------------------------------------------------------------

    def _stored(self, record: Record) -> None:
        """A record was stored: if it expires before the timer fires, fire earlier."""
        deadline = record.expires_ms
        if deadline is None or record.deleted:
            return
        if self._running is not None:
            if self._arrived_ms is None or deadline < self._arrived_ms:
                self._arrived_ms = deadline
        elif self._due_ms is None or deadline < self._due_ms:
            self._wake_at(deadline)

    def _wake_at(self, deadline_ms: int | None) -> None:
        """Set the timer for ``deadline_ms`` (None: now), at most :data:`MAX_SLEEP` away."""
        self._stop_timer()
        delay = 0.0
        if deadline_ms is not None:
            delay = min(max(0.0, (deadline_ms - self.store.clock.wall_ms()) / 1000), MAX_SLEEP)
        self._due_ms = deadline_ms
        self._timer = self.clock.callLater(delay, self._run)

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._due_ms = None

    def _run(self) -> None:
        self._timer = None
        self._due_ms = None
        if not self.running or self._running is not None:
            return
        self._arrived_ms = None
        running: Deferred[int | None] = Deferred.fromCoroutine(self._pass())
        self._running = running
        running.addCallbacks(self._passed, self._failed)

    def _passed(self, next_ms: int | None) -> None:
        self._running = None
        arrived, self._arrived_ms = self._arrived_ms, None
        if not self.running:
            return
        if arrived is not None and (next_ms is None or arrived < next_ms):
            next_ms = arrived
        self._wake_at(next_ms)

    def _failed(self, failure: Failure) -> None:
        self._running = None
        if not self.running:
            return
        log.failure("writing expiries failed; trying again in a second", failure)
        self._stop_timer()
        self._timer = self.clock.callLater(RETRY_DELAY, self._run)

    # -- a pass -----------------------------------------------------------------------------

    async def _pass(self) -> int | None:
        """Expire every record whose deadline has come; return the next deadline known of
        (or one :data:`MAX_SLEEP` away when none is)."""
        expiring: IExpiringRecords = self.store.backend  # type: ignore[assignment]
        while True:
            soonest: list[Deadline] = await expiring.expiring(self.batch)
            now = self.store.clock.wall_ms()
            due = [deadline for deadline in soonest if deadline.expires_ms <= now]
            written = 0
            for deadline in due:
                if await self.store.expire(deadline) is not None:
                    written += 1
            if len(due) < len(soonest):
                return soonest[len(due)].expires_ms
            if len(soonest) < self.batch or not self.running:
                return now + int(MAX_SLEEP * 1000)
            if not written:  # a whole batch due, none of it written: do not spin on it
                return now + int(RETRY_DELAY * 1000)

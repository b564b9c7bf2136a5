"""Tombstone garbage collection: purge deletes that every peer has and nobody can still need.

A tombstone is kept so that a delete replicates and beats older writes. It may go once

- every push peer has acknowledged it: its seq is at or below every peer's persisted cursor, so
  the pusher will never need to send it again (a node with no peers has no such constraint);
- it is older than ``retention`` by the wall time of its stamp, which bounds what the cursor
  cannot see: a write of the same key older than the delete still in flight somewhere (a batch
  read before the delete arrived), a non-peer reader (a clone, a cache, a watcher) catching up.
  The retention must exceed the longest time a record can spend on the way, plus clock skew.

``purge_tombstones(before_seq)`` removes tombstones by seq, so the bound is a seq: below the
smallest cursor plus one, and below the first record in seq order that is younger than the
retention (seqs do not follow wall time: a peer's old record arrives with a new seq). Each run
scans only from the previous horizon to that bound, and records the horizon before purging
(:meth:`~navistore.store.Store.purge_tombstones`), so any reader resuming from before it is told
to resync (410) rather than silently missing a delete.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, Callable, Optional

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from navistore.record import Record
from navistore.store import Store

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_RETENTION",
    "Cursors",
    "PurgeBound",
    "TombstoneCollector",
    "purge_bound",
]

log = Logger()

#: Seconds a tombstone is kept at least, by default: 7 days.
DEFAULT_RETENTION = 7 * 24 * 3600.0
#: Seconds between collections by default.
DEFAULT_INTERVAL = 3600.0
#: Records read per page while looking for the bound.
_SCAN_PAGE = 1000

#: Returns every push peer's persisted cursor, or None while the peer set is not known yet
#: (:meth:`~navistore.replication.service.ReplicationService.cursors`).
Cursors = Callable[[], Awaitable[Optional[Sequence[int]]]]


@attrs.frozen
class PurgeBound:
    """Where a scan got to: tombstones below ``before_seq`` may go (0: none found yet).

    :ivar complete: the scan met a record it may not go past (younger than the retention, or
        not acknowledged by every peer); without it, the caller reads on.
    """

    before_seq: int
    complete: bool


def purge_bound(
    records: Iterable[Record],
    *,
    cutoff_ms: int,
    peer_cursor: int | None,
    before_seq: int = 0,
) -> PurgeBound:
    """Scan records in seq order for the purge bound; pure, so it can be checked on its own.

    :param cutoff_ms: wall time (ms) at or before which a stamp is older than the retention.
    :param peer_cursor: the smallest cursor of the peers (None: no peers, no constraint).
    :param before_seq: the bound found on the previous pages.
    :returns: one past the last tombstone that every peer acknowledged and that is preceded, in
        seq order, only by records older than the retention.
    """
    for record in records:
        seq = record.seq or 0
        if peer_cursor is not None and seq > peer_cursor:
            return PurgeBound(before_seq, True)
        if record.stamp.wall_ms > cutoff_ms:
            return PurgeBound(before_seq, True)
        if record.deleted:
            before_seq = seq + 1
    return PurgeBound(before_seq, False)


class TombstoneCollector(Service):
    """Purges old tombstones every ``interval`` seconds; see the module docstring for when.

    :param cursors: every push peer's persisted cursor, or None to skip a run (peers unknown).
    :param clock: schedules the runs.
    :param retention: seconds a tombstone is kept at least, by its stamp's wall time.
    :param interval: seconds between runs; the first comes ``first_delay`` seconds after start
        (default: the smaller of a minute and ``interval``).
    :param wall_ms: the node's wall time in ms (default: ``clock.seconds()``), to age stamps by.
    """

    def __init__(
        self,
        store: Store,
        *,
        cursors: Cursors,
        clock: IReactorTime,
        retention: float = DEFAULT_RETENTION,
        interval: float = DEFAULT_INTERVAL,
        first_delay: float | None = None,
        wall_ms: Callable[[], int] | None = None,
    ) -> None:
        if retention < 0 or interval <= 0:
            raise ValueError("retention must be >= 0 and interval > 0")
        self.setName("tombstone-gc")
        self.store = store
        self.retention = retention
        self.interval = interval
        self.first_delay = min(60.0, interval) if first_delay is None else first_delay
        self._cursors = cursors
        self._clock = clock
        self._wall_ms = wall_ms or (lambda: int(clock.seconds() * 1000))
        self._call: IDelayedCall | None = None
        self._running_collect: Deferred[int] | None = None
        #: Tombstones purged by the last run, and how many runs purged anything, for status.
        self.last_purged = 0
        self.runs = 0

    def startService(self) -> None:
        """Schedule the first run."""
        Service.startService(self)
        self._schedule(self.first_delay)

    def stopService(self) -> Deferred[None]:
        """Cancel the next run; fire once a run under way has finished."""
        Service.stopService(self)
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        running = self._running_collect
        if running is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        running.addBoth(lambda _: done.callback(None))
        return done

    def status(self) -> dict[str, Any]:
        """What a status page shows of the collector."""
        return {
            "retention": self.retention,
            "interval": self.interval,
            "runs": self.runs,
            "last_purged": self.last_purged,
        }

    def _schedule(self, delay: float) -> None:
        if self.running:
            self._call = self._clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._call = None
        running = Deferred.fromCoroutine(self.collect())
        self._running_collect = running

        def finished(result: object) -> None:
            self._running_collect = None
            self._schedule(self.interval)

        running.addErrback(lambda failure: log.failure("tombstone collection failed", failure))
        running.addBoth(finished)

    async def collect(self) -> int:
        """Run one collection now; return how many tombstones were purged."""
        cursors = await self._cursors()
        if cursors is None:
            log.info("tombstone collection skipped: the peer set is not known yet")
            return 0
        peer_cursor = min(cursors) if cursors else None
        cutoff_ms = self._wall_ms() - int(self.retention * 1000)
        horizon = await self.store.purged_before()
        position = max(horizon - 1, 0)
        bound = PurgeBound(0, False)
        while not bound.complete:
            page = await self.store.changes(position, limit=_SCAN_PAGE, everything=True)
            bound = purge_bound(
                page.records,
                cutoff_ms=cutoff_ms,
                peer_cursor=peer_cursor,
                before_seq=bound.before_seq,
            )
            if not page.more:
                break
            position = page.last_seq
        self.runs += 1
        if bound.before_seq <= horizon:
            self.last_purged = 0
            return 0
        purged = await self.store.purge_tombstones(bound.before_seq)
        self.last_purged = purged
        log.info("purged {count} tombstone(s) below seq {seq}", count=purged, seq=bound.before_seq)
        return purged

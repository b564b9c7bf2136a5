"""Writes that wait for peers (``?replicas=N|all``): who holds a record; waiting until enough do.

A peer *holds* a record once its pusher's acknowledged cursor reaches the record's seq, or when
the record is its own: it wrote it, or the record passed through it (the pusher never sends those,
so the cursor would say so only later). The tracker sends nothing itself. The pushers already wake
on every local change; the tracker hears of every cursor move and peer set change from the
:class:`~navistore.replication.service.ReplicationService`, re-checks the writes waiting, and
while a write waits it asks the pushers of the peers that lack it to retry a failing peer within
:data:`~navistore.replication.pusher.URGENT_RETRY` seconds (:meth:`Pusher.expedite`), so that a
peer coming back gets the write while its client still waits.

What a wait answers, and when:

- as soon as ``wanted`` peers hold the record, with who holds it and who does not;
- otherwise at the timeout, with the same report: a slow or dead peer is the expected case, never
  an error (the web layer answers 504; the write is stored here and still reaches the others);
- ``"all"`` means every peer in the set *at each check* (a peer added while a write waits is
  waited for, a removed one no longer is); with no peers it is satisfied at once;
- a number larger than the peer count can never be met, so it is answered at once with who holds
  the record now, rather than holding the client (and its connection) for a foregone 504: a
  client asking for more replicas than there are peers learns it straight away;
- a peer that turns out to be this node (its pusher found our own node id behind the URL) is no
  replica: it is named neither as reached nor as missing;
- until the service has started with its peer set (stored and ``--peer``) nothing is decided,
  since "every peer" of a set not yet read would wrongly be none; a report made then names
  :data:`PEERS_NOT_LOADED` among the missing.

Cancelling a wait (the client went away) removes its timer, its place among the waiting writes and
its requests to expedite pushers, at once.

The report type and ``"all"`` come from :mod:`navistore.hooks`: that module is the protocol
the web layer asks for, which this module implements (as a backend implements ``interfaces``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from navistore.hooks import ALL_REPLICAS, ReplicaReport, Wanted
from navistore.record import Record
from navistore.replication.pusher import Pusher

__all__ = ["PEERS_NOT_LOADED", "Pushers", "ReplicaTracker"]

#: Named among the missing peers by a report made before the peer set was read.
PEERS_NOT_LOADED = "(peer set not loaded yet)"


class Pushers(Protocol):
    """Where the tracker reads who holds what: the replication service's pushers."""

    @property
    def peers_known(self) -> bool:
        """Whether the whole peer set has been read (before that, "every peer" means none)."""

    def pushers(self) -> Sequence[Pusher]:
        """The pushers, in peer order."""


class _Waiting:
    """One write waiting for its replicas."""

    def __init__(self, record: Record, wanted: Wanted) -> None:
        self.record = record
        self.wanted = wanted
        #: Fired (with None) once the wait is over; cancelled when the client goes away.
        self.answered: Deferred[None] = Deferred()
        #: The pushers asked to hurry for this write, with the call that releases each.
        self.expedited: dict[Pusher, Callable[[], None]] = {}
        #: The wait ended at its timeout.
        self.timed_out = False


class ReplicaTracker:
    """Answers ``wait(record, wanted, timeout)`` from the pushers' cursors (a ReplicaWaiter).

    Made by :meth:`ReplicationService.replica_waiter`, which calls :meth:`refresh` whenever what
    peers hold may have changed.

    :param service: the node's pushers (the replication service).
    :param node_id: this node's id: a peer URL that turns out to be this node is no replica.
    :param clock: times the waits.
    """

    def __init__(self, service: Pushers, node_id: str, *, clock: IReactorTime) -> None:
        self._service = service
        self._node_id = node_id
        self._clock = clock
        self._waiting: set[_Waiting] = set()
        #: Writes that waited for replicas, and those of them that timed out (for metrics).
        self.waits = 0
        self.timeouts = 0

    @property
    def waiting(self) -> int:
        """How many writes are waiting now."""
        return len(self._waiting)

    # -- who holds what -------------------------------------------------------------------------

    def _replicas(self) -> list[Pusher]:
        """The pushers of the peers that count as replicas: all but this node itself."""
        own = self._node_id
        return [pusher for pusher in self._service.pushers() if pusher.node_id != own]

    def report(self, record: Record) -> ReplicaReport:
        """Which peers hold ``record`` now, and which do not, in peer order."""
        reached: list[str] = []
        missing: list[str] = []
        for pusher in self._replicas():
            (reached if pusher.holds(record) else missing).append(pusher.url)
        if not self._service.peers_known:
            missing.append(PEERS_NOT_LOADED)
        return ReplicaReport(tuple(reached), tuple(missing))

    def _decided(self, waiting: _Waiting) -> bool:
        """Whether the answer is known: enough peers hold the record, or never can."""
        if not self._service.peers_known:
            return False
        report = self.report(waiting.record)
        if report.satisfies(waiting.wanted):
            return True
        peers = len(report.reached) + len(report.missing)
        return isinstance(waiting.wanted, int) and waiting.wanted > peers

    # -- waiting --------------------------------------------------------------------------------

    async def wait(self, record: Record, wanted: int | str, timeout: float) -> ReplicaReport:
        """Return once ``wanted`` peers (a number, or ``"all"``) hold ``record``, once that can
        never happen, or after ``timeout`` seconds; with who holds it. Never raises for a slow
        or dead peer.

        :param record: a record stored on this node (its seq is set).
        :raises ValueError: ``wanted`` is neither a number >= 0 nor ``"all"``, or ``record`` has
            no seq (a programming error, not a peer's).
        """
        if wanted != ALL_REPLICAS and (not isinstance(wanted, int) or wanted < 0):
            raise ValueError(f"wanted must be a number >= 0 or {ALL_REPLICAS!r}, not {wanted!r}")
        if record.seq is None:
            raise ValueError("only a stored record (with its seq) has replicas")
        waiting = _Waiting(record, wanted)
        self.waits += 1
        if wanted == 0 or timeout <= 0 or self._decided(waiting):
            return self.report(record)
        self._waiting.add(waiting)
        timer = self._clock.callLater(timeout, self._time_out, waiting)
        try:
            self._expedite(waiting)
            await waiting.answered
        finally:
            self._waiting.discard(waiting)
            if timer.active():
                timer.cancel()
            for release in waiting.expedited.values():
                release()
        return self.report(record)

    def refresh(self) -> None:
        """Re-check every waiting write: a cursor moved, or the peer set changed."""
        for waiting in list(self._waiting):
            if waiting.answered.called:
                continue
            if self._decided(waiting):
                self._answer(waiting)
            else:
                self._expedite(waiting)

    def answer_all(self) -> None:
        """End every wait now, each with its report (replication is stopping)."""
        for waiting in list(self._waiting):
            self._answer(waiting)

    def _time_out(self, waiting: _Waiting) -> None:
        if not waiting.answered.called:
            self.timeouts += 1
        self._answer(waiting)

    def _answer(self, waiting: _Waiting) -> None:
        if not waiting.answered.called:
            waiting.answered.callback(None)

    def _expedite(self, waiting: _Waiting) -> None:
        """Ask each pusher whose peer lacks the record (and was not asked yet) to hurry."""
        for pusher in self._replicas():
            if pusher not in waiting.expedited and not pusher.holds(waiting.record):
                waiting.expedited[pusher] = pusher.expedite()

"""Pushing this node's changes to one peer, with a persisted cursor (CouchDB's checkpoint).

The cursor is the highest local seq the peer has acknowledged. The pusher reads the change feed
after it, a bounded batch at a time, sends the batch to ``<peer>/_replicate`` and moves the cursor
only once the peer has acknowledged it. So the change log is the queue: nothing is held in memory
beyond one batch, a restart resumes from the persisted cursor, and a peer that was unreachable for
an hour gets every change it missed (each key at its latest version) when it answers again.

Records the peer already has are not sent: those it wrote (their stamp's node id) and those that
passed through it (their chain), once the peer's node id is known: from its first
acknowledgement (then persisted), or from the clone puller of the same URL. Until then the first
batch may echo some records back; applying them again changes nothing there. Skipped records
still count as read, so a batch holding only such records advances the cursor without a request.
A refused batch (4xx, e.g. clock drift) is retried with backoff like any failure: skipping it
would lose writes.

Writes that wait for replicas (``?replicas=``, :mod:`navistore.replication.replicas`) watch the
cursor through ``on_progress`` and ask :meth:`Pusher.expedite` to retry a failing peer within
:data:`URGENT_RETRY` seconds rather than after a backoff of up to ``max_backoff``: the peer that
comes back then gets the write while the client still waits for it.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from navistore.conflicts import is_hidden
from navistore.links import PeerLink
from navistore.protocol.batches import (
    BATCH_BYTES,
    MalformedBatch,
    cut_batch,
    decode_ack,
    encode_batch,
)
from navistore.record import Record
from navistore.replication.peers import cursor_meta, node_meta
from navistore.replication.worker import Worker
from navistore.store import Store

__all__ = ["URGENT_RETRY", "Pusher"]

log = Logger()

#: While a write waits for this peer, a failing peer is retried at least this often (seconds).
URGENT_RETRY = 1.0


class Pusher(Worker):
    """Sends every change of ``store`` to the peer at ``url``; call :meth:`load` first.

    :param batch_records: at most this many records per batch (and per read).
    :param batch_bytes: at most about this many bytes per batch (see :func:`record_size`).
    :param node_hint: says the peer's node id if known elsewhere (the clone of the same URL).
    :param on_progress: called (without arguments) whenever what the peer holds may have
        changed: the cursor moved or the peer's node id was learnt (see :meth:`holds`).
    """

    quiet_states = ("idle", "self", "stopped")

    def __init__(
        self,
        store: Store,
        url: str,
        *,
        link: PeerLink,
        batch_records: int = 500,
        batch_bytes: int = BATCH_BYTES,
        node_hint: Callable[[], str | None] | None = None,
        on_progress: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(store, url, link=link)
        if batch_records < 1 or batch_bytes < 1:
            raise ValueError("batch_records and batch_bytes must be at least 1")
        self.cursor = 0
        self.node_id: str | None = None
        self._node_hint = node_hint
        self._batch_records = batch_records
        self._batch_bytes = batch_bytes
        self._last_seq = 0
        self._changed = False
        self._wake: Deferred[None] | None = None
        self._wake_call: IDelayedCall | None = None
        self._oldest_wall_ms: int | None = None
        self._on_progress = on_progress
        self._urgent = 0

    async def load(self) -> None:
        """Read the persisted cursor and peer node id, and the node's newest seq."""
        cursor = await self._store.get_meta(cursor_meta(self.url))
        self.cursor = int(cursor) if cursor else 0
        self.node_id = await self._store.get_meta(node_meta(self.url)) or None
        self._last_seq = await self._store.last_seq()

    def start(self) -> None:
        """Listen to the Store's changes and start pushing."""
        if not self.running:
            self._store.subscribe(self._on_change)
        super().start()

    def stop(self) -> Deferred[None]:
        """Stop pushing; fire once the batch in flight is done or cancelled."""
        self._store.unsubscribe(self._on_change)
        return super().stop()

    def _ended(self) -> None:
        self._store.unsubscribe(self._on_change)
        if self._wake_call is not None and self._wake_call.active():
            self._wake_call.cancel()
        self._wake_call = None
        self._changed = False

    # -- status -------------------------------------------------------------------------------

    def is_idle(self) -> bool:
        return super().is_idle() and not self._changed

    @property
    def lag_changes(self) -> int:
        """How many seqs the peer has not acknowledged (records it already has count too)."""
        return max(0, self._last_seq - self.cursor)

    def status(self) -> dict[str, Any]:
        """What ``GET /_peers`` shows for this peer."""
        lag_seconds = 0.0
        if self.lag_changes and self._oldest_wall_ms is not None:
            lag_seconds = max(0.0, round(self._now() - self._oldest_wall_ms / 1000, 3))
        return {
            **self._common_status(),
            "role": "push",
            "node_id": self.node_id,
            "cursor": self.cursor,
            "lag_changes": self.lag_changes,
            "lag_seconds": lag_seconds,
        }

    # -- what the peer holds ------------------------------------------------------------------

    def holds(self, record: Record) -> bool:
        """Whether the peer has ``record`` (a stored one, with its seq).

        It has it once it acknowledged the record's seq, and also when it wrote the record or
        passed it on: those are never sent to it, so it holds them before the cursor says so.
        """
        acknowledged = record.seq is not None and self.cursor >= record.seq
        return acknowledged or self._peer_has(record)

    @property
    def expedited(self) -> bool:
        """Whether a waiting write has capped the backoff (see :meth:`expedite`)."""
        return self._urgent > 0

    def expedite(self) -> Callable[[], None]:
        """Retry a failing peer within :data:`URGENT_RETRY` s until the returned call is made.

        A write waiting for this peer must not sit out a backoff of up to ``max_backoff``
        (longer than its own timeout) after the peer came back; the cap still keeps a dead peer
        from being called more than about once a second. Releasing twice is harmless.
        """
        self._urgent += 1
        self._shorten_pause()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._urgent -= 1

        return release

    def _progressed(self) -> None:
        if self._on_progress is None:
            return
        try:
            self._on_progress()
        except Exception:
            # A listener's fault must never look like the peer's and put the loop in backoff.
            log.failure("progress listener of {url} failed", url=self.url)

    def _shorten_pause(self) -> None:
        if self._urgent:
            self._end_pause(within=URGENT_RETRY)

    def _pause_length(self, seconds: float) -> float:
        """A backoff pause, capped at :data:`URGENT_RETRY` while a write waits for this peer."""
        if self._urgent and seconds > URGENT_RETRY:
            self._retry_at = self._now() + URGENT_RETRY
            return URGENT_RETRY
        return seconds

    # -- waking -------------------------------------------------------------------------------

    def _on_change(self, record: Record) -> None:
        """A record was stored (written here or received): push it, from the reactor's turn."""
        if record.seq is not None:
            self._last_seq = max(self._last_seq, record.seq)
        if self._oldest_wall_ms is None:
            self._oldest_wall_ms = record.stamp.wall_ms
        self._changed = True
        if self._wake is not None and self._wake_call is None:
            # Not synchronously: the writer (maybe a peer's batch) finishes first, and chains of
            # nodes in one process do not recurse through each other's stacks.
            self._wake_call = self._clock.callLater(0, self._fire_wake)

    def _fire_wake(self) -> None:
        self._wake_call = None
        wake, self._wake = self._wake, None
        if wake is not None and not wake.called:
            wake.callback(None)

    def _wait_for_change(self) -> Deferred[None]:
        if self._changed:
            return succeed(None)

        def forget(_: Deferred[None]) -> None:
            self._wake = None

        self._wake = Deferred(forget)
        return self._wake

    # -- the loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            if self.node_id is not None and self.node_id == self._store.node_id:
                self.state = "self"
                log.warn("peer {url} is this node itself; not pushing to it", url=self.url)
                return
            progressed = await self._attempt(self._push_once)
            if progressed is None or progressed:
                continue
            self._busy = False
            self.state = "idle"
            self._oldest_wall_ms = None
            if not self._changed:
                self._became_quiet()
            await self._interruptibly(self._wait_for_change())

    async def _push_once(self) -> bool:
        """Read one batch after the cursor and deliver it; return whether there was any."""
        self._changed = False
        newest = await self._store.last_seq()
        self._last_seq = max(self._last_seq, newest)
        page = await self._store.changes(
            self.cursor, limit=self._batch_records, max_bytes=self._batch_bytes, everything=True
        )
        read = cut_batch(page.records, self._batch_bytes)
        target = read[-1].seq if read else self.cursor
        assert target is not None
        if len(read) == len(page.records) and not page.more:
            # Everything up to ``newest`` was in this (short) page: gaps left by reset or by
            # rewritten keys need no acknowledgement.
            target = max(target, newest)
        if target <= self.cursor:
            return False
        self.state = "sending"
        if read:
            self._oldest_wall_ms = read[0].stamp.wall_ms
        hinted = self._node_hint() if self.node_id is None and self._node_hint else None
        if hinted is not None and await self._learn(hinted):
            return True  # the peer is this node
        wanted = [record for record in read if not self._peer_has(record)]
        if wanted and await self._deliver(wanted):
            return True  # the peer's identity changed: start again from the new cursor
        await self._advance(target)
        return True

    def _peer_has(self, record: Record) -> bool:
        peer = self.node_id
        if peer is None:
            return False
        # A conflict loser's record carries the losing write's stamp, but its writer holds
        # the write, not the record: send it.
        return peer in record.chain or (record.stamp.node_id == peer and not is_hidden(record.key))

    async def _deliver(self, records: list[Record]) -> bool:
        """Send a batch and check the acknowledgement; return True if the peer is a new node.

        :raises Refused: a non-2xx answer.
        :raises MalformedBatch: the answer is not an acknowledgement of this batch.
        """
        body = encode_batch(self._store.node_id, records)
        answer = await self._request(self.url + "/_replicate", body)
        if not answer.ok:
            raise answer.refusal()
        node_id, received, _applied = decode_ack(answer.body)
        if received != len(records):
            raise MalformedBatch(f"the peer acknowledged {received} of {len(records)} records")
        self._succeeded()
        return await self._learn(node_id)

    async def _learn(self, node_id: str) -> bool:
        """Remember the peer's node id; a different node behind the URL restarts from seq 0."""
        previous = self.node_id
        if node_id == previous:
            return False
        self.node_id = node_id
        await self._store.set_meta(node_meta(self.url), node_id)
        self._progressed()
        if node_id == self._store.node_id:
            return True
        if previous is None:
            log.info("peer {url} is node {node_id}", url=self.url, node_id=node_id)
            return False
        log.warn(
            "peer {url} is now node {node_id} (was {previous}); sending it everything again",
            url=self.url,
            node_id=node_id,
            previous=previous,
        )
        self.cursor = 0
        await self._store.set_meta(cursor_meta(self.url), "0")
        self._progressed()
        return True

    async def _advance(self, target: int) -> None:
        self.cursor = target
        await self._store.set_meta(cursor_meta(self.url), str(target))
        self._progressed()

"""Writes made by other nodes over the same PostgreSQL database, announced by LISTEN/NOTIFY.

Several Navistore nodes may share one database; each must wake its watchers for writes made
through any of them. Every write batch (and every ``apply_all``) that stored something sends
``NOTIFY navistore_writes, '<newest seq>'`` (:func:`write_and_notify`). The session is in
autocommit mode, so the NOTIFY is its own statement right after the committed write: it is
only ever sent for committed seqs, and a node that reads ``changes(since=...)`` after it sees
them.

:class:`Listener` holds one dedicated psycopg connection that LISTENs, in a thread of its own
(a blocking wait there never stalls the reactor), and hands every newest seq to the reactor
with ``callFromThread``. Notifications can be lost (the listen connection broke, the server
restarted): so the thread also reads the seq counter every :data:`POLL_SECONDS` when nothing
came, which bounds the delay of a missed wake, and reconnects by itself, reading the counter
again once connected.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from navistore.backend import postgresql_atomic as atomic
from navistore.backend import postgresql_schema as schema
from navistore.interfaces import Expectation
from navistore.record import Record

if TYPE_CHECKING:
    from twisted.enterprise import adbapi
    from twisted.internet.interfaces import IReactorFromThreads

__all__ = ["CHANNEL", "POLL_SECONDS", "Listener", "apply_all_and_notify", "write_and_notify"]

log = Logger()

#: The channel every node over one database LISTENs on.
CHANNEL = "navistore_writes"
#: The longest a missed notification delays a wake (the fallback poll of the seq counter).
POLL_SECONDS = 1.0
#: The pause before connecting again after the listen connection failed.
RECONNECT_SECONDS = 0.5

_NOTIFY_SQL = "SELECT pg_notify(%s, %s)"
_LAST_SEQ_SQL = "SELECT value FROM backend_state WHERE name = 'last_seq'"


def _notify(txn: adbapi.Transaction, seqs: list[int]) -> None:
    if seqs:
        txn.execute(_NOTIFY_SQL, (CHANNEL, str(max(seqs))))


def write_and_notify(
    txn: adbapi.Transaction, batch: list[tuple[Record, Expectation]]
) -> list[Record | None]:
    """:func:`~navistore.backend.postgresql_schema.write_batch`, then announce its newest seq."""
    stored = schema.write_batch(txn, batch)
    _notify(txn, [record.seq for record in stored if record is not None and record.seq])
    return stored


def apply_all_and_notify(
    txn: adbapi.Transaction, items: atomic.AtomicItems
) -> tuple[list[Record], int | None]:
    """:func:`~navistore.backend.postgresql_atomic.apply_all`, then announce its newest seq."""
    stored, failed = atomic.apply_all(txn, items)
    _notify(txn, [record.seq for record in stored if record.seq])
    return stored, failed


class Listener:
    """A thread LISTENing on :data:`CHANNEL` over its own connection, calling
    ``callback(newest_seq)`` in the reactor thread for every notification and poll that saw
    the counter move.

    :param connect: libpq keyword arguments (``Target.connect``).
    :param reactor: where the callbacks run.
    :param callback: given the database's newest seq.
    """

    def __init__(
        self,
        connect: dict[str, Any],
        reactor: IReactorFromThreads,
        callback: Callable[[int], None],
        *,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self._connect = dict(connect)
        self._reactor = reactor
        self._callback = callback
        self._poll_seconds = poll_seconds
        self._stopping = threading.Event()
        #: Times the listen connection was (re)established (tests read it).
        self.connections = 0
        self._thread = threading.Thread(target=self._run, name="navistore-pg-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> Deferred[None]:
        """Stop the thread; fires once it has closed its connection (within a poll)."""
        self._stopping.set()
        stopped: Deferred[None] = Deferred()
        if not self._thread.is_alive():
            stopped.callback(None)
            return stopped

        def join() -> None:
            self._thread.join()
            self._reactor.callFromThread(stopped.callback, None)

        threading.Thread(target=join, name="navistore-pg-listen-join", daemon=True).start()
        return stopped

    def _announce(self, seq: int) -> None:
        # Every poll is announced, moved or not: a follower whose last read failed retries.
        self._reactor.callFromThread(self._callback, seq)

    def _run(self) -> None:
        import psycopg

        while not self._stopping.is_set():
            try:
                with psycopg.connect(autocommit=True, **self._connect) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    self.connections += 1
                    self._poll(connection)
                    while not self._stopping.is_set():
                        got = False
                        for notice in connection.notifies(timeout=self._poll_seconds):
                            got = True
                            if notice.payload.isdigit():
                                self._announce(int(notice.payload))
                            if self._stopping.is_set():
                                break
                        if not got:
                            self._poll(connection)
            except Exception as exc:  # any failure of the connection: connect again
                if self._stopping.is_set():
                    return
                log.warn("PostgreSQL listen connection failed ({error}); reconnecting", error=exc)
                self._stopping.wait(RECONNECT_SECONDS)

    def _poll(self, connection: Any) -> None:
        row = connection.execute(_LAST_SEQ_SQL).fetchone()
        if row is not None:
            self._announce(int(row[0]))

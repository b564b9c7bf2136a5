"""``GET /_backup`` (the ``admin`` permission): an online, consistent copy of a sqlite node's
database, streamed.

The copy is taken with sqlite's backup API on a thread (by the function the wiring hands in,
:func:`navistore.backend.sqlite_backup.take_backup`)
into a temporary file beside the database while the node goes on serving, then streamed to the
client with backpressure (a slow client costs the node no memory, only the copy's disk space
until it is done) and removed: it is unlinked as soon as it is open, so nothing is left behind
whether the client reads it to the end, goes away, or the node stops. One backup runs at a time
(another is a 409 ``backup_running``). The answer is ``application/vnd.sqlite3`` with a
``Content-Length`` (a client can tell a copy cut short) and the node id and seq the copy holds
(``X-Navistore-Node-Id``, ``X-Navistore-Seq``). A node on another backend answers 409
``backup_unsupported`` (export its records with ``/_export`` instead), a cache node 409
``cache_node``.

A copy carries the node's id and seq: start a node on it to replace the node it came from, never
beside it (a new replica is a ``--clone-from``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import IO, Any, Callable, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.server import Request

from navistore.store import Store
from navistore.web.errors import ApiError
from navistore.web.responses import Endpoints, Response

__all__ = ["BACKUP_CHUNK", "BACKUP_TYPE", "BackupEndpoint", "backup_endpoints"]

log = Logger()

#: The content type of a backup: a sqlite database file.
BACKUP_TYPE = b"application/vnd.sqlite3"
#: Bytes of the copy read and written at a time.
BACKUP_CHUNK = 256 * 1024

#: Runs a blocking function on a thread: the Deferred fires with its result.
InThread = Callable[..., "Deferred[Any]"]


class Backup(Protocol):
    """A copy taken: where it is, its size, and the node id and newest seq it holds."""

    @property
    def path(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def node_id(self) -> str | None: ...
    @property
    def last_seq(self) -> int | None: ...


#: Copies a sqlite database (its path) into a new file beside it; blocks.
TakeBackup = Callable[[str], Backup]


def _default_in_thread(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
    from twisted.internet.threads import deferToThread

    return deferToThread(function, *args)


class BackupEndpoint:
    """The ``/_backup`` handler over one Store.

    :param take: what copies the database (blocking; it runs on a thread).
    :param cache_node: the node is a cache node (whose store holds only copies).
    :param in_thread: how the copy runs on a thread (default: the reactor's thread pool).
    """

    def __init__(
        self,
        store: Store,
        *,
        take: TakeBackup,
        cache_node: bool = False,
        in_thread: InThread | None = None,
    ) -> None:
        self.store = store
        self.take = take
        self.cache_node = cache_node
        self.in_thread = _default_in_thread if in_thread is None else in_thread
        self.running = False

    def endpoints(self) -> Endpoints:
        """The endpoint by name and method, for ``make_site(..., extra_endpoints=...)``."""
        return {"_backup": {b"GET": self.backup}}

    def _database(self) -> str:
        backend = self.store.backend
        path = getattr(backend, "path", None)
        if self.cache_node:
            raise ApiError(
                409,
                "cache_node",
                "this is a cache node (--upstream): it holds copies, nothing of its own; back up "
                "its upstream",
            )
        if getattr(backend, "kind", None) != "sqlite" or not isinstance(path, str):
            kind = getattr(backend, "kind", type(backend).__name__)
            raise ApiError(
                409,
                "backup_unsupported",
                f"this node stores its records in a {kind} backend: /_backup copies a sqlite "
                "database; export the records instead (GET /_export, navistore export)",
                {"backend": kind},
            )
        return path

    async def backup(self, request: Request) -> Response:
        """Take the copy, then stream it; the copy is gone from the disk once it is open."""
        database = self._database()
        if self.running:
            raise ApiError(
                409,
                "backup_running",
                "a backup of this node is being taken or sent: try again once it is done",
                None,
                {b"Retry-After": b"5"},
            )
        self.running = True
        try:
            backup = await self._take(database)
            copy = open(backup.path, "rb")  # noqa: SIM115 (closed when the answer is done)
        except BaseException:
            self.running = False
            raise
        try:
            os.unlink(backup.path)  # the open file stays readable; nothing is left behind
        except OSError:  # pragma: no cover (a system that cannot unlink open files)
            log.warn("could not remove the backup copy {path}", path=backup.path)

        def done(_: object) -> None:
            copy.close()
            self.running = False

        # However the answer ends (sent, client gone before or while streaming), the copy goes.
        request.notifyFinish().addBoth(done)
        headers = {
            b"Content-Type": BACKUP_TYPE,
            b"Content-Length": b"%d" % backup.size,
            b"Cache-Control": b"no-store",
            b"Content-Disposition": b'attachment; filename="navistore-%s-%d.db"'
            % ((backup.node_id or "node").encode("ascii", "replace"), backup.last_seq or 0),
        }
        if backup.node_id is not None:
            headers[b"X-Navistore-Node-Id"] = backup.node_id.encode("ascii", "replace")
        if backup.last_seq is not None:
            headers[b"X-Navistore-Seq"] = b"%d" % backup.last_seq
        return Response(200, headers=headers, stream=_chunks(copy))

    async def _take(self, database: str) -> Backup:
        """The copy, taken on a thread. If the request is cancelled meanwhile (its client went
        away), the copy still being taken is removed once it is done."""
        taking = self.in_thread(self.take, database)
        outcome: Deferred[Backup] = Deferred()

        def taken(backup: Backup) -> None:
            if outcome.called:  # cancelled: nobody will send it
                os.unlink(backup.path)
            else:
                outcome.callback(backup)

        def failed(failure: Any) -> None:
            if not outcome.called:
                outcome.errback(failure)

        taking.addCallbacks(taken, failed)
        return await outcome


async def _chunks(copy: IO[bytes]) -> AsyncIterator[bytes]:
    """The copy, :data:`BACKUP_CHUNK` bytes a write (each once the last was taken)."""
    while True:
        chunk = copy.read(BACKUP_CHUNK)
        if not chunk:
            return
        yield chunk


def backup_endpoints(store: Store, *, take: TakeBackup, cache_node: bool = False) -> Endpoints:
    """The ``/_backup`` endpoint over ``store``, for ``extra_endpoints``."""
    return BackupEndpoint(store, take=take, cache_node=cache_node).endpoints()

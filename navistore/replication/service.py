"""The replication service of one node: its peer set, a pusher per peer, an optional clone.

Peers come from ``initial_peers`` (``--peer``), from ``PUT /_replication_slaves`` and from
``/_peers``; the set is persisted in the Store's meta data, so it survives restarts, and every
change to it goes through one lock, so concurrent requests cannot interleave their updates.

:meth:`ReplicationService.replica_waiter` is what ``?replicas=`` writes wait on: it hears of every
cursor move and every change to the peer set.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, Callable, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, gatherResults
from twisted.logger import Logger

from navistore.links import PeerLink
from navistore.peer_urls import InvalidPeer, host_port, normalize_peer_url, unique
from navistore.replication.peers import cursor_meta, load_peers, node_meta, save_peers
from navistore.replication.puller import Puller
from navistore.replication.pusher import Pusher
from navistore.replication.replicas import ReplicaTracker
from navistore.store import Store

__all__ = ["ReplicationService"]

log = Logger()

_T = TypeVar("_T")


class ReplicationService(Service):
    """Pushes every change of ``store`` to each peer, and clones ``clone_from`` if given.

    It is the node's :class:`~navistore.hooks.PeerControl` (what ``/_peers`` manages) and, through
    :meth:`replica_waiter`, its :class:`~navistore.hooks.ReplicaWaiter`.

    :param link: the client, clock, jitter, timeout and backoff cap every pusher and the clone
        puller talk to their peer with.
    :param self_urls: URLs that reach this node; a peer with the same host and port is refused.
    :param initial_peers: merged into the persisted set when the service starts.
    :param clone_from: a node to pull the whole state from, then keep in step with.
    :param batch_records: the most records per pushed batch (and per pulled page).
    :param batch_bytes: about the most bytes per pushed batch; a bigger record goes alone.
    :param pull_interval: seconds between pulls once the clone has caught up.
    :raises InvalidPeer: an initial peer or the clone source is not a valid peer URL.
    """

    def __init__(
        self,
        store: Store,
        *,
        link: PeerLink,
        self_urls: Iterable[str] = (),
        initial_peers: Iterable[str] = (),
        clone_from: str | None = None,
        batch_records: int = 500,
        batch_bytes: int = 1_048_576,
        pull_interval: float = 1.0,
    ) -> None:
        self.setName("replication")
        self.store = store
        self._link = link
        self._self_addresses = {host_port(normalize_peer_url(url)) for url in self_urls}
        self._initial_peers = unique(self.check_peer(url) for url in initial_peers)
        self._clone_from = self.check_peer(clone_from) if clone_from else None
        if batch_records < 1 or batch_bytes < 1:
            raise ValueError("batch_records and batch_bytes must be at least 1")
        self._batch_records = batch_records
        self._batch_bytes = batch_bytes
        self._pull_interval = pull_interval
        self._lock = DeferredLock()
        self._urls: list[str] = []
        self._pushers: dict[str, Pusher] = {}
        self._puller: Puller | None = None
        self._started: Deferred[None] | None = None
        self._loaded = False
        self._replicas: ReplicaTracker | None = None
        self._peers_known = False

    # -- peer URLs ----------------------------------------------------------------------------

    def check_peer(self, url: str) -> str:
        """Normalise a peer URL and refuse this node's own.

        :raises InvalidPeer: with a message saying why.
        """
        normal = normalize_peer_url(url)
        if host_port(normal) in self._self_addresses:
            raise InvalidPeer(f"peer URL {normal} is this node itself")
        return normal

    # -- lifecycle ----------------------------------------------------------------------------

    def startService(self) -> Deferred[None]:
        """Load the peer set, merge ``initial_peers``, start the pushers (and the clone).

        Returns a Deferred firing once they are started (also :meth:`started`); a failure is
        logged.
        """
        Service.startService(self)
        self._started = Deferred.fromCoroutine(self._start())
        self._started.addErrback(
            lambda failure: log.failure("replication failed to start", failure)
        )
        return self.started()

    def started(self) -> Deferred[None]:
        """Fire once :meth:`startService` has loaded and started everything."""
        done: Deferred[None] = Deferred()
        if self._started is None or self._started.called:
            done.callback(None)
        else:
            self._started.chainDeferred(done)
        return done

    async def _start(self) -> None:
        await self._lock.acquire()
        try:
            await self._load()
            added = [url for url in self._initial_peers if url not in self._urls]
            for url in added:
                await self._add_pusher(url)
            if added:
                self._urls = [*self._urls, *added]
                await save_peers(self.store, self._urls)
            for pusher in self.pushers():
                pusher.start()
            self._peers_known = True
            self._progressed()
            if self._clone_from is not None and self._puller is not None:
                self._puller.start()
            elif self._clone_from is not None:
                puller = Puller(
                    self.store,
                    self._clone_from,
                    link=self._link,
                    page_records=self._batch_records,
                    interval=self._pull_interval,
                )
                await puller.load()
                self._puller = puller
                puller.start()
        finally:
            self._lock.release()

    def stopService(self) -> Deferred[None]:
        """Stop every pusher and the clone; fire once their requests finished or were cancelled."""
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _load(self) -> None:
        """Read the persisted peer set once (under the lock), making a pusher for each peer."""
        if self._loaded:
            return
        stored = await load_peers(self.store)
        for url in stored:
            await self._add_pusher(url)
        self._urls = stored
        self._loaded = True

    async def _stop(self) -> None:
        if self._started is not None:
            await self.started()
        await self._lock.acquire()
        try:
            workers: list[Pusher | Puller] = list(self._pushers.values())
            if self._puller is not None:
                workers.append(self._puller)
            await gatherResults([worker.stop() for worker in workers], consumeErrors=True)
        finally:
            self._lock.release()
        if self._replicas is not None:
            # Stopped pushers make no more progress: answer the waiting writes now.
            self._replicas.answer_all()

    # -- the peer set -------------------------------------------------------------------------

    async def set_peers(self, urls: Sequence[str]) -> list[str]:
        """Replace the whole peer set (all URLs are checked first; an invalid one changes nothing).

        Removed peers are stopped and their cursors forgotten; kept ones carry on.
        """
        wanted = unique(self.check_peer(url) for url in urls)

        async def replace() -> list[str]:
            for url in [url for url in self._urls if url not in wanted]:
                await self._drop_pusher(url)
            for url in wanted:
                if url not in self._pushers:
                    await self._add_pusher(url)
            await self._save(wanted)
            return list(wanted)

        return await self._changing(replace)

    async def add_peer(self, url: str) -> bool:
        """Add one peer; return False if it was there already."""
        normal = self.check_peer(url)

        async def add() -> bool:
            if normal in self._urls:
                return False
            await self._add_pusher(normal)
            await self._save([*self._urls, normal])
            return True

        return await self._changing(add)

    async def remove_peer(self, url: str) -> bool:
        """Remove one peer: stop its pusher, forget its cursor; return False if unknown.

        :raises InvalidPeer: ``url`` is not a peer URL at all.
        """
        normal = normalize_peer_url(url)

        async def remove() -> bool:
            if normal not in self._urls:
                return False
            await self._drop_pusher(normal)
            await self._save([each for each in self._urls if each != normal])
            return True

        return await self._changing(remove)

    async def _changing(self, change: Callable[[], Awaitable[_T]]) -> _T:
        """Run a change of the peer set under the lock, the persisted set loaded first, so that
        concurrent requests cannot interleave their updates."""
        await self._lock.acquire()
        try:
            await self._load()
            return await change()
        finally:
            self._lock.release()

    async def _save(self, urls: list[str]) -> None:
        """Make ``urls`` the peer set, durably, and re-check the writes waiting for replicas."""
        self._urls = urls
        await save_peers(self.store, urls)
        self._progressed()

    async def _add_pusher(self, url: str) -> None:
        pusher = Pusher(
            self.store,
            url,
            link=self._link,
            batch_records=self._batch_records,
            batch_bytes=self._batch_bytes,
            node_hint=lambda: self._source_node_id(url),
            on_progress=self._progressed,
        )
        await pusher.load()
        self._pushers[url] = pusher
        if self.running:
            pusher.start()

    def _source_node_id(self, url: str) -> str | None:
        """The node id the clone puller found at ``url``, if it pulls from there."""
        puller = self._puller
        return puller.node_id if puller is not None and puller.url == url else None

    async def _drop_pusher(self, url: str) -> None:
        pusher = self._pushers.pop(url, None)
        if pusher is not None:
            await pusher.stop()
        await self.store.set_meta(cursor_meta(url), "0")
        await self.store.set_meta(node_meta(url), "")

    # -- replicated writes --------------------------------------------------------------------

    def replica_waiter(self) -> ReplicaTracker:
        """What ``?replicas=N|all`` writes wait on, for ``make_site(..., replica_waiter=...)``.

        One tracker per service, told of every cursor move and peer set change.
        """
        if self._replicas is None:
            self._replicas = ReplicaTracker(self, self.store.node_id, clock=self._link.clock)
        return self._replicas

    @property
    def peers_known(self) -> bool:
        """Whether the service has started with its whole peer set (stored and ``--peer``):
        before that, "every peer" would wrongly mean none."""
        return self._peers_known

    def _progressed(self) -> None:
        """What peers hold, or who the peers are, may have changed: re-check waiting writes."""
        if self._replicas is not None:
            self._replicas.refresh()

    # -- status -------------------------------------------------------------------------------

    def peer_urls(self) -> list[str]:
        """The push peers, in the order they were added."""
        return list(self._urls)

    def peers(self) -> list[dict[str, Any]]:
        """The status of each push peer (see :meth:`Pusher.status`), in order."""
        return [self._pushers[url].status() for url in self._urls if url in self._pushers]

    def clone_status(self) -> dict[str, Any] | None:
        """The status of the clone source (see :class:`Puller`), or None without one.

        Reads may miss keys the source holds until ``state`` has been ``"caught_up"``.
        """
        return None if self._puller is None else self._puller.status()

    @property
    def cloning(self) -> bool:
        """Whether this node clones a source (``clone_from``)."""
        return self._clone_from is not None

    @property
    def puller(self) -> Puller | None:
        """The clone puller (``clone_from``), once started; None without one."""
        return self._puller

    def pushers(self) -> Sequence[Pusher]:
        """The pushers, in peer order (for tests and metrics)."""
        return [self._pushers[url] for url in self._urls if url in self._pushers]

    def is_idle(self) -> bool:
        """Whether every pusher has caught up (or is stopped, or is this node) and the clone too,
        with nothing in flight."""
        workers: list[Pusher | Puller] = list(self._pushers.values())
        if self._puller is not None:
            workers.append(self._puller)
        return all(worker.is_idle() for worker in workers)

    async def cursors(self) -> Sequence[int] | None:
        """Every push peer's persisted cursor (what the tombstone collector may purge below);
        None until the peer set is known: an empty list then would mean "no peers" and let
        every tombstone go."""
        if not self.peers_known:
            return None
        found: list[int] = []
        for url in self.peer_urls():
            text = await self.store.get_meta(cursor_meta(url))
            found.append(int(text) if text else 0)
        if not self.peers_known:
            return None
        return found

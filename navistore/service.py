"""The wiring of one node: backend, Store, Site and listening ports, as one Twisted service.

:class:`NavistoreService` is what ``twistd navistore`` (:mod:`navistore.tap`) and
``bin/nhttpserver`` (:mod:`navistore.cli`) run. With those two modules it is the only place that
constructs concrete objects; everything else receives them.

Lifecycle:

- ``privilegedStartService`` binds every endpoint: before twistd sheds privileges (so ports below
  1024 work with ``--uid``) and before anything slow happens (so a busy port fails the start at
  once). Until the Store is open, connections are accepted and closed straight away.
- ``startService`` makes the backend from its URL, opens the Store, builds the Site and serves
  it, then starts the child services (replication will be one), which need the Store. Whatever
  fails before ``startService`` returns is raised from it, which twistd reports itself (exit
  status 1, and through the status pipe when it daemonizes); what fails later is logged and
  handed to ``on_startup_failure``.
- ``stopService`` stops listening, lets the requests being served finish (bounded by
  ``drain_timeout``), closes the HTTP connections once their answers are flushed, stops the
  children, and closes the Store last, which waits for the backend's pending writes.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from typing import Any, Callable, cast

from twisted.application.service import MultiService, Service
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    TimeoutError,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.server import Request, Site

from . import __version__
from .backend import BackendURLError, open_backend
from .errors import BackendError
from .interfaces import IStorageBackend
from .keys import DEFAULT_MAX_KEY_BYTES
from .replication.cache import UpstreamCache
from .replication.fallback import ReadFallback
from .replication.gc import DEFAULT_RETENTION, TombstoneCollector, replication_cursors
from .replication.service import ReplicationService
from .store import Store
from .waiters import Waiters
from .watch import DEFAULT_MAX_WATCHERS, WatchHub
from .web import DEFAULT_MAX_VALUE_SIZE, MissResolver, WriteForwarder, make_site
from .web.backend_rpc import backend_rpc_endpoints
from .web.bulk import bulk_endpoints

__all__ = [
    "DEFAULT_BACKEND",
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_ENDPOINTS",
    "NavistoreService",
    "describe_address",
]

log = Logger()

#: Where a node keeps its data unless told otherwise: a sqlite file in the working directory.
DEFAULT_BACKEND = "sqlite:navistore.db"

#: Where a node listens unless told otherwise: the classic port, on every interface.
DEFAULT_ENDPOINTS: tuple[str, ...] = ("tcp:8888",)

#: How long shutdown waits for the requests being served, and again for their connections.
DEFAULT_DRAIN_TIMEOUT = 10.0

#: Startup errors whose message says it all; anything else is logged with its traceback.
_EXPECTED_STARTUP_ERRORS = (BackendURLError, BackendError, CannotListenError, OSError, ValueError)


def self_urls(addresses: Iterable[IAddress]) -> list[str]:
    """The URLs under which peers could reach this node, so that it never peers with itself.

    A port bound to every interface is reachable as localhost, the loopback addresses and this
    host's names; replication also recognises itself by node id at run time.
    """
    names = {"127.0.0.1", "localhost", "::1", socket.gethostname(), socket.getfqdn()}
    urls: list[str] = []
    for address in addresses:
        host = getattr(address, "host", None)
        port = getattr(address, "port", None)
        if host is None or port is None:
            continue
        hosts = names | {"0.0.0.0", "::"} if host in ("0.0.0.0", "::") else {host}
        for name in sorted(hosts):
            literal = f"[{name}]" if ":" in name else name
            urls.append(f"http://{literal}:{port}")
    return urls


def default_http_client(reactor: Any) -> Any:
    """treq over a persistent connection pool, with a connect timeout, for talking to peers."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    return HTTPClient(Agent(reactor, connectTimeout=5, pool=pool))


def describe_address(address: IAddress) -> str:
    """Say where a port listens, as ``tcp:127.0.0.1:8888`` or ``unix:/path``.

    The end-to-end tests read the port of ``tcp:0`` servers from this text in the log.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"{str(getattr(address, 'type', 'TCP')).lower()}:{host}:{port}"
    name = getattr(address, "name", None)
    if name is not None:
        return f"unix:{name.decode() if isinstance(name, bytes) else name}"
    return repr(address)


class _RequestTracker:
    """Stands in for a Site's request factory, to know which requests are being served.

    Shutdown waits for them, so that a client whose write was accepted gets its answer. A request
    counts from its first line until it is finished or its connection is lost: twisted.web fires
    ``notifyFinish`` for every request it creates, one way or the other.
    """

    def __init__(self, request_factory: Callable[..., Request]) -> None:
        self._request_factory = request_factory
        self._serving: set[Request] = set()
        self._idle = Waiters()

    def __call__(self, *args: Any, **kwargs: Any) -> Request:
        request = self._request_factory(*args, **kwargs)
        self._serving.add(request)
        request.notifyFinish().addBoth(self._finished, request)
        return request

    def _finished(self, _result: object, request: Request) -> None:
        self._serving.discard(request)
        if not self._serving:
            self._idle.fire()

    @property
    def serving(self) -> int:
        """How many requests are being served now."""
        return len(self._serving)

    def idle(self) -> Deferred[None]:
        """Fire once no request is being served (at once if none is)."""
        return succeed(None) if not self._serving else self._idle.wait()


class _Refused(Protocol):
    """A connection that arrived while there is nothing to serve: closed at once."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


class _Connections(WrappingFactory):
    """The factory every endpoint listens with; it serves the Site once there is one.

    It exists before the Site, so that ports are bound first; until :meth:`serve` is called (and
    again once :meth:`refuse` is), a new connection is closed at once. Wrapping each connection
    (Twisted's own way of knowing them) lets shutdown close them gracefully, after their
    answers are flushed, rather than the reactor cutting them at exit.
    """

    noisy = False

    def __init__(self) -> None:
        super().__init__(None)
        self._refusing = True
        self._empty = Waiters()

    def logPrefix(self) -> str:
        return "Navistore"

    def serve(self, site: Site) -> None:
        """Start answering new connections with ``site``."""
        self.wrappedFactory = site
        site.doStart()
        self._refusing = False

    def refuse(self) -> None:
        """Close every new connection from now on."""
        self._refusing = True

    # The Site is started once by ``serve`` and stopped once by the service, not once per port.
    def doStart(self) -> None:
        super(WrappingFactory, self).doStart()

    def doStop(self) -> None:
        super(WrappingFactory, self).doStop()

    def buildProtocol(self, addr: IAddress | None) -> ProtocolWrapper:
        if self._refusing or self.wrappedFactory is None:
            return self.protocol(self, _Refused())
        return super().buildProtocol(addr)

    def unregisterProtocol(self, protocol: Protocol) -> None:
        super().unregisterProtocol(protocol)
        if not self.protocols:
            self._empty.fire()

    def close_all(self) -> Deferred[None]:
        """Close every connection once what was written to it is sent; fire when all are gone."""
        if not self.protocols:
            return succeed(None)
        gone = self._empty.wait()
        for wrapper in list(self.protocols):
            wrapper.loseConnection()
        return gone

    def abort_all(self) -> None:
        """Cut every connection still open, without waiting for anything."""
        for wrapper in list(self.protocols):
            transport = wrapper.transport
            abort = getattr(transport, "abortConnection", None)
            if abort is not None:
                abort()
            elif transport is not None:
                transport.loseConnection()


class NavistoreService(MultiService):
    """One Navistore node: the Store over a backend, served over HTTP on some endpoints.

    Child services (added with ``setServiceParent``) start once the Store is open, and can read it
    from :attr:`store`; they stop before it is closed.

    :param backend_url: which backend to use, e.g. ``sqlite:navistore.db`` or ``memory:``.
    :param endpoints: Twisted server endpoint strings to listen on, e.g. ``tcp:8888``.
    :param max_value_size: the largest value (request body) accepted, in bytes.
    :param max_key_bytes: the longest key accepted, in bytes of UTF-8.
    :param reactor: the reactor to listen with and to time with.
    :param on_startup_failure: called with the Failure when starting fails after ``startService``
        has returned (the process runner uses it to stop and exit non-zero). The failure has been
        logged, and the ports and backend released, before it is called.
    :param drain_timeout: how long shutdown waits for requests, and then for connections.
    :param backend_factory: makes the backend from ``backend_url`` (tests hand in their own).
    :param peers: peer URLs to replicate to, added to those the node already keeps.
    :param clone_from: a node whose whole state to pull, and then follow.
    :param upstream: make this node a read-through cache of the node at this URL.
    :param read_fallback: ask the peers for a key this node misses before answering 404.
    :param serve_backend: serve this node's storage as the ``http://`` backend of one other
        process (a dedicated node: that process's ``reset`` wipes it).
    :param http_client: the treq-like client replication talks to peers with (default: treq
        over a persistent connection pool with connect timeouts).
    """

    def __init__(
        self,
        backend_url: str,
        endpoints: Sequence[str] = DEFAULT_ENDPOINTS,
        *,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        max_key_bytes: int = DEFAULT_MAX_KEY_BYTES,
        reactor: Any,
        on_startup_failure: Callable[[Failure], object] | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        backend_factory: Callable[[str], IStorageBackend] = open_backend,
        peers: Sequence[str] = (),
        clone_from: str | None = None,
        upstream: str | None = None,
        read_fallback: bool = False,
        serve_backend: bool = False,
        http_client: Any = None,
        max_watchers: int = DEFAULT_MAX_WATCHERS,
        tombstone_retention: float = DEFAULT_RETENTION,
    ) -> None:
        super().__init__()
        if not endpoints:
            raise ValueError("a Navistore service needs at least one endpoint to listen on")
        self.backend_url = backend_url
        self.endpoints = tuple(endpoints)
        self.max_value_size = max_value_size
        self.max_key_bytes = max_key_bytes
        self.drain_timeout = drain_timeout
        self._reactor = reactor
        self._on_startup_failure = on_startup_failure
        self._backend_factory = backend_factory
        self.peers = tuple(peers)
        self.clone_from = clone_from
        self.upstream = upstream
        self.read_fallback = read_fallback
        self.serve_backend = serve_backend
        #: The cache of the upstream, on a cache node.
        self.cache: UpstreamCache | None = None
        self._http_client = http_client
        self.max_watchers = max_watchers
        self.tombstone_retention = tombstone_retention
        #: Every watch of the node (long-polls, event streams, ``?wait``), once the Store is open.
        self.watch_hub: WatchHub | None = None
        #: Purges tombstones every peer has, once the Store is open.
        self.collector: TombstoneCollector | None = None
        #: The replication service, once the Store is open.
        self.replication: ReplicationService | None = None
        self._connections = _Connections()
        self._binding: list[Deferred[None]] | None = None
        self._bind_failures: list[Failure] = []
        self._ports: list[IListeningPort] = []
        self._backend: IStorageBackend | None = None
        self._tracker: _RequestTracker | None = None
        self._starting: Deferred[None] | None = None
        self._inside_start_service = False
        self._raise_from_start: Failure | None = None
        self._children_started = False
        self._stopping: Deferred[None] | None = None
        self._stopped = Waiters()
        #: The node's Store, once open.
        self.store: Store | None = None
        #: The Site answering HTTP, once the Store is open.
        self.site: Site | None = None

    @property
    def ports(self) -> list[IListeningPort]:
        """The ports listening now."""
        return list(self._ports)

    # -- starting ---------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        """Bind every endpoint, raising at once for a bad or busy one; then the children's."""
        try:
            self._bind()
        except Exception:
            self._report_startup_failure(Failure())
            raise
        super().privilegedStartService()

    def _bind(self) -> None:
        """Listen on every endpoint (once); raise the first failure known by now."""
        if self._binding is not None:
            return
        self._binding = []
        try:
            for description in self.endpoints:
                listening = serverFromString(self._reactor, description).listen(self._connections)
                listening.addCallbacks(
                    self._bound, self._bind_failures.append, callbackArgs=(description,)
                )
                self._binding.append(listening)
        except Exception:
            self._release_ports()
            raise
        # Most endpoints (tcp, ssl, unix) bind synchronously: their failure is known already.
        if self._bind_failures:
            self._release_ports()
            self._bind_failures[0].raiseException()

    def _bound(self, port: IListeningPort, description: str) -> None:
        self._ports.append(port)
        log.info(
            "Navistore listening on {address} (endpoint {endpoint})",
            address=describe_address(port.getHost()),
            endpoint=description,
        )

    def startService(self) -> None:
        """Open the backend and the Store, then serve; raise what fails before this returns."""
        # Not MultiService.startService: the children start once the Store is open.
        Service.startService(self)
        self._inside_start_service = True
        try:
            self._starting = Deferred.fromCoroutine(self._start())
            self._starting.addErrback(self._start_failed)
        finally:
            self._inside_start_service = False
        failure, self._raise_from_start = self._raise_from_start, None
        if failure is not None:
            failure.raiseException()

    async def _start(self) -> None:
        self._bind()
        self._backend = self._backend_factory(self.backend_url)
        assert self._binding is not None
        await gatherResults(self._binding)
        if self._bind_failures:
            self._bind_failures[0].raiseException()
        self.store = await Store.open(self._backend, max_key_bytes=self.max_key_bytes)
        http_client = self._http_client or default_http_client(self._reactor)
        self.replication = ReplicationService(
            self.store,
            http_client=http_client,
            clock=self._reactor,
            self_urls=self_urls(port.getHost() for port in self._ports),
            initial_peers=self.peers,
            clone_from=self.clone_from,
        )
        self.replication.setServiceParent(self)
        self.collector = TombstoneCollector(
            self.store,
            cursors=replication_cursors(self.replication),
            clock=self._reactor,
            retention=self.tombstone_retention,
        )
        self.collector.setServiceParent(self)
        self.watch_hub = WatchHub(self.store, clock=self._reactor, max_watchers=self.max_watchers)
        miss_resolver: MissResolver | None = None
        write_forwarder: WriteForwarder | None = None
        if self.upstream is not None:
            self.cache = UpstreamCache(
                self.store,
                http_client=http_client,
                clock=self._reactor,
                upstream=self.replication.check_peer(self.upstream),
            )
            self.cache.setServiceParent(self)
            miss_resolver = write_forwarder = self.cache
        elif self.read_fallback:
            miss_resolver = ReadFallback(
                http_client=http_client, clock=self._reactor, peers=self.replication.peer_urls
            )
        endpoints = dict(self.replication.endpoints())
        endpoints.update(
            bulk_endpoints(
                self.store, max_value_size=self.max_value_size, write_forwarder=write_forwarder
            )
        )
        if self.serve_backend:
            endpoints.update(backend_rpc_endpoints(self.store))
        site = make_site(
            self.store,
            max_value_size=self.max_value_size,
            extra_endpoints=endpoints,
            miss_resolver=miss_resolver,
            write_forwarder=write_forwarder,
            replica_waiter=self.replication.replica_waiter(),
            watch_hub=self.watch_hub,
            reactor=self._reactor,
        )
        self._tracker = _RequestTracker(site.requestFactory)
        # HTTP channels only call it with (channel, queued) for a Request: a callable will do.
        site.requestFactory = cast("type[Request]", self._tracker)
        self.site = site
        if not self.running:
            return  # stopped while the Store was opening; _stop closes it
        self._connections.serve(site)
        for child in self:
            if not child.running:  # addService already started those added while running
                child.startService()
        self._children_started = True
        log.info(
            "Navistore {version} node {node_id} ready (backend {backend})",
            version=__version__,
            node_id=self.store.node_id,
            backend=self.backend_url,
        )

    def _start_failed(self, failure: Failure) -> Deferred[None]:
        self.running = 0
        self._report_startup_failure(failure)
        cleaned = self._abandon()
        if self._inside_start_service:
            self._raise_from_start = failure
        elif self._on_startup_failure is not None:
            on_failure = self._on_startup_failure
            cleaned.addCallback(lambda _: on_failure(failure))
            cleaned.addErrback(lambda f: log.failure("on_startup_failure failed", f))
        return cleaned

    @staticmethod
    def _report_startup_failure(failure: Failure) -> None:
        if failure.check(*_EXPECTED_STARTUP_ERRORS):
            log.critical("Navistore cannot start: {why}", why=failure.getErrorMessage())
        else:
            log.failure("Navistore cannot start", failure, level=LogLevel.critical)

    def _abandon(self) -> Deferred[None]:
        """Release what a failed start holds: the ports, then the backend."""
        releasing = self._release_ports()
        backend, self._backend = self._backend, None
        self.store = None
        if backend is None:
            return releasing
        closing: Deferred[None] = maybeDeferred(backend.close)
        closing.addErrback(lambda failure: log.failure("closing the backend failed", failure))
        return closing

    def _release_ports(self) -> Deferred[None]:
        ports, self._ports = self._ports, []
        stopping = [maybeDeferred(port.stopListening) for port in ports]
        released: Deferred[None] = DeferredList(stopping, consumeErrors=True).addCallback(
            lambda _: None
        )
        return released

    # -- stopping ---------------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        """Stop listening, drain requests and connections, stop the children, close the Store."""
        Service.stopService(self)
        if self._stopping is None:
            self._stopping = Deferred.fromCoroutine(self._stop())
            self._stopping.addErrback(lambda failure: log.failure("stopping failed", failure))
            self._stopping.addBoth(lambda _: self._stopped.fire())
        if self._stopping.called:
            return succeed(None)
        return self._stopped.wait()

    async def _stop(self) -> None:
        if self._starting is not None:
            await self._starting  # a failure was reported and cleaned up when it happened
        self._connections.refuse()
        await self._release_ports()
        if self.watch_hub is not None:
            self.watch_hub.close()  # long-polls answer, event streams end: nothing to drain
        tracker = self._tracker
        if tracker is not None and tracker.serving:
            log.info("Navistore stopping: {count} request(s) to finish", count=tracker.serving)
            try:
                await tracker.idle().addTimeout(self.drain_timeout, self._reactor)
            except TimeoutError:
                log.warn(
                    "{count} request(s) still running after {seconds}s; closing anyway",
                    count=tracker.serving,
                    seconds=self.drain_timeout,
                )
        try:
            await self._connections.close_all().addTimeout(self.drain_timeout, self._reactor)
        except TimeoutError:
            self._connections.abort_all()
        if self._children_started:
            self._children_started = False
            children = [maybeDeferred(child.stopService) for child in reversed(list(self))]
            await DeferredList(children, consumeErrors=True)
        for child in (self.collector, self.cache, self.replication):
            if child is not None:
                child.disownServiceParent()
        self.collector = None
        self.cache = None
        self.replication = None
        if self.site is not None and self._connections.wrappedFactory is self.site:
            self.site.doStop()
        backend, self._backend = self._backend, None
        if backend is not None:
            try:
                await (self.store.close() if self.store is not None else backend.close())
            except Exception:
                log.failure("closing the store failed")
        log.info("Navistore stopped")

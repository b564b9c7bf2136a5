"""The running node: :class:`NavistoreService`, what ``twistd navistore`` and ``nhttpserver`` run.

Lifecycle:

- ``privilegedStartService`` binds every endpoint: before twistd sheds privileges (so ports below
  1024 work with ``--uid``) and before anything slow happens (so a busy port fails the start at
  once). Until the Store is open, connections are accepted and closed straight away.
- ``startService`` makes the backend from its URL, opens the Store, builds the node
  (:func:`navistore.node.build_node`) and serves its Site, then starts the node's services
  (replication, the collector, a cache node's follower), which need the Store. Whatever fails
  before ``startService`` returns is raised from it, which twistd reports itself (exit status 1,
  and through the status pipe when it daemonizes); what fails later is logged and handed to
  ``on_startup_failure``.
- ``stopService`` stops listening, lets the requests being served finish (bounded by
  ``drain_timeout``), closes the HTTP connections once their answers are flushed, stops the
  node's services, and closes the Store last, which waits for the backend's pending writes.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any, Callable

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
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from navistore import __version__
from navistore.allocator import MemoryReleaser, tune_allocator
from navistore.backend import BackendURLError, display_url, open_backend
from navistore.errors import BackendError
from navistore.gc_tuning import freeze_start_up
from navistore.interfaces import IStorageBackend
from navistore.links import HTTPClient, PeerLink
from navistore.listening import Connections, RequestTracker, describe_address, self_urls
from navistore.node import (
    Node,
    NodeConfig,
    access_policy,
    build_node,
    cached_backend,
    default_http_client,
)
from navistore.service_manager import notify
from navistore.store import Store
from navistore.tokens import TokenFileError, load_tokens
from navistore.waiters import Waiters
from navistore.web.access import describe_policy

__all__ = ["STARTUP_REPORTED", "NavistoreService", "describe_address"]

log = Logger()

#: The attribute set on an exception once the node has logged it as why it cannot start, so
#: that whoever raises it further need not print it again (see :mod:`navistore.tap`).
STARTUP_REPORTED = "_navistore_startup_reported"

#: Startup errors whose message says it all; anything else is logged with its traceback.
_EXPECTED_STARTUP_ERRORS = (BackendURLError, BackendError, CannotListenError, OSError, ValueError)


class NavistoreService(MultiService):
    """One Navistore node: the Store over a backend, served over HTTP on some endpoints.

    The node's services (replication, ...) become children once the Store is open, and start
    then; they stop before it is closed. Child services added by others start with them and can
    read the Store from :attr:`store`.

    :param config: what the node is (:class:`NodeConfig`).
    :param reactor: the reactor to listen with and to time with.
    :param on_startup_failure: called with the Failure when starting fails after ``startService``
        has returned (the process runner uses it to stop and exit non-zero). The failure has been
        logged, and the ports and backend released, before it is called.
    :param backend_factory: makes the backend from ``config.backend_url`` (tests hand in their
        own).
    :param http_client: the client the node talks to other nodes with (default:
        :func:`default_http_client`).
    """

    def __init__(
        self,
        config: NodeConfig,
        *,
        reactor: Any,
        on_startup_failure: Callable[[Failure], object] | None = None,
        backend_factory: Callable[[str], IStorageBackend] = open_backend,
        http_client: HTTPClient | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self._reactor = reactor
        self._on_startup_failure = on_startup_failure
        self._backend_factory = backend_factory
        self._http_client = http_client
        #: The node's parts, once the Store is open.
        self.node: Node | None = None
        self._connections = Connections(config.max_connections)
        self._binding: list[Deferred[None]] | None = None
        self._bind_failures: list[Failure] = []
        self._ports: list[IListeningPort] = []
        self._backend: IStorageBackend | None = None
        self._tracker: RequestTracker | None = None
        self._starting: Deferred[None] | None = None
        self._inside_start_service = False
        self._raise_from_start: Failure | None = None
        self._children_started = False
        self._stopping: Deferred[None] | None = None
        self._stopped = Waiters()
        #: The node's Store, once open.
        self.store: Store | None = None
        self._previous_sighup: Any = None

    @property
    def ports(self) -> list[IListeningPort]:
        """The ports listening now."""
        return list(self._ports)

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The endpoint strings the node listens on."""
        return self.config.endpoints

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
        self._backend = cached_backend(self.config, self._backend_factory(self.config.backend_url))
        assert self._binding is not None
        await gatherResults(self._binding)
        if self._bind_failures:
            self._bind_failures[0].raiseException()
        access = access_policy(self.config)
        self.store = await Store.open(
            self._backend,
            max_key_bytes=self.config.max_key_bytes,
            max_value_size=self.config.max_value_size,
            max_drift_ms=int(self.config.max_clock_drift * 1000),
        )
        http_client = self._http_client or default_http_client(self._reactor, self.config)
        node = build_node(
            self.config,
            self.store,
            reactor=self._reactor,
            link=PeerLink(http_client, self._reactor, token=self.config.peer_token),
            self_urls=self_urls(port.getHost() for port in self._ports),
            access=access,
        )
        self.node = node
        for service in node.services:
            service.setServiceParent(self)
        tune_allocator()
        freeze_start_up()
        MemoryReleaser(self._reactor).setServiceParent(self)
        site = node.site
        self._tracker = site.request_watcher = RequestTracker(node.metrics.requests)
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
            backend=display_url(self.config.backend_url),
        )
        collector = node.collector
        log.info(
            "Tombstone collector: first run in {first:g} s, then every {interval:g} s; "
            "tombstones kept {retention:g} s at least, and until every peer has them",
            first=collector.first_delay,
            interval=collector.interval,
            retention=collector.retention,
        )
        if access.open_mode:
            log.warn("Navistore is OPEN: {policy}", policy=describe_policy(access))
        else:
            log.info("Navistore access: {policy}", policy=describe_policy(access))
        if self.config.tokens_file is not None:
            self._previous_sighup = signal.signal(signal.SIGHUP, self._sighup)
        notify(
            "READY=1",
            f"STATUS=serving on {', '.join(self.endpoints)}",
            f"MAINPID={os.getpid()}",
        )

    def _sighup(self, _number: int, _frame: object) -> None:
        self._reactor.callFromThread(self.reload_tokens)

    def reload_tokens(self) -> bool:
        """Read the tokens file again (on SIGHUP); keep the tokens in use if it is bad.

        :returns: whether the new tokens are in use.
        """
        node, path = self.node, self.config.tokens_file
        if node is None or path is None:
            return False
        try:
            tokens = load_tokens(path)
        except TokenFileError as exc:
            kept = len(node.access.tokens or ())
            log.error("tokens not reloaded, the {kept} in use stay: {why}", kept=kept, why=exc)
            return False
        node.access.tokens = tokens
        log.info("tokens reloaded: {count} from {path}", count=len(tokens), path=path)
        notify("READY=1", f"STATUS=tokens reloaded: {len(tokens)} from {path}")
        return True

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
        with contextlib.suppress(AttributeError, TypeError):  # an exception without __dict__
            setattr(failure.value, STARTUP_REPORTED, True)

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
        notify("STOPPING=1")
        if self.node is not None:
            self.node.readiness.shutting_down()  # /_ready answers 503 before the ports close
        if self._starting is not None:
            await self._starting  # a failure was reported and cleaned up when it happened
        self._connections.refuse()
        await self._release_ports()
        node = self.node
        if node is not None:
            node.watch_hub.close()  # long-polls answer, event streams end: nothing to drain
        tracker = self._tracker
        if tracker is not None and tracker.serving:
            log.info("Navistore stopping: {count} request(s) to finish", count=tracker.serving)
            try:
                await tracker.idle().addTimeout(self.config.drain_timeout, self._reactor)
            except TimeoutError:
                log.warn(
                    "{count} request(s) still running after {seconds}s; closing anyway",
                    count=tracker.serving,
                    seconds=self.config.drain_timeout,
                )
        try:
            closing = self._connections.close_all(self._reactor)
            await closing.addTimeout(self.config.drain_timeout, self._reactor)
        except TimeoutError:
            self._connections.abort_all()
        if self._children_started:
            self._children_started = False
            children = [maybeDeferred(child.stopService) for child in reversed(list(self))]
            await DeferredList(children, consumeErrors=True)
        if node is not None:
            for service in node.services:
                service.disownServiceParent()
            if self._connections.wrappedFactory is node.site:
                node.site.doStop()
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        if node is not None and node.access.audit is not None:
            node.access.audit.close()
        if node is not None and node.site.access_log is not None:
            node.site.access_log.close()
        backend, self._backend = self._backend, None
        if backend is not None:
            try:
                await (self.store.close() if self.store is not None else backend.close())
            except Exception:
                log.failure("closing the store failed")
        log.info("Navistore stopped")

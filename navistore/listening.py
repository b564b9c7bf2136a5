"""Listening: the ports of a node, the connections on them, and the requests being served.

What :class:`~navistore.daemon.NavistoreService` needs to bind before anything else and to shut
down gracefully: :class:`Connections` is the factory every endpoint listens with (it refuses
connections until there is a Site, and closes them after their answers at shutdown),
:class:`RequestTracker` knows which requests are still being served, and :func:`self_urls` says
under which URLs peers could reach the node (so that it never peers with itself).
"""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Iterable
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IProtocolNegotiationFactory, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web.server import Request, Site
from zope.interface import implementer

from navistore.tally import ROUTE_FAMILY, UNROUTED, RequestCounts
from navistore.waiters import Waiters
from navistore.web.channel import refusal, unsent_bytes
from navistore.web.request import RequestWatcher

__all__ = [
    "Connections",
    "RequestTracker",
    "default_max_connections",
    "describe_address",
    "self_urls",
]


def default_max_connections(limit: int | None = None) -> int:
    """The most client connections a node accepts by default: its file-descriptor limit, less a
    reserve for what it needs besides (the backend's files, its peers and upstream, its logs,
    the listening ports): a tenth of the limit, and never less than 64.

    :param limit: the file-descriptor limit (default: this process's soft ``RLIMIT_NOFILE``).
    """
    if limit is None:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = soft if soft != resource.RLIM_INFINITY else 1 << 20
    return max(16, limit - max(64, limit // 10))


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


class RequestTracker(RequestWatcher):
    """Knows which requests a Site is serving, as its :attr:`~NavistoreSite.request_watcher`.

    Shutdown waits for them, so that a client whose write was accepted gets its answer. A request
    counts from its first line until it is answered or its connection is lost.

    :param counts: where each request is counted once it is done (its route family, method,
        status and latency, see :class:`~navistore.tally.RequestCounts`), or None.
    :param clock: what latency is measured with.
    """

    def __init__(
        self,
        counts: RequestCounts | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._serving: dict[Request, float] = {}
        self._idle = Waiters()
        self._counts = counts
        self._clock = clock

    def started(self, request: Request) -> None:
        self._serving[request] = self._clock()

    def finished(self, request: Request, status: int) -> None:
        started = self._serving.pop(request, None)
        if not self._serving:
            self._idle.fire()
        counts = self._counts
        if counts is not None and started is not None:
            counts.finished(
                getattr(request, ROUTE_FAMILY, UNROUTED),
                request.method,
                status,
                self._clock() - started,
            )

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


class _Full(Protocol):
    """A connection over ``--max-connections`` while every connection is busy answering: told
    so (503, ``Retry-After``) and closed at once, before anything is read."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        body = refusal(
            503,
            "too_many_connections",
            "the node serves as many connections as it may; try again shortly",
        )
        self.transport.write(body.replace(b"\r\n\r\n", b"\r\nRetry-After: 1\r\n\r\n", 1))
        self.transport.loseConnection()


@implementer(IProtocolNegotiationFactory)
class Connections(WrappingFactory):
    """The factory every endpoint listens with; it serves the Site once there is one.

    It exists before the Site, so that ports are bound first; until :meth:`serve` is called (and
    again once :meth:`refuse` is), a new connection is closed at once. Wrapping each connection
    (Twisted's own way of knowing them) lets shutdown close them gracefully, after their
    answers are flushed, rather than the reactor cutting them at exit.

    It also keeps the node under its file-descriptor limit: with ``max_connections`` open, a
    new connection makes room by closing the connection that has been idle, or waiting for its
    request's headers, the longest (a slow client holding a slot cannot lock others out); when
    every connection is busy answering, the new one gets 503 ``too_many_connections`` at once.

    :param max_connections: the most connections open at once (default
        :func:`default_max_connections`).
    """

    noisy = False

    def __init__(self, max_connections: int | None = None) -> None:
        super().__init__(None)
        self._refusing = True
        self._empty = Waiters()
        self.max_connections = (
            default_max_connections() if max_connections is None else max_connections
        )
        #: Connections closed to make room, and connections refused for want of it.
        self.evicted = 0
        self.refused_full = 0

    def logPrefix(self) -> str:
        return "Navistore"

    def acceptableProtocols(self) -> list[bytes]:
        """What TLS connections may negotiate with ALPN: HTTP/1.1, which the Site speaks.

        Twisted asks the factory a TLS port wraps (this one, not the Site behind it); without an
        answer it refuses every client that offers ALPN (curl, browsers, Python's ssl) with an
        internal-error alert.
        """
        return [b"http/1.1"]

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
        if len(self.protocols) >= self.max_connections and not self._make_room():
            self.refused_full += 1
            return self.protocol(self, _Full())
        return super().buildProtocol(addr)

    def _make_room(self) -> bool:
        """Close the connection idle (or waiting for headers) the longest; False if none is."""
        victim: Any = None
        oldest = float("inf")
        for wrapper in self.protocols:
            channel = wrapper.wrappedProtocol
            if getattr(channel, "evictable", False) and channel.since < oldest:
                victim, oldest = channel, channel.since
        if victim is None:
            return False
        self.evicted += 1
        victim.evict()  # its descriptor is closed in the next reactor turn
        return True

    def unregisterProtocol(self, protocol: Protocol) -> None:
        super().unregisterProtocol(protocol)
        if not self.protocols:
            self._empty.fire()

    def close_all(self, clock: IReactorTime) -> Deferred[None]:
        """Close every connection once what was written to it is sent; fire when all are gone.

        A TLS connection closes only once the other side answers its close_notify, which an
        idle client (a peer's pooled connection) may never read: a connection with nothing
        left to send is cut after :data:`LINGER` seconds instead of holding shutdown up.
        """
        if not self.protocols:
            return succeed(None)
        gone = self._empty.wait()
        for wrapper in list(self.protocols):
            wrapper.loseConnection()

        def cut_the_idle() -> None:
            if not self.protocols:
                return
            for wrapper in list(self.protocols):
                if unsent_bytes(wrapper.transport) == 0:
                    _abort(wrapper)
            if self.protocols:
                clock.callLater(LINGER, cut_the_idle)

        clock.callLater(LINGER, cut_the_idle)
        return gone

    def abort_all(self) -> None:
        """Cut every connection still open, without waiting for anything."""
        for wrapper in list(self.protocols):
            _abort(wrapper)


#: Seconds a closing connection with nothing left to send may wait for the other side.
LINGER = 0.5


def _abort(wrapper: ProtocolWrapper) -> None:
    transport = wrapper.transport
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    elif transport is not None:
        transport.loseConnection()

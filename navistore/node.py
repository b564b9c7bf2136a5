"""What a node is and how its parts are wired: :class:`NodeConfig` and :func:`build_node`.

:func:`build_node` is the one wiring of a node's parts (Store, watch hub, replication, tombstone
collector, cache node or read fallback, and the Site with every endpoint family): the daemon
(:mod:`navistore.daemon`) uses it, and so do the in-process simulation
(:mod:`navistore.testing.cluster`) and the tests, so that what is tested is what runs. This
module, the daemon, :mod:`navistore.tap` and the scripts are the only places that construct
concrete objects; everything else receives them.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any, Callable

import attrs
from twisted.application.service import IService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from navistore.backend.record_cache import DEFAULT_RECORD_CACHE_BYTES, RecordCache
from navistore.backend.sqlite_backup import take_backup
from navistore.cache_node.cache import UpstreamCache
from navistore.clock import DEFAULT_MAX_DRIFT_MS
from navistore.compat import COMPAT_APIS, CompatContext, compat_mounts
from navistore.conflicts import DEFAULT_RETENTION_MS
from navistore.hooks import MissResolver, WriteForwarder
from navistore.interfaces import IStorageBackend
from navistore.keys import DEFAULT_MAX_KEY_BYTES
from navistore.links import HTTPClient, PeerLink, treq_client
from navistore.listening import default_max_connections
from navistore.metrics import NodeMetrics
from navistore.readiness import Readiness
from navistore.replication.fallback import ReadFallback
from navistore.replication.gc import (
    DEFAULT_INTERVAL,
    DEFAULT_RETENTION,
    Cursors,
    TombstoneCollector,
)
from navistore.replication.service import ReplicationService
from navistore.store import Store
from navistore.store.expiry import Expirer
from navistore.tokens import load_tokens
from navistore.watch_hub import DEFAULT_MAX_WATCHERS, WatchHub, watcher_limit
from navistore.web import (
    DEFAULT_LIMITS,
    DEFAULT_MAX_VALUE_SIZE,
    ConnectionLimits,
    SendBudget,
    make_site,
)
from navistore.web.access import AccessPolicy, AuditLog
from navistore.web.access_log import ACCESS_LOG_FORMATS, AccessLog
from navistore.web.backend_rpc import backend_rpc_endpoints
from navistore.web.backup import backup_endpoints
from navistore.web.bulk import bulk_endpoints
from navistore.web.export import export_endpoints
from navistore.web.mounts import Mount
from navistore.web.openapi import openapi_endpoints
from navistore.web.replication import replication_endpoints
from navistore.web.request import replication_body_limit
from navistore.web.send_budget import DEFAULT_SEND_BUFFER
from navistore.web.site import NavistoreSite
from navistore.web.txn import txn_endpoints

__all__ = [
    "DEFAULT_BACKEND",
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_ENDPOINTS",
    "Node",
    "NodeConfig",
    "access_policy",
    "build_node",
    "default_http_client",
    "open_access_log",
]

log = Logger()

#: Where a node keeps its data unless told otherwise: a sqlite file in the working directory.
DEFAULT_BACKEND = "sqlite:navistore.db"

#: Where a node listens unless told otherwise: the classic port, on every interface.
DEFAULT_ENDPOINTS: tuple[str, ...] = ("tcp:8888",)

#: How long shutdown waits for the requests being served, and again for their connections.
DEFAULT_DRAIN_TIMEOUT = 10.0

#: How long a cache node waits for one answer of its upstream (a client waits behind it).
DEFAULT_UPSTREAM_TIMEOUT = 10.0


def _tuple(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(items)


@attrs.frozen
class NodeConfig:
    """What a node is asked to be: every option of ``twistd navistore``, and a few knobs more.

    :ivar backend_url: which backend to use, e.g. ``sqlite:navistore.db`` or ``memory:``.
    :ivar endpoints: Twisted server endpoint strings to listen on, e.g. ``tcp:8888``.
    :ivar max_value_size: the largest value (request body) accepted, in bytes.
    :ivar max_key_bytes: the longest key accepted, in bytes of UTF-8.
    :ivar max_watchers: the most concurrent watches (long-polls, event streams, ``?wait``), and
        never more than the connection limit less a tenth
        (:func:`~navistore.watch_hub.watcher_limit`).
    :ivar record_cache_bytes: bytes of live records a sqlite backend keeps in memory for reads
        (:class:`~navistore.backend.record_cache.RecordCache`; 0: none).
    :ivar tombstone_retention: seconds a delete's tombstone is kept at least.
    :ivar conflict_retention: seconds the loser of a concurrent write is kept (counted from
        the losing write; every node must be given the same, or their losers expire apart).
    :ivar tombstone_gc_interval: seconds between tombstone collections.
    :ivar peers: peer URLs to replicate to, added to those the node already keeps.
    :ivar clone_from: a node whose whole state to pull, and then follow.
    :ivar upstream: make this node a read-through cache of the node at this URL.
    :ivar read_fallback: ask the peers for a key this node misses before answering 404.
    :ivar serve_backend: serve this node's storage as the ``http://`` backend of one other
        process (a dedicated node: that process's ``reset`` wipes it).
    :ivar drain_timeout: how long shutdown waits for requests, and then for connections.
    :ivar batch_records: the most records per replication batch (and per pulled page).
    :ivar batch_bytes: about the most bytes per replication batch.
    :ivar pull_interval: seconds between a caught-up clone's pulls, and a cache node's polls.
    :ivar tokens_file: the tokens file (:mod:`navistore.tokens`); None: protected mode, or open.
    :ivar anonymous: what a request without a token may do, when there are tokens.
    :ivar open_mode: without tokens, serve every caller everything (``--open``).
    :ivar allowed_hosts: more ``Host`` names protected mode accepts from loopback callers.
    :ivar cors_origins: web origins whose pages may send state-changing requests.
    :ivar audit_log: the file writes and admin actions are logged to (JSON lines), or None.
    :ivar peer_token: the secret this node presents to its peers, clone source and upstream.
    :ivar peer_ca: certificates (PEM) that ``https`` peers must present one signed by
        (default: the system's store).
    :ivar peer_cert: with ``peer_key``, the client certificate (PEM) presented to ``https``
        peers, for mutual TLS.
    :ivar peer_key: the private key (PEM) of ``peer_cert``.
    :ivar max_clock_drift: seconds a received stamp may lie ahead of this node's clock.
    :ivar limits: the deadlines of client connections (headers, body rate, idleness).
    :ivar max_connections: the most client connections at once; None: derived from the
        file-descriptor limit (:func:`~navistore.listening.default_max_connections`).
    :ivar max_send_buffer: the bytes clients that do not read may hold together.
    :ivar access_log: the file each answered request is logged to (``-``: standard output),
        or None.
    :ivar log_format: ``text`` or ``json``, of the access log (and, under twistd, of the
        node's own log).
    :ivar compat: the other stores' APIs served beside the native one (``etcd``: ``/v2/``,
        ``/version``, ``/health``; ``consul``: ``/v1/``); not on a cache node.
    """

    backend_url: str = DEFAULT_BACKEND
    endpoints: tuple[str, ...] = attrs.field(default=DEFAULT_ENDPOINTS, converter=_tuple)
    max_value_size: int = DEFAULT_MAX_VALUE_SIZE
    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES
    max_watchers: int = DEFAULT_MAX_WATCHERS
    record_cache_bytes: int = DEFAULT_RECORD_CACHE_BYTES
    tombstone_retention: float = DEFAULT_RETENTION
    conflict_retention: float = DEFAULT_RETENTION_MS / 1000
    tombstone_gc_interval: float = DEFAULT_INTERVAL
    peers: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    clone_from: str | None = None
    upstream: str | None = None
    read_fallback: bool = False
    serve_backend: bool = False
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    batch_records: int = 500
    batch_bytes: int = 1_048_576
    pull_interval: float = 1.0
    tokens_file: str | None = None
    anonymous: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)
    open_mode: bool = False
    allowed_hosts: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    cors_origins: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    audit_log: str | None = None
    peer_token: str | None = attrs.field(default=None, repr=False)
    peer_ca: str | None = None
    peer_cert: str | None = None
    peer_key: str | None = None
    max_clock_drift: float = DEFAULT_MAX_DRIFT_MS / 1000
    limits: ConnectionLimits = DEFAULT_LIMITS
    max_connections: int | None = None
    max_send_buffer: int = DEFAULT_SEND_BUFFER
    access_log: str | None = None
    log_format: str = "text"
    compat: tuple[str, ...] = attrs.field(default=COMPAT_APIS, converter=_tuple)

    def __attrs_post_init__(self) -> None:
        if self.log_format not in ACCESS_LOG_FORMATS:
            raise ValueError(
                f"--log-format: {self.log_format!r} is not one of {', '.join(ACCESS_LOG_FORMATS)}"
            )
        unknown = sorted(set(self.compat) - set(COMPAT_APIS))
        if unknown:
            raise ValueError(
                f"--compat: {', '.join(unknown)} is not one of {', '.join(COMPAT_APIS)}"
            )
        if not self.endpoints:
            raise ValueError("a Navistore node needs at least one endpoint to listen on")
        if self.open_mode and self.tokens_file is not None:
            raise ValueError("--open serves everyone without tokens: it cannot go with --tokens")
        if self.anonymous and self.tokens_file is None:
            raise ValueError(
                "--anonymous says what a request without a token may do, so it needs --tokens"
            )
        if (self.peer_cert is None) != (self.peer_key is None):
            raise ValueError("--peer-cert and --peer-key go together (a client certificate)")
        if self.upstream is not None and (self.peers or self.clone_from or self.read_fallback):
            raise ValueError(
                "--upstream makes a cache node, which has no peers of its own: it cannot be "
                "combined with --peer, --clone-from or --read-fallback"
            )


def cached_backend(config: NodeConfig, backend: IStorageBackend) -> IStorageBackend:
    """``backend`` behind a :class:`RecordCache` of ``config.record_cache_bytes``, if it is a
    sqlite file (only this node writes it, so the cache sees every change; a remote backend
    may be written by others, and ``memory:`` is memory already)."""
    if config.record_cache_bytes <= 0 or getattr(backend, "kind", None) != "sqlite":
        return backend
    if isinstance(backend, RecordCache):  # cache:SIZE:sqlite:... is cached as its URL says
        return backend
    return RecordCache(backend, config.record_cache_bytes)


def open_access_log(config: NodeConfig) -> AccessLog | None:
    """The access log a node so configured writes (opened now, for appending), or None.

    ``-`` is the process's own standard output as it was at start (under twistd ``sys.stdout``
    is redirected into the node's log, which would prefix every line).

    :raises OSError: the file cannot be opened.
    """
    if config.access_log is None:
        return None
    if config.access_log == "-":
        stdout = sys.__stdout__ if sys.__stdout__ is not None else sys.stdout
        return AccessLog(stdout, config.log_format, owned=False)
    file = open(config.access_log, "a", encoding="utf-8")  # noqa: SIM115 - closed at stop
    return AccessLog(file, config.log_format)


def access_policy(config: NodeConfig) -> AccessPolicy:
    """Who may do what on a node so configured: its tokens (read from the file now), protected
    or open mode, browsers, and the audit log (opened now, for appending).

    :raises TokenFileError: the tokens file cannot be read or is malformed.
    :raises OSError: the audit log cannot be opened.
    """
    tokens = None if config.tokens_file is None else load_tokens(config.tokens_file)
    audit = None
    if config.audit_log is not None:
        audit = AuditLog(open(config.audit_log, "a", encoding="utf-8"))  # noqa: SIM115
    return AccessPolicy(
        tokens=tokens,
        anonymous=config.anonymous,
        open_mode=config.open_mode,
        allowed_hosts=config.allowed_hosts,
        cors_origins=config.cors_origins,
        audit=audit,
    )


@attrs.define(eq=False)
class Node:
    """One node's parts, wired together by :func:`build_node`; nothing is started yet.

    :ivar services: what runs beside the Site (replication, the tombstone collector, a cache
        node's follower), in start order: start them once the Site may be served, stop them in
        reverse order before closing the Store.
    :ivar metrics: what ``/_metrics`` serves; the daemon counts requests into it.
    :ivar readiness: what ``/_ready`` answers; the daemon says when the node shuts down.
    """

    config: NodeConfig
    store: Store
    watch_hub: WatchHub
    replication: ReplicationService
    collector: TombstoneCollector
    cache: UpstreamCache | None
    site: NavistoreSite
    services: list[IService]
    access: AccessPolicy
    metrics: NodeMetrics
    readiness: Readiness


def build_node(
    config: NodeConfig,
    store: Store,
    *,
    reactor: IReactorTime,
    link: PeerLink,
    self_urls: Sequence[str] = (),
    access: AccessPolicy | None = None,
    tombstone_cursors: Callable[[ReplicationService], Cursors] | None = None,
) -> Node:
    """Wire one node over an open Store, exactly as ``twistd navistore`` runs it.

    :param reactor: what the Site, the watch hub and the collector time with.
    :param link: how the node reaches other nodes (client, clock, jitter, timeouts); a cache
        node's upstream gets it with :data:`DEFAULT_UPSTREAM_TIMEOUT`. Without an answer limit
        of its own it gets one from the value limit.
    :param self_urls: URLs that reach this node, so that it never peers with itself.
    :param access: who may do what (default: :func:`access_policy` of ``config``).
    :param tombstone_cursors: given the replication service, where the collector reads the
        peers' cursors (default: the service's own :meth:`~ReplicationService.cursors`; the
        simulation hands in a careless reader to prove that its checks would notice).
    :raises InvalidPeer: a peer, the clone source or the upstream is no valid peer URL.
    """
    access = access_policy(config) if access is None else access
    store.conflict_retention_ms = round(config.conflict_retention * 1000)
    if link.max_answer_bytes is None:
        # The largest answer a node sends another: a pulled page or a value, in base64, at the
        # value limit (a peer with a larger limit cannot replicate such values here anyway).
        link = attrs.evolve(link, max_answer_bytes=replication_body_limit(config.max_value_size))
    replication = ReplicationService(
        store,
        link=link,
        self_urls=self_urls,
        initial_peers=config.peers,
        clone_from=config.clone_from,
        batch_records=config.batch_records,
        batch_bytes=config.batch_bytes,
        pull_interval=config.pull_interval,
    )
    collector = TombstoneCollector(
        store,
        cursors=replication.cursors
        if tombstone_cursors is None
        else tombstone_cursors(replication),
        clock=reactor,
        retention=config.tombstone_retention,
        interval=config.tombstone_gc_interval,
        wall_ms=store.clock.wall_ms,
    )
    connections = config.max_connections
    if connections is None:
        connections = default_max_connections()
    watch_hub = WatchHub(
        store, clock=reactor, max_watchers=watcher_limit(config.max_watchers, connections)
    )
    services: list[IService] = [replication, collector]
    if config.upstream is None:  # a cache node's records expire where they are written
        services.append(Expirer(store, clock=reactor))
    cache: UpstreamCache | None = None
    miss_resolver: MissResolver | None = None
    write_forwarder: WriteForwarder | None = None
    if config.upstream is not None:
        cache = UpstreamCache(
            store,
            link=attrs.evolve(link, request_timeout=DEFAULT_UPSTREAM_TIMEOUT),
            upstream=replication.check_peer(config.upstream),
            poll_interval=config.pull_interval,
        )
        services.append(cache)
        miss_resolver = write_forwarder = cache
    elif config.read_fallback:
        miss_resolver = ReadFallback(link=link, peers=replication.peer_urls)
    endpoints = replication_endpoints(store, replication, cache_node=cache is not None)
    replicas = replication.replica_waiter()
    metrics = NodeMetrics(
        store,
        watch_hub=watch_hub,
        replication=replication,
        replicas=replicas,
        cache=cache,
        clock=reactor,
    )
    readiness = Readiness(
        store,
        replication=replication,
        cache=cache,
        clock=reactor,
        poll_interval=config.pull_interval,
    )
    endpoints.update(metrics.endpoints())
    endpoints.update(readiness.endpoints())
    endpoints.update(
        bulk_endpoints(
            store,
            max_value_size=config.max_value_size,
            write_forwarder=write_forwarder,
            clock=reactor,
        )
    )
    endpoints.update(
        export_endpoints(
            store,
            max_value_size=config.max_value_size,
            write_forwarder=write_forwarder,
            clock=reactor,
        )
    )
    endpoints.update(
        txn_endpoints(store, max_value_size=config.max_value_size, write_forwarder=write_forwarder)
    )
    endpoints.update(backup_endpoints(store, take=take_backup, cache_node=cache is not None))
    if config.serve_backend:
        endpoints.update(backend_rpc_endpoints(store))
    endpoints.update(
        openapi_endpoints(
            max_value_size=config.max_value_size,
            max_key_bytes=config.max_key_bytes,
            backend_rpc=config.serve_backend,
        )
    )
    mounts: dict[str, Mount] = {}
    if cache is None:  # a cache node forwards writes, which the other APIs do not know how to
        context = CompatContext(
            store,
            watch_hub,
            access,
            reactor,
            max_value_size=config.max_value_size,
            self_urls=tuple(self_urls),
        )
        mounts = compat_mounts(config.compat, context)
    site = make_site(
        store,
        watch_hub=watch_hub,
        reactor=reactor,
        access=access,
        max_value_size=config.max_value_size,
        extra_endpoints=endpoints,
        miss_resolver=miss_resolver,
        write_forwarder=write_forwarder,
        replica_waiter=replicas,
        mounts=mounts,
        limits=config.limits,
        send_budget=SendBudget(config.max_send_buffer),
        access_log=open_access_log(config),
    )
    return Node(
        config,
        store,
        watch_hub,
        replication,
        collector,
        cache,
        site,
        services,
        access,
        metrics=metrics,
        readiness=readiness,
    )


@implementer(IPolicyForHTTPS)
class PeerTLS:
    """How this node checks the ``https`` nodes it reaches: their certificate against
    ``--peer-ca`` (or the system's store), and the client certificate it presents for mutual
    TLS (``--peer-cert``, ``--peer-key``)."""

    def __init__(self, config: NodeConfig) -> None:
        from twisted.internet import ssl

        if config.peer_ca is not None:
            with open(config.peer_ca, "rb") as ca:
                found = re.findall(
                    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", ca.read(), re.S
                )
            if not found:
                raise ValueError(f"--peer-ca {config.peer_ca}: no PEM certificate in it")
            certificates = [ssl.Certificate.loadPEM(pem) for pem in found]
            self._trust: Any = ssl.trustRootFromCertificates(certificates)
        else:
            self._trust = ssl.platformTrust()
        self._client: Any = None
        if config.peer_cert is not None and config.peer_key is not None:
            with open(config.peer_cert, "rb") as cert, open(config.peer_key, "rb") as key:
                self._client = ssl.PrivateCertificate.loadPEM(cert.read() + b"\n" + key.read())

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        """The TLS settings of a connection to ``hostname`` (whose certificate must name it)."""
        from twisted.internet import ssl

        return ssl.optionsForClientTLS(
            hostname.decode("idna"), trustRoot=self._trust, clientCertificate=self._client
        )


def default_http_client(reactor: Any, config: NodeConfig | None = None) -> HTTPClient:
    """treq over a persistent connection pool, with a connect timeout, for talking to peers;
    ``https`` peers are checked as ``config`` says (:class:`PeerTLS`)."""
    client, _close = treq_client(
        reactor, connect_timeout=5, tls_policy=PeerTLS(config or NodeConfig())
    )
    return client

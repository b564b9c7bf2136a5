"""What a node is and how its parts are wired: :class:`NodeConfig` and :func:`build_node`.

:func:`build_node` is the one wiring of a node's parts (Store, watch hub, replication, tombstone
collector, cache node or read fallback, and the Site with every endpoint family): the daemon
(:mod:`navistore.daemon`) uses it, and so do the in-process simulation
(:mod:`navistore.testing.cluster`) and the tests, so that what is tested is what runs. This
module, the daemon, :mod:`navistore.tap` and the scripts are the only places that construct
concrete objects; everything else receives them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Callable

import attrs
from twisted.application.service import IService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from navistore.cache_node.cache import UpstreamCache
from navistore.hooks import MissResolver, WriteForwarder
from navistore.keys import DEFAULT_MAX_KEY_BYTES
from navistore.links import HTTPClient, PeerLink
from navistore.replication.fallback import ReadFallback
from navistore.replication.gc import (
    DEFAULT_INTERVAL,
    DEFAULT_RETENTION,
    Cursors,
    TombstoneCollector,
)
from navistore.replication.service import ReplicationService
from navistore.store import Store
from navistore.watch_hub import DEFAULT_MAX_WATCHERS, WatchHub
from navistore.web import DEFAULT_MAX_VALUE_SIZE, make_site
from navistore.web.backend_rpc import backend_rpc_endpoints
from navistore.web.bulk import bulk_endpoints
from navistore.web.replication import replication_endpoints
from navistore.web.site import NavistoreSite

__all__ = [
    "DEFAULT_BACKEND",
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_ENDPOINTS",
    "Node",
    "NodeConfig",
    "build_node",
    "default_http_client",
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
    :ivar max_watchers: the most concurrent watches (long-polls, event streams, ``?wait``).
    :ivar tombstone_retention: seconds a delete's tombstone is kept at least.
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
    """

    backend_url: str = DEFAULT_BACKEND
    endpoints: tuple[str, ...] = attrs.field(default=DEFAULT_ENDPOINTS, converter=_tuple)
    max_value_size: int = DEFAULT_MAX_VALUE_SIZE
    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES
    max_watchers: int = DEFAULT_MAX_WATCHERS
    tombstone_retention: float = DEFAULT_RETENTION
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

    def __attrs_post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("a Navistore node needs at least one endpoint to listen on")
        if self.upstream is not None and (self.peers or self.clone_from or self.read_fallback):
            raise ValueError(
                "--upstream makes a cache node, which has no peers of its own: it cannot be "
                "combined with --peer, --clone-from or --read-fallback"
            )


@attrs.define(eq=False)
class Node:
    """One node's parts, wired together by :func:`build_node`; nothing is started yet.

    :ivar services: what runs beside the Site (replication, the tombstone collector, a cache
        node's follower), in start order: start them once the Site may be served, stop them in
        reverse order before closing the Store.
    """

    config: NodeConfig
    store: Store
    watch_hub: WatchHub
    replication: ReplicationService
    collector: TombstoneCollector
    cache: UpstreamCache | None
    site: NavistoreSite
    services: list[IService]


def build_node(
    config: NodeConfig,
    store: Store,
    *,
    reactor: IReactorTime,
    link: PeerLink,
    self_urls: Sequence[str] = (),
    tombstone_cursors: Callable[[ReplicationService], Cursors] | None = None,
) -> Node:
    """Wire one node over an open Store, exactly as ``twistd navistore`` runs it.

    :param reactor: what the Site, the watch hub and the collector time with.
    :param link: how the node reaches other nodes (client, clock, jitter, timeouts); a cache
        node's upstream gets it with :data:`DEFAULT_UPSTREAM_TIMEOUT`.
    :param self_urls: URLs that reach this node, so that it never peers with itself.
    :param tombstone_cursors: given the replication service, where the collector reads the
        peers' cursors (default: the service's own :meth:`~ReplicationService.cursors`; the
        simulation hands in a careless reader to prove that its checks would notice).
    :raises InvalidPeer: a peer, the clone source or the upstream is no valid peer URL.
    """
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
    watch_hub = WatchHub(store, clock=reactor, max_watchers=config.max_watchers)
    services: list[IService] = [replication, collector]
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
    endpoints = replication_endpoints(store, replication)
    endpoints.update(
        bulk_endpoints(store, max_value_size=config.max_value_size, write_forwarder=write_forwarder)
    )
    if config.serve_backend:
        endpoints.update(backend_rpc_endpoints(store))
    site = make_site(
        store,
        watch_hub=watch_hub,
        reactor=reactor,
        max_value_size=config.max_value_size,
        extra_endpoints=endpoints,
        miss_resolver=miss_resolver,
        write_forwarder=write_forwarder,
        replica_waiter=replication.replica_waiter(),
    )
    return Node(config, store, watch_hub, replication, collector, cache, site, services)


def default_http_client(reactor: Any) -> HTTPClient:
    """treq over a persistent connection pool, with a connect timeout, for talking to peers."""
    from treq.client import HTTPClient as TreqClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    client: HTTPClient = TreqClient(Agent(reactor, connectTimeout=5, pool=pool))
    return client

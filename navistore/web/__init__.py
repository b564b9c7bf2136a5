"""The HTTP face of a node: :func:`make_site` builds the twisted.web Site over a Store."""

from __future__ import annotations

from typing import Any

from ..store import Store
from ..watch import WatchHub
from .hooks import MissResolver, ReplicaReport, ReplicaWaiter, WriteForwarder
from .limits import DEFAULT_MAX_VALUE_SIZE, NavistoreSite
from .routes import ApiResource, Endpoints, Handler

__all__ = [
    "DEFAULT_MAX_VALUE_SIZE",
    "ApiResource",
    "Endpoints",
    "Handler",
    "MissResolver",
    "ReplicaReport",
    "ReplicaWaiter",
    "WriteForwarder",
    "make_site",
]


def make_site(
    store: Store,
    *,
    max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
    access_log: bool = False,
    extra_endpoints: Endpoints | None = None,
    miss_resolver: MissResolver | None = None,
    write_forwarder: WriteForwarder | None = None,
    replica_waiter: ReplicaWaiter | None = None,
    watch_hub: WatchHub | None = None,
    reactor: Any = None,
) -> NavistoreSite:
    """Build the Site serving the API of ``store``.

    :param max_value_size: the largest request body accepted, in bytes; larger ones get 413
        before they are read.
    :param access_log: log one line per request through twisted.logger.
    :param extra_endpoints: more server endpoints by name and method (replication's).
    :param miss_resolver: finds keys this node lacks (cache node, read fallback).
    :param write_forwarder: forwards writes instead of applying them (cache node).
    :param replica_waiter: makes ``?replicas=`` writes wait for peers.
    :param watch_hub: serves the watches (long-poll, event stream, ``?wait``); the caller
        closes it at shutdown (default: one made on first use, never closed).
    :param reactor: the reactor the Site uses for its clock (default: the global one).
    """
    resource = ApiResource(
        store,
        max_value_size=max_value_size,
        extra_endpoints=extra_endpoints,
        miss_resolver=miss_resolver,
        write_forwarder=write_forwarder,
        replica_waiter=replica_waiter,
        watch_hub=watch_hub,
    )
    site = NavistoreSite(resource, max_value_size=max_value_size, access_log=access_log)
    if reactor is not None:
        site.reactor = reactor
    return site

"""The HTTP face of a node: :func:`make_site` builds the twisted.web Site over a Store.

- :mod:`~navistore.web.api`: the resource routing every path; :mod:`~navistore.web.key_routes`,
  :mod:`~navistore.web.listings` and :mod:`~navistore.web.feeds` answer keys, prefixes and the
  change feeds; :mod:`~navistore.web.bulk`, :mod:`~navistore.web.replication` and
  :mod:`~navistore.web.backend_rpc` are endpoint families the node adds as it is configured.
- :mod:`~navistore.web.rendering` owns each request's lifecycle, :mod:`~navistore.web.errors`
  maps every error to its status, :mod:`~navistore.web.responses` holds the answer types,
  :mod:`~navistore.web.params` and :mod:`~navistore.web.conditions` read requests.
- :mod:`~navistore.web.site` is the Site, which refuses bodies over the limits as they arrive;
  :mod:`~navistore.web.channel` its connections' deadlines and protocol errors, and
  :mod:`~navistore.web.send_budget` what clients that do not read may hold.

The web layer knows the Store and the hooks (:mod:`navistore.hooks`), never a backend, treq or
the replication machinery.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from navistore.hooks import MissResolver, ReplicaWaiter, WriteForwarder
from navistore.store import Store
from navistore.watch_hub import WatchHub
from navistore.web.access import AccessPolicy
from navistore.web.access_log import AccessLog
from navistore.web.api import ApiResource
from navistore.web.channel import DEFAULT_LIMITS, ConnectionLimits
from navistore.web.mounts import Mount
from navistore.web.responses import Endpoints, Handler
from navistore.web.send_budget import SendBudget
from navistore.web.site import DEFAULT_MAX_VALUE_SIZE, NavistoreSite

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_VALUE_SIZE",
    "AccessPolicy",
    "ApiResource",
    "ConnectionLimits",
    "Endpoints",
    "Handler",
    "NavistoreSite",
    "SendBudget",
    "make_site",
]


def make_site(
    store: Store,
    *,
    watch_hub: WatchHub,
    reactor: IReactorTime,
    access: AccessPolicy,
    max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
    access_log: AccessLog | None = None,
    extra_endpoints: Endpoints | None = None,
    miss_resolver: MissResolver | None = None,
    write_forwarder: WriteForwarder | None = None,
    replica_waiter: ReplicaWaiter | None = None,
    mounts: dict[str, Mount] | None = None,
    limits: ConnectionLimits = DEFAULT_LIMITS,
    send_budget: SendBudget | None = None,
) -> NavistoreSite:
    """Build the Site serving the API of ``store``.

    :param watch_hub: serves the watches (long-poll, event stream, ``?wait``); the caller
        closes it at shutdown.
    :param reactor: what the Site times with (its clock for dates and timeouts).
    :param access: who may do what (:mod:`navistore.web.access`).
    :param max_value_size: the largest request body accepted, in bytes; larger ones get 413
        before they are read.
    :param access_log: where each answered request is logged, or None (the default: off).
    :param extra_endpoints: more server endpoints by name and method (replication's).
    :param miss_resolver: finds keys this node lacks (cache node, read fallback).
    :param write_forwarder: forwards writes instead of applying them (cache node).
    :param replica_waiter: makes ``?replicas=`` writes wait for peers.
    :param mounts: other APIs by the first path segment they take (:mod:`navistore.compat`).
    :param limits: the deadlines of every connection (:mod:`navistore.web.channel`).
    :param send_budget: what clients that do not read may hold together
        (:mod:`navistore.web.send_budget`).
    """
    resource = ApiResource(
        store,
        max_value_size=max_value_size,
        access=access,
        watch_hub=watch_hub,
        extra_endpoints=extra_endpoints,
        miss_resolver=miss_resolver,
        write_forwarder=write_forwarder,
        replica_waiter=replica_waiter,
        mounts=mounts,
    )
    return NavistoreSite(
        resource,
        max_value_size=max_value_size,
        access_log=access_log,
        reactor=reactor,
        limits=limits,
        send_budget=send_budget,
        answer_index=lambda: store.newest_seq,
    )

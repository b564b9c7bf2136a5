"""The APIs of other stores, spoken over this node's Store: etcd's v2 keys API and Consul's KV.

Existing configuration clients (``etcdctl``, confd, Patroni, consul-template, the Consul client
libraries) reach a Navistore node without a change but its address. Each API is a
:class:`~navistore.web.mounts.Mount`: it answers every path under its own first segments
(``/v2/``, ``/version``, ``/health`` for etcd; ``/v1/`` for Consul), with its own bodies and
errors, over the same keys, tokens and watches as the native API. ``--compat`` says which are
served (both by default).
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
from twisted.internet.interfaces import IReactorTime

from navistore.store import Store
from navistore.watch_hub import WatchHub
from navistore.web.access import AccessPolicy
from navistore.web.mounts import Mount

__all__ = ["COMPAT_APIS", "CompatContext", "compat_mounts"]

#: The APIs ``--compat`` may name.
COMPAT_APIS = ("etcd", "consul")


@attrs.frozen
class CompatContext:
    """What a compatibility API is built over: the node's Store, watches and access policy.

    :ivar max_value_size: the largest value accepted, in bytes.
    :ivar peer_urls: the URLs the node replicates to, for the membership answers clients probe.
    :ivar self_urls: URLs that reach this node.
    """

    store: Store
    watch_hub: WatchHub
    access: AccessPolicy
    reactor: IReactorTime
    max_value_size: int
    self_urls: tuple[str, ...] = ()


def compat_mounts(names: Iterable[str], context: CompatContext) -> dict[str, Mount]:
    """The mounts of the APIs ``names`` (a subset of :data:`COMPAT_APIS`), by first segment."""
    mounts: dict[str, Mount] = {}
    for name in names:
        if name not in COMPAT_APIS:
            raise ValueError(f"--compat: {name!r} is not one of {', '.join(COMPAT_APIS)}")
        if name == "etcd":
            from navistore.compat.etcd import etcd_mounts

            mounts.update(etcd_mounts(context))
        elif name == "consul":
            from navistore.compat.consul import consul_mounts

            mounts.update(consul_mounts(context))
    return mounts

"""In-process nodes for the replication tests: wired by ``build_node``, behind :class:`FakeHTTP`.

Each :class:`Node` is a Store on a memory backend whose parts (replication, tombstone collector,
watch hub, every endpoint family) are wired by :func:`navistore.node.build_node`, exactly as the
daemon wires them, and whose Site is served through one :class:`Network` (a
:class:`~navistore.testing.fakehttp.FakeHTTP`: StubTreq over each node's resource, faults
scripted by the test). Everything runs on one
``task.Clock``; :func:`settle` turns it until every replication service is idle.
"""

from __future__ import annotations

from collections.abc import Iterable
from random import Random
from typing import Any, Callable

from treq.testing import StubTreq
from twisted.internet.task import Clock

from navistore.backend.memory import MemoryBackend
from navistore.links import PeerLink
from navistore.node import Node as NodeParts
from navistore.node import NodeConfig, build_node
from navistore.protocol.batches import Batch, decode_batch
from navistore.record import Record
from navistore.replication.service import ReplicationService
from navistore.store import Store
from navistore.testing.fakehttp import FakeHTTP, Sent
from navistore.web import ApiResource

__all__ = ["EPOCH", "Network", "Node", "batch_of", "make_clock", "settle", "wall_ms"]

#: Where the fake clock starts: a plausible "now", so stamps (tied to it) look real.
EPOCH = 1_700_000_000.0

#: Options of :meth:`Node.build` that set up the link, not the node.
_LINK_OPTIONS = ("random", "max_backoff", "request_timeout")


def batch_of(sent: Sent) -> Batch:
    """A request's body decoded as a replication batch."""
    assert sent.body is not None
    return decode_batch(sent.body)


class Network(FakeHTTP):
    """The fake LAN between the nodes of a test, which can tell the batches pushed."""

    def posts(self, to: str | None = None, source: str | None = None) -> list[Sent]:
        """The POSTs made, optionally only those to the origin ``to`` or sent by ``source``."""
        return [
            sent
            for sent in self.sent
            if sent.method == "POST"
            and (to is None or sent.origin == to)
            and (source is None or batch_of(sent).source == source)
        ]


def wall_ms(clock: Clock) -> Callable[[], int]:
    """A Store wall clock that reads the fake clock, so stamps and lag follow it."""
    return lambda: int(clock.seconds() * 1000)


class Node:
    """One node: a Store on a memory backend and, once built, its parts and its API resource."""

    def __init__(self, name: str, store: Store, network: Network, clock: Clock) -> None:
        self.name = name
        self.url = f"http://{name}.test:8888"
        self.store = store
        self.network = network
        self.clock = clock
        self.parts: NodeParts | None = None

    @classmethod
    async def create(cls, name: str, network: Network, clock: Clock) -> Node:
        store = await Store.open(MemoryBackend(), wall_ms=wall_ms(clock))
        return cls(name, store, network, clock)

    @property
    def service(self) -> ReplicationService | None:
        """The replication service, once built."""
        return None if self.parts is None else self.parts.replication

    @property
    def resource(self) -> ApiResource | None:
        """The API resource, once built."""
        return None if self.parts is None else self.parts.site.resource

    def build(self, **options: Any) -> ReplicationService:
        """Wire this node's parts with ``build_node`` and serve them at :attr:`url`.

        ``random``, ``max_backoff`` and ``request_timeout`` set up the link; ``initial_peers``
        and the other options are the :class:`NodeConfig`'s (``initial_peers`` is its ``peers``).
        """
        link_options = {name: options.pop(name) for name in _LINK_OPTIONS if name in options}
        link_options.setdefault("random", Random(self.name))
        link = PeerLink(self.network, self.clock, **link_options)
        options["peers"] = tuple(options.pop("initial_peers", ()))
        if "tokens_file" not in options:
            options.setdefault("open_mode", True)
        config = NodeConfig(backend_url="memory:", max_value_size=1 << 24, **options)
        self.parts = build_node(
            config, self.store, reactor=self.clock, link=link, self_urls=[self.url]
        )
        self.network.attach(self.url, self.parts.site.resource)
        return self.parts.replication

    async def start(self, **options: Any) -> ReplicationService:
        """Build the node and start its replication service (the collector stays idle)."""
        service = self.build(**options)
        await service.startService()
        return service

    async def restart(self, **options: Any) -> ReplicationService:
        """Stop the service and start a new one on the same Store (a process restart)."""
        assert self.parts is not None
        self.parts.watch_hub.close()
        await self.parts.replication.stopService()
        return await self.start(**options)

    @property
    def api(self) -> StubTreq:
        """A client of this node's API."""
        assert self.resource is not None
        return StubTreq(self.resource)

    async def held(self) -> list[tuple[str, bytes, str, str, bool]]:
        """Every record held (tombstones included) as comparable tuples, in key order."""
        records: list[Record] = await self.store.backend.scan("/", None, 1_000_000, True)
        return [(r.key, r.value, r.content_type, r.stamp.encode(), r.deleted) for r in records]


def settle(clock: Clock, nodes: Iterable[Node], rounds: int = 200) -> None:
    """Turn the clock (without moving it) until every node's replication is idle."""
    services = [node.service for node in nodes if node.service is not None]
    for _ in range(rounds):
        clock.advance(0)
        if all(service.is_idle() for service in services):
            return
    states = [service.peers() for service in services]
    raise AssertionError(f"replication did not settle: {states}")


def make_clock() -> Clock:
    """A fake reactor clock at :data:`EPOCH`."""
    clock = Clock()
    clock.advance(EPOCH)
    return clock

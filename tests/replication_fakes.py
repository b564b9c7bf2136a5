"""Fakes for the replication unit tests: nodes on memory backends behind a scripted network.

:class:`Network` is a treq-like client that hands each request to the API resource of the node
whose URL it names, through ``treq.testing.StubTreq`` (so a real twisted.web Site parses it), and
records what was sent. Tests script faults per node: an error status, a dropped connection, an
answer that never comes. Everything runs on one ``task.Clock``; :func:`settle` turns it until
every replication service is idle.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from random import Random
from typing import Any, Callable

import attrs
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock

from navistore.backend.memory import MemoryBackend
from navistore.record import Record
from navistore.replication.service import ReplicationService
from navistore.replication.wire import Batch, decode_batch
from navistore.store import Store
from navistore.web import ApiResource

#: Where the fake clock starts: a plausible "now", so stamps (tied to it) look real.
EPOCH = 1_700_000_000.0

Fault = Callable[[], "Deferred[Any]"]


@attrs.frozen
class Sent:
    """One request a node made: method, full URL, body (None for GET) and the timeout asked."""

    method: str
    url: str
    body: bytes | None
    timeout: float | None
    headers: Any = None

    def batch(self) -> Batch:
        """The body decoded as a batch."""
        assert self.body is not None
        return decode_batch(self.body)


class Canned:
    """A response with a fixed status and body."""

    def __init__(self, code: int, body: bytes = b"") -> None:
        self.code = code
        self._body = body

    def content(self) -> Deferred[bytes]:
        return succeed(self._body)


def answer(code: int, body: bytes | dict[str, Any] = b"") -> Fault:
    """A fault: the peer answers ``code`` with ``body`` (a dict is sent as JSON)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    return lambda: succeed(Canned(code, data))


def dropped() -> Deferred[Any]:
    """A fault: the connection is lost before the answer."""
    return fail(ConnectionLost("the peer hung up"))


class Network:
    """A treq-like HTTP client over the API resources of in-process nodes."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.hanging: list[Deferred[Any]] = []
        self._routes: dict[str, StubTreq] = {}
        self._faults: dict[str, list[Fault]] = {}
        self._down: set[str] = set()

    def attach(self, url: str, resource: Any) -> None:
        """Serve ``resource`` at the origin ``url`` (``http://host:port``)."""
        self._routes[url] = StubTreq(resource)

    def detach(self, url: str) -> None:
        self._routes.pop(url, None)

    def script(self, url: str, *faults: Fault) -> None:
        """Make the next requests to ``url`` fail as given, one fault per request."""
        self._faults.setdefault(url, []).extend(faults)

    def hang(self) -> Deferred[Any]:
        """A fault: no answer ever comes (until the request is cancelled)."""
        waiting: Deferred[Any] = Deferred()
        self.hanging.append(waiting)
        return waiting

    def down(self, url: str, is_down: bool = True) -> None:
        """Refuse every connection to ``url`` while down."""
        if is_down:
            self._down.add(url)
        else:
            self._down.discard(url)

    def posts(self, to: str | None = None, source: str | None = None) -> list[Sent]:
        """The POSTs made, optionally only those to the origin ``to`` or sent by node ``source``."""
        return [
            sent
            for sent in self.sent
            if sent.method == "POST"
            and (to is None or sent.url.startswith(to + "/"))
            and (source is None or sent.batch().source == source)
        ]

    def _route(self, method: str, url: str, body: bytes | None, **kwargs: Any) -> Deferred[Any]:
        timeout = kwargs.pop("timeout", None)
        self.sent.append(Sent(method, url, body, timeout, kwargs.get("headers")))
        origin = "/".join(url.split("/", 3)[:3])
        faults = self._faults.get(origin)
        if faults:
            return faults.pop(0)()
        stub = self._routes.get(origin)
        if stub is None or origin in self._down:
            return fail(ConnectionRefusedError(origin))
        if body is None:
            result: Deferred[Any] = stub.get(url, **kwargs)
        else:
            result = stub.post(url, data=body, **kwargs)
        return result

    def post(self, url: str, data: bytes, **kwargs: Any) -> Deferred[Any]:
        return self._route("POST", url, data, **kwargs)

    def get(self, url: str, **kwargs: Any) -> Deferred[Any]:
        return self._route("GET", url, None, **kwargs)


def wall_ms(clock: Clock) -> Callable[[], int]:
    """A Store wall clock that reads the fake clock, so stamps and lag follow it."""
    return lambda: int(clock.seconds() * 1000)


class Node:
    """One node: a Store on a memory backend, its replication service and its API resource."""

    def __init__(self, name: str, store: Store, network: Network, clock: Clock) -> None:
        self.name = name
        self.url = f"http://{name}.test:8888"
        self.store = store
        self.network = network
        self.clock = clock
        self.service: ReplicationService | None = None
        self.resource: ApiResource | None = None

    @classmethod
    async def create(cls, name: str, network: Network, clock: Clock) -> Node:
        store = await Store.open(MemoryBackend(), wall_ms=wall_ms(clock))
        return cls(name, store, network, clock)

    def build(self, **options: Any) -> ReplicationService:
        """A new replication service on this node's Store, served at :attr:`url`."""
        options.setdefault("random", Random(self.name))
        self.service = ReplicationService(
            self.store,
            http_client=self.network,
            clock=self.clock,
            self_urls=[self.url],
            **options,
        )
        self.resource = ApiResource(
            self.store, max_value_size=1 << 24, extra_endpoints=self.service.endpoints()
        )
        self.network.attach(self.url, self.resource)
        return self.service

    async def start(self, **options: Any) -> ReplicationService:
        """Build a service and start it."""
        service = self.build(**options)
        await service.startService()
        return service

    async def restart(self, **options: Any) -> ReplicationService:
        """Stop the service and start a new one on the same Store (a process restart)."""
        assert self.service is not None
        await self.service.stopService()
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

"""A fake LAN of in-memory HTTP nodes, driven by one ``task.Clock`` and one seeded RNG.

Each node is a twisted.web resource reached at ``http://<name>:8888``. A client made by
:meth:`FakeNetwork.client_for` speaks a small part of treq's API (``request``, ``get``, ``post``,
``put``, ``delete`` returning Deferreds of responses with ``code``, ``headers`` and
``content()``); every request travels through a real twisted.web Site (``treq.testing.StubTreq``
per node), after a delay drawn from the RNG, and may on the way be dropped, have its answer
dropped, be duplicated, or be reordered by the random delays. Partitions and nodes that are down
make requests fail. Nothing uses real time, threads or sockets, so a run is a pure function of its
seed: :attr:`FakeNetwork.trace` records every event for replay and comparison.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable
from typing import Any, Callable
from urllib.parse import urlsplit

import attrs
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost, ConnectionRefusedError, TimeoutError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource

from navistore.testing.responses import FakeResponse

__all__ = ["PORT", "FakeClient", "FakeNetwork", "FakeResponse", "Faults", "TraceEvent"]

#: The port every fake node listens on (it only appears in URLs).
PORT = 8888

#: How long a client without its own timeout waits for an answer that never comes.
DEFAULT_TIMEOUT = 60.0


@attrs.define
class Faults:
    """What the network does to each request: probabilities in [0, 1] and delays in seconds.

    :ivar drop_request: the request is lost: the server never sees it, the client times out.
    :ivar drop_response: the server handles the request but the answer is lost: the client sees
        the connection fail.
    :ivar duplicate: the request is delivered twice (the client gets the first answer).
    :ivar min_delay: the shortest one-way delay; each message draws its own, which reorders.
    :ivar max_delay: the longest one-way delay.
    """

    drop_request: float = 0.0
    drop_response: float = 0.0
    duplicate: float = 0.0
    min_delay: float = 0.001
    max_delay: float = 0.05

    @classmethod
    def chosen_by(cls, rng: random.Random, *, worst: float = 0.15) -> Faults:
        """Draw a fault policy from ``rng``: each probability up to ``worst``, some zero."""

        def maybe() -> float:
            return 0.0 if rng.random() < 0.25 else round(rng.uniform(0.0, worst), 3)

        return cls(maybe(), maybe(), maybe(), 0.001, round(rng.uniform(0.005, 0.5), 3))


@attrs.frozen
class TraceEvent:
    """One thing that happened on the network, at simulated time ``time``.

    ``body`` is the request body on ``send`` events (empty on the others).
    """

    time: float
    event: str
    source: str
    target: str
    method: str
    path: str
    detail: str = ""
    body: bytes = attrs.field(default=b"", repr=False)

    def __str__(self) -> str:
        line = f"{self.time:10.4f} {self.event:<14} {self.source} -> {self.target} "
        return line + f"{self.method} {self.path} {self.detail}".rstrip()


@attrs.define(eq=False)
class _Exchange:
    """One client request and what has become of it."""

    number: int
    source: str
    target: str
    method: str
    url: str
    path: str
    body: bytes
    headers: Any
    result: Deferred[FakeResponse]
    done: bool = False
    timer: IDelayedCall | None = None


class FakeNetwork:
    """Nodes by name, the links between them, and every message in flight.

    :param clock: the one clock of the simulation; every delay and timeout is scheduled on it.
    :param rng: the seeded source of every random choice the network makes.
    :param faults: the fault policy (none by default); it may be replaced at any time.
    :param observer: called with every trace event as it happens (to print a run live).
    """

    def __init__(
        self,
        clock: IReactorTime,
        rng: random.Random,
        faults: Faults | None = None,
        *,
        observer: Callable[[TraceEvent], None] | None = None,
    ) -> None:
        self.clock = clock
        self.rng = rng
        self.faults = faults or Faults()
        self.observer = observer
        self.trace: list[TraceEvent] = []
        self._stubs: dict[str, Any] = {}  # StubTreq's methods are made at run time
        self._groups: dict[str, int] = {}
        self._open: set[_Exchange] = set()
        self._on_wire = 0
        self._serving: dict[StubTreq, int] = {}
        self._numbers = 0

    # -- topology ---------------------------------------------------------------------------

    @staticmethod
    def url_of(name: str) -> str:
        """The base URL of node ``name``."""
        return f"http://{name}:{PORT}"

    def attach(self, name: str, resource: IResource) -> str:
        """Serve ``resource`` as node ``name`` (replacing what served it before); its URL."""
        self._stubs[name] = StubTreq(resource)
        return self.url_of(name)

    def detach(self, name: str) -> None:
        """Take node ``name`` down: connections to it are refused until it is attached again."""
        self._stubs.pop(name, None)

    def is_up(self, name: str) -> bool:
        """Whether node ``name`` is attached."""
        return name in self._stubs

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Split the network: nodes reach only nodes of their own group.

        Nodes not named in any group form one more group together.
        """
        self._groups = {name: index for index, group in enumerate(groups, 1) for name in group}

    def heal(self) -> None:
        """Remove every partition."""
        self._groups = {}

    def can_reach(self, source: str, target: str) -> bool:
        """Whether a message from ``source`` gets to ``target`` now."""
        return self._groups.get(source, 0) == self._groups.get(target, 0)

    def client_for(self, name: str) -> FakeClient:
        """An HTTP client whose requests leave from node ``name``."""
        return FakeClient(self, name)

    # -- state ------------------------------------------------------------------------------

    def in_flight(self) -> int:
        """Requests still awaiting their outcome plus messages still on the wire."""
        return len(self._open) + self._on_wire

    def sent(self, method: str | None = None, path: str | None = None) -> list[TraceEvent]:
        """The requests sent so far, optionally only those of one method and path."""
        return [
            event
            for event in self.trace
            if event.event == "send"
            and (method is None or event.method == method)
            and (path is None or event.path == path)
        ]

    def pump(self) -> None:
        """Move the bytes of every connection being served (after the clock moved)."""
        for _round in range(3):
            serving = list(self._serving)
            if not serving:
                return
            for stub in serving:
                stub.flush()

    def _note(self, exchange: _Exchange, event: str, detail: str = "", body: bytes = b"") -> None:
        happened = TraceEvent(
            round(self.clock.seconds(), 6),
            event,
            exchange.source,
            exchange.target,
            exchange.method,
            exchange.path,
            detail,
            body,
        )
        self.trace.append(happened)
        if self.observer is not None:
            self.observer(happened)

    def _delay(self) -> float:
        return self.rng.uniform(self.faults.min_delay, self.faults.max_delay)

    def _later(self, delay: float, action: Callable[..., None], *args: Any) -> None:
        """Put a message on the wire: ``action(*args)`` runs after ``delay``."""
        self._on_wire += 1

        def arrive() -> None:
            self._on_wire -= 1
            action(*args)

        self.clock.callLater(delay, arrive)

    # -- a request's life -------------------------------------------------------------------

    def send(
        self,
        source: str,
        method: str,
        url: str,
        body: bytes,
        headers: Any,
        timeout: float | None,
    ) -> Deferred[FakeResponse]:
        """Send a request from node ``source``; see :class:`FakeClient`."""
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self._numbers += 1
        result: Deferred[FakeResponse] = Deferred(lambda _d: self._cancelled(exchange))
        exchange = _Exchange(
            self._numbers, source, parts.hostname or "", method, url, path, body, headers, result
        )
        self._open.add(exchange)
        detail = f"#{exchange.number} {len(body)}B crc={zlib.crc32(body):08x}"
        self._note(exchange, "send", detail, body)
        exchange.timer = self.clock.callLater(
            DEFAULT_TIMEOUT if timeout is None else timeout, self._time_out, exchange
        )
        if not self.is_up(exchange.target):
            self._later(self._delay(), self._fail, exchange, ConnectionRefusedError(), "refused")
        elif self.rng.random() < self.faults.drop_request:
            self._note(exchange, "drop-request")
        else:
            self._later(self._delay(), self._deliver, exchange, False)
            if self.rng.random() < self.faults.duplicate:
                self._later(self._delay() * 2, self._deliver, exchange, True)
        return result

    def _deliver(self, exchange: _Exchange, copy: bool) -> None:
        stub = self._stubs.get(exchange.target)
        if stub is None or not self.can_reach(exchange.source, exchange.target):
            self._note(exchange, "lost", "down" if stub is None else "partition")
            return
        self._note(exchange, "deliver", "duplicate" if copy else "")
        self._on_wire += 1
        self._serving[stub] = self._serving.get(stub, 0) + 1
        answered = stub.request(
            exchange.method, exchange.url, data=exchange.body, headers=exchange.headers
        )

        async def serve() -> None:
            try:
                response = await answered
                code, headers, body = response.code, response.headers, await response.content()
            except Exception as exc:  # the Site failed to answer at all
                code, headers, body = 599, Headers(), repr(exc).encode()
            self._answered(exchange, stub, code, headers, body)

        Deferred.fromCoroutine(serve())
        self.pump()

    def _answered(
        self, exchange: _Exchange, stub: StubTreq, code: int, headers: Headers, body: bytes
    ) -> None:
        self._on_wire -= 1
        self._serving[stub] -= 1
        if not self._serving[stub]:
            del self._serving[stub]
        self._note(exchange, "answer", f"{code} {len(body)}B")
        if self.rng.random() < self.faults.drop_response:
            self._note(exchange, "drop-response")
            lost = ResponseNeverReceived([Failure(ConnectionLost())])
            self._later(self._delay(), self._fail, exchange, lost, "connection-lost")
            return
        self._later(self._delay(), self._respond, exchange, FakeResponse(code, headers, body))

    def _respond(self, exchange: _Exchange, response: FakeResponse) -> None:
        if not self.can_reach(exchange.target, exchange.source):
            self._note(exchange, "lost", "partition")
            return
        if exchange.done:
            self._note(exchange, "late", str(response.code))
            return
        self._note(exchange, "receive", str(response.code))
        self._close(exchange)
        exchange.result.callback(response)

    def _fail(self, exchange: _Exchange, reason: Exception, what: str) -> None:
        if exchange.done:
            return
        self._note(exchange, "fail", what)
        self._close(exchange)
        exchange.result.errback(Failure(reason))

    def _time_out(self, exchange: _Exchange) -> None:
        exchange.timer = None
        self._fail(exchange, TimeoutError(string="no answer in time"), "timeout")

    def _cancelled(self, exchange: _Exchange) -> None:
        if not exchange.done:
            self._note(exchange, "cancel")
            self._close(exchange)

    def _close(self, exchange: _Exchange) -> None:
        exchange.done = True
        self._open.discard(exchange)
        if exchange.timer is not None and exchange.timer.active():
            exchange.timer.cancel()
        exchange.timer = None


class FakeClient:
    """The treq-like HTTP client of one node on a :class:`FakeNetwork`.

    Requests to a node that is down fail with ``ConnectionRefusedError``; a request that is lost
    (dropped, or cut by a partition) fails with ``TimeoutError`` once ``timeout`` has passed; a
    lost answer fails with ``ResponseNeverReceived``. Cancelling the Deferred abandons the
    request, but a request already on the wire still reaches its server.
    """

    def __init__(self, network: FakeNetwork, name: str) -> None:
        self.network = network
        self.name = name

    def request(
        self,
        method: str | bytes,
        url: str | bytes,
        *,
        data: bytes | None = None,
        headers: Any = None,
        timeout: float | None = None,
        **_ignored: Any,
    ) -> Deferred[FakeResponse]:
        """Send a request; ``data`` is the body (bytes only)."""
        text_method = method.decode("ascii") if isinstance(method, bytes) else method
        text_url = url.decode("ascii") if isinstance(url, bytes) else url
        body = data or b""
        return self.network.send(self.name, text_method, text_url, body, headers, timeout)

    def get(self, url: str | bytes, **kwargs: Any) -> Deferred[FakeResponse]:
        """``GET url``."""
        return self.request("GET", url, **kwargs)

    def post(self, url: str | bytes, **kwargs: Any) -> Deferred[FakeResponse]:
        """``POST url``."""
        return self.request("POST", url, **kwargs)

    def put(self, url: str | bytes, **kwargs: Any) -> Deferred[FakeResponse]:
        """``PUT url``."""
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str | bytes, **kwargs: Any) -> Deferred[FakeResponse]:
        """``DELETE url``."""
        return self.request("DELETE", url, **kwargs)

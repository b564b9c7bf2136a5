"""Raw HTTP/1.1 over TCP to a node listening on 127.0.0.1, for what StubTreq cannot show.

StubTreq hands a whole request to the Site at once; these helpers send bytes when the test says
(a declared body that never comes, a chunked body cut short) and collect every byte the server
sends back, until it closes the connection.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import endpoints, protocol
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure

from navistore.store import Store

__all__ = [
    "TIMEOUT",
    "RawClient",
    "Server",
    "connect",
    "listen",
    "parse_response",
    "until_closed",
]

#: How long a connection or an answer may take.
TIMEOUT = 10.0


class Server:
    """A node listening on 127.0.0.1: its store, its port and the reactor it runs in."""

    def __init__(self, store: Store, port: IListeningPort, reactor: Any) -> None:
        self.store = store
        self.port = port
        self.reactor = reactor

    @property
    def port_number(self) -> int:
        """The port the kernel chose."""
        number: int = self.port.getHost().port
        return number

    async def stop(self) -> None:
        """Stop listening (within :data:`TIMEOUT`)."""
        stopping = self.port.stopListening()
        if stopping is not None:
            stopping.addTimeout(TIMEOUT, self.reactor)
            await stopping


class RawClient(protocol.Protocol):
    """Collects every byte the server sends; ``closed`` fires when the connection is gone."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.lost = True
        self.closed.callback(self.received)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


async def connect(server: Server) -> RawClient:
    """Open a raw TCP connection to the server (bounded by TIMEOUT)."""
    endpoint = endpoints.TCP4ClientEndpoint(
        server.reactor, "127.0.0.1", server.port_number, timeout=int(TIMEOUT)
    )
    client = RawClient()
    connecting = endpoints.connectProtocol(endpoint, client)
    connecting.addTimeout(TIMEOUT, server.reactor)
    await connecting
    return client


async def until_closed(server: Server, client: RawClient) -> bytes:
    """Wait (at most TIMEOUT) for the server to close the connection; return what it sent."""
    waiting = client.closed
    waiting.addTimeout(TIMEOUT, server.reactor)
    try:
        received: bytes = await waiting
    except TimeoutError:
        assert client.transport is not None
        client.transport.abortConnection()
        pytest.fail(f"the server did not close the connection; it sent {client.received!r}")
    return received


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Split one HTTP/1.1 response (with Content-Length) into status, headers and body; fail
    if anything follows it."""
    head, separator, rest = data.partition(b"\r\n\r\n")
    assert separator, f"no complete response head in {data!r}"
    lines = head.decode("latin-1").split("\r\n")
    version, status, _reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"])
    body, trailing = rest[:length], rest[length:]
    assert len(body) == length, f"body cut short: {data!r}"
    assert trailing == b"", f"bytes after the response: {trailing!r}"
    return int(status), headers, body


async def listen(store: Store, site: Any, reactor: Any) -> Server:
    """Serve ``site`` (over ``store``) on an ephemeral 127.0.0.1 port of the real reactor."""
    listening = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
    listening.addTimeout(TIMEOUT, reactor)
    return Server(store, await listening, reactor)

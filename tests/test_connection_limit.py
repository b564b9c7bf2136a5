"""``--max-connections`` (navistore.listening.Connections): a full node makes room by closing the
connection idle (or waiting for its headers) the longest, and refuses with 503 only when every
connection is busy answering. A node in this process on 127.0.0.1, raw HTTP over TCP.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from support.processes import LOOPBACK
from support.rawhttp import RawClient, Server, connect, parse_response, until_closed
from twisted.internet.task import deferLater

from navistore.backend.memory import MemoryBackend
from navistore.daemon import NavistoreService
from navistore.listening import default_max_connections
from navistore.node import NodeConfig

MAX = 4
HEALTH = b"GET /_health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def test_the_default_keeps_a_reserve_of_descriptors() -> None:
    """A tenth of the descriptor limit, at least 64, stays free for the backend, peers and logs."""
    assert default_max_connections(256) == 192
    assert default_max_connections(1024) == 922
    assert default_max_connections(65536) == 65536 - 6553
    assert default_max_connections(40) == 16


@pytest_twisted.async_yield_fixture
async def server(reactor: Any) -> AsyncIterator[Server]:
    """A node allowing :data:`MAX` connections, whose slow clients are cut by the limit only."""
    store_backend = MemoryBackend()
    config = NodeConfig(
        backend_url="memory:", endpoints=[LOOPBACK], open_mode=True, max_connections=MAX
    )
    service = NavistoreService(config, reactor=reactor, backend_factory=lambda _u: store_backend)
    service.privilegedStartService()
    service.startService()
    for _ in range(100):
        if service.store is not None and service.node is not None:
            break
        await deferLater(reactor, 0.02, lambda: None)
    assert service.store is not None
    yield Server(service.store, service.ports[0], reactor)
    await service.stopService()


async def sleep(server: Server, seconds: float) -> None:
    await deferLater(server.reactor, seconds, lambda: None)


async def trickler(server: Server) -> RawClient:
    """A connection that sent the start of a request and nothing more."""
    client = await connect(server)
    client.send(b"GET /_health HTTP/1.1\r\nHost: 127.0.")
    await sleep(server, 0.05)
    return client


@pytest_twisted.ensureDeferred
async def test_a_full_node_closes_its_oldest_slow_client_to_serve_a_new_one(
    server: Server,
) -> None:
    slow = [await trickler(server) for _ in range(MAX)]
    probe = await connect(server)
    probe.send(HEALTH)
    status, _headers, _body = parse_response(await until_closed(server, probe))
    assert status == 200
    await sleep(server, 0.1)
    assert [client.lost for client in slow] == [True, False, False, False]
    assert slow[0].received == b""
    # Full again: the next oldest makes room.
    slow.append(await trickler(server))
    probe = await connect(server)
    probe.send(HEALTH)
    assert parse_response(await until_closed(server, probe))[0] == 200
    await sleep(server, 0.1)
    assert [client.lost for client in slow] == [True, True, False, False, False]
    for client in slow[2:]:
        assert client.transport is not None
        client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_a_node_whose_connections_are_all_busy_refuses_with_503(server: Server) -> None:
    polls = []
    for _ in range(MAX):
        poll = await connect(server)
        poll.send(
            b"GET /_changes?feed=longpoll&timeout=30 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Connection: close\r\n\r\n"
        )
        polls.append(poll)
    await sleep(server, 0.1)
    refused = await connect(server)
    status, headers, body = parse_response(await until_closed(server, refused))
    assert status == 503
    assert headers["retry-after"] == "1"
    assert json.loads(body)["error"] == "too_many_connections"
    assert not any(poll.lost for poll in polls)
    assert polls[0].transport is not None
    polls[0].transport.loseConnection()
    await sleep(server, 0.1)
    probe = await connect(server)
    probe.send(HEALTH)
    assert parse_response(await until_closed(server, probe))[0] == 200
    for poll in polls[1:]:
        assert poll.transport is not None
        poll.transport.loseConnection()

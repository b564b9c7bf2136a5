"""Request-body limits (navistore.web.site) against a real server listening on 127.0.0.1.

StubTreq cannot show *when* a body is refused, so these tests speak raw HTTP/1.1 over TCP to
``make_site(store, max_value_size=1024)``: a declared 65 MiB body is refused from its headers
alone, a chunked body is refused as soon as it passes the limit, and bodies within the limit are
stored.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from support.rawhttp import (
    Server,
    connect,
    listen,
    parse_response,
    until_closed,
)
from twisted.internet.task import deferLater

from navistore.backend.memory import MemoryBackend
from navistore.store import Store
from navistore.watch_hub import WatchHub
from navistore.web import AccessPolicy, make_site
from navistore.web.request import replication_body_limit

LIMIT = 1024
HUGE = 65 * 1024 * 1024  # 68157440: far more than anyone should buffer


def assert_refused(data: bytes) -> None:
    """Check ``data`` is exactly one JSON 413 answer that closes the connection."""
    status, headers, body = parse_response(data)
    assert status == 413
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    document = json.loads(body)
    assert document["error"] == "value_too_large"
    assert document["detail"] == {"max_value_size": LIMIT}
    assert isinstance(document["message"], str)


@pytest_twisted.async_yield_fixture
async def server(reactor: Any) -> AsyncIterator[Server]:
    """A node (memory backend, 1 KiB value limit) listening on an ephemeral 127.0.0.1 port."""
    store = await Store.open(MemoryBackend())
    hub = WatchHub(store, clock=reactor)
    listening = await listen(
        store,
        make_site(
            store,
            max_value_size=LIMIT,
            watch_hub=hub,
            reactor=reactor,
            access=AccessPolicy.open(),
        ),
        reactor,
    )
    yield listening
    await listening.stop()
    await store.close()


async def nothing_stored(server: Server) -> None:
    """Check the node holds no record and never stored one."""
    assert await server.store.last_seq() == 0
    assert (await server.store.list("/")).records == []


@pytest.mark.parametrize("method", [b"PUT", b"POST"])
@pytest.mark.parametrize("expect_continue", [False, True])
@pytest_twisted.ensureDeferred
async def test_declared_huge_body_is_refused_from_the_headers(
    server: Server, method: bytes, expect_continue: bool
) -> None:
    """Headers declaring a 65 MiB body, with no body sent, get a JSON 413 and a closed
    connection: the server refused before reading (or asking for, with 100-continue) the body."""
    client = await connect(server)
    head = (
        method + b" /big HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Length: %d\r\n" % HUGE
    )
    if expect_continue:
        head += b"Expect: 100-continue\r\n"
    client.send(head + b"\r\n")
    received = await until_closed(server, client)
    assert b"100 Continue" not in received
    assert_refused(received)
    await nothing_stored(server)


@pytest_twisted.ensureDeferred
async def test_declared_body_just_over_the_limit_is_refused(server: Server) -> None:
    """Content-Length of limit + 1 is refused with 413 even when the body is sent with it."""
    client = await connect(server)
    client.send(
        b"PUT /k HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1)
        + b"x" * (LIMIT + 1)
    )
    assert_refused(await until_closed(server, client))
    await nothing_stored(server)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked request body."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


CHUNKED_HEAD = b"PUT /chunked HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest_twisted.ensureDeferred
async def test_chunked_body_over_the_limit_in_one_piece_is_refused(server: Server) -> None:
    """A complete chunked body over the limit, arriving in one read with its last chunk, gets
    exactly one answer (413), the connection closes and nothing (not even a truncated value) is
    stored."""
    client = await connect(server)
    body = b"".join(chunk(b"x" * 300) for _ in range(5)) + b"0\r\n\r\n"
    client.send(CHUNKED_HEAD + body)
    received = await until_closed(server, client)
    assert received.count(b"HTTP/1.1 ") == 1, received
    assert_refused(received)
    await nothing_stored(server)


@pytest_twisted.ensureDeferred
async def test_chunked_body_is_refused_while_it_streams(server: Server) -> None:
    """A chunked upload sent a chunk at a time is answered 413 and cut off as soon as it passes
    the limit, long before the client has sent everything; nothing is stored."""
    client = await connect(server)
    client.send(CHUNKED_HEAD)
    total_chunks = 50
    sent = 0
    for _ in range(total_chunks):
        if client.lost:
            break
        client.send(chunk(b"y" * 256))
        sent += 1
        await deferLater(server.reactor, 0.02, lambda: None)
    received = await until_closed(server, client)
    assert_refused(received)
    assert sent * 256 > LIMIT
    assert sent < total_chunks, "the server read the whole upload before closing"
    await nothing_stored(server)


@pytest.mark.parametrize("size", [LIMIT - 1, LIMIT])
@pytest_twisted.ensureDeferred
async def test_body_within_the_limit_is_stored(server: Server, size: int) -> None:
    """A body just under (or exactly at) the limit is accepted: 201, and the value is stored."""
    client = await connect(server)
    value = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    client.send(
        b"PUT /fits HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n" % len(value) + value
    )
    status, _headers, body = parse_response(await until_closed(server, client))
    assert (status, body) == (201, b"OK")
    stored = await server.store.get("/fits")
    assert stored is not None and stored.value == value


@pytest_twisted.ensureDeferred
async def test_chunked_body_within_the_limit_is_stored(server: Server) -> None:
    """A chunked body that stays within the limit is stored whole (201)."""
    client = await connect(server)
    parts = [b"a" * 500, b"b" * 500, b"c" * 24]
    client.send(
        b"PUT /chunked HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        + b"".join(chunk(part) for part in parts)
        + b"0\r\n\r\n"
    )
    status, _headers, body = parse_response(await until_closed(server, client))
    assert (status, body) == (201, b"OK")
    stored = await server.store.get("/chunked")
    assert stored is not None and stored.value == b"".join(parts)


@pytest_twisted.ensureDeferred
async def test_server_keeps_serving_after_a_refusal(server: Server) -> None:
    """A refused upload only closes its own connection: the next client is served."""
    refused = await connect(server)
    refused.send(b"PUT /big HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % HUGE)
    assert_refused(await until_closed(server, refused))
    client = await connect(server)
    client.send(
        b"PUT /small HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Length: 2\r\n\r\nhi"
    )
    status, _headers, _body = parse_response(await until_closed(server, client))
    assert status == 201


@pytest_twisted.ensureDeferred
async def test_replication_batches_may_exceed_the_value_limit(server: Server) -> None:
    """``POST /_replicate`` carries values in base64 plus metadata, so it gets a larger limit:
    a body over ``max_value_size`` but within the replication limit is read, not refused with
    413 (this node has no replication endpoint, so it then answers 404); beyond that limit it
    is refused like any other body."""
    within = replication_body_limit(LIMIT)
    client = await connect(server)
    body = b"x" * 2000
    client.send(
        b"POST /_replicate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    status, _headers, _ = parse_response(await until_closed(server, client))
    assert status == 404
    client = await connect(server)
    client.send(
        b"POST /_replicate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (within + 1)
    )
    status, _headers, refusal = parse_response(await until_closed(server, client))
    assert status == 413
    assert json.loads(refusal)["detail"] == {"max_value_size": within}

"""A client's connection (navistore.web.channel): deadlines, bounded lines, JSON protocol errors,
absolute-form targets and the send budget, against a real Site listening on 127.0.0.1.

The Site runs with short deadlines (a fraction of a second) and a fast sweep, so that each slow
client is seen being cut within a second or two; every test speaks raw HTTP/1.1 over TCP.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from support.rawhttp import RawClient, Server, connect, listen, parse_response, until_closed
from twisted.internet.task import deferLater

from navistore.backend.memory import MemoryBackend
from navistore.store import Store
from navistore.watch_hub import WatchHub
from navistore.web import AccessPolicy, ConnectionLimits, SendBudget, make_site
from navistore.web.channel import NavistoreChannel

LIMITS = ConnectionLimits(header_timeout=0.6, min_body_rate=2000, body_grace=0.6, idle_timeout=1.5)
#: What clients that do not read may hold, in these tests.
BUDGET = 1024 * 1024
#: A value far larger than the kernel buffers of a loopback connection can absorb.
BIG = 12 * 1024 * 1024


@pytest_twisted.async_yield_fixture
async def server(reactor: Any) -> AsyncIterator[Server]:
    """A node (memory backend) with short deadlines, listening on an ephemeral port."""
    store = await Store.open(MemoryBackend())
    hub = WatchHub(store, clock=reactor)
    site = make_site(
        store,
        watch_hub=hub,
        reactor=reactor,
        access=AccessPolicy.open(),
        limits=LIMITS,
        send_budget=SendBudget(BUDGET),
    )
    site.deadlines.period = 0.05
    listening = await listen(store, site, reactor)
    listening.site = site  # type: ignore[attr-defined]
    yield listening
    await listening.stop()
    hub.close()
    await store.close()


def json_error(data: bytes, status: int, code: str) -> dict[str, Any]:
    """Check ``data`` is one JSON error answer with ``status`` and ``code`` that closes."""
    got, headers, body = parse_response(data)
    assert got == status, data[:300]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    document: dict[str, Any] = json.loads(body)
    assert document["error"] == code
    assert isinstance(document["message"], str)
    return document


async def sleep(server: Server, seconds: float) -> None:
    await deferLater(server.reactor, seconds, lambda: None)


async def exchange(server: Server, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one request with ``Connection: close``; its answer."""
    client = await connect(server)
    client.send(request)
    return parse_response(await until_closed(server, client))


# -- deadlines ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_headers_must_arrive_within_the_header_timeout(server: Server) -> None:
    client = await connect(server)
    started = time.monotonic()
    client.send(b"GET /_health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    data = await until_closed(server, client)
    took = time.monotonic() - started
    document = json_error(data, 408, "request_timeout")
    assert document["detail"] == {"header_timeout": LIMITS.header_timeout}
    assert LIMITS.header_timeout <= took < LIMITS.header_timeout + 1.0


@pytest_twisted.ensureDeferred
async def test_a_trickle_of_header_bytes_does_not_move_the_deadline(server: Server) -> None:
    """Slowloris: a byte every 50 ms keeps the connection busy but not past the deadline."""
    client = await connect(server)
    started = time.monotonic()
    for byte in b"GET /_health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200:
        if client.lost:
            break
        client.send(bytes([byte]))
        await sleep(server, 0.05)
    data = await until_closed(server, client)
    json_error(data, 408, "request_timeout")
    assert time.monotonic() - started < LIMITS.header_timeout + 1.0


@pytest_twisted.ensureDeferred
async def test_an_idle_keepalive_connection_outlives_the_header_timeout(server: Server) -> None:
    """The header deadline counts from a request's first byte: a kept-alive connection with
    nothing to say is cut only after the idle timeout, quietly."""
    client = await connect(server)
    request = b"GET /_health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    client.send(request)
    await sleep(server, LIMITS.header_timeout + 0.3)
    assert not client.lost
    assert client.received.startswith(b"HTTP/1.1 200 ")
    client.received = b""
    client.send(request)  # still served
    await sleep(server, 0.2)
    assert client.received.startswith(b"HTTP/1.1 200 ")
    client.received = b""
    started = time.monotonic()
    data = await until_closed(server, client)
    assert data == b""
    assert LIMITS.idle_timeout - 0.5 <= time.monotonic() - started < LIMITS.idle_timeout + 2


@pytest_twisted.ensureDeferred
async def test_a_body_slower_than_the_minimum_rate_is_408(server: Server) -> None:
    client = await connect(server)
    client.send(b"PUT /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n")
    started = time.monotonic()
    while not client.lost and time.monotonic() - started < 5:
        client.send(b"x" * 20)  # 400 bytes a second, the minimum is 2000
        await sleep(server, 0.05)
    document = json_error(await until_closed(server, client), 408, "request_timeout")
    assert document["detail"]["min_body_rate"] == LIMITS.min_body_rate
    assert time.monotonic() - started < LIMITS.body_grace + 1.5
    assert (await server.store.get("/slow")) is None


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_slower_than_the_minimum_rate_is_408(server: Server) -> None:
    client = await connect(server)
    client.send(b"PUT /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    started = time.monotonic()
    while not client.lost and time.monotonic() - started < 5:
        client.send(b"5\r\nxxxxx\r\n")
        await sleep(server, 0.05)
    json_error(await until_closed(server, client), 408, "request_timeout")
    assert (await server.store.get("/slow")) is None


@pytest_twisted.ensureDeferred
async def test_a_body_at_the_minimum_rate_is_stored(server: Server) -> None:
    """A body that arrives slowly but above the rate, for longer than the grace, is stored."""
    client = await connect(server)
    size = 6000
    client.send(
        b"PUT /steady HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n" % size
    )
    for _ in range(size // 300):
        client.send(b"y" * 300)  # 6000 bytes a second for a second
        await sleep(server, 0.05)
    status, _headers, _body = parse_response(await until_closed(server, client))
    assert status == 201
    record = await server.store.get("/steady")
    assert record is not None and record.value == b"y" * size


# -- lines, headers and protocol errors ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_request_line_over_the_limit_is_414(server: Server) -> None:
    client = await connect(server)
    client.send(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    document = json_error(await until_closed(server, client), 414, "uri_too_long")
    assert document["detail"] == {"max_line_bytes": NavistoreChannel.MAX_LENGTH}


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        (b"X-Long: " + b"a" * 20000 + b"\r\n", {"max_line_bytes": NavistoreChannel.MAX_LENGTH}),
        (b"".join(b"X-%d: v\r\n" % n for n in range(150)), {"max_headers": 100}),
        (
            b"".join(b"X-%d: %s\r\n" % (n, b"v" * 8000) for n in range(6)),
            {"max_header_bytes": 32768},
        ),
    ],
    ids=["one-long-line", "too-many", "too-many-bytes"],
)
@pytest_twisted.ensureDeferred
async def test_headers_over_the_limits_are_431(
    server: Server, headers: bytes, detail: dict[str, int]
) -> None:
    client = await connect(server)
    client.send(b"GET /_health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n")
    document = json_error(await until_closed(server, client), 431, "headers_too_large")
    assert document["detail"] == detail


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /_health HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n",
        b"GET /_health\r\n\r\n",
        b"PUT /k HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ten\r\n\r\n",
        b"PUT /k HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"PUT /k HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /_health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Nul: a\x00b\r\n\r\n",
    ],
    ids=["no-colon", "no-version", "bad-length", "bad-coding", "bad-chunk", "nul-in-header"],
)
@pytest_twisted.ensureDeferred
async def test_malformed_requests_get_a_json_400(server: Server, request_bytes: bytes) -> None:
    client = await connect(server)
    client.send(request_bytes)
    json_error(await until_closed(server, client), 400, "bad_request")


@pytest_twisted.ensureDeferred
async def test_a_chunk_larger_than_the_body_limit_is_refused_when_announced(
    server: Server,
) -> None:
    """A chunk size of 2^160 is refused at once (413), not waited for."""
    client = await connect(server)
    started = time.monotonic()
    client.send(
        b"PUT /k HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\nabc" % 2**160
    )
    json_error(await until_closed(server, client), 413, "value_too_large")
    assert time.monotonic() - started < 0.5
    assert (await server.store.get("/k")) is None


@pytest_twisted.ensureDeferred
async def test_an_absolute_form_target_is_served(server: Server) -> None:
    """RFC 9112 section 3.2.2: a server must accept ``PUT http://host/path``."""
    authority = b"127.0.0.1:%d" % server.port_number
    status, _headers, _body = await exchange(
        server,
        b"PUT http://" + authority + b"/abs/key?x=1 HTTP/1.1\r\nHost: " + authority + b"\r\n"
        b"Content-Length: 5\r\nConnection: close\r\n\r\nvalue",
    )
    assert status == 201
    status, _headers, body = await exchange(
        server,
        b"GET HTTP://" + authority + b"/abs/key HTTP/1.1\r\nHost: elsewhere\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert (status, body) == (200, b"value")


@pytest_twisted.ensureDeferred
async def test_an_absolute_form_authority_replaces_the_host_header(reactor: Any) -> None:
    """Protected mode checks the authority an absolute-form target names, not the Host header
    beside it: a DNS-rebinding page cannot hide behind ``Host: 127.0.0.1``."""
    store = await Store.open(MemoryBackend())
    hub = WatchHub(store, clock=reactor)
    site = make_site(store, watch_hub=hub, reactor=reactor, access=AccessPolicy())
    server = await listen(store, site, reactor)
    try:
        status, _headers, body = await exchange(
            server,
            b"GET http://attacker.example/_health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Connection: close\r\n\r\n",
        )
        assert status == 403, body
        assert json.loads(body)["error"] == "protected_mode"
        authority = b"127.0.0.1:%d" % server.port_number
        status, _headers, _body = await exchange(
            server,
            b"GET http://" + authority + b"/_health HTTP/1.1\r\nHost: attacker.example\r\n"
            b"Connection: close\r\n\r\n",
        )
        assert status == 200
    finally:
        await server.stop()
        hub.close()
        await store.close()


# -- clients that do not read ---------------------------------------------------------------------


async def stalled_download(server: Server, key: str) -> RawClient:
    """A client that asks for ``key`` and then stops reading, once the node holds bytes for it."""
    client = await connect(server)
    assert client.transport is not None
    client.transport.pauseProducing()  # read nothing: the kernel buffers fill, then the node's
    client.send(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % key.encode())
    budget: SendBudget = server.site.send_budget  # type: ignore[attr-defined]
    for _ in range(100):
        if budget.held:
            return client
        await sleep(server, 0.02)
    pytest.fail("the node never held bytes for the client that does not read")


@pytest_twisted.ensureDeferred
async def test_large_reads_wait_while_slow_readers_hold_the_budget(server: Server) -> None:
    """Once clients that do not read hold the send budget, a large read waits (holding nothing),
    while small answers go out at once; the large read is answered when the budget frees."""
    await server.store.put("/big", b"b" * BIG)
    await server.store.put("/small", b"s" * 100)
    stalled = await stalled_download(server, "/big")
    budget: SendBudget = server.site.send_budget  # type: ignore[attr-defined]
    assert budget.spent
    waiting = await connect(server)
    waiting.send(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    await sleep(server, 0.2)
    assert waiting.received == b"" and budget.waiting == 1
    for path in (b"/small", b"/_health"):
        status, _headers, _body = await exchange(
            server, b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % path
        )
        assert status == 200
    assert stalled.transport is not None
    stalled.transport.abortConnection()
    data = await until_closed(server, waiting)
    status, _headers, body = parse_response(data)
    assert (status, len(body)) == (200, BIG)
    await sleep(server, 0.1)
    assert budget.held == 0 and budget.waiting == 0


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_is_cut_after_the_idle_timeout(server: Server) -> None:
    """Nothing moves for the idle timeout: the node cuts the connection and lets go of what it
    held for it (the client, reading nothing, notices only once it reads again)."""
    await server.store.put("/big", b"b" * BIG)
    stalled = await stalled_download(server, "/big")
    budget: SendBudget = server.site.send_budget  # type: ignore[attr-defined]
    started = time.monotonic()
    while budget.held and time.monotonic() - started < LIMITS.idle_timeout + 3:
        await sleep(server, 0.05)
    assert budget.held == 0
    assert LIMITS.idle_timeout - 0.5 <= time.monotonic() - started < 1.25 * LIMITS.idle_timeout + 1
    assert stalled.transport is not None
    stalled.transport.resumeProducing()
    await until_closed(server, stalled)
    assert len(stalled.received) < BIG


@pytest_twisted.ensureDeferred
async def test_a_slow_but_steady_reader_is_not_cut(server: Server) -> None:
    """Reading a large answer slowly, for longer than the idle timeout, is allowed: only a
    connection on which nothing moves is cut."""
    await server.store.put("/big", b"b" * BIG)
    stalled = await stalled_download(server, "/big")
    transport = stalled.transport
    assert transport is not None
    read = stalled.dataReceived

    def one_read_at_a_time(data: bytes) -> None:
        read(data)
        transport.pauseProducing()

    stalled.dataReceived = one_read_at_a_time  # type: ignore[method-assign]
    started = time.monotonic()
    while time.monotonic() - started < 2.5 * LIMITS.idle_timeout and not stalled.lost:
        transport.resumeProducing()  # one read (64 KiB at most) every 100 ms
        await sleep(server, 0.1)
    assert not stalled.lost
    assert len(stalled.received) < BIG  # it was still reading
    stalled.dataReceived = read  # type: ignore[method-assign]
    transport.resumeProducing()
    for _ in range(250):
        if len(stalled.received) > BIG:
            break
        await sleep(server, 0.02)
    assert stalled.received.endswith(b"b" * 1000) and len(stalled.received) > BIG

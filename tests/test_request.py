"""The node's Request (navistore.web.request): its one-write answers are still HTTP/1.1, and its
watcher hears of every request, over a real server on 127.0.0.1.

The answers are written by hand (a head of encoded lines, a ``Date`` line formatted once a
second), so these tests read the bytes on the wire: one status line, ``Date`` and ``Server``
once each, a ``Content-Length`` or chunks but never both, HEAD and 304 without a body, and
header values that cannot add a header.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from support.rawhttp import Server, connect, listen, until_closed
from twisted.internet.task import deferLater
from twisted.web.server import Request

from navistore.backend.memory import MemoryBackend
from navistore.store import Store
from navistore.tally import ABORTED
from navistore.watch_hub import WatchHub
from navistore.web import AccessPolicy, make_site
from navistore.web.request import RequestWatcher, header_line


class Watcher(RequestWatcher):
    """Remembers what it is told."""

    def __init__(self) -> None:
        self.begun: list[Request] = []
        self.ended: list[tuple[bytes, int]] = []

    def started(self, request: Request) -> None:
        self.begun.append(request)  # its first line is not parsed yet

    def finished(self, request: Request, status: int) -> None:
        self.ended.append((request.uri, status))


@pytest_twisted.async_yield_fixture
async def server(reactor: Any) -> AsyncIterator[tuple[Server, Watcher]]:
    store = await Store.open(MemoryBackend())
    site = make_site(
        store, watch_hub=WatchHub(store, clock=reactor), reactor=reactor, access=AccessPolicy.open()
    )
    watcher = Watcher()
    site.request_watcher = watcher
    listening = await listen(store, site, reactor)
    yield listening, watcher
    await listening.stop()
    await store.close()


def split(raw: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    """Status line, header lines (lower-cased names, in order) and the rest."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [
        (name.lower(), value.strip())
        for name, _, value in (line.partition(":") for line in lines[1:])
    ]
    return lines[0], headers, rest


async def exchange(server: Server, request: bytes) -> bytes:
    client = await connect(server)
    client.send(request)
    return await until_closed(server, client)


async def until(server: Server, condition: Any, what: str) -> None:
    """Wait for ``condition()`` to hold, polling every 10 ms for at most 5 s."""
    for _ in range(500):
        if condition():
            return
        await deferLater(server.reactor, 0.01, lambda: None)
    pytest.fail(f"timed out waiting for {what}")


def names(headers: list[tuple[str, str]]) -> list[str]:
    return [name for name, _ in headers]


@pytest_twisted.ensureDeferred
async def test_a_plain_get_is_one_well_formed_answer(server: tuple[Server, Watcher]) -> None:
    node, watcher = server
    await node.store.put("/k", b"value", "text/plain")
    raw = await exchange(node, b"GET /k HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    status, headers, body = split(raw)
    assert status == "HTTP/1.1 200 OK"
    for name in ("date", "server", "etag", "last-modified", "content-type", "content-length"):
        assert names(headers).count(name) == 1, (name, headers)
    assert "transfer-encoding" not in names(headers)
    assert dict(headers)["content-type"] == "text/plain"
    assert dict(headers)["content-length"] == "5"
    assert dict(headers)["connection"] == "close"
    assert body == b"value"
    assert [request.uri for request in watcher.begun] == [b"/k"]
    assert watcher.ended == [(b"/k", 200)]


@pytest_twisted.ensureDeferred
async def test_head_and_not_modified_have_no_body(server: tuple[Server, Watcher]) -> None:
    node, _ = server
    await node.store.put("/k", b"value", "text/plain")
    client = await connect(node)
    client.send(b"HEAD /k HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await until(node, lambda: b"\r\n\r\n" in client.received, "the HEAD answer")
    status, headers, rest = split(client.received)
    assert status == "HTTP/1.1 200 OK" and rest == b""
    assert dict(headers)["content-length"] == "5"
    etag = dict(headers)["etag"]
    client.received = b""
    client.send(
        b"GET /k HTTP/1.1\r\nHost: 127.0.0.1\r\nIf-None-Match: %s\r\nConnection: close\r\n\r\n"
        % etag.encode()
    )
    raw = await until_closed(node, client)
    status, headers, rest = split(raw)
    assert status == "HTTP/1.1 304 Not Modified" and rest == b""
    assert "content-type" not in names(headers)


@pytest_twisted.ensureDeferred
async def test_answers_on_one_connection_follow_each_other(server: tuple[Server, Watcher]) -> None:
    """Pipelined requests: each answer whole, in order, with its own length."""
    node, watcher = server
    for number in range(3):
        await node.store.put(f"/k{number}", b"v%d" % number, None)
    raw = await exchange(
        node,
        b"".join(b"GET /k%d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % n for n in range(3))
        + b"GET /missing HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    answers = raw.split(b"HTTP/1.1 ")[1:]
    assert [answer.split(b" ", 1)[0] for answer in answers] == [b"200", b"200", b"200", b"404"]
    for number, answer in enumerate(answers[:3]):
        assert answer.endswith(b"\r\n\r\nv%d" % number)
    assert json.loads(answers[3].split(b"\r\n\r\n", 1)[1])["error"] == "not_found"
    assert [status for _, status in watcher.ended] == [200, 200, 200, 404]


@pytest_twisted.ensureDeferred
async def test_streamed_answers_are_chunked_and_http_1_0_is_not(
    server: tuple[Server, Watcher],
) -> None:
    node, _ = server
    await node.store.put("/d/a", b"1", None)
    raw = await exchange(
        node, b"GET /listkeys HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    _, headers, body = split(raw)
    assert dict(headers).get("transfer-encoding") == "chunked"
    assert "content-length" not in names(headers)
    assert body.endswith(b"0\r\n\r\n")
    raw = await exchange(node, b"GET /listkeys HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    status, headers, body = split(raw)
    assert status.startswith("HTTP/1.0 200")
    assert "transfer-encoding" not in names(headers)
    assert body == b'["d/a"]'  # classic listkeys: no leading slash; the close ends it


def test_a_header_value_cannot_add_a_header() -> None:
    assert header_line(b"Content-Type", b"text/plain\r\nX-Evil: 1") == (
        b"Content-Type: text/plain  X-Evil: 1\r\n"
    )


@pytest_twisted.ensureDeferred
async def test_a_request_whose_client_leaves_is_counted_aborted(
    server: tuple[Server, Watcher],
) -> None:
    node, watcher = server
    client = await connect(node)
    client.send(b"GET /k?wait=true&timeout=30 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await until(
        node,
        lambda: [request.uri for request in watcher.begun] == [b"/k?wait=true&timeout=30"],
        "the watch to be received",
    )
    assert not watcher.ended  # a watch of 30 s: still waiting
    assert client.transport is not None
    client.transport.loseConnection()
    await until(node, lambda: watcher.ended, "the request to end")
    assert watcher.ended == [(b"/k?wait=true&timeout=30", ABORTED)]


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
@pytest_twisted.ensureDeferred
async def test_errors_are_json_with_their_length(
    server: tuple[Server, Watcher], method: bytes
) -> None:
    node, _ = server
    raw = await exchange(
        node, method + b" /nothing HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    status, headers, body = split(raw)
    assert status == "HTTP/1.1 404 Not Found"
    assert dict(headers)["content-type"] == "application/json"
    length = int(dict(headers)["content-length"])
    assert body == b"" if method == b"HEAD" else len(body) == length

"""Hostile load against a real ``twistd navistore`` process on 127.0.0.1 (issue 12).

The deadlines and limits as an operator sets them on the command line, seen from raw sockets:
a client trickling its headers gets a JSON 408 after ``--header-timeout``; at
``--max-connections`` the oldest trickler makes room and ``/_health`` still answers; over-long
lines, nested JSON, a seq past 2^63-1, invisible format characters in keys and absolute-form
targets get their documented answers; and the node still serves afterwards.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.processes import Server, running, twistd

HOST = "127.0.0.1"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Server]:
    """A node with a 1 s header deadline, a 3 s idle timeout and at most 8 connections."""
    limits = ["--header-timeout", "1", "--idle-timeout", "3", "--max-connections", "8"]
    command = [*twistd("sqlite:limits.db"), *limits]
    with running(command, tmp_path) as server:
        server.wait_listening()
        yield server


def exchange(server: Server, data: bytes, wait: float = 5.0) -> tuple[int | None, dict, bytes]:
    """Send raw bytes; the status, headers and body of the answer (None: closed without one)."""
    with socket.create_connection((HOST, server.port), timeout=wait) as sock:
        sock.sendall(data)
        received = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            received += chunk
            head, found, body = received.partition(b"\r\n\r\n")
            if found:
                lines = head.decode("latin-1").split("\r\n")
                headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
                if len(body) >= int(headers.get("content-length", "0")):
                    return int(lines[0].split()[1]), headers, body
    return None, {}, received


def trickle(server: Server) -> socket.socket:
    """A connection that sent the start of a request line and nothing more."""
    sock = socket.create_connection((HOST, server.port), timeout=10)
    sock.sendall(b"GET /_health HTTP/1.1\r\nHost: 12")
    return sock


def error_code(body: bytes) -> str:
    document = json.loads(body)
    assert set(document) >= {"error", "message"}
    return str(document["error"])


def test_headers_too_slow_get_a_json_408(node: Server) -> None:
    """A client that does not finish its headers within --header-timeout (1 s) gets a 408
    ``request_timeout`` in JSON and its connection closed, after 1 s and well before the
    3 s idle timeout."""
    sock = trickle(node)
    started = time.monotonic()
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    elapsed = time.monotonic() - started
    sock.close()
    assert received.startswith(b"HTTP/1.1 408 ")
    assert error_code(received.partition(b"\r\n\r\n")[2]) == "request_timeout"
    assert 0.9 <= elapsed < 2.9


def test_max_connections_makes_room_by_closing_the_oldest_trickler(node: Server) -> None:
    """Eight connections stuck in their headers fill the node; a ninth client's /_health is
    still answered at once, because the oldest trickler is closed to make room."""
    stuck = [trickle(node) for _ in range(8)]
    time.sleep(0.2)
    try:
        started = time.monotonic()
        status, _headers, _body = exchange(
            node, b"GET /_health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        assert status == 200
        assert time.monotonic() - started < 0.5
        stuck[0].settimeout(2)
        try:
            left = stuck[0].recv(100)
        except ConnectionResetError:  # closed at once, without an answer
            left = b""
        assert left == b""
        stuck[-1].setblocking(False)
        with pytest.raises(BlockingIOError):  # the youngest is still open, waiting
            stuck[-1].recv(100)
    finally:
        for sock in stuck:
            sock.close()


def test_every_hostile_input_has_its_answer(node: Server) -> None:
    """Each input of the hostile-load table gets its documented 4xx in JSON, never a 500 nor a
    silent close; the absolute-form PUT is stored; the node serves afterwards."""
    port = node.port
    over = str(2**63)
    deep = b"[" * 100_000 + b"]" * 100_000

    def request(method: str, target: str, body: bytes = b"", **headers: str) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    cases = {
        "since": (request("GET", f"/_changes?since={over}"), 400, "invalid_parameter"),
        "replicate since": (request("GET", f"/_replicate?since={over}"), 400, "invalid_parameter"),
        "nested bulk": (
            request("POST", "/_bulk", deep, Content_Type="application/json"),
            400,
            "invalid_bulk_body",
        ),
        "nested batch": (
            request("POST", "/_replicate", deep, Content_Type="application/json"),
            400,
            "malformed_batch",
        ),
        "request line": (request("GET", "/" + "a" * 20_000), 414, "uri_too_long"),
        "header line": (request("GET", "/", X_Long="a" * 20_000), 431, "headers_too_large"),
        "format character": (
            request("PUT", urllib.parse.quote("/cf/a\u200bb"), b"v"),
            400,
            "invalid_key",
        ),
        "no colon": (b"GET /_health HTTP/1.1\r\nHost: 127.0.0.1\r\nNoColon\r\n\r\n", 400, None),
    }
    for name, (data, expected, code) in cases.items():
        status, headers, body = exchange(node, data)
        assert status == expected, (name, status, body[:200])
        assert "json" in headers.get("content-type", ""), name
        if code is not None:
            assert error_code(body) == code, name
    target = f"http://{HOST}:{port}/abs/key"
    status, _headers, _body = exchange(node, request("PUT", target, b"absolute"))
    assert status == 201
    assert node.request("GET", "/abs/key")[:2] == (200, b"absolute")
    assert node.request("GET", "/_health")[0] == 200

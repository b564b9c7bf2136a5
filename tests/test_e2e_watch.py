"""End to end: watchers of a real ``twistd navistore`` node on 127.0.0.1, across a restart.

Two watchers run in threads as clients would: one loops on ``/_changes?feed=longpoll`` from the
last seq it saw, the other reads ``feed=eventsource`` and reconnects with ``Last-Event-ID``. The
node is written to under the watched prefix and beside it (including a key that only shares its
first letters), stopped and started again on the same sqlite file (on a new port), and written to
again. Each watcher must have seen exactly the changes under its prefix, in order, none twice.
The process helpers are those of :mod:`test_e2e_server`.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support.processes import running, stop_process, twistd, wait_until

pytestmark = pytest.mark.e2e

PREFIX = "/app/"
#: A change (key, version, deleted) as the writer was told and the watchers must report it.
Change = tuple[str, str, bool]


class Target:
    """Where the watchers connect; the port changes when the node restarts."""

    def __init__(self) -> None:
        self.port = 0
        self.stopping = threading.Event()


def call(
    port: int, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, Any]:
    """One request asking for JSON; the status and the decoded body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        connection.request(
            method, path, body=body, headers={"Accept": "application/json", **headers}
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


class Watcher(threading.Thread):
    """A client thread collecting changes; ``failures`` keeps what it could not explain."""

    def __init__(self, target: Target) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.changes: list[Change] = []
        self.seqs: list[int] = []
        self.failures: list[str] = []
        self.reconnects = 0

    def saw(self, item: dict[str, Any]) -> None:
        """Record one change as the feed reported it."""
        self.changes.append((item["key"], item["stamp"], item["deleted"]))
        self.seqs.append(item["seq"])

    def run(self) -> None:
        while not self.target.stopping.is_set():
            try:
                self.watch_once()
            except (OSError, http.client.HTTPException):
                self.reconnects += 1
                time.sleep(0.05)  # the node is restarting: try again

    def watch_once(self) -> None:
        """One connection's worth of watching."""
        raise NotImplementedError


class LongPoller(Watcher):
    """Loops on ``feed=longpoll`` from the last seq seen."""

    since = 0

    def watch_once(self) -> None:
        path = f"/_changes?feed=longpoll&prefix={PREFIX}&since={self.since}&timeout=2"
        status, document = call(self.target.port, "GET", path)
        if status == 503:
            time.sleep(0.05)  # shutting down
            return
        if status != 200:
            self.failures.append(f"{status} {document}")
            self.target.stopping.wait(1)
            return
        for item in document["results"]:
            self.saw(item)
        self.since = document["last_seq"]


class StreamReader(Watcher):
    """Reads ``feed=eventsource``; reconnects with ``Last-Event-ID``."""

    last_id: str | None = None
    connects = 0

    def watch_once(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.target.port, timeout=30)
        self.connects += 1
        try:
            headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
            connection.request("GET", f"/_changes?feed=eventsource&prefix={PREFIX}", None, headers)
            response = connection.getresponse()
            if response.status != 200:
                if response.status != 503:
                    self.failures.append(f"{response.status} {response.read()!r}")
                time.sleep(0.05)
                return
            assert response.getheader("Content-Type") == "text/event-stream"
            fields: dict[str, str] = {}
            while not self.target.stopping.is_set():
                line = response.readline()
                if not line:
                    return  # the node ended the stream (shutdown): reconnect
                text = line.decode("utf-8").rstrip("\n")
                if text.startswith(":"):
                    continue
                if text:
                    name, _, value = text.partition(": ")
                    fields[name] = value
                    continue
                if fields.get("event") == "change":
                    self.saw(json.loads(fields["data"]))
                    self.last_id = fields["id"]
                elif fields:
                    self.failures.append(f"unexpected event {fields}")
                fields = {}
        finally:
            connection.close()


def write(port: int, key: str, value: bytes | None) -> Change:
    """PUT (or, with None, DELETE) a key; the change as the node acknowledged it."""
    if value is None:
        status, document = call(port, "DELETE", key)
        assert status == 200, document
        return (key, document["version"], True)
    status, document = call(port, "PUT", key, value)
    assert status in (200, 201), document
    return (key, document["version"], False)


def test_watchers_see_exactly_their_prefix_across_a_restart(tmp_path: Path) -> None:
    """Long-poll and event-stream watchers of ``/app/`` see every change under it and nothing
    else (not ``/other/...``, not ``/apple``), in order and once each, although the node is
    restarted on its sqlite file between writes: they resume from the last seq they saw."""
    target = Target()
    watchers: list[Watcher] = [LongPoller(target), StreamReader(target)]
    expected: list[Change] = []

    def seen_all() -> bool:
        return all(len(watcher.changes) >= len(expected) for watcher in watchers)

    command = twistd("sqlite:watch.db")
    try:
        with running(command, tmp_path) as server:
            server.wait_listening()
            target.port = server.port
            for watcher in watchers:
                watcher.start()
            for index in range(5):
                expected.append(write(server.port, f"/app/k{index}", b"%d" % index))
                write(server.port, f"/other/k{index}", b"x")
                write(server.port, f"/apple{index}", b"x")
                wait_until(seen_all, "the watchers to see each change")
            expected.append(write(server.port, "/app/k0", None))
            wait_until(seen_all, "the watchers to see the delete")
            # Written just before the stop: the watchers may or may not see these before it.
            for index in range(5, 9):
                expected.append(write(server.port, f"/app/k{index}", b"%d" % index))
                write(server.port, f"/other/late{index}", b"x")
            stop_process(server.process)
        with running(command, tmp_path) as again:
            again.wait_listening()
            target.port = again.port
            for index in range(9, 12):
                write(again.port, f"/other/after{index}", b"x")
                expected.append(write(again.port, f"/app/k{index}", b"%d" % index))
            expected.append(write(again.port, "/app/k5", None))
            wait_until(seen_all, "the watchers to catch up after the restart")
            time.sleep(0.5)  # room for anything extra to show up
    finally:
        target.stopping.set()
    for watcher in watchers:
        watcher.join(timeout=40)
        name = type(watcher).__name__
        assert not watcher.failures, (name, watcher.failures)
        assert watcher.changes == expected, name
        assert watcher.seqs == sorted(set(watcher.seqs)), name
    # The stream was cut by the restart and resumed with Last-Event-ID on the new node.
    assert watchers[1].connects >= 2


def watchers_gauge(port: int) -> float:
    """The node's ``navistore_watchers`` gauge, every kind summed."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        connection.request("GET", "/_metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("navistore_watchers{")
    )


def test_streams_woken_together_on_a_real_node(tmp_path: Path) -> None:
    """Event streams on one prefix, one of them gone: the node releases the one whose client
    left, and each other stream gets the write's change exactly once; a stream elsewhere gets
    none."""

    def open_stream(port: int, prefix: str) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        sock.sendall(
            b"GET /_changes?feed=eventsource&prefix=%s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            % prefix.encode()
        )
        return sock

    def read_until(sock: socket.socket, marker: bytes, *, reads: int = 50) -> bytes:
        data = b""
        for _ in range(reads):
            if marker in data:
                break
            data += sock.recv(65536)
        return data

    with running(twistd("memory:"), tmp_path) as server:
        server.wait_listening()
        port = server.port
        streams = [open_stream(port, "/app/") for _ in range(5)]
        elsewhere = open_stream(port, "/other/")
        for sock in [*streams, elsewhere]:
            read_until(sock, b"navistore change feed")
        wait_until(lambda: watchers_gauge(port) == 6, "six streams served")
        streams.pop().close()
        wait_until(lambda: watchers_gauge(port) == 5, "the closed stream released")
        status, _ = call(port, "PUT", "/app/key", b"v")
        assert status in (200, 201)
        for sock in streams:
            data = read_until(sock, b"event: change")
            assert data.count(b"event: change") == 1
            assert b'"key":"/app/key"' in data
        elsewhere.settimeout(0.5)
        with pytest.raises(socket.timeout):
            elsewhere.recv(65536)
        for sock in [*streams, elsewhere]:
            sock.close()

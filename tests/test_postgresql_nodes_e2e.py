"""End to end: two real ``twistd navistore`` processes over one PostgreSQL database, on
127.0.0.1. A long-poll on node B is answered by a write on node A, both serve the same keys,
and the feed's seqs are the database's (one feed, whichever node answers)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from support.processes import running, twistd

if TYPE_CHECKING:
    from support.postgres import PostgresServer

pytest_plugins = ["support.postgres"]
pytestmark = pytest.mark.e2e


def _long_poll(port: int, since: int, answers: list[Any]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", f"/_changes?feed=longpoll&since={since}&timeout=20")
        response = connection.getresponse()
        answers.append((response.status, json.loads(response.read()), time.monotonic()))
    finally:
        connection.close()


def test_a_write_on_one_node_answers_a_long_poll_on_the_other(
    tmp_path: Path, postgres_url: str, postgres_server: PostgresServer
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        running(twistd(postgres_url), tmp_path / "a") as node_a,
        running(twistd(postgres_url), tmp_path / "b") as node_b,
    ):
        node_a.wait_listening()
        node_b.wait_listening()
        assert node_a.request("PUT", "/first", b"one")[0] == 201
        feed = json.loads(node_b.request("GET", "/_changes?since=0")[1])
        since = feed["last_seq"]
        assert [change["key"] for change in feed["results"]] == ["/first"]
        answers: list[Any] = []
        poller = threading.Thread(target=_long_poll, args=(node_b.port, since, answers))
        poller.start()
        time.sleep(0.5)  # the long-poll is waiting on B
        assert answers == []
        written = time.monotonic()
        assert node_a.request("PUT", "/second", b"two")[0] == 201
        poller.join(30)
        assert not poller.is_alive()
        [(status, document, answered)] = answers
        assert status == 200
        assert [change["key"] for change in document["results"]] == ["/second"]
        assert answered - written < 3.0  # LISTEN/NOTIFY; at worst one 1 s poll
        database = postgres_url.rsplit("/", 1)[1]
        [(last_seq,)] = postgres_server.rows(
            database, "SELECT value FROM backend_state WHERE name = 'last_seq'"
        )
        assert document["results"][0]["seq"] == last_seq
        assert node_b.request("PUT", "/third", b"three")[0] == 201
        for node in (node_a, node_b):
            for key, value in (("/first", b"one"), ("/second", b"two"), ("/third", b"three")):
                assert node.request("GET", key)[:2] == (200, value)
        feeds = [
            json.loads(node.request("GET", "/_changes?since=0")[1]) for node in (node_a, node_b)
        ]
        assert feeds[0] == feeds[1]
        assert [change["seq"] for change in feeds[0]["results"]] == [1, 2, 3]

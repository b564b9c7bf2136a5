"""The poller of ``navistore render`` against scripted nodes: in-process HTTP servers on
127.0.0.1 that answer ``/_health`` and ``/_changes`` as a test says, so the answers a real node
gives rarely (410 ``resync_required``, a feed that goes backwards, a 503) are checked too."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import pytest

from navistore.scripts.node_client import Node
from navistore.scripts.render_nodes import NodeSet, Position
from navistore.scripts.render_watch import Event, Poller

#: An answer: status and JSON body.
Answer = tuple[int, Any]


class Script:
    """What one scripted node answers: its health, and a function of each feed request's
    ``since`` and ``prefix``; every feed request is recorded."""

    def __init__(self, node_id: str, last_seq: int, feed: Callable[[int, str], Answer]) -> None:
        self.node_id = node_id
        self.last_seq = last_seq
        self.feed = feed
        self.polls: list[tuple[int, str]] = []
        self.lock = threading.Lock()


@contextmanager
def scripted(script: Script) -> Iterator[str]:
    """Serve ``script`` on a free port of 127.0.0.1 until the block ends; yield its URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {name: values[0] for name, values in parse_qs(parts.query).items()}
            if parts.path == "/_health":
                status, body = 200, {"node_id": script.node_id, "last_seq": script.last_seq}
            elif parts.path == "/_changes":
                since, prefix = int(query["since"]), query["prefix"]
                with script.lock:
                    script.polls.append((since, prefix))
                status, body = script.feed(since, prefix)
            else:
                status, body = 404, {"error": "not_found"}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def quiet(since: int) -> Answer:
    """An empty feed page at ``since`` (the poller then waits half a second)."""
    return 200, {"last_seq": since, "results": []}


class Polling:
    """A running poller over scripted nodes: their URLs, its events and its log lines."""

    def __init__(
        self, urls: list[str], poller: Poller, events: queue.Queue[Event], logged: list[str]
    ) -> None:
        self.urls = urls
        self.poller = poller
        self.events = events
        self.logged = logged


@contextmanager
def polling(scripts: list[Script], node_id: str, seq: int, prefix: str) -> Iterator[Polling]:
    """A poller over the scripted nodes (the first in use) from ``(node_id, seq)``, stopped
    (and its nodes) at the end."""
    with ExitStack() as stack:
        urls = [stack.enter_context(scripted(script)) for script in scripts]
        events: queue.Queue[Event] = queue.Queue()
        nodes = NodeSet([Node(url, 5.0) for url in urls])
        logged: list[str] = []
        position = Position(urls[0], node_id, seq)
        poller = Poller(nodes, position, prefix, 1, events, logged.append)
        running = Polling(urls, poller, events, logged)
        poller.start()
        try:
            yield running
        finally:
            poller.stop()
            poller.join(10)
        assert not poller.is_alive()


def next_event(events: queue.Queue[Event]) -> Event:
    """The next event, within 10 s."""
    return events.get(timeout=10)


def test_changes_are_queued_and_the_seq_moves_past_them() -> None:
    """A page of changes is queued as its keys, and the next poll asks from its last_seq."""

    def feed(since: int, prefix: str) -> Answer:
        if since == 3:
            changes = [{"seq": 4, "key": "/app/a", "deleted": False}]
            return 200, {"last_seq": 5, "results": [*changes, {"seq": 5, "key": "/app/b"}]}
        return quiet(since)

    script = Script("n1", 3, feed)
    with polling([script], "n1", 3, "/app/") as run:
        assert next_event(run.events) == ("changes", ["/app/a", "/app/b"])
        for _ in range(200):
            if run.poller.cursor().seq == 5 and (5, "/app/") in script.polls:
                break
            threading.Event().wait(0.05)
        assert run.poller.cursor() == Position(run.urls[0], "n1", 5)
        assert (5, "/app/") in script.polls


def test_a_410_resyncs_from_the_seq_the_node_gives() -> None:
    """``410 resync_required`` queues a resync and continues from its ``detail.last_seq``."""

    def feed(since: int, prefix: str) -> Answer:
        if since == 2:
            detail = {"last_seq": 40, "purged_before": 30}
            return 410, {"error": "resync_required", "message": "purged", "detail": detail}
        return quiet(since)

    script = Script("n1", 40, feed)
    with polling([script], "n1", 2, "/app/") as run:
        assert next_event(run.events)[0] == "resync"
        threading.Event().wait(0.3)
        assert run.poller.cursor().seq == 40
        assert any("resync required" in line for line in run.logged), run.logged


def test_a_feed_that_goes_backwards_is_a_resync() -> None:
    """A node whose feed answers a last_seq below the position (it lost its data) is asked
    where it stands, and the renderer reads everything again from there."""
    script = Script("n1", 7, lambda since, prefix: quiet(min(since, 7)))
    with polling([script], "n1", 50, "/app/") as run:
        assert next_event(run.events)[0] == "resync"
        assert run.poller.cursor().seq == 7
        assert any("went back from seq 50 to 7" in line for line in run.logged), run.logged


def test_a_failing_node_fails_over_to_the_next_with_its_own_seq() -> None:
    """A node answering 503 is left for the next ``--url``; that node is another node (its own
    id), so the poller resyncs and polls it from its own seq, never the first node's."""
    failing = Script("n1", 100, lambda since, prefix: (503, {"error": "shutting_down"}))
    other = Script("n2", 4, lambda since, prefix: quiet(since))
    with polling([failing, other], "n1", 100, "/a") as run:
        assert next_event(run.events)[0] == "resync"
        for _ in range(200):
            if other.polls:
                break
            threading.Event().wait(0.05)
        assert other.polls and all(since == 4 for since, _prefix in other.polls)
        assert run.poller.cursor().node_id == "n2"
        assert any("it is node n2, not n1" in line for line in run.logged), run.logged


def test_a_new_prefix_rewinds_to_the_position_before_the_read() -> None:
    """When the templates read something new, the poller polls the new prefix from the
    position held before that read (so a change in between is asked for), cutting short the
    poll in progress."""
    script = Script("n1", 9, lambda since, prefix: quiet(9) if since < 9 else quiet(since))
    with polling([script], "n1", 5, "/app/") as run:
        for _ in range(200):
            if run.poller.cursor().seq == 9:
                break
            threading.Event().wait(0.05)
        assert run.poller.cursor().seq == 9
        run.poller.watch("/", Position(run.urls[0], "n1", 5))
        for _ in range(200):
            if (5, "/") in script.polls:
                break
            threading.Event().wait(0.05)
        assert (5, "/") in script.polls


@pytest.mark.parametrize("same_id", [True, False])
def test_a_rewind_from_another_node_is_ignored(same_id: bool) -> None:
    """A rewind position of another node (the poller failed over meanwhile) is not a seq of
    this node: it is ignored; one of the same node is taken."""
    script = Script("n1", 9, lambda since, prefix: quiet(since))
    with polling([script], "n1", 9, "/app/") as run:
        run.poller.watch("/", Position(run.urls[0], "n1" if same_id else "n2", 3))
        assert run.poller.cursor().seq == (3 if same_id else 9)

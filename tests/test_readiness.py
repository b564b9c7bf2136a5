"""``/_ready``: 503 with the reason until a node can serve correctly, on real processes.

A healthy node is ready; a clone that has not caught up is not (its source is down); a cache
node whose upstream stopped is not once the bound has passed; a node shutting down is not while
its requests drain, though ``/_health`` still says the process answers.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support.processes import REQUEST_TIMEOUT, Server, running, stop_process, twistd, wait_until

from navistore.readiness import UPSTREAM_READY_MIN_SECONDS, UPSTREAM_READY_POLLS

pytestmark = pytest.mark.e2e


def ready(server: Server) -> tuple[int, dict[str, Any]]:
    status, body, _ = server.request("GET", "/_ready")
    return status, json.loads(body)


def node_dir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir(exist_ok=True)
    return path


def dead_url(tmp_path: Path) -> str:
    """The URL of a node that was started and stopped: nothing listens there."""
    with running(twistd("sqlite:dead.db"), node_dir(tmp_path, "dead")) as dead:
        dead.wait_listening()
        stop_process(dead.process)
        return f"http://127.0.0.1:{dead.port}"


def test_a_healthy_node_is_ready(tmp_path: Path) -> None:
    """A node whose backend answers, that clones nothing and is no cache node, is ready: 200
    with every check passed; HEAD answers the same status."""
    with running(twistd("sqlite:node.db"), tmp_path) as node:
        node.wait_listening()
        status, document = ready(node)
        assert status == 200, document
        assert document["ready"] is True
        assert document["status"] == "ready"
        assert document["reasons"] == []
        assert set(document["checks"]) == {"backend", "clone", "upstream", "shutdown"}
        assert all(check["ok"] for check in document["checks"].values())
        assert node.request("HEAD", "/_ready")[0] == 200


def test_a_clone_that_has_not_caught_up_is_not_ready(tmp_path: Path) -> None:
    """A node cloning from a source that does not answer serves (``/_health`` 200) but is not
    ready: 503, the reason naming the clone and its source."""
    source = dead_url(tmp_path)
    command = [*twistd("sqlite:clone.db"), "--clone-from", source]
    with running(command, node_dir(tmp_path, "clone")) as clone:
        clone.wait_listening()
        status, document = ready(clone)
        assert status == 503, document
        assert document["ready"] is False
        assert document["status"] == "not_ready"
        assert [reason["check"] for reason in document["reasons"]] == ["clone"]
        assert source in document["reasons"][0]["message"]
        assert document["checks"]["backend"]["ok"] is True


def test_a_clone_that_caught_up_is_ready(tmp_path: Path) -> None:
    """Once the clone has had everything its source had, it is ready."""
    with running(twistd("sqlite:source.db"), node_dir(tmp_path, "source")) as source:
        source.wait_listening()
        for key in ("a", "b", "c"):
            assert source.request("PUT", f"/{key}", b"v")[0] == 201
        command = [*twistd("sqlite:clone.db"), "--clone-from", f"http://127.0.0.1:{source.port}"]
        with running(command, node_dir(tmp_path, "clone")) as clone:
            clone.wait_listening()
            wait_until(lambda: ready(clone)[0] == 200, "the clone to be ready")
            assert clone.request("GET", "/c")[0] == 200


def test_a_cache_node_whose_upstream_stopped_is_not_ready_after_the_bound(
    tmp_path: Path,
) -> None:
    """A cache node is ready while it reaches its upstream; once the upstream is stopped it
    answers 503 naming the upstream, no sooner than the bound (a few poll intervals) after
    the last contact."""
    bound = max(UPSTREAM_READY_MIN_SECONDS, UPSTREAM_READY_POLLS * 1.0)  # default interval 1 s
    with running(twistd("sqlite:up.db"), node_dir(tmp_path, "up")) as upstream:
        upstream.wait_listening()
        upstream_url = f"http://127.0.0.1:{upstream.port}"
        command = [*twistd("sqlite:cache.db"), "--upstream", upstream_url]
        with running(command, node_dir(tmp_path, "cache")) as cache:
            cache.wait_listening()
            wait_until(lambda: ready(cache)[0] == 200, "the cache node to be ready")
            stop_process(upstream.process)
            stopped = time.monotonic()
            wait_until(lambda: ready(cache)[0] == 503, "the cache node to be not ready")
            assert time.monotonic() - stopped >= bound - 1.0  # the last poll was <= 1 s before
            status, document = ready(cache)
            assert status == 503
            assert [reason["check"] for reason in document["reasons"]] == ["upstream"]
            assert upstream_url in document["reasons"][0]["message"]
            assert cache.request("GET", "/_health")[0] == 200  # alive, just not ready


def test_a_node_shutting_down_is_not_ready_while_it_drains(tmp_path: Path) -> None:
    """After SIGTERM, while a write waiting for a dead peer holds the drain, ``/_ready`` on an
    open connection answers 503 naming the shutdown (it answered 200 on it before)."""
    peer = dead_url(tmp_path)
    command = [*twistd("sqlite:node.db"), "--peer", peer]
    with running(command, node_dir(tmp_path, "node")) as node:
        node.wait_listening()
        kept = http.client.HTTPConnection("127.0.0.1", node.port, timeout=REQUEST_TIMEOUT)
        try:
            kept.request("GET", "/_ready")
            first = kept.getresponse()
            assert first.status == 200, first.read()
            first.read()

            def waiting_write() -> None:
                # Held until the drain times out, then cut: its answer is not what is tested.
                with contextlib.suppress(OSError, http.client.HTTPException):
                    node.request("PUT", "/k?replicas=1&timeout=30", b"v")

            writer = threading.Thread(target=waiting_write)
            writer.start()
            wait_until(lambda: _waiting(node), "the write to wait for its replica")
            node.process.send_signal(signal.SIGTERM)
            wait_until(lambda: "request(s) to finish" in node.output(), "the drain to start")
            kept.request("GET", "/_ready")
            answer = kept.getresponse()
            document = json.loads(answer.read())
            assert answer.status == 503, document
            assert [reason["check"] for reason in document["reasons"]] == ["shutdown"]
            writer.join(REQUEST_TIMEOUT + 30)
        finally:
            kept.close()


def _waiting(node: Server) -> bool:
    """Whether the node has a write waiting for replicas (read from its metrics)."""
    status, body, _ = node.request("GET", "/_metrics")
    return status == 200 and b"navistore_replicated_writes_waiting 1.0" in body

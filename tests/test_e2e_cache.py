"""End to end: a cache node (``twistd navistore --upstream URL``) through an upstream outage.

Real processes on 127.0.0.1, started and stopped with the helpers of ``test_e2e_server``. The
upstream keeps its data in sqlite, so it can be SIGKILLed and come back with it.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from support.processes import DEADLINE, Server, running, twistd, wait_until

pytestmark = pytest.mark.e2e

STALE = "X-Navistore-Stale-Seconds"
#: The most a stale header may say while the cache is in contact: it polls every second, and a
#: loaded machine may be slow to answer.
FRESH = 3


def cache_node(backend: str, upstream: str) -> list[str]:
    """The command line of a cache node of ``upstream`` on a free loopback port."""
    return [*twistd(backend), "--upstream", upstream]


def stale_seconds(server: Server, path: str) -> int | None:
    """The stale header of a GET of ``path`` (None if absent or not a 200)."""
    status, _body, response = server.request("GET", path)
    value = response.getheader(STALE)
    return int(value) if status == 200 and value is not None else None


def test_a_cache_node_serves_through_an_upstream_outage_and_catches_up(tmp_path: Path) -> None:
    """A cache node answers from its copies while its upstream is SIGKILLed, with a growing
    ``X-Navistore-Stale-Seconds``; writes and misses get 503 ``upstream_unavailable``. A write
    and a delete made on the upstream while the cache could not see it reach the cache's copies
    once the upstream is back at its address, and writes through the cache work again."""
    upstream_dir, cache_dir = tmp_path / "upstream", tmp_path / "cache"
    upstream_dir.mkdir()
    cache_dir.mkdir()
    with running(twistd("sqlite:upstream.db"), upstream_dir) as upstream:
        upstream.wait_listening()
        port = upstream.port
        url = f"http://127.0.0.1:{port}"
        assert upstream.request("PUT", "/cfg/a", b"one")[0] == 201
        assert upstream.request("PUT", "/cfg/b", b"bee")[0] == 201
        with running(cache_node("sqlite:cache.db", url), cache_dir) as cache:
            cache.wait_listening()
            status, body, response = cache.request("GET", "/cfg/a")
            assert (status, body) == (200, b"one")
            assert response.getheader("X-Navistore-Source") == url
            origin_etag = upstream.request("GET", "/cfg/a")[2].getheader("ETag")
            assert response.getheader("ETag") == origin_etag
            assert 0 <= int(response.getheader(STALE, "-1")) <= FRESH
            assert cache.request("GET", "/cfg/b")[:2] == (200, b"bee")

            upstream.process.send_signal(signal.SIGKILL)
            upstream.process.wait(DEADLINE)
            wait_until(lambda: (stale_seconds(cache, "/cfg/a") or 0) >= 2, "the copies to go stale")
            assert cache.request("GET", "/cfg/a")[:2] == (200, b"one")
            for method in ("PUT", "DELETE"):
                status, body, _ = cache.request(method, "/cfg/a", b"refused")
                assert status == 503 and json.loads(body)["error"] == "upstream_unavailable"
            status, body, _ = cache.request("GET", "/cfg/never-read")
            assert status == 503 and json.loads(body)["error"] == "upstream_unavailable"

            # The upstream changes somewhere the cache cannot reach (another port)...
            with running(twistd("sqlite:upstream.db"), upstream_dir) as elsewhere:
                elsewhere.wait_listening()
                assert elsewhere.request("PUT", "/cfg/a", b"two")[0] == 200
                assert elsewhere.request("DELETE", "/cfg/b")[0] == 200
            assert cache.request("GET", "/cfg/a")[:2] == (200, b"one")

            # ...and comes back at its address: the cache catches up.
            back_port = f"tcp:{port}:interface=127.0.0.1"
            with running(twistd("sqlite:upstream.db", port=back_port), upstream_dir) as back:
                back.wait_listening()
                wait_until(
                    lambda: cache.request("GET", "/cfg/a")[1] == b"two",
                    "the change to reach the cache",
                )
                assert (stale_seconds(cache, "/cfg/a") or 0) <= FRESH
                etag = back.request("GET", "/cfg/a")[2].getheader("ETag")
                assert cache.request("GET", "/cfg/a")[2].getheader("ETag") == etag
                assert cache.request("GET", "/cfg/b")[0] == 404
                assert cache.request("PUT", "/cfg/a", b"three")[0] == 200
                assert back.request("GET", "/cfg/a")[:2] == (200, b"three")
                assert cache.request("GET", "/cfg/a")[:2] == (200, b"three")

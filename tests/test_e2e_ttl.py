"""Per-key TTL across a replicated pair of real nodes, and the index on every answer.

Two ``twistd navistore`` processes on loopback, each pushing to the other. A key written with
``?ttl=`` on one node expires on both within a second of its deadline (their clocks as they
are: the same machine's), a watcher on the other node hears the expiry as a delete, the expiry
tombstone is the same on both, and a refresh made on the other node before the deadline keeps
the key alive on both. Read-then-watch from ``X-Navistore-Index`` misses no write.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path

from tests.support.processes import Server
from tests.test_e2e_replication import DEADLINE, Nodes, peer_url, wait_for

TTL_SECONDS = 2


def _deadline_of(server: Server, key: str) -> int:
    """The key's deadline (ms since the epoch), as the node's listing with values says."""
    parent = key.rsplit("/", 1)[0] + "/"
    status, body, _answer = server.request("GET", f"{parent}?values=true")
    assert status == 200, body
    [entry] = [entry for entry in json.loads(body)["keys"] if entry["key"] == key]
    deadline: int = entry["expires_ms"]
    return deadline


def _gone_at(servers: dict[str, Server], key: str, limit: float) -> dict[str, float]:
    """Poll every node for ``key`` every 20 ms; the wall time (ms) each first answered 404."""
    gone: dict[str, float] = {}
    started = time.monotonic()
    while len(gone) < len(servers) and time.monotonic() - started < limit:
        for name, server in servers.items():
            if name not in gone and server.request("GET", key)[0] == 404:
                gone[name] = time.time() * 1000
        time.sleep(0.02)
    return gone


def _changes(server: Server, prefix: str) -> list[dict[str, object]]:
    status, body, _answer = server.request("GET", f"/_changes?prefix={prefix}")
    assert status == 200, body
    results: list[dict[str, object]] = json.loads(body)["results"]
    return results


def test_a_ttl_expires_on_both_nodes_of_a_pair_within_a_second(tmp_path: Path) -> None:
    """A key written on A with a TTL reaches B with its deadline, reads on both with the time
    left, and is absent on both within 1 s of the deadline; B's long-poll hears the expiry as
    a delete; both nodes end with the same expiry tombstone (same stamp)."""
    with ExitStack() as stack:
        nodes = Nodes(tmp_path, stack)
        nodes.start_all(["a", "b"])
        a, b = nodes.servers["a"], nodes.servers["b"]
        for source, target in ((a, b), (b, a)):
            body = json.dumps({"url": peer_url(target)}).encode()
            assert source.request("PUT", "/_peers", body)[0] in (200, 201)
        status, _body, answer = a.request("PUT", f"/ttl/lease?ttl={TTL_SECONDS}", b"holder-1")
        assert status == 201
        wait_for(lambda: b.request("GET", "/ttl/lease")[0] == 200, "B to get it", 10, nodes.report)
        deadline = _deadline_of(a, "/ttl/lease")
        assert _deadline_of(b, "/ttl/lease") == deadline
        for server in (a, b):
            status, body, answer = server.request("GET", "/ttl/lease")
            assert (status, body) == (200, b"holder-1")
            assert 1 <= int(answer.getheader("X-Navistore-Expires") or 0) <= TTL_SECONDS
        index = int(b.request("GET", "/_health")[2].getheader("X-Navistore-Index") or 0)
        timeout = TTL_SECONDS + 5
        poll = f"/_changes?feed=longpoll&prefix=/ttl/&since={index}&timeout={timeout}"
        gone = _gone_at({"a": a, "b": b}, "/ttl/lease", TTL_SECONDS + 5)
        lateness = {name: round((at - deadline) / 1000, 3) for name, at in gone.items()}
        print(f"deadline {deadline}: absent on each node this many seconds after it: {lateness}")
        assert set(gone) == {"a", "b"}, nodes.report()
        for name, late in lateness.items():
            assert -0.05 <= late <= 1.0, (name, late)
        status, body, _answer = b.request("GET", poll)
        assert status == 200, body
        [change] = json.loads(body)["results"]
        assert change["key"] == "/ttl/lease" and change["deleted"] and change["expired"]

        def same_tombstone() -> bool:
            ends = [_changes(server, "/ttl/")[-1] for server in (a, b)]
            return all(end["deleted"] and end.get("expired") for end in ends) and (
                ends[0]["stamp"] == ends[1]["stamp"]
            )

        wait_for(same_tombstone, "the same expiry on both nodes", DEADLINE, nodes.report)
        written = 0.0
        for server in (a, b):
            scrape = server.request("GET", "/_metrics")[1].decode()
            [line] = [row for row in scrape.splitlines() if row.startswith("navistore_store_exp")]
            written += float(line.split()[-1])
        assert written >= 1  # each node wrote it, or received it first


def test_a_refresh_on_the_other_node_before_the_deadline_keeps_the_key(tmp_path: Path) -> None:
    """A key written with a TTL on A and written again with a new TTL on B before its first
    deadline lives on both past that deadline, and expires on both at the second one."""
    with ExitStack() as stack:
        nodes = Nodes(tmp_path, stack)
        nodes.start_all(["a", "b"])
        a, b = nodes.servers["a"], nodes.servers["b"]
        for source, target in ((a, b), (b, a)):
            body = json.dumps({"url": peer_url(target)}).encode()
            assert source.request("PUT", "/_peers", body)[0] in (200, 201)
        assert a.request("PUT", "/ttl/lease?ttl=2", b"one")[0] == 201
        wait_for(lambda: b.request("GET", "/ttl/lease")[0] == 200, "B to get it", 10, nodes.report)
        first = _deadline_of(a, "/ttl/lease")
        assert b.request("PUT", "/ttl/lease?ttl=4", b"two")[0] == 200
        second = _deadline_of(b, "/ttl/lease")
        wait_for(lambda: _deadline_of(a, "/ttl/lease") == second, "A to get it", 10, nodes.report)
        time.sleep(max(0.0, (first - time.time() * 1000) / 1000) + 0.5)
        for server in (a, b):
            assert server.request("GET", "/ttl/lease")[:2] == (200, b"two")
        gone = _gone_at({"a": a, "b": b}, "/ttl/lease", 10)
        assert set(gone) == {"a", "b"}
        for at in gone.values():
            assert -0.05 <= (at - second) / 1000 <= 1.0


def test_read_then_watch_from_the_index_misses_nothing(tmp_path: Path) -> None:
    """Every answer carries ``X-Navistore-Index``: a GET's (200 or 404) is at least the seq of
    what it read, a write's is its own seq, and a watch from a read's index sees the very next
    write, however soon it came."""
    with ExitStack() as stack:
        nodes = Nodes(tmp_path, stack)
        nodes.start_all(["a"])
        a = nodes.servers["a"]
        status, _body, answer = a.request("GET", "/app/missing")
        assert status == 404 and answer.getheader("X-Navistore-Index") == "0"
        status, _body, answer = a.request("PUT", "/app/db", b"one")
        assert status == 201 and answer.getheader("X-Navistore-Index") == "1"
        status, body, answer = a.request("GET", "/app/db")
        index = int(answer.getheader("X-Navistore-Index") or -1)
        assert (status, body, index) == (200, b"one", 1)
        assert a.request("PUT", "/app/db", b"two")[0] == 200  # written before the watch
        status, body, answer = a.request("GET", f"/app/db?wait=true&index={index}&timeout=5")
        assert (status, body) == (200, b"two")
        status, _body, answer = a.request("GET", "/app/?values=true")
        assert status == 200 and answer.getheader("X-Navistore-Index") == "2"
        status, _body, answer = a.request("GET", "/_no_such_endpoint")
        assert status == 404 and answer.getheader("X-Navistore-Index") == "2"

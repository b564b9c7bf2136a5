"""Conflict losers between two real node processes on loopback: writes of one key made on
each node before they are peered are a conflict both nodes list the same way (``GET
/<key>?conflicts=true``, ``GET /_conflicts``, the metric); a write made after the other was
received is not; losers stay out of the listing of the keys."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from support.processes import DEADLINE
from test_e2e_replication import Nodes, peer_url, wait_for


def _json(server: Any, path: str) -> Any:
    status, body, _response = server.request("GET", path)
    assert status == 200, (path, status, body)
    return json.loads(body)


def _metric(server: Any, name: str) -> float:
    status, body, _response = server.request("GET", "/_metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /_metrics")


def test_writes_made_apart_are_a_conflict_both_nodes_list(tmp_path: Path) -> None:
    with ExitStack() as stack:
        nodes = Nodes(tmp_path, stack)
        nodes.start_all(["a", "b"])
        a, b = nodes.servers["a"], nodes.servers["b"]
        headers = {"Content-Type": "text/plain"}
        assert a.request("PUT", "/app/db", b"written-on-a", headers)[0] == 201
        assert b.request("PUT", "/app/db", b"written-on-b", headers)[0] == 201
        assert a.request("PUT", "/app/other", b"alone")[0] == 201
        for one, other in ((a, b), (b, a)):
            assert one.request("PUT", "/_replication_slaves", peer_url(other).encode())[0] == 200

        def both_list_one() -> bool:
            return all(
                len(_json(server, "/app/db?conflicts=true")["conflicts"]) == 1 for server in (a, b)
            )

        wait_for(both_list_one, "both nodes to list the loser", DEADLINE, nodes.report)
        answers_ = [_json(server, "/app/db?conflicts=true") for server in (a, b)]
        assert answers_[0] == answers_[1]
        [loser] = answers_[0]["conflicts"]
        winner = b"written-on-a" if loser["value"] == "written-on-b" else b"written-on-b"
        for server in (a, b):
            status, body, response = server.request("GET", "/app/db")
            assert (status, body) == (200, winner)
            assert response.getheader("ETag") == f'"{answers_[0]["version"]}"'
            assert loser["version"] < answers_[0]["version"]
        assert loser["content_type"] == "text/plain" and loser["deleted"] is False
        assert loser["encoding"] == "utf-8" and loser["node"] == loser["version"][-16:]
        for server in (a, b):
            assert _json(server, "/_conflicts?prefix=/app/") == {
                "keys": [{"key": "/app/db", "conflicts": 1}],
                "next": None,
            }
            assert _json(server, "/_conflicts?prefix=/other/") == {"keys": [], "next": None}
            assert _metric(server, "navistore_store_conflict_losers_total") == 1
            listed = _json(server, "/_keys?prefix=/")["keys"]
            assert listed == ["/app/db", "/app/other"]
            assert _json(server, "/app/other?conflicts=true")["conflicts"] == []

        # A write made on b over what it received from a is sequential: no new loser, on
        # either node, once a holds it.
        status, _body, response = b.request("PUT", "/app/db", b"later-on-b", headers)
        assert status == 200
        etag = response.getheader("ETag")

        def a_has_it() -> bool:
            return a.request("GET", "/app/db")[2].getheader("ETag") == etag

        wait_for(a_has_it, "a to receive b's later write", DEADLINE, nodes.report)
        for server in (a, b):
            assert len(_json(server, "/app/db?conflicts=true")["conflicts"]) == 1
            assert _metric(server, "navistore_store_conflict_losers_total") == 1

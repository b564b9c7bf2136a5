"""A real ``twistd navistore`` on a composite backend (cache over shards of sqlite files) on
loopback: it serves writes, listings and the feed, and after a restart on the same URL it
still holds every key with the same versions and seqs, the feed going on from where it was."""

from __future__ import annotations

import json
from pathlib import Path

from support.processes import running, twistd

URL = "cache:1MiB:shards:sqlite:a.db;sqlite:b.db;sqlite:c.db"
KEYS = [f"/app{index}/setting" for index in range(12)]


def _state(server: object) -> dict[str, str]:
    status, body, _answer = server.request("GET", "/_keys?prefix=/&values=true")  # type: ignore[attr-defined]
    assert status == 200
    return {entry["key"]: entry["version"] for entry in json.loads(body)["keys"]}


def test_a_node_on_shards_serves_and_keeps_its_data_across_a_restart(tmp_path: Path) -> None:
    with running(twistd(URL), tmp_path) as server:
        server.wait_listening()
        for index, key in enumerate(KEYS):
            assert server.request("PUT", key, b"value %d" % index)[0] == 201
        assert server.request("DELETE", KEYS[0])[0] == 200
        before = _state(server)
        feed = json.loads(server.request("GET", "/_changes?since=0&limit=100")[1])
        assert [change["seq"] for change in feed["results"]] == sorted(
            change["seq"] for change in feed["results"]
        )
        newest = feed["last_seq"]
    # The keys went to several members (first segments hash apart).
    assert sum((tmp_path / name).stat().st_size > 0 for name in ("a.db", "b.db", "c.db")) >= 2
    with running(twistd(URL), tmp_path) as server:
        server.wait_listening()
        assert _state(server) == before and len(before) == len(KEYS) - 1
        assert server.request("GET", KEYS[5])[:2] == (200, b"value 5")
        assert server.request("GET", KEYS[0])[0] == 404
        assert server.request("PUT", "/later", b"after the restart")[0] == 201
        later = json.loads(server.request("GET", f"/_changes?since={newest}")[1])
        assert [change["key"] for change in later["results"]] == ["/later"]
        assert later["results"][0]["seq"] > newest

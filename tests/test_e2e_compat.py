"""The three APIs over one store and its replication: real nodes, plain HTTP.

Two ``twistd navistore --compat etcd,consul`` processes push to each other. A key written through
etcd's v2 API on one node, one written through Consul's KV API (with flags) and one written
natively are each read on the other node through all three APIs, with the same value; a TTL set
through etcd expires there for all three; and the indexes each API answers are that node's own.
"""

from __future__ import annotations

import base64
import json
import time
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlencode

from support.processes import Server
from test_e2e_replication import Nodes, peer_url, wait_for

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _etcd_value(server: Server, key: str) -> str | None:
    status, body, _answer = server.request("GET", f"/v2/keys{key}")
    if status == 404:
        return None
    assert status == 200, body
    value: str = json.loads(body)["node"]["value"]
    return value


def _consul_entry(server: Server, key: str) -> dict[str, object] | None:
    status, body, answer = server.request("GET", f"/v1/kv{key}")
    assert answer.getheader("X-Consul-Index"), "every Consul answer carries X-Consul-Index"
    if status == 404:
        return None
    assert status == 200, body
    [entry] = json.loads(body)
    found: dict[str, object] = entry
    return found


def _native(server: Server, key: str) -> bytes | None:
    status, body, _answer = server.request("GET", key)
    return None if status == 404 else body


def _pair(nodes: Nodes) -> tuple[Server, Server]:
    options = {name: ["--compat", "etcd,consul"] for name in "ab"}
    nodes.start_all(["a", "b"], options)
    a, b = nodes.servers["a"], nodes.servers["b"]
    for source, target in ((a, b), (b, a)):
        body = json.dumps({"url": peer_url(target)}).encode()
        assert source.request("PUT", "/_peers", body)[0] in (200, 201)
    return a, b


def test_writes_through_each_api_read_through_all_three_on_the_peer(tmp_path: Path) -> None:
    """etcd, Consul and native writes on A are read on B through etcd, Consul and native,
    with the same value, Consul's flags included."""
    with ExitStack() as stack:
        nodes = Nodes(tmp_path, stack)
        a, b = _pair(nodes)
        body = urlencode({"value": "from-etcd"}).encode()
        assert a.request("PUT", "/v2/keys/cross/etcd", body, FORM)[0] == 201
        status, answer_body, _answer = a.request(
            "PUT", "/v1/kv/cross/consul?flags=42", b"from-consul"
        )
        assert (status, answer_body.strip()) == (200, b"true")
        assert a.request("PUT", "/cross/native", b"from-native")[0] == 201

        def arrived() -> bool:
            return all(_native(b, f"/cross/{name}") for name in ("etcd", "consul", "native"))

        wait_for(arrived, "the three writes to reach B", 15, nodes.report)
        for name in ("etcd", "consul", "native"):
            value = f"from-{name}"
            assert _native(b, f"/cross/{name}") == value.encode()
            assert _etcd_value(b, f"/cross/{name}") == value
            entry = _consul_entry(b, f"/cross/{name}")
            assert entry is not None and entry["Key"] == f"cross/{name}"
            assert base64.b64decode(str(entry["Value"])) == value.encode()
            assert entry["Flags"] == (42 if name == "consul" else 0)
        status, _body, answer = b.request("GET", "/cross/consul")
        assert status == 200 and answer.getheader("X-Navistore-Flags") == "42"


def test_a_ttl_set_through_etcd_expires_for_every_api_on_the_peer(tmp_path: Path) -> None:
    """A key set with ``ttl=2`` through etcd on A reads on B with its time left, and is gone
    there for all three APIs within a second of its deadline."""
    with ExitStack() as stack:
        nodes = Nodes(tmp_path, stack)
        a, b = _pair(nodes)
        body = urlencode({"value": "lease", "ttl": "2"}).encode()
        status, answer_body, _answer = a.request("PUT", "/v2/keys/cross/lease", body, FORM)
        assert status == 201, answer_body
        written = time.time()
        wait_for(lambda: _native(b, "/cross/lease") == b"lease", "B to get it", 10, nodes.report)
        status, answer_body, _answer = b.request("GET", "/v2/keys/cross/lease")
        node = json.loads(answer_body)["node"]
        assert status == 200 and 1 <= node["ttl"] <= 2 and node["expiration"]
        while _native(b, "/cross/lease") is not None and time.time() - written < 5:
            time.sleep(0.02)
        gone_after = time.time() - written
        assert gone_after <= 3.0, gone_after
        assert _etcd_value(b, "/cross/lease") is None
        assert _consul_entry(b, "/cross/lease") is None


def test_each_api_answers_the_nodes_own_index(tmp_path: Path) -> None:
    """A replicated write gets the receiver's own seq: on B, etcd's ``modifiedIndex`` and
    Consul's ``ModifyIndex`` of a key written on A are the seq B's feed gives it, and every
    API's store index on B (``X-Navistore-Index``, ``X-Etcd-Index``) is B's newest seq."""
    with ExitStack() as stack:
        nodes = Nodes(tmp_path, stack)
        a, b = _pair(nodes)
        assert b.request("PUT", "/first-on-b", b"y")[0] == 201
        for number in range(3):
            assert a.request("PUT", f"/from-a/{number}", b"x")[0] == 201
        wait_for(lambda: _native(b, "/from-a/2") == b"x", "B to get them", 10, nodes.report)
        feed = json.loads(b.request("GET", "/_changes?prefix=/from-a/")[1])
        seqs = {change["key"]: change["seq"] for change in feed["results"]}
        assert sorted(seqs.values()) == [2, 3, 4]  # after B's own write, seq 1
        for key, seq in seqs.items():
            node = json.loads(b.request("GET", f"/v2/keys{key}")[1])["node"]
            entry = _consul_entry(b, key)
            assert entry is not None
            assert node["modifiedIndex"] == entry["ModifyIndex"] == seq
        native = b.request("GET", "/from-a/0")[2].getheader("X-Navistore-Index")
        etcd = b.request("GET", "/v2/keys/from-a/0")[2].getheader("X-Etcd-Index")
        assert native == etcd == "4"
        wait_for(lambda: _native(a, "/first-on-b") == b"y", "A to get B's", 10, nodes.report)
        assert a.request("GET", "/first-on-b")[2].getheader("X-Navistore-Index") == "4"

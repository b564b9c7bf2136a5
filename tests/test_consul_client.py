"""End to end: py-consul (Consul's Python client, from PyPI) against real ``twistd navistore
--compat consul`` processes on 127.0.0.1.

The client is used exactly as against Consul: put, get, recurse, keys with a separator, cas,
flags, blocking index loops, transactions, the status probes; the node's own answers (headers,
errors) are read with http.client where the library hides them.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.processes import Server, running, twistd, wait_until

try:
    import consul
except ImportError:  # pragma: no cover - the test extra installs it
    if os.environ.get("CI"):
        raise
    pytest.skip("py-consul is not installed: pip install -e '.[test]'", allow_module_level=True)

pytestmark = pytest.mark.e2e

SECRETS = {
    "admin": "consul-admin-secret-0001",
    "reader": "consul-reader-secret-002",
    "writer": "consul-writer-secret-003",
}
TOKENS = f"""
[[token]]
name = "admin"
secret = "{SECRETS["admin"]}"
allow = ["read", "write", "admin"]

[[token]]
name = "reader"
secret = "{SECRETS["reader"]}"
allow = ["read"]

[[token]]
name = "writer"
secret = "{SECRETS["writer"]}"
allow = ["read", "write"]
prefixes = ["/app/"]
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One node serving Consul's API, shared by the module's tests (each uses its own keys)."""
    command = [*twistd("memory:"), "--compat", "consul", "--max-value-size", "65536"]
    with running(command, tmp_path_factory.mktemp("consul-node")) as server:
        server.wait_listening()
        yield server


def client(server: Server, token: str | None = None) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=server.port, token=token)


def raw(
    server: Server, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, bytes, http.client.HTTPResponse]:
    return server.request(method, path, body, headers)


def test_put_get_roundtrip_and_missing_keys(node: Server) -> None:
    """A put answers true; a get returns the value with its indexes, an empty value as None,
    binary bytes unchanged; a missing key is (index, None) with an index of at least 1."""
    kv = client(node).kv
    assert kv.put("rt/db/host", "db.example") is True
    assert kv.put("rt/bin", b"\x00\xff\x10") is True
    assert kv.put("rt/empty", None) is True
    index, entry = kv.get("rt/db/host")
    assert entry["Value"] == b"db.example" and entry["Key"] == "rt/db/host"
    assert entry["ModifyIndex"] >= 1 and entry["LockIndex"] == 0 and entry["Flags"] == 0
    assert int(index) >= entry["ModifyIndex"]
    assert kv.get("rt/bin")[1]["Value"] == b"\x00\xff\x10"
    assert kv.get("rt/empty")[1]["Value"] is None
    index, missing = kv.get("rt/nothing-here")
    assert missing is None and int(index) >= 1
    # The native API sees the same key, with its leading '/'.
    assert raw(node, "GET", "/rt/db/host")[:2] == (200, b"db.example")


def test_raw_and_headers_on_every_answer(node: Server) -> None:
    """``?raw`` answers the bare bytes, unsniffable and sandboxed; every answer (200, 404, a
    400, a 405, an unknown endpoint) carries X-Consul-Index >= 1 and the leader headers."""
    client(node).kv.put("hd/page", "<script>alert(1)</script>")
    status, body, response = raw(node, "GET", "/v1/kv/hd/page?raw")
    assert (status, body) == (200, b"<script>alert(1)</script>")
    assert response.getheader("X-Content-Type-Options") == "nosniff"
    assert response.getheader("Content-Security-Policy") == "sandbox"
    answers = [
        ("GET", "/v1/kv/hd/page", 200),
        ("GET", "/v1/kv/hd/absent", 404),
        ("GET", "/v1/kv/hd/page?index=1&wait=forever", 400),
        ("GET", "/v1/kv/hd/page?index=x", 400),
        ("PUT", "/v1/kv/hd/page?flags=-1", 400),
        ("PUT", "/v1/kv/hd/folder/", 400),
        ("POST", "/v1/kv/hd/page", 405),
        ("GET", "/v1/txn", 405),
        ("GET", "/v1/acl/tokens", 404),
        ("PUT", "/v1/session/create", 400),
        ("GET", "/v1/kv/hd/page?dc=elsewhere", 500),
    ]
    for method, path, expected in answers:
        status, body, response = raw(node, method, path, b"" if method != "GET" else None)
        assert status == expected, (path, body)
        assert int(response.getheader("X-Consul-Index", "0")) >= 1, path
        assert response.getheader("X-Consul-KnownLeader") == "true", path
        assert response.getheader("X-Consul-LastContact") == "0", path
        if status >= 400 and body:
            assert response.getheader("Content-Type", "").startswith("text/plain"), path


def test_recurse_and_keys_with_separator(node: Server) -> None:
    """``recurse`` returns every key under the prefix in key order with values; ``keys`` with
    ``separator='/'`` rolls deeper keys up into ``dir/`` entries; an empty prefix is None."""
    kv = client(node).kv
    for name in ("ls/a", "ls/b/1", "ls/b/2", "ls/b/c/3", "ls/d", "lsx/other"):
        assert kv.put(name, name.upper())
    _, entries = kv.get("ls/", recurse=True)
    assert [entry["Key"] for entry in entries] == ["ls/a", "ls/b/1", "ls/b/2", "ls/b/c/3", "ls/d"]
    assert entries[1]["Value"] == b"LS/B/1"
    _, names = kv.get("ls/", keys=True, separator="/")
    assert names == ["ls/a", "ls/b/", "ls/d"]
    _, names = kv.get("ls/b/", keys=True)
    assert names == ["ls/b/1", "ls/b/2", "ls/b/c/3"]
    _, names = kv.get("ls", keys=True, separator="/")
    assert names == ["ls/", "lsx/"]
    assert kv.get("nothing-under/", recurse=True)[1] is None
    assert kv.get("nothing-under/", keys=True)[1] is None


def test_cas_puts_and_deletes(node: Server) -> None:
    """``cas=0`` creates only; ``cas=N`` writes only at ModifyIndex N; a delete with a stale
    ``cas`` keeps the key, with the right one removes it; ``recurse`` deletes a tree."""
    kv = client(node).kv
    assert kv.put("cas/k", "one", cas=0) is True
    assert kv.put("cas/k", "two", cas=0) is False
    _, entry = kv.get("cas/k")
    assert entry["Value"] == b"one"
    modify = entry["ModifyIndex"]
    assert kv.put("cas/k", "stale", cas=modify + 1000) is False
    assert kv.put("cas/k", "three", cas=modify) is True
    assert kv.put("cas/k", "again", cas=modify) is False  # the index moved on
    _, entry = kv.get("cas/k")
    assert entry["Value"] == b"three" and entry["ModifyIndex"] > modify
    assert kv.delete("cas/k", cas=modify) is False
    assert kv.get("cas/k")[1] is not None
    assert kv.delete("cas/k", cas=entry["ModifyIndex"]) is True
    assert kv.get("cas/k")[1] is None
    assert kv.delete("cas/never") is True  # as Consul: deleting nothing succeeds
    for name in ("cas/tree/a", "cas/tree/b/c", "cas/treeless"):
        kv.put(name, "x")
    assert kv.delete("cas/tree/", recurse=True) is True
    assert kv.get("cas/tree/", recurse=True)[1] is None
    assert kv.get("cas/treeless")[1] is not None


def test_values_over_the_limit_are_refused(node: Server) -> None:
    """A value over the node's ``--max-value-size`` is refused with 413, and nothing is stored.

    (The node refuses such a body as soon as its Content-Length arrives, before the Consul API
    sees the request: that 413 is the native one, without X-Consul-Index; see HANDOFF.md.)"""
    status, _, _ = raw(node, "PUT", "/v1/kv/big/one", b"x" * 70_000)
    assert status == 413
    assert client(node).kv.get("big/one")[1] is None
    assert client(node).kv.put("big/fits", b"x" * 60_000) is True


def test_flags_are_stored_per_key(node: Server) -> None:
    """``?flags=`` is kept with the key (up to 2**64-1) and comes back as ``Flags``; a write
    without flags sets them back to 0, as in Consul."""
    kv = client(node).kv
    assert kv.put("fl/k", "v", flags=42) is True
    assert kv.get("fl/k")[1]["Flags"] == 42
    assert kv.put("fl/max", "v", flags=2**64 - 1) is True
    assert kv.get("fl/max")[1]["Flags"] == 2**64 - 1
    assert kv.put("fl/k", "w") is True
    assert kv.get("fl/k")[1]["Flags"] == 0
    status, _, _ = raw(node, "PUT", f"/v1/kv/fl/k?flags={2**64}", b"v")
    assert status == 400


def test_sessions_are_refused_clearly(node: Server) -> None:
    """Acquire and release need sessions: refused with a 400 saying so, the key unchanged."""
    kv = client(node).kv
    kv.put("lock/k", "v")
    with pytest.raises(consul.ConsulException, match="sessions"):
        kv.put("lock/k", "mine", acquire="a5c6e8d4-0000-0000-0000-000000000000")
    with pytest.raises(consul.ConsulException, match="sessions"):
        client(node).session.create()
    assert kv.get("lock/k")[1]["Value"] == b"v"


def test_status_probes(node: Server) -> None:
    """The endpoints clients probe before they start: a leader, peers, the agent's version."""
    agent = client(node)
    assert agent.status.leader() == f"127.0.0.1:{node.port}"
    assert agent.status.peers() == [f"127.0.0.1:{node.port}"]
    config = agent.agent.self()["Config"]
    assert config["Datacenter"] == "dc1" and config["Version"] and config["NodeName"]
    assert agent.catalog.datacenters() == ["dc1"]


# -- blocking queries ---------------------------------------------------------------------------


class Blocked:
    """A blocking ``kv.get`` run in a thread: its result, and when it came."""

    def __init__(self, server: Server, key: str, index: str, **options: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(server, key, index, options))
        self.started = time.monotonic()
        self.thread.start()

    def _run(self, server: Server, key: str, index: str, options: dict[str, Any]) -> None:
        try:
            self.result = client(server).kv.get(key, index=index, **options)
        except BaseException as exc:
            self.error = exc

    def done(self) -> bool:
        return not self.thread.is_alive()

    def joined(self, timeout: float = 15.0) -> Any:
        self.thread.join(timeout)
        assert self.done(), "the blocking query never returned"
        if self.error is not None:
            raise self.error
        return self.result


def test_blocking_prefix_wakes_only_for_its_prefix(node: Server) -> None:
    """A blocked recursive get returns when a key under its prefix is written, not when a key
    elsewhere is (unlike Consul, hashicorp/consul#9449); the new index is higher, and the loop
    then blocks again after it."""
    kv = client(node).kv
    kv.put("bq/app/a", "1")
    index, _ = kv.get("bq/app/", recurse=True)
    blocked = Blocked(node, "bq/app/", index, recurse=True, wait="20s")
    time.sleep(0.5)
    kv.put("bq/elsewhere", "x")
    kv.put("bq/apple", "not under bq/app/")
    time.sleep(1.0)
    assert not blocked.done(), "a write elsewhere woke the blocking query"
    kv.put("bq/app/b", "2")
    new_index, entries = blocked.joined()
    assert time.monotonic() - blocked.started < 10
    assert int(new_index) > int(index)
    assert [entry["Key"] for entry in entries] == ["bq/app/a", "bq/app/b"]
    # The next turn of the loop blocks after the new index; a delete under it wakes it.
    again = Blocked(node, "bq/app/", new_index, recurse=True, wait="20s")
    time.sleep(0.5)
    assert not again.done()
    kv.delete("bq/app/a")
    _, entries = again.joined()
    assert [entry["Key"] for entry in entries] == ["bq/app/b"]


def test_blocking_key_times_out_and_returns_at_once_when_behind(node: Server) -> None:
    """A blocked get of one key returns after its wait (plus at most a sixteenth) with the
    same value when nothing changed it; an index older than the key's change returns at once;
    an index ahead of the node returns at once with a lower index, so clients reset."""
    kv = client(node).kv
    kv.put("bk/key", "v1")
    index, entry = kv.get("bk/key")
    started = time.monotonic()
    blocked = Blocked(node, "bk/key", index, wait="2s")
    time.sleep(0.3)
    kv.put("bk/other", "x")  # not this key
    later_index, same = blocked.joined()
    took = time.monotonic() - started
    assert 1.9 <= took < 2.0 + 2.0 / 16 + 1.5, took
    assert same["Value"] == b"v1" and int(later_index) >= int(index)
    started = time.monotonic()
    _, stale = kv.get("bk/key", index=entry["ModifyIndex"] - 1, wait="20s")
    assert stale["Value"] == b"v1" and time.monotonic() - started < 2
    started = time.monotonic()
    ahead_index, _ = kv.get("bk/key", index=int(later_index) + 10**9, wait="20s")
    assert int(ahead_index) < int(later_index) + 10**9 and time.monotonic() - started < 2


def watchers(server: Server) -> int:
    """The node's consul watchers now, from its metrics."""
    status, body, _ = server.request("GET", "/_metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith('navistore_watchers{kind="consul"}'):
            return int(float(line.split()[-1]))
    return 0


def test_a_client_that_leaves_releases_its_watcher(node: Server) -> None:
    """A blocking query holds one watcher while it waits; the client closing its connection
    releases it at once, long before the query's wait."""
    client(node).kv.put("gone/k", "v")
    index, _ = client(node).kv.get("gone/k")
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=5)
    try:
        request = f"GET /v1/kv/gone/k?index={index}&wait=60s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        sock.sendall(request.encode())
        wait_until(lambda: watchers(node) == 1, "the blocking query to hold a watcher", 10)
    finally:
        sock.close()
    wait_until(lambda: watchers(node) == 0, "the watcher to be released", 10)


# -- transactions -------------------------------------------------------------------------------


def b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def test_a_transaction_whose_check_fails_writes_nothing(node: Server) -> None:
    """A transaction with a failed check-index is rolled back: 409 with the failing
    operation's index, and none of its sets or deletes happened."""
    agent = client(node)
    agent.kv.put("tx/a", "A")
    agent.kv.put("tx/b", "B")
    _, entry = agent.kv.get("tx/a")
    payload = [
        {"KV": {"Verb": "set", "Key": "tx/new", "Value": b64("N")}},
        {"KV": {"Verb": "delete", "Key": "tx/b"}},
        {"KV": {"Verb": "check-index", "Key": "tx/a", "Index": entry["ModifyIndex"] + 99}},
        {"KV": {"Verb": "check-not-exists", "Key": "tx/b"}},
    ]
    with pytest.raises(consul.ConsulException, match="409") as refused:
        agent.txn.put(payload)
    body = json.loads(str(refused.value).split(" ", 1)[-1])
    assert body["Results"] is None
    assert [error["OpIndex"] for error in body["Errors"]] == [2]
    assert agent.kv.get("tx/new")[1] is None
    assert agent.kv.get("tx/b")[1]["Value"] == b"B"


def test_a_transaction_that_succeeds(node: Server) -> None:
    """A transaction of checks, sets, a cas, gets, a get-tree and deletes: 200 with results in
    operation order (values only for the gets), and every write made."""
    agent = client(node)
    agent.kv.put("ty/old", "O")
    agent.kv.put("ty/tree/x", "X")
    _, old = agent.kv.get("ty/old")
    payload = [
        {"KV": {"Verb": "check-index", "Key": "ty/old", "Index": old["ModifyIndex"]}},
        {"KV": {"Verb": "check-not-exists", "Key": "ty/new"}},
        {"KV": {"Verb": "set", "Key": "ty/new", "Value": b64("N"), "Flags": 7}},
        {"KV": {"Verb": "cas", "Key": "ty/old", "Value": b64("O2"), "Index": old["ModifyIndex"]}},
        {"KV": {"Verb": "get", "Key": "ty/new"}},
        {"KV": {"Verb": "get-tree", "Key": "ty/tree/"}},
        {"KV": {"Verb": "delete-tree", "Key": "ty/tree/"}},
        {"KV": {"Verb": "get-or-empty", "Key": "ty/absent"}},
    ]
    answer = agent.txn.put(payload)
    assert answer["Errors"] is None
    results = answer["Results"]
    assert [result["KV"]["Key"] if result["KV"] else None for result in results] == [
        "ty/new",
        "ty/old",
        "ty/new",
        "ty/tree/x",
        None,
    ]
    assert results[0]["KV"]["Value"] is None and results[1]["KV"]["Value"] is None
    assert results[2]["KV"]["Value"] == b64("N") and results[3]["KV"]["Value"] == b64("X")
    assert results[2]["KV"]["ModifyIndex"] == results[0]["KV"]["ModifyIndex"] > 0
    assert results[0]["KV"]["Flags"] == results[2]["KV"]["Flags"] == 7
    assert agent.kv.get("ty/new")[1]["Value"] == b"N"
    assert agent.kv.get("ty/new")[1]["Flags"] == 7
    assert agent.kv.get("ty/old")[1]["Value"] == b"O2"
    assert agent.kv.get("ty/tree/", recurse=True)[1] is None


def test_transaction_limits_and_refused_verbs(node: Server) -> None:
    """More than 64 operations is a 413; a session verb or a non-KV operation a 400; a bad body
    a 400; each before anything is written."""
    ops = [{"KV": {"Verb": "set", "Key": f"tz/{n}", "Value": b64("v")}} for n in range(65)]
    status, body, _ = raw(node, "PUT", "/v1/txn", json.dumps(ops).encode())
    assert status == 413 and b"too many operations" in body
    lock = [ops[0], {"KV": {"Verb": "lock", "Key": "tz/l", "Session": "s"}}]
    status, body, _ = raw(node, "PUT", "/v1/txn", json.dumps(lock).encode())
    assert status == 400 and b"sessions" in body
    node_op = [ops[0], {"Node": {"Verb": "get", "Node": {"Node": "n"}}}]
    assert raw(node, "PUT", "/v1/txn", json.dumps(node_op).encode())[0] == 400
    assert raw(node, "PUT", "/v1/txn", b"[[[[")[0] == 400
    assert client(node).kv.get("tz/", recurse=True)[1] is None


# -- tokens -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A node started with ``--tokens FILE``."""
    directory: Path = tmp_path_factory.mktemp("consul-tokens")
    tokens = directory / "tokens.toml"
    tokens.write_text(TOKENS)
    command = [*twistd("memory:"), "--compat", "consul", "--tokens", str(tokens)]
    with running(command, directory) as server:
        server.wait_listening()
        yield server


def test_tokens_in_each_of_consuls_ways(guarded: Server) -> None:
    """The token is taken from ``X-Consul-Token`` (the library's way, and CONSUL_HTTP_TOKEN's),
    ``?token=`` and ``Authorization: Bearer``; without one, reads and writes are refused."""
    assert client(guarded, SECRETS["admin"]).kv.put("app/t", "v") is True
    assert client(guarded, SECRETS["reader"]).kv.get("app/t")[1]["Value"] == b"v"
    status, _, _ = raw(guarded, "GET", f"/v1/kv/app/t?token={SECRETS['reader']}")
    assert status == 200
    auth = {"Authorization": f"Bearer {SECRETS['reader']}"}
    assert guarded.request("GET", "/v1/kv/app/t", headers=auth)[0] == 200
    with pytest.raises(consul.ACLPermissionDenied):
        client(guarded).kv.get("app/t")
    status, _, response = raw(guarded, "PUT", "/v1/kv/app/t", b"anonymous")
    assert status == 403 and int(response.getheader("X-Consul-Index", "0")) >= 1


def test_a_wrong_token_and_a_read_only_token_cannot_write(guarded: Server) -> None:
    """A token the node does not know is refused outright; a read-only token cannot put,
    delete or run a transaction that writes; a token for /app/ cannot reach other keys; the
    value stays as it was."""
    admin = client(guarded, SECRETS["admin"]).kv
    admin.put("app/w", "kept")
    admin.put("ops/w", "kept")
    with pytest.raises(consul.ConsulException):
        client(guarded, "not-a-token-of-this-node").kv.get("app/w")
    status, body, answer = raw(
        guarded, "GET", "/v1/kv/app/w", **{"X-Consul-Token": "not-a-token-of-this-node"}
    )
    assert status == 403 and b"ACL not found" in body, body  # as Consul says it
    assert int(answer.getheader("X-Consul-Index") or 0) >= 1
    reader = client(guarded, SECRETS["reader"])
    with pytest.raises(consul.ACLPermissionDenied):
        reader.kv.put("app/w", "changed")
    with pytest.raises(consul.ACLPermissionDenied):
        reader.kv.delete("app/w")
    # py-consul's txn.put sends no token (it would run as Consul's anonymous token): raw here.
    txn = json.dumps([{"KV": {"Verb": "set", "Key": "app/w", "Value": b64("changed")}}])
    status, body, _ = raw(
        guarded, "PUT", "/v1/txn", txn.encode(), **{"X-Consul-Token": SECRETS["reader"]}
    )
    assert status == 403 and b"'write' permission" in body, body
    writer = client(guarded, SECRETS["writer"])
    assert writer.kv.put("app/w2", "mine") is True
    with pytest.raises(consul.ACLPermissionDenied):
        writer.kv.put("ops/w", "changed")
    _, names = writer.kv.get("", keys=True)
    assert "app/w2" in names and all(name.startswith("app/") for name in names), names
    assert admin.get("app/w")[1]["Value"] == b"kept"
    assert admin.get("ops/w")[1]["Value"] == b"kept"


def test_a_restricted_token_blocks_only_on_what_it_sees(guarded: Server) -> None:
    """A token for /app/ blocking on every key (``recurse`` of ``""``) lists only /app/, and
    is not woken by a write outside its prefixes, only by one inside them."""
    admin = client(guarded, SECRETS["admin"]).kv
    admin.put("app/seen", "1")
    admin.put("ops/hidden", "1")
    writer = client(guarded, SECRETS["writer"]).kv
    index, entries = writer.get("", recurse=True)
    assert all(entry["Key"].startswith("app/") for entry in entries)

    def blocked_get() -> Any:
        return client(guarded, SECRETS["writer"]).kv.get("", recurse=True, index=index, wait="20s")

    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(blocked_get()))
    thread.start()
    time.sleep(0.5)
    admin.put("ops/hidden", "2")
    time.sleep(1.0)
    assert thread.is_alive(), "a write the token cannot see woke its blocking query"
    admin.put("app/seen", "2")
    thread.join(15)
    assert not thread.is_alive()
    _, entries = result[0]
    assert {entry["Key"]: entry["Value"] for entry in entries}["app/seen"] == b"2"
    assert not any(entry["Key"].startswith("ops/") for entry in entries)

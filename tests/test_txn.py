"""``POST /_txn``: several keys checked and written together, all or nothing.

In process over the memory backend (the StubTreq client of :mod:`support.api`), and over a real
sqlite node with a peer: a transaction that fails a check writes nothing, one that succeeds is
one run of consecutive seqs replicated to the peer.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from support.api import Api, api_resource
from test_e2e_replication import Nodes, peer_url, wait_for

from navistore.backend.memory import MemoryBackend
from navistore.store import Store
from navistore.web.txn import MAX_OPERATIONS, txn_endpoints

#: A version no key of these tests is at.
OTHER_VERSION = "019adc5be000-000000-0123456789abcdef"


@pytest_twisted.async_yield_fixture
async def api() -> AsyncIterator[Api]:
    store = await Store.open(MemoryBackend())
    endpoints = txn_endpoints(store, max_value_size=64 * 1024)
    yield Api(api_resource(store, extra_endpoints=endpoints))
    await store.close()


async def txn(api: Api, ops: Any) -> tuple[int, Any]:
    answer = await api.post("/_txn", json.dumps(ops).encode())
    return answer.status, answer.json()


@pytest_twisted.ensureDeferred
async def test_a_transaction_that_holds_writes_every_key_with_consecutive_seqs(api: Api) -> None:
    """Checks that hold, puts and deletes (a recursive one too): every write stored, in order,
    each answered with the version it left."""
    for path, value in (("/a", b"1"), ("/d", b"gone"), ("/e/x", b"1"), ("/e/y/z", b"2")):
        assert (await api.put(path, value)).status == 201
    version_a = (await api.get("/a")).header("ETag")
    assert version_a is not None
    ops = [
        {"op": "check", "key": "/a", "version": version_a.strip('"')},
        {"op": "check", "key": "/b", "absent": True},
        {"op": "put", "key": "/c", "value": "c1", "content_type": "text/plain"},
        {"op": "put", "key": "/bin", "value": "AP8=", "encoding": "base64", "flags": 7},
        {"op": "delete", "key": "/d"},
        {"op": "delete", "key": "/e/", "recursive": True},
        {"op": "delete", "key": "/never"},  # absent: nothing to do
    ]
    status, document = await txn(api, ops)
    assert status == 200, document
    assert document["written"] == 5
    results = document["results"]
    assert [result["op"] for result in results] == [op["op"] for op in ops]
    assert results[5]["deleted"] == 2 and results[6]["version"] is None
    answer = await api.get("/c")
    assert (answer.status, answer.body, answer.header("Content-Type")) == (200, b"c1", "text/plain")
    assert answer.header("ETag") == f'"{results[2]["version"]}"'
    assert (await api.get("/bin")).header("X-Navistore-Flags") == "7"
    for gone in ("/d", "/e/x", "/e/y/z"):
        assert (await api.get(gone)).status == 404
    changes = (await api.get("/_changes?since=4")).json()["results"]
    assert [change["seq"] for change in changes] == [5, 6, 7, 8, 9]


@pytest.mark.parametrize(
    ("failing", "why"),
    [
        ({"op": "check", "key": "/a", "version": OTHER_VERSION}, "version"),
        ({"op": "check", "key": "/a", "absent": True}, "exists"),
        ({"op": "check", "key": "/nope", "exists": True}, "does not exist"),
        ({"op": "put", "key": "/a", "value": "x", "absent": True}, "exists"),
        ({"op": "delete", "key": "/nope", "exists": True}, "does not exist"),
    ],
)  # fmt: skip
@pytest_twisted.ensureDeferred
async def test_one_failed_condition_is_a_409_naming_it_and_nothing_is_written(
    api: Api, failing: dict[str, Any], why: str
) -> None:
    """Whichever condition fails, the answer is 409 ``txn_failed`` with its index, and not
    one of the transaction's writes (before or after it) is stored."""
    assert (await api.put("/a", b"1")).status == 201
    before = await api.last_seq()
    ops = [{"op": "put", "key": "/w1", "value": "1"}, failing, {"op": "delete", "key": "/a"}]
    status, document = await txn(api, ops)
    assert status == 409 and document["error"] == "txn_failed", document
    assert document["detail"]["index"] == 1 and why in document["message"]
    assert await api.last_seq() == before
    assert (await api.get("/w1")).status == 404 and (await api.get("/a")).status == 200


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"op": "put"}',
        b'[{"op": "frob", "key": "/a"}]',
        b'[{"op": "put", "key": "/_reserved", "value": "x"}]',
        b'[{"op": "check", "key": "/a"}]',
        b'[{"op": "check", "key": "/a", "absent": true, "exists": true}]',
        b'[{"op": "delete", "key": "/a", "value": "x"}]',
        b'[{"op": "put", "key": "/a", "value": "!!", "encoding": "base64"}]',
        b'[{"op": "put", "key": "/a", "value": "x", "ttl": 0}]',
        b'[{"op": "put", "key": "/a", "value": "x", "owner": "me"}]',
        json.dumps([{"op": "check", "key": "/a", "absent": True}] * (MAX_OPERATIONS + 1)).encode(),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_malformed_transaction_is_a_400_and_writes_nothing(api: Api, body: bytes) -> None:
    """Every operation is checked before anything is read or written."""
    answer = await api.post("/_txn", body)
    assert answer.status == 400 and answer.json()["error"] == "invalid_txn", answer.body
    assert await api.last_seq() == 0


@pytest_twisted.ensureDeferred
async def test_operations_see_the_ones_before_them(api: Api) -> None:
    """A check after a put of the same key sees the put; a put with a TTL expires."""
    ops = [
        {"op": "put", "key": "/k", "value": "v", "ttl": 60},
        {"op": "check", "key": "/k", "exists": True},
        {"op": "check", "key": "/k", "absent": True},
    ]
    status, document = await txn(api, ops)
    assert status == 409 and document["detail"]["index"] == 2
    status, document = await txn(api, ops[:2])
    assert status == 200, document
    answer = await api.get("/k")
    assert answer.status == 200 and 59 <= int(answer.header("X-Navistore-Expires") or 0) <= 60


def test_a_transaction_on_a_real_node_replicates_to_its_peer(tmp_path: Path) -> None:
    """Over sqlite on a real node with a peer: the failed transaction leaves both nodes as
    they were; the one that succeeds reaches the peer whole, in one run of its seqs."""
    with ExitStack() as stack:
        nodes = Nodes(tmp_path, stack)
        nodes.start_all(["a", "b"])
        a, b = nodes.servers["a"], nodes.servers["b"]
        assert a.request("PUT", "/_peers", json.dumps({"url": peer_url(b)}).encode())[0] == 201
        assert a.request("PUT", "/app/db/host", b"db1")[0] == 201
        version = a.request("GET", "/app/db/host")[2].getheader("ETag").strip('"')
        wait_for(lambda: b.request("GET", "/app/db/host")[0] == 200, "B", 10, nodes.report)
        failing = [
            {"op": "check", "key": "/app/db/host", "version": version},
            {"op": "check", "key": "/app/db/port", "exists": True},
            {"op": "put", "key": "/app/db/user", "value": "admin"},
        ]
        status, body, _answer = a.request("POST", "/_txn", json.dumps(failing).encode())
        assert status == 409 and json.loads(body)["detail"]["index"] == 1, body
        succeeding = [
            {"op": "check", "key": "/app/db/host", "version": version},
            {"op": "put", "key": "/app/db/host", "value": "db2"},
            {"op": "put", "key": "/app/db/port", "value": "5432"},
            {"op": "put", "key": "/app/db/user", "value": "admin"},
        ]
        status, body, _answer = a.request("POST", "/_txn", json.dumps(succeeding).encode())
        assert status == 200 and json.loads(body)["written"] == 3, body
        wait_for(lambda: b.request("GET", "/app/db/user")[0] == 200, "B", 10, nodes.report)
        feed = json.loads(b.request("GET", "/_changes?since=1&prefix=/app/")[1])["results"]
        assert [change["seq"] for change in feed] == [2, 3, 4]
        assert [b.request("GET", f"/app/db/{name}")[1] for name in ("host", "port", "user")] == [
            b"db2",
            b"5432",
            b"admin",
        ]

"""The remote-HTTP backend (``http://host:port``) and the backend RPC it talks to.

The whole compliance suite runs against real nodes on 127.0.0.1 serving the backend RPC (one on
a memory backend, one on sqlite), so it checks the client and the server end to end. One node
per backend serves the whole module; each test gets
it wiped (records, and the clients' meta data) rather than a process of its own. ``reset`` keeps
the seq counter by contract, so a wiped node is not *fresh*: the few tests that need a node
whose seq never moved (:data:`NEEDS_UNUSED_NODE`) get a new process each.

Error mapping, paging and the meta namespace are checked in memory through
``treq.testing.StubTreq`` over the node's resource tree, and one test runs a real node whose
backend is another real node.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import attrs
import pytest
import pytest_twisted
from support.api import api_resource
from support.processes import LOOPBACK, Server, request, running, stop_process, twistd, url_of
from treq.testing import StubTreq
from twisted.internet import reactor as global_reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.web.resource import Resource
from twisted.web.server import Request

from navistore.backend import BackendURLError, open_backend
from navistore.backend.http import HttpBackend
from navistore.backend.memory import MemoryBackend
from navistore.errors import InvalidRecord, StorageFailure
from navistore.interfaces import ABSENT, ANY
from navistore.protocol.backend_rpc import apply_params, record_from_params
from navistore.protocol.records import record_from_json, record_to_json
from navistore.record import Record
from navistore.store import Store
from navistore.testing import BackendComplianceTests
from navistore.testing.compliance import NODE_A, NODE_B, make_record, make_stamp, make_tombstone
from navistore.web import backend_rpc as backend_rpc_module
from navistore.web.backend_rpc import backend_rpc_endpoints

#: Compliance tests that need a node whose seq counter never moved (a wiped node keeps it).
NEEDS_UNUSED_NODE = frozenset(
    {"test_fresh_backend_is_empty", "test_create_returns_the_record_with_seq"}
)

ORIGIN = "http://node.test"


def serve_backend_command(backend: str, port: str = LOOPBACK) -> list[str]:
    """The command running a node that serves the backend RPC (on a free loopback port)."""
    return [*twistd(backend, port=port), "--serve-backend"]


def wipe(server: Server) -> None:
    """Remove every record and every client meta value from a node (its seq counter stays)."""
    status, body, _response = request(server.port, "POST", "/_backend_reset?meta=forget")
    assert status == 200, body


class Nodes:
    """Nodes serving the backend RPC, one per backend URL, started when first asked for."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: dict[str, Server] = {}
        self.stack = ExitStack()

    def shared(self, backend: str) -> Server:
        """The node over ``backend`` that the module's tests share."""
        if backend not in self.started:
            workdir = self.directory / f"node{len(self.started)}"
            workdir.mkdir()
            server = self.stack.enter_context(running(serve_backend_command(backend), workdir))
            server.wait_listening()
            self.started[backend] = server
        return self.started[backend]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    """The module's shared nodes, stopped when the module is done."""
    started = Nodes(tmp_path_factory.mktemp("nodes"))
    with started.stack:
        yield started


@pytest.fixture
def shared_node(nodes: Nodes) -> Server:
    """The shared node over a memory backend."""
    return nodes.shared("memory:")


@pytest.fixture
def node(request: pytest.FixtureRequest, nodes: Nodes, tmp_path: Path) -> Iterator[Server]:
    """The node for this test, over its class's ``node_backend``: the shared one wiped, or an
    unused one when the test needs it."""
    backend = getattr(request.cls, "node_backend", "memory:")
    name = getattr(request.node, "originalname", request.node.name)
    if name not in NEEDS_UNUSED_NODE:
        shared = nodes.shared(backend)
        wipe(shared)
        yield shared
        return
    with running(serve_backend_command(backend), tmp_path) as server:
        server.wait_listening()
        yield server


class TestHttpBackendCompliance(BackendComplianceTests):
    """The HTTP backend honours the whole contract against a real node on a memory backend;
    closing and opening a client again keeps everything, since the data lives on the node."""

    persistent = True
    node_backend = "memory:"

    @pytest.fixture
    def make_backend(self, node: Server) -> HttpBackend:
        """A client of the wiped (or unused) node."""
        backend = open_backend(url_of(node))
        assert isinstance(backend, HttpBackend)
        return backend

    @pytest.fixture
    def reopen_backend(self, node: Server) -> Any:
        """A new client of the same node."""
        return lambda _old: open_backend(url_of(node))


class TestHttpBackendOverSqliteCompliance(TestHttpBackendCompliance):
    """The same against a node on a sqlite backend, whose writes go through a thread pool."""

    node_backend = "sqlite:node.db"


# -- URLs ---------------------------------------------------------------------------------------


def test_http_and_https_urls_open_http_backends() -> None:
    """``http://`` and ``https://`` URLs make HttpBackends that keep the base URL (path too)
    and take their options."""
    plain = open_backend("http://127.0.0.1:8888")
    secure = open_backend("https://storage.example:8443/navistore/?timeout=2&connections=3")
    assert isinstance(plain, HttpBackend)
    assert isinstance(secure, HttpBackend)
    assert plain.base_url == "http://127.0.0.1:8888"
    assert secure.base_url == "https://storage.example:8443/navistore"
    assert (plain.kind, plain.persistent) == ("http", True)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http:127.0.0.1:8888", id="no-authority"),
        pytest.param("http://:8888", id="no-host"),
        pytest.param("http://host:port", id="bad-port"),
        pytest.param("http://host:8888?pool=3", id="unknown-option"),
        pytest.param("http://host:8888?timeout=0", id="zero-timeout"),
        pytest.param("http://host:8888?timeout=soon", id="bad-timeout"),
        pytest.param("http://host:8888?connections=0", id="zero-connections"),
    ],
)
def test_bad_http_urls_are_refused(url: str) -> None:
    """A URL without host, with a bad port or a bad or unknown option is a BackendURLError."""
    with pytest.raises(BackendURLError):
        open_backend(url)


# -- the protocol ------------------------------------------------------------------------------

_WIRE_RECORDS = [
    pytest.param(make_record("/a", bytes(range(256))).with_seq(3), id="binary-value"),
    pytest.param(make_record("/\u00e9/\U0001f600 k?&=+%", b"v", content_type="a/b; c=d"), id="odd"),
    pytest.param(make_tombstone("/gone", 7).with_seq(12), id="tombstone"),
    pytest.param(attrs.evolve(make_record("/r"), chain=(NODE_B, NODE_A)), id="chain"),
]


@pytest.mark.parametrize("record", _WIRE_RECORDS)
def test_records_cross_the_wire_unchanged(record: Record) -> None:
    """A record survives JSON (every field, chain as stored) and an apply's query string
    plus body, for each expectation."""
    document = json.loads(json.dumps(record_to_json(record)))
    assert record_from_json(document) == record
    for expect in (ANY, ABSENT, make_stamp(99, 1, NODE_B)):
        encoded = urlencode(apply_params(record, expect), quote_via=quote)
        query = parse_qs(encoded, keep_blank_values=True)
        flat = {name: values[-1] for name, values in query.items()}
        assert record_from_params(flat, record.value) == (attrs.evolve(record, seq=None), expect)


# -- in memory: a node's resource tree over StubTreq ----------------------------------------------


async def stub_node(*, serve: bool = True) -> tuple[HttpBackend, Store, list[str]]:
    """An HttpBackend over StubTreq to a node on a memory backend; the list logs closes."""
    store = await Store.open(MemoryBackend())
    endpoints = backend_rpc_endpoints(store) if serve else None
    stub = StubTreq(api_resource(store, extra_endpoints=endpoints))
    closes: list[str] = []
    backend = HttpBackend(
        ORIGIN,
        http_client=stub,
        reactor=global_reactor,
        close_client=lambda: closes.append("closed"),
        timeout=5,
    )
    return backend, store, closes


class Answering(Resource):
    """A server answering every request with one status and body."""

    isLeaf = True

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__()
        self.status = status
        self.body = body

    def render(self, request: Request) -> bytes:
        request.setResponseCode(self.status)
        request.setHeader(b"Content-Type", b"application/json")
        return self.body


def answering(status: int, body: bytes) -> HttpBackend:
    """An HttpBackend of a server that always answers ``status`` with ``body``."""
    stub = StubTreq(Answering(status, body))
    return HttpBackend(ORIGIN, http_client=stub, reactor=global_reactor, timeout=5)


@pytest_twisted.ensureDeferred
async def test_client_meta_is_namespaced_and_forgotten_apart_from_the_node() -> None:
    """A client's meta never touches the serving node's own (its node id stays), and
    ``reset?meta=forget`` forgets the client's meta while keeping the node's."""
    backend, store, _closes = await stub_node()
    node_id = await store.get_meta("node_id")
    await backend.set_meta("node_id", "0123456789abcdef")
    assert await backend.get_meta("node_id") == "0123456789abcdef"
    assert await store.get_meta("node_id") == node_id
    stub = backend._client
    response = await stub.post(f"{ORIGIN}/_backend_reset?meta=forget")
    assert response.code == 200
    assert await backend.get_meta("node_id") is None
    assert await store.get_meta("node_id") == node_id


@pytest_twisted.ensureDeferred
async def test_long_reads_page_through_truncated_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the node cuts pages short (record count or value bytes), scan and changes keep
    reading and return exactly what one call on the backend would."""
    monkeypatch.setattr(backend_rpc_module, "MAX_PAGE", 3)
    monkeypatch.setattr(backend_rpc_module, "PAGE_BYTES", 10)
    backend, store, _closes = await stub_node()
    for n in range(10):
        await backend.apply(make_record(f"/p/{n}", b"x" * (n % 4) * 4, 1000 + n))
    await backend.apply(make_tombstone("/p/5", 5000))
    expected_scan = await store.backend.scan("/p/", None, 100, True)
    expected_changes = await store.backend.changes(0, 100)
    assert await backend.scan("/p/", limit=100, include_deleted=True) == expected_scan
    assert (
        await backend.scan("/p/", after="/p/2", limit=4)
        == [r for r in expected_scan if r.key > "/p/2" and not r.deleted][:4]
    )
    assert await backend.changes(0, limit=100) == expected_changes
    assert await backend.changes(3, limit=2) == expected_changes[3:5]


@pytest_twisted.ensureDeferred
async def test_close_releases_the_connections_once_after_pending_calls() -> None:
    """``close`` calls the pool's release once, after the pending calls completed."""
    backend, _store, closes = await stub_node()
    pending = backend.apply(make_record("/k"))
    await backend.close()
    await backend.close()
    assert (await pending).seq == 1
    assert closes == ["closed"]


@pytest_twisted.ensureDeferred
async def test_a_node_without_the_rpc_is_a_storage_failure_that_says_why() -> None:
    """A node not serving the backend RPC makes every call fail with StorageFailure naming
    ``--serve-backend``."""
    backend, _store, _closes = await stub_node(serve=False)
    with pytest.raises(StorageFailure, match="--serve-backend"):
        await backend.get("/k")


@pytest.mark.parametrize("status", [500, 502, 503])
@pytest_twisted.ensureDeferred
async def test_server_errors_are_storage_failures(status: int) -> None:
    """A 5xx answer is a StorageFailure carrying the status and the node's message."""
    body = json.dumps({"error": "backend_unavailable", "message": "disk full"}).encode()
    with pytest.raises(StorageFailure, match=f"HTTP {status}.*disk full"):
        await answering(status, body).last_seq()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html>proxy error</html>", id="not-json"),
        pytest.param(b'{"last_seq": "7"}', id="wrong-type"),
        pytest.param(b'{"records": [{"key": "/k"}], "truncated": false}', id="bad-record"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_answers_outside_the_protocol_are_storage_failures(body: bytes) -> None:
    """A 200 answer that is not the protocol's JSON is a StorageFailure, not a crash."""
    backend = answering(200, body)
    with pytest.raises(StorageFailure):
        await backend.last_seq()
    with pytest.raises(StorageFailure):
        await backend.scan("/")


@pytest_twisted.ensureDeferred
async def test_a_record_the_node_refuses_is_an_invalid_record() -> None:
    """The node's 400 ``invalid_record`` is InvalidRecord on the client side."""
    body = json.dumps({"error": "invalid_record", "message": "bad chain"}).encode()
    with pytest.raises(InvalidRecord, match="bad chain"):
        await answering(400, body).apply(make_record("/k"))


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("key=/k&stamp=nope&deleted=false&expect=any", id="bad-stamp"),
        pytest.param("stamp=0000000003e8-000000-00000000000000aa&deleted=false", id="missing"),
        pytest.param(
            "key=k&stamp=0000000003e8-000000-00000000000000aa&deleted=false&expect=any",
            id="not-canonical",
        ),
        pytest.param(
            "key=/k&stamp=0000000003e8-000000-00000000000000aa&deleted=false&expect=any&chain=x",
            id="bad-chain",
        ),
        pytest.param(
            "key=/k&stamp=0000000003e8-000000-00000000000000aa&deleted=maybe&expect=any",
            id="bad-flag",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_the_node_refuses_malformed_applies_and_stores_nothing(query: str) -> None:
    """``POST /_backend_apply`` with a missing or malformed field is 400 ``invalid_record``
    and stores nothing."""
    backend, store, _closes = await stub_node()
    response = await backend._client.post(f"{ORIGIN}/_backend_apply?{query}", data=b"v")
    assert response.code == 400
    assert (await response.json())["error"] == "invalid_record"
    assert await store.backend.last_seq() == 0


@pytest_twisted.ensureDeferred
async def test_unreachable_node_is_a_storage_failure() -> None:
    """Nothing listening at the URL: every call fails with StorageFailure."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = open_backend(f"http://127.0.0.1:{port}?timeout=5")
    try:
        with pytest.raises(StorageFailure):
            await backend.apply(make_record("/k"), ANY)
    finally:
        await backend.close()


class Silent(Protocol):
    """Accepts a connection and never answers."""


@pytest_twisted.ensureDeferred
async def test_a_node_that_never_answers_times_out_as_a_storage_failure() -> None:
    """A call taking longer than ``timeout`` fails with StorageFailure (not hanging)."""
    port = global_reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
    backend = open_backend(f"http://127.0.0.1:{port.getHost().port}?timeout=0.3")
    try:
        with pytest.raises(StorageFailure, match="get"):
            await backend.get("/k")
    finally:
        await backend.close()
        await port.stopListening()


# -- a node over a node --------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_node_stores_its_data_and_identity_on_its_remote_backend(
    shared_node: Server, tmp_path: Path
) -> None:
    """``twistd navistore --backend http://...``: writes to the front node land on the storage
    node, and the front keeps its node id across a restart (it lives in the remote meta)."""
    wipe(shared_node)
    command = twistd(url_of(shared_node))
    with running(command, tmp_path) as front:
        front.wait_listening()
        assert front.request("PUT", "/app/db", b"db1")[0] == 201
        front_id = json.loads(front.request("GET", "/_health")[1])["node_id"]
        status, body, _response = request(shared_node.port, "GET", "/_backend_get?key=/app/db")
        assert status == 200
        assert json.loads(body)["record"]["stamp"].endswith(front_id)
        storage_id = json.loads(request(shared_node.port, "GET", "/_health")[1])["node_id"]
        assert storage_id != front_id
    with running(command, tmp_path) as again:
        again.wait_listening()
        assert json.loads(again.request("GET", "/_health")[1])["node_id"] == front_id
        assert again.request("GET", "/app/db")[:2] == (200, b"db1")


@pytest.mark.e2e
def test_a_node_rides_out_a_restart_of_its_storage_node(tmp_path: Path) -> None:
    """While the storage node is down the front node answers 503 (its backend fails with
    StorageFailure); once the storage node is back on its port, the very next write works:
    no stale pooled connection is left to fail it."""
    storage_dir, front_dir = tmp_path / "storage", tmp_path / "front"
    storage_dir.mkdir()
    front_dir.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    storage_command = serve_backend_command("sqlite:storage.db", f"tcp:{port}:interface=127.0.0.1")
    with running(storage_command, storage_dir) as storage:
        storage.wait_listening()
        front_command = twistd(f"http://127.0.0.1:{port}?timeout=5")
        with running(front_command, front_dir) as front:
            front.wait_listening()
            assert front.request("PUT", "/k", b"one")[0] == 201
            stop_process(storage.process)
            status, body, _response = front.request("PUT", "/k", b"lost")
            assert status == 503, body
            assert json.loads(body)["error"] == "backend_unavailable"
            with running(storage_command, storage_dir) as again:
                again.wait_listening()
                assert front.request("PUT", "/k", b"two")[0] == 200
                assert front.request("GET", "/k")[:2] == (200, b"two")

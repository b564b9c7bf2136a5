"""Peer URLs and the peer set: validation, persistence, ``/_peers`` and ``/_replication_slaves``.

Nodes run on memory backends behind :class:`support.nodes.Network` (StubTreq over each node's
API resource) on a ``task.Clock``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from support.nodes import Network, Node, batch_of, make_clock, settle
from twisted.internet.task import Clock

from navistore.backend.memory import MemoryBackend
from navistore.links import PeerLink
from navistore.peer_urls import InvalidPeer, normalize_peer_url, parse_peer_list
from navistore.replication.peers import cursor_meta, node_meta
from navistore.replication.service import ReplicationService
from navistore.store import Store


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://a:1", "http://a:1"),
        ("HTTP://Node-2.Example.LAN:8888/", "http://node-2.example.lan:8888"),
        ("  https://127.0.0.1:443  ", "https://127.0.0.1:443"),
        ("http://[::1]:8888", "http://[::1]:8888"),
        ("http://[FE80::1]:9/", "http://[fe80::1]:9"),
    ],
)
def test_normalize_peer_url(given: str, expected: str) -> None:
    """Peer URLs are normalised: lower-case scheme and host, no trailing slash."""
    assert normalize_peer_url(given) == expected


@pytest.mark.parametrize(
    "given",
    [
        "ftp://x:21",
        "not a url",
        "",
        "   ",
        "http://",
        "http://host",
        "http://host:0",
        "http://host:99999",
        "http://host:port",
        "http://host:1/path",
        "http://host:1/?",
        "http://host:1?x=1",
        "http://host:1#top",
        "http://user:secret@host:1",
        "http://ho st:1",
        "//host:1",
        "host:1",
    ],
)
def test_normalize_refuses(given: str) -> None:
    """Anything but ``http(s)://host:port`` is refused with InvalidPeer (a ValueError)."""
    with pytest.raises(InvalidPeer):
        normalize_peer_url(given)
    assert issubclass(InvalidPeer, ValueError)


def test_parse_peer_list() -> None:
    """The classic list splits on commas (and white space), normalises and drops repeats."""
    assert parse_peer_list("") == []
    assert parse_peer_list("http://a:1,http://b:2") == ["http://a:1", "http://b:2"]
    assert parse_peer_list(" http://a:1/, HTTP://A:1\nhttp://b:2 ,") == ["http://a:1", "http://b:2"]
    with pytest.raises(InvalidPeer, match="ftp"):
        parse_peer_list("http://a:1,ftp://b:2")


@pytest_twisted.ensureDeferred
async def test_own_urls_are_refused() -> None:
    """A URL with this node's host and port is refused, whatever its scheme or spelling."""
    store = await Store.open(MemoryBackend())
    own = ["http://127.0.0.1:8888", "http://localhost:8888", "http://box.lan:8888"]
    link = PeerLink(Network(), Clock())
    service = ReplicationService(store, link=link, self_urls=own)
    for url in ["http://LOCALHOST:8888/", "https://127.0.0.1:8888", "http://box.lan:8888"]:
        with pytest.raises(InvalidPeer, match="this node itself"):
            service.check_peer(url)
    assert service.check_peer("http://127.0.0.1:8889") == "http://127.0.0.1:8889"
    with pytest.raises(InvalidPeer):
        ReplicationService(store, link=link, self_urls=own, initial_peers=[own[1]])


async def request(node: Node, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
    """Send one request to ``node``; return the status and the body (JSON decoded if JSON)."""
    response = await node.api.request(method, node.url + path, data=body or None)
    content = await response.content()
    kind = response.headers.getRawHeaders(b"Content-Type", [b""])[0]
    return response.code, json.loads(content) if kind == b"application/json" else content


@pytest_twisted.ensureDeferred
async def test_peers_endpoint_add_list_remove() -> None:
    """PUT /_peers adds (201, then 200), GET lists statuses, DELETE removes (200, then 404)."""
    clock, network = make_clock(), Network()
    node = await Node.create("a", network, clock)
    await node.start()
    status, body = await request(node, "PUT", "/_peers", b"http://B.test:1/")
    assert (status, body["url"], body["role"]) == (201, "http://b.test:1", "push")
    status, _ = await request(node, "PUT", "/_peers", b'{"url": "http://b.test:1"}')
    assert status == 200
    status, _ = await request(node, "PUT", "/_peers", b'{"url": "http://c.test:2"}')
    assert status == 201
    status, listed = await request(node, "GET", "/_peers")
    assert status == 200
    assert [peer["url"] for peer in listed] == ["http://b.test:1", "http://c.test:2"]
    assert set(listed[0]) >= {
        "url",
        "node_id",
        "cursor",
        "lag_changes",
        "lag_seconds",
        "state",
        "last_error",
        "last_success",
        "retry_at",
    }
    status, body = await request(node, "DELETE", "/_peers?url=http%3A%2F%2Fb.test%3A1")
    assert (status, body) == (200, {"url": "http://b.test:1", "removed": True})
    status, body = await request(node, "DELETE", "/_peers?url=http://b.test:1")
    assert (status, body["error"]) == (404, "unknown_peer")
    assert node.service is not None and node.service.peer_urls() == ["http://c.test:2"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/_peers", b"ftp://x:1"),
        ("PUT", "/_peers", b"not a url"),
        ("PUT", "/_peers", b""),
        ("PUT", "/_peers", b'{"url": 7}'),
        ("PUT", "/_peers", b"{not json"),
        ("PUT", "/_peers", b"\xff\xfe"),
        ("PUT", "/_peers", b"http://a.test:8888"),
        ("PUT", "/_peers", b"https://A.TEST:8888/"),
        ("DELETE", "/_peers?url=ftp://x:1", b""),
        ("PUT", "/_replication_slaves", b"http://b.test:1,http://a.test:8888"),
        ("PUT", "/_replication_slaves", b"http://b.test:1,ftp://c:2"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_invalid_peers_are_400(method: str, path: str, body: bytes) -> None:
    """Not http(s), not a URL, or this node's own URL: 400 invalid_peer; the set is unchanged."""
    clock, network = make_clock(), Network()
    node = await Node.create("a", network, clock)
    await node.start(initial_peers=["http://z.test:9"])
    status, answer = await request(node, method, path, body)
    assert status == 400
    assert answer["error"] == "invalid_peer" and answer["message"]
    assert node.service is not None and node.service.peer_urls() == ["http://z.test:9"]


@pytest_twisted.ensureDeferred
async def test_delete_peer_needs_url() -> None:
    """DELETE /_peers without ?url= is 400 invalid_parameter."""
    node = await Node.create("a", Network(), make_clock())
    await node.start()
    status, answer = await request(node, "DELETE", "/_peers")
    assert (status, answer["error"]) == (400, "invalid_parameter")


@pytest_twisted.ensureDeferred
async def test_classic_replication_slaves_round_trip() -> None:
    """PUT /_replication_slaves replaces the set, GET shows it as text, DELETE empties it."""
    node = await Node.create("a", Network(), make_clock())
    await node.start()
    status, body = await request(node, "PUT", "/_replication_slaves", b"http://b:1,http://c:2")
    assert (status, body) == (200, b"OK")
    assert await request(node, "GET", "/_replication_slaves") == (200, b"http://b:1,http://c:2")
    await request(node, "PUT", "/_replication_slaves", b"http://c:2,http://d:3")
    assert await request(node, "GET", "/_replication_slaves") == (200, b"http://c:2,http://d:3")
    await request(node, "PUT", "/_replication_slaves", b"")
    assert await request(node, "GET", "/_replication_slaves") == (200, b"")
    await request(node, "PUT", "/_replication_slaves", b"http://b:1")
    assert await request(node, "DELETE", "/_replication_slaves") == (200, b"OK")
    assert await request(node, "GET", "/_replication_slaves") == (200, b"")


@pytest_twisted.ensureDeferred
async def test_peer_set_survives_a_restart() -> None:
    """The set is kept in meta data: a new service on the same Store has the same peers, and
    ``initial_peers`` are merged into it (and persisted)."""
    clock, network = make_clock(), Network()
    node = await Node.create("a", network, clock)
    await node.start()
    await request(node, "PUT", "/_replication_slaves", b"http://b:1,http://c:2")
    await request(node, "PUT", "/_peers", b"http://d:3")
    service = await node.restart(initial_peers=["http://c:2", "http://e:4"])
    assert service.peer_urls() == ["http://b:1", "http://c:2", "http://d:3", "http://e:4"]
    service = await node.restart()
    assert [peer["url"] for peer in service.peers()] == service.peer_urls()
    assert service.peer_urls() == ["http://b:1", "http://c:2", "http://d:3", "http://e:4"]


@pytest_twisted.ensureDeferred
async def test_removing_a_peer_forgets_its_cursor() -> None:
    """A removed peer's pusher stops and its cursor and node id are forgotten: re-added, it
    gets everything again from seq 0."""
    clock, network = make_clock(), Network()
    a, b = await Node.create("a", network, clock), await Node.create("b", network, clock)
    await b.start()
    service = await a.start(initial_peers=[b.url])
    await a.store.put("/k", b"v")
    settle(clock, [a, b])
    assert service.peers()[0]["cursor"] == 1
    assert await service.remove_peer(b.url + "/")
    assert await a.store.get_meta(cursor_meta(b.url)) == "0"
    assert await a.store.get_meta(node_meta(b.url)) == ""
    assert not await service.remove_peer(b.url)
    before = len(network.posts(to=b.url))
    assert await service.add_peer(b.url)
    assert not await service.add_peer(b.url)
    settle(clock, [a, b])
    resent = [batch_of(sent).records for sent in network.posts(to=b.url)[before:]]
    assert [[record.key for record in records] for records in resent] == [["/k"]]
    assert service.peers()[0]["cursor"] == 1


@pytest_twisted.ensureDeferred
async def test_a_peer_that_answers_with_our_node_id_is_self() -> None:
    """A URL not known as ours but reaching this node is marked "self" at its first answer,
    and nothing more is pushed to it (also after a restart: its node id is remembered)."""
    clock, network = make_clock(), Network()
    node = await Node.create("a", network, clock)
    service = await node.start(initial_peers=["http://alias.test:8888"])
    assert node.resource is not None
    network.attach("http://alias.test:8888", node.resource)
    await node.store.put("/k", b"v")
    settle(clock, [node])
    assert service.peers()[0]["state"] == "self"
    assert service.peers()[0]["node_id"] == node.store.node_id
    assert len(network.posts()) == 1  # its answer named this node
    sent = len(network.sent)
    await node.store.put("/k2", b"v")
    settle(clock, [node])
    clock.advance(60)
    assert len(network.sent) == sent and service.is_idle()
    service = await node.restart()
    network.attach("http://alias.test:8888", node.resource)
    await node.store.put("/k3", b"v")
    settle(clock, [node])
    assert len(network.sent) == sent
    assert service.peers()[0]["state"] == "self"

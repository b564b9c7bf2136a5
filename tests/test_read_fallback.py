"""Read fallback (``navistore.replication.fallback``): a miss asks the peers before a 404.

Node ``a`` answers clients and falls back to ``b`` and ``c``; every node is a memory Store behind
a real ApiResource, and ``a`` reaches the others through :class:`support.nodes.Network`, on
one ``task.Clock``.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest_twisted
from support.api import api_resource
from support.nodes import Network, make_clock, wall_ms
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from navistore.backend.memory import MemoryBackend
from navistore.links import PeerLink
from navistore.replication.fallback import ReadFallback
from navistore.store import Store
from navistore.testing.fakehttp import hang

A, B, C = "http://a.test:8888", "http://b.test:8888", "http://c.test:8888"
SOURCE = "X-Navistore-Source"


@attrs.define
class Lan:
    """Three nodes; ``a`` has read fallback to ``peers`` (b and c unless a test changes it)."""

    clock: Clock
    network: Network
    stores: dict[str, Store]
    api: StubTreq
    peers: list[str]

    async def get(self, path: str) -> Any:
        response = await self.api.get(A + path)
        self.api.flush()
        return response

    def asked(self) -> list[str]:
        """The URLs ``a`` sent its questions to."""
        return [sent.url for sent in self.network.sent]


async def make_lan(fallback_everywhere: bool = False) -> Lan:
    """Nodes a, b and c; with ``fallback_everywhere``, b and c fall back to the others too."""
    clock, network = make_clock(), Network()
    stores = {url: await Store.open(MemoryBackend(), wall_ms=wall_ms(clock)) for url in (A, B, C)}
    peers = [B, C]
    resources = {}
    for url, store in stores.items():
        resolver = None
        if url == A or fallback_everywhere:
            others = [other for other in (A, B, C) if other != url]
            choose = (lambda: peers) if url == A else (lambda others=others: others)
            resolver = ReadFallback(link=PeerLink(network, clock), peers=choose)
        resources[url] = api_resource(store, max_value_size=1 << 20, miss_resolver=resolver)
        network.attach(url, resources[url])
    return Lan(clock, network, stores, StubTreq(resources[A]), peers)


@pytest_twisted.ensureDeferred
async def test_a_miss_is_answered_by_the_peer_that_has_the_key() -> None:
    """A key only ``b`` holds is answered from ``b``: value, content type and ETag are b's, and
    ``X-Navistore-Source`` names b. Nothing is stored on ``a``."""
    lan = await make_lan()
    written = await lan.stores[B].put("/cfg/x", b"from b", "text/plain")
    response = await lan.get("/cfg/x")
    assert response.code == 200 and await response.content() == b"from b"
    assert response.headers.getRawHeaders(SOURCE) == [B]
    assert response.headers.getRawHeaders("ETag") == [f'"{written.record.stamp.encode()}"']
    assert response.headers.getRawHeaders("Content-Type") == ["text/plain"]
    assert response.headers.getRawHeaders("X-Navistore-Stale-Seconds") is None
    assert await lan.stores[A].backend.get("/cfg/x") is None


@pytest_twisted.ensureDeferred
async def test_binary_values_and_awkward_keys_come_back_intact() -> None:
    """A value that is not UTF-8 (sent base64 by the peer) and a key with spaces, ``&``, ``+``
    and non-ASCII characters are found and returned byte for byte."""
    lan = await make_lan()
    key = "/dir/a b&c+d=é?"
    await lan.stores[C].put(key, b"\x00\xff\xfe binary")
    await lan.stores[C].put("/dir/a b&c+d=é?longer", b"a longer key under the same prefix")
    response = await lan.api.request("GET", A + "/dir/a%20b%26c%2Bd%3D%C3%A9%3F")
    assert response.code == 200 and await response.content() == b"\x00\xff\xfe binary"
    assert response.headers.getRawHeaders(SOURCE) == [C]


@pytest_twisted.ensureDeferred
async def test_a_local_hit_asks_no_peer() -> None:
    """A key held here is answered here, with no question to any peer and no source header."""
    lan = await make_lan()
    await lan.stores[A].put("/k", b"mine")
    response = await lan.get("/k")
    assert await response.content() == b"mine"
    assert response.headers.getRawHeaders(SOURCE) is None
    assert lan.asked() == []


@pytest_twisted.ensureDeferred
async def test_a_tombstone_or_absence_everywhere_is_a_404() -> None:
    """A peer whose copy is deleted counts as a miss, like a peer that never had the key; when
    every peer missed, the answer is the usual 404, after one question to each."""
    lan = await make_lan()
    await lan.stores[B].put("/gone", b"x")
    await lan.stores[B].delete("/gone")
    response = await lan.get("/gone")
    assert response.code == 404
    assert sorted(url.split("/_keys")[0] for url in lan.asked()) == [B, C]


@pytest_twisted.ensureDeferred
async def test_the_first_hit_wins_without_waiting_for_a_slow_peer() -> None:
    """With ``b`` not answering at all, ``c``'s hit answers at once and b's question is
    cancelled rather than left to time out."""
    lan = await make_lan()
    await lan.stores[C].put("/k", b"from c")
    lan.network.script(B, hang)
    response = await lan.get("/k")
    assert await response.content() == b"from c"
    assert response.headers.getRawHeaders(SOURCE) == [C]
    assert len(lan.network.hanging) == 1 and lan.network.hanging[0].called


@pytest_twisted.ensureDeferred
async def test_unreachable_and_slow_peers_are_misses_after_the_timeout() -> None:
    """A refused connection is a miss at once; a peer that does not answer is a miss after the
    short timeout, and then the answer is 404."""
    lan = await make_lan()
    await lan.stores[B].put("/k", b"unreachable")
    lan.network.down(B)
    lan.network.script(C, hang)
    answering = Deferred.fromCoroutine(lan.get("/k"))
    assert not answering.called
    lan.clock.advance(2)
    lan.api.flush()
    assert (await answering).code == 404


@pytest_twisted.ensureDeferred
async def test_the_peer_set_is_read_at_each_miss() -> None:
    """Peers added after the node started are asked; with no peers a miss asks nobody."""
    lan = await make_lan()
    await lan.stores[C].put("/k", b"c")
    lan.peers.clear()
    assert (await lan.get("/k")).code == 404
    assert lan.asked() == []
    lan.peers.append(C)
    assert (await lan.get("/k")).code == 200


@pytest_twisted.ensureDeferred
async def test_nodes_falling_back_to_each_other_never_bounce_a_miss() -> None:
    """When every node has read fallback, a key nobody holds costs one question per peer: a
    peer answers from its own records and does not ask its own peers in turn."""
    lan = await make_lan(fallback_everywhere=True)
    response = await lan.get("/nowhere")
    assert response.code == 404
    assert len(lan.asked()) == 2

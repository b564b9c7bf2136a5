"""The cache node (``navistore.cache_node.cache``): a read-through copy of an upstream node.

The upstream is a real ApiResource over a memory Store; the cache reaches it through
:class:`Link`, a treq-like client over ``StubTreq`` that a test can cut or slow down, and clients
reach the cache through its own ApiResource with the cache as miss resolver and write forwarder.
Both Stores and the cache's polls run on one ``task.Clock``.
"""

from __future__ import annotations

from random import Random
from typing import Any

import attrs
import pytest_twisted
from support.api import Answer, api_resource
from support.deferreds import fired
from support.nodes import make_clock, wall_ms
from treq.testing import StubTreq
from twisted.internet.address import HostnameAddress
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from navistore.backend.memory import MemoryBackend
from navistore.cache_node.cache import CURSOR_META, UPSTREAM_NODE_META, UpstreamCache
from navistore.links import PeerLink
from navistore.store import Store
from navistore.testing.fakehttp import FakeHTTP
from navistore.web import ApiResource

UPSTREAM = "http://upstream.test:8888"
STALE = "X-Navistore-Stale-Seconds"
SOURCE = "X-Navistore-Source"


class Link:
    """The cache's way to its upstream: a FakeHTTP serving the upstream's resource at UPSTREAM,
    which a test can cut, make hold an answer, and ask which paths were requested."""

    def __init__(self, resource: Resource) -> None:
        self.http = FakeHTTP()
        self.http.attach(UPSTREAM, resource)
        self._read = 0

    def peer_link(self, clock: Clock) -> PeerLink:
        """The link settings a cache reaches the upstream with, over this client."""
        return PeerLink(self.http, clock, Random(1), request_timeout=10.0)

    def cut(self, is_down: bool = True) -> None:
        """Refuse (or, with False, accept again) every connection to the upstream."""
        self.http.down(UPSTREAM, is_down)

    def paths(self) -> list[str]:
        """The path (and query) of every request made since the last call, in order."""
        sent, self._read = self.http.sent[self._read :], len(self.http.sent)
        return [each.path for each in sent]


async def call(
    client: StubTreq, method: str, path: str, body: bytes | None = None, **headers: str
) -> Answer:
    """One request through ``client``; header names use ``_`` for ``-``."""
    sent = {name.replace("_", "-"): value for name, value in headers.items()}
    response = await client.request(method, "http://node.test" + path, data=body, headers=sent)
    return Answer(response.code, response.headers, await response.content())


@attrs.define
class Pair:
    """An upstream node and a started cache node in front of it."""

    clock: Clock
    upstream: Store
    upstream_api: StubTreq
    link: Link
    store: Store
    cache: UpstreamCache
    api: StubTreq

    async def get(self, path: str, **headers: str) -> Answer:
        return await call(self.api, "GET", path, **headers)

    async def put_upstream(self, path: str, body: bytes, **headers: str) -> Answer:
        return await call(self.upstream_api, "PUT", path, body, **headers)

    def restart(self, **options: Any) -> UpstreamCache:
        """Stop the cache and start a new one on the same Store (a process restart)."""
        self.cache.stopService()
        self.cache = start_cache(self.store, self.link, self.clock, **options)
        self.api = StubTreq(cache_resource(self.store, self.cache))
        return self.cache


def start_cache(store: Store, link: Link, clock: Clock, **options: Any) -> UpstreamCache:
    """A started cache of :data:`UPSTREAM` over ``store``, reaching it through ``link``."""
    cache = UpstreamCache(store, link=link.peer_link(clock), upstream=UPSTREAM, **options)
    cache.startService()
    return cache


def cache_resource(store: Store, cache: UpstreamCache) -> ApiResource:
    """The API of a cache node: the cache resolves its misses and forwards its writes."""
    return api_resource(store, max_value_size=1 << 20, miss_resolver=cache, write_forwarder=cache)


async def make_pair(**options: Any) -> Pair:
    """A fresh upstream with ``/a`` and ``/b``, and a started cache of it (nothing cached)."""
    clock = make_clock()
    upstream = await Store.open(MemoryBackend(), wall_ms=wall_ms(clock))
    upstream_resource = api_resource(upstream, max_value_size=1 << 20)
    await upstream.put("/a", b"alpha", "text/plain")
    await upstream.put("/b", b"\x00beta\xff")
    link = Link(upstream_resource)
    store = await Store.open(MemoryBackend(), wall_ms=wall_ms(clock))
    cache = start_cache(store, link, clock, **options)
    api = StubTreq(cache_resource(store, cache))
    return Pair(clock, upstream, StubTreq(upstream_resource), link, store, cache, api)


# -- reads --------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_miss_is_fetched_kept_and_answered_with_the_upstream_version() -> None:
    """A key not held is fetched from the upstream, answered with its value, content type, ETag
    and Last-Modified (the upstream's stamp), named as coming from the upstream, and kept with
    that exact stamp and the upstream in its chain."""
    pair = await make_pair()
    origin = await call(pair.upstream_api, "GET", "/a")
    answer = await pair.get("/a")
    assert (answer.status, answer.body) == (200, b"alpha")
    for name in ("ETag", "Last-Modified", "Content-Type"):
        assert answer.header(name) == origin.header(name), name
    assert answer.header(SOURCE) == UPSTREAM
    assert answer.header(STALE) == "0"
    kept = await pair.store.backend.get("/a")
    assert kept.stamp == (await pair.upstream.get("/a")).stamp
    assert kept.chain == (pair.upstream.node_id,)
    binary = await pair.get("/b")
    assert binary.body == b"\x00beta\xff"
    assert binary.header("Content-Type") == "application/octet-stream"


@pytest_twisted.ensureDeferred
async def test_a_local_hit_does_not_ask_the_upstream() -> None:
    """Once kept, a key is answered from local data: no request reaches the upstream, and the
    answer does not claim another source."""
    pair = await make_pair()
    await pair.get("/a")
    pair.link.paths()
    answer = await pair.get("/a")
    assert (answer.status, answer.body) == (200, b"alpha")
    assert answer.header(SOURCE) is None and answer.header(STALE) == "0"
    assert pair.link.paths() == []
    assert (await pair.get("/a", If_None_Match=answer.header("ETag") or "")).status == 304


@pytest_twisted.ensureDeferred
async def test_a_key_missing_upstream_is_a_404_and_nothing_is_kept() -> None:
    """The upstream's 404 is this node's 404 (JSON, with the stale header); nothing is stored."""
    pair = await make_pair()
    answer = await pair.get("/nope")
    assert answer.status == 404 and answer.json()["error"] == "not_found"
    assert answer.header(STALE) == "0"
    assert await pair.store.backend.get("/nope") is None


@pytest_twisted.ensureDeferred
async def test_concurrent_misses_of_one_key_share_one_upstream_request() -> None:
    """Many clients missing the same key at once cause a single upstream GET."""
    pair = await make_pair()
    pair.link.paths()
    pair.link.http.hold("/a")
    waiting = [Deferred.fromCoroutine(pair.get("/a")) for _ in range(5)]
    pair.link.http.release()
    pair.api.flush()
    answers = [await each for each in waiting]
    assert [answer.body for answer in answers] == [b"alpha"] * 5
    assert pair.link.paths() == ["/a"]


@pytest_twisted.ensureDeferred
async def test_a_change_that_overtakes_a_fill_is_not_lost() -> None:
    """If the upstream changes a key while its fill is on the way, the feed counts the key as
    held: the newer version is fetched, and the late, older answer loses (last writer wins)."""
    pair = await make_pair()
    pair.link.http.hold("/a")
    reading = Deferred.fromCoroutine(pair.get("/a"))  # answered with "alpha", delivered late
    await pair.put_upstream("/a", b"newer")
    pair.clock.advance(1)
    pair.link.http.release()
    pair.api.flush()
    assert (await reading).body == b"newer"
    assert (await pair.store.get("/a")).value == b"newer"


# -- writes -------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_write_is_forwarded_and_answered_with_the_upstream_answer() -> None:
    """PUT goes to the upstream, whose answer (status, body, ETag) is the answer; the local
    copy is the new version at once, so a read here returns it without asking upstream."""
    pair = await make_pair()
    await pair.get("/a")
    answer = await call(pair.api, "PUT", "/a", b"updated", Content_Type="text/x-new")
    assert (answer.status, answer.body) == (200, b"OK")
    stored = await pair.upstream.get("/a")
    assert stored.value == b"updated" and stored.content_type == "text/x-new"
    assert answer.header("ETag") == f'"{stored.stamp.encode()}"'
    pair.link.paths()
    again = await pair.get("/a")
    assert (again.body, again.header("ETag")) == (b"updated", answer.header("ETag"))
    assert again.header("Content-Type") == "text/x-new"
    assert pair.link.paths() == []
    created = await call(pair.api, "POST", "/new", b"n", Accept="application/json")
    assert created.status == 201 and created.json()["created"] is True
    assert (await pair.upstream.get("/new")).value == b"n"


@pytest_twisted.ensureDeferred
async def test_refusals_and_conditions_are_the_upstream_answers() -> None:
    """A failed If-Match is the upstream's 412, a POST on an existing key its 409, a prefix
    delete without ?recursive its 400; the local copy is left alone."""
    pair = await make_pair()
    await pair.get("/a")
    refused = await call(pair.api, "PUT", "/a", b"x", If_Match='"not-a-version"')
    assert refused.status == 412 and refused.json()["error"] == "precondition_failed"
    assert refused.json()["detail"]["version"] == (await pair.upstream.get("/a")).stamp.encode()
    conflict = await call(pair.api, "POST", "/a", b"x")
    assert conflict.status == 409 and conflict.json()["error"] == "conflict"
    bare = await call(pair.api, "DELETE", "/doc/")
    assert bare.status == 400 and bare.json()["error"] == "recursive_required"
    assert (await pair.store.get("/a")).value == b"alpha"
    current = (await pair.get("/a")).header("ETag") or ""
    matched = await call(pair.api, "PUT", "/a", b"matched", If_Match=current)
    assert matched.status == 200 and (await pair.upstream.get("/a")).value == b"matched"


@pytest_twisted.ensureDeferred
async def test_forwarded_deletes_drop_the_local_copies() -> None:
    """DELETE of a key and ``DELETE /doc/?recursive=true`` are done upstream and answered by it;
    the local copies they removed are not served afterwards."""
    pair = await make_pair()
    for key in ("/doc/x", "/doc/y"):
        await pair.put_upstream(key, b"d")
        await pair.get(key)
    await pair.get("/a")
    deleted = await call(pair.api, "DELETE", "/a")
    assert (deleted.status, deleted.body) == (200, b"OK")
    assert (await pair.get("/a")).status == 404
    recursive = await call(pair.api, "DELETE", "/doc/?recursive=true")
    assert recursive.status == 200 and recursive.json() == {"prefix": "/doc/", "deleted": 2}
    assert (await pair.get("/doc/x")).status == 404
    assert await pair.upstream.get("/doc/y") is None


# -- following the feed -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_feed_refreshes_and_drops_held_copies_and_skips_the_rest() -> None:
    """Upstream changes reach held copies at the next poll (same version as upstream), deletes
    become tombstones here, and keys never read are not copied (not even fetched)."""
    pair = await make_pair()
    await pair.get("/a")
    await pair.get("/b")
    await pair.put_upstream("/a", b"alpha 2")
    await call(pair.upstream_api, "DELETE", "/b")
    await pair.put_upstream("/never-read", b"n")
    pair.link.paths()
    pair.clock.advance(1)
    paths = pair.link.paths()
    assert paths[0] == "/_health" and paths[1].startswith("/_changes?since=")
    assert paths[2:] == ["/a"]
    assert (await pair.store.get("/a")).stamp == (await pair.upstream.get("/a")).stamp
    dropped = await pair.store.backend.get("/b")
    assert dropped.deleted and dropped.stamp == (await pair.upstream.backend.get("/b")).stamp
    assert await pair.store.backend.get("/never-read") is None
    assert pair.cache.cursor == await pair.upstream.last_seq()
    assert await pair.store.get_meta(CURSOR_META) == str(pair.cache.cursor)


@pytest_twisted.ensureDeferred
async def test_an_idle_upstream_costs_one_health_request_per_poll() -> None:
    """When the upstream's seq has not moved, a poll is one ``/_health`` request."""
    pair = await make_pair()
    pair.link.paths()
    pair.clock.advance(1)
    pair.clock.advance(1)
    assert pair.link.paths() == ["/_health", "/_health"]


@pytest_twisted.ensureDeferred
async def test_a_new_cache_starts_at_the_end_of_the_feed() -> None:
    """A cache that holds nothing does not page through the upstream's history at first
    contact: it starts at the upstream's newest seq and remembers the upstream's node id."""
    pair = await make_pair()
    assert pair.link.paths() == ["/_health"]
    assert pair.cache.cursor == await pair.upstream.last_seq()
    assert await pair.store.get_meta(UPSTREAM_NODE_META) == pair.upstream.node_id


@pytest_twisted.ensureDeferred
async def test_a_restarted_cache_resumes_from_its_persisted_cursor() -> None:
    """After a restart the feed is read from the persisted cursor, so a change made while the
    cache was down still refreshes the copy."""
    pair = await make_pair()
    await pair.get("/a")
    cursor = pair.cache.cursor
    pair.cache.stopService()
    await pair.put_upstream("/a", b"while down")
    pair.link.paths()
    pair.restart()
    assert pair.link.paths()[:3] == ["/_health", f"/_changes?since={cursor}&limit=1000", "/a"]
    assert (await pair.get("/a")).body == b"while down"


@pytest_twisted.ensureDeferred
async def test_another_node_behind_the_url_drops_every_copy() -> None:
    """If the upstream URL now reaches another node (a wiped or replaced upstream), the copies
    of the old one are dropped and keys are fetched from the new one."""
    pair = await make_pair()
    await pair.get("/a")
    fresh = await Store.open(MemoryBackend(), wall_ms=wall_ms(pair.clock))
    await fresh.put("/a", b"from the new node")
    pair.link.http.attach(UPSTREAM, api_resource(fresh, max_value_size=1 << 20))
    pair.clock.advance(1)
    assert await pair.store.get("/a") is None
    assert pair.cache.upstream_node_id == fresh.node_id
    assert (await pair.get("/a")).body == b"from the new node"


# -- outages ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_during_an_outage_copies_are_served_stale_and_writes_are_503() -> None:
    """With the upstream unreachable the cache serves what it holds, saying how many seconds
    have passed since it last matched the upstream; writes and misses get 503
    ``upstream_unavailable`` (a 404 could be false)."""
    pair = await make_pair()
    await pair.get("/a")
    pair.link.cut()
    pair.clock.advance(30)
    answer = await pair.get("/a")
    assert (answer.status, answer.body) == (200, b"alpha")
    assert answer.header(STALE) == "30"
    assert pair.cache.status()["state"] == "backoff"
    for method in ("PUT", "POST", "DELETE"):
        refused = await call(pair.api, method, "/a", b"x")
        assert refused.status == 503, method
        assert refused.json()["error"] == "upstream_unavailable"
        assert refused.json()["detail"] == {"upstream": UPSTREAM}
    missing = await pair.get("/never-read")
    assert missing.status == 503 and missing.json()["error"] == "upstream_unavailable"
    assert (await pair.upstream.get("/a")).value == b"alpha"


@pytest_twisted.ensureDeferred
async def test_after_an_outage_the_cache_catches_up() -> None:
    """Changes made upstream during the outage reach the copies once it answers again, and the
    stale header goes back to 0."""
    pair = await make_pair()
    await pair.get("/a")
    await pair.get("/b")
    pair.link.cut()
    pair.clock.advance(20)
    await pair.put_upstream("/a", b"changed meanwhile")
    await call(pair.upstream_api, "DELETE", "/b")
    pair.link.cut(False)
    pair.clock.advance(30)
    answer = await pair.get("/a")
    assert (answer.body, answer.header(STALE)) == (b"changed meanwhile", "0")
    assert (await pair.get("/b")).status == 404
    assert pair.cache.status()["state"] == "following"


@pytest_twisted.ensureDeferred
async def test_staleness_survives_a_restart_during_an_outage() -> None:
    """A cache restarted while its upstream is down does not claim to be fresh: staleness counts
    from the last sync it persisted (at most 30 s earlier than the real one)."""
    pair = await make_pair()
    await pair.get("/a")
    pair.link.cut()
    pair.clock.advance(100)
    pair.restart()
    pair.clock.advance(5)
    assert (await pair.get("/a")).header(STALE) == "105"


@pytest_twisted.ensureDeferred
async def test_an_upstream_that_is_this_node_is_refused() -> None:
    """A cache whose upstream URL reaches itself stops following and answers misses and writes
    with 503 ``upstream_is_self`` instead of asking itself forever."""
    clock = make_clock()
    store = await Store.open(MemoryBackend(), wall_ms=wall_ms(clock))
    network = FakeHTTP()
    cache = UpstreamCache(store, link=PeerLink(network, clock), upstream=UPSTREAM)
    resource = cache_resource(store, cache)
    network.attach(UPSTREAM, resource)
    cache.startService()
    assert cache.state == "self"
    api = StubTreq(resource)
    for method in ("GET", "PUT"):
        answer = await call(api, method, "/k", b"v" if method == "PUT" else None)
        assert answer.status == 503 and answer.json()["error"] == "upstream_is_self"


def test_stopping_mid_request_ends_the_follower() -> None:
    """A cache stopped while a request to its upstream is still connecting stops following at
    once, though the cancelled attempt fails with a connection error rather than
    CancelledError: it is not taken for the upstream failing and retried forever."""
    clock = make_clock()
    store = fired(Store.open(MemoryBackend(), wall_ms=wall_ms(clock)))
    network = FakeHTTP()

    def connecting(_client: FakeHTTP) -> Deferred[Any]:
        def cancel(attempt: Deferred[Any]) -> None:
            attempt.errback(ConnectingCancelledError(HostnameAddress(b"upstream.test", 8888)))

        return Deferred(cancel)

    network.script(UPSTREAM, connecting)
    cache = UpstreamCache(store, link=PeerLink(network, clock), upstream=UPSTREAM)
    cache.startService()
    assert len(network.sent) == 1
    stopped = cache.stopService()
    assert stopped.called
    clock.advance(120)
    assert len(network.sent) == 1 and not clock.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_starting_twice_follows_once() -> None:
    """A parent service that is already running starts a child as it is added and may start
    it again with its other children: the cache still polls once per interval."""
    pair = await make_pair()
    pair.cache.startService()
    pair.link.paths()
    pair.clock.advance(1)
    assert pair.link.paths() == ["/_health"]


@pytest_twisted.ensureDeferred
async def test_before_any_contact_staleness_counts_from_the_start() -> None:
    """A cache that has never reached its upstream does not claim fresh data: the stale header
    counts the seconds since it started."""
    clock = make_clock()
    store = await Store.open(MemoryBackend(), wall_ms=wall_ms(clock))
    await store.put("/old", b"left from before")
    link = Link(api_resource(store, max_value_size=1))
    link.cut()
    cache = start_cache(store, link, clock)
    clock.advance(7)
    answer = await call(StubTreq(cache_resource(store, cache)), "GET", "/old")
    assert (answer.status, answer.header(STALE)) == (200, "7")

"""The hot paths of the API (a plain GET or PUT of a key, answered without a coroutine) answer
exactly as the general path does, and hand over to it whatever they cannot answer at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from support.deferreds import pumped
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers

from navistore.backend.memory import MemoryBackend
from navistore.backend.record_cache import RecordCache
from navistore.backend.sqlite import SqliteBackend
from navistore.interfaces import IStorageBackend
from navistore.store import Store
from navistore.watch_hub import WatchHub
from navistore.web import AccessPolicy, ApiResource

ORIGIN = "http://node.test"
#: Headers that differ between any two answers.
VARYING = {b"date", b"etag", b"last-modified"}


class CountingResource(ApiResource):
    """An ApiResource that counts the requests which took the general (coroutine) path."""

    general = 0

    async def _dispatch(self, request: Any, route: Any) -> Any:
        self.general += 1
        return await super()._dispatch(request, route)


@pytest.fixture(params=["memory", "sqlite-reactor", "sqlite-thread", "sqlite-cached"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> IStorageBackend:
    if request.param == "memory":
        return MemoryBackend()
    if request.param == "sqlite-cached":
        return RecordCache(SqliteBackend(tmp_path / "store.db"))
    writer = request.param.split("-")[1]
    return SqliteBackend(tmp_path / "store.db", writer=writer)


@pytest_twisted.async_yield_fixture
async def node(backend: IStorageBackend) -> AsyncIterator[tuple[CountingResource, StubTreq]]:
    store = await Store.open(backend)
    resource = CountingResource(
        store,
        max_value_size=1024,
        watch_hub=WatchHub(store, clock=Clock()),
        access=AccessPolicy.open(),
    )
    yield resource, StubTreq(resource)
    await store.close()


async def answer(
    stub: StubTreq, method: str, url: str, body: bytes | None = None, **headers: str
) -> tuple[int, dict[bytes, list[bytes]], bytes]:
    sent = stub.request(
        method,
        ORIGIN + url,
        data=body,
        headers={name.replace("_", "-"): value for name, value in headers.items()},
    )
    response = await pumped(stub, sent)
    content = await pumped(stub, response.content())
    raw: Headers = response.headers
    return response.code, {name.lower(): values for name, values in raw.getAllRawHeaders()}, content


def comparable(headers: dict[bytes, list[bytes]]) -> dict[bytes, list[bytes]]:
    return {name: values for name, values in headers.items() if name not in VARYING}


@pytest_twisted.ensureDeferred
async def test_plain_get_and_put_answer_as_the_general_path(
    node: tuple[CountingResource, StubTreq],
) -> None:
    """A plain PUT and GET (fast path) and the same with a query string (general path) give
    the same status, headers and body; only plain ones skip the general path."""
    resource, stub = node
    fast_put = await answer(stub, "PUT", "/app/a", b"one", Content_Type="text/plain")
    assert resource.general == 0
    general_put = await answer(stub, "PUT", "/app/b?x=1", b"one", Content_Type="text/plain")
    assert resource.general == 1
    assert fast_put[0] == general_put[0] == 201
    assert comparable(fast_put[1]) == comparable(general_put[1])
    assert fast_put[2] == general_put[2] == b"OK"
    again = await answer(stub, "PUT", "/app/a", b"two", Content_Type="text/plain")
    assert again[0] == 200 and resource.general == 1

    fast_get = await answer(stub, "GET", "/app/a")
    general_get = await answer(stub, "GET", "/app/a?x=1")
    assert resource.general == 2
    assert fast_get[0] == general_get[0] == 200
    # The same record: every header but Date is equal, ETag and Last-Modified included.
    fast_get[1].pop(b"date")
    general_get[1].pop(b"date")
    assert fast_get[1] == general_get[1]
    assert fast_get[2] == general_get[2] == b"two"
    assert fast_get[1][b"content-type"] == [b"text/plain"]
    assert fast_get[1][b"x-content-type-options"] == [b"nosniff"]


@pytest_twisted.ensureDeferred
async def test_json_put_answer_is_the_same(node: tuple[CountingResource, StubTreq]) -> None:
    """``Accept: application/json`` on a plain PUT gets the general path's JSON document."""
    resource, stub = node
    status, headers, body = await answer(stub, "PUT", "/j", b"v", Accept="application/json")
    assert status == 201 and headers[b"content-type"] == [b"application/json"]
    assert b'"created":true' in body and resource.general == 0


@pytest.mark.parametrize(
    ("method", "url", "headers"),
    [
        ("GET", "/missing", {}),  # a 404 and its JSON body
        ("GET", "/app/", {}),  # a listing
        ("GET", "/listkeys", {}),  # an endpoint
        ("GET", "/_health", {}),
        ("GET", "/a%ZZ", {}),  # an invalid key: the general path's 400
        ("GET", "/k", {"If_None_Match": "*"}),  # conditions
        ("PUT", "/k", {"If_Match": "*"}),
        ("PUT", "/k", {"If_None_Match": "*"}),
        ("PUT", "/app/", {}),
    ],
)
@pytest_twisted.ensureDeferred
async def test_what_the_fast_path_leaves_to_the_general_path(
    node: tuple[CountingResource, StubTreq], method: str, url: str, headers: dict[str, str]
) -> None:
    """Misses, prefixes, endpoints, invalid keys and conditional requests take the general
    path, whose answers the other tests of the API check."""
    resource, stub = node
    await answer(stub, "PUT", "/k", b"v")
    before = resource.general
    await answer(stub, method, url, b"x" if method == "PUT" else None, **headers)
    assert resource.general == before + 1


@pytest_twisted.ensureDeferred
async def test_over_long_body_is_refused_whole(node: tuple[CountingResource, StubTreq]) -> None:
    """A body over the limit is the general path's 413 and stores nothing."""
    _resource, stub = node
    status, _headers, _body = await answer(stub, "PUT", "/big", b"x" * 1025)
    assert status == 413
    status, _headers, _body = await answer(stub, "GET", "/big")
    assert status == 404


@pytest_twisted.ensureDeferred
async def test_write_in_flight_is_read_by_the_general_path(tmp_path: Path) -> None:
    """With writer=thread, a GET of a key whose write is still being committed is not answered
    from the reader connection (it would miss the write): the general path queues it behind."""
    backend = SqliteBackend(tmp_path / "store.db", writer="thread")
    store = await Store.open(backend)
    resource = CountingResource(
        store,
        max_value_size=1024,
        watch_hub=WatchHub(store, clock=Clock()),
        access=AccessPolicy.open(),
    )
    stub = StubTreq(resource)
    try:
        await answer(stub, "PUT", "/k", b"old")
        writing = Deferred.fromCoroutine(store.put("/k", b"new"))  # not awaited: in flight
        status, _headers, body = await answer(stub, "GET", "/k")
        await writing
        assert (status, body) == (200, b"new")
        assert resource.general == 1  # only the GET: the PUTs were plain
    finally:
        await store.close()

"""``POST /_bulk`` (navistore.web.bulk) and ``Store.put_many``.

Most tests send requests through ``treq.testing.StubTreq`` to the API resource with the bulk
endpoint, over a memory backend; the group-commit test runs the sqlite backend on the real
reactor; the body-limit test speaks raw HTTP to a listening Site (the limit is the Site's); the
last test bulk-loads a real ``twistd -n navistore`` process on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from support.api import ORIGIN, Answer, Api, api_resource
from support.deferreds import fired
from support.nodes import Network, Node, make_clock, settle
from support.processes import REQUEST_TIMEOUT, running, twistd
from support.rawhttp import Server, connect, listen, parse_response, until_closed
from twisted.internet.task import Clock

import navistore.backend.sqlite_schema as sqlite_module
from navistore.backend.memory import MemoryBackend
from navistore.backend.sqlite import SqliteBackend
from navistore.clock import Stamp
from navistore.hooks import ForwardedAnswer, ForwardedWrite
from navistore.record import Record
from navistore.store import Store
from navistore.watch_hub import WatchHub
from navistore.web import AccessPolicy, make_site
from navistore.web.bulk import CHECK_ENTRIES, COMMIT_ENTRIES, BulkEndpoints, bulk_endpoints
from navistore.web.request import bulk_body_limit

MAX_VALUE_SIZE = 64


class BulkApi(Api):
    """A client of a node's API with the bulk endpoint (answers pumped: sqlite commits later)."""

    def __init__(
        self,
        store: Store,
        *,
        max_body_size: int | None = None,
        write_forwarder: Any = None,
        watch_hub: WatchHub | None = None,
        clock: Any = None,
        max_entries: int = 100_000,
    ) -> None:
        bulk = BulkEndpoints(
            store,
            max_value_size=MAX_VALUE_SIZE,
            max_body_size=max_body_size,
            write_forwarder=write_forwarder,
            clock=clock,
            max_entries=max_entries,
        )
        resource = api_resource(
            store,
            max_value_size=MAX_VALUE_SIZE,
            extra_endpoints=bulk.endpoints(),
            write_forwarder=write_forwarder,
            watch_hub=watch_hub,
        )
        super().__init__(resource, pump=True)

    async def get(self, path: str, **params: Any) -> Answer:
        """``GET path?params``."""
        return await self.request("GET", path, params=params)

    async def bulk(self, entries: Any, **params: str) -> Answer:
        """POST ``entries`` (JSON-encoded unless already bytes) to ``/_bulk``."""
        body = entries if isinstance(entries, bytes) else json.dumps(entries).encode()
        return await self.request("POST", "/_bulk", body, params=params)


@pytest.fixture
def api(store: Store) -> BulkApi:
    return BulkApi(store)


async def nothing_written(store: Store) -> None:
    """Check the node never stored a record."""
    assert await store.last_seq() == 0
    assert (await store.list("/")).records == []


SAMPLE = [
    {"key": "/app/text", "value": "hello", "content_type": "text/plain; charset=utf-8"},
    {"key": "app/unicode", "value": "h\u00e9llo \u2713", "encoding": "utf-8"},
    {
        "key": "/app/bin",
        "value": base64.b64encode(b"\x00\xff\xfe binary").decode(),
        "encoding": "base64",
        "content_type": "application/x-thing",
    },
    {"key": "/app/empty", "value": ""},
]
EXPECTED = {
    "/app/text": (b"hello", "text/plain; charset=utf-8"),
    "/app/unicode": ("h\u00e9llo \u2713".encode(), "application/octet-stream"),
    "/app/bin": (b"\x00\xff\xfe binary", "application/x-thing"),
    "/app/empty": (b"", "application/octet-stream"),
}


# -- writing and reading back ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_round_trip_of_text_and_binary_values(api: BulkApi) -> None:
    """Entries with UTF-8 and base64 values, with and without content types, are stored as
    given (keys normalised, the default content type filled in) and read back byte for byte."""
    answer = await api.bulk(SAMPLE)
    assert answer.status == 200
    assert answer.json() == {"received": 4, "written": 4}
    for key, (value, content_type) in EXPECTED.items():
        got = await api.get(key)
        assert (got.status, got.body, got.header("Content-Type")) == (200, value, content_type)


@pytest_twisted.ensureDeferred
async def test_a_listing_with_values_feeds_back_as_a_restore(api: BulkApi) -> None:
    """A listing with ``?values=true`` (its ``keys`` array, or the whole page) loads into
    another node as the same keys, values and content types, with versions of its own."""
    assert (await api.bulk(SAMPLE)).status == 200
    listing = await api.get("/app/", values="true")
    page = listing.json()
    for body in (json.dumps(page["keys"]).encode(), listing.body):
        restored = BulkApi(await Store.open(MemoryBackend()))
        answer = await restored.bulk(body)
        assert answer.json() == {"received": 4, "written": 4}
        copy = (await restored.get("/app/", values="true")).json()
        assert [(e["key"], e["value"], e["encoding"], e["content_type"]) for e in copy["keys"]] == [
            (e["key"], e["value"], e["encoding"], e["content_type"]) for e in page["keys"]
        ]
        # Every record got a fresh stamp of the restoring node: "version" is ignored.
        assert {e["version"] for e in copy["keys"]}.isdisjoint(e["version"] for e in page["keys"])
        await restored.store.close()


@pytest_twisted.ensureDeferred
async def test_verbose_answer_lists_versions_and_seqs(api: BulkApi) -> None:
    """``?verbose=true`` names each stored key with its version (its ETag) and seq."""
    await api.request("PUT", "/before", b"x")
    answer = await api.bulk(SAMPLE[:2], verbose="true")
    records = answer.json()["records"]
    assert [record["key"] for record in records] == ["/app/text", "/app/unicode"]
    assert [record["seq"] for record in records] == [2, 3]
    for record in records:
        assert (await api.get(record["key"])).header("ETag") == f'"{record["version"]}"'


@pytest_twisted.ensureDeferred
async def test_later_duplicate_wins_and_is_written_once(api: BulkApi, store: Store) -> None:
    """A key given twice is written once, with the later entry, at the later entry's place in
    the seq order, as if the puts had run one after another."""
    entries = [
        {"key": "/dup", "value": "first", "content_type": "text/first"},
        {"key": "/other", "value": "o"},
        {"key": "/dup", "value": "second", "content_type": "text/second"},
    ]
    answer = await api.bulk(entries)
    assert answer.json() == {"received": 3, "written": 2}
    got = await api.get("/dup")
    assert (got.body, got.header("Content-Type")) == (b"second", "text/second")
    changes = (await store.changes(0)).records
    assert [(record.seq, record.key) for record in changes] == [(1, "/other"), (2, "/dup")]


@pytest_twisted.ensureDeferred
async def test_an_empty_load_writes_nothing(api: BulkApi, store: Store) -> None:
    answer = await api.bulk([])
    assert (answer.status, answer.json()) == (200, {"received": 0, "written": 0})
    await nothing_written(store)


@pytest_twisted.ensureDeferred
async def test_bulk_writes_overwrite_existing_keys(api: BulkApi) -> None:
    """A bulk write is a plain put: it replaces whatever the key held, with a newer version."""
    old = await api.request("PUT", "/app/text", b"old")
    assert (await api.bulk(SAMPLE[:1])).status == 200
    new = await api.get("/app/text")
    assert new.body == b"hello"
    assert new.header("ETag") != old.header("ETag")


@pytest_twisted.ensureDeferred
async def test_only_post_is_allowed(api: BulkApi) -> None:
    answer = await api.get("/_bulk")
    assert answer.status == 405
    assert answer.header("Allow") == "POST"
    assert answer.json()["error"] == "method_not_allowed"


# -- refusals -------------------------------------------------------------------------------------

GOOD = {"key": "/good", "value": "fine"}
LONG_KEY = "/" + "k" * 1100

INVALID_ENTRIES: dict[str, Any] = {
    "not an object": ["/k", "v"],
    "no key": {"value": "v"},
    "key not a string": {"key": 5, "value": "v"},
    "empty segment": {"key": "/a//b", "value": "v"},
    "reserved key": {"key": "/_changes", "value": "v"},
    "key too long": {"key": LONG_KEY, "value": "v"},
    "control character in key": {"key": "/a\nb", "value": "v"},
    "no value": {"key": "/k"},
    "value not a string": {"key": "/k", "value": 5},
    "unknown encoding": {"key": "/k", "value": "v", "encoding": "latin-1"},
    "bad base64": {"key": "/k", "value": "not base64!", "encoding": "base64"},
    "lone surrogate": {"key": "/k", "value": "\ud800"},
    "text over the limit": {"key": "/k", "value": "x" * (MAX_VALUE_SIZE + 1)},
    "base64 over the limit": {
        "key": "/k",
        "value": base64.b64encode(b"\x00" * (MAX_VALUE_SIZE + 1)).decode(),
        "encoding": "base64",
    },
    "content type not a string": {"key": "/k", "value": "v", "content_type": 1},
    "control character in content type": {"key": "/k", "value": "v", "content_type": "a\rb"},
    "unknown field": {"key": "/k", "value": "v", "deleted": True},
}


@pytest.mark.parametrize("entry", INVALID_ENTRIES.values(), ids=list(INVALID_ENTRIES))
@pytest_twisted.ensureDeferred
async def test_one_invalid_entry_refuses_the_whole_load(
    api: BulkApi, store: Store, entry: Any
) -> None:
    """An invalid entry anywhere answers 400 ``invalid_bulk_entry`` naming its index, and not
    even the valid entries before it are written."""
    answer = await api.bulk([GOOD, entry, GOOD])
    assert answer.status == 400, answer.body
    document = answer.json()
    assert document["error"] == "invalid_bulk_entry"
    assert document["detail"]["index"] == 1
    assert document["message"].startswith("entry 1: ")
    await nothing_written(store)


@pytest.mark.parametrize(
    "body", [b"not json", b"\xff\xfe", b'{"key": "/k", "value": "v"}', b"42", b'"text"']
)
@pytest_twisted.ensureDeferred
async def test_a_body_that_is_not_an_array_is_refused(
    api: BulkApi, store: Store, body: bytes
) -> None:
    answer = await api.bulk(body)
    assert answer.status == 400
    assert answer.json()["error"] == "invalid_bulk_body"
    await nothing_written(store)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'[{"key": "/k", "value": "v", "content_type": ' + b"[" * 5000 + b"]" * 5000 + b"}]",
        b'{"keys": [], "next": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=["nested-array", "nested-in-an-entry", "nested-beside-keys"],
)
@pytest_twisted.ensureDeferred
async def test_deeply_nested_json_is_a_400(api: BulkApi, store: Store, body: bytes) -> None:
    """Nesting deep enough to exhaust Python's recursion is refused as a bad body, never a
    500."""
    answer = await api.bulk(body)
    assert answer.status == 400, answer.body
    assert answer.json()["error"] in ("invalid_bulk_body", "invalid_bulk_entry")
    await nothing_written(store)


@pytest.mark.parametrize(
    "body",
    [
        b'[{"key": "/k", "value": "v"}] trailing',
        b'[{"key": "/k", "value": "v"}',
        b'[{"key": "/k", "value": "v"} {"key": "/j", "value": "v"}]',
        b'{"next": null}',
        b'{"keys": [{"key": "/k", "value": "v"}], "next": {"deep": 1}}',
        b'{"keys": [{"key": "/k", "value": "v"}], "next": null',
    ],
    ids=["trailing", "unclosed", "no-comma", "page-without-keys", "page-member", "page-unclosed"],
)
@pytest_twisted.ensureDeferred
async def test_a_body_that_is_not_one_whole_document_is_refused(
    api: BulkApi, store: Store, body: bytes
) -> None:
    """The entries are read one by one, yet the body must still be exactly one JSON array or
    listing page: anything after it, or a page member that is not a plain value, is refused."""
    answer = await api.bulk(body)
    assert answer.status == 400, answer.body
    assert answer.json()["error"] == "invalid_bulk_body"
    await nothing_written(store)


@pytest_twisted.ensureDeferred
async def test_a_listing_page_with_its_plain_members_loads(api: BulkApi) -> None:
    body = {"next": "/app/zzz", "index": 7, "keys": SAMPLE, "more": None}
    answer = await api.bulk(json.dumps(body).encode())
    assert answer.status == 200, answer.body
    assert answer.json() == {"received": 4, "written": 4}


@pytest_twisted.ensureDeferred
async def test_a_load_over_the_entry_limit_is_refused_whole(store: Store) -> None:
    """More entries than ``max_entries``: 413 ``too_many_entries`` and nothing written."""
    api = BulkApi(store, max_entries=3)
    assert (await api.bulk(SAMPLE[:3])).status == 200
    await store.reset()
    answer = await api.bulk(SAMPLE)
    assert answer.status == 413
    assert answer.json()["error"] == "too_many_entries"
    assert answer.json()["detail"] == {"max_entries": 3}
    assert (await store.list("/")).records == []


def one_turn(clock: Clock) -> None:
    """Run what is due on ``clock`` now, but not what that schedules: one reactor turn."""
    for call in [call for call in clock.calls if call.getTime() <= clock.seconds()]:
        clock.calls.remove(call)
        call.func(*call.args, **call.kw)


def test_a_load_is_checked_a_chunk_per_reactor_turn() -> None:
    """A large load never holds the reactor for all of its entries: it is checked
    CHECK_ENTRIES at a time, yielding between chunks, so a request arriving meanwhile is
    answered before the load is."""
    clock = Clock()
    store = fired(Store.open(MemoryBackend()))
    api = BulkApi(store, clock=clock)
    body = json.dumps(
        [{"key": f"/load/{number}", "value": "v"} for number in range(3 * CHECK_ENTRIES)]
    ).encode()
    loaded: list[Any] = []
    api.stub.request("POST", ORIGIN + "/_bulk", data=body).addBoth(loaded.append)
    api.stub.flush()
    turns = 0
    while not loaded:
        health: list[Any] = []
        api.stub.request("GET", ORIGIN + "/_health").addBoth(health.append)
        api.stub.flush()
        assert [response.code for response in health] == [200]  # answered between chunks
        one_turn(clock)
        api.stub.flush()
        turns += 1
        assert turns <= 10
    assert turns == 3
    assert [response.code for response in loaded] == [200]
    assert fired(store.last_seq()) == 3 * CHECK_ENTRIES


@pytest_twisted.ensureDeferred
async def test_a_key_given_twice_in_different_chunks_is_written_once(
    api: BulkApi, store: Store
) -> None:
    entries = [{"key": f"/load/{number}", "value": "v"} for number in range(2 * CHECK_ENTRIES)]
    entries.append({"key": "/load/0", "value": "later"})
    answer = await api.bulk(entries)
    assert answer.json() == {"received": 2 * CHECK_ENTRIES + 1, "written": 2 * CHECK_ENTRIES}
    assert (await api.get("/load/0")).body == b"later"
    assert await store.last_seq() == 2 * CHECK_ENTRIES


@pytest_twisted.ensureDeferred
async def test_a_value_at_the_limit_is_accepted(api: BulkApi) -> None:
    value = bytes(range(MAX_VALUE_SIZE))
    entry = {"key": "/k", "value": base64.b64encode(value).decode(), "encoding": "base64"}
    assert (await api.bulk([entry])).status == 200
    assert (await api.get("/k")).body == value


@pytest_twisted.ensureDeferred
async def test_a_body_over_the_bulk_limit_is_refused(store: Store) -> None:
    """The endpoint applies the bulk limit itself too (for a resource served by another Site)."""
    api = BulkApi(store, max_body_size=200)
    entries = [{"key": f"/k{number}", "value": "v" * 30} for number in range(5)]
    answer = await api.bulk(entries)
    assert answer.status == 413
    assert answer.json()["error"] == "value_too_large"
    await nothing_written(store)


@pytest_twisted.async_yield_fixture
async def site_server(reactor: Any) -> AsyncIterator[Server]:
    """A node with the bulk endpoint and a 1 KiB value limit, listening on 127.0.0.1."""
    store = await Store.open(MemoryBackend())
    extra = bulk_endpoints(store, max_value_size=1024)
    hub = WatchHub(store, clock=reactor)
    site = make_site(
        store,
        max_value_size=1024,
        extra_endpoints=extra,
        watch_hub=hub,
        reactor=reactor,
        access=AccessPolicy.open(),
    )
    server = await listen(store, site, reactor)
    yield server
    await server.stop()
    await store.close()


@pytest_twisted.ensureDeferred
async def test_the_site_gives_bulk_loads_their_own_limit(site_server: Server) -> None:
    """The Site refuses a bulk body declared over the bulk limit from its headers (413, closed,
    nothing stored), while a body far over the per-value limit but within the bulk one loads."""
    limit = bulk_body_limit(1024)
    assert limit == 64 * 1024 * 1024
    client = await connect(site_server)
    client.send(b"POST /_bulk HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (limit + 1))
    status, headers, body = parse_response(await until_closed(site_server, client))
    assert (status, headers["connection"]) == (413, "close")
    assert json.loads(body)["detail"] == {"max_value_size": limit}
    await nothing_written(site_server.store)

    entries = [{"key": f"/k{number}", "value": "v" * 1000} for number in range(100)]
    payload = json.dumps(entries).encode()
    assert len(payload) > 100 * 1024
    client = await connect(site_server)
    client.send(
        b"POST /_bulk HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
        % len(payload)
        + payload
    )
    status, _headers, body = parse_response(await until_closed(site_server, client))
    assert (status, json.loads(body)) == (200, {"received": 100, "written": 100})
    assert await site_server.store.last_seq() == 100


# -- notifications --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_listeners_hear_every_bulk_write_in_seq_order(api: BulkApi, store: Store) -> None:
    """Every stored record is announced once, exactly as a single put is, in seq order."""
    heard: list[Record] = []
    store.subscribe(heard.append)
    await api.bulk(SAMPLE)
    assert [record.key for record in heard] == [
        store.canonical_key(entry["key"]) for entry in SAMPLE
    ]
    assert [record.seq for record in heard] == [1, 2, 3, 4]
    assert heard == list((await store.changes(0)).records)


def test_a_long_poll_is_woken_by_a_bulk_write() -> None:
    """A long-poll waiting on a prefix answers with the bulk-written keys under it."""
    clock = Clock()
    store = fired(Store.open(MemoryBackend()))
    hub = WatchHub(store, clock=clock)
    api = BulkApi(store, watch_hub=hub, clock=clock)
    outcome: list[Any] = []
    params = {"feed": "longpoll", "prefix": "/app/", "since": "0"}
    api.stub.request("GET", ORIGIN + "/_changes", params=params).addBoth(outcome.append)
    api.stub.flush()
    assert outcome == [] and hub.watching == 1
    body = json.dumps([*SAMPLE, {"key": "/elsewhere", "value": "x"}]).encode()
    loaded: list[Any] = []
    api.stub.request("POST", ORIGIN + "/_bulk", data=body).addBoth(loaded.append)
    for _ in range(3):
        clock.advance(0)
        api.stub.flush()
    assert [response.code for response in loaded] == [200]
    [response] = outcome
    document = json.loads(fired(response.content()))
    assert [item["key"] for item in document["results"]] == [
        store.canonical_key(e["key"]) for e in SAMPLE
    ]
    hub.close()


@pytest_twisted.ensureDeferred
async def test_bulk_writes_replicate_to_peers() -> None:
    """The replication pusher picks bulk writes up from the change feed like any write: the peer
    ends up with the same keys, values, content types and versions."""
    clock, network = make_clock(), Network()
    a, b = await Node.create("a", network, clock), await Node.create("b", network, clock)
    await b.start()
    await a.start(initial_peers=[b.url])
    answer = await BulkApi(a.store).bulk(SAMPLE)
    assert answer.status == 200
    settle(clock, [a, b])
    held = await a.held()
    assert len(held) == 4
    assert await b.held() == held


# -- sqlite: one load, one commit -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sqlite_writes_one_load_in_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All entries of one request (up to COMMIT_ENTRIES) reach the sqlite backend in the same
    reactor turn, so its group commit writes them in one transaction: one batch of N records,
    contiguous seqs, and the node's last seq moved by exactly N. A larger load is written
    COMMIT_ENTRIES per transaction."""
    batches: list[int] = []
    original = sqlite_module.write_batch

    def counting(txn: Any, batch: list[Any]) -> Any:
        batches.append(len(batch))
        return original(txn, batch)

    monkeypatch.setattr(sqlite_module, "write_batch", counting)
    store = await Store.open(SqliteBackend(tmp_path / "bulk.db"))
    try:
        api = BulkApi(store)
        await api.request("PUT", "/first", b"1")
        before = await store.last_seq()
        batches.clear()
        small = COMMIT_ENTRIES - 10
        entries = [{"key": f"/load/k{number:04d}", "value": str(number)} for number in range(small)]
        answer = await api.bulk(entries, verbose="true")
        assert answer.json()["written"] == small
        assert batches == [small]
        seqs = [record["seq"] for record in answer.json()["records"]]
        assert seqs == list(range(before + 1, before + small + 1))
        assert await store.last_seq() == before + small
        assert (await store.get(f"/load/k{small - 1:04d}")) is not None
        batches.clear()
        entries = [{"key": f"/big/k{number:05d}", "value": "v"} for number in range(2500)]
        answer = await api.bulk(entries)
        assert answer.json()["written"] == 2500
        whole, rest = divmod(2500, COMMIT_ENTRIES)
        assert batches == [COMMIT_ENTRIES] * whole + ([rest] if rest else [])
    finally:
        await store.close()


# -- Store.put_many and the cache node ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_put_many_restamps_a_record_that_lost_to_a_newer_stored_stamp(store: Store) -> None:
    """A stored stamp ahead of this node's clock (a peer's write the clock never saw) makes the
    first apply lose; put_many catches the clock up and writes the key anyway, like put."""
    ahead = Stamp(store.clock.now().wall_ms + 5_000, 0, "f" * 16)
    await store.backend.apply(Record("/k", b"peer", "text/plain", ahead))
    stored = await store.put_many([("/k", b"mine", None), ("/j", b"other", None)])
    assert [record.key for record in stored] == ["/j", "/k"]
    current = await store.get("/k")
    assert current is not None and current.value == b"mine" and current.stamp > ahead


class Forwarder:
    """A cache node's WriteForwarder stand-in: records what it was asked to send upstream."""

    def __init__(self) -> None:
        self.forwarded: list[tuple[str, bytes, bytes]] = []

    async def forward(self, write: ForwardedWrite) -> ForwardedAnswer:
        self.forwarded.append((write.method, write.target, write.body))
        return ForwardedAnswer(200, {b"Content-Type": b"application/json"}, b'{"upstream": true}')


@pytest_twisted.ensureDeferred
async def test_a_cache_node_forwards_bulk_loads_upstream(store: Store) -> None:
    """On a cache node a bulk load is not written locally: it goes to the upstream as is and
    the upstream's answer is the answer, as for every write there."""
    forwarder = Forwarder()
    api = BulkApi(store, write_forwarder=forwarder)
    body = json.dumps(SAMPLE).encode()
    answer = await api.bulk(body, verbose="true")
    assert (answer.status, answer.json()) == (200, {"upstream": True})
    assert forwarder.forwarded == [("POST", b"/_bulk?verbose=true", body)]
    await nothing_written(store)


# -- end to end -----------------------------------------------------------------------------------


def raw_exchange(port: int, head: bytes, body: bytes = b"") -> bytes:
    """Send a request as raw bytes on a new connection; return everything until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT) as connection:
        connection.sendall(head + body)
        received = b""
        while True:
            data = connection.recv(65536)
            if not data:
                return received
            received += data


def chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@pytest.mark.e2e
def test_bulk_load_of_a_real_sqlite_node(tmp_path: Path) -> None:
    """A ``twistd -n navistore`` process on sqlite takes 5,000 keys in five bulk requests,
    serves every one back (listing with values, and single GETs), counts them in its feed, and
    refuses a declared body over the bulk limit from its headers."""
    entries = [
        {"key": f"/e2e/k{number:05d}", "value": f"value {number} " + "v" * 80}
        for number in range(5000)
    ]
    with running(twistd("sqlite:bulk.db"), tmp_path) as server:
        server.wait_listening()
        for part in chunks(entries, 1000):
            status, body, _ = server.request("POST", "/_bulk", json.dumps(part).encode())
            assert (status, json.loads(body)) == (200, {"received": 1000, "written": 1000})
        found: dict[str, str] = {}
        after = ""
        while True:
            status, body, _ = server.request("GET", f"/e2e/?values=true&limit=2000&after={after}")
            page = json.loads(body)
            found.update((entry["key"], entry["value"]) for entry in page["keys"])
            if page["next"] is None:
                break
            after = page["next"]
        assert found == {entry["key"]: entry["value"] for entry in entries}
        for entry in entries[::499]:
            assert server.request("GET", entry["key"])[:2] == (200, entry["value"].encode())
        assert json.loads(server.request("GET", "/_health")[1])["last_seq"] == 5000
        received = raw_exchange(
            server.port,
            b"POST /_bulk HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
            % (bulk_body_limit(16 * 1024 * 1024) + 1),
        )
        assert received.startswith(b"HTTP/1.1 413 ")
        assert json.loads(received.split(b"\r\n\r\n", 1)[1])["error"] == "value_too_large"

"""Every input has an answer: integers in range, keys without invisible characters, JSON that
cannot exhaust the parser, bounded caches, and 500s that cannot flood the log.

Requests go through StubTreq to a node wired as ``build_node`` wires it (support.nodes), so the
replication and bulk endpoints are there too.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from support.api import Answer, Api, api_resource
from support.deferreds import fired
from support.nodes import Network, Node, make_clock
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure

from navistore.backend.memory import MemoryBackend
from navistore.links import AnswerTooLarge, PeerLink
from navistore.record import MAX_SEQ, Record
from navistore.store import Store
from navistore.testing.fakehttp import FakeHTTP, answer
from navistore.web import api as api_module
from navistore.web.errors import ErrorLog, errors_logged

TOO_BIG = str(MAX_SEQ + 1)  # 9223372036854775808: what sqlite's INTEGER cannot hold


@pytest_twisted.async_yield_fixture
async def node() -> Any:
    """A node with replication and bulk endpoints, over memory."""
    network, clock = Network(), make_clock()
    made = await Node.create("a", network, clock)
    await made.start()
    yield made


def api_of(node: Node) -> Api:
    assert node.resource is not None
    return Api(node.resource)


# -- integers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/_changes?since=" + TOO_BIG, {}),
        ("/_changes?since=-1", {}),
        ("/_changes?since=1e3", {}),
        ("/_changes?since=%EF%BC%91", {}),  # a fullwidth digit one: int() would take it
        ("/_changes?since=" + "9" * 400, {}),
        ("/_changes?limit=" + TOO_BIG, {}),
        ("/_changes?limit=0x10", {}),
        ("/_changes?feed=eventsource", {"Last-Event-ID": TOO_BIG}),
        ("/_changes?feed=eventsource", {"Last-Event-ID": "-5"}),
        ("/_changes?feed=longpoll&timeout=inf", {}),
        ("/_changes?feed=longpoll&timeout=nan", {}),
        ("/_changes?feed=longpoll&timeout=1e400", {}),
        ("/_replicate?since=" + TOO_BIG, {}),
        ("/_replicate?since=0&horizon=" + TOO_BIG, {}),
        ("/k?wait=true&index=" + TOO_BIG, {}),
        ("/_keys?limit=" + TOO_BIG, {}),
    ],
)
@pytest_twisted.ensureDeferred
async def test_integers_out_of_range_are_400(
    node: Node, path: str, headers: dict[str, str]
) -> None:
    """Every integer parameter and header is a whole number from 0 to 2^63-1 (and within its
    own bound): anything else is 400 ``invalid_parameter``, never a 500 from storage."""
    answer = await api_of(node).request("GET", path, headers=headers)
    assert answer.status == 400, answer.body
    assert answer.json()["error"] == "invalid_parameter"


@pytest.mark.parametrize("path", ["/_changes", "/_keys", "/doc/?list"])
@pytest_twisted.ensureDeferred
async def test_a_limit_out_of_range_is_worded_alike_on_both_sides(node: Node, path: str) -> None:
    """``limit=0`` and ``limit=10001`` are refused in the same words, naming the range."""
    join = "&" if "?" in path else "?"
    messages = []
    for limit in ("0", "10001"):
        answer = await api_of(node).request("GET", f"{path}{join}limit={limit}")
        assert answer.status == 400 and answer.json()["error"] == "invalid_parameter"
        messages.append(answer.json()["message"])
    assert messages == [
        f"parameter 'limit' must be a whole number from 1 to 10000, not '{limit}'"
        for limit in ("0", "10001")
    ]


@pytest_twisted.ensureDeferred
async def test_replicas_out_of_range_is_400(node: Node) -> None:
    answer = await api_of(node).put("/k?replicas=" + TOO_BIG, b"v")
    assert answer.status == 400
    assert answer.json()["error"] == "invalid_parameter"


@pytest.mark.parametrize("since", ["0", str(MAX_SEQ)])
@pytest_twisted.ensureDeferred
async def test_the_largest_seq_is_answered(node: Node, since: str) -> None:
    """2^63-1 itself is a seq: a client ahead of the node is told the node's newest seq."""
    api = api_of(node)
    for path in ("/_changes?since=", "/_replicate?since="):
        answer = await api.get(path + since)
        assert answer.status == 200, answer.body


# -- invisible characters in keys -----------------------------------------------------------------


@pytest.mark.parametrize("invisible", ["\u202e", "\u200b", "\ufeff", "\u2066", "\u00ad"])
@pytest_twisted.ensureDeferred
async def test_a_key_with_an_invisible_format_character_is_refused(
    node: Node, invisible: str
) -> None:
    api = api_of(node)
    path = "/" + quote(f"app/{invisible}db/host".encode())
    for method, body in (("PUT", b"v"), ("POST", b"v")):
        answer = await api.request(method, path, body)
        assert answer.status == 400
        document = answer.json()
        assert document["error"] == "invalid_key"
        assert f"U+{ord(invisible):04X}" in document["message"]
    bulk = await api.post("/_bulk", json.dumps([{"key": f"/a/{invisible}", "value": "v"}]).encode())
    assert bulk.status == 400
    assert bulk.json()["error"] == "invalid_bulk_entry"
    assert await node.store.last_seq() == 0


@pytest_twisted.ensureDeferred
async def test_a_stored_key_with_a_format_character_can_still_be_read_and_deleted(
    node: Node,
) -> None:
    """A key stored before format characters were refused (or replicated from an older node)
    stays reachable: GET, HEAD, listing after it and DELETE work on it."""
    key = "/app/\u200bdb"
    stamp = node.store.clock.now()
    await node.store.backend.apply(Record(key, b"old", "text/plain", stamp))
    api = api_of(node)
    path = quote(key.encode())
    assert (await api.get(path)).body == b"old"
    assert (await api.head(path)).status == 200
    listed = await api.get("/app/?after=" + quote(key.encode()))
    assert listed.status == 200 and listed.json()["keys"] == []
    assert (await api.delete(path)).status in (200, 204)
    assert (await api.get(path)).status == 404
    assert (await api.put(path, b"new")).status == 400


# -- JSON nesting ---------------------------------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/_replicate", DEEP),
        ("POST", "/_replicate", b'{"source": "0011223344556677", "records": ' + DEEP + b"}"),
        ("PUT", "/_peers", b'{"url": ' + DEEP + b"}"),
        ("POST", "/_bulk", DEEP),
    ],
    ids=["replicate", "replicate-records", "peers", "bulk"],
)
@pytest_twisted.ensureDeferred
async def test_deeply_nested_json_is_a_400(node: Node, method: str, path: str, body: bytes) -> None:
    answer = await api_of(node).request(method, path, body)
    assert answer.status == 400, answer.body
    assert "error" in answer.json()


@pytest.mark.parametrize("field", ["last_seq", "purged_before"])
def test_a_batch_with_a_seq_out_of_range_is_malformed(field: str) -> None:
    from navistore.protocol.batches import MalformedBatch, decode_batch

    body = json.dumps({"source": "0011223344556677", "records": [], field: MAX_SEQ + 1})
    with pytest.raises(MalformedBatch, match=field):
        decode_batch(body.encode())
    assert decode_batch(
        json.dumps({"source": "0011223344556677", "records": [], field: MAX_SEQ}).encode()
    )


# -- bounded memory -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_key_cache_is_bounded_by_bytes() -> None:
    """Distinct long missing-key paths do not pile up: the remembered routes stay within
    their byte budget (a 3 KB path each, 65,536 of them, kept 288 MiB before)."""
    store = await Store.open(MemoryBackend())
    resource = api_resource(store)
    api = Api(resource)
    long_name = quote("\u00e9" * 450)  # 2.7 KB of path, 900 bytes of key
    for number in range(3000):
        answer = await api.get(f"/missing/{long_name}-{number}")
        assert answer.status == 404
    assert resource._keys_seen_bytes <= api_module._KEY_CACHE_BYTES + 8000
    assert len(resource._keys_seen) < 3000


def test_a_peer_answer_past_the_link_limit_is_refused() -> None:
    """A peer or upstream that answers more than the link's limit is cut off, not buffered."""
    http = FakeHTTP()
    http.script("http://b.test", answer(200, b"x" * 5000), answer(200, b"x" * 4096))
    link = PeerLink(http, Clock(), max_answer_bytes=4096)
    failure = fired_failure(link.exchange("GET", "http://b.test/big"))
    assert failure.check(AnswerTooLarge)
    assert fired(link.exchange("GET", "http://b.test/fits")).body == b"x" * 4096


def fired_failure(deferred: Any) -> Failure:
    result: list[Any] = []
    deferred.addBoth(result.append)
    assert result and isinstance(result[0], Failure), result
    return result[0]


@pytest_twisted.ensureDeferred
async def test_a_node_reads_its_peers_answers_with_a_limit(node: Node) -> None:
    """build_node gives every link of the node the answer limit of its value limit."""
    from navistore.web.request import replication_body_limit

    service = node.service
    assert service is not None
    assert service._link.max_answer_bytes == replication_body_limit(16 * 1024 * 1024)


# -- 500s -----------------------------------------------------------------------------------------


class Broken(Exception):
    pass


def failure_here() -> Failure:
    try:
        raise Broken("a bug")
    except Broken:
        return Failure()


def test_an_unexpected_error_is_logged_once_then_counted() -> None:
    """A client repeating the request that hits a bug gets a 500 each time, but the log has its
    traceback once and then one line a period counting the repeats."""
    now = [0.0]
    events: list[LogEvent] = []
    log = ErrorLog(period=60, now=lambda: now[0])
    globalLogPublisher.addObserver(events.append)
    try:
        for _ in range(1000):
            log.failure(failure_here())
        now[0] = 61
        log.failure(failure_here())
        for _ in range(10):
            log.failure(failure_here())
    finally:
        globalLogPublisher.removeObserver(events.append)
    mine = [event for event in events if event.get("log_namespace") == "navistore.web.errors"]
    assert len(mine) == 2
    assert "log_failure" in mine[0]
    assert mine[1]["repeats"] == 1000
    assert "log_failure" not in mine[1]


@pytest_twisted.ensureDeferred
async def test_a_bug_behind_a_route_is_a_json_500_logged_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = await Store.open(MemoryBackend())

    async def broken(_request: Any) -> Any:
        raise Broken("a bug")

    api = Api(api_resource(store, extra_endpoints={"_broken": {b"GET": broken}}))
    monkeypatch.setattr(errors_logged, "_kinds", {})
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        answers: list[Answer] = [await api.get("/_broken") for _ in range(50)]
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert {answer.status for answer in answers} == {500}
    assert {answer.json()["error"] for answer in answers} == {"internal_error"}
    failures = [event for event in events if "log_failure" in event]
    assert len(failures) == 1

"""``/_replicate`` on one node: receiving pushed batches, and serving pages to pullers.

Requests go through ``treq.testing.StubTreq`` over the node's API resource (with the replication
endpoints), so statuses and bodies are what a peer sees.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest
import pytest_twisted
from support.nodes import Network, Node, make_clock

from navistore.clock import Stamp
from navistore.protocol.batches import decode_ack, decode_batch, encode_batch
from navistore.record import Record

WRITER = "1111111111111111"
SENDER = "2222222222222222"


async def node() -> Node:
    """A started node with no peers."""
    created = await Node.create("a", Network(), make_clock())
    await created.start()
    return created


async def post(target: Node, body: bytes) -> tuple[int, Any]:
    """POST a batch; return the status and the JSON answer."""
    response = await target.api.post(target.url + "/_replicate", data=body)
    return response.code, json.loads(await response.content())


async def pull(target: Node, query: str) -> tuple[int, bytes]:
    """GET /_replicate with ``query``; return the status and the raw body."""
    response = await target.api.get(f"{target.url}/_replicate?{query}")
    return response.code, await response.content()


def now_ms(target: Node) -> int:
    return int(target.clock.seconds() * 1000)


def batch_document(target: Node) -> dict[str, Any]:
    """A valid batch from SENDER: two records written by WRITER, as a JSON document."""
    stamp = Stamp(now_ms(target) - 1000, 0, WRITER)
    records = [
        Record("/ok", b"\x00\xffbinary", "application/x-thing", stamp, chain=(WRITER,)),
        Record("/other", b"two", "text/plain", stamp, chain=(WRITER,)),
    ]
    document: dict[str, Any] = json.loads(encode_batch(SENDER, records))
    return document


def record_fault(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(document: dict[str, Any]) -> None:
        if value is KeyError:
            del document["records"][1][field]
        else:
            document["records"][1][field] = value

    return apply


def batch_fault(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(document: dict[str, Any]) -> None:
        if value is KeyError:
            del document[field]
        else:
            document[field] = value

    return apply


MALFORMED: dict[str, Callable[[dict[str, Any]], None]] = {
    "missing records": batch_fault("records", KeyError),
    "records not a list": batch_fault("records", {}),
    "missing source": batch_fault("source", KeyError),
    "source not a node id": batch_fault("source", "Z"),
    "last_seq not an integer": batch_fault("last_seq", "7"),
    "record not an object": lambda document: document["records"].append("nope"),
    "missing key": record_fault("key", KeyError),
    "missing value": record_fault("value", KeyError),
    "missing chain": record_fault("chain", KeyError),
    "bad base64": record_fault("value", "***not base64***"),
    # Found by Schemathesis: base64 of text that is not ASCII was a 500.
    "value not ASCII": record_fault("value", "d\u00e9j\u00e0"),
    "bad stamp": record_fault("stamp", "yesterday"),
    "deleted not a bool": record_fault("deleted", "no"),
    "key not canonical": record_fault("key", "a//b"),
    "chain not starting with the writer": record_fault("chain", [SENDER]),
    "chain not ending with the sender": record_fault("chain", [WRITER]),
    "chain with a bad node id": record_fault("chain", [WRITER, "xyz", SENDER]),
    "tombstone with a value": record_fault("deleted", True),
    "empty chain": record_fault("chain", []),
    "negative seq": record_fault("seq", -1),
    "seq not an integer": record_fault("seq", "3"),
    "content type with a control character": record_fault("content_type", "text/\x01"),
}


@pytest.mark.parametrize("fault", sorted(MALFORMED))
@pytest_twisted.ensureDeferred
async def test_malformed_batch_is_400_and_applies_nothing(fault: str) -> None:
    """A batch with any fault, anywhere, is refused whole: 400 malformed_batch, nothing stored."""
    target = await node()
    document = batch_document(target)
    MALFORMED[fault](document)
    status, answer = await post(target, json.dumps(document).encode())
    assert (status, answer["error"]) == (400, "malformed_batch"), answer
    assert await target.store.last_seq() == 0


@pytest.mark.parametrize("body", [b"", b"{not json", b"\xff\xfe", b"[]", b"null", b'"x"'])
@pytest_twisted.ensureDeferred
async def test_a_body_that_is_not_a_batch_is_400(body: bytes) -> None:
    """An empty body, broken JSON, bytes that are not UTF-8, or JSON that is not an object:
    400 malformed_batch."""
    target = await node()
    status, answer = await post(target, body)
    assert (status, answer["error"]) == (400, "malformed_batch")
    assert await target.store.last_seq() == 0


@pytest_twisted.ensureDeferred
async def test_a_stamp_too_far_ahead_refuses_the_whole_batch() -> None:
    """One stamp beyond the drift limit: 400 clock_drift, and the valid records are not applied."""
    target = await node()
    document = batch_document(target)
    ahead = Stamp(now_ms(target) + 120_000, 0, WRITER)
    document["records"][1]["stamp"] = ahead.encode()
    status, answer = await post(target, json.dumps(document).encode())
    assert (status, answer["error"]) == (400, "clock_drift")
    assert answer["detail"]["ahead_ms"] == 120_000
    assert await target.store.last_seq() == 0


@pytest_twisted.ensureDeferred
async def test_a_valid_batch_is_applied_and_acknowledged() -> None:
    """The ack names the receiver and counts what was received and what won (LWW): a repeat
    applies nothing; records are stored with their chains and values intact."""
    target = await node()
    body = json.dumps(batch_document(target)).encode()
    status, answer = await post(target, body)
    assert status == 200
    assert decode_ack(json.dumps(answer).encode()) == (target.store.node_id, 2, 2)
    stored = await target.store.backend.get("/ok")
    assert stored.value == b"\x00\xffbinary" and stored.content_type == "application/x-thing"
    assert stored.chain == (WRITER, SENDER)
    ack = {"node_id": target.store.node_id, "received": 2, "applied": 0}
    assert await post(target, body) == (200, ack)
    await target.store.put("/ok", b"newer here")
    status, answer = await post(target, body)
    assert answer["applied"] == 0
    assert (await target.store.get("/ok")).value == b"newer here"


@pytest_twisted.ensureDeferred
async def test_an_empty_batch_is_a_handshake() -> None:
    """An empty batch applies nothing and answers the receiver's node id."""
    target = await node()
    status, answer = await post(target, encode_batch(SENDER, []))
    assert (status, answer["received"], answer["applied"]) == (200, 0, 0)
    assert answer["node_id"] == target.store.node_id


@pytest_twisted.ensureDeferred
async def test_pull_pages_through_the_changes_with_values() -> None:
    """GET /_replicate?since=&limit= answers the change feed with values as a batch from this
    node; last_seq is the last record's seq, or the node's last seq on a short page."""
    target = await node()
    me = target.store.node_id
    for key in ("/a", "/b", "/c"):
        await target.store.put(key, key.encode() + b"\xff")
    await target.store.put("/a", b"again")
    await target.store.delete("/b")  # seqs: /c 3, /a 4, /b 5
    status, body = await pull(target, "since=0&limit=2")
    page = decode_batch(body)
    assert status == 200 and page.source == me
    assert ([r.key for r in page.records], page.last_seq) == (["/c", "/a"], 4)
    assert page.records[0].value == b"/c\xff" and page.records[0].chain == (me,)
    page = decode_batch((await pull(target, "since=4&limit=2"))[1])
    assert ([(r.key, r.deleted) for r in page.records], page.last_seq) == ([("/b", True)], 5)
    page = decode_batch((await pull(target, "since=5"))[1])
    assert (page.records, page.last_seq) == ([], 5)
    await target.store.reset()
    page = decode_batch((await pull(target, "since=0"))[1])
    assert (page.records, page.last_seq) == ([], 5)  # reset keeps the seq counter


@pytest.mark.parametrize("query", ["since=x", "since=-1", "limit=0", "limit=10001"])
@pytest_twisted.ensureDeferred
async def test_pull_refuses_bad_parameters(query: str) -> None:
    """Bad since/limit parameters are 400 invalid_parameter."""
    target = await node()
    status, body = await pull(target, query)
    assert (status, json.loads(body)["error"]) == (400, "invalid_parameter")


@pytest_twisted.ensureDeferred
async def test_other_methods_are_405() -> None:
    """/_replicate takes POST and GET only."""
    target = await node()
    response = await target.api.put(target.url + "/_replicate", data=b"{}")
    assert response.code == 405
    assert json.loads(await response.content())["error"] == "method_not_allowed"


@pytest_twisted.ensureDeferred
async def test_pull_resuming_past_the_purge_horizon_is_410() -> None:
    """A pull resuming from a cursor before purged tombstones answers 410 resync_required (the
    clone would otherwise keep a key whose delete it never saw), while a read of the whole feed
    from 0 pages through it by passing back the horizon it saw on its first page."""
    target = await node()
    for key in ("/a", "/b", "/c", "/d"):
        await target.store.put(key, b"v")
    await target.store.delete("/a")  # seq 5
    await target.store.put("/e", b"v")  # seq 6
    assert await target.store.purge_tombstones(6) == 1
    status, body = await pull(target, "since=2")
    assert status == 410 and json.loads(body)["error"] == "resync_required"
    first = decode_batch((await pull(target, "since=0&limit=2"))[1])
    assert (first.last_seq, first.purged_before) == (3, 6)
    status, body = await pull(target, f"since=3&limit=2&horizon={first.purged_before}")
    assert status == 200
    assert [r.key for r in decode_batch(body).records] == ["/d", "/e"]
    stale = await pull(target, "since=3&limit=2&horizon=1")
    assert stale[0] == 410  # a purge happened after that read began

"""The Consul API's parts in-process: Go durations, blocking query parameters, the bounds of
listings, the ``dir/`` roll-up, and the mount's answers over a memory Store."""

from __future__ import annotations

import json
import random

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from navistore.compat import CompatContext, consul_kv, consul_txn
from navistore.compat.consul import consul_mounts
from navistore.compat.consul_base import INDEX_HEADER, ConsulError
from navistore.compat.consul_blocking import (
    DEFAULT_WAIT,
    MAX_WAIT,
    blocking_arg,
    parse_duration,
)
from navistore.compat.consul_kv import key_names, records_under
from navistore.store import Store
from navistore.watch_hub import WatchHub
from navistore.web.access import AccessPolicy, caller_of


def request_for(target: str, method: bytes = b"GET", body: bytes = b"") -> DummyRequest:
    path, _, _ = target.partition("?")
    request = DummyRequest(path.encode().split(b"/")[1:])
    request.uri = target.encode()
    request.path = path.encode()
    request.method = method
    request.content = __import__("io").BytesIO(body)
    return request


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("1m30s", 90.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        ("0", 0.0),
        ("2m0.5s", 120.5),
        ("100us", 1e-4),
        ("10", None),
        ("", None),
        ("s", None),
        ("10x", None),
        ("-1s", None),
        ("1s" * 40, None),
    ],
)
def test_go_durations(text: str, seconds: float | None) -> None:
    """``wait`` takes Go durations (a unit on every number, ``0`` alone without), nothing else."""
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_blocking_parameters() -> None:
    """No index (or index 0) does not block; the wait defaults to 5 minutes, is capped at 10,
    and gets at most a sixteenth more of jitter; a bad index or wait is Consul's 400."""
    assert blocking_arg(request_for("/v1/kv/k")) is None
    assert blocking_arg(request_for("/v1/kv/k?index=0&wait=1s")) is None
    for _ in range(50):
        default = blocking_arg(request_for("/v1/kv/k?index=5"), random.Random())
        assert default is not None and default.index == 5
        assert DEFAULT_WAIT <= default.wait <= DEFAULT_WAIT * 17 / 16
        capped = blocking_arg(request_for("/v1/kv/k?index=5&wait=1h"), random.Random())
        assert capped is not None and MAX_WAIT <= capped.wait <= MAX_WAIT * 17 / 16
    short = blocking_arg(request_for("/v1/kv/k?index=7&wait=2s"))
    assert short is not None and 2.0 <= short.wait <= 2.125
    for bad in ("index=x", "index=-1", "index=99999999999999999999999", "index=3&wait=10"):
        with pytest.raises(ConsulError) as refused:
            blocking_arg(request_for(f"/v1/kv/k?{bad}"))
        assert refused.value.status == 400


@pytest_twisted.ensureDeferred
async def test_recurse_is_bounded(store: Store) -> None:
    """Past its bound in keys or in bytes of values, a listing is a 400 saying why, read no
    further than one page past the bound."""
    for number in range(12):
        await store.put(f"/big/{number:02}", b"v" * 100)
    found = await records_under(store, ("/big/",), max_keys=12, max_bytes=10_000, what="it")
    assert len(found) == 12
    with pytest.raises(ConsulError, match="more than 11 keys") as refused:
        await records_under(store, ("/big/",), max_keys=11, max_bytes=10_000, what="it")
    assert refused.value.status == 400
    with pytest.raises(ConsulError, match="1000 bytes"):
        await records_under(store, ("/big/",), max_keys=100, max_bytes=1000, what="it")


@pytest_twisted.ensureDeferred
async def test_keys_roll_up_and_are_bounded(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """``?keys&separator=/`` lists each directory once however many keys it holds (listing
    skips past it), keys beside them as they are; more names than the bound is a 400."""
    for number in range(1200):
        await store.put(f"/r/deep/{number:04}", b"x")
    await store.put("/r/a", b"x")
    await store.put("/r/zz/1", b"x")
    await store.put("/r/zz/2/3", b"x")
    assert await key_names(store, "/r/", ("/r/",), "/") == ["r/a", "r/deep/", "r/zz/"]
    assert await key_names(store, "/r/z", ("/r/z",), "/") == ["r/zz/"]
    assert len(await key_names(store, "/r/", ("/r/",), None)) == 1203
    monkeypatch.setattr(consul_kv, "MAX_LIST_KEYS", 1000)
    with pytest.raises(ConsulError, match="more than 1000"):
        await key_names(store, "/r/", ("/r/",), None)
    assert len(await key_names(store, "/r/", ("/r/",), "/")) == 3


@pytest_twisted.ensureDeferred
async def test_the_mount_answers_errors_in_consuls_way(store: Store) -> None:
    """Errors are plain text with Consul's statuses, and every one carries X-Consul-Index."""
    hub = WatchHub(store, clock=Clock())
    context = CompatContext(store, hub, AccessPolicy.open(), Clock(), max_value_size=1000)
    mount = consul_mounts(context)["v1"]
    await store.put("/m/k", b"v")

    async def answer(target: str, method: bytes = b"GET", body: bytes = b"") -> tuple[int, bytes]:
        request = request_for(target, method, body)
        response = await mount.answer(request, request.path.decode(), caller_of(request))
        assert int(response.headers[INDEX_HEADER]) >= 1
        assert response.headers[b"X-Consul-KnownLeader"] == b"true"
        return response.status, response.body

    status, body = await answer("/v1/kv/m/k")
    assert status == 200 and json.loads(body)[0]["Key"] == "m/k"
    assert await answer("/v1/kv/m/absent") == (404, b"")
    assert (await answer("/v1/kv/_reserved", b"PUT"))[0] == 400
    assert (await answer("/v1/kv/", b"PUT"))[0] == 400
    status, body = await answer("/v1/kv/m/k", b"PUT", b"x" * 1001)
    assert status == 413 and b"1000" in body
    assert (await answer("/v1/kv/m/k?cas=1&recurse", b"DELETE"))[0] == 400
    assert (await answer("/v1/kv/m/k?index=1000&wait=1s"))[0] == 200  # ahead: at once
    hub.close()  # shutting down: no new blocking query starts
    status, body = await answer("/v1/kv/m/k?index=1&wait=1s")
    assert status == 503 and b"shutting down" in body


@pytest_twisted.ensureDeferred
async def test_a_transaction_reads_a_bounded_amount_in_all(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trees one transaction reads share one bound (that of a ``?recurse`` answer): 64
    ``get-tree`` operations cannot hold 64 times it. Past it, a 400 and nothing written."""
    context = CompatContext(
        store, WatchHub(store, clock=Clock()), AccessPolicy.open(), Clock(), max_value_size=1000
    )
    mount = consul_mounts(context)["v1"]
    for number in range(6):
        await store.put(f"/t/{number}", b"v")
    monkeypatch.setattr(consul_txn, "MAX_RECURSE_KEYS", 10)

    async def txn(ops: list[dict[str, object]]) -> tuple[int, bytes]:
        request = request_for("/v1/txn", b"PUT", json.dumps(ops).encode())
        response = await mount.answer(request, "/v1/txn", caller_of(request))
        return response.status, response.body

    tree = {"KV": {"Verb": "get-tree", "Key": "t/"}}
    status, body = await txn([tree])
    assert status == 200 and len(json.loads(body)["Results"]) == 6
    write = {"KV": {"Verb": "set", "Key": "t/new", "Value": "eA=="}}
    status, body = await txn([write, tree, tree])
    assert status == 400 and b"other reads" in body
    assert await store.get("/t/new") is None


@pytest_twisted.ensureDeferred
async def test_a_transaction_raced_between_its_checks_and_its_writes_writes_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key the transaction checked is written by someone else after the checks passed and
    before the writes: the answer is 409 and not one of the transaction's writes is stored
    (they go to the backend together, conditioned on every key as the checks read it)."""
    context = CompatContext(
        store, WatchHub(store, clock=Clock()), AccessPolicy.open(), Clock(), max_value_size=1000
    )
    mount = consul_mounts(context)["v1"]
    checked = (await store.put("/t/a", b"one")).record
    together = store.write_together

    async def raced(*args: object, **kwargs: object) -> object:
        await store.put("/t/a", b"raced in")
        return await together(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "write_together", raced)
    ops = [
        {"KV": {"Verb": "check-index", "Key": "t/a", "Index": checked.seq}},
        {"KV": {"Verb": "set", "Key": "t/b", "Value": "Yg=="}},
        {"KV": {"Verb": "set", "Key": "t/c", "Value": "Yw=="}},
    ]
    request = request_for("/v1/txn", b"PUT", json.dumps(ops).encode())
    response = await mount.answer(request, "/v1/txn", caller_of(request))
    assert response.status == 409, response.body
    assert b"nothing was written" in response.body
    assert await store.get("/t/b") is None and await store.get("/t/c") is None
    monkeypatch.setattr(store, "write_together", together)
    ops[0]["KV"]["Index"] = (await store.get("/t/a")).seq  # type: ignore[index, union-attr]
    request = request_for("/v1/txn", b"PUT", json.dumps(ops).encode())
    response = await mount.answer(request, "/v1/txn", caller_of(request))
    assert response.status == 200, response.body
    stored = [await store.get(key) for key in ("/t/b", "/t/c")]
    assert [record.seq for record in stored if record] == [3, 4]  # one transaction, in order

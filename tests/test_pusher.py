"""Pushing changes to peers: what is sent, batching, the cursor, backoff, waking, no echoes.

Nodes run on memory backends behind :class:`support.nodes.Network` (StubTreq over each node's
API resource, with scripted faults) on one ``task.Clock``; nothing sleeps.
"""

from __future__ import annotations

import json
from datetime import datetime
from random import Random
from typing import Any, Callable

import pytest
import pytest_twisted
from support.nodes import EPOCH, Network, Node, batch_of, make_clock, settle
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock

from navistore.links import backoff_delay, iso_time
from navistore.protocol.batches import cut_batch, encode_ack, record_size
from navistore.replication.peers import cursor_meta
from navistore.replication.probe import PROBE_INTERVAL
from navistore.testing.fakehttp import Sent, answer, fail, hang

Nodes = tuple[Clock, Network, Node, Node]


async def two_nodes(*, warm: bool = False, **options: Any) -> Nodes:
    """A pushing to B; both started and idle.

    :param warm: A has pushed one write (``/warm``), so it knows B's node id; the record of
        requests starts empty after it.
    """
    clock, network = make_clock(), Network()
    a, b = await Node.create("a", network, clock), await Node.create("b", network, clock)
    await b.start()
    await a.start(initial_peers=[b.url], **options)
    if warm:
        await a.store.put("/warm", b"0")
        settle(clock, [a, b])
        network.sent.clear()
    return clock, network, a, b


def status(node: Node, index: int = 0) -> dict[str, Any]:
    assert node.service is not None
    return node.service.peers()[index]


def keys_sent(network: Network, to: str) -> list[list[str]]:
    """The keys of each batch POSTed to ``to``."""
    return [[record.key for record in batch_of(sent).records] for sent in network.posts(to=to)]


@pytest_twisted.ensureDeferred
async def test_sends_exactly_the_changes() -> None:
    """One batch holds each changed key at its latest version, values binary-safe, tombstones
    included, chains starting with the writer; it goes to /_replicate as JSON with a timeout."""
    clock, network, a, b = await two_nodes()
    await a.store.put("/text", b"hello", "text/plain")
    await a.store.put("/bin", bytes(range(256)))
    await a.store.put("/gone", b"x")
    await a.store.delete("/gone")
    assert network.posts() == []  # pushed from the reactor's next turn, not inside the write
    settle(clock, [a, b])
    [sent] = network.posts()
    assert sent.url == b.url + "/_replicate"
    assert sent.timeout == 30.0
    assert sent.header("Content-Type") == "application/json"
    document = json.loads(sent.body or b"")
    assert [record["seq"] for record in document["records"]] == [1, 2, 4]
    batch = batch_of(sent)
    assert batch.source == a.store.node_id
    stored = (await a.store.changes(0)).records
    assert [(r.key, r.value, r.content_type, r.stamp, r.deleted) for r in batch.records] == [
        (r.key, r.value, r.content_type, r.stamp, r.deleted) for r in stored
    ]
    assert all(record.chain == (a.store.node_id,) for record in batch.records)
    assert await b.held() == await a.held()
    assert (await b.store.backend.get("/bin")).chain == (a.store.node_id,)
    assert status(a)["cursor"] == 4
    assert await a.store.get_meta(cursor_meta(b.url)) == "4"


@pytest_twisted.ensureDeferred
async def test_batches_are_bounded_by_count() -> None:
    """With batch_records=2, five changes go as batches of 2, 2 and 1, in seq order."""
    clock, network, a, b = await two_nodes(batch_records=2)
    for name in "vwxyz":
        await a.store.put(f"/{name}", b"1")
    settle(clock, [a, b])
    assert keys_sent(network, b.url) == [["/v", "/w"], ["/x", "/y"], ["/z"]]
    assert status(a)["cursor"] == 5


@pytest_twisted.ensureDeferred
async def test_batches_are_bounded_by_bytes() -> None:
    """Batches stay within batch_bytes; a record bigger than the limit still goes, alone."""
    clock, network, a, b = await two_nodes(batch_bytes=1100)
    for key, size in [("/a", 300), ("/b", 300), ("/c", 300), ("/l", 5000), ("/d", 300)]:
        await a.store.put(key, b"v" * size)
    settle(clock, [a, b])
    assert keys_sent(network, b.url) == [["/a", "/b"], ["/c"], ["/l"], ["/d"]]
    stored = {record.key: record for record in (await a.store.changes(0)).records}
    for keys in keys_sent(network, b.url):
        assert len(keys) == 1 or sum(record_size(stored[key]) for key in keys) <= 1100
    assert await b.held() == await a.held()


@pytest_twisted.ensureDeferred
async def test_cut_batch_takes_the_longest_head_within_the_limit() -> None:
    """cut_batch keeps the longest head of the records within the limit, and a first record
    over the limit alone."""
    _clock, _network, a, _b = await two_nodes()
    for key in ("/a", "/b", "/c"):
        await a.store.put(key, b"x" * 30)
    records = (await a.store.changes(0)).records
    size = record_size(records[0])
    assert cut_batch([], 10) == []
    assert cut_batch(records, 1) == records[:1]
    assert cut_batch(records, 2 * size) == records[:2]
    assert cut_batch(records, 2 * size + 1) == records[:2]
    assert cut_batch(records, 3 * size) == records


FAULTS: dict[str, Callable[[Network, Node], Any]] = {
    "500": lambda network, b: answer(500, {"error": "internal_error", "message": "boom"}),
    "dropped connection": lambda network, b: fail(ConnectionLost("the peer hung up")),
    "not an ack": lambda network, b: answer(200, b"<html>hello</html>"),
    "wrong count": lambda network, b: answer(200, encode_ack(b.store.node_id, 0, 0)),
    "timeout": lambda network, b: hang,
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest_twisted.ensureDeferred
async def test_cursor_advances_only_on_a_valid_ack(fault: str) -> None:
    """A 500, a dropped connection, an answer that is not an ack of the batch, or no answer in
    time leave the cursor where it was; the retry after the backoff delivers and advances it."""
    clock, network, a, b = await two_nodes(warm=True)
    network.script(b.url, FAULTS[fault](network, b))
    await a.store.put("/k", b"v")
    clock.advance(0)
    if fault == "timeout":
        assert status(a)["state"] == "sending"
        clock.advance(30)
        assert network.hanging[0].called  # the request was cancelled
    peer = status(a)
    assert (peer["state"], peer["cursor"], peer["failures"]) == ("backoff", 1, 1)
    assert peer["last_error"] and peer["retry_at"]
    assert await a.store.get_meta(cursor_meta(b.url)) == "1"
    clock.advance(0.5)  # the first retry comes within BACKOFF_BASE
    settle(clock, [a, b])
    peer = status(a)
    assert (peer["state"], peer["cursor"], peer["failures"]) == ("idle", 2, 0)
    assert peer["last_success"] == iso_time(clock.seconds())
    assert await a.store.get_meta(cursor_meta(b.url)) == "2"
    assert await b.held() == await a.held()


@pytest_twisted.ensureDeferred
async def test_a_refused_batch_is_retried_not_skipped() -> None:
    """A 4xx (here clock_drift) is logged and retried with backoff: skipping would lose writes."""
    clock, network, a, b = await two_nodes(warm=True)
    drift = {"error": "clock_drift", "message": "stamp is 90000 ms ahead"}
    network.script(b.url, answer(400, drift), answer(400, drift))
    await a.store.put("/k", b"v")
    clock.advance(0)
    assert "clock_drift" in status(a)["last_error"]
    clock.advance(0.5)
    assert (status(a)["failures"], status(a)["cursor"]) == (2, 1)
    clock.advance(1.0)
    settle(clock, [a, b])
    assert keys_sent(network, b.url) == [["/k"], ["/k"], ["/k"]]
    assert status(a)["cursor"] == 2 and await b.held() == await a.held()


@pytest_twisted.ensureDeferred
async def test_cursor_is_resumed_after_a_restart() -> None:
    """A restarted service resumes from the persisted cursor: only what changed since is sent."""
    clock, network, a, b = await two_nodes()
    await a.store.put("/1", b"1")
    await a.store.put("/2", b"2")
    settle(clock, [a, b])
    assert a.service is not None
    await a.service.stopService()
    await a.store.put("/3", b"3")
    await a.store.put("/4", b"4")
    assert keys_sent(network, b.url) == [["/1", "/2"]]
    await a.start()
    settle(clock, [a, b])
    assert keys_sent(network, b.url) == [["/1", "/2"], ["/3", "/4"]]
    assert await b.held() == await a.held()


def test_backoff_delay_is_full_jitter_capped() -> None:
    """Delays are uniform in [0, min(cap, 0.5 * 2**failures)]: the bound doubles, then caps."""
    rng = Random(5)
    for failures in range(12):
        bound = min(30.0, 0.5 * 2**failures)
        draws = [backoff_delay(failures, rng, cap=30.0) for _ in range(200)]
        assert all(0.0 <= draw <= bound for draw in draws)
        assert max(draws) > bound * 0.8  # the whole range is used
    assert backoff_delay(10_000, rng, cap=30.0) <= 30.0


@pytest_twisted.ensureDeferred
async def test_backoff_schedule() -> None:
    """A dead peer is retried after growing, jittered, capped delays drawn from the injected
    Random; status shows the state, the count of failures and when the next retry is. (A pause
    longer than the probe interval also has a probe timer, due sooner.)"""
    clock, network = make_clock(), Network()
    a = await Node.create("a", network, clock)
    service = await a.start(initial_peers=["http://dead.test:1"], random=Random(99), max_backoff=4)
    await a.store.put("/k", b"v")
    clock.advance(0)
    replay = Random(99)
    for failures in range(10):
        calls = clock.getDelayedCalls()
        retry = max(calls, key=lambda call: call.getTime())
        delay = retry.getTime() - clock.seconds()
        assert len(calls) == (2 if delay > PROBE_INTERVAL else 1)
        bound = min(4.0, 0.5 * 2**failures)
        assert delay == pytest.approx(replay.uniform(0.0, bound))
        assert 0.0 <= delay <= bound
        peer = service.peers()[0]
        assert (peer["state"], peer["failures"]) == ("backoff", failures + 1)
        assert peer["retry_at"] == iso_time(retry.getTime())
        assert "ConnectionRefusedError" in peer["last_error"]
        clock.advance(delay)
    assert len(network.posts()) == 11


@pytest_twisted.ensureDeferred
async def test_wakes_on_every_change_and_never_polls() -> None:
    """An idle pusher sends nothing however long it waits, and wakes on the next change."""
    clock, network, a, b = await two_nodes()
    clock.advance(3600)
    assert network.sent == []
    await a.store.put("/k", b"v")
    assert a.service is not None and not a.service.is_idle()
    clock.advance(0)
    assert keys_sent(network, b.url) == [["/k"]]
    assert a.service.is_idle()


@pytest_twisted.ensureDeferred
async def test_one_batch_in_flight_per_peer() -> None:
    """While a batch is unanswered, new changes start no second request to the same peer; the
    retry carries them all."""
    clock, network, a, b = await two_nodes(warm=True)
    network.script(b.url, hang)
    await a.store.put("/1", b"1")
    clock.advance(0)
    for name in ("/2", "/3"):
        await a.store.put(name, b"v")
        clock.advance(0)
    assert len(network.posts()) == 1 and status(a)["state"] == "sending"
    assert a.service is not None and not a.service.is_idle()
    clock.advance(30)  # the deadline cancels it
    clock.advance(0.5)
    settle(clock, [a, b])
    assert keys_sent(network, b.url) == [["/1"], ["/1", "/2", "/3"]]


@pytest_twisted.ensureDeferred
async def test_stop_cancels_the_request_in_flight() -> None:
    """stopService fires once the unanswered request is cancelled; the cursor stays."""
    clock, network, a, b = await two_nodes()
    network.script(b.url, hang)
    await a.store.put("/1", b"1")
    clock.advance(0)
    assert a.service is not None
    stopped = a.service.stopService()
    assert stopped.called and network.hanging[0].called
    assert (status(a)["state"], status(a)["cursor"]) == ("stopped", 0)
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_status_reports_lag_errors_and_success() -> None:
    """While the peer is down the lag (changes and age of the oldest one) grows and the error
    shows; once it is back, the lag is 0 and the last success and node id are known."""
    clock, network, a, b = await two_nodes()
    network.down(b.url)
    await a.store.put("/1", b"1")
    clock.advance(2)
    await a.store.put("/2", b"2")
    clock.advance(3)
    peer = status(a)
    assert (peer["lag_changes"], peer["lag_seconds"], peer["node_id"]) == (2, 5.0, None)
    assert peer["state"] == "backoff" and "ConnectionRefused" in peer["last_error"]
    network.down(b.url, False)
    clock.advance(30)
    settle(clock, [a, b])
    peer = status(a)
    assert (peer["lag_changes"], peer["lag_seconds"], peer["state"]) == (0, 0.0, "idle")
    assert peer["node_id"] == b.store.node_id and peer["cursor"] == 2
    assert peer["last_success"] is not None


@pytest_twisted.ensureDeferred
async def test_no_echo_to_the_origin() -> None:
    """Between two peers of each other, what A wrote is never sent back to A once A's node id
    is known; B's cursor for A still passes it (a batch of only such records is not sent)."""
    clock, network, a, b = await two_nodes()
    assert b.service is not None
    await b.service.add_peer(a.url)
    await a.store.put("/warm-a", b"1")
    await b.store.put("/warm-b", b"1")
    settle(clock, [a, b])
    mark = len(network.posts(source=b.store.node_id))
    for index in range(3):
        await a.store.put(f"/k{index}", b"v")
        settle(clock, [a, b])
    assert len(network.posts(source=b.store.node_id)) == mark
    assert b.service.peers()[0]["cursor"] == await b.store.last_seq()
    assert await b.held() == await a.held()


@pytest_twisted.ensureDeferred
async def test_bridge_chain_forwards_without_echo() -> None:
    """A -> B -> C: a write on A reaches C with the chain [A, B]; B never sends it back to A."""
    clock, network, a, b = await two_nodes()
    c = await Node.create("c", network, clock)
    await c.start()
    assert b.service is not None
    await b.service.set_peers([c.url, a.url])
    await b.store.put("/warm", b"1")  # B learns the node ids of A and C
    settle(clock, [a, b, c])
    mark = len(network.posts(source=b.store.node_id, to=a.url))
    await a.store.put("/k", b"v")
    settle(clock, [a, b, c])
    assert (await c.store.backend.get("/k")).chain == (a.store.node_id, b.store.node_id)
    assert (await b.store.backend.get("/k")).chain == (a.store.node_id,)
    assert len(network.posts(source=b.store.node_id, to=a.url)) == mark
    assert await a.held() == await b.held() == await c.held()


@pytest_twisted.ensureDeferred
async def test_a_ring_carries_a_write_round_once_then_goes_quiet() -> None:
    """A -> B -> C -> A: a write goes round at most once, a write on B takes exactly two
    requests (B -> C -> A), one on A too once C knows A, and the ring then stays silent."""
    clock, network = make_clock(), Network()
    a, b, c = [await Node.create(name, network, clock) for name in "abc"]
    await a.start(initial_peers=[b.url])
    await b.start(initial_peers=[c.url])
    await c.start(initial_peers=[a.url])
    await a.store.put("/first", b"1")
    settle(clock, [a, b, c])
    # C does not know A's node id yet: its echo changes nothing at A, and A's ack names it.
    assert len(network.posts()) == 3
    await b.store.put("/second", b"2")
    settle(clock, [a, b, c])
    assert keys_sent(network, c.url)[-1] == keys_sent(network, a.url)[-1] == ["/second"]
    assert len(network.posts()) == 5
    await a.store.put("/third", b"3")
    settle(clock, [a, b, c])
    assert len(network.posts()) == 7  # A -> B -> C, and C no longer sends it back to A
    clock.advance(600)
    assert len(network.posts()) == 7
    assert await a.held() == await b.held() == await c.held()


@pytest_twisted.ensureDeferred
async def test_a_new_node_behind_the_url_gets_everything() -> None:
    """If the peer's URL now answers with another node id, the cursor restarts from 0."""
    clock, network, a, b = await two_nodes()
    await a.store.put("/1", b"1")
    await a.store.put("/2", b"2")
    settle(clock, [a, b])
    fresh = await Node.create("b", network, clock)
    await fresh.start()
    await a.store.put("/3", b"3")
    settle(clock, [a, fresh])
    assert keys_sent(network, b.url)[1:] == [["/3"], ["/1", "/2", "/3"]]
    assert status(a)["node_id"] == fresh.store.node_id
    assert await fresh.held() == await a.held()


@pytest_twisted.ensureDeferred
async def test_caught_up_fires_once_the_peer_has_everything() -> None:
    """Pusher.caught_up() fires at once when idle, else when the pusher next becomes idle."""
    clock, _network, a, b = await two_nodes()
    assert a.service is not None
    [pusher] = a.service.pushers()
    assert pusher.caught_up().called
    await a.store.put("/k", b"v")
    waiting = pusher.caught_up()
    assert not waiting.called
    clock.advance(0)
    assert waiting.called and pusher.is_idle() and await b.store.get("/k") is not None


# -- probing a peer that gave no answer ---------------------------------------------------------


class Longest(Random):
    """Backoff jitter that always draws the longest pause, so pauses grow 0.5, 1, 2, 4... s."""

    def uniform(self, a: float, b: float) -> float:
        return b


def probes(network: Network, to: str) -> list[Sent]:
    """The ``GET /_health`` requests sent to the origin ``to``."""
    return [sent for sent in network.to(to, "GET") if sent.path == "/_health"]


def watch(clock: Clock, network: Network, to: str, seconds: float) -> list[float]:
    """Advance the clock ``seconds`` by tenths; the times at which probes of ``to`` were sent.

    Also checks that no two requests to ``to`` are ever unanswered at the same time.
    """
    times: list[float] = []
    seen = len(probes(network, to))
    for _ in range(round(seconds * 10)):
        clock.advance(0.1)
        sent = probes(network, to)
        times.extend([clock.seconds()] * (len(sent) - seen))
        seen = len(sent)
        assert sum(1 for waiting in network.hanging if not waiting.called) <= 1
    return times


async def down_peer(**options: Any) -> Nodes:
    """A pushing to B (warm), B down, a write on A failed on it."""
    clock, network, a, b = await two_nodes(warm=True, random=Longest(), **options)
    network.down(b.url)
    await a.store.put("/k", b"v")
    clock.advance(0)
    assert status(a)["failures"] == 1
    return clock, network, a, b


@pytest.mark.parametrize(
    "fault, probed",
    [("refused", True), ("timeout", True), ("lost", True), ("500", False), ("400", False)],
)
@pytest_twisted.ensureDeferred
async def test_only_a_peer_that_gave_no_answer_is_probed(fault: str, probed: bool) -> None:
    """A refused connection, a timeout or a connection lost earn probes during the backoff; an
    HTTP answer (500, 400) does not: the peer is up and said no, so it waits out the backoff."""
    clock, network, a, b = await two_nodes(warm=True, random=Longest(), request_timeout=5)
    outcomes = {
        "refused": lambda: fail(ConnectionRefusedError()),
        "timeout": lambda: hang,
        "lost": lambda: fail(ConnectionLost()),
        "500": lambda: answer(500, {"error": "internal", "message": "boom"}),
        "400": lambda: answer(400, {"error": "clock_drift", "message": "ahead"}),
    }
    network.script(b.url, *[outcomes[fault]() for _ in range(1000)])
    await a.store.put("/k", b"v")
    watch(clock, network, b.url, 40)
    assert status(a)["failures"] >= 4 and status(a)["state"] in ("backoff", "sending")
    assert bool(probes(network, b.url)) is probed
    assert a.service is not None
    assert (a.service.pushers()[0].probes > 0) is probed


@pytest_twisted.ensureDeferred
async def test_probes_come_at_most_once_a_second_and_not_in_short_pauses() -> None:
    """While B is down A probes it at most once a second, never during a pause shorter than a
    second (the retry comes as soon), and the probes do not add failures or push the retry
    back: the backoff schedule is the one without probes."""
    clock, network, a, b = await down_peer()
    times = watch(clock, network, b.url, 60)
    assert times and all(later - earlier >= 0.999 for earlier, later in zip(times, times[1:]))
    assert len(times) <= 60
    # Pauses of 0.5, 1, 2, 4, 8, 16 s (31.5 in all), then 30: a POST at the end of each only.
    assert len(network.posts(to=b.url)) == 1 + 6
    first_probe = times[0] - EPOCH
    assert first_probe >= 0.5 + 1 + 1  # the first pause longer than a second (2 s) + 1 s
    assert status(a)["failures"] == 7


@pytest.mark.parametrize("fault", ["refused", "timeout"])
@pytest_twisted.ensureDeferred
async def test_a_peer_that_answers_again_is_pushed_to_at_once(fault: str) -> None:
    """In the middle of a 30 s backoff, B answers a probe again: A pushes within a second of
    it, long before the retry was due, and the failures count from zero."""
    clock, network, a, b = await down_peer(request_timeout=5)
    if fault == "timeout":
        network.down(b.url, False)
        network.script(b.url, *[hang for _ in range(1000)])
    due = clock.seconds()
    for _ in range(1200):  # until A is in a pause with over 10 s left
        watch(clock, network, b.url, 0.1)
        peer = status(a)
        if peer["state"] == "backoff" and peer["retry_at"]:
            due = datetime.fromisoformat(peer["retry_at"].replace("Z", "+00:00")).timestamp()
            if due - clock.seconds() > 10:
                break
    assert due - clock.seconds() > 10 and status(a)["failures"] >= 5
    assert a.service is not None and a.service.pushers()[0].probes > 0
    writes = [f"/during{index}" for index in range(3)]
    for key in writes:
        await a.store.put(key, b"w")
    network.down(b.url, False)
    network._scripts.clear()  # B answers every request again
    back = clock.seconds()
    while status(a)["state"] != "idle" and clock.seconds() < back + 1.05:
        clock.advance(0.05)
    settle(clock, [a, b])
    assert clock.seconds() <= back + 1.05 < due
    assert await b.held() == await a.held()
    assert all([await b.store.get(key) for key in writes])
    peer = status(a)
    assert (peer["state"], peer["failures"], peer["retry_at"]) == ("idle", 0, None)


@pytest_twisted.ensureDeferred
async def test_probing_stops_when_the_peer_is_removed() -> None:
    """Removing a down peer stops its probes: nothing more is sent to it, no timer is left."""
    clock, network, a, b = await down_peer()
    assert watch(clock, network, b.url, 10)
    assert a.service is not None
    await a.service.remove_peer(b.url)
    sent = len(network.to(b.url))
    assert clock.getDelayedCalls() == []
    watch(clock, network, b.url, 60)
    assert len(network.to(b.url)) == sent


@pytest_twisted.ensureDeferred
async def test_probing_stops_with_the_service_and_a_probe_in_flight_is_cancelled() -> None:
    """Stopping the service while a probe is unanswered cancels it and leaves no timer."""
    clock, network, a, b = await down_peer(request_timeout=5)
    network.down(b.url, False)
    network.script(b.url, *[hang for _ in range(1000)])
    for _ in range(600):  # until a probe is unanswered
        if probes(network, b.url) and network.hanging and not network.hanging[-1].called:
            break
        clock.advance(0.1)
    assert probes(network, b.url) and not network.hanging[-1].called
    assert a.service is not None
    stopped = a.service.stopService()
    assert stopped.called
    assert all(waiting.called for waiting in network.hanging)
    assert clock.getDelayedCalls() == []
    sent = len(network.to(b.url))
    clock.advance(60)
    assert len(network.to(b.url)) == sent


@pytest_twisted.ensureDeferred
async def test_many_down_peers_are_probed_each_at_most_once_a_second() -> None:
    """With 40 peers down, each is probed at most once a second and one request at a time:
    40 probes a second at most in all, none before its own pause is over a second long."""
    clock, network = make_clock(), Network()
    a = await Node.create("a", network, clock)
    dead = [f"http://dead{index}.test:1" for index in range(40)]
    service = await a.start(initial_peers=dead, max_backoff=30)
    await a.store.put("/k", b"v")
    clock.advance(0)
    times: dict[str, list[float]] = {url: [] for url in dead}
    seen = {url: 0 for url in dead}
    for _ in range(300):
        clock.advance(0.1)
        for url in dead:
            sent = probes(network, url)
            times[url].extend([clock.seconds()] * (len(sent) - seen[url]))
            seen[url] = len(sent)
    for url in dead:
        spaced = times[url]
        assert all(later - earlier >= 0.999 for earlier, later in zip(spaced, spaced[1:]))
        assert len(spaced) <= 30
    assert 0 < sum(seen.values()) <= 40 * 30
    assert sum(pusher.probes for pusher in service.pushers()) == sum(seen.values())
    assert all(peer["state"] == "backoff" for peer in service.peers())

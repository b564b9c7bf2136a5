"""Writes that wait for peers: ``?replicas=N|all&timeout=S`` on PUT, POST and DELETE.

Node A pushes to B and C; all three run on memory backends behind
:class:`support.nodes.Network` (StubTreq over each node's API, scripted faults) on one
``task.Clock``. Clients talk to A through its API resource with the service's
:class:`~navistore.replication.replicas.ReplicaTracker` plugged in; nothing sleeps.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from support.nodes import Network, Node, make_clock, settle
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.web.client import ResponseNeverReceived

from navistore.links import iso_time
from navistore.record import Record
from navistore.replication.pusher import URGENT_RETRY
from navistore.replication.replicas import PEERS_NOT_LOADED, ReplicaTracker
from navistore.replication.service import ReplicationService
from navistore.testing.fakehttp import hang


class Call:
    """A request sent, and its outcome once there is one (a treq Deferred waiting on an inner
    one counts as ``called`` already, so that flag cannot say whether it was answered)."""

    def __init__(self, deferred: Deferred[Any]) -> None:
        self.deferred = deferred
        self.outcome: list[Any] = []
        deferred.addBoth(self._finished)

    def _finished(self, result: Any) -> Any:
        self.outcome.append(result)
        return result


class Cluster:
    """A (the node written to) pushing to ``peers``; clients use :attr:`api`."""

    def __init__(self, clock: Clock, network: Network, a: Node, peers: list[Node]) -> None:
        self.clock = clock
        self.network = network
        self.a = a
        self.peers = peers
        assert a.service is not None
        self.service: ReplicationService = a.service
        self.tracker: ReplicaTracker = a.service.replica_waiter()
        self.api = a.api  # the node's own resource, which waits for replicas

    @property
    def nodes(self) -> list[Node]:
        return [self.a, *self.peers]

    def url(self, path: str) -> str:
        return self.a.url + path

    def turn(self, rounds: int = 20) -> None:
        """Let the reactor run what is due now (pushes, acknowledgements), without moving time."""
        for _ in range(rounds):
            self.clock.advance(0)

    def advance(self, seconds: float) -> None:
        """Move time on, then run what became due."""
        self.clock.advance(seconds)
        self.turn()

    async def answer(self, request: Call) -> tuple[int, Any]:
        """The status and body (JSON decoded when it is JSON) of a request that was answered."""
        self.api.flush()
        assert request.outcome, "the request has no answer yet"
        response = await request.deferred
        content = response.content()
        self.api.flush()
        body = await content
        if response.headers.getRawHeaders(b"Content-Type") == [b"application/json"]:
            return response.code, json.loads(body)
        return response.code, body

    def pending(self, request: Call) -> bool:
        """Whether the request still waits for its answer."""
        self.api.flush()
        return not request.outcome

    def put(self, path: str, **kwargs: Any) -> Call:
        """PUT ``v`` at ``path`` on A."""
        return Call(self.api.put(self.url(path), data=b"v", **kwargs))


async def cluster(peer_names: tuple[str, ...] = ("b", "c")) -> Cluster:
    """A pushing to each of ``peer_names``, everything started, warmed up (node ids known) and
    idle; the record of requests starts empty."""
    clock, network = make_clock(), Network()
    a = await Node.create("a", network, clock)
    peers = [await Node.create(name, network, clock) for name in peer_names]
    for peer in peers:
        await peer.start()
    await a.start(initial_peers=[peer.url for peer in peers])
    await a.store.put("/warm", b"0")
    settle(clock, [a, *peers])
    network.sent.clear()
    return Cluster(clock, network, a, peers)


def write(c: Cluster, method: str, path: str) -> Call:
    """Send one write to A (DELETE without a body)."""
    if method == "DELETE":
        return Call(c.api.delete(c.url(path)))
    return Call(c.api.request(method, c.url(path), data=b"v"))


#: What each method answers when it succeeds on a fresh key (DELETE: on an existing key).
SUCCESS = {"PUT": 201, "POST": 201, "DELETE": 200}


async def prepare(cluster: Cluster, method: str, key: str) -> None:
    """Make ``key`` exist everywhere before a DELETE of it (nothing for PUT and POST)."""
    if method == "DELETE":
        await cluster.a.store.put(key, b"old")
        settle(cluster.clock, cluster.nodes)
        cluster.network.sent.clear()


async def holds(node: Node, key: str, deleted: bool) -> bool:
    """Whether ``node`` stores ``key`` live (or, when ``deleted``, as a tombstone)."""
    record = await node.store.backend.get(key)
    return record is not None and record.deleted == deleted


def wait_timers(clock: Clock, seconds: float) -> list[Any]:
    """The delayed calls due ``seconds`` from now: where a replica wait's timer would be."""
    due = clock.seconds() + seconds
    calls = clock.getDelayedCalls()
    return [call for call in calls if call.getTime() == pytest.approx(due, abs=1e-6)]


# -- answering as soon as enough peers have it ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_replicas_one_answers_once_one_peer_acknowledged() -> None:
    """``replicas=1`` answers as soon as one peer acknowledged the write, while the other's
    request still hangs; not before the push happened."""
    c = await cluster()
    b, slow = c.peers
    c.network.script(slow.url, hang)
    request = c.put("/k?replicas=1&timeout=10")
    assert c.pending(request)  # stored here; the pushes go from the next reactor turn
    assert c.tracker.waiting == 1
    c.turn()
    status, body = await c.answer(request)
    assert (status, body) == (201, b"OK")
    assert await holds(b, "/k", False) and not await holds(slow, "/k", False)
    assert c.tracker.waiting == 0 and wait_timers(c.clock, 10) == []


@pytest_twisted.ensureDeferred
async def test_replicas_all_waits_for_every_peer() -> None:
    """``replicas=all`` does not answer while one peer lacks the write, and answers once the
    last one acknowledged it."""
    c = await cluster()
    b, late = c.peers
    c.network.down(late.url)
    request = c.put("/k?replicas=all&timeout=10")
    c.advance(0.2)
    assert await holds(b, "/k", False)
    assert c.pending(request)
    c.network.down(late.url, False)
    c.advance(URGENT_RETRY)
    status, _body = await c.answer(request)
    assert status == 201
    assert await holds(late, "/k", False)
    assert c.tracker.waiting == 0


@pytest.mark.parametrize("method", sorted(SUCCESS))
@pytest_twisted.ensureDeferred
async def test_every_write_method_waits_and_succeeds(method: str) -> None:
    """PUT, POST and DELETE with ``replicas=all`` answer their usual success once every peer has
    the write (the tombstone, for DELETE), and not before."""
    c = await cluster()
    await prepare(c, method, "/k")
    request = write(c, method, "/k?replicas=all")
    assert c.pending(request)
    c.turn()
    status, _body = await c.answer(request)
    assert status == SUCCESS[method]
    for peer in c.peers:
        assert await holds(peer, "/k", deleted=method == "DELETE")


@pytest_twisted.ensureDeferred
async def test_json_answer_after_replicas() -> None:
    """A replicated write asked with ``Accept: application/json`` answers its usual document."""
    c = await cluster()
    request = c.put("/k?replicas=2", headers={"Accept": "application/json"})
    c.turn()
    status, document = await c.answer(request)
    stored = await c.a.store.get("/k")
    assert stored is not None
    assert (status, document) == (
        201,
        {"key": "/k", "version": stored.stamp.encode(), "created": True},
    )


# -- the timeout ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["down", "hanging"])
@pytest.mark.parametrize("method", sorted(SUCCESS))
@pytest_twisted.ensureDeferred
async def test_timeout_answers_504_naming_who_has_it(method: str, fault: str) -> None:
    """Past the timeout the answer is 504 JSON naming the peers that have the write and those
    that do not; the write is stored here all the same, and reaches the slow peer later."""
    c = await cluster()
    b, slow = c.peers
    await prepare(c, method, "/k")
    if fault == "down":
        c.network.down(slow.url)
    else:
        c.network.script(slow.url, hang)
    request = write(c, method, "/k?replicas=all&timeout=3")
    c.advance(2.9)
    assert c.pending(request)
    c.advance(0.1)
    status, document = await c.answer(request)
    stored = await c.a.store.backend.get("/k")
    assert stored is not None and stored.deleted == (method == "DELETE")
    assert status == 504
    assert document["error"] == "replicas_timeout"
    assert "stored on this node" in document["message"]
    assert document["detail"] == {
        "key": "/k",
        "version": stored.stamp.encode(),
        "reached": [b.url],
        "missing": [slow.url],
    }
    assert c.tracker.waiting == 0
    assert not any(pusher.expedited for pusher in c.service.pushers())
    assert not await holds(slow, "/k", deleted=method == "DELETE")
    c.network.down(slow.url, False)
    c.advance(30)  # a hanging request meets its deadline, then the backoff passes
    c.advance(30)
    settle(c.clock, c.nodes)
    assert await holds(slow, "/k", deleted=method == "DELETE")
    assert await slow.held() == await c.a.held()


@pytest_twisted.ensureDeferred
async def test_timeout_zero_answers_at_once() -> None:
    """``timeout=0`` does not wait: the answer says who has the write at that moment."""
    c = await cluster()
    request = c.put("/k?replicas=1&timeout=0")
    status, document = await c.answer(request)
    assert status == 504
    assert document["detail"]["reached"] == []
    assert document["detail"]["missing"] == [peer.url for peer in c.peers]


# -- decided at once -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_more_replicas_than_peers_answers_at_once() -> None:
    """A number larger than the peer count can never be met: 504 at once (no wait for the
    timeout), naming who has the write now; the write still reaches every peer."""
    c = await cluster()
    request = c.put("/k?replicas=3&timeout=60")
    status, document = await c.answer(request)
    assert status == 504
    assert document["error"] == "replicas_unavailable"
    assert "3 replica(s) wanted but this node has 2 peer(s)" in document["message"]
    assert document["detail"]["reached"] == []
    assert document["detail"]["missing"] == [peer.url for peer in c.peers]
    assert c.tracker.waiting == 0 and wait_timers(c.clock, 60) == []
    settle(c.clock, c.nodes)
    for peer in c.peers:
        assert await holds(peer, "/k", False)


@pytest_twisted.ensureDeferred
async def test_all_with_no_peers_is_satisfied_at_once() -> None:
    """``replicas=all`` on a node without peers answers at once: every one of none has it."""
    c = await cluster(peer_names=())
    request = c.put("/k?replicas=all&timeout=60")
    status, _body = await c.answer(request)
    assert status == 201


@pytest_twisted.ensureDeferred
async def test_replicas_zero_does_not_wait() -> None:
    """``replicas=0`` (and an empty value) asks for nothing: the write answers at once."""
    c = await cluster()
    c.network.down(c.peers[0].url)
    for query in ("replicas=0", "replicas="):
        request = c.put(f"/k?{query}&timeout=60")
        status, _body = await c.answer(request)
        assert status in (200, 201)


@pytest.mark.parametrize(
    "query",
    [
        "replicas=-1",
        "replicas=abc",
        "replicas=1.5",
        "replicas=1&timeout=x",
        "replicas=all&timeout=-1",
        "replicas=all&timeout=301",
    ],
)
@pytest.mark.parametrize("method", sorted(SUCCESS))
@pytest_twisted.ensureDeferred
async def test_invalid_values_are_400(method: str, query: str) -> None:
    """A ``replicas`` that is neither a number >= 0 nor ``all``, or a ``timeout`` that is not
    a number of seconds from 0 to 300, is a 400 ``invalid_parameter``."""
    c = await cluster()
    await prepare(c, method, "/k")
    request = write(c, method, f"/k?{query}")
    status, document = await c.answer(request)
    assert status == 400
    assert document["error"] == "invalid_parameter"
    assert c.tracker.waiting == 0


@pytest_twisted.ensureDeferred
async def test_an_invalid_value_writes_nothing() -> None:
    """A write refused with 400 for its ``replicas`` or ``timeout`` stored nothing."""
    c = await cluster()
    request = c.put("/k?replicas=abc")
    status, _document = await c.answer(request)
    assert status == 400
    assert await c.a.store.get("/k") is None


# -- who holds a record --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_record_from_a_peer_is_held_by_that_peer() -> None:
    """A record a peer wrote counts as held by that peer, even while this node's cursor for it
    is stuck behind an earlier write: it is the peer's own (never sent back to it)."""
    clock, network = make_clock(), Network()
    a, b = await Node.create("a", network, clock), await Node.create("b", network, clock)
    await b.start(initial_peers=[a.url])
    await a.start(initial_peers=[b.url])
    await a.store.put("/warm", b"0")
    await b.store.put("/warm-b", b"0")
    settle(clock, [a, b])
    network.script(b.url, hang)  # A's next push to B never gets an answer
    await a.store.put("/first", b"1")
    clock.advance(0)
    await b.store.put("/theirs", b"2")
    for _ in range(10):
        clock.advance(0)
    theirs = await a.store.backend.get("/theirs")
    first = await a.store.backend.get("/first")
    assert theirs is not None and first is not None and theirs.seq is not None
    assert a.service is not None
    [pusher] = a.service.pushers()
    assert pusher.cursor < theirs.seq
    tracker = a.service.replica_waiter()
    assert tracker.report(theirs).reached == (b.url,)
    assert tracker.report(first).missing == (b.url,)
    report = await tracker.wait(theirs, "all", 10)
    assert report.reached == (b.url,) and report.missing == ()


@pytest_twisted.ensureDeferred
async def test_a_peer_that_is_this_node_is_no_replica() -> None:
    """A peer URL behind which the pusher found this very node is neither reached nor missing:
    it holds nothing another node could serve."""
    clock, network = make_clock(), Network()
    a, b = await Node.create("a", network, clock), await Node.create("b", network, clock)
    await b.start()
    alias = "http://a-alias.test:8888"
    a.build(initial_peers=[b.url, alias])
    assert a.resource is not None
    network.attach(alias, a.resource)
    assert a.service is not None
    await a.service.startService()
    await a.store.put("/k", b"v")
    settle(clock, [a, b])
    record = await a.store.backend.get("/k")
    assert record is not None
    report = a.service.replica_waiter().report(record)
    assert (report.reached, report.missing) == ((b.url,), ())


@pytest_twisted.ensureDeferred
async def test_nothing_is_decided_before_the_peer_set_is_loaded() -> None:
    """A wait that starts before replication has loaded its peers does not take the empty set
    for "all": it waits, and answers once the peers it then knows have the write."""
    clock, network = make_clock(), Network()
    a, b = await Node.create("a", network, clock), await Node.create("b", network, clock)
    await b.start()
    service = a.build(initial_peers=[b.url])
    tracker = service.replica_waiter()
    stored = (await a.store.put("/k", b"v")).record
    assert tracker.report(stored).missing == (PEERS_NOT_LOADED,)
    waiting = Deferred.fromCoroutine(tracker.wait(stored, "all", 10))
    clock.advance(0)
    assert not waiting.called
    await service.startService()
    settle(clock, [a, b])
    report = await waiting
    assert (report.reached, report.missing) == ((b.url,), ())


# -- the peer set changing, the wake-up, stopping ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_removing_the_missing_peer_satisfies_all() -> None:
    """``all`` is every peer at each check: removing the peer that lacks the write answers the
    waiting write at once."""
    c = await cluster()
    _b, gone = c.peers
    c.network.down(gone.url)
    request = c.put("/k?replicas=all&timeout=10")
    c.turn()
    assert c.pending(request)
    assert await c.service.remove_peer(gone.url)
    status, _body = await c.answer(request)
    assert status == 201


@pytest_twisted.ensureDeferred
async def test_a_waiting_write_cuts_a_long_backoff_short() -> None:
    """A peer that has been failing for minutes is retried within URGENT_RETRY seconds while a
    write waits for it, so it gets the write as soon as it is back; afterwards the backoff
    grows again."""
    c = await cluster()
    b, late = c.peers
    c.network.down(late.url)
    await c.a.store.put("/before", b"1")
    c.advance(300)  # many failures: the backoff is now up to max_backoff (30 s)
    pusher = c.service.pushers()[1]
    assert pusher.url == late.url and pusher.state == "backoff"
    request = c.put("/k?replicas=all&timeout=20")
    c.turn()
    assert pusher.expedited
    soon = c.clock.seconds() + URGENT_RETRY
    [retry] = [call for call in c.clock.getDelayedCalls() if call.getTime() <= soon]
    assert c.service.peers()[1]["retry_at"] == iso_time(retry.getTime())
    c.network.down(late.url, False)
    c.advance(URGENT_RETRY)
    status, _body = await c.answer(request)
    assert status == 201
    assert await holds(late, "/before", False) and await holds(late, "/k", False)
    assert not pusher.expedited
    stored = await c.a.store.backend.get("/k")
    assert stored is not None
    assert c.tracker.report(stored).reached == (b.url, late.url)


@pytest_twisted.ensureDeferred
async def test_stopping_replication_answers_waiting_writes() -> None:
    """Stopping the replication service answers every waiting write at once (no pusher will
    make progress any more) with who has it."""
    c = await cluster()
    c.network.down(c.peers[1].url)
    request = c.put("/k?replicas=all&timeout=60")
    c.turn()
    assert c.pending(request)
    await c.service.stopService()
    status, document = await c.answer(request)
    assert status == 504
    assert document["detail"]["missing"] == [c.peers[1].url]


# -- cancellation --------------------------------------------------------------------------------


async def stored_record(c: Cluster, key: str) -> Record:
    """Write ``key`` on A and return the stored record (seq set)."""
    return (await c.a.store.put(key, b"v")).record


@pytest_twisted.ensureDeferred
async def test_cancelling_a_wait_leaves_nothing_behind() -> None:
    """Cancelling a wait (what a client going away does) ends it at once: no timer, no entry
    among the waiting writes, no pusher left expedited; later progress touches nothing."""
    c = await cluster()
    c.network.down(c.peers[1].url)
    record = await stored_record(c, "/k")
    waiting = Deferred.fromCoroutine(c.tracker.wait(record, "all", 10))
    c.turn()
    assert not waiting.called and c.tracker.waiting == 1
    assert len(wait_timers(c.clock, 10)) == 1
    assert c.service.pushers()[1].expedited
    waiting.cancel()
    with pytest.raises(CancelledError):
        await waiting
    assert c.tracker.waiting == 0
    assert wait_timers(c.clock, 10) == []
    assert not any(pusher.expedited for pusher in c.service.pushers())
    c.network.down(c.peers[1].url, False)
    c.advance(30)
    settle(c.clock, c.nodes)  # progress after the cancel: nothing to answer, nothing raised


@pytest_twisted.ensureDeferred
async def test_a_client_that_left_leaves_nothing_past_the_timeout() -> None:
    """A write whose client went away while it waited for replicas is still stored, and its wait
    ends by the timeout at the latest, leaving no timer or waiting entry."""
    c = await cluster()
    c.network.down(c.peers[1].url)
    request = c.put("/k?replicas=all&timeout=10")
    c.turn()
    request.deferred.cancel()
    c.api.flush()
    with pytest.raises(ResponseNeverReceived):
        await request.deferred
    c.advance(10)
    assert c.tracker.waiting == 0 and wait_timers(c.clock, 0) == []
    assert await c.a.store.get("/k") is not None


@pytest_twisted.ensureDeferred
async def test_a_client_going_away_cancels_the_wait() -> None:
    """When the client of a waiting write goes away, the wait ends at once (the write stays)."""
    c = await cluster()
    c.network.down(c.peers[1].url)
    request = c.put("/k?replicas=all&timeout=10")
    c.turn()
    assert c.tracker.waiting == 1
    request.deferred.cancel()
    c.api.flush()
    with pytest.raises(ResponseNeverReceived):
        await request.deferred
    c.turn()
    assert c.tracker.waiting == 0
    assert await c.a.store.get("/k") is not None

"""Replication under a deterministic in-process cluster simulation (navistore.testing).

Nodes are Stores on memory backends behind their real resource trees, with the real replication
service, on a fake network (one ``task.Clock``, one seeded RNG) that delays, drops, duplicates and
reorders requests and partitions nodes. No reactor runs: every test is synchronous and a run is a
pure function of its seed. A failing seed's message says how to replay it with every event shown.
"""

from __future__ import annotations

import random

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from navistore.node import NodeConfig
from navistore.protocol.batches import decode_batch
from navistore.testing.cluster import Cluster, SimulationError
from navistore.testing.fakenet import FakeNetwork, FakeResponse, Faults
from navistore.testing.simulation import replay_hint, run_schedule

#: Operations per seed: sized so that the 50 seeds run in well under a minute on 2 cores.
STEPS = 100

# -- the fake network on its own ---------------------------------------------------------------


class Counter(Resource):
    """Answers every request with ``ok <n>`` and counts the requests it served."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        self.bodies.append(request.content.read())
        return b"ok %d" % len(self.bodies)


def make_network(faults: Faults | None = None) -> tuple[Clock, FakeNetwork, Counter]:
    """A network (seed 1) with one Counter attached as node ``server``."""
    clock = Clock()
    network = FakeNetwork(clock, random.Random(1), faults)
    server = Counter()
    network.attach("server", server)
    return clock, network, server


def outcome(clock: Clock, network: FakeNetwork, sent: Deferred[FakeResponse]) -> object:
    """Run the clock for a minute and return what the request came to (response or Failure)."""
    results: list[object] = []
    sent.addBoth(results.append)
    for _tick in range(600):
        clock.advance(0.1)
        network.pump()
    assert len(results) == 1
    return results[0]


def test_network_delivers_through_the_resource() -> None:
    """A request reaches the server's resource with its body, and the answer comes back."""
    clock, network, server = make_network()
    answer = outcome(
        clock, network, network.client_for("a").post("http://server:8888/x", data=b"hi")
    )
    assert isinstance(answer, FakeResponse)
    assert (answer.code, answer.body, server.bodies) == (200, b"ok 1", [b"hi"])
    assert network.in_flight() == 0


def test_network_dropped_request_times_out_unseen() -> None:
    """A dropped request never reaches the server; the client fails at its timeout."""
    clock, network, server = make_network(Faults(drop_request=1.0))
    failure = outcome(
        clock, network, network.client_for("a").post("http://server:8888/", timeout=3)
    )
    assert isinstance(failure, Failure) and failure.check(TimeoutError)
    assert server.bodies == []
    assert [e.event for e in network.trace] == ["send", "drop-request", "fail"]


def test_network_dropped_response_was_served() -> None:
    """A dropped answer means the server did the work but the client sees a failure."""
    clock, network, server = make_network(Faults(drop_response=1.0))
    failure = outcome(
        clock, network, network.client_for("a").post("http://server:8888/", data=b"x")
    )
    assert isinstance(failure, Failure)
    assert server.bodies == [b"x"]


def test_network_duplicate_is_served_twice_answered_once() -> None:
    """A duplicated request is served twice; the client gets one answer."""
    clock, network, server = make_network(Faults(duplicate=1.0))
    answer = outcome(clock, network, network.client_for("a").post("http://server:8888/", data=b"x"))
    assert isinstance(answer, FakeResponse)
    assert server.bodies == [b"x", b"x"]
    assert network.in_flight() == 0


def test_network_partition_and_down_nodes() -> None:
    """Across a partition requests time out unseen; to a detached node they are refused."""
    clock, network, server = make_network()
    client = network.client_for("a")
    network.partition([["a"], ["server"]])
    cut = outcome(clock, network, client.get("http://server:8888/", timeout=2))
    assert isinstance(cut, Failure) and cut.check(TimeoutError)
    network.heal()
    network.detach("server")
    down = outcome(clock, network, client.get("http://server:8888/"))
    assert isinstance(down, Failure) and down.check(ConnectionRefusedError)
    assert server.bodies == []


# -- the random schedule -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(50), ids=lambda seed: f"seed-{seed}")
def test_random_schedule_converges_and_loses_nothing(seed: int) -> None:
    """After a random schedule of writes, deletes, conditional writes, partitions, restarts
    and network faults, then healing, every node holds the same records (tombstones and stamps
    included) and each key is at its newest acknowledged write or delete."""
    try:
        run_schedule(seed, steps=STEPS)
    except SimulationError as exc:
        pytest.fail(str(exc), pytrace=False)


def test_same_seed_same_run() -> None:
    """A seed is replayable: two runs of it produce the same network trace and states."""
    first = run_schedule(11, steps=STEPS)
    second = run_schedule(11, steps=STEPS)
    assert len(first.network.trace) > 50
    assert first.network.trace == second.network.trace
    assert first.states() == second.states()


def test_replay_hint_names_the_seed() -> None:
    """A failing seed's message tells how to rerun exactly that seed, verbosely."""
    hint = replay_hint(17, STEPS)
    assert 'pytest tests/test_simulation.py -k "seed-17]"' in hint
    assert f"run_schedule(17, steps={STEPS}, verbose=True)" in hint


# -- focused scenarios -------------------------------------------------------------------------


def pushes(cluster: Cluster) -> list[tuple[str, str, int]]:
    """(source, target, number of records) of every batch pushed so far.

    Batches without records (a pusher learning its peer's node id) are included.
    """
    return [
        (event.source, event.target, len(decode_batch(event.body).records))
        for event in cluster.network.sent("POST", "/_replicate")
    ]


def carrying(cluster: Cluster) -> list[tuple[str, str]]:
    """(source, target) of every pushed batch that carried records."""
    return [(source, target) for source, target, count in pushes(cluster) if count]


def test_partitioned_node_catches_up_after_heal() -> None:
    """A node cut off while 200 writes happen elsewhere receives all of them after healing."""
    cluster = Cluster(
        3, seed=1, config=NodeConfig(backend_url="memory:", open_mode=True, batch_records=50)
    )
    cluster.partition([["node-2"], ["node-0", "node-1"]])
    for index in range(200):
        cluster.write(index % 2, f"/bulk/{index}", b"v%d" % index)
        cluster.advance(0.05)
    assert cluster.state("node-2") == []
    assert len(cluster.state("node-0")) == 200
    cluster.heal()
    cluster.run_until_quiet()
    cluster.check_converged()
    cluster.check_acknowledged()


def test_chain_carries_a_write_to_the_end_and_nothing_back() -> None:
    """In a chain node-0 -> node-1 -> node-2 a write on node-0 reaches node-2 in one batch per
    hop, and nothing is ever sent towards node-0 or out of node-2."""
    cluster = Cluster(3, seed=2, topology="chain")
    record = cluster.write(0, "/app/db/host", b"db1.lan")
    cluster.run_until_quiet()
    held = cluster.state("node-2")
    state = ("/app/db/host", b"db1.lan", record.content_type, record.stamp.encode(), False, None)
    assert held == [state]
    assert carrying(cluster) == [("node-0", "node-1"), ("node-1", "node-2")]
    sent = cluster.network.sent()
    assert not [event for event in sent if event.target == "node-0" or event.source == "node-2"]


def test_ring_goes_quiet_after_one_round() -> None:
    """In a ring node-0 -> node-1 -> node-2 -> node-0 a write goes round at most once and the
    cluster goes quiet; the next write is not even sent back to its writer, and no request
    follows once the cluster is quiet."""
    cluster = Cluster(3, seed=3, topology="ring")
    cluster.write(0, "/k", b"v")
    cluster.run_until_quiet()
    one_round = [("node-0", "node-1"), ("node-1", "node-2"), ("node-2", "node-0")]
    assert carrying(cluster) in (one_round, one_round[:2])
    first_round = len(cluster.network.sent())
    assert first_round <= 6  # each hop: at most one batch and one learning the peer's id
    cluster.write(0, "/k", b"w")
    cluster.run_until_quiet()
    assert pushes(cluster)[first_round:] == [("node-0", "node-1", 1), ("node-1", "node-2", 1)]
    cluster.advance(120.0)
    assert len(cluster.network.sent()) == first_round + 2
    cluster.check_converged()
    cluster.check_acknowledged()


def test_dropped_responses_cause_harmless_retries() -> None:
    """When the receiver applied a batch but its answer was lost, the sender retries; the
    retried batch changes nothing on the receiver (applied once, same seq) and the cluster
    converges."""
    cluster = Cluster(2, seed=4)
    cluster.write(0, "/k", b"v")
    cluster.run_until_quiet()
    cluster.network.faults = Faults(drop_response=1.0)
    cluster.write(0, "/k", b"w")
    cluster.advance(3.0)
    assert [record[1] for record in cluster.state("node-1")] == [b"w"]
    seq_before = cluster.resolve(cluster.node(1).backend.last_seq())
    assert not cluster.is_quiet()
    cluster.network.faults = Faults()
    cluster.run_until_quiet()
    deliveries = [
        event
        for event in cluster.network.trace
        if event.event == "deliver" and event.target == "node-1"
    ]
    assert len(deliveries) >= 3  # "v", then "w" at least twice
    assert cluster.resolve(cluster.node(1).backend.last_seq()) == seq_before == 2
    cluster.check_converged()
    cluster.check_acknowledged()


def test_restart_while_catching_up_loses_nothing() -> None:
    """Restarting the sender, then the receiver, in the middle of a catch-up (small batches)
    loses nothing: cursors are persisted and the change log is the queue."""
    cluster = Cluster(
        3, seed=5, config=NodeConfig(backend_url="memory:", open_mode=True, batch_records=10)
    )
    cluster.partition([["node-2"], ["node-0", "node-1"]])
    for index in range(150):
        cluster.write(0, f"/bulk/{index % 120}", b"v%d" % index)
    cluster.advance(1.0)
    cluster.heal()
    deadline = cluster.now() + 60.0
    while len(cluster.state("node-2")) < 30 and cluster.now() < deadline:
        cluster.advance(0.01)
    cluster.restart(0)
    cluster.advance(0.2)
    assert 30 <= len(cluster.state("node-2")) < 120  # still catching up
    cluster.restart(2, downtime=3.0)
    cluster.run_until_quiet()
    cluster.check_converged()
    cluster.check_acknowledged()


def test_concurrent_writes_converge_on_the_greatest_stamp() -> None:
    """The same key written on every side of a partition ends, after healing, at the write with
    the greatest stamp on every node; a delete on one side competes like any write."""
    cluster = Cluster(4, seed=6)
    cluster.partition([[0], [1], [2, 3]])
    cluster.write(0, "/k", b"zero")
    cluster.write(1, "/k", b"one")
    cluster.write(2, "/k", b"two")
    cluster.write(3, "/gone", b"x")
    cluster.advance(2.0)
    cluster.delete(2, "/gone")
    cluster.write(0, "/gone", b"back")
    cluster.heal()
    cluster.run_until_quiet()
    cluster.check_converged()
    cluster.check_acknowledged()


def test_not_quiet_is_a_clear_failure() -> None:
    """run_until_quiet gives up with a description of each node when a peer stays down."""
    cluster = Cluster(2, seed=7)
    cluster.stop(1)
    cluster.write(0, "/k", b"v")
    with pytest.raises(SimulationError, match="not quiet after") as raised:
        cluster.run_until_quiet(max_seconds=60)
    assert "node-1" in str(raised.value) and "down" in str(raised.value)


# -- TTLs across a cluster ----------------------------------------------------------------------


def test_a_lease_refreshed_across_a_partition_survives_its_old_expiry() -> None:
    """A key written with a 5 s TTL is refreshed (20 s) on the other side of a partition before
    its deadline. The cut-off node expires the old version on its own; after the heal every node
    holds the refresh, which beat that expiry; past the new deadline every node holds the same
    expiry, stamped from the refresh."""
    cluster = Cluster(3, seed=4)
    first = cluster.write(0, "/lease", b"holder", ttl_ms=5_000)
    cluster.run_until_quiet()
    cluster.partition([["node-0"], ["node-1", "node-2"]])
    cluster.advance(3)
    refresh = cluster.write(1, "/lease", b"holder", ttl_ms=20_000)
    cluster.advance(4)
    [alone] = cluster.state("node-0")
    assert alone[4] is True and alone[3] == first.stamp.successor().encode()  # expired there
    assert cluster.resolve(cluster.store(1).get("/lease")) == refresh
    cluster.heal()
    cluster.run_until_quiet()
    cluster.check_converged()
    assert [state[:5] for state in cluster.state("node-0")] == [
        ("/lease", b"holder", refresh.content_type, refresh.stamp.encode(), False)
    ]
    cluster.advance(20)
    cluster.run_until_quiet()
    cluster.check_converged()
    cluster.check_acknowledged()
    [expired] = cluster.state("node-2")
    assert expired[3:] == (refresh.stamp.successor().encode(), True, refresh.expires_ms)


def test_random_schedules_write_leases_and_expire_them() -> None:
    """The random schedules do exercise TTLs: leases are written, and expiries replicate."""
    cluster = run_schedule(7, steps=150)
    leases = [ack for ack in cluster.acks if ack.expires_ms is not None]
    expired = [state for state in cluster.state("node-0") if state[4] and state[5] is not None]
    assert leases and expired

"""Tombstone garbage collection (navistore.replication.gc).

The bound computation is checked on its own (a pure function over records). The collector is
checked on one Store driven by a ``task.Clock``. The guarantee that matters, that collection never
makes a peer miss a delete, is checked in the deterministic cluster simulation
(navistore.testing.cluster): a collector per node on the shared clock, a delete while a peer is
cut off, the retention passing, then the heal. A collector that ignores the peers' cursors is run
through the same script to show that the script would catch the loss.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Callable, TypeVar

import pytest
from support.deferreds import fired
from twisted.internet.task import Clock

from navistore.backend.memory import MemoryBackend
from navistore.clock import Stamp
from navistore.conflicts import is_hidden
from navistore.links import PeerLink
from navistore.node import NodeConfig
from navistore.record import Record
from navistore.replication.gc import Cursors, PurgeBound, TombstoneCollector, purge_bound
from navistore.replication.service import ReplicationService
from navistore.store import Store
from navistore.testing.cluster import Cluster, SimulationError
from navistore.testing.fakehttp import FakeHTTP
from navistore.testing.fakenet import Faults

T = TypeVar("T")

#: Retention and interval of the collectors in the simulations, in simulated seconds.
RETENTION = 60.0
INTERVAL = 5.0


# -- the bound --------------------------------------------------------------------------------


def rec(seq: int, wall_ms: int, deleted: bool = False) -> Record:
    """A record at ``seq`` whose stamp has wall time ``wall_ms``."""
    stamp = Stamp(wall_ms, 0, "a" * 16)
    if deleted:
        return Record.tombstone(f"/k{seq}", stamp).with_seq(seq)
    return Record(f"/k{seq}", b"v", "text/plain", stamp, seq=seq)


@pytest.mark.parametrize(
    ("records", "cutoff", "cursor", "expected"),
    [
        # Nothing at all, or no tombstone: nothing to purge, and the scan may go on.
        ([], 100, None, PurgeBound(0, False)),
        ([rec(1, 10), rec(2, 10)], 100, None, PurgeBound(0, False)),
        # Old tombstones, no peers: up to the last one.
        ([rec(1, 10, True), rec(2, 10), rec(3, 10, True)], 100, None, PurgeBound(4, False)),
        # A peer's cursor stops the scan: its seq + 1 at most.
        ([rec(1, 10, True), rec(2, 10, True), rec(3, 10, True)], 100, 2, PurgeBound(3, True)),
        ([rec(1, 10, True), rec(2, 10, True)], 100, 0, PurgeBound(0, True)),
        # The first record younger than the retention stops it, tombstone or not; records
        # after it stay even when old (a peer's old record arrives with a new seq).
        ([rec(1, 10, True), rec(2, 500), rec(3, 10, True)], 100, None, PurgeBound(2, True)),
        ([rec(1, 10, True), rec(2, 500, True)], 100, 9, PurgeBound(2, True)),
        # A stamp exactly at the cutoff is old enough.
        ([rec(1, 100, True)], 100, None, PurgeBound(2, False)),
    ],
)
def test_purge_bound(
    records: list[Record], cutoff: int, cursor: int | None, expected: PurgeBound
) -> None:
    """The bound is one past the last tombstone that every peer acknowledged and that only old
    records precede in seq order; the scan stops at the first record it may not pass."""
    assert purge_bound(records, cutoff_ms=cutoff, peer_cursor=cursor) == expected


def test_purge_bound_carries_over_pages() -> None:
    """A bound found on an earlier page is kept when a later page has no tombstone."""
    first = purge_bound([rec(1, 10, True)], cutoff_ms=100, peer_cursor=None)
    second = purge_bound(
        [rec(2, 10), rec(3, 900)], cutoff_ms=100, peer_cursor=None, before_seq=first.before_seq
    )
    assert second == PurgeBound(2, True)


# -- one collector ----------------------------------------------------------------------------


class OneNode:
    """A Store whose wall clock is a ``task.Clock`` (in ms), with a collector over it."""

    def __init__(self, cursors: Sequence[int] | None = (), retention: float = 100.0) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.cursors = cursors

        def wall_ms() -> int:
            return int(self.clock.seconds() * 1000)

        self.store = fired(Store.open(MemoryBackend(), wall_ms=wall_ms))

        async def peer_cursors() -> Sequence[int] | None:
            return self.cursors

        self.collector = TombstoneCollector(
            self.store, cursors=peer_cursors, clock=self.clock, retention=retention, interval=10
        )

    def tombstone(self, key: str) -> int:
        """Write and delete ``key``; the seq of its tombstone."""
        fired(self.store.put(key, b"v"))
        return fired(self.store.delete(key)).seq or 0

    def held(self, key: str) -> Record | None:
        """What the backend holds for ``key``, tombstones included."""
        record: Record | None = fired(self.store.backend.get(key))
        return record


def test_collector_purges_old_tombstones_below_every_cursor() -> None:
    """Only tombstones both older than the retention and acknowledged by every peer go, and
    the horizon is recorded."""
    node = OneNode(cursors=[9, 4])
    first = node.tombstone("/a")  # seq 2
    second = node.tombstone("/b")  # seq 4
    third = node.tombstone("/c")  # seq 6: not acknowledged by the second peer
    assert fired(node.collector.collect()) == 0  # nothing is old yet
    node.clock.advance(100)
    assert fired(node.collector.collect()) == 2
    assert node.held("/a") is None and node.held("/b") is None
    assert node.held("/c") is not None
    assert fired(node.store.purged_before()) == second + 1
    assert (first, third) == (2, 6)
    node.cursors = [9, 9]
    assert fired(node.collector.collect()) == 1
    assert fired(node.store.purged_before()) == third + 1


def test_collector_without_peers_is_bound_by_age_only() -> None:
    """With no peers, the first record younger than the retention is the only bound."""
    node = OneNode(cursors=[])
    node.tombstone("/old")
    node.clock.advance(60)
    node.tombstone("/middle")
    node.clock.advance(50)
    assert fired(node.collector.collect()) == 1
    assert node.held("/old") is None and node.held("/middle") is not None


def test_collector_skips_a_run_while_peers_are_unknown() -> None:
    """Until the peer set is known (cursors None), nothing is purged."""
    node = OneNode(cursors=None)
    node.tombstone("/a")
    node.clock.advance(1000)
    assert fired(node.collector.collect()) == 0
    assert node.held("/a") is not None


def test_collector_runs_on_schedule_and_stops() -> None:
    """The first run comes ``first_delay`` after start (a minute at most), then one every
    interval; after stop no run comes."""
    node = OneNode(cursors=[], retention=0)
    node.tombstone("/a")
    node.collector.startService()
    node.clock.advance(9.9)
    assert node.collector.runs == 0
    node.clock.advance(0.1)
    assert node.collector.runs == 1 and node.held("/a") is None
    node.clock.advance(10)
    assert node.collector.runs == 2
    fired(node.collector.stopService())
    node.clock.advance(100)
    assert node.collector.runs == 2 and not node.clock.getDelayedCalls()


def test_the_collector_reads_the_persisted_cursors_of_the_replication_service() -> None:
    """The cursors come from the Store's meta data, one per peer (0 for one never persisted);
    None before the service knows its peers, so that a run never takes "not loaded yet" for
    "no peers"."""
    store = fired(Store.open(MemoryBackend()))
    urls = ["http://10.0.0.1:8888", "http://10.0.0.2:8888"]
    replication = ReplicationService(store, link=PeerLink(FakeHTTP(), Clock()), initial_peers=urls)
    fired(store.set_meta("replication.cursor.http://10.0.0.1:8888", "7"))
    assert fired(replication.cursors()) is None
    fired(replication.startService())
    assert fired(replication.cursors()) == [7, 0]
    fired(replication.set_peers([]))
    assert fired(replication.cursors()) == []
    fired(replication.stopService())


# -- the guarantee, in the simulation ---------------------------------------------------------


#: Every node of the simulations below collects tombstones this often, keeping them this long.
GC_CONFIG = NodeConfig(
    backend_url="memory:",
    open_mode=True,
    tombstone_retention=RETENTION,
    tombstone_gc_interval=INTERVAL,
)


def careless(replication: ReplicationService) -> Cursors:
    """Cursors for a collector that purges by age alone, as if there were no peers."""

    async def no_peers() -> Sequence[int] | None:
        found = await replication.cursors()
        return None if found is None else []

    return no_peers


def held(cluster: Cluster, node: int, key: str) -> Record | None:
    """What a node's backend holds for ``key`` (tombstones included), up or down."""
    record: Record | None = cluster.resolve(cluster.node(node).backend.get(key))
    return record


def live_states(cluster: Cluster) -> dict[str, dict[str, tuple[bytes, str]]]:
    """Each node's live keys with their value and version (not the conflict losers kept, which
    tests/test_conflicts.py checks)."""
    return {
        name: {
            key: (value, stamp)
            for key, value, _type, stamp, deleted, _deadline in state
            if not deleted and not is_hidden(key)
        }
        for name, state in cluster.states().items()
    }


def cut_off(cluster: Cluster, how: str) -> Callable[[], None]:
    """Cut node-2 off (partition, or stop it); return what brings it back."""
    if how == "partition":
        cluster.partition([[0, 1], [2]])
        return cluster.heal
    cluster.stop(2)
    return lambda: cluster.start(2)


@pytest.mark.parametrize("how", ["partition", "stop"])
def test_gc_never_makes_a_cut_off_peer_miss_a_delete(how: str) -> None:
    """A delete made while a peer is cut off is kept, however long the retention has passed,
    until that peer acknowledged it: after the heal the peer deletes the key too, and no node
    ever resurrects it. Tombstones every peer has are purged meanwhile."""
    cluster = Cluster(3, seed=11, config=GC_CONFIG)
    cluster.write(0, "/early", b"x")
    cluster.run_until_quiet()
    cluster.delete(0, "/early")
    cluster.write(1, "/k", b"v")
    cluster.run_until_quiet()
    bring_back = cut_off(cluster, how)
    tombstone = cluster.delete(0, "/k")
    cluster.advance(RETENTION * 5)
    for node in (0, 1):
        assert held(cluster, node, "/early") is None, "an acknowledged tombstone was kept"
        kept = held(cluster, node, "/k")
        assert kept is not None and kept.deleted and kept.stamp == tombstone.stamp
    missed = held(cluster, 2, "/k")
    assert missed is not None and not missed.deleted
    bring_back()
    cluster.run_until_quiet()
    cluster.advance(RETENTION * 3)
    cluster.run_until_quiet()
    states = live_states(cluster)
    assert all("/k" not in live for live in states.values()), states
    assert all(held(cluster, node, "/k") is None for node in range(3)), "never purged"
    cluster.check_converged()


def test_careless_gc_would_make_the_peer_miss_the_delete() -> None:
    """The same script with a collector that ignores the cursors leaves the cut-off peer with
    the deleted key for good: the simulation above would notice a collector that forgot the
    peers."""
    cluster = Cluster(3, seed=11, config=GC_CONFIG, tombstone_cursors=careless)
    cluster.write(1, "/k", b"v")
    cluster.run_until_quiet()
    cluster.partition([[0, 1], [2]])
    cluster.delete(0, "/k")
    cluster.advance(RETENTION * 5)
    cluster.heal()
    cluster.run_until_quiet()
    states = live_states(cluster)
    assert "/k" in states["node-2"] and "/k" not in states["node-0"]
    with pytest.raises(SimulationError):
        cluster.check_converged()


@pytest.mark.parametrize("seed", range(8))
def test_random_schedule_with_gc_never_resurrects(seed: int) -> None:
    """Random writes, deletes, partitions, restarts and long pauses over a faulty network,
    with collectors purging all along: once healed and quiet, every node holds exactly the
    newest acknowledged live value of each key, and no key whose newest write is a delete."""
    rng = random.Random(seed)
    cluster = Cluster(
        3,
        seed=seed,
        faults=Faults(drop_request=0.05, drop_response=0.05, duplicate=0.05, max_delay=0.2),
        config=GC_CONFIG,
    )
    keys = [f"/k{index}" for index in range(6)]
    for step in range(120):
        node = rng.choice(cluster.up())
        choice = rng.random()
        key = rng.choice(keys)
        if choice < 0.45:
            cluster.write(node, key, b"%d" % step)
        elif choice < 0.7:
            if cluster.resolve(cluster.store(node).get(key)) is not None:
                cluster.delete(node, key)
        elif choice < 0.78:
            names = list(cluster.nodes)
            rng.shuffle(names)
            cluster.partition([names[:1], names[1:]])
        elif choice < 0.85:
            cluster.heal()
        elif choice < 0.9 and len(cluster.up()) == 3:
            cluster.restart(node, rng.uniform(0, RETENTION))
        else:
            cluster.advance(rng.uniform(0, RETENTION * 2))
        cluster.advance(rng.uniform(0, 2))
    cluster.heal()
    cluster.run_until_quiet()
    cluster.advance(RETENTION * 3)
    cluster.run_until_quiet()
    newest: dict[str, Any] = {}
    for ack in cluster.acks:
        if ack.key not in newest or ack.stamp > newest[ack.key].stamp:
            newest[ack.key] = ack
    expected = {
        key: (ack.value, ack.stamp.encode()) for key, ack in newest.items() if not ack.deleted
    }
    for name, live in live_states(cluster).items():
        assert live == expected, f"{name} after seed {seed}"

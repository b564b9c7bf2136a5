"""A cluster of Navistore nodes in one process, on a :class:`~.fakenet.FakeNetwork`.

Every node is a :class:`~navistore.store.Store` over its own
:class:`~navistore.backend.memory.MemoryBackend`, wired by :func:`navistore.node.build_node`
exactly as ``twistd navistore`` wires it (replication, tombstone collector, watch hub, every
endpoint family), served through the fake network and pushing to its peers over it. One
``task.Clock`` drives everything; each node's wall clock is that clock plus a fixed skew. The
cluster is driven synchronously: each operation runs until its Deferred fires, moving the clock
only as far as it must, so a test reads like a script and a run is a pure function of its seed.
"""

from __future__ import annotations

import random
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from typing import Any, Callable, Optional, TypeVar

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from navistore.backend.memory import MemoryBackend
from navistore.clock import Stamp
from navistore.conflicts import is_hidden, parse_conflict_key
from navistore.links import PeerLink
from navistore.node import Node as NodeParts
from navistore.node import NodeConfig, build_node
from navistore.record import Record
from navistore.replication.gc import Cursors
from navistore.replication.service import ReplicationService
from navistore.store import NODE_ID_META, Store
from navistore.testing.fakenet import FakeNetwork, Faults

__all__ = ["EPOCH_MS", "Ack", "Cluster", "Node", "RecordState", "SimulationError"]

#: The wall time (ms since 1970) at which every simulation starts, before each node's skew.
EPOCH_MS = 1_700_000_000_000

#: A record as compared across nodes: key, value, content type, stamp text, deleted, deadline.
#: ``seq`` and ``chain`` are left out: they are local to each node.
RecordState = tuple[str, bytes, str, str, bool, Optional[int]]

_T = TypeVar("_T")


class SimulationError(AssertionError):
    """The cluster misbehaved: it diverged, lost an acknowledged write, or never went quiet."""


class History:
    """What really replaced what: for each write made on a node (not received), the stamp of
    the record it replaced there (tombstones and expiries too), recorded by the backend as it
    stores the write. The ground truth that :meth:`Cluster.check_conflicts` holds each
    conflict loser against, independent of the records' own ``replaces``."""

    def __init__(self) -> None:
        self.replaced: dict[Stamp, Stamp | None] = {}
        self.keys: dict[Stamp, str] = {}

    def note(self, record: Record, stored: Record | None) -> None:
        """``record`` was just stored over ``stored``."""
        if record.chain or is_hidden(record.key):
            return  # received (its writer noted it), or a loser record (nobody's write)
        self.replaced[record.stamp] = None if stored is None else stored.stamp
        self.keys[record.stamp] = record.key

    def seen_by(self, stamp: Stamp) -> set[Stamp]:
        """Every write the writer of ``stamp`` had seen: what it replaced, and on back."""
        seen: set[Stamp] = set()
        following: Stamp | None = stamp
        while following is not None and following not in seen:
            seen.add(following)
            following = self.replaced.get(following)
        return seen


class HistoryBackend(MemoryBackend):
    """A memory backend that tells a :class:`History` what each local write replaced."""

    def __init__(self, history: History) -> None:
        super().__init__()
        self.history = history

    def _store(self, record: Record, stored: Record | None) -> Record:
        self.history.note(record, stored)
        return super()._store(record, stored)


@attrs.frozen
class Ack:
    """An acknowledged write or delete: the cluster must keep it unless a newer one beats it."""

    time: float
    node: str
    key: str
    stamp: Stamp
    value: bytes
    content_type: str
    deleted: bool
    expires_ms: int | None = None

    def state(self) -> RecordState:
        """The record this acknowledgement promises, as :meth:`Cluster.state` shows it: once
        its deadline passed, its expiry (the same tombstone on every node)."""
        if self.expires_ms is not None and not self.deleted:
            record = Record(self.key, self.value, self.content_type, self.stamp)
            expiry = Record.expiry_of(record.key, record.stamp, self.expires_ms)
            return (self.key, b"", "", expiry.stamp.encode(), True, self.expires_ms)
        return (self.key, self.value, self.content_type, self.stamp.encode(), self.deleted, None)


@attrs.define(eq=False)
class Node:
    """One node: its disk (the backend object, kept across restarts) and its running parts."""

    name: str
    url: str
    node_id: str
    backend: MemoryBackend
    skew_ms: int
    peers: list[str]
    store: Store | None = None
    parts: NodeParts | None = None
    starts: int = 0

    @property
    def up(self) -> bool:
        """Whether the node's process is running."""
        return self.store is not None

    @property
    def service(self) -> ReplicationService:
        """The running node's replication service."""
        assert self.parts is not None, f"{self.name} is down"
        return self.parts.replication


def _topology(
    names: Sequence[str], topology: str | Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    if not isinstance(topology, str):
        return {name: list(topology.get(name, ())) for name in names}
    if topology == "mesh":
        return {name: [peer for peer in names if peer != name] for name in names}
    if topology in ("chain", "ring"):
        nexts = list(names[1:]) + ([names[0]] if topology == "ring" else [])
        return {
            name: [nexts[index]] if index < len(nexts) else [] for index, name in enumerate(names)
        }
    raise ValueError(f"unknown topology {topology!r} (mesh, chain, ring, or a mapping)")


class Cluster:
    """N nodes named ``node-0`` ... on a fake network, with replication between them.

    :param size: how many nodes.
    :param seed: seeds node ids, clock skews, the network's and the services' random choices.
    :param topology: ``"mesh"`` (everyone pushes to everyone), ``"chain"`` (node-0 -> node-1 ->
        ...), ``"ring"`` (a chain whose last node pushes to node-0), or a mapping of node name to
        the names it pushes to.
    :param faults: the network's fault policy (none by default); see :attr:`network`.
    :param max_skew_ms: each node's wall clock is off by a random amount up to this.
    :param config: what every node is (batch sizes, tombstone retention, ...); each node's
        ``peers`` come from ``topology``.
    :param request_timeout: how long a node waits for a peer's answer.
    :param max_backoff: the longest pause before a node retries a failing peer.
    :param tombstone_cursors: given a node's replication service, where its tombstone
        collector reads the peers' cursors (default: the service's own); a test hands in a
        careless one to show that the checks notice.
    :param log: called with a line for each operation (and each network event if given).
    """

    def __init__(
        self,
        size: int = 3,
        *,
        seed: int = 0,
        topology: str | Mapping[str, Sequence[str]] = "mesh",
        faults: Faults | None = None,
        max_skew_ms: int = 2000,
        config: NodeConfig | None = None,
        request_timeout: float = 5.0,
        max_backoff: float = 10.0,
        tombstone_cursors: Callable[[ReplicationService], Cursors] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.clock = Clock()
        self.rng = random.Random(seed)
        self.log = log
        observer = (lambda event: log(str(event))) if log is not None else None
        net_rng = random.Random(self.rng.getrandbits(64))
        self.network = FakeNetwork(self.clock, net_rng, faults, observer=observer)
        self.config = config or NodeConfig(backend_url="memory:", open_mode=True)
        self.request_timeout = request_timeout
        self.max_backoff = max_backoff
        self.tombstone_cursors = tombstone_cursors
        self.acks: list[Ack] = []
        #: What each write really replaced (see :class:`History`).
        self.history = History()
        names = [f"node-{index}" for index in range(size)]
        peers = _topology(names, topology)
        self.nodes: dict[str, Node] = {}
        for name in names:
            node = Node(
                name,
                self.network.url_of(name),
                f"{self.rng.getrandbits(64):016x}",
                HistoryBackend(self.history),
                self.rng.randint(-max_skew_ms, max_skew_ms),
                [self.network.url_of(peer) for peer in peers[name]],
            )
            self.resolve(node.backend.set_meta(NODE_ID_META, node.node_id))
            self.nodes[name] = node
        for name in names:
            self.start(name)

    # -- driving the clock ------------------------------------------------------------------

    def now(self) -> float:
        """Simulated seconds since the cluster was made."""
        return self.clock.seconds()

    def note(self, line: str) -> None:
        """Log a line (with the time) if the cluster has a log."""
        if self.log is not None:
            self.log(f"{self.now():10.4f} ** {line}")

    def _next_call(self) -> float | None:
        calls = self.clock.getDelayedCalls()
        return min(call.getTime() for call in calls) if calls else None

    def _step(self, limit: float) -> bool:
        """Run the clock to its next event if that is not after ``limit``; False if none."""
        self.network.pump()
        upcoming = self._next_call()
        if upcoming is None or upcoming > limit:
            return False
        self.clock.advance(max(0.0, upcoming - self.now()))
        self.network.pump()
        return True

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass, event by event."""
        until = self.now() + seconds
        while self._step(until):
            pass
        self.clock.advance(max(0.0, until - self.now()))
        self.network.pump()

    def resolve(
        self, result: Deferred[_T] | Coroutine[Any, Any, _T], max_seconds: float = 600.0
    ) -> _T:
        """Run the clock until ``result`` (a Deferred or coroutine) fires; return its value."""
        outcome: list[Any] = []
        ensureDeferred(result).addBoth(outcome.append)
        limit = self.now() + max_seconds
        while not outcome:
            if not self._step(limit):
                raise SimulationError(f"an operation did not finish\n{self.describe()}")
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        value: _T = outcome[0]
        return value

    def is_quiet(self) -> bool:
        """Whether every running service is idle and nothing is on the network."""
        return self.network.in_flight() == 0 and all(
            node.service.is_idle() for node in self.nodes.values() if node.up
        )

    def run_until_quiet(self, max_seconds: float = 600.0) -> float:
        """Run the clock until the cluster is quiet; return the simulated seconds it took.

        :raises SimulationError: it is still busy after ``max_seconds``.
        """
        start = self.now()
        while True:
            self.network.pump()
            if self.is_quiet():
                self.clock.advance(0)
                self.network.pump()
                if self.is_quiet():
                    return self.now() - start
            if not self._step(start + max_seconds):
                raise SimulationError(
                    f"the cluster is not quiet after {self.now() - start:.1f} s"
                    f" (limit {max_seconds} s)\n{self.describe()}"
                )

    def describe(self, events: int = 30) -> str:
        """What each node and the network are doing, and the last network events."""
        lines = [f"time {self.now():.4f}, {self.network.in_flight()} in flight on the network"]
        for node in self.nodes.values():
            if not node.up:
                lines.append(f"  {node.name} ({node.node_id}): down")
                continue
            lines.append(f"  {node.name} ({node.node_id}): idle={node.service.is_idle()}")
            lines.extend(f"    peer {peer}" for peer in node.service.peers())
        lines.append(f"last {events} network events:")
        lines.extend(f"  {event}" for event in self.network.trace[-events:])
        return "\n".join(lines)

    # -- nodes ------------------------------------------------------------------------------

    def node(self, node: str | int) -> Node:
        """A node by name or index."""
        return self.nodes[f"node-{node}" if isinstance(node, int) else node]

    def store(self, node: str | int) -> Store:
        """The running Store of a node (which must be up)."""
        store = self.node(node).store
        if store is None:
            raise SimulationError(f"{self.node(node).name} is down")
        return store

    def start(self, name: str | int) -> None:
        """Start a node's process over its backend: a new Store, service and resource."""
        node = self.node(name)
        assert not node.up, f"{node.name} is already up"
        skew = node.skew_ms
        clock = self.clock

        def wall_ms() -> int:
            return EPOCH_MS + int(clock.seconds() * 1000) + skew

        store = self.resolve(Store.open(node.backend, wall_ms=wall_ms))
        node.starts += 1
        link = PeerLink(
            self.network.client_for(node.name),
            self.clock,
            random.Random(self.rng.getrandbits(64)),
            request_timeout=self.request_timeout,
            max_backoff=self.max_backoff,
        )
        parts = build_node(
            attrs.evolve(self.config, peers=tuple(node.peers)),
            store,
            reactor=self.clock,
            link=link,
            self_urls=(node.url,),
            tombstone_cursors=self.tombstone_cursors,
        )
        node.store, node.parts = store, parts
        for service in parts.services:
            started = service.startService()
            if isinstance(started, Deferred):
                self.resolve(started)
        self.network.attach(node.name, parts.site.resource)
        self.note(f"start {node.name} ({node.node_id}) #{node.starts}")

    def stop(self, name: str | int) -> None:
        """Stop a node's process: it leaves the network, its service stops, its backend stays."""
        node = self.node(name)
        assert node.up, f"{node.name} is already down"
        self.note(f"stop {node.name}")
        self.network.detach(node.name)
        parts, node.parts, node.store = node.parts, None, None
        assert parts is not None
        parts.watch_hub.close()
        for service in reversed(parts.services):
            stopped = service.stopService()
            if isinstance(stopped, Deferred):
                self.resolve(stopped)

    def restart(self, name: str | int, downtime: float = 0.0) -> None:
        """Stop a node, let ``downtime`` seconds pass, and start it again on the same backend."""
        self.stop(name)
        self.advance(downtime)
        self.start(name)

    def up(self) -> list[str]:
        """The names of the running nodes."""
        return [node.name for node in self.nodes.values() if node.up]

    def partition(self, groups: Iterable[Iterable[str | int]]) -> None:
        """Split the network into groups of nodes; see :meth:`FakeNetwork.partition`."""
        named = [[self.node(node).name for node in group] for group in groups]
        self.note(f"partition {named}")
        self.network.partition(named)

    def heal(self) -> None:
        """Remove every partition."""
        self.note("heal")
        self.network.heal()

    # -- client operations ------------------------------------------------------------------

    def _acknowledged(self, node: str | int, record: Record) -> Record:
        name = self.node(node).name
        self.acks.append(
            Ack(
                self.now(),
                name,
                record.key,
                record.stamp,
                record.value,
                record.content_type,
                record.deleted,
                record.expires_ms,
            )
        )
        return record

    def write(
        self,
        node: str | int,
        key: str,
        value: bytes,
        content_type: str | None = None,
        *,
        ttl_ms: int | None = None,
    ) -> Record:
        """Write a key on a node (with a TTL: it expires); acknowledged when this returns."""
        lease = "" if ttl_ms is None else f" ttl={ttl_ms}ms"
        self.note(f"write {self.node(node).name} {key} {value[:40]!r}{lease}")
        result = self.resolve(self.store(node).put(key, value, content_type, ttl_ms=ttl_ms))
        return self._acknowledged(node, result.record)

    def delete(self, node: str | int, key: str) -> Record:
        """Delete a key on a node (raises NotFound if it has no such key); the tombstone."""
        self.note(f"delete {self.node(node).name} {key}")
        return self._acknowledged(node, self.resolve(self.store(node).delete(key)))

    def conditional_write(
        self,
        node: str | int,
        key: str,
        value: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> Record:
        """Write with ``If-Match`` / ``If-None-Match: *``; PreconditionFailed if it fails."""
        self.note(f"cwrite {self.node(node).name} {key} if_match={if_match} none={if_none_match}")
        store = self.store(node)
        done = store.put(key, value, if_match=if_match, if_none_match=if_none_match)
        return self._acknowledged(node, self.resolve(done).record)

    # -- checks -----------------------------------------------------------------------------

    def state(self, node: str | int) -> list[RecordState]:
        """A node's full state in key order, tombstones included (read from its backend)."""
        backend = self.node(node).backend
        found: list[RecordState] = []
        after: str | None = None
        while True:
            page: list[Record] = self.resolve(backend.scan("/", after, 500, True))
            found.extend(
                (r.key, r.value, r.content_type, r.stamp.encode(), r.deleted, r.expires_ms)
                for r in page
            )
            if len(page) < 500:
                return found
            after = page[-1].key

    def states(self) -> dict[str, list[RecordState]]:
        """Every node's full state, by node name."""
        return {name: self.state(name) for name in self.nodes}

    def check_converged(self) -> None:
        """Raise SimulationError unless every node holds exactly the same records."""
        states = {name: dict((s[0], s) for s in state) for name, state in self.states().items()}
        keys = sorted(set().union(*states.values()))
        differing = [key for key in keys if len({str(s.get(key)) for s in states.values()}) > 1]
        if differing:
            lines = [f"{len(differing)} of {len(keys)} keys differ between nodes:"]
            for key in differing[:10]:
                lines.append(f"  {key}")
                for name, state in states.items():
                    lines.append(f"    {name}: {state.get(key)}")
            raise SimulationError("\n".join(lines) + "\n" + self.describe())

    def check_acknowledged(self) -> None:
        """Raise SimulationError unless every node holds, for each key, the acknowledged write
        or delete with the greatest stamp (so nothing acknowledged was lost), or its expiry
        when it had a TTL (call it once every deadline has passed), and no key that nobody
        wrote."""
        newest: dict[str, Ack] = {}
        for ack in self.acks:
            if ack.key not in newest or ack.stamp > newest[ack.key].stamp:
                newest[ack.key] = ack
        expected = {key: ack.state() for key, ack in newest.items()}
        problems = []
        for name, state in self.states().items():
            held = {record[0]: record for record in state if not is_hidden(record[0])}
            for key in sorted(set(held) | set(expected)):
                if held.get(key) != expected.get(key):
                    problems.append(
                        f"  {name} {key}: holds {held.get(key)}, newest ack {newest.get(key)}"
                    )
        if problems:
            lines = [
                f"{len(problems)} acknowledged writes are not what nodes hold:",
                *problems[:20],
            ]
            raise SimulationError("\n".join(lines) + "\n" + self.describe())

    def losers(self, node: str | int) -> list[tuple[str, Stamp]]:
        """The conflict losers a node keeps: (key, loser's stamp), in key order."""
        found = []
        for state in self.state(node):
            parsed = parse_conflict_key(state[0])
            if parsed is not None and not state[4]:
                found.append(parsed)
        return found

    def check_conflicts(self) -> None:
        """Raise SimulationError unless every loser a node keeps lost to a write that was
        really concurrent with it: a greater write of the same key whose writer had not seen
        it, and which it had not seen (by :class:`History`, not by the records' own
        ``replaces``). So a sequential overwrite is never called a conflict. (That every node
        keeps the same losers is :meth:`check_converged`'s: they are records.)"""
        problems = []
        for name in self.nodes:
            for key, loser in self.losers(name):
                if loser not in self.history.keys:
                    problems.append(f"  {name} {key} {loser.encode()}: no such write")
                    continue
                before = self.history.seen_by(loser)
                if not any(
                    self.history.keys[other] == key
                    and other > loser
                    and other not in before
                    and loser not in self.history.seen_by(other)
                    for other in self.history.keys
                ):
                    problems.append(f"  {name} {key} {loser.encode()}: every later write saw it")
        if problems:
            lines = [f"{len(problems)} losers were not concurrent writes:", *problems[:20]]
            raise SimulationError("\n".join(lines) + "\n" + self.describe())

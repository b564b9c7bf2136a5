"""A seeded random schedule against an in-process cluster.

:func:`run_schedule` builds a :class:`Cluster` from a seed, runs a random mix of writes,
deletes, conditional writes (some failing by design), partitions, heals, stops, starts and
restarts, writes with a TTL, interleaved with clock advances over a network that drops,
duplicates and delays, then heals everything, runs until quiet and checks that every node holds
the same records; then lets every deadline pass and checks again, and that every acknowledged
write is either there (or its expiry, the same tombstone on every node) or beaten by a newer
acknowledged one, and that every conflict loser kept (the same on every node) lost to a really
concurrent write, never to one that had seen it.
"""

from __future__ import annotations

import random

from navistore.node import NodeConfig
from navistore.store import StoreError
from navistore.testing.cluster import Ack, Cluster, Node, RecordState, SimulationError
from navistore.testing.fakenet import FakeClient, FakeNetwork, FakeResponse, Faults, TraceEvent

__all__ = [
    "Ack",
    "Cluster",
    "FakeClient",
    "FakeNetwork",
    "FakeResponse",
    "Faults",
    "Node",
    "RecordState",
    "SimulationError",
    "TraceEvent",
    "replay_hint",
    "run_schedule",
]

_OPERATIONS = (
    ("write", 40),
    ("lease", 8),
    ("delete", 10),
    ("conditional", 15),
    ("burst", 4),
    ("advance", 12),
    ("partition", 5),
    ("heal", 5),
    ("restart", 3),
    ("stop", 2),
    ("start", 4),
)
_CONTENT_TYPES = (None, "text/plain", "application/json")
#: The longest TTL a schedule writes; the final check waits it out.
_LEASE_MS = 60_000


def replay_hint(seed: int, steps: int) -> str:
    """How to run one seed again, with every operation and network event printed."""
    return (
        f"replay it with:\n"
        f'  .venv/bin/python -m pytest tests/test_simulation.py -k "seed-{seed}]"\n'
        f'  .venv/bin/python -c "from navistore.testing.simulation import run_schedule; '
        f'run_schedule({seed}, steps={steps}, verbose=True)"'
    )


def run_schedule(
    seed: int,
    steps: int = 100,
    *,
    verbose: bool = False,
) -> Cluster:
    """Run the random schedule of ``seed`` and check the cluster; return the cluster.

    :param steps: how many operations to run before healing and checking.
    :param verbose: print every operation and network event as it happens.
    :raises SimulationError: the cluster diverged, lost an acknowledged write or never went
        quiet; the message says how to replay the seed.
    """
    rng = random.Random(seed)
    size = rng.choice((3, 3, 4))
    topology = "ring" if rng.random() < 0.2 else "mesh"
    faults = Faults.chosen_by(rng)
    config = NodeConfig(
        backend_url="memory:", open_mode=True, batch_records=rng.choice((5, 50, 500))
    )
    if verbose:
        print(f"seed {seed}: {size} nodes, {topology}, {faults}, {config}")
    cluster = Cluster(
        size,
        seed=rng.getrandbits(32),
        topology=topology,
        faults=faults,
        config=config,
        log=print if verbose else None,
    )
    keys = [f"/k{index}" for index in range(rng.randint(3, 10))] + ["/app/db/host"]
    try:
        for step in range(steps):
            _run_step(cluster, rng, keys, step)
            cluster.advance(rng.choice((0.0, rng.uniform(0.0, 0.3), rng.uniform(0.0, 3.0))))
        cluster.note("final: heal, start every node, run until quiet, compare")
        cluster.heal()
        for name in cluster.nodes:
            if not cluster.node(name).up:
                cluster.start(name)
        took = cluster.run_until_quiet()
        cluster.check_converged()
        # Every deadline passes (with room for the nodes' skews), and every node expires
        # the same keys the same way.
        cluster.advance(_LEASE_MS / 1000 + 10)
        took += cluster.run_until_quiet()
        cluster.check_converged()
        cluster.check_acknowledged()
        cluster.check_conflicts()
        losers = len(cluster.losers(0))
        cluster.note(
            f"converged {took:.1f} s after healing; {len(cluster.acks)} acknowledged, "
            f"{losers} conflict losers kept"
        )
    except SimulationError as exc:
        raise SimulationError(f"seed {seed} failed: {exc}\n{replay_hint(seed, steps)}") from None
    return cluster


def _run_step(cluster: Cluster, rng: random.Random, keys: list[str], step: int) -> None:
    names, weights = zip(*_OPERATIONS)
    operation = rng.choices(names, weights)[0]
    up = cluster.up()
    node = rng.choice(up)
    key = rng.choice(keys)
    value = f"{step}:{node}:{rng.getrandbits(16):04x}".encode()
    try:
        if operation == "write":
            cluster.write(node, key, value, rng.choice(_CONTENT_TYPES))
        elif operation == "lease":
            ttl_ms = rng.choice((300, 2_000, 15_000, _LEASE_MS))
            cluster.write(node, key, value, ttl_ms=ttl_ms)
        elif operation == "delete":
            cluster.delete(node, key)
        elif operation == "conditional":
            _conditional(cluster, rng, node, key, value)
        elif operation == "burst":
            for index in range(rng.randint(5, 30)):
                cluster.write(node, rng.choice(keys), value + b"/%d" % index)
        elif operation == "advance":
            cluster.advance(rng.uniform(0.0, 20.0))
        elif operation == "partition":
            _partition(cluster, rng)
        elif operation == "heal":
            cluster.heal()
        elif operation == "restart":
            cluster.restart(node, rng.choice((0.0, rng.uniform(0.0, 5.0))))
        elif operation == "stop" and len(up) > 1:
            cluster.stop(node)
        elif operation == "start":
            down = [name for name in cluster.nodes if name not in up]
            if down:
                cluster.start(rng.choice(down))
    except StoreError as refused:
        cluster.note(f"refused: {refused}")


def _conditional(cluster: Cluster, rng: random.Random, node: str, key: str, value: bytes) -> None:
    """A conditional write that may well fail: on the current version, a stale one, or none."""
    current = cluster.resolve(cluster.store(node).get(key))
    older = [ack.stamp.encode() for ack in cluster.acks if ack.key == key]
    choice = rng.random()
    if choice < 0.4 and current is not None:
        cluster.conditional_write(node, key, value, if_match=current.stamp.encode())
    elif choice < 0.7 and older:
        cluster.conditional_write(node, key, value, if_match=rng.choice(older))
    elif choice < 0.85:
        cluster.conditional_write(node, key, value, if_match="*")
    else:
        cluster.conditional_write(node, key, value, if_none_match=True)


def _partition(cluster: Cluster, rng: random.Random) -> None:
    names = list(cluster.nodes)
    rng.shuffle(names)
    cut = rng.randint(1, len(names) - 1)
    cluster.partition([names[:cut], names[cut:]])

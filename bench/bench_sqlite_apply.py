"""Apply throughput of the sqlite backend: what group commit buys, per synchronous level.

Run from the repository root: ``.venv/bin/python bench/bench_sqlite_apply.py``. For each of
``synchronous=normal`` and ``full`` on a fresh temporary file it measures applies per second

* sequentially: one apply at a time, each awaited before the next (one commit per apply), and
* concurrently: 100 applies issued together and gathered, repeated (group commit: one commit per
  100 applies),

with 100-byte values on distinct keys, and prints the median of several rounds. It takes well
under a minute.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from navistore.backend.sqlite import SqliteBackend
from navistore.clock import Stamp
from navistore.record import Record

ROUNDS = 5
SEQUENTIAL_APPLIES = 500
CONCURRENT_BATCHES = 20
CONCURRENCY = 100
VALUE = b"x" * 100
NODE = "0123456789abcdef"


class Writer:
    """Makes records with fresh keys and increasing stamps, so every apply stores a row."""

    def __init__(self) -> None:
        self.count = 0

    def next_record(self) -> Record:
        self.count += 1
        return Record(f"/bench/{self.count:09}", VALUE, "text/plain", Stamp(self.count, 0, NODE))


async def sequential(store: SqliteBackend, writer: Writer) -> float:
    started = time.perf_counter()
    for _ in range(SEQUENTIAL_APPLIES):
        await store.apply(writer.next_record())
    return SEQUENTIAL_APPLIES / (time.perf_counter() - started)


async def concurrent(store: SqliteBackend, writer: Writer) -> float:
    started = time.perf_counter()
    for _ in range(CONCURRENT_BATCHES):
        batch = [store.apply(writer.next_record()) for _ in range(CONCURRENCY)]
        await defer.gatherResults(batch)
    return CONCURRENT_BATCHES * CONCURRENCY / (time.perf_counter() - started)


async def measure(reactor: Any, directory: str, synchronous: str) -> tuple[float, float]:
    store = SqliteBackend(
        os.path.join(directory, f"{synchronous}.db"), synchronous=synchronous, reactor=reactor
    )
    writer = Writer()
    try:
        await store.apply(writer.next_record())  # open the file and create the schema
        one, many = [], []
        for _ in range(ROUNDS):
            one.append(await sequential(store, writer))
            many.append(await concurrent(store, writer))
    finally:
        await store.close()
    return statistics.median(one), statistics.median(many)


async def main(reactor: Any) -> None:
    python = f"{sys.implementation.name} {sys.version.split()[0]}"
    print(f"sqlite apply throughput, 100-byte values, median of {ROUNDS} rounds, {python}")
    print(
        f"{'synchronous':<12} {'sequential/s':>14} {f'{CONCURRENCY} concurrent/s':>18} {'gain':>7}"
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        for synchronous in ("normal", "full"):
            one, many = await measure(reactor, directory, synchronous)
            print(f"{synchronous:<12} {one:>14,.0f} {many:>18,.0f} {many / one:>6.1f}x")
    print(f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))

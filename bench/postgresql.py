"""Navistore on PostgreSQL beside Navistore on sqlite, and two nodes over one database.

``python3 bench/postgresql.py [--rounds 5] [--seconds 5] [--writes 200]`` (with the venv's
Python, wrk and Debian's PostgreSQL 15 installed). It starts a PostgreSQL server on a free port
in a temporary directory (as the tests do, :mod:`support.postgres`), a node on sqlite
``synchronous=normal``, and two nodes over one fresh database, all on 127.0.0.1; loads 10,000
keys of 100 bytes into each database; then, for several interleaved rounds, drives GET and PUT
with wrk (16 connections) against sqlite, one PostgreSQL node, and both PostgreSQL nodes at
once (half the connections each, their rates summed), and prints the medians. Last it measures
the watch wake latency across nodes: a long-poll on node B, a PUT on node A, the time from
sending the PUT to B's answer, for ``--writes`` writes (median and p95).

Every process it starts is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import suite_servers as servers  # noqa: E402
import suite_wrk as wrk  # noqa: E402
from support.postgres import PostgresServer, find_binaries  # noqa: E402

SIZE = 100
CONNECTIONS = 16


def _measure_pair(script: Path, targets: list[wrk.Target], operation: str, seconds: float) -> float:
    """Drive every target at once (``CONNECTIONS`` split between them); the summed rate."""
    rates: list[float] = []

    def one(target: wrk.Target) -> None:
        figures = wrk.measure(
            script, target, operation, SIZE, CONNECTIONS // len(targets), seconds, threads=1
        )
        rates.append(figures.rps)

    threads = [threading.Thread(target=one, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(rates)


def _request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wake_latency(port_a: int, port_b: int, writes: int) -> list[float]:
    """Seconds from sending a PUT to node A to node B answering a long-poll waiting for it."""
    since = 0
    while True:  # to the end of the feed
        _, body = _request(port_b, "GET", f"/_changes?since={since}&limit=1000")
        page = json.loads(body)
        if not page["results"]:
            break
        since = page["last_seq"]
    latencies: list[float] = []
    for number in range(writes):
        answered: list[float] = []

        def poll(since: int = since, answered: list[float] = answered) -> None:
            _request(port_b, "GET", f"/_changes?feed=longpoll&since={since}&timeout=20")
            answered.append(time.perf_counter())

        poller = threading.Thread(target=poll)
        poller.start()
        time.sleep(0.02)  # the long-poll is waiting on B
        sent = time.perf_counter()
        status, _ = _request(port_a, "PUT", f"/wake/{number}", b"x")
        assert status in (200, 201), status
        poller.join(30)
        latencies.append(answered[0] - sent)
        since += 1
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--writes", type=int, default=200)
    options = parser.parse_args()
    binaries = find_binaries()
    if binaries is None:
        sys.exit("PostgreSQL 15 binaries not found (apt-get install postgresql)")
    workdir = Path(tempfile.mkdtemp(prefix="navistore-bench-pg-"))
    postgres = PostgresServer(binaries)
    started: list[servers.Server] = []
    try:
        postgres.start()
        url = postgres.url(postgres.create_database())
        specs = [
            servers.Spec("sqlite", "navistore", "cpython", f"sqlite:///{workdir}/n.db"),
            servers.Spec("postgresql A", "navistore", "cpython", url),
            servers.Spec("postgresql B", "navistore", "cpython", url),
        ]
        environment = {**servers.child_environment(), "PYTHONPATH": str(HERE.parent)}
        for spec in specs:
            started.append(servers.start(spec, Path(sys.executable), workdir, 60, environment))
        script = wrk.write_script(workdir)
        target = {s.spec.name: wrk.Target(f"http://127.0.0.1:{s.port}", "/bench") for s in started}
        for name in ("sqlite", "postgresql A"):
            wrk.load(script, target[name], SIZE, 300)
        rows = {
            "sqlite": [target["sqlite"]],
            "postgresql, one node": [target["postgresql A"]],
            "postgresql, two nodes": [target["postgresql A"], target["postgresql B"]],
        }
        rates: dict[tuple[str, str], list[float]] = {}
        for _ in range(options.rounds):
            for operation in ("GET", "PUT"):
                for row, targets in rows.items():
                    rate = _measure_pair(script, targets, operation, options.seconds)
                    rates.setdefault((row, operation), []).append(rate)
        print(f"median requests/s over {options.rounds} rounds of {options.seconds:.0f} s,")
        print(f"{CONNECTIONS} connections, {SIZE}-byte values, 10,000 keys:")
        for operation in ("GET", "PUT"):
            base = statistics.median(rates[("sqlite", operation)])
            for row in rows:
                median = statistics.median(rates[(row, operation)])
                print(f"  {operation} {row:<24} {median:9.0f}   {median / base:5.2f} x sqlite")
        latencies = sorted(wake_latency(started[1].port, started[2].port, options.writes))
        p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]
        print(
            f"watch wake latency, PUT on A -> long-poll answered on B, {len(latencies)} writes:"
            f" median {statistics.median(latencies) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms,"
            f" max {latencies[-1] * 1000:.1f} ms"
        )
    finally:
        servers.stop(started)
        postgres.stop()


if __name__ == "__main__":
    main()

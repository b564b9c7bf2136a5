"""Replication lag and catch-up time between two real Navistore nodes on 127.0.0.1.

Starts B, then A with ``--peer`` B, each a ``twistd -n navistore`` process on sqlite
(``synchronous=normal``) with a kernel-chosen loopback port. Then:

1. **Lag**: for each offered load (default 100 and 1,000 writes/s, ``--seconds`` each), a few
   client connections PUT new keys on A, paced open-loop (each write has a scheduled send time; a
   connection that falls behind sends at once and the lateness shows in the achieved rate). A
   watcher on B long-polls ``/_changes?since=N`` continuously and notes when each key arrives.
   The lag of a write is its arrival time on B minus the time its PUT's answer (the
   acknowledgement) was read on A's connection; all times come from one clock in this process.
2. **Catch-up**: B is stopped (SIGTERM), ``--catch-up-keys`` new keys are PUT on A over several
   connections (timed), and B is started again on its file and port. The time until B has all
   of them is split into: B's start until it serves; until the first missed key arrives (what
   is left of A's retry backoff toward B, up to 30 s); until the last one arrives. The figure
   that matters is "B serving -> all keys": from when B first answers ``/_health`` to when it
   has every key, which excludes B's own start-up. ``--catch-up-runs N`` repeats the catch-up
   (each with new keys) and prints each run and the medians.

Every process started here is stopped by its PID at the end (SIGTERM, then SIGKILL).

Usage: ``python bench/bench_replication.py [--seconds 10] [--rates 100 1000] [--connections 16]
[--catch-up-keys 100000] [--catch-up-runs 1] [--load-connections 8] [--keep]``; ``--rates``
with no value skips the lag rows.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from suite_servers import loopback_request

REPOSITORY = Path(__file__).resolve().parent.parent
LISTENING = re.compile(rb"Navistore listening on tcp:127\.0\.0\.1:(\d+)")
#: How long a node may take to start or stop.
DEADLINE = 60.0
BACKEND = "sqlite:node.db?synchronous=normal"


class Node:
    """A ``twistd -n navistore`` process in its own directory, on a loopback port."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.directory = root / name
        self.directory.mkdir()
        self.log_path = self.directory / "node.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, *options: str, port: int = 0) -> float:
        """Start the node (on ``port``, or one the kernel picks); return seconds until it serves."""
        started = time.perf_counter()
        command = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "--nodaemon",
            "--pidfile=",
            "navistore",
            "--port",
            f"tcp:{port}:interface=127.0.0.1",
            "--backend",
            BACKEND,
            *options,
        ]
        environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.directory,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"node {self.name} exited:\n{self.log_tail()}")
            with self.log_path.open("rb") as log:
                log.seek(offset)
                found = LISTENING.search(log.read())
            if found and call(int(found.group(1)), "GET", "/_health", timeout=2)[0] == 200:
                self.port = int(found.group(1))
                return time.perf_counter() - started
            time.sleep(0.02)
        raise RuntimeError(f"node {self.name} not serving within {DEADLINE} s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM by PID; SIGKILL if it is still there after the deadline."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(DEADLINE)

    def cpu_seconds(self) -> float:
        """CPU (user + system, every thread) the process has used so far; Linux /proc only."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def call(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 30.0
) -> tuple[int | None, bytes]:
    """One request on a new connection; (None, b"") if the node cannot be reached."""
    try:
        return loopback_request(port, method, path, body, timeout)
    except (OSError, http.client.HTTPException):
        return None, b""


def get_json(port: int, path: str) -> Any:
    status, body = call(port, "GET", path)
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}: {body[:200]!r}")
    return json.loads(body)


# -- watching B ---------------------------------------------------------------------------------


class Arrivals(threading.Thread):
    """Long-polls ``/_changes`` of a node under ``prefix`` and notes when each key first shows."""

    def __init__(self, port: int, prefix: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.prefix = prefix
        self.seen: dict[str, float] = {}
        self.error: BaseException | None = None
        self._stopping = threading.Event()
        self._changed = threading.Condition()

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        since = 0
        try:
            while not self._stopping.is_set():
                connection.request(
                    "GET",
                    f"/_changes?feed=longpoll&since={since}&prefix={self.prefix}"
                    "&limit=10000&timeout=1",
                )
                response = connection.getresponse()
                body = response.read()
                now = time.perf_counter()
                if response.status != 200:
                    raise RuntimeError(f"/_changes answered {response.status}: {body[:200]!r}")
                document = json.loads(body)
                with self._changed:
                    for change in document["results"]:
                        self.seen.setdefault(change["key"], now)
                    self._changed.notify_all()
                since = document["last_seq"]
        except BaseException as exc:
            if not self._stopping.is_set():
                self.error = exc
        finally:
            connection.close()

    def wait_for(self, count: int, deadline: float) -> bool:
        """Wait until ``count`` keys arrived; False after ``deadline`` seconds."""
        end = time.monotonic() + deadline
        with self._changed:
            while len(self.seen) < count:
                remaining = end - time.monotonic()
                if remaining <= 0 or self.error is not None:
                    return False
                self._changed.wait(min(remaining, 0.5))
        return True

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)


# -- writing to A -------------------------------------------------------------------------------


def paced_writes(
    port: int, prefix: str, rate: float, seconds: float, connections: int
) -> tuple[dict[str, float], float]:
    """PUT ``rate * seconds`` new keys at ``rate`` per second over ``connections`` connections,
    open-loop; return each key's acknowledgement time and the elapsed time."""
    total = int(rate * seconds)
    acknowledged: dict[str, float] = {}
    failures: list[BaseException] = []
    start = time.perf_counter() + 0.2

    def writer(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for number in range(index, total, connections):
                due = start + number / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                key = f"{prefix}k{number:07d}"
                connection.request("PUT", key, body=b"lag %d" % number)
                response = connection.getresponse()
                response.read()
                done = time.perf_counter()
                if response.status not in (200, 201):
                    raise RuntimeError(f"PUT {key} answered {response.status}")
                acknowledged[key] = done
        except BaseException as exc:
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(index,)) for index in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return acknowledged, max(acknowledged.values()) - start


def bulk_writes(port: int, prefix: str, count: int, connections: int) -> float:
    """PUT ``count`` new keys as fast as ``connections`` keep-alive connections go; seconds."""
    failures: list[BaseException] = []

    def writer(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            for number in range(index, count, connections):
                connection.request("PUT", f"{prefix}k{number:07d}", body=b"catch-up %d" % number)
                response = connection.getresponse()
                response.read()
                if response.status not in (200, 201):
                    raise RuntimeError(f"PUT answered {response.status}")
        except BaseException as exc:
            failures.append(exc)
        finally:
            connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=writer, args=(index,)) for index in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return time.perf_counter() - started


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# -- the runs -----------------------------------------------------------------------------------


def measure_lag(
    a: Node, b: Node, rate: float, seconds: float, connections: int
) -> dict[str, float]:
    """One row of the lag table."""
    prefix = f"/lag{int(rate)}/"
    arrivals = Arrivals(b.port, prefix)
    arrivals.start()
    try:
        acknowledged, elapsed = paced_writes(a.port, prefix, rate, seconds, connections)
        if not arrivals.wait_for(len(acknowledged), DEADLINE):
            raise RuntimeError(
                f"only {len(arrivals.seen)} of {len(acknowledged)} writes reached B "
                f"({arrivals.error!r}); A's peers: {get_json(a.port, '/_peers')}"
            )
    finally:
        arrivals.stop()
    lags = [(arrivals.seen[key] - done) * 1000 for key, done in acknowledged.items()]
    return {
        "offered": rate,
        "achieved": len(acknowledged) / elapsed,
        "writes": len(acknowledged),
        "p50": statistics.median(lags),
        "p99": percentile(lags, 0.99),
        "max": max(lags),
    }


def measure_catch_up(
    a: Node, b: Node, keys: int, connections: int, report: dict[str, Any], prefix: str
) -> None:
    """Stop B, write ``keys`` keys under ``prefix`` to A, start B, time until B has them all."""
    b_port = b.port
    b.stop()
    print(f"  B stopped; writing {keys} keys to A over {connections} connections...", flush=True)
    report["load_seconds"] = bulk_writes(a.port, prefix, keys, connections)
    report["load_rate"] = keys / report["load_seconds"]
    backlog = get_json(a.port, "/_peers")[0]
    retry_in = None
    if backlog["retry_at"]:
        retry_at = datetime.fromisoformat(backlog["retry_at"].replace("Z", "+00:00"))
        retry_in = (retry_at - datetime.now(timezone.utc)).total_seconds()
    report["a_backoff"] = (backlog["state"], backlog["failures"], retry_in)
    print(f"  done in {report['load_seconds']:.1f} s; starting B again...", flush=True)
    started = time.perf_counter()
    report["b_start"] = b.start(port=b_port)
    cpu_a, cpu_b = a.cpu_seconds(), b.cpu_seconds()
    arrivals = Arrivals(b.port, prefix)
    arrivals.start()
    try:
        if not arrivals.wait_for(keys, 600.0):
            raise RuntimeError(
                f"B holds {len(arrivals.seen)} of {keys} after 600 s ({arrivals.error!r}); "
                f"A's peers: {get_json(a.port, '/_peers')}"
            )
    finally:
        arrivals.stop()
    report["cpu_a"] = (a.cpu_seconds() - cpu_a) / keys * 1e6
    report["cpu_b"] = (b.cpu_seconds() - cpu_b) / keys * 1e6
    times = sorted(arrivals.seen.values())
    report["first"] = times[0] - started
    report["last"] = times[-1] - started
    report["serving_first"] = report["first"] - report["b_start"]
    report["serving_last"] = report["last"] - report["b_start"]
    report["rate"] = keys / max(times[-1] - times[0], 1e-9)
    counted = 0
    after = ""
    while True:
        path = f"/_keys?prefix={prefix}&limit=10000&after={quote(after, safe='')}"
        page = get_json(b.port, path)
        counted += len(page["keys"])
        if page["next"] is None:
            break
        after = page["next"]
    report["b_count"] = counted
    # A moves its cursor once B's acknowledgement is back: shortly after the last arrival.
    last_seq = get_json(a.port, "/_health")["last_seq"]
    end = time.monotonic() + 10
    while get_json(a.port, "/_peers")[0]["cursor"] < last_seq and time.monotonic() < end:
        time.sleep(0.05)
    report["a_cursor"], report["a_last_seq"] = get_json(a.port, "/_peers")[0]["cursor"], last_seq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per offered load")
    parser.add_argument("--rates", type=float, nargs="*", default=[100.0, 1000.0])
    parser.add_argument("--connections", type=int, default=16, help="writers of the lag runs")
    parser.add_argument("--catch-up-keys", type=int, default=100_000)
    parser.add_argument("--catch-up-runs", type=int, default=1, help="catch-ups in a row")
    parser.add_argument("--load-connections", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the nodes' files and logs")
    options = parser.parse_args()
    command = " ".join([Path(sys.executable).name, *sys.argv])

    root = Path(tempfile.mkdtemp(prefix="navistore-bench-replication-"))
    a, b = Node("a", root), Node("b", root)
    rows: list[dict[str, float]] = []
    catch_ups: list[dict[str, Any]] = []
    try:
        b.start()
        a.start("--peer", b.url)
        kept = "kept" if options.keep else "removed at the end"
        print(f"A on {a.url} (peer {b.url}), B on {b.url}; files in {root} ({kept})", flush=True)
        warm = measure_lag(a, b, 50, 1, 2)  # first connections, first pushes
        print(f"  warm-up: p50 {warm['p50']:.1f} ms", flush=True)
        for rate in options.rates:
            print(f"  {rate:g} writes/s for {options.seconds:g} s...", flush=True)
            rows.append(measure_lag(a, b, rate, options.seconds, options.connections))
        for run in range(options.catch_up_runs):
            catch_up: dict[str, Any] = {}
            prefix = f"/catchup{run}/"
            keys, writers = options.catch_up_keys, options.load_connections
            measure_catch_up(a, b, keys, writers, catch_up, prefix)
            print(
                f"  catch-up {run + 1}: B serving -> all keys {catch_up['serving_last']:.2f} s",
                flush=True,
            )
            catch_ups.append(catch_up)
    finally:
        a.stop()
        b.stop()
        if not options.keep:
            shutil.rmtree(root, ignore_errors=True)

    print()
    print("Navistore replication A -> B, two twistd processes on 127.0.0.1, " + BACKEND)
    print(
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.platform()}, "
        "load average %.1f %.1f %.1f at the end" % os.getloadavg()
    )
    print(f"command: {command}")
    if rows:
        print()
        print(
            f"lag = arrival on B (long-poll /_changes) - PUT acknowledged on A; "
            f"{options.connections} paced connections, {options.seconds:g} s per row"
        )
        header = (
            f"{'offered/s':>9} {'achieved/s':>10} {'writes':>7} | "
            f"{'lag p50 ms':>10} {'p99 ms':>8} {'max ms':>8}"
        )
        print(header)
        print("-" * len(header))
        for row in rows:
            print(
                f"{row['offered']:>9.0f} {row['achieved']:>10.1f} {row['writes']:>7} | "
                f"{row['p50']:>10.1f} {row['p99']:>8.1f} {row['max']:>8.1f}"
            )
    keys = options.catch_up_keys
    for run, catch_up in enumerate(catch_ups, 1):
        print()
        print(f"catch-up {run}: B stopped (SIGTERM) while {keys} keys were written to A")
        print_catch_up(catch_up, options.load_connections)
    if len(catch_ups) > 1:
        print()
        print(f"medians of {len(catch_ups)} catch-ups of {keys} keys:")
        for name, label in (
            ("b_start", "B start -> serving"),
            ("serving_first", "B serving -> first key"),
            ("serving_last", "B serving -> all keys"),
            ("last", "B start -> all keys"),
            ("cpu_a", "A CPU us/record"),
            ("cpu_b", "B CPU us/record"),
        ):
            values = [each[name] for each in catch_ups]
            shown = " ".join(f"{value:.2f}" for value in values)
            unit = "us" if name.startswith("cpu") else "s"
            print(f"  {label + ':':<24} {statistics.median(values):8.2f} {unit}  ({shown})")


def print_catch_up(catch_up: dict[str, Any], connections: int) -> None:
    """The lines of one catch-up run."""
    print(
        f"  load on A:               {catch_up['load_seconds']:8.1f} s "
        f"({catch_up['load_rate']:.0f} PUT/s over {connections} connections)"
    )
    state, failures, retry_in = catch_up["a_backoff"]
    retry = "" if retry_in is None else f", next retry in {retry_in:.1f} s"
    print(f"  A's pusher toward B then: {state} after {failures} failures{retry}")
    print(f"  B start -> serving:       {catch_up['b_start']:8.1f} s")
    print(f"  B start -> first key:     {catch_up['first']:8.1f} s  (the rest of A's backoff)")
    print(
        f"  B start -> all keys:      {catch_up['last']:8.1f} s  "
        f"(transfer {catch_up['rate']:.0f} records/s once flowing)"
    )
    print(f"  B serving -> all keys:    {catch_up['serving_last']:8.2f} s")
    print(
        f"  CPU per record meanwhile: A {catch_up['cpu_a']:.0f} us, B {catch_up['cpu_b']:.0f} us "
        "(B's includes the watcher's long-polls)"
    )
    print(
        f"  check: B lists {catch_up['b_count']} keys; A's cursor for B "
        f"{catch_up['a_cursor']} of last_seq {catch_up['a_last_seq']}"
    )


if __name__ == "__main__":
    main()

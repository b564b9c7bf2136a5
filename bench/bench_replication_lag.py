"""Replication lag and catch-up time between two real Navistore nodes on 127.0.0.1.

Starts two ``twistd -n navistore`` processes on sqlite, B on a kernel-chosen loopback port and A
with ``--peer`` B, then measures:

* **Lag** at each offered load (``--rates``, default 100 and 1,000 writes/s, ``--seconds`` each):
  client threads PUT new keys to A on a fixed schedule (open loop: a write late on its schedule is
  sent at once, never skipped); a watcher thread on B polls ``GET /_changes?since=N`` in a tight
  loop and notes when each key first shows up. Lag is the time from the PUT's acknowledgement
  (its answer read by the writer) to the watcher reading the change on B, so it includes up to
  one poll round trip; a negative lag means B had the key before A's answer was read.
* **Catch-up**: B is stopped with SIGTERM, ``--catch-up-keys`` keys are written to A (concurrent
  PUTs over keep-alive connections; the time is reported), B is started again on its file and
  port, and the time until B's ``/_changes`` ``last_seq`` shows every one of them is measured,
  with the time until the first of them arrived (A's pusher may be in its backoff, capped at
  30 s, when B returns). B's key count under the prefix is checked at the end.

Every process started here is stopped by its PID (SIGTERM, then SIGKILL) whatever happens.

Usage: ``python bench/bench_replication_lag.py [--rates 100 1000] [--seconds 8]
[--catch-up-keys 100000]``
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

REPOSITORY = Path(__file__).resolve().parent.parent
LISTENING = re.compile(rb"Navistore listening on tcp:127\.0\.0\.1:(\d+)")
#: How long a node may take to start or stop.
DEADLINE = 60.0
#: How long one HTTP request may take.
REQUEST_TIMEOUT = 30.0


# -- processes ----------------------------------------------------------------------------------


class Node:
    """A ``twistd -n navistore`` process on sqlite in its own directory."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.workdir = root / name
        self.workdir.mkdir(exist_ok=True)
        self.log_path = self.workdir / "node.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, *options: str) -> None:
        """Start (on the port of the previous run, if any) and wait for ``/_health``."""
        listen = f"tcp:{self.port}:interface=127.0.0.1"
        command = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "navistore",
            "--port",
            listen,
            "--backend",
            f"sqlite:{self.name}.db",
            *options,
        ]
        environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
        with self.log_path.open("ab") as log:
            start = log.tell()
            self.process = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"node {self.name} exited:\n{self.log_path.read_text()}")
            with self.log_path.open("rb") as log:
                log.seek(start)
                found = LISTENING.search(log.read())
            if found and status_of(int(found.group(1)), "/_health") == 200:
                self.port = int(found.group(1))
                return
            time.sleep(0.02)
        raise RuntimeError(f"node {self.name} not ready within {DEADLINE} s")

    @property
    def url(self) -> str:
        """The URL a peer uses to reach this node."""
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL by PID if it is still there after the deadline."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(DEADLINE)


def status_of(port: int, path: str) -> int | None:
    """The status of one GET, or None when the node does not answer."""
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", path)
        status = connection.getresponse().status
        connection.close()
        return status
    except (OSError, http.client.HTTPException):
        return None


class Client:
    """One keep-alive connection to a node."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Send one request; its status and body."""
        self.connection.request(method, path, body=body)
        response = self.connection.getresponse()
        return response.status, response.read()

    def json(self, path: str) -> dict:
        """GET ``path`` (it must answer 200) and decode it."""
        status, body = self.call("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:300]!r}")
        return json.loads(body)

    def last_seq(self) -> int:
        """The node's newest seq (``/_changes`` echoes a ``since`` past the end as its
        ``last_seq``, so ``/_health`` is asked)."""
        return int(self.json("/_health")["last_seq"])

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()


def run_threads(jobs: list) -> None:
    """Run each callable in a thread; re-raise the first failure."""
    failures: list[BaseException] = []

    def run(job) -> None:  # type: ignore[no-untyped-def]
        try:
            job()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(job,), daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def percentile(values: list[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


# -- lag ----------------------------------------------------------------------------------------


class Watcher(threading.Thread):
    """Polls B's ``/_changes?since=N`` in a tight loop; notes when each key first arrives."""

    def __init__(self, port: int, prefix: str) -> None:
        super().__init__(daemon=True)
        self.client = Client(port)
        self.prefix = prefix
        self.since = self.client.last_seq()
        self.arrived: dict[str, float] = {}
        self.stopping = threading.Event()
        self.polls = 0

    def run(self) -> None:
        """Poll until told to stop."""
        try:
            while not self.stopping.is_set():
                document = self.client.json(f"/_changes?since={self.since}&limit=1000")
                now = time.monotonic()
                self.polls += 1
                for change in document["results"]:
                    key = change["key"]
                    if key.startswith(self.prefix) and key not in self.arrived:
                        self.arrived[key] = now
                self.since = max(self.since, int(document["last_seq"]))
        finally:
            self.client.close()


def measure_lag(a: Node, b: Node, rate: int, seconds: float, threads: int) -> dict:
    """Offer ``rate`` writes/s to A for ``seconds``; the lag of each write to B."""
    prefix = f"/lag{rate}/"
    total = int(rate * seconds)
    acked: dict[str, float] = {}
    late = [0.0] * threads
    watcher = Watcher(b.port, prefix)
    watcher.start()
    start = time.monotonic() + 0.2

    def writer(index: int) -> None:
        client = Client(a.port)
        try:
            for number in range(index, total, threads):
                due = start + number / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    late[index] = max(late[index], -delay)
                key = f"{prefix}k{number:06d}"
                status, body = client.call("PUT", key, b"value %d" % number)
                if status != 201:
                    raise RuntimeError(f"PUT {key}: {status} {body!r}")
                acked[key] = time.monotonic()
        finally:
            client.close()

    run_threads([lambda index=index: writer(index) for index in range(threads)])
    written = time.monotonic() - start
    end = time.monotonic() + 30.0
    while len(watcher.arrived) < total and time.monotonic() < end:
        time.sleep(0.01)
    watcher.stopping.set()
    watcher.join(REQUEST_TIMEOUT)
    lags = [(watcher.arrived[key] - acked[key]) * 1000 for key in acked if key in watcher.arrived]
    return {
        "rate": rate,
        "writes": total,
        "achieved": total / written,
        "max_late_ms": max(late) * 1000,
        "arrived": len(lags),
        "p50": percentile(lags, 0.50) if lags else float("nan"),
        "p99": percentile(lags, 0.99) if lags else float("nan"),
        "max": max(lags) if lags else float("nan"),
    }


# -- catch-up -----------------------------------------------------------------------------------


def count_keys(client: Client, prefix: str) -> int:
    """How many keys a node lists under ``prefix`` (paged)."""
    count = 0
    after: str | None = None
    while True:
        path = f"/_keys?prefix={quote(prefix, safe='')}&limit=10000"
        if after is not None:
            path += "&after=" + quote(after, safe="")
        document = client.json(path)
        count += len(document["keys"])
        after = document["next"]
        if after is None:
            return count


def measure_catch_up(a: Node, b: Node, keys: int, threads: int, deadline: float) -> dict:
    """Stop B, write ``keys`` keys to A, start B again: how long B takes to hold them all."""
    prefix = "/catchup/"
    b.stop()

    def writer(index: int) -> None:
        client = Client(a.port)
        try:
            for number in range(index, keys, threads):
                key = f"{prefix}k{number:07d}"
                status, body = client.call("PUT", key, b"catch-up value %d" % number)
                if status != 201:
                    raise RuntimeError(f"PUT {key}: {status} {body!r}")
        finally:
            client.close()

    started = time.monotonic()
    run_threads([lambda index=index: writer(index) for index in range(threads)])
    write_time = time.monotonic() - started

    client_b_base = None
    b.start()
    restarted = time.monotonic()
    client = Client(b.port)
    try:
        base = client.last_seq()
        client_b_base = base
        first = None
        done = None
        end = restarted + deadline
        while time.monotonic() < end:
            seq = client.last_seq()
            now = time.monotonic()
            if first is None and seq > base:
                first = now - restarted
            if seq - base >= keys:
                done = now - restarted
                break
            time.sleep(0.01)
        held = count_keys(client, prefix)
    finally:
        client.close()
    return {
        "keys": keys,
        "write_time": write_time,
        "first": first,
        "done": done,
        "held": held,
        "base": client_b_base,
    }


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    """Parse options, run both phases, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="client threads for the lag runs (default: 4, plus one per 50 writes/s offered)",
    )
    parser.add_argument("--catch-up-keys", type=int, default=100_000)
    parser.add_argument("--catch-up-threads", type=int, default=8)
    parser.add_argument(
        "--catch-up-deadline", type=float, default=300.0, help="give up after this many seconds"
    )
    options = parser.parse_args()

    command = shlex.join(["python", "bench/bench_replication_lag.py", *sys.argv[1:]])
    print(f"$ {command}")
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, sqlite, 127.0.0.1, A -> B")
    root = Path(tempfile.mkdtemp(prefix="navistore-bench-lag-"))
    a, b = Node("a", root), Node("b", root)
    try:
        b.start()
        a.start("--peer", b.url)
        warm = Client(a.port)
        warm.call("PUT", "/warm", b"up")
        warm.close()

        header = (
            f"{'offered/s':>9} {'achieved/s':>10} {'writes':>7} {'on B':>7} | "
            f"{'lag p50':>8} {'p99':>8} {'max':>8} | {'writer late max':>15}"
        )
        print()
        print(header)
        print("-" * len(header))
        for rate in options.rates:
            threads = options.threads or 4 + rate // 50
            row = measure_lag(a, b, rate, options.seconds, threads)
            print(
                f"{row['rate']:>9} {row['achieved']:>10.0f} {row['writes']:>7} "
                f"{row['arrived']:>7} | {row['p50']:>5.1f} ms {row['p99']:>5.1f} ms "
                f"{row['max']:>5.1f} ms | {row['max_late_ms']:>12.1f} ms"
            )

        result = measure_catch_up(
            a, b, options.catch_up_keys, options.catch_up_threads, options.catch_up_deadline
        )
        print()
        keys = result["keys"]
        print(f"catch-up of {keys:,} keys written to A while B was stopped (SIGTERM):")
        rate = keys / result["write_time"]
        print(
            f"  writing them to A ({options.catch_up_threads} threads): "
            f"{result['write_time']:.1f} s ({rate:,.0f} writes/s)"
        )
        first, done = result["first"], result["done"]
        print(
            "  after B restarted, first change arrived: "
            + (f"{first:.1f} s" if first is not None else "never")
        )
        if done is not None:
            print(
                f"  after B restarted, B held all {keys:,}: {done:.1f} s "
                f"({keys / max(done - (first or 0.0), 1e-9):,.0f} records/s once flowing)"
            )
        else:
            print(f"  B did NOT catch up within {options.catch_up_deadline:.0f} s")
        print(f"  keys B lists under /catchup/: {result['held']:,}")
    finally:
        a.stop()
        b.stop()


if __name__ == "__main__":
    main()

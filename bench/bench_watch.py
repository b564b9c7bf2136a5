"""Wake-up latency of a long-poll watcher on a real Navistore node on 127.0.0.1.

Starts ``twistd -n navistore`` (sqlite, and the memory backend) on a kernel-chosen loopback port,
parks a ``/_changes?feed=longpoll`` watcher on ``/bench/``, writes one key under it, and measures
the time from the PUT's acknowledgement (its answer read by the writer) to the long-poll's answer
read by the watcher, for each of ``--writes`` writes; the watcher then polls again from the
``last_seq`` it got. Optionally ``--bystanders`` more long-polls wait on other prefixes the whole
time: they must cost nothing, since a change wakes only the watchers of its prefix.

A negative "after ack" time means the watcher's answer was read before the writer's: both are
sent by the node in the same reactor turn or so. Every process started here is stopped by its PID
at the end.

Usage: ``python bench/bench_watch.py [--writes 500] [--bystanders 0 200] [--settle-ms 5]``
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
LISTENING = re.compile(rb"Navistore listening on tcp:127\.0\.0\.1:(\d+)")
DEADLINE = 60.0


class Node:
    """A ``twistd -n navistore`` process on a loopback port the kernel chose."""

    def __init__(self, backend: str, workdir: Path) -> None:
        self.log_path = workdir / "node.log"
        command = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "navistore",
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--backend",
            backend,
        ]
        environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=workdir, env=environment, stdout=log, stderr=subprocess.STDOUT
            )
        self.port = self._wait_port()

    def _wait_port(self) -> int:
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"node exited:\n{self.log_path.read_text()}")
            found = LISTENING.search(self.log_path.read_bytes())
            if found:
                port = int(found.group(1))
                if _status(port, "GET", "/_health") == 200:
                    return port
            time.sleep(0.05)
        raise RuntimeError(f"node not ready within {DEADLINE} s")

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if still there after the deadline."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(DEADLINE)


def _status(port: int, method: str, path: str) -> int | None:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request(method, path)
        status = connection.getresponse().status
        connection.close()
        return status
    except (OSError, http.client.HTTPException):
        return None


def park_bystanders(port: int, count: int) -> list[socket.socket]:
    """Open ``count`` long-polls on prefixes nothing writes to; they wait the whole run."""
    parked = []
    for index in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(
            b"GET /_changes?feed=longpoll&prefix=/bystander%d/&timeout=300 HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\n\r\n" % index
        )
        parked.append(sock)
    return parked


def watcher(port: int, orders: queue.Queue, answers: queue.Queue, sent: threading.Event) -> None:
    """Long-poll after each seq ordered; report when each answer was read, and its body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while True:
        since = orders.get()
        if since is None:
            connection.close()
            return
        connection.request("GET", f"/_changes?feed=longpoll&prefix=/bench/&since={since}")
        sent.set()
        response = connection.getresponse()
        body = response.read()
        answers.put((time.perf_counter(), response.status, body))


def measure(port: int, writes: int, settle: float) -> dict[str, list[float]]:
    """Drive ``writes`` wake-ups; the latencies in ms."""
    orders: queue.Queue = queue.Queue()
    answers: queue.Queue = queue.Queue()
    sent = threading.Event()
    thread = threading.Thread(target=watcher, args=(port, orders, answers, sent), daemon=True)
    thread.start()
    writer = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    writer.request("GET", "/_health")
    since = json.loads(writer.getresponse().read())["last_seq"]
    figures: dict[str, list[float]] = {"after_ack": [], "after_put": [], "put": []}
    early = 0
    for index in range(writes):
        sent.clear()
        orders.put(since)
        sent.wait(10)
        time.sleep(settle)  # let the node park the long-poll
        started = time.perf_counter()
        writer.request("PUT", f"/bench/k{index % 50}", body=b"%d" % index)
        response = writer.getresponse()
        response.read()
        acknowledged = time.perf_counter()
        if response.status not in (200, 201):
            raise RuntimeError(f"PUT answered {response.status}")
        answered, status, body = answers.get(timeout=30)
        document = json.loads(body)
        if status != 200 or not document["results"]:
            raise RuntimeError(f"long-poll answered {status} {body[:200]!r}")
        if answered < started:
            early += 1
        since = document["last_seq"]
        figures["after_ack"].append((answered - acknowledged) * 1000)
        figures["after_put"].append((answered - started) * 1000)
        figures["put"].append((acknowledged - started) * 1000)
    orders.put(None)
    thread.join(10)
    writer.close()
    if early:
        print(f"  warning: {early} answers came before their PUT was sent (raise --settle-ms)")
    return figures


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writes", type=int, default=500)
    parser.add_argument("--bystanders", type=int, nargs="+", default=[0, 200])
    parser.add_argument("--settle-ms", type=float, default=5.0)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "memory"])
    options = parser.parse_args()
    python = sys.version.split()[0]
    print(f"{options.writes} writes per row; Python {python}, {os.cpu_count()} CPUs")
    header = (
        f"{'backend':8} {'bystanders':>10} | {'after ack p50':>13} {'p99':>7} {'max':>7} | "
        f"{'after PUT sent p50':>18} {'p99':>7} | {'PUT p50':>7}"
    )
    print(header)
    print("-" * len(header))
    for backend in options.backends:
        for bystanders in options.bystanders:
            workdir = Path(tempfile.mkdtemp(prefix="navistore-bench-watch-"))
            url = f"sqlite:///{workdir}/bench.db" if backend == "sqlite" else "memory:"
            node = Node(url, workdir)
            parked: list[socket.socket] = []
            try:
                parked = park_bystanders(node.port, bystanders)
                figures = measure(node.port, options.writes, options.settle_ms / 1000)
            finally:
                for sock in parked:
                    sock.close()
                node.stop()
                shutil.rmtree(workdir, ignore_errors=True)
            ack, put, raw = figures["after_ack"], figures["after_put"], figures["put"]
            print(
                f"{backend:8} {bystanders:>10} | {statistics.median(ack):>10.2f} ms "
                f"{percentile(ack, 0.99):>7.2f} {max(ack):>7.2f} | "
                f"{statistics.median(put):>15.2f} ms {percentile(put, 0.99):>7.2f} | "
                f"{statistics.median(raw):>7.2f}"
            )


if __name__ == "__main__":
    main()

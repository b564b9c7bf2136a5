"""Watch fan-out: N long-poll and N event-stream watchers on one node, then one write.

Starts ``twistd -n navistore --backend memory:`` on a kernel-chosen loopback port, with the
file-descriptor limit raised (and ``--max-watchers`` / ``--max-connections`` to match), then two
client processes (one per kind) open N watchers each: a fraction ``--hot`` of them on the prefix
that is written (``/hot/``), the rest each on a prefix of its own (``/cold<i>/``). The clients
are raw non-blocking sockets on one ``selectors`` loop each, so that they are not what is
measured. Once the node's ``navistore_watchers`` gauge says every watcher is parked, the bench
reads the node's RSS (``/proc/<pid>/status`` VmRSS) and CPU (``/proc/<pid>/stat`` utime+stime),
writes one key under ``/hot/``, and reports:

- the wake-up latency (p50/p99/max, ms) from the PUT's acknowledgement, read by the writer, to
  each hot watcher's answer read whole (a long-poll's body, a stream's ``change`` event);
- the bystanders woken (a cold watcher that got anything but a heartbeat): must be 0;
- the RSS per idle watcher: (RSS with every watcher parked - RSS before) / 2N, in KiB;
- the node's CPU per wake-up: (utime+stime after the last answer - before the PUT) / woken.

Every row is the median of ``--runs`` runs, each on a fresh node. Every process started here is
stopped by its PID, and every wait is bounded.

Usage: ``python bench/bench_fanout.py [--watchers 1000 10000] [--hot 0.5] [--runs 3]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

from suite_servers import loopback_request, navistore_command

REPOSITORY = Path(__file__).resolve().parent.parent
LISTENING = re.compile(rb"Navistore listening on tcp:127\.0\.0\.1:(\d+)")
WATCHERS_GAUGE = re.compile(rb'^navistore_watchers\{kind="(\w+)"\} (\S+)$', re.MULTILINE)
#: Seconds any one step may take before the run is abandoned.
DEADLINE = 120.0
#: Seconds after the last hot answer during which bystanders are still watched.
LINGER = 1.0
#: File descriptors each process may open (the bench runs as a user allowed to raise it).
FD_LIMIT = 65536
#: Descriptors the node keeps for itself (ports, logs, epoll, the bench's own requests).
FD_RESERVE = 64
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def raise_fd_limit() -> None:
    """Raise this process's descriptor limit as far as allowed, up to :data:`FD_LIMIT`."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, max(hard, FD_LIMIT)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Node:
    """A ``twistd -n navistore`` process on a loopback port the kernel chose."""

    def __init__(self, workdir: Path, watchers: int) -> None:
        self.log_path = workdir / "node.log"
        command = [
            *navistore_command(sys.executable, "tcp:0:interface=127.0.0.1:backlog=1024", "memory:"),
            "--max-watchers",
            str(watchers + 10),
            "--max-connections",
            # A node serves watchers up to its connection limit less a tenth.
            str((watchers + 10) * 10 // 9 + 10),
        ]
        environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=workdir,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=raise_fd_limit,
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
                try:
                    if request(port, "GET", "/_health")[0] == 200:
                        return port
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"node not ready within {DEADLINE} s")

    def rss_kib(self) -> int:
        """The node's resident set, in KiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1))  # type: ignore[union-attr]

    def cpu_seconds(self) -> float:
        """The node's user and system CPU time so far."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if still there after the deadline."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(DEADLINE)


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    return loopback_request(port, method, path, body, timeout=DEADLINE)


def parked(port: int) -> int:
    """How many long-poll and event-stream watchers the node serves now."""
    _, body = request(port, "GET", "/_metrics")
    return int(
        sum(
            float(value)
            for kind, value in WATCHERS_GAUGE.findall(body)
            if kind in (b"longpoll", b"eventsource")
        )
    )


# -- the client processes -----------------------------------------------------------------------


class _Watch:
    """One watcher's socket and what it read."""

    __slots__ = ("buffer", "done_at", "hot", "woken")

    def __init__(self, hot: bool) -> None:
        self.hot = hot
        self.buffer = b""
        self.done_at = 0.0
        self.woken = False


def _answered(kind: str, buffer: bytes) -> bool:
    """Whether ``buffer`` holds a whole answer (long-poll) or a change event (stream)."""
    if kind == "eventsource":
        return b"event: change" in buffer
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return False
    length = re.search(rb"(?i)content-length: (\d+)", buffer[:end])
    return length is not None and len(buffer) >= end + 4 + int(length.group(1))


def client(kind: str, count: int, hot: int, port: int, since: int, pipe: Connection) -> None:
    """Open ``count`` watchers of ``kind`` (the first ``hot`` of them on ``/hot/``), report
    when opened, then the monotonic time each hot one was answered and the bystanders woken."""
    raise_fd_limit()
    selector = selectors.DefaultSelector()
    watches: dict[socket.socket, _Watch] = {}
    batch = 200
    for index in range(count):
        prefix = "/hot/" if index < hot else f"/cold{index}/"
        target = f"/_changes?feed={kind}&prefix={prefix}&since={since}"
        if kind == "longpoll":
            target += "&timeout=300"
        sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % target.encode())
        sock.setblocking(False)
        watches[sock] = _Watch(index < hot)
        selector.register(sock, selectors.EVENT_READ)
        if (index + 1) % batch == 0 and index + 1 < count:
            pipe.send(("opened", index + 1))
            pipe.recv()  # the parent saw them parked on the node
    pipe.send(("opened", count))
    pipe.recv()  # go: the write is about to be sent
    waiting = hot
    end = time.monotonic() + DEADLINE
    last = 0.0
    while time.monotonic() < end and (waiting or time.monotonic() < last + LINGER):
        for key, _ in selector.select(0.1):
            sock = key.fileobj  # type: ignore[assignment]
            watch = watches[sock]
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                selector.unregister(sock)
                continue
            watch.buffer += data
            if watch.done_at or watch.woken:
                continue
            if watch.hot:
                if _answered(kind, watch.buffer):
                    watch.done_at = last = time.monotonic()
                    waiting -= 1
            elif kind == "longpoll" or b"event: change" in watch.buffer:
                watch.woken = True  # a bystander's stream may only get heartbeats
    answered = [watch.done_at for watch in watches.values() if watch.hot and watch.done_at]
    bystanders = sum(1 for watch in watches.values() if watch.woken)
    pipe.send(("done", answered, bystanders))
    for sock in watches:
        sock.close()


# -- one run ------------------------------------------------------------------------------------


def one_run(watchers: int, hot_fraction: float) -> dict[str, float]:
    """N long-polls and N streams on a fresh node, one write; the figures of that run."""
    workdir = Path(tempfile.mkdtemp(prefix="navistore-bench-fanout-"))
    node = Node(workdir, 2 * watchers)
    workers: list[multiprocessing.Process] = []
    try:
        port = node.port
        request(port, "PUT", "/warm/up", b"x")  # the write path's first use is not measured
        since = json.loads(request(port, "GET", "/_health")[1])["last_seq"]
        rss_before = node.rss_kib()
        hot = int(watchers * hot_fraction)
        pipes: list[Connection] = []
        expected = 0
        for kind in ("longpoll", "eventsource"):
            mine, theirs = multiprocessing.Pipe()
            worker = multiprocessing.Process(
                target=client, args=(kind, watchers, hot, port, since, theirs), daemon=True
            )
            worker.start()
            workers.append(worker)
            pipes.append(mine)
            while True:  # open in batches, each parked before the next: no SYN is dropped
                if not mine.poll(DEADLINE):
                    raise RuntimeError(f"{kind} client stalled")
                _, opened = mine.recv()
                _wait_parked(port, expected + opened)
                if os.environ.get("BENCH_VERBOSE"):
                    print(f"  {kind} {opened} parked at {time.monotonic():.1f}", file=sys.stderr)
                if opened == watchers:
                    break
                mine.send("more")
            expected += watchers
        time.sleep(1.0)  # let the node settle (the last requests' garbage, buffers)
        rss_parked = node.rss_kib()
        cpu_before = node.cpu_seconds()
        for pipe in pipes:
            pipe.send("go")
        time.sleep(0.2)  # the clients are in their select loops
        status, _ = request(port, "PUT", "/hot/key", b"changed")
        acknowledged = time.monotonic()
        if status not in (200, 201):
            raise RuntimeError(f"PUT answered {status}")
        latencies: list[float] = []
        bystanders = 0
        for pipe in pipes:
            if not pipe.poll(DEADLINE + 10):
                raise RuntimeError("a client did not report")
            _, answered, woken = pipe.recv()
            latencies.extend((at - acknowledged) * 1000 for at in answered)
            bystanders += woken
        cpu_after = node.cpu_seconds()
        missing = 2 * hot - len(latencies)
        if missing:
            print(f"  warning: {missing} hot watchers were not answered within {DEADLINE} s")
        return {
            "p50": statistics.median(latencies),
            "p99": percentile(latencies, 0.99),
            "max": max(latencies),
            "woken": len(latencies),
            "bystanders": bystanders,
            "rss_per_watcher": (rss_parked - rss_before) / (2 * watchers),
            "cpu_per_wake_us": (cpu_after - cpu_before) / max(1, len(latencies)) * 1e6,
        }
    except Exception:
        print(node.log_path.read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signal.SIGTERM)
            worker.join(DEADLINE)
        node.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_parked(port: int, count: int) -> None:
    end = time.monotonic() + DEADLINE
    while parked(port) < count:
        if time.monotonic() > end:
            raise RuntimeError(f"only {parked(port)} of {count} watchers parked")
        time.sleep(0.02)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--watchers", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--hot", type=float, default=0.5, help="fraction on the written prefix")
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    raise_fd_limit()
    python = sys.version.split()[0]
    print(
        f"N long-polls + N streams, {options.hot:.0%} of each on the written prefix; medians of "
        f"{options.runs} runs; Python {python}, {os.cpu_count()} CPUs"
    )
    header = (
        f"{'N':>6} {'woken':>6} | {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} | "
        f"{'bystanders':>10} | {'KiB/idle watcher':>16} | {'CPU us/wake':>11}"
    )
    print(header)
    print("-" * len(header))
    ceiling = (resource.getrlimit(resource.RLIMIT_NOFILE)[1] - FD_RESERVE) // 2
    for asked in options.watchers:
        watchers = min(asked, ceiling)
        if watchers < asked:
            print(f"  N = {asked} capped at {watchers}: the descriptor limit is the node's too")
        runs = [one_run(watchers, options.hot) for _ in range(options.runs)]

        def median(name: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(run[name] for run in runs)

        print(
            f"{watchers:>6} {median('woken'):>6.0f} | {median('p50'):>7.1f} "
            f"{median('p99'):>7.1f} {median('max'):>7.1f} | "
            f"{max(run['bystanders'] for run in runs):>10.0f} | "
            f"{median('rss_per_watcher'):>16.2f} | {median('cpu_per_wake_us'):>11.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

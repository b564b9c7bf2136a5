"""Hostile clients and broken peers against a real Navistore node on 127.0.0.1.

Starts ``twistd -n navistore`` (sqlite) on a kernel-chosen loopback port, writes 100 sentinel keys
(``/sentinel/0..99``, distinct values), six values at the value limit under ``/big/`` and warms
the node up, then runs one bounded attack after another: a 64 MiB bulk load of tiny entries, a
listing and a pull over the big values, a peer and an upstream answering 768 MiB, clients that
never read, 65,536 distinct 3 KB missing keys, long-polls over 400,000 changes, slowloris headers
and bodies, a node out of file descriptors (``ulimit -n 256``), and malformed input (a seq of
2^63, nested JSON, lines over 16 KiB, a 2^160 chunk size, an absolute-form target, invisible
format characters in keys, a header line without a colon). For each it prints a row with:

- **RSS peak**: the node process's largest VmRSS (``/proc/PID/status``, sampled every 25 ms by a
  thread) above its VmRSS just before the attack, until the "kept" sample;
- **RSS kept**: its VmRSS above that baseline 3 s after the attack ended and its connections
  were closed. Before an attack on the main node, a node holding more than 16 MiB over its RSS
  after setup is restarted on its database and warmed up, so that no attack finds a heap grown
  by an earlier one (or by its own setup) and looks cheaper than it is;
- **/_health max**: the longest ``GET /_health`` took meanwhile, polled every 20 ms on a fresh
  connection by a separate probe process (so that this process's own load cannot inflate it),
  for at least 1 s and until the node is responsive again; a probe request still unanswered
  then counts as long as it waited;
- **statuses** seen by the attack's clients, then by the probe: ``closed`` is a connection the
  node closed without a status, ``none`` one that got no status within the attack's time (still
  open), ``refused`` a connection not accepted; 5xx are in bold. For the input-validation rows a
  status of 400 or more says whether its body was ``json`` or ``text``.

A node that does not answer ``/_health`` within 30 s after an attack is "stuck": it is killed and
restarted on the same database, and the row says so. At the end the node must still serve (a
PUT and a GET) and the sentinels be unchanged. The goals, per row: RSS peak at most
max(64 MiB, 3 x the limit the request is under): 64 MiB (3 x the 16 MiB value limit is less),
192 MiB for the bulk loads (3 x the 64 MiB body limit); RSS kept at most 64 MiB; every
``/_health`` answered 200 within 100 ms, no 5xx (but the 503 ``upstream_unavailable`` the
README promises for a broken upstream), no stuck node, and for the descriptor-starved node
all 10 GETs answered. The table is Markdown; ``--json FILE`` also writes the figures.

The bench imports no Navistore code: ``--python`` and ``--tree`` choose the interpreter and the
source tree the nodes run (``PYTHONPATH=tree``; the module file the node imports is printed), so
an older checkout is measured the same way. Every process started here is stopped by its PID,
also on Ctrl-C or an error.

Usage: ``python bench/hostile.py [--quick] [--only 1,5,slowloris] [--python PATH] [--tree DIR]
[--json FILE] [--list]``
"""

from __future__ import annotations

import argparse
import atexit
import errno
import http.client
import json
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, TypeVar

REPOSITORY = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
MIB = 1024 * 1024
TIMES = "\u00d7"
LISTENING = b"Navistore listening on tcp:127.0.0.1:"
START_DEADLINE = 60.0
RECOVERY = 30.0  # seconds a node has to answer /_health again after an attack
SETTLE = 3.0  # seconds between the end of an attack and the "kept" RSS sample
ATTACK_WAIT = 30.0  # the longest wait for one answer during an attack
RSS_INTERVAL = 0.025
PROBE_INTERVAL = 0.02
MIN_PROBE = 1.0  # seconds the probe polls at least, even around an attack that takes none
RSS_GOAL_MIB = 64.0
BULK_LIMIT_MIB = 64.0  # a /_bulk body's limit: its rows may peak at 3 x that
RECYCLE_MIB = 16.0
HEALTH_GOAL_MS = 100.0
SEQ_OVER = str(2**63)

T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    """How big and how long each attack is (``--quick`` shrinks them)."""

    bulk_bytes: int
    big_value: int
    peer_answer: int
    peer_seconds: float
    unread_seconds: float
    missing_gets: int
    changes: int
    slowloris: int
    slowloris_seconds: float
    slow_body_seconds: float
    nofile_seconds: float


FULL = Sizes(64 * MIB, 16 * MIB, 768 * MIB, 10.0, 10.0, 65_536, 400_000, 500, 15.0, 30.0, 15.0)
QUICK = Sizes(4 * MIB, 2 * MIB, 96 * MIB, 4.0, 3.0, 4_096, 40_000, 100, 6.0, 6.0, 8.0)


# -- processes ------------------------------------------------------------------------------------

_STARTED: list[subprocess.Popen[bytes]] = []


def spawn(command: list[str], **options: Any) -> subprocess.Popen[bytes]:
    """Start a process and remember it, so that it is killed even if the bench fails."""
    process: subprocess.Popen[bytes] = subprocess.Popen(command, **options)
    _STARTED.append(process)
    return process


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM by PID, SIGKILL if it is still there after ``grace`` seconds."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            kill_process(process)


def kill_process(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL by PID and reap it."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)


@atexit.register
def _kill_leftovers() -> None:
    for process in _STARTED:
        if process.poll() is None:
            kill_process(process)


def rss_mib(pid: int) -> float | None:
    """The VmRSS of a process in MiB, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass(frozen=True)
class Runtime:
    """The interpreter and source tree the nodes run."""

    python: str
    tree: Path

    def environment(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.tree)}

    def navistore_file(self) -> str:
        """Where the nodes' ``import navistore`` comes from (asked of the node's interpreter)."""
        found = subprocess.run(
            [self.python, "-c", "import navistore; print(navistore.__file__)"],
            env=self.environment(),
            cwd=tempfile.gettempdir(),
            capture_output=True,
            timeout=60,
        )
        return (found.stdout or found.stderr).decode("utf-8", "replace").strip()


class Node:
    """A ``twistd -n navistore`` process on a loopback port the kernel chose.

    :param nofile: when given, the process's RLIMIT_NOFILE, set before twistd starts.
    """

    def __init__(
        self,
        runtime: Runtime,
        workdir: Path,
        arguments: list[str] | None = None,
        nofile: int | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.runtime = runtime
        self.workdir = workdir
        self.log_path = workdir / "node.log"
        self.arguments = arguments or []
        self.nofile = nofile
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.start()

    def start(self) -> None:
        prelude = os.environ.get("HOSTILE_NODE_PRELUDE", "")  # e.g. a profiler, to study a row
        if self.nofile is not None:
            limit = self.nofile
            prelude += (
                f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit})); "
            )
        command = [
            self.runtime.python,
            "-c",
            prelude + "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "navistore",
            "--port",
            f"tcp:0:interface={HOST}",
            "--backend",
            f"sqlite://{self.workdir / 'data.db'}",
            *self.arguments,
        ]
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = spawn(
                command,
                cwd=self.workdir,
                env=self.runtime.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.port = self._wait_port(offset)

    def _wait_port(self, offset: int) -> int:
        assert self.process is not None
        end = time.monotonic() + START_DEADLINE
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"node exited:\n{self._log_tail(offset)}")
            with self.log_path.open("rb") as log:
                log.seek(offset)
                text = log.read(1 << 20)
            found = text.find(LISTENING)
            if found >= 0:
                digits = text[found + len(LISTENING) :].split(b" ", 1)[0]
                port = int(digits)
                if call(port, "GET", "/_health", timeout=2)[0] == "200":
                    return port
            time.sleep(0.05)
        raise RuntimeError(
            f"node not ready within {START_DEADLINE:.0f} s:\n{self._log_tail(offset)}"
        )

    def _log_tail(self, offset: int) -> str:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read()[-3000:].decode("utf-8", "replace")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_mib(self) -> float | None:
        return rss_mib(self.pid) if self.alive() else None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def restart(self) -> None:
        """Kill it (it is stuck) and start it again on the same database."""
        if self.process is not None:
            kill_process(self.process)
        self.start()


# -- HTTP on raw sockets --------------------------------------------------------------------------


class Closed(Exception):
    """The connection ended (closed or reset) before the answer was whole."""


class NoAnswer(Exception):
    """The deadline passed first."""


class NotHTTP(Exception):
    """What came back is not an HTTP answer."""


class Answer(NamedTuple):
    """An HTTP answer: its status and headers, the first ``keep`` bytes of its body, its size."""

    status: int
    headers: dict[str, str]
    body: bytes
    size: int
    complete: bool


class Reader:
    """Reads HTTP messages off a blocking socket, each read bounded by a deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.body_size = 0

    def _receive(self, deadline: float) -> bytes:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoAnswer
            self.sock.settimeout(min(remaining, 1.0))
            try:
                return self.sock.recv(1 << 18)
            except socket.timeout:
                continue
            except OSError:
                return b""  # reset

    def _fill(self, deadline: float) -> None:
        data = self._receive(deadline)
        if not data:
            raise Closed
        self.buffer += data

    def line(self, deadline: float) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                found = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return found
            if len(self.buffer) > 1 << 20:
                raise NotHTTP("a line over 1 MiB")
            self._fill(deadline)

    def headers(self, deadline: float) -> dict[str, str]:
        found: dict[str, str] = {}
        while True:
            text = self.line(deadline)
            if not text:
                return found
            name, _, value = text.partition(b":")
            found[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")

    def _take(self, count: int | None, deadline: float, keep: int, kept: bytearray) -> None:
        """Consume ``count`` body bytes (None: up to the end of the stream), keeping ``keep``."""
        remaining = count
        while remaining is None or remaining > 0:
            if not self.buffer:
                data = self._receive(deadline)
                if not data:
                    if remaining is None:
                        return
                    raise Closed
                self.buffer += data
            taken = len(self.buffer) if remaining is None else min(remaining, len(self.buffer))
            if len(kept) < keep:
                kept += self.buffer[: min(taken, keep - len(kept))]
            del self.buffer[:taken]
            self.body_size += taken
            if remaining is not None:
                remaining -= taken

    def body(
        self, headers: dict[str, str], deadline: float, keep: int, *, until_close: bool
    ) -> bytes:
        """Read a message body as its headers frame it."""
        kept = bytearray()
        self.body_size = 0
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size = int(self.line(deadline).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.line(deadline):
                        pass
                    break
                self._take(size, deadline, keep, kept)
                self.line(deadline)
        elif "content-length" in headers:
            self._take(int(headers["content-length"]), deadline, keep, kept)
        elif until_close:
            self._take(None, deadline, keep, kept)
        return bytes(kept)

    def response(self, deadline: float, *, keep: int = 65536, head_only: bool = False) -> Answer:
        """Read one answer (after any 1xx); Closed, NoAnswer or NotHTTP if no status came.

        ``head_only`` stops after the headers of a 2xx answer (a stream that never ends).
        """
        while True:
            status_line = self.line(deadline)
            parts = status_line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
                raise NotHTTP(status_line[:80].decode("latin-1"))
            status = int(parts[1])
            headers = self.headers(deadline)
            if not 100 <= status < 200:
                break
        if (head_only and status < 300) or status in (204, 304):
            return Answer(status, headers, b"", 0, True)
        try:
            body = self.body(headers, deadline, keep, until_close=True)
        except (Closed, NoAnswer, NotHTTP, ValueError):
            return Answer(status, headers, b"", self.body_size, False)
        return Answer(status, headers, body, self.body_size, True)


class Exchange(NamedTuple):
    """What became of one request: a label (status or what happened), the answer, the time."""

    label: str
    answer: Answer | None
    seconds: float


def request_bytes(
    method: str, target: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> bytes:
    """A request's bytes; ``target`` must be ASCII (percent-encode it first)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (body or b"")


def exchange(
    port: int,
    data: bytes,
    *,
    seconds: float = 10.0,
    keep: int = 65536,
    head_only: bool = False,
) -> Exchange:
    """Send raw bytes on a fresh connection and read one answer within ``seconds``."""
    started = time.monotonic()
    deadline = started + seconds
    try:
        sock = socket.create_connection((HOST, port), timeout=min(seconds, 5.0))
    except OSError:
        return Exchange("refused", None, time.monotonic() - started)
    with sock:
        try:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            sock.sendall(data)
        except OSError:
            pass  # the node may answer and close before it read everything: read that answer
        try:
            answer = Reader(sock).response(deadline, keep=keep, head_only=head_only)
        except Closed:
            return Exchange("closed", None, time.monotonic() - started)
        except NoAnswer:
            return Exchange("none", None, time.monotonic() - started)
        except NotHTTP:
            return Exchange("not HTTP", None, time.monotonic() - started)
    return Exchange(str(answer.status), answer, time.monotonic() - started)


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[str, bytes]:
    """A well-formed request through http.client: (status or what happened, body)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return str(response.status), response.read()
    except socket.timeout:
        return "none", b""
    except ConnectionRefusedError:
        return "refused", b""
    except (OSError, http.client.HTTPException):
        return "closed", b""
    finally:
        connection.close()


def is_json(answer: Answer | None) -> bool:
    """Whether an answer says its body is JSON, and that body (when read whole) parses."""
    if answer is None or "json" not in answer.headers.get("content-type", ""):
        return False
    if not answer.complete or len(answer.body) < answer.size:
        return True  # not all of it was kept: trust the header
    try:
        json.loads(answer.body)
    except ValueError:
        return False
    return True


def kind_label(result: Exchange) -> str:
    """The status, with ``json`` or ``text`` for an error: how a refusal's body looks."""
    if result.answer is None or result.answer.status < 400:
        return result.label
    return f"{result.label} {'json' if is_json(result.answer) else 'text'}"


def describe(result: Exchange) -> str:
    """A status with its JSON error code, or what happened and when."""
    if result.answer is None:
        return f"{result.label} after {result.seconds:.1f} s"
    code = ""
    if result.answer.status >= 400 and is_json(result.answer):
        try:
            document = json.loads(result.answer.body)
        except ValueError:
            document = None
        if isinstance(document, dict):
            code = f" {document.get('error')}"
    return f"{result.label}{code}"


def describe_timed(result: Exchange) -> str:
    """:func:`describe`, with the time of an answer too."""
    if result.answer is None:
        return describe(result)
    return f"{describe(result)} after {result.seconds:.1f} s"


def parallel(function: Callable[[int], T], count: int) -> list[T]:
    """Run ``function(0..count-1)`` in threads; their results in order."""
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        results[index] = function(index)

    threads = [threading.Thread(target=run, args=(index,), daemon=True) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


# -- the measuring harness ------------------------------------------------------------------------


class RSSSampler:
    """Samples a process's VmRSS from a thread and keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_mib(pid)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(RSS_INTERVAL):
            current = rss_mib(self.pid)
            if current is None:
                return
            self.peak = current if self.peak is None else max(self.peak, current)

    def finish(self) -> float | None:
        self._stopping.set()
        self._thread.join(5)
        return self.peak


PROBE_SOURCE = r"""
import errno, json, select, socket, sys, threading, time

PORT, INTERVAL = int(sys.argv[1]), float(sys.argv[2])
REQUEST = b"GET /_health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
GRACE = 1.0
stopped = []


def watch_stdin():
    sys.stdin.readline()
    stopped.append(time.monotonic())


def given_up():
    return bool(stopped) and time.monotonic() > stopped[0] + GRACE


def wait_for(sock, writing):
    while not given_up():
        if writing:
            ready = select.select([], [sock], [], 0.02)[1]
        else:
            ready = select.select([sock], [], [], 0.02)[0]
        if ready:
            return True
    return False


def complete(answer):
    head, found, body = answer.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def probe_once():
    sock = socket.socket()
    sock.setblocking(False)
    try:
        if sock.connect_ex(("127.0.0.1", PORT)) not in (0, errno.EINPROGRESS):
            return "refused"
        if not wait_for(sock, True):
            return "none"
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            return "refused"
        sock.send(REQUEST)
        answer = b""
        while not complete(answer):
            if not wait_for(sock, False):
                return "none"
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        if answer.startswith(b"HTTP/") and len(answer) >= 12:
            return answer[9:12].decode("ascii", "replace")
        return "closed"
    except OSError:
        return "closed"
    finally:
        sock.close()


threading.Thread(target=watch_stdin, daemon=True).start()
print("ready", flush=True)
latencies, labels = [], {}
while not stopped:
    started = time.monotonic()
    label = probe_once()
    elapsed = time.monotonic() - started
    latencies.append(elapsed * 1000)
    labels[label] = labels.get(label, 0) + 1
    time.sleep(max(0.0, INTERVAL - elapsed))
latencies.sort()
print(json.dumps({
    "count": len(latencies),
    "max_ms": latencies[-1] if latencies else None,
    "p50_ms": latencies[len(latencies) // 2] if latencies else None,
    "labels": labels,
}), flush=True)
"""


class Probe:
    """A separate process polling ``/_health`` every 20 ms until told to stop."""

    def __init__(self, port: int) -> None:
        self.process = spawn(
            [sys.executable, "-c", PROBE_SOURCE, str(port), str(PROBE_INTERVAL)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        self.process.stdout.readline()  # "ready": it is polling

    def finish(self) -> tuple[float | None, Counter[str]]:
        """Stop it; the longest request in ms, and the statuses it saw."""
        try:
            output, _ = self.process.communicate(b"stop\n", timeout=15)
            report = json.loads(output.decode("utf-8").strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            kill_process(self.process)
            return None, Counter({"probe failed": 1})
        return report["max_ms"], Counter(report["labels"])

    def kill(self) -> None:
        kill_process(self.process)


@dataclass
class Row:
    """One attack's figures."""

    number: str
    slug: str
    name: str = ""
    peak_mib: float | None = None
    kept_mib: float | None = None
    health_ms: float | None = None
    marks: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    health_statuses: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    stuck: str | None = None
    seconds: float = 0.0
    expected_5xx: set[str] = field(default_factory=set)
    missed: list[str] = field(default_factory=list)
    #: When set, the only statuses (labels) the attack's clients should see: any other is a
    #: missed goal ("answers"), e.g. a slow client that gets no 408.
    expected: set[str] | None = None
    #: The RSS goal: max(64 MiB, 3 x the value or body limit the request is under).
    rss_goal_mib: float = RSS_GOAL_MIB

    def count(self, label: str, times: int = 1) -> None:
        self.statuses[label] += times

    def note(self, text: str) -> None:
        self.notes.append(text)

    def failures(self) -> list[str]:
        """The goals this row missed."""
        missed = []
        if self.peak_mib is None or self.peak_mib > self.rss_goal_mib:
            missed.append("RSS peak")
        if self.kept_mib is None or self.kept_mib > RSS_GOAL_MIB:
            missed.append("RSS kept")
        if self.health_ms is None or self.health_ms > HEALTH_GOAL_MS:
            missed.append("/_health")
        seen = [*self.statuses, *self.health_statuses]
        if any(is_5xx(label) and label[:3] not in self.expected_5xx for label in seen):
            missed.append("5xx")
        if any(label != "200" for label in self.health_statuses):
            missed.append("/_health answers")
        if self.stuck:
            missed.append("stuck")
        if self.expected is not None and (not self.statuses or set(self.statuses) - self.expected):
            missed.append("answers (expected " + " or ".join(sorted(self.expected)) + ")")
        return missed + self.missed

    def as_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "slug": self.slug,
            "attack": self.name,
            "rss_peak_mib": self.peak_mib,
            "rss_kept_mib": self.kept_mib,
            "health_max_ms": self.health_ms,
            "marks": self.marks,
            "statuses": dict(self.statuses),
            "health_statuses": dict(self.health_statuses),
            "notes": self.notes,
            "stuck": self.stuck,
            "seconds": round(self.seconds, 2),
            "missed": self.failures(),
        }


def is_5xx(label: str) -> bool:
    return len(label) >= 3 and label[0] == "5" and label[:3].isdigit()


def format_counts(counts: Counter[str]) -> str:
    def order(label: str) -> tuple[int, str]:
        return (0 if label[:3].isdigit() else 1, label)

    parts = []
    for label in sorted(counts, key=order):
        text = f"{label}{TIMES}{counts[label]}"
        parts.append(f"**{text}**" if is_5xx(label) else text)
    return " ".join(parts) or "-"


def settled_rss(node: Node) -> float | None:
    """The median of three VmRSS samples 50 ms apart."""
    samples = []
    for _ in range(3):
        current = node.rss_mib()
        if current is not None:
            samples.append(current)
        time.sleep(0.05)
    return statistics.median(samples) if samples else None


def _over(value: float | None, baseline: float | None) -> float | None:
    return None if value is None or baseline is None else value - baseline


class Bench:
    """The main node, its sentinels, the attacks' shared setup and the measuring harness."""

    def __init__(self, runtime: Runtime, sizes: Sizes, workroot: Path) -> None:
        self.runtime = runtime
        self.sizes = sizes
        self.workroot = workroot
        self.restarts = 0
        self.leftover_peers: list[str] = []
        self.extra_nodes: list[Node] = []
        self.big_written = False
        self.big_since = 0  # the seq before the big values: a pull from there reads them
        self.changes_written = False
        self.reference: float | None = None
        self.main = Node(runtime, workroot / "main")
        self.sentinels = self.write_sentinels()

    def start_node(self, name: str, arguments: list[str], nofile: int | None = None) -> Node:
        node = Node(self.runtime, self.workroot / name, arguments, nofile)
        self.extra_nodes.append(node)
        return node

    def restart_main(self) -> None:
        """Kill the main node and start it again on its database, warmed up."""
        self.main.restart()
        self.restarts += 1
        self.warm_up()

    def recycle_if_bloated(self, row: Row) -> None:
        """Restart the main node if it holds more than RECYCLE_MIB over its RSS after setup.

        An attack would otherwise find the heap grown by an earlier one (or by its own setup)
        and look cheaper than it is.
        """
        current = settled_rss(self.main)
        if current is None or self.reference is None or current - self.reference <= RECYCLE_MIB:
            return
        over = current - self.reference
        row.note(f"node restarted first (it held {over:.0f} MiB over its setup RSS)")
        self.restart_main()

    def stop_all(self) -> None:
        for node in [*self.extra_nodes, self.main]:
            node.stop()

    # -- setup (not timed) ------------------------------------------------------------------------

    def write_sentinels(self) -> dict[str, bytes]:
        sentinels = {}
        for index in range(100):
            key = f"/sentinel/{index}"
            value = b"sentinel %d %s" % (index, os.urandom(8).hex().encode())
            status, _ = call(self.main.port, "PUT", key, value, {"Content-Type": "text/plain"})
            if status not in ("200", "201"):
                raise RuntimeError(f"PUT {key} answered {status}")
            sentinels[key] = value
        return sentinels

    def check_sentinels(self) -> int:
        """How many sentinels still hold their value."""
        intact = 0
        for key, value in self.sentinels.items():
            status, body = call(self.main.port, "GET", key)
            intact += status == "200" and body == value
        return intact

    def ensure_big_values(self) -> None:
        """Six values at the value limit under ``/big/`` (distinct, printable ASCII)."""
        if self.big_written:
            return
        self.big_since = self.last_seq() or 0
        for index in range(6):
            value = bytes([ord("a") + index]) * self.sizes.big_value
            status, body = call(
                self.main.port, "PUT", f"/big/{index}", value, {"Content-Type": "text/plain"}, 120
            )
            if status not in ("200", "201"):
                raise RuntimeError(f"PUT /big/{index} answered {status} {body[:200]!r}")
        self.big_written = True

    def ensure_changes(self) -> None:
        """``sizes.changes`` small keys written with ``/_bulk``, 20,000 a request."""
        if self.changes_written:
            return
        piece = 20_000
        for first in range(0, self.sizes.changes, piece):
            entries = (
                b'{"key":"/feed/%07d","value":"v"}' % index
                for index in range(first, min(first + piece, self.sizes.changes))
            )
            body = b"[" + b",".join(entries) + b"]"
            status, answer = call(
                self.main.port, "POST", "/_bulk", body, {"Content-Type": "application/json"}, 300
            )
            if status != "200":
                raise RuntimeError(f"POST /_bulk answered {status} {answer[:200]!r}")
        self.changes_written = True

    def last_seq(self, node: Node | None = None) -> int | None:
        status, body = call((node or self.main).port, "GET", "/_health")
        try:
            return int(json.loads(body)["last_seq"]) if status == "200" else None
        except (ValueError, KeyError, TypeError):
            return None

    def warm_up(self) -> None:
        """Read every sentinel a few times and list them; then the reference RSS."""
        for index in range(300):
            call(self.main.port, "GET", f"/sentinel/{index % 100}")
        call(self.main.port, "GET", "/sentinel/")
        time.sleep(1.0)
        self.reference = settled_rss(self.main)

    # -- the harness ------------------------------------------------------------------------------

    def wait_responsive(self, node: Node) -> str | None:
        """None once the node answers ``/_health`` again; else why it does not."""
        deadline = time.monotonic() + RECOVERY
        while time.monotonic() < deadline:
            if not node.alive():
                assert node.process is not None
                return f"node died (exit status {node.process.returncode})"
            remaining = max(0.2, deadline - time.monotonic())
            if call(node.port, "GET", "/_health", timeout=remaining)[0] == "200":
                return None
            time.sleep(0.1)
        return f"node stuck: no /_health within {RECOVERY:.0f} s after the attack"

    def measure(self, row: Row, node: Node, attack: Callable[[], None]) -> None:
        """Run ``attack`` against ``node`` while sampling its RSS and probing its ``/_health``.

        ``attack`` must read ``node.port`` when it runs: a bloated main node is restarted first.
        """
        if node is self.main:
            self.recycle_if_bloated(row)
        baseline = settled_rss(node)
        sampler = RSSSampler(node.pid)
        probe = Probe(node.port)
        started = time.monotonic()
        try:
            try:
                attack()
            except Exception as error:  # a failure of the bench itself must not end the run
                row.note(f"bench error: {type(error).__name__}: {error}")
                row.missed.append("bench error")
            row.seconds = time.monotonic() - started
            row.stuck = self.wait_responsive(node)
            time.sleep(max(0.0, started + MIN_PROBE - time.monotonic()))
            row.health_ms, row.health_statuses = probe.finish()
            if row.stuck is None:
                time.sleep(SETTLE)
                row.kept_mib = _over(node.rss_mib(), baseline)
            row.peak_mib = _over(sampler.finish(), baseline)
        finally:
            sampler.finish()
            probe.kill()
        if row.stuck:
            row.note(row.stuck)
            if node is self.main:
                self.restart_main()
                row.note("killed and restarted")


# -- a fake peer / upstream -----------------------------------------------------------------------


class FakePeer:
    """A loopback HTTP server that, once :attr:`hostile` is set, answers every request with
    ``answer_bytes`` of JSON whitespace, streamed 1 MiB at a time (never held).

    Before that it answers ``/_health`` like a node and anything else with a small 404, so that
    a cache node can start against it and settle before the attack.
    """

    HEALTH = (
        b'{"status":"ok","state":"ok","node_id":"fake0000fake0000","version":"0",'
        b'"backend":"memory","last_seq":0}'
    )

    def __init__(self, answer_bytes: int) -> None:
        self.answer_bytes = answer_bytes
        self.hostile = threading.Event()
        self.closing = threading.Event()
        self.requests: Counter[str] = Counter()
        self.sent = 0
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.bind((HOST, 0))
        self._listener.listen(16)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                connection, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._threads = [each for each in self._threads if each.is_alive()]
            if len(self._threads) >= 16:
                connection.close()
                continue
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        reader = Reader(connection)
        with connection:
            try:
                while not self.closing.is_set():
                    deadline = time.monotonic() + 60
                    request_line = reader.line(deadline)
                    headers = reader.headers(deadline)
                    reader.body(headers, deadline, 0, until_close=False)
                    parts = request_line.decode("latin-1").split()
                    path = parts[1].split("?")[0] if len(parts) > 1 else "?"
                    with self._lock:
                        self.requests[f"{parts[0] if parts else '?'} {path}"] += 1
                    if self.hostile.is_set():
                        self._flood(connection)
                    elif path == "/_health":
                        self._send(connection, self._answer(200, self.HEALTH))
                    else:
                        self._send(connection, self._answer(404, b'{"error":"not_found"}'))
            except (Closed, NoAnswer, NotHTTP, OSError, ValueError):
                return

    @staticmethod
    def _answer(status: int, body: bytes) -> bytes:
        return (
            b"HTTP/1.1 %d Fake\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (status, len(body), body)
        )

    def _send(self, connection: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        connection.settimeout(1.0)
        while view and not self.closing.is_set():
            try:
                sent = connection.send(view)
            except socket.timeout:
                continue
            view = view[sent:]
            with self._lock:
                self.sent += sent

    def _flood(self, connection: socket.socket) -> None:
        self._send(
            connection,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % self.answer_bytes,
        )
        chunk = b" " * MIB
        remaining = self.answer_bytes
        while remaining > 0 and not self.closing.is_set():
            piece = chunk if remaining >= MIB else chunk[:remaining]
            self._send(connection, piece)
            remaining -= len(piece)

    def close(self) -> None:
        self.closing.set()
        self._listener.close()
        self._acceptor.join(5)
        for thread in self._threads:
            thread.join(5)

    def summary(self) -> str:
        asked = ", ".join(f"{what} {TIMES}{count}" for what, count in self.requests.most_common(3))
        return f"it was asked {asked or 'nothing'}; sent {self.sent / MIB:,.0f} MiB"


# -- trickling connections ------------------------------------------------------------------------


@dataclass
class Trickle:
    """One connection sending a request one byte per second, and what became of it."""

    sock: socket.socket
    connected: bool = False
    sent: int = 0
    received: bytes = b""
    ended_at: float | None = None
    label: str = "none"


TRICKLED = b"GET /_health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def trickle(port: int, count: int, seconds: float) -> list[Trickle]:
    """Open ``count`` connections that send request headers at 1 byte/s for ``seconds``.

    A connection's label is the status the node answered, ``closed`` when it closed with none,
    ``none`` when still open at the end (``unconnected`` if never accepted by the kernel).
    """
    selector = selectors.DefaultSelector()
    started = time.monotonic()
    conns: list[Trickle] = []

    def end(conn: Trickle, label: str | None = None) -> None:
        conn.ended_at = time.monotonic() - started
        received = conn.received
        status = received[9:12].decode("ascii", "replace") if received[:5] == b"HTTP/" else ""
        conn.label = label or status or "closed"
        selector.unregister(conn.sock)
        conn.sock.close()

    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        conn = Trickle(sock)
        conns.append(conn)
        if sock.connect_ex((HOST, port)) not in (0, errno.EINPROGRESS):
            conn.ended_at, conn.label = 0.0, "refused"
            sock.close()
            continue
        selector.register(sock, selectors.EVENT_WRITE, conn)
    next_byte = started
    finish = started + seconds
    try:
        while time.monotonic() < finish:
            if time.monotonic() >= next_byte:
                next_byte += 1.0
                for conn in conns:
                    if conn.connected and conn.ended_at is None:
                        data = TRICKLED[conn.sent : conn.sent + 1] or b"a"
                        try:
                            conn.sent += conn.sock.send(data)
                        except BlockingIOError:
                            pass
                        except OSError:
                            end(conn, "closed")
            timeout = max(0.0, min(next_byte, finish) - time.monotonic())
            for key, _ in selector.select(timeout):
                conn = key.data
                if conn.ended_at is not None:
                    continue
                if not conn.connected:
                    if conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        end(conn, "refused")
                        continue
                    conn.connected = True
                    selector.modify(conn.sock, selectors.EVENT_READ, conn)
                    continue
                try:
                    data = conn.sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    conn.received = (conn.received + data)[:64]
                else:
                    end(conn)
    finally:
        for conn in conns:
            if conn.ended_at is None:
                received = conn.received
                if received[:5] == b"HTTP/":
                    conn.label = received[9:12].decode("ascii", "replace")
                elif not conn.connected:
                    conn.label = "unconnected"
                conn.sock.close()
        selector.close()
    return conns


def closing_times(conns: list[Trickle], seconds: float) -> str:
    closed = sorted(c.ended_at for c in conns if c.ended_at is not None and c.label != "refused")
    if not closed:
        return f"the node closed 0/{len(conns)} in {seconds:.0f} s"
    return (
        f"the node closed {len(closed)}/{len(conns)}, from {closed[0]:.1f} s "
        f"to {closed[-1]:.1f} s after the start"
    )


def slow_send(port: int, head: bytes, piece: Callable[[int], bytes], seconds: float) -> Exchange:
    """Send ``head``, then ``piece(n)`` every 0.1 s (about 1 KB/s) until the node answers or
    closes, or ``seconds`` pass; the status (or ``closed``, ``none``) and when."""
    started = time.monotonic()
    try:
        sock = socket.create_connection((HOST, port), timeout=5)
    except OSError:
        return Exchange("refused", None, 0.0)
    received = b""
    with sock:
        sock.sendall(head)
        sock.setblocking(False)
        index = 0
        while time.monotonic() - started < seconds:
            try:
                sock.send(piece(index))
            except BlockingIOError:
                pass
            except OSError:
                break
            index += 1
            time.sleep(0.1)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                break
            received += data
            if b"\r\n\r\n" in received:
                break
    elapsed = time.monotonic() - started
    if received[:5] == b"HTTP/":
        return Exchange(received[9:12].decode("ascii", "replace"), None, elapsed)
    return Exchange("none" if elapsed >= seconds else "closed", None, elapsed)


# -- the attacks ----------------------------------------------------------------------------------


def mib(size: int) -> str:
    return f"{size / MIB:g} MiB"


def attack_bulk(bench: Bench, row: Row) -> None:
    limit = bench.sizes.bulk_bytes
    entries: list[bytes] = []
    size = 1
    while True:
        entry = b'{"key":"/b/%d","value":"x"}' % len(entries)
        if size + len(entry) + 1 > limit:
            break
        entries.append(entry)
        size += len(entry) + 1
    body = b"[" + b",".join(entries) + b"]"
    entries_count = len(entries)
    del entries
    row.name = f"POST /_bulk, {mib(limit)} of tiny entries"
    row.expected = {"413"}  # past the entry limit: refused as it is read, nothing written
    row.rss_goal_mib = 3 * BULK_LIMIT_MIB
    data = request_bytes("POST", "/_bulk", body, {"Content-Type": "application/json"})

    def run() -> None:
        result = exchange(bench.main.port, data, seconds=ATTACK_WAIT)
        row.count(result.label)
        row.note(f"{entries_count:,} entries: {describe_timed(result)}")

    bench.measure(row, bench.main, run)


def attack_bulk_values(bench: Bench, row: Row) -> None:
    limit = bench.sizes.bulk_bytes
    count = 100_000
    value = b"v" * max(1, limit // count - 40)
    body = (
        b"["
        + b",".join(b'{"key":"/bv/%06d","value":"%s"}' % (index, value) for index in range(count))
        + b"]"
    )
    row.name = f"POST /_bulk, {mib(len(body))} in {count:,} entries of {len(value)} B"
    data = request_bytes("POST", "/_bulk", body, {"Content-Type": "application/json"})
    del body
    row.expected = {"200"}
    row.rss_goal_mib = 3 * BULK_LIMIT_MIB

    def run() -> None:
        result = exchange(bench.main.port, data, seconds=ATTACK_WAIT * 4)
        row.count(result.label)
        row.note(f"{describe_timed(result)}")

    bench.measure(row, bench.main, run)


def big_read(bench: Bench, row: Row, target: str) -> None:
    """One GET of ``target``, whose answer may hold all the big values; its size noted."""
    data = request_bytes("GET", target)

    def run() -> None:
        result = exchange(bench.main.port, data, seconds=ATTACK_WAIT, keep=0)
        row.count(result.label)
        if result.answer is not None:
            whole = "" if result.answer.complete else " (incomplete)"
            row.note(f"answer {result.answer.size / MIB:.1f} MiB{whole} in {result.seconds:.1f} s")
        else:
            row.note(describe(result))

    bench.measure(row, bench.main, run)


def attack_listing(bench: Bench, row: Row) -> None:
    bench.ensure_big_values()
    row.name = f"GET /big/?values=true over six {mib(bench.sizes.big_value)} values"
    big_read(bench, row, "/big/?values=true")


def attack_peer(bench: Bench, row: Row) -> None:
    sizes = bench.sizes
    row.name = f"a peer answering {mib(sizes.peer_answer)} (PUT /_peers, {sizes.peer_seconds:g} s)"
    peer = FakePeer(sizes.peer_answer)
    peer.hostile.set()
    removal = "/_peers?url=" + urllib.parse.quote(peer.url, safe="")

    def run() -> None:
        port = bench.main.port
        body = json.dumps({"url": peer.url}).encode()
        added, _ = call(port, "PUT", "/_peers", body, {"Content-Type": "application/json"})
        row.count(added)
        row.count(call(port, "PUT", "/hostile/peer-trigger", b"push me")[0])
        time.sleep(sizes.peer_seconds)
        removed, _ = call(port, "DELETE", removal)
        row.count(removed)
        if removed != "200":
            bench.leftover_peers.append(removal)
        row.note(f"PUT /_peers {added}, DELETE {removed}; {peer.summary()}")

    try:
        bench.measure(row, bench.main, run)
    finally:
        peer.close()


def attack_upstream(bench: Bench, row: Row) -> None:
    sizes = bench.sizes
    row.name = f"an upstream answering {mib(sizes.peer_answer)} (cache node, GET through it)"
    peer = FakePeer(sizes.peer_answer)
    try:
        node = bench.start_node("cache", ["--upstream", peer.url])
    except RuntimeError as error:
        peer.close()
        row.note(f"the cache node did not start: {str(error)[:200]}")
        return
    for _ in range(3):
        call(node.port, "GET", "/_health")
    time.sleep(1.5)  # let it poll the (still friendly) upstream once

    def run() -> None:
        peer.hostile.set()
        started = time.monotonic()
        status, body = call(node.port, "GET", "/through/cache", timeout=sizes.peer_seconds + 5)
        row.count(status)
        if status == "503" and b"upstream_unavailable" in body:
            row.expected_5xx.add("503")  # what the README promises while the upstream is unusable
            status = "503 upstream_unavailable (documented)"
        row.note(f"GET through it: {status} after {time.monotonic() - started:.1f} s")
        time.sleep(max(0.0, sizes.peer_seconds - (time.monotonic() - started)))
        row.note(peer.summary())

    try:
        bench.measure(row, node, run)
    finally:
        peer.close()
        node.stop()


def attack_unread(bench: Bench, row: Row) -> None:
    bench.ensure_big_values()
    seconds = bench.sizes.unread_seconds
    row.name = f"50 clients GET /big/0 ({mib(bench.sizes.big_value)}), never read, {seconds:g} s"

    def run() -> None:
        socks: list[socket.socket] = []
        try:
            for _ in range(50):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.settimeout(5)
                try:
                    sock.connect((HOST, bench.main.port))
                    sock.sendall(request_bytes("GET", "/big/0"))
                except OSError:
                    row.count("refused")
                    sock.close()
                    continue
                socks.append(sock)
            time.sleep(seconds)
            for sock in socks:
                sock.settimeout(0.5)
                try:
                    head = sock.recv(64)
                except OSError:
                    head = b""
                row.count(head[9:12].decode("ascii", "replace") if head[:5] == b"HTTP/" else "none")
            row.note("the status is read from the first bytes when each client closes")
        finally:
            for sock in socks:
                sock.close()

    bench.measure(row, bench.main, run)


#: 450 x "é" percent-encoded: a key of about 950 bytes (within the 1,024-byte key limit, so
#: it is validated and looked up) in a request target of about 3 KB.
_MISSING_TAIL = urllib.parse.quote("\u00e9" * 450).encode("ascii")


def _missing_request(index: int) -> bytes:
    return b"GET /missing/%s-%d-%s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % (
        os.urandom(16).hex().encode(),
        index,
        _MISSING_TAIL,
    )


def _get_missing(port: int, indices: list[int], deadline: float, counts: Counter[str]) -> int:
    """Pipeline the GETs 32 at a time over keep-alive connections; how many were answered."""
    pending = deque(indices)
    answered_total = 0
    sock: socket.socket | None = None
    reader: Reader | None = None
    while pending and time.monotonic() < deadline:
        if sock is None:
            try:
                sock = socket.create_connection((HOST, port), timeout=5)
            except OSError:
                counts["refused"] += 1
                time.sleep(0.1)
                continue
            reader = Reader(sock)
        assert reader is not None
        window = [pending.popleft() for _ in range(min(32, len(pending)))]
        try:
            sock.settimeout(5)
            sock.sendall(b"".join(_missing_request(index) for index in window))
        except OSError:
            pass
        answered = 0
        ended: str | None = None
        try:
            for _ in window:
                answer = reader.response(deadline, keep=0)
                counts[str(answer.status)] += 1
                answered += 1
                if answer.headers.get("connection", "").lower() == "close":
                    break
        except (Closed, NotHTTP):
            ended = "closed"
        except NoAnswer:
            ended = "none"
        answered_total += answered
        if answered < len(window):
            sock.close()
            sock = None
            if answered == 0 and ended:
                counts[ended] += len(window)
            else:
                pending.extendleft(reversed(window[answered:]))
    if sock is not None:
        sock.close()
    return answered_total


def attack_missing(bench: Bench, row: Row) -> None:
    total = bench.sizes.missing_gets
    row.name = f"{total:,} GETs of distinct 3 KB missing keys, 4 keep-alive connections"
    row.expected = {"404"}

    def run() -> None:
        deadline = time.monotonic() + ATTACK_WAIT
        started = time.monotonic()
        counts: list[Counter[str]] = [Counter() for _ in range(4)]
        answered = parallel(
            lambda worker: _get_missing(
                bench.main.port, list(range(worker, total, 4)), deadline, counts[worker]
            ),
            4,
        )
        for each in counts:
            row.statuses.update(each)
        row.note(f"{sum(answered):,} of {total:,} answered in {time.monotonic() - started:.1f} s")

    bench.measure(row, bench.main, run)


def attack_replicate(bench: Bench, row: Row) -> None:
    bench.ensure_big_values()
    row.name = (
        f"GET /_replicate?since=(before them)&limit=10000 with six {mib(bench.sizes.big_value)}"
        " values"
    )
    big_read(bench, row, f"/_replicate?since={bench.big_since}&limit=10000")


def attack_longpoll(bench: Bench, row: Row) -> None:
    bench.ensure_changes()
    changes = bench.last_seq() or 0
    row.name = f"20 long-polls, prefix matching nothing, over {changes:,} changes"
    data = request_bytes("GET", "/_changes?feed=longpoll&since=0&prefix=/nothing/&timeout=5")

    def run() -> None:
        results = parallel(lambda _: exchange(bench.main.port, data, seconds=ATTACK_WAIT), 20)
        for result in results:
            row.count(result.label)
        times = [result.seconds for result in results]
        row.note(f"answered after {min(times):.1f}-{max(times):.1f} s")

    bench.measure(row, bench.main, run)


def attack_slowloris(bench: Bench, row: Row) -> None:
    count, seconds = bench.sizes.slowloris, bench.sizes.slowloris_seconds
    row.name = f"{count} connections sending headers at 1 byte/s, {seconds:g} s"
    row.expected = {"408"}

    def run() -> None:
        conns = trickle(bench.main.port, count, seconds)
        for conn in conns:
            row.count(conn.label)
        row.note(closing_times(conns, seconds))

    bench.measure(row, bench.main, run)


def attack_slow_bulk(bench: Bench, row: Row) -> None:
    seconds = bench.sizes.slow_body_seconds
    row.name = f"POST /_bulk, Content-Length 60 MiB, body at 1 KB/s (up to {seconds:g} s)"
    row.expected = {"408"}
    head = (
        b"POST /_bulk HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n[" % (60 * MIB)
    )
    entry = b'{"key":"/slow/%08d","value":"' + b"x" * 64 + b'"},'

    def run() -> None:
        result = slow_send(bench.main.port, head, lambda index: entry % index, seconds)
        row.count(result.label)
        row.note(f"{result.label} after {result.seconds:.1f} s")

    bench.measure(row, bench.main, run)


def attack_slow_chunked(bench: Bench, row: Row) -> None:
    seconds = bench.sizes.slow_body_seconds
    row.name = f"chunked PUT /slow at 1 KB/s (up to {seconds:g} s)"
    row.expected = {"408"}
    head = (
        b"PUT /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )

    def run() -> None:
        result = slow_send(
            bench.main.port, head, lambda _: b"64\r\n" + b"s" * 100 + b"\r\n", seconds
        )
        row.count(result.label)
        row.note(f"{result.label} after {result.seconds:.1f} s")

    bench.measure(row, bench.main, run)


def attack_nofile(bench: Bench, row: Row) -> None:
    seconds = bench.sizes.nofile_seconds
    row.name = f"306 trickling connections, node with ulimit -n 256, 10 GETs ({seconds:g} s)"
    try:
        node = bench.start_node("nofile", [], nofile=256)
    except RuntimeError as error:
        row.note(f"the node did not start: {str(error)[:200]}")
        return
    value = b"still here"
    call(node.port, "PUT", "/nofile/key", value, {"Content-Type": "text/plain"})
    answers: list[str] = []

    def get_ten() -> None:
        time.sleep(2.0)  # the trickling connections have taken every descriptor by now
        for _ in range(10):
            started = time.monotonic()
            status, body = call(node.port, "GET", "/nofile/key", timeout=2.0)
            answers.append("ok" if status == "200" and body == value else status)
            time.sleep(max(0.0, (seconds - 3.0) / 10 - (time.monotonic() - started)))

    def run() -> None:
        getter = threading.Thread(target=get_ten, daemon=True)
        getter.start()
        conns = trickle(node.port, 306, seconds)
        getter.join(30)
        row.marks.append(f"GET ok {answers.count('ok')}/10")
        if answers.count("ok") < 10:
            row.missed.append("GETs")
        for label in answers:
            if label != "ok":
                row.count(f"GET {label}")
        for conn in conns:
            row.count(conn.label)
        row.note(closing_times(conns, seconds))

    try:
        bench.measure(row, node, run)
    finally:
        node.stop()


def run_validation(bench: Bench, row: Row, requests: list[tuple[str, bytes, bool]]) -> None:
    """Send each (name, raw bytes, head only) request; count its status, note its error code."""

    def run() -> None:
        for name, data, head_only in requests:
            result = exchange(bench.main.port, data, seconds=10.0, keep=MIB, head_only=head_only)
            row.count(kind_label(result))
            row.note(f"{name}: {describe(result)}")

    bench.measure(row, bench.main, run)


def attack_seq(bench: Bench, row: Row) -> None:
    row.name = "a seq of 2^63: since=, Last-Event-ID, /_replicate?since="
    row.expected = {"400 json"}
    run_validation(
        bench,
        row,
        [
            ("changes", request_bytes("GET", f"/_changes?since={SEQ_OVER}"), False),
            (
                "eventsource",
                request_bytes(
                    "GET", "/_changes?feed=eventsource", None, {"Last-Event-ID": SEQ_OVER}
                ),
                True,
            ),
            ("replicate", request_bytes("GET", f"/_replicate?since={SEQ_OVER}"), False),
        ],
    )


def attack_nesting(bench: Bench, row: Row) -> None:
    row.name = "100,000 nested [ to /_bulk, /_replicate, /_peers"
    row.expected = {"400 json"}
    deep = b"[" * 100_000 + b"]" * 100_000
    json_type = {"Content-Type": "application/json"}
    run_validation(
        bench,
        row,
        [
            ("bulk", request_bytes("POST", "/_bulk", deep, json_type), False),
            ("replicate", request_bytes("POST", "/_replicate", deep, json_type), False),
            ("peers", request_bytes("PUT", "/_peers", deep, json_type), False),
        ],
    )


def attack_long_lines(bench: Bench, row: Row) -> None:
    row.name = "a request line, and a header line, over 16 KiB"
    row.expected = {"414 json", "431 json"}
    run_validation(
        bench,
        row,
        [
            ("request line", request_bytes("GET", "/" + "a" * 20_000), False),
            ("header line", request_bytes("GET", "/", None, {"X-Long": "a" * 20_000}), False),
        ],
    )


def attack_chunk_size(bench: Bench, row: Row) -> None:
    row.name = "a chunk size of 2^160 (PUT /k)"
    row.expected = {"400 json", "413 json"}
    data = (
        b"PUT /k HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % (2**160)
    ) + b"x" * 65536
    run_validation(bench, row, [("chunked", data, False)])


def attack_absolute(bench: Bench, row: Row) -> None:
    row.name = "an absolute-form target: PUT http://127.0.0.1:PORT/abs/key, then GET"
    row.expected = {"200", "201"}
    value = b"absolute %s" % os.urandom(4).hex().encode()

    def run() -> None:
        port = bench.main.port
        target = f"http://{HOST}:{port}/abs/key"
        put = exchange(port, request_bytes("PUT", target, value, {"Content-Type": "text/plain"}))
        got = exchange(port, request_bytes("GET", "/abs/key"))
        row.count(kind_label(put))
        row.count(kind_label(got))
        same = got.answer is not None and got.answer.body == value
        row.note(f"PUT: {describe(put)}; GET: {describe(got)}, value {'ok' if same else 'missing'}")

    bench.measure(row, bench.main, run)


def attack_format_chars(bench: Bench, row: Row) -> None:
    row.name = "keys with U+202E, U+200B, U+FEFF (PUT)"
    row.expected = {"400 json"}
    requests = []
    for character in ("\u202e", "\u200b", "\ufeff"):
        target = urllib.parse.quote(f"/cf/a{character}b")
        name = f"U+{ord(character):04X}"
        requests.append(
            (name, request_bytes("PUT", target, b"v", {"Content-Type": "text/plain"}), False)
        )
    run_validation(bench, row, requests)


def attack_malformed(bench: Bench, row: Row) -> None:
    row.name = "a header line without a colon"
    row.expected = {"400 json"}
    data = b"GET /_health HTTP/1.1\r\nHost: 127.0.0.1\r\nNoColonHere\r\n\r\n"
    run_validation(bench, row, [("no colon", data, False)])


ATTACKS: list[tuple[str, str, Callable[[Bench, Row], None]]] = [
    ("1", "bulk", attack_bulk),
    ("1b", "bulk-values", attack_bulk_values),
    ("2", "listing", attack_listing),
    ("3", "peer", attack_peer),
    ("3b", "upstream", attack_upstream),
    ("4", "unread", attack_unread),
    ("5", "missing", attack_missing),
    ("6", "replicate", attack_replicate),
    ("7", "longpoll", attack_longpoll),
    ("8", "slowloris", attack_slowloris),
    ("9a", "slow-bulk", attack_slow_bulk),
    ("9b", "slow-chunked", attack_slow_chunked),
    ("10", "nofile", attack_nofile),
    ("11", "seq", attack_seq),
    ("12", "nesting", attack_nesting),
    ("13", "long-lines", attack_long_lines),
    ("14", "chunk-size", attack_chunk_size),
    ("15", "absolute", attack_absolute),
    ("16", "format-chars", attack_format_chars),
    ("17", "malformed", attack_malformed),
]
USES_BIG_VALUES = {"listing", "unread", "replicate"}


# -- the report -----------------------------------------------------------------------------------


def figure(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| # | attack | RSS peak MiB | RSS kept MiB | /_health max ms "
        "| statuses (attack; /_health) | notes | goals |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    for row in rows:
        kept = "stuck" if row.stuck and row.kept_mib is None else figure(row.kept_mib)
        health = figure(row.health_ms, 0)
        statuses = " ".join([*row.marks, format_counts(row.statuses)])
        statuses += f"; {format_counts(row.health_statuses)}"
        missed = row.failures()
        cells = [
            row.number,
            row.name,
            figure(row.peak_mib),
            kept,
            health,
            statuses,
            "; ".join(row.notes),
            "ok" if not missed else "missed: " + ", ".join(missed),
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def selected(only: str) -> list[tuple[str, str, Callable[[Bench, Row], None]]]:
    if not only:
        return ATTACKS
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    known = {number for number, _, _ in ATTACKS} | {slug for _, slug, _ in ATTACKS}
    unknown = wanted - known
    if unknown:
        raise SystemExit(f"unknown attacks: {', '.join(sorted(unknown))} (see --list)")
    return [each for each in ATTACKS if each[0] in wanted or each[1] in wanted]


@dataclass
class Outcome:
    """The end of a run: what the final check found."""

    serving: bool
    intact: int
    restarts: int


def final_check(bench: Bench) -> Outcome:
    """Remove any peer left behind, then: does the node serve, are the sentinels intact?"""
    for removal in bench.leftover_peers:
        call(bench.main.port, "DELETE", removal)
    if not bench.main.alive() or bench.wait_responsive(bench.main) is not None:
        bench.restart_main()
    value = b"final %s" % os.urandom(4).hex().encode()
    put, _ = call(bench.main.port, "PUT", "/hostile/final", value, {"Content-Type": "text/plain"})
    got, body = call(bench.main.port, "GET", "/hostile/final")
    serving = put in ("200", "201") and got == "200" and body == value
    return Outcome(serving, bench.check_sentinels(), bench.restarts)


def print_report(rows: list[Row], outcome: Outcome | None, heading: str) -> None:
    print()
    print(heading)
    print()
    print(table(rows))
    print()
    if outcome is None:
        print("Interrupted: no final check, goals not judged.")
        return
    print(
        f"Node serving at the end: {'yes' if outcome.serving else 'NO'} (restarted "
        f"{outcome.restarts} times during the run); sentinels intact: {outcome.intact}/100."
    )
    failing = [f"{row.number} ({', '.join(row.failures())})" for row in rows if row.failures()]
    met = not failing and outcome.serving and outcome.intact == 100
    verdict = "every row met them" if not failing else "rows missing them: " + "; ".join(failing)
    print(
        f"Goals (RSS peak <= max({RSS_GOAL_MIB:.0f} MiB, 3 x the limit), kept <= "
        f"{RSS_GOAL_MIB:.0f} MiB, /_health 200 within "
        f"{HEALTH_GOAL_MS:.0f} ms, no 5xx, node serving, sentinels intact): "
        f"{'MET' if met else 'NOT MET'}; {verdict}."
    )


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--only", default="", help="attacks by number or name, comma-separated")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, shorter attacks")
    parser.add_argument("--python", default=sys.executable, help="the interpreter of the nodes")
    parser.add_argument(
        "--tree", "--cwd", dest="tree", default=str(REPOSITORY), help="the source tree they run"
    )
    parser.add_argument("--json", dest="json_path", help="also write the figures to this file")
    parser.add_argument("--list", action="store_true", help="list the attacks and exit")
    options = parser.parse_args()
    if options.list:
        for number, slug, _ in ATTACKS:
            print(f"{number:>3} {slug}")
        return
    attacks = selected(options.only)
    signal.signal(signal.SIGTERM, _terminate)
    sizes = QUICK if options.quick else FULL
    runtime = Runtime(options.python, Path(options.tree).resolve())
    began = time.monotonic()
    workroot = Path(tempfile.mkdtemp(prefix="navistore-hostile-"))
    rows: list[Row] = []
    bench: Bench | None = None
    outcome: Outcome | None = None
    try:
        print(f"nodes: {runtime.python} importing {runtime.navistore_file()}", flush=True)
        bench = Bench(runtime, sizes, workroot)
        if any(slug in USES_BIG_VALUES for _, slug, _ in attacks):
            bench.ensure_big_values()
        bench.warm_up()
        print(f"main node: RSS {figure(bench.reference)} MiB after setup", flush=True)
        for number, slug, attack in attacks:
            row = Row(number, slug, name=slug)
            rows.append(row)
            print(f"[{number}] {slug} ...", flush=True)
            attack(bench, row)
            print(
                f"    {row.name}: peak {figure(row.peak_mib)} kept {figure(row.kept_mib)} MiB, "
                f"/_health {figure(row.health_ms, 0)} ms, {format_counts(row.statuses)}; "
                f"{'; '.join(row.notes)} ({row.seconds:.1f} s)",
                flush=True,
            )
        outcome = final_check(bench)
    finally:
        if bench is not None:
            bench.stop_all()
        shutil.rmtree(workroot, ignore_errors=True)
        elapsed = time.monotonic() - began
        heading = (
            f"{'Quick' if options.quick else 'Full'} run of {time.strftime('%Y-%m-%d')}: nodes "
            f"on {runtime.python} from {runtime.tree}; {os.cpu_count()} CPUs; {elapsed:.0f} s"
        )
        if outcome is None and rows and rows[-1].peak_mib is None:
            rows[-1].note("interrupted")
        if rows:
            print_report(rows, outcome, heading)
        if options.json_path and rows:
            report = {
                "heading": heading,
                "quick": options.quick,
                "seconds": round(elapsed, 1),
                "rows": [row.as_json() for row in rows],
                "outcome": None if outcome is None else outcome.__dict__,
            }
            Path(options.json_path).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)  # everything started is stopped by then; the table was printed

"""End to end: a cluster of real ``twistd navistore`` processes on 127.0.0.1.

Three scenarios of issue 4: the classic ``/_replication_slaves`` flow over three nodes; a full
mesh of three nodes, one SIGKILLed while 500 writes go to the other two, that converges once it
is back; and a node started with ``--clone-from`` a node holding 10,000 keys.

The process helpers (kernel-chosen ports read from the log, readiness by ``/_health``, stopping
by PID) are those of :mod:`test_e2e_server`. A node's state is its whole
``/_keys?values=true`` listing, paged with ``after=``: key -> (value, version). What the nodes
must converge to is computed from the acknowledgements of the writes (each asks for JSON, so it
learns the version it was given; the highest version of a key wins, a delete removes it).
"""

from __future__ import annotations

import base64
import functools
import http.client
import json
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import pytest
from test_e2e_server import DEADLINE, REQUEST_TIMEOUT, Server, running, twistd

pytestmark = pytest.mark.e2e

#: How long nodes may take to agree once all of them are up (push backoff is capped at 30 s).
CONVERGE = 45.0
JSON = {"Accept": "application/json"}

#: A node's state: key -> (value, version).
State = dict[str, tuple[bytes, str]]


# -- talking to nodes ---------------------------------------------------------------------------


class Client:
    """One keep-alive connection to a node; a failed exchange closes it (never retried, so a
    write is never sent twice)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._connection: http.client.HTTPConnection | None = None

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """Send one request; its status and body."""
        if self._connection is None:
            self._connection = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=REQUEST_TIMEOUT
            )
        try:
            self._connection.request(method, path, body=body, headers=headers or {})
            response = self._connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def json(self, path: str) -> Any:
        """GET ``path``, which must answer 200, and decode its JSON."""
        status, body = self.call("GET", path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)

    def close(self) -> None:
        """Close the connection (the next call opens another)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@contextmanager
def client_of(port: int) -> Iterator[Client]:
    """A keep-alive client of 127.0.0.1:``port``, closed at the end."""
    client = Client(port)
    try:
        yield client
    finally:
        client.close()


class Ledger:
    """The acknowledged writes, and the state last-writer-wins makes of them (thread-safe)."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[str, bytes | None]] = {}
        self._lock = threading.Lock()

    def put(self, client: Client, key: str, value: bytes) -> str:
        """PUT ``value`` at ``key``; record and return its version."""
        status, body = client.call("PUT", key, value, JSON)
        assert status in (200, 201), (key, status, body)
        version: str = json.loads(body)["version"]
        self._record(key, version, value)
        return version

    def delete(self, client: Client, key: str) -> None:
        """DELETE ``key``, recording the tombstone (a 404 wrote nothing)."""
        status, body = client.call("DELETE", key, None, JSON)
        if status == 404:
            return
        assert status == 200, (key, status, body)
        self._record(key, json.loads(body)["version"], None)

    def _record(self, key: str, version: str, value: bytes | None) -> None:
        # Versions are fixed-width stamps, so their text order is the order that decides.
        with self._lock:
            current = self._latest.get(key)
            if current is None or version > current[0]:
                self._latest[key] = (version, value)

    def expected(self) -> State:
        """The live keys, each with the value and version that won."""
        with self._lock:
            return {
                key: (value, version)
                for key, (version, value) in self._latest.items()
                if value is not None
            }


def entry_value(entry: dict[str, Any]) -> bytes:
    """The bytes of a ``values=true`` listing entry."""
    if entry["encoding"] == "base64":
        return base64.b64decode(entry["value"])
    return str(entry["value"]).encode("utf-8")


def state_of(client: Client) -> State:
    """A node's whole state, from ``/_keys?values=true&limit=1000`` paged with ``after=``."""
    state: State = {}
    after: str | None = None
    while True:
        path = "/_keys?values=true&limit=1000"
        if after is not None:
            path += "&after=" + quote(after, safe="")
        document = client.json(path)
        for entry in document["keys"]:
            state[entry["key"]] = (entry_value(entry), entry["version"])
        after = document["next"]
        if after is None:
            return state


def differences(state: State, expected: State, limit: int = 5) -> str:
    """Say briefly how ``state`` differs from ``expected``."""
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(key for key in set(state) & set(expected) if state[key] != expected[key])
    return (
        f"{len(state)} keys (expected {len(expected)}); missing {len(missing)} {missing[:limit]};"
        f" extra {len(extra)} {extra[:limit]}; different {len(wrong)} {wrong[:limit]}"
    )


def url_of(port: int) -> str:
    """The URL peers use to reach the node on ``port``."""
    return f"http://127.0.0.1:{port}"


def endpoint(port: int) -> str:
    """The endpoint string that listens on ``port`` of 127.0.0.1."""
    return f"tcp:{port}:interface=127.0.0.1"


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports the kernel just gave out (bound to port 0, then closed)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# -- processes and waiting ----------------------------------------------------------------------


class Cluster:
    """The nodes of one test, each in a directory of its own on ``sqlite:<name>.db``; every
    process is entered in ``stack``, which stops it by PID when the test ends."""

    def __init__(self, root: Path, stack: ExitStack) -> None:
        self.root = root
        self.stack = stack
        self.nodes: dict[str, Server] = {}

    def start(self, name: str, *options: str, port: int | None = None) -> Server:
        """Start node ``name`` (on ``port``, or one the kernel chooses); not yet waited for."""
        directory = self.root / name
        directory.mkdir(exist_ok=True)
        listen = endpoint(port) if port is not None else "tcp:0:interface=127.0.0.1"
        command = [*twistd(f"sqlite:{name}.db", port=listen), *options]
        server = self.stack.enter_context(running(command, directory))
        self.nodes[name] = server
        return server

    def report(self) -> str:
        """Each node's ``/_peers`` and the end of its log, for a failure message."""
        lines: list[str] = []
        for name, server in self.nodes.items():
            lines.append(f"--- {name} port {server.port} pid {server.process.pid}")
            if server.process.poll() is not None:
                lines.append(f"exited {server.process.returncode}")
            else:
                try:
                    with client_of(server.port) as client:
                        lines.append("/_peers " + json.dumps(client.json("/_peers")))
                except (OSError, http.client.HTTPException, AssertionError) as exc:
                    lines.append(f"cannot ask it: {exc!r}")
            lines.extend(server.output().splitlines()[-15:])
        return "\n".join(lines)


def wait_for(
    condition: Callable[[], bool],
    what: str,
    deadline: float,
    report: Callable[[], str],
    interval: float = 0.05,
) -> float:
    """Poll ``condition()`` until it is true (a node that cannot answer counts as false) and
    return how long that took; after ``deadline`` seconds fail with ``report()``."""
    started = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - started
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() - started > deadline:
            pytest.fail(f"timed out after {deadline}s waiting for {what}\n{report()}")
        time.sleep(interval)


# -- the classic /_replication_slaves flow ------------------------------------------------------


def test_replication_slaves_write_and_delete_reach_both_slaves(tmp_path: Path) -> None:
    """``PUT /_replication_slaves`` on A with ``http://B,http://C`` (the classic form): ``GET``
    echoes the list; a write on A appears on B and C with its value, and a delete on A makes
    the key answer 404 on both."""
    with ExitStack() as stack:
        cluster = Cluster(tmp_path, stack)
        a, b, c = (cluster.start(name) for name in "abc")
        for server in (a, b, c):
            server.wait_listening()
        slaves = f"{url_of(b.port)},{url_of(c.port)}"
        assert a.request("PUT", "/_replication_slaves", slaves.encode())[:2] == (200, b"OK")
        assert a.request("GET", "/_replication_slaves")[:2] == (200, slaves.encode())

        assert a.request("PUT", "/classic/key", b"replicated value")[0] == 201
        for slave in (b, c):
            wait_for(
                lambda s=slave: s.request("GET", "/classic/key")[:2] == (200, b"replicated value"),
                f"the write to reach port {slave.port}",
                DEADLINE,
                cluster.report,
            )
        assert a.request("DELETE", "/classic/key")[0] == 200
        for slave in (b, c):
            wait_for(
                lambda s=slave: s.request("GET", "/classic/key")[0] == 404,
                f"the delete to reach port {slave.port}",
                DEADLINE,
                cluster.report,
            )
        assert a.request("GET", "/classic/key")[0] == 404


# -- a full mesh through a SIGKILL --------------------------------------------------------------


def write_mixed(ledger: Ledger, port: int, seed: int, count: int, keys: int) -> None:
    """``count`` writes to one node: puts over ``keys`` shared keys (so overwrites, some binary)
    and about one in five a delete."""
    rng = random.Random(seed)
    with client_of(port) as client:
        for number in range(count):
            key = f"/mesh/k{rng.randrange(keys):03d}"
            if rng.random() < 0.2:
                ledger.delete(client, key)
            elif number % 7 == 0:
                ledger.put(client, key, bytes([0, 255, seed, number % 256]) + b" binary")
            else:
                ledger.put(client, key, f"{seed}:{number}".encode())


def run_threads(jobs: Sequence[Callable[[], None]]) -> None:
    """Run each job in a thread of its own; re-raise the first failure."""
    failures: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(job,), daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert not any(thread.is_alive() for thread in threads), "a writer thread hung"
    if failures:
        raise failures[0]


def test_full_mesh_converges_after_a_sigkill(tmp_path: Path) -> None:
    """Three sqlite nodes in full mesh (each started with ``--peer`` for the other two, on ports
    chosen up front). C is SIGKILLed; 500 writes (overwrites, binary values, deletes) go to A
    and B at once; C restarts on its file and port; then all three hold identical states, equal
    to what last-writer-wins makes of the acknowledged writes."""
    names = ["a", "b", "c"]
    ports = dict(zip(names, free_ports(3)))
    options = {
        name: [arg for other in names if other != name for arg in ("--peer", url_of(ports[other]))]
        for name in names
    }
    with ExitStack() as stack:
        cluster = Cluster(tmp_path, stack)
        for name in names:
            cluster.start(name, *options[name], port=ports[name])
        for name in names:
            cluster.nodes[name].wait_listening()

        ledger = Ledger()
        killed = cluster.nodes["c"].process
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(DEADLINE) == -signal.SIGKILL

        run_threads(
            [
                lambda: write_mixed(ledger, ports["a"], 1, 250, keys=150),
                lambda: write_mixed(ledger, ports["b"], 2, 250, keys=150),
            ]
        )
        expected = ledger.expected()
        assert len(expected) > 50

        c = cluster.start("c", *options["c"], port=ports["c"])
        c.wait_listening()
        assert c.port == ports["c"]

        def converged() -> bool:
            states = []
            for name in names:
                with client_of(ports[name]) as client:
                    states.append(state_of(client))
            return all(state == expected for state in states)

        def report() -> str:
            lines = []
            for name in names:
                with client_of(ports[name]) as client:
                    lines.append(f"{name}: {differences(state_of(client), expected)}")
            return "\n".join(lines) + "\n" + cluster.report()

        took = wait_for(converged, "all three nodes to converge", CONVERGE, report, 0.2)
        print(f"converged {took:.1f} s after C restarted")


# -- a clone of a node holding 10,000 keys ------------------------------------------------------


def load(port: int, keys: Sequence[str], threads: int = 4) -> None:
    """PUT each key (value: the key itself) over ``threads`` keep-alive connections at once."""

    def writer(share: Sequence[str]) -> None:
        with client_of(port) as client:
            for key in share:
                status, body = client.call("PUT", key, key.encode())
                assert status == 201, (key, status, body)

    run_threads([functools.partial(writer, keys[index::threads]) for index in range(threads)])


def test_clone_of_a_node_holding_10000_keys(tmp_path: Path) -> None:
    """A node started with ``--clone-from`` a source holding 10,000 keys comes to hold exactly
    the source's listing (keys, values, versions); then a new write on the source reaches it."""
    with ExitStack() as stack:
        cluster = Cluster(tmp_path, stack)
        source = cluster.start("source")
        source.wait_listening()
        load(source.port, [f"/clone/k{number:05d}" for number in range(10_000)])
        with client_of(source.port) as client:
            source_state = state_of(client)
        assert len(source_state) == 10_000

        clone = cluster.start("clone", "--clone-from", url_of(source.port))
        clone.wait_listening()
        with client_of(clone.port) as client:
            took = wait_for(
                lambda: state_of(client) == source_state,
                "the clone to hold the source's state",
                DEADLINE,
                cluster.report,
                0.2,
            )
        print(f"cloned 10,000 keys in {took:.1f} s after the clone served")

        assert source.request("PUT", "/clone/after", b"in step")[0] == 201
        wait_for(
            lambda: clone.request("GET", "/clone/after")[:2] == (200, b"in step"),
            "a new write on the source to reach the clone",
            DEADLINE,
            cluster.report,
        )

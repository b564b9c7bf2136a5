"""End to end: replication between real ``twistd navistore`` processes on 127.0.0.1.

Three scenarios of issue 4, each on sqlite files that outlive their processes: the classic
``/_replication_slaves`` flow; a full mesh of three nodes through SIGKILLs and restarts of a
receiver and of a sender; and a clone of a node holding 10,000 keys.

What the nodes must converge to is computed from the writes' acknowledgements: every write asks
for JSON, so its answer carries the version (stamp) it was given, and last-writer-wins means the
write with the highest stamp decides each key (a delete removes it). A node's state is its full
``/_keys?values=true`` listing, paged; two nodes agree when their listings are equal entry by
entry (key, value, content type and version, which is what the ``ETag`` quotes).

The process helpers (kernel-chosen ports read from the log, readiness by ``/_health``, stopping
by PID) are those of :mod:`test_e2e_server`. Every wait polls a condition against a deadline and,
when the deadline passes, fails with each node's ``/_peers``, its state and the end of its log.
"""

from __future__ import annotations

import base64
import http.client
import json
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import pytest
from support.processes import DEADLINE, REQUEST_TIMEOUT, Server, running, twistd

pytestmark = pytest.mark.e2e

#: How long nodes may take to agree once every one of them is up (backoff is capped at 30 s).
CONVERGE = 45.0
JSON = {"Accept": "application/json"}

#: A node's state: key -> (value, version, content type).
State = dict[str, tuple[bytes, str, str]]
#: What the nodes must hold: key -> (value, version).
Expected = dict[str, tuple[bytes, str]]


# -- talking to nodes ---------------------------------------------------------------------------


class Client:
    """One keep-alive HTTP connection to a node; a failed exchange closes it (no retry, so a
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
    ) -> tuple[int, bytes, http.client.HTTPResponse]:
        """Send one request; the status, the body and the response."""
        if self._connection is None:
            self._connection = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=REQUEST_TIMEOUT
            )
        try:
            self._connection.request(method, path, body=body, headers=headers or {})
            response = self._connection.getresponse()
            return response.status, response.read(), response
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def json(self, path: str) -> Any:
        """GET ``path`` and decode its JSON (it must answer 200)."""
        status, body, _response = self.call("GET", path)
        assert status == 200, (path, status, body[:500])
        return json.loads(body)

    def close(self) -> None:
        """Close the connection (the next call opens a new one)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class Ledger:
    """Every acknowledged write, and the state last-writer-wins must end in (thread-safe)."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[str, bytes | None]] = {}
        self._lock = threading.Lock()
        self.writes = 0

    def put(self, client: Client, key: str, value: bytes, content_type: str) -> str:
        """PUT ``value`` at ``key`` and record its version."""
        headers = {**JSON, "Content-Type": content_type}
        status, body, _response = client.call("PUT", key, value, headers)
        assert status in (200, 201), (key, status, body)
        version: str = json.loads(body)["version"]
        self._record(key, version, value)
        return version

    def delete(self, client: Client, key: str) -> str | None:
        """DELETE ``key`` and record the tombstone's version (None: the node had no such key,
        so nothing was written)."""
        status, body, _response = client.call("DELETE", key, None, JSON)
        if status == 404:
            return None
        assert status == 200, (key, status, body)
        version: str = json.loads(body)["version"]
        self._record(key, version, None)
        return version

    def _record(self, key: str, version: str, value: bytes | None) -> None:
        # Versions are fixed-width stamps: text order is stamp order, which decides the winner.
        with self._lock:
            self.writes += 1
            current = self._latest.get(key)
            if current is None or version > current[0]:
                self._latest[key] = (version, value)

    def expected(self) -> Expected:
        """The live keys with the value and version that won."""
        with self._lock:
            return {
                key: (value, version)
                for key, (version, value) in self._latest.items()
                if value is not None
            }


def entry_value(entry: dict[str, Any]) -> bytes:
    """The bytes of a listing entry's value."""
    if entry["encoding"] == "base64":
        return base64.b64decode(entry["value"])
    return str(entry["value"]).encode("utf-8")


def state_of(client: Client, page: int = 10_000) -> State:
    """A node's whole state from its ``/_keys?values=true`` listing, page by page."""
    state: State = {}
    after: str | None = None
    while True:
        path = f"/_keys?values=true&limit={page}"
        if after is not None:
            path += "&after=" + quote(after, safe="")
        document = client.json(path)
        for entry in document["keys"]:
            state[entry["key"]] = (entry_value(entry), entry["version"], entry["content_type"])
        after = document["next"]
        if after is None:
            return state


def without_types(state: State) -> Expected:
    """A state as the ledger knows it: value and version."""
    return {key: (value, version) for key, (value, version, _type) in state.items()}


def differences(state: Expected, expected: Expected, limit: int = 5) -> str:
    """Say briefly how ``state`` differs from ``expected``."""
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(key for key in set(state) & set(expected) if state[key] != expected[key])
    parts = [f"{len(state)} keys, expected {len(expected)}"]
    if missing:
        parts.append(f"missing {len(missing)}: {missing[:limit]}")
    if extra:
        parts.append(f"extra {len(extra)}: {extra[:limit]}")
    if wrong:
        shown = [(key, state[key], expected[key]) for key in wrong[:limit]]
        parts.append(f"different {len(wrong)}: {shown}")
    return "; ".join(parts)


def last_seq(client: Client) -> int:
    """The node's newest seq (as ``/_health`` reports it)."""
    seq: int = client.json("/_health")["last_seq"]
    return seq


def peer_url(server: Server) -> str:
    """The URL other nodes use to reach ``server``."""
    return f"http://127.0.0.1:{server.port}"


def fixed_port(port: int) -> str:
    """The endpoint that listens again on ``port`` of 127.0.0.1."""
    return f"tcp:{port}:interface=127.0.0.1"


#: Where the nodes' ports are chosen: below Linux's ephemeral range (32768-60999), which the
#: kernel hands to every ``tcp:0`` server and outgoing connection of the machine. A node
#: restarted on its port must find it free; one picked by the kernel could be taken meanwhile
#: by another test's server or client ("Address already in use").
_QUIET_PORTS = range(20_000, 32_000)


def quiet_port() -> int:
    """A free port of 127.0.0.1 outside the ephemeral range, for a node to keep across
    restarts."""
    for _ in range(100):
        port = random.choice(_QUIET_PORTS)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port between 20000 and 32000")


def node_id(server: Server) -> str:
    """The node id ``server`` reports in ``/_health``."""
    status, body, _response = server.request("GET", "/_health")
    assert status == 200, body
    identifier: str = json.loads(body)["node_id"]
    return identifier


# -- processes and waiting ----------------------------------------------------------------------


class Nodes:
    """The node processes of one test, by name, each in a directory of its own.

    Every process is started inside ``stack``, which stops it by PID (SIGTERM, then SIGKILL)
    when the test ends, whatever happened to it before.
    """

    def __init__(self, root: Path, stack: ExitStack) -> None:
        self.root = root
        self.stack = stack
        self.servers: dict[str, Server] = {}

    def start(self, name: str, *options: str, port: str | None = None) -> Server:
        """Start node ``name`` on ``sqlite:<name>.db`` (not yet waited for), on a port of its
        own outside the ephemeral range unless ``port`` says otherwise."""
        if port is None:
            port = fixed_port(quiet_port())
        directory = self.root / name
        directory.mkdir(exist_ok=True)
        command = [*twistd(f"sqlite:{name}.db", port=port), *options]
        server = self.stack.enter_context(running(command, directory))
        self.servers[name] = server
        return server

    def start_all(self, names: Sequence[str], options: dict[str, list[str]] | None = None) -> None:
        """Start several nodes at once (they boot in parallel), then wait for each."""
        options = options or {}
        for name in names:
            self.start(name, *options.get(name, []))
        for name in names:
            self.servers[name].wait_listening()

    def restart(self, name: str, *options: str) -> Server:
        """Start ``name`` again on its file and its port, and wait until it serves."""
        port = self.servers[name].port
        server = self.start(name, *options, port=fixed_port(port))
        server.wait_listening()
        assert server.port == port
        return server

    def kill(self, name: str) -> None:
        """SIGKILL node ``name`` and wait for it to be gone."""
        process = self.servers[name].process
        process.send_signal(signal.SIGKILL)
        assert process.wait(DEADLINE) == -signal.SIGKILL

    def terminate(self, name: str) -> None:
        """SIGTERM node ``name`` (a clean stop) and wait for it to be gone."""
        process = self.servers[name].process
        process.send_signal(signal.SIGTERM)
        process.wait(DEADLINE)

    def report(self, names: Sequence[str] | None = None, expected: Expected | None = None) -> str:
        """What each node says of its peers and its state, and the end of its log."""
        lines: list[str] = []
        for name in names or list(self.servers):
            server = self.servers[name]
            lines.append(f"--- node {name} (port {server.port}, pid {server.process.pid})")
            if server.process.poll() is not None:
                lines.append(f"exited {server.process.returncode}")
            else:
                client = Client(server.port)
                try:
                    peers = client.json("/_peers")
                    lines.extend(f"/_peers: {json.dumps(peer)}" for peer in peers)
                    lines.append(f"last_seq: {last_seq(client)}")
                    if expected is not None:
                        lines.append(differences(without_types(state_of(client)), expected))
                except (OSError, http.client.HTTPException, AssertionError) as exc:
                    lines.append(f"cannot ask it: {exc!r}")
                finally:
                    client.close()
            lines.append("log tail:\n" + "\n".join(server.output().splitlines()[-25:]))
        return "\n".join(lines)


def wait_for(
    condition: Callable[[], bool],
    what: str,
    deadline: float,
    report: Callable[[], str],
    interval: float = 0.1,
) -> float:
    """Poll ``condition()`` every ``interval`` seconds until it is true; return how long that
    took. A node that cannot answer yet counts as false. After ``deadline`` seconds, fail with
    ``report()``."""
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


@contextmanager
def clients(*servers: Server) -> Iterator[list[Client]]:
    """A keep-alive client for each server, closed at the end."""
    made = [Client(server.port) for server in servers]
    try:
        yield made
    finally:
        for client in made:
            client.close()


def answers(server: Server, path: str, status: int) -> Callable[[], bool]:
    """A condition: ``server`` answers a GET of ``path`` with ``status``."""
    return lambda: server.request("GET", path)[0] == status


def pushers_caught_up(client: Client) -> bool:
    """Whether every push peer of a node has acknowledged all its changes and rests idle."""
    newest = last_seq(client)
    peers = [peer for peer in client.json("/_peers") if peer.get("role") == "push"]
    return all(
        peer["state"] == "idle" and peer["lag_changes"] == 0 and peer["cursor"] >= newest
        for peer in peers
    )


def check_etags(client: Client, state: State) -> None:
    """Each key's ``ETag`` (from a HEAD) quotes the version its listing entry shows."""
    for key, (_value, version, _type) in state.items():
        status, _body, response = client.call("HEAD", key)
        assert status == 200, key
        assert response.getheader("ETag") == f'"{version}"', key


# -- the classic /_replication_slaves flow ------------------------------------------------------


def test_replication_slaves_flow(tmp_path: Path) -> None:
    """``PUT /_replication_slaves`` on A with ``http://B,http://C`` makes A push to both: ``GET``
    echoes the list, ``/_peers`` names B's and C's node ids, a write on A reaches B and C with
    its value and ETag and a delete on A makes the key 404 there. ``DELETE
    /_replication_slaves`` empties the set: ``/_peers`` is empty and a later write on A stays on
    A (B and C neither get the key nor any change while we watch)."""
    with ExitStack() as stack:
        nodes = Nodes(tmp_path, stack)
        nodes.start_all(["a", "b", "c"])
        a, b, c = (nodes.servers[name] for name in "abc")
        report = nodes.report
        slaves = f"{peer_url(b)},{peer_url(c)}"
        assert a.request("PUT", "/_replication_slaves", slaves.encode())[:2] == (200, b"OK")
        assert a.request("GET", "/_replication_slaves")[:2] == (200, slaves.encode())

        status, _body, response = a.request("PUT", "/classic/one", b"replicated")
        assert status == 201
        etag = response.getheader("ETag")
        started = time.monotonic()
        for receiver in (b, c):
            wait_for(
                answers(receiver, "/classic/one", 200),
                f"the write to reach {receiver.port}",
                DEADLINE,
                report,
            )
            status, body, response = receiver.request("GET", "/classic/one")
            assert (status, body, response.getheader("ETag")) == (200, b"replicated", etag)
        took = time.monotonic() - started

        assert a.request("DELETE", "/classic/one")[0] == 200
        for receiver in (b, c):
            wait_for(
                answers(receiver, "/classic/one", 404),
                f"the delete to reach {receiver.port}",
                DEADLINE,
                report,
            )

        with clients(a) as (client_a,):
            wait_for(lambda: pushers_caught_up(client_a), "A's pushers to rest", DEADLINE, report)
            peers = client_a.json("/_peers")
        assert [peer["url"] for peer in peers] == [peer_url(b), peer_url(c)]
        assert [peer["node_id"] for peer in peers] == [node_id(b), node_id(c)]
        assert all(peer["last_error"] is None for peer in peers), peers

        assert a.request("DELETE", "/_replication_slaves")[:2] == (200, b"OK")
        assert a.request("GET", "/_replication_slaves")[:2] == (200, b"")
        assert json.loads(a.request("GET", "/_peers")[1]) == []
        with clients(b, c) as receivers:
            seqs = [last_seq(client) for client in receivers]
            assert a.request("PUT", "/classic/later", b"not sent")[0] == 201
            # Nothing may arrive: watch for many times what the first write took to arrive.
            watch_until = time.monotonic() + max(1.0, 20 * took)
            while time.monotonic() < watch_until:
                assert [last_seq(client) for client in receivers] == seqs
                for client in receivers:
                    assert client.call("GET", "/classic/later")[0] == 404
                time.sleep(0.05)
        assert a.request("GET", "/classic/later")[:2] == (200, b"not sent")


# -- a full mesh through SIGKILLs ---------------------------------------------------------------


def write_mixed(ledger: Ledger, client: Client, seed: int, count: int, keys: int) -> None:
    """``count`` acknowledged writes on one node: puts (some binary) and deletes over ``keys``
    shared keys, so keys are overwritten, deleted, written again, and written on several nodes
    at once. A delete of a key the node does not hold (404) writes nothing and does not count."""
    rng = random.Random(seed)
    number = 0
    while number < count:
        key = f"/mesh/k{rng.randrange(keys):03d}"
        if rng.random() < 0.25:
            if ledger.delete(client, key) is None:
                continue
        elif number % 9 == 0:
            value = bytes([0, 255, seed % 256, number % 256]) + b"\xfe binary"
            ledger.put(client, key, value, "application/octet-stream")
        else:
            ledger.put(client, key, f"{seed}:{number}".encode(), "text/plain")
        number += 1


def write_concurrently(ledger: Ledger, plan: Sequence[tuple[Server, int, int]], keys: int) -> None:
    """Run ``write_mixed`` for each (node, seed, count) of ``plan`` in a thread of its own."""
    failures: list[BaseException] = []

    def writer(server: Server, seed: int, count: int) -> None:
        with clients(server) as (client,):
            try:
                write_mixed(ledger, client, seed, count, keys)
            except BaseException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=writer, args=step, daemon=True) for step in plan]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert not any(thread.is_alive() for thread in threads), "a writer hung"
    if failures:
        raise failures[0]


def wait_converged(
    nodes: Nodes, names: Sequence[str], ledger: Ledger, what: str, deadline: float = CONVERGE
) -> State:
    """Wait until the named nodes hold identical states equal to the ledger's; return it."""
    expected = ledger.expected()
    agreed: list[State] = []

    def converged() -> bool:
        with clients(*(nodes.servers[name] for name in names)) as each:
            states = [state_of(client) for client in each]
        if all(state == states[0] for state in states) and without_types(states[0]) == expected:
            agreed.append(states[0])
            return True
        return False

    wait_for(converged, what, deadline, lambda: nodes.report(names, expected), interval=0.2)
    return agreed[0]


def test_full_mesh_converges_after_sigkills(tmp_path: Path) -> None:
    """Three sqlite nodes in full mesh (each started with ``--peer`` for the other two).

    Receiver down: C is SIGKILLed, 500 writes (puts, binary puts, overwrites, deletes over 120
    shared keys, on A and B at the same time) go to A and B; C restarts on its file and port, and
    all three end with identical listings (values, ETags) equal to what last-writer-wins makes
    of the acknowledged writes, every pusher resting with no lag.

    Sender down: C is SIGKILLed again and B stopped, so 100 more writes exist on A alone; A is
    SIGKILLed and restarted, then C: C gets all of them from A's persisted cursor. Then B comes
    back and all three agree again: nothing acknowledged was lost."""
    names = ["a", "b", "c"]
    with ExitStack() as stack:
        nodes = Nodes(tmp_path, stack)
        # Learn a free port for each node, then run the mesh on those ports.
        nodes.start_all(names)
        ports = {name: nodes.servers[name].port for name in names}
        for name in names:
            nodes.terminate(name)
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        options = {
            name: [arg for other in names if other != name for arg in ("--peer", urls[other])]
            for name in names
        }
        for name in names:
            nodes.start(name, *options[name], port=fixed_port(ports[name]))
        for name in names:
            nodes.servers[name].wait_listening()

        ledger = Ledger()
        for name in names:
            with clients(nodes.servers[name]) as (client,):
                ledger.put(client, f"/warm/{name}", b"mesh", "text/plain")
        wait_converged(nodes, names, ledger, "the mesh to form")

        # -- a receiver down: C misses 500 writes made on A and B at once.
        nodes.kill("c")
        plan = [(nodes.servers["a"], 1, 250), (nodes.servers["b"], 2, 250)]
        write_concurrently(ledger, plan, keys=120)
        assert ledger.writes == 3 + 500
        nodes.restart("c", *options["c"])
        wait_converged(nodes, names, ledger, "C to catch up after its SIGKILL")
        report = nodes.report
        with clients(*(nodes.servers[name] for name in names)) as each:
            for client in each:
                wait_for(partial(pushers_caught_up, client), "pushers to rest", CONVERGE, report)

        # -- a sender down: 100 writes exist on A alone, A is SIGKILLed, restarts, then C.
        nodes.kill("c")
        nodes.terminate("b")
        write_concurrently(ledger, [(nodes.servers["a"], 3, 100)], keys=120)
        assert ledger.writes == 3 + 500 + 100
        nodes.kill("a")
        nodes.restart("a", *options["a"])
        wait_converged(nodes, ["a"], ledger, "A to hold every acknowledged write", DEADLINE)
        nodes.restart("c", *options["c"])
        wait_converged(nodes, ["a", "c"], ledger, "C to get A's writes after A restarted")
        nodes.restart("b", *options["b"])
        final = wait_converged(nodes, names, ledger, "all three to agree again")
        with clients(*(nodes.servers[name] for name in names)) as each:
            for client in each:
                check_etags(client, final)


# -- cloning a node of 10,000 keys --------------------------------------------------------------

#: The node id of the writer the source's bulk records are said to come from.
BULK_ORIGIN = "0123456789abcdef"


def bulk_batch(first: int, count: int) -> bytes:
    """A ``POST /_replicate`` batch (the documented wire format) of keys ``first..`` written
    now by :data:`BULK_ORIGIN`, which also sends it."""
    wall_ms = int(time.time() * 1000)
    records = [
        {
            "key": f"/clone/k{number:05d}",
            "stamp": f"{wall_ms:012x}-{number:06x}-{BULK_ORIGIN}",
            "deleted": False,
            "content_type": "text/plain",
            "value": base64.b64encode(b"value %d" % number).decode("ascii"),
            "chain": [BULK_ORIGIN],
            "seq": number + 1,
        }
        for number in range(first, first + count)
    ]
    return json.dumps({"source": BULK_ORIGIN, "records": records}).encode("utf-8")


def test_clone_of_a_node_holding_10000_keys(tmp_path: Path) -> None:
    """A node started with ``--clone-from`` a source holding 10,000 keys ends with exactly the
    source's listing (keys, values, ETags), tombstones included (deleted keys stay absent), and
    then keeps in step: a later write and delete on the source reach it.

    The source is loaded through its ``POST /_replicate`` (batches of 1,000 records written by
    another node), then written to directly: overwrites, deletes and new keys of its own."""
    with ExitStack() as stack:
        nodes = Nodes(tmp_path, stack)
        nodes.start_all(["source"])
        source = nodes.servers["source"]
        ledger = Ledger()
        with clients(source) as (client,):
            for first in range(0, 10_000, 1_000):
                status, body, _response = client.call(
                    "POST", "/_replicate", bulk_batch(first, 1000)
                )
                assert status == 200, body
                assert json.loads(body)["applied"] == 1000
            for number in range(0, 10_000, 200):  # 50 overwrites, 50 deletes, 50 new keys
                ledger.put(client, f"/clone/k{number:05d}", b"overwritten", "text/plain")
                assert ledger.delete(client, f"/clone/k{number + 1:05d}") is not None
                ledger.put(client, f"/clone/new{number:05d}", b"new", "application/x-new")
            source_state = state_of(client)
        assert len(source_state) == 10_000

        clone = nodes.start("clone", "--clone-from", peer_url(source))
        clone.wait_listening()
        report = nodes.report
        with clients(clone) as (client,):

            def cloned() -> bool:
                statuses = client.json("/_peers")
                if not any(peer.get("state") == "caught_up" for peer in statuses):
                    return False
                return state_of(client) == source_state

            took = wait_for(cloned, "the clone to hold the source's state", DEADLINE, report, 0.5)
            sample = dict(random.Random(4).sample(sorted(source_state.items()), 200))
            check_etags(client, sample)
            print(f"cloned 10,000 keys in {took:.1f} s after the clone served")

        with clients(source, clone) as (to_source, to_clone):
            version = ledger.put(to_source, "/clone/after", b"in step", "text/plain")
            assert ledger.delete(to_source, "/clone/k00003") is not None

            def in_step() -> bool:
                status, body, response = to_clone.call("GET", "/clone/after")
                return (
                    (status, body) == (200, b"in step")
                    and response.getheader("ETag") == f'"{version}"'
                    and to_clone.call("GET", "/clone/k00003")[0] == 404
                )

            wait_for(in_step, "the clone to follow the source", DEADLINE, report)
            assert state_of(to_clone) == state_of(to_source)


# -- a peer that comes back ---------------------------------------------------------------------


def retry_in(client: Client) -> float | None:
    """Seconds until A's pusher retries its (only) peer, or None when it is not backing off."""
    [peer] = client.json("/_peers")
    if peer["state"] != "backoff" or not peer["retry_at"]:
        return None
    due = datetime.fromisoformat(peer["retry_at"].replace("Z", "+00:00"))
    return (due - datetime.now(timezone.utc)).total_seconds()


def test_a_peer_that_was_down_gets_the_writes_it_missed_at_once(tmp_path: Path) -> None:
    """A pushes to B; B is stopped, 500 keys are written to A, and A backs off until its next
    retry is over 4 s away. B is started again on its port: within 3 s of B serving, and before
    A's retry was due, B holds all 500 keys (A probed B and resumed when it answered)."""
    with ExitStack() as stack:
        nodes = Nodes(tmp_path, stack)
        nodes.start_all(["b"])
        b = nodes.servers["b"]
        nodes.start_all(["a"], {"a": ["--peer", peer_url(b)]})
        a = nodes.servers["a"]
        report = nodes.report
        with clients(a) as (to_a,):
            ledger = Ledger()
            ledger.put(to_a, "/back/first", b"before", "text/plain")
            wait_for(lambda: pushers_caught_up(to_a), "A to push to B", DEADLINE, report)
            nodes.terminate("b")
            for number in range(500):
                ledger.put(to_a, f"/back/k{number:03d}", b"missed %d" % number, "text/plain")

            def long_pause() -> bool:
                remaining = retry_in(to_a)
                return remaining is not None and remaining > 4.0

            wait_for(long_pause, "A to back off over 4 s", 90.0, report, 0.05)
            remaining = retry_in(to_a)
            assert remaining is not None
            b = nodes.restart("b")
            served = time.monotonic()
            expected = ledger.expected()
            with clients(b) as (to_b,):

                def caught_up() -> bool:
                    return without_types(state_of(to_b)) == expected

                took = wait_for(caught_up, "B to get the missed writes", 30.0, report, 0.05)
            print(f"B had the 501 keys {took:.2f} s after it served; A's retry: {remaining:.1f} s")
            assert took < 3.0
            assert time.monotonic() - served < remaining
            wait_for(lambda: pushers_caught_up(to_a), "A to see B caught up", DEADLINE, report)
            [peer] = to_a.json("/_peers")
            assert peer["failures"] == 0 and peer["cursor"] == last_seq(to_a)

"""End to end: the trust boundary of real ``twistd navistore`` processes on 127.0.0.1.

A mesh of three nodes over TLS that prove who they are with peer tokens converges; the attacks
of a host on the same LAN fail (each with no token, a wrong one, one lacking the permission, and
a peer token carrying what the API would refuse), leaving the state as it was; TLS answers every
ALPN client; the tokens file reloads on SIGHUP and a bad one stops the start naming its line;
protected mode refuses a caller from another address, which a network namespace the test makes
provides (skipped, saying why, where namespaces cannot be made).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme
from support.processes import (
    DEADLINE,
    LOOPBACK,
    Server,
    running,
    source_env,
    twistd,
    wait_until,
)

from navistore.clock import Stamp
from navistore.protocol.batches import encode_batch
from navistore.record import Record

pytestmark = pytest.mark.e2e

SECRETS = {
    "admin": "admin-secret-for-tests-01",
    "reader": "reader-secret-for-tests-2",
    "writer": "writer-secret-for-tests-3",
    "mesh": "peer-secret-for-the-mesh-4",
}
TOKENS = f"""
[[token]]
name = "admin"
secret = "{SECRETS["admin"]}"
allow = ["read", "write", "admin"]

[[token]]
name = "reader"
secret = "{SECRETS["reader"]}"
allow = ["read"]

[[token]]
name = "writer"
secret = "{SECRETS["writer"]}"
allow = ["read", "write"]
prefixes = ["/app/"]

[[token]]
name = "mesh"
secret = "{SECRETS["mesh"]}"
allow = ["peer"]
"""
FOREIGN = "00000000000000ee"


def node_command(backend: str, *options: str, port: str = LOOPBACK) -> list[str]:
    """``twistd -n navistore`` on ``backend`` with navistore ``options``."""
    return [*twistd(backend, port=port), *options]


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRETS[name]}"}


def tokens_file(directory: Path, text: str = TOKENS) -> Path:
    path = directory / "tokens.toml"
    path.write_text(text)
    return path


def state(server: Server) -> Any:
    """Every key with its value and version, and the node's last seq, read as admin."""
    status, body, _ = server.request(
        "GET", "/_keys?values=true&limit=10000", headers=bearer("admin")
    )
    assert status == 200, body
    _, health, _ = server.request("GET", "/_health")
    return json.loads(body)["keys"], json.loads(health)["last_seq"]


def forged(records: list[Record], source: str = FOREIGN) -> bytes:
    return encode_batch(source, records)


def remote(key: str, value: bytes = b"evil", ahead_s: float = 0.0) -> Record:
    wall = int((time.time() + ahead_s) * 1000)
    return Record(key, value, "text/plain", Stamp(wall, 0, FOREIGN))


@contextmanager
def node_with_tokens(tmp_path: Path, *extra: str) -> Iterator[Server]:
    """A node over sqlite with the tokens above, on a free loopback port."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    tokens = tokens_file(tmp_path)
    with running(
        node_command("sqlite:node.db", "--tokens", str(tokens), *extra), tmp_path
    ) as server:
        server.wait_listening()
        yield server


# -- the attacks of a host on the LAN ---------------------------------------------------------


def test_the_attacks_of_a_lan_host_fail_and_change_nothing(tmp_path: Path) -> None:
    """Rewriting the peer list, forging replicated records (reserved keys, huge keys, a stamp
    50 s ahead, any key without the right token), wiping the node, or driving it from a web page:
    each is refused (401, 403 or 400), and afterwards the keys, the last seq and the peer list are
    exactly as before."""
    with node_with_tokens(tmp_path) as node:
        for number in range(50):
            assert node.request("PUT", f"/app/k{number}", b"v", bearer("admin"))[0] == 201
        before = state(node)
        attacks: list[tuple[str, str, bytes | None, dict[str, str], int]] = [
            ("PUT", "/_replication_slaves", b"http://10.9.9.9:9", {}, 401),
            ("PUT", "/_replication_slaves", b"http://10.9.9.9:9", bearer("reader"), 403),
            ("PUT", "/_peers", b"http://10.9.9.9:9", {}, 401),
            (
                "PUT",
                "/_peers",
                b"http://10.9.9.9:9",
                {"Authorization": "Bearer guessed-secret-1"},
                401,
            ),
            ("PUT", "/_peers", b"http://10.9.9.9:9", bearer("writer"), 403),
            ("DELETE", "/_replication_slaves", None, bearer("reader"), 403),
            ("POST", "/_replicate", forged([remote("/app/k1")]), {}, 401),
            ("POST", "/_replicate", forged([remote("/app/k1")]), bearer("writer"), 403),
            ("POST", "/_replicate", forged([remote("/_changes")]), bearer("mesh"), 400),
            (
                "POST",
                "/_replicate",
                forged([remote("/app/k2"), remote("/listkeys")]),
                bearer("mesh"),
                400,
            ),
            ("POST", "/_replicate", forged([remote("/" + "k" * 200_000)]), bearer("mesh"), 400),
            ("POST", "/_replicate", forged([remote("/" + "k" * 10_000_000)]), bearer("mesh"), 400),
            ("POST", "/_replicate", forged([remote("/app/k3", ahead_s=50)]), bearer("mesh"), 400),
            ("GET", "/reset", None, {}, 401),
            ("GET", "/reset", None, bearer("writer"), 403),
            ("GET", "/reset", None, {**bearer("admin"), "Origin": "http://evil.example"}, 403),
            ("DELETE", "/?recursive=true", None, bearer("writer"), 403),
            ("DELETE", "/app/?recursive=true", None, {}, 401),
            (
                "POST",
                "/_bulk",
                b'[{"key": "/app/k4", "value": "x"}]',
                {"Origin": "http://evil.example", "Content-Type": "text/plain"},
                403,
            ),
            (
                "POST",
                "/_bulk",
                b'[{"key": "/app/k4", "value": "x"}]',
                {**bearer("writer"), "Origin": "http://evil.example", "Content-Type": "text/plain"},
                403,
            ),
            ("PUT", "/other/k", b"x", bearer("writer"), 403),
        ]
        seen = []
        for method, path, body, headers, expected in attacks:
            status, answer, _ = node.request(method, path, body, headers)
            seen.append((method, path[:40], status))
            assert status == expected, (method, path[:60], headers, answer[:300])
            assert json.loads(answer)["error"]
        assert state(node) == before
        status, peers, _ = node.request("GET", "/_peers", headers=bearer("admin"))
        assert (status, json.loads(peers)) == (200, [])
        # The node still serves its real clients.
        assert node.request("GET", "/app/k7", headers=bearer("reader"))[:2] == (200, b"v")


def test_a_node_without_tokens_refuses_a_rebinding_host_and_a_cross_origin_wipe(
    tmp_path: Path,
) -> None:
    """Protected mode: a request whose Host is not a loopback name (DNS rebinding through a
    browser) is 403 ``protected_mode``; on an ``--open`` node a web page of another origin cannot
    wipe it (``<img src=/reset>``) nor bulk-load it, while the same requests without ``Origin``
    are served."""
    with running(node_command("memory:"), tmp_path) as node:
        node.wait_listening()
        assert node.request("PUT", "/k", b"v")[0] == 201
        status, body, _ = node.request("GET", "/k", headers={"Host": "attacker.example:8888"})
        assert (status, json.loads(body)["error"]) == (403, "protected_mode")
    (tmp_path / "open").mkdir()
    with running(node_command("memory:", "--open"), tmp_path / "open") as node:
        node.wait_listening()
        assert "OPEN" in node.output()
        node.request("PUT", "/k", b"v")
        for method, path, body in [("GET", "/reset", None), ("POST", "/_bulk", b"[]")]:
            status, answer, _ = node.request(
                method,
                path,
                body,
                {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
            )
            assert (status, json.loads(answer)["error"]) == (403, "cross_origin")
        assert node.request("GET", "/k")[:2] == (200, b"v")
        _, _value, response = node.request("GET", "/k")
        assert response.getheader("Content-Security-Policy") == "sandbox"


def test_a_cache_node_refuses_peers(tmp_path: Path) -> None:
    """A cache node (``--upstream``) refuses to be given peers: 409 ``cache_node``."""
    with running(node_command("memory:", "--upstream", "http://127.0.0.1:9"), tmp_path) as cache:
        cache.wait_listening()
        for method, path in [("PUT", "/_peers"), ("PUT", "/_replication_slaves")]:
            status, body, _ = cache.request(method, path, b"http://127.0.0.1:10")
            assert (status, json.loads(body)["error"]) == (409, "cache_node")


# -- tokens over a node's life ----------------------------------------------------------------


def test_sighup_reloads_the_tokens_and_a_bad_file_keeps_the_old_ones(tmp_path: Path) -> None:
    """After the tokens file changes, SIGHUP makes a new token work and a removed one fail; a
    malformed file is refused with its line, and the tokens in use stay."""
    with node_with_tokens(tmp_path) as node:
        newcomer = "newcomer-secret-for-test"
        assert (
            node.request("GET", "/_keys", headers={"Authorization": f"Bearer {newcomer}"})[0] == 401
        )
        tokens_file(
            tmp_path,
            TOKENS.replace(SECRETS["reader"], newcomer),
        )
        node.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: (
                node.request("GET", "/_keys", headers={"Authorization": f"Bearer {newcomer}"})[0]
                == 200
            ),
            "the new token to be accepted",
        )
        assert node.request("GET", "/_keys", headers=bearer("reader"))[0] == 401
        tokens_file(tmp_path, TOKENS + '\n[[token]]\nname = "x"\nallow = ["root"]\n')
        node.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "tokens not reloaded" in node.output(), "the refusal in the log")
        assert "tokens.toml:" in node.output()
        assert (
            node.request("GET", "/_keys", headers={"Authorization": f"Bearer {newcomer}"})[0] == 200
        )


def test_a_bad_tokens_file_stops_the_start_naming_its_line(tmp_path: Path) -> None:
    """A tokens file with a mistake makes ``twistd navistore`` exit non-zero before listening,
    saying which file and line."""
    path = tokens_file(
        tmp_path, '[[token]]\nname = "x"\nsecret = "0123456789abcdefgh"\nallow = ["reed"]\n'
    )
    result = subprocess.run(
        node_command("memory:", "--tokens", str(path)),
        cwd=tmp_path,
        env=source_env(),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert result.returncode != 0
    assert f"{path}:4:" in result.stdout + result.stderr
    assert "reed" in result.stdout + result.stderr


def test_the_command_line_client_sends_its_token(tmp_path: Path) -> None:
    """``navistore`` sends ``--token`` or ``$NAVISTORE_TOKEN``; without one, or with one that
    lacks the permission, it exits 5 and says what is missing."""
    with node_with_tokens(tmp_path) as node:
        node.request("PUT", "/app/k", b"value", bearer("admin"))
        url = f"http://127.0.0.1:{node.port}"

        def client(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
            env = {k: v for k, v in source_env().items() if k != "NAVISTORE_TOKEN"}
            if token is not None:
                env["NAVISTORE_TOKEN"] = token
            return subprocess.run(
                [sys.executable, "-m", "navistore.scripts.client", "--url", url, *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=DEADLINE,
            )

        assert client("get", "/app/k").returncode == 5
        ok = client("get", "/app/k", token=SECRETS["reader"])
        assert (ok.returncode, ok.stdout) == (0, "value")
        refused = client("put", "/app/k", "x", token=SECRETS["reader"])
        assert refused.returncode == 5 and "'write'" in refused.stderr
        assert client("--token", SECRETS["writer"], "put", "/app/k", "x").returncode == 0


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


def tls_files(directory: Path, authority: trustme.CA) -> tuple[Path, Path, Path]:
    """A certificate for 127.0.0.1 and localhost signed by ``authority``: (cert, key, ca)."""
    directory.mkdir(parents=True, exist_ok=True)
    issued = authority.issue_cert("127.0.0.1", "localhost")
    cert, key, ca = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    authority.cert_pem.write_to_path(str(ca))
    return cert, key, ca


def ssl_port(cert: Path, key: Path) -> str:
    return f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"


def client_context(ca: Path, alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def test_tls_answers_clients_that_offer_alpn(tmp_path: Path, authority: trustme.CA) -> None:
    """An ``ssl:`` endpoint completes the handshake with clients offering ALPN (h2 and
    http/1.1, as curl and browsers do) and answers over HTTP/1.1; curl with its defaults too."""
    cert, key, ca = tls_files(tmp_path, authority)
    tls = client_context(ca, ["h2", "http/1.1"])
    with running(node_command("memory:", port=ssl_port(cert, key)), tmp_path, tls=tls) as node:
        node.wait_listening()
        assert node.request("PUT", "/k", b"over tls")[0] == 201
        with (
            socket.create_connection(("127.0.0.1", node.port), timeout=10) as raw,
            tls.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped,
        ):
            assert wrapped.selected_alpn_protocol() == "http/1.1"
        curl = shutil.which("curl")
        if curl is not None:
            result = subprocess.run(
                [curl, "-sS", "--cacert", str(ca), f"https://127.0.0.1:{node.port}/k"],
                capture_output=True,
                timeout=DEADLINE,
            )
            assert (result.returncode, result.stdout) == (0, b"over tls"), result.stderr


def test_a_tls_mesh_with_peer_tokens_converges(tmp_path: Path, authority: trustme.CA) -> None:
    """Three nodes on https, each requiring a peer token to replicate and checking its peers'
    certificates against the test's CA, form a full mesh: a write on any node reaches the two
    others; a node that presents no peer token is refused and gets nothing pushed in."""
    admin = bearer("admin")
    with ExitStack() as stack:
        nodes = []
        for name in ("a", "b", "c"):
            directory = tmp_path / name
            cert, key, ca = tls_files(directory, authority)
            tokens = tokens_file(directory)
            peer_token = directory / "peer-token"
            peer_token.write_text(SECRETS["mesh"] + "\n")
            command = node_command(
                "sqlite:node.db",
                "--tokens",
                str(tokens),
                "--peer-token-file",
                str(peer_token),
                "--peer-ca",
                str(ca),
                port=ssl_port(cert, key),
            )
            node = stack.enter_context(
                running(command, directory, tls=client_context(ca), headers=admin)
            )
            nodes.append(node)
        for node in nodes:
            node.wait_listening()
        urls = [f"https://127.0.0.1:{node.port}" for node in nodes]
        for index, node in enumerate(nodes):
            others = ",".join(url for other, url in enumerate(urls) if other != index)
            assert node.request("PUT", "/_replication_slaves", others.encode())[0] == 200
        for index, node in enumerate(nodes):
            assert node.request("PUT", f"/app/from-{index}", f"v{index}".encode())[0] == 201

        def converged() -> bool:
            listings = [node.request("GET", "/app/")[1] for node in nodes]
            keys = [json.loads(listing)["keys"] for listing in listings]
            return all(len(found) == 3 for found in keys) and keys[0] == keys[1] == keys[2]

        wait_until(converged, "the mesh to converge")
        for node in nodes:
            assert node.request("GET", "/app/from-2")[:2] == (200, b"v2")
            _status, peers, _ = node.request("GET", "/_peers")
            assert {peer["state"] for peer in json.loads(peers)} == {"idle"}

        # A node without the peer token pushes to the mesh in vain.
        rogue_dir = tmp_path / "rogue"
        rogue_dir.mkdir()
        cert, key, ca = tls_files(rogue_dir, authority)
        rogue = stack.enter_context(
            running(
                node_command("memory:", "--open", "--peer-ca", str(ca), "--peer", urls[0]),
                rogue_dir,
            )
        )
        rogue.wait_listening()
        rogue.request("PUT", "/app/rogue", b"x")
        wait_until(lambda: "401" in rogue.output(), "the push to be refused")
        assert nodes[0].request("GET", "/app/rogue")[0] == 404


def test_mutual_tls_lets_in_only_peers_with_a_certificate(
    tmp_path: Path, authority: trustme.CA
) -> None:
    """A node listening on ``mtls:`` completes the handshake only with clients presenting a
    certificate of its CA: a peer given ``--peer-cert``/``--peer-key`` replicates to it, a
    client without one is refused during the handshake."""
    cert, key, ca = tls_files(tmp_path / "b", authority)
    client_cert = tmp_path / "a" / "client.pem"
    client_cert.parent.mkdir()
    authority.issue_cert("node-a.peers").private_key_and_cert_chain_pem.write_to_path(
        str(client_cert)
    )
    with_cert = client_context(ca)
    with_cert.load_cert_chain(str(client_cert))
    port = f"mtls:0:interface=127.0.0.1:privateKey={key}:certKey={cert}:caCerts={ca}"
    with running(node_command("memory:", port=port), tmp_path / "b", tls=with_cert) as b:
        b.wait_listening()
        peer = f"https://127.0.0.1:{b.port}"
        command = node_command(
            "memory:",
            "--peer",
            peer,
            "--peer-ca",
            str(ca),
            "--peer-cert",
            str(client_cert),
            "--peer-key",
            str(client_cert),
        )
        with running(command, tmp_path / "a") as a:
            a.wait_listening()
            assert a.request("PUT", "/k", b"over mutual tls")[0] == 201
            wait_until(lambda: b.request("GET", "/k")[0] == 200, "the write to reach B")
            assert b.request("GET", "/k")[1] == b"over mutual tls"
        without = client_context(ca)
        with (
            pytest.raises((ssl.SSLError, ConnectionResetError, OSError)),
            socket.create_connection(("127.0.0.1", b.port), timeout=10) as raw,
            without.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped,
        ):
            wrapped.sendall(b"GET /k HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            if not wrapped.recv(1024):
                raise ConnectionResetError("closed without an answer")


# -- protected mode from another address ------------------------------------------------------


def _netns_unavailable() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux's"
    if os.geteuid() != 0:
        return "making a network namespace needs root"
    if shutil.which("ip") is None:
        return "iproute2's ip command is not installed"
    return None


@contextmanager
def namespace() -> Iterator[tuple[str, str, str]]:
    """A network namespace joined to this one by a veth pair: (its name, this side's address,
    its address). Removed at the end."""
    name = f"navistore-test-{os.getpid()}"
    host_side, ns_side = f"nvh{os.getpid() % 100000}", f"nvn{os.getpid() % 100000}"
    subnet = 100 + os.getpid() % 100
    host_address, ns_address = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
    commands = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", host_side, "type", "veth", "peer", "name", ns_side],
        ["ip", "link", "set", ns_side, "netns", name],
        ["ip", "addr", "add", f"{host_address}/30", "dev", host_side],
        ["ip", "link", "set", host_side, "up"],
        ["ip", "netns", "exec", name, "ip", "addr", "add", f"{ns_address}/30", "dev", ns_side],
        ["ip", "netns", "exec", name, "ip", "link", "set", ns_side, "up"],
        ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
    ]
    try:
        for command in commands:
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
            if result.returncode != 0:
                pytest.skip(
                    f"cannot make a network namespace here: {' '.join(command)}: "
                    f"{result.stderr.strip()}"
                )
        yield name, host_address, ns_address
    finally:
        subprocess.run(["ip", "link", "del", host_side], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def status_from(name: str, url: str) -> tuple[int, str]:
    """GET ``url`` from inside namespace ``name``: the status and the error code."""
    script = (
        "import json, sys, urllib.request, urllib.error\n"
        "try:\n"
        f"    r = urllib.request.urlopen({url!r}, timeout=10); print(r.status, '-')\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code, json.loads(e.read())['error'])\n"
    )
    result = subprocess.run(
        ["ip", "netns", "exec", name, sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert result.returncode == 0, result.stderr
    code, error = result.stdout.split()
    return int(code), error


@pytest.mark.skipif(_netns_unavailable() is not None, reason=str(_netns_unavailable()))
def test_protected_mode_refuses_a_caller_on_another_address(tmp_path: Path) -> None:
    """A node without tokens, listening on every interface, answers this machine and refuses a
    host on the LAN (a network namespace) with 403 ``protected_mode``; with ``--open`` it
    answers that host too."""
    with namespace() as (name, host_address, _ns_address):
        port = "tcp:0:interface=0.0.0.0"
        with running(node_command("memory:", port=port), tmp_path) as node:
            node.wait_listening()
            assert node.request("PUT", "/k", b"v")[0] == 201
            assert status_from(name, f"http://{host_address}:{node.port}/k") == (
                403,
                "protected_mode",
            )
        (tmp_path / "open").mkdir()
        with running(node_command("memory:", "--open", port=port), tmp_path / "open") as node:
            node.wait_listening()
            node.request("PUT", "/k", b"v")
            assert status_from(name, f"http://{host_address}:{node.port}/k") == (200, "-")

"""End to end: real ``twistd navistore`` and ``nhttpserver`` processes on 127.0.0.1.

The processes are started, read and stopped with :mod:`support.processes`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.processes import (
    DEADLINE,
    LISTENING,
    LOOPBACK,
    REPOSITORY,
    Server,
    clean_env,
    healthy,
    nhttpserver,
    pid_alive,
    request,
    run_to_exit,
    running,
    stop_pid,
    stop_process,
    twistd,
    twistd_command,
    wait_until,
)

pytestmark = pytest.mark.e2e

# -- the classic client flow --------------------------------------------------------------------


def classic_flow(server: Server) -> None:
    """Save, get, modify, list, has-key, delete and reset, as the classic client does."""
    assert server.request("PUT", "/1", b"one")[:2] == (201, b"OK")
    assert server.request("GET", "/1")[:2] == (200, b"one")
    assert server.request("PUT", "/1", b"uno")[:2] == (200, b"OK")
    assert server.request("GET", "/1")[:2] == (200, b"uno")
    assert server.request("PUT", "/2", b"\x00binary\xff")[:2] == (201, b"OK")
    assert server.request("GET", "/2")[:2] == (200, b"\x00binary\xff")
    status, body, _ = server.request("GET", "/listkeys")
    assert status == 200 and json.loads(body) == ["1", "2"]
    # has-key is a GET: 200 when present, 404 (with a JSON error) when not.
    assert server.request("GET", "/2")[0] == 200
    status, body, response = server.request("GET", "/3")
    assert status == 404
    assert response.getheader("Content-Type", "").startswith("application/json")
    assert json.loads(body)["error"] == "not_found"
    assert server.request("DELETE", "/1")[0] == 200
    assert server.request("GET", "/1")[0] == 404
    assert server.request("DELETE", "/1")[0] == 404
    assert json.loads(server.request("GET", "/listkeys")[1]) == ["2"]
    assert server.request("GET", "/reset")[0] == 200
    assert json.loads(server.request("GET", "/listkeys")[1]) == []
    assert server.request("GET", "/2")[0] == 404


def test_classic_flow_on_twistd(tmp_path: Path) -> None:
    """``twistd -n navistore`` over sqlite serves the classic client flow."""
    with running(twistd("sqlite:navistore.db"), tmp_path) as server:
        server.wait_listening()
        classic_flow(server)
        health = json.loads(server.request("GET", "/_health")[1])
        assert health["backend"] == "sqlite" and health["state"] == "ok"
    assert (tmp_path / "navistore.db").exists()


def test_classic_flow_on_nhttpserver(tmp_path: Path) -> None:
    """``bin/nhttpserver -P ... -s PATH`` serves the classic client flow from the sqlite file."""
    command = nhttpserver("-P", LOOPBACK, "-s", "classic.db")
    with running(command, tmp_path, env=clean_env()) as server:
        server.wait_listening()
        classic_flow(server)
    assert (tmp_path / "classic.db").exists()
    assert not (tmp_path / "twistd.pid").exists()


def test_size_options_reach_the_node(tmp_path: Path) -> None:
    """``--max-value-size`` and ``--max-key-bytes`` given to twistd are the limits the node
    enforces: a value one byte over is refused with 413, a key well over with a 4xx error."""
    command = twistd("memory:", port=LOOPBACK)
    command += ["--max-value-size", "16", "--max-key-bytes", "8"]
    with running(command, tmp_path) as server:
        server.wait_listening()
        assert server.request("PUT", "/v", b"x" * 16)[0] == 201
        assert server.request("PUT", "/v", b"x" * 17)[0] == 413
        assert server.request("PUT", "/abc", b"short key")[0] == 201
        status, body, _ = server.request("PUT", "/abcdefghijkl", b"long key")
        assert status in (400, 414) and "error" in json.loads(body)


# -- durability and shutdown --------------------------------------------------------------------


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    """Every PUT acknowledged by a sqlite-backed node is there after the node is SIGKILLed and
    started again on the same file."""
    command = twistd("sqlite:durable.db")
    with running(command, tmp_path) as server:
        server.wait_listening()
        for number in range(200):
            status, body, _ = server.request("PUT", f"/k{number}", f"value {number}".encode())
            assert (status, body) == (201, b"OK")
        server.process.send_signal(signal.SIGKILL)
        assert server.process.wait(DEADLINE) == -signal.SIGKILL
    with running(command, tmp_path) as server:
        server.wait_listening()
        for number in range(200):
            assert server.request("GET", f"/k{number}")[:2] == (200, f"value {number}".encode())
        keys = json.loads(server.request("GET", "/listkeys")[1])
        assert sorted(keys) == sorted(f"k{number}" for number in range(200))


def test_sigterm_stops_cleanly_and_keeps_the_data(tmp_path: Path) -> None:
    """SIGTERM makes twistd shut down cleanly: the store is closed, twistd removes its pidfile,
    the database and everything else in the directory stay, and the data is there on the next
    start. twistd then ends itself with the signal it received (Twisted's convention, which
    shells and systemd count as a clean stop), so the exit status says "terminated by SIGTERM"
    rather than 0."""
    (tmp_path / "unrelated.txt").write_text("keep me")
    command = twistd("sqlite:kept.db", "--pidfile", "node.pid")
    with running(command, tmp_path) as server:
        server.wait_listening()
        assert (tmp_path / "node.pid").read_text().strip() == str(server.process.pid)
        assert server.request("PUT", "/kept", b"yes")[0] == 201
        assert stop_process(server.process) == -signal.SIGTERM
        assert "Navistore stopped" in server.output()
        assert "Server Shut Down" in server.output()
        assert "Traceback" not in server.output()
    assert not (tmp_path / "node.pid").exists()
    assert (tmp_path / "unrelated.txt").read_text() == "keep me"
    assert (tmp_path / "kept.db").exists()
    with running(twistd("sqlite:kept.db"), tmp_path) as server:
        server.wait_listening()
        assert server.request("GET", "/kept")[:2] == (200, b"yes")


def test_nhttpserver_daemonizes_with_pidfile_and_logfile(tmp_path: Path) -> None:
    """``nhttpserver -b -p PIDFILE -l LOGFILE`` returns at once, leaving a daemon that wrote both
    files, serves, and stops (removing its pidfile) on SIGTERM sent to the pid in the file."""
    pidfile, logfile = tmp_path / "server.pid", tmp_path / "server.log"
    command = nhttpserver(
        "-b", "-p", str(pidfile), "-l", str(logfile), "-P", LOOPBACK, "-s", "daemon.db"
    )
    launcher = run_to_exit(command, tmp_path, env=clean_env())
    pid = int(pidfile.read_text().strip()) if pidfile.exists() else None
    try:
        assert launcher.returncode == 0, launcher.stdout + launcher.stderr
        assert pid is not None and pid_alive(pid)
        found: list[int] = []

        def listening() -> bool:
            match = LISTENING.search(logfile.read_bytes()) if logfile.exists() else None
            if match:
                found.append(int(match.group(1)))
            return match is not None

        wait_until(listening, "the daemon to log its port")
        wait_until(lambda: healthy(found[0]), "the daemon to answer /_health")
        assert request(found[0], "PUT", "/d", b"daemon")[:2] == (201, b"OK")
        assert request(found[0], "GET", "/d")[:2] == (200, b"daemon")
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not pid_alive(pid), "the daemon to exit")
        assert not pidfile.exists()
        assert "Server Shut Down" in logfile.read_text()
        assert (tmp_path / "daemon.db").exists()
    finally:
        if pid is not None:
            stop_pid(pid)


# -- failing to start ---------------------------------------------------------------------------


def assert_one_line_refusal(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    """The process refused its configuration as a usage error: exit status 1, one line on
    stderr saying why, no traceback, and nothing bound or logged before it."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "error:" in lines[0]
    for words in expected:
        assert words in lines[0], lines[0]


@pytest.mark.parametrize("launcher", ["twistd", "nhttpserver"])
def test_bad_backend_url_exits_at_once(tmp_path: Path, launcher: str) -> None:
    """An unknown backend scheme is a usage error: exit status 1, quickly, in one line."""
    if launcher == "twistd":
        command = twistd("nosuch:somewhere")
    else:
        command = nhttpserver("-P", LOOPBACK, "--backend", "nosuch:somewhere")
    started = time.monotonic()
    result = run_to_exit(command, tmp_path)
    assert_one_line_refusal(result, "no backend for scheme 'nosuch'")
    assert time.monotonic() - started < DEADLINE


#: Configuration mistakes, and words the refusal must contain.
CONFIGURATION_ERRORS = [
    (["--port", "foo"], ["--port 'foo'", "Unknown endpoint type"]),
    (["--port", "tcp:http"], ["--port 'tcp:http'"]),
    (["--port", "ssl:0:privateKey=missing.pem"], ["missing.pem"]),
    (["--backend", "sqlite:x.db?bogus=1"], ["unknown option(s) bogus"]),
    (["--backend", "sqlite:x.db?synchronous=sometimes"], ["synchronous='sometimes'"]),
    (["--backend", "sqlite:///no/such/dir/x.db"], ["/no/such/dir does not exist"]),
    (["--audit-log", "/no/such/dir/audit.log"], ["--audit-log", "does not exist"]),
    (["--access-log", "/no/such/dir/access.log"], ["--access-log", "does not exist"]),
    (["--tokens", "missing.toml"], ["--tokens", "missing.toml"]),
    (["--peer-ca", "missing.pem"], ["--peer-ca", "missing.pem"]),
    (["--max-watchers", "0"], ["--max-watchers: 0 is not positive"]),
    (["--log-format", "xml"], ["--log-format", "'xml'"]),
    (["-p", "8888"], ["use -P or --port"]),
    (["-b", "memory:"], ["use --backend"]),
]

#: -p and -b are twistd navistore's mistakes only: nhttpserver's are --pidfile and --background.
_LAUNCHES = [
    (launcher, options, expected)
    for launcher in ("twistd", "nhttpserver")
    for options, expected in CONFIGURATION_ERRORS
    if launcher == "twistd" or options[0] not in ("-p", "-b")
]


@pytest.mark.parametrize(("launcher", "options", "expected"), _LAUNCHES)
def test_configuration_errors_are_one_line_before_binding(
    tmp_path: Path, launcher: str, options: list[str], expected: list[str]
) -> None:
    """Every configuration mistake (endpoint, backend URL and its options, paths, tokens file,
    values) is found while the options are parsed: one line, exit status 1, nothing bound.
    nhttpserver hands the same options on and refuses them the same way."""
    if launcher == "twistd":
        command = [*twistd("memory:"), *options]
    else:
        command = nhttpserver("-P", LOOPBACK, *options)
    assert_one_line_refusal(run_to_exit(command, tmp_path), *expected)


def test_busy_port_exits_non_zero(tmp_path: Path) -> None:
    """A port that cannot be bound stops the start: exit status 1 with the reason in one log
    line, and no traceback."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_to_exit(twistd("memory:", port=f"tcp:{port}:interface=127.0.0.1"), tmp_path)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Navistore cannot start" in output and "Address already in use" in output
    assert "Traceback" not in output, output


def test_unopenable_storage_exits_non_zero(tmp_path: Path) -> None:
    """A sqlite file that cannot be opened (it is no database) fails the start once the
    reactor runs: the process logs why in one line and exits 1 instead of serving or
    hanging."""
    garbage = tmp_path / "store.db"
    garbage.write_bytes(b"this is not a sqlite database, " * 100)
    result = run_to_exit(twistd(f"sqlite://{garbage}"), tmp_path)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Navistore cannot start" in output
    assert re.search(r"not a database", output, re.IGNORECASE), output
    assert "Traceback" not in output, output


# -- an installed copy --------------------------------------------------------------------------


def test_installed_twistd_finds_the_plugin(installed_venv: Path, tmp_path: Path) -> None:
    """From ``pip install .`` (not editable), run outside the source tree, ``twistd --help``
    lists navistore, ``twistd -n navistore`` serves, and the nhttpserver script is installed."""
    assert not tmp_path.resolve().is_relative_to(REPOSITORY)
    listing = run_to_exit([*twistd_command(installed_venv), "--help"], tmp_path, clean_env())
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"^\s+navistore\s", listing.stdout, re.MULTILINE), listing.stdout
    command = twistd("memory:", bin_dir=installed_venv)
    with running(command, tmp_path, env=clean_env()) as server:
        server.wait_listening()
        health = json.loads(server.request("GET", "/_health")[1])
        assert health["backend"] == "memory" and health["state"] == "ok"
        assert server.request("PUT", "/installed", b"yes")[0] == 201
    help_text = run_to_exit([str(installed_venv / "nhttpserver"), "--help"], tmp_path, clean_env())
    assert help_text.returncode == 0 and "--storage-path" in help_text.stdout

"""systemd's notify protocol (navistore.service_manager): ``READY=1`` once the node listens and
its Store is open, ``STOPPING=1`` when it stops, sent as one datagram to ``$NOTIFY_SOCKET``.

The service manager is played by an ``AF_UNIX`` datagram socket the test binds itself; the
end-to-end test runs a real ``twistd navistore`` process with ``NOTIFY_SOCKET`` pointing at it.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.processes import REPOSITORY, request, running, source_env, stop_process, twistd

from navistore.service_manager import notify


@pytest.fixture
def manager() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing for the service manager, and its path (kept short: a socket
    path has at most 107 bytes)."""
    directory = tempfile.mkdtemp(prefix="nv", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


def fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode("utf-8").splitlines())


def test_notify_sends_one_datagram_of_assignments(manager: tuple[socket.socket, str]) -> None:
    sock, path = manager
    assert notify("READY=1", "STATUS=serving", environ={"NOTIFY_SOCKET": path})
    assert fields(sock.recv(4096)) == {"READY": "1", "STATUS": "serving"}


def test_notify_reaches_an_abstract_socket() -> None:
    """``@name`` is Linux's abstract namespace: the name with a leading NUL byte."""
    name = f"navistore-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert notify("READY=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"READY=1"


def test_without_a_manager_nothing_is_sent_and_nothing_fails(tmp_path: Path) -> None:
    assert not notify("READY=1", environ={})
    assert not notify("READY=1", environ={"NOTIFY_SOCKET": ""})
    # A socket that is not there: logged, not raised (the node serves anyway).
    assert not notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "absent")})


def test_a_real_node_says_ready_once_it_serves_and_stopping_when_it_stops(
    manager: tuple[socket.socket, str], tmp_path: Path
) -> None:
    """``twistd navistore`` under ``NOTIFY_SOCKET`` sends ``READY=1`` with its PID once it
    answers requests, and ``STOPPING=1`` on SIGTERM."""
    sock, path = manager
    env = {**source_env(), "NOTIFY_SOCKET": path}
    with running(twistd("sqlite:notify.db"), tmp_path, env=env) as server:
        ready = fields(sock.recv(4096))
        assert ready["READY"] == "1"
        assert int(ready["MAINPID"]) == server.process.pid
        assert ready["STATUS"].startswith("serving on ")
        server.wait_listening()
        assert request(server.port, "GET", "/_health")[0] == 200
        stop_process(server.process)
        assert fields(sock.recv(4096)) == {"STOPPING": "1"}


UNIT = Path(__file__).resolve().parent.parent / "contrib" / "systemd" / "navistore.service"


def unit_settings() -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            name, value = line.split("=", 1)
            settings[name] = value
    return settings


def test_the_unit_file_starts_a_notifying_node_with_options_it_accepts(tmp_path: Path) -> None:
    """``contrib/systemd/navistore.service`` is a Type=notify unit whose ExecStart runs
    ``twistd --nodaemon ... navistore --config FILE``, a file made from the shipped example as
    the unit's comment says being one ``twistd navistore`` accepts; it reloads with SIGHUP,
    keeps its data in its StateDirectory, and is hardened."""
    from navistore.tap import Options

    settings = unit_settings()
    assert settings["Type"] == "notify"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["StateDirectory"] == "navistore"
    command = settings["ExecStart"].split()
    assert command[:2] == ["/usr/bin/twistd", "--nodaemon"]
    arguments = command[command.index("navistore") + 1 :]
    assert arguments == ["--config", "/etc/navistore/navistore.toml"]
    tokens = tmp_path / "tokens"  # the unit's /etc/navistore/tokens, here
    tokens.write_text(
        '[[token]]\nname = "ops"\nsecret = "0123456789abcdef0123"\nallow = ["read"]\n'
    )
    # The file the unit reads: the shipped example, with the two lines its comment asks for.
    config = tmp_path / "navistore.toml"
    example = (REPOSITORY / "contrib" / "navistore.toml").read_text(encoding="utf-8")
    state = tmp_path / "var-lib-navistore"
    state.mkdir()
    config.write_text(
        example + f'backend = "sqlite://{state}/navistore.db"\ntokens = "{tokens}"\n',
        encoding="utf-8",
    )
    options = Options()
    options.parseOptions(["--config", str(config)])
    assert options["backend"] == f"sqlite://{state}/navistore.db"
    assert options["tokens"] == str(tokens)
    assert 'tokens = "/etc/navistore/tokens"' in UNIT.read_text()
    for hardening in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "RestrictAddressFamilies"):
        assert hardening in settings

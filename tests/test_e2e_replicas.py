"""End to end: ``?replicas=all`` across real ``twistd navistore`` processes on 127.0.0.1.

Node A pushes to B and C (``--peer``); C is down when A is written to, then comes back. The
process helpers (kernel-chosen ports read from the log, readiness by ``/_health``, stopping by
PID) are those of :mod:`test_e2e_server`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from support.processes import Server, running, stop_process, twistd

pytestmark = pytest.mark.e2e


def peer_url(server: Server) -> str:
    """The URL peers use to reach ``server``."""
    return f"http://127.0.0.1:{server.port}"


def node_dir(tmp_path: Path, name: str) -> Path:
    """A working directory of its own for node ``name`` (its database and its log)."""
    path = tmp_path / name
    path.mkdir(exist_ok=True)
    return path


def test_replicas_all_with_a_peer_down_answers_504_and_the_peer_catches_up(
    tmp_path: Path,
) -> None:
    """With one of two peers down, ``PUT ?replicas=all`` answers 504 after its timeout, naming
    the live peer as reached and the dead one as missing; the write is stored on A and on the
    live peer. Once the dead peer is back it gets that write, and a new ``replicas=all`` write
    succeeds (A retries the peer promptly while a write waits for it)."""
    c_dir = node_dir(tmp_path, "c")
    with running(twistd("sqlite:c.db"), c_dir) as first_c:
        first_c.wait_listening()  # learn a port for C, then take C down
        c_port = first_c.port
        stop_process(first_c.process)
    with running(twistd("sqlite:b.db"), node_dir(tmp_path, "b")) as b:
        b.wait_listening()
        c_url = f"http://127.0.0.1:{c_port}"
        command = twistd("sqlite:a.db")
        command += ["--peer", peer_url(b), "--peer", c_url]
        with running(command, node_dir(tmp_path, "a")) as a:
            a.wait_listening()

            started = time.monotonic()
            status, body, _response = a.request("PUT", "/k?replicas=all&timeout=2", b"one")
            waited = time.monotonic() - started
            assert status == 504, body
            document = json.loads(body)
            assert document["error"] == "replicas_timeout"
            assert document["detail"]["reached"] == [peer_url(b)]
            assert document["detail"]["missing"] == [c_url]
            assert 1.5 <= waited < 10
            assert a.request("GET", "/k")[:2] == (200, b"one")
            assert b.request("GET", "/k")[:2] == (200, b"one")

            port = f"tcp:{c_port}:interface=127.0.0.1"
            with running(twistd("sqlite:c.db", port=port), c_dir) as c:
                c.wait_listening()
                status, body, _response = a.request("PUT", "/k2?replicas=all&timeout=10", b"two")
                assert status == 201, body
                assert c.request("GET", "/k")[:2] == (200, b"one")
                assert c.request("GET", "/k2")[:2] == (200, b"two")

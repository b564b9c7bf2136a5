"""End to end: a real ``twistd navistore --backend postgresql://...`` process over a real
PostgreSQL server (tests/support/postgres.py), on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support.processes import DEADLINE, running, source_env, twistd, wait_until
from test_e2e_server import classic_flow

if TYPE_CHECKING:
    from support.postgres import PostgresServer

pytest_plugins = ["support.postgres"]
pytestmark = pytest.mark.e2e


def test_classic_flow_and_ttl_on_twistd_over_postgresql(
    tmp_path: Path, postgres_url: str, postgres_server: PostgresServer
) -> None:
    """``twistd navistore`` over PostgreSQL serves the classic flow (PUT, GET, DELETE, listing,
    reset), says so in ``/_health``, and expires a key written with ``?ttl=``; the password
    comes from ``PGPASSWORD`` (libpq's), as the README advises, so it is not in the command."""
    database = postgres_url.rsplit("/", 1)[1]
    env = {**source_env(), "PGPASSWORD": postgres_server.password}
    command = twistd(postgres_server.url(database, password=False))
    with running(command, tmp_path, env=env) as server:
        server.wait_listening()
        classic_flow(server)
        health = json.loads(server.request("GET", "/_health")[1])
        assert health["backend"] == "postgresql" and health["state"] == "ok"
        assert server.request("PUT", "/lease?ttl=1", b"holder")[:2] == (201, b"OK")
        status, body, answer = server.request("GET", "/lease")
        assert (status, body) == (200, b"holder")
        assert 0 <= int(answer.getheader("X-Navistore-Expires") or -1) <= 1
        wait_until(lambda: server.request("GET", "/lease")[0] == 404, "the lease to expire", 10)
        assert json.loads(server.request("GET", "/listkeys")[1]) == []


def test_acknowledged_writes_survive_sigkill_over_postgresql(
    tmp_path: Path, postgres_url: str, postgres_server: PostgresServer
) -> None:
    """Every PUT a PostgreSQL-backed node acknowledged is committed: it is in the database
    (read by another connection) after the node is SIGKILLed, and a new node serves it."""
    command = twistd(postgres_url)
    with running(command, tmp_path) as server:
        server.wait_listening()
        for number in range(100):
            status, body, _ = server.request("PUT", f"/k{number}", f"value {number}".encode())
            assert (status, body) == (201, b"OK")
        server.process.send_signal(signal.SIGKILL)
        assert server.process.wait(DEADLINE) == -signal.SIGKILL
    database = postgres_url.rsplit("/", 1)[1]
    with postgres_server.connect(database) as connection:
        [(count,)] = connection.execute("SELECT count(*) FROM records WHERE NOT deleted")
    assert count == 100
    started = time.monotonic()
    with running(command, tmp_path) as server:
        server.wait_listening()
        for number in range(100):
            assert server.request("GET", f"/k{number}")[:2] == (200, f"value {number}".encode())
    assert time.monotonic() - started < DEADLINE


def test_the_node_answers_503_while_the_database_is_down_and_recovers(
    tmp_path: Path, postgres_url: str, postgres_server: PostgresServer
) -> None:
    """While PostgreSQL is down, the node answers reads and writes with 503 (a storage
    failure, nothing acknowledged); once it is back, the node reconnects by itself and serves
    what was committed before, and new writes."""
    with running(twistd(postgres_url), tmp_path) as server:
        server.wait_listening()
        assert server.request("PUT", "/before", b"kept")[0] == 201
        postgres_server.stop_server()
        try:
            assert server.request("GET", "/before")[0] == 503
            status, body, _ = server.request("PUT", "/during", b"lost")
            assert status == 503 and "error" in json.loads(body)
        finally:
            postgres_server.start_server()
        wait_until(lambda: server.request("GET", "/before")[0] == 200, "the node to reconnect", 20)
        assert server.request("GET", "/before")[:2] == (200, b"kept")
        assert server.request("GET", "/during")[0] == 404
        assert server.request("PUT", "/after", b"new")[0] == 201

"""End to end: the real ``etcdctl`` (Debian's etcd-client 3.4.23, ``ETCDCTL_API=2``) against a
real ``twistd navistore --compat etcd`` on 127.0.0.1.

etcdctl syncs the member list (``GET /v2/members``) before every command and then talks to the
client URL the node names, so every command here also checks that the node names itself at the
address it was reached by. Without etcdctl the tests skip, saying why; with ``CI`` set they fail
instead (``.ci/run`` installs it). Every etcdctl run is bounded in time, and the ones that wait
(``watch``, ``exec-watch``) are stopped by PID.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.processes import Server, running, stop_process, twistd, url_of, wait_until

pytestmark = pytest.mark.e2e

ETCDCTL = shutil.which("etcdctl")
#: How long one etcdctl command may take, and how long a test waits for a change to show.
COMMAND_TIMEOUT = 30.0
CHANGE_DEADLINE = 20.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One node with the etcd API over sqlite for the module's tests (each uses its own keys)."""
    if ETCDCTL is None:
        reason = "etcdctl is not installed (Debian package etcd-client; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    where = tmp_path_factory.mktemp("etcd-node")
    with running([*twistd("sqlite:store.db"), "--compat", "etcd"], where) as server:
        server.wait_listening()
        yield server


def etcdctl_env() -> dict[str, str]:
    return {**os.environ, "ETCDCTL_API": "2"}


def etcdctl(node: Server, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run one etcdctl command against ``node`` to its end."""
    assert ETCDCTL is not None
    return subprocess.run(
        [ETCDCTL, "--endpoints", url_of(node), *arguments],
        env=etcdctl_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )


def ok(node: Server, *arguments: str) -> str:
    """Run a command that must succeed; its output."""
    result = etcdctl(node, *arguments)
    assert result.returncode == 0, (arguments, result.stdout, result.stderr)
    return result.stdout


def refused(node: Server, *arguments: str) -> str:
    """Run a command that must fail; what it printed of the error."""
    result = etcdctl(node, *arguments)
    assert result.returncode != 0, (arguments, result.stdout)
    return result.stderr + result.stdout


def start(node: Server, *arguments: str, log: Path) -> subprocess.Popen[str]:
    """Start a command that waits (watch, exec-watch), its output to ``log``."""
    assert ETCDCTL is not None
    with log.open("w") as out:
        return subprocess.Popen(
            [ETCDCTL, "--endpoints", url_of(node), *arguments],
            env=etcdctl_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )


def until_seen(node: Server, key: str, seen: object, waiting: subprocess.Popen[str]) -> list[str]:
    """Set ``key`` to ``v1``, ``v2``, ... every 300 ms until ``seen()`` is true (the waiting
    command got a change: it may have started watching after the first set); the values set."""
    assert callable(seen)
    values: list[str] = []
    end = time.monotonic() + CHANGE_DEADLINE
    while not seen():
        assert time.monotonic() < end, f"no change seen for {key} after setting {values}"
        if waiting.poll() is not None and not seen():
            pytest.fail(f"etcdctl exited {waiting.returncode} without the change")
        values.append(f"v{len(values) + 1}")
        ok(node, "set", key, values[-1])
        pause = time.monotonic() + 0.3
        while time.monotonic() < pause and not seen():
            time.sleep(0.02)
    return values


# -- commands -------------------------------------------------------------------------------


def test_set_get_mk_update(node: Server) -> None:
    """set and get round-trip a value; mk refuses an existing key with etcd's 105, update a
    missing one with 100, and updates an existing one."""
    assert ok(node, "set", "/cmd/a", "hello") == "hello\n"
    assert ok(node, "get", "/cmd/a") == "hello\n"
    assert ok(node, "mk", "/cmd/b", "world") == "world\n"
    assert "105: Key already exists (/cmd/b)" in refused(node, "mk", "/cmd/b", "again")
    assert "100: Key not found (/cmd/zz)" in refused(node, "update", "/cmd/zz", "x")
    assert ok(node, "update", "/cmd/a", "hi") == "hi\n"
    assert ok(node, "get", "/cmd/a") == "hi\n"
    status, body, _ = node.request("GET", "/cmd/a")
    assert (status, body) == (200, b"hi")  # the native key


def test_ls_mkdir_and_rm(node: Server) -> None:
    """mkdir makes an empty directory that ls shows; ls lists one level, --recursive all; rm
    refuses a directory (102), --dir a full one (108), and --recursive removes it all."""
    assert ok(node, "mkdir", "/tree/empty") == ""
    assert "105: Key already exists" in refused(node, "mkdir", "/tree/empty")
    ok(node, "set", "/tree/a", "1")
    ok(node, "set", "/tree/sub/b", "2")
    assert ok(node, "ls", "/tree").split() == ["/tree/a", "/tree/empty", "/tree/sub"]
    assert ok(node, "ls", "--recursive", "/tree").split() == [
        "/tree/a",
        "/tree/empty",
        "/tree/sub",
        "/tree/sub/b",
    ]
    assert "102: Not a file (/tree/sub)" in refused(node, "rm", "/tree/sub")
    assert "108: Directory not empty (/tree/sub)" in refused(node, "rm", "--dir", "/tree/sub")
    assert ok(node, "rm", "--dir", "/tree/empty") == ""
    assert ok(node, "rm", "/tree/a") == "PrevNode.Value: 1\n"
    ok(node, "rm", "--recursive", "/tree")
    assert "100: Key not found" in refused(node, "get", "/tree/sub/b")
    assert node.request("GET", "/tree/sub/b")[0] == 404


def test_members_name_the_node_as_reached(node: Server) -> None:
    """member list (which also asks for the leader) names this node at the URL used."""
    listed = ok(node, "member", "list")
    assert f"clientURLs={url_of(node)}" in listed and "isLeader=true" in listed
    assert "cluster is healthy" in ok(node, "cluster-health")


# -- waits ------------------------------------------------------------------------------------


def test_watch_prints_one_change(node: Server, tmp_path: Path) -> None:
    """watch waits for the next change of the key and prints its value; a recursive watch
    prints a change under the directory with its action and key."""
    log = tmp_path / "watch.out"
    watch = start(node, "watch", "/watched/key", log=log)
    try:
        values = until_seen(node, "/watched/key", lambda: watch.poll() is not None, watch)
        assert watch.wait(COMMAND_TIMEOUT) == 0
        assert log.read_text().strip() in values
    finally:
        stop_process(watch)
    log = tmp_path / "recursive.out"
    watch = start(node, "watch", "--recursive", "/watched/dir", log=log)
    try:
        until_seen(node, "/watched/dir/child", lambda: watch.poll() is not None, watch)
        assert watch.wait(COMMAND_TIMEOUT) == 0
        assert log.read_text().startswith("[set] /watched/dir/child\n")
    finally:
        stop_process(watch)


def test_exec_watch_runs_a_command_on_each_change(node: Server, tmp_path: Path) -> None:
    """exec-watch runs its command for a change with etcd's environment variables (action,
    key, value); it waits on until stopped, by PID."""
    ran = tmp_path / "ran.txt"
    hook = tmp_path / "hook.sh"
    hook.write_text(
        f'#!/bin/sh\necho "$ETCD_WATCH_ACTION $ETCD_WATCH_KEY=$ETCD_WATCH_VALUE" >> {ran}\n'
    )
    hook.chmod(0o755)
    # etcdctl 3.4's exec-watch takes the key last: exec-watch <command> <key>.
    waiting = start(node, "exec-watch", str(hook), "/hooked", log=tmp_path / "exec.out")
    try:
        values = until_seen(node, "/hooked", lambda: ran.exists() and ran.read_text(), waiting)
        first = ran.read_text().splitlines()[0]
        assert first in {f"set /hooked={value}" for value in values}
        assert waiting.poll() is None  # it goes on waiting for the next change
    finally:
        stop_process(waiting)


def test_ttl_keys_expire(node: Server) -> None:
    """set --ttl stores a key that shows its TTL and is gone once it ran out."""
    ok(node, "set", "--ttl", "30", "/long", "lived")
    extended = ok(node, "-o", "extended", "get", "/long")
    assert "TTL: 30" in extended or "TTL: 29" in extended  # seconds left, rounded up
    ok(node, "set", "--ttl", "1", "/short", "lived")
    end = time.monotonic() + CHANGE_DEADLINE
    while etcdctl(node, "get", "/short").returncode == 0:
        assert time.monotonic() < end, "the key did not expire"
        time.sleep(0.1)
    assert "100: Key not found (/short)" in refused(node, "get", "/short")


def waits_served(node: Server) -> float:
    """The node's ``navistore_watchers{kind="wait"}`` gauge."""
    status, body, _ = node.request("GET", "/_metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith('navistore_watchers{kind="wait"}'):
            return float(line.split()[-1])
    raise AssertionError("no wait watchers gauge")


def test_a_client_that_leaves_ends_its_wait(node: Server) -> None:
    """A wait has no server timeout, as in etcd: it holds its watcher until the client goes
    away, and then the node releases it."""
    before = waits_served(node)
    connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=COMMAND_TIMEOUT)
    try:
        connection.request("GET", "/v2/keys/left/alone?wait=true")
        response = connection.getresponse()  # the headers come at once
        assert response.status == 200 and response.getheader("X-Etcd-Index") is not None
        assert waits_served(node) == before + 1
    finally:
        connection.close()
    wait_until(lambda: waits_served(node) == before, "the wait to be released")


def test_a_replicated_pair_shares_the_keys(node: Server, tmp_path: Path) -> None:
    """The etcd API writes the native keys, so they replicate: a key set with etcdctl on A is
    read with etcdctl on B, a watch on B sees a change made on A (under B's own index), and a
    directory removed on A is gone on B."""
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    with running([*twistd("sqlite:b.db"), "--compat", "etcd"], tmp_path / "b") as b:
        b.wait_listening()
        command = [*twistd("sqlite:a.db"), "--compat", "etcd", "--peer", url_of(b)]
        with running(command, tmp_path / "a") as a:
            a.wait_listening()
            ok(a, "set", "/shared/dir/first", "from A")
            wait_until(lambda: etcdctl(b, "get", "/shared/dir/first").returncode == 0, "B")
            assert ok(b, "get", "/shared/dir/first") == "from A\n"
            log = tmp_path / "watch-b.out"
            watch = start(b, "watch", "--recursive", "/shared/dir", log=log)
            try:
                until_seen(a, "/shared/dir/second", lambda: watch.poll() is not None, watch)
                assert watch.wait(COMMAND_TIMEOUT) == 0
                assert log.read_text().startswith("[set] /shared/dir/second\n")
            finally:
                stop_process(watch)
            ok(a, "rm", "--recursive", "/shared")
            wait_until(lambda: etcdctl(b, "get", "/shared/dir/first").returncode != 0, "B")
            assert "100: Key not found (/shared)" in refused(b, "get", "/shared/dir/first")

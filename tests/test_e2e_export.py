"""Backup and restore against real ``twistd navistore`` processes on 127.0.0.1, with the
``navistore export``, ``import`` and ``backup`` commands run in this process (as ``main`` runs
them, on streams of their own).

Export from one node and import into a fresh one gives the same records, tombstones included;
importing again changes nothing, and an older file never rolls a newer value back. A client
that stops reading ``/_export`` does not grow the node's memory. Tokens limit what is exported
and where an import may write. A ``consul kv export`` moves over. ``backup`` copies a sqlite
node's database while writes run, consistently, and a node started on the copy serves every
key under the same node id.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.processes import Server, request, running, twistd, url_of, wait_until

from navistore.scripts.client import Failed, Streams, build_parser, run

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Done:
    """What one command did: its exit status, stdout (bytes) and stderr (text)."""

    status: int
    out: bytes
    err: str


def navistore(url: str, *arguments: str, token: str | None = None) -> Done:
    """``navistore --url URL ARGUMENTS`` in this process, as ``main`` runs it."""
    options = ["--url", url] + (["--token", token] if token else [])
    args = build_parser({}).parse_args([*options, *arguments])
    out, err = io.BytesIO(), io.StringIO()
    status = 0
    try:
        run(args, Streams(io.BytesIO(), out, err))
    except Failed as exc:
        print(f"navistore: {exc}", file=err)
        status = exc.status
    return Done(status, out.getvalue(), err.getvalue())


def counts(done: Done) -> dict[str, int]:
    """The counts ``import`` prints."""
    assert done.status == 0, done
    pairs = (line.split(": ", 1) for line in done.out.decode().splitlines())
    return {name: int(value.split()[0]) for name, value in pairs}


def started(tmp_path: Path, name: str, *options: str) -> Any:
    """A node over sqlite in ``tmp_path/name`` (``options`` go to ``navistore``)."""
    directory = tmp_path / name
    directory.mkdir(parents=True, exist_ok=True)
    return running([*twistd(f"sqlite:{name}.db"), *options], directory)


def bulk(server: Server, entries: list[dict[str, Any]], **headers: str) -> None:
    for start in range(0, len(entries), 2000):
        part = json.dumps(entries[start : start + 2000]).encode()
        status, body, _ = server.request("POST", "/_bulk", part, headers)
        assert status == 200, body


def health(server: Server) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(server.request("GET", "/_health")[1])
    return document


def records_of(path: Path) -> list[Any]:
    """The record lines of an export file (without header and end)."""
    lines = path.read_bytes().splitlines()
    assert json.loads(lines[0])["format"] == "navistore-export"
    assert json.loads(lines[-1])["end"] == "navistore-export"
    return [json.loads(line) for line in lines[1:-1]]


def fill(server: Server) -> None:
    """1,000 text keys, a binary one, and two deleted."""
    bulk(server, [{"key": f"/app/k{index:04d}", "value": f"v{index}"} for index in range(1000)])
    status, _, _ = server.request("PUT", "/app/bin", b"\x00\xff\xfe", {"Content-Type": "x/y"})
    assert status == 201
    for key in ("/app/k0001", "/app/k0002"):
        assert server.request("DELETE", key)[0] == 200


# -- export and import ----------------------------------------------------------------------------


def test_export_then_import_into_a_fresh_node_twice_and_never_back(tmp_path: Path) -> None:
    with started(tmp_path, "a") as source, started(tmp_path, "b") as target:
        source.wait_listening()
        target.wait_listening()
        fill(source)
        exported = tmp_path / "a.jsonl"
        done = navistore(url_of(source), "export", "-o", str(exported))
        assert done.status == 0, done
        records = records_of(exported)
        assert len(records) == 1001  # two of them tombstones: the deletes carry over
        assert sum(record["deleted"] for record in records) == 2

        assert counts(navistore(url_of(target), "import", str(exported))) == {
            "records": 1001,
            "applied": 1001,
            "kept": 0,
        }
        copied = tmp_path / "b.jsonl"
        assert navistore(url_of(target), "export", "-o", str(copied)).status == 0
        assert records_of(copied) == records  # the same records, in the same order
        assert target.request("GET", "/app/bin")[1] == b"\x00\xff\xfe"
        assert target.request("GET", "/app/k0001")[0] == 404

        seq = health(target)["last_seq"]
        assert counts(navistore(url_of(target), "import", str(exported)))["kept"] == 1001
        assert health(target)["last_seq"] == seq  # twice: nothing changed

        target.request("PUT", "/app/k0005", b"newer")
        target.request("PUT", "/app/k0001", b"undeleted")
        assert counts(navistore(url_of(target), "import", str(exported)))["applied"] == 0
        assert target.request("GET", "/app/k0005")[1] == b"newer"
        assert target.request("GET", "/app/k0001")[1] == b"undeleted"

        # A file cut short is refused before anything is sent.
        cut = tmp_path / "cut.jsonl"
        cut.write_bytes(b"".join(exported.read_bytes().splitlines(keepends=True)[:100]))
        refused = navistore(url_of(target), "import", str(cut))
        assert refused.status == 2 and "no end line" in refused.err


def test_an_invalid_line_names_the_files_line_and_what_was_applied(tmp_path: Path) -> None:
    """Spread over several requests, an import stops at the bad line: the message gives the
    file's line number and what the requests before it applied."""
    with started(tmp_path, "a") as node:
        node.wait_listening()
        value = "x" * 1000
        lines = [b'{"format": "navistore-export", "version": 1}\n']
        lines += [
            json.dumps({"key": f"/k/{index:05d}", "value": value}).encode() + b"\n"
            for index in range(9000)
        ]
        lines[8000] = b'{"key": "/k/bad", "value": 3}\n'  # line 8001 of the file
        lines.append(b'{"end": "navistore-export", "records": 9000, "seq": null}\n')
        path = tmp_path / "bad.jsonl"
        path.write_bytes(b"".join(lines))
        done = navistore(url_of(node), "import", str(path))
        assert done.status == 3, done
        assert f"{path} line 8001: " in done.err and '"value" must be a string' in done.err
        assert "records before" in done.err and "applied" in done.err
        assert "idempotent" in done.err
        applied = health(node)["last_seq"]
        assert 0 < applied < 8000


# -- a slow reader --------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")  # pragma: no cover


def test_a_client_that_stops_reading_an_export_does_not_grow_the_node(tmp_path: Path) -> None:
    """48 MiB of values: a client that reads 64 KiB of the export and stops leaves the node's
    memory where it was (it holds a page, not the export); reading on, it gets all of it."""
    with started(tmp_path, "a") as node:
        node.wait_listening()
        value = "v" * 4096
        bulk(node, [{"key": f"/big/{index:05d}", "value": value} for index in range(12_000)])
        time.sleep(1.0)
        before = rss_kib(node.process.pid)
        with socket.create_connection(("127.0.0.1", node.port), timeout=30) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            client.sendall(b"GET /_export HTTP/1.1\r\nHost: localhost\r\n\r\n")
            received = client.recv(65536)
            assert received.startswith(b"HTTP/1.1 200 ")
            peak = before
            for _ in range(20):
                time.sleep(0.1)
                peak = max(peak, rss_kib(node.process.pid))
            assert peak - before < 24 * 1024, (before, peak)
            chunks = [received]
            while not chunks[-1].endswith(b"0\r\n\r\n"):
                chunk = client.recv(1 << 20)
                assert chunk, "the export ended early"
                chunks.append(chunk)
        body = b"".join(chunks)
        assert body.count(b'"key":"/big/') == 12_000
        assert b'{"end":"navistore-export","records":12000' in body


# -- tokens ---------------------------------------------------------------------------------------

SECRETS = {"reader": "e2e-reader-secret-000", "writer": "e2e-writer-secret-000"}
ADMIN = "e2e-admin-secret-00000"
TOKENS = f"""
[[token]]
name = "admin"
secret = "{ADMIN}"
allow = ["read", "write", "admin"]

[[token]]
name = "reader"
secret = "{SECRETS["reader"]}"
allow = ["read"]
prefixes = ["/a/"]

[[token]]
name = "writer"
secret = "{SECRETS["writer"]}"
allow = ["read", "write"]
prefixes = ["/a/"]
"""


def test_tokens_limit_what_is_exported_and_where_an_import_writes(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with started(tmp_path, "a", "--tokens", str(tokens)) as node:
        node.headers = admin
        node.wait_listening()
        bulk(
            node, [{"key": f"/{top}/k{index}", "value": "v"} for top in "ab" for index in range(5)]
        )
        url = url_of(node)
        mine = tmp_path / "a.jsonl"
        assert navistore(url, "export", "-o", str(mine), token=SECRETS["reader"]).status == 0
        assert sorted(record["key"] for record in records_of(mine)) == [
            f"/a/k{index}" for index in range(5)
        ]
        everything = tmp_path / "all.jsonl"
        assert navistore(url, "export", "-o", str(everything), token=ADMIN).status == 0
        assert len(records_of(everything)) == 10
        assert navistore(url, "export").status == 5  # no token
        seq = health(node)["last_seq"]
        refused = navistore(url, "import", str(everything), token=SECRETS["writer"])
        assert refused.status == 5 and "/b/k0" in refused.err, refused
        assert "nothing was imported" in refused.err
        assert navistore(url, "import", str(mine), token=SECRETS["reader"]).status == 5
        assert health(node)["last_seq"] == seq
        assert counts(navistore(url, "import", str(mine), token=SECRETS["writer"]))["kept"] == 5
        assert navistore(url, "backup", str(tmp_path / "x.db"), token=SECRETS["writer"]).status == 5


# -- consul ---------------------------------------------------------------------------------------


def test_a_consul_kv_export_moves_over(tmp_path: Path) -> None:
    document = [
        {"key": "app/", "flags": 0, "value": None},
        {"key": "app/db/host", "flags": 0, "value": base64.b64encode(b"db1.lan").decode()},
        {"key": "app/blob", "flags": 7, "value": base64.b64encode(b"\x00\x01\xff").decode()},
        {"key": "top", "flags": 0, "value": ""},
    ]
    path = tmp_path / "consul.json"
    path.write_text(json.dumps(document, indent="\t"))
    with started(tmp_path, "a") as node:
        node.wait_listening()
        done = navistore(url_of(node), "import", "--consul", str(path))
        assert counts(done) == {"records": 3, "applied": 3, "kept": 0}
        assert "1 key(s) have non-zero flags" in done.err and "1 folder(s) skipped" in done.err
        assert node.request("GET", "/app/db/host")[1] == b"db1.lan"
        assert node.request("GET", "/app/blob")[1] == b"\x00\x01\xff"
        assert node.request("GET", "/top")[:2] == (200, b"")
        assert node.request("GET", "/app/")[0] == 200
        keys = json.loads(node.request("GET", "/_keys")[1])["keys"]
        assert keys == ["/app/blob", "/app/db/host", "/top"]


# -- backup and restore ---------------------------------------------------------------------------


def test_backup_while_writes_run_and_a_node_started_on_the_copy(tmp_path: Path) -> None:
    with started(tmp_path, "a") as node:
        node.wait_listening()
        bulk(node, [{"key": f"/seq/{index:06d}", "value": "x" * 100} for index in range(20_000)])
        node_id = health(node)["node_id"]
        written = [20_000]
        stop = threading.Event()

        def writer() -> None:
            # One key after the other, each acknowledged before the next is sent.
            while not stop.is_set():
                key = f"/seq/{written[0]:06d}"
                status, _, _ = request(node.port, "PUT", key, b"x" * 100)
                assert status == 201
                written[0] += 1

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            wait_until(lambda: written[0] > 20_050, "writes to run")
            copy = tmp_path / "copy.db"
            done = navistore(url_of(node), "backup", str(copy))
            during = written[0]
            wait_until(lambda: written[0] > during + 50, "writes after the backup")
        finally:
            stop.set()
            thread.join()
        assert done.status == 0, done
        assert done.out.decode().startswith(f"{copy}: node {node_id}, seq ")
        assert not [path.name for path in copy.parent.iterdir() if path.suffix == ".part"]
        assert not [path for path in (tmp_path / "a").iterdir() if ".backup-" in path.name]
        with sqlite3.connect(copy) as connection:
            keys = [row[0] for row in connection.execute("SELECT key FROM records ORDER BY key")]
        # Consistent: one commit's state holds exactly the first N keys written.
        assert keys == [f"/seq/{index:06d}" for index in range(len(keys))]
        assert 20_050 < len(keys) < written[0]

        restored_dir = tmp_path / "restored"
        restored_dir.mkdir()
        copy.rename(restored_dir / "restored.db")
        with running(twistd("sqlite:restored.db"), restored_dir) as restored:
            restored.wait_listening()
            assert health(restored)["node_id"] == node_id
            assert health(restored)["last_seq"] == len(keys)
            out = restored_dir / "all.jsonl"
            assert navistore(url_of(restored), "export", "-o", str(out)).status == 0
            assert [record["key"] for record in records_of(out)] == keys
            for key in keys[:: len(keys) // 50]:
                assert restored.request("GET", key)[:2] == (200, b"x" * 100)


def test_backup_of_a_memory_node_is_refused(tmp_path: Path) -> None:
    with running(twistd("memory:"), tmp_path) as node:
        node.wait_listening()
        done = navistore(url_of(node), "backup", str(tmp_path / "x.db"))
        assert done.status == 3 and "export the records instead" in done.err
        assert not (tmp_path / "x.db").exists()
        assert not [path for path in tmp_path.iterdir() if path.suffix == ".part"]

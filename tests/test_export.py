"""Export, import and backup in one process: the line format, ``/_export`` and ``/_import``
through a real Site in memory (StubTreq), a slow reader on a real socket, and ``/_backup``
of a sqlite node while writes go on. Real processes and the ``navistore`` commands are
``tests/test_e2e_export.py``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from support.api import Api, api_resource
from support.rawhttp import connect, listen
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from navistore.backend.memory import MemoryBackend
from navistore.backend.sqlite import SqliteBackend
from navistore.backend.sqlite_backup import take_backup
from navistore.clock import Stamp
from navistore.protocol.export_format import (
    End,
    Entry,
    Header,
    InvalidLine,
    end_line,
    entry_line,
    header_line,
    line_limit,
    parse_line,
    record_line,
)
from navistore.record import Record
from navistore.scripts.node_client import USAGE, Failed
from navistore.scripts.transfer import Progress, consul_lines
from navistore.store import Store
from navistore.tokens import parse_tokens
from navistore.watch_hub import WatchHub
from navistore.web import AccessPolicy, make_site
from navistore.web.backup import BackupEndpoint
from navistore.web.export import EXPORT_PAGE, ExportEndpoints

MAX_VALUE_SIZE = 4096
NODE = "0123456789abcdef"


def stamp(wall_ms: int, node: str = NODE) -> Stamp:
    return Stamp(wall_ms, 0, node)


# -- the line format ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoding"),
    [
        (b"plain text", "utf-8"),
        ("h\u00e9llo \u2713".encode(), "utf-8"),
        (b"a few\nlines\tand tabs", "utf-8"),
        (b"\x00\xff\xfe binary", "base64"),
        (b"\x01" * 300, "base64"),  # valid UTF-8, but six bytes a character in JSON
        (b"", "utf-8"),
    ],
)
def test_record_lines_round_trip(value: bytes, encoding: str) -> None:
    """A record's line decodes to the same key, value, content type and stamp; values are text
    when that is no longer than base64, else base64."""
    record = Record("/a/b", value, "text/plain", stamp(1_700_000_000_000))
    line = record_line(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["encoding"] == encoding
    decoded = parse_line(line, 2)
    assert decoded == Entry("/a/b", value, "text/plain", record.stamp, False)


def test_tombstones_and_lines_without_stamps() -> None:
    tombstone = Record.tombstone("/gone", stamp(5))
    assert parse_line(record_line(tombstone), 3) == Entry("/gone", b"", "", stamp(5), True)
    assert parse_line(entry_line("/new", b"v"), 4) == Entry("/new", b"v", None, None, False)


def test_the_longest_value_fits_the_line_limit() -> None:
    """The worst value at the limit (bytes that escape in JSON, or binary) and a long key stay
    within :func:`line_limit`, so a node never refuses a line another node exported."""
    for value in (b"\x01" * MAX_VALUE_SIZE, b"\xff" * MAX_VALUE_SIZE, b'"' * MAX_VALUE_SIZE):
        line = record_line(Record("/" + "k" * 1000, value, "x/y", stamp(1)))
        assert len(line) - 1 <= line_limit(MAX_VALUE_SIZE)


def test_header_and_end_lines() -> None:
    header = header_line(node_id=NODE, seq=7, prefix="/a/", prefixes=["/a/"], purged_before=0)
    assert parse_line(header, 1) == Header(1, NODE, 7, "/a/")
    assert parse_line(end_line(3, 9), 5) == End(3, 9)
    assert parse_line(b"   \n", 4) is None


@pytest.mark.parametrize(
    ("line", "number", "message"),
    [
        (b'{"format": "navistore-export", "version": 2}', 1, "version 2"),
        (b'{"key": "/a", "value": "x"}', 1, "no Navistore export"),
        (b"", 1, "it is empty"),
        (b"[1, 2]", 2, "not list"),
        (b'{"key": "/a", "value": "x"', 2, "not JSON"),
        (b'{"key": "/a", "value": "x", "flags": 3}', 2, "need the record's stamp"),
        (b'{"key": "/a", "value": "x", "owner": 3}', 2, "unknown field(s) owner"),
        (b'{"key": "/a", "deleted": true}', 2, "needs its stamp"),
        (b'{"key": "/a", "value": "x", "stamp": "soon"}', 2, '"stamp"'),
        (b'{"key": "/a", "value": "!!", "encoding": "base64"}', 2, "not valid base64"),
        (b'{"key": "/a"}', 2, '"value" is missing'),
        (b'{"end": "navistore-export", "records": -1}', 2, "whole numbers"),
        (b'{"format": "navistore-export", "version": 1}', 3, "first line only"),
        (b'{"value": "x"}', 2, 'needs a "key"'),
        (b'{"key": "/a", "value": "\\u00e9"}\xff', 2, "not UTF-8"),
    ],
)
def test_invalid_lines_name_their_number(line: bytes, number: int, message: str) -> None:
    with pytest.raises(InvalidLine) as refused:
        parse_line(line, number)
    assert refused.value.line == number
    assert message in str(refused.value)
    assert str(refused.value).startswith(f"line {number}:")


# -- the CLI's pieces -----------------------------------------------------------------------------


def test_consul_lines() -> None:
    """``consul kv export``: keys get their leading slash, folders are skipped, flags counted."""
    document = [
        {"key": "app/db", "flags": 0, "value": base64.b64encode(b"db1").decode()},
        {"key": "app/", "flags": 0, "value": None},
        {"key": "app/bin", "flags": 42, "value": base64.b64encode(b"\x00\xff").decode()},
        {"key": "empty", "flags": 0, "value": ""},
    ]
    lines, folders, flagged = consul_lines(json.dumps(document).encode(), "kv.json")
    assert (folders, flagged) == (1, 1)
    entries = [parse_line(line, 2) for _label, line in lines]
    assert entries == [
        Entry("/app/db", b"db1", None, None, False),
        Entry("/app/bin", b"\x00\xff", None, None, False),
        Entry("/empty", b"", None, None, False),
    ]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"key": "a"}, "not a consul kv export"),
        ([{"key": "a/", "value": "eA=="}], "never ends in /"),
        ([{"key": "_x", "value": "eA=="}], "reserved"),
        ([{"key": "a", "value": "*"}], "not base64"),
        ([{"flags": 0}], 'no "key"'),
    ],
)
def test_consul_entries_navistore_cannot_take_are_usage_errors(document: Any, message: str) -> None:
    with pytest.raises(Failed) as failed:
        consul_lines(json.dumps(document).encode(), "kv.json")
    assert failed.value.status == USAGE
    assert message in str(failed.value)


def test_progress_draws_only_on_a_terminal() -> None:
    now = [0.0]
    quiet = io.StringIO()
    Progress(quiet, "import", 100, clock=lambda: now[0]).advance(10, 50)
    assert quiet.getvalue() == ""
    shown = io.StringIO()
    progress = Progress(shown, "import", 1000, enabled=True, clock=lambda: now[0])
    now[0] = 2.0
    progress.advance(100, 500)
    assert "50.0%" in shown.getvalue() and "100 lines (50/s)" in shown.getvalue()
    assert "250 B/s" in shown.getvalue() and "2 s left" in shown.getvalue()
    progress.advance(1, 1)  # within a tenth of a second: not redrawn
    assert "101 lines" not in shown.getvalue()
    progress.finish()
    assert shown.getvalue().endswith("\n") and "101 lines" in shown.getvalue()


# -- /_export and /_import through a Site ---------------------------------------------------------

SECRETS = {"reader": "reader-secret-0000000", "writer": "writer-secret-0000000"}
TOKENS = f"""
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


class ExportApi(Api):
    """A node's API with the export endpoints (and the backup one)."""

    def __init__(self, store: Store, access: AccessPolicy | None = None) -> None:
        endpoints = ExportEndpoints(store, max_value_size=MAX_VALUE_SIZE).endpoints()
        endpoints.update(BackupEndpoint(store, take=take_backup).endpoints())
        options: dict[str, Any] = {"access": access} if access is not None else {}
        resource = api_resource(
            store, max_value_size=MAX_VALUE_SIZE, extra_endpoints=endpoints, **options
        )
        super().__init__(resource, pump=True)

    async def export(self, prefix: str = "/", **headers: str) -> list[Any]:
        answer = await self.request("GET", "/_export", headers=headers, params={"prefix": prefix})
        assert answer.status == 200, answer
        assert answer.header("Content-Type") == "application/x-ndjson"
        return [json.loads(line) for line in answer.body.splitlines()]

    async def import_(self, body: bytes, **params: str) -> Any:
        return await self.request("POST", "/_import", body, params=params)


async def fill(store: Store) -> None:
    """Three live keys (text, binary) and a tombstone."""
    await store.put("/a/text", b"hello", "text/plain")
    await store.put("/a/bin", b"\x00\xff", None)
    await store.put("/b/other", b"x")
    await store.put("/a/gone", b"soon")
    await store.delete("/a/gone")


async def contents(store: Store) -> dict[str, tuple[bytes, str, str, bool]]:
    """Every record with tombstones: value, content type, stamp, deleted."""
    page = await store.changes(0, limit=10_000)
    return {
        record.key: (record.value, record.content_type, record.stamp.encode(), record.deleted)
        for record in page.records
    }


def as_body(lines: list[Any]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


@pytest_twisted.ensureDeferred
async def test_export_streams_header_records_and_end(store: Store) -> None:
    await fill(store)
    api = ExportApi(store)
    lines = await api.export()
    header, *records, end = lines
    assert header["format"] == "navistore-export" and header["version"] == 1
    assert (header["node_id"], header["seq"], header["prefix"]) == (store.node_id, 5, "/")
    assert end == {"end": "navistore-export", "records": 4, "seq": 5}
    by_key = {record["key"]: record for record in records}
    assert by_key["/a/gone"]["deleted"] is True
    assert by_key["/a/bin"]["encoding"] == "base64"
    assert by_key["/a/text"]["content_type"] == "text/plain"
    assert [line["key"] for line in (await api.export("/b/"))[1:-1]] == ["/b/other"]


@pytest_twisted.ensureDeferred
async def test_import_into_a_fresh_node_is_equal_and_twice_changes_nothing(store: Store) -> None:
    await fill(store)
    exported = as_body(await ExportApi(store).export())
    fresh = await Store.open(MemoryBackend())
    api = ExportApi(fresh)
    answer = await api.import_(exported)
    assert answer.status == 200, answer
    assert answer.json() == {
        "lines": 6,
        "records": 4,
        "applied": 4,
        "kept": 0,
        "node_id": fresh.node_id,
        "source": store.node_id,
    }
    assert await contents(fresh) == await contents(store)
    seq = await fresh.last_seq()
    again = await api.import_(exported)
    assert (again.json()["applied"], again.json()["kept"]) == (0, 4)
    assert await fresh.last_seq() == seq  # nothing written at all
    # An imported record is as if received from its writer: its chain starts there.
    assert (await fresh.backend.get("/a/text")).chain == (store.node_id,)
    # The clock moved past the imported stamps: a new write wins over them.
    written = await fresh.put("/a/text", b"newer")
    assert written.record.stamp > (await store.get("/a/text")).stamp


@pytest_twisted.ensureDeferred
async def test_an_older_import_never_rolls_a_newer_value_back(store: Store) -> None:
    await fill(store)
    old = as_body(await ExportApi(store).export())
    await store.put("/a/text", b"newer")
    await store.put("/a/gone", b"back again")
    await store.delete("/a/bin")
    before = await contents(store)
    answer = await ExportApi(store).import_(old)
    assert answer.json()["kept"] == 4
    assert await contents(store) == before


@pytest_twisted.ensureDeferred
async def test_lines_without_stamps_are_new_writes(store: Store) -> None:
    await store.put("/c/a", b"old")
    body = header_line(node_id=None, seq=None, source="consul") + entry_line("/c/a", b"new")
    body += entry_line("c/b", b"\x00", "application/x-y")  # a key in its short form
    answer = await ExportApi(store).import_(body)
    assert (answer.json()["applied"], answer.json()["source"]) == (2, None)
    assert (await store.get("/c/a")).value == b"new"
    assert (await store.get("/c/b")).content_type == "application/x-y"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"key": "/_reserved", "value": "x"}, "reserved"),
        ({"key": "/a/big", "value": "x" * (MAX_VALUE_SIZE + 1)}, "the limit is 4096"),
        ({"key": "/a/t", "value": "x", "content_type": "a\nb"}, "content_type"),
        ({"key": "/a/f", "value": "x", "stamp": "ffffffffffff-000000-0123456789abcdef"}, "ahead"),
        ({"format": "navistore-export", "version": 1}, "first line only"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_an_invalid_line_is_a_400_naming_it_and_nothing_is_applied(
    store: Store, bad: dict[str, Any], message: str
) -> None:
    good = [{"key": f"/a/{index}", "value": "v"} for index in range(3)]
    lines = [{"format": "navistore-export", "version": 1}, *good, bad, *good]
    answer = await ExportApi(store).import_(as_body(lines))
    assert answer.status == 400, answer
    document = answer.json()
    assert document["error"] == "invalid_import_line"
    assert document["detail"]["line"] == 5 and document["detail"]["applied"] == 0
    assert (
        message in document["message"]
        and "nothing of this import was applied" in (document["message"])
    )
    assert await store.last_seq() == 0


@pytest_twisted.ensureDeferred
async def test_lines_after_the_end_a_long_line_and_an_empty_body_are_refused(
    store: Store,
) -> None:
    api = ExportApi(store)
    header = header_line(node_id=None, seq=None)
    after_end = header + end_line(0, None) + entry_line("/a", b"x")
    answer = await api.import_(after_end)
    assert (answer.status, answer.json()["detail"]["line"]) == (400, 3)
    assert "ended at line 2" in answer.json()["message"]
    long = header + b'{"key": "/a", "value": "' + b"x" * line_limit(MAX_VALUE_SIZE) + b'"}\n'
    answer = await api.import_(long)
    assert (answer.status, answer.json()["detail"]["line"]) == (400, 2)
    assert "longer than" in answer.json()["message"]
    answer = await api.import_(b"")
    assert (answer.status, answer.json()["detail"]["line"]) == (400, 1)
    wrong = await api.import_(b'{"format": "navistore-export", "version": 9}\n')
    assert "version 9" in wrong.json()["message"]
    assert await store.last_seq() == 0


@pytest_twisted.ensureDeferred
async def test_dry_run_checks_and_applies_nothing(store: Store) -> None:
    body = header_line(node_id=None, seq=None) + entry_line("/a", b"x") + end_line(1, None)
    answer = await ExportApi(store).import_(body, dry_run="true")
    assert answer.json() == {"lines": 3, "records": 1, "dry_run": True}
    assert await store.last_seq() == 0


@pytest_twisted.ensureDeferred
async def test_tokens_export_only_the_callers_prefixes_and_import_needs_write_on_each_key(
    store: Store,
) -> None:
    await fill(store)
    api = ExportApi(store, AccessPolicy(tokens=parse_tokens(TOKENS)))
    reader = {"Authorization": f"Bearer {SECRETS['reader']}"}
    writer = {"Authorization": f"Bearer {SECRETS['writer']}"}
    lines = await api.export("/", **reader)
    assert lines[0]["prefixes"] == ["/a/"]
    assert sorted(line["key"] for line in lines[1:-1]) == ["/a/bin", "/a/gone", "/a/text"]
    body = as_body(lines)
    refused = await api.request("POST", "/_import", body, headers=reader)
    assert (refused.status, refused.json()["detail"]["permission"]) == (403, "write")
    anonymous = await api.request("GET", "/_export")
    assert anonymous.status == 401
    seq = await store.last_seq()
    outside = as_body(lines[:-1]) + entry_line("/b/x", b"y") + entry_line("/a/late", b"z")
    answer = await api.request("POST", "/_import", outside, headers=writer)
    assert answer.status == 403, answer
    assert answer.json()["detail"]["line"] == 5 and answer.json()["detail"]["key"] == "/b/x"
    assert await store.last_seq() == seq
    answer = await api.request("POST", "/_import", body, headers=writer)
    assert (answer.status, answer.json()["kept"]) == (200, 3)
    backup = await api.request("GET", "/_backup", headers=writer)
    assert (backup.status, backup.json()["detail"]["permission"]) == (403, "admin")


@pytest_twisted.ensureDeferred
async def test_backup_of_a_node_not_on_sqlite_is_a_409(store: Store) -> None:
    answer = await ExportApi(store).get("/_backup")
    assert (answer.status, answer.json()["error"]) == (409, "backup_unsupported")
    assert "/_export" in answer.json()["message"]


# -- a slow reader --------------------------------------------------------------------------------


class CountingBackend(MemoryBackend):
    """Counts the pages of the change feed read."""

    pages = 0

    def changes(self, *args: Any, **kwargs: Any) -> Deferred[list[Record]]:
        self.pages += 1
        return super().changes(*args, **kwargs)


@pytest_twisted.ensureDeferred
async def test_an_export_reads_no_further_than_a_slow_client_takes(reactor: Any) -> None:
    """A client that stops reading holds the export at the page the transport cannot take:
    the node reads no further pages (holds no more) until it reads again, then gets all."""
    backend = CountingBackend()
    store = await Store.open(backend, max_value_size=MAX_VALUE_SIZE)
    total = 40 * EXPORT_PAGE  # 40 pages of 1,000 keys, 1 KiB each: 40 MiB of lines
    value = b"v" * 1024
    for start in range(0, total, 1000):
        await store.put_many(
            [(f"/k/{index:06d}", value, None) for index in range(start, start + 1000)]
        )
    endpoints = ExportEndpoints(store, max_value_size=MAX_VALUE_SIZE).endpoints()
    site = make_site(
        store,
        watch_hub=WatchHub(store, clock=reactor),
        reactor=reactor,
        access=AccessPolicy.open(),
        max_value_size=MAX_VALUE_SIZE,
        extra_endpoints=endpoints,
    )
    server = await listen(store, site, reactor)
    try:
        client = await connect(server)
        client.chunks = []
        client.dataReceived = client.chunks.append  # type: ignore[method-assign]
        assert client.transport is not None
        client.transport.pauseProducing()  # read nothing
        client.send(b"GET /_export HTTP/1.1\r\nHost: localhost\r\n\r\n")
        for _ in range(50):
            await deferLater(reactor, 0.02, lambda: None)
        stalled = backend.pages
        assert stalled <= 6, f"{stalled} pages read for a client that reads nothing"
        for _ in range(25):
            await deferLater(reactor, 0.02, lambda: None)
        assert backend.pages == stalled
        client.transport.resumeProducing()
        for _ in range(1000):
            if b'{"end":"navistore-export"' in b"".join(client.chunks[-2:])[-200:]:
                break
            await deferLater(reactor, 0.02, lambda: None)
        assert backend.pages > 40
        assert b"".join(client.chunks).count(b'"key":"/k/') == total
        client.transport.loseConnection()
    finally:
        await server.stop()


# -- backup ---------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_backup_taken_while_writes_run_is_consistent_and_opens(
    tmp_path: Path, reactor: Any
) -> None:
    """Keys written one after another while the copy is taken: the copy holds exactly the
    first N of them for some N (one commit's state), and a node opens it with the same id."""
    store = await Store.open(SqliteBackend(tmp_path / "node.db"))
    for index in range(2000):
        await store.put(f"/seq/{index:06d}", b"x" * 100)
    writing = True
    written = [2000]

    async def writer() -> None:
        while writing:
            await store.put(f"/seq/{written[0]:06d}", b"x" * 100)
            written[0] += 1

    running = Deferred.fromCoroutine(writer())
    await deferLater(reactor, 0.05, lambda: None)
    api = ExportApi(store)
    answer = await api.get("/_backup")
    writing = False
    await running
    assert answer.status == 200, answer
    assert answer.header("Content-Type") == "application/vnd.sqlite3"
    assert answer.length == len(answer.body)  # the Content-Length sent
    copy = tmp_path / "copy.db"
    copy.write_bytes(answer.body)
    assert not [name for name in os.listdir(tmp_path) if ".backup-" in name]  # removed
    with sqlite3.connect(copy) as connection:
        keys = [row[0] for row in connection.execute("SELECT key FROM records ORDER BY key")]
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert keys == [f"/seq/{index:06d}" for index in range(len(keys))]
    assert 2000 <= len(keys) <= written[0]
    assert int(answer.header("X-Navistore-Seq") or 0) == len(keys)
    restored = await Store.open(SqliteBackend(copy))
    assert restored.node_id == store.node_id == answer.header("X-Navistore-Node-Id")
    assert await restored.last_seq() == len(keys)
    await restored.close()
    await store.close()


@pytest_twisted.ensureDeferred
async def test_a_body_too_large_to_keep_decoded_is_read_again(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``KEEP_DECODED`` the second pass reads and decodes the body again (keys in their
    short form worked out again too), with the same outcome."""
    import navistore.web.export as export_module

    monkeypatch.setattr(export_module, "KEEP_DECODED", 100)
    await fill(store)
    lines = await ExportApi(store).export()
    lines.insert(-1, {"key": "a/short", "value": "s"})
    fresh = await Store.open(MemoryBackend())
    answer = await ExportApi(fresh).import_(as_body(lines))
    assert (answer.json()["applied"], answer.json()["records"]) == (5, 5)
    assert (await fresh.get("/a/short")).value == b"s"
    assert {k: v for k, v in (await contents(fresh)).items() if k != "/a/short"} == (
        await contents(store)
    )


# -- cache nodes, and a backup whose client goes away ------------------------------------------


class Forwarder:
    """A cache node's upstream: records what it was sent, answers 200."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def forward(self, write: Any) -> Any:
        from navistore.hooks import ForwardedAnswer

        self.sent.append(write)
        return ForwardedAnswer(200, {b"Content-Type": b"application/json"}, b'{"lines": 1}')


@pytest_twisted.ensureDeferred
async def test_a_cache_node_forwards_imports_and_refuses_exports(store: Store) -> None:
    forwarder = Forwarder()
    endpoints = ExportEndpoints(
        store, max_value_size=MAX_VALUE_SIZE, write_forwarder=forwarder
    ).endpoints()
    endpoints.update(BackupEndpoint(store, take=take_backup, cache_node=True).endpoints())
    api = Api(
        api_resource(
            store,
            max_value_size=MAX_VALUE_SIZE,
            extra_endpoints=endpoints,
            write_forwarder=forwarder,
        ),
        pump=True,
    )
    body = header_line(node_id=None, seq=None) + entry_line("/a", b"x")
    answer = await api.request("POST", "/_import", body)
    assert (answer.status, answer.body) == (200, b'{"lines": 1}')
    assert forwarder.sent[0].body == body and forwarder.sent[0].method == "POST"
    assert await store.last_seq() == 0
    for path in ("/_export", "/_backup"):
        refused = await api.get(path)
        assert (refused.status, refused.json()["error"]) == (409, "cache_node")


class FakeRequest:
    """What the backup handler asks of a request before it answers."""

    def __init__(self) -> None:
        self.finished: list[Deferred[None]] = []

    def notifyFinish(self) -> Deferred[None]:
        self.finished.append(Deferred())
        return self.finished[-1]


@pytest_twisted.ensureDeferred
async def test_one_backup_at_a_time_and_a_copy_nobody_waits_for_is_removed(
    tmp_path: Path,
) -> None:
    from navistore.backend.sqlite_backup import Backup

    store = await Store.open(SqliteBackend(tmp_path / "node.db"))
    taking: list[Deferred[Any]] = []

    def in_thread(function: Any, *args: Any) -> Deferred[Any]:
        taking.append(Deferred())
        return taking[-1]

    endpoint = BackupEndpoint(store, take=take_backup, in_thread=in_thread)
    first = Deferred.fromCoroutine(endpoint.backup(FakeRequest()))  # type: ignore[arg-type]
    with pytest.raises(Exception) as running:
        await endpoint.backup(FakeRequest())  # type: ignore[arg-type]
    assert getattr(running.value, "code", None) == "backup_running"
    first.cancel()  # the client went away while the copy was being taken
    first.addErrback(lambda _: None)
    assert not endpoint.running
    copy = tmp_path / ".node.db.backup-x.tmp"
    copy.write_bytes(b"a copy")
    taking[0].callback(Backup(str(copy), 6, store.node_id, 0))
    assert not copy.exists()
    # The next backup runs, and its copy goes once its answer is done.
    request = FakeRequest()
    second = Deferred.fromCoroutine(endpoint.backup(request))  # type: ignore[arg-type]
    copy.write_bytes(b"a copy")
    taking[1].callback(Backup(str(copy), 6, store.node_id, 0))
    response = await second
    assert not copy.exists() and endpoint.running  # unlinked once open; still being sent
    assert response.stream is not None
    assert [chunk async for chunk in response.stream] == [b"a copy"]
    request.finished[0].callback(None)
    assert not endpoint.running
    await store.close()

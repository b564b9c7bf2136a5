"""The ``navistore`` command: argument parsing, and every command against real nodes.

The commands run in this process (``build_parser`` and ``run``, with the exit status and the
message taken from :class:`Failed` as ``main`` does, on streams of their own) against a real
``twistd navistore`` node on 127.0.0.1: the client speaks HTTP with the standard library, so
nothing about the node is faked. What only a process shows runs as ``python -m
navistore.scripts.client`` (what the console script calls): the exit statuses a shell sees, and
binary stdin and stdout through real pipes. ``watch`` runs as a process too, writing to a file
the test reads while it runs (so each line must be flushed as it is printed), against a real
node (across a restart of it) and against a scripted fake node that loses connections and asks
for a resync, which a real node cannot be made to do on cue.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from support.processes import (
    Server,
    running,
    source_env,
    stop_process,
    twistd,
    wait_until,
)

from navistore.scripts.client import (
    DEFAULT_URL,
    Failed,
    Streams,
    build_parser,
    exit_status,
    run,
)

#: How long one command run as a process may take.
COMMAND_TIMEOUT = 30
#: What ``python -m`` runs: the module the console script's ``main`` lives in.
CLIENT_MODULE = [sys.executable, "-m", "navistore.scripts.client"]


@dataclass(frozen=True)
class Done:
    """What one command did: its exit status, its stdout (bytes) and its stderr (text)."""

    status: int
    out: bytes
    err: str


def navistore(
    url: str, *arguments: str, stdin: bytes = b"", environ: dict[str, str] | None = None
) -> Done:
    """Run ``navistore --url URL ARGUMENTS`` in this process (``url`` empty: no ``--url``, the
    node comes from ``environ``, by default empty) as ``main`` does: a :class:`Failed` becomes
    its exit status and ``navistore: MESSAGE`` on stderr. Reads and writes streams of its own,
    never this process's stdin or stdout."""
    argv = ["--url", url, *arguments] if url else list(arguments)
    args = build_parser({} if environ is None else environ).parse_args(argv)
    out, err = io.BytesIO(), io.StringIO()
    status = 0
    try:
        run(args, Streams(io.BytesIO(stdin), out, err))
    except Failed as exc:
        print(f"navistore: {exc}", file=err)
        status = exc.status
    return Done(status, out.getvalue(), err.getvalue())


def navistore_process(
    *arguments: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m navistore.scripts.client ARGUMENTS`` to completion through pipes."""
    return subprocess.run(
        [*CLIENT_MODULE, *arguments],
        input=stdin,
        capture_output=True,
        timeout=COMMAND_TIMEOUT,
        env=env or source_env(),
        check=False,
    )


def free_port() -> int:
    """A loopback port nothing listens on (just released by the kernel)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def url_of(server: Server) -> str:
    """The node's URL."""
    return f"http://127.0.0.1:{server.port}"


def last_seq(server: Server) -> int:
    """The node's newest seq, from ``/_health``."""
    return int(json.loads(server.request("GET", "/_health")[1])["last_seq"])


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One node for the module's commands."""
    with running(twistd("memory:"), tmp_path_factory.mktemp("cli-node")) as server:
        server.wait_listening()
        yield server


# -- parsing ------------------------------------------------------------------------------------


def test_url_defaults_to_the_environment_then_the_classic_port() -> None:
    """``--url`` wins over ``$NAVISTORE_URL``, which wins over ``http://127.0.0.1:8888``."""
    assert build_parser({}).parse_args(["health"]).url == DEFAULT_URL
    from_env = build_parser({"NAVISTORE_URL": "http://10.0.0.2:9000"})
    assert from_env.parse_args(["health"]).url == "http://10.0.0.2:9000"
    assert from_env.parse_args(["--url", "http://h:1", "health"]).url == "http://h:1"


def test_commands_and_their_options_parse() -> None:
    """Each command takes its documented arguments and defaults."""
    parser = build_parser({})
    put = parser.parse_args(["put", "k", "--content-type", "text/plain", "--create"])
    assert (put.key, put.value, put.content_type, put.create) == ("k", None, "text/plain", True)
    assert parser.parse_args(["put", "k", "-"]).value == "-"
    assert parser.parse_args(["rm", "-r", "doc"]).recursive is True
    assert parser.parse_args(["ls"]).prefix == "/"
    assert parser.parse_args(["ls", "/a/", "--page-size", "7"]).page_size == 7
    watch = parser.parse_args(["watch", "/w/", "--since", "12"])
    assert (watch.prefix, watch.since, watch.poll_timeout) == ("/w/", 12, 30)
    assert parser.parse_args(["watch"]).since is None
    assert parser.parse_args(["peers", "--json"]).json is True


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param([], id="no-command"),
        pytest.param(["frobnicate"], id="unknown-command"),
        pytest.param(["get"], id="missing-key"),
        pytest.param(["ls", "--page-size", "0"], id="zero-page"),
        pytest.param(["watch", "--since", "soon"], id="bad-since"),
    ],
)
def test_usage_errors_exit_2(arguments: list[str]) -> None:
    """Bad arguments are a usage error: exit status 2 with a message on stderr."""
    with pytest.raises(SystemExit) as raised:
        build_parser({}).parse_args(arguments)
    assert raised.value.code == 2


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (200, None, 0),
        (201, None, 0),
        (404, "not_found", 1),
        (404, "unknown_endpoint", 3),
        (400, "invalid_key", 3),
        (409, "conflict", 3),
        (412, "precondition_failed", 3),
        (413, "value_too_large", 3),
        (500, "internal_error", 4),
        (503, "backend_unavailable", 4),
        (504, "replicas_timeout", 4),
    ],
)
def test_exit_status_of_http_answers(status: int, error: str | None, expected: int) -> None:
    """Each HTTP answer maps to the documented exit status."""
    assert exit_status(status, error) == expected


def test_help_documents_the_exit_statuses() -> None:
    """``--help`` lists every exit status a script may test."""
    help_text = build_parser({}).format_help()
    for text in ("0 done", "1 not found", "2 usage error", "3 refused", "4 node unreachable"):
        assert text in help_text.replace("\n", " ")


# -- against a real node ------------------------------------------------------------------------


@pytest.mark.e2e
def test_put_and_get_store_and_print_values_exactly(node: Server) -> None:
    """``put KEY -`` stores stdin's bytes exactly, with ``--content-type``; ``get`` writes them
    back exactly; ``put KEY VALUE`` and ``put KEY`` (stdin) work too; success prints nothing."""
    value = bytes(range(256)) * 3
    done = navistore(url_of(node), "put", "bin/blob", "-", "--content-type", "image/x", stdin=value)
    assert done == Done(0, b"", "")
    assert navistore(url_of(node), "get", "/bin/blob") == Done(0, value, "")
    _status, _body, response = node.request("GET", "/bin/blob")
    assert response.getheader("Content-Type") == "image/x"
    assert navistore(url_of(node), "put", "bin/text", "h\u00e9llo").status == 0
    assert navistore(url_of(node), "get", "bin/text").out == "h\u00e9llo".encode()
    assert navistore(url_of(node), "put", "bin/stdin", stdin=b"piped\n").status == 0
    assert navistore(url_of(node), "get", "bin/stdin").out == b"piped\n"


@pytest.mark.e2e
def test_get_missing_key_exits_1_with_a_message(node: Server) -> None:
    """``get`` of a missing key exits 1, prints nothing on stdout and says why on stderr."""
    got = navistore(url_of(node), "get", "never/written")
    assert (got.status, got.out) == (1, b"")
    assert "/never/written" in got.err


@pytest.mark.parametrize("key", ["a//b", "_health", "bad/../key"])
def test_invalid_keys_exit_2_without_asking_the_node(key: str) -> None:
    """An invalid or reserved key is a usage error (2), found before any request is sent:
    the URL points nowhere, so asking would have been exit 4."""
    got = navistore(f"http://127.0.0.1:{free_port()}", "get", key)
    assert got.status == 2, got.err
    assert "invalid key" in got.err


@pytest.mark.e2e
def test_create_only_put_of_an_existing_key_exits_3(node: Server) -> None:
    """``put --create`` stores a new key, and exits 3 (conflict) when the key exists."""
    assert navistore(url_of(node), "put", "once", "1", "--create").status == 0
    again = navistore(url_of(node), "put", "once", "2", "--create")
    assert again.status == 3
    assert "409" in again.err
    assert navistore(url_of(node), "get", "once").out == b"1"


@pytest.mark.e2e
def test_keys_named_like_a_classic_endpoint_are_usage_errors_and_never_wipe(node: Server) -> None:
    """``reset`` and ``listkeys`` are routes of the classic API, never keys: ``get``, ``put``
    and ``rm`` of them are usage errors (2) and send nothing, so ``GET /reset``, which would
    wipe the node, is never sent."""
    assert navistore(url_of(node), "put", "survivor", "here").status == 0
    for arguments in (
        ["get", "reset"],
        ["get", "/listkeys"],
        ["put", "reset", "x"],
        ["rm", "reset"],
    ):
        refused = navistore(url_of(node), *arguments)
        assert (refused.status, refused.out) == (2, b""), arguments
        assert "route of the classic API" in refused.err
    assert navistore(url_of(node), "get", "survivor").out == b"here"


@pytest.mark.e2e
def test_rm_deletes_a_key_and_rm_r_a_whole_document(node: Server) -> None:
    """``rm`` deletes one key (again: exit 1); ``rm -r`` deletes a document and every
    sub-document, not a sibling sharing its name's start."""
    for key in ("doc", "doc/a", "doc/b/c", "docs/kept", "single"):
        assert navistore(url_of(node), "put", key, "v").status == 0
    assert navistore(url_of(node), "rm", "single").status == 0
    assert navistore(url_of(node), "rm", "single").status == 1
    assert navistore(url_of(node), "rm", "-r", "doc").status == 0
    listed = navistore(url_of(node), "ls", "/doc").out.decode().split()
    assert listed == ["/docs/kept"]
    assert navistore(url_of(node), "rm", "-r", "doc").status == 1


@pytest.mark.e2e
def test_ls_reads_every_page(node: Server) -> None:
    """``ls PREFIX`` prints every key under the prefix once, in order, one per line, across
    pages: small ones, and the default 1000-key pages with more than 1000 keys."""
    keys = [f"/many/{n:04d}" for n in range(1003)]
    entries = [{"key": key, "value": "v"} for key in [*keys, "/manx"]]
    status, body, _response = node.request("POST", "/_bulk", json.dumps(entries).encode())
    assert (status, json.loads(body)) == (200, {"received": 1004, "written": 1004})
    small = navistore(url_of(node), "ls", "many/", "--page-size", "7")
    assert (small.status, small.out.decode().splitlines()) == (0, keys)
    default = navistore(url_of(node), "ls", "/many/")
    assert default.out.decode().splitlines() == keys
    assert "/manx" in navistore(url_of(node), "ls").out.decode().splitlines()


@pytest.mark.e2e
def test_health_and_peers(node: Server) -> None:
    """``health`` prints the node's state (exit 0; ``--json`` the document); ``peers``
    prints a table with a row per peer."""
    health = navistore(url_of(node), "health")
    assert health.status == 0
    assert "status: ok" in health.out.decode()
    document = json.loads(navistore(url_of(node), "health", "--json").out)
    assert document["status"] == "ok"
    peer = f"http://127.0.0.1:{free_port()}"
    assert node.request("PUT", "/_peers", peer.encode())[0] == 201
    try:
        table = navistore(url_of(node), "peers").out.decode().splitlines()
        assert table[0].split()[:3] == ["URL", "ROLE", "STATE"]
        assert [row.split()[:2] for row in table[1:]] == [[peer, "push"]]
        assert json.loads(navistore(url_of(node), "peers", "--json").out)[0]["url"] == peer
    finally:
        node.request("DELETE", f"/_peers?url={peer}")


@pytest.mark.e2e
def test_unreachable_node_exits_4_and_the_url_may_come_from_the_environment(
    node: Server,
) -> None:
    """Nothing listening: exit 4 with a message; ``$NAVISTORE_URL`` names the node when
    ``--url`` is not given."""
    down = navistore(f"http://127.0.0.1:{free_port()}", "get", "k")
    assert down.status == 4
    assert "cannot reach" in down.err
    assert navistore("", "health", environ={"NAVISTORE_URL": url_of(node)}).status == 0


# -- as a process ---------------------------------------------------------------------------------


@pytest.mark.e2e
def test_the_process_exits_with_each_documented_status(node: Server) -> None:
    """Run as a process, the command exits with the documented status, data on stdout and the
    reason on stderr: 0 (``health`` of the node ``$NAVISTORE_URL`` names, no ``--url``), 1 (a
    missing key), 2 (bad arguments), 3 (``put --create`` of an existing key), 4 (nothing
    listening)."""
    assert node.request("PUT", "/process/exists", b"v")[0] == 201
    env = {**source_env(), "NAVISTORE_URL": url_of(node)}
    health = navistore_process("health", env=env)
    assert (health.returncode, health.stderr) == (0, b""), health.stderr
    assert b"status: ok" in health.stdout
    missing = navistore_process("get", "process/never", env=env)
    assert (missing.returncode, missing.stdout) == (1, b"")
    assert missing.stderr.startswith(b"navistore: ")
    assert b"/process/never" in missing.stderr
    usage = navistore_process("frobnicate", env=env)
    assert (usage.returncode, usage.stdout) == (2, b"")
    assert b"usage: navistore" in usage.stderr
    exists = navistore_process("put", "process/exists", "w", "--create", env=env)
    assert exists.returncode == 3
    assert b"409" in exists.stderr
    down = navistore_process("--url", f"http://127.0.0.1:{free_port()}", "get", "k")
    assert down.returncode == 4
    assert b"cannot reach" in down.stderr


@pytest.mark.e2e
def test_binary_values_pass_through_the_process_pipes(node: Server) -> None:
    """``put KEY -`` stores exactly the bytes read from the process's stdin pipe, with
    ``--content-type``, printing nothing; ``get`` writes exactly those bytes to its stdout
    pipe: every byte value, no newline translation, no text decoding."""
    value = bytes(range(256)) * 3 + b"\r\n\n"
    arguments = ("--url", url_of(node))
    put = navistore_process(
        *arguments, "put", "pipe/blob", "-", "--content-type", "image/x", stdin=value
    )
    assert (put.returncode, put.stdout, put.stderr) == (0, b"", b"")
    _status, body, response = node.request("GET", "/pipe/blob")
    assert (body, response.getheader("Content-Type")) == (value, "image/x")
    got = navistore_process(*arguments, "get", "/pipe/blob")
    assert (got.returncode, got.stdout, got.stderr) == (0, value, b"")


# -- watch ----------------------------------------------------------------------------------------


class Watcher:
    """A ``navistore watch`` process writing its output to files (lines show up there only if
    it flushes each one)."""

    def __init__(self, directory: Path, *arguments: str) -> None:
        self.out = directory / "watch.out"
        self.err = directory / "watch.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(
                [*CLIENT_MODULE, *arguments],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=source_env(),
            )

    def lines(self) -> list[str]:
        """What it printed so far."""
        return self.out.read_text().splitlines()

    def wait_for_lines(self, count: int) -> list[str]:
        """Wait until it printed ``count`` lines; fail if it exits first."""

        def printed() -> bool:
            assert self.process.poll() is None, self.err.read_text()
            return len(self.lines()) >= count

        wait_until(printed, f"{count} watch lines", deadline=20)
        return self.lines()


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    """Watch processes started by the test, stopped by PID when it ends."""
    started: list[Watcher] = []
    yield started
    for watcher in started:
        stop_process(watcher.process, timeout=10)


@pytest.mark.e2e
def test_watch_prints_exactly_the_changes_under_its_prefix_across_a_restart(
    tmp_path: Path, watchers: list[Watcher]
) -> None:
    """A watcher prints each put and delete under its prefix once, as ``<seq> <kind> <key>``,
    and nothing from elsewhere; when the node restarts it reconnects and goes on from where
    it was, printing nothing twice."""
    port = free_port()
    command = twistd("sqlite:node.db", port=f"tcp:{port}:interface=127.0.0.1")
    with running(command, tmp_path) as first:
        first.wait_listening()
        url = url_of(first)
        start = last_seq(first)
        watcher = Watcher(
            tmp_path, "--url", url, "watch", "/w/", "--since", str(start), "--poll-timeout", "1"
        )
        watchers.append(watcher)
        # A key changed twice before the watcher reads shows once, at its latest seq (the
        # feed's rule); waiting for each line makes every change its own.
        assert navistore(url, "put", "w/a", "1").status == 0
        watcher.wait_for_lines(1)
        assert navistore(url, "put", "other/x", "2").status == 0
        assert navistore(url, "put", "w/b", "3").status == 0
        watcher.wait_for_lines(2)
        assert navistore(url, "rm", "w/a").status == 0
        lines = watcher.wait_for_lines(3)
        assert [line.split(" ", 1)[1] for line in lines] == [
            "put /w/a",
            "put /w/b",
            "delete /w/a",
        ]
        seqs = [int(line.split()[0]) for line in lines]
        assert seqs == sorted(seqs)
        assert seqs[0] > start
    with running(command, tmp_path) as second:
        second.wait_listening()
        assert navistore(url, "put", "other/y", "4").status == 0
        assert navistore(url, "put", "w/c", "5").status == 0
        lines = watcher.wait_for_lines(4)
        assert lines[3].split(" ", 1)[1] == "put /w/c"
        assert len(watcher.lines()) == 4
        # Whether it saw the restart as a lost connection (and said "reconnected") depends on
        # timing: at shutdown the node answers its long-polls, so the next poll may simply land
        # on the new process. Either way it must not have failed.
        assert "Traceback" not in watcher.err.read_text()


class ScriptedFeed(BaseHTTPRequestHandler):
    """A fake node: ``/_health`` says seq 5; the long poll follows :attr:`script`."""

    #: The ``since`` of every long poll, in order.
    polls: list[int] = []
    #: since -> the answers to give it, in order; "drop" closes the connection unanswered.
    script: dict[int, list[Any]] = {}

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output clean."""

    def do_GET(self) -> None:
        """Answer ``/_health`` or the next scripted answer for this ``since``."""
        parts = urlsplit(self.path)
        if parts.path == "/_health":
            return self.answer(200, {"status": "ok", "last_seq": 5})
        query = parse_qs(parts.query)
        assert query["feed"] == ["longpoll"]
        assert query["prefix"] == ["/w/"]
        since = int(query["since"][0])
        type(self).polls.append(since)
        answers = type(self).script.get(since)
        if not answers:
            return self.answer(200, {"last_seq": since, "results": []})
        status, document = answers.pop(0)
        if status == "drop":
            self.close_connection = True
            return None
        return self.answer(status, document)

    def answer(self, status: int, document: Any) -> None:
        """Send a JSON answer."""
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def change(seq: int, key: str, deleted: bool = False) -> dict[str, Any]:
    """One entry of a change feed answer."""
    stamp = f"{seq:012x}-000000-00000000000000aa"
    return {"seq": seq, "key": key, "stamp": stamp, "deleted": deleted}


@pytest.mark.e2e
def test_watch_resumes_after_lost_connections_and_resyncs_on_410(
    tmp_path: Path, watchers: list[Watcher]
) -> None:
    """Starting from the node's current seq, a watcher that loses its connection (no answer,
    then a 503) asks again from the last seq it printed, printing nothing twice; a 410
    ``resync_required`` is a warning on stderr and it continues from ``detail.last_seq``."""
    ScriptedFeed.polls = []
    ScriptedFeed.script = {
        5: [(200, {"last_seq": 7, "results": [change(6, "/w/a"), change(7, "/w/b")]})],
        7: [
            ("drop", None),
            (503, {"error": "too_many_watchers", "message": "busy"}),
            (200, {"last_seq": 9, "results": [change(9, "/w/a", deleted=True)]}),
        ],
        9: [(410, {"error": "resync_required", "message": "gone", "detail": {"last_seq": 30}})],
        30: [(200, {"last_seq": 31, "results": [change(31, "/w/c")]})],
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedFeed)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        watcher = Watcher(tmp_path, "--url", url, "watch", "/w/", "--poll-timeout", "1")
        watchers.append(watcher)
        assert watcher.wait_for_lines(4) == [
            "6 put /w/a",
            "7 put /w/b",
            "9 delete /w/a",
            "31 put /w/c",
        ]
        wait_until(lambda: len(ScriptedFeed.polls) >= 7, "the watcher to poll again")
        assert ScriptedFeed.polls[:6] == [5, 7, 7, 7, 9, 30]
        assert set(ScriptedFeed.polls[6:]) == {31}
        errors = watcher.err.read_text()
        assert "retrying" in errors
        assert "continuing from seq 30" in errors
    finally:
        server.shutdown()
        server.server_close()


def test_watch_exits_4_when_the_node_is_unreachable_at_start() -> None:
    """A watcher that cannot reach the node when it starts exits 4 instead of waiting."""
    done = navistore(f"http://127.0.0.1:{free_port()}", "watch", "/w/")
    assert (done.status, done.out) == (4, b"")
    assert "cannot reach" in done.err

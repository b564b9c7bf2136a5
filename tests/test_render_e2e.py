"""End to end: ``navistore render`` as a real process against real ``twistd navistore`` nodes.

The renderer is the console script (``navistore render ...``) run from this source tree; the
nodes are sqlite nodes on 127.0.0.1, started and stopped with :mod:`support.processes`. The
tests measure what the README promises: a write reaches the file within a second, a burst of
100 writes reloads once or twice, a node killed and restarted loses no change, a fail-over reads
the new node again, and a failure never replaces a good file.
"""

from __future__ import annotations

import random
import signal
import socket
import ssl
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from support.processes import (
    DEADLINE,
    Server,
    run_to_exit,
    running,
    source_env,
    stop_process,
    twistd,
    url_of,
    wait_until,
)

pytestmark = pytest.mark.e2e


def navistore_command() -> list[str]:
    """The ``navistore`` console script of the Python running the tests."""
    script = Path(sys.executable).parent / "navistore"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "navistore.scripts.client"]


def quiet_port() -> int:
    """A free port below the ephemeral range, for a node restarted on the same port."""
    for _ in range(100):
        port = random.randrange(20_000, 32_000)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port between 20000 and 32000")


def put(server: Server, key: str, value: str) -> None:
    """Write a key (and fail the test if the node refuses)."""
    status, body, _response = server.request("PUT", key, value.encode())
    assert status in (200, 201), body


@contextmanager
def node(directory: Path, port: str | None = None) -> Iterator[Server]:
    """A sqlite node in ``directory`` (its database kept there across restarts)."""
    directory.mkdir(exist_ok=True)
    command = twistd("sqlite:node.db") if port is None else twistd("sqlite:node.db", port=port)
    with running(command, directory) as server:
        server.wait_listening()
        yield server


@contextmanager
def renderer(directory: Path, *arguments: str) -> Iterator[Server]:
    """``navistore render ARGUMENTS`` running in ``directory`` (its stderr in server.out)."""
    directory.mkdir(exist_ok=True)
    with running([*navistore_command(), *arguments], directory) as process:
        yield process


def read(path: Path) -> str | None:
    """A file's text, or None while it does not exist."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def test_a_write_reaches_the_file_within_a_second(tmp_path: Path) -> None:
    """Each of 25 writes under the watched prefix is in the rendered file within 1 s; the
    median and the worst latency are printed (the README's figure)."""
    template = tmp_path / "app.conf.j2"
    template.write_text('value = {{ key("/app/value") }}\n')
    destination = tmp_path / "app.conf"
    with ExitStack() as stack:
        server = stack.enter_context(node(tmp_path / "node"))
        put(server, "/app/value", "initial")
        render = stack.enter_context(
            renderer(
                tmp_path / "r", "--url", url_of(server), "render", "-t", f"{template}:{destination}"
            )
        )
        wait_until(lambda: read(destination) == "value = initial\n", "the first render")
        latencies = []
        for number in range(25):
            started = time.monotonic()
            put(server, "/app/value", f"v{number}")
            expected = f"value = v{number}\n"
            while read(destination) != expected:  # 1 ms resolution, 5 s at most
                assert time.monotonic() - started < 5, f"write {number} not in the file"
                time.sleep(0.001)
            latencies.append(time.monotonic() - started)
            put(server, "/elsewhere/noise", f"n{number}")  # outside the prefix: no render
        # Only the value's changes rendered: the first render and 25 (not the noise outside).
        wait_until(lambda: render.output().count("rendered") >= 26, "the last render's log line")
        time.sleep(0.5)
        assert render.output().count("rendered") == 26, render.output()
        assert render.process.poll() is None, render.output()
    median = statistics.median(latencies)
    print(
        f"\nwrite-to-file latency over {len(latencies)} writes: median {median * 1000:.1f} ms, "
        f"90th percentile {sorted(latencies)[int(len(latencies) * 0.9)] * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms"
    )
    assert max(latencies) < 1.0, latencies


def test_a_burst_of_100_writes_reloads_once_or_twice(tmp_path: Path) -> None:
    """100 writes in a row under the prefix, with ``wait = "500ms:5s"``, end in the file and
    run the reload command once or twice (counted by a command appending to a file), not 100
    times; the reload's exit status and output are logged."""
    template = tmp_path / "servers.j2"
    template.write_text(
        '{% for name, address in tree("/burst/").items() %}{{ name }} {{ address }}\n{% endfor %}'
    )
    destination = tmp_path / "servers.conf"
    reloads = tmp_path / "reloads.log"
    config = tmp_path / "render.toml"
    config.write_text(
        "[[template]]\n"
        f'source = "{template.name}"\n'
        f'destination = "{destination.name}"\n'
        'mode = "0640"\n'
        f'command = "echo reload >> {reloads}; echo reloaded"\n'
        'wait = "500ms:5s"\n'
    )
    with ExitStack() as stack:
        server = stack.enter_context(node(tmp_path / "node"))
        put(server, "/burst/s000", "start")
        render = stack.enter_context(
            renderer(tmp_path / "r", "--url", url_of(server), "render", "--config", str(config))
        )
        wait_until(lambda: read(reloads) == "reload\n", "the first render and its reload")
        assert destination.stat().st_mode & 0o777 == 0o640
        started = time.monotonic()
        for number in range(1, 101):
            put(server, f"/burst/s{number:03}", f"10.0.0.{number}")
        wrote = time.monotonic() - started
        wait_until(lambda: "s100 10.0.0.100" in (read(destination) or ""), "the burst's render")
        time.sleep(1.5)  # room for any extra reload to happen
        output = render.output()
    count = (read(reloads) or "").count("reload") - 1
    print(f"\n100 writes in {wrote:.2f} s ran the reload command {count} time(s)")
    assert 1 <= count <= 2, output
    assert len((read(destination) or "").splitlines()) == 101
    assert "reloaded" in output and "exited 0" in output, output


def test_a_node_killed_and_restarted_loses_no_change(tmp_path: Path) -> None:
    """The renderer's node is killed (SIGKILL) right after a write and restarted on the same
    port and database. While the renderer is reconnecting, the database takes a write (through
    the node started on another port for the moment, so that the renderer cannot have
    reconnected first); once the node is back on its port, another write. All three are in the
    file: the renderer resumed from its seq (the same node), it did not resync."""
    template = tmp_path / "t.j2"
    template.write_text(
        'v={{ key("/app/v") }} w={{ key("/app/w", default="-") }} '
        'x={{ key("/app/x", default="-") }}\n'
    )
    destination = tmp_path / "out.conf"
    port = f"tcp:{quiet_port()}:interface=127.0.0.1"
    with ExitStack() as stack:
        first = stack.enter_context(running(twistd("sqlite:node.db", port=port), tmp_path))
        first.wait_listening()
        put(first, "/app/v", "1")
        url = url_of(first)
        render = stack.enter_context(
            renderer(tmp_path / "r", "--url", url, "render", "-t", f"{template}:{destination}")
        )
        wait_until(lambda: read(destination) == "v=1 w=- x=-\n", "the first render")
        put(first, "/app/v", "2")
        first.process.send_signal(signal.SIGKILL)
        assert first.process.wait(DEADLINE) == -signal.SIGKILL
        wait_until(lambda: "lost" in render.output(), "the renderer to notice")
        with running(twistd("sqlite:node.db"), tmp_path) as elsewhere:
            elsewhere.wait_listening()
            put(elsewhere, "/app/w", "3")
        assert "reached" not in render.output()
        second = stack.enter_context(running(twistd("sqlite:node.db", port=port), tmp_path))
        second.wait_listening()
        assert url_of(second) == url
        put(second, "/app/x", "4")
        wait_until(lambda: read(destination) == "v=2 w=3 x=4\n", "every write in the file")
        output = render.output()
    assert "resuming after seq" in output, output
    assert "reading every template again" not in output, output


def test_fail_over_reads_the_next_node_again(tmp_path: Path) -> None:
    """With ``--url A --url B`` (two independent nodes, A far ahead in seqs), killing A makes
    the renderer read B again (B's value is rendered) and watch B from B's own seq: a write on
    B at a seq far below A's is rendered."""
    template = tmp_path / "t.j2"
    template.write_text('name={{ key("/app/name") }}\n')
    destination = tmp_path / "out.conf"
    with ExitStack() as stack:
        a = stack.enter_context(node(tmp_path / "a"))
        b = stack.enter_context(node(tmp_path / "b"))
        for number in range(30):
            put(a, "/app/name", f"a{number}")
        put(b, "/app/name", "b0")
        arguments = ["render", "--url", url_of(a), "--url", url_of(b)]
        render = stack.enter_context(
            renderer(tmp_path / "r", *arguments, "-t", f"{template}:{destination}")
        )
        wait_until(lambda: read(destination) == "name=a29\n", "the render from A")
        stop_process(a.process)
        wait_until(lambda: read(destination) == "name=b0\n", "the render from B")
        put(b, "/app/name", "b1")
        wait_until(lambda: read(destination) == "name=b1\n", "B's write rendered")
        output = render.output()
    assert "reading every template again" in output, output


def test_once_with_a_missing_key_exits_1_and_keeps_the_old_file(tmp_path: Path) -> None:
    """``--once`` with a template reading a key that does not exist exits 1, names the key,
    and leaves the destination exactly as it was; the same with the key present exits 0."""
    template = tmp_path / "t.j2"
    template.write_text('{{ key("/app/present") }} {{ key("/app/missing") }}\n')
    destination = tmp_path / "out.conf"
    destination.write_text("the good old file\n")
    with node(tmp_path / "node") as server:
        put(server, "/app/present", "here")
        command = [*navistore_command(), "--url", url_of(server), "render", "--once"]
        result = run_to_exit([*command, "-t", f"{template}:{destination}"], tmp_path)
        assert result.returncode == 1, result.stderr
        assert "/app/missing" in result.stderr
        assert destination.read_text() == "the good old file\n"
        put(server, "/app/missing", "now")
        result = run_to_exit([*command, "-t", f"{template}:{destination}"], tmp_path)
        assert result.returncode == 0, result.stderr
        assert destination.read_text() == "here now\n"


def test_a_template_error_keeps_the_old_file(tmp_path: Path) -> None:
    """A template that does not parse leaves its file as it was: ``--once`` exits 2 naming
    the line; a watching renderer logs it, renders its other templates and carries on."""
    broken = tmp_path / "broken.j2"
    broken.write_text('line one\n{% for x in %}{{ key("/app/v") }}\n')
    good = tmp_path / "good.j2"
    good.write_text('{{ key("/app/v") }}\n')
    kept, rendered = tmp_path / "kept.conf", tmp_path / "good.conf"
    kept.write_text("old\n")
    with node(tmp_path / "node") as server:
        put(server, "/app/v", "1")
        command = [*navistore_command(), "--url", url_of(server), "render"]
        result = run_to_exit([*command, "--once", "-t", f"{broken}:{kept}"], tmp_path)
        assert result.returncode == 2, result.stderr
        assert "broken.j2:2" in result.stderr
        assert kept.read_text() == "old\n"
        arguments = ["-t", f"{broken}:{kept}", "-t", f"{good}:{rendered}"]
        with renderer(tmp_path / "r", *command[1:], *arguments) as render:
            wait_until(lambda: read(rendered) == "1\n", "the good template's render")
            put(server, "/app/v", "2")
            wait_until(lambda: read(rendered) == "2\n", "the good template's next render")
            assert render.process.poll() is None
        assert kept.read_text() == "old\n"


def test_once_against_no_node_exits_4_and_keeps_the_old_file(tmp_path: Path) -> None:
    """``--once`` when no ``--url`` answers exits 4 and writes nothing."""
    template = tmp_path / "t.j2"
    template.write_text("static\n")
    destination = tmp_path / "out.conf"
    destination.write_text("old\n")
    dead = f"http://127.0.0.1:{quiet_port()}"
    command = [*navistore_command(), "--timeout", "5", "render", "--once", "--url", dead]
    result = run_to_exit([*command, "-t", f"{template}:{destination}"], tmp_path)
    assert result.returncode == 4, result.stderr
    assert destination.read_text() == "old\n"


READER, ADMIN = "render-reader-secret-0", "render-admin-secret-00"
TOKENS = f"""
[[token]]
name = "admin"
secret = "{ADMIN}"
allow = ["read", "write", "admin"]

[[token]]
name = "reader"
secret = "{READER}"
allow = ["read"]
prefixes = ["/app/"]
"""


def test_render_reads_with_the_token(tmp_path: Path) -> None:
    """On a node with tokens, ``$NAVISTORE_TOKEN`` (a reader of ``/app/`` only) renders and
    follows the feed; without a token ``--once`` exits 5 and keeps the file."""
    tokens = tmp_path / "node" / "tokens.toml"
    tokens.parent.mkdir()
    tokens.write_text(TOKENS)
    template = tmp_path / "t.j2"
    template.write_text('{{ key("/app/v") }}\n')
    destination = tmp_path / "out.conf"
    destination.write_text("old\n")
    command = [*twistd("sqlite:node.db"), "--tokens", str(tokens)]
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with running(command, tokens.parent, headers=admin) as server:
        server.wait_listening()
        put(server, "/app/v", "1")
        render = [*navistore_command(), "--url", url_of(server), "render"]
        arguments = ["-t", f"{template}:{destination}"]
        result = run_to_exit([*render, "--once", *arguments], tmp_path)
        assert result.returncode == 5, result.stderr
        assert destination.read_text() == "old\n"
        env = {**source_env(), "NAVISTORE_TOKEN": READER}
        result = run_to_exit([*render, "--once", *arguments], tmp_path, env)
        assert result.returncode == 0, result.stderr
        assert destination.read_text() == "1\n"
        (tmp_path / "r").mkdir()
        with running([*render, *arguments], tmp_path / "r", env) as watching:
            put(server, "/app/v", "2")
            wait_until(lambda: read(destination) == "2\n", "the change, read with the token")
            assert watching.process.poll() is None


def test_a_template_that_reads_a_new_key_watches_it(tmp_path: Path) -> None:
    """A template whose keys depend on data (a pointer to another key) watches what it read
    last: after the pointer moves to ``/other/...``, outside what was watched, a write there
    made right after the move is rendered (the poll is widened from the position before the
    read, so nothing in between is missed), and the old target no longer matters."""
    template = tmp_path / "t.j2"
    template.write_text('{{ key(key("/app/pointer")) }}\n')
    destination = tmp_path / "out.conf"
    with node(tmp_path / "node") as server:
        put(server, "/app/pointer", "/app/first")
        put(server, "/app/first", "first")
        put(server, "/other/second", "second")
        arguments = ["--url", url_of(server), "render", "-t", f"{template}:{destination}"]
        with renderer(tmp_path / "r", *arguments) as render:
            wait_until(lambda: read(destination) == "first\n", "the first render")
            put(server, "/app/pointer", "/other/second")
            put(server, "/other/second", "second, changed")
            wait_until(lambda: read(destination) == "second, changed\n", "the new target")
            put(server, "/app/first", "ignored")
            put(server, "/other/second", "second, again")
            wait_until(lambda: read(destination) == "second, again\n", "the new target again")
            assert stop_process(render.process) == 0  # SIGTERM: a clean stop
        assert read(destination) == "second, again\n"
        assert render.output().count("rendered") == 3, render.output()


def test_a_node_back_empty_is_read_again(tmp_path: Path) -> None:
    """A ``memory:`` node restarted on its port comes back empty with a new node id: the
    renderer does not resume from its old seq but reads the templates again (the key is
    missing: the file is kept), and renders the key once it is written again."""
    template = tmp_path / "t.j2"
    template.write_text('{{ key("/app/v") }}\n')
    destination = tmp_path / "out.conf"
    port = f"tcp:{quiet_port()}:interface=127.0.0.1"
    with ExitStack() as stack:
        first = stack.enter_context(running(twistd("memory:", port=port), tmp_path))
        first.wait_listening()
        for number in range(20):
            put(first, "/app/v", f"v{number}")
        arguments = ["--url", url_of(first), "render", "-t", f"{template}:{destination}"]
        render = stack.enter_context(renderer(tmp_path / "r", *arguments))
        wait_until(lambda: read(destination) == "v19\n", "the first render")
        stop_process(first.process)
        second = stack.enter_context(running(twistd("memory:", port=port), tmp_path))
        second.wait_listening()
        wait_until(
            lambda: "reading every template again" in render.output(), "the renderer's resync"
        )
        wait_until(lambda: "/app/v does not exist" in render.output(), "the missing key logged")
        assert read(destination) == "v19\n"
        put(second, "/app/v", "after")
        wait_until(lambda: read(destination) == "after\n", "the key written again")


def test_render_over_tls_with_cacert(tmp_path: Path) -> None:
    """An https node whose certificate is signed by a private authority: with ``--cacert``
    the renderer renders and follows changes; without it, ``--once`` cannot verify the node
    (exit status 4) and keeps the file."""
    trustme = pytest.importorskip("trustme", reason="trustme (a test dependency) makes the CA")
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1")
    cert, key, ca = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    authority.cert_pem.write_to_path(str(ca))
    template = tmp_path / "t.j2"
    template.write_text('{{ key("/app/v") }}\n')
    destination = tmp_path / "out.conf"
    destination.write_text("old\n")
    port = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    tls = ssl.create_default_context(cafile=str(ca))
    (tmp_path / "node").mkdir()
    with running(twistd("memory:", port=port), tmp_path / "node", tls=tls) as server:
        server.wait_listening()
        put(server, "/app/v", "1")
        url = f"https://127.0.0.1:{server.port}"
        arguments = ["-t", f"{template}:{destination}"]
        result = run_to_exit(
            [*navistore_command(), "--url", url, "render", "--once", *arguments], tmp_path
        )
        assert result.returncode == 4, result.stderr
        assert destination.read_text() == "old\n"
        command = [*navistore_command(), "--url", url, "--cacert", str(ca), "render", *arguments]
        with renderer(tmp_path / "r", *command[1:]):
            wait_until(lambda: read(destination) == "1\n", "the render over TLS")
            put(server, "/app/v", "2")
            wait_until(lambda: read(destination) == "2\n", "the change over TLS")


def test_sighup_reads_the_templates_again(tmp_path: Path) -> None:
    """SIGHUP makes a watching renderer read its template files again and render them: an
    edited template is rendered; an edit that does not parse is logged and the last good
    template stays in use (the file keeps following the keys)."""
    template = tmp_path / "t.j2"
    template.write_text('old: {{ key("/app/v") }}\n')
    destination = tmp_path / "out.conf"
    with node(tmp_path / "node") as server:
        put(server, "/app/v", "1")
        arguments = ["--url", url_of(server), "render", "-t", f"{template}:{destination}"]
        with renderer(tmp_path / "r", *arguments) as render:
            wait_until(lambda: read(destination) == "old: 1\n", "the first render")
            template.write_text('new: {{ key("/app/v") }}\n')
            render.process.send_signal(signal.SIGHUP)
            wait_until(lambda: read(destination) == "new: 1\n", "the edited template")
            template.write_text("{% if %}\n")
            render.process.send_signal(signal.SIGHUP)
            wait_until(lambda: "the last good template stays" in render.output(), "the log")
            put(server, "/app/v", "2")
            wait_until(lambda: read(destination) == "new: 2\n", "the last good template")
            assert render.process.poll() is None

"""``navistore render`` without a node: its configuration, template helpers, file writing and
reload commands. (Against real nodes: :mod:`test_render_e2e`.)"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from navistore.scripts import render_files, render_templates
from navistore.scripts.client import build_parser
from navistore.scripts.render_config import (
    ConfigError,
    TemplateSpec,
    Wait,
    check_templates,
    load_config,
    parse_duration,
    parse_mode,
    parse_template_option,
    parse_wait,
)
from navistore.scripts.render_engine import common_prefix
from navistore.scripts.render_files import run_command, write_if_changed
from navistore.scripts.render_templates import (
    Dependencies,
    MissingKey,
    Template,
    TemplateError,
    make_environment,
)


class MappingSource:
    """A store held in a dict, read the way a node is (keys in order under a prefix)."""

    def __init__(self, values: dict[str, bytes]) -> None:
        self.values = values
        self.reads: list[str] = []

    def value(self, key: str) -> bytes | None:
        self.reads.append(key)
        return self.values.get(key)

    def entries(self, prefix: str, values: bool) -> list[tuple[str, bytes | None]]:
        return [
            (key, self.values[key] if values else None)
            for key in sorted(self.values)
            if key.startswith(prefix)
        ]


STORE = {
    "/app/db/host": b"db1",
    "/app/db/port": b"5432",
    "/app/servers/a": b"10.0.0.1",
    "/app/servers/b": b"10.0.0.2",
    "/app/limits": b'{"max": 5, "names": ["x", "y"]}',
    "/apple": b"not under /app/",
}


def render(
    tmp_path: Path, text: str, store: dict[str, bytes] | None = None
) -> tuple[str, Dependencies]:
    """Render ``text`` as a template file against ``store``: the output and what it read."""
    path = tmp_path / "t.j2"
    path.write_text(text)
    dependencies = Dependencies()
    source = MappingSource(STORE if store is None else store)
    output = Template(make_environment(), str(path)).render(source, dependencies)
    return output.decode(), dependencies


# -- the configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2s", 2.0), ("500ms", 0.5), ("1.5m", 90.0), ("1h", 3600.0), ("3", 3.0), (4, 4.0)],
)
def test_durations(text: object, seconds: float) -> None:
    """Durations take ms, s, m and h, or a bare number of seconds."""
    assert parse_duration(text, "wait") == seconds


@pytest.mark.parametrize("text", ["", "2x", "-1s", "2 s s", "25h", True, None, "1e3"])
def test_bad_durations_are_refused(text: object) -> None:
    """Anything else, negative or past a day, is a ConfigError naming the field."""
    with pytest.raises(ConfigError, match="wait"):
        parse_duration(text, "wait")


def test_waits() -> None:
    """``QUIET:MOST``; QUIET alone means MOST = 4 * QUIET; MOST below QUIET is refused."""
    assert parse_wait("2s:10s") == Wait(2.0, 10.0)
    assert parse_wait("500ms") == Wait(0.5, 2.0)
    with pytest.raises(ConfigError, match="shorter"):
        parse_wait("10s:2s")


def test_modes() -> None:
    """Modes are octal text; decimal-looking or non-octal text is refused."""
    assert parse_mode("0640") == 0o640
    assert parse_mode("600") == 0o600
    assert parse_mode("0o755") == 0o755
    for bad in ["0800", "rw-r--r--", "", "77777", 640]:
        with pytest.raises(ConfigError):
            parse_mode(bad)


def test_a_toml_file_of_templates(tmp_path: Path) -> None:
    """Every ``[[template]]`` field is read; relative paths are the file's directory's."""
    config = tmp_path / "render.toml"
    config.write_text(
        '[[template]]\nsource = "a.j2"\ndestination = "/etc/a.conf"\nmode = "0640"\n'
        'command = "systemctl reload a"\nwait = "2s:10s"\ncommand_timeout = "5s"\n'
        '[[template]]\nsource = "b.j2"\ndestination = "out/b.conf"\n'
    )
    first, second = load_config(str(config), Wait(1.0, 1.0))
    assert first == TemplateSpec(
        source=str(tmp_path / "a.j2"),
        destination="/etc/a.conf",
        mode=0o640,
        command="systemctl reload a",
        wait=Wait(2.0, 10.0),
        command_timeout=5.0,
    )
    assert second.destination == str(tmp_path / "out" / "b.conf")
    assert second.wait == Wait(1.0, 1.0) and second.mode is None and second.command is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[template]]\nsource = 'a'\n", "destination is required"),
        ("[[template]]\nsource = 'a'\ndestination = 'b'\nmod = '0640'\n", "unknown field"),
        ("[[template]]\nsource = 'a'\ndestination = 'b'\nmode = 640\n", "octal"),
        ("[[template]]\nsource = 'a'\ndestination = 'b'\ncommand_timeout = '0s'\n", "more than"),
        ("[templates]\n", "unknown table"),
        ("", "no \\[\\[template\\]\\]"),
        ("[[template]\n", "not TOML"),
    ],
)
def test_bad_toml_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    """A bad file is refused whole, saying what is wrong."""
    config = tmp_path / "render.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(str(config))


def test_template_options() -> None:
    """``--template SRC:DEST[:COMMAND]``: the command keeps its own colons."""
    spec = parse_template_option("a.j2:/etc/a.conf:sh -c 'echo a:b'")
    assert (spec.source, spec.destination, spec.command) == (
        "a.j2",
        "/etc/a.conf",
        "sh -c 'echo a:b'",
    )
    assert parse_template_option("a.j2:a.conf").command is None
    with pytest.raises(ConfigError):
        parse_template_option("a.j2")


def test_templates_are_checked_together() -> None:
    """No templates, or two writing the same file, is a usage error."""
    with pytest.raises(ConfigError, match="no templates"):
        check_templates([])
    with pytest.raises(ConfigError, match="two templates"):
        check_templates([TemplateSpec("a", "out"), TemplateSpec("b", "./out")])


def test_the_render_command_line() -> None:
    """``navistore render`` takes repeated ``--url`` and ``--template``, and ``--once``."""
    args = build_parser({}).parse_args(
        ["render", "--url", "http://a:1", "--url", "http://b:2", "-t", "a:b", "--once"]
    )
    assert args.render_urls == ["http://a:1", "http://b:2"]
    assert args.template == ["a:b"] and args.once and args.poll_timeout == 30


# -- the helpers ----------------------------------------------------------------------------------


def test_key_reads_a_value_as_text(tmp_path: Path) -> None:
    """``key`` gives the text, with or without the leading slash, and records the key."""
    output, dependencies = render(tmp_path, '{{ key("/app/db/host") }}:{{ key("app/db/port") }}')
    assert output == "db1:5432"
    assert dependencies.keys == {"/app/db/host", "/app/db/port"}


def test_a_missing_key_is_an_error_unless_it_has_a_default(tmp_path: Path) -> None:
    """A missing key without a default raises MissingKey, and is recorded (so that its
    creation renders the template); with a default, the default is the value."""
    path = tmp_path / "t.j2"
    path.write_text('{{ key("/app/nope") }}')
    dependencies = Dependencies()
    with pytest.raises(MissingKey, match="/app/nope"):
        Template(make_environment(), str(path)).render(MappingSource(STORE), dependencies)
    assert dependencies.keys == {"/app/nope"}
    output, _ = render(tmp_path, '{{ key("/app/nope", default="fallback") }}')
    assert output == "fallback"


def test_tree_nests_the_keys_under_a_prefix(tmp_path: Path) -> None:
    """``tree`` gives nested dicts of text, only under the prefix (not ``/apple``); a key
    with keys under it keeps its own value under ``""``."""
    store = {**STORE, "/app/db": b"itself"}
    output, dependencies = render(tmp_path, '{{ tree("/app") | tojson }}', store)
    assert json.loads(output) == {
        "db": {"": "itself", "host": "db1", "port": "5432"},
        "limits": '{"max": 5, "names": ["x", "y"]}',
        "servers": {"a": "10.0.0.1", "b": "10.0.0.2"},
    }
    assert dependencies.prefixes == {"/app/"}


def test_keys_lists_relative_keys(tmp_path: Path) -> None:
    """``keys`` lists the keys under the prefix relative to it, in key order."""
    output, dependencies = render(tmp_path, '{{ keys("/app/servers/") | join(",") }}')
    assert output == "a,b"
    assert dependencies.prefixes == {"/app/servers/"}


def test_fromjson(tmp_path: Path) -> None:
    """``fromjson`` turns a JSON value into data; text that is not JSON is a template error."""
    output, _ = render(
        tmp_path, '{% set l = key("/app/limits") | fromjson %}{{ l.max }} {{ l.names[1] }}'
    )
    assert output == "5 y"
    with pytest.raises(TemplateError, match="fromjson"):
        render(tmp_path, '{{ key("/app/db/host") | fromjson }}')


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ undefined_name }}", "t.j2:1: UndefinedError"),
        ("line\n{% for x in %}", "t.j2:2"),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "SecurityError|UndefinedError"),
        ('{{ key("/app/db/host") | int + "x" }}', "TypeError"),
        ('{{ key("/_changes") }}', "invalid key"),
        ("{{ key(5) }}", "must be text"),
        ('{{ key("/app/binary") }}', "not UTF-8"),
    ],
)
def test_template_errors_say_where(tmp_path: Path, text: str, message: str) -> None:
    """Undefined names (StrictUndefined), syntax errors, the sandbox's refusals, runtime errors,
    invalid keys and binary values are TemplateErrors naming the file and line."""
    with pytest.raises(TemplateError, match=message):
        render(tmp_path, text, {**STORE, "/app/binary": b"\xff\xfe"})


def test_the_output_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A template rendering more than MAX_OUTPUT_BYTES stops there with an error."""
    monkeypatch.setattr(render_templates, "MAX_OUTPUT_BYTES", 1000)
    with pytest.raises(TemplateError, match="larger than 1000"):
        render(tmp_path, "{% for i in range(10000) %}{{ i }}{% endfor %}")


def test_dependencies_match_keys_and_prefixes() -> None:
    """A change matters when it is a key read or under a prefix read (document semantics:
    ``/app/`` does not cover ``/apple``)."""
    dependencies = Dependencies(keys={"/db/host"}, prefixes={"/app/"})
    assert dependencies.matches("/db/host") and dependencies.matches("/app/x/y")
    assert not dependencies.matches("/db/hostname") and not dependencies.matches("/apple")


def test_the_common_prefix() -> None:
    """The one feed prefix covers every dependency; none means nothing to watch."""
    assert common_prefix(set()) is None
    assert common_prefix({"/app/db", "/app/dns"}) == "/app/d"
    assert common_prefix({"/app/servers/", "/app/db/host"}) == "/app/"
    assert common_prefix({"/app/", "/db"}) == "/"


# -- writing files ---------------------------------------------------------------------------------


def test_a_file_is_written_only_when_it_changes(tmp_path: Path) -> None:
    """The first write creates the file (0644 less the umask); the same content again writes
    nothing (the inode stays); new content replaces it by rename; no temporary file remains."""
    destination = tmp_path / "out.conf"
    assert write_if_changed(str(destination), b"one\n", None)
    assert destination.read_bytes() == b"one\n"
    inode = destination.stat().st_ino
    assert not write_if_changed(str(destination), b"one\n", None)
    assert destination.stat().st_ino == inode
    assert write_if_changed(str(destination), b"two\n", None)
    assert destination.read_bytes() == b"two\n" and destination.stat().st_ino != inode
    assert sorted(os.listdir(tmp_path)) == ["out.conf"]


def test_modes_are_set_and_kept(tmp_path: Path) -> None:
    """A template's mode is applied (a mode change alone rewrites the file); without one, the
    existing file's mode is kept."""
    destination = tmp_path / "out.conf"
    write_if_changed(str(destination), b"x", 0o600)
    assert stat.S_IMODE(destination.stat().st_mode) == 0o600
    assert write_if_changed(str(destination), b"x", 0o640)
    assert stat.S_IMODE(destination.stat().st_mode) == 0o640
    write_if_changed(str(destination), b"y", None)
    assert stat.S_IMODE(destination.stat().st_mode) == 0o640


@pytest.mark.skipif(os.geteuid() != 0, reason="keeping another user's ownership needs root")
def test_root_keeps_the_owner(tmp_path: Path) -> None:
    """Running as root, a rewritten file keeps its owner and group."""
    destination = tmp_path / "out.conf"
    destination.write_bytes(b"old")
    os.chown(destination, 4321, 4322)
    assert write_if_changed(str(destination), b"new", None)
    status = destination.stat()
    assert (status.st_uid, status.st_gid) == (4321, 4322)


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the rename fails, the old file is intact and the temporary file is gone."""
    destination = tmp_path / "out.conf"
    destination.write_bytes(b"good")

    def fail(source: str, target: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(render_files.os, "replace", fail)
    with pytest.raises(OSError):
        write_if_changed(str(destination), b"new", None)
    assert destination.read_bytes() == b"good"
    assert sorted(os.listdir(tmp_path)) == ["out.conf"]


# -- reload commands -------------------------------------------------------------------------------


def test_a_command_reports_its_status_and_output() -> None:
    """The exit status and the output (stdout and stderr) come back."""
    result = run_command("echo out; echo err >&2; exit 3", 10)
    assert result.status == 3 and not result.timed_out
    assert result.output.splitlines() == [b"out", b"err"]


def test_a_command_past_its_timeout_is_killed_with_its_group(tmp_path: Path) -> None:
    """Past the timeout the whole process group is killed, a background child too."""
    child = tmp_path / "child.pid"
    started = time.monotonic()
    result = run_command(f"sleep 60 & echo $! > {child}; wait", 0.5)
    assert result.timed_out and time.monotonic() - started < 10
    pid = int(child.read_text())

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"

    deadline = time.monotonic() + 10
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone()


def test_a_command_leaving_a_daemon_does_not_hang() -> None:
    """A command that starts a background process holding its output returns when the
    command itself exits (its output is a file, not a pipe)."""
    started = time.monotonic()
    result = run_command("(sleep 3 &) ; echo started", 10)
    assert result.status == 0 and result.output == b"started\n"
    assert time.monotonic() - started < 2.5

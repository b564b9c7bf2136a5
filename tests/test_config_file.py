"""``--config FILE`` (navistore.config_file, navistore.tap): options kept in a TOML file.

Unit tests parse options in-process; the last ones start real ``twistd navistore`` processes
from a file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from support.processes import REPOSITORY, run_to_exit, running, twistd_command
from twisted.python import usage

from navistore.config_file import ConfigFileError, config_path, read_config
from navistore.tap import REPEATABLE, Options

EXAMPLE = REPOSITORY / "contrib" / "navistore.toml"


def write(tmp_path: Path, text: str, name: str = "navistore.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def parse(*arguments: str) -> Options:
    options = Options()
    options.parseOptions(list(arguments))
    return options


def refusal(*arguments: str) -> str:
    with pytest.raises(usage.UsageError) as caught:
        parse(*arguments)
    return str(caught.value)


# -- finding --config ---------------------------------------------------------------------------


def test_config_path_is_taken_out_of_the_arguments() -> None:
    """``--config FILE`` and ``--config=FILE`` name the file; the other arguments stay, in
    order, and nothing after ``--`` is looked at."""
    assert config_path(["--port", "1", "--config", "a.toml", "--open"]) == (
        "a.toml",
        ["--port", "1", "--open"],
    )
    assert config_path(["--config=b.toml"]) == ("b.toml", [])
    assert config_path(["--", "--config", "x"]) == (None, ["--", "--config", "x"])
    for bad in (["--config"], ["--config="], ["--config", "a", "--config", "b"]):
        with pytest.raises(ConfigFileError):
            config_path(bad)


# -- what a file says ---------------------------------------------------------------------------


def test_file_values_become_the_options(tmp_path: Path) -> None:
    """Each key is the long option of the same name: strings, numbers, flags and lists."""
    path = write(
        tmp_path,
        'backend = "memory:"\n'
        'port = ["tcp:0:interface=127.0.0.1", 9000]\n'
        "max-value-size = 4096\n"
        'tombstone-retention = "60"\n'
        "max-clock-drift = 0.5\n"
        "read-fallback = true\n"
        "open = false\n"
        'peer = "http://10.0.0.2:8888"\n',
    )
    options = parse("--config", path)
    assert options["backend"] == "memory:"
    assert options["port"] == ["tcp:0:interface=127.0.0.1", "tcp:9000"]
    assert options["max-value-size"] == 4096
    assert options["tombstone-retention"] == 60.0
    assert options["max-clock-drift"] == 0.5
    assert options["read-fallback"] and not options["open"]
    assert options["peer"] == ["http://10.0.0.2:8888"]
    assert options["config"] == path


def test_the_command_line_overrides_the_file(tmp_path: Path) -> None:
    """A single-valued option given on both takes the command line's value; a repeatable one
    given on the command line replaces the file's list (not added to it); others stay."""
    path = write(
        tmp_path,
        'backend = "memory:"\nmax-value-size = 4096\nport = ["tcp:1", "tcp:2"]\n'
        'peer = ["http://10.0.0.2:8888"]\n',
    )
    options = parse("--max-value-size", "8192", "-P", "tcp:3", "--config", path)
    assert options["max-value-size"] == 8192
    assert options["port"] == ["tcp:3"]
    assert options["peer"] == ["http://10.0.0.2:8888"]
    assert options["backend"] == "memory:"
    assert parse("--config", path, "--port=tcp:4")["port"] == ["tcp:4"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('backend = "memory:"\nbogus = 1\n', ":2: unknown option 'bogus'"),
        ("max_value_size = 1\n", ":1: unknown option 'max_value_size'; did you mean max-value"),
        ("\n\nmax-watchers = 0\n", ":3: --max-watchers: 0 is not positive"),
        ('max-value-size = "lots"\n', ":1: --max-value-size: 'lots' is not a whole number"),
        ("max-value-size = true\n", ":1: max-value-size takes a string or a number"),
        ('open = "yes"\n', ":1: open is a flag: true or false"),
        ('backend = ["memory:"]\n', ":1: backend takes one value, not a list"),
        ("[backend]\nx = 1\n", ":1: backend takes a string or a number, not a table"),
        ('peer = ["ftp://x"]\n', ":1: --peer:"),
        ('port = ["foo"]\n', ":1: --port 'foo'"),
        ('config = "other.toml"\n', ":1: a config file cannot name another"),
        ('backend = "memory:\n', "not valid TOML"),
    ],
)
def test_a_bad_file_names_the_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    """An unknown key, a value of the wrong type or one the option refuses stops the parse,
    naming the file and the line of the key."""
    path = write(tmp_path, text)
    error = refusal("--config", path)
    assert error.startswith(path), error
    assert message in error, error


def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    """A missing file, one not in UTF-8 or one too large to be options is a usage error."""
    assert "No such file" in refusal("--config", str(tmp_path / "missing.toml"))
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'backend = "\xff"\n')
    assert "not UTF-8" in refusal("--config", str(binary))
    huge = tmp_path / "huge.toml"
    huge.write_text("# " + "x" * (1024 * 1024) + "\n")
    assert "not a config file" in refusal("--config", str(huge))


def test_checks_that_need_every_option_still_run(tmp_path: Path) -> None:
    """What no single key can tell (options that exclude each other, files to read) is still
    checked once the file and the command line are combined."""
    path = write(tmp_path, 'upstream = "http://10.0.0.2:8888"\n')
    assert "--upstream makes a cache node" in refusal(
        "--config", path, "--peer", "http://10.0.0.3:8888"
    )
    path = write(tmp_path, 'tokens = "missing-tokens.toml"\n', "t.toml")
    assert "--tokens" in refusal("--config", path)


# -- the shipped example ------------------------------------------------------------------------


def _example_settings() -> dict[str, str]:
    """Each ``# key = value`` line of the example, uncommented: key -> line."""
    found = {}
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^# ([a-z][a-z0-9-]*) = (.*?)(\s+#.*)?$", line)
        if match:
            found[match.group(1)] = f"{match.group(1)} = {match.group(2)}"
    return found


def test_the_example_shows_every_option_and_each_is_valid(tmp_path: Path) -> None:
    """contrib/navistore.toml parses as it ships (all commented out: the defaults), shows every
    long option of ``twistd navistore`` as a key, and each value it shows is accepted by its
    option (checked key by key, as a file is: some exclude each other)."""
    assert read_config(str(EXAMPLE), parameters=(), flags=(), repeatable=()) == []
    settings = _example_settings()
    options = Options()
    keys = {entry.rstrip("=") for entry in options.longOpt} - {"help", "version", "config"}
    assert set(settings) == keys
    for name in REPEATABLE:
        assert settings[name].split(" = ", 1)[1].startswith("["), name
    path = write(tmp_path, "\n".join(settings.values()) + "\n")
    arguments = Options()._with_config_file(path, [])
    assert "--max-value-size" in arguments and "--port" in arguments


# -- real processes -----------------------------------------------------------------------------


def test_a_node_starts_from_a_config_file(tmp_path: Path) -> None:
    """``twistd navistore --config FILE`` serves as the file says (port, backend, access log,
    JSON logs), and a flag on the command line overrides the file's (the value limit)."""
    path = write(
        tmp_path,
        'port = ["tcp:0:interface=127.0.0.1"]\n'
        'backend = "sqlite:from-file.db"\n'
        "max-value-size = 100\n"
        'access-log = "access.log"\n'
        'log-format = "json"\n',
    )
    command = [*twistd_command(), "--nodaemon", "--pidfile", "", "navistore", "--config", path]
    with running([*command, "--max-value-size", "150"], tmp_path) as server:
        server.wait_listening()
        assert server.request("PUT", "/small", b"x" * 150)[0] == 201
        status, body, _response = server.request("PUT", "/large", b"x" * 151)
        assert status == 413 and json.loads(body)["error"] == "value_too_large"
    assert (tmp_path / "from-file.db").exists()
    lines = [json.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()]
    assert [line["status"] for line in lines[1:3]] == [201, 413]
    log_lines = server.output().splitlines()
    assert all(json.loads(line)["message"] is not None for line in log_lines if line)


def test_a_bad_config_file_stops_the_start_in_one_line(tmp_path: Path) -> None:
    """A refused key stops ``twistd navistore`` before anything binds: one line naming the
    file and line, exit status 1."""
    path = write(tmp_path, 'backend = "memory:"\nmax-watchers = -1\n')
    command = [*twistd_command(), "--nodaemon", "--pidfile", "", "navistore", "--config", path]
    result = run_to_exit(command, tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"twistd navistore: error: {path}:2: --max-watchers: -1 is not positive "
        "(see twistd navistore --help)"
    ]

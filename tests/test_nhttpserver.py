"""``nhttpserver`` (navistore.scripts.nhttpserver): the classic options as twistd arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from navistore.scripts.nhttpserver import DEFAULT_PORT, DEFAULT_STORAGE_PATH, twistd_argv
from navistore.tap import Options

# -- nhttpserver: the classic options as twistd arguments ---------------------------------------


def test_nhttpserver_defaults() -> None:
    """Bare ``nhttpserver`` runs twistd in the foreground with no pidfile (twistd would otherwise
    write twistd.pid), on the node's own defaults, which are the classic port and file."""
    assert twistd_argv([]) == ["--nodaemon", "--pidfile", "", "navistore"]
    options = Options()
    options.parseOptions([])
    assert options["port"] == [f"tcp:{DEFAULT_PORT}"]
    assert options["backend"] == f"sqlite:{DEFAULT_STORAGE_PATH}"


def test_nhttpserver_classic_options() -> None:
    """``-P -s -l -b -p`` become twistd's daemon mode, log file and pidfile, and the tap's port
    and sqlite backend."""
    argv = ["-P", "9000", "-s", "data/store.db", "-l", "n.log", "-b", "-p", "n.pid"]
    assert twistd_argv(argv) == [
        "--logfile",
        "n.log",
        "--pidfile",
        "n.pid",
        "navistore",
        "--port",
        "tcp:9000",
        "--backend",
        "sqlite:data/store.db",
    ]
    long_form = [
        "--port=9000",
        "--storage-path=data/store.db",
        "--log-path=n.log",
        "--background",
        "--pidfile=n.pid",
    ]
    assert twistd_argv(long_form) == twistd_argv(argv)


@pytest.mark.parametrize(
    ("path", "url"),
    [
        ("/var/lib/navistore/store.db", "sqlite:///var/lib/navistore/store.db"),
        ("//srv/store.db", "sqlite:////srv/store.db"),
        ("odd?name%.db", "sqlite:odd%3Fname%25.db"),
    ],
)
def test_nhttpserver_storage_path_becomes_a_sqlite_url(path: str, url: str) -> None:
    """Absolute paths take the sqlite:///abs form; ``?`` and ``%`` are quoted so the backend URL
    parser gives back exactly the path."""
    from navistore.backend import parse_backend_url

    argv = twistd_argv(["-s", path])
    assert argv[argv.index("--backend") + 1] == url
    assert parse_backend_url(url).location == path


def test_nhttpserver_modern_overrides() -> None:
    """``--backend`` replaces the sqlite file, and ``-P`` also takes an endpoint string."""
    argv = twistd_argv(["--backend", "memory:", "-P", "tcp:0:interface=127.0.0.1"])
    assert argv[-4:] == ["--port", "tcp:0:interface=127.0.0.1", "--backend", "memory:"]


@pytest.mark.parametrize(
    "argv",
    [
        ["-s", "a.db", "--backend", "memory:"],
        ["-P", "70000"],
        ["-P", "http"],
        ["-s", ""],
        ["--no-such-option"],
    ],
)
def test_nhttpserver_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Contradictory or malformed classic options exit with status 1 and a one-line message,
    as ``twistd navistore``'s refusals do."""
    with pytest.raises(SystemExit) as caught:
        twistd_argv(argv)
    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("nhttpserver: error:")
    assert err.count("\n") == 1


def test_nhttpserver_help(capsys: pytest.CaptureFixture[str]) -> None:
    """``--help`` prints the classic options and exits 0."""
    with pytest.raises(SystemExit) as caught:
        twistd_argv(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for option in ("--port", "--storage-path", "--log-path", "--background", "--pidfile"):
        assert option in out


def test_nhttpserver_passes_peers_through() -> None:
    """The classic command line accepts ``--peer`` (repeatable) and ``--clone-from`` and hands
    them to the navistore plugin."""
    argv = twistd_argv(
        ["--peer", "http://a:1", "--peer", "http://b:2", "--clone-from", "http://c:3"]
    )
    tail = argv[argv.index("navistore") :]
    assert tail[1:] == [
        "--clone-from",
        "http://c:3",
        "--peer",
        "http://a:1",
        "--peer",
        "http://b:2",
    ]


def _value_for(name: str) -> str:
    return {"backend": "memory:", "port": "tcp:0"}.get(name, "1")


def test_nhttpserver_accepts_every_option_of_twistd_navistore() -> None:
    """Every long option of ``twistd navistore`` is an option of nhttpserver by the same name,
    handed on as given (the list is read from the tap's options: a new option cannot be
    forgotten)."""
    names = [entry for entry in Options().longOpt if entry.rstrip("=") not in ("help", "version")]
    assert "max-value-size=" in names and "config=" in names and "serve-backend" in names
    for entry in names:
        name = entry.rstrip("=")
        given = [f"--{name}", _value_for(name)] if entry.endswith("=") else [f"--{name}"]
        tail = twistd_argv(given)[-len(given) :]
        if name == "port":
            assert tail == ["--port", "tcp:0"]
        else:
            assert tail == given, name


def test_nhttpserver_hands_a_config_file_its_port_and_backend(tmp_path: Path) -> None:
    """With ``--config`` and no ``-P`` or ``-s``, the file's port and backend are the ones the
    node gets (nhttpserver hands on no defaults of its own)."""
    config = tmp_path / "n.toml"
    config.write_text('port = ["tcp:0:interface=127.0.0.1"]\nbackend = "memory:"\n')
    argv = twistd_argv(["--config", str(config)])
    options = Options()
    options.parseOptions(argv[argv.index("navistore") + 1 :])
    assert options["port"] == ["tcp:0:interface=127.0.0.1"]
    assert options["backend"] == "memory:"
    argv = twistd_argv(["--config", str(config), "-P", "9999"])
    options = Options()
    options.parseOptions(argv[argv.index("navistore") + 1 :])
    assert options["port"] == ["tcp:9999"]

"""``nhttpserver`` (navistore.scripts.nhttpserver): the classic options as twistd arguments."""

from __future__ import annotations

import pytest

from navistore.scripts.nhttpserver import twistd_argv

# -- nhttpserver: the classic options as twistd arguments ---------------------------------------


def test_nhttpserver_defaults() -> None:
    """Bare ``nhttpserver`` runs twistd in the foreground on tcp:8888 over ./navistore.db, with no
    pidfile (twistd would otherwise write twistd.pid)."""
    assert twistd_argv([]) == [
        "--nodaemon",
        "--pidfile",
        "",
        "navistore",
        "--port",
        "tcp:8888",
        "--backend",
        "sqlite:navistore.db",
    ]


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
    """Contradictory or malformed classic options exit with status 2 and a message."""
    with pytest.raises(SystemExit) as caught:
        twistd_argv(argv)
    assert caught.value.code == 2
    assert "nhttpserver: error:" in capsys.readouterr().err


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
    assert tail[-6:] == [
        "--peer",
        "http://a:1",
        "--peer",
        "http://b:2",
        "--clone-from",
        "http://c:3",
    ]

"""``twistd navistore`` options, the ``nhttpserver`` translation, and the service they build.

The service tests run a real :class:`~navistore.service.NavistoreService` in this process on
127.0.0.1 (port 0), over a memory backend, with the reactor pytest-twisted runs.
"""

from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, ConnectionRefusedError
from twisted.python import usage
from twisted.web.client import Agent, HTTPConnectionPool, ResponseNeverReceived

from navistore.backend import BackendURLError
from navistore.backend.memory import MemoryBackend
from navistore.cli import twistd_argv
from navistore.errors import StorageFailure
from navistore.interfaces import ANY, Expectation, IStorageBackend
from navistore.keys import DEFAULT_MAX_KEY_BYTES
from navistore.record import Record
from navistore.service import NavistoreService
from navistore.tap import Options, makeService
from navistore.web import DEFAULT_MAX_VALUE_SIZE

REPOSITORY = Path(__file__).resolve().parent.parent
LOOPBACK = "tcp:0:interface=127.0.0.1"


def parse(*arguments: str) -> Options:
    """Parse ``twistd navistore`` arguments."""
    options = Options()
    options.parseOptions(list(arguments))
    return options


# -- twistd navistore options -------------------------------------------------------------------


def test_defaults() -> None:
    """Without arguments a node listens on tcp:8888 and keeps its data in ./navistore.db."""
    options = parse()
    assert options["port"] == ["tcp:8888"]
    assert options["backend"] == "sqlite:navistore.db"
    assert options["max-value-size"] == DEFAULT_MAX_VALUE_SIZE == 16 * 1024 * 1024
    assert options["max-key-bytes"] == DEFAULT_MAX_KEY_BYTES == 1024


def test_port_is_repeatable() -> None:
    """``--port`` and ``-p`` add endpoints in order; any given replaces the default."""
    options = parse("--port", "tcp:8888", "-p", "unix:/tmp/n.sock", "--port=ssl:8443:k=v")
    assert options["port"] == ["tcp:8888", "unix:/tmp/n.sock", "ssl:8443:k=v"]


def test_options_are_not_shared_between_parses() -> None:
    """Endpoints given to one parse do not leak into the next (no shared default list)."""
    parse("--port", "tcp:1")
    assert parse()["port"] == ["tcp:8888"]


def test_sizes_are_parsed_as_integers() -> None:
    """``--max-value-size`` and ``--max-key-bytes`` take whole numbers of bytes."""
    options = parse("--max-value-size", "1048576", "--max-key-bytes", "256", "-b", "memory:")
    assert options["max-value-size"] == 1048576
    assert options["max-key-bytes"] == 256
    assert options["backend"] == "memory:"


@pytest.mark.parametrize("option", ["--max-value-size", "--max-key-bytes"])
@pytest.mark.parametrize("value", ["lots", "1.5", "0", "-3", ""])
def test_bad_sizes_are_usage_errors(option: str, value: str) -> None:
    """A size that is not a positive whole number is refused while parsing, naming the value."""
    with pytest.raises(usage.UsageError) as caught:
        parse(option, value)
    assert "enforcement failed" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nosuch:x", "no backend for scheme 'nosuch'"),
        ("navistore.db", "is not a backend URL"),
        (":x", "is not a backend URL"),
    ],
)
def test_bad_backend_url_is_a_usage_error(url: str, message: str) -> None:
    """A backend URL that names no backend is refused while parsing, before anything starts;
    the message says why and, for an unknown scheme, which schemes exist."""
    with pytest.raises(usage.UsageError) as caught:
        parse("--backend", url)
    assert message in str(caught.value)
    if "scheme" in message:
        assert "memory" in str(caught.value) and "sqlite" in str(caught.value)


def test_make_service_builds_an_unstarted_node() -> None:
    """makeService returns a MultiService carrying the options, and binds or opens nothing."""
    options = parse("-p", LOOPBACK, "-p", "tcp:0:interface=127.0.0.1", "-b", "memory:")
    options["max-value-size"] = 4096
    service = makeService(options)
    assert isinstance(service, MultiService)
    assert isinstance(service, NavistoreService)
    assert service.endpoints == (LOOPBACK, "tcp:0:interface=127.0.0.1")
    assert service.backend_url == "memory:"
    assert service.max_value_size == 4096
    assert service.max_key_bytes == DEFAULT_MAX_KEY_BYTES
    assert not service.running
    assert service.ports == []
    assert service.store is None


def test_plugin_declares_the_navistore_tap() -> None:
    """The twistd plugin file names the command ``navistore`` and points at navistore.tap."""
    path = REPOSITORY / "twisted" / "plugins" / "navistore_plugin.py"
    assert not (REPOSITORY / "twisted" / "__init__.py").exists()
    assert not (REPOSITORY / "twisted" / "plugins" / "__init__.py").exists()
    spec = importlib.util.spec_from_file_location("navistore_plugin_under_test", path)
    assert spec is not None and spec.loader is not None
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    maker = plugin.navistore
    assert maker.tapname == "navistore"
    assert maker.module == "navistore.tap"
    assert maker.options is Options
    assert maker.makeService is makeService


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


# -- the service, in this process ---------------------------------------------------------------


def http_client() -> Any:
    """A treq client without persistent connections, so no test leaves one open."""
    from twisted.internet import reactor

    return treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, False)))


def service_over(backend: IStorageBackend, **kwargs: Any) -> NavistoreService:
    """A service on a free loopback port over ``backend`` (its URL is not used)."""
    from twisted.internet import reactor

    return NavistoreService(
        "test:", [LOOPBACK], reactor=reactor, backend_factory=lambda _url: backend, **kwargs
    )


def url_of(service: NavistoreService, path: str) -> str:
    """The URL of ``path`` on the service's first port."""
    return f"http://127.0.0.1:{service.ports[0].getHost().port}{path}"


async def refused(url: str) -> bool:
    """Tell whether a new connection to ``url`` is refused."""
    try:
        response = await http_client().get(url)
        await response.content()
    except ConnectionRefusedError:
        return True
    return False


class GatedBackend(MemoryBackend):
    """A memory backend whose applies wait for the test to open a gate, and which records when
    an apply completes and when it is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: Deferred[None] = Deferred()
        self.applying: Deferred[None] = Deferred()
        self.events: list[str] = []

    def apply(self, record: Record, expect: Expectation = ANY) -> Deferred[Record | None]:
        if not self.applying.called:
            self.applying.callback(None)

        def stored(_: None) -> Deferred[Record | None]:
            result = MemoryBackend.apply(self, record, expect)
            self.events.append("applied")
            return result

        return self.gate.addCallback(stored)

    def close(self) -> Deferred[None]:
        self.events.append("closed")
        return super().close()


@pytest_twisted.ensureDeferred
async def test_service_serves_and_stops() -> None:
    """Started, the service answers HTTP with its Store; stopped, it listens no more and the
    backend is closed."""
    backend = MemoryBackend()
    service = service_over(backend)
    service.privilegedStartService()
    service.startService()
    try:
        assert service.store is not None
        response = await http_client().get(url_of(service, "/_health"))
        assert response.code == 200
        health = json.loads(await response.content())
        assert health["node_id"] == service.store.node_id
    finally:
        url = url_of(service, "/_health")
        await service.stopService()
    assert await refused(url)
    with pytest.raises(Exception, match="closed"):
        await backend.get("/x")


@pytest_twisted.ensureDeferred
async def test_shutdown_finishes_a_write_in_flight_before_closing_the_store() -> None:
    """Stopping while a PUT is being applied stops listening at once, lets the PUT finish and be
    answered, and only then closes the backend."""
    backend = GatedBackend()
    service = service_over(backend)
    service.startService()
    url = url_of(service, "/k")
    answer = http_client().put(url, data=b"value")
    await backend.applying
    stopped = service.stopService()
    assert await refused(url)
    assert not stopped.called
    assert backend.events == []
    backend.gate.callback(None)
    response = await answer
    assert response.code == 201
    assert await response.content() == b"OK"
    await stopped
    assert backend.events == ["applied", "closed"]


@pytest_twisted.ensureDeferred
async def test_shutdown_gives_up_on_a_stuck_request_after_the_drain_timeout() -> None:
    """A request that never finishes delays shutdown by at most the drain timeout."""
    backend = GatedBackend()
    service = service_over(backend, drain_timeout=0.2)
    service.startService()
    answer = http_client().put(url_of(service, "/k"), data=b"value")
    await backend.applying
    await service.stopService()
    assert backend.events == ["closed"]
    with pytest.raises(ResponseNeverReceived):
        await answer


def test_unknown_backend_url_fails_start_service() -> None:
    """A backend URL that cannot be opened makes startService raise, releasing the ports."""
    from twisted.internet import reactor

    service = NavistoreService("nosuch:x", [LOOPBACK], reactor=reactor)
    service.privilegedStartService()
    assert len(service.ports) == 1
    with pytest.raises(BackendURLError, match="nosuch"):
        service.startService()
    assert service.ports == []
    assert not service.running


def test_busy_port_fails_privileged_start() -> None:
    """A port already in use makes privilegedStartService raise before anything is opened, and
    the endpoints bound before it are released."""
    from twisted.internet import reactor

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        service = NavistoreService(
            "memory:", [LOOPBACK, f"tcp:{taken}:interface=127.0.0.1"], reactor=reactor
        )
        with pytest.raises(CannotListenError):
            service.privilegedStartService()
    assert service.ports == []
    assert service.store is None


def test_bad_endpoint_fails_privileged_start() -> None:
    """An endpoint string Twisted cannot parse makes privilegedStartService raise."""
    from twisted.internet import reactor

    service = NavistoreService("memory:", ["bogus:1"], reactor=reactor)
    with pytest.raises(ValueError, match="bogus"):
        service.privilegedStartService()


class FailingBackend(MemoryBackend):
    """A memory backend whose storage fails on first use, after a reactor turn (as a sqlite file
    that cannot be opened does)."""

    def get_meta(self, name: str) -> Deferred[str | None]:
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        def fail() -> str | None:
            raise StorageFailure("cannot open the storage")

        return deferLater(reactor, 0, fail)


@pytest_twisted.ensureDeferred
async def test_late_startup_failure_is_handed_over_after_cleaning_up() -> None:
    """When opening the Store fails after startService returned, the ports are released, the
    backend closed, and on_startup_failure called with the failure."""
    backend = FailingBackend()
    reported: Deferred[BaseException] = Deferred()
    service = service_over(backend, on_startup_failure=lambda f: reported.callback(f.value))
    service.startService()
    url = url_of(service, "/_health")
    assert isinstance(await reported, StorageFailure)
    assert service.ports == []
    assert await refused(url)
    assert not service.running
    await service.stopService()


# -- replication options ------------------------------------------------------------------------


def test_peers_and_clone_source_are_parsed() -> None:
    """``--peer`` is repeatable and normalised; ``--clone-from`` names one node; neither is set
    by default."""
    options = parse(
        "--peer",
        "HTTP://10.0.0.2:8888/",
        "--peer",
        "http://node-c:9000",
        "--clone-from",
        "http://10.0.0.9:8888",
    )
    assert options["peer"] == ["http://10.0.0.2:8888", "http://node-c:9000"]
    assert options["clone-from"] == "http://10.0.0.9:8888"
    defaults = parse()
    assert defaults["peer"] == [] and defaults["clone-from"] is None


@pytest.mark.parametrize("option", ["--peer", "--clone-from"])
@pytest.mark.parametrize("url", ["ftp://x:1", "not a url", "http://host-without-port"])
def test_bad_peer_urls_are_usage_errors(option: str, url: str) -> None:
    """A peer or clone source that is not an http(s) URL with a port is a usage error that
    names the option."""
    with pytest.raises(usage.UsageError, match=option):
        parse(option, url)


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


def test_upstream_and_read_fallback_options() -> None:
    """``--upstream`` names one node (normalised) and ``--read-fallback`` is a flag; neither is
    on by default."""
    options = parse("--upstream", "HTTP://origin:8888/")
    assert options["upstream"] == "http://origin:8888"
    assert parse("--read-fallback")["read-fallback"]
    defaults = parse()
    assert defaults["upstream"] is None and not defaults["read-fallback"]


@pytest.mark.parametrize(
    "extra", [("--peer", "http://b:1"), ("--clone-from", "http://c:2"), ("--read-fallback",)]
)
def test_a_cache_node_has_no_peers(extra: tuple[str, ...]) -> None:
    """A cache node (``--upstream``) cannot also push to peers, clone or fall back to peers:
    that is a usage error saying why."""
    with pytest.raises(usage.UsageError, match="cache node"):
        parse("--upstream", "http://origin:8888", *extra)

"""A node in this process (navistore.daemon.NavistoreService): serving, stopping, failing to start.

The service runs on 127.0.0.1 (port 0), over a memory backend, with the reactor pytest-twisted
runs.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_twisted
import treq
from support.processes import LOOPBACK, REQUEST_TIMEOUT
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import CannotListenError, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.web.client import Agent, HTTPConnectionPool, ResponseNeverReceived

from navistore.backend import BackendURLError
from navistore.backend.memory import MemoryBackend
from navistore.daemon import NavistoreService
from navistore.errors import StorageFailure
from navistore.interfaces import ANY, Expectation, IStorageBackend
from navistore.node import NodeConfig
from navistore.record import Record

# -- the service, in this process ---------------------------------------------------------------


def http_client() -> Any:
    """A treq client without persistent connections, so no test leaves one open."""
    from twisted.internet import reactor

    return treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, False)))


def service_over(
    backend: IStorageBackend, options: dict[str, Any] | None = None, **kwargs: Any
) -> NavistoreService:
    """A service on a free loopback port over ``backend`` (its URL is not used); ``kwargs`` are
    the node's config, ``options`` the service's own."""
    options = dict(options or {})
    from twisted.internet import reactor

    config = NodeConfig(backend_url="test:", endpoints=[LOOPBACK], **kwargs)
    factory = options.pop("backend_factory", lambda _url: backend)
    return NavistoreService(config, reactor=reactor, backend_factory=factory, **options)


def url_of(service: NavistoreService, path: str) -> str:
    """The URL of ``path`` on the service's first port."""
    return f"http://127.0.0.1:{service.ports[0].getHost().port}{path}"


async def refused(url: str) -> bool:
    """Tell whether a new TCP connection to ``url``'s port on 127.0.0.1 is refused: a real
    connection attempt, made straight to the address (no name resolution, no retry), which the
    kernel refuses at once when nothing listens there. A connection that is accepted is closed.
    """
    from twisted.internet import reactor

    port = urlsplit(url).port
    assert port is not None
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        connected = await endpoint.connect(Factory.forProtocol(Protocol))
    except ConnectionRefusedError:
        return True
    connected.transport.loseConnection()
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

    service = NavistoreService(NodeConfig("nosuch:x", [LOOPBACK]), reactor=reactor)
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
        endpoints = [LOOPBACK, f"tcp:{taken}:interface=127.0.0.1"]
        service = NavistoreService(NodeConfig("memory:", endpoints), reactor=reactor)
        with pytest.raises(CannotListenError):
            service.privilegedStartService()
    assert service.ports == []
    assert service.store is None


def test_bad_endpoint_fails_privileged_start() -> None:
    """An endpoint string Twisted cannot parse makes privilegedStartService raise."""
    from twisted.internet import reactor

    service = NavistoreService(NodeConfig("memory:", ["bogus:1"]), reactor=reactor)
    with pytest.raises(ValueError, match="bogus"):
        service.privilegedStartService()


class LateFailingBackend(MemoryBackend):
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
    backend = LateFailingBackend()
    reported: Deferred[BaseException] = Deferred()
    options = {"on_startup_failure": lambda f: reported.callback(f.value)}
    service = service_over(backend, options)
    service.startService()
    url = url_of(service, "/_health")
    assert isinstance(await reported, StorageFailure)
    assert service.ports == []
    assert await refused(url)
    assert not service.running
    await service.stopService()


def test_the_allocator_gives_freed_memory_back() -> None:
    """With the allocator tuned (glibc), 200 MiB of 256 KiB blocks freed leave the process's
    RSS where it was, and a released heap shrinks too: what a large request freed is given
    back to the system (the hostile-load goal), not kept for reuse."""
    from navistore.allocator import MemoryReleaser, tune_allocator

    if not tune_allocator():
        pytest.skip("not applicable: the C library is not glibc")

    def rss_mib() -> float:
        return (
            int(Path("/proc/self/statm").read_text().split()[1])
            * os.sysconf("SC_PAGE_SIZE")
            / 2**20
        )

    before = rss_mib()
    blocks = [os.urandom(256 * 1024) for _ in range(800)]
    small = [b"%d" % index * 20 for index in range(100_000)]
    grown = rss_mib()
    del blocks
    assert rss_mib() - before < (grown - before) / 4
    scattered = [bytes(700) for _ in range(100_000)]
    pins = scattered[::50]  # still used: the heap cannot shrink from its top past them
    del small, scattered
    releaser = MemoryReleaser(Clock())
    high = rss_mib()
    releaser.release()
    assert releaser.runs == 1
    assert rss_mib() < high - 20  # 70 MB of 700-byte blocks were freed between the pins
    assert len(pins) == 2000

"""A client of one node's HTTP API over ``treq.testing.StubTreq``, and the answers it reads.

Every request crosses a real twisted.web Site in memory, so statuses, headers and streamed
bodies are what a client sees. :func:`api_resource` builds the resource as a node does (a watch
hub on a clock of the test's choosing); :class:`Api` sends requests to any resource and returns
an :class:`Answer`. Over a backend whose calls complete on later reactor turns (sqlite's group
commit) pass ``pump=True``: StubTreq then moves the in-memory connection's bytes while waiting.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource

from navistore.backend.memory import MemoryBackend
from navistore.errors import StorageFailure
from navistore.record import Record
from navistore.store import Store
from navistore.watch_hub import WatchHub
from navistore.web import AccessPolicy, ApiResource
from support.deferreds import pumped

__all__ = ["ORIGIN", "Answer", "Api", "FailingBackend", "api_resource"]

#: The origin every request is sent to (StubTreq routes by resource, not by host).
ORIGIN = "http://navistore.test"

#: Response headers that legitimately differ between two answers, or that the client rewrites.
VOLATILE_HEADERS = {b"date", b"content-length", b"content-encoding"}


def api_resource(
    store: Store,
    *,
    max_value_size: int = 4096,
    clock: IReactorTime | None = None,
    watch_hub: WatchHub | None = None,
    **options: Any,
) -> ApiResource:
    """The API resource over ``store`` with a watch hub on ``clock`` (default: a fresh
    ``task.Clock``), open to every caller unless ``access`` says otherwise; ``options`` go to
    :class:`ApiResource` (endpoints, hooks)."""
    hub = watch_hub or WatchHub(store, clock=clock if clock is not None else Clock())
    options.setdefault("access", AccessPolicy.open())
    return ApiResource(store, max_value_size=max_value_size, watch_hub=hub, **options)


class Answer:
    """A response as the tests look at it: status, headers and the whole body."""

    def __init__(self, status: int, headers: Headers, body: bytes, length: object = None) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.length = length

    def header(self, name: str) -> str | None:
        """The (last) value of a response header, or None."""
        values = self.headers.getRawHeaders(name.encode("ascii"))
        return values[-1].decode("latin-1") if values else None

    def json(self) -> Any:
        """The body parsed as JSON (after checking that it says it is JSON)."""
        assert self.header("Content-Type") == "application/json", self.body
        return json.loads(self.body)

    def stable_headers(self) -> dict[bytes, Sequence[bytes]]:
        """The headers that must be equal for GET and HEAD of the same state."""
        return {
            name.lower(): values
            for name, values in self.headers.getAllRawHeaders()
            if name.lower() not in VOLATILE_HEADERS
        }

    def __repr__(self) -> str:
        return f"<Answer {self.status} {self.body[:200]!r}>"


class Api:
    """A client of one node's API over StubTreq.

    :param resource: the resource answering (see :func:`api_resource`).
    :param pump: move the in-memory connection's bytes while waiting (answers that come on a
        later reactor turn, e.g. over sqlite).
    """

    def __init__(self, resource: IResource, *, pump: bool = False) -> None:
        self.resource = resource
        self.stub = StubTreq(resource)
        self._pump = pump

    @property
    def store(self) -> Store:
        """The Store of the node answering."""
        assert isinstance(self.resource, ApiResource), self.resource
        return self.resource.store

    async def _wait(self, waiting: Deferred[Any]) -> Any:
        return await (pumped(self.stub, waiting) if self._pump else waiting)

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Iterable[tuple[str, str]] | Mapping[str, str] | None = None,
    ) -> Answer:
        """Send one request; ``path`` is sent as given (percent-encode it yourself)."""
        listed = list(params.items()) if isinstance(params, Mapping) else list(params or [])
        response = await self._wait(
            self.stub.request(
                method, ORIGIN + path, data=body, headers=dict(headers or {}), params=listed
            )
        )
        content = await self._wait(response.content())
        return Answer(response.code, response.headers, content, response.length)

    async def get(self, path: str, **kwargs: Any) -> Answer:
        """``GET path``."""
        return await self.request("GET", path, **kwargs)

    async def head(self, path: str, **kwargs: Any) -> Answer:
        """``HEAD path``."""
        return await self.request("HEAD", path, **kwargs)

    async def put(self, path: str, body: bytes = b"", **kwargs: Any) -> Answer:
        """``PUT path`` with ``body``."""
        return await self.request("PUT", path, body, **kwargs)

    async def post(self, path: str, body: bytes = b"", **kwargs: Any) -> Answer:
        """``POST path`` with ``body``."""
        return await self.request("POST", path, body, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Answer:
        """``DELETE path``."""
        return await self.request("DELETE", path, **kwargs)

    async def last_seq(self) -> int:
        """The node's newest seq, read through ``/_changes``."""
        answer = await self.get("/_changes")
        assert answer.status == 200
        seq: int = answer.json()["last_seq"]
        return seq

    async def keys(self) -> list[str]:
        """Every key, in the classic form, read through ``/listkeys``."""
        answer = await self.get("/listkeys")
        assert answer.status == 200
        keys: list[str] = answer.json()
        return keys


def _failable(name: str) -> Callable[..., Deferred[Any]]:
    def method(self: FailingBackend, *args: Any, **kwargs: Any) -> Deferred[Any]:
        if self.failing:
            return fail(StorageFailure(f"the disk is on fire ({name})"))
        result: Deferred[Any] = getattr(MemoryBackend, name)(self, *args, **kwargs)
        return result

    method.__name__ = name
    return method


class FailingBackend(MemoryBackend):
    """A memory backend whose every call errbacks with StorageFailure while ``failing`` is set."""

    failing = False

    get = _failable("get")
    apply = _failable("apply")
    scan = _failable("scan")
    changes = _failable("changes")
    last_seq = _failable("last_seq")
    purge_tombstones = _failable("purge_tombstones")
    reset = _failable("reset")
    get_meta = _failable("get_meta")
    set_meta = _failable("set_meta")

    def peek(self, key: str) -> Record | None:
        if self.failing:
            raise StorageFailure("the disk is on fire (peek)")
        return super().peek(key)

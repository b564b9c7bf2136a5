"""A scripted HTTP client for tests: in-process nodes behind it, faults on demand.

:class:`FakeHTTP` is an :class:`~navistore.links.HTTPClient` (the part of treq's API every link
uses) that hands each request to the twisted.web resource attached at the request's origin
(``http://host:port``), through ``treq.testing.StubTreq``, so a real Site parses and answers it.
A test scripts what the next requests to an origin get instead (in the spirit of treq's
``RequestSequence``):

- :func:`answer` — a canned status, body and headers;
- :func:`fail` — the request fails with an exception (a refused or lost connection);
- :data:`hang` — no answer ever comes, until the request is cancelled (a timeout does that);

and can take an origin down, hold the answers to one path until it releases them, and read every
request sent (:attr:`FakeHTTP.sent`). Nothing uses real time or sockets.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.defer import fail as failed
from twisted.internet.error import ConnectionRefusedError
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource

from navistore.testing.responses import FakeResponse

__all__ = ["FakeHTTP", "Outcome", "Sent", "answer", "fail", "hang", "origin_of"]

#: What a scripted request gets: called once, it returns the Deferred the client hands back.
Outcome = Callable[["FakeHTTP"], "Deferred[Any]"]


def origin_of(url: str) -> str:
    """The ``scheme://host:port`` a URL goes to."""
    return "/".join(url.split("/", 3)[:3])


@attrs.frozen
class Sent:
    """One request made: method, full URL, body (None when there was none), the timeout the
    caller asked for, and its headers."""

    method: str
    url: str
    body: bytes | None
    timeout: float | None
    headers: Headers

    @property
    def origin(self) -> str:
        """Where it went: ``scheme://host:port``."""
        return origin_of(self.url)

    @property
    def path(self) -> str:
        """The path and query it asked for."""
        return self.url[len(self.origin) :]

    def header(self, name: str) -> str | None:
        """The last value of a request header, or None."""
        values = self.headers.getRawHeaders(name)
        return values[-1] if values else None


def answer(
    code: int,
    body: bytes | Mapping[str, Any] | list[Any] = b"",
    headers: Mapping[str, str] | None = None,
) -> Outcome:
    """The request is answered ``code`` with ``body`` (a dict or list is sent as JSON)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    raw = Headers({name: [value] for name, value in (headers or {}).items()})
    if not isinstance(body, bytes) and not raw.hasHeader("Content-Type"):
        raw.setRawHeaders("Content-Type", ["application/json"])
    return lambda _client: succeed(FakeResponse(code, raw, data))


def fail(error: BaseException) -> Outcome:
    """The request fails with ``error`` (e.g. ``ConnectionLost()``)."""
    return lambda _client: failed(error)


def hang(client: FakeHTTP) -> Deferred[Any]:
    """No answer comes, until the request is cancelled (see :attr:`FakeHTTP.hanging`)."""
    waiting: Deferred[Any] = Deferred()
    client.hanging.append(waiting)
    return waiting


class FakeHTTP:
    """A treq-like client over the resources of in-process nodes, with scripted outcomes."""

    def __init__(self) -> None:
        #: Every request made, in order.
        self.sent: list[Sent] = []
        #: The requests a :data:`hang` outcome holds, in order.
        self.hanging: list[Deferred[Any]] = []
        self._stubs: dict[str, Any] = {}  # StubTreq: its methods are made at run time
        self._scripts: dict[str, list[Outcome]] = {}
        self._down: set[str] = set()
        self._held_paths: set[str] = set()
        self._held: list[tuple[Deferred[Any], Deferred[Any]]] = []

    # -- the nodes behind it ------------------------------------------------------------------

    def attach(self, origin: str, resource: IResource) -> None:
        """Serve ``resource`` at ``origin`` (``http://host:port``), replacing what was there."""
        self._stubs[origin] = StubTreq(resource)

    def detach(self, origin: str) -> None:
        """Nothing serves ``origin`` any more: requests to it are refused."""
        self._stubs.pop(origin, None)

    def down(self, origin: str, is_down: bool = True) -> None:
        """Refuse every connection to ``origin`` while it is down."""
        if is_down:
            self._down.add(origin)
        else:
            self._down.discard(origin)

    def script(self, origin: str, *outcomes: Outcome) -> None:
        """The next requests to ``origin`` get these outcomes, one each, before it answers."""
        self._scripts.setdefault(origin, []).extend(outcomes)

    def hold(self, path: str) -> None:
        """Answer the next request for ``path`` now, but hand the answer over at :meth:`release`."""
        self._held_paths.add(path)

    def release(self) -> None:
        """Hand over every held answer."""
        held, self._held = self._held, []
        for answered, late in held:
            answered.chainDeferred(late)
        self.flush()

    def flush(self) -> None:
        """Move the bytes of every in-memory connection (answers that came later)."""
        for stub in list(self._stubs.values()):
            stub.flush()

    # -- what was sent ------------------------------------------------------------------------

    def to(self, origin: str, method: str | None = None) -> list[Sent]:
        """The requests sent to ``origin`` (optionally only those of one method)."""
        return [
            sent
            for sent in self.sent
            if sent.origin == origin and (method is None or sent.method == method)
        ]

    # -- HTTPClient ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        data: bytes | None = None,
        headers: Headers | Mapping[Any, Any] | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> Deferred[Any]:
        """Send a request: a scripted outcome if one is waiting, else the node's answer."""
        raw = headers if isinstance(headers, Headers) else Headers(_listed(headers or {}))
        self.sent.append(Sent(method, url, data, timeout, raw))
        origin = origin_of(url)
        script = self._scripts.get(origin)
        if script:
            return script.pop(0)(self)
        stub = self._stubs.get(origin)
        if stub is None or origin in self._down:
            return failed(ConnectionRefusedError(origin))
        answered: Deferred[Any] = stub.request(method, url, data=data, headers=raw, **options)
        path = url[len(origin) :]
        if path in self._held_paths:
            self._held_paths.discard(path)
            late: Deferred[Any] = Deferred()
            self._held.append((answered, late))
            return late
        return answered

    def get(self, url: str, **kwargs: Any) -> Deferred[Any]:
        """``GET url``."""
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Deferred[Any]:
        """``POST url``."""
        return self.request("POST", url, **kwargs)


def _listed(headers: Mapping[Any, Any]) -> dict[Any, list[Any]]:
    return {
        name: [value] if isinstance(value, (bytes, str)) else list(value)
        for name, value in headers.items()
    }

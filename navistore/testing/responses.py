"""Answers that fakes hand out, delivered the way a real ``IResponse`` delivers its body."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

__all__ = ["FakeResponse", "deliver_body"]


class _Finished:
    """The transport of a body that has arrived whole: there is nothing left to produce."""

    def stopProducing(self) -> None:
        """Nothing to stop."""

    def pauseProducing(self) -> None:
        """Nothing to pause."""

    def resumeProducing(self) -> None:
        """Nothing to resume."""


def deliver_body(protocol: IProtocol, body: bytes) -> None:
    """Deliver ``body`` to ``protocol`` as ``IResponse.deliverBody`` does: connected, the data,
    then ``connectionLost`` with ``ResponseDone``."""
    protocol.makeConnection(_Finished())  # type: ignore[arg-type]
    if body:
        protocol.dataReceived(body)
    protocol.connectionLost(Failure(ResponseDone()))


class FakeResponse:
    """An answer like treq's: ``code``, ``headers``, ``deliverBody``, ``content()``, ``text()``,
    ``json()``; the body has arrived whole."""

    def __init__(self, code: int, headers: Headers | None = None, body: bytes = b"") -> None:
        self.code = code
        self.headers = headers if headers is not None else Headers()
        self.body = body

    def deliverBody(self, protocol: IProtocol) -> None:
        """Hand the whole body to ``protocol``, then end it as a complete response does."""
        deliver_body(protocol, self.body)

    def content(self) -> Deferred[bytes]:
        """The whole body (already received)."""
        return succeed(self.body)

    def text(self, encoding: str = "utf-8") -> Deferred[str]:
        """The body decoded as text."""
        return succeed(self.body.decode(encoding))

    def json(self) -> Deferred[Any]:
        """The body parsed as JSON."""
        return succeed(json.loads(self.body))

"""Request-body limits enforced while the body arrives, before any of it is buffered.

twisted.web reads a whole request body into ``request.content`` before rendering. For a body
declared too large in ``Content-Length`` this request class answers 413 as soon as the headers
are in (before the body is read, and before ``100 Continue`` is sent); for a chunked body it
counts the bytes as they arrive and answers 413 the moment the limit is passed. Either way the
connection is then closed and nothing reaches the Store.
"""

from __future__ import annotations

from typing import Any

from twisted.web import http
from twisted.web.server import Request, Site

from navistore.record import DEFAULT_MAX_VALUE_SIZE
from navistore.web.errors import TooLarge, error_body

__all__ = [
    "DEFAULT_MAX_BULK_SIZE",
    "DEFAULT_MAX_VALUE_SIZE",
    "LimitedRequest",
    "NavistoreSite",
    "bulk_body_limit",
    "replication_body_limit",
]


def replication_body_limit(max_value_size: int) -> int:
    """The largest ``POST /_replicate`` body accepted when values may be ``max_value_size``."""
    return max_value_size * 4 // 3 + 1024 * 1024


#: The largest ``POST /_bulk`` body accepted by default: 64 MiB.
DEFAULT_MAX_BULK_SIZE = 64 * 1024 * 1024


def bulk_body_limit(max_value_size: int) -> int:
    """The largest ``POST /_bulk`` body accepted when values may be ``max_value_size``.

    A bulk load carries many values, so its own limit (64 MiB) is larger than a value's; it
    grows with ``max_value_size`` so that one value at the limit, base64 in its entry, still fits.
    """
    return max(DEFAULT_MAX_BULK_SIZE, replication_body_limit(max_value_size))


class NavistoreSite(Site):
    """A Site whose requests refuse bodies over ``max_value_size`` bytes.

    The access log is off unless asked for: one log line per request costs about 15 % of a
    node's throughput, and a config store's clients poll.
    """

    def __init__(
        self,
        resource: Any,
        *,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        access_log: bool = False,
    ) -> None:
        super().__init__(resource, requestFactory=LimitedRequest)
        self.max_value_size = max_value_size
        self.access_log = access_log

    def log(self, request: http.Request) -> None:
        if self.access_log:
            super().log(request)


class LimitedRequest(Request):
    """A request that stops reading a body once it is known to be over the limit."""

    _received = 0
    _refused = False
    _known_limit: int | None = -1  # -1: not worked out yet for this request

    def _limit(self) -> int | None:
        if self._known_limit != -1:
            return self._known_limit  # asked again for every chunk of the body
        self._known_limit = limit = self._work_out_limit()
        return limit

    def _work_out_limit(self) -> int | None:
        site = getattr(self.channel, "site", None)
        limit: int | None = getattr(site, "max_value_size", None)
        if limit is not None and self._is_replication():
            # A batch carries whole values in base64 (4/3 larger) plus their metadata: a value
            # the node accepted must always fit in a batch on its way to a peer.
            limit = replication_body_limit(limit)
        elif limit is not None and self._is_bulk():
            limit = bulk_body_limit(limit)  # many values in one request: see navistore.web.bulk
        return limit

    def _is_replication(self) -> bool:
        # The body arrives before ``self.path`` is set; the channel has parsed the request line.
        path = getattr(self.channel, "_path", b"") or b""
        return bool(path.split(b"?", 1)[0] == b"/_replicate")

    def _is_bulk(self) -> bool:
        path = getattr(self.channel, "_path", b"") or b""
        return bool(path.split(b"?", 1)[0] == b"/_bulk")

    def gotLength(self, length: int | None) -> None:
        limit = self._limit()
        if length is not None and limit is not None and length > limit:
            self._refuse(limit)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        limit = self._limit()
        if limit is not None and self._received > limit:
            self._refuse(limit)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            # The rest of a refused chunked body arrived in the same read: it was answered 413
            # already, so the request must never be rendered (it would store a truncated body).
            return
        super().requestReceived(command, path, version)

    def _refuse(self, limit: int) -> None:
        """Answer 413 at once and close: the rest of the body is never read."""
        self._refused = True
        # The channel sends ``100 Continue`` after gotLength(); a refused request gets none.
        self.requestHeaders.removeHeader(b"Expect")
        error = TooLarge(limit)
        body = error_body(error.code, error.message, error.detail)
        head = (
            b"HTTP/1.1 413 Payload Too Large\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(body)
        )
        channel = self.channel
        if channel is not None and channel.transport is not None:
            channel.transport.write(head + body)
            channel.transport.loseConnection()

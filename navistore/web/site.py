"""The Site: connections with deadlines, and request-body limits enforced while bodies arrive.

The Site's connections are :class:`~navistore.web.channel.NavistoreChannel` (deadlines, bounded
lines, JSON protocol errors, what slow readers hold), timed by one
:class:`~navistore.web.channel.Deadlines` sweep and sharing one
:class:`~navistore.web.send_budget.SendBudget`.

twisted.web reads a whole request body into ``request.content`` before rendering. For a body
declared too large in ``Content-Length`` :class:`LimitedRequest` answers 413 as soon as the
headers are in (before the body is read, and before ``100 Continue`` is sent); for a chunked body
it counts the bytes as they arrive and answers 413 the moment the limit is passed. Either way the
connection is then closed and nothing reaches the Store. It also accepts a request target in
absolute form (``PUT http://host/key``), which RFC 9112 section 3.2.2 says a server must.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from twisted.internet.interfaces import IReactorTime
from twisted.web import http
from twisted.web.server import Request, Site

from navistore.record import DEFAULT_MAX_VALUE_SIZE
from navistore.web.access_log import AccessLog
from navistore.web.channel import (
    DEFAULT_LIMITS,
    ConnectionLimits,
    Deadlines,
    NavistoreChannel,
    refusal,
)
from navistore.web.errors import TooLarge
from navistore.web.send_budget import SendBudget

__all__ = [
    "DEFAULT_MAX_BULK_SIZE",
    "DEFAULT_MAX_VALUE_SIZE",
    "LimitedRequest",
    "NavistoreSite",
    "bulk_body_limit",
    "origin_form",
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
    """A Site whose requests refuse bodies over ``max_value_size`` bytes and whose connections
    keep the deadlines of ``limits``.

    The access log is off unless asked for: one log line per request costs about 15 % of a
    node's throughput, and a config store's clients poll.

    :param access_log: where each answered request is logged (``--access-log``), or None.
    :param reactor: what connections time their deadlines with.
    :param limits: the deadlines of every connection.
    :param send_budget: what slow readers may hold together (default: its own).
    """

    # The channel itself, not Twisted's wrapper that would pick HTTP/2 by ALPN: a node speaks
    # HTTP/1.1 only (see navistore.listening.Connections.acceptableProtocols).
    protocol = NavistoreChannel  # type: ignore[assignment]

    #: No "Starting factory <...NavistoreSite object at 0x...>" line: the node says it is ready.
    noisy = False

    def __init__(
        self,
        resource: Any,
        *,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        access_log: AccessLog | None = None,
        reactor: IReactorTime | None = None,
        limits: ConnectionLimits = DEFAULT_LIMITS,
        send_budget: SendBudget | None = None,
    ) -> None:
        super().__init__(
            resource, requestFactory=LimitedRequest, timeout=limits.idle_timeout, reactor=reactor
        )
        self.max_value_size = max_value_size
        self.access_log = access_log
        self.limits = limits
        self.deadlines = Deadlines(self.reactor)
        self.send_budget = SendBudget() if send_budget is None else send_budget

    def log(self, request: http.Request) -> None:
        if self.access_log is not None:
            self.access_log.write(request)

    def stopFactory(self) -> None:
        self.deadlines.stop()
        super().stopFactory()


def origin_form(target: bytes) -> tuple[bytes, bytes | None]:
    """A request target in origin form (``/path?query``), and the authority an absolute-form
    target named (``http://host:port/path``), else None.

    Anything else (``*``, an authority alone, no target at all) is returned as it came: the
    router answers it (a path that is no key is 400 ``invalid_key``).
    """
    if target[:1] == b"/" or b"://" not in target[:10]:
        return target, None
    parts = urlsplit(target)
    if parts.scheme.lower() not in (b"http", b"https") or not parts.netloc:
        return target, None
    path = parts.path or b"/"
    return (path + b"?" + parts.query if parts.query else path), parts.netloc


class LimitedRequest(Request):
    """A request that stops reading a body once it is known to be over the limit."""

    _received = 0
    _refused = False
    _known_limit: int | None = -1  # -1: not worked out yet for this request

    def body_limit(self) -> int | None:
        """The most bytes this request's body may have (None: no limit)."""
        return self._limit()

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

    def _target_path(self) -> bytes:
        # The body arrives before ``self.path`` is set; the channel has parsed the request line.
        target = getattr(self.channel, "_path", b"") or b""
        return origin_form(target)[0].split(b"?", 1)[0]

    def _is_replication(self) -> bool:
        return self._target_path() == b"/_replicate"

    def _is_bulk(self) -> bool:
        # /_import takes /_bulk's limit: navistore.web.export
        return self._target_path() in (b"/_bulk", b"/_import")

    def gotLength(self, length: int | None) -> None:
        limit = self._limit()
        if length is not None and limit is not None and length > limit:
            self.refuse_body(limit)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        limit = self._limit()
        if limit is not None and self._received > limit:
            self.refuse_body(limit)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            # The rest of a refused chunked body arrived in the same read: it was answered 413
            # already, so the request must never be rendered (it would store a truncated body).
            return
        if path[:1] != b"/":
            path, authority = origin_form(path)
            if authority is not None:
                # RFC 9112 section 3.2.2: the target's authority replaces any Host header (so
                # the Host checks of protected mode see what the client really asked for).
                self.requestHeaders.setRawHeaders(b"Host", [authority])
        super().requestReceived(command, path, version)

    def _log_refusal(self, status: int) -> None:
        """Put a request refused before it was whole in the access log (it is never
        finished, which is what logs the others), with the request line the channel read."""
        site = getattr(self.channel, "site", None)
        if site is None or getattr(site, "access_log", None) is None:
            return
        self.method = getattr(self.channel, "_command", None) or self.method
        self.uri = getattr(self.channel, "_path", None) or self.uri
        self.clientproto = getattr(self.channel, "_version", None) or self.clientproto
        self.code = status
        site.log(self)

    def refuse_body(self, limit: int) -> None:
        """Answer 413 at once and close: the body is, or says it will be, over ``limit``; the
        rest of it is never read."""
        self._refused = True
        # The channel sends ``100 Continue`` after gotLength(); a refused request gets none.
        self.requestHeaders.removeHeader(b"Expect")
        error = TooLarge(limit)
        channel = self.channel
        self._log_refusal(error.status)
        if isinstance(channel, NavistoreChannel):
            channel.refuse(error.status, error.code, error.message, error.detail)
        elif channel is not None and channel.transport is not None:
            channel.transport.write(refusal(error.status, error.code, error.message, error.detail))
            channel.transport.loseConnection()

"""A client's HTTP/1.1 connection: deadlines, size limits, and protocol errors as JSON.

twisted.web's ``HTTPChannel`` parses requests well but trusts its clients' pace: only a fully
idle connection times out, so one that sends a header byte a second, or a body at 1 KB/s, holds
its connection (and a file descriptor) as long as it likes, and Twisted's own answers to broken
requests are bare ``400 Bad Request`` lines or a silent close. :class:`NavistoreChannel` adds
what a node facing hostile clients needs, each a :class:`ConnectionLimits` field:

- a request's headers must all arrive within ``header_timeout`` of its first byte, and its body
  at ``min_body_rate`` bytes a second once ``body_grace`` has passed (Apache's mod_reqtimeout
  rule), or the client gets ``408 request_timeout`` and the connection closes;
- a request line over :attr:`~NavistoreChannel.MAX_LENGTH` gets ``414 uri_too_long``, a header
  line over it, more than :attr:`~NavistoreChannel.maxHeaders` headers or more than
  :attr:`~NavistoreChannel.totalHeadersSize` bytes of them ``431 headers_too_large``; every
  other parse error ``400 bad_request``; all as JSON, like every other answer of the node;
- a keep-alive connection with nothing to do closes after ``idle_timeout``, and so does one
  whose client stopped reading its answer (no byte moved in either direction that long);
- the bytes written to a client that does not read are counted in the node's
  :class:`~navistore.web.send_budget.SendBudget`, so that large answers wait once slow readers
  hold too much.

Deadlines are checked by one sweep a :class:`Deadlines` runs for all connections (a timer per
request would cost more than the rest of a small GET).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from navistore.web.errors import error_body
from navistore.web.send_budget import SendBudget

__all__ = [
    "DEFAULT_LIMITS",
    "ConnectionLimits",
    "Deadlines",
    "NavistoreChannel",
    "refusal",
    "unsent_bytes",
]


@attrs.frozen
class ConnectionLimits:
    """How long a client may take over each part of a request, and how long a connection may
    sit with nothing moving.

    :ivar header_timeout: seconds from a request's first byte to the end of its headers.
    :ivar min_body_rate: bytes a second a body must average once ``body_grace`` has passed.
    :ivar body_grace: seconds a body may take before the rate counts.
    :ivar idle_timeout: seconds a connection may sit with no byte moving either way.
    """

    header_timeout: float = 10.0
    min_body_rate: int = 64 * 1024
    body_grace: float = 10.0
    idle_timeout: float = 60.0


DEFAULT_LIMITS = ConnectionLimits()

# What a connection is doing, for the deadlines and for choosing whom to close when full.
_IDLE = 0  # between requests (Twisted's idle timeout applies)
_HEAD = 1  # a request's first byte came: its headers are due
_BODY = 2  # its headers came: its body is due at the minimum rate
_BUSY = 3  # the whole request came: it is being answered

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def unsent_bytes(transport: object) -> int:
    """Bytes written to a connection (through TLS, if it is one) that are not sent yet."""
    waiting = 0
    depth = 0
    while transport is not None and depth < 4:
        # A socket's buffer is sent from ``offset`` on (the sent part is dropped in bulk).
        buffered = len(getattr(transport, "dataBuffer", b"") or b"")
        waiting += max(0, buffered - int(getattr(transport, "offset", 0) or 0))
        waiting += sum(len(chunk) for chunk in getattr(transport, "_tempDataBuffer", ()) or ())
        waiting += sum(len(chunk) for chunk in getattr(transport, "_appSendBuffer", ()) or ())
        transport = getattr(transport, "transport", None)
        depth += 1
    return waiting


def refusal(status: int, code: str, message: str, detail: Any = None) -> bytes:
    """A complete JSON answer that closes the connection, written before any request is
    answered (there is no Request to answer through yet, or it cannot be trusted)."""
    body = error_body(code, message, detail)
    head = (
        b"HTTP/1.1 %d %s\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % (status, _REASONS.get(status, b"Error"), len(body))
    )
    return head + body


class Deadlines:
    """One sweep, every :attr:`period` seconds while any connection is due, that closes the
    connections whose headers or body are late.

    :param clock: what the sweep runs and reads time on (the Site's reactor).
    """

    period = 0.5

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._due: set[NavistoreChannel] = set()
        self._sweep: IDelayedCall | None = None

    def watch(self, channel: NavistoreChannel) -> None:
        """Check ``channel`` on every sweep until :meth:`forget` (it has a part due)."""
        self._due.add(channel)
        if self._sweep is None:
            self._sweep = self.clock.callLater(self.period, self._run)

    def forget(self, channel: NavistoreChannel) -> None:
        """Stop checking ``channel``."""
        self._due.discard(channel)

    @property
    def due(self) -> int:
        """How many connections have headers or a body due."""
        return len(self._due)

    def _run(self) -> None:
        self._sweep = None
        now = self.clock.seconds()
        for channel in list(self._due):
            channel.check_deadline(now)
        if self._due:
            self._sweep = self.clock.callLater(self.period, self._run)

    def stop(self) -> None:
        """Cancel the sweep (the Site stops)."""
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        self._due.clear()


class NavistoreChannel(HTTPChannel):
    """An HTTP/1.1 connection with deadlines, bounded lines and JSON protocol errors.

    The Site (:class:`~navistore.web.site.NavistoreSite`) builds it and sets ``site``; its
    ``limits``, ``deadlines`` and ``send_budget`` are read from there.
    """

    #: The longest request line, and the longest header line.
    MAX_LENGTH = 16 * 1024
    #: The most bytes of request line and headers together.
    totalHeadersSize = 32 * 1024
    #: The most header lines.
    maxHeaders = 100
    #: Seconds a closing connection may wait for its client to read the last answer.
    abortTimeout = 5

    site: Any = None
    _phase = _IDLE
    _since = 0.0
    _body_received = 0
    _seen_request_line = False
    _refused = False
    _held = 0
    _unsent_mark: int | None = None
    _seconds: Any = None

    # -- wiring -------------------------------------------------------------------------------

    @property
    def limits(self) -> ConnectionLimits:
        """The Site's limits (the defaults without a NavistoreSite)."""
        return getattr(self.site, "limits", None) or DEFAULT_LIMITS

    def _deadlines(self) -> Deadlines | None:
        return getattr(self.site, "deadlines", None)

    def _budget(self) -> SendBudget | None:
        return getattr(self.site, "send_budget", None)

    def _now(self) -> float:
        # Several times a request: the Site's clock is looked up once per connection.
        seconds = self._seconds
        if seconds is None:
            clock: Any = getattr(self.site, "reactor", None)
            if clock is None:
                from twisted.internet import reactor as clock
            seconds = self._seconds = clock.seconds
        return float(seconds())

    @property
    def evictable(self) -> bool:
        """Whether closing this connection loses no work: it is between requests, or still
        waiting for a request's headers."""
        return self._phase in (_IDLE, _HEAD) and not self._refused

    @property
    def since(self) -> float:
        """When this connection began what it is doing now (see :attr:`evictable`)."""
        return self._since

    # -- phases -------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self._since = self._now()
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing: nothing more is parsed
        if self._phase == _IDLE and data.strip(b"\r\n"):
            self._phase = _HEAD
            self._since = self._now()
            deadlines = self._deadlines()
            if deadlines is not None:
                deadlines.watch(self)
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if not self._seen_request_line:
            self._seen_request_line = bool(line)
        elif self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self.refuse(
                431,
                "headers_too_large",
                f"the request's headers are longer than {self.totalHeadersSize} bytes",
                {"max_header_bytes": self.totalHeadersSize},
            )
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if not self._seen_request_line:
            self.refuse(
                414,
                "uri_too_long",
                f"the request line is longer than {self.MAX_LENGTH} bytes",
                {"max_line_bytes": self.MAX_LENGTH},
            )
        else:
            self.refuse(
                431,
                "headers_too_large",
                f"a header line is longer than {self.MAX_LENGTH} bytes",
                {"max_line_bytes": self.MAX_LENGTH},
            )

    def headerReceived(self, line: bytes) -> bool:
        if self._receivedHeaderCount >= self.maxHeaders:
            self.refuse(
                431,
                "headers_too_large",
                f"the request has more than {self.maxHeaders} headers",
                {"max_headers": self.maxHeaders},
            )
            return False
        return bool(super().headerReceived(line))

    def allHeadersReceived(self) -> None:
        self._phase = _BODY
        self._since = self._now()
        self._body_received = 0
        if self.length == 0:
            deadlines = self._deadlines()
            if deadlines is not None:
                deadlines.forget(self)
        super().allHeadersReceived()

    def rawDataReceived(self, data: bytes) -> None:
        if self._phase != _BODY:
            super().rawDataReceived(data)
            return
        self._body_received += len(data)
        super().rawDataReceived(data)
        # A chunked body announces each chunk's size: one larger than the body may be (2^160,
        # say) is refused when announced, not after the client has trickled it for a while.
        chunk = getattr(self._transferDecoder, "length", None)
        if self._phase == _BODY and isinstance(chunk, int) and chunk and self.requests:
            limit = getattr(self.requests[-1], "body_limit", lambda: None)()
            if limit is not None and chunk > limit:
                self.requests[-1].refuse_body(limit)

    def allContentReceived(self) -> None:
        self._phase = _BUSY
        self._seen_request_line = False
        deadlines = self._deadlines()
        if deadlines is not None:
            deadlines.forget(self)
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        self._phase = _IDLE
        self._since = self._now()
        self._unsent_mark = None
        super().requestDone(request)
        ended = getattr(request, "ended", None)
        if ended is not None:
            ended()  # the tracker learns it last: the channel is ready for the next request

    def check_deadline(self, now: float) -> None:
        """Close the connection with 408 if its headers or its body are late (the sweep)."""
        limits = self.limits
        if self._phase == _HEAD:
            if now - self._since >= limits.header_timeout:
                self.refuse(
                    408,
                    "request_timeout",
                    f"the request's headers did not arrive within {limits.header_timeout:g} s",
                    {"header_timeout": limits.header_timeout},
                )
        elif self._phase == _BODY:
            rate = limits.min_body_rate
            allowed = limits.body_grace + (self._body_received / rate if rate else math.inf)
            if now - self._since >= allowed:
                self.refuse(
                    408,
                    "request_timeout",
                    f"the request's body arrived slower than {rate} bytes a second",
                    {"min_body_rate": rate, "received": self._body_received},
                )
        else:
            deadlines = self._deadlines()
            if deadlines is not None:
                deadlines.forget(self)

    # -- refusing -----------------------------------------------------------------------------

    def refuse(self, status: int, code: str, message: str, detail: Any = None) -> None:
        """Answer ``status`` with a JSON error and close, whatever state the request is in.

        A client that does not read the answer is cut after :attr:`abortTimeout` seconds.
        """
        if self._refused:
            return
        self._refused = True
        deadlines = self._deadlines()
        if deadlines is not None:
            deadlines.forget(self)
        transport = self.transport
        if transport is None:
            return
        transport.write(refusal(status, code, message, detail))
        self.loseConnection()
        if self._abortingCall is None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)

    def evict(self) -> None:
        """Cut this connection to make room for another (it was :attr:`evictable`)."""
        self._refused = True
        self._abort()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Every parse error twisted.web detects itself: a malformed request line, header, length
        # or chunk (a chunk size too long to be a number among them).
        self.refuse(
            400,
            "bad_request",
            "the request is not valid HTTP/1.1 (a malformed request line, header, "
            "Content-Length or chunked body)",
        )

    def timeoutConnection(self) -> None:
        """Nothing was received for ``idle_timeout``: close, unless an answer still drains.

        An answer still unsent is checked again a quarter of the timeout later (then every
        timeout): if nothing of it moved meanwhile the client stopped reading, and the
        connection is cut, so a client that reads nothing holds its answer for at most 1.25
        times the idle timeout.
        """
        unsent = unsent_bytes(self.transport)
        if unsent and (self._unsent_mark is None or unsent < self._unsent_mark):
            # The client reads (slowly), or it is the first look: give it another round.
            first = self._unsent_mark is None
            self._unsent_mark = unsent
            idle = self.limits.idle_timeout
            self.setTimeout(idle / 4 if first else idle)
            return
        if unsent:
            self._abort()  # the client stopped reading: nothing would ever flush
            return
        self.loseConnection()
        if self._abortingCall is None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)

    def forceAbortClient(self) -> None:
        self._abortingCall = None
        self._abort()

    def _abort(self) -> None:
        transport = self.transport
        abort: Callable[[], None] | None = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        elif transport is not None:
            transport.loseConnection()

    # -- what slow readers hold ---------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport: Any = self.transport
        transport.write(data)
        if self._waitingForTransport:
            self._hold(len(data))

    def writeSequence(self, iovec: list[bytes]) -> None:
        transport: Any = self.transport
        transport.writeSequence(iovec)
        if self._waitingForTransport:
            self._hold(sum(map(len, iovec)))

    def _hold(self, size: int) -> None:
        budget = self._budget()
        if budget is not None:
            self._held += size
            budget.hold(size)

    def _release(self) -> None:
        held, self._held = self._held, 0
        if held:
            budget = self._budget()
            if budget is not None:
                budget.release(held)

    def resumeProducing(self) -> None:
        # The transport's buffer is empty again: what was held is sent.
        self._release()
        super().resumeProducing()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        deadlines = self._deadlines()
        if deadlines is not None:
            deadlines.forget(self)
        self._release()
        super().connectionLost(reason)

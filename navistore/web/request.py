"""The node's twisted.web Request: body limits while bodies arrive, and a lighter answer path.

:class:`LimitedRequest` refuses a body over the limit as it arrives. For a body declared too
large in ``Content-Length`` it answers 413 as soon as the headers are in (before the body is
read, and before ``100 Continue`` is sent); for a chunked body it counts the bytes as they arrive
and answers 413 the moment the limit is passed. Either way the connection is then closed and
nothing reaches the Store. It also accepts a request target in absolute form
(``PUT http://host/key``), which RFC 9112 section 3.2.2 says a server must.

:class:`NavistoreRequest` is what the Site builds. A small GET costs twisted.web about as much
as everything Navistore does for it, and most of that is work done once per request that could
be done once: the ``Server`` and ``Date`` headers set (and sanitized) on every request, the path
split into ``postpath`` for a resource tree the node does not have, each header checked for
line breaks as it is set and again canonicalized as it is written, a ``Deferred`` per request for
whoever wants to know when it ends. So this request

- writes the status line, a ``Date`` line formatted once a second, the ``Server`` line and the
  headers in one buffer, with the body too when the answer is whole (one write, one syscall);
- takes a *head*: header lines already encoded (and checked) by whoever built them, which a
  record's answer reuses for as long as the record is current (:attr:`head`);
- renders the Site's leaf resource directly, without walking a tree;
- tells a :class:`RequestTracker` when it starts and ends, and calls back whoever asked
  (:func:`when_lost`) if its connection goes first, without a ``Deferred`` for either.
"""

from __future__ import annotations

import time
from typing import Any, Callable
from urllib.parse import urlsplit

from twisted.python.failure import Failure
from twisted.web.http import NO_BODY_CODES, datetimeToString
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, version

from navistore.tally import ABORTED
from navistore.web.channel import NavistoreChannel, refusal
from navistore.web.errors import TooLarge

__all__ = [
    "DEFAULT_MAX_BULK_SIZE",
    "LimitedRequest",
    "NavistoreRequest",
    "RequestWatcher",
    "bulk_body_limit",
    "header_line",
    "origin_form",
    "replication_body_limit",
    "when_lost",
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


_LINE_BREAKS = bytes.maketrans(b"\r\n", b"  ")


def header_line(name: bytes, value: bytes) -> bytes:
    """One encoded header line, ``Name: value\\r\\n``; line breaks in the value become spaces
    (what twisted.web does to every header it sends), so that no value can add a header."""
    return b"%s: %s\r\n" % (name, value.translate(_LINE_BREAKS))


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
        if length:  # no body (0) needs no limit; a chunked one (None) is counted as it comes
            limit = self._limit()
            if limit is not None and length > limit:
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


class RequestWatcher:
    """What a Site tells about each request it serves (see :class:`NavistoreRequest`).

    Shutdown waits for requests being served, and metrics count them: both learn of a request
    from these two calls rather than from a ``Deferred`` per request.
    """

    def started(self, request: Request) -> None:
        """``request``'s first line arrived."""

    def finished(self, request: Request, status: int) -> None:
        """``request`` was answered with ``status``, or its connection was lost first
        (:data:`~navistore.tally.ABORTED`). Called once per :meth:`started`."""


_SERVER_LINE = b"Server: " + version + b"\r\n"


class _DateLine:
    """The ``Date`` header line, formatted once a second rather than once a request."""

    second = -1
    line = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.line = b"Date: " + datetimeToString(second) + b"\r\n"
            cls.second = second
        return cls.line


class NavistoreRequest(LimitedRequest):
    """The Site's request: body limits (:class:`LimitedRequest`), and the lighter answer path
    of this module's docstring.

    :ivar head: header lines already encoded (each ``Name: value\\r\\n``, see
        :func:`header_line`), written after those in ``responseHeaders``.
    """

    head = b""
    _watcher: RequestWatcher | None = None
    _lost_callbacks: list[Callable[[], object]] | None = None
    _no_body = False
    _sized = False  # the head says the Content-Length

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        self._answer_index = getattr(channel.site, "answer_index", None)
        watcher = getattr(channel.site, "request_watcher", None)
        if watcher is not None:
            self._watcher = watcher
            watcher.started(self)

    # -- processing ---------------------------------------------------------------------------

    def process(self) -> None:
        channel: Any = self.channel
        site = self.site = channel.site
        resource: Resource = site.resource
        if not getattr(resource, "isLeaf", False):
            super().process()  # a tree to walk: twisted.web's own way, headers and all
            return
        self.prepath = []
        self.postpath = []
        try:
            self.render(resource)
        except BaseException:
            self.processingFailed(Failure())

    def render(self, resrc: Any) -> None:
        body = resrc.render(self)
        if body is NOT_DONE_YET:
            return
        if not isinstance(body, bytes):
            super().render(_Returns(body))  # twisted.web's own error page for a non-bytes
            return
        if self.method == b"HEAD":
            if body:
                self.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
            self.write(b"")
        else:
            self.write_whole(body)
        self.finish()

    # -- writing ------------------------------------------------------------------------------

    def write_whole(self, body: bytes) -> None:
        """Write the whole answer, head and ``body``, in one write (a ``Content-Length`` is
        added unless set already)."""
        if self.startedWriting or self.finished or self._disconnected:
            self.write(body)
            return
        if self.code in NO_BODY_CODES:
            self.write(b"")
            return
        if not self.responseHeaders.hasHeader(b"Content-Length"):
            self.head += b"Content-Length: %d\r\n" % len(body)
            self._sized = True
        self._write_head(body)

    def write(self, data: bytes) -> None:
        if self.startedWriting:
            if not self._no_body:
                super().write(data)
            return
        if self.finished or self._disconnected:
            super().write(data)  # what twisted.web does then: raise, or write nothing
            return
        self._write_head(data)

    def _write_head(self, data: bytes) -> None:
        """The first write: the status line and every header, then ``data`` if it may go."""
        self.startedWriting = 1
        headers = self.responseHeaders
        code = self.code
        # The head's own lines are looked at first: a record's answer says its type and
        # length there, and then responseHeaders need not be searched.
        if (
            code not in NO_BODY_CODES
            and b"Content-Type:" not in self.head
            and not headers.hasHeader(b"Content-Type")
            and self.defaultContentType is not None
            and headers.getRawHeaders(b"Content-Length") != [b"0"]
        ):
            headers.setRawHeaders(b"Content-Type", [self.defaultContentType])
        if (
            not self._sized
            and self.clientproto == b"HTTP/1.1"
            and self.method != b"HEAD"
            and code not in NO_BODY_CODES
            and not headers.hasHeader(b"Content-Length")
        ):
            headers.setRawHeaders(b"Transfer-Encoding", [b"chunked"])
            self.chunked = 1
        if self.lastModified is not None and not headers.hasHeader(b"Last-Modified"):
            headers.setRawHeaders(b"Last-Modified", [datetimeToString(self.lastModified)])
        if self.etag is not None:
            headers.setRawHeaders(b"ETag", [self.etag])
        if self.cookies:
            headers.setRawHeaders(b"Set-Cookie", self.cookies)
        parts = [
            b"%s %d %s\r\n" % (self.clientproto, code, self.code_message),
            _DateLine.now(),
            _SERVER_LINE,
        ]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                parts.append(b"%s: %s\r\n" % (name, value))
        parts.append(self.head)
        if self._answer_index is not None:
            # Taken as the head goes out: at least the seq of anything the answer says.
            parts.append(b"X-Navistore-Index: %d\r\n" % self._answer_index())
        parts.append(b"\r\n")
        if self.method == b"HEAD" or code in NO_BODY_CODES:
            self._no_body = True
        elif data:
            self.sentLength += len(data)
            if self.chunked:
                parts.append(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                parts.append(data)
        self.channel.write(b"".join(parts))

    # -- the end ------------------------------------------------------------------------------

    def ended(self) -> None:
        """The answer is out (the channel is done with this request)."""
        watcher = self._watcher
        if watcher is not None:
            self._watcher = None
            watcher.finished(self, self.code)

    def connectionLost(self, reason: Failure) -> None:
        watcher = self._watcher
        if watcher is not None:
            self._watcher = None
            watcher.finished(self, ABORTED)
        callbacks, self._lost_callbacks = self._lost_callbacks, None
        super().connectionLost(reason)
        for callback in callbacks or ():
            callback()

    def when_lost(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` if the connection is lost before the answer is out."""
        if self._lost_callbacks is None:
            self._lost_callbacks = []
        self._lost_callbacks.append(callback)


class _Returns(Resource):
    """A resource whose render returned something else than bytes, rendered again by
    twisted.web so that it answers with its own error page."""

    isLeaf = True

    def __init__(self, body: object) -> None:
        super().__init__()
        self._body = body

    def render(self, request: Any) -> Any:
        return self._body


def when_lost(request: Request, callback: Callable[[], object]) -> None:
    """Call ``callback`` once if ``request``'s connection is lost before its answer is out."""
    if isinstance(request, NavistoreRequest):
        request.when_lost(callback)
    else:
        request.notifyFinish().addErrback(lambda _failure: callback())

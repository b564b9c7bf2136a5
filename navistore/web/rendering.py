"""The one place that owns a twisted.web request's lifecycle.

Handlers are coroutines that return a :class:`~navistore.web.responses.Response` (or raise).
:func:`render_async` runs one, maps every exception to a status code and a JSON error body (through
:func:`~navistore.web.errors.as_api_error`), writes the answer, streams bodies that come as async
iterators with backpressure, and never writes to a client that went away.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from navistore.web.errors import ApiError, as_api_error, error_body
from navistore.web.request import when_lost
from navistore.web.responses import Response
from navistore.web.send_budget import SMALL_ANSWER, SendBudget, send_budget_of

__all__ = ["answer_failure", "render_async", "render_deferred", "render_error"]

log = Logger()


class _Backpressure:
    """A streaming producer that lets an async writer wait while the transport is full."""

    def __init__(self) -> None:
        self._paused: Deferred[None] | None = None

    def pauseProducing(self) -> None:
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()

    async def wait(self) -> None:
        if self._paused is not None:
            await self._paused


class _Exchange:
    """One request being answered; remembers whether the client is still there."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.gone = False
        when_lost(request, self._lost)

    def _lost(self) -> None:
        self.gone = True

    def start(self, status: int, headers: dict[bytes, bytes]) -> None:
        request = self.request
        request.setResponseCode(status)
        for name, value in headers.items():
            request.responseHeaders.setRawHeaders(name, [value])

    def finish(self) -> None:
        if not self.gone:
            self.request.finish()

    async def send(self, response: Response) -> None:
        if response.stream is None:
            self.send_whole(response)
        elif not self.gone:
            await self._send_stream(response, response.stream)

    def send_whole(self, response: Response) -> None:
        """Answer with a response whose body is given whole."""
        if self.gone:
            return
        headers = dict(response.headers)
        if response.status not in (204, 304):
            headers.setdefault(b"Content-Length", b"%d" % len(response.body))
        self.start(response.status, headers)
        self.request.write(response.body)
        self.finish()

    async def _send_stream(self, response: Response, stream: AsyncIterator[bytes]) -> None:
        self.start(response.status, response.headers)
        producer = _Backpressure()
        self.request.registerProducer(producer, True)
        try:
            async for chunk in stream:
                if self.gone:
                    return
                self.request.write(chunk)
                await producer.wait()
        finally:
            if not self.gone:
                self.request.unregisterProducer()
        self.finish()

    def send_error(self, error: ApiError) -> None:
        if self.gone:
            return
        if self.request.startedWriting:
            # Part of a streamed body is out; the only honest signal left is to cut it short.
            log.warn("aborting a streamed answer: {message}", message=error.message)
            transport = self.request.channel.transport if self.request.channel else None
            if transport is not None:
                transport.loseConnection()
            return
        body = error_body(error.code, error.message, error.detail)
        headers = {
            b"Content-Type": b"application/json",
            b"Content-Length": b"%d" % len(body),
            **error.headers,
        }
        self.start(error.status, headers)
        self.request.write(body)
        self.finish()


def render_async(
    request: Request,
    handler: Callable[[], Awaitable[Response]],
    *,
    cancel_on_disconnect: bool = True,
) -> int:
    """Run ``handler`` for ``request`` and answer with its result; return ``NOT_DONE_YET``.

    :param cancel_on_disconnect: cancel the handler when the client goes away. Writes pass
        False: once a write is under way it completes (and is durable) whether or not anyone
        waits for the answer.
    """
    exchange = _Exchange(request)
    budget = send_budget_of(request) if request.method == b"GET" else None

    async def run() -> None:
        woken = False
        try:
            try:
                response: Response | None = await handler()
                while _must_wait(response, budget):
                    # Clients that do not read hold the node's send budget: wait holding
                    # nothing, then read again (the answer may have changed meanwhile).
                    assert budget is not None
                    response = None
                    await budget.room()
                    woken = True
                    response = await handler()
                assert response is not None
            except CancelledError:
                return
            except Exception:
                exchange.send_error(as_api_error(Failure()))
                return
            try:
                await exchange.send(response)
            except CancelledError:
                return
            except Exception:
                exchange.send_error(as_api_error(Failure()))
        finally:
            if woken and budget is not None:
                budget.pass_on()  # after the write: the next waiter sees what it holds

    done = Deferred.fromCoroutine(run())
    if cancel_on_disconnect:
        when_lost(request, done.cancel)
    done.addErrback(lambda failure: log.failure("answering failed", failure))
    return NOT_DONE_YET


def _must_wait(response: Response | None, budget: SendBudget | None) -> bool:
    """Whether a read's answer is large and the send budget is spent."""
    return (
        budget is not None
        and response is not None
        and response.stream is None
        and len(response.body) > SMALL_ANSWER
        and budget.spent
    )


def render_deferred(request: Request, answer: Deferred[Response]) -> int:
    """Answer ``request`` with the Response (or the failure) ``answer`` fires with.

    The same lifecycle as :func:`render_async` for work already under way as a Deferred: the
    hot paths skip a coroutine per request this way. The work is never cancelled (writes use
    it: once under way, a write completes whether or not anyone waits for the answer).
    """
    exchange = _Exchange(request)

    def failed(failure: Failure) -> None:
        if not failure.check(CancelledError):
            exchange.send_error(as_api_error(failure))

    answer.addCallbacks(exchange.send_whole, failed)
    answer.addErrback(lambda failure: log.failure("answering failed", failure))
    return NOT_DONE_YET


def answer_failure(failure: Failure, request: Request) -> None:
    """Answer ``request`` with the JSON error of ``failure`` (work a fast path started), as
    :func:`render_deferred` would; nothing if the client is gone."""
    if failure.check(CancelledError) or getattr(request, "_disconnected", False):
        return
    try:
        _Exchange(request).send_error(as_api_error(failure))
    except Exception:
        log.failure("answering failed")


def render_error(request: Request, error: ApiError) -> bytes:
    """Answer ``request`` with ``error`` at once, from ``render`` (a refusal before any work)."""
    body = error_body(error.code, error.message, error.detail)
    request.setResponseCode(error.status)
    headers = {b"Content-Type": b"application/json", **error.headers}
    for name, value in headers.items():
        request.responseHeaders.setRawHeaders(name, [value])
    if request.method == b"HEAD":
        # Its GET's headers, no body: Twisted would log a line for every HEAD given a body.
        request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
        return b""
    return body

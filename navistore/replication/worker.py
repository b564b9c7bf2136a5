"""What a pusher and a puller share: one loop per peer, backoff, timeouts, status times.

Each worker runs a single coroutine, so it never has two requests to its peer in flight. Only the
waits of that loop (an HTTP exchange, a backoff pause, waiting for a change) are interrupted by
:meth:`Worker.stop`; Store calls always run to the end, so a cursor being persisted is persisted.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from random import Random
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ..store import Store
from ..waiters import Waiters
from .wire import MEDIA_TYPE

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_FACTOR",
    "PeerRefused",
    "Worker",
    "backoff_delay",
    "iso_time",
]

log = Logger()

T = TypeVar("T")

#: The first retry waits up to this many seconds; each failure doubles the bound.
BACKOFF_BASE = 0.5
BACKOFF_FACTOR = 2.0


def backoff_delay(
    failures: int,
    rng: Random,
    *,
    cap: float,
    base: float = BACKOFF_BASE,
    factor: float = BACKOFF_FACTOR,
) -> float:
    """How long to wait after ``failures`` consecutive failures (0 for the first): "full jitter".

    A uniform draw in ``[0, min(cap, base * factor ** failures)]``: peers that failed together
    (a partition healing) do not retry in lockstep.
    """
    bound = min(cap, base * factor ** min(failures, 64))
    return rng.uniform(0.0, bound)


def iso_time(seconds: float | None) -> str | None:
    """A reactor time (seconds since the epoch) as ISO 8601 UTC text, or None."""
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class PeerRefused(Exception):
    """The peer answered with a non-2xx status; its JSON error, when it sent one, is kept."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.code: str | None = None
        message = body[:300].decode("utf-8", "replace")
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if isinstance(document, dict):
            self.code = str(document.get("error"))
            message = f"{self.code}: {document.get('message')}"
        super().__init__(f"HTTP {status} {message}")


def describe(error: BaseException, timeout: float) -> str:
    """One line saying why an exchange with a peer failed."""
    if isinstance(error, TimeoutError):
        return f"no complete answer within {timeout:g} s"
    if isinstance(error, PeerRefused):
        return str(error)
    text = str(error) or repr(error)
    return f"{type(error).__name__}: {text}"


class Worker:
    """A loop talking to one peer; subclasses implement :meth:`_run` and :meth:`status`.

    :param url: the peer's normalised base URL.
    :param http_client: treq-like: ``post(url, data=, headers=, timeout=)`` and
        ``get(url, timeout=)`` returning Deferreds of responses with ``code`` and ``content()``.
    :param clock: times the backoff pauses and the request deadlines.
    :param random: draws the backoff jitter.
    """

    #: The states in which the worker has nothing to do until something changes.
    quiet_states: tuple[str, ...] = ("self", "stopped")

    def __init__(
        self,
        store: Store,
        url: str,
        *,
        http_client: Any,
        clock: IReactorTime,
        random: Random,
        max_backoff: float,
        request_timeout: float,
    ) -> None:
        self.url = url
        self.state = "stopped"
        self.last_error: str | None = None
        self._store = store
        self._http = http_client
        self._clock = clock
        self._random = random
        self._max_backoff = max_backoff
        self._timeout = request_timeout
        self._failures = 0
        self._last_success: float | None = None
        self._retry_at: float | None = None
        self._busy = False
        self._stopping = False
        self._loop: Deferred[None] | None = None
        self._interruptible: Deferred[Any] | None = None
        self._quiet = Waiters()
        self._finished = Waiters()

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the loop is running (started and not yet ended)."""
        return self._loop is not None and not self._loop.called

    def start(self) -> None:
        """Start the loop, unless it runs already."""
        if self.running:
            return
        self._stopping = False
        self._loop = Deferred.fromCoroutine(self._guarded_run())

    def stop(self) -> Deferred[None]:
        """Stop: cancel the request or pause under way; fire once the loop has ended."""
        self._stopping = True
        if self._loop is None or self._loop.called:
            if self.state != "self":
                self.state = "stopped"
            return succeed(None)
        finished = self._finished.wait()
        if self._interruptible is not None:
            self._interruptible.cancel()
        return finished

    async def _guarded_run(self) -> None:
        try:
            await self._run()
        except CancelledError:
            pass
        except Exception:
            log.failure("replication with {url} stopped on an unexpected error", url=self.url)
        finally:
            if self.state != "self":
                self.state = "stopped"
            self._busy = False
            self._ended()
            self._quiet.fire()
            self._finished.fire()

    async def _run(self) -> None:
        raise NotImplementedError

    def _ended(self) -> None:
        """Called once the loop has ended, however it ended."""

    # -- quiescence -----------------------------------------------------------------------

    def is_idle(self) -> bool:
        """Whether nothing is in flight and there is nothing to do until something changes."""
        return not self._busy and self.state in self.quiet_states

    def caught_up(self) -> Deferred[None]:
        """Fire when :meth:`is_idle` is (next) true: at once if it is now."""
        return succeed(None) if self.is_idle() else self._quiet.wait()

    def _became_quiet(self) -> None:
        self._quiet.fire()

    # -- waits --------------------------------------------------------------------------------

    async def _interruptibly(self, waiting: Deferred[T]) -> T:
        """Await ``waiting``, which :meth:`stop` cancels."""
        if self._stopping:
            waiting.cancel()
            raise CancelledError()
        self._interruptible = waiting
        try:
            return await waiting
        finally:
            self._interruptible = None

    async def _pause(self, seconds: float) -> None:
        await self._interruptibly(deferLater(self._clock, seconds))

    async def _request(self, url: str, body: bytes | None = None) -> tuple[int, bytes]:
        """POST ``body`` (or GET when None) and read the whole answer, within the timeout."""

        async def exchange() -> tuple[int, bytes]:
            if body is None:
                response = await self._http.get(url, timeout=self._timeout)
            else:
                headers = {"Content-Type": MEDIA_TYPE}
                response = await self._http.post(
                    url, data=body, headers=headers, timeout=self._timeout
                )
            content: bytes = await response.content()
            return int(response.code), content

        attempt = Deferred.fromCoroutine(exchange())
        attempt.addTimeout(self._timeout, self._clock)
        return await self._interruptibly(attempt)

    # -- outcomes -----------------------------------------------------------------------------

    def _now(self) -> float:
        return float(self._clock.seconds())

    def _succeeded(self) -> None:
        if self._failures:
            log.info("replication with {url} works again", url=self.url)
        self._failures = 0
        self._last_success = self._now()

    async def _back_off(self, error: BaseException) -> None:
        """Record a failure and wait the backoff delay (interrupted by :meth:`stop`)."""
        delay = backoff_delay(self._failures, self._random, cap=self._max_backoff)
        self._failures += 1
        self.last_error = describe(error, self._timeout)
        self.state = "backoff"
        self._retry_at = self._now() + delay
        log.warn(
            "replication with {url} failed ({failures} in a row): {error}; "
            "retrying in {delay:.2f} s",
            url=self.url,
            failures=self._failures,
            error=self.last_error,
            delay=delay,
        )
        self._busy = False
        try:
            await self._pause(delay)
        finally:
            self._retry_at = None

    def _common_status(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "state": self.state,
            "last_error": self.last_error,
            "last_success": iso_time(self._last_success),
            "retry_at": iso_time(self._retry_at),
            "failures": self._failures,
        }

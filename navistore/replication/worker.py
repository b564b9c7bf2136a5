"""What a pusher and a puller share: one loop per peer, backoff, timeouts, status times.

Each worker runs a single coroutine, so it never has two requests to its peer in flight. Only the
waits of that loop (an HTTP exchange, a backoff pause, waiting for a change) are interrupted by
:meth:`Worker.stop`; Store calls always run to the end, so a cursor being persisted is persisted.

A backoff after a failure where the peer gave no answer is probed (:mod:`.probe`): the one
request sent besides the loop's, only while the loop pauses, and the pause ends as soon as the
peer answers it.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Callable, TypeVar

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from navistore.links import SMALL_ANSWER_BYTES, Answer, Failures, PeerLink, iso_time
from navistore.protocol.batches import MEDIA_TYPE
from navistore.replication.probe import PROBE_INTERVAL, Probe, gave_no_answer
from navistore.store import Store
from navistore.waiters import Waiters

__all__ = ["Worker"]

log = Logger()

T = TypeVar("T")


class Worker:
    """A loop talking to one peer; subclasses implement :meth:`_run` and :meth:`status`.

    :param url: the peer's normalised base URL.
    :param link: the client, clock, jitter, timeout and backoff cap it talks to the peer with.
    :param probe_interval: while backing off after a failure where the peer gave no answer,
        ask its ``/_health`` this often (seconds) and resume as soon as it answers; None: never.
    """

    #: The states in which the worker has nothing to do until something changes.
    quiet_states: tuple[str, ...] = ("self", "stopped")

    def __init__(
        self,
        store: Store,
        url: str,
        *,
        link: PeerLink,
        probe_interval: float | None = PROBE_INTERVAL,
    ) -> None:
        self.url = url
        self.state = "stopped"
        self._store = store
        self._link = link
        self._clock = link.clock
        self._failures = Failures(link, f"replication with {url}")
        self._last_success: float | None = None
        #: Exchanges with the peer that failed, in all (never reset).
        self.errors = 0
        self._retry_at: float | None = None
        self._busy = False
        self._stopping = False
        self._loop: Deferred[None] | None = None
        self._interruptible: Deferred[Any] | None = None
        self._quiet = Waiters()
        self._finished = Waiters()
        self._pause_call: IDelayedCall | None = None
        self._paused_at = 0.0
        self._probe_interval = probe_interval
        self._probe: Probe | None = None
        self._probes_done = 0

    @property
    def probes(self) -> int:
        """Probes sent toward the peer, in all (never reset)."""
        return self._probes_done + (0 if self._probe is None else self._probe.sent)

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

    async def _attempt(self, step: Callable[[], Awaitable[bool]]) -> bool | None:
        """Run one step of the loop, busy meanwhile; after a failure wait out the backoff and
        answer None (the loop tries again).

        :raises CancelledError: the worker is stopping (a failure then is the stop's doing).
        """
        self._busy = True
        try:
            return await step()
        except Exception as error:
            if self._stopping:
                raise CancelledError() from None
            await self._back_off(error)
            return None

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

    def _pause_length(self, seconds: float) -> float:
        """How long a pause of ``seconds`` really is (a subclass may cap it)."""
        return seconds

    async def _pause(self, seconds: float) -> None:
        """Pause ``seconds`` (see :meth:`_pause_length`); :meth:`_end_pause` may cut it short,
        :meth:`stop` cancels it."""
        seconds = self._pause_length(seconds)

        def cancel(_: Deferred[None]) -> None:
            if call.active():
                call.cancel()

        over: Deferred[None] = Deferred(cancel)
        call = self._clock.callLater(seconds, over.callback, None)
        self._pause_call, self._paused_at = call, self._now()
        try:
            await self._interruptibly(over)
        finally:
            self._pause_call = None

    def _end_pause(self, within: float = 0.0) -> None:
        """End the pause under way within ``within`` seconds of its start (at the next turn of
        the reactor if that is past), if it would last longer."""
        call = self._pause_call
        if call is None or not call.active():
            return
        soonest = self._paused_at + within
        if call.getTime() > soonest:
            now = self._now()
            call.reset(max(0.0, soonest - now))
            self._retry_at = max(now, soonest)

    async def _request(self, url: str, body: bytes | None = None) -> Answer:
        """POST ``body`` (or GET when None) and read the whole answer, within the timeout."""
        if body is None:
            attempt = self._link.exchange("GET", url)
        else:
            # The answer to a pushed batch is its acknowledgement: a few bytes of JSON.
            attempt = self._link.exchange(
                "POST",
                url,
                body=body,
                headers={"Content-Type": MEDIA_TYPE},
                max_bytes=SMALL_ANSWER_BYTES,
            )
        return await self._interruptibly(attempt)

    # -- outcomes -----------------------------------------------------------------------------

    def _now(self) -> float:
        return self._link.now()

    @property
    def last_error(self) -> str | None:
        """Why the last exchange with the peer failed, or None if none ever did."""
        return self._failures.last_error

    def seconds_since_success(self) -> float | None:
        """Seconds since the peer last answered an exchange well (acknowledged a batch, sent
        a page), or None if it never did since this worker was made."""
        return None if self._last_success is None else max(0.0, self._now() - self._last_success)

    def _succeeded(self) -> None:
        self._failures.recovered()
        self._last_success = self._now()

    async def _back_off(self, error: BaseException) -> None:
        """Record a failure and wait the backoff delay (interrupted by :meth:`stop`); after a
        failure without an answer, probe the peer meanwhile and resume once it answers."""
        delay = self._pause_length(self._failures.failed(error))
        self.errors += 1
        self.state = "backoff"
        self._retry_at = self._now() + delay
        self._busy = False
        interval = self._probe_interval
        probe = None
        if interval is not None and delay > interval and gave_no_answer(error):
            probe = Probe(self._link, self.url, self._peer_answered, interval=interval)
            self._probe = probe
            probe.start()
        try:
            await self._pause(delay)
        finally:
            self._retry_at = None
            if probe is not None:
                probe.stop()
                self._probes_done += probe.sent
                self._probe = None

    def _peer_answered(self) -> None:
        """A probe was answered: the peer is back, try again now."""
        log.info("{url} answers again; retrying now", url=self.url)
        self._end_pause()

    def _common_status(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "state": self.state,
            "last_error": self._failures.last_error,
            "last_success": iso_time(self._last_success),
            "retry_at": iso_time(self._retry_at),
            "failures": self._failures.count,
        }

"""Noticing that a peer which gave no answer answers again, without waiting out the backoff.

After a failure the worker of a peer waits a jittered backoff of up to ``max_backoff`` (30 s by
default) before it tries again. When the peer gave no answer at all (its connection was refused,
or nothing came back in time: it is down or restarting), that wait is mostly lost time once it
is back: a node restarted after an outage would sit idle for the rest of the backoff while its
peers hold every write it missed. So while it backs off after such a failure, the worker asks
the peer ``GET /_health`` (a few bytes, no credential, no Store work worth speaking of), at most
once per :data:`PROBE_INTERVAL`, one probe at a time, and ends the pause as soon as any answer
comes (whatever its status: an HTTP answer means the node is up; if it then refuses the batch,
that failure is an answer and is backed off without probing).

A failure that *was* an answer (4xx, 5xx, an acknowledgement that does not match) is the peer's
considered reply: retrying it sooner would only load a peer that is up and refusing, so it waits
out the whole backoff. A pause shorter than the interval is not probed either: the retry itself
comes as soon.

Why a probe rather than the returning node announcing itself to its peers: a node does not know
every node that pushes to it (any node may list it as a peer, and its own peer set names where
it pushes, not who pushes to it), an announcement would be a new authenticated endpoint to
guard, and it would be lost if it came before the pusher's next failure. A probe needs nothing
from the peer beyond ``/_health``, which every node (and every older version) serves.

Cost while a peer is down: one small request per interval per worker toward it (so N down peers
cost N requests a second in all, each to a different node), and none once it answers.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeadlineError
from twisted.internet.error import ConnectError, ConnectingCancelledError, ConnectionLost
from twisted.internet.interfaces import IDelayedCall
from twisted.web.client import RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived

from navistore.links import SMALL_ANSWER_BYTES, PeerLink

__all__ = ["PROBE_INTERVAL", "Probe", "gave_no_answer"]

#: Seconds between the starts of two probes of one peer (at most one probe a second).
PROBE_INTERVAL = 1.0

#: What an exchange fails with when the peer gave no answer: the connection was refused or not
#: made in time (``ConnectError`` and its ``TimeoutError``, ``DNSLookupError``...), the deadline
#: passed, or the connection closed before a whole answer came.
_NO_ANSWER: tuple[type[BaseException], ...] = (
    ConnectError,
    ConnectingCancelledError,
    DeadlineError,
    ConnectionLost,
    ResponseNeverReceived,
    RequestTransmissionFailed,
    ResponseFailed,
)


def gave_no_answer(error: BaseException) -> bool:
    """Whether an exchange failed because no (whole) answer came, rather than on an answer."""
    return isinstance(error, _NO_ANSWER)


class Probe:
    """Asks ``<url>/_health`` once per ``interval`` until it answers, then calls ``answered``.

    One probe is in flight at a time, each within ``min(interval, request_timeout)``, so probes
    start at least ``interval`` apart. :meth:`stop` cancels the timer and the probe in flight;
    ``answered`` is called at most once, and never after :meth:`stop`.

    :param link: the client and clock (the link's credential is sent, though ``/_health``
        needs none).
    :param url: the peer's base URL.
    :param answered: called once the peer answered a probe (any HTTP status).
    :param interval: the least time between the starts of two probes, in seconds.
    """

    def __init__(
        self,
        link: PeerLink,
        url: str,
        answered: Callable[[], None],
        *,
        interval: float = PROBE_INTERVAL,
    ) -> None:
        if interval <= 0:
            raise ValueError("the probe interval must be positive")
        self._link = link
        self._url = url
        self._answered = answered
        self._interval = interval
        self._timer: IDelayedCall | None = None
        self._in_flight: Deferred[Any] | None = None
        self._last_start: float | None = None
        self._stopped = False
        #: Probes sent so far.
        self.sent = 0

    def start(self) -> None:
        """Send the first probe one interval from now (a retry just failed: no sooner)."""
        if self._stopped or self._timer is not None:
            return
        self._timer = self._link.clock.callLater(self._interval, self._send)

    def stop(self) -> None:
        """Send no more probes; abandon the one in flight."""
        self._stopped = True
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.cancel()

    def _send(self) -> None:
        self._timer = None
        if self._stopped:
            return
        self.sent += 1
        self._last_start = self._link.now()
        attempt = self._link.exchange(
            "GET",
            self._url + "/_health",
            max_bytes=SMALL_ANSWER_BYTES,
            timeout=min(self._interval, self._link.request_timeout),
        )
        self._in_flight = attempt
        attempt.addCallbacks(self._on_answer, self._on_no_answer)

    def _on_answer(self, _answer: object) -> None:
        self._in_flight = None
        if not self._stopped:
            self._stopped = True
            self._answered()

    def _on_no_answer(self, failure: Any) -> None:
        self._in_flight = None
        if self._stopped or failure.check(CancelledError):
            return
        # Any failure of the probe itself (refused, timed out, a body too long): try again one
        # interval after this probe started.
        assert self._last_start is not None
        wait = max(0.0, self._last_start + self._interval - self._link.now())
        self._timer = self._link.clock.callLater(wait, self._send)

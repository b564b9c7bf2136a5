"""Links to other nodes: the HTTP client every link uses, one exchange, backoff, and settings.

Replication (pushers and the clone puller), read fallback, the cache node's upstream and the
``http://`` backend all talk to another Navistore node over HTTP. They share:

- :class:`HTTPClient`, the part of treq's API they use (``request(method, url, data=, headers=,
  timeout=)`` firing with a response that has ``code``, ``headers`` and ``deliverBody``), so that
  ``treq``, ``treq.HTTPClient``, ``treq.testing.StubTreq`` and the fakes of
  :mod:`navistore.testing` all fit;
- :func:`exchange`: send one request and read its whole answer within a deadline and a byte
  limit, as an :class:`Answer`; cancelling it abandons the request;
- the errors an exchange ends in (:class:`Refused`, :class:`BadAnswer`, :class:`AnswerTooLarge`,
  a timeout, a connection error) and :func:`describe`, one line saying which;
- :func:`backoff_delay` ("full jitter") for retrying a failing node, and :class:`PeerLink`, the
  settings a link is made with.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime, timezone
from random import Random
from typing import Any, Callable, Protocol

import attrs
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol as ByteProtocol
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from navistore.json_documents import parse_json

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_FACTOR",
    "SMALL_ANSWER_BYTES",
    "Answer",
    "AnswerTooLarge",
    "BadAnswer",
    "Failures",
    "HTTPClient",
    "HTTPResponse",
    "PeerLink",
    "Refused",
    "backoff_delay",
    "describe",
    "exchange",
    "iso_time",
    "read_body",
    "treq_client",
]

log = Logger()

#: The first retry waits up to this many seconds; each failure doubles the bound.
BACKOFF_BASE = 0.5
BACKOFF_FACTOR = 2.0


class HTTPResponse(Protocol):
    """The part of an ``IResponse`` (as treq hands it over) a link reads."""

    code: int
    headers: Headers

    def deliverBody(self, protocol: Any) -> None:
        """Deliver the body to ``protocol`` (``dataReceived``, then ``connectionLost``)."""


class HTTPClient(Protocol):
    """The part of treq's ``HTTPClient`` API every link uses: one method, ``request``.

    ``data`` is the request body, ``timeout`` the seconds after which the client may give up by
    itself (the exchange also enforces its own deadline on the link's clock).
    """

    def request(
        self,
        method: str,
        url: str,
        *,
        data: bytes | None = ...,
        headers: Headers | None = ...,
        timeout: float | None = ...,
    ) -> Deferred[Any]:
        """Send a request; fire with an :class:`HTTPResponse`."""


class Refused(Exception):
    """The other node answered with a non-2xx status; its JSON error, when it sent one, is kept.

    :ivar status: the HTTP status.
    :ivar code: the ``error`` of its JSON body, or None.
    :ivar message: the ``message`` of its JSON body, or the start of whatever body came.
    """

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.code: str | None = None
        self.message = body[:300].decode("utf-8", "replace")
        try:
            document = parse_json(body)
        except ValueError:
            document = None
        if isinstance(document, dict) and "error" in document:
            self.code = str(document.get("error"))
            self.message = str(document.get("message", ""))
            super().__init__(f"HTTP {status} {self.code}: {self.message}")
        else:
            super().__init__(f"HTTP {status} {self.message}")


class BadAnswer(ValueError):
    """The other node answered something outside the protocol; the message says what."""


#: The most bytes read of an answer that is a small JSON document by the protocol (a push's
#: acknowledgement, ``/_health``, a forwarded write's answer): a peer answering more is broken.
SMALL_ANSWER_BYTES = 64 * 1024


class AnswerTooLarge(BadAnswer):
    """The answer's body is longer than the exchange allows; the rest was not read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is larger than the limit of {limit} bytes")
        self.limit = limit


@attrs.frozen
class Answer:
    """A complete answer: status, headers, and the whole body."""

    status: int
    headers: Headers
    body: bytes

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status < 300

    def refusal(self) -> Refused:
        """This (non-2xx) answer as the error it means."""
        return Refused(self.status, self.body)

    def json(self, what: str = "the answer") -> Any:
        """The body as JSON; :class:`BadAnswer` if it is not."""
        try:
            return parse_json(self.body)
        except ValueError as exc:
            raise BadAnswer(f"{what} is not JSON: {exc}") from None

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header, or None."""
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


class _BoundedBody(ByteProtocol):
    """Collects a response body, giving up (and dropping the connection) past a limit."""

    def __init__(self, finished: Deferred[bytes], limit: int | None) -> None:
        self._finished = finished
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._finished.called:
            return
        self._size += len(data)
        if self._limit is not None and self._size > self._limit:
            self._chunks = []
            stop = getattr(self.transport, "stopProducing", None)
            if stop is not None:
                stop()  # a response body's transport is its connection's producer: drop it
            self._finished.errback(AnswerTooLarge(self._limit))
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(b"".join(self._chunks))
        else:
            self._finished.errback(reason)


def read_body(response: HTTPResponse | IResponse, max_bytes: int | None = None) -> Deferred[bytes]:
    """Read a response's whole body, or fail with :class:`AnswerTooLarge` past ``max_bytes``."""
    finished: Deferred[bytes] = Deferred()
    response.deliverBody(_BoundedBody(finished, max_bytes))
    return finished


def exchange(
    client: HTTPClient,
    clock: IReactorTime,
    method: str,
    url: str,
    *,
    timeout: float,
    body: bytes | None = None,
    headers: Mapping[Any, Any] | None = None,
    max_bytes: int | None = None,
) -> Deferred[Answer]:
    """Send one request and read its whole answer within ``timeout`` seconds (on ``clock``).

    :param headers: header names with a value or a list of values each.
    :param max_bytes: the longest body read; a longer one fails with :class:`AnswerTooLarge`.
    :returns: a Deferred firing with the :class:`Answer` of any status (a non-2xx one is no
        error here: the caller decides); it fails with ``TimeoutError`` at the deadline, with
        the client's error when no answer came, and cancelling it abandons the request.
    """

    raw: dict[Any, list[Any]] = {}
    for name, value in (headers or {}).items():
        raw[name] = [value] if isinstance(value, (bytes, str)) else list(value)

    async def run() -> Answer:
        response = await client.request(
            method, url, data=body, headers=Headers(raw), timeout=timeout
        )
        content = await read_body(response, max_bytes)
        return Answer(int(response.code), response.headers, content)

    attempt = Deferred.fromCoroutine(run())
    attempt.addTimeout(timeout, clock)
    return attempt


def describe(error: BaseException, timeout: float) -> str:
    """One line saying why an exchange with another node failed."""
    if isinstance(error, TimeoutError):
        return f"no complete answer within {timeout:g} s"
    if isinstance(error, (Refused, BadAnswer)):
        return str(error)
    text = str(error) or repr(error)
    return f"{type(error).__name__}: {text}"


def backoff_delay(
    failures: int,
    rng: Random,
    *,
    cap: float,
    base: float = BACKOFF_BASE,
    factor: float = BACKOFF_FACTOR,
) -> float:
    """How long to wait after ``failures`` consecutive failures (0 for the first): "full jitter".

    A uniform draw in ``[0, min(cap, base * factor ** failures)]``: nodes that failed together
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


@attrs.frozen
class PeerLink:
    """How a node talks to other nodes: what every pusher, puller and upstream link shares.

    :ivar http_client: sends the requests.
    :ivar clock: times the deadlines, backoff pauses and polls.
    :ivar random: draws the backoff jitter (seed it for reproducible runs).
    :ivar request_timeout: the longest wait for one complete answer, in seconds.
    :ivar max_backoff: the longest pause between retries of a failing node, in seconds.
    :ivar token: the secret this node presents (``Authorization: Bearer``) to the nodes it
        reaches, when they require one (``--peer-token``).
    :ivar max_answer_bytes: the longest answer body read from another node (unless an exchange
        says otherwise); a longer one is refused as :class:`AnswerTooLarge` and its connection
        dropped, so that a broken or hostile peer cannot fill this node's memory. None: no
        limit.
    """

    http_client: HTTPClient
    clock: IReactorTime
    random: Random = attrs.field(factory=Random)
    request_timeout: float = 30.0
    max_backoff: float = 30.0
    token: str | None = attrs.field(default=None, repr=False)
    max_answer_bytes: int | None = None

    def exchange(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[Any, Any] | None = None,
        max_bytes: int | None = None,
        timeout: float | None = None,
    ) -> Deferred[Answer]:
        """:func:`exchange` over this link's client and clock, within its request timeout, with
        this node's token unless ``headers`` carry a credential already (a forwarded write
        carries its client's)."""
        if self.token is not None and not any(
            str(name if isinstance(name, str) else name.decode("latin-1")).lower()
            == "authorization"
            for name in (headers or {})
        ):
            headers = {**(headers or {}), "Authorization": f"Bearer {self.token}"}
        return exchange(
            self.http_client,
            self.clock,
            method,
            url,
            timeout=self.request_timeout if timeout is None else timeout,
            body=body,
            headers=headers,
            max_bytes=self.max_answer_bytes if max_bytes is None else max_bytes,
        )

    def backoff(self, failures: int) -> float:
        """The pause after ``failures`` consecutive failures (see :func:`backoff_delay`)."""
        return backoff_delay(failures, self.random, cap=self.max_backoff)

    def now(self) -> float:
        """The link's clock, in seconds."""
        return float(self.clock.seconds())


def treq_client(
    reactor: Any,
    *,
    connect_timeout: float,
    per_host: int = 2,
    tls_policy: Any = None,
) -> tuple[HTTPClient, Callable[[], Deferred[None]]]:
    """treq over a persistent connection pool of its own, and what closes the pool.

    :param per_host: how many idle connections to one host the pool keeps.
    :param tls_policy: checks ``https`` servers (an ``IPolicyForHTTPS``; default: treq's).
    """
    from treq.client import HTTPClient as TreqClient
    from twisted.web.client import Agent

    pool = _quiet_pool_type()(reactor, persistent=True)
    pool.maxPersistentPerHost = per_host
    options: dict[str, Any] = {"connectTimeout": connect_timeout, "pool": pool}
    if tls_policy is not None:
        options["contextFactory"] = tls_policy
    client: HTTPClient = TreqClient(Agent(reactor, **options))
    return client, pool.closeCachedConnections


@functools.cache
def _quiet_pool_type() -> type[Any]:
    """A connection pool whose connections do not log ``Starting factory`` and ``Stopping
    factory`` each (18 of 30 lines of a cache node's log were those)."""
    from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

    class QuietFactory(_HTTP11ClientFactory):
        noisy = False

    class QuietPool(HTTPConnectionPool):
        _factory = QuietFactory

    return QuietPool


class Failures:
    """The consecutive failures of one link: how many, the last one, and the pause they earn.

    :param link: whose backoff and timeout apply.
    :param what: names the link in the log, e.g. ``replication with http://b:8888``.
    """

    def __init__(self, link: PeerLink, what: str) -> None:
        self.link = link
        self.what = what
        #: Failures in a row (0 while the link works).
        self.count = 0
        #: One line saying why the last exchange failed, or None.
        self.last_error: str | None = None

    def failed(self, error: BaseException, *, meanwhile: str = "") -> float:
        """Count a failure and log it; return the pause before the next try ("full jitter").

        :param meanwhile: what the node does until then, for the log line.
        """
        delay = self.link.backoff(self.count)
        self.count += 1
        self.last_error = describe(error, self.link.request_timeout)
        log.warn(
            "{what} failed ({failures} in a row): {error}; {meanwhile}retrying in {delay:.2f} s",
            what=self.what,
            failures=self.count,
            error=self.last_error,
            meanwhile=meanwhile,
            delay=delay,
        )
        return delay

    def recovered(self) -> None:
        """The link works: say so once if it had failed, and count from zero again."""
        if self.count:
            log.info("{what} works again", what=self.what)
        self.count = 0

"""Error answers: :class:`ApiError` and the one table mapping every other exception to a status.

Every error a client sees is JSON, ``{"error": code, "message": ..., "detail": ...}``. Handlers
raise :class:`ApiError` (or one of its subclasses) for what only the web layer knows (a bad
parameter, a method not allowed); the rest of the node raises its own typed errors, each with a
stable ``code`` (and a ``detail`` where it has one), and :data:`ERROR_RULES` says, in one place,
which status each kind of error is answered with. Anything unforeseen is a 500 whose traceback
goes to the log, once per kind and place (:class:`ErrorLog`): a client repeating the request
that hits a bug cannot flood the log, and the repeats are counted in one line a minute.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, Callable

import attrs
from twisted.logger import Logger
from twisted.python.failure import Failure

from navistore.clock import ClockDriftError
from navistore.errors import BackendError, InvalidRecord
from navistore.hooks import HookError, UpstreamRefused
from navistore.keys import InvalidKey
from navistore.peer_urls import InvalidPeer
from navistore.protocol.batches import MalformedBatch
from navistore.store import Conflict, NotFound, PreconditionFailed, StoreError
from navistore.store.feed import ResyncRequired
from navistore.watch_hub import WatchRefused
from navistore.web.responses import json_bytes

__all__ = [
    "ERROR_RULES",
    "ApiError",
    "BadRequest",
    "ErrorLog",
    "ErrorRule",
    "MethodNotAllowed",
    "TooLarge",
    "as_api_error",
    "error_body",
]

log = Logger()


class ApiError(Exception):
    """An error answered as ``status`` with ``{"error": code, "message": ..., "detail": ...}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: Any = None,
        headers: dict[bytes, bytes] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = headers or {}


class BadRequest(ApiError):
    """A parameter, header or body the API cannot accept (400)."""

    def __init__(self, code: str, message: str, detail: Any = None) -> None:
        super().__init__(400, code, message, detail)


class MethodNotAllowed(ApiError):
    """The route exists but not for this method (405, with ``Allow``)."""

    def __init__(self, method: str, allowed: Iterable[str]) -> None:
        names = sorted(set(allowed))
        super().__init__(
            405,
            "method_not_allowed",
            f"{method} is not allowed here; use {', '.join(names)}",
            {"allowed": names},
            {b"Allow": ", ".join(names).encode("ascii")},
        )


class TooLarge(ApiError):
    """The request body is over the configured limit (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            "value_too_large",
            f"the request body is larger than the limit of {limit} bytes",
            {"max_value_size": limit},
        )


@attrs.frozen
class ErrorRule:
    """How one kind of error is answered.

    :ivar kind: the exception class (its subclasses too, unless an earlier rule takes them).
    :ivar status: the HTTP status; None: the exception's own ``status`` (an upstream's refusal,
        passed on as it came).
    :ivar message_prefix: put before the exception's text in the message.
    :ivar headers: more headers for the answer.
    :ivar logged: whether the error is worth a line in the node's log (the client's mistakes
        are not).
    """

    kind: type[BaseException]
    status: int | None
    message_prefix: str = ""
    headers: Mapping[bytes, bytes] = attrs.Factory(dict)
    logged: bool = False


#: Every typed error of the node and its status, most specific first (the first match wins).
#: The error's ``code`` names it in the answer, its ``detail`` (if any) is the answer's detail.
ERROR_RULES: tuple[ErrorRule, ...] = (
    ErrorRule(InvalidKey, 400),
    ErrorRule(NotFound, 404),
    ErrorRule(Conflict, 409),
    ErrorRule(PreconditionFailed, 412),
    ErrorRule(StoreError, 400),
    ErrorRule(ClockDriftError, 400),
    ErrorRule(MalformedBatch, 400),
    ErrorRule(InvalidPeer, 400),
    ErrorRule(ResyncRequired, 410),
    ErrorRule(WatchRefused, 503, headers={b"Retry-After": b"1"}),
    ErrorRule(UpstreamRefused, None),
    ErrorRule(HookError, 503),
    # What the client sent cannot be stored (e.g. a control character in Content-Type).
    ErrorRule(InvalidRecord, 400),
    ErrorRule(BackendError, 503, "the storage backend failed: ", logged=True),
)


def error_body(code: str, message: str, detail: Any = None) -> bytes:
    """The JSON body every error answer carries."""
    document: dict[str, Any] = {"error": code, "message": message}
    if detail is not None:
        document["detail"] = detail
    return json_bytes(document)


class ErrorLog:
    """Logs each kind of failure once in full, then its repeats as a count at most once a period.

    A kind is the exception's type and where it was raised (file and line), or a logged error's
    type and message. At most :attr:`KINDS` kinds are remembered; past that, it starts over.

    :param period: seconds between two lines counting the repeats of one kind.
    :param now: the clock (monotonic seconds).
    """

    KINDS = 256

    def __init__(self, period: float = 60.0, now: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self._now = now
        self._kinds: dict[tuple[str, ...], list[float]] = {}  # kind: [next line due, repeats]

    def _occurred(self, kind: tuple[str, ...]) -> int | None:
        """Count an occurrence of ``kind``: None to stay quiet, else how many repeats to report
        (-1: the first occurrence)."""
        now = self._now()
        seen = self._kinds.get(kind)
        if seen is None:
            if len(self._kinds) >= self.KINDS:
                self._kinds.clear()
            self._kinds[kind] = [now + self.period, 0]
            return -1
        seen[1] += 1
        if now < seen[0]:
            return None
        repeats = int(seen[1])
        seen[0], seen[1] = now + self.period, 0
        return repeats

    def failure(self, failure: Failure) -> None:
        """Log an unexpected failure: its traceback the first time, then counts."""
        kind = _failure_kind(failure)
        repeats = self._occurred(kind)
        if repeats == -1:
            log.failure("unexpected error while answering a request", failure)
        elif repeats is not None:
            log.error(
                "unexpected error while answering a request, {repeats} more times since the "
                "last line: {kind} at {where}: {error}",
                repeats=repeats,
                kind=kind[0],
                where=kind[1],
                error=failure.getErrorMessage(),
            )

    def error(self, name: str, message: str) -> None:
        """Log an expected kind of error (a failing backend), its repeats counted."""
        repeats = self._occurred((name, message))
        if repeats == -1:
            log.error("{kind}: {error}", kind=name, error=message)
        elif repeats is not None:
            log.error(
                "{kind}: {error} ({repeats} times since the last line)",
                kind=name,
                error=message,
                repeats=repeats,
            )


def _failure_kind(failure: Failure) -> tuple[str, ...]:
    frames = failure.frames
    where = f"{frames[-1][1]}:{frames[-1][2]}" if frames else "?"
    return (failure.type.__name__ if failure.type else "?", where)


#: The node's log of unexpected errors (one per process: the log is one per process).
errors_logged = ErrorLog()


def as_api_error(failure: Failure | BaseException) -> ApiError:
    """The answer a client gets for any exception a handler raised (see :data:`ERROR_RULES`)."""
    exc = failure.value if isinstance(failure, Failure) else failure
    if isinstance(exc, ApiError):
        return exc
    for rule in ERROR_RULES:
        if isinstance(exc, rule.kind):
            status = rule.status if rule.status is not None else int(getattr(exc, "status", 500))
            message = rule.message_prefix + str(exc)
            if rule.logged:
                errors_logged.error(type(exc).__name__, str(exc))
            code = str(getattr(exc, "code", "error"))
            return ApiError(status, code, message, getattr(exc, "detail", None), dict(rule.headers))
    errors_logged.failure(failure if isinstance(failure, Failure) else Failure(exc))
    return ApiError(500, "internal_error", "the server failed to answer; see its log")

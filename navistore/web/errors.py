"""Error answers: :class:`ApiError` and the one table mapping every other exception to a status.

Every error a client sees is JSON, ``{"error": code, "message": ..., "detail": ...}``. Handlers
raise :class:`ApiError` (or one of its subclasses) for what only the web layer knows (a bad
parameter, a method not allowed); the rest of the node raises its own typed errors, each with a
stable ``code`` (and a ``detail`` where it has one), and :data:`ERROR_RULES` says, in one place,
which status each kind of error is answered with. Anything unforeseen is a 500 whose traceback
goes to the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

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
                log.error("{kind}: {error}", kind=type(exc).__name__, error=str(exc))
            code = str(getattr(exc, "code", "error"))
            return ApiError(status, code, message, getattr(exc, "detail", None), dict(rule.headers))
    log.failure(
        "unexpected error while answering a request",
        failure if isinstance(failure, Failure) else Failure(exc),
    )
    return ApiError(500, "internal_error", "the server failed to answer; see its log")

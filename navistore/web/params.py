"""Reading a request: its body, query parameters (bare flags included), booleans, bounded
integers, and the request as a write to forward."""

from __future__ import annotations

import re
from urllib.parse import parse_qs

from twisted.web.server import Request

from navistore.hooks import ForwardedWrite
from navistore.record import MAX_FLAGS, MAX_SEQ
from navistore.store.core import MAX_TTL_MS
from navistore.web.errors import BadRequest, TooLarge

__all__ = [
    "DEFAULT_PAGE",
    "MAX_INTEGER",
    "MAX_PAGE",
    "flag",
    "flags_arg",
    "forwarded_write",
    "int_arg",
    "page_limit",
    "query",
    "query_arg",
    "request_body",
    "ttl_arg",
    "wants_json",
    "whole_number",
]

_TRUE = ("", "1", "true", "yes", "on")


def request_body(request: Request, limit: int | None = None) -> bytes:
    """The request body; TooLarge (413) past ``limit`` bytes. The Site refuses larger bodies
    while they arrive; the check here holds where a resource runs without that Site (tests)."""
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    body: bytes = content.read() if limit is None else content.read(limit + 1)
    if limit is not None and len(body) > limit:
        raise TooLarge(limit)
    return body


def wants_json(request: Request) -> bool:
    accept = request.getHeader(b"Accept") or b""
    return b"application/json" in accept


def query(request: Request) -> dict[str, list[str]]:
    """The query parameters, keeping bare flags such as ``?list`` (twisted.web drops them)."""
    cached: dict[str, list[str]] | None = getattr(request, "_navistore_query", None)
    if cached is None:
        _, _, query = request.uri.partition(b"?")
        try:
            cached = parse_qs(query.decode("utf-8"), keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise BadRequest("invalid_parameter", "the query string is not UTF-8") from None
        request._navistore_query = cached  # type: ignore[attr-defined]
    return cached


def query_arg(request: Request, name: str) -> str | None:
    values = query(request).get(name)
    return values[-1] if values else None


def flag(request: Request, name: str) -> bool:
    value = query_arg(request, name)
    return value is not None and value.lower() in _TRUE


#: The largest integer any parameter or header may carry (see :data:`~navistore.record.MAX_SEQ`).
MAX_INTEGER = MAX_SEQ

_DIGITS = re.compile(r"[0-9]{1,19}\Z")


def whole_number(text: str) -> int | None:
    """``text`` as an integer from 0 to :data:`MAX_INTEGER` (ASCII digits only), or None."""
    if not _DIGITS.match(text):
        return None
    value = int(text)
    return value if value <= MAX_INTEGER else None


def int_arg(
    request: Request, name: str, default: int, maximum: int | None = None, *, minimum: int = 0
) -> int:
    """``?name=`` as a whole number from ``minimum`` to ``maximum`` (default
    :data:`MAX_INTEGER`); any value out of range gets the same answer, naming the range."""
    text = query_arg(request, name)
    if text is None or text == "":
        return default
    value = whole_number(text)
    top = MAX_INTEGER if maximum is None else maximum
    if value is None or not minimum <= value <= top:
        raise BadRequest(
            "invalid_parameter",
            f"parameter {name!r} must be a whole number from {minimum} to {top}, not {text[:40]!r}",
        )
    return value


def flags_arg(request: Request) -> int:
    """``?flags=`` as an unsigned 64-bit number (Consul's flags; 0 when absent)."""
    text = query_arg(request, "flags")
    if text is None or text == "":
        return 0
    if not _DIGITS.match(text) or len(text) > 20 or int(text) > MAX_FLAGS:
        raise BadRequest(
            "invalid_parameter",
            f"parameter 'flags' must be a whole number from 0 to {MAX_FLAGS}, not {text[:40]!r}",
        )
    return int(text)


def ttl_arg(request: Request) -> int | None:
    """``?ttl=SECONDS`` as milliseconds (None when absent): from 1 s to the Store's limit."""
    if not query_arg(request, "ttl"):
        return None
    return 1000 * int_arg(request, "ttl", 0, MAX_TTL_MS // 1000, minimum=1)


def forwarded_write(request: Request, body: bytes) -> ForwardedWrite:
    """The write ``request`` asks for, to hand on to another node (a cache node's upstream).

    Only origin-form targets (``/path?query``) are forwarded: the node forwarding decides where
    the write goes, never the client.
    """
    target = request.uri
    if not target.startswith(b"/"):
        raise BadRequest("invalid_target", "only origin-form request targets are forwarded")
    headers = {name: list(values) for name, values in request.requestHeaders.getAllRawHeaders()}
    method = request.method.decode("ascii")
    return ForwardedWrite(method, target, request.path, headers, body)


#: Entries a listing or feed page holds unless ``limit=`` says otherwise, and the most it may.
DEFAULT_PAGE = 1000
MAX_PAGE = 10_000


def page_limit(request: Request) -> int:
    """``?limit=``: how many entries a page may hold, from 1 to :data:`MAX_PAGE`."""
    return int_arg(request, "limit", DEFAULT_PAGE, MAX_PAGE, minimum=1)

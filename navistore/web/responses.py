"""What a handler answers (a :class:`Response`, JSON and text bodies) and what a handler is."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any, Callable

import attrs
from twisted.web.server import Request

from navistore.hooks import ForwardedAnswer

__all__ = [
    "JSON_HEADERS",
    "TEXT_HEADERS",
    "TEXT_TYPE",
    "VALUE_POLICY",
    "Endpoints",
    "Handler",
    "Response",
    "forwarded_response",
    "json_bytes",
    "json_response",
    "text_response",
]

#: The ``Content-Security-Policy`` of every stored value served: a value that is an HTML page runs
#: in an opaque origin, never as the node's (its scripts cannot read or write the node).
VALUE_POLICY = b"sandbox"

#: The content type of every JSON answer.
JSON_HEADERS: Mapping[bytes, bytes] = {b"Content-Type": b"application/json"}
#: The content type of the classic plain-text answers (``OK``).
TEXT_TYPE = b"text/plain; charset=utf-8"
TEXT_HEADERS: Mapping[bytes, bytes] = {b"Content-Type": TEXT_TYPE}


def json_bytes(document: Any) -> bytes:
    """Encode a JSON document compactly as UTF-8 (non-ASCII kept readable)."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@attrs.frozen
class Response:
    """A complete answer: status, headers, and a body given whole or as an async stream."""

    status: int = 200
    body: bytes = b""
    headers: dict[bytes, bytes] = attrs.Factory(dict)
    stream: AsyncIterator[bytes] | None = None


def json_response(
    document: Any, status: int = 200, headers: Mapping[bytes, bytes] | None = None
) -> Response:
    """An answer whose body is ``document`` as JSON."""
    return Response(status, json_bytes(document), {**(headers or {}), **JSON_HEADERS})


def text_response(
    body: bytes = b"OK", status: int = 200, headers: Mapping[bytes, bytes] | None = None
) -> Response:
    """A plain-text answer (the classic API answers ``OK``)."""
    return Response(status, body, {**(headers or {}), **TEXT_HEADERS})


def forwarded_response(answer: ForwardedAnswer) -> Response:
    """The answer of the node a write was forwarded to, as this node's answer."""
    return Response(answer.status, answer.body, dict(answer.headers))


#: An endpoint's handler: a coroutine function answering one request.
Handler = Callable[[Request], Awaitable[Response]]

#: Endpoints by name (the path without its leading ``/``), then by method.
Endpoints = dict[str, dict[bytes, Handler]]

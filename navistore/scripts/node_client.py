"""The HTTP side of the ``navistore`` command: the node it talks to, the answers it reads, and
the exit statuses (see :mod:`navistore.scripts.client`). Standard library only: one short
connection per request, no reactor."""

from __future__ import annotations

import http.client
import ssl
from typing import Any, BinaryIO, Callable, NoReturn, TextIO
from urllib.parse import quote, urlencode, urlsplit

from navistore.json_documents import parse_json
from navistore.keys import InvalidKey, normalize_key

__all__ = [
    "DEFAULT_URL",
    "ENV_TOKEN",
    "ENV_URL",
    "INTERRUPTED",
    "NOT_ALLOWED",
    "NOT_FOUND",
    "OK",
    "REFUSED",
    "UNAVAILABLE",
    "USAGE",
    "Answer",
    "Failed",
    "Node",
    "Streams",
    "exit_status",
]

DEFAULT_URL = "http://127.0.0.1:8888"
ENV_URL = "NAVISTORE_URL"
ENV_TOKEN = "NAVISTORE_TOKEN"

OK, NOT_FOUND, USAGE, REFUSED, UNAVAILABLE, NOT_ALLOWED, INTERRUPTED = 0, 1, 2, 3, 4, 5, 130


class Failed(Exception):
    """The command cannot succeed; ``status`` is the exit status, the message goes to stderr."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Streams:
    """Where a command reads its input and writes its output (bytes) and messages (text)."""

    def __init__(self, stdin: BinaryIO, out: BinaryIO, err: TextIO) -> None:
        self.stdin, self.out, self.err = stdin, out, err


def exit_status(http_status: int, error: str | None = None) -> int:
    """The exit status for an HTTP answer (``error`` is the JSON error code, if any)."""
    if http_status < 400:
        return OK
    if http_status == 404 and error in (None, "not_found"):
        return NOT_FOUND
    if http_status == 401 or (
        http_status == 403 and error in ("forbidden", "protected_mode", "cross_origin")
    ):
        return NOT_ALLOWED
    return REFUSED if http_status < 500 else UNAVAILABLE


class Answer:
    """An HTTP answer: status, content type, body."""

    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        self.status = status
        self.content_type = content_type
        self.body = body

    def json(self) -> Any:
        """The body as JSON; a node answering anything else is a failed node."""
        try:
            return parse_json(self.body)
        except ValueError:
            raise Failed(UNAVAILABLE, f"the node answered {self.status} without JSON") from None

    def expect(self, what: str, *statuses: int) -> Answer:
        """Return this answer if its status is one of ``statuses`` (200 by default)."""
        if self.status not in (statuses or (200,)):
            self.fail(what)
        return self

    def fail(self, what: str) -> NoReturn:
        """Raise the :class:`Failed` this error answer means, with the node's message."""
        error, message = None, self.body[:300].decode("utf-8", "replace").strip()
        if self.content_type.startswith("application/json"):
            try:
                document = parse_json(self.body)
                error, message = document.get("error"), document.get("message", message)
            except (ValueError, AttributeError):
                pass
        raise Failed(exit_status(self.status, error), f"{what}: {self.status} {message}")


class Node:
    """One node, reached with :mod:`http.client`; every request on a connection of its own."""

    def __init__(
        self, url: str, timeout: float, token: str | None = None, cacert: str | None = None
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Failed(USAGE, f"--url {url!r} is not an http:// or https:// URL")
        try:
            self.port = parts.port
        except ValueError as exc:
            raise Failed(USAGE, f"--url {url!r}: {exc}") from None
        self.url = url
        self.host = parts.hostname
        self.secure = parts.scheme == "https"
        self.base_path = parts.path.rstrip("/")
        self.timeout = timeout
        self.token = token
        self.context: ssl.SSLContext | None = None
        if self.secure:
            try:
                self.context = ssl.create_default_context(cafile=cacert)
            except (OSError, ssl.SSLError) as exc:
                raise Failed(USAGE, f"--cacert {cacert}: {exc}") from None

    def connection(self, timeout: float | None = None) -> http.client.HTTPConnection:
        """A new connection to the node (not connected yet)."""
        if self.secure:
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout or self.timeout, context=self.context
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout)

    def send(
        self,
        connection: http.client.HTTPConnection,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> http.client.HTTPResponse:
        """Send one request on ``connection`` (with the token) and return its response."""
        sent = dict(headers or {})
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        connection.request(method, self.base_path + target, body=body, headers=sent)
        return connection.getresponse()

    def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Answer:
        """Send one request; raise :class:`Failed` (unavailable) if no answer comes."""
        connection = self.connection(timeout)
        try:
            response = self.send(connection, method, target, body, headers)
            content_type = response.getheader("Content-Type") or ""
            return Answer(response.status, content_type, response.read())
        except (OSError, http.client.HTTPException) as exc:
            raise Failed(UNAVAILABLE, f"cannot reach {self.url}: {exc}") from None
        finally:
            connection.close()


def _key(raw: str, normalize: Callable[..., str] = normalize_key) -> str:
    """A key (or prefix) checked here: an invalid one is a usage error, never sent."""
    try:
        return normalize(raw, max_bytes=None)
    except InvalidKey as exc:
        raise Failed(USAGE, str(exc)) from None


def _path(key: str) -> str:
    return quote(key, safe="/")


def _query(**params: object) -> str:
    return urlencode({name: value for name, value in params.items() if value is not None})

"""The access log (``--access-log FILE|-``): one line per answered request.

Two formats, as web servers and log collectors expect them:

- ``text``: the *combined* log format of Apache and nginx (what ``goaccess`` and most log tools
  read), made by Twisted's own :func:`~twisted.web.http.combinedLogFormatter`;
- ``json``: one JSON object a line, with ``time`` (ISO 8601, UTC), ``remote``, ``method``,
  ``path``, ``protocol``, ``status``, ``bytes``, ``referer``, ``user_agent`` and ``caller`` (the
  token's name when the request carried one).

The query string is logged as sent, except ``token=``-like secrets, which never appear. A line
costs a few microseconds, so the log is off by default (a config store's clients poll).
"""

from __future__ import annotations

import json
import time
from typing import IO, Callable

from twisted.web.http import Request, combinedLogFormatter, datetimeToLogString

from navistore.web.access import admitted_caller

__all__ = ["ACCESS_LOG_FORMATS", "AccessLog", "json_line"]

#: The formats ``--log-format`` names for the access log.
ACCESS_LOG_FORMATS = ("text", "json")

#: Query parameters whose values are secrets, and are logged as ``***``.
_SECRET_PARAMETERS = (b"token", b"access_token")


def _redacted(uri: bytes) -> bytes:
    path, question, query = uri.partition(b"?")
    if not question or not any(name + b"=" in query for name in _SECRET_PARAMETERS):
        return uri
    parts = []
    for item in query.split(b"&"):
        name = item.split(b"=", 1)[0]
        parts.append(name + b"=***" if name.lower() in _SECRET_PARAMETERS else item)
    return path + b"?" + b"&".join(parts)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def json_line(request: Request, now: float) -> str:
    """The JSON access-log line of an answered request."""
    client = request.getClientAddress()
    caller = admitted_caller(request)
    document = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        + f".{int(now * 1000) % 1000:03d}Z",
        "remote": getattr(client, "host", None) or str(client),
        "method": _text(request.method),
        "path": _text(_redacted(request.uri)),
        "protocol": _text(request.clientproto),
        "status": request.code,
        "bytes": request.sentLength,
        "referer": _text(request.getHeader(b"referer")),
        "user_agent": _text(request.getHeader(b"user-agent")),
        "caller": None if caller is None else caller.name,
    }
    return json.dumps(document, separators=(",", ":"))


class AccessLog:
    """Writes a line per answered request to ``file`` (flushed each line: a log that lags is
    no use to someone watching it, and a crash must not lose the last requests).

    :param file: an open text file (or standard output); not closed by :meth:`close` when it is
        standard output.
    :param log_format: ``text`` (combined) or ``json``.
    :param clock: the time of each line (tests pass their own).
    """

    def __init__(
        self,
        file: IO[str],
        log_format: str = "text",
        *,
        clock: Callable[[], float] = time.time,
        owned: bool = True,
    ) -> None:
        if log_format not in ACCESS_LOG_FORMATS:
            raise ValueError(f"no access log format {log_format!r}")
        self._file = file
        self._json = log_format == "json"
        self._clock = clock
        self._owned = owned

    def write(self, request: Request) -> None:
        """Log one answered request."""
        now = self._clock()
        if self._json:
            line = json_line(request, now)
        else:
            uri = request.uri
            clean = _redacted(uri)
            if clean is not uri:
                request.uri = clean  # the formatter reads it; the request is answered already
            line = combinedLogFormatter(datetimeToLogString(now), request)
            request.uri = uri
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file, unless it is standard output."""
        if self._owned:
            self._file.close()

"""``--log-format json``: the node's own log as one JSON object a line, for log collectors.

Each line holds ``time`` (ISO 8601, UTC), ``level``, ``namespace`` (the module that logged),
``message`` (the event formatted as the text log would show it) and, when the event carries a
failure, ``traceback``. twistd picks where the log goes (``--logfile``, standard output with
``--nodaemon``, ``twistd.log`` otherwise); :func:`observer_factory` makes the same choice, and
:func:`log_json_under_twistd` hands it to twistd as its ``--logger``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any, Callable

from twisted.logger import ILogObserver, formatEvent
from twisted.python.logfile import LogFile
from zope.interface import implementer

__all__ = [
    "JsonLogObserver",
    "json_event",
    "log_json_under_twistd",
    "observer_factory",
    "twistd_json_observer",
]


def json_event(event: dict[str, Any]) -> str:
    """One log event as its JSON line (without the newline)."""
    moment = event.get("log_time", time.time())
    level = event.get("log_level")
    document: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment))
        + f".{int(moment * 1000) % 1000:03d}Z",
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        document["traceback"] = failure.getTraceback()
    return json.dumps(document, separators=(",", ":"), default=repr)


@implementer(ILogObserver)
class JsonLogObserver:
    """Writes each event as a JSON line to ``file`` and flushes it."""

    def __init__(self, file: IO[str]) -> None:
        self._file = file

    def __call__(self, event: dict[str, Any]) -> None:
        self._file.write(json_event(event) + "\n")
        self._file.flush()


#: Where twistd would log (its --logfile, its --nodaemon), for :func:`twistd_json_observer`.
_twistd_destination: tuple[str | None, bool] = (None, True)


def log_json_under_twistd(twistd_options: Any) -> None:
    """Make twistd log JSON lines where it would log text, unless it was given a ``--logger``.

    twistd's ``--logger`` names a factory of log observers, which twistd imports by name once
    its options are parsed: the name given is :func:`twistd_json_observer`'s, which reads the
    destination noted here (logging is the process's own, so a module's note is the right
    place for it).
    """
    global _twistd_destination
    if twistd_options.get("logger"):
        return
    _twistd_destination = (twistd_options.get("logfile"), bool(twistd_options.get("nodaemon")))
    twistd_options["logger"] = f"{__name__}.twistd_json_observer"


def twistd_json_observer() -> JsonLogObserver:
    """The observer twistd logs through after :func:`log_json_under_twistd`."""
    logfile, nodaemon = _twistd_destination
    return observer_factory(logfile, nodaemon=nodaemon)()


def observer_factory(logfile: str | None, *, nodaemon: bool) -> Callable[[], JsonLogObserver]:
    """What twistd calls to make its log observer: JSON lines where twistd would write text
    (``-`` or no file with ``--nodaemon``: standard output; no file otherwise: ``twistd.log``,
    rotated as twistd rotates it)."""

    def make() -> JsonLogObserver:
        if logfile == "-" or (not logfile and nodaemon):
            return JsonLogObserver(sys.stdout)
        file: Any = LogFile.fromFullPath(logfile or "twistd.log")
        return JsonLogObserver(file)

    return make

"""The Site: connections with deadlines, and request-body limits enforced while bodies arrive.

The Site's connections are :class:`~navistore.web.channel.NavistoreChannel` (deadlines, bounded
lines, JSON protocol errors, what slow readers hold), timed by one
:class:`~navistore.web.channel.Deadlines` sweep and sharing one
:class:`~navistore.web.send_budget.SendBudget`.

Its requests are :class:`~navistore.web.request.NavistoreRequest`: body limits checked while
bodies arrive, and the lighter answer path.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.web import http
from twisted.web.server import Site

from navistore.record import DEFAULT_MAX_VALUE_SIZE
from navistore.web.access_log import AccessLog
from navistore.web.channel import DEFAULT_LIMITS, ConnectionLimits, Deadlines, NavistoreChannel
from navistore.web.request import NavistoreRequest, RequestWatcher
from navistore.web.send_budget import SendBudget

__all__ = ["DEFAULT_MAX_VALUE_SIZE", "NavistoreSite"]


class NavistoreSite(Site):
    """A Site whose requests refuse bodies over ``max_value_size`` bytes and whose connections
    keep the deadlines of ``limits``.

    The access log is off unless asked for: one log line per request costs about 15 % of a
    node's throughput, and a config store's clients poll.

    :param access_log: where each answered request is logged (``--access-log``), or None.
    :param reactor: what connections time their deadlines with.
    :param limits: the deadlines of every connection.
    :param send_budget: what slow readers may hold together (default: its own).
    :param answer_index: the node's newest seq, read as each answer's head goes out
        (``X-Navistore-Index``); None: no such header.
    """

    # The channel itself, not Twisted's wrapper that would pick HTTP/2 by ALPN: a node speaks
    # HTTP/1.1 only (see navistore.listening.Connections.acceptableProtocols).
    protocol = NavistoreChannel  # type: ignore[assignment]

    #: No "Starting factory <...NavistoreSite object at 0x...>" line: the node says it is ready.
    noisy = False

    def __init__(
        self,
        resource: Any,
        *,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        access_log: AccessLog | None = None,
        reactor: IReactorTime | None = None,
        limits: ConnectionLimits = DEFAULT_LIMITS,
        send_budget: SendBudget | None = None,
        answer_index: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(
            resource, requestFactory=NavistoreRequest, timeout=limits.idle_timeout, reactor=reactor
        )
        self.max_value_size = max_value_size
        self.access_log = access_log
        self.limits = limits
        self.deadlines = Deadlines(self.reactor)
        self.send_budget = SendBudget() if send_budget is None else send_budget
        self.answer_index = answer_index
        #: Told of every request's start and end (the daemon's tracker), or None.
        self.request_watcher: RequestWatcher | None = None

    def log(self, request: http.Request) -> None:
        if self.access_log is not None:
            self.access_log.write(request)

    def stopFactory(self) -> None:
        self.deadlines.stop()
        super().stopFactory()

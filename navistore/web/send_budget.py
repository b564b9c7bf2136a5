"""The bytes of answers written to clients but not sent yet, bounded for the whole node.

A client that asks for a 16 MiB value and never reads it leaves the value in the node's send
buffer; fifty such clients would hold 800 MiB. A :class:`SendBudget` counts what the channels
(:class:`~navistore.web.channel.NavistoreChannel`) hold for clients that are not reading, and
once it is spent a large read (an answer over :data:`SMALL_ANSWER`) waits, holding nothing, until
a slow client's bytes drain or its connection is closed. Small answers never wait (``/_health``
and the commonest GETs stay instant), and nothing is refused: a client only waits, as long as it
cares to.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.defer import Deferred, succeed

__all__ = ["DEFAULT_SEND_BUFFER", "SMALL_ANSWER", "SendBudget", "send_budget_of"]

#: The bytes all slow readers together may hold by default: 16 MiB, one value at the value
#: limit (one answer may overshoot it, so two such values at most are held).
DEFAULT_SEND_BUFFER = 16 * 1024 * 1024

#: An answer this small is sent at once whatever the budget (one connection's send buffer holds
#: about this much before its client is counted as slow).
SMALL_ANSWER = 64 * 1024


class SendBudget:
    """How many bytes the node's connections hold for clients that do not read, and a queue of
    the large answers waiting for room.

    At most one answer overshoots the limit: the check (:attr:`spent`) and the write that holds
    bytes happen in the same reactor turn, so the next large answer sees the new total.

    :param limit: the bytes slow readers may hold together.
    """

    def __init__(self, limit: int = DEFAULT_SEND_BUFFER) -> None:
        self.limit = limit
        #: Bytes held now.
        self.held = 0
        self._waiting: deque[Deferred[None]] = deque()

    @property
    def spent(self) -> bool:
        """Whether a large answer must wait for room."""
        return self.held >= self.limit

    def hold(self, size: int) -> None:
        """A channel wrote ``size`` bytes its client has not read yet."""
        self.held += size

    def release(self, size: int) -> None:
        """A channel's held bytes were sent (or its connection is gone): wake waiters."""
        self.held = max(0, self.held - size)
        while self._waiting and not self.spent:
            waiter = self._waiting.popleft()
            if not waiter.called:
                waiter.callback(None)
                # One at a time, each re-reading its answer: woken together they would all
                # hold their answers at once. The woken one calls pass_on when done.
                return

    def pass_on(self) -> None:
        """A woken answer is done (written, small after all, or abandoned): if there is still
        room, the next waiter's turn."""
        self.release(0)

    @property
    def waiting(self) -> int:
        """How many large answers wait for room."""
        return sum(1 for waiter in self._waiting if not waiter.called)

    def room(self) -> Deferred[None]:
        """Fire once a large answer may be written (at once if it may now); cancellable."""
        if not self.spent:
            return succeed(None)

        def forget(waiter: Deferred[None]) -> None:
            if waiter in self._waiting:
                self._waiting.remove(waiter)

        waiter: Deferred[None] = Deferred(forget)
        self._waiting.append(waiter)
        return waiter


def send_budget_of(request: Any) -> SendBudget | None:
    """The budget of the Site ``request`` came through (None outside a NavistoreSite)."""
    site = getattr(getattr(request, "channel", None), "site", None)
    budget = getattr(site, "send_budget", None)
    return budget if isinstance(budget, SendBudget) else None

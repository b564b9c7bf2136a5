"""Waiting for a condition in Twisted: Deferreds fired together when it becomes true."""

from __future__ import annotations

from twisted.internet.defer import Deferred

__all__ = ["Waiters"]


class Waiters:
    """Deferreds fired all at once when something becomes true (idle, empty, caught up)."""

    def __init__(self) -> None:
        self._waiting: list[Deferred[None]] = []

    def wait(self) -> Deferred[None]:
        """A Deferred that fires at the next :meth:`fire`."""
        waiting: Deferred[None] = Deferred()
        self._waiting.append(waiting)
        return waiting

    def fire(self) -> None:
        """Fire every Deferred handed out since the last call."""
        waiting, self._waiting = self._waiting, []
        for each in waiting:
            each.callback(None)

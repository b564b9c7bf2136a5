"""Small helpers shared by test modules."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

T = TypeVar("T")


def fired(result: Deferred[T] | Coroutine[Any, Any, T]) -> T:
    """The result of a Deferred (or coroutine) that must have fired already, so that code
    running on fakes (memory backends, ``task.Clock``) is checked without a reactor turn."""
    outcome: list[Any] = []
    ensureDeferred(result).addBoth(outcome.append)
    assert outcome, "the operation has not finished"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    value: T = outcome[0]
    return value


async def pumped(stub: StubTreq, waiting: Deferred[T], timeout: float = 10.0) -> T:
    """Wait for ``waiting`` (a StubTreq request or body), moving the in-memory connection's
    bytes meanwhile: over a memory backend the answer is there at once, over sqlite it comes on
    a later reactor turn (a group commit), and StubTreq only delivers it when flushed."""
    from twisted.internet import reactor

    arrived: list[bool] = []

    def note(result: T) -> T:
        arrived.append(True)
        return result

    waiting.addBoth(note)  # ``called`` is already true while a chained Deferred still waits
    for _ in range(int(timeout / 0.001)):
        if arrived:
            break
        stub.flush()
        await deferLater(reactor, 0.001, lambda: None)
    assert arrived, f"no answer within {timeout} s"
    return await waiting

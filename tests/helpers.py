"""Small helpers shared by test modules."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred
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

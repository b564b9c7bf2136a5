"""navistore.gc_tuning: start-up's objects are frozen out of later collections."""

from __future__ import annotations

import gc
import platform
from collections.abc import Iterator

import pytest

from navistore.gc_tuning import freeze_start_up

CAN_FREEZE = hasattr(gc, "freeze")


@pytest.fixture
def unfrozen() -> Iterator[None]:
    if CAN_FREEZE:
        gc.unfreeze()
    yield
    if CAN_FREEZE:
        gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
@pytest.mark.skipif(not CAN_FREEZE, reason="this Python's collector has no gc.freeze")
def test_objects_alive_at_start_up_are_frozen_and_later_ones_are_not() -> None:
    """What exists when the node has started is frozen; what it makes later is still tracked
    (and collected)."""
    before = [object() for _ in range(3)]  # plain objects are not tracked; lists are
    start_up = [[index] for index in range(100)]
    frozen = freeze_start_up()
    assert frozen == gc.get_freeze_count() >= len(start_up)
    later = [[index] for index in range(100)]
    tracked = {id(each) for each in gc.get_objects()}
    assert not any(id(each) in tracked for each in start_up)
    assert all(id(each) in tracked for each in later)
    assert before


@pytest.mark.skipif(
    platform.python_implementation() != "PyPy", reason="PyPy's collector has no gc.freeze"
)
def test_without_gc_freeze_nothing_is_frozen_and_nothing_fails() -> None:
    """PyPy has no ``gc.freeze``: a node must start there all the same."""
    assert freeze_start_up() == 0

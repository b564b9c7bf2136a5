"""navistore.gc_tuning: start-up's objects are frozen out of later collections."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from navistore.gc_tuning import freeze_start_up


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
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

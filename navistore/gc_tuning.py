"""Python's cyclic garbage collector, told that what start-up made stays.

A node holding thousands of idle watches has millions of objects the collector tracks, and a
full collection traverses every one of them: measured with ``bench/bench_fanout.py``, this is
the largest cost of a wake-up once the watchers are many (the collection falls in the turn the
write's allocations trigger it). What start-up made (modules, classes, the node's parts, some
55,000 objects, a full collection of 14 ms on its own) lives as long as the process: freezing it
moves it out of the collector's sight for good (:func:`gc.freeze`), so every later collection is
that much shorter. It costs nothing: those objects were never going to be freed.

PyPy's collector is another kind (incremental, generational, no ``gc.freeze``): there it does
nothing.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_start_up"]


def freeze_start_up() -> int:
    """Collect once, then exclude every object alive now from later collections; called once
    the node has started. Returns how many objects are frozen (0 where the collector cannot
    freeze, as on PyPy)."""
    freeze = getattr(gc, "freeze", None)
    if freeze is None:
        return 0
    gc.collect()
    freeze()
    return int(gc.get_freeze_count())

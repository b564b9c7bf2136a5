"""Public test helpers for code built on Navistore.

:class:`BackendComplianceTests` is the storage backend contract as a pytest mixin: a backend author
subclasses it, overrides one fixture, and gets every contract test (see
:mod:`navistore.testing.compliance`). It needs pytest and pytest-twisted, so it is imported on first
use: other helpers in this package stay importable without them.

:mod:`navistore.testing.simulation` runs a whole cluster in one process, deterministically: nodes
on memory backends (:mod:`~navistore.testing.cluster`) behind a fake network
(:mod:`~navistore.testing.fakenet`) that delays, drops, duplicates and reorders requests and
partitions nodes, all on one ``task.Clock`` and one seeded RNG. ``run_schedule(seed)`` replays a
random schedule of writes, deletes, partitions and restarts and checks convergence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from navistore.testing.compliance import BackendComplianceTests

__all__ = ["BackendComplianceTests"]


def __getattr__(name: str) -> Any:
    if name == "BackendComplianceTests":
        from navistore.testing.compliance import BackendComplianceTests

        return BackendComplianceTests
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

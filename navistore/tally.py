"""Counting as a node works, at the cost of an integer addition: what ``/_metrics`` reads.

The hot paths (a plain GET or PUT, a group commit) only add to plain numbers held here; nothing
is formatted, locked or allocated there. :mod:`navistore.metrics` reads these numbers when
Prometheus scrapes and turns them into metric families.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

import attrs

__all__ = [
    "ABORTED",
    "BATCH_SIZE_BUCKETS",
    "COMMIT_SECONDS_BUCKETS",
    "REQUEST_SECONDS_BUCKETS",
    "ROUTE_FAMILY",
    "UNROUTED",
    "BackendStatistics",
    "Histogram",
    "RequestCounts",
    "StorageSizes",
]

#: Upper bounds of the group-commit batch size histogram (records per transaction).
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

#: Upper bounds of the commit duration histogram, in seconds.
COMMIT_SECONDS_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


#: Upper bounds of the request latency histogram, in seconds.
REQUEST_SECONDS_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

#: The request attribute naming its route family (``key``, ``prefix``, an endpoint's name...),
#: set by the API resource once it knows the route.
ROUTE_FAMILY = "navistore_route_family"

#: The route family of a request refused before it was routed (a bad token, a path that is no
#: key) or that never reached the API.
UNROUTED = "unrouted"

#: The status counted for a request whose client went away before its answer was finished.
ABORTED = 0

#: Methods counted under their own name; any other is counted as ``OTHER``.
_KNOWN_METHODS = frozenset((b"GET", b"HEAD", b"PUT", b"POST", b"DELETE", b"OPTIONS", b"PATCH"))


class Histogram:
    """Observations counted by upper bound (Prometheus's ``le``), with their sum.

    :param bounds: the bucket upper bounds, increasing; a last ``+Inf`` bucket is implied.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError(f"bucket bounds must increase strictly, not {bounds!r}")
        self.bounds = tuple(float(bound) for bound in bounds)
        #: Observations per bucket (not cumulative); the last one is above every bound.
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation of ``value``."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """How many observations there were."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, observations at or below it)`` for every bound, then ``+Inf``: Prometheus's
        buckets."""
        found: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            running += count
            found.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return found


@attrs.frozen
class StorageSizes:
    """How much a backend holds, as last measured.

    :ivar live_keys: records that are no tombstone.
    :ivar tombstones: deleted keys still kept (so that deletes replicate).
    :ivar database_bytes: bytes on disk (or in memory) the data takes, or None if unknown.
    :ivar measured_at: when it was measured (the backend's clock, seconds).
    """

    live_keys: int
    tombstones: int
    database_bytes: int | None
    measured_at: float


class BackendStatistics:
    """What a backend counts as it works (see
    :class:`~navistore.interfaces.IBackendStatistics`)."""

    __slots__ = ("batch_sizes", "commit_error", "commit_seconds", "errors", "sizes")

    def __init__(self) -> None:
        #: Records written per group commit (one transaction).
        self.batch_sizes = Histogram(BATCH_SIZE_BUCKETS)
        #: Seconds from a batch's start to its commit (or failure).
        self.commit_seconds = Histogram(COMMIT_SECONDS_BUCKETS)
        #: Operations the storage failed (each failed call once).
        self.errors = 0
        #: Why the last group commit failed, or None if it succeeded (or none was made yet).
        self.commit_error: str | None = None
        #: The last measured sizes, or None before the first measure.
        self.sizes: StorageSizes | None = None


class RequestCounts:
    """Requests answered by route family, method and status, and their latency by route
    family and method: a dictionary update and a bisect per request.

    The labels stay few: route families are the API's (``key``, ``prefix``, ``unknown``,
    ``unrouted`` and one per endpoint name), methods outside a known few count as ``OTHER``.
    """

    __slots__ = ("counts", "latency")

    def __init__(self) -> None:
        #: Requests by ``(family, method, status)``; status :data:`ABORTED` for a client gone.
        self.counts: dict[tuple[str, bytes, int], int] = {}
        #: Seconds from the request's headers to its answer, by ``(family, method)``.
        self.latency: dict[tuple[str, bytes], Histogram] = {}

    def finished(self, family: str, method: bytes, status: int, seconds: float) -> None:
        """Count one request, answered with ``status`` after ``seconds``."""
        if method not in _KNOWN_METHODS:
            method = b"OTHER"
        key = (family, method, status)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        histogram = self.latency.get((family, method))
        if histogram is None:
            histogram = self.latency[family, method] = Histogram(REQUEST_SECONDS_BUCKETS)
        histogram.observe(seconds)

"""What the web layer may ask of the node's other parts, as small protocols.

The resource tree knows the Store and nothing else; the modes that reach beyond one node (a cache
node's upstream, read fallback to peers, writes that wait for replicas) plug in through these
hooks, so that ``web`` never imports treq or the replication machinery.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, Union

import attrs
from twisted.web.server import Request

from ..record import Record
from .rendering import Response

__all__ = ["ALL_REPLICAS", "MissResolver", "ReplicaReport", "ReplicaWaiter", "WriteForwarder"]

#: ``?replicas=all``: every peer in the set.
ALL_REPLICAS = "all"


class MissResolver(Protocol):
    """Finds a key this node does not hold elsewhere (a cache node's upstream, or peers)."""

    async def resolve(self, key: str) -> tuple[Record, str] | None:
        """Return the live record and the URL of the node that had it, or None."""

    def staleness(self) -> float | None:
        """Seconds since this node last heard from where it copies data, if it copies at all.

        A cache node answers with this so that a client knows how stale a value may be.
        """


class WriteForwarder(Protocol):
    """Sends a write elsewhere and returns that node's answer (a cache node's upstream)."""

    async def forward(self, request: Request, body: bytes) -> Response:
        """Forward ``request`` (method, path, query, headers) with ``body``; return the answer,
        or raise an ApiError (503 when the upstream cannot be reached)."""


@attrs.frozen
class ReplicaReport:
    """Which peers hold a record (acknowledged it), and which do not yet."""

    reached: Sequence[str]
    missing: Sequence[str]

    def satisfies(self, wanted: Union[int, str]) -> bool:  # noqa: UP007 - attrs on Python 3.9
        """Tell whether enough peers hold the record."""
        if wanted == ALL_REPLICAS:
            return not self.missing
        return len(self.reached) >= int(wanted)


class ReplicaWaiter(Protocol):
    """Waits until peers acknowledged a stored record."""

    async def wait(self, record: Record, wanted: int | str, timeout: float) -> ReplicaReport:
        """Return once ``wanted`` peers (a number, or ``"all"``) acknowledged ``record`` or
        ``timeout`` seconds passed, with who has it; never raise for a slow peer."""

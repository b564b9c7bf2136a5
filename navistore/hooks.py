"""What the web layer may ask of the parts of a node that reach beyond it, as small protocols.

The resource tree (:mod:`navistore.web`) knows the Store and nothing else. The modes that reach
other nodes plug into it through these hooks: a cache node's upstream and read fallback to peers
(:class:`MissResolver`), a cache node's forwarded writes (:class:`WriteForwarder`), writes that
wait for replicas (:class:`ReplicaWaiter`) and the peer set behind ``/_peers``
(:class:`PeerControl`). This module sits between both sides: ``web`` imports it to ask, and
``replication`` and ``cache_node`` import it to answer, so neither imports the other and the web
layer never imports treq or the replication machinery.

The errors a hook raises for the client carry a stable ``code``; the web layer's one table
(:mod:`navistore.web.errors`) turns them into statuses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, Union

import attrs

from navistore.record import Record

__all__ = [
    "ALL_REPLICAS",
    "ForwardedAnswer",
    "ForwardedWrite",
    "HookError",
    "MissResolver",
    "PeerControl",
    "ReplicaReport",
    "ReplicaWaiter",
    "UpstreamIsSelf",
    "UpstreamRefused",
    "UpstreamUnavailable",
    "Wanted",
    "WriteForwarder",
]

#: ``?replicas=all``: every peer in the set.
ALL_REPLICAS = "all"

#: How many replicas a write waits for: a number of peers, or :data:`ALL_REPLICAS`.
Wanted = Union[int, str]


class HookError(Exception):
    """An error a hook reports to the client; ``code`` is the API's stable error name.

    :ivar detail: what the JSON error body's ``detail`` carries (None: no detail).
    """

    code = "hook_error"

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.detail = detail


class UpstreamUnavailable(HookError):
    """The node this one depends on (a cache node's upstream) cannot be reached now (503)."""

    code = "upstream_unavailable"

    def __init__(self, upstream: str, why: str) -> None:
        super().__init__(
            f"the upstream {upstream} cannot be reached ({why}); this cache node serves only "
            "the copies it holds and cannot take writes now",
            {"upstream": upstream},
        )


class UpstreamRefused(HookError):
    """The upstream refused a request with a 4xx, passed on to the client as it came.

    :ivar status: the upstream's status, which the client gets too.
    """

    code = "upstream_refused"

    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        if code:
            self.code = code


class UpstreamIsSelf(HookError):
    """The upstream URL names this very node, so there is nowhere to fetch from (503)."""

    code = "upstream_is_self"

    def __init__(self, upstream: str) -> None:
        super().__init__(f"the upstream {upstream} is this node")


class MissResolver(Protocol):
    """Finds a key this node does not hold elsewhere (a cache node's upstream, or peers)."""

    async def resolve(self, key: str) -> tuple[Record, str] | None:
        """Return the live record and the URL of the node that had it, or None; raise a
        :class:`HookError` when it cannot say (then a 404 might be false)."""

    def staleness(self) -> float | None:
        """Seconds since this node last heard from where it copies data, if it copies at all.

        A cache node answers with this so that a client knows how stale a value may be.
        """


@attrs.frozen
class ForwardedWrite:
    """A write request as a node received it, to be handed on rather than applied.

    :ivar method: ``PUT``, ``POST`` or ``DELETE``.
    :ivar target: the request target as received (path and query, origin-form).
    :ivar path: the target's path, still percent-encoded.
    :ivar headers: every request header, by raw name.
    :ivar body: the request body, read whole within the node's limits.
    """

    method: str
    target: bytes
    path: bytes
    headers: Mapping[bytes, Sequence[bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        """The last value of a header (names compare case-insensitively), or None."""
        wanted = name.lower()
        found = None
        for each, values in self.headers.items():
            if each.lower() == wanted and values:
                found = values[-1]
        return found


@attrs.frozen
class ForwardedAnswer:
    """What the node a write was forwarded to answered: the client gets it as it is."""

    status: int
    headers: Mapping[bytes, bytes]
    body: bytes


class WriteForwarder(Protocol):
    """Sends a write elsewhere and returns that node's answer (a cache node's upstream)."""

    async def forward(self, write: ForwardedWrite) -> ForwardedAnswer:
        """Hand ``write`` on and return the answer; raise :class:`UpstreamUnavailable` when the
        other node cannot be reached."""


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


class PeerControl(Protocol):
    """The peer set of a node, as ``/_peers`` and ``/_replication_slaves`` manage it.

    Every URL is checked with :func:`navistore.peer_urls.normalize_peer_url` and against the
    node's own addresses; a bad one raises :class:`~navistore.peer_urls.InvalidPeer`.
    """

    def check_peer(self, url: str) -> str:
        """The normal form of a peer URL; InvalidPeer if it is no peer (or this node)."""

    async def add_peer(self, url: str) -> bool:
        """Add one peer; False if it was there already."""

    async def remove_peer(self, url: str) -> bool:
        """Remove one peer (its pusher and its cursor); False if it was not a peer."""

    async def set_peers(self, urls: Sequence[str]) -> list[str]:
        """Replace the whole set (every URL checked first); the new set."""

    def peer_urls(self) -> list[str]:
        """The push peers, in the order they were added."""

    def peers(self) -> list[dict[str, Any]]:
        """Each push peer's status (url, role, state, node id, cursor, lag, errors), in order."""

    def clone_status(self) -> dict[str, Any] | None:
        """The clone source's status, or None without one."""

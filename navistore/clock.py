"""Stamps and the hybrid logical clock that makes them.

A :class:`Stamp` is ``(wall_ms, counter, node_id)``: milliseconds of wall time, a logical counter
for events within (or behind) the same millisecond, and the id of the node that wrote. Stamps are
totally ordered, so last-writer-wins picks the same winner on every node; their text form has fixed
width fields so that string order is stamp order, which lets it serve as the HTTP ``ETag`` and as a
sortable database column.

The clock is *hybrid*: it follows the wall clock while that moves forward, and keeps counting
(never going back) when it stalls or steps back. Observing the stamps of records received from
peers pushes it past them, so a node's next write always beats what it has seen.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Callable

import attrs

__all__ = [
    "DEFAULT_MAX_DRIFT_MS",
    "ClockDriftError",
    "HybridClock",
    "InvalidStamp",
    "Stamp",
    "new_node_id",
    "validate_node_id",
]

#: How far in the future (ms) a received stamp may lie before it is refused.
DEFAULT_MAX_DRIFT_MS = 60_000

_WALL_DIGITS = 12  # hex digits: 2**48 ms reaches the year 10889
_COUNTER_DIGITS = 6
_MAX_WALL = 16**_WALL_DIGITS - 1
_MAX_COUNTER = 16**_COUNTER_DIGITS - 1
_NODE_ID = re.compile(r"[0-9a-f]{16}\Z")
_STAMP_TEXT = re.compile(r"([0-9a-f]{12})-([0-9a-f]{6})-([0-9a-f]{16})\Z")


class InvalidStamp(ValueError):
    """A stamp's text or fields are malformed."""


class ClockDriftError(ValueError):
    """A received stamp lies further in the future than the allowed drift.

    Accepting it would drag this node's clock (and every later stamp) into the future, so the
    record carrying it is refused instead.
    """

    def __init__(self, stamp: Stamp, ahead_ms: int, max_drift_ms: int) -> None:
        super().__init__(
            f"stamp {stamp} is {ahead_ms} ms ahead of this node's clock "
            f"(the allowed drift is {max_drift_ms} ms); check the sender's clock"
        )
        self.stamp = stamp
        self.ahead_ms = ahead_ms
        self.max_drift_ms = max_drift_ms


def validate_node_id(node_id: str) -> str:
    """Return ``node_id`` if it is 16 lowercase hex digits, else raise :class:`InvalidStamp`."""
    if not isinstance(node_id, str) or not _NODE_ID.match(node_id):
        raise InvalidStamp(f"node id {node_id!r} is not 16 lowercase hex digits")
    return node_id


def new_node_id() -> str:
    """Make a random node id (64 bits, so two nodes on a LAN never pick the same)."""
    return secrets.token_hex(8)


def _check_field(name: str, value: int, maximum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise InvalidStamp(f"{name} {value!r} is not an integer in [0, {maximum}]")


@attrs.frozen(order=True)
class Stamp:
    """A hybrid logical clock value; ordering compares wall, then counter, then node id."""

    wall_ms: int
    counter: int
    node_id: str

    def __attrs_post_init__(self) -> None:
        _check_field("wall_ms", self.wall_ms, _MAX_WALL)
        _check_field("counter", self.counter, _MAX_COUNTER)
        validate_node_id(self.node_id)

    def encode(self) -> str:
        """Return the fixed-width text form, e.g. ``0193f2a1b2c3-000000-1f2e3d4c5b6a7988``."""
        return f"{self.wall_ms:012x}-{self.counter:06x}-{self.node_id}"

    @classmethod
    def decode(cls, text: str) -> Stamp:
        """Parse the text form made by :meth:`encode`, or raise :class:`InvalidStamp`."""
        match = _STAMP_TEXT.match(text) if isinstance(text, str) else None
        if match is None:
            raise InvalidStamp(f"{text!r} is not a stamp (expected wwwwwwwwwwww-cccccc-<node id>)")
        return cls(int(match.group(1), 16), int(match.group(2), 16), match.group(3))

    def __str__(self) -> str:
        return self.encode()


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class HybridClock:
    """The node's clock: strictly increasing stamps that stay close to wall time.

    :param node_id: this node's id, part of every stamp it makes.
    :param wall_ms: a callable giving wall time in ms (injected so tests can step it back).
    :param max_drift_ms: how far ahead of local wall time a received stamp may be.
    """

    def __init__(
        self,
        node_id: str,
        wall_ms: Callable[[], int] = _wall_clock_ms,
        max_drift_ms: int = DEFAULT_MAX_DRIFT_MS,
    ) -> None:
        self.node_id = validate_node_id(node_id)
        self._wall_ms = wall_ms
        self.max_drift_ms = max_drift_ms
        self._last_wall = 0
        self._last_counter = 0

    @property
    def last(self) -> Stamp:
        """The greatest stamp this clock has made or observed (with this node's id)."""
        return Stamp(self._last_wall, self._last_counter, self.node_id)

    def now(self) -> Stamp:
        """Return a stamp greater than every stamp made or observed before."""
        physical = self._wall_ms()
        if physical > self._last_wall:
            self._last_wall, self._last_counter = physical, 0
        elif self._last_counter < _MAX_COUNTER:
            self._last_counter += 1
        else:
            # The counter is exhausted within one millisecond: borrow the next millisecond.
            self._last_wall, self._last_counter = self._last_wall + 1, 0
        return Stamp(self._last_wall, self._last_counter, self.node_id)

    def check(self, stamp: Stamp) -> None:
        """Raise :class:`ClockDriftError` if ``stamp`` is further ahead than the allowed drift."""
        ahead = stamp.wall_ms - self._wall_ms()
        if ahead > self.max_drift_ms:
            raise ClockDriftError(stamp, ahead, self.max_drift_ms)

    def observe(self, stamp: Stamp, *, trusted: bool = False) -> None:
        """Advance past a received stamp so that the next :meth:`now` is greater than it.

        :param trusted: skip the drift check, for stamps this node already stored (refusing
            them would only make its own later writes lose to them).
        :raises ClockDriftError: the stamp is too far in the future; the clock is unchanged.
        """
        if not trusted:
            self.check(stamp)
        if (stamp.wall_ms, stamp.counter) > (self._last_wall, self._last_counter):
            self._last_wall, self._last_counter = stamp.wall_ms, stamp.counter

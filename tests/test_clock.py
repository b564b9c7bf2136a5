"""Stamps and the hybrid logical clock (navistore.clock)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from navistore.clock import (
    DEFAULT_MAX_DRIFT_MS,
    ClockDriftError,
    HybridClock,
    InvalidStamp,
    Stamp,
    new_node_id,
    validate_node_id,
)

MAX_WALL = 16**12 - 1
MAX_COUNTER = 16**6 - 1
STAMP_WIDTH = 12 + 1 + 6 + 1 + 16
BASE_MS = 1_700_000_000_000  # November 2023
HOUR_MS = 3_600_000

NODE = "00000000000000a0"
LOWER_NODE = "0000000000000001"
HIGHER_NODE = "ffffffffffffffff"

node_ids = st.text("0123456789abcdef", min_size=16, max_size=16)
# Small field ranges make equal walls, counters and node ids (the tie breakers) common.
small_stamps = st.builds(
    Stamp,
    st.integers(0, 3),
    st.integers(0, 3),
    st.sampled_from([LOWER_NODE, NODE, HIGHER_NODE]),
)
full_stamps = st.builds(Stamp, st.integers(0, MAX_WALL), st.integers(0, MAX_COUNTER), node_ids)
stamps = st.one_of(small_stamps, full_stamps)


class ListWall:
    """A fake wall clock that returns the readings it was given in order, repeating the last."""

    def __init__(self, readings: list[int]) -> None:
        assert readings
        self.readings = list(readings)
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        if len(self.readings) > 1:
            return self.readings.pop(0)
        return self.readings[0]

    def set(self, reading: int) -> None:
        """Make every later call return ``reading``."""
        self.readings = [reading]


# --- stamps ------------------------------------------------------------------------------------


@given(stamps, stamps)
def test_stamp_order_is_text_order(first: Stamp, second: Stamp) -> None:
    """Comparing two stamps gives the same answer as comparing their encoded text."""
    assert (first < second) is (first.encode() < second.encode())
    assert (first == second) is (first.encode() == second.encode())
    assert (first > second) is (first.encode() > second.encode())


@given(stamps)
def test_encode_decode_round_trip(stamp: Stamp) -> None:
    """Decoding the text form gives the stamp back, and str() is that text form."""
    text = stamp.encode()
    assert Stamp.decode(text) == stamp
    assert str(stamp) == text


@given(stamps)
def test_encoded_text_has_fixed_width(stamp: Stamp) -> None:
    """Every stamp encodes to 36 characters: 12 hex wall, 6 hex counter, 16 hex node id."""
    text = stamp.encode()
    assert len(text) == STAMP_WIDTH
    assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]{6}-[0-9a-f]{16}", text)


def test_encode_example() -> None:
    """The documented layout, field by field."""
    stamp = Stamp(0x0193F2A1B2C3, 0x2A, "1f2e3d4c5b6a7988")
    assert stamp.encode() == "0193f2a1b2c3-00002a-1f2e3d4c5b6a7988"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0193f2a1b2c3-000000",
        "0193f2a1b2c3-000000-1f2e3d4c5b6a798",
        "0193f2a1b2c3-000000-1f2e3d4c5b6a79880",
        "0193F2A1B2C3-000000-1f2e3d4c5b6a7988",
        "0193f2a1b2c3-000000-1F2E3D4C5B6A7988",
        "0193f2a1b2c3_000000_1f2e3d4c5b6a7988",
        "193f2a1b2c3-0000000-1f2e3d4c5b6a7988",
        "0193f2a1b2c3-000000-1f2e3d4c5b6a7988\n",
        " 0193f2a1b2c3-000000-1f2e3d4c5b6a7988",
        "0193f2a1b2cg-000000-1f2e3d4c5b6a7988",
        '"0193f2a1b2c3-000000-1f2e3d4c5b6a7988"',
        b"0193f2a1b2c3-000000-1f2e3d4c5b6a7988",
        None,
    ],
)
def test_decode_rejects_malformed_text(text: object) -> None:
    """Anything but the exact lowercase fixed-width form is refused with InvalidStamp."""
    with pytest.raises(InvalidStamp, match="is not a stamp"):
        Stamp.decode(text)  # type: ignore[arg-type]


@given(st.text(st.sampled_from("0123456789abcdefABCDEF-x \n"), max_size=40))
def test_decode_accepts_only_canonical_text(text: str) -> None:
    """Random text either is refused with InvalidStamp or is exactly the encoding it decodes to."""
    try:
        stamp = Stamp.decode(text)
    except InvalidStamp:
        return
    assert stamp.encode() == text


@given(stamps, st.integers(0, STAMP_WIDTH - 1), st.sampled_from("Gg-_ X\x00"))
def test_decode_rejects_any_corrupted_character(stamp: Stamp, index: int, bad: str) -> None:
    """Replacing one character of an encoded stamp by a character not allowed there is refused."""
    text = stamp.encode()
    allowed_here = "-" if index in (12, 19) else "0123456789abcdef"
    if bad in allowed_here:
        return
    with pytest.raises(InvalidStamp):
        Stamp.decode(text[:index] + bad + text[index + 1 :])


@pytest.mark.parametrize(
    "node_id",
    [
        "",
        "0123456789abcde",
        "0123456789abcdef0",
        "0123456789ABCDEF",
        "0123456789abcdeg",
        "0123456789abcde\n",
        b"0123456789abcdef",
        None,
        123,
    ],
)
def test_node_ids_must_be_16_lowercase_hex(node_id: object) -> None:
    """Node ids other than 16 lowercase hex digits are refused, alone and inside a Stamp."""
    with pytest.raises(InvalidStamp, match="is not 16 lowercase hex digits"):
        validate_node_id(node_id)  # type: ignore[arg-type]
    with pytest.raises(InvalidStamp):
        Stamp(1, 0, node_id)  # type: ignore[arg-type]


@given(node_ids)
def test_valid_node_ids_are_accepted(node_id: str) -> None:
    """Any 16 lowercase hex digits is a node id, and new_node_id makes such ids."""
    assert validate_node_id(node_id) == node_id
    assert validate_node_id(new_node_id()) != validate_node_id(new_node_id())


@pytest.mark.parametrize(
    ("wall_ms", "counter"),
    [(-1, 0), (MAX_WALL + 1, 0), (0, -1), (0, MAX_COUNTER + 1), (True, 0), (0, 1.0), ("1", 0)],
)
def test_stamp_fields_are_range_checked(wall_ms: object, counter: object) -> None:
    """Wall and counter must be integers within their fixed widths (no bools, floats or text)."""
    with pytest.raises(InvalidStamp):
        Stamp(wall_ms, counter, NODE)  # type: ignore[arg-type]
    assert Stamp(MAX_WALL, MAX_COUNTER, NODE).encode().startswith("ffffffffffff-ffffff-")


# --- the hybrid clock --------------------------------------------------------------------------

# One wall clock movement: forward a little, stall, or step back by up to three hours.
wall_moves = st.one_of(
    st.integers(1, 2_000),
    st.just(0),
    st.integers(-3 * HOUR_MS, -1),
)


def walk(moves: list[int]) -> list[int]:
    """Turn wall clock moves into readings starting at BASE_MS."""
    readings = [BASE_MS]
    for move in moves:
        readings.append(readings[-1] + move)
    return readings


@given(st.lists(wall_moves, min_size=1, max_size=60))
def test_now_strictly_increases_whatever_the_wall_clock_does(moves: list[int]) -> None:
    """now() increases strictly while wall time goes forward, stalls and steps back by hours; it
    equals wall time (counter 0) whenever wall time passes the last stamp, and is never behind."""
    readings = walk(moves)
    wall = ListWall(readings)
    clock = HybridClock(NODE, wall_ms=wall)
    previous: Stamp | None = None
    for reading in readings:
        stamp = clock.now()
        assert stamp.node_id == NODE
        assert stamp.wall_ms >= reading
        if previous is None or reading > previous.wall_ms:
            assert (stamp.wall_ms, stamp.counter) == (reading, 0)
        else:
            assert stamp > previous
            assert stamp.wall_ms == previous.wall_ms
        assert clock.last == stamp
        previous = stamp
    assert wall.calls == len(readings)


def test_now_follows_a_forward_moving_wall_clock() -> None:
    """While wall time moves forward, each stamp is exactly the wall time with counter 0."""
    readings = [BASE_MS, BASE_MS + 1, BASE_MS + 7, BASE_MS + 1000]
    clock = HybridClock(NODE, wall_ms=ListWall(readings))
    assert [clock.now() for _ in readings] == [Stamp(r, 0, NODE) for r in readings]


def test_now_counts_when_the_wall_clock_stalls_or_steps_back() -> None:
    """A stalled or backward wall clock keeps the last wall time and raises the counter."""
    clock = HybridClock(NODE, wall_ms=ListWall([BASE_MS, BASE_MS, BASE_MS - HOUR_MS, BASE_MS + 1]))
    assert [clock.now() for _ in range(4)] == [
        Stamp(BASE_MS, 0, NODE),
        Stamp(BASE_MS, 1, NODE),
        Stamp(BASE_MS, 2, NODE),
        Stamp(BASE_MS + 1, 0, NODE),
    ]


def test_counter_rollover_borrows_the_next_millisecond() -> None:
    """When the counter is at its maximum within one millisecond, the clock moves to the next
    millisecond with counter 0 and keeps increasing from there."""
    wall = ListWall([BASE_MS])
    clock = HybridClock(NODE, wall_ms=wall)
    clock.observe(Stamp(BASE_MS, MAX_COUNTER - 1, HIGHER_NODE))
    stamps_made = [clock.now() for _ in range(4)]
    assert stamps_made == [
        Stamp(BASE_MS, MAX_COUNTER, NODE),
        Stamp(BASE_MS + 1, 0, NODE),
        Stamp(BASE_MS + 1, 1, NODE),
        Stamp(BASE_MS + 1, 2, NODE),
    ]
    wall.set(BASE_MS + 1)
    assert clock.now() == Stamp(BASE_MS + 1, 3, NODE)
    wall.set(BASE_MS + 2)
    assert clock.now() == Stamp(BASE_MS + 2, 0, NODE)


@given(
    st.integers(0, 1000),
    st.integers(MAX_COUNTER - 3, MAX_COUNTER),
    node_ids,
    st.lists(st.sampled_from([-1, 0, 1]), min_size=1, max_size=10),
)
def test_rollover_property(offset: int, counter: int, node_id: str, moves: list[int]) -> None:
    """Near the counter's maximum, with a wall clock wobbling around the observed millisecond,
    stamps keep strictly increasing and end up past the observed stamp."""
    observed = Stamp(BASE_MS + offset, counter, node_id)
    wall = ListWall([BASE_MS + offset])
    clock = HybridClock(NODE, wall_ms=wall)
    clock.observe(observed)
    previous = observed
    for move in moves:
        wall.set(BASE_MS + offset + move)
        stamp = clock.now()
        assert stamp > previous
        previous = stamp


@pytest.mark.parametrize("observed_node", [LOWER_NODE, NODE, HIGHER_NODE])
def test_observe_same_wall_and_counter_any_node(observed_node: str) -> None:
    """After observing a stamp with this clock's own wall and counter (and a lower, equal or
    greater node id) the next stamp is still greater than it."""
    clock = HybridClock(NODE, wall_ms=ListWall([BASE_MS]))
    made = clock.now()
    observed = Stamp(made.wall_ms, made.counter, observed_node)
    clock.observe(observed)
    assert clock.now() > observed


# A received stamp: near this clock's last stamp (same wall time, or one ms either side) or
# anywhere from hours behind to a little past the allowed drift ahead of wall time.
observations = st.tuples(
    st.sampled_from(["last", "wall"]),
    st.one_of(
        st.sampled_from([-1, 0, 1]),
        st.integers(-2 * HOUR_MS, DEFAULT_MAX_DRIFT_MS + 10),
    ),
    st.integers(0, 5),
    st.sampled_from([LOWER_NODE, NODE, HIGHER_NODE]),
)


@given(
    st.lists(wall_moves, min_size=1, max_size=20),
    st.lists(observations, max_size=20),
)
def test_observe_then_now_beats_everything_seen(
    moves: list[int], received: list[tuple[str, int, int, str]]
) -> None:
    """Interleaving now() with observing received stamps (behind, equal to, or ahead of the local
    clock): each new stamp beats every stamp made or accepted before, and a stamp beyond the
    drift is refused without moving the clock."""
    wall = ListWall([BASE_MS])
    clock = HybridClock(NODE, wall_ms=wall)
    greatest = clock.now()
    pending = list(received)
    for reading in walk(moves):
        wall.set(reading)
        if pending:
            base, delta, counter, node_id = pending.pop()
            origin = clock.last.wall_ms if base == "last" else reading
            observed = Stamp(origin + delta, counter, node_id)
            if observed.wall_ms - reading > DEFAULT_MAX_DRIFT_MS:
                before = clock.last
                with pytest.raises(ClockDriftError):
                    clock.observe(observed)
                assert clock.last == before
            else:
                clock.observe(observed)
                greatest = max(greatest, observed)
        stamp = clock.now()
        assert stamp > greatest
        greatest = stamp


@pytest.mark.parametrize("counter", [1, 2, MAX_COUNTER])
def test_observe_same_wall_greater_counter(counter: int) -> None:
    """A received stamp in this clock's last millisecond but with a greater counter (even the
    maximum) is passed by the next stamp, though the wall clock has not moved."""
    clock = HybridClock(NODE, wall_ms=ListWall([BASE_MS]))
    clock.now()
    observed = Stamp(BASE_MS, counter, LOWER_NODE)
    clock.observe(observed)
    assert clock.last == Stamp(BASE_MS, counter, NODE)
    assert clock.now() > observed


def test_observing_an_older_stamp_changes_nothing() -> None:
    """A received stamp behind this clock leaves it where it was."""
    clock = HybridClock(NODE, wall_ms=ListWall([BASE_MS]))
    clock.now()
    clock.now()
    clock.observe(Stamp(BASE_MS, 0, HIGHER_NODE))
    clock.observe(Stamp(BASE_MS - HOUR_MS, 9, HIGHER_NODE))
    assert clock.last == Stamp(BASE_MS, 1, NODE)
    assert clock.now() == Stamp(BASE_MS, 2, NODE)


def test_stamp_too_far_ahead_is_refused_and_changes_nothing() -> None:
    """A stamp more than 5 s (the default drift) ahead of wall time raises ClockDriftError with
    a message naming the stamp, how far ahead it is and the limit; the clock does not move."""
    wall = ListWall([BASE_MS])
    clock = HybridClock(NODE, wall_ms=wall)
    twin = HybridClock(NODE, wall_ms=ListWall([BASE_MS]))
    clock.now()
    twin.now()
    before = clock.last
    far = Stamp(BASE_MS + DEFAULT_MAX_DRIFT_MS + 1, 0, HIGHER_NODE)
    with pytest.raises(ClockDriftError) as caught:
        clock.observe(far)
    error = caught.value
    assert isinstance(error, ValueError)
    assert (error.stamp, error.ahead_ms, error.max_drift_ms) == (far, 5_001, 5_000)
    assert str(error) == (
        f"stamp {far.encode()} is 5001 ms ahead of this node's clock "
        "(the allowed drift is 5000 ms); check the sender's clock"
    )
    assert clock.last == before
    assert clock.now() == twin.now()


def test_stamp_exactly_at_the_drift_limit_is_accepted() -> None:
    """A stamp exactly max_drift_ms ahead is observed, and the next stamp passes it."""
    clock = HybridClock(NODE, wall_ms=ListWall([BASE_MS]))
    edge = Stamp(BASE_MS + DEFAULT_MAX_DRIFT_MS, 7, HIGHER_NODE)
    clock.observe(edge)
    assert clock.now() > edge


@given(st.integers(0, 10 * HOUR_MS), st.integers(-HOUR_MS, 11 * HOUR_MS))
def test_drift_limit_is_configurable(max_drift_ms: int, ahead: int) -> None:
    """With a custom max_drift_ms, a stamp is observed iff it is at most that far ahead."""
    clock = HybridClock(NODE, wall_ms=ListWall([BASE_MS]), max_drift_ms=max_drift_ms)
    before = clock.last
    stamp = Stamp(BASE_MS + ahead, 0, LOWER_NODE)
    if ahead <= max_drift_ms:
        clock.observe(stamp)
        assert clock.now() > stamp
    else:
        with pytest.raises(ClockDriftError, match=f"the allowed drift is {max_drift_ms} ms"):
            clock.observe(stamp)
        assert clock.last == before


def test_trusted_stamp_skips_the_drift_check() -> None:
    """observe(trusted=True), for stamps this node already stored, accepts a stamp beyond the
    drift, so that the node's next write still beats it."""
    clock = HybridClock(NODE, wall_ms=ListWall([BASE_MS]))
    far = Stamp(BASE_MS + 10 * DEFAULT_MAX_DRIFT_MS, 3, HIGHER_NODE)
    clock.observe(far, trusted=True)
    assert clock.now() > far


def test_clock_refuses_a_bad_node_id() -> None:
    """A clock's node id obeys the stamp rules, so every stamp it makes is valid."""
    with pytest.raises(InvalidStamp):
        HybridClock("NOT-A-NODE-ID")

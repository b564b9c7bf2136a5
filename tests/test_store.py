"""The node itself (navistore.store.Store) over a memory backend, without HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from navistore.backend.memory import MemoryBackend
from navistore.clock import ClockDriftError, Stamp
from navistore.interfaces import ANY, Expectation
from navistore.keys import InvalidKey
from navistore.record import DEFAULT_CONTENT_TYPE, Record
from navistore.store import (
    MATCH_ANY,
    NODE_ID_META,
    Conflict,
    NotFound,
    PreconditionFailed,
    Store,
)

BASE_MS = 1_700_000_000_000  # November 2023
SECOND_MS = 1_000
HOUR_MS = 3_600_000
OTHER_NODE = "00000000000000b0"


class FixedWall:
    """A fake wall clock that reads the same millisecond until it is set to another."""

    def __init__(self, reading: int) -> None:
        self.reading = reading

    def __call__(self) -> int:
        return self.reading


class RacingBackend(MemoryBackend):
    """A memory backend where a queued competing record lands just before the next ``apply``.

    It stands in for a write that slipped in between the Store's read and its compare-and-set.
    """

    def __init__(self) -> None:
        super().__init__()
        self.competitors: list[Record] = []

    def race(self, record: Record) -> None:
        """Make ``record`` land (last-writer-wins) right before the next apply."""
        self.competitors.append(record)

    def apply(self, record: Record, expect: Expectation = ANY) -> Deferred[Record | None]:
        if self.competitors:
            super().apply(self.competitors.pop(0), ANY)
        return super().apply(record, expect)


def remote(key: str, value: bytes, wall_ms: int, counter: int = 0) -> Record:
    """A record as another node (OTHER_NODE) would have written it."""
    return Record(key, value, "text/plain", Stamp(wall_ms, counter, OTHER_NODE))


@pytest_twisted.async_yield_fixture
async def store() -> AsyncIterator[Store]:
    """A Store over a fresh memory backend, with a wall clock that stands still at BASE_MS."""
    opened = await Store.open(MemoryBackend(), wall_ms=FixedWall(BASE_MS))
    yield opened
    await opened.close()


async def seqs_of(store: Store) -> list[tuple[int | None, str, bool]]:
    """Every change of the store as (seq, key, deleted), in seq order."""
    page = await store.changes(0, limit=10_000)
    return [(record.seq, record.key, record.deleted) for record in page.records]


# -- identity -------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_node_id_is_created_once_and_kept_across_open() -> None:
    """The first open makes and saves a node id; reopening the same backend keeps it."""
    backend = MemoryBackend()
    first = await Store.open(backend)
    saved = await backend.get_meta(NODE_ID_META)
    second = await Store.open(backend)
    other = await Store.open(MemoryBackend())
    assert saved == first.node_id
    assert second.node_id == first.node_id
    assert second.clock.node_id == first.node_id
    assert other.node_id != first.node_id
    assert len(first.node_id) == 16


@pytest_twisted.ensureDeferred
async def test_stamps_carry_the_node_id(store: Store) -> None:
    """Every local write is stamped with this node's id."""
    result = await store.put("/k", b"v")
    assert result.record.stamp.node_id == store.node_id


@pytest_twisted.ensureDeferred
async def test_reset_keeps_node_id_and_seq_counter(store: Store) -> None:
    """reset() wipes records but keeps the node id and never reuses a seq."""
    node_id = store.node_id
    await store.put("/a", b"1")
    await store.put("/b", b"2")
    before = await store.last_seq()
    await store.reset()
    assert await store.get("/a") is None
    assert (await store.list("/")).records == []
    reopened = await Store.open(store.backend)
    assert reopened.node_id == node_id
    result = await store.put("/c", b"3")
    assert result.created
    assert result.record.seq is not None and result.record.seq > before


# -- keys -----------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_key_validation_uses_the_configured_limit() -> None:
    """Store.key() normalises keys and refuses ones longer than max_key_bytes."""
    small = await Store.open(MemoryBackend(), max_key_bytes=8)
    assert small.canonical_key("abc") == "/abc"
    assert small.canonical_key("/a/b") == "/a/b"
    with pytest.raises(InvalidKey):
        small.canonical_key("/" + "x" * 8)
    with pytest.raises(InvalidKey):
        small.canonical_key("/_changes")
    assert small.canonical_prefix("doc/") == "/doc/"


# -- the compare-and-set write loop ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_created_flag_is_exact(store: Store) -> None:
    """created is True for a new key, False for a replacement, True again after a delete."""
    first = await store.put("/k", b"1")
    second = await store.put("/k", b"2")
    await store.delete("/k")
    third = await store.put("/k", b"3")
    assert (first.created, second.created, third.created) == (True, False, True)
    assert first.record.stamp < second.record.stamp < third.record.stamp
    stored = await store.get("/k")
    assert stored is not None and stored.value == b"3"


@pytest_twisted.ensureDeferred
async def test_put_stores_value_and_content_type(store: Store) -> None:
    """A put keeps the bytes and the content type (default application/octet-stream)."""
    typed = await store.put("/t", b"\x00\xff", "text/plain; charset=latin-1")
    untyped = await store.put("/u", b"x")
    assert typed.record.content_type == "text/plain; charset=latin-1"
    assert typed.record.value == b"\x00\xff"
    assert untyped.record.content_type == DEFAULT_CONTENT_TYPE
    assert typed.record.seq is not None


@pytest_twisted.ensureDeferred
async def test_created_flag_is_exact_when_a_competing_create_slips_in() -> None:
    """A create that loses the race to another writer retries and reports created=False."""
    backend = RacingBackend()
    store = await Store.open(backend, wall_ms=FixedWall(BASE_MS))
    backend.race(remote("/k", b"theirs", BASE_MS + 5))
    result = await store.put("/k", b"mine")
    assert result.created is False
    assert result.record.value == b"mine"
    assert result.record.stamp > Stamp(BASE_MS + 5, 0, OTHER_NODE)
    assert [key for _, key, _ in await seqs_of(store)] == ["/k"]


@pytest_twisted.ensureDeferred
async def test_if_match_fails_when_a_competing_write_lands_first() -> None:
    """If-Match read the right version, but a write slipped in: PreconditionFailed, theirs kept."""
    backend = RacingBackend()
    store = await Store.open(backend, wall_ms=FixedWall(BASE_MS))
    mine = await store.put("/k", b"1")
    backend.race(remote("/k", b"theirs", BASE_MS + 5))
    with pytest.raises(PreconditionFailed):
        await store.put("/k", b"2", if_match=mine.record.stamp.encode())
    stored = await store.get("/k")
    assert stored is not None and stored.value == b"theirs"


@pytest_twisted.ensureDeferred
async def test_create_only_conflicts_when_a_competing_create_lands_first() -> None:
    """POST semantics: a create that finds the key created meanwhile raises Conflict."""
    backend = RacingBackend()
    store = await Store.open(backend, wall_ms=FixedWall(BASE_MS))
    backend.race(remote("/k", b"theirs", BASE_MS + 5))
    with pytest.raises(Conflict):
        await store.put("/k", b"mine", create_only=True)
    stored = await store.get("/k")
    assert stored is not None and stored.value == b"theirs"


@pytest_twisted.ensureDeferred
async def test_delete_of_a_key_deleted_meanwhile_is_not_found() -> None:
    """A delete that finds the key deleted by someone else meanwhile raises NotFound."""
    backend = RacingBackend()
    store = await Store.open(backend, wall_ms=FixedWall(BASE_MS))
    await store.put("/k", b"1")
    backend.race(Record.tombstone("/k", Stamp(BASE_MS + 5, 0, OTHER_NODE)))
    with pytest.raises(NotFound):
        await store.delete("/k")


@pytest_twisted.ensureDeferred
async def test_if_match_on_a_stale_stamp_fails(store: Store) -> None:
    """If-Match with a version the key no longer has fails and changes nothing."""
    old = await store.put("/k", b"1")
    new = await store.put("/k", b"2")
    with pytest.raises(PreconditionFailed) as caught:
        await store.put("/k", b"3", if_match=old.record.stamp.encode())
    assert caught.value.current is not None
    assert caught.value.current.stamp == new.record.stamp
    with pytest.raises(PreconditionFailed):
        await store.delete("/k", if_match=old.record.stamp.encode())
    stored = await store.get("/k")
    assert stored is not None and stored.value == b"2"
    assert stored.stamp == new.record.stamp


@pytest_twisted.ensureDeferred
async def test_if_match_on_the_current_stamp_succeeds(store: Store) -> None:
    """If-Match with the key's current version writes."""
    first = await store.put("/k", b"1")
    second = await store.put("/k", b"2", if_match=first.record.stamp.encode())
    assert second.created is False
    tombstone = await store.delete("/k", if_match=second.record.stamp.encode())
    assert tombstone.deleted
    assert await store.get("/k") is None


@pytest.mark.parametrize(
    "tag",
    ["not-a-stamp", "", '"quoted"', "W/0193f2a1b2c3-000000-1f2e3d4c5b6a7988", "0193F2A1B2C3-0-X"],
)
@pytest_twisted.ensureDeferred
async def test_malformed_if_match_fails_with_precondition_failed(store: Store, tag: str) -> None:
    """An If-Match tag that is not a stamp matches nothing: PreconditionFailed, nothing stored."""
    await store.put("/k", b"1")
    seq = await store.last_seq()
    with pytest.raises(PreconditionFailed):
        await store.put("/k", b"2", if_match=tag)
    with pytest.raises(PreconditionFailed):
        await store.put("/absent", b"2", if_match=tag)
    with pytest.raises(PreconditionFailed):
        await store.delete("/k", if_match=tag)
    assert await store.last_seq() == seq
    stored = await store.get("/k")
    assert stored is not None and stored.value == b"1"


@pytest_twisted.ensureDeferred
async def test_if_match_any_needs_an_existing_key(store: Store) -> None:
    """If-Match: * fails on an absent (or deleted) key and succeeds on an existing one."""
    with pytest.raises(PreconditionFailed):
        await store.put("/k", b"1", if_match=MATCH_ANY)
    await store.put("/k", b"1")
    replaced = await store.put("/k", b"2", if_match=MATCH_ANY)
    assert replaced.created is False
    await store.delete("/k")
    with pytest.raises(PreconditionFailed):
        await store.put("/k", b"3", if_match=MATCH_ANY)
    assert await store.get("/k") is None


@pytest_twisted.ensureDeferred
async def test_if_none_match_any_needs_an_absent_key(store: Store) -> None:
    """If-None-Match: * creates an absent key and fails on an existing one."""
    created = await store.put("/k", b"1", if_none_match=True)
    assert created.created
    with pytest.raises(PreconditionFailed):
        await store.put("/k", b"2", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        await store.delete("/k", if_none_match=True)
    stored = await store.get("/k")
    assert stored is not None and stored.value == b"1"


@pytest_twisted.ensureDeferred
async def test_create_only_conflicts_with_an_existing_key_but_not_a_deleted_one(
    store: Store,
) -> None:
    """create_only raises Conflict (with the current record) while the key exists."""
    first = await store.put("/k", b"1", create_only=True)
    with pytest.raises(Conflict) as caught:
        await store.put("/k", b"2", create_only=True)
    assert caught.value.current.stamp == first.record.stamp
    await store.delete("/k")
    again = await store.put("/k", b"3", create_only=True)
    assert again.created


@pytest_twisted.ensureDeferred
async def test_delete_of_a_missing_key_raises_not_found(store: Store) -> None:
    """Deleting a key that was never written, or is already deleted, raises NotFound."""
    with pytest.raises(NotFound):
        await store.delete("/never")
    await store.put("/k", b"1")
    await store.delete("/k")
    seq = await store.last_seq()
    with pytest.raises(NotFound):
        await store.delete("/k")
    assert await store.last_seq() == seq


# -- remote records and the clock -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_apply_remote_is_last_writer_wins(store: Store) -> None:
    """A remote record replaces only an older one; an older or repeated one is ignored."""
    local = await store.put("/k", b"local")
    older = remote("/k", b"older", BASE_MS - HOUR_MS)
    assert await store.apply_remote(older) is None
    newer = remote("/k", b"newer", BASE_MS + SECOND_MS)
    stored = await store.apply_remote(newer)
    assert stored is not None and stored.value == b"newer" and stored.seq is not None
    assert await store.apply_remote(newer) is None  # idempotent
    current = await store.get("/k")
    assert current is not None and current.value == b"newer"
    assert current.stamp > local.record.stamp


@pytest_twisted.ensureDeferred
async def test_apply_remote_tombstone_deletes(store: Store) -> None:
    """A newer remote tombstone deletes the key; the change feed shows it as deleted."""
    await store.put("/k", b"1")
    stored = await store.apply_remote(
        Record.tombstone("/k", Stamp(BASE_MS + SECOND_MS, 0, OTHER_NODE))
    )
    assert stored is not None and stored.deleted
    assert await store.get("/k") is None
    assert (await seqs_of(store))[-1][1:] == ("/k", True)


@pytest_twisted.ensureDeferred
async def test_local_write_after_a_remote_stamp_ahead_of_the_clock_still_wins(
    store: Store,
) -> None:
    """Applying a remote stamp ahead of the wall clock advances the clock: the next local write
    of that key lands with a greater stamp."""
    ahead = remote("/k", b"remote", BASE_MS + 3 * SECOND_MS, 7)
    assert await store.apply_remote(ahead) is not None
    assert store.clock.last >= Stamp(ahead.stamp.wall_ms, ahead.stamp.counter, store.node_id)
    result = await store.put("/k", b"local")
    assert result.created is False
    assert result.record.stamp > ahead.stamp
    current = await store.get("/k")
    assert current is not None and current.value == b"local"


@pytest_twisted.ensureDeferred
async def test_remote_stamp_beyond_max_drift_is_refused(store: Store) -> None:
    """A remote stamp further ahead than the drift limit raises ClockDriftError and stores
    nothing, without dragging the clock forward."""
    await store.put("/k", b"local")
    seq = await store.last_seq()
    clock_before = store.clock.last
    far = remote("/k", b"future", BASE_MS + store.clock.max_drift_ms + HOUR_MS)
    with pytest.raises(ClockDriftError):
        await store.apply_remote(far)
    with pytest.raises(ClockDriftError):
        await store.apply_remote(remote("/new", b"future", far.stamp.wall_ms))
    assert await store.last_seq() == seq
    current = await store.get("/k")
    assert current is not None and current.value == b"local"
    assert await store.get("/new") is None
    assert store.clock.last == clock_before


@pytest_twisted.ensureDeferred
async def test_remote_stamp_within_max_drift_is_accepted() -> None:
    """A stamp ahead of the wall clock but within max_drift_ms is applied."""
    store = await Store.open(MemoryBackend(), wall_ms=FixedWall(BASE_MS), max_drift_ms=5_000)
    assert await store.apply_remote(remote("/k", b"v", BASE_MS + 5_000)) is not None
    with pytest.raises(ClockDriftError):
        await store.apply_remote(remote("/j", b"v", BASE_MS + 5_001))


@pytest_twisted.ensureDeferred
async def test_open_with_a_wall_clock_behind_the_stored_stamps_still_writes() -> None:
    """A node reopened with its wall clock an hour back still replaces what it wrote before."""
    backend = MemoryBackend()
    before = await Store.open(backend, wall_ms=FixedWall(BASE_MS))
    old = await before.put("/k", b"before")
    behind = await Store.open(backend, wall_ms=FixedWall(BASE_MS - HOUR_MS))
    result = await behind.put("/k", b"after")
    assert result.created is False
    assert result.record.stamp > old.record.stamp
    current = await behind.get("/k")
    assert current is not None and current.value == b"after"


@pytest_twisted.ensureDeferred
async def test_local_write_over_a_stored_stamp_the_clock_never_saw_lands() -> None:
    """A stored stamp far ahead of the clock (not the newest seq, beyond the drift limit) does
    not make the write fail or vanish: the write loop catches the clock up and retries."""
    backend = MemoryBackend()
    far = remote("/k", b"future", BASE_MS + 10 * HOUR_MS)
    assert await backend.apply(far) is not None
    assert await backend.apply(remote("/other", b"x", BASE_MS - HOUR_MS)) is not None
    store = await Store.open(backend, wall_ms=FixedWall(BASE_MS))
    assert store.clock.last.wall_ms < far.stamp.wall_ms  # open only saw the newest seq
    result = await store.put("/k", b"local")
    assert result.created is False
    assert result.record.stamp > far.stamp
    current = await store.get("/k")
    assert current is not None and current.value == b"local"
    deleted = await store.delete("/other")
    assert deleted.stamp > far.stamp


# -- the change feed ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_changes_are_in_seq_order_one_row_per_key(store: Store) -> None:
    """changes() lists each key once at its latest seq, tombstones included, in seq order."""
    await store.put("/a", b"1")
    await store.put("/b", b"1")
    await store.put("/a", b"2")
    await store.delete("/b")
    page = await store.changes(0)
    assert [(r.key, r.deleted) for r in page.records] == [("/a", False), ("/b", True)]
    assert [r.seq for r in page.records] == [3, 4]
    assert page.last_seq == 4
    later = await store.changes(3)
    assert [r.key for r in later.records] == ["/b"]


@pytest_twisted.ensureDeferred
async def test_changes_with_prefix_advance_last_seq_past_skipped_changes(store: Store) -> None:
    """With a prefix, changes elsewhere are skipped and last_seq still moves past them."""
    await store.put("/a/1", b"x")
    for index in range(250):
        await store.put(f"/b/{index}", b"x")
    page = await store.changes(0, prefix="/a/")
    assert [r.key for r in page.records] == ["/a/1"]
    assert page.last_seq == 251
    resumed = await store.changes(page.last_seq, prefix="/a/")
    assert resumed.records == []
    assert resumed.last_seq == 251
    nothing = await store.changes(0, prefix="/c/")
    assert nothing.records == []
    assert nothing.last_seq == 251


@pytest_twisted.ensureDeferred
async def test_changes_limit_pages_with_last_seq(store: Store) -> None:
    """A full page ends at its last record's seq, a short one at the newest seq; resuming from
    last_seq visits every matching change once."""
    for index in range(7):
        await store.put(f"/p/{index}", b"x")
        await store.put(f"/q/{index}", b"x")
    seen: list[int] = []
    since = 0
    while True:
        page = await store.changes(since, limit=3, prefix="/p/")
        if not page.records:
            break
        if len(page.records) == 3:
            assert page.last_seq == page.records[-1].seq
        else:
            assert page.last_seq == await store.last_seq()
        seen.extend(r.seq for r in page.records if r.seq is not None)
        since = page.last_seq
    assert seen == [1, 3, 5, 7, 9, 11, 13]
    assert since == 14


# -- documents ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_list_pages_in_key_order(store: Store) -> None:
    """list() answers live keys under a prefix in key order, with a cursor for the next page."""
    for name in ["c", "a", "b", "d"]:
        await store.put(f"/doc/{name}", b"x")
    await store.put("/docx", b"x")
    await store.delete("/doc/d")
    first = await store.list("/doc/", limit=2)
    assert [r.key for r in first.records] == ["/doc/a", "/doc/b"]
    assert first.next == "/doc/b"
    second = await store.list("/doc/", after=first.next, limit=2)
    assert [r.key for r in second.records] == ["/doc/c"]
    assert second.next is None


@pytest_twisted.ensureDeferred
async def test_delete_prefix_deletes_the_sub_documents_only(store: Store) -> None:
    """delete_prefix('/doc/') deletes /doc/a and /doc/c/d, never /docx nor /doc itself."""
    for key in ["/doc", "/doc/a", "/doc/c/d", "/docx", "/do"]:
        await store.put(key, b"x")
    await store.delete("/doc/a")
    await store.put("/doc/b", b"x")
    assert await store.delete_prefix("/doc/") == 2
    remaining = [r.key for r in (await store.list("/")).records]
    assert remaining == ["/do", "/doc", "/docx"]
    changes = {r.key: r.deleted for r in (await store.changes(0)).records}
    assert changes["/doc/b"] and changes["/doc/c/d"]
    assert await store.delete_prefix("/doc/") == 0


@pytest_twisted.ensureDeferred
async def test_delete_prefix_covers_several_pages(store: Store) -> None:
    """delete_prefix visits every key even when there are more than one page of them."""
    for index in range(1_100):
        await store.put(f"/big/{index:05d}", b"x")
    await store.put("/bigger", b"x")
    assert await store.delete_prefix("/big/") == 1_100
    assert [r.key for r in (await store.list("/")).records] == ["/bigger"]


# -- notifications --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_subscribers_see_every_stored_record(store: Store) -> None:
    """Listeners get each stored record (seq set), for puts, deletes, remote records and prefix
    deletes; refused writes notify nobody; unsubscribe stops the calls."""
    seen: list[Record] = []
    store.subscribe(seen.append)
    await store.put("/k", b"1")
    await store.delete("/k")
    with pytest.raises(NotFound):
        await store.delete("/k")
    await store.put("/doc/a", b"1")
    with pytest.raises(Conflict):
        await store.put("/doc/a", b"2", create_only=True)
    await store.apply_remote(remote("/r", b"1", BASE_MS + SECOND_MS))
    await store.apply_remote(remote("/r", b"0", BASE_MS - SECOND_MS))  # loses: no call
    await store.delete_prefix("/doc/")
    assert [(r.key, r.deleted) for r in seen] == [
        ("/k", False),
        ("/k", True),
        ("/doc/a", False),
        ("/r", False),
        ("/doc/a", True),
    ]
    assert all(r.seq is not None for r in seen)
    assert [r.seq for r in seen] == sorted(r.seq for r in seen if r.seq is not None)
    store.unsubscribe(seen.append)
    store.unsubscribe(seen.append)  # unknown listeners are ignored
    await store.put("/after", b"1")
    assert len(seen) == 5


@pytest_twisted.ensureDeferred
async def test_a_failing_listener_does_not_fail_the_write(store: Store) -> None:
    """A listener that raises is logged; the write and the other listeners go on."""
    seen: list[str] = []

    def broken(record: Record) -> None:
        raise RuntimeError("listener bug")

    store.subscribe(broken)
    store.subscribe(lambda record: seen.append(record.key))
    result = await store.put("/k", b"1")
    assert result.created
    assert seen == ["/k"]


@pytest_twisted.ensureDeferred
async def test_changes_past_the_end_answer_the_newest_seq() -> None:
    """A ``since`` beyond the node's newest seq answers the node's newest seq (not an echo of
    ``since``), so a client whose cursor is ahead of the node can tell."""
    store = await Store.open(MemoryBackend())
    await store.put("/a", b"1")
    await store.put("/b", b"2")
    page = await store.changes(999_999)
    assert page.records == [] and page.last_seq == 2
    caught_up = await store.changes(2)
    assert caught_up.records == [] and caught_up.last_seq == 2

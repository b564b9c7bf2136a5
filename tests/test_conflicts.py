"""Conflict losers: a concurrent write is told from a later one, and the loser is kept, the
same on every node; a sequential overwrite never is. In-process clusters on a fake network
(the real-process test is tests/test_e2e_conflicts.py)."""

from __future__ import annotations

import json

import pytest

from navistore.clock import Stamp
from navistore.conflicts import (
    DEFAULT_RETENTION_MS,
    conflict_key,
    descends,
    is_hidden,
    loser_of,
    parse_conflict_key,
)
from navistore.protocol.batches import MalformedBatch, decode_batch, encode_batch
from navistore.record import MAX_REPLACES, Record, merge_seen
from navistore.store.losers import keys_with_losers, losers_of
from navistore.testing.cluster import Cluster

A, B, C = "a" * 16, "b" * 16, "c" * 16


def _record(stamp: Stamp, replaces: tuple[Stamp, ...] = (), *, deleted: bool = False) -> Record:
    if deleted:
        return Record.tombstone("/k", stamp, replaces)
    return Record("/k", b"v", "text/plain", stamp, replaces=replaces)


def test_a_later_write_of_the_same_node_descends_from_its_earlier_one() -> None:
    first, later = _record(Stamp(1, 0, A)), _record(Stamp(2, 0, A))
    assert descends(later, first)
    assert loser_of(later, first) is None
    assert loser_of(first, later) is None  # arriving late: older, seen, no conflict


def test_a_write_that_saw_another_nodes_write_descends_from_it() -> None:
    first = _record(Stamp(5, 0, A))
    later = _record(Stamp(6, 0, B), merge_seen((), first.stamp, B))
    assert later.replaces == (first.stamp,)
    assert loser_of(later, first) is None
    assert loser_of(first, later) is None


def test_concurrent_writes_name_the_smaller_stamp_the_loser_either_way() -> None:
    one, other = _record(Stamp(5, 0, A)), _record(Stamp(6, 0, B))
    assert loser_of(other, one) is one
    assert loser_of(one, other) is one


def test_having_seen_an_older_write_of_a_node_is_not_having_seen_its_newer_one() -> None:
    older, newer = Stamp(5, 0, A), Stamp(7, 0, A)
    write = _record(Stamp(8, 0, B), (older,))
    assert loser_of(write, _record(newer)) is not None
    assert loser_of(write, _record(older)) is None


def test_a_delete_can_lose_but_two_deletes_never_conflict() -> None:
    delete = _record(Stamp(5, 0, A), deleted=True)
    put = _record(Stamp(6, 0, B))
    assert loser_of(put, delete) is delete
    assert loser_of(_record(Stamp(6, 0, B), deleted=True), delete) is None


def test_expiries_are_nobodys_write_and_never_conflict() -> None:
    lease = Record("/k", b"v", "text/plain", Stamp(5, 0, A), expires_ms=10)
    expiry = lease.expiry()
    write = _record(Stamp(6, 0, B))
    assert loser_of(write, expiry) is None
    assert loser_of(expiry, write) is None
    # The expiry has seen the record it expired, so a write over it descends from that too.
    assert lease.stamp in expiry.replaces
    assert descends(_record(Stamp(9, 0, C), merge_seen(expiry.replaces, expiry.stamp, C)), lease)


def test_merge_seen_keeps_the_newest_stamp_per_node_and_leaves_the_writer_out() -> None:
    seen = merge_seen((Stamp(1, 0, A), Stamp(4, 0, B)), Stamp(3, 0, A), C)
    assert seen == (Stamp(3, 0, A), Stamp(4, 0, B))
    assert merge_seen(seen, Stamp(9, 0, B), B) == (Stamp(3, 0, A),)
    assert merge_seen((), Stamp(9, 0, B), B) == ()


def test_merge_seen_is_bounded_and_drops_the_oldest() -> None:
    stamps = tuple(Stamp(index + 1, 0, f"{index:016x}") for index in range(MAX_REPLACES + 4))
    seen = merge_seen(stamps[:-1], stamps[-1], "f" * 16)
    assert len(seen) == MAX_REPLACES
    assert min(stamp.wall_ms for stamp in seen) == 5


def test_a_loser_key_splits_back_into_its_key_and_stamp() -> None:
    stamp = Stamp(1_764_633_600_123, 7, A)
    key = conflict_key("/app/db", stamp)
    assert key == f"/_conflicts/app/db/{stamp.encode()}"
    assert parse_conflict_key(key) == ("/app/db", stamp)
    assert is_hidden(key) and not is_hidden("/_conflictsx") and not is_hidden("/app")
    assert parse_conflict_key("/_conflicts/app/db/not-a-stamp") is None
    assert parse_conflict_key("/app/db") is None


# -- clusters ---------------------------------------------------------------------------------


def _losers(cluster: Cluster, node: int, key: str) -> list[tuple[str, str, bytes]]:
    found = cluster.resolve(losers_of(cluster.store(node), key))
    return [(loser.version, loser.node, loser.value) for loser in found]


def test_writes_made_apart_keep_the_loser_on_every_node() -> None:
    cluster = Cluster(3, seed=11)
    cluster.partition([[0], [1, 2]])
    first = cluster.write(0, "/app/db", b"from-0", "text/plain")
    cluster.advance(0.5)
    second = cluster.write(1, "/app/db", b"from-1", "text/plain")
    cluster.advance(5)
    cluster.heal()
    cluster.run_until_quiet()
    cluster.check_converged()
    winner, loser = (first, second) if first.stamp > second.stamp else (second, first)
    expected = [(loser.stamp.encode(), loser.stamp.node_id, loser.value)]
    for node in range(3):
        assert _losers(cluster, node, "/app/db") == expected
        assert cluster.resolve(cluster.store(node).get("/app/db")).stamp == winner.stamp
        page = cluster.resolve(keys_with_losers(cluster.store(node), "/app/"))
        assert page.keys == [("/app/db", 1)] and page.next is None
    cluster.check_conflicts()
    [kept] = cluster.resolve(losers_of(cluster.store(2), "/app/db"))
    assert kept.expires_ms == loser.stamp.wall_ms + DEFAULT_RETENTION_MS
    assert kept.content_type == "text/plain" and not kept.deleted
    counted = [cluster.store(node).counters.conflict_losers for node in range(3)]
    assert counted == [1, 1, 1]


def test_a_sequential_overwrite_from_another_node_is_no_conflict() -> None:
    cluster = Cluster(3, seed=12)
    cluster.write(0, "/k", b"one")
    cluster.run_until_quiet()
    cluster.write(1, "/k", b"two")
    cluster.run_until_quiet()
    cluster.delete(2, "/k")
    cluster.run_until_quiet()
    cluster.write(0, "/k", b"three")
    cluster.run_until_quiet()
    for node in range(3):
        assert _losers(cluster, node, "/k") == []
        assert cluster.store(node).counters.conflict_losers == 0


def test_a_node_that_only_saw_the_end_of_a_chain_of_overwrites_calls_none_a_conflict() -> None:
    # node-2 is cut off while node-0 and node-1 overwrite each other in turn: it then receives
    # only the newest record, whose writer had seen everything node-2 holds.
    cluster = Cluster(3, seed=13)
    cluster.write(0, "/k", b"base")
    cluster.run_until_quiet()
    cluster.partition([[0, 1], [2]])
    for round_ in range(4):
        cluster.write(round_ % 2, "/k", b"v%d" % round_)
        cluster.advance(3)
    cluster.heal()
    cluster.run_until_quiet()
    cluster.check_converged()
    assert _losers(cluster, 2, "/k") == []
    cluster.check_conflicts()


def test_a_delete_made_apart_from_a_write_is_kept_as_a_loser_when_it_loses() -> None:
    cluster = Cluster(2, seed=14, max_skew_ms=0)
    cluster.write(0, "/k", b"base")
    cluster.run_until_quiet()
    cluster.partition([[0], [1]])
    cluster.delete(0, "/k")
    cluster.advance(1)
    cluster.write(1, "/k", b"after")
    cluster.heal()
    cluster.run_until_quiet()
    [kept] = cluster.resolve(losers_of(cluster.store(1), "/k"))
    assert kept.deleted and kept.value == b""
    assert cluster.resolve(cluster.store(0).get("/k")).value == b"after"


def test_losers_stay_out_of_listings_feeds_and_watches_of_the_keys() -> None:
    cluster = Cluster(2, seed=15)
    cluster.partition([[0], [1]])
    cluster.write(0, "/k", b"one")
    cluster.advance(1)
    cluster.write(1, "/k", b"two")
    cluster.heal()
    cluster.run_until_quiet()
    store = cluster.store(0)
    assert [r.key for r in cluster.resolve(store.list("/")).records] == ["/k"]
    feed = cluster.resolve(store.changes(0))
    assert [record.key for record in feed.records] == ["/k"]
    everything = cluster.resolve(store.changes(0, everything=True))
    assert any(is_hidden(record.key) for record in everything.records)
    assert len(cluster.resolve(store.list("/_conflicts/")).records) == 1
    cluster.write(0, "/a", b"before the losers")
    cluster.write(0, "/z", b"after them")
    pages, after = [], None
    while True:
        page = cluster.resolve(store.list("/", after=after, limit=1))
        pages.append([record.key for record in page.records])
        if page.next is None:
            break
        after = page.next
    assert [key for keys in pages for key in keys] == ["/a", "/k", "/z"]
    assert all(pages[:-1]), pages  # no page is left empty by the losers it skipped


@pytest.mark.parametrize("seed", range(20, 26))
def test_random_concurrent_schedules_keep_the_same_true_losers_everywhere(seed: int) -> None:
    cluster = Cluster(3, seed=seed)
    keys = ["/a", "/b"]
    for step in range(60):
        node = cluster.rng.randrange(3)
        key = cluster.rng.choice(keys)
        if step % 15 == 0:
            cluster.partition([[0], [1, 2]] if step % 30 == 0 else [[0, 1], [2]])
        if step % 15 == 7:
            cluster.heal()
        cluster.write(node, key, b"%d" % step)
        cluster.advance(cluster.rng.choice((0.0, 0.2, 2.0)))
    cluster.heal()
    cluster.run_until_quiet()
    cluster.check_converged()
    cluster.check_conflicts()
    assert sum(len(_losers(cluster, 0, key)) for key in keys) > 0


@pytest.mark.parametrize(
    "replaces",
    [
        ["not-a-stamp"],
        [Stamp(index + 1, 0, f"{index:016x}").encode() for index in range(MAX_REPLACES + 1)],
        [Stamp(1, 0, B).encode(), Stamp(2, 0, B).encode()],
        "018bcfe56a9e-000001-" + B,
    ],
    ids=["bad-stamp", "too-many", "one-node-twice", "not-a-list"],
)
def test_a_batch_with_bad_replaces_is_refused_whole(replaces: object) -> None:
    """A peer's record whose ``replaces`` is not a short list of stamps of distinct nodes makes
    the batch malformed (400 ``malformed_batch``), as any other bad field does."""
    good = Record("/k", b"v", "text/plain", Stamp(5, 0, A), chain=(A,))
    document = json.loads(encode_batch(A, [good]))
    document["records"][0]["replaces"] = replaces
    with pytest.raises(MalformedBatch):
        decode_batch(json.dumps(document).encode())
    document["records"][0]["replaces"] = [Stamp(1, 0, B).encode()]
    [decoded] = decode_batch(json.dumps(document).encode()).records
    assert decoded.replaces == (Stamp(1, 0, B),)

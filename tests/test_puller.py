"""Cloning (``clone_from``): paging through a source's ``/_replicate`` feed, then keeping up.

Nodes run on memory backends behind :class:`support.nodes.Network` on one ``task.Clock``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest_twisted
from support.nodes import Network, Node, make_clock, settle
from twisted.internet.task import Clock

from navistore.replication.peers import pull_cursor_meta
from navistore.testing.fakehttp import hang


async def source_and_clone(keys: int = 25, **options: Any) -> tuple[Clock, Network, Node, Node]:
    """A source holding ``keys`` keys, and a started clone of it pulling pages of 10."""
    clock, network = make_clock(), Network()
    source = await Node.create("s", network, clock)
    await source.start()
    for index in range(keys):
        await source.store.put(f"/k{index:03}", b"v%d\xff" % index)
    clone = await Node.create("c", network, clock)
    await clone.start(clone_from=source.url, batch_records=10, **options)
    return clock, network, source, clone


def gets(network: Network) -> list[str]:
    """The query of every GET made, in order."""
    return [sent.url.partition("?")[2] for sent in network.sent if sent.method == "GET"]


def clone_status(clone: Node) -> dict[str, Any]:
    assert clone.service is not None
    status = clone.service.clone_status()
    assert status is not None
    return status


@pytest_twisted.ensureDeferred
async def test_clone_pages_through_the_source() -> None:
    """The clone reads pages until a short one, persisting the cursor, and then holds exactly
    what the source holds, each record with the chain [source]."""
    _clock, network, source, clone = await source_and_clone()
    assert gets(network) == ["since=0&limit=10", "since=10&limit=10", "since=20&limit=10"]
    assert network.sent[0].url.startswith(source.url + "/_replicate?")
    assert await clone.held() == await source.held()
    assert (await clone.store.backend.get("/k000")).chain == (source.store.node_id,)
    status = clone_status(clone)
    assert (status["state"], status["cursor"], status["pulled"]) == ("caught_up", 25, 25)
    assert (status["role"], status["node_id"]) == ("pull", source.store.node_id)
    assert await clone.store.get_meta(pull_cursor_meta(source.url)) == "25"
    assert clone.service is not None and clone.service.is_idle()


@pytest_twisted.ensureDeferred
async def test_clone_keeps_in_step_with_its_source() -> None:
    """Once caught up, the clone pulls again every interval: writes and deletes follow."""
    clock, network, source, clone = await source_and_clone()
    await source.store.delete("/k003")
    await source.store.put("/new", b"n")
    clock.advance(0.9)
    assert len(gets(network)) == 3
    clock.advance(0.1)
    assert gets(network)[-1] == "since=25&limit=10"
    assert await clone.held() == await source.held()
    assert (await clone.store.backend.get("/k003")).deleted


@pytest_twisted.ensureDeferred
async def test_clone_resumes_from_its_persisted_cursor() -> None:
    """A restarted clone goes on from where it stopped, not from 0."""
    _clock, network, source, clone = await source_and_clone()
    assert clone.service is not None
    await clone.service.stopService()
    await source.store.put("/later", b"l")
    await clone.start(clone_from=source.url, batch_records=10)
    assert gets(network)[3:] == ["since=25&limit=10"]
    assert await clone.held() == await source.held()


@pytest_twisted.ensureDeferred
async def test_the_node_serves_while_it_clones() -> None:
    """Reads are answered during the clone (missing what is not pulled yet); a page that does
    not come in time is retried with backoff."""
    clock, network = make_clock(), Network()
    source = await Node.create("s", network, clock)
    await source.start()
    for index in range(15):
        await source.store.put(f"/k{index:03}", b"v")
    network.script(source.url, hang)
    clone = await Node.create("c", network, clock)
    await clone.start(clone_from=source.url, batch_records=10)
    assert clone_status(clone)["state"] == "cloning"
    response = await clone.api.get(clone.url + "/k000")
    assert response.code == 404
    clock.advance(30)
    assert clone_status(clone)["state"] == "backoff"
    assert "no complete answer" in clone_status(clone)["last_error"]
    clock.advance(0.5)
    assert clone_status(clone)["state"] == "caught_up"
    response = await clone.api.get(clone.url + "/k014")
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_clone_retries_an_unreachable_source() -> None:
    """A source that is down is retried with backoff until it answers."""
    clock, network = make_clock(), Network()
    source = await Node.create("s", network, clock)
    await source.start()
    await source.store.put("/k", b"v")
    network.down(source.url)
    clone = await Node.create("c", network, clock)
    await clone.start(clone_from=source.url)
    assert clone_status(clone)["state"] == "backoff"
    network.down(source.url, False)
    clock.advance(30)
    assert clone_status(clone)["state"] == "caught_up"
    assert await clone.held() == await source.held()


@pytest_twisted.ensureDeferred
async def test_a_clone_that_also_pushes_to_its_source_sends_nothing_back() -> None:
    """With the source as a push peer too, the cloned records (written by the source) are not
    pushed back, not even before the source ever acknowledged a push (the clone told the pusher
    its node id); the cursor still passes them."""
    clock, network, source, clone = await source_and_clone(initial_peers=["http://s.test:8888"])
    settle(clock, [source, clone])
    assert network.posts() == []
    assert clone.service is not None
    assert clone.service.peers()[0]["cursor"] == await clone.store.last_seq()
    await clone.store.put("/from-clone", b"c")
    settle(clock, [source, clone])
    assert (await source.store.get("/from-clone")) is not None


@pytest_twisted.ensureDeferred
async def test_a_new_source_behind_the_url_is_pulled_from_zero() -> None:
    """If the source URL now answers with another node id, the clone starts again from seq 0."""
    clock, network, _source, clone = await source_and_clone(keys=3)
    fresh = await Node.create("s", network, clock)
    await fresh.start()
    await fresh.store.put("/fresh", b"f")
    clock.advance(1.0)
    assert gets(network)[-2:] == ["since=3&limit=10", "since=0&limit=10"]
    assert clone_status(clone)["node_id"] == fresh.store.node_id
    assert await clone.store.get("/fresh") is not None
    assert await clone.store.get("/k000") is not None  # LWW keeps what it had


@pytest_twisted.ensureDeferred
async def test_a_source_that_is_this_node_is_not_pulled() -> None:
    """A clone URL that reaches this node itself is marked "self" and not pulled again."""
    clock, network = make_clock(), Network()
    node = await Node.create("a", network, clock)
    service = node.build(clone_from="http://alias.test:1")
    assert node.resource is not None
    network.attach("http://alias.test:1", node.resource)
    await service.startService()
    assert clone_status(node)["state"] == "self"
    clock.advance(60)
    assert len(gets(network)) == 1 and service.is_idle()


@pytest_twisted.ensureDeferred
async def test_clone_pulls_everything_again_after_a_purge_past_its_cursor() -> None:
    """When the source purged tombstones past the clone's cursor (410 resync_required), the
    clone starts over from seq 0, pages through the whole feed (not refused again) and catches
    up, instead of retrying forever or keeping a silent gap."""
    clock, network, source, clone = await source_and_clone()
    await source.store.delete("/k003")
    await source.store.put("/new", b"n")
    await source.store.purge_tombstones(await source.store.last_seq() + 1)
    clock.advance(1.0)
    settle(clock, [source, clone])
    pulls = gets(network)
    assert pulls[3:5] == ["since=25&limit=10", "since=0&limit=10"]
    assert "&horizon=" in pulls[5]  # the re-read passes back the horizon of its first page
    held = await clone.held()
    assert all(item in held for item in await source.held())  # /k003 may linger (documented)
    assert clone_status(clone)["state"] == "caught_up"


@pytest_twisted.ensureDeferred
async def test_a_clone_probes_a_source_that_gave_no_answer_and_pulls_once_it_answers() -> None:
    """A source that refuses connections is probed (``GET /_health``, at most once a second)
    during the clone's backoff; the pull resumes within a second of the source answering,
    long before the backoff would have ended."""
    clock, network = make_clock(), Network()
    source = await Node.create("s", network, clock)
    await source.start()
    await source.store.put("/k", b"v")
    network.down(source.url)
    clone = await Node.create("c", network, clock)
    await clone.start(clone_from=source.url, max_backoff=30)
    probes: list[float] = []
    for _ in range(600):  # 60 s down
        before = len([sent for sent in network.sent if sent.path == "/_health"])
        clock.advance(0.1)
        after = len([sent for sent in network.sent if sent.path == "/_health"])
        probes.extend([clock.seconds()] * (after - before))
    assert probes and all(later - earlier >= 0.999 for earlier, later in zip(probes, probes[1:]))
    assert clone_status(clone)["state"] == "backoff" and clone_status(clone)["failures"] >= 5
    for _ in range(600):  # until the clone is in a pause with over 5 s left
        due = clone_status(clone)["retry_at"]
        if due and datetime.fromisoformat(due.replace("Z", "+00:00")).timestamp() > (
            clock.seconds() + 5
        ):
            break
        clock.advance(0.1)
    network.down(source.url, False)
    back = clock.seconds()
    due = datetime.fromisoformat(clone_status(clone)["retry_at"].replace("Z", "+00:00"))
    assert due.timestamp() > back + 5
    while clone_status(clone)["state"] != "caught_up" and clock.seconds() < back + 1.05:
        clock.advance(0.05)
    assert clone_status(clone)["state"] == "caught_up"
    assert await clone.held() == await source.held()
    assert clone_status(clone)["failures"] == 0

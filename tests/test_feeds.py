"""The feeds and watches (navistore.web.feeds over navistore.watch_hub and navistore.store.feed):
long-poll and event-stream feeds, ``?wait``, the purge horizon, and the hub on its own.

Each test runs one node over a memory backend (whose calls complete at once) behind the real
resource tree through ``treq.testing.StubTreq``, with a ``task.Clock`` for timeouts and
heartbeats. Nothing waits on a real reactor: a test writes, moves the clock, pumps the in-memory
connections, and looks at what the client has received so far.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable, TypeVar

import pytest
from support.api import ORIGIN, Answer, api_resource
from support.deferreds import fired
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from navistore.backend.memory import MemoryBackend
from navistore.clock import Stamp
from navistore.record import Record
from navistore.store import PURGED_BEFORE_META, Store
from navistore.store.feed import ResyncRequired, needs_resync, read_changes
from navistore.watch_hub import TooManyWatchers, WatchesClosed, WatchHub, watcher_limit

T = TypeVar("T")


class Pending:
    """A request in flight: its response once it came, else None."""

    def __init__(self, node: Node, sent: Deferred[IResponse]) -> None:
        self.node = node
        self.sent = sent
        self.outcome: list[Any] = []
        sent.addBoth(self.outcome.append)

    @property
    def answered(self) -> bool:
        """Whether the response (its headers) arrived."""
        self.node.pump()
        return bool(self.outcome)

    def answer(self) -> Answer:
        """The complete answer, which must have arrived."""
        assert self.answered, "no answer yet"
        response = self.outcome[0]
        if isinstance(response, Failure):
            response.raiseException()
        body = response.content()
        self.node.pump()
        return Answer(response.code, response.headers, fired(body))


class Events(Protocol):
    """Collects a streamed body as it arrives."""

    def __init__(self) -> None:
        self.data = b""
        self.ended = False

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: object = None) -> None:
        self.ended = True

    def blocks(self) -> list[str]:
        """Every complete block (event or comment) received so far."""
        return [block for block in self.data.decode().split("\n\n")[:-1] if block]

    def changes(self) -> list[dict[str, Any]]:
        """The data of every ``change`` event received so far, checking each event's form."""
        found = []
        for block in self.blocks():
            if block.startswith(":"):
                continue
            lines = block.split("\n")
            assert lines[1] == "event: change", block
            data = json.loads(lines[2].removeprefix("data: "))
            assert lines == [f"id: {data['seq']}", "event: change", f"data: {lines[2][6:]}"]
            assert set(data) == {"seq", "key", "stamp", "deleted"}
            found.append(data)
        return found


class Node:
    """A node's API over StubTreq, its Store, WatchHub and clock."""

    def __init__(self, **hub_options: Any) -> None:
        self.clock = Clock()
        self.store = fired(Store.open(MemoryBackend()))
        self.hub = WatchHub(self.store, clock=self.clock, **hub_options)
        self.stub = StubTreq(api_resource(self.store, watch_hub=self.hub))

    def pump(self) -> None:
        """Run what is due now (woken watchers) and move every byte across the connections."""
        for _ in range(3):
            self.clock.advance(0)
            self.stub.flush()

    def send(
        self,
        path: str,
        params: Iterable[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        method: str = "GET",
    ) -> Pending:
        """Send a request without waiting for its answer."""
        sent = self.stub.request(
            method, ORIGIN + path, params=list(params), headers=dict(headers or {})
        )
        pending = Pending(self, sent)
        self.pump()
        return pending

    def get(self, path: str, params: Iterable[tuple[str, str]] = (), **kwargs: Any) -> Answer:
        """A request that must be answered at once."""
        return self.send(path, params, **kwargs).answer()

    def put(self, key: str, value: bytes = b"v") -> Record:
        """Write a key through the Store; the stored record."""
        return fired(self.store.put(key, value)).record

    def delete(self, key: str) -> Record:
        """Delete a key through the Store; its tombstone."""
        return fired(self.store.delete(key))

    def stream(
        self, params: Iterable[tuple[str, str]], headers: Mapping[str, str] | None = None
    ) -> tuple[IResponse, Events]:
        """Open ``feed=eventsource``; the response and the collector of its body."""
        pending = self.send("/_changes", [("feed", "eventsource"), *params], headers)
        assert pending.answered
        response = pending.outcome[0]
        assert response.code == 200
        assert response.headers.getRawHeaders("Content-Type") == ["text/event-stream"]
        events = Events()
        response.deliverBody(events)
        self.pump()
        return response, events


@pytest.fixture
def make_node() -> Iterator[Callable[..., Node]]:
    """Makes nodes with the given hub options; at the end, closes their hubs so that no
    request is left suspended (a dropped coroutine would be finalized mid-wait)."""
    made: list[Node] = []

    def make(**hub_options: Any) -> Node:
        made.append(Node(**hub_options))
        return made[-1]

    yield make
    for each in made:
        each.hub.close()
        each.pump()


@pytest.fixture
def node(make_node: Callable[..., Node]) -> Node:
    """A fresh node with the default hub options (heartbeat 15 s, 1000 watchers)."""
    return make_node()


def longpoll(prefix: str, since: int, **extra: str) -> list[tuple[str, str]]:
    """The parameters of a long-poll."""
    return [("feed", "longpoll"), ("prefix", prefix), ("since", str(since)), *extra.items()]


def keys_of(document: Any) -> list[tuple[int, str, bool]]:
    """(seq, key, deleted) of each result of a feed answer."""
    return [(item["seq"], item["key"], item["deleted"]) for item in document["results"]]


# -- long-poll ------------------------------------------------------------------------------------


def test_longpoll_answers_at_once_when_something_changed(node: Node) -> None:
    """A long-poll whose prefix changed after ``since`` answers at once, like the normal feed."""
    first = node.put("/app/a")
    node.put("/other")
    answer = node.get("/_changes", longpoll("/app/", 0))
    assert answer.status == 200
    assert keys_of(answer.json()) == [(first.seq, "/app/a", False)]
    assert answer.json()["last_seq"] == 2
    assert node.hub.watching == 0


def test_longpoll_wakes_only_for_its_prefix(node: Node) -> None:
    """Changes outside the prefix (even a key that merely starts with the same letters) never
    wake a long-poll; the first change under it answers with every change after ``since``."""
    node.put("/app/old")
    reads: list[int] = []
    original = node.store.changes

    async def counting(*args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        return await original(*args, **kwargs)

    node.store.changes = counting  # type: ignore[method-assign]
    pending = node.send("/_changes", longpoll("/app/", 1))
    assert not pending.answered and node.hub.watching == 1
    woken_before = len(reads)
    for key in ("/other/x", "/apple", "/ap", "/app"):
        node.put(key)
        node.pump()
    assert not pending.answered
    assert len(reads) == woken_before, "a change outside the prefix woke the watcher"
    change = node.put("/app/new")
    answer = pending.answer()
    assert keys_of(answer.json()) == [(change.seq, "/app/new", False)]
    assert answer.json()["last_seq"] == change.seq
    assert node.hub.watching == 0


def test_longpoll_answers_empty_at_its_timeout(node: Node) -> None:
    """At the timeout a long-poll answers no results and the current last_seq to resume from."""
    node.put("/app/a")
    pending = node.send("/_changes", longpoll("/app/", 1, timeout="2.5"))
    node.put("/elsewhere")
    node.clock.advance(2.4)
    assert not pending.answered
    node.clock.advance(0.1)
    assert pending.answer().json() == {"last_seq": 2, "results": []}
    assert node.hub.watching == 0


def test_longpoll_returns_every_change_after_since_up_to_limit(node: Node) -> None:
    """Woken by one change, the answer holds every change under the prefix after ``since``,
    up to ``limit``, with ``last_seq`` the last one returned when the page is full."""
    pending = node.send("/_changes", longpoll("/a/", 0, limit="2"))
    records = [node.put(f"/a/{index}") for index in range(3)]  # all in one reactor turn
    answer = pending.answer().json()
    assert keys_of(answer) == [(r.seq, r.key, False) for r in records[:2]]
    assert answer["last_seq"] == records[1].seq


@pytest.mark.parametrize(
    "params",
    [
        [("feed", "sometimes")],
        [("feed", "longpoll"), ("timeout", "301")],
        [("feed", "longpoll"), ("timeout", "-1")],
        [("feed", "longpoll"), ("timeout", "soon")],
        [("feed", "longpoll"), ("timeout", "nan")],
    ],
)
def test_bad_feed_parameters_are_400(node: Node, params: list[tuple[str, str]]) -> None:
    """An unknown feed, or a timeout that is not 0..300 seconds, is a 400 JSON error."""
    answer = node.get("/_changes", params)
    assert answer.status == 400
    assert answer.json()["error"] == "invalid_parameter"
    assert node.hub.watching == 0


def test_head_of_a_waiting_feed_is_refused(node: Node) -> None:
    """HEAD works for the normal feed but not for feeds that wait (405, GET allowed)."""
    assert node.get("/_changes", method="HEAD").status == 200
    answer = node.get("/_changes", [("feed", "longpoll")], method="HEAD")
    assert answer.status == 405 and answer.header("Allow") == "GET"


# -- event stream ---------------------------------------------------------------------------------


def test_eventsource_sends_the_backlog_then_live_changes(node: Node) -> None:
    """The stream starts with every change under the prefix after ``since`` (one ``change``
    event each, ``id`` = seq), then sends each new change under it, and nothing else."""
    node.put("/app/a")
    second = node.put("/app/b")
    node.put("/other")
    _response, events = node.stream([("prefix", "/app/"), ("since", "1")])
    assert [change["key"] for change in events.changes()] == ["/app/b"]
    assert events.changes()[0] == {
        "seq": second.seq,
        "key": "/app/b",
        "stamp": second.stamp.encode(),
        "deleted": False,
    }
    node.put("/other")
    node.put("/apple")
    gone = node.delete("/app/a")
    node.pump()
    assert [(c["seq"], c["key"], c["deleted"]) for c in events.changes()] == [
        (second.seq, "/app/b", False),
        (gone.seq, "/app/a", True),
    ]
    assert not events.ended


def test_eventsource_resumes_from_last_event_id(node: Node) -> None:
    """``Last-Event-ID`` overrides ``since``: a reconnecting client gets exactly what followed
    the last event it saw, nothing twice."""
    records = [node.put(f"/k/{index}") for index in range(4)]
    headers = {"Last-Event-ID": str(records[1].seq)}
    _response, events = node.stream([("prefix", "/k/"), ("since", "0")], headers)
    assert [change["seq"] for change in events.changes()] == [r.seq for r in records[2:]]
    answer = node.get("/_changes", [("feed", "eventsource")], headers={"Last-Event-ID": "x"})
    assert answer.status == 400


def test_eventsource_sends_heartbeats_while_idle(make_node: Callable[..., Node]) -> None:
    """An idle stream gets a ``: heartbeat`` comment every heartbeat interval, and only then."""
    node = make_node(heartbeat=5.0)
    _response, events = node.stream([("since", "0")])
    assert events.blocks() == [": navistore change feed"]
    node.clock.advance(4.9)
    node.pump()
    assert events.blocks() == [": navistore change feed"]
    node.clock.advance(0.1)
    node.pump()
    node.clock.advance(5.0)
    node.pump()
    assert events.blocks() == [": navistore change feed", ": heartbeat", ": heartbeat"]


def test_eventsource_that_falls_behind_rereads_the_feed(make_node: Callable[..., Node]) -> None:
    """A stream holding more undelivered records than allowed drops them and re-reads the
    feed: the client still gets every change once, in seq order."""
    node = make_node(max_pending=2)
    _response, events = node.stream([("since", "0")])
    records = [node.put(f"/burst/{index}") for index in range(6)]  # one turn: overflows
    node.pump()
    assert [change["seq"] for change in events.changes()] == [r.seq for r in records]


def test_eventsource_ends_when_the_client_goes_away(node: Node) -> None:
    """A client that disconnects leaves no watcher behind, and the hub subscribed only once."""
    subscriptions = list(node.store._listeners)
    _response, events = node.stream([("prefix", "/a/")])
    assert node.hub.watching == 1
    assert events.transport is not None
    events.transport.stopProducing()
    node.pump()
    assert node.hub.watching == 0
    node.put("/a/after")
    node.pump()
    assert node.store._listeners == subscriptions


def test_longpoll_cancelled_by_its_client_leaves_no_watcher(node: Node) -> None:
    """A long-poll whose client gives up is cancelled on the server and its watcher released."""
    pending = node.send("/_changes", longpoll("/a/", 0))
    assert node.hub.watching == 1
    pending.sent.cancel()  # the client aborts the connection
    node.pump()
    assert node.hub.watching == 0
    assert pending.answered and isinstance(pending.outcome[0], Failure)


# -- ?wait=true ---------------------------------------------------------------------------------


def test_key_wait_answers_like_get_after_the_next_change(node: Node) -> None:
    """``?wait=true`` (index defaults to the current last seq) waits for the key's next change
    and answers it like a GET, with ``X-Navistore-Seq``; other keys never answer it."""
    node.put("/conf/db", b"old")
    pending = node.send("/conf/db", [("wait", "true")])
    for key in ("/conf/db2", "/conf/db/sub", "/conf", "/other"):
        node.put(key)
    node.pump()
    assert not pending.answered
    fired(node.store.put("/conf/db", b"new", "text/plain"))
    answer = pending.answer()
    current = fired(node.store.get("/conf/db"))
    assert (answer.status, answer.body) == (200, b"new")
    assert answer.header("Content-Type") == "text/plain"
    assert answer.header("ETag") == f'"{current.stamp.encode()}"'
    assert answer.header("X-Navistore-Seq") == str(current.seq)
    assert node.hub.watching == 0


def test_key_wait_on_a_delete_answers_404(node: Node) -> None:
    """A wait ended by a delete answers 404 JSON, with the seq of the delete."""
    node.put("/k")
    pending = node.send("/k", [("wait", "true")])
    tombstone = node.delete("/k")
    answer = pending.answer()
    assert answer.status == 404 and answer.json()["error"] == "not_found"
    assert answer.header("X-Navistore-Seq") == str(tombstone.seq)


def test_key_wait_with_an_older_index_answers_at_once(node: Node) -> None:
    """A key that changed after ``index`` already is answered at once with its current state."""
    first = node.put("/k", b"1")
    node.put("/k", b"2")
    answer = node.get("/k", [("wait", "true"), ("index", str(first.seq))])
    assert (answer.status, answer.body) == (200, b"2")
    assert answer.header("X-Navistore-Seq") == "2"


@pytest.mark.parametrize("exists", [True, False])
def test_key_wait_timeout_answers_the_current_state(node: Node, exists: bool) -> None:
    """At the timeout a wait answers like a plain GET (200 or 404) with ``X-Navistore-Seq`` the
    current last seq, so that waiting after it misses nothing."""
    if exists:
        node.put("/k", b"there")
    pending = node.send("/k", [("wait", "true"), ("timeout", "3")])
    node.put("/other")
    node.clock.advance(3)
    answer = pending.answer()
    assert answer.status == (200 if exists else 404)
    if exists:
        assert answer.body == b"there"
    assert answer.header("X-Navistore-Seq") == str(fired(node.store.last_seq()))


def test_prefix_wait_answers_with_the_listing(node: Node) -> None:
    """``GET /<prefix>/?wait=true`` waits for a change under the prefix, then lists it."""
    node.put("/svc/a")
    pending = node.send("/svc/", [("wait", "true")])
    node.put("/svcx")
    node.pump()
    assert not pending.answered
    node.put("/svc/b")
    answer = pending.answer()
    assert answer.json()["keys"] == ["/svc/a", "/svc/b"]
    assert answer.header("X-Navistore-Seq") == "3"


# -- capacity and shutdown --------------------------------------------------------------------


def test_watchers_past_the_cap_get_503(make_node: Callable[..., Node]) -> None:
    """Past ``max_watchers`` a new watch of any kind is refused 503 ``too_many_watchers``;
    once one ends, a new one is accepted."""
    node = make_node(max_watchers=2)
    first = node.send("/_changes", longpoll("/a/", 0))
    node.stream([("prefix", "/b/")])
    for path, params in [("/_changes", longpoll("/c/", 0)), ("/k", [("wait", "true")])]:
        refused = node.get(path, params)
        assert refused.status == 503
        assert refused.json()["error"] == "too_many_watchers"
        assert refused.header("Retry-After") == "1"
    node.put("/a/x")
    assert first.answer().status == 200
    assert node.send("/_changes", longpoll("/c/", 0)).answered is False


def test_close_ends_every_watch(node: Node) -> None:
    """``close()`` answers long-polls with what they have, answers waits like a GET, ends
    event streams cleanly, and refuses new watches with 503 ``shutting_down``."""
    node.put("/k", b"v")
    poll = node.send("/_changes", longpoll("/a/", 1))
    wait = node.send("/k", [("wait", "true")])
    _response, events = node.stream([("prefix", "/a/")])
    node.hub.close()
    node.pump()
    assert poll.answer().json() == {"last_seq": 1, "results": []}
    answer = wait.answer()
    assert (answer.status, answer.body, answer.header("X-Navistore-Seq")) == (200, b"v", "1")
    assert events.ended and events.data.endswith(b"\n\n")
    refused = node.get("/_changes", longpoll("/a/", 1))
    assert (refused.status, refused.json()["error"]) == (503, "shutting_down")
    assert node.hub.watching == 0
    assert node.get("/_changes").status == 200  # the normal feed still answers


# -- resync after a purge ---------------------------------------------------------------------


@pytest.fixture
def purged(node: Node) -> Node:
    """A node with seqs 1..5 where the tombstones of seqs 2 and 3 were purged (horizon 4)."""
    for key in ("/a/1", "/a/2", "/a/3"):
        node.put(key)
    node.delete("/a/2")  # seq 4: /a/2 moves there
    node.delete("/a/3")  # seq 5
    node.put("/a/4")  # seq 6
    assert fired(node.store.purge_tombstones(5)) == 1  # the tombstone at seq 4
    return node


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/_changes", [("since", "2")]),
        ("/_changes", longpoll("/", 2)),
        ("/_changes", [("feed", "eventsource"), ("since", "1")]),
        ("/a/2", [("wait", "true"), ("index", "3")]),
        ("/a/2", [("wait", "true"), ("index", "0")]),
        ("/a/", [("wait", "true"), ("index", "1")]),
    ],
)
def test_reading_from_before_the_purge_horizon_is_410(
    purged: Node, path: str, params: list[tuple[str, str]]
) -> None:
    """Any feed or wait resuming from before the purge horizon answers 410 ``resync_required``
    with the seq to restart from, never a page with a silent gap."""
    answer = purged.get(path, params)
    assert answer.status == 410
    document = answer.json()
    assert document["error"] == "resync_required"
    assert document["detail"] == {"last_seq": 6, "purged_before": 5}
    assert "last_seq" in document["message"]
    assert purged.hub.watching == 0


def test_reading_from_the_horizon_or_from_zero_is_served(purged: Node) -> None:
    """``since = purged_before - 1`` misses nothing and is served; so is ``since=0``, a full
    read that lists every key at its latest seq."""
    assert keys_of(purged.get("/_changes", [("since", "4")]).json()) == [
        (5, "/a/3", True),
        (6, "/a/4", False),
    ]
    full = purged.get("/_changes", [("since", "0")]).json()
    assert keys_of(full) == [(1, "/a/1", False), (5, "/a/3", True), (6, "/a/4", False)]


def test_stream_that_rereads_across_a_purge_gets_a_resync_event(
    make_node: Callable[..., Node],
) -> None:
    """A stream that must re-read the feed after a purge raised the horizon past it gets a
    ``resync`` event with the seq to restart from, and ends."""
    node = make_node(max_pending=1)
    _response, events = node.stream([("since", "0")])
    node.put("/w")
    node.pump()
    assert [change["seq"] for change in events.changes()] == [1]
    node.put("/x")
    node.put("/y")  # two records in one turn: the stream will re-read after seq 1
    node.delete("/x")
    fired(node.store.purge_tombstones(5))
    node.pump()
    assert events.ended
    last = events.blocks()[-1].split("\n")
    assert last[0] == "event: resync"
    detail = json.loads(last[1].removeprefix("data: "))["detail"]
    assert detail == {"last_seq": 4, "purged_before": 5}


def test_purge_horizon_is_durable_and_only_rises() -> None:
    """The horizon is kept in meta data (a reopened Store knows it) and never goes down."""
    backend = MemoryBackend()
    store = fired(Store.open(backend))
    assert fired(store.purged_before()) == 0
    fired(store.purge_tombstones(7))
    fired(store.purge_tombstones(3))
    assert fired(store.purged_before()) == 7
    assert fired(backend.get_meta(PURGED_BEFORE_META)) == "7"
    assert fired(fired(Store.open(backend)).purged_before()) == 7


@pytest.mark.parametrize(
    ("since", "horizon", "full_read", "refused"),
    [
        (0, 0, True, False),
        (5, 0, True, False),
        (5, 6, True, False),
        (4, 6, True, True),
        (0, 6, True, False),
        (0, 6, False, True),
        (0, 1, False, False),
    ],
)
def test_needs_resync(since: int, horizon: int, full_read: bool, refused: bool) -> None:
    """Resuming after ``since`` is refused exactly when a purged tombstone could lie after it."""
    assert needs_resync(since, horizon, full_read=full_read) is refused


def test_read_changes_checks_the_horizon_after_reading() -> None:
    """A purge that runs while a page is read makes the read fail instead of returning it."""
    store = fired(Store.open(MemoryBackend()))
    fired(store.put("/a", b""))
    fired(store.delete("/a"))
    original = store.changes

    async def purging_meanwhile(*args: Any, **kwargs: Any) -> Any:
        page = await original(*args, **kwargs)
        await store.purge_tombstones(3)
        return page

    store.changes = purging_meanwhile  # type: ignore[method-assign]
    with pytest.raises(ResyncRequired):
        fired(read_changes(store, 1, limit=10, prefix="/"))


# -- the hub on its own -----------------------------------------------------------------------


def _record(key: str, seq: int) -> Record:
    return Record(key, b"", "text/plain", Stamp(1, seq, "0" * 16), seq=seq)


def test_hub_hands_records_over_in_seq_order_after_the_turn(node: Node) -> None:
    """Records notified out of seq order in one turn (a group commit) reach a watcher sorted,
    and only on the next turn."""
    watcher = node.hub.watch("/p/", since=0)
    for seq in (12, 10, 11):
        node.hub._on_record(_record("/p/x", seq))
    woken = watcher.next()
    assert not woken.called
    node.clock.advance(0)
    assert [record.seq for record in fired(woken)] == [10, 11, 12]


@pytest.mark.parametrize("other_prefixes", [0, 50])
def test_hub_matches_by_prefix_and_by_exact_key(node: Node, other_prefixes: int) -> None:
    """A record reaches the watchers whose prefix it starts with, and the exact-key watchers
    of its key, whichever way the hub looks them up (few or many prefixes)."""
    for index in range(other_prefixes):
        node.hub.watch(f"/zz{index}/", since=0)
    wanted = [node.hub.watch(p, since=0) for p in ("/", "/a", "/a/", "/a/b/", "/a/b/con")]
    exact = node.hub.watch("/a/b/config", since=0, exact=True)
    unwanted = [
        node.hub.watch(p, since=0) for p in ("/a/b/config/", "/b/", "/a/bc", "/a/b/configs")
    ] + [node.hub.watch("/a/b", since=0, exact=True)]
    node.hub._on_record(_record("/a/b/config", 1))
    node.clock.advance(0)
    assert all(fired(w.next()) for w in [*wanted, exact])
    assert not any(w.next(1.0).called for w in unwanted)


def test_hub_refuses_past_the_cap_and_after_close(node: Node) -> None:
    """The cap counts live watchers; released ones make room; a closed hub refuses all."""
    hub = WatchHub(node.store, clock=node.clock, max_watchers=1)
    first = hub.watch("/", since=0)
    with pytest.raises(TooManyWatchers):
        hub.watch("/", since=0)
    first.release()
    first.release()
    hub.watch("/", since=0)
    hub.close()
    assert hub.watching == 0
    with pytest.raises(WatchesClosed):
        hub.watch("/", since=0)


def test_reset_makes_readers_from_before_it_resync(node: Node) -> None:
    """``GET /reset`` wipes records without tombstones, so a feed reader resuming from before it
    gets 410 resync_required rather than a silent gap; one starting at the newest seq is fine."""
    node.put("/app/a")
    node.put("/app/b")
    assert node.get("/reset").status == 200
    assert fired(node.store.purged_before()) == 3
    behind = node.get("/_changes", [("since", "1")])
    assert behind.status == 410
    assert behind.json()["error"] == "resync_required"
    assert node.get("/_changes", [("since", "2")]).status == 200


def test_paging_the_whole_feed_from_zero_survives_an_old_purge(purged: Node) -> None:
    """A reader paging ``/_changes`` from 0 on a node that purged tombstones passes back the
    horizon its first page reported, and every later page is served; without it a later page
    is refused, and so is one after a purge that happened since the read began."""
    first = purged.get("/_changes", [("since", "0"), ("limit", "1")]).json()
    horizon = first["purged_before"]
    assert horizon == 5
    cursor, keys = first["last_seq"], [entry["key"] for entry in first["results"]]
    while True:
        page = purged.get(
            "/_changes", [("since", str(cursor)), ("limit", "1"), ("horizon", str(horizon))]
        ).json()
        if not page["results"]:
            break
        keys += [entry["key"] for entry in page["results"]]
        cursor = page["last_seq"]
    assert sorted(keys) == ["/a/1", "/a/3", "/a/4"]
    assert purged.get("/_changes", [("since", "1"), ("limit", "1")]).status == 410
    fired(purged.store.purge_tombstones(7))
    stale = purged.get("/_changes", [("since", "1"), ("horizon", str(horizon))])
    assert stale.status == 410


# -- fan-out: one write, many watchers ------------------------------------------------------------


def test_longpolls_woken_together_each_get_exactly_what_they_asked(node: Node) -> None:
    """Long-polls woken by the same write share one read and one body per position and
    parameters, and each still gets exactly the changes its own request asks for."""
    first = node.put("/a/first")
    node.put("/b/other")
    base = first.seq or 0
    groups = {
        "after_first": [node.send("/_changes", longpoll("/a/", base)) for _ in range(5)],
        "limit_one": [node.send("/_changes", longpoll("/a/", base, limit="1")) for _ in range(3)],
        "deeper": [node.send("/_changes", longpoll("/a/x", base)) for _ in range(2)],
    }
    bystanders = [node.send("/_changes", longpoll(f"/c{index}/", 0)) for index in range(4)]
    assert not any(pending.answered for group in groups.values() for pending in group)
    node.put("/a/x")  # both in one turn: they wake the long-polls together
    node.put("/a/y")
    node.pump()
    expected = {
        "after_first": [(base + 2, "/a/x", False), (base + 3, "/a/y", False)],
        "limit_one": [(base + 2, "/a/x", False)],
        "deeper": [(base + 2, "/a/x", False)],
    }
    for name, group in groups.items():
        bodies = [pending.answer().json() for pending in group]
        assert [keys_of(body) for body in bodies] == [expected[name]] * len(group), name
        direct = fired(
            read_changes(
                node.store,
                base,
                limit=1 if name == "limit_one" else 1000,
                prefix="/a/x" if name == "deeper" else "/a/",
            )
        )[0]
        assert {body["last_seq"] for body in bodies} == {direct.last_seq}, name
    assert not any(pending.answered for pending in bystanders)
    assert node.hub.watching == len(bystanders)


def test_a_longpoll_woken_later_never_gets_an_older_shared_answer(node: Node) -> None:
    """An answer shared within a turn is keyed by what the Store holds: a long-poll at the same
    position reading after one more write gets that write too."""
    early = node.send("/_changes", longpoll("/a/", 0))
    node.put("/a/1")
    node.pump()
    assert keys_of(early.answer().json()) == [(1, "/a/1", False)]
    node.put("/a/2")
    late = node.get("/_changes", longpoll("/a/", 0)).json()
    assert keys_of(late) == [(1, "/a/1", False), (2, "/a/2", False)]


def test_streams_woken_together_each_get_each_change_once(node: Node) -> None:
    """Every stream of the prefix gets the change once (the event is encoded once for all),
    a stream elsewhere gets nothing, and one stream going away as the others are woken
    changes nothing for the rest."""
    streams = [node.stream([("prefix", "/a/")]) for _ in range(4)]
    _, bystander = node.stream([("prefix", "/b/")])
    leaving = streams.pop()[1]
    record = node.put("/a/k")
    assert leaving.transport is not None
    leaving.transport.stopProducing()  # in the same turn as the write, before the wake
    node.pump()
    for _response, events in streams:
        assert [(change["seq"], change["key"]) for change in events.changes()] == [
            (record.seq, "/a/k")
        ]
    assert bystander.changes() == []
    assert node.hub.watching == len(streams) + 1
    second = node.put("/a/k2")
    node.pump()
    for _response, events in streams:
        assert [change["seq"] for change in events.changes()] == [record.seq, second.seq]


def test_deadlines_fire_in_order_and_survive_wakes(make_node: Callable[..., Node]) -> None:
    """Each long-poll answers at its own timeout, whatever others were woken meanwhile, and a
    stream woken many times keeps its heartbeat without the deadline heap growing."""
    node = make_node(heartbeat=5.0)
    short = node.send("/_changes", longpoll("/a/", 0, timeout="1"))
    long = node.send("/_changes", longpoll("/a/", 0, timeout="3"))
    _, events = node.stream([("prefix", "/s/")])
    for index in range(300):
        node.put(f"/s/{index}")
        node.pump()
    assert len(events.changes()) == 300
    assert len(node.hub._deadlines) < 100  # the woken stream's old deadlines were dropped
    node.clock.advance(1.0)
    assert short.answered and not long.answered
    assert short.answer().json()["results"] == []
    node.clock.advance(2.0)
    assert long.answered
    node.clock.advance(5.0)
    node.pump()
    assert events.blocks()[-1] == ": heartbeat"


def test_shared_results_go_to_every_caller_failures_too(node: Node) -> None:
    """hub.shared computes once per key and turn and hands each caller its own result."""
    calls: list[str] = []

    async def compute(name: str) -> str:
        calls.append(name)
        if name == "bad":
            raise ValueError(name)
        return name.upper()

    same = [fired(node.hub.shared("k", lambda: compute("k"))) for _ in range(3)]
    other = fired(node.hub.shared("o", lambda: compute("o")))
    failures = [node.hub.shared("bad", lambda: compute("bad")) for _ in range(2)]
    assert same == ["K"] * 3 and other == "O"
    for failing in failures:
        with pytest.raises(ValueError, match="bad"):
            fired(failing)
    assert calls == ["k", "o", "bad"]
    node.clock.advance(0)  # the next turn computes again
    assert fired(node.hub.shared("k", lambda: compute("k"))) == "K"
    assert calls == ["k", "o", "bad", "k"]


@pytest.mark.parametrize(
    ("asked", "connections", "served"),
    [(10_000, 18_000, 10_000), (10_000, 4_000, 3_600), (50, 4_000, 50), (10_000, 0, 0)],
)
def test_watchers_never_take_more_than_the_connections_less_a_tenth(
    asked: int, connections: int, served: int
) -> None:
    assert watcher_limit(asked, connections) == served


def test_encoded_events_kept_for_streams_are_bounded_in_bytes() -> None:
    """The events kept so that one write is encoded once for all streams never hold a large
    value, and hold a few MiB at most whatever the values (a stream must not pin records)."""
    from navistore.testing.compliance import make_record
    from navistore.web import feeds

    feeds._ENCODED.clear()
    feeds._encoded_bytes = 0
    large = [make_record(f"/large{n}", b"x" * 100_000).with_seq(n + 1) for n in range(50)]
    for record in large:
        assert feeds._event(record) == feeds._event(record)
    assert not any(seq in feeds._ENCODED for seq in range(1, 51))
    for n in range(3000):
        record = make_record(f"/k{n}", b"v" * 20_000).with_seq(1000 + n)
        event = feeds._event(record)
        assert event.startswith(b"id: %d\n" % (1000 + n))
        assert feeds._event(record) is event or len(feeds._ENCODED) <= 1
    kept = sum(len(event) + len(record.value) for record, event in feeds._ENCODED.values())
    assert 0 < kept <= feeds._ENCODED_MOST_BYTES

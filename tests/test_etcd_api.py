"""The etcd v2 API (navistore.compat.etcd) over an in-process node: bodies, statuses, error
codes, directories, waits, membership and tokens, as etcd 3.4.23 answers them.

One Store over a memory backend (whose calls complete at once) behind the real resource tree
with the etcd mounts, through ``treq.testing.StubTreq``, on a ``task.Clock``: a test sends a
request, writes, pumps, and reads what the client has received so far. The expected answers
were taken from a real etcd 3.4.23 run with ``--enable-v2``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

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
from navistore.compat import CompatContext
from navistore.compat.etcd import etcd_mounts
from navistore.store import Store
from navistore.store.expiry import Expirer
from navistore.tokens import parse_tokens
from navistore.watch_hub import WatchHub
from navistore.web import AccessPolicy

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class Pending:
    """A request in flight: its response once the headers came."""

    def __init__(self, node: EtcdNode, sent: Deferred[IResponse]) -> None:
        self.node = node
        self.outcome: list[Any] = []
        sent.addBoth(self.outcome.append)

    @property
    def answered(self) -> bool:
        """Whether the status and headers arrived."""
        self.node.pump()
        return bool(self.outcome)

    def response(self) -> IResponse:
        assert self.answered, "no answer yet"
        response = self.outcome[0]
        if isinstance(response, Failure):
            response.raiseException()
        return response  # type: ignore[no-any-return]

    def answer(self) -> Answer:
        """The complete answer, which must have arrived."""
        response = self.response()
        body = response.content()
        self.node.pump()
        return Answer(response.code, response.headers, fired(body))


class Collect(Protocol):
    """Collects a streamed body as it arrives."""

    def __init__(self, into: list[bytes]) -> None:
        self.into = into
        self.ended = False

    def dataReceived(self, data: bytes) -> None:
        self.into.append(data)

    def connectionLost(self, reason: object = None) -> None:
        self.ended = True


class EtcdNode:
    """A node with the etcd API, its Store, WatchHub and clock."""

    def __init__(
        self, access: AccessPolicy | None = None, max_value_size: int = 4096, **hub_options: Any
    ) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        clock = self.clock
        self.store = fired(Store.open(MemoryBackend(), wall_ms=lambda: int(clock.seconds() * 1000)))
        self.hub = WatchHub(self.store, clock=self.clock, **hub_options)
        policy = access or AccessPolicy.open()
        context = CompatContext(
            self.store, self.hub, policy, self.clock, max_value_size=max_value_size
        )
        resource = api_resource(
            self.store,
            watch_hub=self.hub,
            access=policy,
            mounts=etcd_mounts(context),
            max_value_size=max_value_size,
        )
        self.stub = StubTreq(resource)

    def pump(self) -> None:
        """Run what is due now (woken watchers) and move every byte across the connections."""
        for _ in range(3):
            self.clock.advance(0)
            self.stub.flush()

    def send(
        self,
        method: str,
        path: str,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Pending:
        """Send a request (``form`` as an urlencoded body) without waiting for its answer."""
        sent_headers = dict(headers or {})
        body = None
        if form is not None:
            body = urlencode(form).encode()
            sent_headers.update(FORM)
        sent = self.stub.request(method, ORIGIN + path, data=body, headers=sent_headers)
        pending = Pending(self, sent)
        self.pump()
        return pending

    def call(
        self,
        method: str,
        path: str,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """A request that must be answered at once."""
        return self.send(method, path, form, headers).answer()

    def json(self, method: str, path: str, form: Mapping[str, str] | None = None) -> Any:
        """The JSON body of a request answered at once (its status is not checked)."""
        return json.loads(self.call(method, path, form).body)


@pytest.fixture
def node() -> EtcdNode:
    return EtcdNode()


def error_of(answer: Answer) -> tuple[int, int, str]:
    """An etcd error answer's status, ``errorCode`` and ``cause`` (its shape checked)."""
    document = answer.json()
    assert set(document) >= {"errorCode", "message", "cause", "index"}, document
    assert answer.header("X-Etcd-Index") == str(document["index"])
    return answer.status, document["errorCode"], document["cause"]


# -- keys -------------------------------------------------------------------------------------


def test_set_and_get_answer_etcd_bodies_over_the_native_keys(node: EtcdNode) -> None:
    """A first set is 201 ``set`` without prevNode, the next 200 with the replaced node as
    prevNode; GET is ``get``; indexes are the node's seqs, in X-Etcd-Index too; the key is the
    native key (``/v2/keys/app/db`` is ``/app/db``)."""
    first = node.call("PUT", "/v2/keys/app/db", {"value": "one"})
    assert first.status == 201
    seq = fired(node.store.last_seq())
    assert first.json() == {
        "action": "set",
        "node": {"key": "/app/db", "value": "one", "modifiedIndex": seq, "createdIndex": seq},
    }
    assert first.header("X-Etcd-Index") == first.header("X-Raft-Index") == str(seq)
    assert first.header("X-Etcd-Cluster-Id") and first.header("X-Raft-Term") is not None
    second = node.call("PUT", "/v2/keys/app/db", {"value": "two"})
    assert second.status == 200
    assert second.json()["prevNode"] == first.json()["node"]
    got = node.call("GET", "/v2/keys/app/db?quorum=false&recursive=false&sorted=false")
    assert got.status == 200
    assert got.json() == {"action": "get", "node": second.json()["node"]}
    assert got.header("X-Etcd-Index") == str(seq + 1)
    native = node.call("GET", "/app/db")
    assert (native.status, native.body) == (200, b"two")


def test_value_may_come_in_the_query(node: EtcdNode) -> None:
    """``PUT ?value=`` sets the value as the form body does; the body wins when both say."""
    assert node.json("PUT", "/v2/keys/q?value=query")["node"]["value"] == "query"
    answer = node.call("PUT", "/v2/keys/q?value=query", {"value": "body"})
    assert answer.json()["node"]["value"] == "body"


def test_a_put_without_a_value_stores_an_empty_one(node: EtcdNode) -> None:
    """As in etcd, ``PUT`` with no value at all sets the key to the empty string."""
    answer = node.call("PUT", "/v2/keys/empty")
    assert answer.status == 201 and answer.json()["node"]["value"] == ""


def test_create_update_and_compare_and_swap(node: EtcdNode) -> None:
    """``prevExist=false`` creates (201 ``create``), ``prevExist=true`` updates (``update``),
    ``prevValue``/``prevIndex`` swap (``compareAndSwap``), each with its prevNode."""
    created = node.call("PUT", "/v2/keys/k?prevExist=false", {"value": "a"})
    assert created.status == 201 and created.json()["action"] == "create"
    assert "prevNode" not in created.json()
    updated = node.json("PUT", "/v2/keys/k?prevExist=true", {"value": "b"})
    assert updated["action"] == "update" and updated["prevNode"]["value"] == "a"
    swapped = node.json("PUT", "/v2/keys/k?prevValue=b", {"value": "c"})
    assert swapped["action"] == "compareAndSwap" and swapped["node"]["value"] == "c"
    index = swapped["node"]["modifiedIndex"]
    by_index = node.json("PUT", f"/v2/keys/k?prevIndex={index}", {"value": "d"})
    assert by_index["action"] == "compareAndSwap" and by_index["prevNode"]["value"] == "c"


def test_deletes_and_compare_and_delete(node: EtcdNode) -> None:
    """DELETE answers ``delete`` with the tombstone's index and the deleted node as prevNode;
    with ``prevValue`` it is ``compareAndDelete``; the key is then absent natively too."""
    set_node = node.json("PUT", "/v2/keys/gone", {"value": "v"})["node"]
    deleted = node.call("DELETE", "/v2/keys/gone")
    assert deleted.status == 200
    body = deleted.json()
    assert body["action"] == "delete" and body["prevNode"] == set_node
    assert body["node"]["key"] == "/gone" and "value" not in body["node"]
    assert body["node"]["modifiedIndex"] > set_node["modifiedIndex"]
    assert node.call("GET", "/gone").status == 404
    node.call("PUT", "/v2/keys/cad", {"value": "x"})
    cad = node.json("DELETE", "/v2/keys/cad?prevValue=x")
    assert cad["action"] == "compareAndDelete"


def test_in_order_keys(node: EtcdNode) -> None:
    """POST makes a key named by 20 digits of the next index, create only, in order; onto a
    file it is ``104 Not a directory``."""
    first = node.call("POST", "/v2/keys/queue", {"value": "job1"})
    second = node.call("POST", "/v2/keys/queue", {"value": "job2"})
    assert first.status == second.status == 201
    names = [answer.json()["node"]["key"] for answer in (first, second)]
    assert all(name.startswith("/queue/") and len(name) == len("/queue/") + 20 for name in names)
    assert names[0] < names[1]
    assert first.json()["action"] == "create"
    listed = node.json("GET", "/v2/keys/queue?sorted=true")["node"]["nodes"]
    assert [entry["value"] for entry in listed] == ["job1", "job2"]
    node.call("PUT", "/v2/keys/file", {"value": "x"})
    assert error_of(node.call("POST", "/v2/keys/file", {"value": "y"})) == (400, 104, "/file")


# -- errors ----------------------------------------------------------------------------------

#: (setup writes, method, path, form) -> (status, errorCode, cause), as etcd 3.4.23 answers.
ERRORS = [
    ([], "GET", "/v2/keys/nope", None, (404, 100, "/nope")),
    ([], "GET", "/v2/keys/a/b/c", None, (404, 100, "/a")),
    ([("/f", "v")], "PUT", "/v2/keys/f?prevExist=false", {"value": "1"}, (412, 105, "/f")),
    ([], "PUT", "/v2/keys/f2?prevExist=true", {"value": "1"}, (404, 100, "/f2")),
    ([("/f", "baz")], "PUT", "/v2/keys/f?prevValue=x", {"value": "1"}, (412, 101, "[x != baz]")),
    ([("/f", "baz")], "DELETE", "/v2/keys/f?prevValue=x", None, (412, 101, "[x != baz]")),
    ([("/f", "v")], "PUT", "/v2/keys/f/sub", {"value": "1"}, (400, 104, "/f")),
    ([], "PUT", "/v2/keys/", {"value": "1"}, (400, 107, "/")),
    ([], "DELETE", "/v2/keys/?recursive=true", None, (400, 107, "/")),
    ([], "DELETE", "/v2/keys/nothere", None, (404, 100, "/nothere")),
    ([], "PUT", "/v2/keys/t?ttl=abc", {"value": "1"}, (400, 202, 'invalid value for "ttl"')),
    ([], "PUT", "/v2/keys/t?ttl=-1", {"value": "1"}, (400, 202, 'invalid value for "ttl"')),
    (
        [],
        "PUT",
        "/v2/keys/t?prevIndex=x",
        {"value": "1"},
        (400, 203, 'invalid value for "prevIndex"'),
    ),
    (
        [],
        "GET",
        "/v2/keys/t?wait=true&waitIndex=abc",
        None,
        (400, 203, 'invalid value for "waitIndex"'),
    ),
    ([], "GET", "/v2/keys/t?recursive=maybe", None, (400, 209, 'invalid value for "recursive"')),
    (
        [],
        "PUT",
        "/v2/keys/t?prevExist=maybe",
        {"value": "1"},
        (400, 209, "invalid value for prevExist"),
    ),
    ([], "PUT", "/v2/keys/t?prevValue=", {"value": "1"}, (400, 201, '"prevValue" cannot be empty')),
    (
        [],
        "PUT",
        "/v2/keys/t?wait=true",
        {"value": "1"},
        (400, 209, '"wait" can only be used with GET requests'),
    ),
    (
        [],
        "PUT",
        "/v2/keys/t?refresh=true&ttl=5",
        {"value": "x"},
        (400, 211, "A value was provided on a refresh"),
    ),
    ([], "PUT", "/v2/keys/t?refresh=true", None, (400, 212, "No TTL value set")),
]


@pytest.mark.parametrize(("setup", "method", "path", "form", "expected"), ERRORS)
def test_errors_are_etcds(
    node: EtcdNode,
    setup: list[tuple[str, str]],
    method: str,
    path: str,
    form: dict[str, str] | None,
    expected: tuple[int, int, str],
) -> None:
    """Each refusal has etcd's status, errorCode, message and cause."""
    for key, value in setup:
        node.call("PUT", "/v2/keys" + key, {"value": value})
    answer = node.call(method, path, form)
    assert error_of(answer) == expected
    assert answer.json()["message"]


def test_compare_failures_name_every_mismatch(node: EtcdNode) -> None:
    """The cause of a failed compare lists each mismatch, ``[expected != actual]``."""
    index = node.json("PUT", "/v2/keys/c", {"value": "baz"})["node"]["modifiedIndex"]
    wrong = index + 50
    answer = node.call("DELETE", f"/v2/keys/c?prevIndex={wrong}&prevValue=x")
    assert error_of(answer) == (412, 101, f"[x != baz] [{wrong} != {index}]")
    answer = node.call("PUT", "/v2/keys/c?prevIndex=99&prevValue=baz", {"value": "n"})
    assert error_of(answer)[2] == f"[99 != {index}]"


# -- directories -----------------------------------------------------------------------------


def test_directories(node: EtcdNode) -> None:
    """An explicit directory is a marker: it shows empty, refuses a value (102) and a second
    ``dir=true`` set (102), is refused by a plain delete (102) and, once not empty, by
    ``dir=true`` (108); ``recursive=true`` removes it with all it holds."""
    made = node.call("PUT", "/v2/keys/dir?prevExist=false", {"dir": "true"})
    assert made.status == 201
    assert made.json()["node"] == {
        "key": "/dir",
        "dir": True,
        "modifiedIndex": made.json()["node"]["modifiedIndex"],
        "createdIndex": made.json()["node"]["createdIndex"],
    }
    empty = node.json("GET", "/v2/keys/dir")["node"]
    assert empty["dir"] is True and "nodes" not in empty
    root = node.json("GET", "/v2/keys/")["node"]
    assert root["dir"] is True and "key" not in root
    assert [entry["key"] for entry in root["nodes"]] == ["/dir"]
    assert error_of(node.call("PUT", "/v2/keys/dir", {"dir": "true"}))[:2] == (403, 102)
    assert error_of(node.call("PUT", "/v2/keys/dir", {"value": "x"}))[:2] == (403, 102)
    node.call("PUT", "/v2/keys/dir/a", {"value": "1"})
    node.call("PUT", "/v2/keys/dir/sub/b", {"value": "2"})
    node.call("PUT", "/v2/keys/dirt", {"value": "elsewhere"})
    shallow = node.json("GET", "/v2/keys/dir")["node"]["nodes"]
    assert [(entry["key"], "dir" in entry, "nodes" in entry) for entry in shallow] == [
        ("/dir/a", False, False),
        ("/dir/sub", True, False),
    ]
    deep = node.json("GET", "/v2/keys/dir?recursive=true")["node"]["nodes"]
    assert deep[1]["nodes"] == [
        {
            "key": "/dir/sub/b",
            "value": "2",
            "modifiedIndex": deep[1]["nodes"][0]["modifiedIndex"],
            "createdIndex": deep[1]["nodes"][0]["createdIndex"],
        }
    ]
    assert error_of(node.call("DELETE", "/v2/keys/dir")) == (403, 102, "/dir")
    assert error_of(node.call("DELETE", "/v2/keys/dir?dir=true")) == (403, 108, "/dir")
    removed = node.call("DELETE", "/v2/keys/dir?recursive=true")
    assert removed.status == 200 and removed.json()["node"]["dir"] is True
    assert node.call("GET", "/v2/keys/dir").status == 404
    assert node.call("GET", "/v2/keys/dirt").status == 200
    assert fired(node.store.list("/dir/")).records == []


def test_an_empty_directory_is_deleted_with_dir_true(node: EtcdNode) -> None:
    """``DELETE ?dir=true`` removes an empty directory; on a file it deletes the file."""
    node.call("PUT", "/v2/keys/d", {"dir": "true"})
    assert node.json("DELETE", "/v2/keys/d?dir=true")["action"] == "delete"
    node.call("PUT", "/v2/keys/f", {"value": "v"})
    assert node.call("DELETE", "/v2/keys/f?dir=true").status == 200


def test_a_key_with_a_value_and_sub_keys_is_a_directory(node: EtcdNode) -> None:
    """A native key holding a value and sub-keys shows as a directory (its value hidden):
    a value written to it is 102, a plain delete 102, ``dir=true`` 108; a recursive delete
    removes it with its value."""
    fired(node.store.put("/mixed", b"own value"))
    fired(node.store.put("/mixed/child", b"c"))
    got = node.json("GET", "/v2/keys/mixed")["node"]
    assert got["dir"] is True and "value" not in got
    assert [entry["key"] for entry in got["nodes"]] == ["/mixed/child"]
    assert error_of(node.call("PUT", "/v2/keys/mixed", {"value": "x"}))[:2] == (403, 102)
    assert error_of(node.call("DELETE", "/v2/keys/mixed"))[:2] == (403, 102)
    assert error_of(node.call("DELETE", "/v2/keys/mixed?dir=true"))[:2] == (403, 108)
    updatedir = node.call("PUT", "/v2/keys/mixed?dir=true&prevExist=true")
    assert error_of(updatedir)[:2] == (403, 102)
    assert fired(node.store.get("/mixed")).value == b"own value"  # type: ignore[union-attr]
    node.call("PUT", "/v2/keys/mixed/deeper/k", {"value": "writable under it"})
    assert node.call("DELETE", "/v2/keys/mixed?recursive=true").status == 200
    assert fired(node.store.get("/mixed")) is None
    assert fired(node.store.list("/mixed/")).records == []


def test_a_listing_is_bounded(node: EtcdNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory of more nodes than a listing answers is refused with a clear 400 naming
    the native paged listing, never answered unbounded."""
    import navistore.compat.etcd_nodes as nodes

    monkeypatch.setattr(nodes, "MAX_NODES", 3)
    for name in "abcd":
        fired(node.store.put(f"/big/{name}", b"v"))
    answer = node.call("GET", "/v2/keys/big")
    assert answer.status == 400
    assert answer.json()["error"] == "too_many_nodes" and "/_keys" in answer.json()["cause"]
    for name in "abc":
        fired(node.store.put(f"/small/{name}", b"", "application/vnd.navistore.etcd-dir"))
        fired(node.store.put(f"/small/{name}/x/y", b"v"))
    shallow = node.json("GET", "/v2/keys/small")["node"]["nodes"]
    assert [entry["key"] for entry in shallow] == ["/small/a", "/small/b", "/small/c"]


# -- waits ------------------------------------------------------------------------------------


def test_wait_index_answers_a_change_the_node_has_at_once(node: EtcdNode) -> None:
    """``wait=true&waitIndex=N`` answers at once with the change at index N or later."""
    index = node.json("PUT", "/v2/keys/w", {"value": "v"})["node"]["modifiedIndex"]
    answer = node.call("GET", f"/v2/keys/w?wait=true&waitIndex={index}")
    assert answer.status == 200
    assert answer.json()["action"] == "set" and answer.json()["node"]["value"] == "v"
    node.call("PUT", "/v2/keys/dir/x", {"value": "1"})
    node.call("PUT", "/v2/keys/dir/y", {"value": "2"})
    first = node.json("GET", f"/v2/keys/dir?wait=true&recursive=true&waitIndex={index + 1}")
    assert first["node"]["key"] == "/dir/x"
    assert node.hub.watching == 0


def test_a_wait_sends_its_headers_then_the_next_change(node: EtcdNode) -> None:
    """A wait without waitIndex (or 0, as etcdctl sends) answers 200 and its headers at once,
    then the next change in scope; a change elsewhere (``/dirt`` for ``/dir``) wakes nothing."""
    start = fired(node.store.last_seq())
    pending = node.send("GET", "/v2/keys/dir?wait=true&recursive=true&waitIndex=0")
    response = pending.response()
    assert response.code == 200
    assert response.headers.getRawHeaders(b"X-Etcd-Index") == [str(start).encode()]
    node.call("PUT", "/v2/keys/dirt", {"value": "not mine"})
    assert node.hub.watching == 1
    node.call("PUT", "/v2/keys/dir/inside", {"value": "mine"})
    answer = pending.answer()
    assert answer.json()["node"]["key"] == "/dir/inside"
    assert node.hub.watching == 0


def test_a_streamed_wait_sends_every_change(node: EtcdNode) -> None:
    """``stream=true`` keeps the answer open and sends each change as a JSON line, from
    ``waitIndex`` when given (the changes the node has first, then the new ones)."""
    first = node.json("PUT", "/v2/keys/s/a", {"value": "1"})["node"]["modifiedIndex"]
    node.call("PUT", "/v2/keys/s/b", {"value": "2"})
    pending = node.send("GET", f"/v2/keys/s?wait=true&recursive=true&stream=true&waitIndex={first}")
    response = pending.response()
    lines: list[bytes] = []
    collected = Collect(lines)
    response.deliverBody(collected)
    node.pump()
    node.call("PUT", "/v2/keys/s/c", {"value": "3"})
    node.call("PUT", "/v2/keys/elsewhere", {"value": "x"})
    node.call("DELETE", "/v2/keys/s/a")
    node.pump()
    events = [json.loads(line) for line in b"".join(lines).splitlines()]
    assert [(event["action"], event["node"]["key"]) for event in events] == [
        ("set", "/s/a"),
        ("set", "/s/b"),
        ("set", "/s/c"),
        ("delete", "/s/a"),
    ]
    assert node.hub.watching == 1 and not collected.ended
    node.hub.close()
    node.pump()
    assert collected.ended and node.hub.watching == 0


def test_a_wait_sees_a_delete_with_its_prev_node(node: EtcdNode) -> None:
    """A delete made through the API reaches a watcher as ``delete`` with the deleted node as
    prevNode (what ``etcdctl watch`` prints); one made natively as ``delete`` without it."""
    node.call("PUT", "/v2/keys/d", {"value": "old"})
    pending = node.send("GET", "/v2/keys/d?wait=true")
    node.call("DELETE", "/v2/keys/d")
    event = pending.answer().json()
    assert event["action"] == "delete" and event["prevNode"]["value"] == "old"
    node.call("PUT", "/v2/keys/n", {"value": "x"})
    pending = node.send("GET", "/v2/keys/n?wait=true")
    fired(node.store.delete("/n"))
    event = pending.answer().json()
    assert event["action"] == "delete" and event["node"]["key"] == "/n"


def test_a_wait_before_the_purge_horizon_is_event_index_cleared(node: EtcdNode) -> None:
    """A waitIndex below the tombstone purge horizon is etcd's 401 (status 400)."""
    node.call("PUT", "/v2/keys/p", {"value": "v"})
    node.call("DELETE", "/v2/keys/p")
    node.call("PUT", "/v2/keys/q", {"value": "v"})
    fired(node.store.purge_tombstones(fired(node.store.last_seq())))
    status, code, cause = error_of(node.call("GET", "/v2/keys/p?wait=true&waitIndex=1"))
    assert (status, code) == (400, 401) and "cleared" in cause
    assert node.hub.watching == 0


def test_waits_are_bounded_by_the_watcher_cap() -> None:
    """A wait has no timeout, so the node's watcher cap bounds them: past it a wait is refused
    at once with 503 (the native ``too_many_watchers`` beside etcd's code), and a slot freed
    by an answered wait serves the next."""
    node = EtcdNode(max_watchers=1)
    holding = node.send("GET", "/v2/keys/a?wait=true")
    assert holding.answered
    refused = node.call("GET", "/v2/keys/b?wait=true")
    assert refused.status == 503 and refused.json()["error"] == "too_many_watchers"
    node.call("PUT", "/v2/keys/a", {"value": "v"})
    assert holding.answer().json()["node"]["value"] == "v"
    again = node.send("GET", "/v2/keys/b?wait=true")
    assert again.answered and again.response().code == 200
    node.hub.close()
    assert again.answer().body == b"" and node.hub.watching == 0


def test_a_wait_ends_at_shutdown(node: EtcdNode) -> None:
    """When the node shuts down its hub, a pending wait ends (an empty body), its watcher
    released."""
    pending = node.send("GET", "/v2/keys/x?wait=true")
    assert pending.answered
    node.hub.close()
    assert pending.answer().body == b""
    assert node.hub.watching == 0


# -- membership, versions, methods ----------------------------------------------------------


def test_members_machines_stats_version_health(node: EtcdNode) -> None:
    """The probes clients make: this node alone at the URL the request reached it by, one
    cluster id, etcd's versions (and Navistore's in an extra field), health."""
    members = node.json("GET", "/v2/members")["members"]
    assert len(members) == 1 and members[0]["id"] == node.store.node_id
    assert members[0]["clientURLs"] == ["http://navistore.test"]
    assert node.json("GET", "/v2/members/leader") == members[0]
    machines = node.call("GET", "/v2/machines")
    assert (machines.status, machines.body) == (200, b"http://navistore.test")
    version = node.json("GET", "/version")
    assert version["etcdserver"] == "3.4.23" and version["etcdcluster"] == "3.4.0"
    assert "navistore" in version
    assert node.json("GET", "/health") == {"health": "true"}
    stats = node.json("GET", "/v2/stats/self")
    assert stats["id"] == node.store.node_id and stats["state"] == "StateLeader"
    assert node.json("GET", "/v2/stats/leader") == {"leader": node.store.node_id, "followers": {}}


def test_unknown_paths_and_methods(node: EtcdNode) -> None:
    """Other paths under /v2 are 404, other methods on keys 405 with Allow, as etcd answers."""
    assert node.call("GET", "/v2/nope").status == 404
    answer = node.call("PATCH", "/v2/keys/foo")
    assert answer.status == 405 and "PUT" in (answer.header("Allow") or "")


# -- tokens -------------------------------------------------------------------------------------

TOKENS = (
    '[[token]]\nname = "app"\nsecret = "app-secret-0123456789"\nallow = ["read", "write"]\n'
    'prefixes = ["/app/"]\n'
    '[[token]]\nname = "deep"\nsecret = "deep-secret-0123456789"\nallow = ["read"]\n'
    'prefixes = ["/app/k/inner/"]\n'
    '[[token]]\nname = "admin"\nsecret = "admin-secret-0123456789"\n'
    'allow = ["read", "write", "admin"]\n'
)


def test_tokens_limit_keys_and_listings() -> None:
    """A token reaches only its prefixes: a key outside is 403 (errorCode 110, the native
    ``forbidden`` beside it), a listing of the root shows only the way to its keys."""
    node = EtcdNode(access=AccessPolicy(tokens=parse_tokens(TOKENS)))
    app = {"Authorization": "Bearer app-secret-0123456789"}
    admin = {"Authorization": "Bearer admin-secret-0123456789"}
    assert node.send("PUT", "/v2/keys/app/k", {"value": "v"}, app).answer().status == 201
    assert node.send("PUT", "/v2/keys/other", {"value": "v"}, admin).answer().status == 201
    refused = node.send("PUT", "/v2/keys/other", {"value": "x"}, app).answer()
    assert refused.status == 403
    assert refused.json()["errorCode"] == 110 and refused.json()["error"] == "forbidden"
    assert node.send("GET", "/v2/keys/other", None, app).answer().status == 403
    root = node.send("GET", "/v2/keys/?recursive=true", None, app).answer().json()["node"]
    assert [entry["key"] for entry in root["nodes"]] == ["/app"]
    assert node.call("GET", "/v2/keys/app/k").status == 401
    shallow = {"Authorization": "Bearer deep-secret-0123456789"}
    assert node.send("PUT", "/v2/keys/app/k", {"value": "v"}, admin).answer().status == 200
    listing = node.send("GET", "/v2/keys/app", None, shallow).answer()
    assert listing.status == 200 and "nodes" not in listing.json()["node"]
    assert node.send("GET", "/v2/keys/app/k", None, shallow).answer().status == 403


def test_basic_auth_is_refused_clearly_when_tokens_are_on() -> None:
    """etcd's own users (``Authorization: Basic``) are not offered: a node with tokens says
    so and how to send a token."""
    node = EtcdNode(access=AccessPolicy(tokens=parse_tokens(TOKENS)))
    answer = node.send("GET", "/v2/keys/app/k", None, {"Authorization": "Basic cm9vdDpwdw=="})
    document = json.loads(answer.answer().body)
    assert answer.answer().status == 401
    assert document["error"] == "unauthorized" and "basic auth" in document["message"]
    assert "Bearer" in document["message"]


# -- TTL ---------------------------------------------------------------------------------------


def test_ttl_shows_expiration_and_the_key_expires(node: EtcdNode) -> None:
    """``ttl=N`` stores the key with a deadline: the node shows ``expiration`` (RFC 3339) and
    ``ttl`` (seconds left, rounded up); once the deadline passes the key is gone."""
    answer = node.json("PUT", "/v2/keys/t?ttl=30", {"value": "v"})
    assert answer["node"]["ttl"] == 30
    assert answer["node"]["expiration"] == "2023-11-14T22:13:50.000000000Z"
    node.clock.advance(10.5)
    assert node.json("GET", "/v2/keys/t")["node"]["ttl"] == 20
    node.clock.advance(20)
    assert error_of(node.call("GET", "/v2/keys/t"))[:2] == (404, 100)


def test_refresh_keeps_the_value_and_moves_the_deadline(node: EtcdNode) -> None:
    """``refresh=true&prevExist=true&ttl=N`` without a value is ``update``: same value, new
    deadline; a set without ``ttl`` makes the key permanent again."""
    node.call("PUT", "/v2/keys/leased/dir?ttl=5&dir=true")
    parent = node.json("GET", "/v2/keys/leased")["node"]
    assert "ttl" not in parent and parent["nodes"][0]["ttl"] == 5  # the child's, not the parent's
    node.call("PUT", "/v2/keys/r?ttl=5", {"value": "kept"})
    node.clock.advance(4)
    refreshed = node.json("PUT", "/v2/keys/r?ttl=5&refresh=true&prevExist=true")
    assert refreshed["action"] == "update" and refreshed["node"]["value"] == "kept"
    assert refreshed["node"]["ttl"] == 5
    node.clock.advance(4)
    assert node.json("GET", "/v2/keys/r")["node"]["value"] == "kept"
    permanent = node.json("PUT", "/v2/keys/r", {"value": "now permanent"})["node"]
    assert "ttl" not in permanent and "expiration" not in permanent
    node.clock.advance(100)
    assert node.call("GET", "/v2/keys/r").status == 200


def test_an_expiry_reaches_a_watcher_as_expire(node: EtcdNode) -> None:
    """When the node writes the expiry, a watcher sees action ``expire`` with the expired
    node as prevNode (the write was made through this API)."""
    expirer = Expirer(node.store, clock=node.clock)
    expirer.startService()
    try:
        written = node.json("PUT", "/v2/keys/e?ttl=2", {"value": "short"})["node"]
        pending = node.send("GET", "/v2/keys/e?wait=true")
        assert pending.answered
        node.clock.advance(3)
        event = pending.answer().json()
        assert event["action"] == "expire" and event["node"]["key"] == "/e"
        assert event["prevNode"]["value"] == "short"
        assert event["node"]["createdIndex"] == written["modifiedIndex"]
    finally:
        expirer.stopService()


def test_a_value_over_the_limit_is_413(node: EtcdNode) -> None:
    """A value over the node's value limit is refused with 413, in etcd's shape with the
    native error name beside it, and nothing is stored."""
    answer = node.call("PUT", "/v2/keys/big", {"value": "x" * 5000})
    assert answer.status == 413
    assert answer.json()["error"] == "value_too_large"
    assert fired(node.store.get("/big")) is None


def test_head_answers_the_headers_of_a_get(node: EtcdNode) -> None:
    """HEAD of a key answers GET's status and headers without a body, as etcd does."""
    node.call("PUT", "/v2/keys/h", {"value": "v"})
    head = node.call("HEAD", "/v2/keys/h")
    assert head.status == 200 and head.body == b""
    assert head.header("X-Etcd-Index") == node.call("GET", "/v2/keys/h").header("X-Etcd-Index")
    assert node.call("HEAD", "/v2/keys/missing").status == 404


def test_a_directory_with_a_ttl_expires_with_what_it_holds(node: EtcdNode) -> None:
    """A directory made with a TTL expires whole, as in etcd: its marker at the deadline, the
    keys under it right after; a recursive watcher sees the directory's ``expire``."""
    expirer = Expirer(node.store, clock=node.clock)
    expirer.startService()
    try:
        node.call("PUT", "/v2/keys/lease?ttl=2", {"dir": "true"})
        node.call("PUT", "/v2/keys/lease/member", {"value": "me"})
        node.call("PUT", "/v2/keys/other/kept", {"value": "stays"})
        pending = node.send("GET", "/v2/keys/lease?wait=true")
        node.clock.advance(3)
        node.pump()
        event = pending.answer().json()
        assert event["action"] == "expire" and event["node"] == {
            "key": "/lease",
            "dir": True,
            "modifiedIndex": event["node"]["modifiedIndex"],
            "createdIndex": event["prevNode"]["createdIndex"],
        }
        assert node.call("GET", "/v2/keys/lease").status == 404
        assert fired(node.store.get("/lease/member")) is None
        assert fired(node.store.get("/other/kept")) is not None
    finally:
        expirer.stopService()

"""One node's HTTP API (navistore.web), route by route, through ``treq.testing.StubTreq``.

Every request crosses a real twisted.web Site in memory (StubTreq), so statuses, headers and
streamed bodies are what a client sees. The store under the API is a fresh memory backend per test.
"""

from __future__ import annotations

import base64
from email.utils import parsedate_to_datetime

import pytest
import pytest_twisted
from support.api import ORIGIN, Api, FailingBackend, api_resource
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.web.iweb import UNKNOWN_LENGTH

from navistore.backend.memory import MemoryBackend
from navistore.clock import Stamp
from navistore.record import Record
from navistore.store import Store
from navistore.watch_hub import WatchHub
from navistore.web import AccessPolicy, make_site

MAX_VALUE_SIZE = 4096


@pytest.fixture
def api(store: Store) -> Api:
    """A StubTreq client of the API over ``store`` (limit MAX_VALUE_SIZE)."""
    return Api(api_resource(store, max_value_size=MAX_VALUE_SIZE))


class Seed:
    """``/taken`` written twice: its current ETag and the one it had before."""

    def __init__(self, etag: str, stale: str, last_seq: int) -> None:
        self.etag = etag
        self.stale = stale
        self.last_seq = last_seq

    def fill(self, text: str) -> str:
        """Replace ``{etag}`` and ``{stale}`` in a header value."""
        return text.replace("{etag}", self.etag).replace("{stale}", self.stale)


@pytest_twisted.async_fixture
async def seed(api: Api) -> Seed:
    """Store ``/taken`` = ``v`` (replacing ``old``)."""
    old = await api.put("/taken", b"old")
    current = await api.put("/taken", b"v")
    assert (old.status, current.status) == (201, 200)
    etag, stale = current.header("ETag"), old.header("ETag")
    assert etag is not None and stale is not None and etag != stale
    return Seed(etag, stale, await api.last_seq())


def version_of(etag: str | None) -> str:
    """The stamp text inside an ETag header value."""
    assert etag is not None and etag.startswith('"') and etag.endswith('"'), etag
    return etag[1:-1]


# -- classic API ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_classic_put_get_delete(api: Api) -> None:
    """PUT /<key> answers OK, GET returns the raw value, DELETE removes it (then GET is 404)."""
    put = await api.put("/1", b"one")
    assert put.status in (200, 201)
    assert put.body == b"OK"
    got = await api.get("/1")
    assert (got.status, got.body) == (200, b"one")
    deleted = await api.delete("/1")
    assert (deleted.status, deleted.body) == (200, b"OK")
    missing = await api.get("/1")
    assert missing.status == 404
    assert missing.json()["error"] == "not_found"


@pytest_twisted.ensureDeferred
async def test_delete_of_a_missing_or_deleted_key_is_404(api: Api) -> None:
    """DELETE of a never-written key, or of one already deleted, is a JSON 404 (never 500)."""
    never = await api.delete("/never")
    await api.put("/k", b"x")
    first = await api.delete("/k")
    again = await api.delete("/k")
    assert (never.status, first.status, again.status) == (404, 200, 404)
    assert never.json()["error"] == again.json()["error"] == "not_found"
    assert again.json()["detail"] == {"key": "/k"}


@pytest_twisted.ensureDeferred
async def test_listkeys_is_a_streamed_json_array_in_classic_form(api: Api) -> None:
    """GET /listkeys lists every live key without the leading '/', chunked (no length)."""
    for path in ["/1", "/a/b", "/_replication_slaves", "/gone"]:
        assert (await api.put(path, b"x")).status == 201
    await api.delete("/gone")
    answer = await api.get("/listkeys")
    assert answer.status == 200
    assert answer.json() == ["1", "_replication_slaves", "a/b"]
    assert answer.length is UNKNOWN_LENGTH
    assert answer.header("Content-Length") is None


@pytest_twisted.ensureDeferred
async def test_listkeys_of_an_empty_store(api: Api) -> None:
    """GET /listkeys of an empty store is an empty JSON array."""
    assert await api.keys() == []


@pytest_twisted.ensureDeferred
async def test_listkeys_streams_every_page(api: Api, store: Store) -> None:
    """A store bigger than one listing page is listed whole, once each, in key order."""
    names = [f"k{index:05d}" for index in range(2_345)]
    for name in reversed(names):
        await store.put("/" + name, b"x")
    assert await api.keys() == names


@pytest_twisted.ensureDeferred
async def test_reset_wipes_data_but_keeps_node_id_and_seq(api: Api) -> None:
    """GET /reset deletes every key; /_health keeps its node_id and seqs keep increasing."""
    before = (await api.get("/_health")).json()
    await api.put("/a", b"1")
    await api.put("/b/c", b"2")
    seq = await api.last_seq()
    answer = await api.get("/reset")
    assert (answer.status, answer.body) == (200, b"OK")
    assert await api.keys() == []
    assert (await api.get("/a")).status == 404
    assert (await api.get("/_keys")).json() == {"keys": [], "next": None}
    after = (await api.get("/_health")).json()
    assert after["node_id"] == before["node_id"]
    assert await api.last_seq() >= seq
    assert (await api.put("/a", b"3")).status == 201
    changes = (await api.get("/_changes")).json()
    assert [(c["key"], c["seq"] > seq) for c in changes["results"]] == [("/a", True)]


@pytest_twisted.ensureDeferred
async def test_reset_answers_json_on_request(api: Api) -> None:
    """GET /reset with Accept: application/json answers {"reset": true}."""
    answer = await api.get("/reset", headers={"Accept": "application/json"})
    assert answer.json() == {"reset": True}


@pytest_twisted.ensureDeferred
async def test_replication_slaves_is_an_ordinary_key(api: Api) -> None:
    """The classic /_replication_slaves key is stored and read like any key, not an endpoint."""
    put = await api.put("/_replication_slaves", b"http://a:1,http://b:2")
    got = await api.get("/_replication_slaves")
    assert put.status == 201
    assert got.body == b"http://a:1,http://b:2"
    assert (await api.delete("/_replication_slaves")).status == 200


# -- modern writes --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_put_answers_201_then_200_with_etag(api: Api) -> None:
    """PUT answers 201 for a new key and 200 for a replaced one, each with the new ETag, which
    the following GET returns too."""
    created = await api.put("/k", b"1")
    assert (created.status, created.body) == (201, b"OK")
    assert created.header("Content-Type") == "text/plain; charset=utf-8"
    got = await api.get("/k")
    assert got.header("ETag") == created.header("ETag")
    replaced = await api.put("/k", b"2")
    assert (replaced.status, replaced.body) == (200, b"OK")
    assert replaced.header("ETag") != created.header("ETag")
    assert (await api.get("/k")).header("ETag") == replaced.header("ETag")
    assert Stamp.decode(version_of(replaced.header("ETag"))) > Stamp.decode(
        version_of(created.header("ETag"))
    )


@pytest_twisted.ensureDeferred
async def test_put_answers_json_when_asked(api: Api) -> None:
    """With Accept: application/json, PUT answers {"key", "version", "created"}; version is the
    ETag's stamp."""
    accept = {"Accept": "application/json"}
    created = await api.put("/a/b", b"1", headers=accept)
    replaced = await api.put("/a/b", b"2", headers=accept)
    assert created.status == 201
    assert created.json() == {
        "key": "/a/b",
        "version": version_of(created.header("ETag")),
        "created": True,
    }
    assert replaced.status == 200
    assert replaced.json() == {
        "key": "/a/b",
        "version": version_of(replaced.header("ETag")),
        "created": False,
    }


@pytest_twisted.ensureDeferred
async def test_delete_answers_json_when_asked(api: Api) -> None:
    """With Accept: application/json, DELETE answers {"key", "version", "deleted": true}."""
    await api.put("/k", b"1")
    answer = await api.delete("/k", headers={"Accept": "application/json"})
    document = answer.json()
    assert answer.status == 200
    assert document["key"] == "/k" and document["deleted"] is True
    changes = (await api.get("/_changes")).json()["results"]
    assert changes[-1]["stamp"] == document["version"]


@pytest_twisted.ensureDeferred
async def test_post_creates_only(api: Api) -> None:
    """POST creates a key (201); on an existing key it is a JSON 409 and the value stays; a
    deleted key can be POSTed again."""
    created = await api.post("/k", b"first")
    conflict = await api.post("/k", b"second")
    assert created.status == 201
    assert conflict.status == 409
    document = conflict.json()
    assert document["error"] == "conflict"
    assert document["detail"] == {"key": "/k", "version": version_of(created.header("ETag"))}
    assert (await api.get("/k")).body == b"first"
    assert (await api.delete("/k")).status == 200
    again = await api.post("/k", b"third")
    assert again.status == 201
    assert (await api.get("/k")).body == b"third"


CONDITIONAL_WRITES = [
    # method, key, headers, status, value of the key afterwards (None: absent)
    ("PUT", "/taken", {"If-Match": "{etag}"}, 200, b"new"),
    ("PUT", "/taken", {"If-Match": "*"}, 200, b"new"),
    ("PUT", "/taken", {"If-Match": "{stale}, {etag}"}, 200, b"new"),
    ("PUT", "/taken", {"If-Match": "{stale}"}, 412, b"v"),
    ("PUT", "/taken", {"If-Match": "W/{etag}"}, 412, b"v"),
    ("PUT", "/taken", {"If-Match": '"garbage"'}, 412, b"v"),
    ("PUT", "/taken", {"If-None-Match": "*"}, 412, b"v"),
    ("PUT", "/taken", {"If-None-Match": "{etag}"}, 412, b"v"),
    ("PUT", "/taken", {"If-None-Match": "{stale}"}, 200, b"new"),
    ("PUT", "/fresh", {"If-None-Match": "*"}, 201, b"new"),
    ("PUT", "/fresh", {"If-Match": "*"}, 412, None),
    ("PUT", "/fresh", {"If-Match": "{etag}"}, 412, None),
    ("POST", "/fresh", {"If-None-Match": "*"}, 201, b"new"),
    ("POST", "/fresh", {"If-Match": "*"}, 412, None),
    ("POST", "/taken", {"If-Match": "{etag}"}, 409, b"v"),
    ("DELETE", "/taken", {"If-Match": "{etag}"}, 200, None),
    ("DELETE", "/taken", {"If-Match": "*"}, 200, None),
    ("DELETE", "/taken", {"If-Match": "{stale}"}, 412, b"v"),
    ("DELETE", "/taken", {"If-None-Match": "*"}, 412, b"v"),
    ("DELETE", "/taken", {"If-None-Match": "{etag}"}, 412, b"v"),
    ("DELETE", "/taken", {"If-None-Match": "{stale}"}, 200, None),
]


def _case_id(method: str, path: str, headers: dict[str, str], status: int) -> str:
    conditions = " ".join(f"{name}:{value}" for name, value in headers.items())
    shown = path if len(path) <= 30 else path[:27] + "..."
    return f"{method} {shown} {conditions} -> {status}".replace("  ", " ")


@pytest.mark.parametrize(
    ("method", "key", "headers", "status", "after"),
    CONDITIONAL_WRITES,
    ids=[_case_id(m, k, h, s) for m, k, h, s, _ in CONDITIONAL_WRITES],
)
@pytest_twisted.ensureDeferred
async def test_conditional_writes(
    api: Api,
    seed: Seed,
    method: str,
    key: str,
    headers: dict[str, str],
    status: int,
    after: bytes | None,
) -> None:
    """If-Match / If-None-Match make PUT, POST and DELETE conditional: 412 (or 409 for POST on
    an existing key) when the condition fails, and then nothing changed."""
    sent = {name: seed.fill(value) for name, value in headers.items()}
    body = b"new" if method != "DELETE" else None
    answer = await api.request(method, key, body, headers=sent)
    assert answer.status == status, answer
    got = await api.get(key)
    if after is None:
        assert got.status == 404
    else:
        assert (got.status, got.body) == (200, after)
    if status >= 400:
        assert answer.json()["error"] in ("precondition_failed", "conflict")
        assert await api.last_seq() == seed.last_seq
        if key == "/taken":
            assert got.header("ETag") == seed.etag
    else:
        assert await api.last_seq() == seed.last_seq + 1


# -- modern reads ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_get_returns_stored_content_type_and_validators(api: Api) -> None:
    """GET answers the writer's Content-Type (with parameters), ETag, Last-Modified (the
    stamp's time) and X-Content-Type-Options: nosniff."""
    put = await api.put(
        "/t", "é".encode("latin-1"), headers={"Content-Type": "text/x; charset=latin-1"}
    )
    answer = await api.get("/t")
    assert answer.status == 200
    assert answer.header("Content-Type") == "text/x; charset=latin-1"
    assert answer.header("X-Content-Type-Options") == "nosniff"
    assert answer.header("ETag") == put.header("ETag")
    stamp = Stamp.decode(version_of(answer.header("ETag")))
    modified = answer.header("Last-Modified")
    assert modified is not None
    assert int(parsedate_to_datetime(modified).timestamp()) == stamp.wall_ms // 1000
    assert answer.header("Last-Modified") == put.header("Last-Modified")


@pytest_twisted.ensureDeferred
async def test_get_defaults_to_octet_stream(api: Api) -> None:
    """A value written without a Content-Type is served as application/octet-stream."""
    await api.put("/raw", b"x")
    answer = await api.get("/raw")
    assert answer.header("Content-Type") == "application/octet-stream"
    assert answer.header("X-Content-Type-Options") == "nosniff"


@pytest_twisted.ensureDeferred
async def test_values_are_binary_safe(api: Api) -> None:
    """Every byte value, NUL included, round-trips exactly, and an empty value is a value."""
    every_byte = bytes(range(256)) * 3 + b"\x00"
    assert (await api.put("/bin", every_byte)).status == 201
    assert (await api.get("/bin")).body == every_byte
    assert (await api.put("/empty", b"")).status == 201
    empty = await api.get("/empty")
    assert (empty.status, empty.body) == (200, b"")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    ("condition", "status"),
    [("{etag}", 304), ("*", 304), ("{stale}, {etag}", 304), ("{stale}", 200), ('"x"', 200)],
)
@pytest_twisted.ensureDeferred
async def test_if_none_match_on_reads(
    api: Api, seed: Seed, method: str, condition: str, status: int
) -> None:
    """GET/HEAD with If-None-Match naming the current ETag (or *) is a 304 without a body but
    with the ETag; any other tag gets the full answer."""
    answer = await api.request(method, "/taken", headers={"If-None-Match": seed.fill(condition)})
    assert answer.status == status
    assert answer.header("ETag") == seed.etag
    if status == 304 or method == "HEAD":
        assert answer.body == b""
    else:
        assert answer.body == b"v"


@pytest_twisted.ensureDeferred
async def test_if_none_match_on_a_missing_key_is_404(api: Api) -> None:
    """If-None-Match: * on a missing key does not make a 304: the key is 404."""
    answer = await api.get("/missing", headers={"If-None-Match": "*"})
    assert answer.status == 404


HEAD_PATHS = [
    "/taken",
    "/missing",
    "/listkeys",
    "/_health",
    "/_keys",
    "/_keys?prefix=/doc/&values=true",
    "/_changes",
    "/_changes?since=1",
    "/doc/",
    "/doc?list=true",
    "/_nothing",
    "/a//b",
]


@pytest_twisted.ensureDeferred
async def test_a_head_refused_before_its_route_logs_nothing(api: Api) -> None:
    """A HEAD refused before any work (a path that is no key) has its GET's headers and no
    body, and logs nothing: Twisted logs a line for every HEAD whose render returns a body, so
    that clients could fill the log (seen in a Schemathesis run's node log)."""
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        head = await api.head("/a//b")
    finally:
        globalLogPublisher.removeObserver(events.append)
    got = await api.get("/a//b")
    assert (head.status, head.body) == (400, b"")
    assert head.header("Content-Length") == str(len(got.body))
    assert not [event for event in events if "eat it" in str(event.get("log_format"))]


@pytest.mark.parametrize("path", HEAD_PATHS)
@pytest_twisted.ensureDeferred
async def test_head_answers_like_get_without_a_body(api: Api, seed: Seed, path: str) -> None:
    """HEAD gives the status and headers GET gives for the same path, and an empty body."""
    await api.put("/doc/a", b"1")
    got = await api.get(path)
    head = await api.head(path)
    assert head.status == got.status
    assert head.body == b""
    assert head.stable_headers() == got.stable_headers()
    length = head.header("Content-Length")
    if got.length is UNKNOWN_LENGTH:
        assert length is None
    else:
        assert length == str(len(got.body))


# -- documents ------------------------------------------------------------------------------------

DOCUMENT_KEYS = ["/doc", "/doc/a", "/doc/b", "/doc/c/d", "/docx", "/do", "/other"]
UNDER_DOC = ["/doc/a", "/doc/b", "/doc/c/d"]


async def write_documents(api: Api) -> None:
    """Store DOCUMENT_KEYS (and a deleted /doc/gone) in scrambled order."""
    for key in reversed(DOCUMENT_KEYS):
        assert (await api.put(key, key.encode())).status == 201
    await api.put("/doc/gone", b"x")
    await api.delete("/doc/gone")


@pytest.mark.parametrize("path", ["/doc/?list", "/doc/", "/doc?list=true", "/_keys?prefix=/doc/"])
@pytest_twisted.ensureDeferred
async def test_listing_a_document(api: Api, path: str) -> None:
    """Every listing route answers {"keys", "next"} with the live keys under /doc/ in key order,
    never /doc itself nor /docx."""
    await write_documents(api)
    answer = await api.get(path)
    assert answer.status == 200
    assert answer.json() == {"keys": UNDER_DOC, "next": None}


@pytest.mark.parametrize(
    ("prefix", "keys"),
    [
        ("", sorted(DOCUMENT_KEYS)),
        ("/", sorted(DOCUMENT_KEYS)),
        ("doc/", UNDER_DOC),
        ("/doc", ["/doc", *UNDER_DOC, "/docx"]),
        ("/doc/c/", ["/doc/c/d"]),
        ("/nothing/", []),
    ],
)
@pytest_twisted.ensureDeferred
async def test_keys_endpoint_prefix(api: Api, prefix: str, keys: list[str]) -> None:
    """/_keys?prefix= matches keys starting with the prefix ('/doc/' is a document, '/doc' is a
    plain string prefix; empty or '/' is everything)."""
    await write_documents(api)
    answer = await api.get("/_keys", params=[("prefix", prefix)])
    assert answer.json() == {"keys": keys, "next": None}


@pytest.mark.parametrize("base", ["/_keys?prefix=/many/", "/many/?list", "/many/"])
@pytest.mark.parametrize("limit", [1, 4, 7, 23])
@pytest_twisted.ensureDeferred
async def test_paging_visits_every_key_once(api: Api, store: Store, base: str, limit: int) -> None:
    """Following ``next`` as ``after`` with a small limit visits every key once, in order."""
    keys = [f"/many/{index:03d}" for index in range(23)]
    for key in reversed(keys):
        await store.put(key, b"x")
    await store.put("/manyx", b"x")
    await store.put("/m", b"x")
    seen: list[str] = []
    after: str | None = None
    for _page in range(30):
        params = [("limit", str(limit))] + ([("after", after)] if after is not None else [])
        document = (await api.get(base, params=params)).json()
        assert len(document["keys"]) <= limit
        seen.extend(document["keys"])
        after = document["next"]
        if after is None:
            break
        assert after == document["keys"][-1]
    assert seen == keys


@pytest_twisted.ensureDeferred
async def test_listing_with_values(api: Api) -> None:
    """values=true lists objects with key, value, encoding (utf-8, or base64 for other bytes),
    content_type and version (the ETag's stamp)."""
    text = await api.put("/v/text", "héllo".encode(), headers={"Content-Type": "text/plain"})
    binary_value = bytes(range(256))
    binary = await api.put("/v/bin", binary_value)
    document = (await api.get("/v/", params=[("list", ""), ("values", "true")])).json()
    assert document == {
        "keys": [
            {
                "key": "/v/bin",
                "value": base64.b64encode(binary_value).decode("ascii"),
                "encoding": "base64",
                "content_type": "application/octet-stream",
                "version": version_of(binary.header("ETag")),
            },
            {
                "key": "/v/text",
                "value": "héllo",
                "encoding": "utf-8",
                "content_type": "text/plain",
                "version": version_of(text.header("ETag")),
            },
        ],
        "next": None,
    }
    decoded = base64.b64decode(document["keys"][0]["value"])
    assert decoded == binary_value


@pytest_twisted.ensureDeferred
async def test_recursive_delete_of_a_document(api: Api) -> None:
    """DELETE /doc/?recursive=true deletes every key under /doc/ (not /doc, not /docx) and
    says how many; the deletes show in the change feed."""
    await write_documents(api)
    answer = await api.delete("/doc/", params=[("recursive", "true")])
    assert answer.status == 200
    assert answer.json() == {"prefix": "/doc/", "deleted": len(UNDER_DOC)}
    assert await api.keys() == ["do", "doc", "docx", "other"]
    for key in UNDER_DOC:
        assert (await api.get(key)).status == 404
    changes = (await api.get("/_changes", params=[("prefix", "/doc/")])).json()["results"]
    assert {c["key"] for c in changes if c["deleted"]} == {*UNDER_DOC, "/doc/gone"}
    again = await api.delete("/doc/", params=[("recursive", "true")])
    assert again.json() == {"prefix": "/doc/", "deleted": 0}


@pytest.mark.parametrize("query", [[], [("recursive", "false")], [("recursive", "no")]])
@pytest_twisted.ensureDeferred
async def test_delete_of_a_document_needs_recursive(api: Api, query: list[tuple[str, str]]) -> None:
    """DELETE /doc/ without recursive=true is a 400 and deletes nothing."""
    await write_documents(api)
    seq = await api.last_seq()
    answer = await api.delete("/doc/", params=query)
    assert answer.status == 400
    assert answer.json()["error"] == "recursive_required"
    assert await api.last_seq() == seq
    assert (await api.get("/doc/")).json()["keys"] == UNDER_DOC


# -- the change feed ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_changes_feed(api: Api) -> None:
    """/_changes answers {"last_seq", "results"} in seq order, one row per key at its latest
    change, deletes with deleted=true, stamps equal to the ETags."""
    a = await api.put("/a", b"1")
    await api.put("/b", b"1")
    c = await api.put("/p/c", b"1")
    await api.delete("/b")
    a2 = await api.put("/a", b"2")
    document = (await api.get("/_changes")).json()
    assert document["last_seq"] == 5
    assert document["results"] == [
        {"seq": 3, "key": "/p/c", "stamp": version_of(c.header("ETag")), "deleted": False},
        {"seq": 4, "key": "/b", "stamp": document["results"][1]["stamp"], "deleted": True},
        {"seq": 5, "key": "/a", "stamp": version_of(a2.header("ETag")), "deleted": False},
    ]
    assert version_of(a.header("ETag")) not in [r["stamp"] for r in document["results"]]


@pytest_twisted.ensureDeferred
async def test_changes_since_excludes_older(api: Api) -> None:
    """since=N answers only changes with seq > N; since=last_seq answers none."""
    for key in ["/a", "/b", "/c"]:
        await api.put(key, b"x")
    document = (await api.get("/_changes", params=[("since", "1")])).json()
    assert [r["seq"] for r in document["results"]] == [2, 3]
    empty = (await api.get("/_changes", params=[("since", "3")])).json()
    assert empty == {"last_seq": 3, "results": []}
    beyond = (await api.get("/_changes", params=[("since", "99")])).json()
    assert beyond["results"] == []


@pytest_twisted.ensureDeferred
async def test_changes_prefix_filters(api: Api) -> None:
    """prefix= answers only changes under the prefix; last_seq still covers the others."""
    await api.put("/p/1", b"x")
    await api.put("/q/1", b"x")
    await api.put("/p/2", b"x")
    await api.delete("/p/1")
    await api.put("/px", b"x")
    document = (await api.get("/_changes", params=[("prefix", "/p/")])).json()
    assert [(r["key"], r["deleted"]) for r in document["results"]] == [
        ("/p/2", False),
        ("/p/1", True),
    ]
    assert document["last_seq"] == 5
    assert all(r["key"].startswith("/p/") for r in document["results"])


@pytest_twisted.ensureDeferred
async def test_changes_limit_pages(api: Api) -> None:
    """limit= pages the feed; resuming with since=last_seq visits every change once."""
    for index in range(11):
        await api.put(f"/k{index}", b"x")
    seqs: list[int] = []
    since = 0
    for _page in range(20):
        document = (
            await api.get("/_changes", params=[("since", str(since)), ("limit", "3")])
        ).json()
        assert len(document["results"]) <= 3
        if not document["results"]:
            break
        seqs.extend(r["seq"] for r in document["results"])
        since = document["last_seq"]
    assert seqs == list(range(1, 12))


# -- errors ---------------------------------------------------------------------------------------

LONG_KEY = "/" + "k" * 5_000
TOO_LARGE = b"x" * (MAX_VALUE_SIZE + 1)

ERRORS: list[tuple[str, str, dict[str, str], bytes | None, int, str, str | None]] = [
    # method, path, headers, body, status, error code, Allow header
    ("GET", "/a/../b", {}, None, 400, "invalid_key", None),
    ("PUT", "/a/%2E%2E/b", {}, b"x", 400, "invalid_key", None),
    ("PUT", "/a/./b", {}, b"x", 400, "invalid_key", None),
    ("GET", LONG_KEY, {}, None, 400, "invalid_key", None),
    ("PUT", LONG_KEY, {}, b"x", 400, "invalid_key", None),
    ("GET", "/a%01b", {}, None, 400, "invalid_key", None),
    ("PUT", "/a%0Ab", {}, b"x", 400, "invalid_key", None),
    ("PUT", "/a%7Fb", {}, b"x", 400, "invalid_key", None),
    ("GET", "/a//b", {}, None, 400, "invalid_key", None),
    ("PUT", "/a//b", {}, b"x", 400, "invalid_key", None),
    ("PUT", "/%FF", {}, b"x", 400, "invalid_key", None),
    ("GET", "/_changes?limit=abc", {}, None, 400, "invalid_parameter", None),
    ("GET", "/_changes?limit=10001", {}, None, 400, "invalid_parameter", None),
    ("GET", "/_changes?limit=0", {}, None, 400, "invalid_parameter", None),
    ("GET", "/_changes?since=-1", {}, None, 400, "invalid_parameter", None),
    ("GET", "/_changes?since=abc", {}, None, 400, "invalid_parameter", None),
    ("GET", "/_changes?prefix=a//", {}, None, 400, "invalid_key", None),
    ("GET", "/_keys?limit=abc", {}, None, 400, "invalid_parameter", None),
    ("GET", "/_keys?limit=10001", {}, None, 400, "invalid_parameter", None),
    ("GET", "/_keys?limit=-5", {}, None, 400, "invalid_parameter", None),
    ("GET", "/doc/?list&limit=10001", {}, None, 400, "invalid_parameter", None),
    ("GET", "/_keys?after=a//b", {}, None, 400, "invalid_key", None),
    ("DELETE", "/doc/", {}, None, 400, "recursive_required", None),
    ("DELETE", "/taken/", {}, None, 400, "recursive_required", None),
    ("GET", "/missing", {}, None, 404, "not_found", None),
    ("DELETE", "/missing", {}, None, 404, "not_found", None),
    ("GET", "/_nothing", {}, None, 404, "unknown_endpoint", None),
    ("PUT", "/_nothing", {}, b"x", 404, "unknown_endpoint", None),
    ("GET", "/_health/x", {}, None, 404, "unknown_endpoint", None),
    ("PATCH", "/taken", {}, b"x", 405, "method_not_allowed", "DELETE, GET, HEAD, POST, PUT"),
    ("PUT", "/_health", {}, b"x", 405, "method_not_allowed", "GET, HEAD"),
    ("PUT", "/listkeys", {}, b"x", 405, "method_not_allowed", "GET, HEAD"),
    ("DELETE", "/listkeys", {}, None, 405, "method_not_allowed", "GET, HEAD"),
    ("POST", "/_changes", {}, b"x", 405, "method_not_allowed", "GET, HEAD"),
    ("DELETE", "/_keys", {}, None, 405, "method_not_allowed", "GET, HEAD"),
    ("PUT", "/reset", {}, b"x", 405, "method_not_allowed", "GET"),
    ("PUT", "/doc/", {}, b"x", 405, "method_not_allowed", "DELETE, GET, HEAD"),
    ("POST", "/taken", {}, b"x", 409, "conflict", None),
    ("PUT", "/taken", {"If-None-Match": "*"}, b"x", 412, "precondition_failed", None),
    ("PUT", "/taken", {"If-Match": "{stale}"}, b"x", 412, "precondition_failed", None),
    ("PUT", "/fresh", {"If-Match": "*"}, b"x", 412, "precondition_failed", None),
    ("DELETE", "/taken", {"If-Match": "{stale}"}, None, 412, "precondition_failed", None),
    ("DELETE", "/taken", {"If-None-Match": "*"}, None, 412, "precondition_failed", None),
    ("PUT", "/fresh", {}, TOO_LARGE, 413, "value_too_large", None),
    ("PUT", "/taken", {}, TOO_LARGE, 413, "value_too_large", None),
    ("POST", "/fresh", {}, TOO_LARGE, 413, "value_too_large", None),
]


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "code", "allow"),
    ERRORS,
    ids=[
        _case_id(m, p, h, s) + ("" if b is None else f" ({len(b)} B)")
        for m, p, h, b, s, *_ in ERRORS
    ],
)
@pytest_twisted.ensureDeferred
async def test_refused_requests_answer_json_errors_and_change_nothing(
    api: Api,
    seed: Seed,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
    status: int,
    code: str,
    allow: str | None,
) -> None:
    """Every refused request answers its status with a JSON {"error", "message"} body (405 with
    Allow), stores nothing and notifies nobody."""
    notified: list[Record] = []
    api.store.subscribe(notified.append)
    sent = {name: seed.fill(value) for name, value in headers.items()}
    answer = await api.request(method, path, body, headers=sent)
    assert answer.status == status, answer
    document = answer.json()
    assert document["error"] == code
    assert isinstance(document["message"], str) and document["message"]
    assert answer.header("Allow") == allow
    if allow is not None:
        assert document["detail"] == {"allowed": allow.split(", ")}
    if status == 413:
        assert document["detail"] == {"max_value_size": MAX_VALUE_SIZE}
    assert notified == []
    assert await api.last_seq() == seed.last_seq
    assert await api.keys() == ["taken"]
    taken = await api.get("/taken")
    assert (taken.body, taken.header("ETag")) == (b"v", seed.etag)


@pytest_twisted.ensureDeferred
async def test_body_at_the_limit_is_accepted(api: Api) -> None:
    """A body of exactly max_value_size bytes is stored (only larger ones are 413)."""
    value = b"y" * MAX_VALUE_SIZE
    assert (await api.put("/big", value)).status == 201
    assert (await api.get("/big")).body == value


@pytest_twisted.ensureDeferred
async def test_make_site_serves_the_same_api() -> None:
    """make_site(...).resource is the API, with the configured value limit."""
    opened = await Store.open(MemoryBackend())
    site = make_site(
        opened,
        max_value_size=8,
        watch_hub=WatchHub(opened, clock=Clock()),
        reactor=Clock(),
        access=AccessPolicy.open(),
    )
    stub = StubTreq(site.resource)
    too_big = await stub.put(ORIGIN + "/k", data=b"123456789")
    assert too_big.code == 413
    await too_big.content()
    fits = await stub.put(ORIGIN + "/k", data=b"12345678")
    assert fits.code == 201
    await fits.content()
    assert site.max_value_size == 8


# -- a failing backend ----------------------------------------------------------------------------

BACKEND_FAILURES = [
    ("GET", "/k", None),
    ("HEAD", "/k", None),
    ("PUT", "/k", b"new"),
    ("PUT", "/fresh", b"new"),
    ("POST", "/fresh", b"new"),
    ("DELETE", "/k", None),
    ("GET", "/listkeys", None),
    ("GET", "/_keys", None),
    ("GET", "/doc/?list", None),
    ("GET", "/_changes", None),
    ("DELETE", "/doc/?recursive=true", None),
    ("GET", "/reset", None),
]


@pytest.mark.parametrize(("method", "path", "body"), BACKEND_FAILURES)
@pytest_twisted.ensureDeferred
async def test_backend_failure_is_503_and_changes_nothing(
    method: str, path: str, body: bytes | None
) -> None:
    """While the backend fails (StorageFailure), every route answers a JSON 503 and nothing is
    stored; once it recovers the data is as before."""
    backend = FailingBackend()
    opened = await Store.open(backend)
    api = Api(api_resource(opened, max_value_size=MAX_VALUE_SIZE))
    await api.put("/k", b"old")
    await api.put("/doc/a", b"old")
    seq = await api.last_seq()
    notified: list[Record] = []
    opened.subscribe(notified.append)
    backend.failing = True
    answer = await api.request(method, path, body)
    assert answer.status == 503, answer
    if method != "HEAD":
        document = answer.json()
        assert document["error"] == "backend_unavailable"
        assert "disk is on fire" in document["message"]
    backend.failing = False
    assert notified == []
    assert await api.last_seq() == seq
    assert await api.keys() == ["doc/a", "k"]
    assert (await api.get("/k")).body == b"old"


@pytest_twisted.ensureDeferred
async def test_health_reports_a_failing_backend() -> None:
    """/_health answers 200 state "ok" with the node id, and 503 state "unavailable" while the
    backend fails."""
    backend = FailingBackend()
    opened = await Store.open(backend)
    api = Api(api_resource(opened, max_value_size=MAX_VALUE_SIZE))
    healthy = await api.get("/_health")
    assert healthy.status == 200
    document = healthy.json()
    assert document["state"] == "ok"
    assert document["node_id"] == opened.node_id
    assert document["backend"] == "memory"
    backend.failing = True
    sick = await api.get("/_health")
    assert sick.status == 503
    assert sick.json()["state"] == "unavailable"
    assert sick.json()["node_id"] == opened.node_id
    head = await api.head("/_health")
    assert (head.status, head.body) == (503, b"")


@pytest_twisted.ensureDeferred
async def test_closed_backend_is_503(api: Api, store: Store) -> None:
    """A closed backend (BackendClosed) makes /_health and key reads answer 503."""
    await api.put("/k", b"v")
    await store.backend.close()
    health = await api.get("/_health")
    assert health.status == 503
    assert health.json()["state"] == "unavailable"
    key = await api.get("/k")
    assert key.status == 503
    assert key.json()["error"] == "backend_unavailable"
    write = await api.put("/k", b"w")
    assert write.status == 503


# -- change notifications -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_api_writes_notify_subscribers(api: Api, store: Store) -> None:
    """Every PUT, POST and DELETE through the API calls the listener with the stored record
    (seq set), refused ones do not, and unsubscribe stops the calls."""
    seen: list[Record] = []
    store.subscribe(seen.append)
    await api.put("/a", b"1")
    await api.post("/b", b"1")
    await api.post("/b", b"2")  # 409
    await api.put("/a", b"2", headers={"If-Match": '"nope"'})  # 412
    await api.put("/c", TOO_LARGE)  # 413
    await api.delete("/missing")  # 404
    await api.put("/a//b", b"1")  # 400
    await api.delete("/a")
    await api.put("/doc/x", b"1")
    await api.delete("/doc/", params=[("recursive", "true")])
    assert [(r.key, r.deleted) for r in seen] == [
        ("/a", False),
        ("/b", False),
        ("/a", True),
        ("/doc/x", False),
        ("/doc/x", True),
    ]
    assert [r.seq for r in seen] == [1, 2, 3, 4, 5]
    assert seen[0].value == b"1"
    store.unsubscribe(seen.append)
    await api.put("/after", b"1")
    assert len(seen) == 5


@pytest_twisted.ensureDeferred
async def test_head_never_resets(api: Api) -> None:
    """HEAD /reset is refused with 405 (HEAD must be safe) and every key survives it."""
    await api.put("/k", b"v")
    answer = await api.request("HEAD", "/reset")
    assert answer.status == 405
    assert answer.header("Allow") == "GET"
    assert await api.keys() == ["k"]


@pytest_twisted.ensureDeferred
async def test_bare_list_flag_lists_the_document(api: Api) -> None:
    """``GET /doc?list`` (a flag with no ``=``) lists the document ``/doc/`` like
    ``/doc/?list``, rather than reading the key ``/doc``."""
    await api.put("/doc", b"the parent")
    await api.put("/doc/a", b"1")
    await api.put("/doc/c/d", b"2")
    await api.put("/docx", b"3")
    answer = await api.get("/doc?list")
    assert answer.status == 200
    assert answer.json() == {"keys": ["/doc/a", "/doc/c/d"], "next": None}


@pytest_twisted.ensureDeferred
async def test_preconditions_come_before_existence(api: Api) -> None:
    """A failed precondition answers 412 even where the method alone would answer 404 or 409
    (RFC 9110 13.2.2): DELETE with If-Match of a missing key, POST with a stale If-Match."""
    gone = await api.request("DELETE", "/missing", headers={"If-Match": '"x"'})
    assert gone.status == 412
    first = await api.put("/k", b"v")
    await api.put("/k", b"w")
    stale = first.header("ETag")
    posted = await api.request("POST", "/k", b"z", headers={"If-Match": stale})
    assert posted.status == 412
    assert (await api.get("/k")).body == b"w"


@pytest_twisted.ensureDeferred
async def test_not_modified_has_no_content_length(api: Api) -> None:
    """A 304 carries the ETag but no body and no misleading ``Content-Length: 0``."""
    put = await api.put("/k", b"value")
    answer = await api.get("/k", headers={"If-None-Match": put.header("ETag")})
    assert answer.status == 304
    assert answer.body == b""
    assert answer.header("Content-Length") is None
    assert answer.header("ETag") == put.header("ETag")


@pytest_twisted.ensureDeferred
async def test_unstorable_content_type_is_a_400(api: Api) -> None:
    """A Content-Type with a control character cannot be stored: the client gets a JSON 400
    ``invalid_record`` (its own mistake, not a 503 backend outage) and nothing is stored."""
    answer = await api.put("/k", b"v", headers={"Content-Type": "text/\x7fplain"})
    assert answer.status == 400, answer
    assert answer.json()["error"] == "invalid_record"
    assert (await api.get("/k")).status == 404

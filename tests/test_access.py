"""Who may do what (navistore.web.access): callers, protected mode, every route family against
every kind of credential, listings and feeds cut to a token's prefixes, browsers, the audit log.

The decisions about a caller's address and ``Host`` are checked on requests made by hand
(``DummyRequest``), since every in-memory client comes from 127.0.0.1; the route table runs
against a node wired by ``build_node`` (every endpoint family, the backend RPC included)
through StubTreq. With ``NAVISTORE_ACCESS_TABLE=<file>`` the table test also writes the
statuses it saw as a Markdown table.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from support.api import ORIGIN, Api, api_resource
from support.nodes import Network, Node, make_clock
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.web.test.requesthelper import DummyRequest

from navistore.clock import Stamp
from navistore.protocol.batches import encode_batch
from navistore.record import Record
from navistore.store import Store
from navistore.tokens import Caller, parse_tokens
from navistore.web import AccessPolicy
from navistore.web.access import AuditLog
from navistore.web.errors import ApiError

SECRETS = {
    "read": "read-token-secret-0001",
    "write": "write-token-secret-002",
    "admin": "admin-token-secret-003",
    "peer": "peer-token-secret-0004",
}
TOKENS = "".join(
    f'[[token]]\nname = "{name}"\nsecret = "{secret}"\nallow = ["{name}"]\n'
    + ('prefixes = ["/app/"]\n' if name in ("read", "write") else "")
    for name, secret in SECRETS.items()
)
FOREIGN = "00000000000000ff"


# -- who asks ---------------------------------------------------------------------------------


def request_from(address: object, host: bytes | None = b"localhost:8888") -> DummyRequest:
    """A request from ``address`` with the given ``Host`` header."""
    request = DummyRequest([b""])
    request.client = address
    if host is not None:
        request.requestHeaders.setRawHeaders(b"Host", [host])
    return request


def refusal(policy: AccessPolicy, request: DummyRequest) -> tuple[int, str] | None:
    """The status and error code ``policy`` refuses ``request`` with, or None."""
    try:
        policy.caller(request)
    except ApiError as error:
        return error.status, error.code
    return None


@pytest.mark.parametrize(
    ("address", "host", "answered"),
    [
        (IPv4Address("TCP", "127.0.0.1", 5000), b"localhost:8888", True),
        (IPv4Address("TCP", "127.8.9.10", 5000), b"127.0.0.1:8888", True),
        (IPv6Address("TCP", "::1", 5000), b"[::1]:8888", True),
        (UNIXAddress(b"/run/navistore.sock"), b"localhost", True),
        (IPv4Address("TCP", "127.0.0.1", 5000), None, True),
        (IPv4Address("TCP", "10.0.0.7", 5000), b"localhost:8888", False),
        (IPv6Address("TCP", "fe80::1", 5000), b"[::1]:8888", False),
        # DNS rebinding: a page of attacker.example reaches a loopback node through the browser.
        (IPv4Address("TCP", "127.0.0.1", 5000), b"attacker.example:8888", False),
        (IPv4Address("TCP", "127.0.0.1", 5000), b"config.lan:8888", False),
    ],
)
def test_protected_mode_answers_loopback_callers_with_a_loopback_host(
    address: object, host: bytes | None, answered: bool
) -> None:
    """Without tokens, only a caller on loopback naming a loopback host is answered; the rest
    get 403 ``protected_mode`` (whose message says how to add tokens)."""
    policy = AccessPolicy()
    result = refusal(policy, request_from(address, host))
    assert (result is None) is answered, result
    if not answered:
        assert result == (403, "protected_mode")
        try:
            policy.caller(request_from(address, host))
        except ApiError as error:
            assert "--tokens" in error.message and "--open" in error.message


def test_allowed_hosts_and_open_mode() -> None:
    """``--allowed-host`` adds a Host name for loopback callers (never a remote caller);
    ``--open`` answers everyone."""
    loopback = IPv4Address("TCP", "127.0.0.1", 5000)
    remote = IPv4Address("TCP", "10.0.0.7", 5000)
    allowed = AccessPolicy(allowed_hosts=["config.lan"])
    assert refusal(allowed, request_from(loopback, b"config.lan:8888")) is None
    assert refusal(allowed, request_from(remote, b"config.lan:8888")) == (403, "protected_mode")
    opened = AccessPolicy.open()
    assert opened.caller(request_from(remote, b"anything")).name == "open"


def test_tokens_decide_who_asks() -> None:
    """With tokens: no Authorization is the anonymous caller (its permissions are
    ``--anonymous``'s); a known bearer secret is its token; anything else is 401 with
    ``WWW-Authenticate: Bearer``, from anywhere."""
    policy = AccessPolicy(tokens=parse_tokens(TOKENS), anonymous=["read"])
    remote = IPv4Address("TCP", "10.0.0.7", 5000)
    request = request_from(remote, b"config.lan")
    assert policy.caller(request) == Caller("anonymous", frozenset({"read"}))
    for header in (b"Bearer " + SECRETS["admin"].encode(), b"bearer  " + SECRETS["admin"].encode()):
        request.requestHeaders.setRawHeaders(b"Authorization", [header])
        assert policy.caller(request).name == "admin"
    for header in (b"Bearer wrong-secret-000000000", b"Basic YWRtaW46eA==", b"Bearer"):
        request.requestHeaders.setRawHeaders(b"Authorization", [header])
        with pytest.raises(ApiError) as refused:
            policy.caller(request)
        assert (refused.value.status, refused.value.code) == (401, "unauthorized")
        assert refused.value.headers[b"WWW-Authenticate"].startswith(b"Bearer")


# -- every route family against every credential ----------------------------------------------

CREDENTIALS = ("none", "read", "write in prefix", "write outside prefix", "admin", "peer")


def batch() -> bytes:
    """A valid pushed batch holding one record of a foreign node, under /app/."""
    record = Record("/app/pushed", b"v", "text/plain", Stamp(1_700_000_000_000, 0, FOREIGN))
    return encode_batch(FOREIGN, [record])


#: Route family -> (method, path with {p} for the prefix, body) and the expected status for
#: each credential, in the order of CREDENTIALS. {p} is /app/ (inside the prefixed tokens'
#: prefix) except in the "write outside prefix" column, where it is /other/.
ROUTES: dict[str, tuple[tuple[str, str, bytes | None], tuple[int, ...]]] = {
    "GET a key": (("GET", "{p}k", None), (401, 200, 403, 403, 403, 403)),
    "PUT a key": (("PUT", "{p}new", b"v"), (401, 403, 201, 403, 403, 403)),
    "POST a key": (("POST", "{p}fresh", b"v"), (401, 403, 201, 403, 403, 403)),
    "DELETE a key": (("DELETE", "{p}k", None), (401, 403, 200, 403, 403, 403)),
    "GET ?wait": (("GET", "{p}k?wait=true&index=0", None), (401, 200, 403, 403, 403, 403)),
    "GET a listing": (("GET", "{p}", None), (401, 200, 403, 403, 403, 403)),
    "GET /_keys": (("GET", "/_keys?prefix={p}", None), (401, 200, 403, 403, 403, 403)),
    "GET /listkeys": (("GET", "/listkeys", None), (401, 200, 403, 403, 403, 403)),
    "DELETE a document": (
        ("DELETE", "{p}?recursive=true", None),
        (401, 403, 200, 403, 403, 403),
    ),
    "DELETE / recursively": (("DELETE", "/?recursive=true", None), (401, 403, 403, 403, 200, 403)),
    "GET /_changes": (("GET", "/_changes?prefix={p}", None), (401, 200, 403, 403, 403, 403)),
    "GET /_changes long-poll": (
        ("GET", "/_changes?feed=longpoll&timeout=0&prefix={p}", None),
        (401, 200, 403, 403, 403, 403),
    ),
    "POST /_bulk": (
        ("POST", "/_bulk", b'[{"key": "{p}b", "value": "v"}]'),
        (401, 403, 200, 403, 403, 403),
    ),
    "GET /reset": (("GET", "/reset", None), (401, 403, 403, 403, 200, 403)),
    "GET /_peers": (("GET", "/_peers", None), (401, 403, 403, 403, 200, 403)),
    "PUT /_peers": (("PUT", "/_peers", b"http://10.0.0.9:8888"), (401, 403, 403, 403, 201, 403)),
    "PUT /_replication_slaves": (
        ("PUT", "/_replication_slaves", b"http://10.0.0.9:8888"),
        (401, 403, 403, 403, 200, 403),
    ),
    "POST /_replicate": (("POST", "/_replicate", b"<batch>"), (401, 403, 403, 403, 403, 200)),
    "GET /_replicate": (("GET", "/_replicate?since=0", None), (401, 403, 403, 403, 403, 200)),
    "GET /_backend_last_seq": (
        ("GET", "/_backend_last_seq", None),
        (401, 403, 403, 403, 403, 200),
    ),
    "GET /_health": (("GET", "/_health", None), (200, 200, 200, 200, 200, 200)),
}


async def node_with_tokens(tmp_path: Path) -> Node:
    """A node wired as the daemon wires it, with the tokens above, serving the backend RPC,
    holding /app/k and /other/k."""
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS)
    clock = make_clock()
    node = await Node.create("node", Network(), clock)
    node.build(tokens_file=str(tokens), serve_backend=True)
    await node.store.put("/app/k", b"app")
    await node.store.put("/other/k", b"other")
    return node


async def status_of(api: Api, request: tuple[str, str, bytes | None], credential: str) -> int:
    method, template, body = request
    prefix = "/other/" if credential == "write outside prefix" else "/app/"
    path = template.replace("{p}", prefix)
    data = body
    if body == b"<batch>":
        data = batch()
    elif body is not None:
        data = body.replace(b"{p}", prefix.encode())
    headers: dict[str, str] = {}
    token = credential.split(" ")[0]
    if token in SECRETS:
        headers["Authorization"] = f"Bearer {SECRETS[token]}"
    answer = await api.request(method, path, data, headers)
    return answer.status


@pytest_twisted.ensureDeferred
async def test_every_route_family_against_every_credential(tmp_path: Path) -> None:
    """Each route family answers each kind of credential as the permission table says: 401
    without a token, 403 for a token lacking the permission or the prefix, and the route's own
    answer otherwise."""
    seen: dict[str, tuple[int, ...]] = {}
    for family, (request, _expected) in ROUTES.items():
        row = []
        for credential in CREDENTIALS:
            node = await node_with_tokens(tmp_path)
            assert node.resource is not None
            row.append(await status_of(Api(node.resource), request, credential))
        seen[family] = tuple(row)
    output = os.environ.get("NAVISTORE_ACCESS_TABLE")
    if output:
        lines = ["| route | " + " | ".join(CREDENTIALS) + " |", "|---" * 7 + "|"]
        lines += [
            f"| {family} | " + " | ".join(map(str, row)) + " |" for family, row in seen.items()
        ]
        Path(output).write_text("\n".join(lines) + "\n")
    assert seen == {family: expected for family, (_request, expected) in ROUTES.items()}


# -- prefixes ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_listings_and_feeds_show_only_the_callers_prefixes(tmp_path: Path) -> None:
    """A read token for /app/ listing / sees only keys under /app/ (paged, with values too);
    a listing or feed of a prefix outside is empty, never others' keys; /listkeys too."""
    node = await node_with_tokens(tmp_path)
    for number in range(5):
        await node.store.put(f"/app/n{number}", b"x")
        await node.store.put(f"/apple/n{number}", b"secret")
    assert node.resource is not None
    api = Api(node.resource)
    read = {"Authorization": f"Bearer {SECRETS['read']}"}
    seen: list[str] = []
    after = ""
    while True:
        page = (await api.get(f"/_keys?prefix=/&limit=2&after={after}", headers=read)).json()
        seen += page["keys"]
        if not page["next"]:
            break
        after = page["next"]
    assert seen == ["/app/k", *(f"/app/n{number}" for number in range(5))]
    assert (await api.get("/other/", headers=read)).json() == {"keys": [], "next": None}
    assert json.loads((await api.get("/listkeys", headers=read)).body) == [key[1:] for key in seen]
    feed = (await api.get("/_changes?prefix=/", headers=read)).json()
    assert {item["key"] for item in feed["results"]} == set(seen)
    assert (await api.get("/_changes?prefix=/apple/", headers=read)).json()["results"] == []


@pytest_twisted.ensureDeferred
async def test_a_bulk_load_partly_outside_the_prefixes_writes_nothing(tmp_path: Path) -> None:
    """A bulk load by a write token for /app/ with one entry outside it is 403 naming that
    entry, and not even the entries inside are written."""
    node = await node_with_tokens(tmp_path)
    before = await node.store.last_seq()
    assert node.resource is not None
    body = json.dumps(
        [{"key": "/app/a", "value": "1"}, {"key": "/elsewhere", "value": "2"}]
    ).encode()
    answer = await Api(node.resource).post(
        "/_bulk", body, headers={"Authorization": f"Bearer {SECRETS['write']}"}
    )
    assert answer.status == 403 and answer.json()["detail"]["index"] == 1
    assert await node.store.last_seq() == before


# -- browsers ---------------------------------------------------------------------------------


def browser_api(store: Store, **policy: Any) -> Api:
    return Api(api_resource(store, access=AccessPolicy(open_mode=True, **policy)))


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/reset", {"Origin": "http://attacker.example"}, 403),
        ("GET", "/reset", {"Sec-Fetch-Site": "cross-site"}, 403),
        ("POST", "/_bulk", {"Origin": "null", "Content-Type": "text/plain"}, 403),
        ("PUT", "/k", {"Origin": "http://attacker.example"}, 403),
        ("DELETE", "/k", {"Origin": "http://attacker.example"}, 403),
        ("GET", "/k", {"Origin": "http://attacker.example"}, 200),
        ("PUT", "/k", {"Origin": "https://ui.example"}, 200),
        ("PUT", "/k", {"Origin": ORIGIN}, 200),
        ("PUT", "/k", {"Sec-Fetch-Site": "same-origin"}, 200),
        ("PUT", "/k", {}, 200),
    ],
)
@pytest_twisted.ensureDeferred
async def test_web_pages_of_other_origins_cannot_change_the_node(
    store: Store, method: str, path: str, headers: Mapping[str, str], status: int
) -> None:
    """A state-changing request (and ``GET /reset``) from a page of another origin is 403
    ``cross_origin`` and changes nothing; its own origin, an allowed one (``--cors-origin``)
    and clients that are no browser are served."""
    await store.put("/k", b"v")
    api = browser_api(store, cors_origins=["https://ui.example"])
    before = await store.last_seq()
    answer = await api.request(method, path, b"[]" if method == "POST" else b"x", headers)
    assert answer.status == status, answer
    if status == 403:
        assert answer.json()["error"] == "cross_origin"
        assert await store.last_seq() == before


@pytest_twisted.ensureDeferred
async def test_allowed_origins_get_cors_answers_and_preflights(store: Store) -> None:
    """An allowed origin gets ``Access-Control-Allow-Origin`` on its answers and a 204
    preflight naming the methods and headers it may send; another origin's preflight is 403."""
    api = browser_api(store, cors_origins=["https://ui.example"])
    origin = {"Origin": "https://ui.example"}
    put = await api.put("/k", b"v", headers=origin)
    assert put.header("Access-Control-Allow-Origin") == "https://ui.example"
    assert "ETag" in (put.header("Access-Control-Expose-Headers") or "")
    preflight = await api.request(
        "OPTIONS", "/k", headers={**origin, "Access-Control-Request-Method": "PUT"}
    )
    assert preflight.status == 204
    assert "PUT" in (preflight.header("Access-Control-Allow-Methods") or "")
    assert "Authorization" in (preflight.header("Access-Control-Allow-Headers") or "")
    other = await api.request(
        "OPTIONS",
        "/k",
        headers={"Origin": "http://attacker.example", "Access-Control-Request-Method": "PUT"},
    )
    assert other.status == 403
    assert (await api.get("/k", headers={"Origin": "http://x"})).header(
        "Access-Control-Allow-Origin"
    ) is None


@pytest_twisted.ensureDeferred
async def test_values_are_served_sandboxed(store: Store) -> None:
    """A stored HTML page is served with ``Content-Security-Policy: sandbox`` and ``nosniff``,
    on the fast path and the general one alike."""
    await store.put("/page", b"<script>fetch('/reset')</script>", "text/html")
    api = browser_api(store)
    for answer in (await api.get("/page"), await api.get("/page?x=1")):
        assert answer.header("Content-Security-Policy") == "sandbox"
        assert answer.header("X-Content-Type-Options") == "nosniff"


# -- the audit log ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_writes_and_admin_actions_are_audited(store: Store) -> None:
    """Every write and admin action, refused ones too once the caller is known, is one JSON
    line: who, from where, what, the status; reads are not logged."""
    log = io.StringIO()
    policy = AccessPolicy(tokens=parse_tokens(TOKENS), audit=AuditLog(log))
    api = Api(api_resource(store, access=policy))
    write = {"Authorization": f"Bearer {SECRETS['write']}"}
    await api.put("/app/x", b"1", headers=write)
    await api.get("/app/x", headers={"Authorization": f"Bearer {SECRETS['read']}"})
    await api.get("/reset", headers={"Authorization": f"Bearer {SECRETS['admin']}"})
    await api.put("/other/x", b"1", headers=write)
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [(e["caller"], e["method"], e["target"], e["status"]) for e in lines] == [
        ("write", "PUT", "/app/x", 201),
        ("admin", "GET", "/reset", 200),
        ("write", "PUT", "/other/x", 403),
    ]
    assert all(e["from"] == "127.0.0.1" and isinstance(e["time"], float) for e in lines)
    assert not any(secret in log.getvalue() for secret in SECRETS.values())

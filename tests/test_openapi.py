"""The OpenAPI document (navistore.web.openapi): complete, committed, served, and in step with the
README. The fuzzing of a real node against it is tests/test_e2e_fuzz.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from support.api import Api
from support.nodes import Network, Node, make_clock

from navistore.web.access import ENDPOINT_PERMISSIONS
from navistore.web.openapi import OPENAPI_PATH, document_bytes, openapi_document

REPOSITORY = Path(__file__).resolve().parent.parent
COMMITTED = REPOSITORY / "docs" / "openapi.json"
SECRET = "openapi-test-secret-0123"
TOKENS = f"""
[[token]]
name = "reader"
secret = "{SECRET}"
allow = ["read"]
"""


def answer_of(document: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """An answer, or the shared one it refers to."""
    reference = answer.get("$ref")
    if reference is None:
        return answer
    found: dict[str, Any] = document["components"]["responses"][reference.rsplit("/", 1)[1]]
    return found


def error_codes(document: dict[str, Any]) -> set[str]:
    """Every error code the document lists, over all its answers."""
    codes: set[str] = set()
    for item in document["paths"].values():
        for found in item.values():
            if not isinstance(found, dict) or "responses" not in found:
                continue
            for answer in found["responses"].values():
                content = answer_of(document, answer).get("content", {})
                schema = content.get("application/json", {}).get("schema", {})
                codes.update(schema.get("properties", {}).get("error", {}).get("enum", []))
    return codes


async def wired_nodes(tmp_path: Path) -> dict[str, Node]:
    """Nodes wired by build_node as the daemon wires them: a plain one (replication, bulk), one
    serving the backend RPC, a cache node and one with tokens."""
    network = Network()
    clock = make_clock()
    nodes: dict[str, Node] = {}
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS)
    for name, options in {
        "plain": {},
        "backend": {"serve_backend": True},
        "cache": {"upstream": "http://plain.test:8888"},
        "tokens": {"tokens_file": str(tokens)},
    }.items():
        node = await Node.create(name, network, clock)
        node.build(**options)
        nodes[name] = node
    return nodes


def test_the_committed_document_is_the_one_the_module_makes() -> None:
    """docs/openapi.json is ``python -m navistore.web.openapi`` run now: regenerate it with
    that command whenever the API changes."""
    assert COMMITTED.read_bytes() == document_bytes(openapi_document()), (
        "docs/openapi.json is out of date: python -m navistore.web.openapi > docs/openapi.json"
    )


@pytest_twisted.ensureDeferred
async def test_every_endpoint_of_a_wired_node_is_in_the_document(tmp_path: Path) -> None:
    """Every endpoint and method of a fully wired node (replication, bulk, backend RPC, cache
    node) is described; so is every method of keys and prefixes. A new endpoint fails here,
    named, until it is documented."""
    paths = openapi_document()["paths"]
    missing = []
    for name, node in (await wired_nodes(tmp_path)).items():
        assert node.resource is not None
        for endpoint, methods in node.resource._endpoints.items():
            item = paths.get("/" + endpoint, {})
            for method in methods:
                if method.decode("ascii").lower() not in item:
                    missing.append(f"{method.decode()} /{endpoint} (on the {name} node)")
    for path, methods in {
        "/{key}": ("get", "head", "put", "post", "delete"),
        "/{prefix}/": ("get", "head", "delete"),
        "/": ("get", "head", "delete"),
    }.items():
        missing.extend(f"{m.upper()} {path}" for m in methods if m not in paths.get(path, {}))
    assert not missing, f"undocumented: {', '.join(sorted(set(missing)))}"


def test_every_endpoint_with_a_permission_is_a_documented_path() -> None:
    """The access table and the document name the same endpoints (no stale entries either
    way), and the public ones need no token in the document."""
    document = openapi_document()
    documented = {path[1:] for path in document["paths"] if path.startswith("/_")}
    documented |= {path[1:] for path in ("/listkeys", "/reset") if path in document["paths"]}
    assert documented == set(ENDPOINT_PERMISSIONS)
    for endpoint, permission in ENDPOINT_PERMISSIONS.items():
        for method, found in document["paths"]["/" + endpoint].items():
            if method != "options":  # a CORS preflight is answered before any token counts
                assert (permission is None) == ({} in found.get("security", [])), endpoint


def test_every_operation_has_an_id_and_the_shared_error_answers() -> None:
    """Operation ids are unique, and every operation lists the refusals made below its route
    (400 bad_request, 401, 403, 408, 414, 431, 503 too_many_connections) with the error body."""
    ids = []
    document = openapi_document()
    for item in document["paths"].values():
        for method, found in item.items():
            if method == "parameters":
                continue
            ids.append(found["operationId"])
            for status in ("400", "401", "403", "408", "414", "431", "503"):
                assert status in found["responses"], (found["operationId"], status)
            timeout = answer_of(document, found["responses"]["408"])
            if method == "head":
                assert "content" not in timeout
            else:
                schema = timeout["content"]["application/json"]["schema"]
                assert schema["allOf"] == [{"$ref": "#/components/schemas/Error"}]
                assert schema["properties"]["error"]["enum"] == ["request_timeout"]
    assert len(ids) == len(set(ids))


def test_the_document_takes_the_limits_it_is_given() -> None:
    """The limits in the document are the node's: a larger value limit grows the bulk and
    replication body limits it states, and the backend RPC is described only when served."""
    small = openapi_document(max_value_size=1000, backend_rpc=False)
    large = openapi_document(max_value_size=100 * 1024 * 1024)
    assert "/_backend_get" not in small["paths"] and "/_backend_get" in large["paths"]
    assert str(100 * 1024 * 1024) in large["paths"]["/{key}"]["put"]["requestBody"]["description"]
    bulk = large["paths"]["/_bulk"]["post"]["description"]
    assert str(100 * 1024 * 1024 * 4 // 3 + 1024 * 1024) in bulk


def test_the_document_loads_as_openapi_3_1() -> None:
    """Schemathesis reads the document and finds every operation well formed."""
    schemathesis = pytest.importorskip("schemathesis", reason="Schemathesis is in the test extra")
    schema = schemathesis.openapi.from_dict(openapi_document())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == sum(
        1 for item in openapi_document()["paths"].values() for name in item if name != "parameters"
    )


def test_the_document_has_every_error_code_of_the_readme() -> None:
    """Every error code the README's error paragraph names is one the document lists."""
    readme = (REPOSITORY / "README.rst").read_text(encoding="utf-8")
    paragraph = readme[readme.index("Every error is JSON, ``{") :]
    paragraph = paragraph[: paragraph.index("A refused request changes nothing.")]
    named = set(re.findall(r"``([a-z_]+)``", paragraph))
    assert named, "the README's error paragraph moved"
    assert named <= error_codes(openapi_document()), named - error_codes(openapi_document())


@pytest_twisted.ensureDeferred
async def test_a_node_serves_its_document_to_anyone_it_answers(tmp_path: Path) -> None:
    """``GET /_openapi.json`` needs no token on a node with tokens, and is the document with the
    node's own limits (no backend RPC unless served)."""
    nodes = await wired_nodes(tmp_path)
    answer = await Api(nodes["tokens"].resource).get(OPENAPI_PATH)
    assert answer.status == 200
    assert answer.header("Content-Type") == "application/json"
    assert answer.json() == json.loads(json.dumps(openapi_document(backend_rpc=False)))
    served = await Api(nodes["backend"].resource).get(OPENAPI_PATH)
    assert "/_backend_apply" in served.json()["paths"]
    head = await Api(nodes["plain"].resource).head(OPENAPI_PATH)
    assert (head.status, head.body) == (200, b"")
    refused = await Api(nodes["plain"].resource).put(OPENAPI_PATH, b"{}")
    assert (refused.status, refused.json()["error"]) == (405, "method_not_allowed")


#: Codes no answer carries: base classes of typed errors, and the 500 of a bug.
_NEVER_ANSWERED = {"store_error", "hook_error", "watch_refused", "upstream_refused"}
_RAISED = re.compile(
    r'(?:BadRequest|ApiError|refuse|refusal)\(\s*(?:[0-9]+,\s*)?"([a-z_]+)"|code = "([a-z_]+)"'
)


def test_every_error_code_the_node_raises_is_in_the_document() -> None:
    """Every error code in the node's source (an ApiError, a typed error's ``code``, a
    connection's refusal) is one the document lists, so that a new code cannot go undocumented;
    only a 500 (``internal_error``, a bug) is left out."""
    raised: set[str] = set()
    for path in (REPOSITORY / "navistore").rglob("*.py"):
        if "testing" in path.parts:
            continue
        for found in _RAISED.finditer(path.read_text(encoding="utf-8")):
            raised.add(found.group(1) or found.group(2))
    assert {"invalid_key", "too_many_connections", "malformed_batch"} <= raised
    missing = raised - _NEVER_ANSWERED - {"internal_error"} - error_codes(openapi_document())
    assert not missing, f"error codes not in the document: {sorted(missing)}"


@pytest_twisted.ensureDeferred
async def test_a_preflight_answers_the_headers_the_document_lists() -> None:
    """An allowed origin's preflight gets 204 with every header the document says it carries;
    an OPTIONS that is no preflight is the 405 the document lists."""
    node = await Node.create("cors", Network(), make_clock())
    node.build(cors_origins=("https://app.example",))
    api = Api(node.resource)
    described = openapi_document()["paths"]["/{key}"]["options"]["responses"]
    answer = await api.request(
        "OPTIONS",
        "/app/k",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "PUT"},
    )
    assert answer.status == 204
    for name in described["204"]["headers"]:
        assert answer.header(name), name
    plain = await api.request("OPTIONS", "/app/k")
    assert plain.status == 405 and "405" in described

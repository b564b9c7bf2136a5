"""The API described as an OpenAPI 3.1 document, served at ``GET /_openapi.json``.

The document is built here as a dict, from the same constants the server enforces (page sizes,
wait bounds, body limits, the error codes of each route), so that it cannot drift from what the
node does; ``tests/test_openapi.py`` checks that every endpoint a fully wired node serves is in
it, and Schemathesis fuzzes a real node against it. ``docs/openapi.json`` is the document with
the default limits, written out::

    python -m navistore.web.openapi > docs/openapi.json

Adding an endpoint: describe each of its methods with :func:`operation` (its parameters, body,
answers and the error codes it raises) and add the path in :func:`openapi_document`; the
completeness test names any endpoint that is still missing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from navistore import __version__
from navistore.keys import DEFAULT_MAX_KEY_BYTES
from navistore.protocol.records import VALUE_ENCODINGS
from navistore.record import DEFAULT_MAX_VALUE_SIZE, MAX_FLAGS, MAX_REPLACES
from navistore.store.core import MAX_TTL_MS
from navistore.watch_hub import DEFAULT_MAX_WATCHERS
from navistore.web.backend_rpc import MAX_PAGE as RPC_MAX_PAGE
from navistore.web.backend_rpc import PAGE_BYTES as RPC_PAGE_BYTES
from navistore.web.bulk import MAX_ENTRIES
from navistore.web.channel import NavistoreChannel
from navistore.web.feeds import DEFAULT_WAIT, FEEDS, MAX_WAIT
from navistore.web.key_routes import DEFAULT_REPLICA_TIMEOUT, MAX_REPLICA_TIMEOUT
from navistore.web.params import DEFAULT_PAGE, MAX_INTEGER, MAX_PAGE
from navistore.web.request import bulk_body_limit, replication_body_limit
from navistore.web.responses import Endpoints, Response, json_bytes
from navistore.web.txn import MAX_OPERATIONS as TXN_OPERATIONS

__all__ = [
    "OPENAPI_PATH",
    "document_bytes",
    "error_response",
    "openapi_document",
    "openapi_endpoints",
    "operation",
]

#: Where a node serves its document (the endpoint's name is this without the ``/``).
OPENAPI_PATH = "/_openapi.json"

Schema = dict[str, Any]

_JSON = "application/json"
_TEXT = "text/plain"
_REF = "#/components/schemas/"

#: What each status means, for every answer the document lists.
_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    204: "No Content",
    304: "Not Modified: the stored version matches If-None-Match",
    400: "Bad Request",
    401: "Unauthorized: no token, or one this node does not know",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout: the headers or the body came too slowly (the connection closes)",
    409: "Conflict",
    410: "Gone: the position is older than the tombstone purge horizon; resync",
    412: "Precondition Failed",
    413: "Payload Too Large",
    414: "URI Too Long: the request line is over the limit (the connection closes)",
    431: "Request Header Fields Too Large (the connection closes)",
    503: "Service Unavailable",
    504: "Gateway Timeout: the write is stored here, not yet on the peers asked for",
}

#: Headers some error answers carry.
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": 'Always ``Bearer realm="navistore"``.',
            "required": True,
            "schema": {"type": "string"},
        }
    },
    405: {
        "Allow": {
            "description": "The methods the route allows.",
            "required": True,
            "schema": {"type": "string"},
        }
    },
    503: {
        "Retry-After": {
            "description": "Seconds to wait (too_many_connections, too_many_watchers, "
            "shutting_down).",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    },
}

#: What every request may be refused with before its route is reached: by the connection
#: (:mod:`navistore.web.channel`) and by the access checks (:mod:`navistore.web.access`).
_EVERY_ROUTE: dict[int, tuple[str, ...]] = {
    400: ("bad_request",),
    401: ("unauthorized",),
    403: ("forbidden", "protected_mode", "cross_origin"),
    408: ("request_timeout",),
    414: ("uri_too_long",),
    431: ("headers_too_large",),
    503: ("too_many_connections",),
}
#: Refusals of every route that reads the Store.
_STORE = {503: ("backend_unavailable",)}
#: Refusals of every route that reads the query string (a query that is not UTF-8).
_QUERY = {400: ("invalid_parameter",)}
#: Refusals of a route with a body.
_BODY = {413: ("value_too_large",)}
#: Refusals of a watch (long-poll, ``?wait=true``).
_WATCH = {
    400: ("invalid_parameter",),
    410: ("resync_required",),
    503: ("too_many_watchers", "shutting_down"),
}
#: What a cache node answers when its upstream cannot be reached, or names the node itself.
_UPSTREAM = {503: ("upstream_unavailable", "upstream_is_self")}
#: What a cache node answers a write it cannot forward (a target not in origin form).
_FORWARDED = {**_UPSTREAM, 400: ("invalid_target",)}


def _ref(name: str) -> Schema:
    return {"$ref": _REF + name}


def _merge(*tables: Mapping[int, Iterable[str]]) -> dict[int, list[str]]:
    merged: dict[int, list[str]] = {}
    for table in tables:
        for status, codes in table.items():
            known = merged.setdefault(status, [])
            known.extend(code for code in codes if code not in known)
    return merged


def error_response(status: int, codes: Iterable[str], *, head: bool = False) -> Schema:
    """The answer of ``status`` carrying the shared error body, ``error`` one of ``codes``."""
    names = sorted(set(codes))
    answer: Schema = {"description": f"{_STATUS_TEXT[status]}: {', '.join(names)}"}
    if status in _ERROR_HEADERS:
        answer["headers"] = _ERROR_HEADERS[status]
    if not head:  # a HEAD answer has the headers of its GET and no body
        schema = {"allOf": [_ref("Error")], "properties": {"error": {"enum": names}}}
        answer["content"] = {_JSON: {"schema": schema}}
    return answer


def _json(schema: Schema, description: str, headers: Mapping[str, Any] | None = None) -> Schema:
    answer: Schema = {"description": description, "content": {_JSON: {"schema": schema}}}
    if headers:
        answer["headers"] = dict(headers)
    return answer


def _text(description: str, headers: Mapping[str, Any] | None = None) -> Schema:
    answer: Schema = {
        "description": description,
        "content": {_TEXT: {"schema": {"type": "string"}}},
    }
    if headers:
        answer["headers"] = dict(headers)
    return answer


def operation(
    operation_id: str,
    summary: str,
    *,
    tag: str,
    answers: Mapping[int, Schema],
    errors: Iterable[Mapping[int, Iterable[str]]] = (),
    parameters: Iterable[Schema] = (),
    body: Schema | None = None,
    public: bool = False,
    head: bool = False,
    description: str | None = None,
) -> Schema:
    """One operation: its answers, and every error it may answer with (the refusals of
    every route are added here).

    :param answers: the successful (and 304) answers by status.
    :param errors: tables of status to error codes, merged.
    :param body: the ``requestBody`` (a route with a body may also be refused with 413).
    :param public: needs no permission (anyone the node answers may call it).
    :param head: a HEAD operation: answers without bodies.
    """
    tables = [_EVERY_ROUTE, *errors]
    if body is not None:
        tables.append(_BODY)
    found: Schema = {"operationId": operation_id, "summary": summary, "tags": [tag]}
    if description:
        found["description"] = description
    params = list(parameters)
    if params:
        found["parameters"] = params
    if body is not None:
        found["requestBody"] = body
    if public:
        found["security"] = [{}, {"bearer": []}]
    responses: dict[str, Schema] = {}
    for status, answer in answers.items():
        if head:
            answer = {name: part for name, part in answer.items() if name != "content"}
        responses[str(status)] = answer
    for status, codes in sorted(_merge(*tables).items()):
        if sorted(codes) == sorted(_EVERY_ROUTE.get(status, ())):
            responses[str(status)] = {"$ref": "#/components/responses/" + _shared(status, head)}
        else:
            responses[str(status)] = error_response(status, codes, head=head)
    found["responses"] = dict(sorted(responses.items()))
    return found


def _shared(status: int, head: bool) -> str:
    """The name of the shared answer of ``status`` with the codes every route has."""
    return f"{'Head' if head else ''}Refused{status}"


def _shared_responses() -> dict[str, Schema]:
    return {
        _shared(status, head): error_response(status, codes, head=head)
        for status, codes in sorted(_EVERY_ROUTE.items())
        for head in (False, True)
    }


_PREFLIGHT_HEADERS = {
    name: {"description": description, "required": True, "schema": {"type": "string"}}
    for name, description in (
        ("Access-Control-Allow-Origin", "The origin, allowed."),
        ("Access-Control-Allow-Methods", "The methods a page of that origin may send."),
        ("Access-Control-Allow-Headers", "The request headers it may send."),
        ("Access-Control-Max-Age", "Seconds the browser may keep this answer."),
        ("Vary", "``Origin``."),
    )
}


def _preflight(operation_id: str, routed: bool) -> Schema:
    """The CORS preflight every path answers (before any token is checked); ``routed``: the
    path is a key's or a prefix's."""
    return operation(
        f"preflight_{operation_id}",
        "CORS preflight",
        tag="cors",
        description=(
            "Answered for the node's own origin and those given with ``--cors-origin``; "
            "403 cross_origin for any other. An OPTIONS that is no preflight (no "
            "``Access-Control-Request-Method``) is 405."
        ),
        public=True,
        parameters=[
            {**_header("Origin", "The page's origin."), "required": True},
            {
                **_header("Access-Control-Request-Method", "The method the page will send."),
                "required": True,
            },
            _header("Access-Control-Request-Headers", "The headers the page will send."),
        ],
        answers={204: {"description": "The origin may send it.", "headers": _PREFLIGHT_HEADERS}},
        errors=(
            {405: ("method_not_allowed",)},
            # An OPTIONS that is no preflight is routed: a path that is no key is refused.
            {400: ("invalid_key", "invalid_parameter"), 404: ("unknown_endpoint",)}
            if routed
            else {},
        ),
    )


def _query(
    name: str, schema: Schema, description: str, *, required: bool = False
) -> dict[str, Any]:
    parameter = {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }
    if schema.get("type") in ("integer", "number") or "anyOf" in schema:
        parameter["allowEmptyValue"] = True  # a number left empty (``?limit=``) is its default
    return parameter


def _header(name: str, description: str, schema: Schema | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _whole(maximum: int = MAX_INTEGER, minimum: int = 0, default: int | None = None) -> Schema:
    schema: Schema = {"type": "integer", "minimum": minimum, "maximum": maximum}
    if default is not None:
        schema["default"] = default
    return schema


_FLAG: Schema = {
    "type": "string",
    "description": "true when '', 1, true, yes or on (any case); false otherwise",
}
_FLAG_TEXT = " (a flag: present, or ``1``, ``true``, ``yes``, ``on``)"


def _limit(maximum: int = MAX_PAGE) -> dict[str, Any]:
    return _query(
        "limit", _whole(maximum, 1, DEFAULT_PAGE), f"Entries a page holds, 1 to {maximum}."
    )


def _since(what: str = "seq") -> dict[str, Any]:
    return _query("since", _whole(default=0), f"Changes after this {what}.")


def _timeout(default: float = DEFAULT_WAIT) -> dict[str, Any]:
    return _query(
        "timeout",
        {"type": "number", "minimum": 0, "maximum": MAX_WAIT, "default": default},
        f"Seconds to wait at most (fractions allowed), default {default:g}.",
    )


_HORIZON = _query(
    "horizon",
    _whole(),
    "The purge horizon (``purged_before``) seen on the first page of a read from 0: refused "
    "with 410 only if tombstones were purged since.",
)
_PREFIX_ARG = _query(
    "prefix", {"type": "string", "default": "/"}, "Only keys under this prefix (ends with /)."
)
_AFTER = _query("after", {"type": "string"}, "Resume after this key (the previous ``next``).")
_VALUES = _query("values", _FLAG, "Each entry carries its value" + _FLAG_TEXT + ".")

_IF_MATCH = _header(
    "If-Match", 'Write only if the stored version is one of these ETags (``"<stamp>"``) or ``*``.'
)
_IF_NONE_MATCH_READ = _header(
    "If-None-Match", "304 when the stored version is one of these ETags (or ``*``)."
)
_IF_NONE_MATCH_WRITE = _header(
    "If-None-Match",
    "``*``: write only if the key is absent; ETags: only if it is at none of them.",
)


def _replicas() -> list[dict[str, Any]]:
    return [
        _query(
            "replicas",
            {
                "anyOf": [
                    {"type": "integer", "minimum": 0, "maximum": MAX_INTEGER},
                    {"type": "string", "enum": ["all"]},
                ]
            },
            "Answer once this many peers (``all``: every peer) hold the write; 504 past "
            "``timeout``.",
        ),
        _query(
            "timeout",
            _whole(MAX_REPLICA_TIMEOUT, default=DEFAULT_REPLICA_TIMEOUT),
            f"Whole seconds a ``replicas`` write waits, at most {MAX_REPLICA_TIMEOUT}.",
        ),
    ]


_VERSION_HEADERS = {
    "ETag": {
        "description": 'The version: ``"<stamp>"``.',
        "required": True,
        "schema": {"type": "string"},
    },
    "Last-Modified": {
        "description": "The wall time of the version's stamp.",
        "required": True,
        "schema": {"type": "string"},
    },
}
_SEQ_HEADER = {
    "X-Navistore-Seq": {
        "description": "The seq this answer is current at: wait after it next time.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
_CACHE_HEADERS = {
    "X-Navistore-Source": {
        "description": "The node that answered a key this node lacks (cache node, read fallback).",
        "schema": {"type": "string"},
    },
    "X-Navistore-Stale-Seconds": {
        "description": "A cache node: seconds since its copies last matched the upstream.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
}
_INDEX_HEADER = {
    "X-Navistore-Index": {
        "description": "Every answer's: the node's newest seq as the answer was made (watch "
        "after it to miss nothing).",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
_READ_HEADERS = {
    **{name: {**header, "required": False} for name, header in _VERSION_HEADERS.items()},
    **_SEQ_HEADER,
    **_CACHE_HEADERS,
    **_INDEX_HEADER,
    "X-Navistore-Expires": {
        "description": "A key written with a TTL: whole seconds left (rounded up).",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "X-Navistore-Flags": {
        "description": "A key's flags, when not 0.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
}


_STAMP_PATTERN = "[0-9a-f]{12}-[0-9a-f]{6}-[0-9a-f]{16}"


def _schemas(max_value_size: int) -> dict[str, Schema]:
    stamp = {"type": "string", "pattern": f"^{_STAMP_PATTERN}$"}
    node_id = {"type": "string", "pattern": "^[0-9a-f]{16}$"}
    seq = {"type": "integer", "minimum": 0, "maximum": MAX_INTEGER}
    record = {
        "type": "object",
        "description": "A record on the wire, its value in base64.",
        "required": ["key", "value", "content_type", "stamp", "deleted", "chain"],
        "properties": {
            "key": {"type": "string"},
            "value": {"type": "string", "contentEncoding": "base64"},
            "content_type": {"type": "string"},
            "stamp": _ref("Stamp"),
            "deleted": {"type": "boolean"},
            "chain": {"type": "array", "items": _ref("NodeId")},
            "seq": {"anyOf": [seq, {"type": "null"}]},
            "expires_ms": {**seq, "description": "A TTL's deadline (ms since the epoch)."},
            "flags": {"type": "integer", "minimum": 0, "maximum": MAX_FLAGS},
            "replaces": {
                "type": "array",
                "maxItems": MAX_REPLACES,
                "items": _ref("Stamp"),
                "description": "What the writer had seen of the key: per other node, its "
                "newest stamp (see README Conflicts).",
            },
        },
    }
    entry = {
        "type": "object",
        "description": "A value as a listing with ``values=true`` shows it.",
        "required": ["key", "version", "content_type", "value", "encoding"],
        "properties": {
            "key": {"type": "string"},
            "version": _ref("Stamp"),
            "content_type": {"type": "string"},
            "value": {"type": "string"},
            "encoding": {"type": "string", "enum": list(VALUE_ENCODINGS)},
            "expires_ms": {**seq, "description": "A TTL's deadline (ms since the epoch)."},
            "flags": {"type": "integer", "minimum": 1, "maximum": MAX_FLAGS},
        },
        "additionalProperties": False,
    }
    change = {
        "type": "object",
        "required": ["seq", "key", "stamp", "deleted"],
        "properties": {
            "seq": seq,
            "key": {"type": "string"},
            "stamp": _ref("Stamp"),
            "deleted": {"type": "boolean"},
            "expired": {"type": "boolean", "enum": [True], "description": "A TTL's expiry."},
        },
        "additionalProperties": False,
    }
    return {
        "Error": {
            "type": "object",
            "description": "Every error answer's body; ``error`` is a stable code.",
            "required": ["error", "message"],
            "properties": {
                "error": {"type": "string"},
                "message": {"type": "string"},
                "detail": {"description": "More about the error (its fields vary by code)."},
            },
            "additionalProperties": False,
        },
        "Stamp": {**stamp, "description": "A hybrid-logical-clock stamp: the version."},
        "NodeId": {**node_id, "description": "A node id: 16 lowercase hex digits."},
        "Record": record,
        "ValueEntry": entry,
        "Change": change,
        "Loser": {
            "type": "object",
            "required": [
                "version",
                "node",
                "deleted",
                "value",
                "encoding",
                "content_type",
                "flags",
                "expires_ms",
            ],
            "properties": {
                "version": {"type": "string", "description": "The losing write's version."},
                "node": {"type": "string", "description": "The node that wrote it."},
                "deleted": {"type": "boolean", "description": "The losing write was a delete."},
                "value": {"type": "string"},
                "encoding": {"type": "string", "enum": ["utf-8", "base64"]},
                "content_type": {"type": "string"},
                "flags": {"type": "integer", "minimum": 0, "maximum": MAX_FLAGS},
                "expires_ms": {
                    "type": ["integer", "null"],
                    "description": "When the loser is forgotten (ms since 1970).",
                },
            },
            "additionalProperties": False,
        },
        "Conflicts": {
            "type": "object",
            "required": ["key", "version", "conflicts"],
            "properties": {
                "key": {"type": "string"},
                "version": {
                    "type": ["string", "null"],
                    "description": "The key's version now; null when it is absent.",
                },
                "conflicts": {"type": "array", "items": _ref("Loser")},
            },
            "additionalProperties": False,
        },
        "ConflictKeys": {
            "type": "object",
            "required": ["keys", "next"],
            "properties": {
                "keys": {
                    "type": "array",
                    "maxItems": MAX_PAGE,
                    "items": {
                        "type": "object",
                        "required": ["key", "conflicts"],
                        "properties": {
                            "key": {"type": "string"},
                            "conflicts": {"type": "integer", "minimum": 1},
                        },
                        "additionalProperties": False,
                    },
                },
                "next": {
                    "type": ["string", "null"],
                    "description": "Pass as ``after`` for the next page; null at the end.",
                },
            },
            "additionalProperties": False,
        },
        "KeysPage": {
            "type": "object",
            "required": ["keys", "next"],
            "properties": {
                "keys": {
                    "type": "array",
                    "maxItems": MAX_PAGE,
                    "items": {"anyOf": [{"type": "string"}, _ref("ValueEntry")]},
                },
                "next": {
                    "type": ["string", "null"],
                    "description": "Pass as ``after`` for the next page; null at the end.",
                },
            },
            "additionalProperties": False,
        },
        "Changes": {
            "type": "object",
            "required": ["last_seq", "results"],
            "properties": {
                "last_seq": seq,
                "results": {"type": "array", "items": _ref("Change")},
                "purged_before": {**seq, "description": "The tombstone purge horizon."},
            },
            "additionalProperties": False,
        },
        "Health": {
            "type": "object",
            "required": ["status", "node_id", "version", "backend", "state"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "unavailable"]},
                "state": {"type": "string", "enum": ["ok", "unavailable"]},
                "node_id": _ref("NodeId"),
                "version": {"type": "string"},
                "backend": {"type": "string", "description": "The backend's kind."},
                "last_seq": seq,
                "error": {"type": "string"},
            },
        },
        "Ready": {
            "type": "object",
            "required": ["ready", "status", "node_id", "reasons", "checks"],
            "properties": {
                "ready": {"type": "boolean"},
                "status": {"type": "string", "enum": ["ready", "not_ready"]},
                "node_id": _ref("NodeId"),
                "reasons": {
                    "type": "array",
                    "description": "The checks that fail, each with why.",
                    "items": {
                        "type": "object",
                        "required": ["check", "message"],
                        "properties": {
                            "check": {
                                "type": "string",
                                "enum": ["backend", "clone", "upstream", "shutdown"],
                            },
                            "message": {"type": "string"},
                        },
                    },
                },
                "checks": {
                    "type": "object",
                    "description": "Every check (backend, clone, upstream, shutdown) with "
                    "``ok``, ``message`` and what it measured.",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["ok", "message"],
                        "properties": {
                            "ok": {"type": "boolean"},
                            "message": {"type": "string"},
                        },
                    },
                },
            },
        },
        "PutAnswer": {
            "type": "object",
            "required": ["key", "version", "created"],
            "properties": {
                "key": {"type": "string"},
                "version": _ref("Stamp"),
                "created": {"type": "boolean"},
            },
            "additionalProperties": False,
        },
        "DeleteAnswer": {
            "type": "object",
            "required": ["key", "version", "deleted"],
            "properties": {
                "key": {"type": "string"},
                "version": _ref("Stamp"),
                "deleted": {"const": True},
            },
            "additionalProperties": False,
        },
        "PrefixDeleted": {
            "type": "object",
            "required": ["prefix", "deleted"],
            "properties": {
                "prefix": {"type": "string"},
                "deleted": {"type": "integer", "minimum": 0},
            },
            "additionalProperties": False,
        },
        "BulkEntry": {
            "type": "object",
            "required": ["key", "value"],
            "properties": {
                "key": {"type": "string"},
                "value": {"type": "string", "description": f"At most {max_value_size} bytes."},
                "encoding": {"type": ["string", "null"], "enum": [*VALUE_ENCODINGS, None]},
                "content_type": {"type": ["string", "null"]},
                "version": {"description": "Ignored: every entry gets a fresh version."},
            },
            "additionalProperties": False,
        },
        "BulkAnswer": {
            "type": "object",
            "required": ["received", "written"],
            "properties": {
                "received": {"type": "integer", "minimum": 0},
                "written": {"type": "integer", "minimum": 0},
                "records": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["key", "version", "seq"],
                        "properties": {
                            "key": {"type": "string"},
                            "version": _ref("Stamp"),
                            "seq": seq,
                        },
                    },
                },
            },
            "additionalProperties": False,
        },
        "Batch": {
            "type": "object",
            "description": "A replication batch (pushed, or a pulled page).",
            "required": ["source", "records"],
            "properties": {
                "source": _ref("NodeId"),
                "records": {"type": "array", "items": _ref("Record")},
                "last_seq": {"anyOf": [seq, {"type": "null"}]},
                "purged_before": {"anyOf": [seq, {"type": "null"}]},
                "more": {"type": ["boolean", "null"]},
            },
        },
        "Ack": {
            "type": "object",
            "required": ["node_id", "received", "applied"],
            "properties": {
                "node_id": _ref("NodeId"),
                "received": {"type": "integer", "minimum": 0},
                "applied": {"type": "integer", "minimum": 0},
            },
            "additionalProperties": False,
        },
        "PeerStatus": {
            "type": "object",
            "required": ["url", "state", "role"],
            "properties": {
                "url": {"type": "string"},
                "role": {"type": "string", "enum": ["push", "pull"]},
                "state": {"type": "string"},
                "node_id": {"anyOf": [_ref("NodeId"), {"type": "null"}]},
                "cursor": seq,
                "lag_changes": {"type": "integer", "minimum": 0},
                "lag_seconds": {"type": "number", "minimum": 0},
                "last_error": {"type": ["string", "null"]},
                "last_success": {"type": ["string", "null"]},
                "retry_at": {"type": ["string", "null"]},
                "failures": {"type": "integer", "minimum": 0},
            },
        },
        "RecordPage": {
            "type": "object",
            "required": ["records", "truncated"],
            "properties": {
                "records": {"type": "array", "maxItems": RPC_MAX_PAGE, "items": _ref("Record")},
                "truncated": {"type": "boolean"},
            },
            "additionalProperties": False,
        },
    }


# -- the routes ---------------------------------------------------------------------------------


def _key_paths(max_value_size: int, max_key_bytes: int) -> dict[str, Schema]:
    key = {
        "name": "key",
        "in": "path",
        "required": True,
        "description": (
            f"A key: ``/``-separated UTF-8 segments, at most {max_key_bytes} bytes with its "
            "leading ``/``; no empty, ``.`` or ``..`` segment, no control or format character; "
            "a first segment starting with ``_`` is reserved (404 unknown_endpoint), and the "
            "names of routes (``listkeys``, ``reset``) answer as those routes."
        ),
        "schema": {"type": "string", "minLength": 1},
    }
    key_errors = (_STORE, _QUERY, {400: ("invalid_key",), 404: ("unknown_endpoint",)})
    write_errors = (
        *key_errors,
        _FORWARDED,
        {
            400: ("invalid_record", "ttl_unsupported"),
            405: ("method_not_allowed",),
            412: ("precondition_failed",),
            504: ("replicas_timeout", "replicas_unavailable"),
        },
    )
    value_body = {
        "description": f"The value: any bytes, at most {max_value_size}, stored with the "
        "request's Content-Type.",
        "required": False,
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            _TEXT: {"schema": {"type": "string"}},
            _JSON: {"schema": {}},
        },
    }
    wait = [
        _query(
            "wait",
            _FLAG,
            "Answer once the key changed after ``index``" + _FLAG_TEXT + ", with "
            "``X-Navistore-Seq``; at the timeout, its current state.",
        ),
        _query("index", _whole(), "With ``wait``: changes after this seq (default: the last)."),
        _timeout(),
        _query(
            "list",
            {"type": "string"},
            "Present (whatever its value): list the keys under ``<key>/`` instead (see "
            "``/{prefix}/``).",
        ),
        _AFTER,
        _limit(),
        _VALUES,
        _query(
            "conflicts",
            _FLAG,
            "Answer the losers of concurrent writes kept for the key (Conflicts, JSON), "
            "whether or not the key exists" + _FLAG_TEXT + ".",
        ),
    ]
    read_answers = {
        200: {
            "description": "The value with its stored Content-Type (any), with ``list`` "
            "the listing (KeysPage), with ``conflicts`` its losers (Conflicts).",
            "headers": _READ_HEADERS,
            "content": {"*/*": {"schema": {}}},
        },
        304: {"description": _STATUS_TEXT[304], "headers": _READ_HEADERS},
    }
    read_errors = (
        *key_errors,
        _WATCH,
        _UPSTREAM,
        {404: ("not_found",), 405: ("method_not_allowed",)},
    )
    put_answer = {
        200: _written("Replaced"),
        201: _written("Created"),
    }
    write_params = [*_replicas()]
    value_params = [
        _query(
            "ttl",
            _whole(MAX_TTL_MS // 1000, 1),
            "Whole seconds until the key expires, on every node (``X-Navistore-Expires`` "
            "says what is left); an expired key reads as absent and its expiry is a delete.",
        ),
        _query("flags", _whole(MAX_FLAGS), "An opaque 64-bit number kept with the value."),
    ]
    key_get = operation(
        "get_key",
        "Read a key's value",
        tag="keys",
        parameters=[*wait, _IF_NONE_MATCH_READ],
        answers=read_answers,
        errors=read_errors,
    )
    return {
        "/{key}": {
            "parameters": [key],
            "get": key_get,
            "head": operation(
                "head_key",
                "A key's headers",
                tag="keys",
                parameters=[*wait, _IF_NONE_MATCH_READ],
                answers=read_answers,
                errors=read_errors,
                head=True,
            ),
            "put": operation(
                "put_key",
                "Write a key's value",
                tag="keys",
                parameters=[*write_params, *value_params, _IF_MATCH, _IF_NONE_MATCH_WRITE],
                body=value_body,
                answers=put_answer,
                errors=write_errors,
            ),
            "post": operation(
                "create_key",
                "Create a key (409 if it exists)",
                tag="keys",
                parameters=[*write_params, *value_params, _IF_MATCH, _IF_NONE_MATCH_WRITE],
                body=value_body,
                answers={201: _written("Created")},
                errors=(*write_errors, {409: ("conflict",)}),
            ),
            "delete": operation(
                "delete_key",
                "Delete a key (its tombstone replicates)",
                tag="keys",
                parameters=[*write_params, _IF_MATCH, _IF_NONE_MATCH_WRITE],
                answers={
                    200: {
                        "description": "Deleted: ``OK``, or DeleteAnswer with "
                        "``Accept: application/json``",
                        "content": {
                            _TEXT: {"schema": {"type": "string"}},
                            _JSON: {"schema": _ref("DeleteAnswer")},
                        },
                    }
                },
                errors=(*write_errors, {404: ("not_found",)}),
            ),
        }
    }


def _written(what: str) -> Schema:
    return {
        "description": f"{what}: ``OK``, or PutAnswer with ``Accept: application/json``.",
        "headers": _VERSION_HEADERS,
        "content": {
            _TEXT: {"schema": {"type": "string"}},
            _JSON: {"schema": _ref("PutAnswer")},
        },
    }


def _listing_params() -> list[dict[str, Any]]:
    return [_AFTER, _limit(), _VALUES]


def _prefix_paths() -> dict[str, Schema]:
    prefix = {
        "name": "prefix",
        "in": "path",
        "required": True,
        "description": "A document: its keys are those under ``/<prefix>/``.",
        "schema": {"type": "string", "minLength": 1},
    }
    wait = [
        _query(
            "wait",
            _FLAG,
            "Answer once something under the prefix changed after ``index``" + _FLAG_TEXT + ".",
        ),
        _query("index", _whole(), "With ``wait``: changes after this seq (default: the last)."),
        _timeout(),
    ]
    listing = {
        200: _json(
            _ref("KeysPage"), "A page of the keys under the prefix, in key order.", {**_SEQ_HEADER}
        )
    }
    list_errors = (_STORE, _QUERY, _WATCH, {400: ("invalid_key",), 404: ("unknown_endpoint",)})
    paths: dict[str, Schema] = {}
    for path, parameters, name in (("/", [], "root"), ("/{prefix}/", [prefix], "prefix")):
        item: Schema = {
            "get": operation(
                f"list_{name}",
                "List the keys under a prefix",
                tag="keys",
                parameters=[*_listing_params(), *wait],
                answers=listing,
                errors=list_errors,
            ),
            "head": operation(
                f"head_{name}",
                "A listing's headers",
                tag="keys",
                parameters=[*_listing_params(), *wait],
                answers=listing,
                errors=list_errors,
                head=True,
            ),
            "delete": operation(
                f"delete_{name}",
                "Delete a document and every sub-document",
                tag="keys",
                description="Needs ``recursive=true``; deleting ``/`` needs ``admin``.",
                parameters=[
                    _query(
                        "recursive",
                        _FLAG,
                        "Must be true" + _FLAG_TEXT + ": else 400 recursive_required.",
                    )
                ],
                answers={200: _json(_ref("PrefixDeleted"), "How many keys were deleted.")},
                errors=(
                    _STORE,
                    _QUERY,
                    _FORWARDED,
                    {400: ("invalid_key", "recursive_required"), 404: ("unknown_endpoint",)},
                ),
            ),
        }
        if parameters:
            item["parameters"] = parameters
        paths[path] = item
    return paths


def _read_pair(
    operation_id: str, summary: str, *, tag: str, answers: Mapping[int, Schema], **options: Any
) -> dict[str, Schema]:
    """GET and HEAD of one read endpoint."""
    return {
        "get": operation(operation_id, summary, tag=tag, answers=answers, **options),
        "head": operation(
            f"head_{operation_id}", summary, tag=tag, answers=answers, head=True, **options
        ),
    }


def _node_paths() -> dict[str, Schema]:
    feeds = [
        _since(),
        _limit(),
        _PREFIX_ARG,
        _query(
            "feed",
            {"type": "string", "enum": list(FEEDS), "default": "normal"},
            "``normal`` answers at once; ``longpoll`` waits for a change under ``prefix``; "
            "``eventsource`` streams Server-Sent Events (GET only).",
        ),
        _timeout(),
        _HORIZON,
        _header(
            "Last-Event-ID",
            "``feed=eventsource``: resume after this seq.",
            {"type": "string", "pattern": "^[0-9]{0,19}$"},
        ),
    ]
    changes_get = operation(
        "changes",
        "The change feed",
        tag="feeds",
        parameters=feeds,
        answers={
            200: {
                "description": "The changes after ``since`` in seq order (``eventsource``: a "
                "``text/event-stream`` of ``change`` events, ``id`` the seq).",
                "content": {
                    _JSON: {"schema": _ref("Changes")},
                    "text/event-stream": {"schema": {"type": "string"}},
                },
            }
        },
        errors=(_STORE, _WATCH, {400: ("invalid_key",)}),
    )
    changes_head = operation(
        "head_changes",
        "The change feed's headers (feed=normal only)",
        tag="feeds",
        parameters=feeds,
        answers={200: {"description": "The normal feed's headers."}},
        errors=(_STORE, _WATCH, {400: ("invalid_key",), 405: ("method_not_allowed",)}),
        head=True,
    )
    reset_answer = {
        200: {
            "description": 'Wiped: ``OK``, or ``{"reset": true}`` with '
            "``Accept: application/json``.",
            "content": {
                _TEXT: {"schema": {"type": "string"}},
                _JSON: {
                    "schema": {
                        "type": "object",
                        "required": ["reset"],
                        "properties": {"reset": {"const": True}},
                    }
                },
            },
        }
    }
    return {
        "/_ui": _read_pair(
            "ui",
            "The web page for a person (its files are under /_ui/: ui.js, ui.css)",
            tag="node",
            public=True,
            answers={
                200: {
                    "description": "The page, with Content-Security-Policy default-src 'self'; "
                    "every API call it makes carries the token typed into it.",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                },
            },
        ),
        "/_health": _read_pair(
            "health",
            "Whether the node and its backend answer",
            tag="node",
            public=True,
            answers={
                200: _json(_ref("Health"), "The node and its backend answer."),
                503: _json(_ref("Health"), "The backend cannot answer (``status`` unavailable)."),
            },
        ),
        "/_ready": _read_pair(
            "ready",
            "Whether the node can serve correctly (readiness)",
            tag="node",
            public=True,
            answers={
                200: _json(_ref("Ready"), "Every check passes."),
                503: _json(
                    _ref("Ready"),
                    "Not ready: the backend fails, a clone has not caught up, a cache node's "
                    "upstream was not reached recently, or the node is shutting down; "
                    "``reasons`` says which.",
                ),
            },
        ),
        "/_metrics": _read_pair(
            "metrics",
            "Prometheus metrics (the text exposition format)",
            tag="node",
            description="Needs the ``metrics`` permission (``admin`` has it).",
            answers={
                200: {
                    "description": "The node's metrics.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        ),
        OPENAPI_PATH: _read_pair(
            "openapi",
            "This document",
            tag="node",
            public=True,
            answers={200: _json({"type": "object"}, "The OpenAPI 3.1 document of this node.")},
        ),
        "/_keys": _read_pair(
            "keys",
            "List the keys under a prefix (the prefix as a parameter)",
            tag="keys",
            parameters=[_PREFIX_ARG, *_listing_params()],
            answers={200: _json(_ref("KeysPage"), "A page of keys, in key order.")},
            errors=(_STORE, _QUERY, {400: ("invalid_key",)}),
        ),
        "/_changes": {"get": changes_get, "head": changes_head},
        "/_conflicts": _read_pair(
            "conflicts",
            "The keys under a prefix that have losers of concurrent writes, and how many",
            tag="keys",
            parameters=[_PREFIX_ARG, _AFTER, _limit()],
            answers={
                200: _json(_ref("ConflictKeys"), "A page of keys with losers, and their counts.")
            },
            errors=(_STORE, _QUERY, {400: ("invalid_key",)}),
        ),
        "/listkeys": _read_pair(
            "listkeys",
            "Every key, classic form",
            tag="keys",
            answers={
                200: _json(
                    {"type": "array", "items": {"type": "string"}},
                    "Every key the caller may see, without the leading ``/``, streamed.",
                )
            },
            errors=(_STORE,),
        ),
        "/reset": {
            "get": operation(
                "reset",
                "Wipe this node's keys (classic; not replicated)",
                tag="node",
                answers=reset_answer,
                errors=(_STORE,),
            )
        },
    }


def _bulk_paths(max_value_size: int) -> dict[str, Schema]:
    limit = bulk_body_limit(max_value_size)
    entries = {"type": "array", "maxItems": MAX_ENTRIES, "items": _ref("BulkEntry")}
    return {
        "/_bulk": {
            "post": operation(
                "bulk",
                "Write many keys at once",
                tag="keys",
                description=f"At most {MAX_ENTRIES} entries and {limit} bytes of body; every "
                "entry is checked first, and one bad entry writes nothing.",
                parameters=[
                    _query("verbose", _FLAG, "Add each key's version and seq" + _FLAG_TEXT + ".")
                ],
                body={
                    "required": True,
                    "content": {
                        _JSON: {
                            "schema": {
                                "anyOf": [
                                    entries,
                                    {
                                        "type": "object",
                                        "description": "A listing page with ``values=true``.",
                                        "required": ["keys"],
                                        "properties": {"keys": entries},
                                    },
                                ]
                            }
                        }
                    },
                },
                answers={200: _json(_ref("BulkAnswer"), "Every entry was written.")},
                errors=(
                    _STORE,
                    _QUERY,
                    _FORWARDED,
                    {
                        400: ("invalid_bulk_body", "invalid_bulk_entry"),
                        413: ("too_many_entries",),
                    },
                ),
            )
        }
    }


def _txn_paths(max_value_size: int) -> dict[str, Schema]:
    operation_schema = {
        "type": "object",
        "required": ["op", "key"],
        "properties": {
            "op": {"type": "string", "enum": ["check", "put", "delete"]},
            "key": {"type": "string"},
            "version": _ref("Stamp"),
            "absent": {"type": "boolean"},
            "exists": {"type": "boolean"},
            "value": {"type": "string"},
            "encoding": {"type": "string", "enum": list(VALUE_ENCODINGS)},
            "content_type": {"type": "string"},
            "ttl": _whole(MAX_TTL_MS // 1000, 1),
            "flags": _whole(MAX_FLAGS),
            "recursive": {"type": "boolean"},
        },
        "additionalProperties": False,
    }
    answer = {
        "type": "object",
        "required": ["results", "written"],
        "properties": {
            "results": {"type": "array", "items": {"type": "object"}},
            "written": {"type": "integer", "minimum": 0},
        },
    }
    return {
        "/_txn": {
            "post": operation(
                "txn",
                "Check and write several keys, all or nothing",
                tag="keys",
                description=f"At most {TXN_OPERATIONS} operations (and keys) and "
                f"{max_value_size} bytes of body. Every condition is decided first; then every "
                "write is stored in one backend transaction if every key read is unchanged.",
                body={
                    "required": True,
                    "content": {
                        _JSON: {
                            "schema": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": TXN_OPERATIONS,
                                "items": operation_schema,
                            }
                        }
                    },
                },
                answers={200: _json(answer, "Every operation held and every write was stored.")},
                errors=(
                    _STORE,
                    _QUERY,
                    _FORWARDED,
                    {
                        400: ("invalid_txn", "txn_unsupported"),
                        409: ("txn_failed",),
                    },
                ),
            )
        }
    }


def _transfer_paths(max_value_size: int) -> dict[str, Schema]:
    """Backup and restore: ``/_export``, ``/_import``, ``/_backup``."""
    ndjson = "application/x-ndjson"
    import_answer = {
        "type": "object",
        "required": ["lines", "records"],
        "properties": {
            "lines": {"type": "integer", "minimum": 0},
            "records": {"type": "integer", "minimum": 0},
            "applied": {"type": "integer", "minimum": 0},
            "kept": {
                "type": "integer",
                "minimum": 0,
                "description": "Records older than, or "
                "the same as, the stored ones: kept as stored.",
            },
            "dry_run": {"const": True},
            "node_id": _ref("NodeId"),
            "source": {"type": ["string", "null"]},
        },
    }
    return {
        "/_export": {
            "get": operation(
                "export",
                "Every record under a prefix, tombstones too, as JSON lines",
                tag="backup",
                description="A header line (format, node id, seq, prefix), one line per record "
                "(key, value, encoding, content type, stamp, deleted), an end line with the "
                "record count; only the caller's prefixes under tokens.",
                parameters=[_PREFIX_ARG],
                answers={
                    200: {
                        "description": "The export, streamed a page at a time.",
                        "content": {ndjson: {"schema": {"type": "string"}}},
                    }
                },
                errors=(_STORE, {400: ("invalid_key",), 409: ("cache_node",)}),
            )
        },
        "/_import": {
            "post": operation(
                "import",
                "Apply an export's records by stamp (never rolls a newer value back)",
                tag="backup",
                description=f"At most {bulk_body_limit(max_value_size)} bytes of body. Every "
                "line is checked first: a bad line, or a key outside the token's prefixes, "
                "applies nothing.",
                parameters=[
                    _query("dry_run", _FLAG, "Check every line, apply nothing" + _FLAG_TEXT + ".")
                ],
                # Any Content-Type is read as export lines (navistore import sends
                # application/x-ndjson); text/plain is what fuzzers know how to send.
                body={
                    "required": True,
                    "description": "The lines of an export, whatever the Content-Type.",
                    "content": {_TEXT: {"schema": {"type": "string"}}},
                },
                answers={200: _json(import_answer, "Every line was checked (and applied).")},
                errors=(_STORE, _FORWARDED, {400: ("invalid_import_line", "clock_drift")}),
            )
        },
        "/_backup": {
            "get": operation(
                "backup",
                "An online, consistent copy of a sqlite node's database",
                tag="backup",
                answers={
                    200: {
                        "description": "The database file; a node started on it serves the "
                        "same records under the same node id.",
                        "content": {"application/vnd.sqlite3": {"schema": {"type": "string"}}},
                    }
                },
                errors=(
                    _STORE,
                    {409: ("cache_node", "backup_unsupported", "backup_running")},
                ),
            )
        },
    }


def _replication_paths(max_value_size: int) -> dict[str, Schema]:
    peers_list = {200: _json({"type": "array", "items": _ref("PeerStatus")}, "Every peer.")}
    cache = {409: ("cache_node",)}
    peer_url = {
        "type": "string",
        "pattern": "^ *[Hh][Tt][Tt][Pp][Ss]?://",
        "description": "``http(s)://host:port``, nothing more",
    }
    return {
        "/_replicate": {
            "post": operation(
                "replicate_push",
                "Apply a batch pushed by a peer",
                tag="replication",
                description=f"The body is at most {replication_body_limit(max_value_size)} "
                "bytes; one bad record refuses the whole batch.",
                body={"required": True, "content": {_JSON: {"schema": _ref("Batch")}}},
                answers={200: _json(_ref("Ack"), "The batch was applied (last writer wins).")},
                errors=(
                    _STORE,
                    {400: ("malformed_batch", "refused_record", "clock_drift", "invalid_record")},
                ),
            ),
            **_read_pair(
                "replicate_pull",
                "The records after a seq, as a batch (clone, pull)",
                tag="replication",
                parameters=[_since(), _limit(), _HORIZON],
                answers={200: _json(_ref("Batch"), "A page of records with ``last_seq``.")},
                errors=(_STORE, _QUERY, {410: ("resync_required",)}),
            ),
        },
        "/_peers": {
            **_read_pair("peers", "Every peer's status", tag="replication", answers=peers_list),
            "put": operation(
                "add_peer",
                "Add a peer",
                tag="replication",
                body={
                    "required": True,
                    "content": {
                        _TEXT: {"schema": peer_url},
                        _JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["url"],
                                "properties": {"url": peer_url},
                            }
                        },
                    },
                },
                answers={
                    200: _json(_ref("PeerStatus"), "Already a peer."),
                    201: _json(_ref("PeerStatus"), "Added."),
                },
                errors=(_STORE, cache, {400: ("invalid_peer",)}),
            ),
            "delete": operation(
                "remove_peer",
                "Remove a peer",
                tag="replication",
                parameters=[_query("url", peer_url, "The peer to remove.", required=True)],
                answers={
                    200: _json(
                        {
                            "type": "object",
                            "required": ["url", "removed"],
                            "properties": {"url": {"type": "string"}, "removed": {"const": True}},
                        },
                        "Removed.",
                    )
                },
                errors=(
                    _STORE,
                    _QUERY,
                    cache,
                    {400: ("invalid_peer",), 404: ("unknown_peer",)},
                ),
            ),
        },
        "/_replication_slaves": {
            **_read_pair(
                "replication_slaves",
                "The peer set, classic form",
                tag="replication",
                answers={200: _text("The peer URLs, comma-separated.")},
            ),
            "put": operation(
                "set_replication_slaves",
                "Replace the peer set (classic)",
                tag="replication",
                body={
                    "required": False,
                    "content": {
                        _TEXT: {
                            "schema": {
                                "type": "string",
                                "description": "``http://a:1,http://b:2``; empty: no peers",
                            }
                        }
                    },
                },
                answers={200: _text("``OK``")},
                errors=(_STORE, cache, {400: ("invalid_peer",)}),
            ),
            "delete": operation(
                "clear_replication_slaves",
                "Remove every peer (classic)",
                tag="replication",
                answers={200: _text("``OK``")},
                errors=(_STORE, cache),
            ),
        },
    }


def _backend_paths() -> dict[str, Schema]:
    tag = "backend-rpc"
    note = "Served only with ``--serve-backend`` (else 404 unknown_endpoint)."
    absent = {404: ("unknown_endpoint",)}
    common = (_STORE, _QUERY, absent)

    def rpc(operation_id: str, summary: str, answer: Schema, **options: Any) -> Schema:
        return operation(
            operation_id,
            summary,
            tag=tag,
            description=note,
            answers={200: _json(answer, summary)},
            **options,
        )

    page_params = [
        _query("limit", _whole(default=1000), f"Records wanted (at most {RPC_MAX_PAGE} sent)."),
        _query(
            "max_bytes",
            _whole(default=RPC_PAGE_BYTES),
            f"Bytes of keys and values a page may hold (at most {RPC_PAGE_BYTES}).",
        ),
    ]
    meta_name = _query("name", {"type": "string"}, "The meta value's name.", required=True)
    flag_param = _query("deleted", _FLAG, "Include tombstones" + _FLAG_TEXT + ".")
    return {
        "/_backend_get": {
            "get": rpc(
                "backend_get",
                "A stored record, tombstones included",
                {
                    "type": "object",
                    "required": ["record"],
                    "properties": {"record": {"anyOf": [_ref("Record"), {"type": "null"}]}},
                },
                parameters=[_query("key", {"type": "string"}, "The key.", required=True)],
                errors=common,
            )
        },
        "/_backend_apply": {
            "post": rpc(
                "backend_apply",
                "Apply a record (the query describes it, the body is its value)",
                {
                    "type": "object",
                    "required": ["seq"],
                    "properties": {"seq": {"anyOf": [_whole(), {"type": "null"}]}},
                },
                parameters=[
                    _query(
                        "key",
                        {"type": "string", "pattern": "^/"},
                        "The record's key, canonical.",
                        required=True,
                    ),
                    _query("stamp", _ref("Stamp"), "The record's stamp.", required=True),
                    _query(
                        "deleted",
                        {"type": "string", "enum": ["true", "false"]},
                        "A tombstone (whose value is empty).",
                        required=True,
                    ),
                    _query(
                        "expect",
                        {"type": "string", "pattern": f"^(any|absent|{_STAMP_PATTERN})$"},
                        "Store only if the stored record is this: ``any``, ``absent``, or a "
                        "live record at this stamp.",
                        required=True,
                    ),
                    _query("content_type", {"type": "string"}, "The content type (default empty)."),
                    _query(
                        "chain",
                        {"type": "string", "pattern": "^([0-9a-f]{16}(,[0-9a-f]{16})*)?$"},
                        "Node ids, comma-separated, the writer first.",
                    ),
                ],
                body={
                    "required": False,
                    "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        }
                    },
                },
                errors=(*common, {400: ("invalid_record",)}),
            )
        },
        "/_backend_scan": {
            "get": rpc(
                "backend_scan",
                "A page of records under a prefix, in key order",
                _ref("RecordPage"),
                parameters=[
                    _query("prefix", {"type": "string"}, "The prefix (default ``/``)."),
                    _query("after", {"type": "string"}, "Resume after this key."),
                    flag_param,
                    *page_params,
                ],
                errors=common,
            )
        },
        "/_backend_changes": {
            "get": rpc(
                "backend_changes",
                "A page of the change log, in seq order",
                _ref("RecordPage"),
                parameters=[_since(), *page_params],
                errors=common,
            )
        },
        "/_backend_last_seq": {
            "get": rpc(
                "backend_last_seq",
                "The greatest seq assigned",
                {"type": "object", "required": ["last_seq"], "properties": {"last_seq": _whole()}},
                errors=(_STORE, absent),
            )
        },
        "/_backend_purge": {
            "post": rpc(
                "backend_purge",
                "Purge tombstones below a seq",
                {"type": "object", "required": ["purged"], "properties": {"purged": _whole()}},
                parameters=[_query("before_seq", _whole(default=0), "Purge below this seq.")],
                errors=common,
            )
        },
        "/_backend_reset": {
            "post": rpc(
                "backend_reset",
                "Wipe every record",
                {"type": "object", "required": ["reset"], "properties": {"reset": {"const": True}}},
                parameters=[
                    _query(
                        "meta",
                        {"type": "string", "enum": ["keep", "forget"]},
                        "``forget``: forget the clients' meta data too.",
                    )
                ],
                errors=common,
            )
        },
        "/_backend_meta": {
            "get": rpc(
                "backend_get_meta",
                "A client's meta value",
                {
                    "type": "object",
                    "required": ["value"],
                    "properties": {"value": {"type": ["string", "null"]}},
                },
                parameters=[meta_name],
                errors=common,
            ),
            "put": rpc(
                "backend_set_meta",
                "Store a client's meta value",
                {
                    "type": "object",
                    "required": ["stored"],
                    "properties": {"stored": {"const": True}},
                },
                parameters=[meta_name],
                body={"required": False, "content": {_TEXT: {"schema": {"type": "string"}}}},
                errors=common,
            ),
        },
    }


def openapi_document(
    *,
    max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES,
    backend_rpc: bool = True,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a node with these limits.

    :param backend_rpc: describe the backend RPC (``/_backend_*``, served with
        ``--serve-backend``).
    """
    paths: dict[str, Schema] = {
        **_node_paths(),
        **_bulk_paths(max_value_size),
        **_txn_paths(max_value_size),
        **_transfer_paths(max_value_size),
        **_replication_paths(max_value_size),
    }
    if backend_rpc:
        paths.update(_backend_paths())
    paths.update(_prefix_paths())
    paths.update(_key_paths(max_value_size, max_key_bytes))
    for path, item in paths.items():
        name = path.strip("/").replace("{", "").replace("}", "").replace(".", "_") or "root"
        item["options"] = _preflight(name.replace("/", "_"), routed="{" in path or path == "/")
    limits = (
        f"A request line or a header line is at most {NavistoreChannel.MAX_LENGTH} bytes (414, "
        f"431), the headers at most {NavistoreChannel.maxHeaders} lines and "
        f"{NavistoreChannel.totalHeadersSize} bytes (431); a value at most {max_value_size} "
        f"bytes (413); a node serves at most {DEFAULT_MAX_WATCHERS} watches by default."
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Navistore",
            "version": __version__,
            "summary": "A replicated HTTP key/value store for configuration data.",
            "description": (
                'Every error is JSON ``{"error", "message", "detail"}`` with a stable '
                "``error`` code. Without a tokens file a node answers only callers on its own "
                "machine (protected mode); with one, a request carries ``Authorization: Bearer "
                "<secret>``. " + limits
            ),
            "license": {"name": "GPL-2.0-or-later", "identifier": "GPL-2.0-or-later"},
        },
        "tags": [
            {"name": "keys", "description": "Keys, documents and listings."},
            {"name": "feeds", "description": "The change feed and watches."},
            {"name": "node", "description": "The node itself."},
            {"name": "replication", "description": "Peers and replication (``peer``, ``admin``)."},
            {"name": "backend-rpc", "description": "The node's storage for ``http://`` backends."},
            {"name": "cors", "description": "Preflights of web pages of allowed origins."},
        ],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": _schemas(max_value_size),
            "responses": _shared_responses(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token's secret from the node's ``--tokens`` file.",
                }
            },
        },
    }


def document_bytes(document: Mapping[str, Any]) -> bytes:
    """The document as ``docs/openapi.json`` holds it: indented, keys in order, one newline."""
    return json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"


def openapi_endpoints(
    *, max_value_size: int = DEFAULT_MAX_VALUE_SIZE, max_key_bytes: int, backend_rpc: bool
) -> Endpoints:
    """``GET /_openapi.json`` for a node with these limits, ready for ``extra_endpoints``."""
    body = json_bytes(
        openapi_document(
            max_value_size=max_value_size, max_key_bytes=max_key_bytes, backend_rpc=backend_rpc
        )
    )

    async def serve(_request: Any) -> Response:
        return Response(200, body, {b"Content-Type": b"application/json"})

    return {OPENAPI_PATH[1:]: {b"GET": serve, b"HEAD": serve}}


if __name__ == "__main__":
    sys.stdout.buffer.write(document_bytes(openapi_document()))

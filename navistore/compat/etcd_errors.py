"""etcd v2's error answers: ``{"errorCode", "message", "cause", "index"}`` with etcd's statuses.

Clients tell failures apart by ``errorCode`` alone (python-etcd maps each code to an exception
class; etcdctl prints ``Error: <code>: <message> (<cause>) [<index>]``), so the codes, messages
and statuses are etcd 3.4's (``server/etcdserver/api/v2error``), checked against a running
etcd 3.4.23 with ``--enable-v2``. A refusal that only Navistore makes (a token that may not,
a key its grammar refuses, a listing over the bound) keeps its native status and carries
its native ``error`` name beside an etcd code, so both kinds of client can read it.
"""

from __future__ import annotations

from navistore.web.errors import ApiError
from navistore.web.responses import Response, json_bytes

__all__ = [
    "DIR_NOT_EMPTY",
    "EVENT_INDEX_CLEARED",
    "INDEX_NAN",
    "INVALID_FIELD",
    "KEY_NOT_FOUND",
    "NODE_EXIST",
    "NOT_DIR",
    "NOT_FILE",
    "PREV_VALUE_REQUIRED",
    "REFRESH_TTL_REQUIRED",
    "REFRESH_VALUE",
    "ROOT_READ_ONLY",
    "TEST_FAILED",
    "TTL_NAN",
    "UNAUTHORIZED",
    "EtcdError",
    "etcd_error_response",
    "from_api_error",
]

KEY_NOT_FOUND = 100
TEST_FAILED = 101
NOT_FILE = 102
NOT_DIR = 104
NODE_EXIST = 105
ROOT_READ_ONLY = 107
DIR_NOT_EMPTY = 108
UNAUTHORIZED = 110
PREV_VALUE_REQUIRED = 201
TTL_NAN = 202
INDEX_NAN = 203
INVALID_FIELD = 209
REFRESH_VALUE = 211
REFRESH_TTL_REQUIRED = 212
RAFT_INTERNAL = 300
EVENT_INDEX_CLEARED = 401

#: etcd's message for each code (what clients show).
MESSAGES = {
    KEY_NOT_FOUND: "Key not found",
    TEST_FAILED: "Compare failed",
    NOT_FILE: "Not a file",
    NOT_DIR: "Not a directory",
    NODE_EXIST: "Key already exists",
    ROOT_READ_ONLY: "Root is read only",
    DIR_NOT_EMPTY: "Directory not empty",
    UNAUTHORIZED: "The request requires user authentication",
    PREV_VALUE_REQUIRED: "PrevValue is Required in POST form",
    TTL_NAN: "The given TTL in POST form is not a number",
    INDEX_NAN: "The given index in POST form is not a number",
    INVALID_FIELD: "Invalid field",
    REFRESH_VALUE: "Value provided on refresh",
    REFRESH_TTL_REQUIRED: "A TTL must be provided on refresh",
    RAFT_INTERNAL: "Raft Internal Error",
    EVENT_INDEX_CLEARED: "The event in requested index is outdated and cleared",
}

#: etcd's status for each code; every other code is answered 400, as etcd does.
_STATUSES = {
    KEY_NOT_FOUND: 404,
    TEST_FAILED: 412,
    NOT_FILE: 403,
    NODE_EXIST: 412,
    DIR_NOT_EMPTY: 403,
    UNAUTHORIZED: 401,
    RAFT_INTERNAL: 500,
}


class EtcdError(Exception):
    """An error answered in etcd's shape.

    :ivar code: etcd's ``errorCode``.
    :ivar cause: what it is about (a key, ``[expected != actual]``, the bad parameter).
    :ivar index: the store's index when it was decided (0 for a request refused unread, as
        etcd answers).
    :ivar status: the HTTP status (etcd's for the code unless given).
    :ivar native: the Navistore ``error`` name of a refusal only Navistore makes, or None.
    """

    def __init__(
        self,
        code: int,
        cause: str,
        index: int = 0,
        *,
        status: int | None = None,
        native: str | None = None,
        headers: dict[bytes, bytes] | None = None,
    ) -> None:
        super().__init__(f"{code} {MESSAGES.get(code, '')}: {cause}")
        self.code = code
        self.cause = cause
        self.index = index
        self.status = _STATUSES.get(code, 400) if status is None else status
        self.native = native
        self.headers = headers or {}


def etcd_error_response(error: EtcdError, headers: dict[bytes, bytes]) -> Response:
    """The answer for ``error``: its JSON body (one line, as etcd ends it) and ``X-Etcd-Index``."""
    document: dict[str, object] = {
        "errorCode": error.code,
        "message": MESSAGES.get(error.code, "Navistore refused the request"),
        "cause": error.cause,
        "index": error.index,
    }
    if error.native is not None:
        document["error"] = error.native
    answer_headers = {
        **headers,
        **error.headers,
        b"Content-Type": b"application/json",
        b"X-Etcd-Index": b"%d" % error.index,
    }
    return Response(error.status, json_bytes(document) + b"\n", answer_headers)


def from_api_error(error: ApiError, index: int) -> EtcdError:
    """A native refusal (:class:`ApiError`) as an etcd error: its status and ``error`` name are
    kept; the code is etcd's nearest (110 for 401/403, 100 for 404, 300 for a 5xx, else 209)."""
    if error.status in (401, 403):
        code = UNAUTHORIZED
    elif error.status == 404:
        code = KEY_NOT_FOUND
    elif error.status >= 500:
        code = RAFT_INTERNAL
    else:
        code = INVALID_FIELD
    return EtcdError(
        code,
        error.message,
        index,
        status=error.status,
        native=error.code,
        headers=dict(error.headers),
    )

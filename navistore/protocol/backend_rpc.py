"""The protocol between the ``http://`` backend and the backend RPC a node serves.

One definition for both ends: :mod:`navistore.backend.http` (the client) and
:mod:`navistore.web.backend_rpc` (the server, which documents the endpoints). Records cross in the
record format of :mod:`navistore.protocol.records`, the chain exactly as stored (unlike
replication batches, which extend it). An ``apply`` sends the value as the raw request body and
the other fields as query parameters (:func:`apply_params`, :func:`record_from_params`): base64
would make a value the client accepted a third larger than the serving node's body limit.
"""

from __future__ import annotations

from collections.abc import Mapping

from navistore.clock import InvalidStamp, Stamp
from navistore.errors import InvalidRecord
from navistore.interfaces import ABSENT, ANY, Expectation
from navistore.protocol.records import MalformedRecord, replaces_from_text, replaces_text
from navistore.record import MAX_FLAGS, MAX_SEQ, Record

__all__ = [
    "RPC_PATHS",
    "MalformedRecord",
    "apply_params",
    "decode_expectation",
    "encode_expectation",
    "record_from_params",
]

#: The endpoint (path without ``/``) of each operation on the serving node.
RPC_PATHS = {
    "get": "_backend_get",
    "apply": "_backend_apply",
    "scan": "_backend_scan",
    "changes": "_backend_changes",
    "last_seq": "_backend_last_seq",
    "purge_tombstones": "_backend_purge",
    "reset": "_backend_reset",
    "meta": "_backend_meta",
}


def encode_expectation(expect: Expectation) -> str:
    """``any``, ``absent``, or the stamp's text."""
    if expect is ANY:
        return "any"
    if expect is ABSENT:
        return "absent"
    if isinstance(expect, Stamp):
        return expect.encode()
    raise InvalidRecord(f"expect must be ANY, ABSENT or a Stamp, not {expect!r}")


def decode_expectation(text: str) -> Expectation:
    """The expectation :func:`encode_expectation` wrote; raise :class:`MalformedRecord`."""
    if text == "any":
        return ANY
    if text == "absent":
        return ABSENT
    try:
        return Stamp.decode(text)
    except InvalidStamp as exc:
        raise MalformedRecord(f"expect: {exc}") from None


def apply_params(record: Record, expect: Expectation) -> dict[str, str]:
    """The query parameters of an apply: every field of the record but its value (the body)."""
    params = {
        "key": record.key,
        "content_type": record.content_type,
        "stamp": record.stamp.encode(),
        "deleted": "true" if record.deleted else "false",
        "chain": ",".join(record.chain),
        "expect": encode_expectation(expect),
    }
    if record.expires_ms is not None:
        params["expires_ms"] = str(record.expires_ms)
    if record.flags:
        params["flags"] = str(record.flags)
    if record.replaces:
        params["replaces"] = replaces_text(record.replaces)
    return params


def _number_param(params: Mapping[str, str], name: str, maximum: int) -> int | None:
    text = params.get(name)
    if text is None:
        return None
    if not text.isdigit() or not text.isascii() or len(text) > 20 or int(text) > maximum:
        raise MalformedRecord(f"{name} must be a whole number from 0 to {maximum}")
    return int(text)


def record_from_params(params: Mapping[str, str], value: bytes) -> tuple[Record, Expectation]:
    """The record and expectation :func:`apply_params` described, with ``value`` as the body.

    :raises MalformedRecord: a parameter is missing or unreadable (the record itself is still
        to be checked with :func:`~navistore.record.check_record`).
    """
    missing = [name for name in ("key", "stamp", "deleted", "expect") if name not in params]
    if missing:
        raise MalformedRecord(f"missing parameter(s): {', '.join(missing)}")
    deleted = params["deleted"]
    if deleted not in ("true", "false"):
        raise MalformedRecord("deleted must be 'true' or 'false'")
    chain_text = params.get("chain", "")
    try:
        stamp = Stamp.decode(params["stamp"])
        chain = tuple(chain_text.split(",")) if chain_text else ()
    except InvalidStamp as exc:
        raise MalformedRecord(str(exc)) from None
    record = Record(
        params["key"],
        value,
        params.get("content_type", ""),
        stamp,
        deleted == "true",
        None,
        chain,
        _number_param(params, "expires_ms", MAX_SEQ),
        _number_param(params, "flags", MAX_FLAGS) or 0,
        replaces_from_text(params.get("replaces", "")),
    )
    return record, decode_expectation(params["expect"])

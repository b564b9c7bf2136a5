"""Records and values as JSON: the one codec every wire format is built from.

A record crosses the wire as an object with every field and its value in base64::

    {"key": "/app/db/host", "value": "ZGIxLmxhbg==", "content_type": "text/plain",
     "stamp": "019ab0c1f2e3-000000-3f2a9c0d1e4b5a69", "deleted": false,
     "chain": ["3f2a9c0d1e4b5a69"], "seq": 17}

``expires_ms`` and ``flags`` are there only when the record has them (an expiry, flags other
than 0), so a record without them reads as it did before they existed.

A value shown to people and scripts (listings with ``?values=true``, ``/_bulk`` entries) is an
*entry*: ``{"value": <text>, "encoding": "utf-8" | "base64"}``, as text when it is UTF-8 and in
base64 otherwise, so that any value round-trips.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from navistore.clock import InvalidStamp, Stamp, validate_node_id
from navistore.record import MAX_FLAGS, MAX_REPLACES, MAX_SEQ, Record

__all__ = [
    "VALUE_ENCODINGS",
    "InvalidValue",
    "MalformedRecord",
    "decode_value",
    "encode_value",
    "optional_number",
    "record_from_json",
    "record_to_json",
    "value_entry",
]

#: How an entry's value may be encoded.
VALUE_ENCODINGS = ("utf-8", "base64")


class MalformedRecord(ValueError):
    """A record on the wire does not follow the format; the message says which field."""


class InvalidValue(ValueError):
    """An entry's value cannot be decoded with its encoding; the message says why."""


def record_to_json(record: Record, *, chain: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A record as JSON: every field, the value in base64, the chain as given (default: its
    own, exactly as stored)."""
    document = {
        "key": record.key,
        "value": base64.b64encode(record.value).decode("ascii"),
        "content_type": record.content_type,
        "stamp": record.stamp.encode(),
        "deleted": record.deleted,
        "chain": list(record.chain if chain is None else chain),
        "seq": record.seq,
    }
    if record.expires_ms is not None:
        document["expires_ms"] = record.expires_ms
    if record.flags:
        document["flags"] = record.flags
    if record.replaces:
        document["replaces"] = [stamp.encode() for stamp in record.replaces]
    return document


def replaces_text(replaces: tuple[Stamp, ...]) -> str:
    """A record's ``replaces`` as one text (stamps joined by ``,``; empty for none), the form
    parameters and database columns keep."""
    return ",".join(stamp.encode() for stamp in replaces) if replaces else ""


def replaces_from_text(text: str) -> tuple[Stamp, ...]:
    """The ``replaces`` :func:`replaces_text` made; MalformedRecord for a bad stamp or too
    many (whether they name distinct nodes is :func:`~navistore.record.check_record`'s)."""
    if not text:
        return ()
    parts = text.split(",")
    if len(parts) > MAX_REPLACES:
        raise MalformedRecord(f"'replaces' holds at most {MAX_REPLACES} stamps")
    try:
        return tuple(Stamp.decode(part) for part in parts)
    except InvalidStamp as exc:
        raise MalformedRecord(f"replaces: {exc}") from None


def _replaces(document: Mapping[str, Any]) -> tuple[Stamp, ...]:
    listed = document.get("replaces")
    if listed is None:
        return ()
    if not isinstance(listed, list) or len(listed) > MAX_REPLACES:
        raise MalformedRecord(f"'replaces' must be a list of at most {MAX_REPLACES} stamps")
    try:
        return tuple(Stamp.decode(text) for text in listed)
    except InvalidStamp as exc:
        raise MalformedRecord(f"replaces: {exc}") from None


def optional_number(document: Mapping[str, Any], name: str, maximum: int) -> int | None:
    """An optional whole-number field from 0 to ``maximum`` (absent or null: None)."""
    value = document.get(name)
    if value is not None and (
        not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum
    ):
        raise MalformedRecord(f"{name!r} must be a whole number from 0 to {maximum}, or null")
    return value


def _field(document: Mapping[str, Any], name: str, kind: type) -> Any:
    if name not in document:
        raise MalformedRecord(f"missing {name!r}")
    value = document[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedRecord(f"{name!r} has the wrong type ({type(value).__name__})")
    return value


def record_from_json(document: Any, *, keep_seq: bool = True) -> Record:
    """The record :func:`record_to_json` made; raise :class:`MalformedRecord` otherwise.

    Only the encoding is checked here (types, base64, stamp and node id syntax); whether a
    backend may store the record is :func:`~navistore.record.check_record`'s business. ``seq``
    may be absent or null.

    :param keep_seq: False: ``seq`` is still checked but the record gets None (a received
        record is stored under a seq of the receiver's), without making the record twice.
    """
    if not isinstance(document, dict):
        raise MalformedRecord("not an object")
    try:
        stamp = Stamp.decode(_field(document, "stamp", str))
        chain = tuple(validate_node_id(node) for node in _field(document, "chain", list))
        value = base64.b64decode(_field(document, "value", str).encode("ascii"), validate=True)
    except (InvalidStamp, binascii.Error, UnicodeEncodeError, TypeError) as exc:
        raise MalformedRecord(str(exc)) from None
    seq = optional_number(document, "seq", MAX_SEQ)
    return Record(
        _field(document, "key", str),
        value,
        _field(document, "content_type", str),
        stamp,
        _field(document, "deleted", bool),
        seq if keep_seq else None,
        chain,
        optional_number(document, "expires_ms", MAX_SEQ),
        optional_number(document, "flags", MAX_FLAGS) or 0,
        _replaces(document) if "replaces" in document else (),
    )


def encode_value(value: bytes) -> tuple[str, str]:
    """A value as ``(text, encoding)``: the text itself when it is UTF-8, else base64."""
    try:
        return value.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(value).decode("ascii"), "base64"


def decode_value(text: object, encoding: object = None) -> bytes:
    """The bytes of an entry's value; ``encoding`` None (absent or null) means ``utf-8``.

    :raises InvalidValue: the value is not text, the encoding is unknown, or the text is not
        valid in it.
    """
    if not isinstance(text, str):
        raise InvalidValue('"value" must be a string')
    if encoding is None:
        encoding = "utf-8"
    if encoding not in VALUE_ENCODINGS:
        raise InvalidValue(f'"encoding" must be one of {", ".join(VALUE_ENCODINGS)}')
    try:
        if encoding == "base64":
            return base64.b64decode(text.encode("ascii"), validate=True)
        return text.encode("utf-8")
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise InvalidValue(f"the value is not valid {encoding}: {exc}") from None


def value_entry(record: Record) -> dict[str, Any]:
    """A live record as a listing shows it with ``?values=true``."""
    text, encoding = encode_value(record.value)
    entry: dict[str, Any] = {
        "key": record.key,
        "version": record.stamp.encode(),
        "content_type": record.content_type,
        "value": text,
        "encoding": encoding,
    }
    if record.expires_ms is not None:
        entry["expires_ms"] = record.expires_ms
    if record.flags:
        entry["flags"] = record.flags
    return entry

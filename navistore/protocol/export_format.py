"""The export format: a node's records as JSON lines, which ``/_export`` writes and ``/_import``
reads back (backup and restore, moving keys between clusters).

An export is UTF-8 text, one JSON object a line (``application/x-ndjson``)::

    {"format": "navistore-export", "version": 1, "node_id": "3f2a9c0d1e4b5a69", "seq": 1234,
     "prefix": "/", "prefixes": ["/"], "purged_before": 0}
    {"key": "/app/db", "value": "db1.lan", "encoding": "utf-8", "content_type": "text/plain",
     "stamp": "019ab0c1f2e3-000000-3f2a9c0d1e4b5a69", "deleted": false}
    {"key": "/app/old", "value": "", "encoding": "utf-8", "content_type": "",
     "stamp": "019ab0c1f2e4-000000-3f2a9c0d1e4b5a69", "deleted": true}
    {"end": "navistore-export", "records": 2, "seq": 1236}

- The **header** (the first line) says what the file is: the format and its version (a reader
  refuses a version it does not know), the node it came from and that node's newest seq when the
  export started, the prefix asked for and the prefixes the caller could see in it.
- Each **record** line is one key's state: its value as text when it is UTF-8 (and its JSON
  escapes would not make it longer than base64), else in base64 (``encoding``), its content
  type, its version (``stamp``) and whether it is a tombstone (``deleted``: the delete carries
  over). A line without ``stamp`` is a new write where it is imported (a Consul import, a file
  written by hand); ``encoding`` (default ``utf-8``) and ``content_type`` (default the node's)
  are optional too, and a tombstone needs no value. ``expires_ms`` (a TTL's deadline) and
  ``flags`` are there only when the record has them, and need the stamp; so is ``replaces`` (the
  versions the writer had seen, a list of stamps), which an older file lacks.
- The **end** line counts the records and says the seq the export read up to: a file without it
  was cut short.

Every line fits :func:`line_limit` of the value limit it was written under, so a node refuses a
longer line before decoding it. This module is only the codec: whether a key, a size or a
stamp is acceptable is the importing node's business.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any, Union

import attrs

from navistore.clock import InvalidStamp, Stamp
from navistore.json_documents import parse_json
from navistore.protocol.records import InvalidValue, decode_value, encode_value
from navistore.record import MAX_FLAGS, MAX_REPLACES, MAX_SEQ, Record

__all__ = [
    "FORMAT",
    "MEDIA_TYPE",
    "VERSION",
    "End",
    "Entry",
    "Header",
    "InvalidLine",
    "end_line",
    "entry_line",
    "header_line",
    "line_limit",
    "parse_line",
    "record_line",
]

#: The ``format`` of a header and the ``end`` of an end line.
FORMAT = "navistore-export"
#: The version this code writes and the only one it reads.
VERSION = 1
#: The content type of an export.
MEDIA_TYPE = "application/x-ndjson"

#: Bytes a line may carry besides its value's base64: the key (JSON-escaped), content type,
#: stamp and field names.
LINE_OVERHEAD = 64 * 1024

_RECORD_FIELDS = frozenset(
    {
        "key",
        "value",
        "encoding",
        "content_type",
        "stamp",
        "deleted",
        "expires_ms",
        "flags",
        "replaces",
    }
)


def line_limit(max_value_size: int) -> int:
    """The longest line (in bytes, without its newline) an export of values up to
    ``max_value_size`` holds: such a value in base64, plus :data:`LINE_OVERHEAD`."""
    return (max_value_size + 2) // 3 * 4 + LINE_OVERHEAD


class InvalidLine(ValueError):
    """A line is not what the format allows there; ``line`` is its number (from 1)."""

    def __init__(self, line: int, message: str, **detail: Any) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.reason = message
        self.detail = {"line": line, **detail}


@attrs.frozen
class Header:
    """The first line: what the file is and where it came from (None where it does not say)."""

    version: int
    node_id: str | None = None
    seq: int | None = None
    prefix: str | None = None
    source: str | None = None


@attrs.frozen
class Entry:
    """One record line, decoded: ``stamp`` None is a new write; ``key`` as written (the
    importing node checks it against its rules)."""

    key: str
    value: bytes
    content_type: str | None
    stamp: Stamp | None
    deleted: bool
    expires_ms: int | None = None
    flags: int = 0
    replaces: tuple[Stamp, ...] = ()


@attrs.frozen
class End:
    """The last line: how many records the file holds and the seq they were read up to."""

    records: int
    seq: int | None


Line = Union[Header, Entry, End, None]


def _compact(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def header_line(
    *,
    node_id: str | None,
    seq: int | None,
    prefix: str | None = "/",
    prefixes: Sequence[str] | None = None,
    purged_before: int | None = None,
    source: str | None = None,
) -> bytes:
    """The header, with its newline."""
    document: dict[str, Any] = {"format": FORMAT, "version": VERSION, "node_id": node_id}
    document["seq"] = seq
    document["prefix"] = prefix
    if prefixes is not None:
        document["prefixes"] = list(prefixes)
    if purged_before is not None:
        document["purged_before"] = purged_before
    if source is not None:
        document["source"] = source
    return _compact(document) + b"\n"


def _value_fields(value: bytes) -> tuple[str, str]:
    """``(text, encoding)``: text when it is UTF-8 and its JSON form is no longer than base64's
    (control characters escape to six bytes each), else base64."""
    text, encoding = encode_value(value)
    if encoding == "utf-8" and not text.isprintable():
        escaped = len(json.dumps(text, ensure_ascii=False).encode("utf-8")) - 2
        if escaped > (len(value) + 2) // 3 * 4:
            return base64.b64encode(value).decode("ascii"), "base64"
    return text, encoding


def record_line(record: Record) -> bytes:
    """One stored record (a tombstone too) as its line, with its newline."""
    text, encoding = _value_fields(record.value)
    document: dict[str, Any] = {
        "key": record.key,
        "value": text,
        "encoding": encoding,
        "content_type": record.content_type,
        "stamp": record.stamp.encode(),
        "deleted": record.deleted,
    }
    if record.expires_ms is not None:
        document["expires_ms"] = record.expires_ms
    if record.flags:
        document["flags"] = record.flags
    if record.replaces:
        document["replaces"] = [stamp.encode() for stamp in record.replaces]
    return _compact(document) + b"\n"


def entry_line(key: str, value: bytes, content_type: str | None = None) -> bytes:
    """A line without a stamp (a new write where it is imported), with its newline."""
    text, encoding = _value_fields(value)
    document: dict[str, Any] = {"key": key, "value": text, "encoding": encoding}
    if content_type is not None:
        document["content_type"] = content_type
    return _compact(document) + b"\n"


def end_line(records: int, seq: int | None) -> bytes:
    """The end line, with its newline."""
    return _compact({"end": FORMAT, "records": records, "seq": seq}) + b"\n"


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEQ


def _header(document: dict[str, Any], number: int) -> Header:
    if document.get("format") != FORMAT:
        raise InvalidLine(
            number,
            f'the first line must be the header ({{"format": "{FORMAT}", "version": {VERSION}, '
            "...}): this is no Navistore export",
        )
    version = document.get("version")
    if version != VERSION:
        raise InvalidLine(
            number,
            f"the export is in version {version!r} of the format; this node reads version "
            f"{VERSION}: import it with the Navistore release that wrote it, or a newer one",
            version=version,
        )
    node_id, seq, prefix, source = (
        document.get(name) for name in ("node_id", "seq", "prefix", "source")
    )
    if node_id is not None and not isinstance(node_id, str):
        raise InvalidLine(number, 'the header\'s "node_id" must be a string or null')
    if seq is not None and not _whole(seq):
        raise InvalidLine(number, 'the header\'s "seq" must be a whole number or null')
    for name, value in (("prefix", prefix), ("source", source)):
        if value is not None and not isinstance(value, str):
            raise InvalidLine(number, f"the header's {name!r} must be a string or null")
    return Header(VERSION, node_id, seq, prefix, source)


def _end(document: dict[str, Any], number: int) -> End:
    if document.get("end") != FORMAT:
        raise InvalidLine(number, f'an end line is {{"end": "{FORMAT}", "records": n, ...}}')
    records, seq = document.get("records"), document.get("seq")
    if not isinstance(records, int) or not _whole(records) or (seq is not None and not _whole(seq)):
        raise InvalidLine(number, 'the end line\'s "records" and "seq" must be whole numbers')
    return End(records, seq)


def _entry(document: dict[str, Any], number: int) -> Entry:
    unknown = sorted(set(document) - _RECORD_FIELDS)
    if unknown:
        raise InvalidLine(number, f"unknown field(s) {', '.join(unknown)}", fields=unknown)
    key = document["key"]
    if not isinstance(key, str):
        raise InvalidLine(number, '"key" must be a string', field="key")
    deleted = document.get("deleted", False)
    if not isinstance(deleted, bool):
        raise InvalidLine(number, '"deleted" must be true or false', key=key, field="deleted")
    stamp: Stamp | None = None
    raw_stamp = document.get("stamp")
    if raw_stamp is not None:
        if not isinstance(raw_stamp, str):
            raise InvalidLine(number, '"stamp" must be a string', key=key, field="stamp")
        try:
            stamp = Stamp.decode(raw_stamp)
        except InvalidStamp as exc:
            raise InvalidLine(number, f'"stamp": {exc}', key=key, field="stamp") from None
    content_type = document.get("content_type")
    if content_type is not None and not isinstance(content_type, str):
        raise InvalidLine(number, '"content_type" must be a string', key=key)
    text = document.get("value")
    expires, flags = document.get("expires_ms"), document.get("flags", 0)
    if (expires is not None and not _whole(expires)) or not (
        isinstance(flags, int) and not isinstance(flags, bool) and 0 <= flags <= MAX_FLAGS
    ):
        raise InvalidLine(number, '"expires_ms" and "flags" must be whole numbers', key=key)
    if (expires is not None or flags) and stamp is None:
        raise InvalidLine(number, '"expires_ms" and "flags" need the record\'s stamp', key=key)
    replaces: tuple[Stamp, ...] = ()
    listed = document.get("replaces")
    if listed is not None:
        if stamp is None or not isinstance(listed, list) or len(listed) > MAX_REPLACES:
            raise InvalidLine(
                number,
                f'"replaces" is a list of at most {MAX_REPLACES} stamps, beside the stamp',
                key=key,
            )
        try:
            replaces = tuple(Stamp.decode(text) for text in listed)
        except InvalidStamp as exc:
            raise InvalidLine(number, f'"replaces": {exc}', key=key) from None
    if deleted:
        if stamp is None:
            raise InvalidLine(
                number,
                "a tombstone (deleted: true) needs its stamp; to delete a key now, DELETE it",
                key=key,
            )
        if text not in (None, "") or content_type not in (None, "") or flags:
            raise InvalidLine(
                number, "a tombstone carries no value, no content type and no flags", key=key
            )
        return Entry(key, b"", "", stamp, True, expires, 0, replaces)
    if text is None:
        raise InvalidLine(number, '"value" is missing', key=key, field="value")
    try:
        value = decode_value(text, document.get("encoding"))
    except InvalidValue as exc:
        raise InvalidLine(number, str(exc), key=key) from None
    return Entry(key, value, content_type or None, stamp, False, expires, flags, replaces)


def parse_line(raw: bytes, number: int) -> Line:
    """Decode line ``number`` (1 is the header): a :class:`Header` (line 1 only), an
    :class:`Entry`, an :class:`End`, or None for a blank line (ignored anywhere but first).

    :raises InvalidLine: the line is not JSON, not an object, or not what may stand there.
    """
    if not raw.strip():
        if number == 1:
            raise InvalidLine(number, "the first line must be the header; it is empty")
        return None
    try:
        document = parse_json(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidLine(number, f"not UTF-8 (byte {exc.start})") from None
    except ValueError as exc:
        raise InvalidLine(number, f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidLine(number, f"must be a JSON object, not {type(document).__name__}")
    if number == 1:
        return _header(document, number)
    if "key" in document:
        return _entry(document, number)
    if "end" in document:
        return _end(document, number)
    if "format" in document:
        raise InvalidLine(number, "a header stands on the first line only")
    raise InvalidLine(number, 'a record line needs a "key"')

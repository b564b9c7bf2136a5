"""``POST /_txn``: several keys checked and written together, all or nothing, on this node.

The body is a JSON list of operations, applied in order against the keys as they are::

    [{"op": "check", "key": "/a", "version": "<stamp>"},
     {"op": "check", "key": "/b", "absent": true},
     {"op": "put", "key": "/c", "value": "...", "encoding": "utf-8", "content_type": "..."},
     {"op": "delete", "key": "/d"},
     {"op": "delete", "key": "/e/", "recursive": true}]

- ``check`` holds if the key is at ``version`` (a stamp, its ETag without quotes), or absent with
  ``"absent": true``, or present with ``"exists": true``;
- ``put`` writes a value (``encoding`` ``utf-8`` or ``base64``, ``content_type``, ``ttl``
  seconds, ``flags``), and may carry ``version`` or ``absent`` as its own condition;
- ``delete`` deletes a key (nothing if it is absent, unless ``version`` or ``"exists": true``
  says it must be there); with ``"recursive": true`` and a prefix, every key under it.

Every condition is decided first, each operation seeing those before it; the first that fails
answers 409 ``txn_failed`` naming its index, and nothing is written. Then every write goes to
the backend in one transaction (:meth:`Store.write_together
<navistore.store.Store.write_together>`), on the condition that every key the transaction read
is still as read: a write racing in between makes it a 409 too, with nothing written, and no
reader on this node sees half of it. The answer lists each operation's result, with the version
it left. A transaction holds at most :data:`MAX_OPERATIONS` operations and keys (a recursive
delete counts the keys it deletes), and its body fits the value limit.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.web.server import Request

from navistore.hooks import WriteForwarder
from navistore.json_documents import NotJSON, parse_json
from navistore.keys import InvalidKey
from navistore.protocol.records import InvalidValue, decode_value
from navistore.record import MAX_FLAGS, Record
from navistore.store import Change, Store
from navistore.store.core import MAX_TTL_MS
from navistore.web.access import caller_of
from navistore.web.errors import ApiError, BadRequest
from navistore.web.params import forwarded_write, request_body
from navistore.web.responses import Endpoints, Response, forwarded_response, json_response

__all__ = ["MAX_OPERATIONS", "TxnEndpoint", "txn_endpoints"]

#: The most operations (and keys) one transaction holds.
MAX_OPERATIONS = 1000
_OPS = ("check", "put", "delete")
_FIELDS = frozenset(
    {
        "op",
        "key",
        "version",
        "absent",
        "exists",
        "value",
        "encoding",
        "content_type",
        "ttl",
        "flags",
        "recursive",
    }
)


@attrs.frozen
class _Op:
    """One parsed operation; ``key`` canonical (a canonical prefix for a recursive delete)."""

    index: int
    op: str
    key: str
    version: str | None = None
    absent: bool = False
    exists: bool = False
    value: bytes = b""
    content_type: str | None = None
    ttl_ms: int | None = None
    flags: int = 0
    recursive: bool = False


def _invalid(index: int, message: str) -> BadRequest:
    return BadRequest("invalid_txn", f"operation {index}: {message}", {"index": index})


def _whole(item: dict[str, Any], name: str, index: int, least: int, most: int) -> int | None:
    value = item.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not least <= value <= most:
        raise _invalid(index, f'"{name}" must be a whole number from {least} to {most}')
    return value


class TxnEndpoint:
    """``POST /_txn`` over ``store`` (see the module's text)."""

    def __init__(
        self,
        store: Store,
        *,
        max_value_size: int,
        write_forwarder: WriteForwarder | None = None,
    ) -> None:
        self.store = store
        self.max_value_size = max_value_size
        self.write_forwarder = write_forwarder

    def endpoints(self) -> Endpoints:
        """The endpoint, for ``extra_endpoints``."""
        return {"_txn": {b"POST": self.answer}}

    async def answer(self, request: Request) -> Response:
        """Decide every operation, then write them all together: 200 with each result, 409
        naming the first failed condition, or 400 for a malformed body."""
        body = request_body(request, self.max_value_size)
        if self.write_forwarder is not None:
            forwarded = await self.write_forwarder.forward(forwarded_write(request, body))
            return forwarded_response(forwarded)
        if not self.store.writes_together:
            raise ApiError(
                400,
                "txn_unsupported",
                f"the {self.store.backend.kind} backend cannot write keys together",
            )
        ops = self._parse(body)
        caller = caller_of(request)
        for op in ops:  # every key in reach before anything is read
            if not caller.covers(op.key):
                raise ApiError(
                    403,
                    "forbidden",
                    f"{caller.name} may not reach {op.key!r}: it is outside its prefixes",
                    {"caller": caller.name, "key": op.key, "index": op.index},
                )
        read: dict[str, Record | None] = {}
        now: dict[str, Record | bytes | None] = {}  # bytes: a value this transaction writes
        results: list[dict[str, Any]] = []
        for op in ops:
            keys = await self._keys_of(op, read, now)
            for key in keys:
                if key not in read:
                    read[key] = now[key] = await self.store.get(key)
            result = self._decide(op, keys, now)
            results.append(result)
        changes = [
            self._change(key, read[key], now[key], ops) for key in read if now[key] is not read[key]
        ]
        unchanged = [(key, read[key]) for key in read if now[key] is read[key]]
        stored = await self.store.write_together(changes, unchanged)
        if stored is None:
            raise ApiError(
                409,
                "txn_failed",
                "a key the transaction read changed while it ran; nothing was written",
                {"index": None},
            )
        versions = {record.key: record for record in stored}
        for op, result in zip(ops, results):
            if op.op != "check":
                written = versions.get(op.key)
                result["version"] = written.stamp.encode() if written is not None else None
                if op.recursive:
                    result["deleted"] = sum(
                        1 for key in versions if key.startswith(op.key) and versions[key].deleted
                    )
        return json_response({"results": results, "written": len(stored)})

    # -- parsing ------------------------------------------------------------------------------

    def _parse(self, body: bytes) -> list[_Op]:
        try:
            document = parse_json(body)
        except (NotJSON, UnicodeDecodeError) as exc:
            raise BadRequest("invalid_txn", f"the body is not JSON: {exc}") from None
        if not isinstance(document, list) or not document:
            raise BadRequest("invalid_txn", "the body must be a non-empty JSON list of operations")
        if len(document) > MAX_OPERATIONS:
            raise BadRequest(
                "invalid_txn", f"a transaction holds at most {MAX_OPERATIONS} operations"
            )
        return [self._operation(index, item) for index, item in enumerate(document)]

    def _operation(self, index: int, item: object) -> _Op:
        if not isinstance(item, dict):
            raise _invalid(index, "must be an object")
        unknown = sorted(set(item) - _FIELDS)
        if unknown:
            raise _invalid(index, f"unknown field(s) {', '.join(unknown)}")
        op = item.get("op")
        if op not in _OPS:
            raise _invalid(index, f'"op" must be one of {", ".join(_OPS)}')
        raw_key = item.get("key")
        if not isinstance(raw_key, str):
            raise _invalid(index, '"key" must be a string')
        flags = {name: item.get(name, False) for name in ("absent", "exists", "recursive")}
        if not all(isinstance(value, bool) for value in flags.values()):
            raise _invalid(index, '"absent", "exists" and "recursive" are true or false')
        version = item.get("version")
        if version is not None and not isinstance(version, str):
            raise _invalid(index, '"version" must be a string')
        if sum((version is not None, flags["absent"], flags["exists"])) > 1:
            raise _invalid(index, 'give one of "version", "absent" and "exists"')
        if op == "check" and version is None and not flags["absent"] and not flags["exists"]:
            raise _invalid(index, 'a check needs "version", "absent" or "exists"')
        recursive = flags["recursive"]
        if recursive and (op != "delete" or version is not None or flags["absent"]):
            raise _invalid(index, '"recursive" goes with a plain delete of a prefix')
        try:
            if recursive:
                key = self.store.canonical_prefix(
                    raw_key if raw_key.endswith("/") else raw_key + "/"
                )
            else:
                key = self.store.canonical_key(raw_key)
        except InvalidKey as exc:
            raise _invalid(index, str(exc)) from None
        if op != "put":
            if any(name in item for name in ("value", "encoding", "content_type", "ttl", "flags")):
                raise _invalid(index, "only a put carries a value")
            return _Op(
                index, op, key, version, flags["absent"], flags["exists"], recursive=recursive
            )
        try:
            value = decode_value(item.get("value"), item.get("encoding"))
        except InvalidValue as exc:
            raise _invalid(index, str(exc)) from None
        content_type = item.get("content_type")
        if content_type is not None and not isinstance(content_type, str):
            raise _invalid(index, '"content_type" must be a string')
        ttl = _whole(item, "ttl", index, 1, MAX_TTL_MS // 1000)
        if ttl is not None and not self.store.expires_keys:
            raise _invalid(index, f"the {self.store.backend.kind} backend cannot expire keys")
        return _Op(
            index,
            op,
            key,
            version,
            flags["absent"],
            flags["exists"],
            value,
            content_type,
            None if ttl is None else ttl * 1000,
            _whole(item, "flags", index, 0, MAX_FLAGS) or 0,
        )

    # -- deciding -----------------------------------------------------------------------------

    async def _keys_of(
        self, op: _Op, read: dict[str, Record | None], now: dict[str, Record | bytes | None]
    ) -> list[str]:
        """The keys ``op`` acts on: its key, or every live key under its prefix (those read
        now, and those the transaction wrote before it), bounded."""
        if not op.recursive:
            keys = [op.key]
        else:
            found: list[str] = []
            after: str | None = None
            while True:
                page = await self.store.list(op.key, after=after, limit=MAX_OPERATIONS)
                found.extend(record.key for record in page.records)
                if page.next is None or len(found) > MAX_OPERATIONS:
                    break
                after = page.next
            keys = sorted(
                set(found) | {key for key in now if key.startswith(op.key) and now[key] is not None}
            )
        if len(set(read) | set(keys)) > MAX_OPERATIONS:
            raise _invalid(op.index, f"a transaction acts on at most {MAX_OPERATIONS} keys")
        return keys

    def _decide(
        self, op: _Op, keys: list[str], now: dict[str, Record | bytes | None]
    ) -> dict[str, Any]:
        """Apply ``op`` to the transaction's view of the keys, or raise its 409."""
        if not op.recursive:
            current = now[op.key]
            if op.version is not None and not (
                isinstance(current, Record) and current.stamp.encode() == op.version
            ):
                self._failed(op, f"{op.key!r} is not at version {op.version}", current)
            if op.absent and current is not None:
                self._failed(op, f"{op.key!r} exists", current)
            if op.exists and current is None:
                self._failed(op, f"{op.key!r} does not exist", current)
        if op.op == "put":
            now[op.key] = op.value
        elif op.op == "delete":
            for key in keys:
                now[key] = None
        result: dict[str, Any] = {"op": op.op, "key": op.key}
        if op.op == "check":
            current = now[op.key]
            result["version"] = current.stamp.encode() if isinstance(current, Record) else None
        return result

    @staticmethod
    def _failed(op: _Op, why: str, current: Record | bytes | None) -> None:
        version = current.stamp.encode() if isinstance(current, Record) else None
        detail = {"index": op.index, "key": op.key, "version": version}
        if isinstance(current, bytes):
            detail["version"] = "written earlier in this transaction"
        raise ApiError(409, "txn_failed", f"operation {op.index} failed: {why}", detail)

    @staticmethod
    def _change(
        key: str, read: Record | None, now: Record | bytes | None, ops: list[_Op]
    ) -> Change:
        if now is None:
            return Change(key, read, None)
        assert isinstance(now, bytes)
        last = [op for op in ops if op.op == "put" and op.key == key][-1]
        content_type = last.content_type or (read.content_type if read is not None else None)
        return Change(key, read, now, content_type, last.flags, last.ttl_ms)


def txn_endpoints(
    store: Store, *, max_value_size: int, write_forwarder: WriteForwarder | None = None
) -> Endpoints:
    """The ``/_txn`` endpoint over ``store``, ready for ``extra_endpoints``."""
    endpoint = TxnEndpoint(store, max_value_size=max_value_size, write_forwarder=write_forwarder)
    return endpoint.endpoints()

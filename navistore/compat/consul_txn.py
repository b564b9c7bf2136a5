"""Consul's ``PUT /v1/txn``: up to :data:`MAX_OPERATIONS` KV operations, checked together.

A transaction runs in two phases:

1. Every operation is evaluated in order against the keys as read now, each seeing the effect
   of the operations before it (a ``get`` after a ``set`` of the same key sees the new value).
   Any failed check (``check-index``, ``check-not-exists``, ``cas``, ``get`` of an absent
   key...) answers 409 with every failure, and nothing is written.
2. The writes are then made in one backend transaction (:meth:`Store.write_together
   <navistore.store.Store.write_together>`), on the condition that every key the transaction
   read or changed is still exactly as phase 1 read it: a write racing in between makes it a
   409 with nothing written, and no reader on the node sees half of it. Over a backend that
   cannot write keys together (``http://``), each key is written on its own, conditioned on
   what phase 1 read: a race then leaves the writes before it applied (the error says how
   many).

Sessions do not exist here: ``lock``, ``unlock`` and ``check-session`` are refused (400) before
anything is read. Operations other than ``KV`` (``Node``, ``Service``, ``Check``) too.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Union

import attrs
from twisted.web.server import Request

from navistore.compat.consul_base import (
    MAX_FLAGS,
    ConsulContext,
    ConsulError,
    consul_json,
    consul_name,
    entry_of,
    native_key,
    native_prefix,
)
from navistore.compat.consul_kv import (
    MAX_RECURSE_BYTES,
    MAX_RECURSE_KEYS,
    records_under,
)
from navistore.record import Record
from navistore.store import Change, Conflict, NotFound, PreconditionFailed
from navistore.tokens import ADMIN, READ, WRITE, Caller
from navistore.web.access import Need
from navistore.web.errors import TooLarge
from navistore.web.params import request_body
from navistore.web.responses import Response

__all__ = ["MAX_OPERATIONS", "READ_VERBS", "REFUSED_VERBS", "WRITE_VERBS", "ConsulTxn"]

#: The most operations one transaction holds (Consul's limit was 64; newer releases take 128).
MAX_OPERATIONS = 64
READ_VERBS = ("get", "get-or-empty", "get-tree", "check-index", "check-not-exists")
WRITE_VERBS = ("set", "cas", "delete", "delete-cas", "delete-tree")
#: Verbs that need sessions.
REFUSED_VERBS = ("lock", "unlock", "check-session")


@attrs.frozen
class _Op:
    """One parsed KV operation; ``key`` is the canonical key (or prefix, for the tree verbs)."""

    number: int
    verb: str
    key: str
    value: bytes
    flags: int
    index: int

    def need(self) -> Need:
        """What the caller must be allowed for this operation."""
        if self.verb not in WRITE_VERBS:
            return Need(READ, self.key)
        if self.verb == "delete-tree" and self.key == "/":
            return Need(ADMIN, None, True)
        return Need(WRITE, self.key, True)


@attrs.frozen
class _Value:
    """A value the transaction writes (not stored yet: it has no seq)."""

    key: str
    value: bytes
    flags: int


@attrs.define
class _Key:
    """A key during phase 1: its record as read, and its state as the transaction leaves it so
    far (``now``: the read record, a :class:`_Value` the transaction writes, or None)."""

    read: Record | None
    now: Record | _Value | None


#: A result: the operation's number, what it shows, and whether with its value.
_Result = tuple[int, Union[Record, _Value, None], bool]


def _entry(state: Record | _Value, *, with_value: bool = True) -> dict[str, Any]:
    if isinstance(state, Record):
        return entry_of(state, with_value=with_value)
    value = base64.b64encode(state.value).decode("ascii") if with_value and state.value else None
    name = consul_name(state.key)
    return {
        "LockIndex": 0,
        "Key": name,
        "Flags": state.flags,
        "Value": value,
        "CreateIndex": 0,
        "ModifyIndex": 0,
    }


def _in_tree(op: _Op, key: str) -> bool:
    return op.verb in ("get-tree", "delete-tree") and key.startswith(op.key)


def _field(entry: dict[str, Any], name: str, kind: type, default: Any, where: str) -> Any:
    value = entry.get(name, default)
    if value is None:
        return default
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConsulError(400, f"Failed to parse body: {where}: {name} must be a whole number")
    if not isinstance(value, kind):
        raise ConsulError(400, f"Failed to parse body: {where}: {name} must be a {kind.__name__}")
    return value


def _change(key: str, state: _Key) -> Change:
    """What the transaction makes of a key it changes, for :meth:`Store.write_together`."""
    now = state.now
    if now is None:
        return Change(key, state.read, None)
    assert isinstance(now, _Value)
    kept = state.read.content_type if state.read is not None else None
    return Change(key, state.read, now.value, kept, now.flags)


def _conflict(errors: list[dict[str, Any]]) -> Response:
    return consul_json({"Results": None, "Errors": errors}, 409)


class ConsulTxn:
    """The handler of ``PUT /v1/txn``."""

    def __init__(self, context: ConsulContext) -> None:
        self.context = context
        self.store = context.store

    async def answer(self, request: Request, caller: Caller) -> Response:
        """Check every operation, then write; 200 with the results, or 409 with the errors."""
        if request.method != b"PUT":
            raise ConsulError(405, f"method {request.method.decode('latin-1')} not allowed")
        ops = self._parse(request)
        for op in ops:  # every permission before anything is read
            self.context.access.check(request, caller, op.need())
        keys: dict[str, _Key] = {}
        results: list[_Result] = []
        errors: list[dict[str, Any]] = []
        for op in ops:
            what = await self._evaluate(op, keys, results)
            if what is not None:
                errors.append({"OpIndex": op.number, "What": what})
        if errors:
            return _conflict(errors)
        return await self._write(ops, keys, results)

    # -- parsing ------------------------------------------------------------------------------

    def _parse(self, request: Request) -> list[_Op]:
        limit = 2 * self.context.max_value_size  # base64 values: the Site's limit is lower
        try:
            body = request_body(request, limit)
        except TooLarge:
            raise ConsulError(413, f"Request body too large, max size: {limit} bytes") from None
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            document = None
        if not isinstance(document, list):
            raise ConsulError(400, "Failed to parse body: not a JSON array of operations")
        if len(document) > MAX_OPERATIONS:
            raise ConsulError(
                413,
                f"Transaction contains too many operations ({len(document)} > {MAX_OPERATIONS})",
            )
        return [self._operation(number, item) for number, item in enumerate(document)]

    def _operation(self, number: int, item: Any) -> _Op:
        where = f"operation {number}"
        if not isinstance(item, dict) or not isinstance(item.get("KV"), dict):
            raise ConsulError(
                400, f"Failed to parse body: {where}: only KV operations are supported here"
            )
        entry = item["KV"]
        verb = _field(entry, "Verb", str, "", where)
        if verb in REFUSED_VERBS:
            raise ConsulError(
                400, f"{where}: verb {verb!r} needs Consul sessions, which Navistore does not have"
            )
        if verb not in READ_VERBS and verb not in WRITE_VERBS:
            raise ConsulError(400, f"Failed to parse body: {where}: unknown KV verb {verb!r}")
        name = _field(entry, "Key", str, "", where)
        tree = verb in ("get-tree", "delete-tree")
        key = native_prefix(self.store, name) if tree else native_key(self.store, name)
        try:
            value = base64.b64decode(_field(entry, "Value", str, "", where), validate=True)
        except (binascii.Error, ValueError):
            raise ConsulError(400, f"Failed to parse body: {where}: Value is not base64") from None
        if len(value) > self.context.max_value_size:
            raise ConsulError(
                413,
                f"Value for key {name[:200]!r} is too large "
                f"({len(value)} > {self.context.max_value_size} bytes)",
            )
        flags = _field(entry, "Flags", int, 0, where)
        index = _field(entry, "Index", int, 0, where)
        if not 0 <= flags <= MAX_FLAGS or index < 0:
            raise ConsulError(400, f"Failed to parse body: {where}: Flags or Index out of range")
        return _Op(number, verb, key, value, flags, index)

    # -- phase 1: every check -----------------------------------------------------------------

    async def _state(self, key: str, keys: dict[str, _Key]) -> _Key:
        known = keys.get(key)
        if known is None:
            record = await self.store.get(key)
            known = keys[key] = _Key(record, record)
        return known

    async def _evaluate(self, op: _Op, keys: dict[str, _Key], results: list[_Result]) -> str | None:
        """Apply ``op`` to the transaction's view of the keys; return why it fails, or None."""
        if op.verb in ("get-tree", "delete-tree"):
            await self._tree(op, keys, results)
            return None
        name = consul_name(op.key)
        state = await self._state(op.key, keys)
        current = state.now
        seq = current.seq if isinstance(current, Record) else None
        if op.verb in ("get", "get-or-empty"):
            if current is not None:
                results.append((op.number, current, True))
            elif op.verb == "get":
                return f"key {name!r} doesn't exist"
            else:
                results.append((op.number, None, True))
        elif op.verb == "check-index":
            if current is None:
                return f"key {name!r} doesn't exist"
            if seq != op.index:
                shown = "written earlier in this transaction" if seq is None else seq
                return f"current modify index {shown} != {op.index}"
        elif op.verb == "check-not-exists":
            if current is not None:
                return f"key {name!r} exists"
        elif op.verb in ("set", "cas"):
            if op.verb == "cas" and (current is not None if op.index == 0 else seq != op.index):
                return f"failed to set key {name!r}, index is stale"
            state.now = _Value(op.key, op.value, op.flags)
        elif op.verb == "delete-cas" and current is not None and seq != op.index:
            return f"failed to delete key {name!r}, index is stale"
        else:  # delete, delete-cas
            state.now = None
        return None

    async def _tree(self, op: _Op, keys: dict[str, _Key], results: list[_Result]) -> None:
        """``get-tree`` / ``delete-tree``: every key under the prefix. What one transaction
        holds in all is bounded as one ``?recurse`` answer is (not 64 times that)."""
        held = [state.read for state in keys.values() if state.read is not None]
        found = await records_under(
            self.store,
            (op.key,),
            max_keys=MAX_RECURSE_KEYS - len(held),
            max_bytes=MAX_RECURSE_BYTES - sum(len(record.value) for record in held),
            what=f"the tree under {consul_name(op.key)!r} (with the transaction's other reads)",
        )
        for record in found:
            keys.setdefault(record.key, _Key(record, record))
        under = sorted(key for key, state in keys.items() if key.startswith(op.key) and state.now)
        for key in under:
            state = keys[key]
            if op.verb == "get-tree":
                assert state.now is not None
                results.append((op.number, state.now, True))
            else:
                state.now = None

    # -- phase 2: the writes ------------------------------------------------------------------

    async def _write(
        self, ops: list[_Op], keys: dict[str, _Key], results: list[_Result]
    ) -> Response:
        """Every key the transaction changes, in one backend transaction, if every key it read
        is still as read (else 409 and nothing written); key by key, each conditioned on what
        phase 1 read, over a backend that cannot write keys together."""
        changed = {
            key: state
            for key, state in keys.items()
            if not (state.now is state.read or (state.now is None and state.read is None))
        }
        if self.store.writes_together:
            outcome = await self.store.write_together(
                [_change(key, state) for key, state in changed.items()],
                [(key, state.read) for key, state in keys.items() if key not in changed],
            )
            if outcome is None:
                what = "a key it read changed while the transaction ran; nothing was written"
                return _conflict([{"OpIndex": ops[0].number, "What": what}])
            stored = {record.key: record for record in outcome if not record.deleted}
        else:
            refused, stored = await self._write_each(ops, changed)
            if refused is not None:
                return refused
        for op in ops:
            if op.verb in ("set", "cas") and op.key in stored:
                results.append((op.number, stored[op.key], False))
        results.sort(key=lambda result: result[0])
        answered: list[dict[str, Any]] = []
        for _, shown, with_value in results:
            if isinstance(shown, _Value) and shown.key in stored:
                # Read after the transaction wrote it: the entry as stored, with its index.
                shown = attrs.evolve(stored[shown.key], value=shown.value)
            answered.append({"KV": None if shown is None else _entry(shown, with_value=with_value)})
        return consul_json({"Results": answered, "Errors": None})

    async def _write_each(
        self, ops: list[_Op], changed: dict[str, _Key]
    ) -> tuple[Response | None, dict[str, Record]]:
        """The writes one key at a time (no rollback: the error says what stays applied)."""
        stored: dict[str, Record] = {}
        for done, (key, state) in enumerate(changed.items()):
            try:
                stored_record = await self._write_key(key, state)
            except (Conflict, NotFound, PreconditionFailed):
                number = next(op.number for op in ops if op.key == key or _in_tree(op, key))
                what = f"key {consul_name(key)!r} changed while the transaction ran"
                if done:
                    what += f"; {done} earlier write(s) of this transaction stay applied"
                return _conflict([{"OpIndex": number, "What": what}]), stored
            if stored_record is not None:
                stored[key] = stored_record
        return None, stored

    async def _write_key(self, key: str, state: _Key) -> Record | None:
        read, now = state.read, state.now
        if now is None:
            assert read is not None
            await self.store.remove(key, if_match=read.stamp.encode())
            return None
        assert isinstance(now, _Value)
        if read is None:
            written = await self.store.put(key, now.value, create_only=True, flags=now.flags)
        else:
            version = read.stamp.encode()
            written = await self.store.put(key, now.value, if_match=version, flags=now.flags)
        return written.record

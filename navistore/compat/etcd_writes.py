"""etcd's writes (``PUT``, ``POST``, ``DELETE`` of ``/v2/keys``) as conditional Store writes.

Each write reads the key, decides what etcd would do with what it read (its action, or its
error), then writes conditioned on exactly that read (``If-Match`` its stamp, or "must not
exist"). The Store makes that atomic; if another write slipped in between, the write decides
again on the fresh state, so ``compareAndSwap`` and ``create`` are as exact as in etcd. The
directory rules (is the key a directory, is a parent a file) read other keys and are not
atomic with the write: Navistore has no multi-key transactions.

The previous record read is the event's ``prevNode``; the event is remembered in
:class:`EventMemory` for the watchers that see the write.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Union

import attrs

from navistore.compat.etcd_errors import (
    DIR_NOT_EMPTY,
    KEY_NOT_FOUND,
    NODE_EXIST,
    NOT_DIR,
    NOT_FILE,
    RAFT_INTERNAL,
    ROOT_READ_ONLY,
    TEST_FAILED,
    TTL_NAN,
    EtcdError,
)
from navistore.compat.etcd_nodes import (
    DIR_TYPE,
    dir_node,
    file_node,
    has_children,
    is_marker,
    missing_cause,
    node_of,
    require_dir_parent,
)
from navistore.compat.etcd_params import KeyRequest
from navistore.record import Record
from navistore.store import NotFound, PreconditionFailed, Store
from navistore.web.errors import TooLarge

__all__ = ["FILE_TYPE", "Event", "EventMemory", "Writes"]

#: The content type of a value written through the etcd API (etcd's values are text).
FILE_TYPE = "text/plain; charset=utf-8"
#: How often a write decides again after losing a race before giving up.
_ATTEMPTS = 20


@attrs.frozen
class Event:
    """What a write answers: etcd's ``action``, ``node`` and ``prevNode``, and its status."""

    action: str
    node: dict[str, Any]
    prev: dict[str, Any] | None
    index: int
    status: int = 200

    def document(self, *, with_node: bool = True) -> dict[str, Any]:
        """The JSON body (``noValueOnSuccess`` leaves out the nodes, as etcd does)."""
        body: dict[str, Any] = {"action": self.action}
        if with_node:
            body["node"] = self.node
            if self.prev is not None:
                body["prevNode"] = self.prev
        return body


#: What an event is remembered by: a write's seq, or the key and stamp of the expiry that a
#: record written with a TTL will have (:meth:`Record.expiry <navistore.record.Record.expiry>`).
EventKey = Union[int, tuple[str, str]]


class EventMemory:
    """The action and ``prevNode`` of the latest writes made through this API, so a watcher
    that sees one answers it as etcd would (``update``, ``compareAndSwap``, a ``delete`` or an
    ``expire`` with its ``prevNode``). Other writes (native, replicated) show as ``set``,
    ``delete`` or ``expire`` without a ``prevNode``. Bounded in entries and in the bytes of
    the values it holds."""

    def __init__(self, most: int = 4096, most_bytes: int = 4 * 1024 * 1024) -> None:
        self._events: OrderedDict[EventKey, tuple[str, dict[str, Any] | None, int]] = OrderedDict()
        self._most = most
        self._most_bytes = most_bytes
        self._bytes = 0

    def remember(self, seq: int | None, action: str, prev: dict[str, Any] | None) -> None:
        """Remember the write stored at ``seq``."""
        if seq is not None:
            self._keep(seq, action, prev)

    def remember_expiry(self, stored: Record, node: dict[str, Any]) -> None:
        """Remember the ``prevNode`` of the expiry a record written with a TTL will have."""
        if stored.expires_ms is not None and not stored.deleted:
            self._keep((stored.key, stored.stamp.successor().encode()), "expire", node)

    def _keep(self, name: EventKey, action: str, prev: dict[str, Any] | None) -> None:
        size = 64 + (len(str(prev.get("value", ""))) if prev else 0)
        if size > self._most_bytes // 16:
            prev = {field: part for field, part in (prev or {}).items() if field != "value"} or None
            size = 64
        self._events[name] = (action, prev, size)
        self._bytes += size
        while len(self._events) > self._most or self._bytes > self._most_bytes:
            _, (_, _, dropped) = self._events.popitem(last=False)
            self._bytes -= dropped

    def recall(self, record: Record) -> tuple[str, dict[str, Any] | None] | None:
        """The action and ``prevNode`` remembered for ``record``, or None."""
        name: EventKey | None = record.seq
        if record.is_expiry:
            name = (record.key, record.stamp.encode())
        found = self._events.get(name) if name is not None else None
        return None if found is None else (found[0], found[1])


def _compare(current: Record, params: KeyRequest) -> str | None:
    """etcd's ``cause`` when ``prevValue`` / ``prevIndex`` do not match, else None."""
    causes = []
    value = current.value.decode("utf-8", "replace")
    if params.prev_value is not None and params.prev_value != value:
        causes.append(f"[{params.prev_value} != {value}]")
    if params.prev_index and params.prev_index != current.seq:
        causes.append(f"[{params.prev_index} != {current.seq}]")
    return " ".join(causes) or None


class Writes:
    """The writes of the etcd API over ``store``."""

    def __init__(self, store: Store, memory: EventMemory, max_value_size: int) -> None:
        self.store = store
        self.memory = memory
        self.max_value_size = max_value_size

    def _now(self) -> int:
        return self.store.clock.wall_ms()

    async def _index(self) -> int:
        return self.store.newest_seq

    async def _state(self, key: str) -> tuple[Record | None, bool]:
        """The key's live record, and whether it is a directory."""
        current = await self.store.get(key)
        if is_marker(current):
            return current, True
        return current, await has_children(self.store, key) is not None

    async def _store(
        self, key: str, value: bytes, content_type: str, current: Record | None, ttl: int | None
    ) -> Record:
        """Write conditioned on ``current`` (PreconditionFailed: someone wrote in between),
        keeping the flags another API gave the key (etcd has none)."""
        ttl_ms = None if ttl is None else max(1, ttl * 1000)  # ttl=0: expires at once, as in etcd
        flags = current.flags if current is not None else 0
        try:
            if current is None:
                result = await self.store.put(
                    key, value, content_type, if_none_match=True, ttl_ms=ttl_ms, flags=flags
                )
            else:
                match = current.stamp.encode()
                result = await self.store.put(
                    key, value, content_type, if_match=match, ttl_ms=ttl_ms, flags=flags
                )
        except ValueError as exc:  # a backend that cannot expire keys
            raise EtcdError(
                TTL_NAN, str(exc), self.store.newest_seq, native="invalid_ttl"
            ) from None
        return result.record

    def _done(
        self, action: str, stored: Record, prev: dict[str, Any] | None, status: int = 200
    ) -> Event:
        self.memory.remember(stored.seq, action, prev)
        node = node_of(stored, self._now())
        self.memory.remember_expiry(stored, node)
        return Event(action, node, prev, stored.seq or 0, status)

    # -- PUT ----------------------------------------------------------------------------------

    async def put(self, key: str, params: KeyRequest) -> Event:
        """``PUT /v2/keys/<key>``: set, create, update or compareAndSwap."""
        if key == "/":
            raise EtcdError(ROOT_READ_ONLY, "/", await self._index())
        value = params.value.encode("utf-8")
        if len(value) > self.max_value_size:
            raise TooLarge(self.max_value_size)
        for _attempt in range(_ATTEMPTS):
            try:
                return await self._put_once(key, params, value)
            except (PreconditionFailed, NotFound):
                continue  # another write came in between: decide again
        raise EtcdError(RAFT_INTERNAL, f"{key}: kept losing races", await self._index())

    async def _put_once(self, key: str, params: KeyRequest, value: bytes) -> Event:
        index = await self._index()
        current, is_dir = await self._state(key)
        exists = current is not None or is_dir
        compare = params.prev_value is not None or params.prev_index > 0
        if params.prev_exist is False:
            if exists:
                raise EtcdError(NODE_EXIST, key, index)
            action = "create"
        elif params.prev_exist is True or compare:
            if not exists:
                raise EtcdError(KEY_NOT_FOUND, await missing_cause(self.store, key), index)
            if is_dir and (compare or (value and not params.refresh)):
                raise EtcdError(NOT_FILE, key, index)
            if is_dir and current is not None and not is_marker(current):
                # A native value with sub-keys: a marker written over it would lose the value.
                raise EtcdError(NOT_FILE, key, index)
            if compare and current is not None:
                cause = _compare(current, params)
                if cause is not None:
                    raise EtcdError(TEST_FAILED, cause, index)
                action = "compareAndSwap"
            else:
                action = "update"
        else:
            if is_dir:
                raise EtcdError(NOT_FILE, key, index)
            if params.refresh and current is None:
                raise EtcdError(KEY_NOT_FOUND, await missing_cause(self.store, key), index)
            action = "set"
        if not exists:
            await require_dir_parent(self.store, key, index)
        make_dir = is_dir if action in ("update", "compareAndSwap") else params.dir
        if params.refresh and current is not None:
            value, content_type = current.value, current.content_type
        elif make_dir:
            value, content_type = b"", DIR_TYPE
        else:
            content_type = current.content_type if current is not None and not is_dir else FILE_TYPE
        now = self._now()
        prev: dict[str, Any] | None = None
        if current is not None:
            prev = dir_node(key, current, now) if is_dir else file_node(current, now)
        elif is_dir:
            prev = dir_node(key, None, now)
        stored = await self._store(key, value, content_type, current, params.ttl)
        status = 201 if action == "create" or (action == "set" and current is None) else 200
        return self._done(action, stored, prev, status)

    # -- POST ---------------------------------------------------------------------------------

    async def post(self, key: str, params: KeyRequest) -> Event:
        """``POST /v2/keys/<dir>``: a new key in the directory, named by the node's next index
        (20 digits), so keys made one after another sort in the order they were made."""
        value = params.value.encode("utf-8")
        if len(value) > self.max_value_size:
            raise TooLarge(self.max_value_size)
        index = await self._index()
        if key != "/":
            current, is_dir = await self._state(key)
            if current is not None and not is_dir:
                raise EtcdError(NOT_DIR, key, index)
            await require_dir_parent(self.store, key, index)
        content_type = DIR_TYPE if params.dir else FILE_TYPE
        stored_value = b"" if params.dir else value
        number = index + 1
        base = "" if key == "/" else key
        for _attempt in range(_ATTEMPTS):
            child = f"{base}/{number:020d}"
            try:
                stored = await self._store(child, stored_value, content_type, None, params.ttl)
            except PreconditionFailed:
                number = max(number, await self._index()) + 1
                continue
            return self._done("create", stored, None, 201)
        raise EtcdError(RAFT_INTERNAL, f"{key}: kept losing races", await self._index())

    # -- DELETE -------------------------------------------------------------------------------

    async def delete(self, key: str, params: KeyRequest) -> Event:
        """``DELETE /v2/keys/<key>``: delete or compareAndDelete a file, or delete a directory
        (``dir=true`` if empty, ``recursive=true`` with all it holds)."""
        if key == "/":
            raise EtcdError(ROOT_READ_ONLY, "/", await self._index())
        for _attempt in range(_ATTEMPTS):
            try:
                return await self._delete_once(key, params)
            except (PreconditionFailed, NotFound):
                continue
        raise EtcdError(RAFT_INTERNAL, f"{key}: kept losing races", await self._index())

    async def _delete_once(self, key: str, params: KeyRequest) -> Event:
        index = await self._index()
        current, is_dir = await self._state(key)
        if current is None and not is_dir:
            raise EtcdError(KEY_NOT_FOUND, await missing_cause(self.store, key), index)
        compare = params.prev_value is not None or params.prev_index > 0
        now = self._now()
        if is_dir:
            if compare or not (params.dir or params.recursive):
                raise EtcdError(NOT_FILE, key, index)
            return await self._delete_dir(key, current, params.recursive, index, now)
        assert current is not None
        action = "delete"
        if compare:
            cause = _compare(current, params)
            if cause is not None:
                raise EtcdError(TEST_FAILED, cause, index)
            action = "compareAndDelete"
        prev = file_node(current, now)
        tombstone = await self.store.delete(key, if_match=current.stamp.encode())
        node = file_node(tombstone, now)
        node["createdIndex"] = current.seq
        self.memory.remember(tombstone.seq, action, prev)
        return Event(action, node, prev, tombstone.seq or 0)

    async def _delete_dir(
        self, key: str, marker: Record | None, recursive: bool, index: int, now: int
    ) -> Event:
        first = await has_children(self.store, key)
        if first is not None and not recursive:
            raise EtcdError(DIR_NOT_EMPTY, key, index)
        shown_by = marker or first
        prev = dir_node(key, shown_by, now)
        if first is not None:
            await self.store.delete_prefix(key + "/")
        seq = None
        if marker is not None:
            tombstone = await self.store.delete(key, if_match=marker.stamp.encode())
            seq = tombstone.seq
            self.memory.remember(seq, "delete", prev)
        newest = seq if seq is not None else await self._index()
        node: dict[str, Any] = {"key": key, "dir": True, "modifiedIndex": newest}
        node["createdIndex"] = shown_by.seq if shown_by is not None else newest
        return Event("delete", node, prev, newest)

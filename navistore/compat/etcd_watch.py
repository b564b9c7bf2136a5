"""etcd's ``GET /v2/keys/<key>?wait=true``: the first change of a key (or, with ``recursive``,
of anything under it).

- ``waitIndex=N`` answers the first change with an index of at least N at once if the node
  still has it. Navistore's change log keeps one entry per key (its latest change), so a key
  changed several times since N answers its latest change, not its first: a client that loops
  on ``modifiedIndex + 1`` sees fewer events than etcd sends, never a stale state.
- Past the tombstone purge horizon (:mod:`navistore.store.feed`) a ``waitIndex`` is etcd's
  ``401 The event in requested index is outdated and cleared`` (status 400).
- Without ``waitIndex`` (or with 0, as etcdctl sends) it answers the next change after now.

With ``stream=true`` the answer goes on: every change in scope, one JSON line each (from
``waitIndex`` if given), until the client goes away.

As etcd does, the answer starts (200 and the headers, ``X-Etcd-Index`` the index the watch
started at) before the change comes, and a wait has no server timeout: the node's watcher cap
bounds how many wait at once (503 past it), and the client's disconnect (or the node's
shutdown, which ends the answer with no event) ends it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Callable

from twisted.web.server import Request

from navistore.compat.etcd_errors import EVENT_INDEX_CLEARED, EtcdError
from navistore.compat.etcd_nodes import file_node, node_of
from navistore.compat.etcd_params import KeyRequest
from navistore.compat.etcd_writes import EventMemory
from navistore.record import Record
from navistore.store import Store
from navistore.store.feed import needs_resync, read_changes
from navistore.tokens import Caller
from navistore.watch_hub import Watcher, WatchHub
from navistore.web.request import when_lost
from navistore.web.responses import Response, json_bytes

__all__ = ["event_of", "watch_answer"]


def event_of(record: Record, memory: EventMemory, now_ms: int) -> dict[str, Any]:
    """The etcd event a stored record is: the action and ``prevNode`` of a write made through
    this API when remembered, else ``set`` for a live record, ``expire`` for the tombstone of
    an expiry and ``delete`` for any other tombstone."""
    known = memory.recall(record)
    if record.deleted:
        action = "expire" if record.is_expiry else "delete"
        node = file_node(record, now_ms)
    else:
        action = "set"
        node = node_of(record, now_ms)
    event: dict[str, Any] = {"action": action, "node": node}
    if known is not None:
        event["action"] = known[0]
        if known[1] is not None:
            event["prevNode"] = known[1]
            if record.deleted:
                node["createdIndex"] = known[1].get("createdIndex", record.seq)
                if known[1].get("dir"):
                    node["dir"] = True
    return event


class _Scope:
    """What a wait watches: the key, and with ``recursive`` everything under it, that the
    caller may see."""

    def __init__(self, key: str, recursive: bool, caller: Caller) -> None:
        self.key = key
        self.recursive = recursive
        self.caller = caller
        self.under = "/" if key == "/" else key + "/"

    def matches(self, record: Record) -> bool:
        key = record.key
        inside = key == self.key or (self.recursive and key.startswith(self.under))
        return inside and self.caller.covers(key)

    def watch(self, hub: WatchHub, since: int) -> Watcher:
        if self.recursive:
            # The prefix ``/dir`` holds ``/dirt`` too: matches() leaves those out.
            return hub.watch(self.key, since=since, kind="wait")
        return hub.watch(self.key, since=since, exact=True, kind="wait")


async def _first_after(store: Store, scope: _Scope, since: int) -> Record | None:
    """The first change in ``scope`` with a seq above ``since``, from the store."""
    found: Record | None = None
    own = await store.backend.get(scope.key) if scope.key != "/" else None
    if own is not None and (own.seq or 0) > since and scope.matches(own):
        found = own
    if scope.recursive:
        seen = scope.caller.visible(scope.under)
        cursor = since
        while seen:
            page, _ = await read_changes(store, cursor, limit=1, prefix=seen)
            if page.records:
                record = page.records[0]
                if found is None or (record.seq or 0) < (found.seq or 0):
                    found = record
                break
            if not page.more:
                break
            cursor = page.last_seq
    return found


def _event_bytes(record: Record, memory: EventMemory, now_ms: int) -> bytes:
    return json_bytes(event_of(record, memory, now_ms)) + b"\n"


async def watch_answer(
    request: Request,
    store: Store,
    hub: WatchHub,
    memory: EventMemory,
    key: str,
    params: KeyRequest,
    caller: Caller,
    headers: dict[bytes, bytes],
) -> Response:
    """Answer a wait: at once when the change is there, else a stream that sends it when it
    comes. ``headers`` are etcd's (without ``X-Etcd-Index``)."""
    now: Callable[[], int] = store.clock.wall_ms
    scope = _Scope(key, params.recursive, caller)
    index = store.newest_seq
    answer_headers = {
        **headers,
        b"Content-Type": b"application/json",
        b"X-Etcd-Index": b"%d" % index,
    }
    since = index
    if params.wait_index:
        since = params.wait_index - 1
        horizon = await store.purged_before()
        if needs_resync(since, horizon, full_read=False):
            cause = f"the requested history has been cleared [{horizon}/{params.wait_index}]"
            raise EtcdError(EVENT_INDEX_CLEARED, cause, index)
    # Registered before reading: a change made in between is held, not lost.
    watcher = scope.watch(hub, since)
    try:
        if params.wait_index and not params.stream:
            found = await _first_after(store, scope, since)
            if found is not None:
                watcher.release()
                return Response(200, _event_bytes(found, memory, now()), answer_headers)
    except BaseException:
        watcher.release()
        raise
    when_lost(request, watcher.release)
    catch_up = bool(params.wait_index and params.stream)
    stream = _wait(store, watcher, scope, memory, since, now, params.stream, catch_up)
    return Response(200, headers=answer_headers, stream=stream)


async def _wait(
    store: Store,
    watcher: Watcher,
    scope: _Scope,
    memory: EventMemory,
    since: int,
    now: Callable[[], int],
    stream: bool,
    catch_up: bool,
) -> AsyncIterator[bytes]:
    """The streamed answer: the headers at once, then the first change in scope (with
    ``stream``, every change, one JSON line each, until the client goes away). ``catch_up``:
    read the changes the node has after ``since`` first (a ``waitIndex`` in the past)."""
    try:
        yield b""  # the status and headers go out now, as etcd sends them
        delivered = since
        reading = catch_up
        while True:
            if reading:  # from the store: the backlog, or again after the watcher overflowed
                watcher.recovered()
                found = await _first_after(store, scope, delivered)
                if found is not None:
                    yield _event_bytes(found, memory, now())
                    if not stream:
                        return
                    delivered = found.seq or delivered
                    watcher.skip_through(delivered)
                    continue
                reading = False
            batch = await watcher.next(None)
            if batch is None:
                return  # the node is shutting down, or the client went away
            if watcher.overflowed:
                reading = True
                continue
            for record in batch:
                if (record.seq or 0) > delivered and scope.matches(record):
                    yield _event_bytes(record, memory, now())
                    if not stream:
                        return
                    delivered = record.seq or delivered
    finally:
        watcher.release()

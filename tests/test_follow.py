"""The follower (navistore.store.follow) over a real memory backend, told by hand that the newest
seq moved: it announces what other nodes wrote (also below a seq of this node's own), not this
node's own writes again, and makes the cache forget only the other nodes' keys."""

from __future__ import annotations

from typing import Callable

import pytest_twisted

from navistore.backend.memory import MemoryBackend
from navistore.clock import Stamp
from navistore.record import Record
from navistore.store.follow import Follower

NODE = "00000000000000a1"


class _Backend(MemoryBackend):
    """A memory backend that keeps what the follower tells it to forget."""

    def __init__(self) -> None:
        super().__init__()
        self.forgotten: list[str] = []

    def forget(self, keys: list[str]) -> None:
        self.forgotten.extend(keys)

    def subscribe_external(self, callback: Callable[[int], None]) -> Callable[[], None]:
        return lambda: None


class _Store:
    def __init__(self, backend: _Backend) -> None:
        self.backend = backend
        self.newest_seq = 0
        self.heard: list[Record] = []
        self._listeners: list[Callable[[Record], None]] = []

    def _notify(self, record: Record) -> None:
        self.heard.append(record)
        self.newest_seq = max(self.newest_seq, record.seq or 0)
        for listener in self._listeners:
            listener(record)

    def subscribe(self, listener: Callable[[Record], None]) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[Record], None]) -> None:
        self._listeners.remove(listener)


@pytest_twisted.ensureDeferred
async def test_announces_external_records_even_below_an_own_seq() -> None:
    backend = _Backend()
    store = _Store(backend)
    follower = Follower(store, 0)  # type: ignore[arg-type]
    follower.start()
    external = await backend.apply(Record("/theirs", b"b", "text/plain", Stamp(1, 0, NODE)))
    own = await backend.apply(Record("/mine", b"a", "text/plain", Stamp(2, 0, NODE)))
    assert external is not None and own is not None
    store._notify(own)  # this node's write, acknowledged before the follower reads
    follower.moved(own.seq or 0)
    await backend.last_seq()  # let the follower's reads finish
    assert [r.key for r in store.heard] == ["/mine", "/theirs"]
    assert backend.forgotten == ["/theirs"]
    follower.moved(own.seq or 0)  # a poll with nothing new: nothing again
    await backend.last_seq()
    assert [r.key for r in store.heard] == ["/mine", "/theirs"]
    follower.stop()

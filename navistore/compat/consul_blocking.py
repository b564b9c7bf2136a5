"""Consul's blocking queries over the WatchHub: ``?index=N&wait=10s``.

A read with ``index=N`` answers at once when something under its key or prefix changed after
seq N, else waits until something there does, or until ``wait`` (default 5 minutes, at most 10,
plus up to a sixteenth of it at random so that clients started together spread out) runs out.
Unlike Consul (hashicorp/consul#9449), a write elsewhere never wakes it: the hub hands a watcher
only the changes under its own prefix.

It also answers at once when N is ahead of this node (the client's index came from another
node, or from before a restore: the answer's lower index tells the client to reset), and when N
is older than the tombstone purge horizon (a delete after N may be gone: "maybe changed" is the
only safe answer). A client that goes away cancels the read, which releases its watcher.
"""

from __future__ import annotations

import random
import re

import attrs
from twisted.web.server import Request

from navistore.compat.consul_base import ConsulError, uint_arg
from navistore.store import Store
from navistore.store.feed import Prefixes, needs_resync, read_changes
from navistore.watch_hub import WatchHub
from navistore.web.params import query_arg

__all__ = [
    "DEFAULT_WAIT",
    "MAX_WAIT",
    "Blocking",
    "blocking_arg",
    "parse_duration",
    "wait_for_change",
]

#: Seconds a blocking query waits without ``wait``, and the most it may ask (before jitter).
DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
#: The jitter added is at most this fraction of the wait (Consul's ``JitterFraction``).
JITTER_FRACTION = 16

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float | None:
    """A Go duration (``10s``, ``1m30s``, ``250ms``, ``0``) in seconds, or None if it is not one."""
    if text == "0":
        return 0.0
    if not text or len(text) > 64:
        return None
    position, total = 0, 0.0
    while position < len(text):
        found = _PART.match(text, position)
        if found is None:
            return None
        total += float(found.group(1)) * _UNITS[found.group(2)]
        position = found.end()
    return total


@attrs.frozen
class Blocking:
    """A blocking query: answer once something changed after seq ``index``, or after ``wait``
    seconds (jitter included)."""

    index: int
    wait: float


def blocking_arg(request: Request, jitter: random.Random | None = None) -> Blocking | None:
    """The blocking query ``request`` asks for, or None (no ``index``, or ``index=0``: Consul
    answers those at once)."""
    index = uint_arg(request, "index", "index")
    wait_text = query_arg(request, "wait")
    wait = DEFAULT_WAIT
    if wait_text is not None:
        parsed = parse_duration(wait_text)
        if parsed is None:
            raise ConsulError(
                400, f"Invalid wait time: {wait_text[:40]!r} is not a duration like 10s"
            )
        wait = min(parsed, MAX_WAIT) if parsed > 0 else DEFAULT_WAIT
    if not index:
        return None
    wait += (jitter or random).uniform(0, wait / JITTER_FRACTION)
    return Blocking(index, wait)


async def wait_for_change(
    store: Store,
    hub: WatchHub,
    target: str,
    blocking: Blocking,
    *,
    exact: bool,
    seen: Prefixes,
) -> None:
    """Return once the canonical key ``target`` (``exact``), or something under the prefix
    ``target`` that the caller sees (``seen``), changed after ``blocking.index``; or at once in
    the cases the module names; or when the wait runs out or the node shuts down."""
    index = blocking.index
    if index > store.newest_seq:
        return  # the client is ahead of this node: the answer's index will tell it to reset
    if needs_resync(index, await store.purged_before(), full_read=False):
        return
    # Registered before the state is read: a change in between is held, not lost.
    watcher = hub.watch(target, since=index, exact=exact, kind="consul")
    try:
        if exact:
            current = await store.backend.get(target)  # a tombstone is a change too
            if current is not None and (current.seq or 0) > index:
                return
        else:
            cursor = index
            while True:  # each read is bounded; ``more`` says it stopped at its work bound
                page, _ = await read_changes(store, cursor, limit=1, prefix=seen)
                if page.records:
                    return
                cursor = page.last_seq
                if not page.more:
                    break
            watcher.skip_through(cursor)
        deadline = hub.clock.seconds() + blocking.wait
        while True:
            remaining = deadline - hub.clock.seconds()
            if remaining <= 0 or watcher.closed:
                return
            batch = await watcher.next(remaining)
            if batch is None or not batch or watcher.overflowed:
                return  # shut down, timed out, or so much changed that the watcher overflowed
            if exact or any(record.key.startswith(seen) for record in batch):
                return
            watcher.skip_through(batch[-1].seq or 0)  # a change the caller may not see
    finally:
        watcher.release()

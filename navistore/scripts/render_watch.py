"""The watch loop of ``navistore render``: follow the feed, debounce, render, reload.

A :class:`Poller` thread long-polls ``/_changes?feed=longpoll`` on one prefix, the common prefix
of everything the templates read, and hands the keys that changed to the main thread through a
queue. It owns the :class:`~navistore.scripts.render_nodes.Position` (node id and seq): the
position only moves once a whole answer has been queued, so a connection lost halfway asks again
for the same changes. After a failure it moves on to the next ``--url`` and checks whose position
it holds there (see :mod:`navistore.scripts.render_nodes`): the same node resumes from the seq,
another one, or a feed that went backwards, is a *resync*: its current seq becomes the position
and every template is read again from it. A 410 ``resync_required`` is a resync too.

The main thread renders the templates a change concerns once their ``wait`` has passed (quiet
for QUIET seconds, or MOST seconds after the burst's first change), and when what the templates
read moves the common prefix, tells the poller the new prefix and the position it held before
reading (so a change made between the read and the new poll is not missed: at worst one is seen
twice, and renders the same file, which is then left alone).
"""

from __future__ import annotations

import contextlib
import http.client
import queue
import signal
import socket
import threading
import time
from typing import Any, Callable

import attrs

from navistore.scripts.node_client import UNAVAILABLE, Answer, Failed, Node, _query
from navistore.scripts.render_engine import Renderer
from navistore.scripts.render_nodes import NodeSet, Position, position_of

__all__ = ["Poller", "watch"]

#: An empty long-poll answer faster than this means the node does not hold polls: wait.
_MIN_POLL_SECONDS = 0.5
_MAX_BACKOFF_SECONDS = 10.0
#: Keys of one feed answer looked at (a page is bounded by the node; this bounds a bad one).
_MAX_RESULTS = 100_000

#: An event from the poller: ("changes", keys) or ("resync", reason).
Event = tuple[str, Any]


class _Interrupted(Exception):
    """The poll was cut short because the prefix changed: not a failure of the node."""


def _backoff(failures: int) -> float:
    return float(min(0.25 * 2 ** min(failures, 8), _MAX_BACKOFF_SECONDS))


class Poller(threading.Thread):
    """Follows one node's feed at a time for the renderer; see the module docstring."""

    def __init__(
        self,
        nodes: NodeSet,
        position: Position,
        prefix: str | None,
        poll_timeout: int,
        events: queue.Queue[Event],
        log: Callable[[str], None],
    ) -> None:
        super().__init__(name="navistore-render-poller", daemon=True)
        self.nodes = nodes
        self.poll_timeout = poll_timeout
        self.events = events
        self.log = log
        self._lock = threading.Lock()
        self._position = position
        self._verified: Node | None = nodes.current
        self._prefix = prefix
        self._connection: http.client.HTTPConnection | None = None
        self._interrupted = False
        self._wake = threading.Event()
        self._stopping = threading.Event()

    def cursor(self) -> Position:
        """The position changes are asked from (take it before reading the templates)."""
        with self._lock:
            return self._position

    def watch(self, prefix: str | None, read_from: Position) -> None:
        """Follow ``prefix`` from now on, asking again for changes after ``read_from`` (the
        position before the templates were read) if that is the same node's and earlier."""
        with self._lock:
            if prefix == self._prefix:
                return
            self._prefix = prefix
            held = self._position
            if read_from.node_id == held.node_id and read_from.seq < held.seq:
                self._position = attrs.evolve(held, seq=read_from.seq)
            self._interrupt()
        self._wake.set()

    def stop(self) -> None:
        """End the thread soon: the poll in progress is cut short (the renderer itself ends
        with the process; tests stop their pollers)."""
        self._stopping.set()
        with self._lock:
            self._interrupt()
        self._wake.set()

    def _interrupt(self) -> None:
        """Cut the poll in progress short (with the lock held)."""
        self._interrupted = True
        connection = self._connection
        if connection is not None and connection.sock is not None:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)

    def _pause(self, seconds: float) -> None:
        """Wait, unless a new prefix or a stop comes first."""
        self._wake.wait(seconds)
        self._wake.clear()

    def run(self) -> None:
        """Poll until stopped (a daemon thread: it ends with the renderer)."""
        failures = 0
        while not self._stopping.is_set():
            with self._lock:
                self._interrupted = False
                prefix, position = self._prefix, self._position
            node = self.nodes.current
            if prefix is None:
                self._pause(self.poll_timeout)
                continue
            try:
                if self._verified is not node:
                    self._verify(node, failures)
                    position = self.cursor()
                started = time.monotonic()
                status, document = self._poll(node, position.seq, prefix)
            except _Interrupted:
                continue
            except Failed as exc:
                with self._lock:
                    if self._interrupted:
                        continue
                self._verified = None
                failures += 1
                if exc.status != UNAVAILABLE:
                    self.log(f"watch: {exc}; retrying in {_backoff(failures):.0f}s")
                    self._pause(_backoff(failures))
                    continue
                if failures == 1:
                    self.log(f"watch: lost {node.url}: {exc}")
                if failures % len(self.nodes.nodes) == 0:
                    self._pause(_backoff(failures // len(self.nodes.nodes)))
                self.nodes.advance(node)
                continue
            failures = 0
            self._take(node, position, status, document)
            waited = time.monotonic() - started
            if status == 200 and not document["results"] and waited < _MIN_POLL_SECONDS:
                self._pause(_MIN_POLL_SECONDS - waited)

    def _verify(self, node: Node, failures: int) -> None:
        """Reached ``node`` (again): resume from our position if it is that node's, else resync
        from its current seq."""
        found = position_of(node)
        with self._lock:
            held = self._position
            same = found.node_id == held.node_id and found.seq >= held.seq
            if not same:
                self._position = found
        self._verified = node
        if same:
            if failures:
                self.log(f"watch: reached {node.url}; resuming after seq {held.seq}")
            return
        why = (
            f"its feed went back from seq {held.seq} to {found.seq}"
            if found.node_id == held.node_id
            else f"it is node {found.node_id}, not {held.node_id}: seqs differ between nodes"
        )
        self.log(f"watch: reading every template again from {node.url} ({why})")
        self.events.put(("resync", why))

    def _poll(self, node: Node, since: int, prefix: str) -> tuple[int, Any]:
        """One long poll, on a connection :meth:`watch` can cut short."""
        target = "/_changes?" + _query(
            feed="longpoll", since=since, prefix=prefix, timeout=self.poll_timeout
        )
        connection = node.connection(self.poll_timeout + node.timeout)
        with self._lock:
            if self._interrupted:
                raise _Interrupted()
            self._connection = connection
        try:
            response = node.send(connection, "GET", target)
            answer = Answer(
                response.status, response.getheader("Content-Type") or "", response.read()
            )
        except (OSError, http.client.HTTPException) as exc:
            raise Failed(UNAVAILABLE, f"cannot reach {node.url}: {exc}") from None
        finally:
            with self._lock:
                self._connection = None
            connection.close()
        document = answer.expect("watch", 200, 410).json()
        if answer.status == 200 and not (
            isinstance(document, dict)
            and isinstance(document.get("results"), list)
            and isinstance(document.get("last_seq"), int)
        ):
            raise Failed(UNAVAILABLE, "watch: the node answered something that is not a feed")
        return answer.status, document

    def _take(self, node: Node, position: Position, status: int, document: Any) -> None:
        """Queue what one answer says, then move the position past it."""
        if status == 410:
            detail = document.get("detail") if isinstance(document, dict) else None
            resume = detail.get("last_seq") if isinstance(detail, dict) else None
            if not isinstance(resume, int):
                self._verified = None  # ask /_health where the node stands instead
                return
            with self._lock:
                if not self._interrupted:
                    self._position = attrs.evolve(position, seq=resume)
            self.log(
                f"watch: {node.url} no longer knows every change after seq {position.seq} "
                f"(resync required): reading every template again"
            )
            self.events.put(("resync", "resync required"))
            return
        last_seq = document["last_seq"]
        if last_seq < position.seq:
            self._verified = None  # the feed went backwards: _verify decides
            return
        keys = [
            change["key"]
            for change in document["results"][:_MAX_RESULTS]
            if isinstance(change, dict) and isinstance(change.get("key"), str)
        ]
        if keys:
            self.events.put(("changes", keys))
        with self._lock:
            if not self._interrupted:
                self._position = attrs.evolve(position, seq=last_seq)


@attrs.define
class _Burst:
    """Changes waiting to be rendered for one template: when the burst began and when the
    last change came; ``not_before`` delays a retry after a failed render."""

    first: float
    last: float
    not_before: float = 0.0
    failures: int = 0

    def due(self, quiet: float, most: float) -> float:
        return max(self.not_before, min(self.last + quiet, self.first + most))


def watch(
    renderer: Renderer,
    nodes: NodeSet,
    poll_timeout: int,
    log: Callable[[str], None],
) -> None:
    """Render every template, then re-render each when what it read changes; never returns.
    SIGHUP (when this runs in the main thread) reads the template files again and renders
    them all."""
    events: queue.Queue[Event] = queue.Queue()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, lambda signum, frame: _post(events, ("reload", None)))
    failures = 0
    while True:
        try:
            _node, position = nodes.connect()
            break
        except Failed as exc:
            if exc.status != UNAVAILABLE:
                raise
            if not failures:
                log(f"no node answers ({exc}); waiting for one")
            failures += 1
            time.sleep(_backoff(failures))
    now = time.monotonic()
    pending = {
        index: _Burst(now, now)
        for index in range(len(renderer.specs))
        if renderer.templates[index] is not None
    }
    immediate = set(pending)
    poller = Poller(nodes, position, None, poll_timeout, events, log)
    started = False
    while True:
        now = time.monotonic()
        due = [
            index
            for index, burst in pending.items()
            if index in immediate or burst.due(*_wait(renderer, index)) <= now
        ]
        if due:
            read_from = poller.cursor()
            statuses = renderer.render(sorted(due), nodes.current)
            finished = time.monotonic()
            for index in due:
                immediate.discard(index)
                burst = pending.pop(index)
                if statuses[index] == UNAVAILABLE:  # the node went away mid-render: again
                    burst.failures += 1
                    burst.not_before = finished + _backoff(burst.failures)
                    pending[index] = burst
            poller.watch(renderer.watch_prefix(), read_from)
            if not started:
                poller.start()
                started = True
            continue
        timeout = None
        if pending:
            timeout = max(
                0.0,
                min(burst.due(*_wait(renderer, i)) for i, burst in pending.items()) - now,
            )
        try:
            event = events.get(timeout=timeout)
        except queue.Empty:
            continue
        while True:
            _mark(renderer, event, pending, immediate, time.monotonic())
            try:
                event = events.get_nowait()
            except queue.Empty:
                break


def _wait(renderer: Renderer, index: int) -> tuple[float, float]:
    wait = renderer.specs[index].wait
    return wait.quiet, wait.most


def _post(events: queue.Queue[Event], event: Event) -> None:
    """Queue an event from a signal handler: through a thread, since the handler may run
    while the main thread holds the queue's lock (which is not re-entrant)."""
    threading.Thread(target=events.put, args=(event,), daemon=True).start()


def _mark(
    renderer: Renderer,
    event: Event,
    pending: dict[int, _Burst],
    immediate: set[int],
    now: float,
) -> None:
    """Note which templates an event concerns (a resync or a reload: all of them, at once)."""
    kind, payload = event
    if kind == "reload":
        renderer.log("SIGHUP: reading the templates again")
        renderer.load()
    if kind in ("resync", "reload"):
        indices = [i for i in range(len(renderer.specs)) if renderer.templates[i] is not None]
        immediate.update(indices)
    else:
        indices = renderer.affected(payload)
    for index in indices:
        burst = pending.get(index)
        if burst is None:
            pending[index] = _Burst(now, now)
        else:
            burst.last = now

"""The HTTP side of watches: the ``/_changes`` feeds and ``GET /<key>?wait=true``.

- ``feed=normal`` (the default) answers what changed after ``since`` at once.
- ``feed=longpoll`` answers at once if something under ``prefix`` changed after ``since``, else
  as soon as something does, else at ``timeout`` seconds with no results and the current
  ``last_seq``: the same body as the normal feed, so a client loops on ``since=last_seq``.
- ``feed=eventsource`` streams Server-Sent Events: one ``change`` event per change, its ``id``
  the seq, first the backlog after ``since`` (or the ``Last-Event-ID`` header), then live, with
  ``: heartbeat`` comments while idle; it ends when the node shuts down.
- ``GET /<key>?wait=true&index=N`` answers like a GET once the key changed after seq N (default:
  the current last seq), with ``X-Navistore-Seq`` saying the seq to wait after next time. A path
  ending in ``/`` waits for any change under that prefix and answers with the listing.

A reader whose position is older than the tombstone purge horizon gets ``410 resync_required``
(an event stream that falls behind it gets a ``resync`` event and ends); a node at its watcher cap
or shutting down answers ``503``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Callable

import attrs
from twisted.web.server import Request

from navistore.record import Record
from navistore.store import ChangesPage, Store
from navistore.store.feed import Prefixes, ResyncRequired, check_horizon, read_changes
from navistore.watch_hub import Watcher, WatchHub
from navistore.web.access import caller_of
from navistore.web.errors import ApiError, BadRequest, MethodNotAllowed, as_api_error, error_body
from navistore.web.params import MAX_INTEGER, int_arg, query_arg, whole_number
from navistore.web.request import when_lost
from navistore.web.responses import JSON_HEADERS, Response, json_bytes

__all__ = [
    "DEFAULT_WAIT",
    "FEEDS",
    "MAX_WAIT",
    "SEQ_HEADER",
    "changes_answer",
    "changes_body",
    "wait_for_key",
    "wait_for_prefix",
]

#: The values of ``/_changes?feed=``.
FEEDS = ("normal", "longpoll", "eventsource")
#: The seq a ``?wait=true`` answer is current at: wait after it next time.
SEQ_HEADER = b"X-Navistore-Seq"
#: Seconds a long-poll or ``?wait=true`` waits unless ``timeout`` says otherwise, and the most.
DEFAULT_WAIT = 60.0
MAX_WAIT = 300.0

_EVENT_STREAM = {
    b"Content-Type": b"text/event-stream",
    b"Cache-Control": b"no-cache",
    b"X-Accel-Buffering": b"no",
}
#: Records read per page while an event stream replays its backlog.
_STREAM_PAGE = 500

#: How a GET answers a stored record (routes' rendering of a key), given extra headers.
RecordAnswer = Callable[[Request, Record, "dict[bytes, bytes]"], Response]


def change_entry(record: Record) -> dict[str, Any]:
    """One change as every feed shows it (an expiry is a delete that says so)."""
    entry: dict[str, Any] = {
        "seq": record.seq,
        "key": record.key,
        "stamp": record.stamp.encode(),
        "deleted": record.deleted,
    }
    if record.deleted and record.expires_ms is not None:
        entry["expired"] = True
    return entry


def changes_body(page: ChangesPage, purged_before: int | None = None) -> bytes:
    """The JSON body of the normal and long-poll feeds (the normal feed adds the horizon)."""
    results = [change_entry(record) for record in page.records]
    document: dict[str, object] = {"last_seq": page.last_seq, "results": results}
    if purged_before:  # only once something was purged: until then no reader needs it
        document["purged_before"] = purged_before
    return json_bytes(document)


def horizon_arg(request: Request) -> int | None:
    """``?horizon=``: the purge horizon a reader paging the whole feed from 0 saw first."""
    return int_arg(request, "horizon", 0) if query_arg(request, "horizon") else None


def timeout_arg(request: Request) -> float:
    """``?timeout=`` in seconds (fractions allowed), at most :data:`MAX_WAIT`."""
    text = query_arg(request, "timeout")
    if text is None or text == "":
        return DEFAULT_WAIT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MAX_WAIT:  # also refuses nan
        raise BadRequest(
            "invalid_parameter",
            f"parameter 'timeout' must be a number of seconds from 0 to {MAX_WAIT:g}, not {text!r}",
        )
    return seconds


def _seq_value(name: str, text: str) -> int:
    value = whole_number(text)
    if value is None:
        raise BadRequest(
            "invalid_parameter",
            f"{name} must be a seq (a whole number from 0 to {MAX_INTEGER}), not {text[:40]!r}",
        )
    return value


async def _index_arg(request: Request, store: Store) -> int:
    text = query_arg(request, "index")
    if text is None or text == "":
        return await store.last_seq()
    return _seq_value("parameter 'index'", text)


def _with_seq(response: Response, seq: int) -> Response:
    return attrs.evolve(response, headers={**response.headers, SEQ_HEADER: b"%d" % seq})


# -- /_changes ------------------------------------------------------------------------------------


async def changes_answer(
    request: Request,
    store: Store,
    hub: WatchHub,
    *,
    since: int,
    limit: int,
    prefix: str,
) -> Response:
    """Answer ``/_changes`` in the feed the request asks for."""
    feed = query_arg(request, "feed") or "normal"
    if feed not in FEEDS:
        raise BadRequest(
            "invalid_parameter", f"parameter 'feed' must be one of {', '.join(FEEDS)}, not {feed!r}"
        )
    if feed != "normal" and request.method == b"HEAD":
        raise MethodNotAllowed("HEAD", ["GET"])
    # A caller restricted to some prefixes sees only the changes inside them.
    asked = _Asked(since, limit, prefix, caller_of(request).visible(prefix))
    if feed == "eventsource":
        return await _event_stream(request, store, hub, asked)
    if feed == "longpoll":
        return await _long_poll(request, store, hub, asked)
    page, horizon = await read_changes(
        store, since, limit=limit, prefix=asked.seen, started_at=horizon_arg(request)
    )
    return Response(200, changes_body(page, horizon), dict(JSON_HEADERS))


@attrs.frozen
class _Asked:
    """What a feed request asks for: changes after ``since`` under ``prefix``, ``limit`` at a
    time, of which the caller may see those under ``seen``."""

    since: int
    limit: int
    prefix: str
    seen: Prefixes


async def _long_poll(request: Request, store: Store, hub: WatchHub, asked: _Asked) -> Response:
    since, limit, prefix, seen = asked.since, asked.limit, asked.prefix, asked.seen
    timeout = timeout_arg(request)
    await check_horizon(store, since)
    # Before reading: a change in between is kept.
    watcher = hub.watch(prefix, since=since, kind="longpoll")
    try:
        deadline = hub.clock.seconds() + timeout
        cursor = since
        last_look = False
        while True:
            page, body = await _shared_page(store, hub, cursor, limit, seen)
            remaining = deadline - hub.clock.seconds()
            if page.records or last_look or remaining <= 0 or watcher.closed:
                return Response(200, body, dict(JSON_HEADERS))
            # Nothing under the prefix up to last_seq: later reads start there.
            cursor = page.last_seq
            watcher.skip_through(cursor)
            if page.more:
                continue  # the read stopped at its work bound: older changes remain to read
            woken = await watcher.next(remaining)
            if watcher.overflowed:
                watcher.recovered()
            elif not woken:
                last_look = True  # timeout or shutdown: answer with the current last_seq
    finally:
        watcher.release()


def _shared_page(
    store: Store, hub: WatchHub, cursor: int, limit: int, seen: Prefixes
) -> Awaitable[tuple[ChangesPage, bytes]]:
    """The long-poll feed after ``cursor``, and its body: read and encoded once for all the
    long-polls a write wakes with the same position and parameters (:meth:`WatchHub.shared`)."""

    async def read() -> tuple[ChangesPage, bytes]:
        page, _ = await read_changes(store, cursor, limit=limit, prefix=seen)
        return page, changes_body(page)

    return hub.shared(("longpoll", cursor, limit, seen, hub.notified_seq), read)


async def _event_stream(request: Request, store: Store, hub: WatchHub, asked: _Asked) -> Response:
    since, prefix, seen = asked.since, asked.prefix, asked.seen
    resume = request.getHeader(b"Last-Event-ID")
    if resume is not None and resume.strip():
        since = _seq_value("header Last-Event-ID", resume.decode("latin-1").strip())
    await check_horizon(store, since)
    watcher = hub.watch(prefix, since=since, kind="eventsource")
    # The stream's end releases the watcher; a client gone mid-stream releases it at once
    # (a callback, not a Deferred per idle stream: thousands of them wait at once).
    when_lost(request, watcher.release)
    stream = _events(store, watcher, since=since, seen=seen, heartbeat=hub.heartbeat)
    return Response(200, headers=dict(_EVENT_STREAM), stream=stream)


#: Change events encoded lately, by seq, with their record: a write that wakes thousands of
#: streams is encoded once, not once per stream. Bounded in count and in bytes (the events and
#: the records' values they hold), and an event of a large value is never kept.
_ENCODED: dict[int, tuple[Record, bytes]] = {}
_ENCODED_MOST = 1024
_ENCODED_MOST_BYTES = 4 * 1024 * 1024
_ENCODED_LARGEST = 64 * 1024
_encoded_bytes = 0


def _event(record: Record) -> bytes:
    global _encoded_bytes
    seq = record.seq or 0
    known = _ENCODED.get(seq)
    if known is not None and known[0] is record:
        return known[1]
    data = json_bytes(change_entry(record))
    event = b"id: %d\nevent: change\ndata: %s\n\n" % (seq, data)
    size = len(event) + len(record.value)
    if size > _ENCODED_LARGEST:
        return event
    if len(_ENCODED) >= _ENCODED_MOST or _encoded_bytes + size > _ENCODED_MOST_BYTES:
        _ENCODED.clear()
        _encoded_bytes = 0
    _ENCODED[seq] = (record, event)
    _encoded_bytes += size
    return event


def _resync_event(exc: ResyncRequired) -> bytes:
    error = as_api_error(exc)
    return b"event: resync\ndata: %s\n\n" % error_body(error.code, error.message, error.detail)


async def _events(
    store: Store, watcher: Watcher, *, since: int, seen: Prefixes, heartbeat: float
) -> AsyncIterator[bytes]:
    """The event stream: the backlog page by page, then each live change as it comes."""
    try:
        # Sent at once, so the client has the headers before the first change.
        yield b": navistore change feed\n\n"
        delivered = since
        catching_up = True  # reading the feed: the backlog, or again after an overflow
        while True:
            if catching_up:
                watcher.recovered()  # before reading: what arrives meanwhile is kept
                while True:
                    try:
                        page, _ = await read_changes(
                            store, delivered, limit=_STREAM_PAGE, prefix=seen
                        )
                    except ResyncRequired as exc:
                        yield _resync_event(exc)
                        return
                    if page.records:
                        yield b"".join(_event(record) for record in page.records)
                    delivered = page.last_seq
                    watcher.skip_through(delivered)
                    if not page.more:  # a short page may stop early too: read on then
                        break
                catching_up = False
            batch = await watcher.next(heartbeat)
            if batch is None:
                return  # shutdown, or the client went away
            if watcher.overflowed:
                catching_up = True
                continue
            fresh = [
                record
                for record in batch
                if (record.seq or 0) > delivered and record.key.startswith(seen)
            ]
            if fresh:
                yield b"".join(_event(record) for record in fresh)
                delivered = fresh[-1].seq or delivered
            elif not batch:
                yield b": heartbeat\n\n"
    finally:
        watcher.release()


# -- ?wait=true ---------------------------------------------------------------------------------


async def wait_for_key(
    request: Request,
    store: Store,
    hub: WatchHub,
    key: str,
    *,
    plain_get: Callable[[Request, str], Awaitable[Response]],
    answer_record: RecordAnswer,
) -> Response:
    """``GET /<key>?wait=true&index=N&timeout=S``: answer like a GET once ``key`` changed
    after seq N, with ``X-Navistore-Seq`` the seq of that change (a delete answers 404).

    At the timeout (or shutdown) the answer is a plain GET of the current state (200, or 404)
    whose ``X-Navistore-Seq`` is the last seq read before it: waiting after it misses nothing.
    """
    timeout = timeout_arg(request)
    index = await _index_arg(request, store)
    # An index of 0 gets no pass here: a purged delete of this very key would be missed.
    await check_horizon(store, index, full_read=False)
    watcher = hub.watch(key, since=index, exact=True, kind="wait")

    def changed(record: Record) -> Response:
        headers = {SEQ_HEADER: b"%d" % (record.seq or 0)}
        if record.deleted:
            raise ApiError(404, "not_found", f"no key {key!r}", {"key": key}, headers)
        return answer_record(request, record, headers)

    try:
        deadline = hub.clock.seconds() + timeout
        current = await store.backend.get(key)  # tombstones included: a delete is a change
        while True:
            if current is not None and (current.seq or 0) > index:
                return changed(current)
            remaining = deadline - hub.clock.seconds()
            if remaining <= 0 or watcher.closed:
                break
            batch = await watcher.next(remaining)
            if watcher.overflowed:
                watcher.recovered()
                current = await store.backend.get(key)
                continue
            if not batch:
                break
            current = batch[-1]
    finally:
        watcher.release()
    last = await store.last_seq()
    try:
        response = await plain_get(request, key)
    except ApiError as exc:
        exc.headers[SEQ_HEADER] = b"%d" % last
        raise
    return _with_seq(response, last)


async def _first_change(store: Store, since: int, seen: Prefixes) -> ChangesPage:
    """The first change under ``seen`` after ``since``, reading on past pages that stopped at
    their work bound empty (:attr:`ChangesPage.more`), up to the newest seq."""
    while True:
        page, _ = await read_changes(store, since, limit=1, prefix=seen)
        if page.records or not page.more:
            return page
        since = page.last_seq


async def wait_for_prefix(
    request: Request,
    store: Store,
    hub: WatchHub,
    prefix: str,
    *,
    listing: Callable[[], Awaitable[Response]],
) -> Response:
    """``GET /<prefix>/?wait=true&index=N``: once anything under the prefix changed after seq
    N (or at the timeout), answer with the listing; ``X-Navistore-Seq`` is the last seq read
    before the listing, so waiting after it misses nothing."""
    timeout = timeout_arg(request)
    index = await _index_arg(request, store)
    await check_horizon(store, index, full_read=False)
    watcher = hub.watch(prefix, since=index, kind="wait")
    try:
        seen = caller_of(request).visible(prefix)
        page = await _first_change(store, index, seen)
        deadline = hub.clock.seconds() + timeout
        watcher.skip_through(page.last_seq)
        while not page.records and not watcher.closed:
            remaining = deadline - hub.clock.seconds()
            if remaining <= 0:
                break
            batch = await watcher.next(remaining)
            if not batch and not watcher.overflowed:
                break
            watcher.recovered()
            page = await _first_change(store, index, seen)
    finally:
        watcher.release()
    last = await store.last_seq()
    return _with_seq(await listing(), last)

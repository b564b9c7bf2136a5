"""A cache node (``--upstream URL``): a read-through copy of another node, kept fresh by its feed.

A miss is fetched from the upstream (``GET <upstream>/<key>``) and kept with the upstream's stamp,
so versions and ETags are the upstream's. Writes are forwarded and answered with the upstream's
answer, after which the local copy is brought to the new state. Every ``poll_interval`` the node
reads the upstream's ``/_health`` (node id, newest seq); only when the seq moved does it page
``/_changes?since=<cursor>``: keys and stamps, no values, so a key never held is skipped for one
local lookup and no transfer (``/_replicate`` would ship every changed value; a node wanting
everything is a clone). Held keys that changed are fetched again, deleted ones get the upstream's
tombstone. A fill or write in flight counts as held, so a change that overtakes it is not
skipped; last-writer-wins orders the rest. A new node id behind the URL, or a seq that went back,
drops every copy (a cache holds nothing of its own). While the upstream is unreachable, copies
are served and writes and misses answered 503 ``upstream_unavailable``. ``staleness()`` is never
None: seconds since the copies last matched the upstream (0 or 1 while in contact).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from random import Random
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredLock, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from ..clock import ClockDriftError, InvalidStamp, Stamp, validate_node_id
from ..record import DEFAULT_CONTENT_TYPE, Record
from ..store import Store
from ..web.rendering import ApiError, Response
from .peers import normalize_peer_url
from .wire import MalformedBatch
from .worker import PeerRefused, backoff_delay, describe, iso_time

__all__ = ["CURSOR_META", "SYNCED_META", "UPSTREAM_NODE_META", "UpstreamCache", "parse_etag"]

log = Logger()

#: Meta data: the upstream's seq the copies are current with; its node id; when that was true.
CURSOR_META = "cache.cursor"
UPSTREAM_NODE_META = "cache.upstream.node"
SYNCED_META = "cache.synced_at"

#: How often the moment of the last sync is persisted (it bounds staleness after a restart).
_PERSIST_SYNC_EVERY = 30.0

#: Headers that belong to one connection, or that the node sets itself, never passed on.
_HOP_BY_HOP = frozenset(
    b"connection keep-alive proxy-authenticate proxy-authorization te trailer transfer-encoding "
    b"upgrade host content-length expect accept-encoding content-encoding date server".split()
)
_URL_SAFE = "/%?&=:@!$'()*+,;~-._"


def parse_etag(values: Sequence[bytes] | None) -> Stamp:
    """The stamp a Navistore ETag (``"<stamp>"``) names; raise MalformedBatch otherwise."""
    text = values[0].decode("latin-1").strip() if values else ""
    try:
        return Stamp.decode(text[1:-1] if text[:1] == text[-1:] == '"' else text)
    except InvalidStamp as exc:
        raise MalformedBatch(f"the upstream's answer has no usable ETag: {exc}") from None


def _unavailable(upstream: str, error: BaseException, timeout: float) -> ApiError:
    return ApiError(
        503,
        "upstream_unavailable",
        f"the upstream {upstream} cannot be reached ({describe(error, timeout)}); "
        "this cache node serves only the copies it holds and cannot take writes now",
        {"upstream": upstream},
    )


class UpstreamCache(Service):
    """The cache side of a node: a MissResolver, a WriteForwarder, and the feed follower.

    Hand it to ``make_site`` as both ``miss_resolver`` and ``write_forwarder``, and make it a
    child of the node's service so that it starts once the Store is open.

    :param http_client: treq-like: ``request(method, url, data=, headers=, timeout=)``
        returning Deferreds of responses with ``code``, ``headers`` and ``content()``.
    :param clock: times polls, backoff and request deadlines.
    :param upstream: the base URL of the node to cache, ``http://host:port``.
    :param poll_interval: seconds between looks at the upstream's feed while in contact.
    :param request_timeout: the longest wait for one complete answer of the upstream.
    :param page_records: changes asked for per feed page.
    """

    def __init__(
        self,
        store: Store,
        *,
        http_client: Any,
        clock: IReactorTime,
        upstream: str,
        random: Random | None = None,
        poll_interval: float = 1.0,
        request_timeout: float = 10.0,
        max_backoff: float = 30.0,
        page_records: int = 1000,
    ) -> None:
        self.setName("upstream-cache")
        self.store = store
        self.upstream = normalize_peer_url(upstream)
        self.state = "stopped"
        self.cursor = 0
        self.upstream_node_id: str | None = None
        self.last_error: str | None = None
        self._http = http_client
        self._clock = clock
        self._random = random if random is not None else Random()
        self._interval = poll_interval
        self._timeout = request_timeout
        self._max_backoff = max_backoff
        self._page_records = page_records
        self._failures = 0
        self._started_at = self._now()
        self._synced_at: float | None = None
        self._persisted_sync: float | None = None
        self._in_flight: Counter[str] = Counter()
        self._fills: dict[str, list[Deferred[Record | None]]] = {}
        self._sync_lock = DeferredLock()
        self._loop: Deferred[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def startService(self) -> None:
        """Load the cursor and start following the upstream's feed (once, if called twice)."""
        Service.startService(self)
        if self._loop is not None:
            return
        self._started_at = self._now()
        self._loop = Deferred.fromCoroutine(self._follow())
        self._loop.addErrback(self._loop_failed)

    def stopService(self) -> Deferred[None]:
        """Stop following: the request or pause under way is cancelled."""
        Service.stopService(self)
        loop, self._loop = self._loop, None
        self.state = "stopped"
        if loop is None:
            return succeed(None)
        loop.cancel()
        return loop

    def _loop_failed(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            log.failure("following the upstream {url} stopped", failure, url=self.upstream)

    async def _follow(self) -> None:
        cursor = await self.store.get_meta(CURSOR_META)
        self.cursor = int(cursor) if cursor else 0
        self.upstream_node_id = await self.store.get_meta(UPSTREAM_NODE_META) or None
        synced = await self.store.get_meta(SYNCED_META)
        self._synced_at = self._persisted_sync = float(synced) if synced else None
        self.state = "connecting"
        while True:
            try:
                await self.sync()
                delay = self._interval
            except CancelledError:
                raise
            except Exception as error:
                if self.state == "self":
                    log.error("the upstream {url} is this node itself", url=self.upstream)
                    return
                delay = backoff_delay(self._failures, self._random, cap=self._max_backoff)
                self._failures += 1
                self.last_error = describe(error, self._timeout)
                self.state = "backoff"
                log.warn(
                    "the upstream {url} failed ({failures} in a row): {error}; serving copies "
                    "as they are, retrying in {delay:.2f} s",
                    url=self.upstream,
                    failures=self._failures,
                    error=self.last_error,
                    delay=delay,
                )
            await deferLater(self._clock, delay)

    # -- staleness and status -----------------------------------------------------------------

    def _now(self) -> float:
        return float(self._clock.seconds())

    def staleness(self) -> float:
        """Seconds since the copies were last known to match the upstream (never None here:
        a cache node always says how stale it may be; before any contact, since it started)."""
        since = self._synced_at if self._synced_at is not None else self._started_at
        return max(0.0, self._now() - since)

    def status(self) -> dict[str, Any]:
        """What an operator wants to see about the upstream (e.g. in ``GET /_peers``)."""
        return {
            "url": self.upstream,
            "role": "upstream",
            "state": self.state,
            "node_id": self.upstream_node_id,
            "cursor": self.cursor,
            "last_error": self.last_error,
            "last_success": iso_time(self._synced_at),
            "failures": self._failures,
            "stale_seconds": self.staleness(),
        }

    # -- HTTP ---------------------------------------------------------------------------------

    async def _exchange(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: dict[bytes, list[bytes]] | None = None,
    ) -> tuple[int, Headers, bytes]:
        """One request to the upstream, answered completely within the timeout."""

        async def exchange() -> tuple[int, Headers, bytes]:
            response = await self._http.request(
                method, url, data=body, headers=headers or {}, timeout=self._timeout
            )
            content: bytes = await response.content()
            return int(response.code), response.headers, content

        attempt = Deferred.fromCoroutine(exchange())
        attempt.addTimeout(self._timeout, self._clock)
        return await attempt

    async def _get_json(self, path: str) -> Any:
        """GET a JSON document from the upstream; raise unless it answers 200 with JSON."""
        status, _headers, body = await self._exchange("GET", self.upstream + path)
        if status != 200:
            raise PeerRefused(status, body)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise MalformedBatch(f"the upstream's {path} is not JSON: {exc}") from None

    def _chain(self, stamp: Stamp) -> tuple[str, ...]:
        """The chain of a copy: its writer, then the upstream it came through."""
        upstream = self.upstream_node_id
        return (stamp.node_id,) if upstream in (None, stamp.node_id) else (stamp.node_id, upstream)

    async def _fetch(self, key: str) -> Record | None:
        """The upstream's live record of ``key`` (None on 404); raise if it cannot say."""
        url = self.upstream + quote(key.encode("utf-8"), safe="/")
        status, headers, body = await self._exchange("GET", url)
        if status == 404:
            return None
        if status != 200:
            raise PeerRefused(status, body)
        stamp = parse_etag(headers.getRawHeaders(b"ETag"))
        content_type = headers.getRawHeaders(b"Content-Type")
        kind = content_type[0].decode("latin-1") if content_type else DEFAULT_CONTENT_TYPE
        return Record(key, body, kind, stamp, chain=self._chain(stamp))

    # -- reads: MissResolver ------------------------------------------------------------------

    async def resolve(self, key: str) -> tuple[Record, str] | None:
        """Fetch a key this node lacks from the upstream, keep it, and return it.

        Concurrent misses of one key share one upstream request. A 404 upstream is a miss; an
        upstream that cannot answer is a 503, not a 404 that might be false.
        """
        waiting: Deferred[Record | None] = Deferred()
        waiters = self._fills.get(key)
        if waiters is not None:
            waiters.append(waiting)
        else:
            self._fills[key] = [waiting]
            Deferred.fromCoroutine(self._fill(key)).addBoth(self._filled, key)
        record = await waiting
        return None if record is None else (record, self.upstream)

    def _filled(self, result: Record | Failure | None, key: str) -> None:
        for waiting in self._fills.pop(key, []):
            if waiting.called:  # its client went away
                continue
            if isinstance(result, Failure):
                waiting.errback(result)
            else:
                waiting.callback(result)

    def _check_not_self(self) -> None:
        if self.state == "self":
            raise ApiError(503, "upstream_is_self", f"the upstream {self.upstream} is this node")

    async def _fill(self, key: str) -> Record | None:
        self._check_not_self()
        self._in_flight[key] += 1
        try:
            try:
                record = await self._fetch(key)
            except PeerRefused as error:
                if 400 <= error.status < 500:
                    code = error.code or "upstream_refused"
                    raise ApiError(error.status, code, str(error)) from None
                raise _unavailable(self.upstream, error, self._timeout) from None
            except Exception as error:
                raise _unavailable(self.upstream, error, self._timeout) from None
            if record is None:
                return None
            try:
                await self.store.apply_remote_batch([record])
            except ClockDriftError as error:
                log.warn("not keeping {key}: {error}", key=key, error=str(error))
                return record
            # A newer copy or tombstone may have arrived through the feed meanwhile: it wins.
            return await self.store.get(key)
        finally:
            self._release(key)

    def _release(self, key: str) -> None:
        self._in_flight[key] -= 1
        if self._in_flight[key] <= 0:
            del self._in_flight[key]

    # -- writes: WriteForwarder ---------------------------------------------------------------

    async def forward(self, request: Request, body: bytes) -> Response:
        """Send the write to the upstream and answer with its answer (503 if unreachable)."""
        self._check_not_self()
        method = request.method.decode("ascii")
        raw_target = request.uri
        if not raw_target.startswith(b"/"):
            raise ApiError(400, "invalid_target", "only origin-form request targets are forwarded")
        headers: dict[bytes, list[bytes]] = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() not in _HOP_BY_HOP:
                headers[name] = list(values)
        key = self._written_key(request)
        if key is not None:
            self._in_flight[key] += 1
        try:
            try:
                data = body if body or method != "DELETE" else None
                url = self.upstream + quote(raw_target, safe=_URL_SAFE)
                status, answer, content = await self._exchange(method, url, data, headers)
            except CancelledError:
                raise
            except Exception as error:
                raise _unavailable(self.upstream, error, self._timeout) from None
            await self._after_write(request, key, body, status, answer)
        finally:
            if key is not None:
                self._release(key)
        kept = {
            name: b", ".join(values)
            for name, values in answer.getAllRawHeaders()
            if name.lower() not in _HOP_BY_HOP
        }
        return Response(status, content, kept)

    def _written_key(self, request: Request) -> str | None:
        """The canonical key a PUT or POST writes, or None (a DELETE, a prefix, not a key)."""
        if request.method not in (b"PUT", b"POST") or request.path.endswith(b"/"):
            return None
        try:
            return self.store.key(unquote_to_bytes(request.path).decode("utf-8"))
        except ValueError:  # InvalidKey, UnicodeDecodeError: the upstream says what is wrong
            return None

    async def _after_write(
        self, request: Request, key: str | None, body: bytes, status: int, answer: Headers
    ) -> None:
        """Make the local copy match what the upstream now holds, so it never serves the old one.

        A PUT or POST answered with an ETag is applied as is (the value and content type sent,
        the upstream's stamp), which also caches the key written. Anything else that may have
        changed the upstream (a DELETE, a prefix delete, a ``?replicas=`` 504) is caught up
        through the feed at once. Refusals (4xx) change nothing.
        """
        if not (200 <= status < 300 or status == 504):
            return
        if key is not None and 200 <= status < 300:
            try:
                stamp = parse_etag(answer.getRawHeaders(b"ETag"))
                raw_type = request.getHeader(b"Content-Type")
                kind = raw_type.decode("latin-1") if raw_type else DEFAULT_CONTENT_TYPE
                record = Record(key, body, kind, stamp, chain=self._chain(stamp))
                await self.store.apply_remote_batch([record])
                return
            except Exception as error:
                log.warn("cannot apply a forwarded write here: {error}", error=str(error))
        try:
            await self.sync()
        except Exception as error:
            log.warn(
                "after a forwarded write, the feed of {url} cannot be read ({error}); copies "
                "may be stale until it can",
                url=self.upstream,
                error=describe(error, self._timeout),
            )

    # -- following the feed -------------------------------------------------------------------

    async def sync(self) -> None:
        """Bring every held copy to the upstream's state now; raise if it cannot be read.

        The follower calls it every ``poll_interval``; a forwarded delete calls it at once.
        """
        await self._sync_lock.acquire()
        try:
            await self._sync_locked()
        finally:
            self._sync_lock.release()

    async def _sync_locked(self) -> None:
        asked_at = self._now()
        health = await self._get_json("/_health")
        try:
            node_id = validate_node_id(health["node_id"])
            last_seq = int(health["last_seq"])
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedBatch(f"the upstream's /_health answer is unusable: {exc}") from None
        if node_id == self.store.node_id:
            self.state = "self"
            raise MalformedBatch(f"the upstream {self.upstream} is this node itself")
        # Read at once, before anything else runs: see _rebase.
        quiet = not self._in_flight
        if node_id != self.upstream_node_id or last_seq < self.cursor:
            await self._rebase(node_id, last_seq, quiet)
        while self.cursor < last_seq:
            page_last, changes = await self._changes_page()
            await self._refresh(changes)
            if page_last <= self.cursor:
                break
            await self._move(page_last)
        await self._synced(asked_at)

    async def _rebase(self, node_id: str, last_seq: int, quiet: bool) -> None:
        """Start following a node this cache has not followed (or one whose seq went back).

        Copies from another upstream (or from before a restore) are dropped: a cache holds
        only copies. If nothing is held and no fill or write was in flight when ``/_health``
        answered, the feed so far holds nothing to refresh, so the cursor jumps to its end:
        anything fetched later is newer than that answer.
        """
        previous = self.upstream_node_id
        if previous is not None:
            log.warn(
                "the upstream {url} is now node {node_id} (was {previous}) or went back "
                "from seq {cursor} to {seq}; dropping every copy",
                url=self.upstream,
                node_id=node_id,
                previous=previous,
                cursor=self.cursor,
                seq=last_seq,
            )
            await self.store.reset()
        empty = quiet and not (await self.store.list("/", limit=1)).records
        self.upstream_node_id = node_id
        await self.store.set_meta(UPSTREAM_NODE_META, node_id)
        await self._move(last_seq if empty else 0)

    async def _changes_page(self) -> tuple[int, list[tuple[str, Stamp, bool]]]:
        document = await self._get_json(f"/_changes?since={self.cursor}&limit={self._page_records}")
        try:
            changes = [
                (str(item["key"]), Stamp.decode(item["stamp"]), bool(item["deleted"]))
                for item in document["results"]
            ]
            return int(document["last_seq"]), changes
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedBatch(f"the upstream's change feed is unusable: {exc}") from None

    async def _refresh(self, changes: list[tuple[str, Stamp, bool]]) -> None:
        """Refresh or drop the copies of the changed keys this node holds; skip the others."""
        tombstones: list[Record] = []
        for key, stamp, deleted in changes:
            current = await self.store.get(key)
            if current is None and key not in self._in_flight:
                continue  # never held (or already dropped): a cache copies only what is read
            if current is not None and current.stamp >= stamp:
                continue
            if deleted:
                tombstones.append(Record(key, b"", "", stamp, True, chain=self._chain(stamp)))
                continue
            fresh = await self._fetch(key)
            if fresh is not None:  # None: deleted since; the tombstone is in a later page
                await self.store.apply_remote_batch([fresh])
        if tombstones:
            await self.store.apply_remote_batch(tombstones)

    async def _move(self, cursor: int) -> None:
        self.cursor = cursor
        await self.store.set_meta(CURSOR_META, str(cursor))

    async def _synced(self, asked_at: float) -> None:
        """Record that the copies matched the upstream as of ``asked_at``."""
        if self._failures:
            log.info("the upstream {url} answers again", url=self.upstream)
        self._failures = 0
        self.last_error = None
        self.state = "following"
        self._synced_at = asked_at
        if self._persisted_sync is None or asked_at - self._persisted_sync >= _PERSIST_SYNC_EVERY:
            self._persisted_sync = asked_at
            await self.store.set_meta(SYNCED_META, repr(asked_at))

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

from collections import Counter
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredLock, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from navistore import hooks
from navistore.cache_node.upstream import HOP_BY_HOP, Change, Upstream, parse_etag
from navistore.clock import ClockDriftError, Stamp
from navistore.hooks import ForwardedAnswer, ForwardedWrite
from navistore.links import BadAnswer, Failures, PeerLink, Refused, describe, iso_time
from navistore.peer_urls import normalize_peer_url
from navistore.record import DEFAULT_CONTENT_TYPE, Record
from navistore.store import Store

__all__ = ["CURSOR_META", "SYNCED_META", "UPSTREAM_NODE_META", "UpstreamCache"]

log = Logger()

#: Meta data: the upstream's seq the copies are current with; its node id; when that was true.
CURSOR_META = "cache.cursor"
UPSTREAM_NODE_META = "cache.upstream.node"
SYNCED_META = "cache.synced_at"

#: How often the moment of the last sync is persisted (it bounds staleness after a restart).
_PERSIST_SYNC_EVERY = 30.0


class UpstreamCache(Service):
    """The cache side of a node: a MissResolver, a WriteForwarder, and the feed follower.

    Hand it to ``make_site`` as both ``miss_resolver`` and ``write_forwarder``, and make it a
    child of the node's service so that it starts once the Store is open.

    :param link: the client, clock, jitter, timeout and backoff cap it reaches the upstream with.
    :param upstream: the base URL of the node to cache, ``http://host:port``.
    :param poll_interval: seconds between looks at the upstream's feed while in contact.
    :param page_records: changes asked for per feed page.
    """

    def __init__(
        self,
        store: Store,
        *,
        link: PeerLink,
        upstream: str,
        poll_interval: float = 1.0,
        page_records: int = 1000,
    ) -> None:
        self.setName("upstream-cache")
        self.store = store
        self.upstream = normalize_peer_url(upstream)
        self.state = "stopped"
        self.cursor = 0
        self.upstream_node_id: str | None = None
        self._link = link
        self._remote = Upstream(self.upstream, link=link)
        self._clock = link.clock
        self._interval = poll_interval
        self._timeout = link.request_timeout
        self._page_records = page_records
        self._failures = Failures(link, f"the upstream {self.upstream}")
        self._started_at = self._now()
        self._synced_at: float | None = None
        #: When this process last brought its copies in step with the upstream (None: not
        #: yet); unlike ``staleness()``, not carried over from before a restart.
        self.reached_at: float | None = None
        #: Looks at the upstream's feed that failed, in all (never reset).
        self.errors = 0
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
                if not self.running:
                    # Stopped mid-request: the cancelled request fails with its own error (a
                    # cancelled connection attempt is no CancelledError), not the upstream's.
                    raise CancelledError() from None
                if self.state == "self":
                    log.error("the upstream {url} is this node itself", url=self.upstream)
                    return
                delay = self._failures.failed(error, meanwhile="serving copies as they are, ")
                self.errors += 1
                self.state = "backoff"
            await deferLater(self._clock, delay)

    # -- staleness and status -----------------------------------------------------------------

    def _now(self) -> float:
        return self._link.now()

    def staleness(self) -> float:
        """Seconds since the copies were last known to match the upstream (never None here:
        a cache node always says how stale it may be; before any contact, since it started)."""
        since = self._synced_at if self._synced_at is not None else self._started_at
        return max(0.0, self._now() - since)

    def seconds_since_contact(self) -> float | None:
        """Seconds since this process last brought its copies in step with the upstream, or
        None if it has not yet (what readiness and metrics judge the upstream by)."""
        return None if self.reached_at is None else max(0.0, self._now() - self.reached_at)

    def status(self) -> dict[str, Any]:
        """What an operator wants to see about the upstream (e.g. in ``GET /_peers``)."""
        return {
            "url": self.upstream,
            "role": "upstream",
            "state": self.state,
            "node_id": self.upstream_node_id,
            "cursor": self.cursor,
            "last_error": self._failures.last_error,
            "last_success": iso_time(self._synced_at),
            "failures": self._failures.count,
            "stale_seconds": self.staleness(),
        }

    # -- copies -------------------------------------------------------------------------------

    def _chain(self, stamp: Stamp) -> tuple[str, ...]:
        """The chain of a copy: its writer, then the upstream it came through."""
        upstream = self.upstream_node_id
        return (stamp.node_id,) if upstream in (None, stamp.node_id) else (stamp.node_id, upstream)

    async def _fetch(self, key: str) -> Record | None:
        """The upstream's live record of ``key`` (None on 404); raise if it cannot say."""
        found = await self._remote.fetch(key)
        if found is None:
            return None
        value, kind, stamp = found
        return Record(key, value, kind, stamp, chain=self._chain(stamp))

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
            raise hooks.UpstreamIsSelf(self.upstream)

    def _unavailable(self, error: BaseException) -> hooks.UpstreamUnavailable:
        return hooks.UpstreamUnavailable(self.upstream, describe(error, self._timeout))

    async def _fill(self, key: str) -> Record | None:
        self._check_not_self()
        self._in_flight[key] += 1
        try:
            try:
                record = await self._fetch(key)
            except Refused as error:
                if 400 <= error.status < 500:
                    raise hooks.UpstreamRefused(error.status, error.code, str(error)) from None
                raise self._unavailable(error) from None
            except Exception as error:
                raise self._unavailable(error) from None
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

    async def forward(self, write: ForwardedWrite) -> ForwardedAnswer:
        """Send the write to the upstream and answer with its answer (503 if unreachable)."""
        self._check_not_self()
        key = self._written_key(write)
        if key is not None:
            self._in_flight[key] += 1
        try:
            try:
                answer = await self._remote.send(write)
            except CancelledError:
                raise
            except Exception as error:
                raise self._unavailable(error) from None
            await self._after_write(write, key, answer.status, answer.headers)
        finally:
            if key is not None:
                self._release(key)
        kept = {
            name: b", ".join(values)
            for name, values in answer.headers.getAllRawHeaders()
            if name.lower() not in HOP_BY_HOP
        }
        return ForwardedAnswer(answer.status, kept, answer.body)

    def _written_key(self, write: ForwardedWrite) -> str | None:
        """The canonical key a PUT or POST writes, or None (a DELETE, a prefix, not a key)."""
        if write.method not in ("PUT", "POST") or write.path.endswith(b"/"):
            return None
        try:
            return self.store.canonical_key(unquote_to_bytes(write.path).decode("utf-8"))
        except ValueError:  # InvalidKey, UnicodeDecodeError: the upstream says what is wrong
            return None

    async def _after_write(
        self, write: ForwardedWrite, key: str | None, status: int, answer: Headers
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
                raw_type = write.header(b"Content-Type")
                kind = raw_type.decode("latin-1") if raw_type else DEFAULT_CONTENT_TYPE
                record = Record(key, write.body, kind, stamp, chain=self._chain(stamp))
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
        node_id, last_seq = await self._remote.health()
        if node_id == self.store.node_id:
            self.state = "self"
            raise BadAnswer(f"the upstream {self.upstream} is this node itself")
        # Read at once, before anything else runs: see _rebase.
        quiet = not self._in_flight
        if node_id != self.upstream_node_id or last_seq < self.cursor:
            await self._rebase(node_id, last_seq, quiet)
        while self.cursor < last_seq:
            page_last, changes = await self._remote.changes(self.cursor, self._page_records)
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

    async def _refresh(self, changes: list[Change]) -> None:
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
        self._failures.recovered()
        self._failures.last_error = None
        self.state = "following"
        self._synced_at = self.reached_at = asked_at
        if self._persisted_sync is None or asked_at - self._persisted_sync >= _PERSIST_SYNC_EVERY:
            self._persisted_sync = asked_at
            await self.store.set_meta(SYNCED_META, repr(asked_at))

"""Read fallback (``--read-fallback``): a key missing here is looked up on the peers before a 404.

Replication is asynchronous, so a key written on a peer a moment ago may not be here yet, and a
node that was down may still be catching up. With read fallback such a miss asks every peer at
once, each within a short timeout; the first peer that holds the key live answers the read, and
``X-Navistore-Source`` names it. A peer that does not hold it (absent, or a tombstone), fails or
is too slow counts as a miss; when all have missed, the answer is 404 as before.

Peers are asked through ``GET /_keys?prefix=<key>&limit=1&values=true``, not ``GET /<key>``: a
listing reads only the peer's own records and never consults the peer's miss resolver, so two
nodes with read fallback can never bounce a miss between each other. The first key under a
prefix is the key itself when it exists (it is the shortest), so one entry says it all.

The result is not stored here: replication brings the record with its chain, so this node pushes
it to nobody who has it; storing a read result would turn a read into new replication traffic
and could keep a value that the writer's own replication is about to overtake anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable
from urllib.parse import quote, urlencode

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from navistore.clock import InvalidStamp, Stamp
from navistore.links import BadAnswer, PeerLink
from navistore.protocol.records import InvalidValue, decode_value
from navistore.record import Record

__all__ = ["DEFAULT_FALLBACK_TIMEOUT", "ReadFallback"]

log = Logger()

#: How long a peer may take to say whether it has a key, in seconds.
DEFAULT_FALLBACK_TIMEOUT = 2.0


def _entry_record(entry: Any, key: str) -> Record | None:
    """The record in a ``/_keys?values=true`` entry, if it is ``key``'s; None otherwise."""
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    try:
        value = decode_value(entry["value"], entry.get("encoding", "utf-8"))
        if not isinstance(entry["content_type"], str):
            raise TypeError("content_type must be text")
        return Record(key, value, entry["content_type"], Stamp.decode(entry["version"]))
    except (KeyError, TypeError, InvalidValue, InvalidStamp) as exc:
        log.warn("a peer's entry for {key} is unusable: {error}", key=key, error=str(exc))
        return None


class ReadFallback:
    """A MissResolver that asks the peers for a key this node does not hold.

    :param link: the client and clock the peers are asked with.
    :param peers: returns the peer URLs to ask now (the replication service's
        ``peer_urls``), so peers added or removed at run time are followed.
    :param timeout: how long a peer may take; a read that misses everywhere waits at most this.
    """

    def __init__(
        self,
        *,
        link: PeerLink,
        peers: Callable[[], Iterable[str]],
        timeout: float = DEFAULT_FALLBACK_TIMEOUT,
    ) -> None:
        self._link = link
        self._peers = peers
        self._timeout = timeout

    def staleness(self) -> float | None:
        """None: a node with read fallback copies nothing, so it has no staleness to report."""
        return None

    async def resolve(self, key: str) -> tuple[Record, str] | None:
        """Ask every peer at once; return the first live record found and who had it.

        The questions still out when one peer answers (or when the client goes away) are
        cancelled.
        """
        urls = list(dict.fromkeys(self._peers()))
        if not urls:
            return None
        found: Deferred[tuple[Record, str] | None] = Deferred()
        asking = [Deferred.fromCoroutine(self._ask(url, key)) for url in urls]
        remaining = [len(asking)]

        def settled(result: Record | Failure | None, url: str) -> None:
            remaining[0] -= 1
            if isinstance(result, Failure):
                log.debug("read fallback to {url} failed: {why}", url=url, why=result.value)
                result = None
            if found.called:
                return
            if result is not None:
                found.callback((result, url))
            elif remaining[0] == 0:
                found.callback(None)

        for url, question in zip(urls, asking):
            question.addBoth(settled, url)
        try:
            return await found
        finally:
            for question in asking:
                question.cancel()

    async def _ask(self, url: str, key: str) -> Record | None:
        """Whether the peer at ``url`` holds ``key`` live, as a record."""
        query = urlencode({"prefix": key, "limit": "1", "values": "true"}, quote_via=quote)
        answer = await self._link.exchange(
            "GET",
            f"{url}/_keys?{query}",
            headers={b"Accept": [b"application/json"]},
            timeout=self._timeout,
        )
        if answer.status != 200:
            log.debug("read fallback to {url}: HTTP {status}", url=url, status=answer.status)
            return None
        try:
            entries = answer.json("the listing")["keys"]
        except (BadAnswer, KeyError, TypeError):
            log.warn("read fallback to {url}: not a key listing", url=url)
            return None
        return _entry_record(entries[0], key) if isinstance(entries, list) and entries else None

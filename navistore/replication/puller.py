"""Cloning: pulling a source node's whole state, then keeping in step with it.

The puller pages through ``GET <source>/_replicate?since=<cursor>`` (the source's change feed with
values, in the push wire format) and applies each page with last-writer-wins, the chains as
received, so this node never sends those records back to the source. The cursor (the source's
seq) is persisted after each page, so a restarted clone resumes where it stopped. After the first
short page the clone has everything the source had when that page was read; from then on it pulls
again every ``interval`` seconds.

The node serves while it clones: until :attr:`Puller.state` (``clone_status()["state"]``) is
``"caught_up"`` for the first time, reads may miss keys the source holds. The same pull repairs
a node that lost its data: point ``clone_from`` at a healthy peer.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from navistore.links import PeerLink
from navistore.protocol.batches import MalformedBatch, decode_batch
from navistore.replication.peers import pull_cursor_meta, pull_node_meta
from navistore.replication.worker import Worker
from navistore.store import Store

__all__ = ["Puller"]

log = Logger()


class Puller(Worker):
    """Pulls everything from the source at ``url`` into ``store``; call :meth:`load` first.

    States: ``cloning`` (the first pass is under way), ``caught_up`` (the last page was short),
    ``pulling`` (caught up once, now reading full pages again), ``backoff``, ``self`` (the source
    is this node), ``stopped``.

    :param page_records: records asked for per page.
    :param interval: seconds between pulls once caught up.
    """

    quiet_states = ("caught_up", "self", "stopped")

    def __init__(
        self,
        store: Store,
        url: str,
        *,
        link: PeerLink,
        page_records: int = 500,
        interval: float = 1.0,
    ) -> None:
        super().__init__(store, url, link=link)
        if page_records < 1:
            raise ValueError("page_records must be at least 1")
        self.cursor = 0
        #: The source's purge horizon when this read from seq 0 began (not persisted: after a
        #: restart mid-way, a purge answer makes the clone start over, which is safe).
        self._horizon: int | None = None
        self.node_id: str | None = None
        self.pulled = 0
        self._page_records = page_records
        self._interval = interval
        self._caught_up_once = False

    @property
    def caught_up_once(self) -> bool:
        """Whether the clone has had everything the source had, at least once (reads may miss
        keys the source holds until then)."""
        return self._caught_up_once

    async def load(self) -> None:
        """Read the persisted pull cursor and the source's node id."""
        cursor = await self._store.get_meta(pull_cursor_meta(self.url))
        self.cursor = int(cursor) if cursor else 0
        self.node_id = await self._store.get_meta(pull_node_meta(self.url)) or None

    def status(self) -> dict[str, Any]:
        """What ``clone_status()`` and ``GET /_peers`` show for the clone source."""
        return {
            **self._common_status(),
            "role": "pull",
            "node_id": self.node_id,
            "cursor": self.cursor,
            "pulled": self.pulled,
        }

    async def _run(self) -> None:
        self.state = "cloning"
        while not self._stopping:
            short = await self._attempt(self._pull_once)
            if short is None:
                continue
            if self.state == "self":
                return
            if not short:
                self.state = "pulling" if self._caught_up_once else "cloning"
                continue
            if not self._caught_up_once:
                log.info("clone of {url} caught up at its seq {seq}", url=self.url, seq=self.cursor)
            self._caught_up_once = True
            self.state = "caught_up"
            self._busy = False
            self._became_quiet()
            await self._pause(self._interval)

    async def _pull_once(self) -> bool:
        """Pull and apply one page; return whether it was the last one for now (short)."""
        url = f"{self.url}/_replicate?since={self.cursor}&limit={self._page_records}"
        if self.cursor == 0:
            self._horizon = None
        elif self._horizon:  # 0: nothing was ever purged there, no need to say so
            url += f"&horizon={self._horizon}"
        answer = await self._request(url)
        if answer.status == 410 and self.cursor > 0:
            # Tombstones after our cursor were purged there: read everything again rather than
            # keep a silent gap (a key deleted there before the purge may linger here).
            log.warn(
                "clone source {url} purged tombstones past seq {cursor}; pulling everything again",
                url=self.url,
                cursor=self.cursor,
            )
            await self._move(0)
            return False
        if not answer.ok:
            raise answer.refusal()
        batch = decode_batch(answer.body)
        if batch.last_seq is None:
            raise MalformedBatch("a pulled page carries no 'last_seq'")
        if batch.source == self._store.node_id:
            log.warn("clone source {url} is this node itself; not pulling", url=self.url)
            self.node_id = batch.source
            self.state = "self"
            return True
        if self.node_id is None:
            self.node_id = batch.source
            await self._store.set_meta(pull_node_meta(self.url), batch.source)
        elif batch.source != self.node_id or batch.last_seq < self.cursor:
            log.warn(
                "clone source {url} is now node {node_id} at seq {seq} "
                "(was {previous} at {cursor}); pulling everything again",
                url=self.url,
                node_id=batch.source,
                seq=batch.last_seq,
                previous=self.node_id,
                cursor=self.cursor,
            )
            self.node_id = batch.source
            await self._store.set_meta(pull_node_meta(self.url), batch.source)
            await self._move(0)
            return False
        await self._store.apply_remote_batch(batch.records)
        if self._horizon is None:
            self._horizon = batch.purged_before
        self._succeeded()
        self.pulled += len(batch.records)
        await self._move(batch.last_seq)
        if batch.more is not None:  # cut by count or by bytes: read on at once
            return not batch.more
        return len(batch.records) < self._page_records  # a source that does not say

    async def _move(self, cursor: int) -> None:
        self.cursor = cursor
        await self._store.set_meta(pull_cursor_meta(self.url), str(cursor))

"""The HTTP endpoints of replication: receiving batches, serving pulls, managing peers.

- ``POST /_replicate``: a batch (see :mod:`navistore.protocol.batches`) applied with
  last-writer-wins; answers ``{"node_id", "received", "applied"}``. A malformed batch is 400
  ``malformed_batch``, a stamp beyond the drift limit 400 ``clock_drift``; either applies nothing.
- ``GET /_replicate?since=N&limit=L``: the change feed after seq N with values, as a batch with
  ``last_seq`` to resume from (what a clone pulls).
- ``GET /_peers``: the status of every peer (and of the clone source); ``PUT /_peers`` with a URL
  (or ``{"url": ...}``) adds one (201, or 200 if present); ``DELETE /_peers?url=`` removes one.
- The classic ``/_replication_slaves``: ``PUT`` a comma-separated list to replace the set (empty:
  none), ``GET`` it back as text, ``DELETE`` to empty it.
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request

from navistore.hooks import PeerControl
from navistore.json_documents import parse_json
from navistore.peer_urls import normalize_peer_url, parse_peer_list
from navistore.protocol.batches import (
    BATCH_BYTES,
    MEDIA_TYPE,
    cut_batch,
    decode_batch,
    encode_ack,
    encode_batch,
)
from navistore.store import Store
from navistore.store.feed import check_horizon
from navistore.web.errors import ApiError, BadRequest
from navistore.web.feeds import horizon_arg
from navistore.web.params import int_arg, page_limit, query_arg, request_body
from navistore.web.responses import (
    JSON_HEADERS,
    Endpoints,
    Response,
    json_response,
    text_response,
)

__all__ = ["ReplicationEndpoints", "replication_endpoints"]


def _text(request: Request) -> str:
    try:
        return request_body(request).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("invalid_peer", "the body is not UTF-8 text") from None


class ReplicationEndpoints:
    """The handlers, over one node's Store and its peer set (the replication service)."""

    def __init__(self, store: Store, peers: PeerControl, *, cache_node: bool = False) -> None:
        self.store = store
        self.service = peers
        self.cache_node = cache_node

    def _refuse_on_a_cache_node(self) -> None:
        """A cache node has no peers of its own: its peer set is not to be changed."""
        if self.cache_node:
            raise ApiError(
                409,
                "cache_node",
                "this is a cache node (--upstream): it has no peers; its copies come from its "
                "upstream",
            )

    def endpoints(self) -> Endpoints:
        """The endpoints by name and method, for ``make_site(..., extra_endpoints=...)``."""
        return {
            "_replicate": {b"POST": self.receive, b"GET": self.pull, b"HEAD": self.pull},
            "_peers": {
                b"GET": self.list_peers,
                b"HEAD": self.list_peers,
                b"PUT": self.add_peer,
                b"DELETE": self.remove_peer,
            },
            "_replication_slaves": {
                b"GET": self.get_slaves,
                b"HEAD": self.get_slaves,
                b"PUT": self.put_slaves,
                b"DELETE": self.delete_slaves,
            },
        }

    # -- replicating --------------------------------------------------------------------------

    async def receive(self, request: Request) -> Response:
        """Apply a pushed batch (all or nothing on validation and drift) and acknowledge it."""
        # MalformedBatch, and ClockDriftError (raised before anything is applied), are answered
        # 400 malformed_batch and 400 clock_drift.
        batch = decode_batch(request_body(request))
        outcomes = await self.store.apply_remote_batch(batch.records)
        applied = sum(1 for outcome in outcomes if outcome is not None)
        ack = encode_ack(self.store.node_id, len(batch.records), applied)
        return Response(200, ack, dict(JSON_HEADERS))

    async def pull(self, request: Request) -> Response:
        """One page of the change feed with values, in the batch format."""
        since = int_arg(request, "since", 0)
        limit = page_limit(request)
        # Read before the page: when the page is short, everything up to ``newest`` is in it,
        # while a seq read after it could belong to a write the page missed.
        # A reader paging through the whole feed from 0 passes back the horizon it saw at the
        # start: it is refused only if tombstones were purged since then (it may have missed
        # them), while one resuming from a cursor below the horizon is always told to resync.
        started_at = horizon_arg(request)
        await check_horizon(self.store, since, started_at=started_at)
        newest = await self.store.last_seq()
        page = await self.store.changes(since, limit=limit, max_bytes=BATCH_BYTES, everything=True)
        # Checked again after the read: a purge that ran meanwhile leaves a gap too.
        horizon = await check_horizon(self.store, since, started_at=started_at)
        # Cut as a pushed batch is, so the page fits the puller's body limit; ``last_seq`` is
        # then its last record's and the puller reads on.
        records = cut_batch(page.records, BATCH_BYTES)
        last = records[-1].seq if records else since
        assert last is not None
        more = page.more or len(records) < len(page.records)
        if not more:  # short: read to the end
            last = max(last, newest, since)
        body = encode_batch(
            self.store.node_id, records, last_seq=last, purged_before=horizon, more=more
        )
        return Response(200, body, {b"Content-Type": MEDIA_TYPE.encode("ascii")})

    # -- /_peers ------------------------------------------------------------------------------

    def _statuses(self) -> list[dict[str, Any]]:
        statuses = self.service.peers()
        clone = self.service.clone_status()
        return statuses if clone is None else [*statuses, clone]

    async def list_peers(self, request: Request) -> Response:
        """Every peer's status: node id, cursor, lag, state, last error and success."""
        return json_response(self._statuses())

    async def add_peer(self, request: Request) -> Response:
        """Add the peer whose URL is the body (text, or JSON ``{"url": ...}``)."""
        self._refuse_on_a_cache_node()
        text = _text(request).strip()
        url: Any = text
        if text.startswith("{"):
            try:
                url = parse_json(text).get("url")
            except (ValueError, AttributeError):
                raise BadRequest("invalid_peer", 'the body must be a URL or {"url": URL}') from None
        normal = self.service.check_peer(url)  # InvalidPeer: 400 invalid_peer
        added = await self.service.add_peer(normal)
        status = next(each for each in self.service.peers() if each["url"] == normal)
        return json_response(status, 201 if added else 200)

    async def remove_peer(self, request: Request) -> Response:
        """Remove the peer ``?url=``: stop pushing to it and forget its cursor."""
        self._refuse_on_a_cache_node()
        url = query_arg(request, "url")
        if not url:
            raise BadRequest("invalid_parameter", "say which peer to remove with ?url=")
        normal = normalize_peer_url(url)
        if not await self.service.remove_peer(normal):
            raise ApiError(404, "unknown_peer", f"{normal} is not a peer", {"url": normal})
        return json_response({"url": normal, "removed": True})

    # -- classic /_replication_slaves ---------------------------------------------------------

    async def get_slaves(self, request: Request) -> Response:
        """The peer set as the classic comma-separated list."""
        return text_response(",".join(self.service.peer_urls()).encode("utf-8"))

    async def put_slaves(self, request: Request) -> Response:
        """Replace the peer set with the body's comma-separated URLs (empty: no peers)."""
        self._refuse_on_a_cache_node()
        await self.service.set_peers(parse_peer_list(_text(request)))
        return text_response()

    async def delete_slaves(self, request: Request) -> Response:
        """Remove every peer."""
        self._refuse_on_a_cache_node()
        await self.service.set_peers([])
        return text_response()


def replication_endpoints(
    store: Store, peers: PeerControl, *, cache_node: bool = False
) -> Endpoints:
    """The replication endpoints of a node, ready for ``extra_endpoints``; a cache node's refuse
    to change its (empty) peer set with 409 ``cache_node``."""
    return ReplicationEndpoints(store, peers, cache_node=cache_node).endpoints()

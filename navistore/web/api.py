"""The REST API as one resource: HTTP requests in, Store calls, HTTP answers out.

One leaf resource routes every path: the server's own endpoints (``/_health``, ``/_keys``,
``/_changes``, the classic ``/listkeys`` and ``/reset``, and those other parts add, such as
replication's), prefixes (paths ending in ``/``, see :mod:`~navistore.web.listings`) and keys
(:mod:`~navistore.web.key_routes`). It holds no storage logic: validation, versions and
conditions are the Store's. A plain GET or PUT of a key takes a path without a coroutine.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import Request

from navistore import __version__
from navistore.errors import BackendError
from navistore.hooks import MissResolver, ReplicaWaiter, WriteForwarder
from navistore.interfaces import WouldBlock
from navistore.keys import InvalidKey
from navistore.store import Store
from navistore.watch_hub import WatchHub
from navistore.web.conditions import etag_of, last_modified
from navistore.web.errors import ApiError, MethodNotAllowed, TooLarge
from navistore.web.feeds import changes_answer
from navistore.web.key_routes import KeyRoutes
from navistore.web.listings import Listings
from navistore.web.params import (
    forwarded_write,
    int_arg,
    page_limit,
    query,
    query_arg,
    request_body,
    wants_json,
)
from navistore.web.rendering import render_async, render_deferred
from navistore.web.responses import (
    Endpoints,
    Handler,
    Response,
    forwarded_response,
    json_response,
    text_response,
)

__all__ = ["ApiResource"]

#: How many recent request paths keep their validated key (then the cache starts over).
_KEY_CACHE_SIZE = 65536
_WRITES = (b"PUT", b"POST", b"DELETE")


class ApiResource(Resource):
    """The whole API as one leaf resource (routing by path is cheaper than a child lookup).

    :param max_value_size: the largest value (request body) accepted, in bytes.
    :param watch_hub: serves long-poll and event-stream feeds and ``?wait=true`` reads; the
        node closes it at shutdown.
    :param extra_endpoints: more server endpoints (replication adds ``/_replicate``,
        ``/_peers``, ``/_replication_slaves``); they take precedence over keys.
    :param miss_resolver: asked for a key this node does not hold before answering 404.
    :param write_forwarder: when set, writes are not applied here but forwarded (a cache node
        forwards them to its upstream) and answered with the forwarder's answer.
    :param replica_waiter: makes ``?replicas=N|all`` writes wait for peers' acknowledgements.
    """

    isLeaf = True

    def __init__(
        self,
        store: Store,
        *,
        max_value_size: int,
        watch_hub: WatchHub,
        extra_endpoints: Endpoints | None = None,
        miss_resolver: MissResolver | None = None,
        write_forwarder: WriteForwarder | None = None,
        replica_waiter: ReplicaWaiter | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.max_value_size = max_value_size
        self.watch_hub = watch_hub
        self.miss_resolver = miss_resolver
        self.write_forwarder = write_forwarder
        self.keys = KeyRoutes(
            store,
            max_value_size=max_value_size,
            watch_hub=watch_hub,
            miss_resolver=miss_resolver,
            replica_waiter=replica_waiter,
        )
        self.listings = Listings(store, watch_hub=watch_hub)
        self._keys_seen: dict[bytes, str] = {}
        # HEAD is listed explicitly: it must never reach an endpoint with effects (/reset).
        self._endpoints: dict[str, dict[bytes, Handler]] = {
            "_health": {b"GET": self._health, b"HEAD": self._health},
            "_keys": {b"GET": self.listings.keys, b"HEAD": self.listings.keys},
            "_changes": {b"GET": self._changes, b"HEAD": self._changes},
            "listkeys": {b"GET": self.listings.listkeys, b"HEAD": self.listings.listkeys},
            "reset": {b"GET": self._reset},
            **(extra_endpoints or {}),
        }

    # -- dispatch ---------------------------------------------------------------------------

    def render(self, request: Request) -> int | bytes:
        method = request.method
        if b"?" not in request.uri:
            # The commonest requests (a plain GET or PUT of a key) take a path without a
            # coroutine; whatever it cannot answer at once goes the general way.
            if method == b"GET":
                value = self._get_now(request)
                if value is not None:
                    return value
            elif method == b"PUT":
                written = self._put_now(request)
                if written is not None:
                    return render_deferred(request, written)
        return render_async(
            request, lambda: self._dispatch(request), cancel_on_disconnect=method not in _WRITES
        )

    async def _dispatch(self, request: Request) -> Response:
        method = request.method
        lookup = b"GET" if method == b"HEAD" else method
        path = self._path(request)
        first = path[1:].split("/", 1)[0]
        endpoint = self._endpoints.get(path[1:]) if "/" not in path[1:] else None
        if endpoint is not None:
            handler = endpoint.get(method)
            if handler is None:
                allowed = [name.decode("ascii") for name in endpoint]
                raise MethodNotAllowed(method.decode("latin-1"), allowed)
            return await handler(request)
        if first.startswith("_") and first != "_replication_slaves" and path != "/":
            raise ApiError(404, "unknown_endpoint", f"there is no endpoint {path!r}")
        if self.write_forwarder is not None and method in _WRITES:
            write = forwarded_write(request, request_body(request, self.max_value_size))
            return forwarded_response(await self.write_forwarder.forward(write))
        if path.endswith("/") or (lookup == b"GET" and "list" in query(request)):
            return await self.listings.route(request, path, lookup)
        return await self.keys.route(request, path, lookup)

    @staticmethod
    def _path(request: Request) -> str:
        raw = unquote_to_bytes(request.path)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidKey(raw, f"not valid UTF-8 (byte {exc.start})") from None

    # -- the fast paths ---------------------------------------------------------------------

    def _plain_key(self, request: Request) -> str | None:
        """The canonical key a request's path names, if it is a plain key (not a prefix nor an
        endpoint), else None. Recent paths are remembered: validating a key costs about as much
        as the rest of a GET."""
        raw = request.path
        key = self._keys_seen.get(raw)
        if key is None:
            try:
                path = self._path(request)
                if path.endswith("/") or path.startswith("/_") or path[1:] in self._endpoints:
                    return None
                key = self.store.canonical_key(path)
            except InvalidKey:
                return None  # the general path answers the error
            if len(self._keys_seen) >= _KEY_CACHE_SIZE:
                self._keys_seen.clear()
            self._keys_seen[raw] = key
        return key

    def _get_now(self, request: Request) -> bytes | None:
        """A plain GET's body with its headers set, when the value is at hand; else None."""
        if self.miss_resolver is not None or request.requestHeaders.hasHeader(b"If-None-Match"):
            return None
        key = self._plain_key(request)
        if key is None:
            return None
        try:
            record = self.store.peek(key)
        except (WouldBlock, BackendError):
            return None
        if record is None:
            return None  # 404 and its JSON body are the general path's
        set_header = request.responseHeaders.setRawHeaders
        set_header(b"ETag", [etag_of(record)])
        set_header(b"Last-Modified", [last_modified(record)])
        set_header(b"Content-Type", [record.content_type.encode("latin-1", "replace")])
        set_header(b"X-Content-Type-Options", [b"nosniff"])
        return record.value

    def _put_now(self, request: Request) -> Deferred[Response] | None:
        """A plain unconditional PUT already under way, when it can start at once; else None."""
        conditional = request.requestHeaders.hasHeader
        if (
            self.write_forwarder is not None
            or conditional(b"If-Match")
            or conditional(b"If-None-Match")
        ):
            return None
        key = self._plain_key(request)
        if key is None:
            return None
        try:
            value = request_body(request, self.max_value_size)
        except TooLarge:
            return None
        raw_type = request.getHeader(b"Content-Type")
        content_type = raw_type.decode("latin-1") if raw_type else None
        try:
            written = self.store.put_now(key, value, content_type)
        except BackendError:
            return None
        if written is None:
            return None
        return written.addCallback(KeyRoutes.put_answer, key, wants_json(request))

    # -- the node's own endpoints -----------------------------------------------------------

    async def _changes(self, request: Request) -> Response:
        since = int_arg(request, "since", 0)
        limit = page_limit(request)
        prefix = self.store.canonical_prefix(query_arg(request, "prefix") or "/")
        return await changes_answer(
            request, self.store, self.watch_hub, since=since, limit=limit, prefix=prefix
        )

    async def _reset(self, request: Request) -> Response:
        await self.store.reset()
        if wants_json(request):
            return json_response({"reset": True})
        return text_response()

    async def _health(self, request: Request) -> Response:
        document: dict[str, Any] = {
            "status": "ok",
            "node_id": self.store.node_id,
            "version": __version__,
            "backend": self.store.backend.kind,
        }
        try:
            document.update(await self.store.health())
        except Exception as exc:
            document.update(status="unavailable", state="unavailable", error=str(exc))
            return json_response(document, 503)
        document["state"] = "ok"
        return json_response(document)

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

import attrs
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from navistore import __version__
from navistore.errors import BackendError
from navistore.hooks import MissResolver, ReplicaWaiter, WriteForwarder
from navistore.interfaces import WouldBlock
from navistore.keys import InvalidKey
from navistore.store import Store, WriteResult
from navistore.tally import ROUTE_FAMILY
from navistore.watch_hub import WatchHub
from navistore.web.access import AccessPolicy, caller_of, need_of
from navistore.web.conflict_routes import ConflictRoutes
from navistore.web.errors import ApiError, MethodNotAllowed, TooLarge, as_api_error
from navistore.web.feeds import changes_answer
from navistore.web.key_routes import KeyRoutes
from navistore.web.listings import Listings
from navistore.web.mounts import Mount
from navistore.web.params import (
    flag,
    forwarded_write,
    int_arg,
    page_limit,
    query,
    query_arg,
    request_body,
    wants_json,
)
from navistore.web.record_heads import RecordHeads, record_header_items, written_head
from navistore.web.rendering import answer_failure, render_async, render_deferred, render_error
from navistore.web.request import NavistoreRequest
from navistore.web.responses import (
    Endpoints,
    Handler,
    Response,
    forwarded_response,
    json_response,
    text_response,
)
from navistore.web.send_budget import SMALL_ANSWER, send_budget_of
from navistore.web.ui import ui_page

__all__ = ["ApiResource", "Route"]

#: How many recent request paths keep their validated key, and how many bytes of path they may
#: hold together (then the cache starts over): distinct long paths cannot fill memory.
_KEY_CACHE_SIZE = 65536
_KEY_CACHE_BYTES = 4 * 1024 * 1024
_WRITES = (b"PUT", b"POST", b"DELETE")
_READS = (b"GET", b"HEAD")


@attrs.frozen
class Route:
    """What a request's path names.

    :ivar kind: ``endpoint``, ``prefix``, ``key``, ``mount`` (a path under a mounted API's
        first segment), or ``unknown`` (a reserved name that is no endpoint: 404).
    :ivar name: the endpoint's name, the canonical prefix or key, the mount's first segment,
        or the path.
    """

    kind: str
    name: str


class ApiResource(Resource):
    """The whole API as one leaf resource (routing by path is cheaper than a child lookup).

    :param max_value_size: the largest value (request body) accepted, in bytes.
    :param access: who may do what (tokens, protected mode, browsers); every request is
        checked against it before any work.
    :param watch_hub: serves long-poll and event-stream feeds and ``?wait=true`` reads; the
        node closes it at shutdown.
    :param extra_endpoints: more server endpoints (replication adds ``/_replicate``,
        ``/_peers``, ``/_replication_slaves``); they take precedence over keys.
    :param miss_resolver: asked for a key this node does not hold before answering 404.
    :param write_forwarder: when set, writes are not applied here but forwarded (a cache node
        forwards them to its upstream) and answered with the forwarder's answer.
    :param replica_waiter: makes ``?replicas=N|all`` writes wait for peers' acknowledgements.
    :param mounts: APIs that take every path under a first segment (``v2`` for ``/v2/...``),
        before keys and after the node's own endpoints (:mod:`navistore.compat`).
    """

    isLeaf = True

    def __init__(
        self,
        store: Store,
        *,
        max_value_size: int,
        access: AccessPolicy,
        watch_hub: WatchHub,
        extra_endpoints: Endpoints | None = None,
        miss_resolver: MissResolver | None = None,
        write_forwarder: WriteForwarder | None = None,
        replica_waiter: ReplicaWaiter | None = None,
        mounts: dict[str, Mount] | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.max_value_size = max_value_size
        self.access = access
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
        self.conflicts = ConflictRoutes(store)
        self._mounts = dict(mounts or {})
        self._mount_segments = {name.encode("utf-8"): name for name in self._mounts}
        self._heads = RecordHeads()
        self._keys_seen: dict[bytes, Route] = {}
        self._keys_seen_bytes = 0
        # HEAD is listed explicitly: it must never reach an endpoint with effects (/reset).
        self._endpoints: dict[str, dict[bytes, Handler]] = {
            "_health": {b"GET": self._health, b"HEAD": self._health},
            "_keys": {b"GET": self.listings.keys, b"HEAD": self.listings.keys},
            "_changes": {b"GET": self._changes, b"HEAD": self._changes},
            "_conflicts": {b"GET": self.conflicts.keys, b"HEAD": self.conflicts.keys},
            "listkeys": {b"GET": self.listings.listkeys, b"HEAD": self.listings.listkeys},
            "reset": {b"GET": self._reset},
            "_ui": {b"GET": ui_page, b"HEAD": ui_page},
            **(extra_endpoints or {}),
        }

    # -- dispatch ---------------------------------------------------------------------------

    def render(self, request: Request) -> int | bytes:
        method = request.method
        try:
            route = self._admit(request)
        except ApiError as error:
            return render_error(request, error)
        except Exception as error:  # InvalidKey: a path that is no key
            return render_error(request, as_api_error(error))
        if route is None:  # a CORS preflight, answered
            return b""
        kind = route.kind
        setattr(request, ROUTE_FAMILY, route.name if kind == "endpoint" else kind)
        if kind == "key" and b"?" not in request.uri:
            # The commonest requests (a plain GET or PUT of a key) take a path without a
            # coroutine; whatever it cannot answer at once goes the general way.
            if method == b"GET":
                value = self._get_now(request, route.name)
                if value is not None:
                    return value
            elif method == b"PUT":
                answered = self._put_now(request, route.name)
                if answered is not None:
                    return answered
        return render_async(
            request,
            lambda: self._dispatch(request, route),
            cancel_on_disconnect=method not in _WRITES,
        )

    def _admit(self, request: Request) -> Route | None:
        """Who asks, what the request names and whether they may: its :class:`Route`, or None
        for a CORS preflight (answered here). Raises the refusal otherwise."""
        self.access.allow_origin(request)
        if request.method == b"OPTIONS" and request.getHeader(b"Access-Control-Request-Method"):
            for name, value in self.access.preflight(request).items():
                request.responseHeaders.setRawHeaders(name, [value])
            request.setResponseCode(204)
            return None
        mounted = self._mounted(request) if self._mount_segments else None
        if mounted is not None:
            # Who asks is decided here, in the mount's ways too (Consul's X-Consul-Token); what
            # each request needs, only the mount knows (it checks per key).
            mount = self._mounts[mounted]
            try:
                caller = self.access.caller(request, secret=mount.secret(request))
            except ApiError as error:
                raise mount.refused(request, error) from None
            self.access.remember(request, caller)
            return Route("mount", mounted)
        caller = self.access.caller(request)
        route = self._route(request)
        if caller.unrestricted and route.kind == "key" and self.access.audit is None:
            # A caller who may do anything anywhere: only the browser rules are left to check.
            if request.method not in _READS:
                self.access.refuse_cross_origin(request)
            self.access.remember(request, caller)
            return route
        recursive = (
            route.kind == "prefix" and request.method == b"DELETE" and flag(request, "recursive")
        )
        need = need_of(
            request.method,
            route.name,
            endpoint=route.name if route.kind == "endpoint" else None,
            prefix=route.kind == "prefix",
            recursive=recursive,
        )
        self.access.check(request, caller, need)
        return route

    def _mounted(self, request: Request) -> str | None:
        """The mount whose first segment the path starts with, or None."""
        first = request.path[1:].split(b"/", 1)[0]
        return self._mount_segments.get(first)

    def _route(self, request: Request) -> Route:
        """What the request's path names: an endpoint, a prefix or a key (keys remembered)."""
        raw = request.path
        plain = b"?" not in request.uri
        known = self._keys_seen.get(raw) if plain else None
        if known is not None:
            return known
        path = self._path(request)
        name = path[1:]
        if "/" not in name and name in self._endpoints:
            return Route("endpoint", name)
        first = name.split("/", 1)[0]
        if first == "_ui":  # the page's files are under it
            return Route("endpoint", "_ui")
        if first.startswith("_") and first != "_replication_slaves" and path != "/":
            return Route("unknown", path)
        if path.endswith("/"):
            return Route("prefix", self.store.canonical_prefix(path))
        if request.method in (b"GET", b"HEAD") and "list" in query(request):
            return Route("prefix", self.store.canonical_prefix(path + "/"))
        # Validating a key costs about as much as the rest of a GET: recent paths keep theirs.
        try:
            route = Route("key", self.store.canonical_key(path))
        except InvalidKey:
            if request.method not in _READS and request.method != b"DELETE":
                raise
            # A key stored before format characters were refused may still be read and deleted.
            return Route("key", self.store.canonical_key(path, allow_format=True))
        if plain:
            if len(self._keys_seen) >= _KEY_CACHE_SIZE or self._keys_seen_bytes > _KEY_CACHE_BYTES:
                self._keys_seen.clear()
                self._keys_seen_bytes = 0
            self._keys_seen[raw] = route
            self._keys_seen_bytes += len(raw) + len(route.name)
        return route

    async def _dispatch(self, request: Request, route: Route) -> Response:
        method = request.method
        lookup = b"GET" if method == b"HEAD" else method
        if route.kind == "endpoint":
            endpoint = self._endpoints[route.name]
            handler = endpoint.get(method)
            if handler is None:
                allowed = [name.decode("ascii") for name in endpoint]
                raise MethodNotAllowed(method.decode("latin-1"), allowed)
            return await handler(request)
        if route.kind == "mount":
            mount = self._mounts[route.name]
            return await mount.answer(request, self._path(request), caller_of(request))
        if route.kind == "unknown":
            raise ApiError(404, "unknown_endpoint", f"there is no endpoint {route.name!r}")
        if self.write_forwarder is not None and method in _WRITES:
            write = forwarded_write(request, request_body(request, self.max_value_size))
            return forwarded_response(await self.write_forwarder.forward(write))
        if route.kind == "prefix":
            return await self.listings.route(request, route.name, lookup)
        if lookup == b"GET" and flag(request, "conflicts"):
            return await self.conflicts.of_key(request, route.name)
        return await self.keys.route(request, route.name, lookup)

    @staticmethod
    def _path(request: Request) -> str:
        raw = unquote_to_bytes(request.path)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidKey(raw, f"not valid UTF-8 (byte {exc.start})") from None

    # -- the fast paths ---------------------------------------------------------------------

    def _get_now(self, request: Request, key: str) -> bytes | None:
        """A plain GET's body with its headers set, when the value is at hand; else None."""
        if self.miss_resolver is not None or request.requestHeaders.hasHeader(b"If-None-Match"):
            return None
        try:
            record = self.store.peek(key)
        except (WouldBlock, BackendError):
            return None
        if record is None or record.expires_ms is not None or record.flags:
            # 404 and its JSON body are the general path's, and so are the headers of a
            # record's time left and flags (the heads kept per version cannot say them).
            return None
        if len(record.value) > SMALL_ANSWER:
            budget = send_budget_of(request)
            if budget is not None and budget.spent:
                return None  # slow readers hold too much: the general path waits for room
        if isinstance(request, NavistoreRequest):
            request.head = self._heads.head(key, record)
        else:
            for name, value in record_header_items(record):
                request.responseHeaders.setRawHeaders(name, [value])
        return record.value

    def _put_now(self, request: Request, key: str) -> int | None:
        """A plain unconditional PUT under way, answered when it is stored (``NOT_DONE_YET``),
        when it can start at once; else None."""
        conditional = request.requestHeaders.hasHeader
        if (
            self.write_forwarder is not None
            or conditional(b"If-Match")
            or conditional(b"If-None-Match")
        ):
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
        if wants_json(request) or not isinstance(request, NavistoreRequest):
            return render_deferred(
                request, written.addCallback(KeyRoutes.put_answer, key, wants_json(request))
            )
        written.addCallbacks(
            _answer_written, answer_failure, callbackArgs=(request,), errbackArgs=(request,)
        )
        return NOT_DONE_YET

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


def _answer_written(result: WriteResult, request: NavistoreRequest) -> None:
    """Answer a plain PUT that was stored: 201 or 200 and ``OK``, in one write."""
    if request.finished or request._disconnected:
        return  # the client left: the write stands, nobody waits for its answer
    request.setResponseCode(201 if result.created else 200)
    request.head = written_head(result.record)
    request.write_whole(b"OK")
    request.finish()

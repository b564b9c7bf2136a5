"""The REST API: HTTP requests in, Store calls, HTTP answers out.

One leaf resource routes every path: the server's own endpoints (``/_health``, ``/_keys``,
``/_changes``, and the classic ``/listkeys`` and ``/reset``), prefixes (paths ending in ``/``) and
keys. It holds no storage logic: validation, versions and conditions are the Store's.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Callable
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import Request

from .. import __version__
from ..errors import BackendError
from ..interfaces import WouldBlock
from ..keys import InvalidKey, classic_form, normalize_key
from ..record import Record
from ..store import MATCH_ANY, KeysPage, Store, WriteResult
from ..watch import WatchHub
from .conditions import condition, etag_of, last_modified
from .hooks import ALL_REPLICAS, MissResolver, ReplicaWaiter, WriteForwarder
from .params import flag, int_arg, query, query_arg, request_body, wants_json
from .rendering import (
    ApiError,
    BadRequest,
    MethodNotAllowed,
    Response,
    TooLarge,
    json_bytes,
    render_async,
    render_deferred,
)
from .watches import changes_answer, wait_for_key, wait_for_prefix

__all__ = ["SOURCE_HEADER", "STALE_HEADER", "ApiResource", "Endpoints", "Handler"]

_JSON = {b"Content-Type": b"application/json"}
_TEXT = b"text/plain; charset=utf-8"
_OK_TEXT = {b"Content-Type": _TEXT}
_DEFAULT_PAGE = 1000
_DEFAULT_REPLICA_TIMEOUT = 5
_MAX_REPLICA_TIMEOUT = 300

#: Says which node answered a read this node could not (read fallback, cache fill).
SOURCE_HEADER = b"X-Navistore-Source"
#: Seconds since a cache node last heard from its upstream: how stale its answer may be.
STALE_HEADER = b"X-Navistore-Stale-Seconds"
_MAX_PAGE = 10_000
#: How many recent request paths keep their validated key (then the cache starts over).
_KEY_CACHE_SIZE = 65536

#: An endpoint's handler: a coroutine function answering one request.
Handler = Callable[[Request], Awaitable[Response]]

#: Endpoints by name (the path without its leading ``/``), then by method.
Endpoints = dict[str, dict[bytes, Handler]]


def _value_entry(record: Record) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "key": record.key,
        "version": record.stamp.encode(),
        "content_type": record.content_type,
    }
    try:
        entry["value"] = record.value.decode("utf-8")
        entry["encoding"] = "utf-8"
    except UnicodeDecodeError:
        entry["value"] = base64.b64encode(record.value).decode("ascii")
        entry["encoding"] = "base64"
    return entry


def _record_headers(record: Record) -> dict[bytes, bytes]:
    return {b"ETag": etag_of(record), b"Last-Modified": last_modified(record)}


class ApiResource(Resource):
    """The whole API as one leaf resource (routing by path is cheaper than a child lookup)."""

    isLeaf = True

    def __init__(
        self,
        store: Store,
        *,
        max_value_size: int,
        extra_endpoints: Endpoints | None = None,
        miss_resolver: MissResolver | None = None,
        write_forwarder: WriteForwarder | None = None,
        replica_waiter: ReplicaWaiter | None = None,
        watch_hub: WatchHub | None = None,
    ) -> None:
        """:param extra_endpoints: more server endpoints (replication adds ``/_replicate``,
            ``/_peers``, ``/_replication_slaves``); they take precedence over keys.
        :param miss_resolver: asked for a key this node does not hold before answering 404.
        :param write_forwarder: when set, writes are not applied here but forwarded (a cache
            node forwards them to its upstream) and answered with the forwarder's answer.
        :param replica_waiter: makes ``?replicas=N|all`` writes wait for peers' acknowledgements.
        :param watch_hub: serves long-poll and event-stream feeds and ``?wait=true`` reads; the
            node closes it at shutdown. Without one, a hub with the defaults is made on first use.
        """
        super().__init__()
        self.store = store
        self.max_value_size = max_value_size
        self.miss_resolver = miss_resolver
        self.write_forwarder = write_forwarder
        self.replica_waiter = replica_waiter
        self._watch_hub = watch_hub
        self._keys_seen: dict[bytes, str] = {}
        # HEAD is listed explicitly: it must never reach an endpoint with effects (/reset).
        self._endpoints: dict[str, dict[bytes, Handler]] = {
            "_health": {b"GET": self._health, b"HEAD": self._health},
            "_keys": {b"GET": self._keys, b"HEAD": self._keys},
            "_changes": {b"GET": self._changes, b"HEAD": self._changes},
            "listkeys": {b"GET": self._listkeys, b"HEAD": self._listkeys},
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
        writes = method in (b"PUT", b"POST", b"DELETE")
        return render_async(
            request, lambda: self._dispatch(request), cancel_on_disconnect=not writes
        )

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
                key = self.store.key(path)
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
            value = self._body(request)
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
        as_json = wants_json(request)
        return written.addCallback(self._put_answer, key, as_json)

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
        if self.write_forwarder is not None and method in (b"PUT", b"POST", b"DELETE"):
            return await self.write_forwarder.forward(request, self._body(request))
        if path.endswith("/") or (lookup == b"GET" and "list" in query(request)):
            return await self._prefix_route(request, path, lookup)
        return await self._key_route(request, path, lookup)

    @staticmethod
    def _path(request: Request) -> str:
        raw = unquote_to_bytes(request.path)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidKey(raw, f"not valid UTF-8 (byte {exc.start})") from None

    def _body(self, request: Request) -> bytes:
        return request_body(request, self.max_value_size)

    # -- keys -------------------------------------------------------------------------------

    @property
    def watch_hub(self) -> WatchHub:
        """The hub of this resource's watches (made with the defaults if none was given)."""
        if self._watch_hub is None:
            self._watch_hub = WatchHub(self.store)
        return self._watch_hub

    async def _key_route(self, request: Request, path: str, method: bytes) -> Response:
        if method == b"GET" and flag(request, "wait"):
            return await wait_for_key(
                request,
                self.store,
                self.watch_hub,
                self.store.key(path),
                plain_get=self._get,
                answer_record=self._answer_record,
            )
        if method == b"GET":
            return await self._get(request, self.store.key(path))
        if method == b"PUT":
            return await self._put(request, self.store.key(path), create_only=False)
        if method == b"POST":
            return await self._put(request, self.store.key(path), create_only=True)
        if method == b"DELETE":
            return await self._delete(request, self.store.key(path))
        raise MethodNotAllowed(method.decode("latin-1"), ["GET", "HEAD", "PUT", "POST", "DELETE"])

    async def _get(self, request: Request, key: str) -> Response:
        record = await self.store.get(key)
        headers: dict[bytes, bytes] = {}
        if self.miss_resolver is not None:
            stale = self.miss_resolver.staleness()
            if stale is not None:
                headers[STALE_HEADER] = b"%d" % int(stale)
            if record is None:
                found = await self.miss_resolver.resolve(key)
                if found is not None:
                    record, source = found
                    headers[SOURCE_HEADER] = source.encode("utf-8")
        if record is None:
            raise ApiError(404, "not_found", f"no key {key!r}", {"key": key}, headers)
        return self._answer_record(request, record, headers)

    def _answer_record(
        self, request: Request, record: Record, headers: dict[bytes, bytes]
    ) -> Response:
        """A GET's answer for a live record (200, or 304 for ``If-None-Match``)."""
        headers = {**headers, **_record_headers(record)}
        unless = condition(request, b"If-None-Match")
        if unless is not None and unless.matches(record):
            return Response(304, headers=headers)
        headers[b"Content-Type"] = record.content_type.encode("latin-1", "replace")
        headers[b"X-Content-Type-Options"] = b"nosniff"
        return Response(200, record.value, headers)

    async def _resolve_match(self, request: Request, key: str) -> str | None:
        only_if = condition(request, b"If-Match")
        if only_if is None:
            return None
        if only_if.wildcard:
            return MATCH_ANY
        if len(only_if.tags) > 1:
            current = await self.store.get(key)
            if current is not None and current.stamp.encode() in only_if.tags:
                return current.stamp.encode()
        return only_if.tags[0] if only_if.tags else ""

    async def _check_none_match_tags(self, request: Request, key: str) -> bool:
        """Apply ``If-None-Match`` with tags; return whether it was ``*``."""
        unless = condition(request, b"If-None-Match")
        if unless is None:
            return False
        if unless.wildcard:
            return True
        current = await self.store.get(key)
        if unless.matches(current):
            assert current is not None
            raise ApiError(
                412,
                "precondition_failed",
                f"condition If-None-Match failed: key {key!r} is at a listed version",
                {"key": key, "version": current.stamp.encode()},
            )
        return False

    async def _put(self, request: Request, key: str, *, create_only: bool) -> Response:
        value = self._body(request)
        raw_type = request.getHeader(b"Content-Type")
        content_type = raw_type.decode("latin-1") if raw_type else None
        replicas = self._replicas_wanted(request)
        if_match = await self._resolve_match(request, key)
        none_match = await self._check_none_match_tags(request, key)
        result = await self.store.put(
            key,
            value,
            content_type,
            if_match=if_match,
            if_none_match=none_match,
            create_only=create_only,
        )
        await self._wait_for_replicas(request, result.record, replicas)
        return self._put_answer(result, key, wants_json(request))

    @staticmethod
    def _put_answer(result: WriteResult, key: str, as_json: bool) -> Response:
        status = 201 if result.created else 200
        headers = _record_headers(result.record)
        if as_json:
            document = {
                "key": key,
                "version": result.record.stamp.encode(),
                "created": result.created,
            }
            return Response(status, json_bytes(document), {**headers, **_JSON})
        return Response(status, b"OK", {**headers, **_OK_TEXT})

    async def _delete(self, request: Request, key: str) -> Response:
        replicas = self._replicas_wanted(request)
        if_match = await self._resolve_match(request, key)
        none_match = await self._check_none_match_tags(request, key)
        tombstone = await self.store.delete(key, if_match=if_match, if_none_match=none_match)
        await self._wait_for_replicas(request, tombstone, replicas)
        if wants_json(request):
            document = {"key": key, "version": tombstone.stamp.encode(), "deleted": True}
            return Response(200, json_bytes(document), _JSON)
        return Response(200, b"OK", _OK_TEXT)

    def _replicas_wanted(self, request: Request) -> tuple[int | str, float] | None:
        """Parse ``?replicas=N|all&timeout=S`` before anything is written (a 400 changes
        nothing); None when the write need not wait."""
        wanted_text = query_arg(request, "replicas")
        if wanted_text is None:
            return None
        wanted: int | str = ALL_REPLICAS
        if wanted_text != ALL_REPLICAS:
            wanted = int_arg(request, "replicas", 0)
        timeout = float(int_arg(request, "timeout", _DEFAULT_REPLICA_TIMEOUT, _MAX_REPLICA_TIMEOUT))
        return None if wanted == 0 else (wanted, timeout)

    async def _wait_for_replicas(
        self, request: Request, record: Record, wanted: tuple[int | str, float] | None
    ) -> None:
        """Wait for ``wanted`` peers to hold a write that is already stored here.

        The write stays durable locally either way; past the timeout the answer is 504 naming
        the peers that have it and those that do not. A client going away ends the wait.
        """
        if wanted is None:
            return
        count, timeout = wanted
        if self.replica_waiter is None:
            raise ApiError(
                504, "replicas_unavailable", "this node does not replicate", {"reached": []}
            )
        waiting = Deferred.fromCoroutine(self.replica_waiter.wait(record, count, timeout))
        request.notifyFinish().addErrback(lambda _failure: waiting.cancel())
        report = await waiting
        if not report.satisfies(count):
            raise ApiError(
                504,
                "replicas_timeout",
                f"{len(report.reached)} peer(s) hold the write, {count} wanted (waited at most "
                f"{timeout:g} s); it is stored on this node and will still reach the others",
                {
                    "key": record.key,
                    "version": record.stamp.encode(),
                    "reached": list(report.reached),
                    "missing": list(report.missing),
                },
            )

    # -- prefixes (documents) ---------------------------------------------------------------

    async def _prefix_route(self, request: Request, path: str, method: bytes) -> Response:
        prefix = self.store.prefix(path if path.endswith("/") else path + "/")
        if method == b"GET" and flag(request, "wait"):
            return await wait_for_prefix(
                request,
                self.store,
                self.watch_hub,
                prefix,
                listing=lambda: self._list(request, prefix),
            )
        if method == b"GET":
            return await self._list(request, prefix)
        if method == b"DELETE":
            if not flag(request, "recursive"):
                raise BadRequest(
                    "recursive_required",
                    f"deleting the document {prefix!r} with all sub-documents needs "
                    "?recursive=true",
                )
            deleted = await self.store.delete_prefix(prefix)
            return Response(200, json_bytes({"prefix": prefix, "deleted": deleted}), _JSON)
        raise MethodNotAllowed(method.decode("latin-1"), ["GET", "HEAD", "DELETE"])

    async def _list(self, request: Request, prefix: str) -> Response:
        after_text = query_arg(request, "after")
        after = None
        if after_text:
            after = normalize_key(after_text, max_bytes=None, allow_reserved=True)
        limit = int_arg(request, "limit", _DEFAULT_PAGE, _MAX_PAGE)
        if limit == 0:
            raise BadRequest("invalid_parameter", "parameter 'limit' must be at least 1")
        page = await self.store.list(prefix, after=after, limit=limit)
        keys: list[Any]
        if flag(request, "values"):
            keys = [_value_entry(record) for record in page.records]
        else:
            keys = [record.key for record in page.records]
        return Response(200, json_bytes({"keys": keys, "next": page.next}), _JSON)

    async def _keys(self, request: Request) -> Response:
        return await self._list(request, self.store.prefix(query_arg(request, "prefix") or "/"))

    # -- server endpoints -------------------------------------------------------------------

    async def _changes(self, request: Request) -> Response:
        since = int_arg(request, "since", 0)
        limit = int_arg(request, "limit", _DEFAULT_PAGE, _MAX_PAGE)
        if limit == 0:
            raise BadRequest("invalid_parameter", "parameter 'limit' must be at least 1")
        prefix = self.store.prefix(query_arg(request, "prefix") or "/")
        return await changes_answer(
            request,
            self.store,
            lambda: self.watch_hub,
            since=since,
            limit=limit,
            prefix=prefix,
        )

    async def _listkeys(self, request: Request) -> Response:
        # The first page is read before the 200 goes out, so a failing backend is a 503 rather
        # than a 200 cut short.
        page = await self.store.list("/", limit=_DEFAULT_PAGE)
        return Response(200, headers=_JSON, stream=self._stream_all_keys(page))

    async def _stream_all_keys(self, page: KeysPage) -> AsyncIterator[bytes]:
        """The classic key list as one JSON array, produced a page at a time."""
        yield b"["
        first = True
        while True:
            if page.records:
                names = [json_bytes(classic_form(record.key)) for record in page.records]
                yield (b"" if first else b",") + b",".join(names)
                first = False
            if page.next is None:
                break
            page = await self.store.list("/", after=page.next, limit=_DEFAULT_PAGE)
        yield b"]"

    async def _reset(self, request: Request) -> Response:
        await self.store.reset()
        if wants_json(request):
            return Response(200, json_bytes({"reset": True}), _JSON)
        return Response(200, b"OK", _OK_TEXT)

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
            return Response(503, json_bytes(document), _JSON)
        document["state"] = "ok"
        return Response(200, json_bytes(document), _JSON)

"""The routes of one key: GET and HEAD, PUT, POST (create only) and DELETE.

Conditions (``If-Match``, ``If-None-Match``) are read here and decided by the Store; a key this
node lacks may be found elsewhere first (a :class:`~navistore.hooks.MissResolver`); a write with
``?replicas=N|all`` waits for peers (a :class:`~navistore.hooks.ReplicaWaiter`) after it is stored
here; ``GET ?wait=true`` is a watch of the key (:func:`~navistore.web.feeds.wait_for_key`).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.web.server import Request

from navistore.hooks import ALL_REPLICAS, MissResolver, ReplicaWaiter
from navistore.record import Record
from navistore.store import MATCH_ANY, Store, WriteResult
from navistore.watch_hub import WatchHub
from navistore.web.conditions import condition, etag_of, last_modified
from navistore.web.errors import ApiError, MethodNotAllowed
from navistore.web.feeds import wait_for_key
from navistore.web.params import (
    flag,
    flags_arg,
    int_arg,
    query_arg,
    request_body,
    ttl_arg,
    wants_json,
)
from navistore.web.responses import VALUE_POLICY, Response, json_response, text_response

__all__ = [
    "DEFAULT_REPLICA_TIMEOUT",
    "EXPIRES_HEADER",
    "FLAGS_HEADER",
    "MAX_REPLICA_TIMEOUT",
    "SOURCE_HEADER",
    "STALE_HEADER",
    "KeyRoutes",
    "record_headers",
]

#: Says which node answered a read this node could not (read fallback, cache fill).
SOURCE_HEADER = b"X-Navistore-Source"
#: Seconds since a cache node last heard from its upstream: how stale its answer may be.
STALE_HEADER = b"X-Navistore-Stale-Seconds"
#: Whole seconds (rounded up) a key written with a TTL has left.
EXPIRES_HEADER = b"X-Navistore-Expires"
#: A key's flags, when they are not 0.
FLAGS_HEADER = b"X-Navistore-Flags"

#: Seconds a ``?replicas=`` write waits for its peers unless ``timeout`` says, and the most.
DEFAULT_REPLICA_TIMEOUT = 5
MAX_REPLICA_TIMEOUT = 300


def record_headers(record: Record) -> dict[bytes, bytes]:
    """The validators of a stored record: its ``ETag`` and ``Last-Modified``."""
    return {b"ETag": etag_of(record), b"Last-Modified": last_modified(record)}


class KeyRoutes:
    """The handlers of a key's routes over one Store.

    :param max_value_size: the largest value (request body) accepted, in bytes.
    :param watch_hub: serves ``GET ?wait=true``.
    :param miss_resolver: asked for a key this node does not hold before answering 404.
    :param replica_waiter: makes ``?replicas=N|all`` writes wait for peers' acknowledgements.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_value_size: int,
        watch_hub: WatchHub,
        miss_resolver: MissResolver | None = None,
        replica_waiter: ReplicaWaiter | None = None,
    ) -> None:
        self.store = store
        self.max_value_size = max_value_size
        self.watch_hub = watch_hub
        self.miss_resolver = miss_resolver
        self.replica_waiter = replica_waiter

    async def route(self, request: Request, key: str, method: bytes) -> Response:
        """Answer ``method`` (HEAD already read as GET) on the canonical ``key``."""
        if method not in (b"GET", b"PUT", b"POST", b"DELETE"):
            allowed = ["GET", "HEAD", "PUT", "POST", "DELETE"]
            raise MethodNotAllowed(method.decode("latin-1"), allowed)
        if method == b"GET" and flag(request, "wait"):
            return await wait_for_key(
                request,
                self.store,
                self.watch_hub,
                key,
                plain_get=self.get,
                answer_record=self.answer_record,
            )
        if method == b"GET":
            return await self.get(request, key)
        if method == b"DELETE":
            return await self.delete(request, key)
        return await self.put(request, key, create_only=method == b"POST")

    # -- reading ------------------------------------------------------------------------------

    async def get(self, request: Request, key: str) -> Response:
        """The value of a key (found elsewhere if this node misses it and may ask), or 404."""
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
        return self.answer_record(request, record, headers)

    def answer_record(
        self, request: Request, record: Record, headers: dict[bytes, bytes]
    ) -> Response:
        """A GET's answer for a live record (200, or 304 for ``If-None-Match``)."""
        headers = {**headers, **record_headers(record)}
        if record.expires_ms is not None:
            left_ms = max(0, record.expires_ms - self.store.clock.wall_ms())
            headers[EXPIRES_HEADER] = b"%d" % -(-left_ms // 1000)
        if record.flags:
            headers[FLAGS_HEADER] = b"%d" % record.flags
        unless = condition(request, b"If-None-Match")
        if unless is not None and unless.matches(record):
            return Response(304, headers=headers)
        headers[b"Content-Type"] = record.content_type.encode("latin-1", "replace")
        headers[b"X-Content-Type-Options"] = b"nosniff"
        headers[b"Content-Security-Policy"] = VALUE_POLICY
        return Response(200, record.value, headers)

    # -- conditions ---------------------------------------------------------------------------

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

    # -- writing ------------------------------------------------------------------------------

    async def put(self, request: Request, key: str, *, create_only: bool) -> Response:
        """Store the body as the key's value (POST: only if the key is absent)."""
        value = request_body(request, self.max_value_size)
        raw_type = request.getHeader(b"Content-Type")
        content_type = raw_type.decode("latin-1") if raw_type else None
        replicas = self._replicas_wanted(request)
        ttl_ms = ttl_arg(request)
        if ttl_ms is not None and not self.store.expires_keys:
            raise ApiError(
                400,
                "ttl_unsupported",
                f"the {self.store.backend.kind} backend cannot expire keys: write without ?ttl=",
            )
        flags = flags_arg(request)
        if_match = await self._resolve_match(request, key)
        none_match = await self._check_none_match_tags(request, key)
        result = await self.store.put(
            key,
            value,
            content_type,
            if_match=if_match,
            if_none_match=none_match,
            create_only=create_only,
            ttl_ms=ttl_ms,
            flags=flags,
        )
        await self._wait_for_replicas(request, result.record, replicas)
        return self.put_answer(result, key, wants_json(request))

    @staticmethod
    def put_answer(result: WriteResult, key: str, as_json: bool) -> Response:
        """The answer to a stored write: 201 or 200, ``OK`` or the JSON document."""
        status = 201 if result.created else 200
        headers = record_headers(result.record)
        if as_json:
            document = {
                "key": key,
                "version": result.record.stamp.encode(),
                "created": result.created,
            }
            return json_response(document, status, headers)
        return text_response(b"OK", status, headers)

    async def delete(self, request: Request, key: str) -> Response:
        """Delete the key (store its tombstone); 404 if it does not exist."""
        replicas = self._replicas_wanted(request)
        if_match = await self._resolve_match(request, key)
        none_match = await self._check_none_match_tags(request, key)
        tombstone = await self.store.delete(key, if_match=if_match, if_none_match=none_match)
        await self._wait_for_replicas(request, tombstone, replicas)
        if wants_json(request):
            document = {"key": key, "version": tombstone.stamp.encode(), "deleted": True}
            return json_response(document)
        return text_response()

    # -- replicated writes --------------------------------------------------------------------

    def _replicas_wanted(self, request: Request) -> tuple[int | str, float] | None:
        """Parse ``?replicas=N|all&timeout=S`` before anything is written (a 400 changes
        nothing); None when the write need not wait."""
        wanted_text = query_arg(request, "replicas")
        if wanted_text is None:
            return None
        wanted: int | str = ALL_REPLICAS
        if wanted_text != ALL_REPLICAS:
            wanted = int_arg(request, "replicas", 0)
        timeout = float(int_arg(request, "timeout", DEFAULT_REPLICA_TIMEOUT, MAX_REPLICA_TIMEOUT))
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
        if report.satisfies(count):
            return
        detail = {
            "key": record.key,
            "version": record.stamp.encode(),
            "reached": list(report.reached),
            "missing": list(report.missing),
        }
        peers = len(report.reached) + len(report.missing)
        if isinstance(count, int) and count > peers:
            # Decided at once, without waiting: no timeout was involved, and saying so would
            # send the client to retry with a longer one.
            raise ApiError(
                504,
                "replicas_unavailable",
                f"{count} replica(s) wanted but this node has {peers} peer(s); the write is "
                "stored on this node and will still reach them",
                detail,
            )
        raise ApiError(
            504,
            "replicas_timeout",
            f"{len(report.reached)} of {count} wanted peer(s) held the write within "
            f"{timeout:g} s; it is stored on this node and will still reach the others",
            detail,
        )

"""etcd's v2 API over the node's Store: ``/v2/keys``, ``/v2/members``, ``/version``, ``/health``.

``etcdctl`` (``ETCDCTL_API=2``) and python-etcd style clients work against a node started with
``--compat etcd`` unchanged but for its address. The keys are the native keys
(``/v2/keys/app/db`` is ``/app/db``); the indexes are the node's seqs, so ``X-Etcd-Index`` is its
newest seq and a record's ``modifiedIndex`` its seq. What maps how:

- :mod:`~navistore.compat.etcd_params`: the parameters, checked as etcd checks them;
- :mod:`~navistore.compat.etcd_nodes`: directories over keys, and the ``node`` bodies;
- :mod:`~navistore.compat.etcd_writes`: set, create, update, compareAndSwap, delete, ...;
- :mod:`~navistore.compat.etcd_watch`: ``?wait=true``;
- :mod:`~navistore.compat.etcd_cluster`: members, machines, stats, version, health;
- :mod:`~navistore.compat.etcd_errors`: etcd's error bodies.

Tokens work as on the native API (``Authorization: Bearer``), each request checked for the keys
it touches; etcd's own users and roles (basic auth) are not offered, and a node with tokens
says so to a client that sends ``Authorization: Basic``.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.server import Request

from navistore.compat.etcd_cluster import (
    CLUSTER_ID,
    client_url,
    health_answer,
    leader_answer,
    leader_stats,
    machines_answer,
    members_answer,
    self_stats,
    version_answer,
)
from navistore.compat.etcd_errors import (
    KEY_NOT_FOUND,
    EtcdError,
    etcd_error_response,
    from_api_error,
)
from navistore.compat.etcd_nodes import (
    dir_node,
    file_node,
    has_children,
    is_marker,
    list_dir,
    missing_cause,
)
from navistore.compat.etcd_params import KeyRequest, parse_key_request
from navistore.compat.etcd_watch import watch_answer
from navistore.compat.etcd_writes import Event, EventMemory, Writes
from navistore.record import Record
from navistore.store import Store
from navistore.tokens import READ, WRITE, Caller
from navistore.watch_hub import WatchHub
from navistore.web.access import AccessPolicy, Need
from navistore.web.errors import ApiError, as_api_error
from navistore.web.mounts import Mount
from navistore.web.responses import Response, json_bytes

__all__ = ["EtcdContext", "EtcdMount", "etcd_mounts"]

log = Logger()

_KEYS = "/v2/keys"
_KEY_METHODS = (b"GET", b"HEAD", b"PUT", b"POST", b"DELETE")
_TEXT = b"text/plain; charset=utf-8"


class EtcdContext(Protocol):
    """What the API is built over: :class:`navistore.compat.CompatContext` (named by its
    parts here, since that package imports this module to build the mounts)."""

    @property
    def store(self) -> Store: ...
    @property
    def watch_hub(self) -> WatchHub: ...
    @property
    def access(self) -> AccessPolicy: ...
    @property
    def reactor(self) -> IReactorTime: ...
    @property
    def max_value_size(self) -> int: ...
    @property
    def self_urls(self) -> tuple[str, ...]: ...


def etcd_mounts(context: EtcdContext) -> dict[str, Mount]:
    """The etcd API's mounts, by first segment: ``v2``, ``version`` and ``health``."""
    mount = EtcdMount(context)
    return {"v2": mount, "version": mount, "health": mount}


def _plain(status: int, text: bytes, headers: dict[bytes, bytes]) -> Response:
    return Response(status, text, {**headers, b"Content-Type": _TEXT})


class EtcdMount:
    """The etcd v2 API: one object behind the three first segments it answers."""

    def __init__(self, context: EtcdContext) -> None:
        self.context = context
        self.store = context.store
        self.memory = EventMemory()
        self.writes = Writes(context.store, self.memory, context.max_value_size)
        self.started = context.reactor.seconds()
        self._headers = {b"X-Etcd-Cluster-Id": CLUSTER_ID}
        context.store.subscribe(self._stored)

    def _stored(self, record: Record) -> None:
        """When a directory made here with a TTL expires, remove what it holds, as etcd does
        (its marker alone expires by itself): on the next reactor turn, outside the Store's
        notification, key by key; the deletes replicate like any other."""
        if not record.is_expiry:
            return
        known = self.memory.recall(record)
        if known is None or not (known[1] or {}).get("dir"):
            return
        self.context.reactor.callLater(0, self._expire_under, record.key)

    def _expire_under(self, key: str) -> None:
        done = Deferred.fromCoroutine(self.store.delete_prefix(key + "/"))
        done.addErrback(lambda failure: log.failure("expiring {key}/", failure, key=key))

    def refused(self, request: Request, error: ApiError) -> ApiError:
        """An unknown token, refused natively, with etcd's headers."""
        headers = {**error.headers, **self._event_headers(self.context.store.newest_seq)}
        return ApiError(error.status, error.code, error.message, error.detail, headers)

    def secret(self, request: Request) -> str | None:
        """No token of etcd's own: only ``Authorization: Bearer``. etcd's basic auth is refused
        with a clear answer when the node has tokens (without, the header is ignored, as the
        native API ignores it)."""
        header = request.getHeader(b"Authorization") or b""
        if self.context.access.tokens is not None and header[:6].lower() == b"basic ":
            raise ApiError(
                401,
                "unauthorized",
                "etcd's users and roles (basic auth) are not supported here: send a Navistore "
                "token as 'Authorization: Bearer <secret>'",
                None,
                {b"WWW-Authenticate": b'Bearer realm="navistore"'},
            )
        return None

    async def answer(self, request: Request, path: str, caller: Caller) -> Response:
        """Answer one request of the etcd API; every refusal in etcd's error shape."""
        try:
            return await self._route(request, path, caller)
        except EtcdError as error:
            return etcd_error_response(error, self._headers)
        except CancelledError:
            raise
        except Exception as exc:
            return etcd_error_response(from_api_error(as_api_error(exc), 0), self._headers)

    async def _route(self, request: Request, path: str, caller: Caller) -> Response:
        method = request.method
        if path == _KEYS or path.startswith(_KEYS + "/"):
            if method not in _KEY_METHODS:
                return self._not_allowed(_KEY_METHODS)
            return await self._keys(request, path[len(_KEYS) :], caller)
        if method not in (b"GET", b"HEAD"):
            return self._not_allowed((b"GET", b"HEAD"))
        self.context.access.check(request, caller, Need(None))
        headers = self._headers
        if path in ("/version", "/version/"):
            return version_answer(headers)
        if path in ("/health", "/health/"):
            try:
                await self.store.health()
            except Exception:
                return health_answer(False, headers)
            return health_answer(True, headers)
        url = client_url(request, self.context.self_urls)
        node_id = self.store.node_id
        if path in ("/v2/members", "/v2/members/"):
            return members_answer(node_id, url, headers)
        if path == "/v2/members/leader":
            return leader_answer(node_id, url, headers)
        if path in ("/v2/machines", "/v2/machines/"):
            return machines_answer(url, headers)
        if path == "/v2/stats/self":
            now = self.context.reactor.seconds()
            return self_stats(node_id, self.started, now, headers)
        if path == "/v2/stats/leader":
            return leader_stats(node_id, headers)
        return _plain(404, b"404 page not found\n", headers)

    def _not_allowed(self, allowed: tuple[bytes, ...]) -> Response:
        headers = {**self._headers, b"Allow": b", ".join(allowed)}
        return _plain(405, b"Method Not Allowed\n", headers)

    # -- keys -----------------------------------------------------------------------------------

    def _key(self, rest: str) -> str:
        """The canonical key of the path after ``/v2/keys`` (empty segments dropped, as etcd
        cleans a path; nothing left is the root, ``/``)."""
        parts = [part for part in rest.split("/") if part]
        if not parts:
            return "/"
        return self.store.canonical_key("/" + "/".join(parts))

    async def _keys(self, request: Request, rest: str, caller: Caller) -> Response:
        params = parse_key_request(request, 3 * self.context.max_value_size + 4096)
        key = self._key(rest)
        method = request.method
        access = self.context.access
        if method in (b"GET", b"HEAD"):
            if key == "/" or not caller.covers(key):
                # A listing shows only the keys the caller may read; a key outside its
                # prefixes, not on the way to them, is refused.
                if key != "/" and not any(p.startswith(key + "/") for p in caller.prefixes):
                    access.check(request, caller, Need(READ, key))
                access.check(request, caller, Need(READ, None))
            else:
                access.check(request, caller, Need(READ, key))
            if params.wait:
                return await watch_answer(
                    request,
                    self.store,
                    self.context.watch_hub,
                    self.memory,
                    key,
                    params,
                    caller,
                    self._event_headers(),
                )
            return await self._get(request, key, params, caller)
        if method == b"POST":
            access.check(request, caller, Need(WRITE, _under(key), True))
            return self._event(await self.writes.post(key, params), params)
        access.check(request, caller, Need(WRITE, key, True))
        if method == b"PUT":
            return self._event(await self.writes.put(key, params), params)
        if params.recursive:
            access.check(request, caller, Need(WRITE, _under(key), True))
        return self._event(await self.writes.delete(key, params), params)

    def _event_headers(self, index: int | None = None) -> dict[bytes, bytes]:
        headers = {**self._headers, b"X-Raft-Term": b"0"}
        if index is not None:
            headers[b"X-Etcd-Index"] = headers[b"X-Raft-Index"] = b"%d" % index
        return headers

    def _event(self, event: Event, params: KeyRequest) -> Response:
        body = json_bytes(event.document(with_node=not params.no_value_on_success)) + b"\n"
        headers = {**self._event_headers(event.index), b"Content-Type": b"application/json"}
        return Response(event.status, body, headers)

    async def _get(
        self, request: Request, key: str, params: KeyRequest, caller: Caller
    ) -> Response:
        index = self.store.newest_seq
        now = self.store.clock.wall_ms()
        if key == "/":
            tree = await list_dir(self.store, key, caller, recursive=params.recursive)
            node = dir_node("/", None, now, tree.nodes(key, now, params.recursive))
        else:
            record = await self.store.get(key)
            first = None if is_marker(record) else await has_children(self.store, key)
            if record is None and first is None:
                raise EtcdError(KEY_NOT_FOUND, await missing_cause(self.store, key), index)
            if is_marker(record) or first is not None:
                tree = await list_dir(self.store, key, caller, recursive=params.recursive)
                nodes = tree.nodes(key, now, params.recursive)
                node = dir_node(key, record if is_marker(record) else first, now, nodes)
            else:
                assert record is not None
                # A caller let through for a directory on the way to its prefixes.
                self.context.access.check(request, caller, Need(READ, key))
                node = file_node(record, now)
        body = json_bytes({"action": "get", "node": node}) + b"\n"
        headers = {**self._event_headers(index), b"Content-Type": b"application/json"}
        return Response(200, body, headers)


def _under(key: str) -> str:
    return "/" if key == "/" else key + "/"

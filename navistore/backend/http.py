"""The remote-HTTP backend: a Navistore node, over HTTP, as the storage of another process.

``http://host:port`` (or ``https://``) as a backend URL makes every backend call a request to
that node's backend RPC endpoints (:mod:`navistore.web.backend_rpc`), which the node serves only
when started with ``--serve-backend``. Such a node should be dedicated to serving one client:
the client's ``reset`` wipes the node's records, and the client's records are the node's.

URL options: ``timeout`` (seconds a call may take, default 30), ``connections`` (how many
requests may be in flight at once, default 8) and ``token_file`` (a file holding the secret to
present, a ``peer`` token of the serving node; default ``$NAVISTORE_PEER_TOKEN``), e.g.
``http://10.0.0.5:8888?timeout=5``.

Durability is the serving node's backend's: a ``memory:`` node loses everything when it stops,
a ``sqlite:`` node commits each ``apply`` before answering. Errors: a refused record is
:class:`~navistore.errors.InvalidRecord` (checked here before sending, and by the node); a
network error, a timeout, a 5xx or any answer outside the protocol is
:class:`~navistore.errors.StorageFailure`. An ``apply`` that fails that way after its request
left may still have been stored; applying the same record again is harmless (equal stamps are
no-ops), so retrying is the way to find out.

The protocol, shared with the server, is :mod:`navistore.protocol.backend_rpc`.
"""

from __future__ import annotations

import os
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import SplitResult, quote, urlencode, urlsplit

from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from navistore.backend import BackendURL, BackendURLError
from navistore.errors import BackendClosed, InvalidRecord, StorageFailure
from navistore.interfaces import (
    ANY,
    Expectation,
    ISizedReads,
    IStorageBackend,
    cut_by_bytes,
    stored_size,
)
from navistore.links import BadAnswer, HTTPClient, exchange, treq_client
from navistore.protocol.backend_rpc import RPC_PATHS, apply_params
from navistore.protocol.records import MalformedRecord, record_from_json
from navistore.record import Record, check_record

__all__ = ["DEFAULT_CONNECTIONS", "DEFAULT_TIMEOUT", "HttpBackend", "open_http"]

#: The environment variable holding the secret presented to the serving node (a ``peer`` token
#: there), unless the URL names a file with ``token_file=``.
TOKEN_ENV = "NAVISTORE_PEER_TOKEN"

#: How long one backend call may take, in seconds, unless the URL says ``timeout=``.
DEFAULT_TIMEOUT = 30.0
#: How many requests may be in flight at once, unless the URL says ``connections=``.
DEFAULT_CONNECTIONS = 8

_T = TypeVar("_T")


@implementer(IStorageBackend, ISizedReads)
class HttpBackend:
    """The backend contract as requests to a node serving the backend RPC.

    :param base_url: the node, e.g. ``http://10.0.0.5:8888`` (a path prefix is kept).
    :param http_client: sends the requests (treq over a pool of its own, see :func:`open_http`).
    :param reactor: what times the calls out.
    :param close_client: called once by :meth:`close` after the last call finished, to release
        the client's connections (its pool).
    :param timeout: seconds a call may take before it fails with StorageFailure.
    :param connections: how many requests may be in flight at once; more wait their turn.
    """

    kind = "http"
    #: Closing this client loses nothing: the data stays on the node.
    persistent = True

    def __init__(
        self,
        base_url: str,
        *,
        http_client: HTTPClient,
        reactor: IReactorTime,
        close_client: Callable[[], object] | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connections: int = DEFAULT_CONNECTIONS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = http_client
        self._reactor = reactor
        self._close_client = close_client
        self._headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        self._timeout = timeout
        self._slots = DeferredSemaphore(connections)
        self._pending: set[Deferred[Any]] = set()
        self._closing: Deferred[None] | None = None

    def __repr__(self) -> str:
        return f"<HttpBackend {self.base_url}>"

    # -- plumbing -----------------------------------------------------------------------------

    def _run(self, operation: str, work: Callable[[], Coroutine[Any, Any, _T]]) -> Deferred[_T]:
        """Run one call as a Deferred: refused after close, timed out, tracked for close."""
        if self._closing is not None:
            return fail(BackendClosed(operation))
        running: Deferred[_T] = self._slots.run(lambda: Deferred.fromCoroutine(work()))
        self._pending.add(running)

        def done(result: object) -> object:
            self._pending.discard(running)
            return result

        running.addBoth(done)
        return running

    async def _call(
        self,
        operation: str,
        method: str,
        params: Mapping[str, str | int],
        body: bytes | None = None,
        endpoint: str | None = None,
    ) -> Any:
        """One request; the JSON document of a 200 answer, or the error it maps to."""
        path = endpoint or RPC_PATHS[operation]
        url = f"{self.base_url}/{path}"
        if params:
            url += "?" + urlencode(params, quote_via=quote)
        try:
            answer = await exchange(
                self._client,
                self._reactor,
                method,
                url,
                timeout=self._timeout,
                body=body,
                headers=self._headers,
            )
        except Exception as exc:
            raise StorageFailure(f"{operation}() on {self.base_url} failed: {exc!r}") from exc
        if answer.status == 200:
            try:
                return answer.json()
            except BadAnswer:
                pass
        refusal = answer.refusal()
        message = refusal.message
        if answer.status == 400 and refusal.code == "invalid_record":
            raise InvalidRecord(message)
        if answer.status == 404 and refusal.code == "unknown_endpoint":
            message = "the node does not serve the backend RPC (start it with --serve-backend)"
        code = refusal.code or ""
        raise StorageFailure(
            f"{operation}() on {self.base_url}: HTTP {answer.status} {code}: {message}"
        )

    @staticmethod
    def _decode(operation: str, documents: Any) -> list[Record]:
        try:
            if not isinstance(documents, list):
                raise MalformedRecord("'records' must be a list")
            return [record_from_json(document) for document in documents]
        except MalformedRecord as exc:
            raise StorageFailure(f"{operation}(): the node answered a bad record: {exc}") from None

    # -- the contract -------------------------------------------------------------------------

    def get(self, key: str) -> Deferred[Record | None]:
        async def work() -> Record | None:
            document = await self._call("get", "GET", {"key": key})
            found = document.get("record")
            return None if found is None else self._decode("get", [found])[0]

        return self._run("get", work)

    def apply(self, record: Record, expect: Expectation = ANY) -> Deferred[Record | None]:
        if self._closing is not None:
            return fail(BackendClosed("apply"))
        try:
            check_record(record)
            params = apply_params(record, expect)
        except InvalidRecord as exc:
            return fail(exc)

        async def work() -> Record | None:
            document = await self._call("apply", "POST", params, record.value)
            seq = document.get("seq")
            if seq is None:
                return None
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
                raise StorageFailure(f"apply(): the node answered a bad seq {seq!r}")
            return record.with_seq(seq)

        return self._run("apply", work)

    def scan(
        self,
        prefix: str = "/",
        after: str | None = None,
        limit: int = 1000,
        include_deleted: bool = False,
        max_bytes: int | None = None,
    ) -> Deferred[list[Record]]:
        async def work() -> list[Record]:
            found: list[Record] = []
            left = max_bytes
            cursor = after
            while len(found) < limit and (left is None or left > 0):
                params: dict[str, str | int] = {"prefix": prefix, "limit": limit - len(found)}
                if cursor is not None:
                    params["after"] = cursor
                if include_deleted:
                    params["deleted"] = "true"
                if left is not None:
                    params["max_bytes"] = left
                document = await self._call("scan", "GET", params)
                page = self._decode("scan", document.get("records"))
                page, left = _within(page, left)
                found.extend(page)
                if not page or not document.get("truncated"):
                    break
                cursor = page[-1].key
            return found

        return self._run("scan", work)

    def changes(
        self, since: int = 0, limit: int = 1000, max_bytes: int | None = None
    ) -> Deferred[list[Record]]:
        async def work() -> list[Record]:
            found: list[Record] = []
            left = max_bytes
            cursor = max(since, 0)
            while len(found) < limit and (left is None or left > 0):
                params = {"since": cursor, "limit": limit - len(found)}
                if left is not None:
                    params["max_bytes"] = left
                document = await self._call("changes", "GET", params)
                page = self._decode("changes", document.get("records"))
                page, left = _within(page, left)
                found.extend(page)
                if not page or not document.get("truncated"):
                    break
                cursor = page[-1].seq or cursor
            return found

        return self._run("changes", work)

    def last_seq(self) -> Deferred[int]:
        async def work() -> int:
            document = await self._call("last_seq", "GET", {})
            return _integer(document, "last_seq", "last_seq")

        return self._run("last_seq", work)

    def purge_tombstones(self, before_seq: int) -> Deferred[int]:
        async def work() -> int:
            params = {"before_seq": max(before_seq, 0)}
            document = await self._call("purge_tombstones", "POST", params, b"")
            return _integer(document, "purged", "purge_tombstones")

        return self._run("purge_tombstones", work)

    def reset(self) -> Deferred[None]:
        async def work() -> None:
            await self._call("reset", "POST", {}, b"")

        return self._run("reset", work)

    def get_meta(self, name: str) -> Deferred[str | None]:
        async def work() -> str | None:
            document = await self._call("get_meta", "GET", {"name": name}, endpoint="_backend_meta")
            value = document.get("value")
            if value is not None and not isinstance(value, str):
                raise StorageFailure(f"get_meta(): the node answered a bad value {value!r}")
            return value

        return self._run("get_meta", work)

    def set_meta(self, name: str, value: str) -> Deferred[None]:
        if self._closing is not None:
            return fail(BackendClosed("set_meta"))
        if not isinstance(name, str) or not isinstance(value, str):
            return fail(TypeError("meta names and values are text"))
        try:
            body = value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return fail(TypeError(f"meta values must be encodable as UTF-8: {exc}"))

        async def work() -> None:
            params = {"name": name}
            await self._call("set_meta", "PUT", params, body, endpoint="_backend_meta")

        return self._run("set_meta", work)

    def close(self) -> Deferred[None]:
        """Refuse new calls, let the pending ones finish, then release the connections."""
        if self._closing is None:
            self._closing = Deferred.fromCoroutine(self._close())
        if self._closing.called:
            return succeed(None)
        closed: Deferred[None] = Deferred()
        self._closing.addBoth(lambda _: closed.callback(None))
        return closed

    async def _close(self) -> None:
        if self._pending:
            await DeferredList(list(self._pending), consumeErrors=True)
        if self._close_client is not None:
            released = self._close_client()
            if isinstance(released, Deferred):
                await released


def _within(page: list[Record], left: int | None) -> tuple[list[Record], int | None]:
    """A page cut to the ``left`` bytes a sized read has (None: no cut), and what remains
    (0 or less once full): an older serving node may answer more than it was asked."""
    if left is None:
        return page, None
    kept, full = cut_by_bytes(page, left)
    return kept, 0 if full else left - sum(map(stored_size, kept))


def _integer(document: Any, name: str, operation: str) -> int:
    value = document.get(name) if isinstance(document, dict) else None
    if not isinstance(value, int) or isinstance(value, bool):
        raise StorageFailure(f"{operation}(): the node answered a bad {name} {value!r}")
    return value


def _positive_number(url: BackendURL, name: str, default: float) -> float:
    text = url.option(name, str(default))
    try:
        number = float(text)
    except ValueError:
        number = 0.0
    if not number > 0:
        raise BackendURLError(f"{url.text}: option {name}={text!r} must be a positive number")
    return number


def check_http(url: BackendURL) -> None:
    """Refuse an ``http(s)://`` backend URL that cannot work (options, address, token file),
    without connecting: what :func:`open_http` would refuse."""
    _settings(url)


def open_http(url: BackendURL) -> HttpBackend:
    """Make an :class:`HttpBackend` for ``http://host:port`` or ``https://host:port``.

    It talks through treq over its own persistent connection pool, closed by ``close()``.
    """
    parts, timeout, connections, token = _settings(url)

    from twisted.internet import reactor

    client, close = treq_client(reactor, connect_timeout=min(timeout, 10.0), per_host=connections)
    return HttpBackend(
        f"{url.scheme}://{parts.netloc}{parts.path}",
        http_client=client,
        reactor=reactor,
        close_client=close,
        token=token,
        timeout=timeout,
        connections=connections,
    )


def _settings(url: BackendURL) -> tuple[SplitResult, float, int, str | None]:
    """The address, timeout, connection count and token an ``http(s)://`` URL says."""
    url.refuse_unknown_options(("timeout", "connections", "token_file"))
    parts = urlsplit(f"{url.scheme}:{url.location}")
    if not url.location.startswith("//") or not parts.hostname:
        raise BackendURLError(f"{url.text}: expected {url.scheme}://host:port")
    try:
        parts.port  # noqa: B018 - reading it validates it
    except ValueError as exc:
        raise BackendURLError(f"{url.text}: {exc}") from None
    if parts.fragment:
        raise BackendURLError(f"{url.text}: a backend URL takes no #fragment")
    timeout = _positive_number(url, "timeout", DEFAULT_TIMEOUT)
    connections = int(_positive_number(url, "connections", DEFAULT_CONNECTIONS))
    if connections < 1:
        raise BackendURLError(f"{url.text}: option connections must be at least 1")
    token = os.environ.get(TOKEN_ENV) or None
    token_file = url.options.get("token_file")
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError) as exc:
            raise BackendURLError(f"{url.text}: token_file: {exc}") from None
    return parts, timeout, connections, token

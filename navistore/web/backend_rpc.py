"""The backend RPC: a node's own storage offered over HTTP, for the ``http://`` backend.

The public API speaks in keys and values; a process using a node as its storage
(:class:`navistore.backend.http.HttpBackend`) needs the backend contract itself: apply with a
stamp and an expectation, reads that include tombstones, the change log, purge, reset and meta
data. These endpoints expose exactly that, on ``store.backend``, and are served only when the
node runs with ``--serve-backend``.

Such a node should be dedicated to the one process using it: the client's records *are* the
node's records, so its ``reset`` wipes them, and writes through these endpoints bypass the
node's own Store (its clock, its change notifications, its watchers and replication).

Endpoints (the codecs are :mod:`navistore.protocol.backend_rpc`'s; values are base64 in every
JSON answer; errors are the API's JSON errors):

- ``GET /_backend_get?key=K`` → ``{"record": <record>|null}`` (tombstones included).
- ``POST /_backend_apply?key=&stamp=&content_type=&deleted=true|false&chain=a,b&expect=any|
  absent|<stamp>``, body = the value → ``{"seq": N}`` when stored, ``{"seq": null}`` when not;
  a malformed record is 400 ``invalid_record`` and stores nothing.
- ``GET /_backend_scan?prefix=&after=&limit=&deleted=true&max_bytes=`` and
  ``GET /_backend_changes?since=&limit=&max_bytes=`` → ``{"records": [...], "truncated":
  bool}``. A page stops early at :data:`MAX_PAGE` records or once its keys and values reach
  ``max_bytes`` (at most, and by default, :data:`PAGE_BYTES`; the record that gets there is
  included, see :class:`~navistore.interfaces.ISizedReads`); ``truncated`` then says to
  continue after its last record.
- ``GET /_backend_last_seq`` → ``{"last_seq": N}``.
- ``POST /_backend_purge?before_seq=N`` → ``{"purged": n}``.
- ``POST /_backend_reset`` → ``{"reset": true}``; with ``?meta=forget`` it also forgets every
  meta value clients stored (reassigning a dedicated node, or a test's fresh backend).
- ``GET /_backend_meta?name=`` → ``{"value": text|null}``; ``PUT /_backend_meta?name=`` with
  the UTF-8 text as body → ``{"stored": true}``.

Client meta names are stored as ``remote.<generation>.<name>`` so they never collide with the
serving node's own meta (its node id, peers, cursors); forgetting them moves to the next
generation, since the contract has no way to delete meta data.
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request

from navistore.errors import InvalidRecord
from navistore.interfaces import IStorageBackend
from navistore.protocol.backend_rpc import RPC_PATHS, record_from_params
from navistore.protocol.records import MalformedRecord, record_to_json
from navistore.record import Record, check_record
from navistore.store import Store
from navistore.store.sized import changes_page, scan_page
from navistore.web.errors import BadRequest
from navistore.web.params import flag, int_arg, query, query_arg, request_body
from navistore.web.responses import Endpoints, Response, json_response

__all__ = ["MAX_PAGE", "META_PREFIX", "PAGE_BYTES", "backend_rpc_endpoints"]

#: The most records one scan or changes answer carries.
MAX_PAGE = 10_000
#: The most bytes of keys and values one scan or changes answer carries (plus one record).
PAGE_BYTES = 8 * 1024 * 1024
#: Where client meta data lives among the serving node's own.
META_PREFIX = "remote."
_GENERATION_META = META_PREFIX + "generation"


def _required(request: Request, name: str) -> str:
    value = query_arg(request, name)
    if value is None:
        raise BadRequest("invalid_parameter", f"parameter {name!r} is required")
    return value


def _page(records: list[Record], full: bool, wanted: int, asked: int) -> Response:
    """Answer a page; ``truncated`` when it was cut by bytes or by :data:`MAX_PAGE`."""
    truncated = full or (wanted > asked and len(records) == asked)
    kept: list[dict[str, Any]] = [record_to_json(record) for record in records]
    return json_response({"records": kept, "truncated": truncated})


def _max_bytes(request: Request) -> int:
    """``?max_bytes=``, held to 1 .. :data:`PAGE_BYTES` (a client may ask for less)."""
    return max(1, min(int_arg(request, "max_bytes", PAGE_BYTES), PAGE_BYTES))


class BackendRpc:
    """The handlers, over the backend of one Store (read at every call, never cached)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def backend(self) -> IStorageBackend:
        return self.store.backend

    def endpoints(self) -> Endpoints:
        """The endpoints by name and method, for ``make_site(..., extra_endpoints=...)``."""
        return {
            RPC_PATHS["get"]: {b"GET": self.get},
            RPC_PATHS["apply"]: {b"POST": self.apply},
            RPC_PATHS["scan"]: {b"GET": self.scan},
            RPC_PATHS["changes"]: {b"GET": self.changes},
            RPC_PATHS["last_seq"]: {b"GET": self.last_seq},
            RPC_PATHS["purge_tombstones"]: {b"POST": self.purge},
            RPC_PATHS["reset"]: {b"POST": self.reset},
            RPC_PATHS["meta"]: {b"GET": self.get_meta, b"PUT": self.set_meta},
        }

    async def get(self, request: Request) -> Response:
        """The stored record of a key, tombstone included, or null."""
        record = await self.backend.get(_required(request, "key"))
        document = None if record is None else record_to_json(record)
        return json_response({"record": document})

    async def apply(self, request: Request) -> Response:
        """Apply the record the query describes (the body is its value), atomically."""
        params = {name: values[-1] for name, values in query(request).items()}
        try:
            record, expect = record_from_params(params, request_body(request))
        except MalformedRecord as exc:
            raise BadRequest("invalid_record", str(exc)) from None
        try:
            stored = await self.backend.apply(check_record(record), expect)
        except InvalidRecord as exc:
            raise BadRequest("invalid_record", str(exc)) from None
        seq = None if stored is None else stored.seq
        return json_response({"seq": seq})

    async def scan(self, request: Request) -> Response:
        """A page of records under a prefix, in key order."""
        wanted = int_arg(request, "limit", 1000)
        asked = min(wanted, MAX_PAGE)
        records, full = await scan_page(
            self.backend,
            query_arg(request, "prefix") or "/",
            query_arg(request, "after"),
            asked,
            flag(request, "deleted"),
            _max_bytes(request),
        )
        return _page(records, full, wanted, asked)

    async def changes(self, request: Request) -> Response:
        """A page of the change log after ``since``, in seq order."""
        wanted = int_arg(request, "limit", 1000)
        asked = min(wanted, MAX_PAGE)
        since = int_arg(request, "since", 0)
        records, full = await changes_page(self.backend, since, asked, _max_bytes(request))
        return _page(records, full, wanted, asked)

    async def last_seq(self, request: Request) -> Response:
        """The greatest seq the backend ever assigned."""
        return json_response({"last_seq": await self.backend.last_seq()})

    async def purge(self, request: Request) -> Response:
        """Purge tombstones below ``before_seq``."""
        purged = await self.backend.purge_tombstones(int_arg(request, "before_seq", 0))
        return json_response({"purged": purged})

    async def reset(self, request: Request) -> Response:
        """Wipe every record; with ``?meta=forget`` forget the clients' meta data too."""
        forget = query_arg(request, "meta")
        if forget not in (None, "keep", "forget"):
            raise BadRequest("invalid_parameter", "parameter 'meta' must be keep or forget")
        await self.backend.reset()
        if forget == "forget":
            await self.backend.set_meta(_GENERATION_META, str(await self._generation() + 1))
        return json_response({"reset": True})

    async def get_meta(self, request: Request) -> Response:
        """A client's meta value, or null."""
        value = await self.backend.get_meta(await self._meta_name(request))
        return json_response({"value": value})

    async def set_meta(self, request: Request) -> Response:
        """Store a client's meta value (the body, UTF-8 text)."""
        try:
            value = request_body(request).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("invalid_parameter", "a meta value must be UTF-8 text") from None
        await self.backend.set_meta(await self._meta_name(request), value)
        return json_response({"stored": True})

    async def _generation(self) -> int:
        text = await self.backend.get_meta(_GENERATION_META)
        return int(text) if text and text.isdigit() else 0

    async def _meta_name(self, request: Request) -> str:
        return f"{META_PREFIX}{await self._generation()}.{_required(request, 'name')}"


def backend_rpc_endpoints(store: Store) -> Endpoints:
    """The backend RPC endpoints over ``store.backend``, ready for ``extra_endpoints``."""
    return BackendRpc(store).endpoints()

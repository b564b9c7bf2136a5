"""``POST /_bulk``: many keys written by one request (like CouchDB's ``_bulk_docs``).

Loading a node key by key costs one request, one read and one commit per key; a bulk load costs
one request and one commit per batch. The body is a JSON array of entries in the shape a listing
with ``?values=true`` produces, so such a listing can be fed back (backup and restore)::

    [{"key": "/a/b", "value": "text", "encoding": "utf-8", "content_type": "text/plain"},
     {"key": "/a/c", "value": "AP8=", "encoding": "base64"}]

``encoding`` is optional (default ``utf-8``), ``content_type`` too (default the store's);
``version``, which a listing carries, is ignored: every record gets a fresh version from this
node's clock. Any other field is refused, so that a typo is not silently dropped. The body may
also be a whole listing page (``{"keys": [...], "next": ...}``).

Every entry is checked before anything is written: the key against the store's key rules, the
value's encoding, its size against the per-value limit, the content type against the record
rules. One invalid entry answers 400 ``invalid_bulk_entry`` with its ``index`` and nothing is
written. A valid load is a series of plain last-writer-wins puts (no conditions, no reads),
handed to the backend in one reactor turn so that sqlite writes them in one transaction, and
announced to watchers and replication like single writes. A key given twice is written once,
with its later entry. The answer is ``{"received": n, "written": m}`` (``m`` counts keys
stored); ``?verbose=true`` adds each stored key with its version and seq.

The body has a limit of its own, larger than a value's (:func:`~.limits.bulk_body_limit`),
enforced by the Site while the body arrives and again here. On a cache node the load is
forwarded to the upstream, like every write there.
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request

from navistore.errors import InvalidRecord
from navistore.hooks import WriteForwarder
from navistore.json_documents import parse_json
from navistore.keys import InvalidKey
from navistore.protocol.records import InvalidValue, decode_value
from navistore.record import check_content_type
from navistore.store import Store
from navistore.web.access import caller_of
from navistore.web.errors import ApiError, BadRequest
from navistore.web.params import flag, forwarded_write, request_body
from navistore.web.responses import Endpoints, Response, forwarded_response, json_response
from navistore.web.site import bulk_body_limit

__all__ = ["BulkEndpoints", "bulk_endpoints"]

_FIELDS = frozenset({"key", "value", "encoding", "content_type", "version"})


class InvalidEntry(BadRequest):
    """One entry of a bulk load cannot be written; the load is refused whole (400)."""

    def __init__(self, index: int, message: str, **detail: Any) -> None:
        super().__init__(
            "invalid_bulk_entry", f"entry {index}: {message}", {"index": index, **detail}
        )


class BulkEndpoints:
    """The ``/_bulk`` handler over one Store.

    :param max_value_size: the largest value an entry may carry (the node's per-value limit).
    :param max_body_size: the largest body accepted (default :func:`~.limits.bulk_body_limit`,
        the limit the Site enforces while the body arrives).
    :param write_forwarder: on a cache node, where writes go instead of this node's Store.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_value_size: int,
        max_body_size: int | None = None,
        write_forwarder: WriteForwarder | None = None,
    ) -> None:
        self.store = store
        self.max_value_size = max_value_size
        self.max_body_size = (
            bulk_body_limit(max_value_size) if max_body_size is None else max_body_size
        )
        self.write_forwarder = write_forwarder

    def endpoints(self) -> Endpoints:
        """The endpoint by name and method, for ``make_site(..., extra_endpoints=...)``."""
        return {"_bulk": {b"POST": self.load}}

    async def load(self, request: Request) -> Response:
        """Check every entry, then write them all as last-writer-wins puts."""
        body = request_body(request, self.max_body_size)
        if self.write_forwarder is not None:
            # A cache node holds only copies: the upstream takes the load, checks it (its
            # caller's token goes with it) and answers it.
            forwarded = await self.write_forwarder.forward(forwarded_write(request, body))
            return forwarded_response(forwarded)
        entries = self.parse(body)
        caller = caller_of(request)
        for index, (key, _value, _type) in enumerate(entries):
            if not caller.covers(key):
                raise ApiError(
                    403,
                    "forbidden",
                    f"entry {index}: {caller.name} may not write {key!r}: it is outside its "
                    "prefixes; nothing was written",
                    {"index": index, "key": key, "prefixes": list(caller.prefixes)},
                )
        stored = await self.store.put_many(entries)
        document: dict[str, Any] = {"received": len(entries), "written": len(stored)}
        if flag(request, "verbose"):
            document["records"] = [
                {"key": record.key, "version": record.stamp.encode(), "seq": record.seq}
                for record in stored
            ]
        return json_response(document)

    def parse(self, body: bytes) -> list[tuple[str, bytes, str | None]]:
        """Decode and check a whole body; raise BadRequest (nothing written) at the first fault."""
        try:
            document = parse_json(body)
        except ValueError as exc:
            raise BadRequest("invalid_bulk_body", f"the body is not JSON: {exc}") from None
        if isinstance(document, dict) and isinstance(document.get("keys"), list):
            document = document["keys"]  # a listing page, fed back as it came
        if not isinstance(document, list):
            raise BadRequest(
                "invalid_bulk_body",
                'the body must be a JSON array of {"key", "value", "encoding", "content_type"}',
            )
        valid_types: set[str] = set()  # a load has few content types: each is checked once
        return [self._entry(index, entry, valid_types) for index, entry in enumerate(document)]

    def _entry(
        self, index: int, entry: Any, valid_types: set[str]
    ) -> tuple[str, bytes, str | None]:
        if not isinstance(entry, dict):
            raise InvalidEntry(index, f"must be a JSON object, not {type(entry).__name__}")
        unknown = sorted(set(entry) - _FIELDS)
        if unknown:
            raise InvalidEntry(index, f"unknown field(s) {', '.join(unknown)}", fields=unknown)
        raw_key = entry.get("key")
        if not isinstance(raw_key, str):
            raise InvalidEntry(index, '"key" must be a string', field="key")
        try:
            key = self.store.canonical_key(raw_key)
        except InvalidKey as exc:
            raise InvalidEntry(index, str(exc), key=raw_key, reason=exc.reason) from None
        value = self._value(index, key, entry)
        content_type = entry.get("content_type")
        if content_type is not None and not isinstance(content_type, str):
            raise InvalidEntry(index, '"content_type" must be a string', key=key)
        if content_type and content_type not in valid_types:
            # The backend's own record rules, so that no apply fails once writing has begun. A
            # canonical key and bytes pass them already: only the content type is left to check.
            try:
                check_content_type(content_type)
            except InvalidRecord as exc:
                raise InvalidEntry(index, str(exc), key=key) from None
            valid_types.add(content_type)
        return key, value, content_type

    def _value(self, index: int, key: str, entry: dict[str, Any]) -> bytes:
        text = entry.get("value")
        if not isinstance(text, str):
            raise InvalidEntry(index, '"value" must be a string', key=key, field="value")
        try:
            value = decode_value(text, entry.get("encoding"))
        except InvalidValue as exc:
            raise InvalidEntry(index, str(exc), key=key) from None
        if len(value) > self.max_value_size:
            raise InvalidEntry(
                index,
                f"the value is {len(value)} bytes, the limit is {self.max_value_size}",
                key=key,
                size=len(value),
                max_value_size=self.max_value_size,
            )
        return value


def bulk_endpoints(
    store: Store, *, max_value_size: int, write_forwarder: WriteForwarder | None = None
) -> Endpoints:
    """The ``/_bulk`` endpoint over ``store``, ready for ``extra_endpoints``."""
    return BulkEndpoints(
        store, max_value_size=max_value_size, write_forwarder=write_forwarder
    ).endpoints()

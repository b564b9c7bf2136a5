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

import json
import re
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.web.server import Request

from navistore.errors import InvalidRecord
from navistore.hooks import WriteForwarder
from navistore.keys import InvalidKey
from navistore.protocol.records import InvalidValue, decode_value
from navistore.record import Record, check_content_type
from navistore.store import Store
from navistore.tokens import Caller
from navistore.web.access import caller_of
from navistore.web.errors import ApiError, BadRequest
from navistore.web.params import flag, forwarded_write, request_body
from navistore.web.request import bulk_body_limit
from navistore.web.responses import Endpoints, Response, forwarded_response, json_response

__all__ = ["COMMIT_ENTRIES", "MAX_ENTRIES", "BulkEndpoints", "bulk_endpoints"]

_FIELDS = frozenset({"key", "value", "encoding", "content_type", "version"})


def _utf8(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            "invalid_bulk_body", f"the body is not JSON: not UTF-8 (byte {exc.start})"
        ) from None


#: The most entries one load may carry (more: 413 ``too_many_entries``).
MAX_ENTRIES = 100_000
#: Entries decoded and checked per reactor turn (a few milliseconds of work).
CHECK_ENTRIES = 1000
#: Entries written per group commit (one transaction each): measured with bench/hostile.py,
#: 1,000 made reactor turns of 60 ms (writing them, then preparing the next 1,000 in the same
#: turn); 250 keep a turn near 15 ms.
COMMIT_ENTRIES = 250

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SHAPE = 'the body must be a JSON array of {"key", "value", "encoding", "content_type"}'


class InvalidEntry(BadRequest):
    """One entry of a bulk load cannot be written; the load is refused whole (400)."""

    def __init__(self, index: int, message: str, **detail: Any) -> None:
        super().__init__(
            "invalid_bulk_entry", f"entry {index}: {message}", {"index": index, **detail}
        )


class _Reader:
    """Reads a bulk body's entries one JSON value at a time.

    ``json.loads`` of a 64 MiB body of tiny entries builds two million dicts at once (gigabytes);
    this reader decodes one entry, checks it, keeps only its ``(key, value, content type)`` and
    moves on, so that a load costs about its own size. It accepts a JSON array of entries, or a
    listing page (``{"keys": [...], "next": ...}``) whose other members are plain values.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0
        self._decoder = json.JSONDecoder()
        self._done = False

    def _skip(self) -> str:
        """Skip whitespace; the next character ('' at the end)."""
        self.position = _WHITESPACE.match(self.text, self.position).end()  # type: ignore[union-attr]
        return self.text[self.position : self.position + 1]

    def _expect(self, char: str, what: str) -> None:
        if self._skip() != char:
            found = self.text[self.position : self.position + 20]
            raise BadRequest(
                "invalid_bulk_body",
                f"the body is not JSON: expected {what} at character "
                f"{self.position}, found {found!r}",
            )
        self.position += 1

    def _value(self) -> Any:
        self._skip()
        try:
            value, self.position = self._decoder.raw_decode(self.text, self.position)
        except RecursionError:
            raise BadRequest("invalid_bulk_body", "the body is nested too deeply") from None
        except ValueError as exc:
            raise BadRequest("invalid_bulk_body", f"the body is not JSON: {exc}") from None
        return value

    def open(self) -> None:
        """Read up to the first entry: the array's ``[``, or a listing page's up to ``"keys"``."""
        first = self._skip()
        if first == "{":
            self.position += 1
            self._members_until_keys()
        elif first != "[":
            raise BadRequest("invalid_bulk_body", _SHAPE)
        self._expect("[", "'['")
        if self._skip() == "]":
            self.position += 1
            self._close()

    def _members_until_keys(self) -> None:
        while True:
            if self._skip() == "}":
                raise BadRequest("invalid_bulk_body", _SHAPE)
            name = self._value()
            self._expect(":", "':'")
            if name == "keys":
                return
            if self._skip() in ("[", "{"):
                raise BadRequest(
                    "invalid_bulk_body", f"a listing page's {name!r} must be a plain value"
                )
            self._value()
            self._expect(",", "',' (a listing page needs \"keys\")")

    def entries(self, count: int) -> list[Any]:
        """Up to ``count`` more entries (none once the array is over)."""
        found: list[Any] = []
        while not self._done and len(found) < count:
            found.append(self._value())
            following = self._skip()
            self.position += 1
            if following == "]":
                self._close()
            elif following != ",":
                self.position -= 1
                self._expect(",", "',' or ']'")
        return found

    def _close(self) -> None:
        """After the array: the rest of a listing page, then nothing but whitespace."""
        self._done = True
        if self.text.lstrip()[:1] == "{":
            while self._skip() == ",":
                self.position += 1
                self._value()
                self._expect(":", "':'")
                if self._skip() in ("[", "{"):
                    raise BadRequest("invalid_bulk_body", "a listing page's members are plain")
                self._value()
            self._expect("}", "'}'")
        if self._skip() != "":
            raise BadRequest(
                "invalid_bulk_body", f"the body goes on after its end (character {self.position})"
            )


class BulkEndpoints:
    """The ``/_bulk`` handler over one Store.

    :param max_value_size: the largest value an entry may carry (the node's per-value limit).
    :param max_body_size: the largest body accepted (default :func:`~.limits.bulk_body_limit`,
        the limit the Site enforces while the body arrives).
    :param write_forwarder: on a cache node, where writes go instead of this node's Store.
    :param clock: what the load yields to between chunks (default: the global reactor).
    :param max_entries: the most entries one load may carry.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_value_size: int,
        max_body_size: int | None = None,
        write_forwarder: WriteForwarder | None = None,
        clock: IReactorTime | None = None,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.store = store
        self.max_value_size = max_value_size
        self.max_body_size = (
            bulk_body_limit(max_value_size) if max_body_size is None else max_body_size
        )
        self.write_forwarder = write_forwarder
        self.max_entries = max_entries
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.clock: IReactorTime = clock

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
        text = _utf8(body)
        del body  # decoded: 64 MiB less while the entries are checked and written
        received, entries = await self.parse_text(text, caller_of(request))
        del text  # the load's own objects from now on, not its text too
        stored: list[Record] = []
        for start in range(0, len(entries), COMMIT_ENTRIES):
            stored.extend(await self.store.put_many(entries[start : start + COMMIT_ENTRIES]))
        document: dict[str, Any] = {"received": received, "written": len(stored)}
        if flag(request, "verbose"):
            document["records"] = [
                {"key": record.key, "version": record.stamp.encode(), "seq": record.seq}
                for record in stored
            ]
        return json_response(document)

    async def parse(
        self, body: bytes, caller: Caller | None = None
    ) -> tuple[int, list[tuple[str, bytes, str | None]]]:
        """Decode and check a whole body, :data:`CHECK_ENTRIES` entries per reactor turn: how
        many entries it has, and the ``(key, value, content type)`` to write.

        Raises BadRequest (nothing written) at the first fault, 403 for an entry outside the
        caller's prefixes once all are checked. A key given twice keeps its later entry, at
        that entry's place (the outcome of running the puts in order)."""
        return await self.parse_text(_utf8(body), caller)

    async def parse_text(
        self, text: str, caller: Caller | None = None
    ) -> tuple[int, list[tuple[str, bytes, str | None]]]:
        """:meth:`parse`, of the body decoded already."""
        reader = _Reader(text)
        reader.open()
        valid_types: set[str] = set()  # a load has few content types: each is checked once
        latest: dict[str, tuple[str, bytes, str | None]] = {}
        outside: ApiError | None = None
        index = 0
        while True:
            chunk = reader.entries(CHECK_ENTRIES)
            if not chunk:
                break
            for entry in chunk:
                if index >= self.max_entries:
                    raise ApiError(
                        413,
                        "too_many_entries",
                        f"a bulk load may carry at most {self.max_entries} entries; send the "
                        "rest in another load",
                        {"max_entries": self.max_entries},
                    )
                checked = self._entry(index, entry, valid_types)
                key = checked[0]
                if outside is None and caller is not None and not caller.covers(key):
                    outside = ApiError(
                        403,
                        "forbidden",
                        f"entry {index}: {caller.name} may not write {key!r}: it is outside its "
                        "prefixes; nothing was written",
                        {"index": index, "key": key, "prefixes": list(caller.prefixes)},
                    )
                latest.pop(key, None)  # re-inserted: the later entry's place counts
                latest[key] = checked
                index += 1
            if len(chunk) < CHECK_ENTRIES:
                break  # the last chunk: a small load never waits for the next reactor turn
            await deferLater(self.clock, 0, lambda: None)  # let other requests in
        if outside is not None:
            raise outside
        return index, list(latest.values())

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
    store: Store,
    *,
    max_value_size: int,
    write_forwarder: WriteForwarder | None = None,
    clock: IReactorTime | None = None,
) -> Endpoints:
    """The ``/_bulk`` endpoint over ``store``, ready for ``extra_endpoints``."""
    return BulkEndpoints(
        store, max_value_size=max_value_size, write_forwarder=write_forwarder, clock=clock
    ).endpoints()

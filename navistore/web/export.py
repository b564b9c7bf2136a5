"""``GET /_export`` and ``POST /_import``: a node's records as JSON lines, and back.

The lines are those of :mod:`navistore.protocol.export_format`: a header, one line per record
(tombstones included, so deletes carry over), an end line.

**Export** (``GET /_export?prefix=/app/``, the ``read`` permission) streams every record under
the prefix (a caller limited to some prefixes gets only what lies inside them, as listings do)
in seq order, a page at a time: one page is read, written, and the next read only once the
client has taken it (the transport drained; while slow readers hold the node's send budget, the
export waits for room too), so an export costs the node one page of memory however large the
store and however slow the client. What it guarantees while writes go on: it reads the change
feed from the start until it finds nothing newer, so every key appears at its state as of the
end line's ``seq`` or, for a key written meanwhile, also at earlier states on earlier lines
(applied in order, or by stamp, the lines give that state). Under a node written faster than
it can be read the export keeps reading. A tombstone purged while it runs (older than the
tombstone retention) is not carried, as in a clone.

**Import** (``POST /_import``, the ``write`` permission on every key of the body) applies the
records the way replication applies received ones: last-writer-wins by stamp. A record older
than (or equal to) the one the node holds is *kept* out, so an import never rolls a newer value
back, and importing the same file twice changes nothing the second time. A line without a stamp
(a Consul import, a file written by hand) is a new write, stamped now, as ``/_bulk`` writes. The
body is read line by line from the spooled request, never whole into memory: first every line
is checked (format, key rules, value limit, content type, a stamp not too far ahead of this
clock, and the caller's prefixes), then the records are applied, 250 a transaction, as decoded
by the first pass for a body up to :data:`KEEP_DECODED`, read and decoded again past it. So an
invalid line is a 400 ``invalid_import_line`` naming the ``line``, and a key outside the
caller's prefixes a 403, and *nothing of the body was applied*; a line longer than the longest a
value at the limit makes (:func:`~navistore.protocol.export_format.line_limit`) is refused
before it is decoded. A failure while applying (the backend) leaves the chunks before it
applied: running the import again is safe, since it is idempotent. ``?dry_run=true`` checks
and applies nothing. The answer: ``{"lines", "records", "applied", "kept"}`` and the node ids.
The body limit is ``/_bulk``'s (64 MiB, more with a larger value limit): ``navistore import``
sends a larger file as several requests. On a cache node the import goes to the upstream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from typing import IO, Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.web.server import Request

from navistore.clock import ClockDriftError
from navistore.errors import InvalidRecord
from navistore.hooks import WriteForwarder
from navistore.keys import InvalidKey
from navistore.protocol.export_format import (
    MEDIA_TYPE,
    End,
    Entry,
    Header,
    InvalidLine,
    end_line,
    header_line,
    line_limit,
    parse_line,
    record_line,
)
from navistore.record import DEFAULT_CONTENT_TYPE, Record, check_content_type
from navistore.store import ChangesPage, Store
from navistore.tokens import Caller
from navistore.web.access import caller_of
from navistore.web.errors import ApiError, BadRequest, TooLarge
from navistore.web.params import flag, forwarded_write, query_arg, request_body
from navistore.web.request import bulk_body_limit
from navistore.web.responses import Endpoints, Response, forwarded_response, json_response
from navistore.web.send_budget import send_budget_of

__all__ = [
    "APPLY_RECORDS",
    "CHECK_LINES",
    "EXPORT_PAGE",
    "EXPORT_PAGE_BYTES",
    "KEEP_DECODED",
    "ExportEndpoints",
    "export_endpoints",
]

#: Records read per page of an export, and the bytes of values a page holds at most (a page
#: holds at least one record): what one export costs the node.
EXPORT_PAGE = 1000
EXPORT_PAGE_BYTES = 1024 * 1024
#: Lines checked per reactor turn (the first pass), and records applied per transaction.
CHECK_LINES = 1000
APPLY_RECORDS = 250
#: The bytes of lines whose decoded records the first pass keeps for the second (about twice
#: that in memory): a body this small (``navistore import`` sends 4 MiB) is decoded once, a
#: larger one read and decoded again rather than held.
KEEP_DECODED = 8 * 1024 * 1024


def _invalid(error: InvalidLine | tuple[int, str, dict[str, Any]]) -> BadRequest:
    line, message, detail = (
        (error.line, error.reason, error.detail) if isinstance(error, InvalidLine) else error
    )
    return BadRequest(
        "invalid_import_line",
        f"line {line}: {message}; nothing of this import was applied (fix the line and send it "
        "again: an import is idempotent)",
        {**detail, "line": line, "reason": message, "applied": 0},
    )


class ExportEndpoints:
    """The ``/_export`` and ``/_import`` handlers over one Store.

    :param max_value_size: the node's value limit (lines are bounded by it, values checked).
    :param max_body_size: the largest import body (default: ``/_bulk``'s limit).
    :param write_forwarder: on a cache node, where imports go (and exports are refused).
    :param clock: what long imports yield to between chunks (default: the global reactor).
    """

    def __init__(
        self,
        store: Store,
        *,
        max_value_size: int,
        max_body_size: int | None = None,
        write_forwarder: WriteForwarder | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self.store = store
        self.max_value_size = max_value_size
        self.max_body_size = (
            bulk_body_limit(max_value_size) if max_body_size is None else max_body_size
        )
        self.line_limit = line_limit(max_value_size)
        self.write_forwarder = write_forwarder
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.clock: IReactorTime = clock

    def endpoints(self) -> Endpoints:
        """The endpoints by name and method, for ``make_site(..., extra_endpoints=...)``."""
        return {"_export": {b"GET": self.export}, "_import": {b"POST": self.import_lines}}

    # -- export -------------------------------------------------------------------------------

    async def export(self, request: Request) -> Response:
        """Stream the records under ``?prefix=`` the caller may see, as export lines."""
        if self.write_forwarder is not None:
            raise ApiError(
                409,
                "cache_node",
                "this is a cache node (--upstream): it holds copies of the keys it was asked "
                "for, not the store: export from its upstream",
            )
        prefix = self.store.canonical_prefix(query_arg(request, "prefix") or "/")
        seen = caller_of(request).visible(prefix)
        started_at = await self.store.last_seq()
        header = header_line(
            node_id=self.store.node_id,
            seq=started_at,
            prefix=prefix,
            prefixes=seen,
            purged_before=await self.store.purged_before(),
        )
        # The first page is read before the 200 goes out: a failing backend is a 503 rather
        # than a 200 cut short.
        first = await self._page(seen, 0)
        headers = {b"Content-Type": MEDIA_TYPE.encode("ascii"), b"Cache-Control": b"no-store"}
        return Response(200, headers=headers, stream=self._lines(request, header, seen, first))

    async def _page(self, seen: tuple[str, ...], since: int) -> ChangesPage:
        return await self.store.changes(
            since, limit=EXPORT_PAGE, prefix=seen, max_bytes=EXPORT_PAGE_BYTES
        )

    async def _lines(
        self, request: Request, header: bytes, seen: tuple[str, ...], page: ChangesPage
    ) -> AsyncIterator[bytes]:
        """The header, then page after page (each read once the last was taken), the end."""
        budget = send_budget_of(request)
        yield header
        records = 0
        while True:
            if page.records:
                yield b"".join(record_line(record) for record in page.records)
                records += len(page.records)
            if not page.more:
                break
            if budget is not None and budget.spent:
                # Slow readers hold the node's send budget: read the next page once there is
                # room, holding nothing meanwhile, then let the next waiter look.
                await budget.room()
                try:
                    page = await self._page(seen, page.last_seq)
                finally:
                    budget.pass_on()
            else:
                page = await self._page(seen, page.last_seq)
        yield end_line(records, page.last_seq)

    # -- import -------------------------------------------------------------------------------

    async def import_lines(self, request: Request) -> Response:
        """Check every line of the body, then apply its records by stamp."""
        if self.write_forwarder is not None:
            body = request_body(request, self.max_body_size)
            forwarded = await self.write_forwarder.forward(forwarded_write(request, body))
            return forwarded_response(forwarded)
        content = request.content
        if content is None:
            raise _invalid((1, "the body is empty: an import starts with its header line", {}))
        content.seek(0, 2)
        if content.tell() > self.max_body_size:
            raise TooLarge(self.max_body_size)
        header, lines, records, decoded = await self._check(content, caller_of(request))
        document: dict[str, Any] = {"lines": lines, "records": records}
        if flag(request, "dry_run"):
            return json_response({**document, "dry_run": True})
        applied, kept = await self._apply(decoded if decoded is not None else self._again(content))
        document.update(applied=applied, kept=kept)
        document.update(node_id=self.store.node_id, source=header.node_id)
        return json_response(document)

    def _read(self, content: IO[bytes]) -> Iterator[tuple[int, bytes]]:
        """The body's lines with their numbers; a line over the limit is a 400."""
        content.seek(0)
        number = 0
        limit = self.line_limit
        while True:
            raw = content.readline(limit + 1)
            if not raw:
                return
            number += 1
            if len(raw) > limit and not raw.endswith(b"\n"):
                raise _invalid(
                    (
                        number,
                        f"the line is longer than {limit} bytes, the longest a value of "
                        f"{self.max_value_size} bytes (the value limit) makes",
                        {"line_limit": limit},
                    )
                )
            yield number, raw

    async def _check(
        self, content: IO[bytes], caller: Caller
    ) -> tuple[Header, int, int, list[tuple[str, Entry]] | None]:
        """The first pass: every line valid, every key inside the caller's prefixes (a 403
        once all are checked, so a 400 is never hidden). The header, the line and record
        counts, and the decoded records with their canonical keys while the body is small
        (:data:`KEEP_DECODED` bytes of lines; None past that: the second pass reads again)."""
        decoded: list[tuple[str, Entry]] | None = []
        decoded_bytes = 0
        header: Header | None = None
        ended_at: int | None = None
        outside: ApiError | None = None
        valid_types: set[str] = set()
        records = number = 0
        for number, raw in self._read(content):
            try:
                line = parse_line(raw, number)
            except InvalidLine as exc:
                raise _invalid(exc) from None
            if line is None:
                continue
            if ended_at is not None:
                raise _invalid((number, f"the export ended at line {ended_at}", {}))
            if isinstance(line, Header):
                header = line
            elif isinstance(line, End):
                ended_at = number
            else:
                key = self._checked_entry(number, line, valid_types)
                if decoded is not None:
                    decoded_bytes += len(raw)
                    if decoded_bytes <= KEEP_DECODED:
                        decoded.append((key, line))
                    else:
                        decoded = None  # a large body: read it again rather than hold it
                if outside is None and not caller.covers(key):
                    outside = ApiError(
                        403,
                        "forbidden",
                        f"line {number}: {caller.name} may not write {key!r}: it is outside its "
                        "prefixes; nothing of this import was applied",
                        {
                            "line": number,
                            "reason": f"{caller.name} may not write {key!r}: it is outside its "
                            "prefixes",
                            "key": key,
                            "prefixes": list(caller.prefixes),
                        },
                    )
                records += 1
            if number % CHECK_LINES == 0:
                await deferLater(self.clock, 0, lambda: None)  # let other requests in
        if header is None:
            raise _invalid((1, "the body is empty: an import starts with its header line", {}))
        if outside is not None:
            raise outside
        return header, number, records, decoded

    def _checked_entry(self, number: int, entry: Entry, valid_types: set[str]) -> str:
        """The canonical key of a record line this node may store; a 400 otherwise."""
        try:
            key = self.store.canonical_key(entry.key)
        except InvalidKey as exc:
            raise _invalid((number, str(exc), {"key": entry.key, "reason": exc.reason})) from None
        if len(entry.value) > self.max_value_size:
            message = f"the value is {len(entry.value)} bytes, the limit is {self.max_value_size}"
            raise _invalid((number, message, {"key": key, "size": len(entry.value)}))
        content_type = entry.content_type
        if content_type and content_type not in valid_types:
            try:
                check_content_type(content_type)
            except InvalidRecord as exc:
                raise _invalid((number, str(exc), {"key": key})) from None
            valid_types.add(content_type)
        if entry.stamp is not None:
            try:
                self.store.clock.check(entry.stamp)
            except ClockDriftError as exc:
                detail = {"key": key, "stamp": str(entry.stamp)}
                raise _invalid((number, str(exc), detail)) from None
        return key

    def _again(self, content: IO[bytes]) -> Iterator[tuple[str, Entry]]:
        """The records of a body checked already, read and decoded again."""
        for number, raw in self._read(content):
            line = parse_line(raw, number)
            if isinstance(line, Entry):
                yield self.store.canonical_key(line.key), line

    async def _apply(self, entries: Iterable[tuple[str, Entry]]) -> tuple[int, int]:
        """The second pass: the records, :data:`APPLY_RECORDS` a transaction; (applied, kept)."""
        applied = kept = 0
        stamped: list[Record] = []
        fresh: list[tuple[str, bytes, str | None]] = []
        node_id = self.store.node_id
        for key, line in entries:
            if line.stamp is None:
                fresh.append((key, line.value, line.content_type))
            else:
                origin = line.stamp.node_id
                # As received from its writer (replication's rule: a chain starts with the
                # writer), or a local write if this node wrote it.
                chain = () if origin == node_id else (origin,)
                content_type = "" if line.deleted else (line.content_type or DEFAULT_CONTENT_TYPE)
                stamped.append(
                    Record(
                        key,
                        line.value,
                        content_type,
                        line.stamp,
                        line.deleted,
                        None,
                        chain,
                        line.expires_ms,
                        line.flags,
                        line.replaces,
                    )
                )
            if len(stamped) + len(fresh) >= APPLY_RECORDS:
                done, lost = await self._apply_chunk(stamped, fresh)
                applied, kept = applied + done, kept + lost
                stamped, fresh = [], []
        done, lost = await self._apply_chunk(stamped, fresh)
        return applied + done, kept + lost

    async def _apply_chunk(
        self, stamped: list[Record], fresh: list[tuple[str, bytes, str | None]]
    ) -> tuple[int, int]:
        applied = kept = 0
        if stamped:
            outcomes = await self.store.apply_remote_batch(stamped)
            kept = sum(1 for outcome in outcomes if outcome is None)
            applied = len(outcomes) - kept
        if fresh:
            # New writes: stamped now (after observing the chunk's stamps), so they win.
            applied += len(await self.store.put_many(fresh))
        if stamped or fresh:
            await deferLater(self.clock, 0, lambda: None)  # let other requests in
        return applied, kept


def export_endpoints(
    store: Store,
    *,
    max_value_size: int,
    write_forwarder: WriteForwarder | None = None,
    clock: IReactorTime | None = None,
) -> Endpoints:
    """The ``/_export`` and ``/_import`` endpoints over ``store``, for ``extra_endpoints``."""
    return ExportEndpoints(
        store, max_value_size=max_value_size, write_forwarder=write_forwarder, clock=clock
    ).endpoints()

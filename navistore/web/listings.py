"""The routes of a prefix (a document and its sub-documents): listings and recursive deletes.

``GET /<prefix>/`` (or ``/<key>?list``, or ``/_keys?prefix=``) lists the keys under a prefix a
page at a time, optionally with their values; ``GET /listkeys`` is the classic whole-store list,
streamed; ``DELETE /<prefix>/?recursive=true`` deletes the document and every sub-document;
``GET /<prefix>/?wait=true`` waits for a change under it
(:func:`~navistore.web.feeds.wait_for_prefix`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from twisted.web.server import Request

from navistore.keys import classic_form, normalize_key
from navistore.protocol.records import value_entry
from navistore.record import Record
from navistore.store import KeysPage, Store
from navistore.watch_hub import WatchHub
from navistore.web.access import caller_of
from navistore.web.errors import BadRequest, MethodNotAllowed
from navistore.web.feeds import wait_for_prefix
from navistore.web.params import DEFAULT_PAGE, flag, page_limit, query_arg
from navistore.web.responses import JSON_HEADERS, Response, json_bytes, json_response

__all__ = ["Listings"]


class Listings:
    """The handlers of a prefix's routes over one Store; ``watch_hub`` serves ``?wait=true``."""

    def __init__(self, store: Store, *, watch_hub: WatchHub) -> None:
        self.store = store
        self.watch_hub = watch_hub

    async def route(self, request: Request, prefix: str, method: bytes) -> Response:
        """Answer ``method`` (HEAD already read as GET) on the canonical ``prefix``."""
        if method == b"GET" and flag(request, "wait"):
            return await wait_for_prefix(
                request,
                self.store,
                self.watch_hub,
                prefix,
                listing=lambda: self.list(request, prefix),
            )
        if method == b"GET":
            return await self.list(request, prefix)
        if method == b"DELETE":
            if not flag(request, "recursive"):
                raise BadRequest(
                    "recursive_required",
                    f"deleting the document {prefix!r} with all sub-documents needs "
                    "?recursive=true",
                )
            deleted = await self.store.delete_prefix(prefix)
            return json_response({"prefix": prefix, "deleted": deleted})
        raise MethodNotAllowed(method.decode("latin-1"), ["GET", "HEAD", "DELETE"])

    async def list(self, request: Request, prefix: str) -> Response:
        """One page of the keys under ``prefix`` (``after=``, ``limit=``, ``values=true``)."""
        after_text = query_arg(request, "after")
        after = None
        if after_text:
            after = normalize_key(
                after_text, max_bytes=None, allow_reserved=True, allow_format=True
            )
        limit = page_limit(request)
        page = await self._visible_page(caller_of(request).visible(prefix), after, limit)
        keys: list[Any]
        if flag(request, "values"):
            keys = [value_entry(record) for record in page.records]
        else:
            keys = [record.key for record in page.records]
        return json_response({"keys": keys, "next": page.next})

    async def _visible_page(
        self, prefixes: tuple[str, ...], after: str | None, limit: int
    ) -> KeysPage:
        """A page of the keys under ``prefixes`` (disjoint, in key order) after ``after``.

        A caller restricted to some prefixes lists only what lies inside them; since the
        prefixes are disjoint, every key of one sorts before every key of the next, so the
        listing is their listings one after the other, and ``after`` still resumes it.
        """
        records: list[Record] = []
        for prefix in prefixes:
            if len(records) == limit:  # full: the next page goes on from the last key
                return KeysPage(records, records[-1].key)
            if after is not None and after > prefix and not after.startswith(prefix):
                continue  # this prefix lies wholly before the cursor
            start = after if after is not None and after >= prefix else None
            page = await self.store.list(prefix, after=start, limit=limit - len(records))
            records.extend(page.records)
            if page.next is not None:
                return KeysPage(records, page.next)
        return KeysPage(records, None)

    async def keys(self, request: Request) -> Response:
        """``GET /_keys?prefix=``: the listing with the prefix as a parameter."""
        prefix = self.store.canonical_prefix(query_arg(request, "prefix") or "/")
        return await self.list(request, prefix)

    async def listkeys(self, request: Request) -> Response:
        """The classic ``GET /listkeys``: every key, as one JSON array streamed a page at a time."""
        # The first page is read before the 200 goes out, so a failing backend is a 503 rather
        # than a 200 cut short.
        prefixes = caller_of(request).visible("/")
        page = await self._visible_page(prefixes, None, DEFAULT_PAGE)
        stream = self._stream_all_keys(prefixes, page)
        return Response(200, headers=dict(JSON_HEADERS), stream=stream)

    async def _stream_all_keys(
        self, prefixes: tuple[str, ...], page: KeysPage
    ) -> AsyncIterator[bytes]:
        yield b"["
        first = True
        while True:
            if page.records:
                names = [json_bytes(classic_form(record.key)) for record in page.records]
                yield (b"" if first else b",") + b",".join(names)
                first = False
            if page.next is None:
                break
            page = await self._visible_page(prefixes, page.next, DEFAULT_PAGE)
        yield b"]"

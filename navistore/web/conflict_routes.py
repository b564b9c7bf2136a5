"""The answers about conflict losers: ``GET /<key>?conflicts=true`` and ``GET /_conflicts``.

``GET /<key>?conflicts=true`` answers ``{"key", "version", "conflicts": [...]}``: the key's
version now (null when it is absent) and each loser kept for it, newest first, with its
version, the node that wrote it, whether it was a delete, its value (text or base64, as
listings give values), content type, flags and when it is forgotten (``expires_ms``).
``GET /_conflicts?prefix=&after=&limit=`` answers ``{"keys": [{"key", "conflicts"}], "next"}``:
the keys under the prefix, among those the caller may read, that have losers, and how many.
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request

from navistore.conflicts import CONFLICTS_PREFIX, Loser
from navistore.keys import normalize_key
from navistore.protocol.records import encode_value
from navistore.store import Store
from navistore.store.losers import keys_with_losers, losers_of
from navistore.web.access import caller_of
from navistore.web.params import page_limit, query_arg
from navistore.web.responses import Response, json_response

__all__ = ["ConflictRoutes", "loser_entry"]


def loser_entry(loser: Loser) -> dict[str, Any]:
    """One loser as the API shows it."""
    text, encoding = encode_value(loser.value)
    return {
        "version": loser.version,
        "node": loser.node,
        "deleted": loser.deleted,
        "value": text,
        "encoding": encoding,
        "content_type": loser.content_type,
        "flags": loser.flags,
        "expires_ms": loser.expires_ms,
    }


class ConflictRoutes:
    """The handlers of both answers over one Store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def of_key(self, request: Request, key: str) -> Response:
        """``GET /<key>?conflicts=true`` (the caller may read ``key``: checked by its route)."""
        record = await self.store.get(key)
        losers = await losers_of(self.store, key)
        return json_response(
            {
                "key": key,
                "version": None if record is None else record.stamp.encode(),
                "conflicts": [loser_entry(loser) for loser in losers],
            }
        )

    async def keys(self, request: Request) -> Response:
        """``GET /_conflicts?prefix=``: the keys with losers, a page at a time."""
        prefix = self.store.canonical_prefix(query_arg(request, "prefix") or "/")
        after_text = query_arg(request, "after")
        after = None
        if after_text:
            after = normalize_key(after_text, max_bytes=None, allow_reserved=True)
        limit = page_limit(request)
        found: list[dict[str, Any]] = []
        last = after
        # The visible prefixes are disjoint and in key order, and so are their losers' ranges.
        for visible in caller_of(request).visible(prefix):
            if len(found) == limit:
                return json_response({"keys": found, "next": last})
            scanned = CONFLICTS_PREFIX + visible
            if after is not None and after > scanned and not after.startswith(scanned):
                continue  # this prefix's losers lie wholly before the cursor
            start = after if after is not None and after.startswith(scanned) else None
            page = await keys_with_losers(
                self.store, visible, after=start, limit=limit - len(found)
            )
            found.extend({"key": key, "conflicts": count} for key, count in page.keys)
            last = page.last or last
            if page.next is not None:
                return json_response({"keys": found, "next": page.next})
        return json_response({"keys": found, "next": None})

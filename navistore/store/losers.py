"""Reading the conflict losers a Store keeps (see :mod:`navistore.conflicts`).

Loser records are ordinary records under ``/_conflicts``; these reads find the losers of one
key, and the keys under a prefix that have any, a bounded page at a time.
"""

from __future__ import annotations

import attrs

from navistore.conflicts import CONFLICTS_PREFIX, Loser
from navistore.store.core import Store

__all__ = ["MAX_LOSERS", "LoserKeys", "keys_with_losers", "losers_of"]

#: The most losers one key's answer lists (the oldest are left out past it).
MAX_LOSERS = 100

#: Loser records examined per page of :func:`keys_with_losers` and of :func:`losers_of`.
_SCAN = 500


async def losers_of(store: Store, key: str, limit: int = MAX_LOSERS) -> list[Loser]:
    """The losers kept for ``key``, newest first, at most ``limit``. Losers of keys under it
    (``key/...``) share the scanned range and are skipped; the scan stops after ten pages."""
    found: list[Loser] = []
    after: str | None = None
    for _page in range(10):
        page = await store.list(CONFLICTS_PREFIX + key + "/", after=after, limit=_SCAN)
        for record in page.records:
            loser = Loser.of(record)
            if loser is not None and loser.key == key:
                found.append(loser)
        if page.next is None:
            break
        after = page.next
    found.sort(key=lambda loser: loser.version, reverse=True)
    return found[:limit]


@attrs.frozen
class LoserKeys:
    """A page of the keys that have losers: ``(key, how many)`` in key order of their loser
    records, where the next page starts (None: no more), and the key of the last loser record
    counted (None: none)."""

    keys: list[tuple[str, int]]
    next: str | None
    last: str | None


async def keys_with_losers(
    store: Store, prefix: str, *, after: str | None = None, limit: int = 100
) -> LoserKeys:
    """The keys under the canonical ``prefix`` that have losers, at most ``limit`` a page.
    ``after`` is the ``next`` of the page before (a loser record's key)."""
    counts: dict[str, int] = {}
    start = after
    last: str | None = None
    while True:
        page = await store.list(CONFLICTS_PREFIX + prefix, after=start, limit=_SCAN)
        for record in page.records:
            loser = Loser.of(record)
            if loser is None:
                continue
            if loser.key not in counts and len(counts) == limit:
                return LoserKeys(list(counts.items()), last, last)
            counts[loser.key] = counts.get(loser.key, 0) + 1
            last = record.key
        if page.next is None:
            return LoserKeys(list(counts.items()), None, last)
        start = page.next

"""Pages of records cut by bytes as well as by count, over any backend.

One listing or feed page of ``limit`` records over values near the value limit would hold
gigabytes. A backend providing :class:`~navistore.interfaces.ISizedReads` stops reading after
the record that fills the page's bytes; over any other the page is read by count and then cut
the same way, so callers see one rule either way: a page holds at least one record, and it is
*full by size* once the :func:`~navistore.interfaces.stored_size` of its records reaches
``max_bytes``; a reader goes on after its last record.
"""

from __future__ import annotations

from navistore.interfaces import ISizedReads, IStorageBackend, cut_by_bytes
from navistore.record import Record

__all__ = ["DEFAULT_PAGE_BYTES", "changes_page", "scan_page"]

#: The bytes (keys and values) one page read for a client or a peer holds before it is cut: a
#: page of small records is cut by its count long before, and one over values at the 16 MiB
#: value limit holds one of them, so that a request costs a few times the value limit at most.
DEFAULT_PAGE_BYTES = 4 * 1024 * 1024


async def scan_page(
    backend: IStorageBackend,
    prefix: str,
    after: str | None,
    limit: int,
    include_deleted: bool,
    max_bytes: int,
) -> tuple[list[Record], bool]:
    """``backend.scan`` cut by bytes; the records and whether the page is full by size."""
    if ISizedReads.providedBy(backend):
        found = await backend.scan(prefix, after, limit, include_deleted, max_bytes)
    else:
        found = await backend.scan(prefix, after, limit, include_deleted)
    return cut_by_bytes(found, max_bytes)


async def changes_page(
    backend: IStorageBackend, since: int, limit: int, max_bytes: int
) -> tuple[list[Record], bool]:
    """``backend.changes`` cut by bytes; the records and whether the page is full by size."""
    if ISizedReads.providedBy(backend):
        found = await backend.changes(since, limit, max_bytes)
    else:
        found = await backend.changes(since, limit)
    return cut_by_bytes(found, max_bytes)

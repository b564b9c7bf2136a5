"""What Store calls answer: a write's outcome, a page of a listing, a page of the feed."""

from __future__ import annotations

import attrs

from navistore.record import Record

__all__ = ["Change", "ChangesPage", "KeysPage", "WriteResult"]


@attrs.frozen
class Change:
    """One key of :meth:`Store.write_together <navistore.store.Store.write_together>`: what the
    caller read of it (``read``, the live record, None when absent) and what it becomes (a
    value, or ``value`` None: deleted)."""

    key: str
    read: Record | None
    value: bytes | None
    content_type: str | None = None
    flags: int = 0
    ttl_ms: int | None = None


@attrs.frozen
class WriteResult:
    """What a write did: the stored record, whether the key was absent before, and the live
    record it replaced (None when absent: etcd's ``prevNode``)."""

    record: Record
    created: bool
    previous: Record | None = None


@attrs.frozen
class KeysPage:
    """One page of a listing; ``next`` is the ``after`` cursor of the next page, or None."""

    records: list[Record]
    next: str | None


@attrs.frozen
class ChangesPage:
    """A page of the change feed; resume with ``since=last_seq``.

    ``more`` says that changes after ``last_seq`` may be there already: the page is full, or a
    prefix-filtered read stopped at its work bound before the node's newest seq (an empty page
    may then still have moved ``last_seq``). A reader waiting for changes reads on at once
    rather than waiting for the next write.
    """

    records: list[Record]
    last_seq: int
    more: bool = False

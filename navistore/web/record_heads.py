"""The headers of a record's answer, encoded once per version of the record.

A plain GET of a key answers its value with five headers made from the record (``ETag``,
``Last-Modified``, ``Content-Type``, and the two that keep a stored page from running as the
node's). Setting them one by one through twisted.web checks and canonicalizes each, every time,
and costs more than finding the record; :class:`RecordHeads` keeps the encoded lines of recent
records instead (see :attr:`~navistore.web.request.NavistoreRequest.head`), bounded in bytes.
"""

from __future__ import annotations

from navistore.clock import Stamp
from navistore.record import Record
from navistore.web.conditions import etag_of, last_modified
from navistore.web.request import header_line
from navistore.web.responses import TEXT_TYPE, VALUE_POLICY

__all__ = ["DEFAULT_HEADS_BYTES", "RecordHeads", "record_header_items", "written_head"]

#: The most bytes of keys and encoded headers a :class:`RecordHeads` keeps (about 15,000
#: records): the keys a node's clients read most, not all of a large store.
DEFAULT_HEADS_BYTES = 4 * 1024 * 1024


def record_header_items(record: Record) -> list[tuple[bytes, bytes]]:
    """The headers of a live record's answer (200), as names and values."""
    return [
        (b"ETag", etag_of(record)),
        (b"Last-Modified", last_modified(record)),
        (b"Content-Type", record.content_type.encode("latin-1", "replace")),
        (b"X-Content-Type-Options", b"nosniff"),
        (b"Content-Security-Policy", VALUE_POLICY),
    ]


def written_head(record: Record) -> bytes:
    """The header lines of a plain write's answer (``OK``): the stored record's validators."""
    return b"ETag: %s\r\nLast-Modified: %s\r\n%s" % (etag_of(record), last_modified(record), _TEXT)


_TEXT = header_line(b"Content-Type", TEXT_TYPE)


class RecordHeads:
    """Encoded header lines of recently answered records, by key.

    An entry is used only for the very record it was made for (the same stamp: a stamp names
    one version of one key), so a write, a replicated record or a reset
    is never answered with the headers of what it replaced. When the entries reach
    ``max_bytes`` they are all dropped and the cache starts over: cheaper than an LRU's
    bookkeeping on every hit, and the keys read often come back at once.
    """

    def __init__(self, max_bytes: int = DEFAULT_HEADS_BYTES) -> None:
        self.max_bytes = max_bytes
        # By key: the stamp of the record the lines were made for, and the lines. Not the
        # record: its value would be held too.
        self._heads: dict[str, tuple[Stamp, bytes]] = {}
        self._bytes = 0

    def head(self, key: str, record: Record) -> bytes:
        """The header lines of ``record``'s answer, all ending in CRLF."""
        known = self._heads.get(key)
        stamp = record.stamp
        if known is not None and (known[0] is stamp or known[0] == stamp):
            return known[1]
        head = b"".join(header_line(name, value) for name, value in record_header_items(record))
        if self._bytes > self.max_bytes:
            self._heads.clear()
            self._bytes = 0
        if known is None:
            self._bytes += len(key) + len(head) + 100  # with the dict slot and the tuple
        self._heads[key] = (stamp, head)
        return head

"""HTTP validators: ETags made from stamps, and the conditional request headers."""

from __future__ import annotations

import functools
from email.utils import formatdate

import attrs
from twisted.web.server import Request

from navistore.record import Record

__all__ = ["Condition", "condition", "etag_of", "last_modified"]


def etag_of(record: Record) -> bytes:
    """The strong ETag of a record: its stamp in quotes."""
    return b'"' + record.stamp.encode().encode("ascii") + b'"'


def last_modified(record: Record) -> bytes:
    """An HTTP date for the wall time of a record's stamp."""
    return _http_date(record.stamp.wall_ms // 1000)


@functools.lru_cache(maxsize=1024)
def _http_date(seconds: int) -> bytes:
    # Formatting a date costs more than the rest of a GET's headers; recent ones repeat.
    return formatdate(seconds, usegmt=True).encode("ascii")


@attrs.frozen
class Condition:
    """An ``If-Match`` or ``If-None-Match`` header: ``*`` or a list of entity tags.

    Weak tags (``W/"..."``) keep their ``W/`` prefix, so strong comparison never matches them.
    """

    tags: tuple[str, ...] = ()
    wildcard: bool = False

    def matches(self, record: Record | None) -> bool:
        """Tell whether a live record (None: absent) matches the header."""
        if record is None:
            return False
        return self.wildcard or record.stamp.encode() in self.tags

    @classmethod
    def parse(cls, header: bytes) -> Condition:
        """Parse a header value such as ``*`` or ``"a", "b"``."""
        text = header.decode("latin-1").strip()
        if text == "*":
            return cls(wildcard=True)
        tags = []
        for part in text.split(","):
            tag = part.strip()
            if len(tag) >= 2 and tag.startswith('"') and tag.endswith('"'):
                tags.append(tag[1:-1])
            elif tag:
                tags.append(tag)
        return cls(tuple(tags))


def condition(request: Request, name: bytes) -> Condition | None:
    """The parsed conditional header ``name`` of a request, or None when it is absent."""
    values = request.requestHeaders.getRawHeaders(name)
    return Condition.parse(b", ".join(values)) if values else None

"""What a cache node asks of its upstream, over HTTP: its health, its feed, a key, a write.

Every call is one exchange within the link's timeout (:mod:`navistore.links`); an answer outside
the public API (no usable ETag, a feed that is not JSON) is a :class:`~navistore.links.BadAnswer`,
a non-2xx one a :class:`~navistore.links.Refused` (a 404 of a key is an answer: None).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from navistore.clock import InvalidStamp, Stamp, validate_node_id
from navistore.hooks import ForwardedWrite
from navistore.links import SMALL_ANSWER_BYTES, Answer, BadAnswer, PeerLink
from navistore.record import DEFAULT_CONTENT_TYPE

__all__ = ["HOP_BY_HOP", "Change", "Upstream", "parse_etag"]

#: Headers that belong to one connection, or that the node sets itself, never passed on.
HOP_BY_HOP = frozenset(
    b"connection keep-alive proxy-authenticate proxy-authorization te trailer transfer-encoding "
    b"upgrade host content-length expect accept-encoding content-encoding date server".split()
)
_URL_SAFE = "/%?&=:@!$'()*+,;~-._"

#: One entry of the upstream's change feed: key, stamp, deleted.
Change = tuple[str, Stamp, bool]


def parse_etag(values: Sequence[bytes] | None) -> Stamp:
    """The stamp a Navistore ETag (``"<stamp>"``) names; raise BadAnswer otherwise."""
    text = values[0].decode("latin-1").strip() if values else ""
    try:
        return Stamp.decode(text[1:-1] if text[:1] == text[-1:] == '"' else text)
    except InvalidStamp as exc:
        raise BadAnswer(f"the upstream's answer has no usable ETag: {exc}") from None


#: Room for one change in the upstream's ``/_changes`` page (JSON; keys may be a few KiB).
_CHANGE_BYTES = 4096


class Upstream:
    """The node a cache node copies, at ``url``, reached through ``link``."""

    def __init__(self, url: str, *, link: PeerLink) -> None:
        self.url = url
        self.link = link

    async def _get_json(self, path: str, max_bytes: int = SMALL_ANSWER_BYTES) -> Any:
        """GET a JSON document; raise unless the upstream answers 200 with JSON (at most
        ``max_bytes`` of it)."""
        answer = await self.link.exchange("GET", self.url + path, max_bytes=max_bytes)
        if answer.status != 200:
            raise answer.refusal()
        return answer.json(f"the upstream's {path}")

    async def health(self) -> tuple[str, int]:
        """The upstream's node id and newest seq, from its ``/_health``."""
        health = await self._get_json("/_health")
        try:
            return validate_node_id(health["node_id"]), int(health["last_seq"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BadAnswer(f"the upstream's /_health answer is unusable: {exc}") from None

    async def changes(self, since: int, limit: int) -> tuple[int, list[Change]]:
        """A page of the upstream's change feed after ``since``: its ``last_seq`` and changes."""
        # A change is about 150 bytes of JSON (a key of at most a few KiB): room for a page.
        document = await self._get_json(
            f"/_changes?since={since}&limit={limit}", max_bytes=_CHANGE_BYTES * max(limit, 1)
        )
        try:
            changes = [
                (str(item["key"]), Stamp.decode(item["stamp"]), bool(item["deleted"]))
                for item in document["results"]
            ]
            return int(document["last_seq"]), changes
        except (ValueError, KeyError, TypeError) as exc:
            raise BadAnswer(f"the upstream's change feed is unusable: {exc}") from None

    async def fetch(self, key: str) -> tuple[bytes, str, Stamp] | None:
        """The value, content type and stamp of the upstream's live ``key``; None on 404."""
        answer = await self.link.exchange("GET", self.url + quote(key.encode("utf-8"), safe="/"))
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise answer.refusal()
        stamp = parse_etag(answer.headers.getRawHeaders(b"ETag"))
        kind = answer.header(b"Content-Type")
        return answer.body, kind.decode("latin-1") if kind else DEFAULT_CONTENT_TYPE, stamp

    async def send(self, write: ForwardedWrite) -> Answer:
        """Send a client's write as it came (but for hop-by-hop headers); the whole answer."""
        headers = {
            name: list(values)
            for name, values in write.headers.items()
            if name.lower() not in HOP_BY_HOP
        }
        data = write.body if write.body or write.method != "DELETE" else None
        url = self.url + quote(write.target, safe=_URL_SAFE)
        return await self.link.exchange(
            write.method, url, body=data, headers=headers, max_bytes=SMALL_ANSWER_BYTES
        )

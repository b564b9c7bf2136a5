"""The nodes ``navistore render`` reads from: several ``--url``s, one in use at a time.

A seq is a position in one node's own feed: another node numbers its changes its own way. So a
:class:`Position` names the node (its id) with the seq, and a renderer that reaches a node
checks whose position it holds: the same node (restarted, or reached again) resumes from its
seq; another one (a fail-over, or a node whose feed went backwards, such as a ``memory:`` node
restarted empty) is read again from the start and watched from its current seq.
"""

from __future__ import annotations

import base64
import binascii
import threading

import attrs

from navistore.scripts.node_client import UNAVAILABLE, Failed, Node, _path, _query

__all__ = [
    "MAX_LISTED_KEYS",
    "MAX_READS",
    "MAX_READ_BYTES",
    "NodeSet",
    "NodeSource",
    "Position",
    "position_of",
]

#: The most single-key reads one render of one template makes (each is a request).
MAX_READS = 10_000
#: The most keys the listings of one render may hold.
MAX_LISTED_KEYS = 100_000
#: The most value bytes one render may read.
MAX_READ_BYTES = 64 * 1024 * 1024
#: Keys asked for per listing page (the node caps pages by bytes too).
_PAGE = 1000


class TooMuch(Failed):
    """A render read more than its bounds allow (exit status 2: the template asks too much)."""

    def __init__(self, message: str) -> None:
        super().__init__(2, message)


@attrs.frozen
class Position:
    """Where a reader stands in one node's feed: that node's id and a seq of its own."""

    url: str
    node_id: str
    seq: int


def position_of(node: Node) -> Position:
    """The node's id and newest seq, from ``/_health`` (a 503 counts as unreachable)."""
    answer = node.request("GET", "/_health")
    if answer.status != 200:
        raise Failed(UNAVAILABLE, f"{node.url} is not healthy ({answer.status})")
    document = answer.json()
    node_id = document.get("node_id") if isinstance(document, dict) else None
    seq = document.get("last_seq") if isinstance(document, dict) else None
    if not isinstance(node_id, str) or not isinstance(seq, int):
        raise Failed(UNAVAILABLE, f"{node.url}: /_health has no node_id or last_seq")
    return Position(node.url, node_id, seq)


class NodeSet:
    """The ``--url`` nodes in order; one is in use, and a failure moves to the next."""

    def __init__(self, nodes: list[Node]) -> None:
        assert nodes
        self.nodes = nodes
        self._index = 0
        self._lock = threading.Lock()

    @property
    def current(self) -> Node:
        """The node reads go to."""
        with self._lock:
            return self.nodes[self._index]

    def advance(self, failed: Node) -> Node:
        """The node after ``failed`` (the same one when there is only one), now in use."""
        with self._lock:
            if self.nodes[self._index] is failed:
                self._index = (self._index + 1) % len(self.nodes)
            return self.nodes[self._index]

    def connect(self) -> tuple[Node, Position]:
        """The first node, from the one in use on, that answers ``/_health``, with its
        position; raises the last :class:`Failed` when none does."""
        error: Failed | None = None
        for _ in range(len(self.nodes)):
            node = self.current
            try:
                return node, position_of(node)
            except Failed as exc:
                if exc.status != UNAVAILABLE:
                    raise
                error = exc
                self.advance(node)
        assert error is not None
        raise error


class NodeSource:
    """What one render reads from one node, each key and listing once (a template that reads
    a key twice sees one value), within :data:`MAX_READS`, :data:`MAX_LISTED_KEYS` and
    :data:`MAX_READ_BYTES`."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._values: dict[str, bytes | None] = {}
        self._listings: dict[tuple[str, bool], list[tuple[str, bytes | None]]] = {}
        self._listed = 0
        self._bytes = 0

    def _count(self, size: int) -> None:
        self._bytes += size
        if self._bytes > MAX_READ_BYTES:
            raise TooMuch(f"the template read more than {MAX_READ_BYTES} bytes of values")

    def value(self, key: str) -> bytes | None:
        """The key's value as stored, or None (404)."""
        if key in self._values:
            return self._values[key]
        if len(self._values) >= MAX_READS:
            raise TooMuch(f"the template read more than {MAX_READS} keys")
        answer = self.node.request("GET", _path(key))
        if answer.status == 404:
            answer.json()  # a node's 404 is JSON; anything else is not a node
            value = None
        else:
            value = answer.expect(f"reading {key}").body
            self._count(len(value))
        self._values[key] = value
        return value

    def entries(self, prefix: str, values: bool) -> list[tuple[str, bytes | None]]:
        """Every key under ``prefix`` (with values when asked), page after page."""
        cached = self._listings.get((prefix, values))
        if cached is not None:
            return cached
        found: list[tuple[str, bytes | None]] = []
        after: str | None = None
        while True:
            query = _query(
                prefix=prefix, after=after, limit=_PAGE, values="true" if values else None
            )
            page = self.node.request("GET", "/_keys?" + query).expect(f"listing {prefix}").json()
            for entry in page.get("keys", []):
                found.append(self._entry(entry, values))
            self._listed += len(page.get("keys", []))
            if self._listed > MAX_LISTED_KEYS:
                raise TooMuch(f"the template listed more than {MAX_LISTED_KEYS} keys")
            after = page.get("next")
            if not after:
                break
        self._listings[(prefix, values)] = found
        return found

    def _entry(self, entry: object, values: bool) -> tuple[str, bytes | None]:
        if not values:
            if not isinstance(entry, str):
                raise Failed(UNAVAILABLE, "the node answered a listing that is not one")
            return entry, None
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise Failed(UNAVAILABLE, "the node answered a listing that is not one")
        text = entry.get("value")
        if not isinstance(text, str):
            raise Failed(UNAVAILABLE, f"the node listed {entry['key']} without its value")
        if entry.get("encoding") == "base64":
            try:
                raw = base64.b64decode(text, validate=True)
            except binascii.Error:
                raise Failed(UNAVAILABLE, f"the node listed {entry['key']} badly") from None
        else:
            raw = text.encode("utf-8", "surrogatepass")
        self._count(len(raw))
        return entry["key"], raw

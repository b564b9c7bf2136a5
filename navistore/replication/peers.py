"""Peer URLs: validation, and the peer set kept in the Store's meta data.

A peer is named by the base URL of its HTTP API, ``http(s)://host:port``, with nothing after the
port. URLs are normalised (lower-case scheme and host, no trailing slash) so that one peer has one
name: the name keys its cursor in meta data, so two spellings of one peer would push twice.

Meta data used by replication (all text):

- ``replication.peers``: the push peer set, a JSON list of URLs in the order they were added;
- ``replication.cursor.<url>``: the highest local seq that peer acknowledged;
- ``replication.node.<url>``: the node id the peer answered with (empty while unknown);
- ``replication.pull.<url>`` / ``replication.pull.node.<url>``: the same two for a clone source.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from twisted.logger import Logger

from ..store import Store

__all__ = [
    "PEERS_META",
    "InvalidPeer",
    "cursor_meta",
    "host_port",
    "load_peers",
    "node_meta",
    "normalize_peer_url",
    "parse_peer_list",
    "pull_cursor_meta",
    "pull_node_meta",
    "save_peers",
]

log = Logger()

#: The meta data entry holding the peer set.
PEERS_META = "replication.peers"

_HOST_NAME = re.compile(r"[a-z0-9_~-]+(\.[a-z0-9_~-]+)*\.?\Z")
_IPV6 = re.compile(r"[0-9a-f:.]+\Z")
_LIST_SEPARATORS = re.compile(r"[,\s]+")


class InvalidPeer(ValueError):
    """A peer URL that cannot be a peer: not http(s), no host or port, or this node itself."""


def cursor_meta(url: str) -> str:
    """The meta entry of the push cursor of ``url``."""
    return f"replication.cursor.{url}"


def node_meta(url: str) -> str:
    """The meta entry of the node id ``url`` answered with."""
    return f"replication.node.{url}"


def pull_cursor_meta(url: str) -> str:
    """The meta entry of the pull cursor of the clone source ``url``."""
    return f"replication.pull.{url}"


def pull_node_meta(url: str) -> str:
    """The meta entry of the node id of the clone source ``url``."""
    return f"replication.pull.node.{url}"


def normalize_peer_url(url: str) -> str:
    """Return the canonical form ``scheme://host:port`` of a peer URL.

    :raises InvalidPeer: not an http(s) URL with a host and an explicit port, or it carries
        credentials, a path, a query or a fragment.
    """
    if not isinstance(url, str):
        raise InvalidPeer(f"a peer URL must be text, not {type(url).__name__}")
    text = url.strip()
    if not text:
        raise InvalidPeer("the peer URL is empty")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidPeer(f"{text!r} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        raise InvalidPeer(f"peer URL {text!r} must look like http://host:port (or https://)")
    host = parts.hostname or ""
    bracketed = parts.netloc.rpartition("@")[2].startswith("[")
    if not host or not (_IPV6 if bracketed else _HOST_NAME).match(host):
        raise InvalidPeer(f"peer URL {text!r} has no valid host name")
    if parts.username is not None or parts.password is not None:
        raise InvalidPeer(f"peer URL {text!r} must not carry credentials")
    if not port:
        raise InvalidPeer(f"peer URL {text!r} needs a port, e.g. {scheme}://{parts.netloc}:8888")
    if parts.path not in ("", "/") or parts.query or parts.fragment or text.endswith(("?", "#")):
        raise InvalidPeer(f"peer URL {text!r} must be only scheme://host:port, with no path")
    shown = f"[{host}]" if bracketed else host
    return f"{scheme}://{shown}:{port}"


def host_port(url: str) -> tuple[str, int]:
    """The (host, port) of a normalised peer URL, which is what "the same node" compares."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    return parts.hostname, parts.port


def parse_peer_list(text: str) -> list[str]:
    """Parse the classic ``http://a:1,http://b:2`` list (commas or white space) into URLs.

    Duplicates are dropped, order is kept; an empty text is an empty set.

    :raises InvalidPeer: one of the URLs is invalid (the message names it).
    """
    urls: list[str] = []
    for item in _LIST_SEPARATORS.split(text.strip()):
        if item:
            url = normalize_peer_url(item)
            if url not in urls:
                urls.append(url)
    return urls


def unique(urls: Iterable[str]) -> list[str]:
    """``urls`` without repeats, in first-seen order."""
    return list(dict.fromkeys(urls))


async def load_peers(store: Store) -> list[str]:
    """Read the persisted peer set; entries that are no longer valid URLs are dropped (logged).

    :raises ValueError: the meta entry is not a JSON list (refusing to start beats silently
        forgetting every peer).
    """
    text = await store.get_meta(PEERS_META)
    if not text:
        return []
    document = json.loads(text)
    if not isinstance(document, list):
        raise ValueError(f"meta data {PEERS_META!r} is not a JSON list: {text[:200]!r}")
    urls: list[str] = []
    for item in document:
        try:
            urls.append(normalize_peer_url(item))
        except InvalidPeer as exc:
            log.warn("ignoring a stored peer: {why}", why=str(exc))
    return unique(urls)


async def save_peers(store: Store, urls: Iterable[str]) -> None:
    """Durably store the peer set."""
    await store.set_meta(PEERS_META, json.dumps(list(urls)))

"""The peer set and the replication cursors, kept in the Store's meta data.

Peers are named by their normal URL (:mod:`navistore.peer_urls`). Meta data used by replication
(all text):

- ``replication.peers``: the push peer set, a JSON list of URLs in the order they were added;
- ``replication.cursor.<url>``: the highest local seq that peer acknowledged;
- ``replication.node.<url>``: the node id the peer answered with (empty while unknown);
- ``replication.pull.<url>`` / ``replication.pull.node.<url>``: the same two for a clone source.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from twisted.logger import Logger

from navistore.json_documents import parse_json
from navistore.peer_urls import InvalidPeer, normalize_peer_url, unique
from navistore.store import Store

__all__ = [
    "PEERS_META",
    "cursor_meta",
    "load_peers",
    "node_meta",
    "pull_cursor_meta",
    "pull_node_meta",
    "save_peers",
]

log = Logger()

#: The meta data entry holding the peer set.
PEERS_META = "replication.peers"


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


async def load_peers(store: Store) -> list[str]:
    """Read the persisted peer set; entries that are no longer valid URLs are dropped (logged).

    :raises ValueError: the meta entry is not a JSON list (refusing to start beats silently
        forgetting every peer).
    """
    text = await store.get_meta(PEERS_META)
    if not text:
        return []
    document = parse_json(text)
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

"""etcd's files and directories over Navistore's keys, and the ``node`` JSON of each.

etcd's keys form a tree whose inner nodes (directories) hold no value; a Navistore key may hold
a value and have sub-keys at once. The mapping:

- an explicit directory (``dir=true``, ``etcdctl mkdir``) is a *marker*: a record at its key
  with content type :data:`DIR_TYPE` and an empty value, so an empty directory shows;
- a key with live sub-keys is a directory too (etcd makes the parents of a key it writes);
- any other live record is a file. A key holding a value *and* sub-keys (only the native API
  writes those) is a directory here: its value is not shown, a write of a value to it is
  ``102 Not a file`` and a plain delete of it ``102`` too, as for any directory; a recursive
  delete removes it with its value.

A directory without a marker shows the indexes of the first key found under it. Listings read
the store page by page and stop past :data:`MAX_NODES` nodes (a clear 400, never an unbounded
answer); a non-recursive listing skips each sub-directory's keys by seeking past them.
"""

from __future__ import annotations

import time
from typing import Any

from navistore.compat.etcd_errors import INVALID_FIELD, NOT_DIR, EtcdError
from navistore.record import Record
from navistore.store import Store
from navistore.tokens import Caller

__all__ = [
    "DIR_TYPE",
    "MAX_NODES",
    "Tree",
    "dir_node",
    "expiry_fields",
    "file_ancestor",
    "file_node",
    "has_children",
    "is_marker",
    "list_dir",
    "missing_cause",
    "node_of",
    "parent_keys",
    "require_dir_parent",
]

#: The content type of a directory's marker record.
DIR_TYPE = "application/vnd.navistore.etcd-dir"
#: The most nodes one listing answers.
MAX_NODES = 10_000
#: Records read per page of a listing.
_PAGE = 500
#: Sorts after every character a key may hold: ``prefix + _END`` is past every key under it.
_END = "\U0010ffff"


def is_marker(record: Record | None) -> bool:
    """Whether ``record`` is a live directory marker."""
    return record is not None and not record.deleted and record.content_type == DIR_TYPE


def expiry_fields(record: Record, now_ms: int) -> dict[str, Any]:
    """``expiration`` (RFC 3339, UTC, nanoseconds as etcd writes it) and ``ttl`` (seconds left,
    rounded up, absent at 0 as etcd omits it) of a record that expires."""
    expires = record.expires_ms
    if expires is None or record.deleted:
        return {}
    seconds, millis = divmod(expires, 1000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    fields: dict[str, Any] = {"expiration": f"{stamp}.{millis:03d}000000Z"}
    left = -(-(expires - now_ms) // 1000)
    if left > 0:
        fields["ttl"] = left
    return fields


def _indexes(record: Record) -> dict[str, Any]:
    # No creation index is stored: a record's seq stands for both (see the README's table).
    return {"modifiedIndex": record.seq, "createdIndex": record.seq}


def file_node(record: Record, now_ms: int, *, with_value: bool = True) -> dict[str, Any]:
    """The node of a file (a tombstone's has no value)."""
    node: dict[str, Any] = {"key": record.key}
    if with_value and not record.deleted:
        node["value"] = record.value.decode("utf-8", "replace")
    node.update(expiry_fields(record, now_ms))
    node.update(_indexes(record))
    return node


def dir_node(
    key: str, record: Record | None, now_ms: int, nodes: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The node of a directory: ``record`` is its marker or the first key under it (for the
    indexes); the root has no key, and a directory without nodes no ``nodes``, as in etcd."""
    node: dict[str, Any] = {} if key == "/" else {"key": key}
    node["dir"] = True
    if nodes:
        node["nodes"] = nodes
    if record is not None and key != "/":
        if is_marker(record) and record.key == key:  # its own marker, not a key under it
            node.update(expiry_fields(record, now_ms))
        node.update(_indexes(record))
    return node


def node_of(record: Record, now_ms: int) -> dict[str, Any]:
    """The node of one record: a directory for a marker, else a file."""
    if is_marker(record):
        return dir_node(record.key, record, now_ms)
    return file_node(record, now_ms)


def parent_keys(key: str) -> list[str]:
    """The keys of ``key``'s parents, outermost first (``/a/b/c``: ``/a``, ``/a/b``)."""
    parts = key.split("/")[1:-1]
    return ["/" + "/".join(parts[: depth + 1]) for depth in range(len(parts))]


async def file_ancestor(store: Store, key: str) -> str | None:
    """The outermost parent of ``key`` that is a file (then ``key`` cannot be written: etcd's
    104), or None. A parent holding a value is a directory once something is under it."""
    for parent in parent_keys(key):
        record = await store.get(parent)
        if record is None or is_marker(record):
            continue
        if await has_children(store, parent) is None:
            return parent
    return None


async def has_children(store: Store, key: str) -> Record | None:
    """The first live record under ``key`` (so ``key`` is a directory), or None."""
    page = await store.list(_under(key), limit=1)
    return page.records[0] if page.records else None


def _under(key: str) -> str:
    return "/" if key == "/" else key + "/"


def _too_many(key: str) -> EtcdError:
    return EtcdError(
        INVALID_FIELD,
        f"the directory {key} holds more than {MAX_NODES} nodes: page it with the native API "
        f"(GET /_keys?prefix={_under(key)}&limit=...)",
        native="too_many_nodes",
    )


class Tree:
    """A directory's nodes being gathered: children by name, each a record, a sub-tree, or
    both (the record is then the sub-directory's marker, or a value hidden by its sub-keys)."""

    __slots__ = ("children", "first", "record")

    def __init__(self) -> None:
        self.record: Record | None = None
        self.first: Record | None = None  # the first record seen under it, for its indexes
        self.children: dict[str, Tree] = {}

    def child(self, name: str) -> Tree:
        found = self.children.get(name)
        if found is None:
            found = self.children[name] = Tree()
        return found

    def nodes(self, key: str, now_ms: int, deep: bool) -> list[dict[str, Any]]:
        """The JSON nodes of the children, in key order."""
        base = "" if key == "/" else key
        shown: list[dict[str, Any]] = []
        for name in sorted(self.children):
            sub = self.children[name]
            child_key = f"{base}/{name}"
            if sub.children or sub.first is not None or is_marker(sub.record):
                inner = sub.nodes(child_key, now_ms, deep) if deep else None
                shown.append(dir_node(child_key, sub.record or sub.first, now_ms, inner))
            elif sub.record is not None:
                shown.append(file_node(sub.record, now_ms))
        return shown


async def list_dir(store: Store, key: str, caller: Caller, *, recursive: bool) -> Tree:
    """Gather the directory ``key``'s children (all its descendants if ``recursive``), at
    most :data:`MAX_NODES` nodes, from the records the caller may read (a restricted caller
    sees the directories on the way to its prefixes, and what is inside them).

    :raises EtcdError: past :data:`MAX_NODES` nodes.
    """
    prefix = _under(key)
    tree = Tree()
    count = 0
    after: str | None = None
    while True:
        page = await store.list(prefix, after=after, limit=_PAGE)
        skip_to: str | None = None
        for record in page.records:
            if skip_to is not None and record.key < skip_to:
                continue  # inside a sub-directory a shallow listing has already shown
            skip_to = None
            if not caller.covers(record.key):
                # Not readable: a directory on the way to what is shows through the keys
                # under it that are, never through this record (its value, its marker).
                continue
            names = record.key[len(prefix) :].split("/")
            if not recursive and len(names) > 1:
                sub = tree.child(names[0])
                if sub.first is None:
                    count += sub.record is None  # a node not counted yet (its marker is)
                    sub.first = record
                skip_to = prefix + names[0] + "/" + _END
                continue
            node = tree
            for name in names[:-1]:
                node = node.child(name)
                if node.first is None:
                    count += node.record is None
                    node.first = record
            leaf = node.child(names[-1])
            if leaf.record is None and leaf.first is None:
                count += 1
            leaf.record = record
            if count > MAX_NODES:
                raise _too_many(key)
        if count > MAX_NODES:
            raise _too_many(key)
        if page.next is None:
            return tree
        after = skip_to if skip_to is not None and skip_to > page.next else page.next


async def missing_cause(store: Store, key: str) -> str:
    """The cause etcd gives for a missing key: the outermost missing part of its path
    (``/a`` for ``/a/b`` when ``/a`` is gone too), read only on that error's path."""
    for parent in parent_keys(key):
        if await store.get(parent) is None and await has_children(store, parent) is None:
            return parent
    return key


async def require_dir_parent(store: Store, key: str, index: int) -> None:
    """Refuse (104) a write under a file."""
    parent = await file_ancestor(store, key)
    if parent is not None:
        raise EtcdError(NOT_DIR, parent, index)

"""Conflict losers: telling a concurrent write from a later one, and keeping the loser.

Last-writer-wins decides every write on every node the same way, but it cannot tell a write
that *replaced* another (its writer had seen it) from one made concurrently on another node
(its writer had not): both leave the greater stamp. Each record carries what its writer had
seen of the key (``Record.replaces``, a version vector: per other node, the newest stamp the
writer had), so a node applying a peer's record can tell. When the two are concurrent, the
smaller one (which last-writer-wins discards) is kept as a *loser record* at
``/_conflicts<key>/<stamp>``: an ordinary record, made the same way by every node that detects
it (its stamp is the loser's own), so it replicates through the normal feed, deduplicates where
two nodes detected it, and expires everywhere at the same deadline (the retention).
"""

from __future__ import annotations

import attrs

from navistore.clock import InvalidStamp, Stamp
from navistore.record import Record

__all__ = [
    "CONFLICTS_PREFIX",
    "DEFAULT_RETENTION_MS",
    "HIDDEN_END",
    "KEY_ALLOWANCE",
    "Loser",
    "conflict_key",
    "descends",
    "is_hidden",
    "loser_of",
    "loser_record",
    "parse_conflict_key",
]

#: Where loser records live: ``/_conflicts`` followed by the key, then the loser's stamp.
CONFLICTS_PREFIX = "/_conflicts"

#: How long a loser is kept by default: a week, time for a person to notice and decide.
DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000

#: How much longer a loser record's key is than its key: the prefix, a ``/`` and a stamp.
KEY_ALLOWANCE = len(CONFLICTS_PREFIX) + 1 + len(Stamp(0, 0, "0" * 16).encode())


#: The smallest string above every loser record's key: a listing that skips them goes on here.
HIDDEN_END = CONFLICTS_PREFIX + "0"  # "0" follows "/"


def is_hidden(key: str) -> bool:
    """Whether ``key`` is a loser record's, which listings and feeds of the keys leave out (the
    replication feed carries them)."""
    return (
        key.startswith(CONFLICTS_PREFIX)
        and key[len(CONFLICTS_PREFIX) : len(CONFLICTS_PREFIX) + 1] == "/"
    )


def descends(record: Record, earlier: Record) -> bool:
    """Whether ``record``'s writer had seen ``earlier`` (or a write that had), so that
    ``record`` replaced it rather than raced it. A node's own stamps only grow, so a later
    stamp of the same node has seen its earlier ones."""
    stamp = earlier.stamp
    if record.stamp.node_id == stamp.node_id:
        return record.stamp >= stamp
    node = stamp.node_id
    for seen in record.replaces:
        if seen.node_id == node:
            return seen >= stamp
    return False


def loser_of(incoming: Record, current: Record | None) -> Record | None:
    """The record last-writer-wins discards when ``incoming`` meets ``current`` and neither
    had seen the other: a conflict; None for a later write, a duplicate, or an expiry (which
    replaces exactly the record it expires, and is nobody's write). Loser records themselves
    never conflict."""
    if current is None or incoming.stamp == current.stamp:
        return None
    if incoming.deleted and current.deleted:
        return None  # two deletes: whichever wins, the key is gone as both wanted
    if incoming.is_expiry or current.is_expiry or incoming.key.startswith(CONFLICTS_PREFIX + "/"):
        return None
    if incoming.stamp > current.stamp:
        return None if descends(incoming, current) else current
    return None if descends(current, incoming) else incoming


def conflict_key(key: str, stamp: Stamp) -> str:
    """The key of the loser record of ``key`` at ``stamp``. The stamp is one segment of fixed
    form, so the key splits back uniquely (:func:`parse_conflict_key`)."""
    return f"{CONFLICTS_PREFIX}{key}/{stamp.encode()}"


def parse_conflict_key(text: str) -> tuple[str, Stamp] | None:
    """The key and loser stamp a loser record's key names, or None if it is not one."""
    if not text.startswith(CONFLICTS_PREFIX + "/"):
        return None
    key, _slash, stamp_text = text[len(CONFLICTS_PREFIX) :].rpartition("/")
    if not key:
        return None
    try:
        return key, Stamp.decode(stamp_text)
    except InvalidStamp:
        return None


def loser_record(loser: Record, retention_ms: int) -> Record:
    """The loser record for ``loser``, discarded by last-writer-wins: the same on every
    node that detects the conflict, whichever record it lost to there. Its stamp is the loser's
    (unique to that write); it expires ``retention_ms`` after the loser was written, by its
    stamp's wall clock. A loser
    that was a delete is kept as an empty value with ``deleted`` in :class:`Loser`'s sense: its
    content type is empty."""
    deadline = loser.stamp.wall_ms + retention_ms
    content = "" if loser.deleted else loser.content_type
    return Record(
        conflict_key(loser.key, loser.stamp),
        loser.value,
        content,
        loser.stamp,
        False,
        None,
        (),
        deadline,
        loser.flags,
    )


@attrs.frozen
class Loser:
    """A loser as the API shows it, read back from its loser record."""

    key: str
    version: str
    node: str
    deleted: bool
    value: bytes
    content_type: str
    flags: int
    expires_ms: int | None

    @classmethod
    def of(cls, record: Record) -> Loser | None:
        """The loser a stored loser record holds, or None if the record is not one."""
        parsed = parse_conflict_key(record.key)
        if parsed is None or record.deleted:
            return None
        key, stamp = parsed
        return cls(
            key,
            stamp.encode(),
            stamp.node_id,
            record.content_type == "",
            record.value,
            record.content_type,
            record.flags,
            record.expires_ms,
        )

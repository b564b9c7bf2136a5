"""Records: what a backend stores for each key, tombstones included."""

from __future__ import annotations

import functools
import re
import unicodedata

import attrs

from navistore.clock import Stamp
from navistore.errors import InvalidRecord
from navistore.keys import InvalidKey, normalize_key

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "DEFAULT_MAX_VALUE_SIZE",
    "MAX_FLAGS",
    "MAX_REPLACES",
    "MAX_SEQ",
    "Record",
    "check_content_type",
    "check_record",
    "merge_seen",
]

#: The content type of a value whose writer did not say.
DEFAULT_CONTENT_TYPE = "application/octet-stream"

#: The largest value accepted by default: 16 MiB.
DEFAULT_MAX_VALUE_SIZE = 16 * 1024 * 1024


@attrs.frozen
class Record:
    """One key's state: its value and version, or a tombstone saying it was deleted.

    :ivar key: the canonical key (leading ``/``).
    :ivar value: the value bytes; empty for a tombstone.
    :ivar content_type: what the writer said the value is.
    :ivar stamp: the version; last writer (greatest stamp) wins.
    :ivar deleted: a tombstone, kept so that the delete replicates and beats older writes.
    :ivar seq: the node-local sequence number at which the backend stored it; ``None`` before.
    :ivar chain: the ids of the nodes the record passed through before it reached this one,
        starting with the node that wrote it; empty for a local write. Replication uses it to
        never send a record back where it came from, so backends store it with the record.
    :ivar expires_ms: on a live record, the wall-clock time (ms since the epoch) from which the
        key is absent (``PUT ?ttl=``); on a tombstone, the deadline of the record it expired
        (set only on an expiry's tombstone, see :meth:`expiry`). None: no expiry.
    :ivar flags: an opaque unsigned 64-bit number kept with the value (Consul's ``Flags``);
        0 on a tombstone.
    :ivar replaces: what the writer had seen of the key when it wrote: for each other node
        that wrote it, the newest of its stamps the writer had (a version vector, sorted by
        node id, at most :data:`MAX_REPLACES` entries). It tells a later write from a
        concurrent one (:mod:`navistore.conflicts`), so that a node can keep the loser of
        last-writer-wins where a person can see it; the writer's own earlier stamps are
        implied by its stamp and never listed.
    """

    key: str
    value: bytes
    content_type: str
    stamp: Stamp
    deleted: bool = False
    seq: int | None = None
    chain: tuple[str, ...] = ()
    expires_ms: int | None = None
    flags: int = 0
    replaces: tuple[Stamp, ...] = ()

    @classmethod
    def tombstone(cls, key: str, stamp: Stamp, replaces: tuple[Stamp, ...] = ()) -> Record:
        """Make the record that deletes ``key`` as of ``stamp``."""
        return cls(key, b"", "", stamp, True, None, (), None, 0, replaces)

    def with_seq(self, seq: int | None) -> Record:
        """Return this record as stored at ``seq`` (None: as not stored yet)."""
        # Not attrs.evolve: this runs once per stored record, and evolve costs several times more.
        return Record(
            self.key,
            self.value,
            self.content_type,
            self.stamp,
            self.deleted,
            seq,
            self.chain,
            self.expires_ms,
            self.flags,
            self.replaces,
        )

    def expired(self, now_ms: int) -> bool:
        """Whether this is a live record whose expiry has come at wall time ``now_ms``."""
        return self.expires_ms is not None and not self.deleted and self.expires_ms <= now_ms

    def expiry(self) -> Record:
        """The tombstone that expires this live record: the same on every node.

        Its stamp is the successor of this record's (:meth:`Stamp.successor`), not one made
        at the deadline: a tombstone stamped at the deadline would also beat a write made just
        before it (a refresh of the TTL, say) on every node that had not received that write
        yet, and the write would be lost. This one replaces only the record it expires.
        """
        assert self.expires_ms is not None and not self.deleted
        return Record.expiry_of(self.key, self.stamp, self.expires_ms, self.replaces)

    @classmethod
    def expiry_of(
        cls, key: str, stamp: Stamp, expires_ms: int, replaces: tuple[Stamp, ...] = ()
    ) -> Record:
        """The expiry (see :meth:`expiry`) of the record of ``key`` at ``stamp`` that expires
        at ``expires_ms``, whose own ``replaces`` were ``replaces``: the expiry has seen that
        record and all it had seen, so a write over the expiry descends from them too."""
        seen = merge_seen(replaces, stamp, stamp.successor().node_id)
        return cls(key, b"", "", stamp.successor(), True, None, (), expires_ms, 0, seen)

    @property
    def is_expiry(self) -> bool:
        """Whether this is the tombstone of an expiry rather than of a delete."""
        return self.deleted and self.expires_ms is not None


_NODE_ID = re.compile(r"[0-9a-f]{16}\Z")


def _printable(text: str) -> bool:
    if text.isprintable():  # the common case, in C: no control (Cc) nor surrogate (Cs) in it
        return True
    return not any(unicodedata.category(char) in ("Cc", "Cs") for char in text)


def check_content_type(content_type: object) -> None:
    """Raise :class:`InvalidRecord` unless a backend may store ``content_type`` (text without
    control or surrogate characters); :func:`check_record` applies it to every record."""
    if not isinstance(content_type, str) or not _printable(content_type):
        raise InvalidRecord("content_type must be text without control or surrogate characters")


#: The largest flags a record carries: an unsigned 64-bit number, as Consul's.
MAX_FLAGS = 2**64 - 1

#: The largest seq (and the largest integer any parameter, header or peer's document may carry):
#: what a 64-bit signed column (sqlite's, PostgreSQL's) holds, so that no number a client or a
#: peer sends can overflow storage.
MAX_SEQ = 2**63 - 1


#: The most entries a record's ``replaces`` holds: past it, the oldest are dropped, so a key
#: written by more than this many nodes may see a later write called a conflict.
MAX_REPLACES = 16


def merge_seen(replaces: tuple[Stamp, ...], stamp: Stamp, writer: str) -> tuple[Stamp, ...]:
    """The ``replaces`` of a write by node ``writer`` over a record at ``stamp`` whose own were
    ``replaces``: the newest stamp of every node among them, the writer's own left out (its
    stamp implies them), sorted by node id, at most :data:`MAX_REPLACES` (the newest kept)."""
    if not replaces:  # the common case: one writer after another, or after a single one
        return () if stamp.node_id == writer else (stamp,)
    newest: dict[str, Stamp] = {}
    for seen in (*replaces, stamp):
        node = seen.node_id
        if node != writer and (node not in newest or newest[node] < seen):
            newest[node] = seen
    kept = sorted(newest.values(), reverse=True)[:MAX_REPLACES]
    return tuple(sorted(kept, key=lambda seen: seen.node_id))


@functools.lru_cache(maxsize=16384)
def _canonical_short(key: str) -> str:
    return normalize_key(key, max_bytes=None, allow_reserved=True, allow_format=True)


#: Keys up to this many characters keep their check (at most 16,384 of them, a few MiB at most):
#: longer ones are checked every time, so that distinct long keys cannot fill memory.
_CACHED_KEY_LENGTH = 128


def _canonical(key: str) -> str:
    # Every apply checks its key; a node writes the same keys over and over.
    if len(key) <= _CACHED_KEY_LENGTH:
        return _canonical_short(key)
    return normalize_key(key, max_bytes=None, allow_reserved=True, allow_format=True)


def check_record(record: object) -> Record:
    """Return ``record`` if a backend may store it, else raise :class:`InvalidRecord`.

    Backends call this before touching storage so that a malformed record changes nothing. The
    key must be canonical and grammatical; its length limit is the Store's business.
    """
    if not isinstance(record, Record):
        raise InvalidRecord(f"expected a Record, got {type(record).__name__}")
    try:
        if not isinstance(record.key, str):
            raise InvalidKey(record.key, f"a key is text, not {type(record.key).__name__}")
        canonical = _canonical(record.key)
    except InvalidKey as exc:
        raise InvalidRecord(str(exc)) from None
    if canonical != record.key:
        raise InvalidRecord(f"key {record.key!r} is not canonical (expected {canonical!r})")
    if not isinstance(record.value, bytes):
        raise InvalidRecord(f"value must be bytes, not {type(record.value).__name__}")
    check_content_type(record.content_type)
    if not isinstance(record.stamp, Stamp):
        raise InvalidRecord(f"stamp must be a Stamp, not {type(record.stamp).__name__}")
    if not isinstance(record.deleted, bool):
        raise InvalidRecord("deleted must be a bool")
    if not isinstance(record.chain, tuple) or not all(
        isinstance(node, str) and _NODE_ID.match(node) for node in record.chain
    ):
        raise InvalidRecord("chain must be a tuple of node ids (16 lowercase hex digits)")
    if record.deleted and (record.value or record.content_type or record.flags):
        raise InvalidRecord("a tombstone carries no value, no content type and no flags")
    expires = record.expires_ms
    if expires is not None and (
        not isinstance(expires, int) or isinstance(expires, bool) or not 0 <= expires <= MAX_SEQ
    ):
        raise InvalidRecord(f"expires_ms must be a whole number from 0 to {MAX_SEQ}, or None")
    flags = record.flags
    if not isinstance(flags, int) or isinstance(flags, bool) or not 0 <= flags <= MAX_FLAGS:
        raise InvalidRecord(f"flags must be a whole number from 0 to {MAX_FLAGS}")
    replaces = record.replaces
    if replaces and (
        not isinstance(replaces, tuple)
        or len(replaces) > MAX_REPLACES
        or not all(isinstance(seen, Stamp) for seen in replaces)
        or len({seen.node_id for seen in replaces}) != len(replaces)
    ):
        raise InvalidRecord(
            f"replaces must be a tuple of at most {MAX_REPLACES} stamps of distinct nodes"
        )
    return record

"""What every part of the Consul API shares: its errors, headers, key names and KV entries.

Consul answers errors as plain text with the status it chose (``400 Invalid wait time``), and
every answer, errors included, carries ``X-Consul-Index``: clients give up on an answer without
it. Consul's keys have no leading ``/`` (``app/db``); the native key is ``/app/db``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Protocol

from twisted.web.server import Request

from navistore.record import Record
from navistore.store import Store
from navistore.watch_hub import WatchHub
from navistore.web.access import AccessPolicy
from navistore.web.params import MAX_INTEGER, query, query_arg
from navistore.web.responses import JSON_HEADERS, TEXT_TYPE, Response, json_bytes

__all__ = [
    "DATACENTER",
    "INDEX_HEADER",
    "MAX_FLAGS",
    "ConsulContext",
    "ConsulError",
    "bare_flag",
    "consul_json",
    "consul_name",
    "entry_of",
    "native_key",
    "native_prefix",
    "store_index",
    "uint_arg",
]

#: The header every answer carries: this node's seq (see :func:`store_index`).
INDEX_HEADER = b"X-Consul-Index"
#: The one datacenter a node answers for (Consul's default name).
DATACENTER = "dc1"
#: Flags are an unsigned 64-bit number in Consul.
MAX_FLAGS = 2**64 - 1


class ConsulContext(Protocol):
    """What the Consul API is built over: what it reads of
    :class:`~navistore.compat.CompatContext` (named here, not imported, since
    ``navistore.compat`` imports this API)."""

    @property
    def store(self) -> Store: ...

    @property
    def watch_hub(self) -> WatchHub: ...

    @property
    def access(self) -> AccessPolicy: ...

    @property
    def max_value_size(self) -> int: ...

    @property
    def self_urls(self) -> tuple[str, ...]: ...


class ConsulError(Exception):
    """An answer in Consul's style: ``status`` with ``text`` as a plain-text body."""

    def __init__(self, status: int, text: str, headers: Mapping[bytes, bytes] | None = None):
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = dict(headers or {})

    def response(self) -> Response:
        """The answer (the mount adds the index headers)."""
        headers = {**self.headers, b"Content-Type": TEXT_TYPE}
        return Response(self.status, self.text.encode("utf-8"), headers)


def store_index(store: Store) -> int:
    """``X-Consul-Index``: this node's newest seq, at least 1 (Consul's clients treat 0 as
    "no index" and must never be sent one). It is read *before* the data an answer shows, so
    a client blocking after it misses no change made while the answer was read."""
    return max(1, store.newest_seq)


def bare_flag(request: Request, name: str) -> bool:
    """Whether ``?name`` is present at all: Consul's flags (``?recurse``, ``?raw``) count when
    given bare or with any value, as Consul's own HTTP server reads them."""
    return name in query(request)


def uint_arg(request: Request, name: str, what: str, maximum: int = MAX_INTEGER) -> int | None:
    """``?name=`` as an unsigned integer up to ``maximum``, None when absent; else a 400 in
    Consul's words (``Invalid index``)."""
    text = query_arg(request, name)
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 20 or int(text) > maximum:
        raise ConsulError(
            400, f"Invalid {what}: {text[:40]!r} is not a whole number up to {maximum}"
        )
    return int(text)


def native_key(store: Store, name: str) -> str:
    """The native key of Consul's key ``name`` (``app/db`` is ``/app/db``); 400 for a name
    this node cannot store (empty, a trailing ``/``, a reserved ``_`` first segment...)."""
    if name == "":
        raise ConsulError(400, "Missing key name")
    try:
        return store.canonical_key("/" + name)
    except ValueError as exc:  # InvalidKey
        raise ConsulError(
            400, f"Invalid key {name[:200]!r}: {getattr(exc, 'reason', exc)}"
        ) from None


def native_prefix(store: Store, name: str) -> str:
    """The native prefix of Consul's key prefix ``name`` (``""`` is every key, ``/``)."""
    try:
        return store.canonical_prefix("/" + name)
    except ValueError as exc:  # InvalidKey
        reason = getattr(exc, "reason", exc)
        raise ConsulError(400, f"Invalid key prefix {name[:200]!r}: {reason}") from None


def consul_name(key: str) -> str:
    """Consul's name of a native key: without its leading ``/``."""
    return key[1:]


def entry_of(record: Record, *, with_value: bool = True) -> dict[str, Any]:
    """A record as Consul's KV entry. ``CreateIndex`` is the record's seq too: Navistore keeps
    no creation index. ``Value`` is base64, or null when empty (or left out of a txn answer)."""
    seq = record.seq or 0
    value = base64.b64encode(record.value).decode("ascii") if with_value and record.value else None
    return {
        "LockIndex": 0,
        "Key": consul_name(record.key),
        "Flags": record.flags,
        "Value": value,
        "CreateIndex": seq,
        "ModifyIndex": seq,
    }


def consul_json(document: Any, status: int = 200) -> Response:
    """A JSON answer (the mount adds the index headers)."""
    return Response(status, json_bytes(document), dict(JSON_HEADERS))

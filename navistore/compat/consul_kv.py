"""Consul's ``/v1/kv/<key>``: GET (one key, ``?recurse``, ``?keys&separator=``, ``?raw``,
blocking), PUT (``?cas=``, ``?flags=``) and DELETE (``?recurse``, ``?cas=``), over the Store.

Listings are read a page at a time and bounded: ``?recurse`` answers at most
:data:`MAX_RECURSE_KEYS` entries and :data:`MAX_RECURSE_BYTES` bytes of values, ``?keys`` at most
:data:`MAX_LIST_KEYS` names; past a bound the answer is a 400 saying so (Consul has no bound: it
holds the whole tree in memory), never an unbounded answer.
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request

from navistore.compat.consul_base import (
    INDEX_HEADER,
    MAX_FLAGS,
    ConsulContext,
    ConsulError,
    bare_flag,
    consul_json,
    consul_name,
    entry_of,
    native_key,
    native_prefix,
    store_index,
    uint_arg,
)
from navistore.compat.consul_blocking import blocking_arg, wait_for_change
from navistore.record import Record
from navistore.store import Conflict, NotFound, PreconditionFailed, Store
from navistore.tokens import ADMIN, READ, WRITE, Caller
from navistore.web.access import Need
from navistore.web.errors import TooLarge
from navistore.web.params import query, query_arg, request_body
from navistore.web.responses import VALUE_POLICY, Response

__all__ = [
    "MAX_LIST_KEYS",
    "MAX_RECURSE_BYTES",
    "MAX_RECURSE_KEYS",
    "ConsulKV",
    "delete_value",
    "put_value",
]

#: The most entries one ``?recurse`` answer holds, and the most bytes of values.
MAX_RECURSE_KEYS = 10_000
MAX_RECURSE_BYTES = 32 * 1024 * 1024
#: The most names one ``?keys`` answer holds (rolled-up ``dir/`` entries count as one each).
MAX_LIST_KEYS = 10_000
#: Records read per page while listing.
_PAGE = 500
#: Sorts after every character a key may hold: listing after ``dir/`` + this skips ``dir/``.
_PAST = "\U0010ffff"


def _refusing_sessions(request: Request) -> None:
    for name in ("acquire", "release"):
        if name in query(request):
            raise ConsulError(
                400,
                f"?{name}= needs Consul sessions and locks, which Navistore does not have: "
                "use ?cas= for conditional writes",
            )


async def put_value(
    store: Store, key: str, value: bytes, *, flags: int = 0, cas: int | None = None
) -> bool:
    """Write ``value`` (with ``flags``) to the canonical ``key``; with ``cas``, only if the
    key's ModifyIndex (its seq) is ``cas`` (0: only if absent). Tell whether it was written.

    The check and the write are one conditional write of the Store (``if_match`` on the
    version that was checked), so a write racing in between makes this one fail, as in Consul.
    """
    try:
        if cas is None:
            await store.put(key, value, flags=flags)
        elif cas == 0:
            await store.put(key, value, create_only=True, flags=flags)
        else:
            current = await store.get(key)
            if current is None or current.seq != cas:
                return False
            await store.put(key, value, if_match=current.stamp.encode(), flags=flags)
    except (Conflict, PreconditionFailed):
        return False
    return True


async def delete_value(store: Store, key: str, *, cas: int | None = None) -> bool:
    """Delete the canonical ``key``; with ``cas``, only if its ModifyIndex is ``cas`` (0 never
    deletes a key that exists). An absent key counts as deleted (Consul answers ``true``)."""
    try:
        if cas is None:
            await store.remove(key)
            return True
        current = await store.get(key)
        if current is None:
            return True
        if cas == 0 or current.seq != cas:
            return False
        await store.remove(key, if_match=current.stamp.encode())
    except NotFound:
        return True
    except PreconditionFailed:
        return False
    return True


async def records_under(
    store: Store, prefixes: tuple[str, ...], *, max_keys: int, max_bytes: int, what: str
) -> list[Record]:
    """Every live record under the disjoint ``prefixes``, in key order, read a page at a time;
    a 400 naming ``what`` past ``max_keys`` records or ``max_bytes`` bytes of values."""
    found: list[Record] = []
    size = 0
    for prefix in prefixes:
        after: str | None = None
        while True:
            page = await store.list(prefix, after=after, limit=_PAGE)
            found.extend(page.records)
            size += sum(len(record.value) for record in page.records)
            if len(found) > max_keys or size > max_bytes:
                raise ConsulError(
                    400,
                    f"{what} holds more than {max_keys} keys or {max_bytes} bytes of values, "
                    "this node's limit for one answer: read it in parts (list them with "
                    "?keys&separator=/)",
                )
            if page.next is None:
                break
            after = page.next
    return found


async def key_names(
    store: Store, asked: str, prefixes: tuple[str, ...], separator: str | None
) -> list[str]:
    """Consul's names of the keys under the disjoint ``prefixes`` (inside the prefix ``asked``),
    rolled up to ``dir<separator>`` past the first separator after ``asked``; at most
    :data:`MAX_LIST_KEYS` (then a 400). A rolled-up directory is skipped whole: listing goes on
    after it, so a tree of a million keys under one directory costs one entry."""
    names: list[str] = []
    for prefix in prefixes:
        after: str | None = None
        while True:
            page = await store.list(prefix, after=after, limit=_PAGE)
            skipped_to: str | None = None
            for record in page.records:
                rest = record.key[len(asked) :]
                cut = rest.find(separator) if separator else -1
                if cut < 0:
                    names.append(consul_name(record.key))
                else:
                    folder = asked + rest[: cut + len(separator or "")]
                    if not names or names[-1] != consul_name(folder):
                        names.append(consul_name(folder))
                    skipped_to = folder + _PAST
                if len(names) > MAX_LIST_KEYS:
                    raise ConsulError(
                        400,
                        f"the keys under {consul_name(asked)!r} are more than {MAX_LIST_KEYS}, "
                        "this node's limit for one answer: list a narrower prefix, or use "
                        "?separator=/",
                    )
                if skipped_to is not None:
                    break
            if skipped_to is not None:
                after = skipped_to
            elif page.next is None:
                break
            else:
                after = page.next
    return names


class ConsulKV:
    """The handlers of ``/v1/kv/<name>`` (``name`` is Consul's key, without a leading ``/``)."""

    def __init__(self, context: ConsulContext) -> None:
        self.context = context
        self.store = context.store

    async def get(self, request: Request, name: str, caller: Caller) -> Response:
        """One key, or with ``?recurse`` / ``?keys`` the keys under a prefix; blocking with
        ``?index=``."""
        blocking = blocking_arg(request)
        if bare_flag(request, "recurse") or bare_flag(request, "keys"):
            prefix = native_prefix(self.store, name)
            self.context.access.check(request, caller, Need(READ, None))
            seen = caller.visible(prefix)
            if blocking is not None:
                hub = self.context.watch_hub
                await wait_for_change(self.store, hub, prefix, blocking, exact=False, seen=seen)
            index = store_index(self.store)
            found: list[Any]
            if bare_flag(request, "keys"):
                separator = query_arg(request, "separator") or None
                found = await key_names(self.store, prefix, seen, separator)
            else:
                records = await records_under(
                    self.store,
                    seen,
                    max_keys=MAX_RECURSE_KEYS,
                    max_bytes=MAX_RECURSE_BYTES,
                    what=f"the tree under {name!r}",
                )
                found = [entry_of(record) for record in records]
            return self._found(found, index)
        key = native_key(self.store, name)
        self.context.access.check(request, caller, Need(READ, key))
        if blocking is not None:
            hub = self.context.watch_hub
            await wait_for_change(self.store, hub, key, blocking, exact=True, seen=key)
        index = store_index(self.store)
        record = await self.store.get(key)
        if record is None:
            raise ConsulError(404, "", {INDEX_HEADER: b"%d" % index})
        if bare_flag(request, "raw"):
            headers = {
                INDEX_HEADER: b"%d" % index,
                b"Content-Type": record.content_type.encode("latin-1", "replace"),
                b"X-Content-Type-Options": b"nosniff",
                b"Content-Security-Policy": VALUE_POLICY,
            }
            return Response(200, record.value, headers)
        return self._found([entry_of(record)], index)

    @staticmethod
    def _found(found: list[Any], index: int) -> Response:
        if not found:
            raise ConsulError(404, "", {INDEX_HEADER: b"%d" % index})
        response = consul_json(found)
        response.headers[INDEX_HEADER] = b"%d" % index
        return response

    async def put(self, request: Request, name: str, caller: Caller) -> Response:
        """Store the body as the key's value: ``true``, or ``false`` when ``?cas=`` failed."""
        _refusing_sessions(request)
        key = native_key(self.store, name)
        self.context.access.check(request, caller, Need(WRITE, key, True))
        flags = uint_arg(request, "flags", "flags", MAX_FLAGS) or 0
        cas = uint_arg(request, "cas", "cas index")
        limit = self.context.max_value_size
        try:
            value = request_body(request, limit)
        except TooLarge:
            raise ConsulError(413, f"Value exceeds {limit} byte limit") from None
        written = await put_value(self.store, key, value, flags=flags, cas=cas)
        return consul_json(written)

    async def delete(self, request: Request, name: str, caller: Caller) -> Response:
        """Delete the key, or with ``?recurse`` every key under the prefix: ``true``, or
        ``false`` when ``?cas=`` failed."""
        cas = uint_arg(request, "cas", "cas index")
        if bare_flag(request, "recurse"):
            if cas is not None:
                raise ConsulError(400, "Conflicting flags: ?cas= cannot be used with ?recurse")
            prefix = native_prefix(self.store, name)
            need = Need(ADMIN, None, True) if prefix == "/" else Need(WRITE, prefix, True)
            self.context.access.check(request, caller, need)
            await self.store.delete_prefix(prefix)
            return consul_json(True)
        key = native_key(self.store, name)
        self.context.access.check(request, caller, Need(WRITE, key, True))
        return consul_json(await delete_value(self.store, key, cas=cas))

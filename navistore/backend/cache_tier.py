"""``cache:SIZE:URL``: a bounded, byte-sized LRU of records in front of any backend.

It is :class:`~navistore.backend.record_cache.RecordCache` (the cache a sqlite node gets by
itself), chosen by URL so that it can sit in front of any backend, and kept correct when the
backend has writers other than this node:

- Its own writes invalidate it, exactly (see :mod:`~navistore.backend.record_cache`).
- A backend other nodes write too (several nodes over one PostgreSQL database) and that reports
  their writes (``IExternalWrites.subscribe_external``): every write reported drops its key, and
  a read under way when it came does not fill the cache, so staleness is bounded by the
  notification's delay.
- A backend only this process writes (``memory:``, ``sqlite:`` — whose file the node holds —
  and ``shards:`` of them) needs nothing more: every change goes through the cache.
- Any other backend (``http://``, a PostgreSQL backend without notifications, a third-party
  one) is refused unless the URL bounds staleness itself with ``max-age=SECONDS``: everything
  cached is then forgotten every ``max-age`` seconds, so no read answers a record older than
  that (plus the read's own time).

It provides exactly the optional interfaces of the backend behind it: over one without
:class:`~navistore.interfaces.IImmediateReads` (PostgreSQL) it has none either, since the
contract wants ``peek`` of a key never written answered at once, which only the backend knows.
"""

from __future__ import annotations

from typing import Any, Callable

from zope.interface import Interface, implementer_only

from navistore import interfaces
from navistore.backend import BackendURL, BackendURLError, check_backend, open_backend
from navistore.backend.composite_url import parse_cache_url
from navistore.backend.record_cache import RecordCache
from navistore.interfaces import IStorageBackend
from navistore.record import Record

__all__ = ["SINGLE_WRITER_KINDS", "CacheTier", "check_cache", "open_cache"]

#: Backend kinds no one but this process writes: a cache over them sees every change.
SINGLE_WRITER_KINDS = frozenset({"memory", "sqlite", "shards"})


def _external_writes_interface() -> type[Interface] | None:
    """``IExternalWrites`` if this version of the contract has it (it reports writes made by
    other nodes over the same storage); None before it existed."""
    found: type[Interface] | None = getattr(interfaces, "IExternalWrites", None)
    return found


@implementer_only(IStorageBackend)
class CacheTier(RecordCache):
    """A :class:`RecordCache` chosen by URL, invalidated by other writers' writes too.

    :param backend: the backend behind the cache (it is closed with the cache).
    :param max_bytes: the bound, counted as :func:`~navistore.backend.record_cache.entry_size`.
    :param max_age: forget everything this often, in seconds (None: never).
    :param call_later: schedules the forgetting (``reactor.callLater``); needed with
        ``max_age``.
    :raises BackendURLError: staleness would be unbounded (see the module's docstring).
    """

    def __init__(
        self,
        backend: IStorageBackend,
        max_bytes: int,
        *,
        max_age: float | None = None,
        call_later: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(backend, max_bytes)
        self.max_age = max_age
        self._call_later = call_later
        self._expiry_call: Any = None
        self.follows_external_writes = False
        external = _external_writes_interface()
        if external is not None and external.providedBy(backend):
            subscribe: Callable[..., Any] = backend.subscribe_external  # type: ignore[attr-defined]
            subscribe(self._external_write)
            self.follows_external_writes = True
        elif max_age is None and getattr(backend, "kind", None) not in SINGLE_WRITER_KINDS:
            raise BackendURLError(
                f"cache: over a {getattr(backend, 'kind', 'foreign')} backend, which others may "
                "write and which reports none of their writes, needs max-age=SECONDS "
                "(cache:SIZE,max-age=SECONDS:URL) to bound how stale a read may be"
            )
        if max_age is not None:
            if call_later is None:
                raise ValueError("a cache with max_age needs call_later")
            self._schedule_expiry()

    def _external_write(self, *reported: Any) -> None:
        """Another writer may have stored something (``IExternalWrites`` reports the newest
        seq): keep every read under way from filling the cache with what it read before. The
        keys themselves are dropped by the node's follower (:mod:`navistore.store.follow`),
        which reads what changed and calls :meth:`forget` with exactly those keys: the cache
        provides ``IExternalWrites`` as its backend does, so the node follows it. Keys or
        records reported (a backend reporting them itself) are dropped here at once."""
        self._applies += 1
        keys = [item.key if isinstance(item, Record) else item for item in reported]
        for key in keys:
            if isinstance(key, str):
                self._drop(key)

    def _schedule_expiry(self) -> None:
        assert self._call_later is not None and self.max_age is not None
        self._expiry_call = self._call_later(self.max_age, self._expire)

    def _expire(self) -> None:
        self._applies += 1  # a read under way may have read before the last max-age began
        self.clear()
        self._schedule_expiry()

    def close(self) -> Any:
        if self._expiry_call is not None and self._expiry_call.active():
            self._expiry_call.cancel()
        self._expiry_call = None
        return super().close()

    def __repr__(self) -> str:
        held = f"{len(self)} records, {self.bytes} of {self.max_bytes} bytes"
        return f"<CacheTier {held} of {self.backend!r}>"


def check_cache(url: BackendURL) -> None:
    """Refuse a ``cache:`` URL whose size, settings or inner URL would be refused."""
    parsed = parse_cache_url(url.text)
    check_backend(parsed.inner)


def open_cache(url: BackendURL, reactor: Any = None) -> CacheTier:
    """Make the :class:`CacheTier` a ``cache:`` URL names, opening its inner backend."""
    parsed = parse_cache_url(url.text)
    check_backend(parsed.inner)
    call_later = None
    if parsed.max_age is not None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        call_later = reactor.callLater
    inner = open_backend(parsed.inner)
    try:
        return CacheTier(inner, parsed.max_bytes, max_age=parsed.max_age, call_later=call_later)
    except BaseException:
        inner.close()
        raise

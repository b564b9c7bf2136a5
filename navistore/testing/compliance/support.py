"""What every clause of the compliance suite shares: the backend fixtures, data and helpers.

The contract is split into one mixin per clause (:mod:`navistore.testing.compliance`), and each
mixin subclasses :class:`BackendFixtures` so that it can also run on its own, against a backend
that only needs that clause checked. Everything the mixins have in common lives here, once:

* :class:`BackendFixtures`, the fixtures a suite overrides (``make_backend``,
  ``reopen_backend``) and those the tests use (``backend``, ``persistence``);
* :func:`make_stamp`, :func:`make_record` and :func:`make_tombstone`, deterministic test data
  that backend authors may use in their own tests too;
* the private helpers that call a backend the way every test does (store and check, observe
  everything, expect an errback, page through a listing).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Callable, ClassVar, Union

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred, maybeDeferred

from navistore.clock import Stamp
from navistore.errors import BackendClosed
from navistore.interfaces import IStorageBackend
from navistore.record import DEFAULT_CONTENT_TYPE, Record

if TYPE_CHECKING:
    #: What ``make_backend`` and the reopen callable may give: a backend, or one to come.
    BackendOrPending = Union[IStorageBackend, Deferred[IStorageBackend], Awaitable[IStorageBackend]]

    #: The ``reopen_backend`` fixture's value: ``reopen(old_backend)``, or None if not overridden.
    ReopenFactory = Union[Callable[[IStorageBackend], BackendOrPending], None]

__all__ = [
    "NODE_A",
    "NODE_B",
    "BackendFixtures",
    "Reopener",
    "make_record",
    "make_stamp",
    "make_tombstone",
]

#: Two fixed node ids; ``NODE_A < NODE_B``, so they break ties between otherwise equal stamps.
NODE_A = "00000000000000aa"
NODE_B = "00000000000000bb"

#: A limit larger than any test's data set, to read everything in one call.
_EVERYTHING = 100_000

_REOPEN_NOT_OVERRIDDEN = (
    "{suite} declares persistent = True but does not override the reopen_backend fixture: "
    "override reopen_backend to return a callable reopen(old_backend) -> a new backend over the "
    "same storage (or a Deferred of one), or declare persistent = False for a RAM-only backend"
)


def make_stamp(wall_ms: int, counter: int = 0, node_id: str = NODE_A) -> Stamp:
    """Return the stamp ``(wall_ms, counter, node_id)``; tests pick explicit, ordered values."""
    return Stamp(wall_ms, counter, node_id)


def make_record(
    key: str,
    value: bytes = b"value",
    wall_ms: int = 1000,
    *,
    counter: int = 0,
    node_id: str = NODE_A,
    content_type: str = DEFAULT_CONTENT_TYPE,
) -> Record:
    """Return a live record (no ``seq``) stamped ``(wall_ms, counter, node_id)``."""
    return Record(key, value, content_type, make_stamp(wall_ms, counter, node_id))


def make_tombstone(key: str, wall_ms: int = 1000, *, counter: int = 0) -> Record:
    """Return the tombstone deleting ``key`` as of ``(wall_ms, counter, NODE_A)``."""
    return Record.tombstone(key, make_stamp(wall_ms, counter))


async def _resolve(value: BackendOrPending | None, source: str) -> IStorageBackend:
    """Return a backend handed over plainly, as a Deferred or as any other awaitable."""
    if isinstance(value, Deferred) or inspect.isawaitable(value):
        value = await value
    if value is None:
        pytest.fail(f"{source} gave None instead of a backend")
    return value


async def _close_quietly(backend: IStorageBackend) -> None:
    """Close ``backend``, accepting one that is closed already."""
    with contextlib.suppress(BackendClosed):
        await maybeDeferred(backend.close)


async def _snapshot(backend: IStorageBackend) -> tuple[list[Record], list[Record], int]:
    """Everything a test can observe of the stored records: all of them, the feed, last_seq."""
    records = await backend.scan("/", limit=_EVERYTHING, include_deleted=True)
    feed = await backend.changes(0, limit=_EVERYTHING)
    return records, feed, await backend.last_seq()


async def _failure(call: Callable[[], object], expected: type[Exception]) -> Exception:
    """Return the error ``call()``'s Deferred fails with; fail the test unless it is ``expected``.

    A synchronous exception breaks the contract (failures travel as errbacks), and so does a
    Deferred that fires with a result.
    """
    try:
        result = call()
    except Exception as exc:
        pytest.fail(f"raised {exc!r} synchronously; failures must arrive as errbacks")
    if not isinstance(result, Deferred):
        pytest.fail(f"returned {result!r}, not a Deferred")
    try:
        outcome = await result
    except expected as exc:
        return exc
    except Exception as exc:
        pytest.fail(f"failed with {exc!r} instead of {expected.__name__}")
    pytest.fail(f"fired with {outcome!r} instead of failing with {expected.__name__}")


async def _store(backend: IStorageBackend, *records: Record) -> list[Record]:
    """Apply ``records`` one after the other, checking that each was stored; return them."""
    stored = []
    for record in records:
        result = await backend.apply(record)
        assert result is not None, f"apply({record!r}) was refused on a fresh key or newer stamp"
        stored.append(result)
    return stored


async def _get_stored(backend: IStorageBackend, key: str) -> Record:
    """``get`` a key the test stored (a record or a tombstone); fail the test if it is None."""
    record = await backend.get(key)
    assert record is not None, f"get({key!r}) fired with None, but the test stored that key"
    return record


def _seq(record: Record | None) -> int:
    """The seq of a record the backend stored; fail the test if it was not stored or has none."""
    assert record is not None, "the record was not stored"
    assert record.seq is not None, f"{record!r} was stored without a seq"
    return record.seq


async def _fired_with(result: Awaitable[object]) -> object:
    """What ``result`` fires with, as a plain value.

    The contract says ``reset``, ``set_meta`` and ``close`` fire with None, and checking it means
    looking at a value their ``Deferred[None]`` type says cannot be used (mypy refuses it).
    """
    return await result


async def _page_through_scan(
    backend: IStorageBackend, prefix: str, limit: int, include_deleted: bool = False
) -> list[list[Record]]:
    """Read a prefix page by page (``after`` = last key seen) until an empty page."""
    pages: list[list[Record]] = []
    after: str | None = None
    for _ in range(10_000):
        page = await backend.scan(prefix, after=after, limit=limit, include_deleted=include_deleted)
        if not page:
            return pages
        pages.append(page)
        after = page[-1].key
    pytest.fail("scan paging did not end; is `after` ignored?")


async def _page_through_changes(
    backend: IStorageBackend, since: int, limit: int
) -> list[list[Record]]:
    """Read the change feed page by page (``since`` = last seq seen) until an empty page."""
    pages: list[list[Record]] = []
    for _ in range(10_000):
        page = await backend.changes(since, limit=limit)
        if not page:
            return pages
        pages.append(page)
        last = page[-1].seq
        assert last is not None, f"changes listed {page[-1]!r} without its seq"
        since = last
    pytest.fail("changes paging did not end; is `since` ignored?")


class Reopener:
    """Closes a backend and opens a new one over the same storage, for persistence tests.

    Made by the ``persistence`` fixture from the suite's ``reopen_backend`` fixture. Every backend
    it opens is closed when the test ends.
    """

    def __init__(
        self,
        factory: ReopenFactory,
        opened: list[IStorageBackend],
        suite: str,
    ) -> None:
        self._factory = factory
        self._opened = opened
        self._suite = suite

    async def reopen(self, old: IStorageBackend) -> IStorageBackend:
        """Close ``old``, then return a new backend over its storage."""
        if self._factory is None:
            pytest.fail(_REOPEN_NOT_OVERRIDDEN.format(suite=self._suite))
        await _close_quietly(old)
        new = await _resolve(self._factory(old), "reopen_backend's callable")
        self._opened.append(new)
        return new


# Example tables. Each row is one clause or one trap a real backend fell into somewhere; a
# table lives with the clause that uses it, and here when two clauses share it.

#: Every call but close, with arguments, for the after-close and returns-a-Deferred tables.
_CALLS = [
    pytest.param("get", ("/k",), id="get"),
    pytest.param("apply", (make_record("/k", wall_ms=5000),), id="apply"),
    pytest.param("scan", ("/",), id="scan"),
    pytest.param("changes", (0,), id="changes"),
    pytest.param("last_seq", (), id="last_seq"),
    pytest.param("purge_tombstones", (10,), id="purge_tombstones"),
    pytest.param("reset", (), id="reset"),
    pytest.param("get_meta", ("name",), id="get_meta"),
    pytest.param("set_meta", ("name", "value"), id="set_meta"),
]


class BackendFixtures:
    """The fixtures of the suite: those a subclass overrides and those the tests use.

    The base of every clause's mixin, so that each clause holds only its tests; see
    :class:`~navistore.testing.compliance.BackendComplianceTests` for how to override them.
    """

    #: Whether data survives closing and reopening the storage; False skips persistence tests.
    persistent: ClassVar[bool] = True

    # -- fixtures a subclass overrides ------------------------------------------------------

    @pytest.fixture
    def make_backend(self) -> BackendOrPending:
        """Give a fresh, empty backend; every subclass must override this fixture."""
        pytest.fail(
            f"{type(self).__name__} must override the make_backend fixture to give a fresh, "
            "empty backend (plainly, as a Deferred, from a yield fixture or an async fixture); "
            "see navistore.testing.BackendComplianceTests"
        )

    @pytest.fixture
    def reopen_backend(self) -> ReopenFactory:
        """Give ``reopen(old_backend) -> backend``; persistent backends override this fixture."""
        return None

    # -- fixtures the tests use ---------------------------------------------------------------

    @pytest.fixture
    def opened_backends(self) -> list[IStorageBackend]:
        """Every backend the current test opened; the ``backend`` fixture closes them all."""
        return []

    @pytest_twisted.async_yield_fixture
    async def backend(
        self, make_backend: BackendOrPending | None, opened_backends: list[IStorageBackend]
    ) -> AsyncIterator[IStorageBackend]:
        """The backend under test, made by ``make_backend``, closed when the test ends."""
        first = await _resolve(make_backend, "the make_backend fixture")
        opened_backends.append(first)
        yield first
        for opened in reversed(opened_backends):
            await _close_quietly(opened)

    @pytest.fixture
    def persistence(
        self,
        backend: IStorageBackend,
        reopen_backend: ReopenFactory,
        opened_backends: list[IStorageBackend],
    ) -> Reopener:
        """Reopen the storage of ``backend``; skips the test for a RAM-only backend."""
        if not self.persistent:
            kind = getattr(backend, "kind", type(backend).__name__)
            pytest.skip(f"not applicable: {kind} declares persistent = False")
        return Reopener(reopen_backend, opened_backends, type(self).__name__)

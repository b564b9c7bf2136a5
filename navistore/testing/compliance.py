"""The storage backend contract as a test suite every backend runs.

:class:`BackendComplianceTests` checks, clause by clause, the contract written in the docstrings of
:class:`~navistore.interfaces.IStorageBackend`. It is a pytest mixin built on pytest-twisted: every
backend in this repository subclasses it, and so does any third-party backend, so that "works with
Navistore" means the same thing for all of them.

The helpers :func:`make_stamp`, :func:`make_record` and :func:`make_tombstone` build deterministic
test data; backend authors may use them in their own backend-specific tests.
"""

from __future__ import annotations

import contextlib
import inspect
import random
from collections.abc import AsyncIterator
from typing import Any, Callable, ClassVar

import attrs
import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from zope.interface.verify import verifyObject

from navistore.clock import Stamp
from navistore.errors import BackendClosed, InvalidRecord
from navistore.interfaces import ABSENT, ANY, Expectation, IStorageBackend
from navistore.record import DEFAULT_CONTENT_TYPE, Record

__all__ = [
    "NODE_A",
    "NODE_B",
    "BackendComplianceTests",
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


async def _resolve(value: Any, source: str) -> Any:
    """Return a backend handed over plainly, as a Deferred or as any other awaitable."""
    if isinstance(value, Deferred) or inspect.isawaitable(value):
        value = await value
    if value is None:
        pytest.fail(f"{source} gave None instead of a backend")
    return value


async def _close_quietly(backend: Any) -> None:
    """Close ``backend``, accepting one that is closed already."""
    with contextlib.suppress(BackendClosed):
        await maybeDeferred(backend.close)


async def _snapshot(backend: Any) -> tuple[list[Record], list[Record], int]:
    """Everything a test can observe of the stored records: all of them, the feed, last_seq."""
    records = await backend.scan("/", limit=_EVERYTHING, include_deleted=True)
    feed = await backend.changes(0, limit=_EVERYTHING)
    return records, feed, await backend.last_seq()


async def _failure(call: Callable[[], Any], expected: type[Exception]) -> Exception:
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


async def _store(backend: Any, *records: Record) -> list[Record]:
    """Apply ``records`` one after the other, checking that each was stored; return them."""
    stored = []
    for record in records:
        result = await backend.apply(record)
        assert result is not None, f"apply({record!r}) was refused on a fresh key or newer stamp"
        stored.append(result)
    return stored


async def _page_through_scan(
    backend: Any, prefix: str, limit: int, include_deleted: bool = False
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


async def _page_through_changes(backend: Any, since: int, limit: int) -> list[list[Record]]:
    """Read the change feed page by page (``since`` = last seq seen) until an empty page."""
    pages: list[list[Record]] = []
    for _ in range(10_000):
        page = await backend.changes(since, limit=limit)
        if not page:
            return pages
        pages.append(page)
        since = page[-1].seq
    pytest.fail("changes paging did not end; is `since` ignored?")


class Reopener:
    """Closes a backend and opens a new one over the same storage, for persistence tests.

    Made by the ``persistence`` fixture from the suite's ``reopen_backend`` fixture. Every backend
    it opens is closed when the test ends.
    """

    def __init__(
        self,
        factory: Callable[[Any], Any] | None,
        opened: list[Any],
        suite: str,
    ) -> None:
        self._factory = factory
        self._opened = opened
        self._suite = suite

    async def reopen(self, old: Any) -> Any:
        """Close ``old``, then return a new backend over its storage."""
        if self._factory is None:
            pytest.fail(_REOPEN_NOT_OVERRIDDEN.format(suite=self._suite))
        await _close_quietly(old)
        new = await _resolve(self._factory(old), "reopen_backend's callable")
        self._opened.append(new)
        return new


# Example tables. Each row is one clause or one trap a real backend fell into somewhere.

#: Stamps newer than make_stamp(1000, 5, NODE_B), one per ordering rule.
_NEWER_STAMPS = [
    pytest.param(make_stamp(1001, 0, NODE_A), id="greater-wall-smaller-counter-and-node"),
    pytest.param(make_stamp(1000, 6, NODE_A), id="same-wall-greater-counter"),
    pytest.param(make_stamp(1000, 5, "00000000000000bc"), id="same-wall-counter-greater-node"),
]

#: Stamps older than make_stamp(1000, 5, NODE_B), one per ordering rule.
_OLDER_STAMPS = [
    pytest.param(
        make_stamp(999, 9, "ffffffffffffffff"), id="smaller-wall-greater-counter-and-node"
    ),
    pytest.param(make_stamp(1000, 4, "ffffffffffffffff"), id="same-wall-smaller-counter"),
    pytest.param(make_stamp(1000, 5, NODE_A), id="same-wall-counter-smaller-node"),
]

#: Keys for the prefix table: neighbours of ``/a`` in code point order, and a key whose
#: character lies above U+FFFF (a bound like ``prefix + "\uffff"`` would miss it).
_PREFIX_KEYS = [
    "/A/b",
    "/a",
    "/a-",
    "/a.b",
    "/a/b",
    "/a/c/d",
    "/a/\U0001f600",
    "/a0",
    "/ab",
    "/abc",
    "/b",
]

_PREFIX_TABLE = [
    pytest.param("/a/", ["/a/b", "/a/c/d", "/a/\U0001f600"], id="document-prefix"),
    pytest.param(
        "/a",
        ["/a", "/a-", "/a.b", "/a/b", "/a/c/d", "/a/\U0001f600", "/a0", "/ab", "/abc"],
        id="string-prefix",
    ),
    pytest.param("/", sorted(_PREFIX_KEYS), id="root-matches-all"),
    pytest.param("/a/c/", ["/a/c/d"], id="nested-document"),
    pytest.param("/a/b", ["/a/b"], id="key-is-its-own-prefix"),
    pytest.param("/ab", ["/ab", "/abc"], id="partial-segment"),
    pytest.param("/A", ["/A/b"], id="case-sensitive"),
    pytest.param("/c", [], id="no-match"),
]

#: Characters that are wildcards in SQL LIKE or GLOB patterns must match only themselves.
_WILDCARD_KEYS = [
    "/g*1",
    "/gh",
    "/p%q",
    "/pq",
    "/pxq",
    "/q?",
    "/qq",
    "/r[a]",
    "/ra",
    "/x_y",
    "/xzy",
]

_WILDCARD_TABLE = [
    pytest.param("/x_", ["/x_y"], id="underscore"),
    pytest.param("/p%", ["/p%q"], id="percent"),
    pytest.param("/g*", ["/g*1"], id="star"),
    pytest.param("/q?", ["/q?"], id="question-mark"),
    pytest.param("/r[", ["/r[a]"], id="bracket"),
]

_PAGE_SIZES = [1, 2, 3, 7, 36, 37, 38, 1000]

_VALUES = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x00", id="one-nul"),
    pytest.param(b"a\x00b", id="nul-inside"),
    pytest.param(b"\x00" * 10, id="only-nuls"),
    pytest.param(b"\xc3\x28\xff\xfe", id="invalid-utf8"),
    pytest.param(b"line\r\nline\n", id="line-endings"),
    pytest.param("\u00e9\U0001f600".encode(), id="utf8-text"),
]

_UNICODE_KEYS = [
    pytest.param("/\u00e9", id="latin"),
    pytest.param("/\u65e5\u672c\u8a9e/\u30ad\u30fc", id="cjk-segments"),
    pytest.param("/\U0001f600", id="emoji"),
    pytest.param("/family/\U0001f469\u200d\U0001f467\u200d\U0001f466", id="zwj-sequence"),
    pytest.param("/a b/c d", id="spaces"),
    pytest.param("/\u00dcn\u00efc\u00f6d\u00e9/\u00df", id="mixed"),
]

_KEYS_OF_1024_BYTES = [
    pytest.param("/" + "k" * 1023, id="ascii"),
    pytest.param("/" + "/".join(["segment"] * 127) + "/abcdefg", id="many-segments"),
    pytest.param("/" + "\u00e9" * 511 + "a", id="two-byte-chars"),
    pytest.param("/" + "\U0001f600" * 255 + "abc", id="four-byte-chars"),
]

_CONTENT_TYPES = [
    pytest.param(DEFAULT_CONTENT_TYPE, id="default"),
    pytest.param("text/plain; charset=utf-8", id="with-parameter"),
    pytest.param("Text/Plain;Charset=UTF-8", id="case-kept"),
    pytest.param('multipart/mixed; boundary="a b"', id="quoted-parameter"),
    pytest.param("application/vnd.example+json; version=2", id="vendor-type"),
    pytest.param("", id="empty"),
]

_META_VALUES = [
    pytest.param("", id="empty"),
    pytest.param("http://a:1,http://b:2", id="peer-list"),
    pytest.param('{"cursor": 42, "peer": "\u00e9\U0001f600"}', id="json-unicode"),
    pytest.param("line 1\nline 2\n" * 1000, id="long-multiline"),
]

_VALID = make_record("/k", b"v", 1000, counter=5, node_id=NODE_B)


def _malformed(**changes: Any) -> Record:
    """Return a valid record with ``changes`` made, bypassing type checks on purpose."""
    return attrs.evolve(_VALID, **changes)


#: Malformed records, each with the key ``/k`` where a key makes sense.
_MALFORMED = [
    pytest.param(_malformed(key="k"), id="no-leading-slash"),
    pytest.param(_malformed(key="/k/"), id="trailing-slash"),
    pytest.param(_malformed(key="/a//k"), id="empty-segment"),
    pytest.param(_malformed(key="/a/../k"), id="dot-dot"),
    pytest.param(_malformed(key=""), id="empty-key"),
    pytest.param(_malformed(key="/k\x00"), id="nul-in-key"),
    pytest.param(_malformed(value="text"), id="str-value"),
    pytest.param(_malformed(content_type=None), id="no-content-type"),
    pytest.param(_malformed(stamp=str(_VALID.stamp)), id="stamp-as-text"),
    pytest.param(_malformed(deleted=1), id="deleted-not-bool"),
    pytest.param(_malformed(deleted=True, content_type=""), id="tombstone-with-value"),
    pytest.param(_malformed(deleted=True, value=b""), id="tombstone-with-content-type"),
    pytest.param({"key": "/k", "value": b"v"}, id="not-a-record"),
    pytest.param(_malformed(chain=["00000000000000aa"]), id="chain-not-a-tuple"),
    pytest.param(_malformed(chain=("not-a-node-id",)), id="chain-with-bad-node-id"),
]

#: Chains a record may carry: none (a local write), one hop, several hops.
_CHAINS = [
    pytest.param((), id="local"),
    pytest.param((NODE_A,), id="one-hop"),
    pytest.param((NODE_A, NODE_B, "0123456789abcdef"), id="three-hops"),
]

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


class BackendComplianceTests:
    """The :class:`~navistore.interfaces.IStorageBackend` contract, as pytest-twisted tests.

    Subclass it in a module named ``test_*.py`` with a class named ``Test*`` and override the
    ``make_backend`` fixture; pytest then runs every contract test against your backend::

        import pytest

        from navistore.testing import BackendComplianceTests
        from mybackend import MyBackend


        class TestMyBackend(BackendComplianceTests):
            persistent = True  # the default; a RAM-only backend says False

            @pytest.fixture
            def make_backend(self, tmp_path):
                # A fresh, empty backend. Plain, yield and pytest_twisted async fixtures all
                # work, and the fixture may return a Deferred of the backend.
                return MyBackend(tmp_path / "store")

            @pytest.fixture
            def reopen_backend(self, tmp_path):
                # Only for persistent backends: a callable taking the old (already closed)
                # backend and returning a new one over the same storage, or a Deferred of it.
                return lambda old: MyBackend(tmp_path / "store")

    A backend that must be opened asynchronously uses a pytest-twisted async fixture; its code
    after ``yield`` runs once the suite has closed the backend::

            @pytest_twisted.async_yield_fixture
            async def make_backend(self, database_url):
                backend = await MyBackend.connect(database_url)
                yield backend
                await drop_tables(database_url)

    What the suite does with them:

    * It makes a fresh backend per test from ``make_backend`` and closes it (and every backend
      it reopened) when the test ends, tolerating one the test closed already. Cleanup after
      that (removing files, stopping a server) belongs in ``make_backend``'s own teardown.
    * ``persistent`` must equal the backend's own ``persistent`` attribute (a test checks it).
      When it is False the persistence tests are reported as skipped with ``not applicable``;
      when it is True and ``reopen_backend`` is not overridden, they fail and say so.
    * A persistence test closes the backend before calling the reopen callable, so the
      callable may reopen files or connections the old one held.

    The contract, in brief: every method returns a Deferred and reports failures as errbacks;
    ``apply`` is last-writer-wins by stamp with an optional expectation (ANY, ABSENT or a stamp),
    atomic per call; a backend assigns node-local ``seq`` numbers that start at 1, strictly
    increase and are never reused, not after ``purge_tombstones``, ``reset`` or reopening;
    ``reset`` removes records and tombstones but keeps meta data and the seq counter; keys sort
    in code point order; values are arbitrary bytes.
    """

    #: Whether data survives closing and reopening the storage; False skips persistence tests.
    persistent: ClassVar[bool] = True

    # -- fixtures a subclass overrides ------------------------------------------------------

    @pytest.fixture
    def make_backend(self) -> Any:
        """Give a fresh, empty backend; every subclass must override this fixture."""
        pytest.fail(
            f"{type(self).__name__} must override the make_backend fixture to give a fresh, "
            "empty backend (plainly, as a Deferred, from a yield fixture or an async fixture); "
            "see navistore.testing.BackendComplianceTests"
        )

    @pytest.fixture
    def reopen_backend(self) -> Callable[[Any], Any] | None:
        """Give ``reopen(old_backend) -> backend``; persistent backends override this fixture."""
        return None

    # -- fixtures the tests use ---------------------------------------------------------------

    @pytest.fixture
    def opened_backends(self) -> list[Any]:
        """Every backend the current test opened; the ``backend`` fixture closes them all."""
        return []

    @pytest_twisted.async_yield_fixture
    async def backend(self, make_backend: Any, opened_backends: list[Any]) -> AsyncIterator[Any]:
        """The backend under test, made by ``make_backend``, closed when the test ends."""
        first = await _resolve(make_backend, "the make_backend fixture")
        opened_backends.append(first)
        yield first
        for opened in reversed(opened_backends):
            await _close_quietly(opened)

    @pytest.fixture
    def persistence(
        self,
        backend: Any,
        reopen_backend: Callable[[Any], Any] | None,
        opened_backends: list[Any],
    ) -> Reopener:
        """Reopen the storage of ``backend``; skips the test for a RAM-only backend."""
        if not self.persistent:
            kind = getattr(backend, "kind", type(backend).__name__)
            pytest.skip(f"not applicable: {kind} declares persistent = False")
        return Reopener(reopen_backend, opened_backends, type(self).__name__)

    # -- the interface itself -----------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_provides_storage_interface(self, backend: Any) -> None:
        """The backend provides IStorageBackend with every method and attribute it declares."""
        assert verifyObject(IStorageBackend, backend)

    @pytest_twisted.ensureDeferred
    async def test_declares_kind_and_persistence(self, backend: Any) -> None:
        """``kind`` is a short name, and ``persistent`` agrees with the suite's declaration.

        The suite's ``persistent = False`` skips the persistence tests, so it may only be said of
        a backend that itself admits to losing its data.
        """
        assert isinstance(backend.kind, str)
        assert backend.kind
        assert backend.persistent is self.persistent

    @pytest.mark.parametrize(
        ("method", "arguments"), [*_CALLS, pytest.param("close", (), id="close")]
    )
    @pytest_twisted.ensureDeferred
    async def test_every_method_returns_a_deferred(
        self, backend: Any, method: str, arguments: tuple[Any, ...]
    ) -> None:
        """Every method returns a Deferred (rather than a value or a coroutine)."""
        result = getattr(backend, method)(*arguments)
        assert isinstance(result, Deferred)
        await result

    # -- empty backend ----------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_get_missing_key_is_none(self, backend: Any) -> None:
        """``get`` of a key never stored fires with None."""
        assert await backend.get("/never/stored") is None

    @pytest_twisted.ensureDeferred
    async def test_fresh_backend_is_empty(self, backend: Any) -> None:
        """A fresh backend scans nothing, has no changes and a ``last_seq`` of 0."""
        assert await backend.scan("/", include_deleted=True) == []
        assert await backend.changes(0) == []
        assert await backend.last_seq() == 0

    # -- apply: create and replace ------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_create_returns_the_record_with_seq(self, backend: Any) -> None:
        """Storing a new key fires with the record as given plus its ``seq``, starting at 1."""
        record = make_record("/app/db/host", b"db1.example.com", content_type="text/plain")
        stored = await backend.apply(record)
        assert stored == record.with_seq(1)
        assert await backend.last_seq() == 1

    @pytest_twisted.ensureDeferred
    async def test_create_round_trips_every_field(self, backend: Any) -> None:
        """``get`` returns exactly what ``apply`` stored: key, value, type, stamp, flag, seq."""
        record = make_record("/app/db/port", b"5432", 1234, counter=7, node_id=NODE_B)
        stored = await backend.apply(record)
        fetched = await backend.get("/app/db/port")
        assert fetched == stored
        assert fetched.value == b"5432"
        assert fetched.content_type == DEFAULT_CONTENT_TYPE
        assert fetched.stamp == make_stamp(1234, 7, NODE_B)
        assert fetched.deleted is False
        assert isinstance(fetched.seq, int)

    @pytest.mark.parametrize("newer", _NEWER_STAMPS)
    @pytest_twisted.ensureDeferred
    async def test_newer_stamp_replaces(self, backend: Any, newer: Stamp) -> None:
        """A record whose stamp is greater (by wall, counter, then node id) replaces the stored
        one and gets a new, greater seq."""
        (old,) = await _store(backend, make_record("/k", b"old", 1000, counter=5, node_id=NODE_B))
        replacement = Record("/k", b"new", "text/plain", newer)
        stored = await backend.apply(replacement)
        assert stored is not None
        assert stored.seq > old.seq
        assert stored == replacement.with_seq(stored.seq)
        assert await backend.get("/k") == stored
        assert await backend.last_seq() == stored.seq

    @pytest.mark.parametrize("older", _OLDER_STAMPS)
    @pytest_twisted.ensureDeferred
    async def test_older_stamp_is_ignored(self, backend: Any, older: Stamp) -> None:
        """A record with a smaller stamp fires with None and changes nothing, not even
        ``last_seq``: last writer wins whatever the order of arrival."""
        await _store(backend, make_record("/k", b"kept", 1000, counter=5, node_id=NODE_B))
        before = await _snapshot(backend)
        assert await backend.apply(Record("/k", b"stale", "text/plain", older)) is None
        assert await _snapshot(backend) == before
        assert (await backend.get("/k")).value == b"kept"

    @pytest_twisted.ensureDeferred
    async def test_equal_stamp_is_idempotent(self, backend: Any) -> None:
        """Applying the stored record again fires with None and changes nothing."""
        record = make_record("/k", b"once", 2000)
        await _store(backend, record)
        before = await _snapshot(backend)
        assert await backend.apply(record) is None
        assert await _snapshot(backend) == before

    @pytest_twisted.ensureDeferred
    async def test_equal_stamp_with_other_value_is_ignored(self, backend: Any) -> None:
        """A different value under an equal stamp does not win: the stamp is the version."""
        await _store(backend, make_record("/k", b"first", 2000))
        before = await _snapshot(backend)
        assert await backend.apply(make_record("/k", b"second", 2000)) is None
        assert await _snapshot(backend) == before
        assert (await backend.get("/k")).value == b"first"

    @pytest_twisted.ensureDeferred
    async def test_apply_order_does_not_matter(self, backend: Any) -> None:
        """Applying the same records in two orders ends in the same winner (commutativity)."""
        versions = [make_record("/k", f"v{wall}".encode(), wall) for wall in (3, 1, 4, 2)]
        for record in versions:
            await backend.apply(record)
        for record in reversed(versions):
            await backend.apply(Record("/other", record.value, record.content_type, record.stamp))
        first, second = await backend.get("/k"), await backend.get("/other")
        assert first.value == second.value == b"v4"
        assert first.stamp == second.stamp == make_stamp(4)

    @pytest_twisted.ensureDeferred
    async def test_keys_are_independent(self, backend: Any) -> None:
        """A stamp only competes with the stored record of the same key."""
        await _store(backend, make_record("/a", b"a", 5000))
        stored = await backend.apply(make_record("/b", b"b", 1))
        assert stored is not None
        assert (await backend.get("/a")).value == b"a"
        assert (await backend.get("/b")).value == b"b"

    # -- apply: expectations -------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_absent_holds_on_missing_key(self, backend: Any) -> None:
        """``expect=ABSENT`` (create-only) stores a record for a key never stored."""
        stored = await backend.apply(make_record("/new", b"v"), ABSENT)
        assert stored is not None
        assert await backend.get("/new") == stored

    @pytest_twisted.ensureDeferred
    async def test_absent_holds_on_tombstone(self, backend: Any) -> None:
        """``expect=ABSENT`` stores over a tombstone: a deleted key counts as absent."""
        await _store(backend, make_tombstone("/k", 1000))
        stored = await backend.apply(make_record("/k", b"again", 2000), ABSENT)
        assert stored is not None
        assert await backend.get("/k") == stored
        assert stored.deleted is False

    @pytest_twisted.ensureDeferred
    async def test_absent_fails_on_live_key(self, backend: Any) -> None:
        """``expect=ABSENT`` on a live key fires with None and changes nothing, even with a
        newer stamp."""
        await _store(backend, make_record("/k", b"live", 1000))
        before = await _snapshot(backend)
        assert await backend.apply(make_record("/k", b"clobber", 9000), ABSENT) is None
        assert await _snapshot(backend) == before

    @pytest_twisted.ensureDeferred
    async def test_absent_still_needs_a_newer_stamp(self, backend: Any) -> None:
        """ABSENT holding is not enough: a record older than the tombstone is still ignored."""
        await _store(backend, make_tombstone("/k", 5000))
        before = await _snapshot(backend)
        assert await backend.apply(make_record("/k", b"old", 4000), ABSENT) is None
        assert await _snapshot(backend) == before

    @pytest_twisted.ensureDeferred
    async def test_stamp_expectation_holds_when_equal(self, backend: Any) -> None:
        """``expect=<stamp>`` (If-Match) stores when the live stored record has that stamp."""
        (old,) = await _store(backend, make_record("/k", b"v1", 1000))
        stored = await backend.apply(make_record("/k", b"v2", 2000), old.stamp)
        assert stored is not None
        assert stored.value == b"v2"
        assert await backend.get("/k") == stored

    @pytest.mark.parametrize(
        ("situation", "expected"),
        [
            pytest.param("live", make_stamp(999), id="older-than-stored"),
            pytest.param("live", make_stamp(1001), id="newer-than-stored"),
            pytest.param("live", make_stamp(1000, 0, NODE_B), id="same-time-other-node"),
            pytest.param("missing", make_stamp(1000), id="key-missing"),
            pytest.param("tombstone", make_stamp(1000), id="tombstone-with-that-stamp"),
        ],
    )
    @pytest_twisted.ensureDeferred
    async def test_stamp_expectation_fails(
        self, backend: Any, situation: str, expected: Stamp
    ) -> None:
        """``expect=<stamp>`` fires with None and changes nothing unless a *live* record with
        exactly that stamp is stored: not another stamp, not a missing key, not a tombstone."""
        if situation == "live":
            await _store(backend, make_record("/k", b"stored", 1000))
        elif situation == "tombstone":
            await _store(backend, make_tombstone("/k", 1000))
        await _store(backend, make_record("/unrelated", b"x", 1000))
        before = await _snapshot(backend)
        assert await backend.apply(make_record("/k", b"new", 5000), expected) is None
        assert await _snapshot(backend) == before

    @pytest_twisted.ensureDeferred
    async def test_stamp_expectation_still_needs_a_newer_stamp(self, backend: Any) -> None:
        """A matching stamp expectation is not enough: the record must also be newer."""
        (old,) = await _store(backend, make_record("/k", b"v1", 1000))
        before = await _snapshot(backend)
        assert await backend.apply(make_record("/k", b"v0", 500), old.stamp) is None
        assert await backend.apply(make_record("/k", b"v1b", 1000), old.stamp) is None
        assert await _snapshot(backend) == before

    @pytest.mark.parametrize("situation", ["missing", "live", "tombstone"])
    @pytest_twisted.ensureDeferred
    async def test_any_expectation_is_plain_last_writer_wins(
        self, backend: Any, situation: str
    ) -> None:
        """``expect=ANY`` stores a newer record whatever is stored: nothing, a live record or
        a tombstone."""
        if situation == "live":
            await _store(backend, make_record("/k", b"old", 1000))
        elif situation == "tombstone":
            await _store(backend, make_tombstone("/k", 1000))
        stored = await backend.apply(make_record("/k", b"new", 2000), ANY)
        assert stored is not None
        assert await backend.get("/k") == stored

    # -- tombstones --------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_tombstone_is_stored_and_returned_by_get(self, backend: Any) -> None:
        """A newer tombstone replaces a live record, gets a seq, and ``get`` returns it with
        ``deleted=True`` and no value."""
        (live,) = await _store(backend, make_record("/k", b"v", 1000))
        stored = await backend.apply(make_tombstone("/k", 2000))
        assert stored == make_tombstone("/k", 2000).with_seq(stored.seq)
        assert stored.seq > live.seq
        fetched = await backend.get("/k")
        assert fetched == stored
        assert fetched.deleted is True
        assert fetched.value == b""

    @pytest_twisted.ensureDeferred
    async def test_tombstone_for_unknown_key_is_stored(self, backend: Any) -> None:
        """A tombstone for a key never stored is kept, so a delete that arrives before the
        write it deletes still beats it."""
        await _store(backend, make_tombstone("/k", 2000))
        assert await backend.apply(make_record("/k", b"late", 1000)) is None
        assert (await backend.get("/k")).deleted is True

    @pytest_twisted.ensureDeferred
    async def test_scan_hides_tombstones_unless_asked(self, backend: Any) -> None:
        """``scan`` leaves tombstones out, and returns them in key order with
        ``include_deleted=True``."""
        await _store(
            backend,
            make_record("/d/a", b"a"),
            make_tombstone("/d/b"),
            make_record("/d/c", b"c"),
            make_tombstone("/d/d"),
        )
        assert [r.key for r in await backend.scan("/d/")] == ["/d/a", "/d/c"]
        everything = await backend.scan("/d/", include_deleted=True)
        assert [(r.key, r.deleted) for r in everything] == [
            ("/d/a", False),
            ("/d/b", True),
            ("/d/c", False),
            ("/d/d", True),
        ]

    @pytest_twisted.ensureDeferred
    async def test_changes_include_tombstones(self, backend: Any) -> None:
        """The change feed carries deletes as tombstones, so they replicate."""
        await _store(backend, make_record("/k", b"v", 1000))
        tombstone = await backend.apply(make_tombstone("/k", 2000))
        assert await backend.changes(0) == [tombstone]

    @pytest_twisted.ensureDeferred
    async def test_newer_write_resurrects_tombstoned_key(self, backend: Any) -> None:
        """A write newer than the tombstone brings the key back, visible to get and scan."""
        await _store(backend, make_record("/k", b"v1", 1000), make_tombstone("/k", 2000))
        stored = await backend.apply(make_record("/k", b"v2", 3000))
        assert stored is not None
        assert await backend.get("/k") == stored
        assert await backend.scan("/") == [stored]
        assert await backend.changes(0) == [stored]

    @pytest_twisted.ensureDeferred
    async def test_older_write_does_not_resurrect(self, backend: Any) -> None:
        """A write older than the tombstone is ignored: the delete wins."""
        await _store(backend, make_record("/k", b"v1", 1000), make_tombstone("/k", 3000))
        before = await _snapshot(backend)
        assert await backend.apply(make_record("/k", b"v2", 2000)) is None
        assert await _snapshot(backend) == before

    @pytest_twisted.ensureDeferred
    async def test_newer_tombstone_replaces_tombstone(self, backend: Any) -> None:
        """Deleting a deleted key again with a newer stamp stores the newer tombstone."""
        await _store(backend, make_tombstone("/k", 1000))
        stored = await backend.apply(make_tombstone("/k", 2000))
        assert stored is not None
        assert (await backend.get("/k")).stamp == make_stamp(2000)

    # -- scan ------------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_scan_returns_records_in_key_order(self, backend: Any) -> None:
        """``scan`` returns the stored records (seq included) in key order, whatever the order
        they were written in."""
        keys = [f"/order/{n:02d}" for n in range(30)]
        shuffled = list(keys)
        random.Random(7).shuffle(shuffled)
        stored = await _store(backend, *(make_record(key, key.encode()) for key in shuffled))
        by_key = {record.key: record for record in stored}
        assert await backend.scan("/order/") == [by_key[key] for key in keys]

    @pytest.mark.parametrize(("prefix", "expected"), _PREFIX_TABLE)
    @pytest_twisted.ensureDeferred
    async def test_scan_prefix_semantics(
        self, backend: Any, prefix: str, expected: list[str]
    ) -> None:
        """A prefix is a plain string prefix: ``/a/`` matches ``/a/b`` and ``/a/c/d`` but never
        ``/ab`` or ``/a``; ``/a`` matches ``/a``, ``/ab`` and ``/a/b``; ``/`` matches all."""
        await _store(backend, *(make_record(key) for key in _PREFIX_KEYS))
        assert [r.key for r in await backend.scan(prefix)] == expected

    @pytest.mark.parametrize(("prefix", "expected"), _WILDCARD_TABLE)
    @pytest_twisted.ensureDeferred
    async def test_scan_prefix_characters_are_literal(
        self, backend: Any, prefix: str, expected: list[str]
    ) -> None:
        """Characters that are wildcards in LIKE or GLOB patterns match only themselves."""
        await _store(backend, *(make_record(key) for key in _WILDCARD_KEYS))
        assert [r.key for r in await backend.scan(prefix)] == expected

    @pytest_twisted.ensureDeferred
    async def test_scan_limit(self, backend: Any) -> None:
        """``limit`` caps the result at the first ``limit`` matching records in key order."""
        await _store(backend, *(make_record(f"/l/{n}") for n in range(10)))
        assert [r.key for r in await backend.scan("/l/", limit=3)] == ["/l/0", "/l/1", "/l/2"]
        assert len(await backend.scan("/l/", limit=10)) == 10
        assert len(await backend.scan("/l/", limit=50)) == 10

    @pytest.mark.parametrize(
        ("after", "expected"),
        [
            pytest.param("/s/b", ["/s/c", "/s/d"], id="stored-key"),
            pytest.param("/s/bb", ["/s/c", "/s/d"], id="key-not-stored"),
            pytest.param("/r", ["/s/a", "/s/b", "/s/c", "/s/d"], id="before-the-prefix"),
            pytest.param("/s/d", [], id="last-key"),
            pytest.param("/t", [], id="beyond-the-prefix"),
        ],
    )
    @pytest_twisted.ensureDeferred
    async def test_scan_after(self, backend: Any, after: str, expected: list[str]) -> None:
        """``after`` keeps only keys strictly greater than it, still within the prefix; it
        need not be a stored key."""
        await _store(backend, *(make_record(key) for key in ["/r/z", "/s/a", "/s/b", "/s/c"]))
        await _store(backend, make_record("/s/d"), make_record("/t/a"))
        assert [r.key for r in await backend.scan("/s/", after=after)] == expected

    @pytest.mark.parametrize("page_size", _PAGE_SIZES)
    @pytest_twisted.ensureDeferred
    async def test_scan_pages_visit_every_key_once(self, backend: Any, page_size: int) -> None:
        """Paging with ``after`` = last key and a ``limit`` visits every live key under the
        prefix exactly once, in order, with full pages until the last; tombstones and keys
        outside the prefix interleaved with them do not disturb it."""
        live = [f"/p/{n:03d}" for n in range(37)]
        await _store(backend, *(make_record(key, key.encode()) for key in live))
        await _store(backend, *(make_tombstone(f"/p/{n:03d}x") for n in range(0, 37, 5)))
        await _store(backend, make_record("/o"), make_record("/p"), make_record("/q/000"))
        pages = await _page_through_scan(backend, "/p/", page_size)
        assert [r.key for page in pages for r in page] == live
        assert all(len(page) == page_size for page in pages[:-1])
        assert 0 < len(pages[-1]) <= page_size

    @pytest.mark.parametrize("page_size", [1, 4, 1000])
    @pytest_twisted.ensureDeferred
    async def test_scan_pages_with_tombstones(self, backend: Any, page_size: int) -> None:
        """Paging with ``include_deleted=True`` visits live records and tombstones once each."""
        keys = [f"/t/{n:02d}" for n in range(12)]
        for n, key in enumerate(keys):
            await _store(backend, make_tombstone(key) if n % 3 == 0 else make_record(key))
        pages = await _page_through_scan(backend, "/t/", page_size, include_deleted=True)
        rows = [r for page in pages for r in page]
        assert [r.key for r in rows] == keys
        assert [r.deleted for r in rows] == [n % 3 == 0 for n in range(12)]

    @pytest_twisted.ensureDeferred
    async def test_scan_orders_keys_by_code_point(self, backend: Any) -> None:
        """Keys sort by code point (which is UTF-8 byte order), not by locale or UTF-16: so
        ``/z`` < ``/é`` < ``/\uff21`` (fullwidth A) < ``/😀`` (U+1F600)."""
        expected = ["/Z", "/a", "/z", "/\u00e9", "/\uff21", "/\U0001f600"]
        shuffled = list(expected)
        random.Random(3).shuffle(shuffled)
        await _store(backend, *(make_record(key) for key in shuffled))
        assert [r.key for r in await backend.scan("/")] == expected

    @pytest_twisted.ensureDeferred
    async def test_scan_non_ascii_prefix(self, backend: Any) -> None:
        """Prefixes with non-ASCII characters match by code points like any other."""
        keys = ["/\u00e9", "/\u00e9/x", "/\u00e9t\u00e9", "/e", "/\u00ea", "/\U0001f600/a"]
        await _store(backend, *(make_record(key) for key in keys))
        matched = [r.key for r in await backend.scan("/\u00e9")]
        assert matched == ["/\u00e9", "/\u00e9/x", "/\u00e9t\u00e9"]
        assert [r.key for r in await backend.scan("/\U0001f600/")] == ["/\U0001f600/a"]

    # -- changes ---------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_changes_in_seq_order(self, backend: Any) -> None:
        """``changes`` lists records in seq order (the order they were stored), not key order."""
        stored = await _store(
            backend, make_record("/c"), make_record("/a"), make_tombstone("/d"), make_record("/b")
        )
        feed = await backend.changes(0)
        assert feed == stored
        assert [r.seq for r in feed] == sorted(r.seq for r in feed)

    @pytest_twisted.ensureDeferred
    async def test_changes_show_a_key_once_at_its_latest_seq(self, backend: Any) -> None:
        """A key changed several times appears once, as its latest record at its latest seq."""
        await _store(backend, make_record("/a", b"a1", 1), make_record("/b", b"b1", 1))
        await _store(backend, make_record("/a", b"a2", 2), make_record("/c", b"c1", 1))
        latest = await backend.apply(make_record("/a", b"a3", 3))
        feed = await backend.changes(0)
        assert [(r.key, r.value) for r in feed] == [("/b", b"b1"), ("/c", b"c1"), ("/a", b"a3")]
        assert feed[-1] == latest
        assert latest.seq == await backend.last_seq()

    @pytest.mark.parametrize(
        ("position", "expected_keys"),
        [
            pytest.param(None, ["/1", "/2", "/3", "/4", "/5"], id="since-zero"),
            pytest.param(0, ["/2", "/3", "/4", "/5"], id="since-first"),
            pytest.param(2, ["/4", "/5"], id="since-middle"),
            pytest.param(4, [], id="since-last"),
        ],
    )
    @pytest_twisted.ensureDeferred
    async def test_changes_since(
        self, backend: Any, position: int | None, expected_keys: list[str]
    ) -> None:
        """``changes(since)`` returns exactly the records with ``seq > since``."""
        stored = await _store(backend, *(make_record(f"/{n}") for n in range(1, 6)))
        since = 0 if position is None else stored[position].seq
        assert [r.key for r in await backend.changes(since)] == expected_keys

    @pytest_twisted.ensureDeferred
    async def test_changes_since_beyond_last_seq(self, backend: Any) -> None:
        """A ``since`` beyond ``last_seq`` (a reader ahead of a reset node) gets nothing."""
        await _store(backend, make_record("/a"), make_record("/b"))
        assert await backend.changes(await backend.last_seq() + 100) == []

    @pytest_twisted.ensureDeferred
    async def test_changes_limit(self, backend: Any) -> None:
        """``limit`` caps the feed at the first ``limit`` changes in seq order."""
        stored = await _store(backend, *(make_record(f"/k{n}") for n in range(10)))
        assert await backend.changes(0, limit=4) == stored[:4]
        assert await backend.changes(stored[5].seq, limit=2) == stored[6:8]

    @pytest.mark.parametrize("page_size", [1, 3, 10, 1000])
    @pytest_twisted.ensureDeferred
    async def test_changes_pages_by_last_seq(self, backend: Any, page_size: int) -> None:
        """Paging with ``since`` = the last seq seen reads every key's latest record exactly
        once, in seq order, tombstones included."""
        for wall in (1, 2, 3):
            for n in range(10):
                key = f"/f/{(n * 7) % 10}"
                if (n + wall) % 4 == 0:
                    await _store(backend, make_tombstone(key, wall))
                else:
                    await _store(backend, make_record(key, f"{key}@{wall}".encode(), wall))
        latest = sorted(await backend.scan("/", include_deleted=True), key=lambda r: r.seq)
        pages = await _page_through_changes(backend, 0, page_size)
        rows = [r for page in pages for r in page]
        assert rows == latest
        assert any(r.deleted for r in rows)
        assert all(len(page) == page_size for page in pages[:-1])

    @pytest_twisted.ensureDeferred
    async def test_changes_rewritten_key_moves_past_a_reader(self, backend: Any) -> None:
        """A key rewritten after a reader's position shows up again, at its new seq, so a
        reader following the feed by ``since`` never misses its latest version."""
        first = await _store(backend, *(make_record(f"/m/{n}", b"v1", 1) for n in range(4)))
        position = first[1].seq
        rewritten = await backend.apply(make_record("/m/0", b"v2", 2))
        assert [(r.key, r.value) for r in await backend.changes(position)] == [
            ("/m/2", b"v1"),
            ("/m/3", b"v1"),
            ("/m/0", b"v2"),
        ]
        assert (await backend.changes(position))[-1] == rewritten

    # -- seq ---------------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_seqs_strictly_increase(self, backend: Any) -> None:
        """Every stored record (create, replace, tombstone) gets a seq greater than all before,
        and ``last_seq`` is the greatest one assigned."""
        stored = await _store(
            backend,
            make_record("/a", b"", 1),
            make_record("/b", b"", 1),
            make_record("/a", b"", 2),
            make_tombstone("/b", 2),
            make_record("/b", b"", 3),
        )
        seqs: list[Any] = [r.seq for r in stored]
        assert all(isinstance(seq, int) and not isinstance(seq, bool) for seq in seqs)
        assert seqs[0] >= 1
        assert all(a < b for a, b in zip(seqs, seqs[1:]))
        assert await backend.last_seq() == seqs[-1]

    @pytest_twisted.ensureDeferred
    async def test_seq_not_reused_after_purging_the_newest_record(self, backend: Any) -> None:
        """Purging the tombstone holding the greatest seq does not lower ``last_seq``, and the
        next record gets a greater seq."""
        await _store(backend, make_record("/a"), make_record("/b"))
        newest = await backend.apply(make_tombstone("/b", 2000))
        assert await backend.purge_tombstones(newest.seq + 1) == 1
        assert await backend.last_seq() == newest.seq
        following = await backend.apply(make_record("/c"))
        assert following.seq > newest.seq

    @pytest_twisted.ensureDeferred
    async def test_seq_not_reused_after_reset(self, backend: Any) -> None:
        """``reset`` keeps the seq counter: ``last_seq`` is unchanged and the next record gets
        a greater seq than any before the reset."""
        stored = await _store(backend, make_record("/a"), make_record("/b"), make_tombstone("/c"))
        assert await backend.reset() is None
        assert await backend.last_seq() == stored[-1].seq
        following = await backend.apply(make_record("/a", b"after reset"))
        assert following.seq > stored[-1].seq

    # -- values, keys, content types -----------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_every_byte_value_in_one_value(self, backend: Any) -> None:
        """A value holding all 256 byte values, NUL included, round-trips unchanged."""
        value = bytes(range(256)) * 2
        await _store(backend, make_record("/bytes", value))
        assert (await backend.get("/bytes")).value == value

    @pytest_twisted.ensureDeferred
    async def test_every_byte_value_as_its_own_value(self, backend: Any) -> None:
        """Each of the 256 one-byte values round-trips on its own (``\\x00`` is not empty)."""
        await _store(backend, *(make_record(f"/byte/{n:03d}", bytes([n])) for n in range(256)))
        found = await backend.scan("/byte/", limit=1000)
        assert [r.value for r in found] == [bytes([n]) for n in range(256)]

    @pytest.mark.parametrize("value", _VALUES)
    @pytest_twisted.ensureDeferred
    async def test_value_round_trips(self, backend: Any, value: bytes) -> None:
        """Values are opaque bytes: empty, NULs, invalid UTF-8 and line endings come back as
        they were (an empty value is a live record, not a tombstone)."""
        await _store(backend, make_record("/v", value))
        fetched = await backend.get("/v")
        assert fetched.value == value
        assert fetched.deleted is False
        assert [r.value for r in await backend.scan("/")] == [value]

    @pytest_twisted.ensureDeferred
    async def test_value_of_16_mib(self, backend: Any) -> None:
        """A 16 MiB value is stored and read back whole."""
        value = bytes(range(256)) * (16 * 1024 * 4)
        assert len(value) == 16 * 1024 * 1024
        await _store(backend, make_record("/big", value))
        assert (await backend.get("/big")).value == value

    @pytest.mark.parametrize("key", _UNICODE_KEYS)
    @pytest_twisted.ensureDeferred
    async def test_non_ascii_key_round_trips(self, backend: Any, key: str) -> None:
        """Keys with non-ASCII characters, emoji and spaces are stored and found by get, scan
        and changes exactly as given."""
        (stored,) = await _store(backend, make_record(key, b"v"))
        assert await backend.get(key) == stored
        assert await backend.scan("/") == [stored]
        assert await backend.changes(0) == [stored]

    @pytest_twisted.ensureDeferred
    async def test_unicode_normalization_forms_are_distinct_keys(self, backend: Any) -> None:
        """The backend does not normalize keys: ``/é`` (U+00E9) and ``/é`` (e + U+0301) are two
        keys."""
        composed, decomposed = "/\u00e9", "/e\u0301"
        await _store(backend, make_record(composed, b"nfc"), make_record(decomposed, b"nfd"))
        assert (await backend.get(composed)).value == b"nfc"
        assert (await backend.get(decomposed)).value == b"nfd"
        assert [r.key for r in await backend.scan("/")] == [decomposed, composed]

    @pytest.mark.parametrize("key", _KEYS_OF_1024_BYTES)
    @pytest_twisted.ensureDeferred
    async def test_key_of_1024_bytes(self, backend: Any, key: str) -> None:
        """A key of exactly 1024 UTF-8 bytes, the default limit, is stored and found."""
        assert len(key.encode("utf-8")) == 1024
        (stored,) = await _store(backend, make_record(key, b"long"))
        assert await backend.get(key) == stored
        assert await backend.scan(key) == [stored]

    @pytest.mark.parametrize("content_type", _CONTENT_TYPES)
    @pytest_twisted.ensureDeferred
    async def test_content_type_round_trips(self, backend: Any, content_type: str) -> None:
        """The content type comes back exactly as written, parameters and case included."""
        await _store(backend, make_record("/typed", b"x", content_type=content_type))
        assert (await backend.get("/typed")).content_type == content_type
        assert (await backend.scan("/"))[0].content_type == content_type

    @pytest.mark.parametrize("chain", _CHAINS)
    @pytest_twisted.ensureDeferred
    async def test_chain_round_trips(self, backend: Any, chain: tuple[str, ...]) -> None:
        """The chain of nodes a record passed through comes back exactly, in order, from get,
        scan and changes, for live records and tombstones alike (replication relies on it to
        never send a record back where it came from)."""
        live = attrs.evolve(make_record("/chained", b"x"), chain=chain)
        gone = attrs.evolve(make_tombstone("/gone"), chain=chain)
        await _store(backend, live, gone)
        assert (await backend.get("/chained")).chain == chain
        assert (await backend.get("/gone")).chain == chain
        assert [r.chain for r in await backend.scan("/", include_deleted=True)] == [chain, chain]
        assert [r.chain for r in await backend.changes(0)] == [chain, chain]

    @pytest_twisted.ensureDeferred
    async def test_newer_record_replaces_the_chain(self, backend: Any) -> None:
        """A winning record brings its own chain; the stored one is not merged or kept."""
        await _store(backend, attrs.evolve(make_record("/k", b"1", 1000), chain=(NODE_A,)))
        await _store(backend, make_record("/k", b"2", 2000))
        assert (await backend.get("/k")).chain == ()

    # -- reset -------------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_reset_removes_records_and_tombstones(self, backend: Any) -> None:
        """``reset`` fires with None and removes every record and tombstone: get, scan and
        changes find nothing."""
        await _store(backend, make_record("/a"), make_record("/b/c"), make_tombstone("/d"))
        assert await backend.reset() is None
        for key in ("/a", "/b/c", "/d"):
            assert await backend.get(key) is None
        assert await backend.scan("/", include_deleted=True) == []
        assert await backend.changes(0) == []

    @pytest_twisted.ensureDeferred
    async def test_reset_keeps_meta(self, backend: Any) -> None:
        """``reset`` keeps meta data (the node's identity, peers, cursors)."""
        await backend.set_meta("node_id", "0123456789abcdef")
        await _store(backend, make_record("/a"))
        await backend.reset()
        assert await backend.get_meta("node_id") == "0123456789abcdef"

    @pytest_twisted.ensureDeferred
    async def test_reset_forgets_old_stamps(self, backend: Any) -> None:
        """After ``reset`` a key is absent: an older stamp than the removed record is stored
        and ABSENT holds."""
        await _store(backend, make_record("/a", b"old", 5000))
        await backend.reset()
        stored = await backend.apply(make_record("/a", b"new", 1000), ABSENT)
        assert stored is not None
        assert await backend.changes(0) == [stored]

    # -- meta --------------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_get_meta_missing_is_none(self, backend: Any) -> None:
        """``get_meta`` of a name never set fires with None."""
        assert await backend.get_meta("never-set") is None

    @pytest.mark.parametrize("value", _META_VALUES)
    @pytest_twisted.ensureDeferred
    async def test_set_meta_then_get(self, backend: Any, value: str) -> None:
        """``set_meta`` fires with None and ``get_meta`` returns the text exactly."""
        assert await backend.set_meta("name", value) is None
        assert await backend.get_meta("name") == value

    @pytest_twisted.ensureDeferred
    async def test_set_meta_overwrites(self, backend: Any) -> None:
        """``set_meta`` replaces the previous value of the name, and only of that name."""
        await backend.set_meta("peers", "http://a:1")
        await backend.set_meta("other", "kept")
        await backend.set_meta("peers", "http://b:2")
        assert await backend.get_meta("peers") == "http://b:2"
        assert await backend.get_meta("other") == "kept"

    @pytest_twisted.ensureDeferred
    async def test_meta_is_not_a_record(self, backend: Any) -> None:
        """Meta data lives apart from records: it is not listed, not in the feed, not a key."""
        await backend.set_meta("/k", "meta")
        assert await backend.get("/k") is None
        assert await backend.scan("/", include_deleted=True) == []
        assert await backend.changes(0) == []
        await _store(backend, make_record("/k", b"record"))
        assert await backend.get_meta("/k") == "meta"

    # -- purge -------------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_purge_removes_only_tombstones_below_seq(self, backend: Any) -> None:
        """``purge_tombstones(before)`` removes tombstones with ``seq < before`` (not equal),
        leaves live records alone, and fires with how many it removed."""
        live_a, _, _, live_b, dead_c = await _store(
            backend,
            make_record("/live/a"),
            make_tombstone("/dead/a"),
            make_tombstone("/dead/b"),
            make_record("/live/b"),
            make_tombstone("/dead/c"),
        )
        assert await backend.purge_tombstones(dead_c.seq) == 2
        assert await backend.get("/dead/a") is None
        assert await backend.get("/dead/b") is None
        assert await backend.get("/dead/c") == dead_c
        assert await backend.scan("/", include_deleted=True) == [dead_c, live_a, live_b]
        assert await backend.changes(0) == [live_a, live_b, dead_c]

    @pytest_twisted.ensureDeferred
    async def test_purge_with_nothing_to_purge(self, backend: Any) -> None:
        """Purging when no tombstone qualifies fires with 0 and changes nothing."""
        await _store(backend, make_record("/a"), make_tombstone("/b"))
        before = await _snapshot(backend)
        assert await backend.purge_tombstones(1) == 0
        assert await _snapshot(backend) == before

    @pytest_twisted.ensureDeferred
    async def test_purged_key_is_as_if_never_stored(self, backend: Any) -> None:
        """Once its tombstone is purged, a key is unknown: an older write is stored again.

        This is why the Store purges only tombstones every peer has seen.
        """
        await _store(backend, make_record("/k", b"v", 1000), make_tombstone("/k", 2000))
        assert await backend.purge_tombstones(await backend.last_seq() + 1) == 1
        assert await backend.get("/k") is None
        stored = await backend.apply(make_record("/k", b"old", 1500), ABSENT)
        assert stored is not None

    # -- malformed records ---------------------------------------------------------------------

    @pytest.mark.parametrize("record", _MALFORMED)
    @pytest_twisted.ensureDeferred
    async def test_malformed_record_fails_with_invalid_record(
        self, backend: Any, record: Any
    ) -> None:
        """A malformed record fails with InvalidRecord as an errback and stores nothing, not
        even over an existing record of the same key."""
        await _store(backend, make_record("/k", b"existing", 10), make_record("/other"))
        before = await _snapshot(backend)
        await _failure(lambda: backend.apply(record), InvalidRecord)
        assert await _snapshot(backend) == before

    # -- concurrency -------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_concurrent_applies_on_distinct_keys(self, backend: Any) -> None:
        """200 applies issued at once on distinct keys all land, with 200 distinct seqs."""
        records = [make_record(f"/many/{n:03d}", str(n).encode()) for n in range(200)]
        pending = [backend.apply(record) for record in records]
        stored = await gatherResults(pending, consumeErrors=True)
        assert all(result is not None for result in stored)
        assert [r.value for r in stored] == [r.value for r in records]
        assert len({r.seq for r in stored}) == 200
        assert await backend.last_seq() == max(r.seq for r in stored)
        assert await backend.scan("/many/", limit=1000) == sorted(stored, key=lambda r: r.key)

    @pytest_twisted.ensureDeferred
    async def test_concurrent_applies_on_one_key_keep_the_greatest(self, backend: Any) -> None:
        """100 applies issued at once on one key, in shuffled stamp order, leave the record
        with the greatest stamp; it was stored (not refused); the feed holds the key once."""
        records = [make_record("/hot", f"v{n}".encode(), 1000 + n) for n in range(100)]
        shuffled = list(records)
        random.Random(11).shuffle(shuffled)
        pending = [backend.apply(record) for record in shuffled]
        results = await gatherResults(pending, consumeErrors=True)
        winner = records[-1]
        assert results[shuffled.index(winner)] is not None
        stored = [r for r in results if r is not None]
        assert len({r.seq for r in stored}) == len(stored)
        final = await backend.get("/hot")
        assert (final.value, final.stamp) == (winner.value, winner.stamp)
        assert await backend.changes(0) == [final]
        assert final.seq == await backend.last_seq()

    @pytest_twisted.ensureDeferred
    async def test_concurrent_creates_exactly_one_wins(self, backend: Any) -> None:
        """Of 20 create-only (ABSENT) applies issued at once on one key, exactly one stores:
        the check and the write are one atomic step."""
        records = [make_record("/once", f"v{n}".encode(), 1000 + n) for n in range(20)]
        random.Random(5).shuffle(records)
        results = await gatherResults(
            [backend.apply(record, ABSENT) for record in records], consumeErrors=True
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert await backend.get("/once") == winners[0]

    @pytest_twisted.ensureDeferred
    async def test_concurrent_conditional_updates_exactly_one_wins(self, backend: Any) -> None:
        """Of 20 applies issued at once that all expect the same stored stamp, exactly one
        stores: the others find the stamp changed (a compare-and-swap)."""
        (base,) = await _store(backend, make_record("/cas", b"base", 1000))
        records = [make_record("/cas", f"v{n}".encode(), 2000 + n) for n in range(20)]
        random.Random(9).shuffle(records)
        expectation: Expectation = base.stamp
        results = await gatherResults(
            [backend.apply(record, expectation) for record in records], consumeErrors=True
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert await backend.get("/cas") == winners[0]

    # -- close -------------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_close_twice_is_harmless(self, backend: Any) -> None:
        """Closing fires with None, and closing again does too."""
        assert await backend.close() is None
        assert await backend.close() is None

    @pytest.mark.parametrize(("method", "arguments"), _CALLS)
    @pytest_twisted.ensureDeferred
    async def test_call_after_close_fails(
        self, backend: Any, method: str, arguments: tuple[Any, ...]
    ) -> None:
        """Every call but ``close`` fails with BackendClosed (as an errback) once closed."""
        await backend.close()
        await _failure(lambda: getattr(backend, method)(*arguments), BackendClosed)

    @pytest_twisted.ensureDeferred
    async def test_close_finishes_pending_applies(self, backend: Any) -> None:
        """Applies issued before ``close`` complete and are stored; close waits for them."""
        records = [make_record(f"/pending/{n:02d}", b"v") for n in range(20)]
        pending = [backend.apply(record) for record in records]
        closing = backend.close()
        stored = await gatherResults(pending, consumeErrors=True)
        await closing
        assert [r.key for r in stored] == [r.key for r in records]
        assert all(r.seq is not None for r in stored)

    # -- persistence -------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_records_survive_reopen(self, backend: Any, persistence: Reopener) -> None:
        """Every record, with its value, content type, stamp and seq, survives closing and
        reopening the storage; scan and changes read the same."""
        await _store(
            backend,
            make_record("/a", bytes(range(256)), content_type="text/plain; charset=utf-8"),
            make_record("/\u00e9/\U0001f600", b"emoji", 1, counter=3, node_id=NODE_B),
            make_record("/b", b"", 7),
            make_record("/a", b"second", 2000),
            attrs.evolve(make_record("/relayed", b"r", 3), chain=(NODE_B, NODE_A)),
        )
        records, feed, last = await _snapshot(backend)
        reopened = await persistence.reopen(backend)
        assert await _snapshot(reopened) == (records, feed, last)
        assert (await reopened.get("/a")).value == b"second"

    @pytest_twisted.ensureDeferred
    async def test_tombstones_survive_reopen(self, backend: Any, persistence: Reopener) -> None:
        """Tombstones survive reopening and still beat older writes afterwards."""
        await _store(backend, make_record("/k", b"v", 1000), make_tombstone("/k", 2000))
        tombstone = await backend.get("/k")
        reopened = await persistence.reopen(backend)
        assert await reopened.get("/k") == tombstone
        assert await reopened.changes(0) == [tombstone]
        assert await reopened.apply(make_record("/k", b"late", 1500)) is None

    @pytest_twisted.ensureDeferred
    async def test_meta_survives_reopen(self, backend: Any, persistence: Reopener) -> None:
        """Meta data survives closing and reopening; a missing name stays missing."""
        await backend.set_meta("node_id", "0123456789abcdef")
        await backend.set_meta("peers", "http://a:1")
        await backend.set_meta("peers", "http://b:2")
        reopened = await persistence.reopen(backend)
        assert await reopened.get_meta("node_id") == "0123456789abcdef"
        assert await reopened.get_meta("peers") == "http://b:2"
        assert await reopened.get_meta("never-set") is None

    @pytest.mark.parametrize("before_reopen", ["nothing", "purge-newest", "reset"])
    @pytest_twisted.ensureDeferred
    async def test_seq_continues_after_reopen(
        self, backend: Any, persistence: Reopener, before_reopen: str
    ) -> None:
        """``last_seq`` survives reopening, and new records get greater seqs, even when the
        record holding the greatest seq was purged or the store reset before closing."""
        await _store(backend, make_record("/a"), make_record("/b"))
        newest = await backend.apply(make_tombstone("/c"))
        if before_reopen == "purge-newest":
            assert await backend.purge_tombstones(newest.seq + 1) == 1
        elif before_reopen == "reset":
            await backend.reset()
        reopened = await persistence.reopen(backend)
        assert await reopened.last_seq() == newest.seq
        following = await reopened.apply(make_record("/d"))
        assert following.seq > newest.seq

    @pytest_twisted.ensureDeferred
    async def test_reset_is_durable(self, backend: Any, persistence: Reopener) -> None:
        """What ``reset`` removed stays removed after reopening, and meta data stays kept."""
        await backend.set_meta("node_id", "0123456789abcdef")
        await _store(backend, make_record("/a"), make_tombstone("/b"))
        await backend.reset()
        reopened = await persistence.reopen(backend)
        assert await reopened.scan("/", include_deleted=True) == []
        assert await reopened.get_meta("node_id") == "0123456789abcdef"

    @pytest_twisted.ensureDeferred
    async def test_purge_is_durable(self, backend: Any, persistence: Reopener) -> None:
        """Purged tombstones stay purged after reopening."""
        await _store(backend, make_tombstone("/gone"), make_record("/kept"))
        assert await backend.purge_tombstones(await backend.last_seq() + 1) == 1
        reopened = await persistence.reopen(backend)
        assert await reopened.get("/gone") is None
        assert [r.key for r in await reopened.scan("/", include_deleted=True)] == ["/kept"]

    @pytest_twisted.ensureDeferred
    async def test_pending_applies_are_durable_after_close(
        self, backend: Any, persistence: Reopener
    ) -> None:
        """Applies issued just before ``close`` are on storage once close has fired."""
        records = [make_record(f"/pending/{n:02d}", b"v") for n in range(20)]
        pending = [backend.apply(record) for record in records]
        reopened = await persistence.reopen(backend)
        stored = await gatherResults(pending, consumeErrors=True)
        assert await reopened.scan("/pending/") == stored

    @pytest_twisted.ensureDeferred
    async def test_reopen_twice(self, backend: Any, persistence: Reopener) -> None:
        """A reopened backend accepts writes that survive the next reopening too."""
        await _store(backend, make_record("/first"))
        second = await persistence.reopen(backend)
        await _store(second, make_record("/second"))
        third = await persistence.reopen(second)
        assert [r.key for r in await third.scan("/")] == ["/first", "/second"]

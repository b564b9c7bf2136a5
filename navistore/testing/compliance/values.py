"""What a record carries comes back exactly: values, keys, content types and chains.

Values are opaque bytes, keys are Unicode compared by code point and never normalized, content
types are kept as written, and chains keep replication from echoing records back: any of these
mangled by a text column, an encoding or a normalization breaks clients silently.
"""

from __future__ import annotations

import attrs
import pytest
import pytest_twisted  # type: ignore[import-untyped]

from navistore.interfaces import IStorageBackend
from navistore.record import DEFAULT_CONTENT_TYPE
from navistore.testing.compliance.support import (
    NODE_A,
    NODE_B,
    BackendFixtures,
    _get_stored,
    _store,
    make_record,
    make_tombstone,
)

__all__ = ["ValuesContract"]

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

#: Chains a record may carry: none (a local write), one hop, several hops.
_CHAINS = [
    pytest.param((), id="local"),
    pytest.param((NODE_A,), id="one-hop"),
    pytest.param((NODE_A, NODE_B, "0123456789abcdef"), id="three-hops"),
]


class ValuesContract(BackendFixtures):
    """Every field of a record round-trips unchanged through ``apply``, ``get``, ``scan`` and
    ``changes``, from empty values to 16 MiB and 1024-byte keys."""

    @pytest_twisted.ensureDeferred
    async def test_every_byte_value_in_one_value(self, backend: IStorageBackend) -> None:
        """A value holding all 256 byte values, NUL included, round-trips unchanged."""
        value = bytes(range(256)) * 2
        await _store(backend, make_record("/bytes", value))
        assert (await _get_stored(backend, "/bytes")).value == value

    @pytest_twisted.ensureDeferred
    async def test_every_byte_value_as_its_own_value(self, backend: IStorageBackend) -> None:
        """Each of the 256 one-byte values round-trips on its own (``\\x00`` is not empty)."""
        await _store(backend, *(make_record(f"/byte/{n:03d}", bytes([n])) for n in range(256)))
        found = await backend.scan("/byte/", limit=1000)
        assert [r.value for r in found] == [bytes([n]) for n in range(256)]

    @pytest.mark.parametrize("value", _VALUES)
    @pytest_twisted.ensureDeferred
    async def test_value_round_trips(self, backend: IStorageBackend, value: bytes) -> None:
        """Values are opaque bytes: empty, NULs, invalid UTF-8 and line endings come back as
        they were (an empty value is a live record, not a tombstone)."""
        await _store(backend, make_record("/v", value))
        fetched = await backend.get("/v")
        assert fetched is not None
        assert fetched.value == value
        assert fetched.deleted is False
        assert [r.value for r in await backend.scan("/")] == [value]

    @pytest_twisted.ensureDeferred
    async def test_value_of_16_mib(self, backend: IStorageBackend) -> None:
        """A 16 MiB value is stored and read back whole."""
        value = bytes(range(256)) * (16 * 1024 * 4)
        assert len(value) == 16 * 1024 * 1024
        await _store(backend, make_record("/big", value))
        assert (await _get_stored(backend, "/big")).value == value

    @pytest.mark.parametrize("key", _UNICODE_KEYS)
    @pytest_twisted.ensureDeferred
    async def test_non_ascii_key_round_trips(self, backend: IStorageBackend, key: str) -> None:
        """Keys with non-ASCII characters, emoji and spaces are stored and found by get, scan
        and changes exactly as given."""
        (stored,) = await _store(backend, make_record(key, b"v"))
        assert await backend.get(key) == stored
        assert await backend.scan("/") == [stored]
        assert await backend.changes(0) == [stored]

    @pytest_twisted.ensureDeferred
    async def test_unicode_normalization_forms_are_distinct_keys(
        self, backend: IStorageBackend
    ) -> None:
        """The backend does not normalize keys: ``/é`` (U+00E9) and ``/é`` (e + U+0301) are two
        keys."""
        composed, decomposed = "/\u00e9", "/e\u0301"
        await _store(backend, make_record(composed, b"nfc"), make_record(decomposed, b"nfd"))
        assert (await _get_stored(backend, composed)).value == b"nfc"
        assert (await _get_stored(backend, decomposed)).value == b"nfd"
        assert [r.key for r in await backend.scan("/")] == [decomposed, composed]

    @pytest.mark.parametrize("key", _KEYS_OF_1024_BYTES)
    @pytest_twisted.ensureDeferred
    async def test_key_of_1024_bytes(self, backend: IStorageBackend, key: str) -> None:
        """A key of exactly 1024 UTF-8 bytes, the default limit, is stored and found."""
        assert len(key.encode("utf-8")) == 1024
        (stored,) = await _store(backend, make_record(key, b"long"))
        assert await backend.get(key) == stored
        assert await backend.scan(key) == [stored]

    @pytest.mark.parametrize("content_type", _CONTENT_TYPES)
    @pytest_twisted.ensureDeferred
    async def test_content_type_round_trips(
        self, backend: IStorageBackend, content_type: str
    ) -> None:
        """The content type comes back exactly as written, parameters and case included."""
        await _store(backend, make_record("/typed", b"x", content_type=content_type))
        assert (await _get_stored(backend, "/typed")).content_type == content_type
        assert (await backend.scan("/"))[0].content_type == content_type

    @pytest.mark.parametrize("chain", _CHAINS)
    @pytest_twisted.ensureDeferred
    async def test_chain_round_trips(
        self, backend: IStorageBackend, chain: tuple[str, ...]
    ) -> None:
        """The chain of nodes a record passed through comes back exactly, in order, from get,
        scan and changes, for live records and tombstones alike (replication relies on it to
        never send a record back where it came from)."""
        live = attrs.evolve(make_record("/chained", b"x"), chain=chain)
        gone = attrs.evolve(make_tombstone("/gone"), chain=chain)
        await _store(backend, live, gone)
        assert (await _get_stored(backend, "/chained")).chain == chain
        assert (await _get_stored(backend, "/gone")).chain == chain
        assert [r.chain for r in await backend.scan("/", include_deleted=True)] == [chain, chain]
        assert [r.chain for r in await backend.changes(0)] == [chain, chain]

    @pytest_twisted.ensureDeferred
    async def test_newer_record_replaces_the_chain(self, backend: IStorageBackend) -> None:
        """A winning record brings its own chain; the stored one is not merged or kept."""
        await _store(backend, attrs.evolve(make_record("/k", b"1", 1000), chain=(NODE_A,)))
        await _store(backend, make_record("/k", b"2", 2000))
        assert (await _get_stored(backend, "/k")).chain == ()

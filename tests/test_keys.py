"""The key grammar (navistore.keys): normalisation, every rejection and the prefix helpers."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from navistore.keys import (
    DEFAULT_MAX_KEY_BYTES,
    ROUTE_KEYS,
    InvalidKey,
    classic_form,
    is_reserved,
    key_in_prefix,
    normalize_key,
    normalize_prefix,
    prefix_upper_bound,
)

# Characters a segment may hold: anything but '/', control, surrogate and format characters.
segment_chars = st.characters(blacklist_categories=("Cc", "Cs", "Cf"), blacklist_characters="/")
segments = st.text(segment_chars, min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))


@st.composite
def canonical_keys(draw: st.DrawFn, segment: st.SearchStrategy[str] = segments) -> str:
    """Canonical, non-reserved keys built from 1-4 segments."""
    parts = draw(st.lists(segment, min_size=1, max_size=4))
    assume(not parts[0].startswith("_"))
    return "/" + "/".join(parts)


# A tiny alphabet so that keys share prefixes often, with the code points next to the limits that
# prefix_upper_bound treats specially (the last code point, and the one before the surrogates).
tight_segments = st.text(
    st.sampled_from(["a", "b", ".", "\ud7ff", "\ue000", "\U0010ffff"]), min_size=1, max_size=4
).filter(lambda s: s not in (".", ".."))
tight_keys = canonical_keys(tight_segments)


# --- normalisation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("name", "/name"),
        ("/name", "/name"),
        ("app/db/host", "/app/db/host"),
        ("/app/db/host", "/app/db/host"),
        (b"/app/db", "/app/db"),
        (b"app", "/app"),
        ("/.hidden/...", "/.hidden/..."),
        ("/caf\u00e9/\u65e5\u672c", "/caf\u00e9/\u65e5\u672c"),
        ("/a b/\u2028", "/a b/\u2028"),
        ("/x/_private", "/x/_private"),
        ("_replication_slaves", "/_replication_slaves"),
        ("/_replication_slaves/sub", "/_replication_slaves/sub"),
    ],
)
def test_normalize_key_examples(raw: str | bytes, canonical: str) -> None:
    """Valid keys normalise to one canonical form with a leading '/', from text or UTF-8 bytes."""
    assert normalize_key(raw) == canonical


@given(canonical_keys())
def test_leading_slash_is_optional(key: str) -> None:
    """`name` and `/name` are the same key: both normalise to the canonical form."""
    assert normalize_key(key) == key
    assert normalize_key(key[1:]) == key


@given(st.one_of(canonical_keys(), st.text(max_size=30)))
def test_normalize_key_is_idempotent(raw: str) -> None:
    """Normalising a canonical key gives it back unchanged, whatever text it was made from."""
    try:
        canonical = normalize_key(raw)
    except InvalidKey:
        assume(False)
        return
    assert canonical.startswith("/")
    assert normalize_key(canonical) == canonical


@given(canonical_keys())
def test_canonical_keys_round_trip_through_utf8(key: str) -> None:
    """A canonical key survives encoding to UTF-8 and back, and its bytes normalise to it."""
    encoded = key.encode("utf-8")
    assert encoded.decode("utf-8") == key
    assert normalize_key(encoded) == key


# --- rejections --------------------------------------------------------------------------------


def reason_of(raw: object, **options: object) -> str:
    """Return the reason InvalidKey gives for refusing ``raw``, checking its shape on the way."""
    with pytest.raises(InvalidKey) as caught:
        normalize_key(raw, **options)
    error = caught.value
    assert error.key == raw
    assert str(error) == f"invalid key {raw!r}: {error.reason}"
    return error.reason


_FORMAT_REASON = (
    "invisible format character U+{code} at position {at} "
    "(a bidi control, zero-width character or byte order mark)"
)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("/", "empty"),
        (b"", "empty"),
        (b"/", "empty"),
        ("a//b", "segment 2 is empty (no '//' and no trailing '/')"),
        ("//a", "segment 1 is empty (no '//' and no trailing '/')"),
        ("/a/", "segment 2 is empty (no '//' and no trailing '/')"),
        ("a/b/", "segment 3 is empty (no '//' and no trailing '/')"),
        ("/.", "segment 1 is '.'"),
        ("/a/./b", "segment 2 is '.'"),
        ("..", "segment 1 is '..'"),
        ("/a/b/..", "segment 3 is '..'"),
        ("/a\x00b", "control or surrogate character U+0000 at position 2"),
        ("a\x00b", "control or surrogate character U+0000 at position 1"),
        ("/tab\there", "control or surrogate character U+0009 at position 4"),
        ("/line\n", "control or surrogate character U+000A at position 5"),
        ("/del\x7f", "control or surrogate character U+007F at position 4"),
        ("/c1\x85", "control or surrogate character U+0085 at position 3"),
        ("/c1\x9f", "control or surrogate character U+009F at position 3"),
        ("/lone\ud800", "control or surrogate character U+D800 at position 5"),
        ("/\udfff/x", "control or surrogate character U+DFFF at position 1"),
        ("/app/\u200bdb", _FORMAT_REASON.format(code="200B", at=5)),
        ("/\u202egnp.exe", _FORMAT_REASON.format(code="202E", at=1)),
        ("/\ufeffconfig", _FORMAT_REASON.format(code="FEFF", at=1)),
        ("/a\u00adb", _FORMAT_REASON.format(code="00AD", at=2)),
        (b"/a\xffb", "not valid UTF-8 (byte 2)"),
        (b"\xc3", "not valid UTF-8 (byte 0)"),
        (b"/ok/\xed\xa0\x80", "not valid UTF-8 (byte 4)"),
        (42, "must be text, not int"),
        (None, "must be text, not NoneType"),
    ],
)
def test_rejections_name_their_reason(raw: object, reason: str) -> None:
    """Each broken rule is refused with InvalidKey, a ValueError, whose message says which rule."""
    assert reason_of(raw) == reason
    assert issubclass(InvalidKey, ValueError)


@given(
    st.text(segment_chars, max_size=6), st.sampled_from(["\x00", "\x1f", "\x7f", "\x80", "\x9f"])
)
def test_any_control_character_is_refused(text: str, control: str) -> None:
    """A C0, DEL or C1 control character anywhere in a key is refused, naming its code point."""
    raw = "/k" + text + control
    reason = reason_of(raw)
    assert reason.startswith("control or surrogate character")
    assert f"U+{ord(control):04X}" in reason


@given(
    st.text(segment_chars, max_size=6),
    st.characters(whitelist_categories=("Cf",)),
    st.text(segment_chars, max_size=6),
)
def test_any_format_character_is_refused_but_stored_keys_stay_reachable(
    before: str, invisible: str, after: str
) -> None:
    """A Cf character (bidi control, zero-width, BOM) is refused in a client's key, naming it;
    storage's own check (``allow_format``) still accepts it, so a key stored by an older release
    can be read and deleted."""
    raw = "/k" + before + invisible + after
    reason = reason_of(raw)
    assert reason.startswith("invisible format character")
    assert f"U+{ord(invisible):04X}" in reason
    assert normalize_key(raw, allow_format=True) == raw


def test_length_limit_counts_utf8_bytes_including_the_slash() -> None:
    """The limit counts UTF-8 bytes of the canonical form, leading '/' included: 1024 by default."""
    assert DEFAULT_MAX_KEY_BYTES == 1024
    longest = "a" * (DEFAULT_MAX_KEY_BYTES - 1)
    assert normalize_key(longest) == "/" + longest
    assert normalize_key("/" + longest) == "/" + longest
    assert reason_of(longest + "a") == "1025 bytes long, the limit is 1024"
    assert reason_of("/" + longest + "a") == "1025 bytes long, the limit is 1024"


@pytest.mark.parametrize(
    ("char", "width"),
    [("\u00e9", 2), ("\u20ac", 3), ("\U0001f600", 4)],
)
def test_multibyte_characters_count_their_bytes(char: str, width: int) -> None:
    """A character counts as many bytes as its UTF-8 encoding has, not as one."""
    fits = (DEFAULT_MAX_KEY_BYTES - 1) // width
    assert normalize_key(char * fits) == "/" + char * fits
    size = 1 + width * (fits + 1)
    assert reason_of(char * (fits + 1)) == f"{size} bytes long, the limit is 1024"


def test_length_limit_is_configurable() -> None:
    """max_bytes moves the limit, and None lifts it."""
    assert normalize_key("abc", max_bytes=4) == "/abc"
    assert reason_of("abcd", max_bytes=4) == "5 bytes long, the limit is 4"
    huge = "x" * 5000
    assert normalize_key(huge, max_bytes=None) == "/" + huge


@given(st.text(segment_chars, min_size=1, max_size=40), st.integers(min_value=1, max_value=80))
def test_length_limit_property(body: str, limit: int) -> None:
    """A key is accepted iff its canonical UTF-8 size is within the limit."""
    assume(all(part not in ("", ".", "..") for part in body.split("/")))
    assume(not body.startswith("_"))
    assume("/" + body not in ROUTE_KEYS)  # /listkeys and /reset are routes, never keys
    size = len(("/" + body).encode("utf-8"))
    if size <= limit:
        assert normalize_key(body, max_bytes=limit) == "/" + body
    else:
        assert reason_of(body, max_bytes=limit) == f"{size} bytes long, the limit is {limit}"


RESERVED_REASON = "the first segment starts with '_', which is reserved for the server"


@pytest.mark.parametrize("raw", ["_changes", "/_peers", "/_", "/_keys/sub", "_replication_slavesx"])
def test_reserved_first_segment_is_refused_unless_allowed(raw: str) -> None:
    """A first segment starting with '_' is the server's; only allow_reserved accepts it."""
    assert reason_of(raw) == RESERVED_REASON
    canonical = normalize_key(raw, allow_reserved=True)
    assert canonical == "/" + raw.lstrip("/")
    assert is_reserved(canonical)


@pytest.mark.parametrize(
    "key", ["/_replication_slaves", "/_replication_slaves/a", "/a/_b", "/a_", "/a/_changes"]
)
def test_not_reserved(key: str) -> None:
    """The classic /_replication_slaves, and '_' anywhere but the first segment's start, are
    ordinary keys."""
    assert not is_reserved(key)
    assert normalize_key(key) == key


# --- prefixes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("", "/"),
        ("/", "/"),
        (b"", "/"),
        ("a", "/a"),
        ("/a/", "/a/"),
        ("a/pa", "/a/pa"),
        ("/a/.", "/a/."),
        ("/a/..", "/a/.."),
        ("/_", "/_"),
    ],
)
def test_normalize_prefix_examples(raw: str | bytes, canonical: str) -> None:
    """Prefixes get the leading '/'; '' and '/' mean everything; the last segment may be empty or
    partial (even '.' or '..', which begin segments such as '.hidden')."""
    assert normalize_prefix(raw) == canonical


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("a//", "segment 2 is empty (no '//' and no trailing '/')"),
        ("//", "segment 1 is empty (no '//' and no trailing '/')"),
        ("/./x", "segment 1 is '.'"),
        ("/a/../", "segment 2 is '..'"),
        ("/a\x00", "control or surrogate character U+0000 at position 2"),
        (b"/\xff", "not valid UTF-8 (byte 1)"),
        ("/" + "a" * 1024, "1025 bytes long, the limit is 1024"),
    ],
)
def test_normalize_prefix_rejections(raw: str | bytes, reason: str) -> None:
    """A prefix's complete segments obey the key grammar, and its length is limited."""
    with pytest.raises(InvalidKey) as caught:
        normalize_prefix(raw)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("key", "prefix", "matches"),
    [
        ("/a/b", "/a/", True),
        ("/ab", "/a/", False),
        ("/a", "/a/", False),
        ("/a/b/c", "/a/", True),
        ("/a", "/a", True),
        ("/ab", "/a", True),
        ("/a/b", "/a", True),
        ("/b", "/a", False),
        ("/anything", "/", True),
    ],
)
def test_key_in_prefix(key: str, prefix: str, matches: bool) -> None:
    """`/a/` is the document /a's children (never /ab); `/a` is a plain string prefix."""
    assert key_in_prefix(key, prefix) is matches


@pytest.mark.parametrize(
    ("prefix", "bound"),
    [
        ("/a/", "/a0"),
        ("/", "0"),
        ("/a\U0010ffff", "/b"),
        ("/\ud7ff", "/\ue000"),
        ("\U0010ffff\U0010ffff", None),
        ("", None),
    ],
)
def test_prefix_upper_bound_examples(prefix: str, bound: str | None) -> None:
    """The bound is the next string after every extension of the prefix, skipping surrogates and
    carrying past the last code point; None when nothing is above it."""
    assert prefix_upper_bound(prefix) == bound


@st.composite
def key_and_prefix(draw: st.DrawFn) -> tuple[str, str]:
    """A key and a valid prefix that is often (not always) a prefix of it."""
    key = draw(tight_keys)
    source = draw(st.one_of(st.just(key), tight_keys))
    cut = draw(st.integers(min_value=0, max_value=len(source)))
    return key, normalize_prefix(source[:cut])


@given(key_and_prefix())
def test_prefix_upper_bound_property(pair: tuple[str, str]) -> None:
    """For valid keys and prefixes: k starts with p iff p <= k < bound (None: no upper bound)."""
    key, prefix = pair
    bound = prefix_upper_bound(prefix)
    in_range = prefix <= key and (bound is None or key < bound)
    assert key.startswith(prefix) is in_range
    assert key_in_prefix(key, prefix) is in_range


@given(tight_keys, st.data())
def test_every_prefix_of_a_key_is_a_valid_prefix(key: str, data: st.DataObject) -> None:
    """Any leading part of a valid key normalises as a listing prefix that matches the key."""
    cut = data.draw(st.integers(min_value=0, max_value=len(key)), label="cut")
    prefix = normalize_prefix(key[:cut])
    assert key_in_prefix(key, prefix)


@given(canonical_keys())
def test_classic_form_drops_the_leading_slash(key: str) -> None:
    """The classic API spells keys without '/', and normalising that gives the key back."""
    classic = classic_form(key)
    assert "/" + classic == key
    assert normalize_key(classic) == key
